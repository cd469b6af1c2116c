"""memwall beside torch.profiler: invisible to it. The profiler counts each aten op as often as
it does without memwall, memwall's own trace keeps its step boundaries clean, and
torch-tb-profiler (the PyTorch Profiler tab) parses that trace without complaint.

The expectations come from a bare run of the same training steps under torch.profiler alone."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import memwall_plugin as memwall

STEPS = 2


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.head(x.flatten(1))


class Training:
    """One small CNN training setup; `step()` is a full step: forward, loss, backward, SGD."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = SmallCNN()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.x, self.y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
        self.step()  # first-call effects (lazy inits) settle outside every profiler

    def step(self) -> None:
        F.cross_entropy(self.model(self.x), self.y).backward()
        self.opt.step()
        self.opt.zero_grad()

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]


def _aten_counts(prof: Any) -> Counter[str]:
    return Counter({e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")})


def _bare_counts() -> tuple[Counter[str], list[torch.Tensor]]:
    run = Training()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(STEPS):
            run.step()
    return _aten_counts(prof), run.params()


@contextlib.contextmanager
def _memwall_and_torch_profiler(placement: str, run: Training) -> Iterator[tuple[Any, Any]]:
    """torch.profiler inside memwall.profile, or the other way round."""
    cpu = [torch.profiler.ProfilerActivity.CPU]
    if placement == "torch.profiler inside memwall":
        with memwall.profile(model=run.model, summary=False) as mw, torch.profiler.profile(activities=cpu) as tp:
            yield mw, tp
    else:
        with torch.profiler.profile(activities=cpu) as tp, memwall.profile(model=run.model, summary=False) as mw:
            yield mw, tp


@pytest.mark.parametrize("placement", ["torch.profiler inside memwall", "memwall inside torch.profiler"])
def test_torch_profiler_counts_each_aten_op_as_often_as_without_memwall(placement):
    bare, bare_params = _bare_counts()
    run = Training()
    with _memwall_and_torch_profiler(placement, run) as (mw, tp):
        for _ in range(STEPS):
            run.step()
            mw.step()
    counts = _aten_counts(tp)
    assert counts["aten::mm"] == 2 * STEPS and counts["aten::convolution_backward"] == 2 * STEPS  # by hand
    assert {op: (bare[op], counts[op]) for op in bare | counts if bare[op] != counts[op]} == {}
    assert all(torch.equal(a, b) for a, b in zip(run.params(), bare_params, strict=True))
    assert any(r.op == "aten.convolution_backward" for r in mw.report().rows)  # memwall recorded too


# -- memwall's own torch.profiler trace (kineto=True) ------------------------------------------


def _trace_events(path: Path) -> list[dict[str, Any]]:
    return [e for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]


def _trace_aten_counts(path: Path) -> Counter[str]:
    return Counter(e["name"] for e in _trace_events(path)
                   if e.get("cat") == "cpu_op" and e["name"].startswith("aten::"))


def _kineto_run(tmp_path: Path) -> tuple[Path, list[torch.Tensor], Any]:
    run = Training()
    with memwall.profile(model=run.model, logdir=tmp_path / "run", kineto=True, summary=False,
                         schedule=memwall.schedule(active=STEPS, repeat=1)) as mw:
        for _ in range(STEPS + 1):
            run.step()
            mw.step()
    (trace,) = mw.traces
    return trace, run.params(), mw


def _bare_trace(tmp_path: Path) -> Path:
    """The same steps under torch.profiler alone, exported as memwall's sink exports its trace."""
    run = Training()
    path = tmp_path / "bare.pt.trace.json"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(STEPS):
            run.step()
    prof.export_chrome_trace(str(path))
    return path


def test_memwalls_own_trace_counts_each_aten_op_as_a_bare_trace_does(tmp_path):
    trace, params, mw = _kineto_run(tmp_path)
    bare = _trace_aten_counts(_bare_trace(tmp_path))
    counts = _trace_aten_counts(trace)
    assert counts["aten::mm"] == 2 * STEPS
    assert {op: (bare[op], counts[op]) for op in bare | counts if bare[op] != counts[op]} == {}
    assert all(torch.equal(a, b) for a, b in zip(params, _bare_params(), strict=True))
    # memwall's figures are on the op events themselves: no range of its own
    annotated = [e for e in _trace_events(trace) if "memwall_flops" in e.get("args", {})]
    assert annotated and all(e["name"].startswith("aten::") for e in annotated)


def _bare_params() -> list[torch.Tensor]:
    run = Training()
    for _ in range(STEPS + 1):
        run.step()
    return run.params()


def _crossings(events: list[dict[str, Any]], boundary_prefix: str) -> list[tuple[str, str]]:
    """(boundary, other) pairs of ranges on one thread that overlap without one holding the other."""
    found = []
    for b in (e for e in events if e["name"].startswith(boundary_prefix)):
        b0, b1 = b["ts"], b["ts"] + b["dur"]
        for e in events:
            if e is b or e["tid"] != b["tid"]:
                continue
            e0, e1 = e["ts"], e["ts"] + e["dur"]
            if e0 < b0 < e1 < b1 or b0 < e0 < b1 < e1:
                found.append((b["name"], e["name"]))
    return found


def test_no_range_in_memwalls_trace_crosses_a_step_boundary(tmp_path):
    trace, _, _ = _kineto_run(tmp_path)
    events = _trace_events(trace)
    assert sum(e["name"].startswith("ProfilerStep#") for e in events) == STEPS
    assert _crossings(events, "ProfilerStep#") == []


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tb_profiler_complaints(logdir: Path) -> list[str]:
    """Load every trace in `logdir` as torch-tb-profiler's RunLoader does in its worker processes
    (RunProfileData.parse, then RunGenerator), in this process, and return what it logged at
    WARNING or above."""
    tb = pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler import consts
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    logger = logging.getLogger(consts.PLUGIN_NAME)
    records = _Records()
    logger.addHandler(records)
    try:
        traces = [name for name in os.listdir(logdir) if consts.WORKER_PATTERN.match(name)]
        assert traces, f"no trace torch-tb-profiler would load in {logdir}"
        for name in traces:
            worker = consts.WORKER_PATTERN.match(name).group(1)
            data = RunProfileData.parse(worker, None, str(logdir / name), str(logdir.parent / "tb-cache"))
            profile = RunGenerator(worker, None, data).generate_run_profile()
            assert profile.views, f"torch-tb-profiler ({tb.__name__}) built no view of {name}"
    finally:
        logger.removeHandler(records)
    return records.messages


def test_torch_tb_profiler_parses_memwalls_trace_without_complaint(tmp_path):
    trace, _, _ = _kineto_run(tmp_path)
    assert _tb_profiler_complaints(trace.parent) == []


def _tb_profiler_checks_ranges() -> bool:
    """torch-tb-profiler 0.4.0 (the oldest supported) does not check that ranges on one thread
    nest; the releases after it log "ranges on the same thread should not intersect"."""
    from importlib.metadata import version

    parts = tuple(int(p) for p in version("torch-tb-profiler").split(".")[:3] if p.isdigit())
    return parts > (0, 4, 0)


@pytest.mark.xfail(condition=_tb_profiler_checks_ranges(), strict=True, reason=(
    "torch opens a PythonDispatchMode range around every op a dispatch mode is handed, the enter and "
    "exit of a record_function included (pytorch/pytorch#191797): a torch.profiler stepped while "
    "memwall records gets ProfilerStep boundaries inside such ranges; kineto=True steps its own "
    "profiler with memwall's mode out of the way"))
def test_torch_tb_profiler_parses_a_trace_of_your_own_profiler_stepped_inside_memwall(tmp_path):
    run = Training()
    handler = torch.profiler.tensorboard_trace_handler(str(tmp_path / "tb"))
    schedule = torch.profiler.schedule(wait=0, warmup=1, active=STEPS, repeat=1)
    with memwall.profile(model=run.model, summary=False) as mw, torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule, on_trace_ready=handler) as tp:
        for _ in range(STEPS + 1):
            run.step()
            mw.step()
            tp.step()
    assert _tb_profiler_complaints(tmp_path / "tb") == []


# -- how memwall runs the op it was handed ----------------------------------------------------


def _assorted(x: torch.Tensor, img: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor]:
    """Ops that reach memwall's mode with arguments of every kind, and a backward whose formulas
    call Scalar overloads and make shallow copies (detach)."""
    g = torch.Generator().manual_seed(0)
    made = torch.randn(3, 4, generator=g) + torch.ones(3, 4)  # factories: BackendSelect kernels
    scaled = (x * 2.5 + 1).div(3)  # Python numbers where the schema takes a Tensor
    low = x.detach().half() * 0.1  # ... and keep a half tensor half
    listed = torch.cat([x, x]).index_select(0, idx)[:, None]  # tensor lists, views
    picked = x[idx, 1:]  # index with a None in its tensor list
    count = torch.arange(4)
    count += 1  # an int tensor, in place, with a Python int
    pooled = F.adaptive_avg_pool2d(img, 1)  # mean: a composite kernel that calls sum and div
    loss = pooled.sum() + scaled.pow(2).mean() + listed.sum() + picked.sum()
    loss.backward()
    grads = [t.grad.clone() for t in (x, img)]
    return [made, scaled, low, listed, picked, count, pooled, loss, *grads]


def _assorted_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    return torch.randn(4, 5, requires_grad=True), torch.randn(2, 3, 6, 6, requires_grad=True), torch.tensor([2, 0, 3])


def _children(events: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """id(event) -> the events directly inside it (ranges on one thread nest)."""
    inside: dict[int, list[dict[str, Any]]] = {}
    by_thread: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        by_thread.setdefault(e["tid"], []).append(e)
    for thread in by_thread.values():
        stack: list[dict[str, Any]] = []
        for e in sorted(thread, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] < e["ts"] + e["dur"]:
                stack.pop()
            if stack:
                inside.setdefault(id(stack[-1]), []).append(e)
            stack.append(e)
    return inside


def _inputs(event: dict[str, Any]) -> tuple[str, ...]:
    """What record_shapes says a call was given: its inputs' shapes, types and values."""
    args = event["args"]
    return tuple(json.dumps(args.get(k)) for k in ("Input Dims", "Input type", "Concrete Inputs"))


def test_ops_of_every_kind_keep_their_bits_and_are_recorded_once(tmp_path):
    """Under a dispatch mode torch's backward formulas pick other ops (index_add for index_add_:
    a mode counts as a tensor subclass), so the bare run's trace is no template here: the bits
    are, and the trace must not hold an op called again, with its own inputs, inside the
    PythonDispatchMode range torch opens around memwall."""
    cpu = [torch.profiler.ProfilerActivity.CPU]
    bare = _assorted(*_assorted_inputs())
    with torch.profiler.profile(activities=cpu, record_shapes=True) as prof, memwall.profile(summary=False) as mw:
        out = _assorted(*_assorted_inputs())
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(out, bare, strict=True))
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    events = [e for e in _trace_events(path) if e.get("cat") == "cpu_op"]
    inside = _children(events)
    again = []
    for op in events:
        for mode in inside.get(id(op), []):
            if mode["name"] == "PythonDispatchMode":
                again += [(op["name"], op["args"].get("Input Dims")) for call in inside.get(id(mode), [])
                          if call["name"] == op["name"] and _inputs(call) == _inputs(op)]
    assert sum(e["name"] == "PythonDispatchMode" for e in events) > 50  # memwall saw the ops
    assert again == []
    assert {"aten.randn", "aten.mean", "aten.index_select", "aten.add_"} <= {r.op for r in mw.report().rows}


def test_the_kernel_run_below_the_mode_is_the_one_torchs_dispatch_table_lists():
    """For every aten operator and the keys a call can end on below the Python key, the kernel
    memwall calls is registered where torch's own dispatch table (its debug dump) says the
    dispatcher's kernel was registered; where the table holds a backend fallback or nothing,
    memwall calls the operator as before."""
    from memwall_plugin.hooks._torch_private import kernel_key

    keys = ("CPU", "Meta", "SparseCPU", "QuantizedCPU", "NestedTensorCPU", "Undefined")
    checked = 0
    for name in (n for n in torch._C._dispatch_get_all_op_names() if n.startswith("aten::")):
        table = dict(line.split(": ", 1) for line in torch._C._dispatch_dump_table(name).splitlines())
        registered = {key.removesuffix("[alias]"): rest.split("registered at ", 1)[1].split(" :: ")[0]
                      for key, rest in (line.split(": ", 1) for line in torch._C._dispatch_dump(name).splitlines()
                                        if " :: " in line)}
        for key_name in keys:
            runs = kernel_key(name, getattr(torch._C.DispatchKey, key_name))
            entry = table.get(key_name, "")
            if runs is None:
                assert entry == "" or "fallthrough" in entry or entry.endswith("[backend fallback]"), (name, key_name)
            else:
                assert not entry.startswith("fallthrough"), (name, key_name)
                site = entry.removeprefix("registered at ").rsplit(" [", 1)[0]
                assert registered[runs.name] == site, (name, key_name, runs)
                checked += 1
    assert checked > 10_000


def test_kineto_over_several_cycles_writes_a_trace_each_and_warns_of_nothing(tmp_path):
    """`kineto=True` with a schedule that repeats steps torch.profiler through several cycles,
    one trace written at the end of each: what torch 2.15 warns about ("Profiler clears events
    at the end of each cycle") is what memwall wants, and not the user's to act on. A fresh
    interpreter (torch warns once per process), every UserWarning an error."""
    code = (
        "import sys, torch, memwall_plugin as memwall\n"
        "model = torch.nn.Linear(8, 8)\n"
        "with memwall.profile(model=model, logdir=sys.argv[1], kineto=True, summary=False,\n"
        "                     schedule=memwall.schedule(active=1, repeat=2)) as prof:\n"
        "    for _ in range(3):\n"
        "        model(torch.randn(4, 8)).sum().backward()\n"
        "        prof.step()\n"
    )
    done = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(tmp_path.rglob("*.pt.trace.json*"))) == 2  # one per cycle
