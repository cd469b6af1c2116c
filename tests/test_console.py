"""The terminal summary: golden text at fixed widths, findings, Jupyter and plain-text rendering.

Regenerate the golden files after an intended change with MEMWALL_REGEN_GOLDEN=1.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import torch
from rich.console import Console

import memwall_plugin as memwall
from memwall_plugin.ceilings import place_rows
from memwall_plugin.console import findings, module_pattern, render_text, si
from memwall_plugin.formulas import REGISTRY

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
        memwall.SummaryOptions(by="shapes")
    assert memwall.SummaryOptions().with_(top=3).top == 3


# --- set-up: in the totals, out of the shares and findings ---------------------------------------


def _memory_bound(op: str, phase: str = "forward") -> memwall.Row:
    # 1 GFLOP over 2 GB: 0.5 FLOP/B, left of an A100's ridge
    return _row(op, "transformer.h.0.attn", phase, 1, 1_000_000_000, 1_000_000_000, 1_000_000_000, 0.010)


def _on_a100(*rows: memwall.Row) -> memwall.Report:
    device = memwall.lookup_device("a100-sxm4-80gb")
    return memwall.Report(rows=place_rows(rows, device), device=device, steps=(0,), wall_time_s=0.02,
                          measured_on=device.name)


def test_setup_is_out_of_the_findings_and_named_in_the_header():
    # 60 ms of weight init before 40 ms of work: the setup is neither a finding nor in the shares
    init = _row("aten.normal_", "", "setup", 4, 24_000_000, 0, 96_000_000, 0.060)
    rep = _on_a100(init, _memory_bound("aten.mul"), _row("aten.mm", "a", "forward", 1, 8_000_000_000, 90_000_000,
                                                          20_000_000, 0.030))
    notes = findings(rep)
    assert notes[0].startswith("25% of op time is in memory-bound elementwise ops")  # 10 ms of 40
    assert not any("outside-the-model" in f or "normal_" in f for f in notes)
    text = render_text(rep, width=100)
    assert "time     100.0 ms in ops" in text
    assert "setup    60 ms of it before the first forward (weight init, data): not counted in the shares" in text
    assert "25% of op time memory-bound" in text



def test_setup_line_is_left_out_when_it_says_nothing():
    """Every notebook profile's summary read "setup    0 us of it before the first forward (weight
    init, data; 61 us of the wall time)": no set-up op, and a start-up too short to show."""
    from memwall_plugin.records import SETUP_WALL_KEY

    work = (_memory_bound("aten.mul"),)
    quick = dataclasses.replace(_on_a100(*work), extra={SETUP_WALL_KEY: 61e-6})  # of 20 ms: 0.3%
    assert not any(line.startswith("setup") for line in render_text(quick, width=100).splitlines())
    # a start-up the wall time shows (data read before the first forward, no op in it) is said
    slow = dataclasses.replace(_on_a100(*work), wall_time_s=2.02, extra={SETUP_WALL_KEY: 2.0})
    assert "(weight init, data; 2 s of the wall time)" in render_text(slow, width=100)
    # set-up ops are said however short their start-up
    init = _row("aten.normal_", "", "setup", 1, 1_000, 0, 4_000, 30e-6)
    ops = dataclasses.replace(_on_a100(init, *work), extra={SETUP_WALL_KEY: 61e-6})
    assert "setup    30 us of it before the first forward (weight init, data; 61 us of the wall time)" in \
        render_text(ops, width=100)

# --- findings that fit the op family, the device and the run ------------------------------------

NO_BF16_CPU = "flags\t: avx avx2 fma\n"  # bf16 converted to fp32 on the fly
AMX_CPU = "flags\t: avx avx2 fma avx512f amx_bf16 amx_tile\n"


def _conv_only_run() -> memwall.Report:
    """Convolutions and nothing else, measured on this CPU."""
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 32, 3, padding=1),
                                torch.nn.Conv2d(32, 32, 3, padding=1, groups=32))
    x = torch.randn(4, 8, 32, 32)
    with torch.no_grad(), memwall.profile(summary=False) as prof:
        for _ in range(3):
            model(x)
    rep = prof.report()
    assert {REGISTRY.family(r.op, r.overload) for r in rep.rows if r.time_s > 0.1 * rep.total_time_s} == {"conv"}
    return rep


def _measured_on(rep: memwall.Report, spec: memwall.DeviceSpec) -> memwall.Report:
    """The run's rows placed on `spec`, as if measured there (its roofs, not a what-if)."""
    return dataclasses.replace(rep, rows=place_rows(rep.rows, spec), device=spec, measured_on=spec.name)


def _cpu(flags: str, fp32: float, bandwidth: float) -> memwall.DeviceSpec:
    return memwall.cpu_spec(threads=2, cpuinfo=flags, max_khz="2500000", caches=[]).with_figures(
        peaks={"fp32": fp32}, bandwidth=bandwidth)


def test_a_run_already_channels_last_is_not_told_to_use_channels_last():
    """A vision user's run, model and images channels_last, whose convolutions are memory-bound
    was told "channels_last (model.to(memory_format=torch.channels_last)) runs them without
    layout copies": what it already did. The report says which share of the convolutions' time
    ran on channels_last images (forward and backward), and the advice follows it. The truth: the
    layouts the test chose."""
    def run(channels_last: bool) -> memwall.Report:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(8, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 1))
        x = torch.randn(2, 8, 32, 32)
        if channels_last:
            model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        with memwall.profile(model=model, summary=False) as prof:
            model(x).square().mean().backward()
        return prof.report()

    nchw, nhwc = run(False), run(True)
    assert nchw.extra["channels_last_share"] == 0.0 and nhwc.extra["channels_last_share"] == 1.0
    spec = _cpu(NO_BF16_CPU, 1e13, 1e9)  # a roof far above the bandwidth: every convolution memory-bound
    told = " ".join(findings(_measured_on(nchw, spec)))
    assert "memory-bound convolution ops" in told and "memory_format=torch.channels_last" in told
    told = " ".join(findings(_measured_on(nhwc, spec)))
    assert "memory-bound convolution ops" in told and "memory_format=torch.channels_last" not in told
    assert "they run channels_last already" in told
    # a run of no convolution says nothing about layouts
    with memwall.profile(summary=False) as prof:
        torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert "channels_last_share" not in prof.report().extra


def test_a_conv_only_cpu_run_gets_convolution_advice_and_no_gpu_or_decoding_advice():
    run = _conv_only_run()
    # a roof far above the bandwidth: every convolution memory-bound
    memory = " ".join(findings(_measured_on(run, _cpu(NO_BF16_CPU, 1e13, 1e9))))
    assert "memory-bound convolution ops" in memory and "channels_last" in memory
    assert "rows per weight" not in memory and "decoding" not in memory
    # a ridge of 1 FLOP/B: every convolution compute-bound, far under a roof it cannot reach
    compute = findings(_measured_on(run, _cpu(NO_BF16_CPU, 1e15, 1e15)))
    roof = next(f for f in compute if f.startswith("compute-bound ops reach"))
    # its sizes (8 and 32 channels, 32 x 32 images) are multiples of 8: no shapes to check
    assert "bf16" not in roof and "GPU" not in roof and "dtype" not in roof and "multiples of 8 already" in roof
    amx = findings(_measured_on(run, _cpu(AMX_CPU, 1e15, 1e15)))
    assert any("bf16, which this CPU runs natively on AMX" in f for f in amx)


def test_the_estimated_figures_finding_names_the_roofs_the_run_stands_under():
    """After `memwall calibrate` the int8 peak stays estimated (calibration times floating-point
    GEMMs): a float run was still told to run `memwall calibrate`, forever."""
    run = _conv_only_run()
    estimated = memwall.cpu_spec(threads=2, cpuinfo=AMX_CPU, max_khz="2500000", caches=[])
    (note,) = [f for f in findings(_measured_on(run, estimated)) if "estimated, not measured" in f]
    assert note.startswith("the fp32 peak and the DRAM bandwidth are estimated") and "memwall calibrate" in note
    assert "int8" not in note and "bf16" not in note  # no row stands under them
    calibrated = estimated.with_figures(peaks={"fp32": 3e11, "fp64": 1.5e11, "bf16": 2e12, "fp16": 3e11},
                                        bandwidth=4e10, source="calibrated")
    assert dict(calibrated.peaks)["int8"].source == "estimated"
    assert not [f for f in findings(_measured_on(run, calibrated)) if "estimated" in f]
    # an int8 matmul on that machine: its peak is named, and how to set it, not calibration
    a, b = torch.randint(-8, 8, (64, 64), dtype=torch.int8), torch.randint(-8, 8, (64, 64), dtype=torch.int8)
    with memwall.profile(summary=False) as prof:
        torch._int_mm(a, b)
    (note,) = [f for f in findings(_measured_on(prof.report(), calibrated)) if "estimated" in f]
    assert note.startswith("the int8 peak is estimated") and "MEMWALL_PEAKS" in note
    assert "run `memwall calibrate`" not in note


def test_ops_faster_than_their_compute_peak_say_the_peak_is_wrong_and_how_to_measure_it():
    """An automatic calibration taken while the machine was busy read this CPU's fp32 peak 3x low
    (56.7 GFLOP/s where a 1024^2 GEMM runs at 171) and was kept: a compiled Llama's matmuls stood
    at 218% of their roof, and nothing said why. Here real matmuls, measured on this CPU, placed
    under peaks they beat and one they cannot."""
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    with memwall.profile(summary=False) as prof:
        for _ in range(20):
            a @ b
    run = prof.report()
    (mm,) = [r for r in run.rows if r.op == "aten.mm"]
    rate = mm.flops / mm.time_s  # what the matmuls ran at here
    for source, says in (("calibrated", "run `memwall calibrate`"), ("user", "the peak given"),
                         ("estimated", "the estimate is low")):
        low = _cpu(NO_BF16_CPU, rate / 4, 1e12).with_figures(peaks={"fp32": rate / 4}, source=source)
        (note,) = [f for f in findings(_measured_on(run, low)) if "faster than the fp32 peak" in f]
        assert "(mm;" in note and says in note, note
        assert float(re.search(r"up to ([0-9.]+)x", note).group(1)) == pytest.approx(4, abs=0.1)
    # a peak the matmuls do not beat by a quarter: nothing to say
    for peak in (rate, rate / 1.2, 1e15):
        fine = _cpu(NO_BF16_CPU, peak, 1e12).with_figures(peaks={"fp32": peak}, source="calibrated")
        assert not [f for f in findings(_measured_on(run, fine)) if "faster than" in f]


def test_memory_bound_ops_spread_over_a_sequentials_children_are_placed_by_their_names():
    """A top-level nn.Sequential's children are `0`, `1`, ...: the finding named them `*`."""
    model = torch.nn.Sequential(*[torch.nn.GELU() for _ in range(5)])
    x = torch.randn(256, 1024)
    with memwall.profile(summary=False) as prof:
        for _ in range(3):
            model(x)
    (note,) = [f for f in findings(prof.report()) if "memory-bound elementwise ops" in f]
    assert "most under `0`, `1`, `2`, ... (gelu)" in note and "`*`" not in note, note


@pytest.mark.parametrize(("shapes", "misaligned"), [("[4096, 1030] x [1030, 1000]", True),
                                                   ("[4096, 1024] x [1024, 1024]", False),
                                                   ("[8, 50257] x [50257, 768]", True), ("[8, 3, 224, 224]", False)])
def test_the_compute_roof_finding_asks_for_multiples_of_8_only_where_a_size_is_not_one(shapes, misaligned):
    """"check shapes (multiples of 8 or 16)" was said whatever the shapes: an RL run whose every
    matmul size was 8, 64, 128 or 256 was told to check them. Small sizes (3 channels) are left out."""
    mm = dataclasses.replace(_row("aten.mm", "a", "forward", 1, 8_000_000_000, 90_000_000, 20_000_000, 0.030),
                             shapes=shapes)
    (note,) = [f for f in findings(_on_a100(mm)) if f.startswith("compute-bound ops reach")]
    assert ("multiples of 8 or 16" in note) == misaligned, note
    assert ("multiples of 8 already" in note) == (not misaligned), note


def test_a_what_if_on_another_device_has_no_compute_roof_finding():
    here = _measured_on(_conv_only_run(), _cpu(NO_BF16_CPU, 1e15, 1e15))
    assert any(f.startswith("compute-bound ops reach") for f in findings(here))
    h100 = here.rescore(device="H100 SXM")
    # its convolutions are compute-bound far under the H100's roof, in times measured on this CPU
    assert any(r.bound == "compute" and r.efficiency is not None and r.efficiency < 0.01 for r in h100.rows)
    assert not any("of their roof" in f for f in findings(h100))
    assert "what-if  times measured on" in render_text(h100, width=100)


def test_matmul_advice_names_decoding_only_when_the_run_decodes():
    (note,) = [f for f in findings(_on_a100(_memory_bound("aten.mm"))) if "memory-bound" in f]
    assert "matmul ops" in note and "a larger batch" in note and "decoding" not in note
    decoding = _on_a100(_memory_bound("aten.mm", "decode"), _memory_bound("aten.mm"))
    assert any("batched decoding" in f for f in findings(decoding))


def test_attention_gets_its_own_advice():
    (note,) = [f for f in findings(_on_a100(_memory_bound("aten._scaled_dot_product_flash_attention_for_cpu")))
               if "memory-bound" in f]
    assert "memory-bound attention ops" in note and "grouped-query attention" in note
    assert "rows per weight" not in note


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
    # at the bandwidth roof there: 107.46 + 23.88 + 47.76 + 835.82 + 1.79 = 1016.71 us of 1198.02
    # (85%); the floor adds 4 - 1.79 = 2.21 us (0.2%)
    assert "85% of it at memory roofs there, 0.2% the launch floor (2 us per kernel)" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("op "))
    assert lines[header].split()[-3:] == ["bound", "projected", "speed-up"] and "roof" not in lines[header]
    embedding = next(line for line in lines if line.startswith("embedding "))
    assert embedding.split()[-3:] == ["4", "us", "500x"]  # 2 ms measured / 4 us
    for width in (120, 100, 80):
        assert max(len(line) for line in render_text(rep, width=width).splitlines()) <= width
    # measured times against the H100's roofs say nothing about the kernels: no roof finding
    assert not any("of their roof" in note for note in findings(rep))


def test_a_float64_run_shows_the_fp64_roof_its_rows_stand_under():
    """A float64 run (scientific ML) was placed under the fp64 peak while the header named only
    fp32, bf16, fp16 and tf32: its "% of roof" was of a peak the summary never showed."""
    fp32 = handmade_report()
    device = fp32.device
    fp64 = dataclasses.replace(fp32, rows=place_rows(tuple(dataclasses.replace(r, dtype="float64")
                                                            for r in fp32.rows), device))
    lines = {line.split()[0]: line for line in render_text(fp64, width=160).splitlines() if line.strip()}
    assert f"fp64 {si(dict(device.peaks)['fp64'].value, 'FLOP/s')}" in lines["peaks"]
    ridge = dict(device.peaks)["fp64"].value / device.bandwidth.value
    assert re.search(r"fp64 ([\d.]+) FLOP/B", lines["memory"])
    assert float(re.search(r"fp64 ([\d.]+) FLOP/B", lines["memory"]).group(1)) == pytest.approx(ridge, rel=0.01)
    for line in render_text(fp32, width=160).splitlines():
        if line.startswith(("peaks", "memory")):
            assert "fp64" not in line  # a float32 run: only the usual precisions


@pytest.mark.parametrize(("make", "says", "never"), [
    (lambda p: torch.optim.AdamW(p), "AdamW(..., fused=True)", "no fused form"),
    (lambda p: torch.optim.AdamW(p, fused=True), "AdamW runs fused already", "fused=True"),
    (lambda p: torch.optim.RMSprop(p), "RMSprop has no fused form in torch", "fused=True"),
    (lambda p: torch.optim.Adafactor(p), "Adafactor has no fused form in torch", "fused=True"),
])
def test_the_optimizer_advice_names_a_fused_form_only_where_torch_has_one_unused(make, says, never, tmp_path):
    """The memory-bound optimizer finding advised fused=True whatever ran: RMSprop, Adafactor,
    LBFGS and Muon have no fused form (fused=True raises), and an AdamW already fused was told to
    fuse. The advice now reads which optimizers stepped (`Report.extra["optimizers"]`)."""
    from memwall_plugin.console import advice

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
    opt = make(model.parameters())
    x = torch.randn(8, 16)
    with memwall.profile(model=model, summary=False) as prof:
        for _ in range(2):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            prof.step()
    rep = prof.report()
    text = advice("optimizer", rep)
    assert says in text and never not in text, text
    rep.save(tmp_path / "r.json")  # and as the report file keeps it
    assert advice("optimizer", memwall.load_report(tmp_path / "r.json")) == text


@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")
@pytest.mark.parametrize("case", ["sparse", "two_adams"])
def test_the_optimizer_advice_follows_each_optimizer_not_its_class(case):
    """A recommender's Adagrad stepping a sparse=True embedding was advised fused=True, which raises
    on sparse gradients; a GAN's two Adams, the discriminator's fused, read as one fused Adam ("runs
    fused already") while the generator's unfused one did the work the finding was about."""
    from memwall_plugin.console import advice

    torch.manual_seed(0)
    if case == "sparse":
        emb = torch.nn.EmbeddingBag(1000, 16, mode="sum", sparse=True)
        opts = [torch.optim.Adagrad(emb.parameters())]

        def loss() -> torch.Tensor:
            return emb(torch.randint(0, 1000, (64,)), torch.arange(0, 64, 4)).pow(2).mean()
    else:
        d, g = torch.nn.Linear(16, 1), torch.nn.Linear(8, 16)
        opts = [torch.optim.Adam(d.parameters(), fused=True), torch.optim.Adam(g.parameters())]

        def loss() -> torch.Tensor:
            return d(g(torch.randn(4, 8))).mean()
    with memwall.profile(summary=False) as prof:
        for _ in range(2):
            loss().backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
            prof.step()
    text = advice("optimizer", prof.report())
    if case == "sparse":
        assert "fused=True" not in text and "Adagrad updates sparse gradients" in text, text
        # what the advice would have had the user run: torch refuses it
        fused = torch.optim.Adagrad(emb.parameters(), fused=True)
        loss().backward()
        with pytest.raises(RuntimeError, match="sparse"):
            fused.step()
    else:
        assert "Adam(..., fused=True)" in text and "runs fused already" not in text, text


def test_findings_of_a_what_if_on_another_device_compare_nothing_measured_here_with_its_roofs():
    """The tab's what-if device re-scores the run: its findings compared rates measured on this CPU
    with the H100's roofs ("they run from L2 at 8.47 MB/s, 0.0% of its 8.48 TB/s") and advised
    `memwall calibrate`, which measures this machine, not the H100. As measured, they stand."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU()) for _ in range(8)])
    with memwall.profile(summary=False) as prof:
        for _ in range(3):
            model(torch.randn(4, 32)).sum().backward()
            prof.step()
    rep = prof.report()
    here = " ".join(findings(rep))
    assert "they run from" in here or "calibrate" in here  # what the CPU run says of its own roofs
    projected = rep.rescore(device="h100-sxm")
    assert projected.measured_elsewhere
    there = " ".join(findings(projected))
    assert "they run from" not in there and "calibrate" not in there and "above" not in there, there
