"""whatif.py: a report re-scored for another element size or device, by hand-worked examples."""

from __future__ import annotations

import pytest
from test_rows import all_reduce, op

import memwall_plugin as memwall
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
