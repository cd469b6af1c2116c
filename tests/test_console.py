"""The terminal summary: golden text at fixed widths, findings, Jupyter and plain-text rendering.

Regenerate the golden files after an intended change with MEMWALL_REGEN_GOLDEN=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

import memwall_plugin as memwall
from memwall_plugin.console import findings, module_pattern, render_text

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("MEMWALL_REGEN_GOLDEN") == "1"


def _row(op, module, phase, calls, flops, read, written, time_s, dtype="float32"):
    return memwall.Row(
        op=op, overload="default", module=module, phase=phase, calls=calls, dtype=dtype,
        shapes="[8, 768]", flops=flops, bytes_read=read, bytes_written=written,
        elements_read=read // 4, elements_written=written // 4, time_s=time_s,
    )


def handmade_report() -> memwall.Report:
    """A small training step with round numbers, placed on an A100's roofline."""
    rows = (
        _row("aten.addmm", "transformer.h.0.mlp.c_fc", "forward", 2, 4_000_000_000, 40_000_000,
             10_000_000, 0.020),
        _row("aten.mm", "transformer.h.0.mlp.c_fc", "backward", 4, 8_000_000_000, 90_000_000,
             20_000_000, 0.030),
        _row("aten.mul", "transformer.h.0.mlp.act", "forward", 6, 30_000_000, 240_000_000,
             120_000_000, 0.025),
        _row("aten.tanh", "transformer.h.1.mlp.act", "forward", 2, 10_000_000, 40_000_000, 40_000_000, 0.010),
        _row("aten.native_layer_norm", "transformer.h.0.ln_1", "forward", 2, 70_000_000, 80_000_000,
             80_000_000, 0.008),
        _row("aten.embedding", "transformer.wte", "forward", 2, 0, 3_000_000, 3_000_000, 0.002),
        _row("aten._fused_adamw_", "", "optimizer", 1, 1_400_000_000, 1_600_000_000, 1_200_000_000, 0.004),
        _row("aten.view", "transformer.h.0.attn", "forward", 10, 0, 0, 0, 0.0001),
        _row("mylib.custom", "transformer.h.1.attn", "forward", 2, None, 8_000_000, 4_000_000, 0.0009),
    )
    device = memwall.lookup_device("a100-sxm4-80gb")
    from memwall_plugin.ceilings import place_rows

    return memwall.Report(
        rows=place_rows(rows, device), device=device, steps=(0, 1), wall_time_s=0.125,
        measured_on=device.name, torch_version="2.13.0", created_unix_s=0.0,
    )


@pytest.mark.parametrize("width", [120, 100, 80])
def test_summary_text_is_golden(width):
    text = render_text(handmade_report(), width=width)
    path = GOLDEN / f"summary_w{width}.txt"
    if REGEN:
        path.write_text(text)
    assert text == path.read_text(), f"summary at width {width} changed; MEMWALL_REGEN_GOLDEN=1 to accept"
    assert max(len(line) for line in text.splitlines()) <= width


def test_summary_by_module_is_golden():
    text = render_text(handmade_report(), width=100, options=memwall.SummaryOptions(by="module", top=5))
    path = GOLDEN / "summary_by_module_w100.txt"
    if REGEN:
        path.write_text(text)
    assert text == path.read_text()


def test_memory_bound_rows_are_marked_and_headline_is_right():
    rep = handmade_report()
    text = render_text(rep, width=100)
    mul_line = next(line for line in text.splitlines() if line.startswith("mul "))
    assert "MEMORY" in mul_line
    addmm_line = next(line for line in text.splitlines() if line.startswith("addmm "))
    assert "compute" in addmm_line
    # by hand: memory-bound rows are mul, tanh, layer_norm, embedding, the fused AdamW step
    memory_time = 0.025 + 0.010 + 0.008 + 0.002 + 0.004
    assert rep.memory_bound_time_fraction == pytest.approx(memory_time / rep.total_time_s)
    assert f"{memory_time / rep.total_time_s:.0%} of op time memory-bound" in text


def test_findings_name_the_memory_bound_elementwise_work():
    notes = findings(handmade_report())
    assert notes[0].startswith("35% of op time is in memory-bound elementwise ops")
    assert "`transformer.h.*.mlp.act`" in notes[0] and "torch.compile" in notes[0]
    assert any("without a FLOP formula" in n and "mylib.custom" in n for n in notes) is False  # 1% < 5%
    assert module_pattern("transformer.h.11.mlp.act") == "transformer.h.*.mlp.act"


def test_no_color_when_not_a_terminal_and_html_for_jupyter():
    rep = handmade_report()
    console = Console(file=__import__("io").StringIO(), width=100)  # not a terminal
    console.print(rep)
    assert "\x1b[" not in console.file.getvalue()
    html = rep._repr_html_()
    assert "<" in html and "MEMORY" in html and "addmm" in html
    color = Console(file=__import__("io").StringIO(), width=100, force_terminal=True, color_system="standard")
    color.print(rep)
    assert "\x1b[" in color.file.getvalue()


def test_options_are_validated():
    with pytest.raises(ValueError, match="by must be"):
        memwall.SummaryOptions(by="shape")
    assert memwall.SummaryOptions().with_(top=3).top == 3


def test_a_what_if_summary_leads_with_the_projection():
    """The handmade step (measured on an A100) projected on an H100 SXM5, worked by hand from its
    datasheet row: fp32 67 TFLOP/s, HBM3 3.35 TB/s (no TF32: the run's tf32 families are empty)."""
    rep = handmade_report().rescore(device="H100 SXM")
    # addmm 4e9 / 67e12 = 59.70 us; mm 8e9 / 67e12 = 119.40 us (compute); by their bytes at 3.35 TB/s:
    # mul 360 MB 107.46 us, tanh 80 MB 23.88 us, layer norm 160 MB 47.76 us, AdamW 2.8 GB 835.82 us;
    # the embedding's 6 MB take 1.79 us, under the floor of its 2 calls: 4 us; the view none
    assert rep.projected_time_s == pytest.approx(1198.02e-6, abs=0.01e-6)
    text = render_text(rep, width=120)
    # 99.1 ms measured in counted ops / 1.198 ms = 82.7x
    assert "projected on NVIDIA H100 SXM5 80GB: 1.2 ms (83x faster), a roofline bound, not a measurement" in text
    # forward 59.70 + 107.46 + 23.88 + 47.76 + 4 = 242.8 us against 65.1 ms; backward 30 ms; optimizer 4 ms
    assert "forward 243 us (268x faster), backward 119 us (251x faster), optimizer 836 us (4.8x faster)" in text
    # memory-bound there: 1018.92 us of 1198.02 (85%); the floor adds 4 - 1.79 = 2.21 us (0.2%)
    assert "85% of it in ops memory-bound there, 0.2% the launch floor (2 us per kernel)" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("op "))
    assert lines[header].split()[-3:] == ["bound", "projected", "speed-up"] and "roof" not in lines[header]
    embedding = next(line for line in lines if line.startswith("embedding "))
    assert embedding.split()[-3:] == ["4", "us", "500x"]  # 2 ms measured / 4 us
    for width in (120, 100, 80):
        assert max(len(line) for line in render_text(rep, width=width).splitlines()) <= width
    # measured times against the H100's roofs say nothing about the kernels: no roof finding
    assert not any("of their roof" in note for note in findings(rep))
