"""The roofline on rows, groups and reports; calibration; what-if re-scoring."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch
from conftest import one_row

import memwall_plugin as memwall
from memwall_plugin import roofline

transformers = pytest.importorskip("transformers")


def test_roofline_formulas():
    # ridge at 10 FLOP/B for a 100 FLOP/s, 10 B/s device
    assert roofline.bound(99, 10, 100.0, 10.0) == "memory"
    assert roofline.bound(100, 10, 100.0, 10.0) == "compute"
    assert roofline.bound(0, 10, 100.0, 10.0) == "memory"  # pure data movement
    assert roofline.bound(0, 0, 100.0, 10.0) == "none"
    assert roofline.bound(None, 10, 100.0, 10.0) == "unknown"
    assert roofline.attainable_flops_per_s(50, 10, 100.0, 10.0) == 50.0  # 5 FLOP/B x 10 B/s
    assert roofline.attainable_flops_per_s(500, 10, 100.0, 10.0) == 100.0
    assert roofline.roofline_time_s(500, 10, 100.0, 10.0) == 5.0
    assert roofline.roofline_time_s(50, 100, 100.0, 10.0) == 10.0
    assert roofline.efficiency(50, 10, 2.0, 100.0, 10.0) == 0.5


@pytest.fixture(scope="module")
def calibrated_cache(tmp_path_factory):
    """A quick calibration of this machine, in a private cache."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEMWALL_CACHE_DIR", str(path))
    spec = memwall.detect_device("cpu")
    memwall.calibrate(spec, quick=True)
    yield path
    mp.undo()


def test_calibrated_figures_are_preferred_and_say_so(calibrated_cache, monkeypatch):
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(calibrated_cache))
    spec = memwall.detect_device("cpu")
    assert spec.peak("float32").source == "calibrated"
    assert spec.bandwidth.source == "calibrated"
    assert spec.peak("int8").source == "estimated"  # not measured: still says so


def test_matmul_is_compute_bound_and_add_memory_bound_on_this_cpu(tmp_path, monkeypatch):
    # measured right before: this shared VM's memory bandwidth drifts by half within minutes
    # (28-46 GB/s on the same triad), more than the tolerance below
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))
    memwall.calibrate(memwall.detect_device("cpu"), quick=True)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    n = 64 * 2**20
    x, y, out = torch.randn(n), torch.randn(n), torch.empty(n)
    out.copy_(x)  # the output buffer already touched, as a training loop reuses its memory
    a @ b
    matmul_shares, add_shares = [], []
    # calibration keeps the best of its repetitions; on a shared machine, so do we
    for _ in range(5):
        with memwall.profile(summary=False) as prof:
            a @ b
            torch.add(x, y, out=out)
            x + y  # a fresh 256 MB output: first-touch page faults cost time, still memory-bound
        rep = prof.report()
        assert rep.device.peak("float32").source == "calibrated"
        mm = one_row(rep, "aten.mm")
        assert mm.bound == "compute"
        matmul_shares.append(mm.achieved_flops_per_s / mm.peak_flops_per_s)
        adds = sorted((r for r in rep.rows if r.op == "aten.add"), key=lambda r: r.time_s)
        assert len(adds) == 2 and all(r.bound == "memory" for r in adds)
        add_shares.append(adds[0].achieved_bytes_per_s / adds[0].bandwidth_bytes_per_s)
        assert rep.memory_bound_time_fraction == pytest.approx(
            sum(r.time_s for r in adds) / rep.total_time_s
        )
    assert max(matmul_shares) >= 0.5, matmul_shares
    # the median: single runs swing by half either way here. Main memory's roof is the best of the
    # streaming kernels (an in-place scale here); an out-of-place add also reads each line of its
    # output before writing it (write-allocate), traffic memwall does not count: 4 bytes move for
    # every 3 counted, so it reaches at most ~3/4 of the roof (0.32-0.42 measured on an EPYC VM,
    # 2026-12-03; 0.51-0.62 on a Xeon VM with a 480 MiB L3, 2026-12-05, once main memory's roof was
    # measured beyond that cache: 0.15 on the CI's host before)
    assert 0.25 <= statistics.median(add_shares) <= 1.2, add_shares


def test_headlines_and_groups(calibrated_cache, monkeypatch):
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(calibrated_cache))
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    x = torch.randn(64, 256)
    with memwall.profile(model=model, summary=False) as prof:
        model(x).sum().backward()
    rep = prof.report()
    predicted = sum(r.roofline_time_s for r in rep.rows if r.flops is not None)
    assert rep.roofline_time_s == pytest.approx(predicted)
    assert 0 < rep.roofline_time_s
    phases = {g.key: g for g in rep.group_by("phase")}
    assert {"forward", "backward"} <= set(phases)
    assert sum(g.flops for g in phases.values()) == rep.total_flops
    tree = {g.key: g for g in rep.group_by("module_tree")}
    assert tree[""].flops == rep.total_flops  # the root rolls up everything
    assert tree["0"].flops == sum(r.flops for r in rep.rows if r.module == "0")
    assert rep.totals().bound in ("memory", "compute")


@pytest.fixture(scope="module")
def decode_report(tmp_path_factory):
    """GPT-2 (2 layers) decoding 16 sequences at once with its KV cache, saved and re-loaded."""
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (16, 8))
    with torch.no_grad(), memwall.profile(model=model, summary=False) as prof:
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5,
                       do_sample=False, pad_token_id=0)
    rep = prof.report()
    decode = dataclasses.replace(rep, rows=tuple(r for r in rep.rows if r.phase == "decode"))
    assert {r.calls for r in decode.rows if r.op == "aten.addmm"} == {4}  # 4 decode steps after the prompt
    path = decode.save(tmp_path_factory.mktemp("decode") / "decode.json")
    return memwall.load_report(path)


def test_rescore_changes_intensity_by_the_element_size_ratio(decode_report):
    eight_bit = decode_report.rescore(device="H100 SXM", bytes_per_element=1)
    assert eight_bit.device.key == "h100-sxm"
    assert eight_bit.total_flops == decode_report.total_flops
    checked = 0
    for before, after in zip(decode_report.rows, eight_bit.rows):
        if before.intensity is None:
            continue
        ratio = before.bytes / (before.elements_read + before.elements_written)
        assert after.intensity == pytest.approx(before.intensity * ratio, rel=1e-12)
        if before.dtype == "float32" and before.op in ("aten.addmm", "aten.mm"):
            assert after.intensity == pytest.approx(4 * before.intensity, rel=1e-12)
            checked += 1
    assert checked >= 9  # 4 linears per layer x 2 layers + lm_head


def test_rescore_moves_batched_decode_matmuls_across_the_ridge(decode_report):
    """Batch-16 decode matmuls run at ~8 FLOP/B in fp32 (below the H100's fp32 ridge of 20)
    and ~31 FLOP/B at 8 bits (above it); elementwise ops stay memory-bound."""
    h100 = decode_report.rescore(device="H100 SXM")
    eight_bit = h100.rescore(bytes_per_element=1)
    ridge = memwall.lookup_device("h100-sxm").ridge_point("float32")
    assert ridge == pytest.approx(67e12 / 3.35e12)
    changes = h100.bound_changes(eight_bit)
    moved = {(a.op, a.module) for a, b in changes}
    linears = {(r.op, r.module) for r in h100.rows if r.op in ("aten.addmm", "aten.mm")}
    assert linears and linears <= moved
    for a, b in changes:
        assert (a.bound, b.bound) == ("memory", "compute")
        assert a.intensity < ridge <= b.intensity
    for r in eight_bit.rows:
        if r.op in ("aten.add", "aten.mul", "aten.native_layer_norm"):
            assert r.bound == "memory"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_detection_event_timing_and_roofline():
    spec = memwall.detect_device("cuda")
    assert spec.kind in ("cuda", "rocm")
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(256 * 2**20, device="cuda")
    a @ a
    x * 2  # warm: a kernel's first launch loads it, and its events would time the load
    torch.cuda.synchronize()
    with memwall.profile(summary=False) as prof:
        a @ a
        x * 2
    rep = prof.report()
    mm, mul = one_row(rep, "aten.mm"), one_row(rep, "aten.mul")
    assert mm.bound == "compute" and mul.bound == "memory"
    assert mm.time_s > 0 and mul.time_s > 0
    assert 0.2 < mm.efficiency <= 1.2
    assert 0.3 < mul.efficiency <= 1.2


def _best_share_of_roof(a: torch.Tensor, b: torch.Tensor, runs: int = 8) -> tuple[float, memwall.Report]:
    """The best achieved share of the fp32 roof of a matmul over a few profiled runs (a shared
    machine's noise only ever slows a run down)."""
    best, rep = 0.0, None
    for _ in range(runs):
        with memwall.profile(summary=False) as prof:
            a @ b
        rep = prof.report()
        row = one_row(rep, "aten.mm")
        best = max(best, row.achieved_flops_per_s / row.peak_flops_per_s)
    assert rep is not None
    return best, rep


def test_first_cpu_profile_measures_the_machine_once_and_caches_it(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MEMWALL_CALIBRATE", "1")
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    torch.manual_seed(1)
    expected_next = torch.randn(4)
    torch.manual_seed(1)
    best, rep = _best_share_of_roof(a, b)
    assert torch.equal(torch.randn(4), expected_next)  # the measurement drew nothing from the user's stream
    assert "measuring this CPU's ceilings once" in capfd.readouterr().err
    assert (tmp_path / "calibration.json").is_file()
    assert rep.device.peak("float32").source == "calibrated" and rep.device.bandwidth.source == "calibrated"
    assert rep.device.peak("bfloat16").source == "estimated"  # not measured: still says so
    assert 0.6 <= best <= 1.3, best
    with memwall.profile(summary=False):
        pass
    assert "measuring" not in capfd.readouterr().err  # once per machine and thread count


@pytest.mark.parametrize("automatic", [True, False])
def test_a_calibration_the_runs_ops_beat_is_measured_again_if_it_was_automatic(tmp_path, monkeypatch, capfd,
                                                                                automatic):
    """An automatic calibration taken while this VM was busy read its fp32 peak 3x low (56.7
    GFLOP/s; a 1024^2 GEMM runs at 171 here) and was kept for good: every later run stood above
    its roof. Now a run whose ops beat it marks it, and the next profile measures again; a
    calibration the user took (`memwall calibrate`) is theirs, and stays."""
    from memwall_plugin.calibration_cache import Calibration, device_fingerprint, load_calibration, save_calibration
    from memwall_plugin.devices import cpu_spec

    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MEMWALL_CALIBRATE", "1")
    spec = cpu_spec()
    low = 1e9  # FLOP/s: any GEMM here beats it
    save_calibration(Calibration(
        fingerprint=device_fingerprint(spec), peaks_flops_per_s={"fp32": low}, bandwidth_bytes_per_s=1e10,
        copy_bytes_per_s=1e10, measured_unix_s=0.0, details={"automatic": True} if automatic else {}))
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    with memwall.profile(logdir=tmp_path / "run") as prof:
        for _ in range(10):
            a @ b
    assert prof.report().device.peak("float32").value == low
    out = capfd.readouterr()
    assert "ran faster than the fp32 peak allows" in " ".join(out.out.split())
    assert "measuring" not in out.err
    with memwall.profile(summary=False):
        pass
    measured = load_calibration(spec).peaks_flops_per_s["fp32"]
    if automatic:
        assert "measuring this CPU's ceilings again" in capfd.readouterr().err
        assert measured > 10 * low
    else:
        assert "measuring" not in capfd.readouterr().err and measured == low


def test_without_a_measurement_the_estimate_fits_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))  # MEMWALL_CALIBRATE=0 (conftest)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    best, rep = _best_share_of_roof(a, b)
    assert rep.device.peak("float32").source == "estimated"
    assert not (tmp_path / "calibration.json").exists()
    assert 0.6 <= best <= 1.3, best


@pytest.mark.parametrize("environ,wanted", [
    ({}, True),
    ({"MEMWALL_CALIBRATE": "0"}, False),
    ({"MEMWALL_CALIBRATE": "off"}, False),
    ({"MEMWALL_DEVICE": "h100"}, False),  # the user chose the roofline
    ({"MEMWALL_PEAKS": "fp32=1e12"}, False),
    ({"WORLD_SIZE": "2"}, False),  # ranks sharing a host would measure each other
    ({"WORLD_SIZE": "not a number"}, False),  # never an error in the user's run
])
def test_when_the_first_profile_measures_the_cpu(tmp_path, monkeypatch, environ, wanted):
    from memwall_plugin.calibrate import auto_calibration_wanted

    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))
    assert auto_calibration_wanted(environ) is wanted
