"""Logdirs for the TensorBoard tests: real profiled runs plus broken and hostile ones."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torchrun_job import SAMPLE, free_port, torchrun

import memwall_plugin as memwall

EVIL = "<img src=x onerror=alert(1)>"


@contextlib.contextmanager
def running_tensorboard(logdir: Path, *args: str, timeout: float = 90) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A real TensorBoard on 127.0.0.1 (a free port) over `logdir`, yielded once the Memory Wall
    tab is listed as enabled; stopped on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
         "--port", str(port), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=10) as r:
                    if json.loads(r.read()).get("memwall", {}).get("enabled"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                stderr = proc.stderr.read() if proc.poll() is not None and proc.stderr else ""
                raise RuntimeError(f"TensorBoard did not start: {stderr}")
            time.sleep(0.5)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


class Evil(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(16, 16)

    def forward(self, x):
        return self.body(x).relu()


def make_logdir(root: Path, *, big_rows: int = 0, kineto: bool = False, distributed: bool = False) -> dict[str, Path]:
    """Runs: "train" (a real profiled MLP training, two windows), "evil" (a module named like an
    HTML tag), "corrupt" (truncated report), "future" (a newer schema), optionally "big", and
    "ddp" (two ranks of a torchrun job, samples/ddp_train.py on gloo)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = memwall.schedule(active=2, repeat=2)
    with memwall.profile(model=model, logdir=root / "train", schedule=schedule, kineto=kineto,
                         summary=False) as prof:
        for _ in range(4):
            logits = model(torch.randn(32, 64))
            torch.nn.functional.cross_entropy(logits, torch.randint(0, 10, (32,))).backward()
            opt.step()
            opt.zero_grad()
            prof.step()

    evil = torch.nn.Module()
    evil.add_module(EVIL, Evil())
    with memwall.profile(model=evil, logdir=root / "evil", summary=False):
        getattr(evil, EVIL)(torch.randn(4, 16))

    (root / "nested" / "deeper").mkdir(parents=True)
    good = next((root / "train" / "plugins" / "memwall").glob("*.json"))
    corrupt = root / "corrupt" / "plugins" / "memwall" / "rank0_steps000000-000000.json"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_text(good.read_text()[:300])
    future = root / "nested" / "future" / "plugins" / "memwall" / "rank0_steps000000-000000.json"
    future.parent.mkdir(parents=True)
    data = json.loads(good.read_text())
    data["schema_version"] = 99
    future.write_text(json.dumps(data))
    if big_rows:
        rep = memwall.load_report(good)
        template = rep.rows[0]
        rows = tuple(dataclasses.replace(template, module=f"layers.{i // 10}.op{i % 10}",
                                         time_s=1e-6 * (1 + i % 97)) for i in range(big_rows))
        big = root / "big" / "plugins" / "memwall" / "rank0_steps000000-000000.json"
        dataclasses.replace(rep, rows=rows).save(big)
    if distributed:
        result = torchrun(str(SAMPLE), "--steps", "3", "--width", "64", "--depth", "2", "--logdir",
                          str(root / "ddp"), cwd=root)
        if result.returncode != 0:
            raise RuntimeError(f"the two-rank DDP sample failed:\n{result.stderr[-3000:]}")
    return {"train": root / "train", "good_file": good}


def make_memory_runs(root: Path) -> dict[str, Any]:
    """Runs for the memory view: "gpt" (a small GPT-2 with random weights, trained three steps:
    modules transformer.h.0..3), "tight" (that report with its capacity set to 1.25x its peak, so
    the capacity line is on the chart's scale), "old" (that report without memory and without
    what memwall has written since, as a report written before memwall measured memory reads) and
    "nomemory" (one step of the same model profiled with memory=False). Returns their files and
    "memory", the gpt run's `prof.report().memory`."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=1000, use_cache=False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1000, (8, 64))
    with memwall.profile(model=model, logdir=root / "gpt", summary=False, scalars=False) as prof:
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
            prof.step()
    measured = prof.report().memory
    (good,) = (root / "gpt" / "plugins" / "memwall").glob("*.json")
    rep = memwall.load_report(good)
    assert rep.memory is not None and measured is not None
    memory = dataclasses.replace(rep.memory, capacity_bytes=rep.memory.peak_bytes * 5 // 4,
                                 capacity_source="a test's capacity: 1.25x the peak")
    tight = dataclasses.replace(rep, memory=memory).save(root / "tight" / "plugins" / "memwall" / good.name)
    before = {k: v for k, v in rep.extra.items() if k != "time_source"}  # written since memory was measured
    old = dataclasses.replace(rep, memory=None, extra=before).save(root / "old" / "plugins" / "memwall" / good.name)
    with memwall.profile(model=model, logdir=root / "nomemory", memory=False, summary=False, scalars=False) as prof:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        prof.step()
    (nomemory,) = (root / "nomemory" / "plugins" / "memwall").glob("*.json")
    return {"gpt": good, "tight": tight, "old": old, "nomemory": nomemory, "memory": measured}


#: Hostile strings for every place a report's text reaches the page; each would set
#: window.__mw_xss if the page ever parsed it as HTML.
XSS_RUN = '<img src=x onerror="window.__mw_xss=1">'
XSS_OP = '<svg onload="window.__mw_xss=2">'
XSS_DEVICE = '<img src=x onerror="window.__mw_xss=3">'
XSS_PHASE = "<b onmouseover=window.__mw_xss=4>"


def make_hostile_run(root: Path) -> Path:
    """A run named like an HTML tag whose ops, phases, dtypes, shapes and device name are HTML too
    (a real report with its strings replaced; the numbers stay real)."""
    good = next((root / "train" / "plugins" / "memwall").glob("*.json"))
    rep = memwall.load_report(good)
    rows = tuple(
        dataclasses.replace(r, op=f"{XSS_OP}{r.op}", dtype=f"{r.dtype}<i>", shapes=f"<u>{r.shapes}</u>",
                            phase=XSS_PHASE if r.phase == "backward" else r.phase)
        for r in rep.rows
    )
    assert rep.device is not None
    device = dataclasses.replace(rep.device, name=XSS_DEVICE, key="<x>", notes="<script>window.__mw_xss=5</script>",
                                 source="<a href=javascript:window.__mw_xss=6>x</a>")
    path = root / XSS_RUN / "plugins" / "memwall" / "rank0_steps000000-000000.json"
    dataclasses.replace(rep, rows=rows, device=device, measured_on=f"{XSS_DEVICE} measured").save(path)
    return path


#: An MLP trained two steps at the batch its first argument says, into the logdir its second says,
#: on a device with no caches and its ridge at 2 FLOP/B (fp32 20 GFLOP/s over 10 GB/s), so every
#: bound is fixed by the counts: a Linear(512, 2048) or (2048, 512) matmul over a batch of m rows
#: is at ~m/2 FLOP/B (each weight is read once for 2m FLOPs per element): 0.5 at batch 1, under
#: the ridge; 3.9 at batch 8, over it. The GELU and the optimizer's update stay memory-bound.
BATCH_MLP = textwrap.dedent('''
    import sys

    import torch

    import memwall_plugin as memwall
    from memwall_plugin.devices import DeviceSpec, Figure

    RIDGE_2 = DeviceSpec(key="ridge-2", name="a test CPU (ridge 2 FLOP/B)", kind="cpu",
                         peaks=(("fp32", Figure(2e10, "user")),), bandwidth=Figure(1e10, "user"))
    batch, logdir = int(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with memwall.profile(model=model, logdir=logdir, device=RIDGE_2, summary=False, scalars=False) as prof:
        for _ in range(2):
            model(torch.randn(batch, 512)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            prof.step()
''')

#: the MLP's matmuls by (op, module, phase): the two forward addmms, and in backward each layer's
#: weight gradient (and the second layer's input gradient; the first's input needs none)
BATCH_MATMULS = {("aten.addmm", "0", "forward"), ("aten.addmm", "2", "forward"),
                 ("aten.mm", "0", "backward"), ("aten.mm", "2", "backward")}


def make_batch_runs(root: Path, batches: tuple[int, ...] = (1, 8)) -> dict[int, Path]:
    """Runs `root/b<batch>`: BATCH_MLP run as a script (`python mlp.py BATCH LOGDIR`) per batch."""
    root.mkdir(parents=True, exist_ok=True)
    script = root / "mlp.py"
    script.write_text(BATCH_MLP)
    runs = {}
    for batch in batches:
        runs[batch] = root / f"b{batch}"
        result = subprocess.run([sys.executable, str(script), str(batch), str(runs[batch])], cwd=root,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"the batch-{batch} MLP failed:\n{result.stderr[-3000:]}")
    return runs


def _mlp_step() -> Any:
    """A small MLP's training step (AdamW made its state in a first step: later ones repeat)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))

    def step() -> None:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    step()
    return model, step


def make_trace_runs(root: Path) -> dict[str, Any]:
    """A logdir as torch.profiler alone leaves it (no memwall report): "hf" holds one gzipped
    `tensorboard_trace_handler` trace of an MLP training step (record_shapes=True, after a warm-up
    step), "noshapes" one recorded without shapes, "damaged" a trace cut short. Also the same
    step under memwall.profile (`reference`), and the traces' paths."""
    import warnings

    model, step = _mlp_step()
    cpu = [torch.profiler.ProfilerActivity.CPU]
    out: dict[str, Any] = {}
    for name, shapes in (("hf", True), ("noshapes", False)):
        with torch.profiler.profile(activities=cpu, record_shapes=shapes,
                                    schedule=torch.profiler.schedule(wait=0, warmup=1, active=1, repeat=1),
                                    on_trace_ready=torch.profiler.tensorboard_trace_handler(
                                        str(root / name), use_gzip=True)) as prof:
            for _ in range(2):
                step()
                prof.step()
        (out[name],) = (root / name).glob("*.pt.trace.json.gz")
    (root / "damaged").mkdir()
    out["damaged"] = root / "damaged" / "worker0.1.pt.trace.json.gz"
    out["damaged"].write_bytes(out["hf"].read_bytes()[:200])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with memwall.profile(model, summary=False) as mw:
            step()
    out["reference"] = mw.report()
    return out


def make_edge_runs(root: Path) -> dict[str, Path]:
    """Runs at the tab's edges: "mlp" (a small MLP trained two steps), "crashed" (the same, its
    third step ended by an exception: an incomplete report) and "nothing" (a step of only an
    arange and a view: no op with FLOPs). Returns their report files."""
    model, step = _mlp_step()
    with memwall.profile(model=model, logdir=root / "mlp", summary=False, scalars=False) as prof:
        for _ in range(2):
            step()
            prof.step()
    try:
        with memwall.profile(model=model, logdir=root / "crashed", summary=False, scalars=False) as prof:
            for _ in range(2):
                step()
                prof.step()
            model(torch.randn(32, 64))  # the third step: its forward, then the exception
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    with memwall.profile(logdir=root / "nothing", summary=False, scalars=False) as prof:
        torch.arange(20).view(4, 5)
        prof.step()
    return {name: next((root / name / "plugins" / "memwall").glob("*.json")) for name in ("mlp", "crashed", "nothing")}
