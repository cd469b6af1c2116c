"""`memwall analyze` / `memwall.analyze_trace`: a torch.profiler trace counted as memwall.profile counts.

The expectation is memwall.profile's own count of the same training step (a bare run of the
same model, optimizer and batch), and the trace's own event durations read here from its JSON.
"""

from __future__ import annotations

import gzip
import json
import pickle
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

import memwall_plugin as memwall
from memwall_plugin.cli import main

transformers = pytest.importorskip("transformers")

#: Where a bare run and a run under memwall's dispatch mode execute different ops for the same
#: work, with the same FLOPs and bytes: the autograd engine accumulates gradients (and SDPA's math
#: path adds its mask) in place (add_) without a dispatch mode and out of place (add) under one.
#: The trace records the bare run, so the comparison folds add_ into add in these phases.
IN_PLACE_UNDER_MODE = {("aten.add_", "backward"): "aten.add", ("aten.add_", "forward"): "aten.add"}


def _step_fn() -> Any:
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1000, (2, 16))

    def step() -> None:
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # AdamW makes its state in the first step: every later step runs the same ops
    return model, step


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One model; a step traced each way, then the same step under memwall.profile."""
    tmp = tmp_path_factory.mktemp("traces")
    model, step = _step_fn()
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, record_shapes=True) as prof:
        step()
    plain = tmp / "trace.json"
    prof.export_chrome_trace(str(plain))
    handler_dir = tmp / "tb"
    with torch.profiler.profile(activities=cpu, record_shapes=True, with_stack=True,
                                schedule=torch.profiler.schedule(wait=0, warmup=1, active=1, repeat=1),
                                on_trace_ready=torch.profiler.tensorboard_trace_handler(str(handler_dir),
                                                                                        use_gzip=True)) as prof:
        for _ in range(2):  # a warm-up step, then the recorded one
            step()
            prof.step()
    with torch.profiler.profile(activities=cpu, record_shapes=False) as prof:
        step()
    shapeless = tmp / "no_shapes.json"
    prof.export_chrome_trace(str(shapeless))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with memwall.profile(model, summary=False) as mw:
            step()
    return {"plain": plain, "handler_dir": handler_dir, "shapeless": shapeless, "reference": mw.report()}


def _by_op_phase(report: memwall.Report, fold: dict[tuple[str, str], str] | None = None) -> dict[Any, Any]:
    totals: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, 0])
    for r in report.rows:
        op = (fold or {}).get((r.op, r.phase), r.op)
        slot = totals[(op, r.phase)]
        slot[0] = None if slot[0] is None or r.flops is None else slot[0] + r.flops
        slot[1] += r.bytes
    return {k: tuple(v) for k, v in totals.items()}


def _trace_durations_s(path: Path, name: str) -> float:
    """The summed duration of the outermost `name` events on each thread, read from the JSON."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"]
    mine = sorted((e for e in events if e["name"] == name), key=lambda e: e["ts"])
    total, end = 0.0, -1.0
    for e in mine:  # an op's kernel calling the op again (div_ inside div_) is inside it
        if e["ts"] >= end:
            total += e["dur"]
            end = e["ts"] + e["dur"]
    return total * 1e-6


def _assert_same_counts(report: memwall.Report, reference: memwall.Report) -> None:
    got = _by_op_phase(report, IN_PLACE_UNDER_MODE)
    want = _by_op_phase(reference)
    assert {k for k, v in got.items() if v[0] is None} == set(), "every op of this step has its inputs recorded"
    assert got == want


def test_trace_counts_equal_memwall_profile(recorded: dict[str, Any]) -> None:
    report = memwall.analyze_trace(recorded["plain"])
    _assert_same_counts(report, recorded["reference"])
    assert {r.phase for r in report.rows} == {"forward", "backward", "optimizer"}
    assert report.uncounted == ()


def _traced_and_profiled(model: torch.nn.Module, run: Any, path: Path,
                         with_stack: bool = False) -> tuple[memwall.Report, memwall.Report]:
    """`run()` traced by torch.profiler (record_shapes, `with_stack`) and analysed, then run again
    under memwall.profile: (the trace's report, memwall's)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True,
                                with_stack=with_stack) as prof:
        run()
    prof.export_chrome_trace(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with memwall.profile(model, summary=False) as mw:
            run()
    return memwall.analyze_trace(path), mw.report()


def test_a_plain_trace_of_several_steps_reads_each_steps_forward_as_forward(tmp_path: Path) -> None:
    """A profile around three steps, no schedule (no ProfilerStep ranges) and no module ranges:
    only the trace's first backward bounded forward work, so the later steps' forward ops that
    build no autograd node (dropout's bernoulli_ and div_) read `other`. Each optimizer step now
    ends a step. The truth: memwall.profile of the same three steps."""
    model, step = _step_fn()

    def three() -> None:
        for _ in range(3):
            step()

    report, reference = _traced_and_profiled(model, three, tmp_path / "three.json")
    _assert_same_counts(report, reference)
    assert {r.phase for r in report.rows if r.op == "aten.bernoulli_"} == {"forward"}


def test_times_come_from_the_trace(recorded: dict[str, Any]) -> None:
    report = memwall.analyze_trace(recorded["plain"])
    for op in ("aten::addmm", "aten::bmm", "aten::mm"):
        rows = [r for r in report.rows if r.op == op.replace("::", ".")]
        assert rows and sum(r.time_s for r in rows) == pytest.approx(_trace_durations_s(recorded["plain"], op),
                                                                     rel=1e-6)
    assert report.extra["trace"]["time_from"] == "CPU op spans"


def test_tensorboard_handler_dir_gzipped(recorded: dict[str, Any]) -> None:
    files = list(recorded["handler_dir"].glob("*.pt.trace.json.gz"))
    assert len(files) == 1
    report = memwall.analyze_trace(recorded["handler_dir"])
    _assert_same_counts(report, recorded["reference"])
    assert report.steps == (1,)  # ProfilerStep#1: the step after the warm-up
    # with_stack=True records nn.Module ranges: forward ops carry the trace's module names
    modules = {r.module for r in report.rows if r.phase == "forward" and r.op == "aten.addmm"}
    assert modules and all("Conv1D" in m for m in modules)


def test_without_record_shapes_lists_ops_uncounted_with_times(recorded: dict[str, Any]) -> None:
    with pytest.warns(RuntimeWarning, match="record_shapes=True"):
        report = memwall.analyze_trace(recorded["shapeless"])
    assert report.rows and all(r.flops is None for r in report.rows)
    ops = {r.op for r in report.rows}
    assert {"aten.addmm", "aten.mm", "aten.bmm", "aten.addcdiv_"} <= ops
    assert "aten.linear" not in ops  # composite: counted as its parts, as capture sees them
    mm = sum(r.time_s for r in report.rows if r.op == "aten.mm")
    assert mm == pytest.approx(_trace_durations_s(recorded["shapeless"], "aten::mm"), rel=1e-6)
    reasons = report.extra["trace"]["uncounted_calls"]
    assert sum(reasons.values()) == sum(r.calls for r in report.rows)
    assert any("record_shapes" in why for why in reasons)


def test_cli_summary_and_json(recorded: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(recorded["plain"]), "--top", "100"]) == 0
    out = capsys.readouterr().out
    assert "Phases" in out and "optimizer" in out and "addmm" in out
    assert main(["analyze", str(recorded["plain"]), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["totals"]["flops"] == recorded["reference"].total_flops
    assert record["trace"] == str(recorded["plain"])


def test_cli_logdir_writes_a_report(recorded: dict[str, Any], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(recorded["plain"]), "--logdir", str(tmp_path / "run"), "--json"]) == 0
    saved = list((tmp_path / "run").rglob("*.json"))
    assert len(saved) == 1
    loaded = memwall.load_report(saved[0])
    assert loaded.total_flops == recorded["reference"].total_flops
    assert "report saved to" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b'{"hello": 1}', "not a torch.profiler trace"),
    (b"\x00\x01binary", "not a torch.profiler trace"),
    (b'{"traceEvents": [', "a trace cut short while it was written"),
    (b"", "the file is empty"),
    (b"  \n", "the file is empty"),
    (b"step 1 loss 2.3\nstep 2 loss 2.1\n", "not JSON; memwall reads torch.profiler's Chrome-trace JSON"),
    (b'{"schema": "1.1.1-chakra.0.0.4", "pid": 1, "nodes": []}', "a PyTorch execution trace"),
    (pickle.dumps({"segments": []}), "a Python pickle"),
])
def test_cli_errors_for_files_that_are_not_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  content: bytes, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(content)
    assert main(["analyze", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_damaged_trace_among_several_is_left_out_and_said_the_others_analysed(
        recorded: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A rank that died while writing its trace: one unreadable file stopped the whole command, the
    other ranks' traces unread. Now it is left out, named, and the exit status says so."""
    good = tmp_path / "rank0.pt.trace.json"
    good.write_bytes(recorded["plain"].read_bytes())
    cut = tmp_path / "rank1.pt.trace.json"
    cut.write_bytes(good.read_bytes()[:4000])
    assert main(["analyze", str(tmp_path), "--json"]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [r["trace"] for r in records] == [str(good)]
    assert records[0]["totals"]["flops"] == recorded["reference"].total_flops
    assert "left out" in captured.err and str(cut) in captured.err and "cut short" in captured.err
    cut2 = tmp_path / "rank0.pt.trace.json"
    cut2.write_bytes(b"")
    assert main(["analyze", str(tmp_path)]) == 2  # none readable: an error
    assert "none of the 2 traces could be read" in capsys.readouterr().err


def test_cli_error_for_a_damaged_gzip(recorded: dict[str, Any], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    whole = next(recorded["handler_dir"].glob("*.gz")).read_bytes()
    cut = tmp_path / "cut.pt.trace.json.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    assert main(["analyze", str(cut)]) == 2
    assert "gzip" in capsys.readouterr().err
    fake = tmp_path / "fake.json.gz"
    fake.write_text("{}")
    assert main(["analyze", str(fake)]) == 2
    assert "not gzip-compressed" in capsys.readouterr().err


def _as_if_on_a_gpu(path: Path, out: Path, device_name: str | None) -> dict[str, float]:
    """The CPU trace made into the shape of a CUDA one: each addmm and mm launches one kernel
    (a cudaLaunchKernel inside the op's span, a kernel with its correlation id) of a known
    duration, every other op launches nothing. Returns the kernel time given to each op (us)."""
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    added: list[dict[str, Any]] = []
    given: dict[str, float] = defaultdict(float)
    correlation = 10_000_000
    for e in list(events):
        if e.get("ph") == "X" and e.get("cat") == "cpu_op" and e["name"] in ("aten::addmm", "aten::mm"):
            correlation += 1
            dur = 7.0 if e["name"] == "aten::addmm" else 3.0  # us, unlike the CPU spans
            added.append({"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": e["pid"],
                          "tid": e["tid"], "ts": e["ts"] + e["dur"] / 2, "dur": 0.1,
                          "args": {"correlation": correlation, "External id": correlation}})
            added.append({"ph": "X", "cat": "kernel", "name": f"ampere_sgemm_{correlation}", "pid": 0, "tid": 7,
                          "ts": e["ts"] + e["dur"], "dur": dur,
                          "args": {"correlation": correlation, "External id": correlation, "device": 0,
                                   "stream": 7}})
            given[e["name"].replace("::", ".")] += dur
    events.extend(added)
    if device_name is not None:
        data["deviceProperties"] = [{"id": 0, "name": device_name, "totalGlobalMem": 85520809984}]
    out.write_text(json.dumps(data))
    return given


def test_a_gpu_trace_takes_each_ops_time_from_its_kernels(recorded: dict[str, Any], tmp_path: Path) -> None:
    given = _as_if_on_a_gpu(recorded["plain"], tmp_path / "gpu.json", "NVIDIA H100 80GB HBM3")
    report = memwall.analyze_trace(tmp_path / "gpu.json")
    assert report.extra["trace"]["time_from"] == "device kernels"
    for op, us in given.items():
        assert sum(r.time_s for r in report.rows if r.op == op) == pytest.approx(us * 1e-6, rel=1e-9)
    _assert_same_counts(report, recorded["reference"])  # the counts do not depend on the times
    # what launched nothing: a view or size query (no data moved) did no work of its own, its CPU
    # span is the host's; an op that moves data keeps its span (on a GPU trace, CPU tensors' work)
    spans: dict[tuple[str, str, str, str], float] = defaultdict(float)
    for r in memwall.analyze_trace(recorded["plain"]).rows:
        spans[(r.op, r.module, r.phase, r.shapes)] += r.time_s
    times: dict[tuple[str, str, str, str], float] = defaultdict(float)
    for r in report.rows:
        times[(r.op, r.module, r.phase, r.shapes)] += r.time_s
    idle = {(r.op, r.module, r.phase, r.shapes) for r in report.rows if not r.kernels and r.bytes == 0 and not r.flops}
    moving = {(r.op, r.module, r.phase, r.shapes) for r in report.rows if not r.kernels and r.bytes > 0} - idle
    assert idle and moving
    assert all(times[k] == 0 for k in idle)
    assert all(times[k] == pytest.approx(spans[k], rel=1e-9) for k in moving)
    assert report.extra["trace"]["host_only_ops_s"] == pytest.approx(sum(spans[k] for k in idle), rel=1e-9)
    # placed on the GPU the trace names (memwall's table knows it), not on this CPU, and no what-if
    assert report.device is not None and "H100" in report.device.name
    assert report.measured_on == report.device.name and "H100 80GB HBM3" in report.device.notes


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_cpu_trace_analysed_for_a_gpu_is_a_what_if_measured_on_the_cpu(recorded: dict[str, Any], how: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`memwall analyze TRACE --device "H100 SXM"` (or $MEMWALL_DEVICE) on a CPU trace named the
    H100 as the device its times were measured on, and projected nothing. The trace read without
    the option is the truth: the same rows on the CPU, then the what-if `rescore(device=...)`."""
    plain = memwall.analyze_trace(recorded["plain"])
    if how == "environment":
        monkeypatch.setenv("MEMWALL_DEVICE", "H100 SXM")
        chosen = memwall.analyze_trace(recorded["plain"])
    else:
        chosen = memwall.analyze_trace(recorded["plain"], device="H100 SXM")
    assert chosen.device is not None and chosen.device.key == "h100-sxm"
    assert chosen.measured_on == plain.measured_on == plain.device.name
    assert chosen.projected_time_s == plain.rescore(device="H100 SXM").projected_time_s is not None
    assert chosen.total_flops == plain.total_flops


def test_a_gpu_trace_of_an_unnamed_gpu_is_counted_but_not_placed_here(recorded: dict[str, Any],
                                                                      tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the trace is placed on this machine's GPU")
    _as_if_on_a_gpu(recorded["plain"], tmp_path / "gpu.json", None)
    with pytest.warns(RuntimeWarning, match="--device"):
        report = memwall.analyze_trace(tmp_path / "gpu.json")
    assert report.device is None  # not this CPU's roofs under a GPU's kernel times
    assert report.total_flops == recorded["reference"].total_flops
    placed = memwall.analyze_trace(tmp_path / "gpu.json", device="A100 SXM")
    assert placed.device is not None and "A100" in placed.device.name


def test_a_gpu_trace_says_how_long_the_gpu_sat_idle_and_calls_the_step_launch_bound(recorded: dict[str, Any],
                                                                                    tmp_path: Path) -> None:
    """The kernels given above run a few microseconds each in a step of milliseconds: the device
    is idle nearly all of it, which the report measures from the device's own record (not from
    op times) and names as launch-bound."""
    _as_if_on_a_gpu(recorded["plain"], tmp_path / "gpu.json", "NVIDIA H100 80GB HBM3")
    events = json.loads((tmp_path / "gpu.json").read_text())["traceEvents"]
    kernels = [(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "kernel"]
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    start = min([e["ts"] for e in ops] + [a for a, _ in kernels])
    end = max([e["ts"] + e["dur"] for e in ops] + [b for _, b in kernels])
    # busy time by hand: the kernels' tenths of a microsecond, each counted once
    ticks: set[int] = set()
    for a, b in kernels:
        ticks.update(range(round(a * 10), round(b * 10)))
    report = memwall.analyze_trace(tmp_path / "gpu.json")
    timeline = report.extra["timeline"]
    assert timeline["device_busy_s"] == pytest.approx(len(ticks) * 1e-7, rel=1e-3)
    assert timeline["wall_s"] == pytest.approx((end - start) * 1e-6, rel=1e-9)
    assert timeline["idle_fraction"] == pytest.approx(1 - len(ticks) * 1e-7 / ((end - start) * 1e-6), rel=1e-3)
    assert timeline["idle_fraction"] > 0.9
    notes = memwall.findings(report)
    assert any(n.startswith("the GPU was idle") and "launch-bound" in n for n in notes)
    assert not any("outside any op" in n for n in notes)  # the device's record says it, not op gaps
    # a CPU trace has no device timeline and no such finding
    cpu = memwall.analyze_trace(recorded["plain"])
    assert "timeline" not in cpu.extra and not any("GPU was idle" in n for n in memwall.findings(cpu))


def test_ops_with_a_formula_but_no_recorded_inputs_are_named_as_such(recorded: dict[str, Any]) -> None:
    with pytest.warns(RuntimeWarning):
        report = memwall.analyze_trace(recorded["shapeless"])
    notes = memwall.findings(report)
    (unshaped,) = [n for n in notes if "inputs were not recorded" in n]
    # named longest first: which op that is depends on this machine's timing, so read it from the rows
    time: dict[str, float] = defaultdict(float)
    for r in report.rows:
        time[r.name] += r.time_s
    longest = max(time, key=lambda name: time[name])
    assert "record_shapes=True" in unshaped and f"({longest}," in unshaped
    assert not any("without a FLOP formula" in n for n in notes)  # a formula is not what is missing


def test_each_row_names_the_kernels_its_calls_ran_and_keeps_them_in_its_file(recorded: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    _as_if_on_a_gpu(recorded["plain"], tmp_path / "gpu.json", "NVIDIA H100 80GB HBM3")
    report = memwall.analyze_trace(tmp_path / "gpu.json")
    for r in report.rows:
        if r.op in ("aten.addmm", "aten.mm"):
            assert r.kernels and all(k.startswith("ampere_sgemm_") for k in r.kernels)
        else:
            assert r.kernels == ()  # launched nothing in this trace
    report.save(tmp_path / "report.json")
    again = memwall.load_report(tmp_path / "report.json")
    assert [r.kernels for r in again.rows] == [r.kernels for r in report.rows]
    # rows merged (shapes folded) keep every kernel name once
    several = [f for f in report.folded() if f.row.op == "aten.mm" and len(f.variants) > 1]
    assert several  # a backward's input and weight gradients: two shapes of one (op, module, phase)
    for f in several:
        assert set(f.row.kernels) == {k for v in f.variants for k in v.kernels}
        assert len(f.row.kernels) == len(set(f.row.kernels))


# --- a trace from the usual Trainer set-up ---------------------------------------------------------

class _TokenRows(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """16 rows of 16 token ids: the Trainer's collate stacks them into int64 batches."""

    def __init__(self) -> None:
        self.ids = torch.randint(0, 1000, (16, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _analysed_and_profiled(step: Any, tmp_path: Path) -> tuple[memwall.Report, memwall.Report]:
    """`step` recorded by torch.profiler (record_shapes) and analysed, and profiled by memwall."""
    with torch.profiler.profile(record_shapes=True) as prof:
        step()
    prof.export_chrome_trace(str(tmp_path / "t.json"))
    report = memwall.analyze_trace(tmp_path / "t.json")
    with memwall.profile(summary=False) as live:
        step()
    return report, live.report()


def test_a_real_0_dim_tensor_where_numbers_go_is_counted_as_a_number_and_said(tmp_path: Path) -> None:
    """A trace records a Python number torch wrapped (`x * 0.5`) as a 0-dim float64 tensor, as it
    records a real one: taken for a number (no bytes), which a real one is 8 bytes short of; the
    report names the calls counted so."""
    x, count = torch.randn(64), torch.tensor(7)  # a real 0-dim int64 tensor, as a token count

    def step() -> None:
        (x * 0.5 / count).sum()

    report, live = _analysed_and_profiled(step, tmp_path)

    def by_op(rep: memwall.Report) -> dict[str, tuple[int | None, int]]:
        return {r.op: (r.flops, r.bytes) for r in rep.rows if r.op in ("aten.mul", "aten.div")}

    got, want = by_op(report), by_op(live)
    assert report.extra["trace"]["number_assumed_calls"] == {"aten.mul": 1, "aten.div": 1}
    assert got["aten.mul"] == want["aten.mul"]  # a number, rightly
    flops, short = got["aten.div"][0], want["aten.div"][1] - got["aten.div"][1]
    assert flops == want["aten.div"][0] == 64 and short == 8  # the int64 tensor the trace took for a number


def test_calls_apart_only_in_strides_are_one_row_as_in_memwall_profile(tmp_path: Path) -> None:
    """A transposed input is another signature to replay, not another row: one row per (op,
    module, phase, dtype, shapes), with both calls' counts, as `memwall.profile` gives."""
    a, b = torch.randn(32, 32), torch.randn(32, 32)

    def step() -> None:
        torch.add(a, b)
        torch.add(a.t(), b)

    report, live = _analysed_and_profiled(step, tmp_path)

    def adds(rep: memwall.Report) -> list[tuple[int, int | None, int]]:
        return [(r.calls, r.flops, r.bytes) for r in rep.rows if r.op == "aten.add"]

    assert adds(report) == adds(live) == [(2, 2 * 32 * 32, 2 * 3 * 32 * 32 * 4)]


def _trainer_run(callback: Any, out: Path) -> None:
    """Four steps of a tiny GPT-2 under `transformers.Trainer` (its own loop, collate, token count,
    gradient clipping, AdamW, scheduler), `callback` beside it."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000, n_positions=64)
    args = transformers.TrainingArguments(output_dir=str(out), max_steps=4, per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                                          dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=transformers.GPT2LMHeadModel(cfg), args=args, train_dataset=_TokenRows(),
                                   callbacks=[callback])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Trainer's own notices about CPU runs
        trainer.train()


class _TorchProfilerCallback(transformers.TrainerCallback):  # type: ignore[misc]
    """The recipe users follow: torch.profiler stepped at each Trainer step, traces written by
    tensorboard_trace_handler (no with_stack: no module ranges in the trace)."""

    def __init__(self, logdir: Path) -> None:
        self.prof = torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True,
            schedule=torch.profiler.schedule(wait=1, warmup=1, active=1, repeat=1),
            on_trace_ready=torch.profiler.tensorboard_trace_handler(str(logdir)))

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.prof.__enter__()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.prof.step()

    def on_train_end(self, *args: Any, **kwargs: Any) -> None:
        self.prof.__exit__(None, None, None)


def test_a_trainer_trace_counts_as_memwall_counts_the_same_step(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The third Trainer step, traced by torch.profiler in one run and recorded by memwall's own
    Trainer callback in another (same seed, data and model): the same FLOPs and bytes per op in
    backward and the optimizer, and per op over the rest of the step, except the bytes of the
    calls the report says it took as float32 (a trace has no dtype for a tensor list: the int64
    batches the collate stacks). Without module ranges a trace cannot tell the Trainer's token
    count from the model's first ops, so forward and other are compared together; the batch the
    DataLoader fetches is other in both."""
    from memwall_plugin.integrations.transformers import MemwallCallback

    _trainer_run(_TorchProfilerCallback(tmp_path / "tb"), tmp_path / "a")
    callback = MemwallCallback(tmp_path / "mw", schedule=memwall.schedule(wait=2, active=1), summary=False)
    _trainer_run(callback, tmp_path / "b")
    reference = callback.report()
    assert reference is not None and reference.steps == (3,)
    report = memwall.analyze_trace(tmp_path / "tb")
    assert report.steps == (2,)  # torch.profiler counts steps from 0: the same, third step
    assert report.uncounted == ()

    def costs(rep: memwall.Report) -> dict[tuple[str, str], tuple[int, int]]:
        out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for r in rep.rows:
            phase = "forward or other" if r.phase in ("forward", "other") else r.phase
            slot = out[(IN_PLACE_UNDER_MODE.get((r.op, r.phase), r.op), phase)]
            slot[0] += r.flops or 0
            slot[1] += r.bytes
        return {k: (f, b) for k, (f, b) in out.items() if f or b}  # views and detaches move nothing

    got, want = costs(report), costs(reference)
    assumed = report.extra["trace"]["float32_assumed_calls"]
    # cat and stack of int64 ids; the optimizer's and the clipping's foreach ops on float32 lists
    assert {"aten.stack", "aten.cat", "aten._foreach_norm"} <= set(assumed)
    assert got.keys() == want.keys()
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    differing = {k for k in got if got[k][1] != want[k][1]}
    # and a real 0-dim int64 tensor where a Python number is usual (transformers before 5.23
    # divides the loss by the batch's token count, a tensor): taken for a number, 8 bytes short
    numbers = report.extra["trace"]["number_assumed_calls"]
    assert differing and {op for op, _ in differing} <= set(assumed) | set(numbers)
    for op, phase in differing - {k for k in differing if k[0] in assumed}:
        short = want[(op, phase)][1] - got[(op, phase)][1]
        assert short > 0 and short % 8 == 0 and short // 8 <= numbers[op], (op, phase, short)
    assert ("aten.stack", "forward or other") in differing  # the collate's int64 batch
    stacks = {r.phase for r in report.rows if r.op == "aten.stack" and r.bytes}
    assert stacks == {"other"} and stacks == {r.phase for r in reference.rows if r.op == "aten.stack" and r.bytes}
    # the CLI says so, and the tab's banner reads the same record
    assert main(["analyze", str(tmp_path / "tb"), "--top", "3"]) == 0
    err = capsys.readouterr().err
    assert "taken as float32" in err and "aten.stack" in err
    from memwall_plugin.tb_plugin.views import trace_view

    view = trace_view(report)
    assert view is not None and view["float32_assumed"]["calls"] == sum(assumed.values())


# --- a compiled model's trace ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A torch.compile'd function whose forward and backward are each one fused kernel: Inductor's
    C++ kernels run inside its `## Call CompiledFxGraph` ranges with no op event of their own."""
    torch._dynamo.reset()

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x * 2 + 1).tanh()

    compiled = torch.compile(f)
    x = torch.randn(1 << 20, requires_grad=True)
    compiled(x).sum().backward()  # compiled before the trace
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        compiled(x).sum().backward()
    path = tmp_path_factory.mktemp("compiled") / "trace.json"
    prof.export_chrome_trace(str(path))
    torch._dynamo.reset()
    return path


def _region_ranges(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in data["traceEvents"] if e.get("ph") == "X" and e["name"].startswith("## Call CompiledFxGraph")]


def test_a_compiled_regions_fused_kernels_are_an_uncounted_row_with_their_time(compiled_trace: Path) -> None:
    """Before, the fused kernels' time was in no row: the report read "outside any op", the
    coverage 100%, and the work that ran was not there."""
    from memwall_plugin.diff import COMPILED_REGION

    spans = _region_ranges(json.loads(compiled_trace.read_text()))
    assert len(spans) == 2  # the forward's graph and the backward's
    report = memwall.analyze_trace(compiled_trace)
    regions = [r for r in report.rows if r.op == COMPILED_REGION]
    assert sorted(r.phase for r in regions) == ["backward", "forward"]
    assert all(r.flops is None and r.calls == 1 and "the trace does not open" in r.shapes for r in regions)
    # the kernels of 1M-element fused passes are most of each range (it also holds the graph's
    # Python wrapper and the few ops it calls, which are rows of their own)
    assert sum(r.time_s for r in regions) >= 0.5 * sum(e["dur"] for e in spans) * 1e-6
    assert report.extra["trace"]["uncounted_calls"]["a compiled region's fused kernels (the trace records no op "
                                                    "inside them)"] == 2


def test_a_gpu_trace_gives_a_compiled_region_its_own_kernels(compiled_trace: Path, tmp_path: Path) -> None:
    """On a GPU Inductor's Triton kernels are launched inside the region's range, outside any op:
    their kernels' time is the region's."""
    from memwall_plugin.diff import COMPILED_REGION

    data = json.loads(compiled_trace.read_text())
    given = []
    for n, e in enumerate(_region_ranges(data)):
        correlation, dur = 20_000_000 + n, 11.0 + 4 * n
        data["traceEvents"] += [
            {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernel", "pid": e["pid"], "tid": e["tid"],
             "ts": e["ts"] + 0.5, "dur": 0.1, "args": {"correlation": correlation}},
            {"ph": "X", "cat": "kernel", "name": f"triton_poi_fused_gelu_tanh_{n}", "pid": 0, "tid": 7,
             "ts": e["ts"] + e["dur"], "dur": dur, "args": {"correlation": correlation, "device": 0, "stream": 7}}]
        given.append(dur)
    out = tmp_path / "gpu.json"
    out.write_text(json.dumps(data))
    report = memwall.analyze_trace(out, device="H100 SXM")
    regions = sorted((r for r in report.rows if r.op == COMPILED_REGION), key=lambda r: r.time_s)
    assert [r.time_s for r in regions] == [pytest.approx(us * 1e-6) for us in sorted(given)]
    assert all(len(r.kernels) == 1 and r.kernels[0].startswith("triton_poi_fused_gelu_tanh_") for r in regions)


def test_device_work_launched_outside_any_op_is_a_row_not_dropped(recorded: dict[str, Any], tmp_path: Path) -> None:
    """A CUDA graph's replay or an extension's own launch has no op around it: its kernels were
    dropped. They are one uncounted row with their time and names."""
    from memwall_plugin.trace_analysis import OUTSIDE_OPS

    base = tmp_path / "gpu.json"
    _as_if_on_a_gpu(recorded["plain"], base, "NVIDIA H100 80GB HBM3")
    data = json.loads(base.read_text())
    ops = sorted((e for e in data["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "cpu_op"),
                 key=lambda e: e["ts"])
    first = ops[0]
    data["traceEvents"] += [
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "pid": first["pid"], "tid": first["tid"],
         "ts": first["ts"] - 20.0, "dur": 5.0, "args": {"correlation": 30_000_001}},
        *({"ph": "X", "cat": "kernel", "name": f"void replayed_kernel_{n}<float>(float*)", "pid": 0, "tid": 7,
           "ts": first["ts"] - 10.0 + 3 * n, "dur": 2.5, "args": {"correlation": 30_000_001, "device": 0, "stream": 7}}
          for n in range(2))]
    out = tmp_path / "outside.json"
    out.write_text(json.dumps(data))
    before, after = memwall.analyze_trace(base), memwall.analyze_trace(out)
    [row] = [r for r in after.rows if r.op == OUTSIDE_OPS]
    assert row.flops is None and row.calls == 1 and row.time_s == pytest.approx(5e-6)
    assert row.kernels == ("replayed_kernel_0", "replayed_kernel_1")
    assert not [r for r in before.rows if r.op == OUTSIDE_OPS]
    assert {r.op: r.time_s for r in after.rows if r.op != OUTSIDE_OPS} == {r.op: r.time_s for r in before.rows}


# --- a Lightning trace ----------------------------------------------------------------------------


def test_a_lightning_trace_names_modules_by_path_and_keeps_the_closures_forward_out_of_the_optimizer(
        tmp_path: Path) -> None:
    """Lightning runs the training step inside optimizer.step(closure), and its PyTorchProfiler
    names each module's forward "[pl][module]...: net.0". Before, every forward op read
    "optimizer" at the top level: the optimizer's range was taken before the modules'."""
    lightning = pytest.importorskip("lightning")
    from lightning.pytorch.profilers import PyTorchProfiler

    class Classifier(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.AdamW(self.parameters())

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 32), torch.randint(0, 2, (64,)))
    profiler = PyTorchProfiler(dirpath=str(tmp_path), filename="fit", record_shapes=True, with_stack=True,
                               export_to_chrome=True, schedule=torch.profiler.schedule(wait=1, warmup=1, active=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own advice (workers, logging) is not under test
        lightning.Trainer(max_steps=6, profiler=profiler, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu").fit(
            Classifier(), torch.utils.data.DataLoader(data, batch_size=8))
    [trace] = list(tmp_path.glob("*.pt.trace.json"))
    report = memwall.analyze_trace(trace)
    linear = [r for r in report.rows if r.op == "aten.addmm"]
    assert {(r.module, r.phase) for r in linear} == {("net.0", "forward"), ("net.2", "forward")}
    assert {r.module for r in report.rows if r.op == "aten.relu"} == {"net.1"}
    assert not [r for r in report.rows if r.module.startswith("net") and r.phase == "optimizer"]
    # the loss, outside any module, in the closure before its backward: forward (the trace's last
    # step may end before that step's backward, which leaves its loss undecided)
    assert any(r.phase == "forward" for r in report.rows if r.op == "aten._log_softmax")
    assert any(r.phase == "optimizer" for r in report.rows if r.op == "aten.mul_")  # AdamW's update


# --- a torch.distributed trace --------------------------------------------------------------------

_DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randn(32, 256)
def step():
    model(x).pow(2).mean().backward(); opt.step(); opt.zero_grad()
step()
handler = torch.profiler.tensorboard_trace_handler(sys.argv[1])
with torch.profiler.profile(record_shapes=True, on_trace_ready=handler,
                            schedule=torch.profiler.schedule(wait=0, warmup=1, active=2)) as prof:
    for _ in range(3):
        step()
        prof.step()
dist.destroy_process_group()
"""


def test_a_ddp_traces_all_reduce_is_on_the_links_roof_with_gloos_time(tmp_path: Path) -> None:
    """Each rank's trace of a gloo DDP step: DDP's bucket all-reduce was an uncounted c10d op,
    advised to get a FLOP formula; it is a collective row under the link's roof, as memwall.profile
    records it: its message the gradients' bytes, its time gloo's range for it on gloo's thread."""
    from torchrun_job import torchrun

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    run = torchrun(str(script), str(tmp_path / "tb"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    traces = sorted((tmp_path / "tb").glob("*.pt.trace.json"))
    assert len(traces) == 2
    parameters = 256 * 512 + 512 + 512 * 256 + 256  # one DDP bucket holds every gradient
    for trace in traces:
        report = memwall.analyze_trace(trace)
        assert report.world_size == 2 and report.backend == "gloo"
        assert not [r for r in report.rows if r.op.startswith("c10d.")]
        [row] = report.collectives
        assert (row.op, row.phase, row.calls) == ("c10d.allreduce_", "backward", 2)
        assert row.collective is not None and row.collective.kind == "all_reduce"
        assert row.collective.message_bytes == 2 * 4 * parameters and row.dtype == "float32"
        data = json.loads(trace.read_text())
        gloo = [e["dur"] for e in data["traceEvents"] if e.get("ph") == "X" and e["name"] == "gloo:all_reduce"]
        assert len(gloo) == 2
        assert row.time_s == pytest.approx(sum(gloo) * 1e-6)
        assert report.comm_time_s == pytest.approx(sum(gloo) * 1e-6)
        assert report.overlapped_s is not None and 0 <= report.overlapped_s <= report.comm_time_s
        assert report.extra["trace"]["float32_assumed_calls"] == {}  # gloo's range says float
        # the reducer copies each bucket back into the gradients at the end of backward, in the
        # engine's callback outside any node's range: backward, as memwall.profile has it (was other)
        copies = [r for r in report.rows if r.op == "aten.copy_"]
        assert {r.phase for r in copies} == {"backward"}
        assert sum(r.bytes for r in copies) == 2 * 2 * 4 * parameters  # 2 steps: read the bucket, write the grads


def test_an_fsdp2_traces_reduce_scatters_take_gloos_time_too(tmp_path: Path) -> None:
    """gloo runs a reduce-scatter under a "gloo:all_reduce" range: each collective takes the next of
    gloo's ranges after its c10d op, whatever its name, so every range is some collective's time."""
    from torchrun_job import torchrun

    script = tmp_path / "fsdp.py"
    script.write_text(_DDP_SCRIPT.replace("from torch.nn.parallel import DistributedDataParallel as DDP",
                                          "from torch.distributed.fsdp import fully_shard")
                      .replace("model = DDP(torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), "
                               "torch.nn.Linear(512, 256)))",
                               "model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), "
                               "torch.nn.Linear(512, 256))\n"
                               "fully_shard(model[0]); fully_shard(model[2]); fully_shard(model)"))
    run = torchrun(str(script), str(tmp_path / "tb"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    for trace in sorted((tmp_path / "tb").glob("*.pt.trace.json")):
        report = memwall.analyze_trace(trace)
        kinds = {r.collective.kind for r in report.collectives if r.collective is not None}
        assert kinds == {"all_gather", "reduce_scatter"}
        data = json.loads(trace.read_text())
        gloo = [e["dur"] for e in data["traceEvents"] if e.get("ph") == "X" and e["name"].startswith("gloo:")]
        assert sum(r.calls for r in report.collectives) == len(gloo)
        assert report.comm_time_s == pytest.approx(sum(gloo) * 1e-6)


def test_an_autocast_step_counts_each_cast_op_at_its_cast_dtype_as_memwall_profile_does(tmp_path: Path) -> None:
    """Under torch.autocast the profiler records an op autocast casts for (GPT-2's Conv1D calls
    addmm directly) twice, nested: autocast's wrapper with the float32 inputs, and inside it the
    casts and the op again in bf16. The wrapper was counted: addmm in float32 (twice the bytes,
    on the fp32 roof), its casts hidden. The truth: memwall.profile of the same step."""
    model, _ = _step_fn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 1000, (2, 16))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    report, reference = _traced_and_profiled(model, step, tmp_path / "autocast.json")
    got, want = _by_op_phase(report, IN_PLACE_UNDER_MODE), _by_op_phase(reference)
    assert got.keys() == want.keys()
    assert {k: v[0] for k, v in got.items()} == {k: v[0] for k, v in want.items()}
    # the trace names no dtype for a list of tensors: cat's bf16 inputs are taken as float32 (said)
    assumed = report.extra["trace"]["float32_assumed_calls"]
    differing = {op for op in got if got[op][1] != want[op][1]}
    assert ("aten.cat", "backward") in differing and {op for op, _ in differing} <= set(assumed)
    assert {r.dtype for r in report.rows if r.op == "aten.addmm" and r.phase == "forward"} == {"bfloat16"}
    casts = {r.shapes for r in reference.rows if r.op == "aten._to_copy" and r.phase == "forward"}
    assert casts and casts == {r.shapes for r in report.rows if r.op == "aten._to_copy" and r.phase == "forward"}


# --- a trace of generate() ------------------------------------------------------------------------

def _generation(case: str) -> tuple[torch.nn.Module, Any]:
    """A tiny model and a generate() call of the kind `case` names."""
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    small = {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 0}
    model: Any = transformers.GPT2LMHeadModel(transformers.GPT2Config(**small)).eval()
    ids = torch.randint(1, 1000, (2, 8))
    kwargs: dict[str, Any] = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    if case == "no cache":
        kwargs["use_cache"] = False
    elif case == "beam search":
        kwargs["num_beams"] = 3
    elif case == "one-token prompt":
        ids = ids[:1, :1]
    elif case == "assisted":
        smaller = {**small, "n_layer": 1, "n_embd": 32, "n_head": 2}
        kwargs["assistant_model"] = transformers.GPT2LMHeadModel(transformers.GPT2Config(**smaller)).eval()
        ids = ids[:1]
    elif case == "encoder-decoder":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=1)).eval()

    def run() -> None:
        with torch.no_grad():
            model.generate(ids, **kwargs)

    return model, run


@pytest.mark.parametrize("case", ["cache", "no cache", "beam search", "one-token prompt", "assisted",
                                  "encoder-decoder"])
def test_a_generate_trace_reads_prefill_and_decode_as_memwall_profile_does(case: str, tmp_path: Path) -> None:
    """A trace of generate() recorded with its Python stack: each call of the model read forward
    (the trace does not record the cache a call is handed). Its first call is the prefill, a later
    one a decode step where it embeds fewer tokens than a call without a cache would; an
    assistant's calls over its rounds make one generation, an encoder's one call stays forward.
    The truth: memwall.profile of the same call, per op and phase (its set-up phase, before the
    first op of the model, is `other` in a trace)."""
    model, run = _generation(case)
    run()
    report, reference = _traced_and_profiled(model, run, tmp_path / "generate.json", with_stack=True)

    # the trace names no dtype for a list of tensors: cat's int64 inputs (no cache: the ids and
    # the mask grown each call) are taken as float32, and said
    assumed = set(report.extra["trace"].get("float32_assumed_calls", {}))

    def by_phase(rep: memwall.Report) -> dict[str, tuple[int, int]]:
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in rep.rows:
            if r.phase in ("prefill", "decode", "forward"):
                totals[r.phase][0] += r.flops or 0
                totals[r.phase][1] += 0 if r.op in assumed else r.bytes
        return {k: (v[0], v[1]) for k, v in totals.items()}

    got, want = by_phase(report), by_phase(reference)
    assert set(want) >= {"prefill"} and ("decode" in want) == (case != "no cache")
    assert got == want
    # the calls without a cache, each over the whole sequence: listed alike (a finding says so)
    uncached = reference.extra.get("generation_without_cache")
    assert (uncached is not None) == (case == "no cache")
    assert report.extra.get("generation_without_cache") == uncached
    model_ops = {(op, phase): v for (op, phase), v in _by_op_phase(reference).items() if phase in got}
    traced_ops = {k: v for k, v in _by_op_phase(report).items() if k[1] in got}
    assert traced_ops.keys() == model_ops.keys()
    assert {k: v for k, v in traced_ops.items() if k[0] not in assumed} == \
        {k: v for k, v in model_ops.items() if k[0] not in assumed}
