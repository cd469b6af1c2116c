"""Launch a two-rank torchrun job on 127.0.0.1, as a user would start it (tests and fixtures)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).parent.parent / "samples" / "ddp_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port <free> ARGS`, on CPU with
    gloo even where GPUs are present (CUDA_VISIBLE_DEVICES is emptied): the tests' figures are gloo's."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "0",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})


def replicate_ranks(source: Path, logdir: Path, ranks: int, straggler: int, slower: float = 1.5,
                    per_node: int = 8) -> Path:
    """A job of `ranks` ranks made from one real rank's report file: each rank a copy of it (its
    rank, world size and place: `per_node` ranks on each host "node<N>"), the `straggler`'s op
    times scaled by `slower`. Returns the run directory's report folder."""
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
        (out / f"rank{rank}_{name}").write_text(json.dumps(copy))
    return out
