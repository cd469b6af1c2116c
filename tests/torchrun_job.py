"""Launch a two-rank torchrun job on 127.0.0.1, as a user would start it (tests and fixtures)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from memwall_plugin.rankheads import write_file_head
from memwall_plugin.report import Report

SAMPLE = Path(__file__).parent.parent / "samples" / "ddp_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_env(tmp: str) -> dict[str, str]:
    """The launch's environment: CPU only, unbuffered, and a temporary directory of its own
    (TMPDIR): torchrun's agent makes a `torchelastic_*` directory in it per launch and leaves it
    behind, so the tests' launches used to pile up hundreds of them in /tmp."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": tmp}


def torchrun(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port <free> ARGS`, on CPU with
    gloo even where GPUs are present (CUDA_VISIBLE_DEVICES is emptied): the tests' figures are gloo's."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "0",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    with tempfile.TemporaryDirectory(prefix="memwall-tests-torchrun-") as tmp:
        return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=_launch_env(tmp))


def replicate_ranks(source: Path, logdir: Path, ranks: int, straggler: int, slower: float = 1.5,
                    per_node: int = 8, heads: bool = False) -> Path:
    """A job of `ranks` ranks made from one real rank's report file: each rank a copy of it (its
    rank, world size and place: `per_node` ranks on each host "node<N>"), the `straggler`'s op
    times scaled by `slower`; with `heads`, each file's head beside it, as a rank that saved it
    leaves one (memwall_plugin/rankheads.py). Returns the run directory's report folder."""
    data = json.loads(source.read_text())
    out = logdir / "plugins" / "memwall"
    out.mkdir(parents=True, exist_ok=True)
    name = source.name.split("_", 1)[1]  # "steps000000-000002.json"
    for rank in range(ranks):
        meta = {**data["meta"], "rank": rank, "world_size": ranks, "local_world_size": per_node,
                "hostname": f"node{rank // per_node}", "local_rank": rank % per_node, "group_rank": rank // per_node}
        copy = {**data, "meta": meta}
        if rank == straggler:
            copy["rows"] = [{**r, "time_s": r["time_s"] * slower} for r in data["rows"]]
        path = out / f"rank{rank}_{name}"
        path.write_text(json.dumps(copy))
        if heads:
            write_file_head(path, Report.from_dict(copy))
    return out


def torchrun_nodes(*args: str, cwd: Path, nodes: int = 2, per_node: int = 2,
                   timeout: float = 90) -> list[subprocess.CompletedProcess[str]]:
    """A job over `nodes` "nodes" on this machine: one `torchrun --nnodes N --nproc-per-node P
    --node-rank i --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:<free>` launch per node, run
    concurrently (CPU, gloo). Each node's ranks see LOCAL_WORLD_SIZE = P and their node's
    GROUP_RANK; the host name is the same for all. Every launch is ended by the time limit."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="memwall-tests-torchrun-") as tmp:
        return _launch_nodes(args, cwd, nodes, per_node, timeout, port, _launch_env(tmp))


def _launch_nodes(args: tuple[str, ...], cwd: Path, nodes: int, per_node: int, timeout: float, port: int,
                  env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
    launches = []
    for node in range(nodes):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc-per-node",
                   str(per_node), "--node-rank", str(node), "--max-restarts", "0", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"memwall-test-{port}", *args]
        launches.append(subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, env=env, start_new_session=True))
    results = []
    try:
        for command_process in launches:
            out, err = command_process.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(command_process.args, command_process.returncode, out, err))
    finally:
        for launched in launches:  # a launch left waiting for its peers: end it and its ranks
            if launched.poll() is None:
                try:
                    os.killpg(launched.pid, 9)
                except ProcessLookupError:
                    pass
                launched.communicate()
    return results
