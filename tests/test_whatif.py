"""whatif.py: a report re-scored for another element size or device, and each row's projected time
there, by hand-worked examples."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import one_row, profiled
from test_rows import all_reduce, op

import memwall_plugin as memwall
from memwall_plugin.ceilings import place_rows
from memwall_plugin.cli import main
from memwall_plugin.devices import USER, DeviceSpec, Figure
from memwall_plugin.whatif import bound_changes, resized


def test_every_tensor_and_message_resized_flops_and_time_kept():
    mm, ar = resized((op(), all_reduce(calls=2)), 1)
    # the mm's 192 elements read and 32 written at one byte each; FLOPs and time as measured
    assert (mm.bytes_read, mm.bytes_written, mm.flops, mm.time_s) == (192, 32, 1024, 0.001)
    # 1000 elements per call at one byte over 2 ranks: 1000 bytes sent per call
    assert (ar.collective.message_bytes, ar.bytes) == (2000, 2000)
    with pytest.raises(ValueError, match="positive int"):
        resized((op(),), 0)
    with pytest.raises(ValueError, match="positive int"):
        resized((op(),), True)


def test_a_matmul_crosses_the_ridge_on_another_device():
    # 32x1024 @ 1024x1024 in fp32: 2*32*1024*1024 FLOPs over (32*1024 + 1024*1024 + 32*1024) * 4
    # bytes = 15.06 FLOP/B
    out, weight = 32 * 1024, 1024 * 1024
    row = memwall.Row(op="aten.mm", overload="default", module="", phase="forward", calls=1, dtype="float32",
                      shapes="", flops=2 * 32 * 1024 * 1024, bytes_read=4 * (out + weight), bytes_written=4 * out,
                      elements_read=out + weight, elements_written=out, time_s=0.01)
    rep = memwall.Report(rows=(row,))
    h100, a100 = rep.rescore(device="H100 SXM"), rep.rescore(device="A100 SXM4 80GB")
    # fp32 ridges from the datasheets: H100 SXM 67 TFLOP/s / 3.35 TB/s = 20 FLOP/B (the mm is under
    # it: memory-bound), A100 SXM4 80GB 19.5 TFLOP/s / 2.039 TB/s = 9.6 FLOP/B (over it: compute)
    assert row.intensity == pytest.approx(15.06, abs=0.01)
    assert (h100.rows[0].bound, a100.rows[0].bound) == ("memory", "compute")
    (change,) = a100.bound_changes(h100)
    assert change == (a100.rows[0], h100.rows[0])
    # at one byte per element the intensity is 4x (60 FLOP/B): compute-bound on the H100 too
    assert h100.rescore(bytes_per_element=1).rows[0].bound == "compute"
    with pytest.raises(ValueError, match="same rows"):
        bound_changes(rep.rows, ())
    with pytest.raises(TypeError, match="DeviceSpec"):
        rep.rescore(device=3)  # type: ignore[arg-type]


# -- projection: each row's least time on the what-if's device -----------------------------------


def test_a_saved_cpu_run_projected_on_an_h100_by_hand(tmp_path):
    """A 1024x1024 fp32 matmul and an add of two 4M-float vectors, measured on this CPU and saved;
    rescored for an H100 SXM5, each row's projected time is its roofline time there, worked out
    from the datasheet row (memwall_plugin/data/devices.csv: fp32 67 TFLOP/s, tf32 494.7, HBM3
    3.35 TB/s). Every tensor is fresh to the profile, so its bytes come from HBM, not the L2."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, y = torch.randn(1 << 22), torch.randn(1 << 22)
    measured = memwall.load_report(profiled(lambda: (a @ b, x + y)).save(tmp_path / "cpu.json"))
    assert all(r.projected_time_s is None for r in measured.rows)  # as measured: no projection
    assert measured.projected_time_s is None and measured.speedup is None
    h100 = measured.rescore(device="H100 SXM")
    mm, add = one_row(h100, "aten.mm"), one_row(h100, "aten.add")
    assert (mm.memory_level, add.memory_level, mm.calls, add.calls) == ("HBM", "HBM", 1, 1)
    # mm: 2 * 1024^3 = 2,147,483,648 FLOPs / 67e12 = 32.052 us; its 3 x 4 MiB = 12,582,912 B / 3.35e12
    # = 3.756 us: compute-bound, 32.052 us (the report's tf32 families are empty: a CPU run)
    assert mm.projected_time_s == pytest.approx(32.0520e-6, rel=1e-4)
    # add: 3 x 16 MiB = 50,331,648 B / 3.35e12 = 15.024 us; its 4,194,304 FLOPs / 67e12 = 0.063 us
    assert add.projected_time_s == pytest.approx(15.0244e-6, rel=1e-4)
    assert (mm.bound, add.bound) == ("compute", "memory")
    # both are far above the 2 us launch floor: the projection is the roofline time
    assert all(r.projected_time_s == r.roofline_time_s for r in h100.rows if r.counted)
    assert h100.projected_time_s == pytest.approx(47.0764e-6, rel=1e-4)
    assert h100.speedup == pytest.approx(measured.counted_time_s / 47.0764e-6, rel=1e-4)
    # the same run with torch's TF32 on for matmuls (a CUDA run): the mm under tf32's 494.7 TFLOP/s,
    # 2,147,483,648 / 494.7e12 = 4.341 us, still over its 3.756 us of HBM traffic
    tf32 = dataclasses.replace(measured, tf32=("matmul",)).rescore(device="H100 SXM")
    assert one_row(tf32, "aten.mm").projected_time_s == pytest.approx(4.3410e-6, rel=1e-4)
    # back on the device it ran on, at its own element sizes: a measurement again
    assert h100.rescore(device=measured.device).projected_time_s is None
    # a saved what-if keeps its projection
    assert memwall.load_report(h100.save(tmp_path / "h100.json")) == h100


def test_many_tiny_kernels_stop_at_the_launch_floor():
    # 1000 calls of an 8x16 @ 16x4 fp32 mm: 1,024,000 FLOPs and 896,000 B, 0.27 us of HBM traffic on
    # an H100; launched one by one they take at least 1000 x 2 us = 2 ms
    tiny = op(calls=1000, time_s=0.05)
    view = op("aten.view", flops=0, time_s=0.001)
    view = dataclasses.replace(view, bytes_read=0, bytes_written=0, elements_read=0, elements_written=0)
    unknown = op("mylib.op", flops=None, time_s=0.003)
    rep = memwall.Report(rows=(tiny, view, unknown), collectives=(all_reduce(),), measured_on="a CPU")
    h100 = rep.rescore(device="H100 SXM")
    rows = {r.op: r for r in h100.rows}
    assert rows["aten.mm"].roofline_time_s == pytest.approx(896_000 / 3.35e12)
    assert rows["aten.mm"].projected_time_s == pytest.approx(2e-3)
    assert rows["aten.view"].projected_time_s == 0.0  # a view launches nothing
    assert rows["mylib.op"].projected_time_s is None  # uncounted: unknown, never zero
    assert h100.collectives[0].projected_time_s is None  # collectives are not projected
    # the counted ops took 51 ms here (mm 50, view 1); projected 2 ms, all but 0.27 us of it the floor
    assert h100.projected_time_s == pytest.approx(2e-3)
    assert h100.speedup == pytest.approx(0.051 / 2e-3)
    assert h100.launch_floor_fraction == pytest.approx(1 - 896_000 / 3.35e12 / 2e-3)
    # the memory-bound share is the time at the bandwidth roof: with the floor's, the whole (the
    # cards read "memory-bound 100%" beside "100% launch floor" before)
    assert h100.projected_memory_bound_fraction == pytest.approx(896_000 / 3.35e12 / 2e-3)
    assert h100.projected_memory_bound_fraction + h100.launch_floor_fraction == pytest.approx(1.0)


def test_an_element_size_what_if_on_a_cpu_has_no_launch_floor():
    # a CPU with round roofs: fp32 100 GFLOP/s, 10 GB/s
    cpu = DeviceSpec(key="cpu", name="a CPU", kind="cpu", peaks=(("fp32", Figure(1e11, USER)),),
                     bandwidth=Figure(1e10, USER))
    rep = memwall.Report(rows=place_rows((op(calls=1000, time_s=0.05),), cpu), device=cpu, measured_on="a CPU")
    # at 2 bytes per element: (192 + 32) x 2 x 1000 = 448,000 B / 1e10 = 44.8 us, over its 1,024,000
    # FLOPs / 1e11 = 10.24 us; 1000 calls add nothing on a CPU
    two = rep.rescore(bytes_per_element=2)
    assert two.rows[0].projected_time_s == pytest.approx(44.8e-6)
    assert two.speedup == pytest.approx(0.05 / 44.8e-6)


def test_each_phase_has_its_projection_and_speedup():
    # forward: the 1000 tiny mms (2 ms floor, measured 50 ms); backward: one mm of 2 GFLOP at fp32
    # 67 TFLOP/s = 29.85 us (its 896 B are nothing), measured 20 ms
    big = dataclasses.replace(op(phase="backward", time_s=0.02), flops=2_000_000_000)
    h100 = memwall.Report(rows=(op(calls=1000, time_s=0.05), big), measured_on="a CPU").rescore(device="H100 SXM")
    phases = {g.key: g for g in h100.group_by("phase")}
    assert phases["forward"].projected_time_s == pytest.approx(2e-3)
    assert phases["forward"].speedup == pytest.approx(25.0)
    assert phases["backward"].projected_time_s == pytest.approx(2e9 / 67e12)
    assert phases["backward"].speedup == pytest.approx(0.02 / (2e9 / 67e12))
    assert h100.totals().projected_time_s == pytest.approx(2e-3 + 2e9 / 67e12)


def skinny_gemm_report() -> memwall.Report:
    """One 32x8192 @ 8192x8192 fp32 matmul measured at 10 ms on an A100 SXM4 80GB: 2 x 32 x 8192^2 =
    4,294,967,296 FLOPs over (262,144 + 67,108,864 + 262,144) x 4 = 270,532,608 B: 15.9 FLOP/B,
    over the A100's fp32 ridge (19.5 TFLOP/s / 2.039 TB/s = 9.6), under the H100's (20)."""
    a, w = 32 * 8192, 8192 * 8192
    row = memwall.Row(op="aten.mm", overload="default", module="proj", phase="forward", calls=1, dtype="float32",
                      shapes="[32, 8192] x [8192, 8192]", flops=2 * 32 * 8192 * 8192, bytes_read=4 * (a + w),
                      bytes_written=4 * a, elements_read=a + w, elements_written=a, time_s=0.01)
    a100 = memwall.lookup_device("A100 SXM4 80GB")
    return memwall.Report(rows=place_rows((row,), a100), device=a100, measured_on=a100.name, steps=(0,))


def test_memwall_report_device_prints_and_writes_the_projection(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")  # the summary's header on one line
    run = tmp_path / "run"
    skinny_gemm_report().save(run / "plugins" / "memwall" / "rank0_steps000000-000000.json")
    assert main(["report", str(run), "--device", "H100 SXM", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # on the H100 its bytes take 270,532,608 / 3.35e12 = 80.756 us, its FLOPs 4.295e9 / 67e12 = 64.1 us
    assert data["totals"]["projected_time_s"] == pytest.approx(80.756e-6, rel=1e-4)
    assert data["rows"][0]["projected_time_s"] == pytest.approx(80.756e-6, rel=1e-4)
    assert data["totals"]["speedup"] == pytest.approx(0.01 / 80.756e-6, rel=1e-4)  # 123.8
    assert main(["report", str(run), "--device", "H100 SXM"]) == 0
    out = capsys.readouterr().out
    assert "projected on NVIDIA H100 SXM5 80GB: 80.8 us (124x faster), a roofline bound, not a measurement" in out
    # in bf16: 135,266,304 B at 2 bytes per element / 3.35e12 = 40.378 us, over 4.295e9 / 989.4e12 = 4.34 us
    assert main(["report", str(run), "--device", "H100 SXM", "--dtype", "bf16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["compute_dtype"] == "bfloat16" and data["totals"]["bytes_per_element"] == 2
    assert data["totals"]["projected_time_s"] == pytest.approx(40.378e-6, rel=1e-4)
    assert main(["report", str(run), "--dtype", "bf16"]) == 0
    assert "what-if  every floating-point op computed in bfloat16, under its peak" in capsys.readouterr().out
    # as measured: no projection, in the file and in the JSON
    assert main(["report", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["projected_time_s"] is None and data["rows"][0]["projected_time_s"] is None
    (saved,) = (run / "plugins" / "memwall").glob("*.json")
    assert "projected_time_s" not in json.loads(saved.read_text())["rows"][0]


def test_in_bf16_on_an_h100_by_hand(tmp_path):
    """"What would this run do on an H100, in bf16?": the fp32 matmul and add of the CPU run above,
    computed in bf16 (the H100's dense 989.4 TFLOP/s) with 2-byte tensors."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, y = torch.randn(1 << 22), torch.randn(1 << 22)
    measured = memwall.load_report(profiled(lambda: (a @ b, x + y)).save(tmp_path / "cpu.json"))
    bf16 = measured.rescore(device="H100 SXM", dtype="bf16")
    assert (bf16.compute_dtype, bf16.bytes_per_element) == ("bfloat16", 2)
    mm, add = one_row(bf16, "aten.mm"), one_row(bf16, "aten.add")
    assert (mm.dtype, add.dtype) == ("bfloat16", "bfloat16")
    # mm: 2,147,483,648 FLOPs / 989.4e12 = 2.1705 us, over its 3 x 2 MiB = 6,291,456 B / 3.35e12 = 1.878 us
    assert mm.projected_time_s == pytest.approx(2.1705e-6, rel=1e-4)
    # add: 3 x 8 MiB = 25,165,824 B / 3.35e12 = 7.5122 us
    assert add.projected_time_s == pytest.approx(7.5122e-6, rel=1e-4)
    assert bf16.projected_time_s == pytest.approx(9.6827e-6, rel=1e-4)
    # fp8 (1978.9 TFLOP/s, 1-byte tensors): the mm's 1.085 us of compute is under one launch: 2 us
    assert one_row(measured.rescore(device="H100 SXM", dtype="fp8"), "aten.mm").projected_time_s == \
        pytest.approx(2e-6)
    # a given element size wins over the dtype's: bf16 compute, 1-byte tensors (the add: 3.756 us)
    assert one_row(measured.rescore(device="H100 SXM", dtype="bf16", bytes_per_element=1),
                   "aten.add").projected_time_s == pytest.approx(3.7561e-6, rel=1e-4)
    assert memwall.load_report(bf16.save(tmp_path / "bf16.json")) == bf16
    with pytest.raises(ValueError, match="dtype must be one of"):
        measured.rescore(dtype="int4")


def test_a_dtype_what_if_changes_floating_point_ops_only():
    index = dataclasses.replace(op("aten.index", flops=0), dtype="int64")
    rep = memwall.Report(rows=(op(), index), collectives=(all_reduce(),), measured_on="a CPU")
    fp16 = rep.rescore(device="H100 SXM", dtype="torch.float16")
    assert [r.dtype for r in fp16.rows] == ["float16", "int64"]  # an index stays an integer op
    # its 192 + 32 elements at 2 bytes each, its 1024 FLOPs under fp16's 989.4 TFLOP/s
    assert fp16.rows[0].bytes == 448 and fp16.rows[0].peak_flops_per_s == 989.4e12
    assert fp16.collectives[0].collective.message_bytes == 2 * 2000  # messages at 2 bytes too
