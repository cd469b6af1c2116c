"""Two runs side by side (memwall_plugin/diff.py, console_diff.py): hand-made rows with round
numbers, the deltas, speed-ups and bound changes worked out by hand below."""

from __future__ import annotations

import json

import pytest

import memwall_plugin as memwall
from memwall_plugin.console_diff import DiffLabels, render_diff_text
from memwall_plugin.devices import DeviceSpec, Figure
from memwall_plugin.diff import diff_record, diff_reports

#: fp32 1 TFLOP/s over 10 GB/s: the ridge is at 100 FLOP/B
RIDGE_100 = DeviceSpec(key="ridge-100", name="a test device (ridge 100 FLOP/B)", kind="cpu",
                       peaks=(("fp32", Figure(1e12, "user")),), bandwidth=Figure(1e10, "user"))
#: the same bandwidth and ten times the peak: the ridge is at 1,000 FLOP/B
RIDGE_1000 = DeviceSpec(key="ridge-1000", name="a faster test device (ridge 1000 FLOP/B)", kind="cpu",
                        peaks=(("fp32", Figure(1e13, "user")),), bandwidth=Figure(1e10, "user"))


def _row(op, module, phase, flops, nbytes, time_s, shapes="[1, 64]", device=RIDGE_100, dtype="float32"):
    return memwall.Row(
        op=op, overload="default", module=module, phase=phase, calls=1, dtype=dtype, shapes=shapes,
        flops=flops, bytes_read=nbytes, bytes_written=0, elements_read=nbytes // 4, elements_written=0,
        time_s=time_s, peak_flops_per_s=device.peak_flops_per_s(dtype),
        bandwidth_bytes_per_s=device.bandwidth_bytes_per_s,
    )


def before(device: DeviceSpec = RIDGE_100) -> memwall.Report:
    """Run A: 10 ms in ops. The forward matmul is at 2 FLOP/B (memory-bound), relu 1 ms."""
    rows = (
        _row("aten.addmm", "fc", "forward", 2_000, 1_000, 0.004, device=device),
        _row("aten.relu", "fc", "forward", 100, 800, 0.001, device=device),
        _row("aten.mm", "fc", "backward", 3_000, 1_000, 0.003, device=device),
        _row("aten.add_", "", "optimizer", 500, 6_000, 0.002, device=device),
    )
    return memwall.Report(rows=rows, device=device, steps=(0,), wall_time_s=0.020, measured_on=device.name)


def after(device: DeviceSpec = RIDGE_100) -> memwall.Report:
    """Run B: 12 ms in ops. The forward matmul ran at two batch sizes (two shapes): 100,000 +
    60,000 FLOPs over 1,000 + 600 bytes = exactly 100 FLOP/B, the ridge (compute-bound), 8 ms; the
    relu is fused away into a new op (1 ms); the backward matmul takes 1 ms."""
    rows = (
        _row("aten.addmm", "fc", "forward", 100_000, 1_000, 0.005, shapes="[8, 64]", device=device),
        _row("aten.addmm", "fc", "forward", 60_000, 600, 0.003, shapes="[4, 64]", device=device),
        _row("mylib.fused_relu", "fc", "forward", 100, 800, 0.001, device=device),
        _row("aten.mm", "fc", "backward", 3_000, 1_000, 0.001, device=device),
        _row("aten.add_", "", "optimizer", 500, 6_000, 0.002, device=device),
    )
    return memwall.Report(rows=rows, device=device, steps=(0,), wall_time_s=0.015, measured_on=device.name)


def _by_label(entries):
    return {c.label: c for c in entries}


def test_totals_phases_and_speedups():
    d = diff_reports(before(), after())
    assert d.total.time_a_s == pytest.approx(0.010) and d.total.time_b_s == pytest.approx(0.012)
    assert d.speedup == pytest.approx(10 / 12)
    assert d.wall_speedup == pytest.approx(20 / 15)
    phases = {c.phase: c for c in d.phases}
    assert list(phases) == ["forward", "backward", "optimizer"]  # the phases' display order
    assert phases["forward"].speedup == pytest.approx(5 / 9)  # 4 + 1 ms against 5 + 3 + 1 ms
    assert phases["backward"].speedup == pytest.approx(3.0)
    assert phases["optimizer"].speedup == pytest.approx(1.0)
    assert phases["forward"].time_delta_s == pytest.approx(0.004)
    assert d.same_roofs and d.notes == ()


def test_ops_are_matched_by_op_module_and_phase_with_their_shapes_folded():
    d = diff_reports(before(), after())
    ops = _by_label(d.entries)
    assert len(ops) == 5  # addmm, relu (gone), fused_relu (new), mm, add_
    addmm = ops["aten.addmm in fc, forward"]
    assert (addmm.signatures_a, addmm.signatures_b) == (1, 2)
    assert addmm.b is not None and addmm.b.flops == 160_000 and addmm.b.bytes == 1_600
    assert addmm.time_delta_s == pytest.approx(0.004) and addmm.speedup == pytest.approx(0.5)
    gone, new = ops["aten.relu in fc, forward"], ops["mylib.fused_relu in fc, forward"]
    assert gone.b is None and gone.time_delta_s == pytest.approx(-0.001) and gone.speedup is None
    assert new.a is None and new.time_delta_s == pytest.approx(0.001)
    # the longer of the two times first
    assert [c.label for c in d.entries][:2] == ["aten.addmm in fc, forward", "aten.mm in fc, backward"]


def test_wins_and_losses_by_time_delta():
    d = diff_reports(before(), after())
    assert [(c.label, round(c.time_delta_s * 1e3, 9)) for c in d.wins()] == [
        ("aten.mm in fc, backward", -2.0), ("aten.relu in fc, forward", -1.0)]
    assert [(c.label, round(c.time_delta_s * 1e3, 9)) for c in d.losses()] == [
        ("aten.addmm in fc, forward", 4.0), ("mylib.fused_relu in fc, forward", 1.0)]
    assert [c.label for c in d.losses(top=1)] == ["aten.addmm in fc, forward"]


def test_the_matmul_that_crossed_the_ridge_is_a_bound_change():
    d = diff_reports(before(), after())
    (change,) = d.bound_changes
    assert change.label == "aten.addmm in fc, forward"
    assert (change.bound_a, change.bound_b) == ("memory", "compute")
    assert change.a is not None and change.b is not None
    assert change.a.intensity == pytest.approx(2.0) and change.b.intensity == pytest.approx(100.0)


def test_by_module_and_by_phase():
    d = diff_reports(before(), after(), by="module")
    modules = _by_label(d.entries)
    assert set(modules) == {"fc", "(top level)"}
    assert modules["fc"].time_a_s == pytest.approx(0.008) and modules["fc"].time_b_s == pytest.approx(0.010)
    by_phase = diff_reports(before(), after(), by="phase")
    assert [c.phase for c in by_phase.entries] == ["forward", "backward", "optimizer"]  # longest first
    assert len(by_phase.bound_changes) == 1  # bound changes are always per op
    with pytest.raises(ValueError, match="by must be one of"):
        diff_reports(before(), after(), by="shape")


def test_different_devices_say_the_roofs_differ_and_still_compare_times():
    d = diff_reports(before(), after(RIDGE_1000))
    assert not d.same_roofs
    assert any("roofs differ" in note and "ridge 1000" in note for note in d.notes)
    assert any("measured on different machines" in note for note in d.notes)
    assert d.speedup == pytest.approx(10 / 12)
    # on B's device the matmul at 100 FLOP/B is under its ridge: no bound changed
    assert d.bound_changes == ()
    text = render_diff_text(d, width=100)
    assert "roofs    DIFFERENT (A: a test device (ridge 100 FLOP/B), B: a faster test device" in text


def test_a_run_without_ops_is_refused_and_other_differences_are_noted():
    empty = memwall.Report(rows=(), device=RIDGE_100, steps=(0,))
    with pytest.raises(ValueError, match="run B recorded no ops"):
        diff_reports(before(), empty)
    import dataclasses

    longer = dataclasses.replace(after(), steps=(0, 1, 2, 3), incomplete=True)
    notes = diff_reports(before(), longer).notes
    # per step: 10 ms over one step, 12 ms over four
    assert any("A recorded 1 step(s), B 4" in n and "A took 10 ms" in n and "B 3 ms" in n for n in notes)
    assert any(n.startswith("B is incomplete") for n in notes)
    # a compiled run's first steps: their wall time is mostly compiling, said in seconds
    compiled = dataclasses.replace(after(), extra={"compile_wall_time_s": 13.8})
    notes = diff_reports(before(), compiled).notes
    assert any(n.startswith("B's wall time holds 13.8 s of torch.compile compiling") for n in notes), notes


def test_json_record_has_every_part_and_no_nan():
    record = diff_record(diff_reports(before(), after()))
    text = json.dumps(record, allow_nan=False)
    data = json.loads(text)
    assert data["speedup"] == pytest.approx(10 / 12)
    assert [p["phase"] for p in data["phases"]] == ["forward", "backward", "optimizer"]
    (change,) = data["bound_changes"]
    assert (change["op"], change["module"], change["phase"]) == ("aten.addmm", "fc", "forward")
    assert (change["a"]["bound"], change["b"]["bound"]) == ("memory", "compute")
    assert change["b"]["signatures"] == 2 and change["b"]["flops"] == 160_000
    assert [w["label"] for w in data["wins"]] == ["aten.mm in fc, backward", "aten.relu in fc, forward"]
    gone = next(e for e in data["entries"] if e["op"] == "aten.relu")
    assert gone["b"] is None and gone["speedup"] is None


def test_console_shows_phases_wins_losses_and_bound_changes():
    text = render_diff_text(diff_reports(before(), after()), width=100, labels=DiffLabels("runs/a", "runs/b"))
    lines = text.splitlines()
    assert lines[1].split() == ["A", "runs/a", "(1", "step,", "on", "a", "test", "device", "(ridge", "100", "FLOP/B))"]
    assert "time     10 ms -> 12 ms in ops: 0.833x" in text
    forward = next(line for line in lines if line.startswith("fwd "))
    # forward's intensity: (2,000 + 100) / (1,000 + 800) in A, (160,000 + 100) / (1,600 + 800) in B
    assert forward.split()[:8] == ["fwd", "5", "ms", "9", "ms", "0.556x", "1.17", "66.7"]
    assert next(line for line in lines if line.startswith("bwd ")).split()[5] == "3x"
    assert "Bound changes: 1 op crossed the ridge" in text
    change = lines[lines.index(next(line for line in lines if line.startswith("Bound changes"))) + 3]
    assert change.split() == ["addmm", "fc", "fwd", "2", "100", "MEMORY", "->", "compute"]
    wins = text[text.index("Biggest wins"):text.index("Biggest losses")]
    assert "-2 ms" in wins and "gone in B" in wins
    losses = text[text.index("Biggest losses"):text.index("Bound changes")]
    assert "+4 ms" in losses and "new in B" in losses


def test_names_from_a_report_print_as_text_not_markup():
    hostile = "[blink]evil[/blink]"
    a, b = before(), after()
    import dataclasses

    rename = lambda rep: dataclasses.replace(  # noqa: E731
        rep, rows=tuple(dataclasses.replace(r, module=hostile) if r.module == "fc" else r for r in rep.rows))
    text = render_diff_text(diff_reports(rename(a), rename(b)), width=140, labels=DiffLabels("[red]a", "b"))
    assert hostile in text and "[red]a" in text
