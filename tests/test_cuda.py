"""The CUDA paths: device detection, event timing, counting on GPU kernels, bit-identical results.

Every test here needs a CUDA device and skips cleanly without one (CI has none). Ground truth is
the same hand counts the CPU tests use, the CPU run of the same model (counting depends on shapes,
not on the device), and torch's own view of the device (its properties, cuda events)."""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.diff import COMPILED_REGION
from memwall_plugin.records import CUDA_GRAPHS_KEY
from tests.conftest import decode, one_row, profiled
from tests.test_unusual_models import Block  # the same checkpointed block as on CPU

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
transformers = pytest.importorskip("transformers")

MATMULS = {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}


def _props() -> Any:
    return torch.cuda.get_device_properties(torch.cuda.current_device())


def test_detected_gpu_matches_torchs_view_of_it():
    spec = memwall.detect_device()  # CUDA wins when present
    props = _props()
    assert spec.kind == "cuda"
    assert spec.memory_bytes == props.total_memory
    assert spec.bandwidth_bytes_per_s and spec.peak_flops_per_s("float32") and spec.peak_flops_per_s("bfloat16")
    name = props.name
    if "H100" in name and "HBM3" in name:  # the SXM5 part reports itself as "NVIDIA H100 80GB HBM3"
        assert spec.key == "h100-sxm"
        assert spec.bandwidth_bytes_per_s == 3.35e12 and spec.peak_flops_per_s("bfloat16") == 989.4e12
    elif "H200" in name:
        assert spec.key.startswith("h200")
        assert spec.bandwidth_bytes_per_s == 4.8e12
    if spec.key != "gpu-estimated":
        model = spec.key.split("-")[0].upper()  # "h100-sxm" -> "H100"
        assert model in name.upper(), (spec.key, name)


def test_event_times_are_device_times_and_fit_in_the_wall_time(monkeypatch):
    monkeypatch.setenv("MEMWALL_CUDA_TIME", "events")  # the fallback clock, chosen
    a = torch.randn(4096, 4096, device="cuda")
    x = torch.randn(64 * 2**20, device="cuda")
    a @ a
    x.mul_(1.0)  # warm: the first launch of a kernel loads it, and events would time the load
    torch.cuda.synchronize()
    start = time.perf_counter()
    with memwall.profile(summary=False) as prof:
        for _ in range(3):
            a @ a
            x.mul_(1.0)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    rep = prof.report()
    mm, mul = one_row(rep, "aten.mm"), one_row(rep, "aten.mul_")
    # the device time of the same kernels, timed bare with cuda events
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    for _ in range(3):
        a @ a
    end.record()
    end.synchronize()
    bare_mm_s = begin.elapsed_time(end) / 1e3
    assert mm.calls == 3 and mul.calls == 3
    assert 0.5 < mm.time_s / bare_mm_s < 2.0, (mm.time_s, bare_mm_s)
    assert sum(r.time_s for r in rep.rows) <= wall
    # 3 x 64 Mi fp32 elements read and written in place: 1.5 GiB, at HBM speed not launch speed
    assert mul.bytes == 3 * 2 * 4 * 64 * 2**20
    assert mul.bound == "memory" and 0.3 < mul.efficiency <= 1.2
    assert "CUDA events" in rep.extra["time_source"]["cuda"]  # the report says how its times were taken
    assert "timing   CUDA events" in memwall.render_text(rep, width=120)


def test_fp32_matmul_is_placed_under_the_tf32_roof_when_torch_allows_it():
    spec = memwall.detect_device()
    if spec.peak_flops_per_s("tf32") is None:
        pytest.skip("this GPU has no TF32 peak")
    a = torch.randn(1024, 1024, device="cuda")
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for allowed, roof in ((False, "float32"), (True, "tf32")):
            torch.backends.cuda.matmul.allow_tf32 = allowed
            rep = profiled(lambda: a @ a)
            assert one_row(rep, "aten.mm").peak_flops_per_s == spec.peak_flops_per_s(roof), allowed
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _gpt2(layers: int = 2) -> Any:
    cfg = transformers.GPT2Config(n_layer=layers, n_embd=256, n_head=4, vocab_size=1000, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return cfg, transformers.GPT2LMHeadModel(cfg)


ATTENTION = "aten._scaled_dot_product"


def _by_phase(rep: memwall.Report, attention: bool = False) -> dict[str, int]:
    """FLOPs per phase of the attention rows (`attention`) or of every other row."""
    totals: dict[str, int] = collections.Counter()
    for r in rep.rows:
        if r.op.startswith(ATTENTION) == attention:
            totals[r.phase] += r.flops or 0
    return dict(totals)


def test_counts_on_cuda_equal_counts_on_cpu_and_the_hand_count():
    """The same work on both, except causal attention: the CPU's flash kernel computes the causal
    band in whole tiles (counted tile for tile), a GPU's kernels the pairs the mask keeps."""
    cfg, model = _gpt2()
    ids = torch.randint(0, cfg.vocab_size, (2, 64))
    reports = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        x = ids.to(device)

        def step(model: Any = model, x: torch.Tensor = x) -> None:
            model(x, labels=x).loss.backward()
            model.zero_grad()

        step()
        reports[device] = profiled(step, model=model)
    cpu, gpu = reports["cpu"], reports["cuda"]
    assert not gpu.uncounted, [r.name for r in gpu.uncounted]
    assert _by_phase(gpu) == _by_phase(cpu)
    on_gpu, on_cpu = _by_phase(gpu, attention=True), _by_phase(cpu, attention=True)
    assert on_gpu.keys() == on_cpu.keys() == {"forward", "backward"}
    assert all(0 < on_gpu[p] < on_cpu[p] for p in on_gpu), (on_gpu, on_cpu)

    def matmul_rows(rep: memwall.Report) -> dict[tuple[str, str, str, str], tuple[int, int, int, int]]:
        return {(r.op, r.module, r.phase, r.shapes): (r.calls, r.flops or 0, r.bytes_read, r.bytes_written)
                for r in rep.rows if r.op in MATMULS}

    assert matmul_rows(gpu) == matmul_rows(cpu)
    # hand count: the four linears of each block, forward, batch 2 x 64 tokens
    s, d = 2 * 64, cfg.n_embd
    per_layer = 2 * s * d * 3 * d + s * 3 * d + 2 * s * d * d + s * d + 2 * s * d * 4 * d + s * 4 * d \
        + 2 * s * 4 * d * d + s * d
    linears = sum(r.flops for r in gpu.rows if r.op == "aten.addmm" and r.phase == "forward"
                  and r.module.startswith("transformer.h."))
    assert linears == cfg.n_layer * per_layer


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("name", ["gpt2", "bert", "resnet"])
def test_every_op_of_a_cuda_training_step_is_counted(name, autocast):
    """cuDNN convolutions and batch norm, fused attention kernels, fused AdamW: GPU-only ops."""
    if name == "gpt2":
        cfg, model = _gpt2()
        ids = torch.randint(0, cfg.vocab_size, (2, 64), device="cuda")

        def loss_of(m: Any) -> torch.Tensor:
            return m(ids, labels=ids).loss
    elif name == "bert":
        bert_cfg = transformers.BertConfig(num_hidden_layers=2)
        model = transformers.BertForSequenceClassification(bert_cfg)
        ids = torch.randint(0, bert_cfg.vocab_size, (2, 64), device="cuda")
        labels = torch.tensor([0, 1], device="cuda")

        def loss_of(m: Any) -> torch.Tensor:
            return m(ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    else:
        model = transformers.ResNetForImageClassification(transformers.ResNetConfig())
        images, labels = torch.randn(2, 3, 64, 64, device="cuda"), torch.tensor([0, 1], device="cuda")

        def loss_of(m: Any) -> torch.Tensor:
            return m(images, labels=labels).loss
    model.to("cuda").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(model)
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()
    rep = profiled(step, model=model)
    assert not rep.uncounted, sorted({r.name for r in rep.uncounted})
    assert {"forward", "backward", "optimizer"} <= {r.phase for r in rep.rows}
    assert all(r.time_s >= 0 for r in rep.rows) and sum(r.time_s for r in rep.rows) > 0
    if autocast:
        assert any(r.dtype == "bfloat16" and r.op in MATMULS | {"aten.convolution"} for r in rep.rows)


def _deterministic_steps(profile: bool, steps: int = 2) -> tuple[list[torch.Tensor], ...]:
    cfg, _ = _gpt2()
    cfg_drop = transformers.GPT2Config(**{**cfg.to_dict(), "resid_pdrop": 0.1, "attn_pdrop": 0.1})
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(cfg_drop).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(2)
    ids = torch.randint(0, cfg.vocab_size, (2, 64), device="cuda")
    losses: list[torch.Tensor] = []
    grads: list[torch.Tensor] = []

    def run() -> None:
        for _ in range(steps):
            loss = model(ids, labels=ids).loss  # dropout on: the CUDA RNG stream must not move
            loss.backward()
            grads[:] = [p.grad.clone() for p in model.parameters() if p.grad is not None]
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())

    if profile:
        with memwall.profile(model=model, summary=False):
            run()
    else:
        run()
    return losses, grads, [p.detach().clone() for p in model.parameters()]


def test_profiling_leaves_cuda_losses_gradients_and_weights_bit_identical(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        bare, again, watched = (_deterministic_steps(p) for p in (False, False, True))
    finally:
        torch.use_deterministic_algorithms(was)
    for first, second, third in zip(bare, again, watched, strict=True):
        assert len(first) == len(third)
        for a, b, c in zip(first, second, third, strict=True):
            assert torch.equal(a, b), "the bare run is not deterministic on this GPU"
            assert torch.equal(a, c)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_recompute_on_autograd_cuda_thread_keeps_its_module_paths(use_reentrant):
    """On CUDA, backward runs on autograd's device thread; checkpointing re-runs forward there."""
    block, head = Block().cuda(), torch.nn.Linear(4, 1).cuda()
    model = torch.nn.ModuleDict({"block": block, "head": head})
    x = torch.randn(2, 4, device="cuda", requires_grad=True)
    calls: list[tuple[bool, bool]] = []  # (on the main thread, inside backward) per block forward
    main = threading.get_ident()
    # a pre-hook: non-reentrant recomputation stops early, inside the block, once it has what
    # backward needs, so the block's forward (post) hooks do not run the second time
    block.register_forward_pre_hook(
        lambda *_: calls.append((threading.get_ident() == main, torch._C._current_autograd_node() is not None)))

    def step() -> None:
        head(checkpoint(block, x, use_reentrant=use_reentrant)).sum().backward()

    rep = profiled(step, model=model)
    # once in forward, once recomputed inside backward on autograd's CUDA thread
    assert calls[0] == (True, False) and len(calls) == 2 and not calls[1][0], calls
    recompute = {(r.op, r.module): r.flops for r in rep.filter(phase="recompute") if r.flops}
    assert recompute == {("aten.addmm", "block.lin"): 2 * 2 * 4 * 4 + 8, ("aten.tanh", "block.act"): 8}
    backward = {r.module for r in rep.filter(phase="backward") if r.op == "aten.mm"}
    assert {"block.lin", "head"} <= backward


def test_generation_on_cuda_splits_prefill_and_decode_and_decode_is_memory_bound():
    cfg, model = _gpt2()
    model.cuda().eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 32), device="cuda")
    new_tokens = 8
    with memwall.profile(model=model, summary=False) as prof:
        model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    rep = prof.report()
    lm_head = {r.phase: r.calls for r in rep.rows if r.module == "lm_head" and r.op == "aten.mm"}
    assert lm_head == {"prefill": 1, "decode": new_tokens - 1}
    phases = {g.key: g for g in rep.group_by("phase")}
    assert phases["decode"].intensity < phases["prefill"].intensity / 5
    decode_linears = [r for r in rep.filter(phase="decode") if r.op in MATMULS]
    assert decode_linears and all(r.bound == "memory" for r in decode_linears)


def test_nccl_collective_is_counted_and_sized_on_one_rank(tmp_path):
    dist = torch.distributed
    if not dist.is_nccl_available():
        pytest.skip("torch was built without NCCL")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        t = torch.ones(1024, 1024, device="cuda")
        dist.all_reduce(t)
        torch.cuda.synchronize()
        with memwall.profile(summary=False) as prof:
            for _ in range(2):
                dist.all_reduce(t)
            torch.cuda.synchronize()
        rep = prof.report()
    finally:
        dist.destroy_process_group()
    assert rep.distributed and rep.collectives, "no collectives recorded"
    assert rep.backend == "nccl"
    rows = [c for c in rep.collectives if c.collective.kind == "all_reduce"]
    assert rows and sum(c.calls for c in rows) == 2
    assert all(c.collective.message_bytes == 4 * 1024 * 1024 * c.calls for c in rows)


def _run_cli(*args: str, env: dict[str, str] | None = None) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "memwall_plugin.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_calibrate_measures_figures_near_the_datasheet(tmp_path):
    spec = memwall.detect_device()
    if spec.key == "gpu-estimated":
        pytest.skip("no datasheet figures for this GPU")
    out = _run_cli("calibrate", "--kind", "cuda", "--quick", env={"MEMWALL_CACHE_DIR": str(tmp_path)})
    assert "bandwidth" in out.lower() or "GB/s" in out
    from memwall_plugin.calibrate import load_calibration

    os.environ["MEMWALL_CACHE_DIR"] = str(tmp_path)  # restored by conftest's monkeypatch
    cal = load_calibration(spec)
    assert cal is not None
    # STREAM triad reaches 60-100% of HBM on datacentre GPUs; never above the datasheet
    assert 0.4 < cal.bandwidth_bytes_per_s / spec.bandwidth_bytes_per_s < 1.1
    for key, dtype in (("bf16", "bfloat16"), ("fp32", "float32")):
        measured = cal.peaks_flops_per_s.get(key)
        assert measured is not None and 0.3 < measured / spec.peak_flops_per_s(dtype) < 1.1, (key, measured)



def test_the_gpus_l2_is_a_memory_level_and_a_16_mb_elementwise_op_runs_under_it():
    """Issue 20 on a GPU: the L2 from the device's own properties, with a source; an op whose
    16 MB input and 16 MB output stay in it (100 calls on the same buffers) is placed under it."""
    props = _props()
    spec = memwall.detect_device("cuda")
    (l2,) = spec.caches
    assert (l2.name, l2.capacity_bytes) == ("L2", props.L2_cache_size)
    assert "L2_cache_size" in l2.capacity_source and l2.bandwidth is not None and l2.bandwidth.source
    assert spec.memory_levels[-1].name in ("HBM", "GDDR", "DRAM")
    if l2.capacity_bytes < 2 * 16 * 2**20:
        pytest.skip(f"{props.name}'s L2 ({l2.capacity_bytes / 2**20:.0f} MiB) cannot hold 2 x 16 MB")
    x = torch.rand(4 * 2**20, device="cuda")
    y = torch.empty_like(x)
    with memwall.profile(summary=False) as prof:
        for _ in range(100):
            torch.mul(x, 2.0, out=y)
    row = one_row(prof.report(), "aten.mul")
    assert row.memory_level == "L2" and row.in_cache, (row.memory_level, row.reuse)
    assert row.efficiency is not None and row.efficiency <= 1.3, row.efficiency


# --- the GPU's own record: each op's kernels (hooks/kernel_clock.py) --------------------------------

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def _traced_kernels(fn: Any, path: Any) -> list[tuple[str, float]]:
    """(name, seconds) of each kernel, copy and set torch.profiler records while `fn` runs, read
    from its Chrome trace as a user would."""
    import json

    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as tp:
        fn()
        torch.cuda.synchronize()
    tp.export_chrome_trace(str(path))
    events = json.loads(path.read_text())["traceEvents"]
    return [(e["name"], e["dur"] * 1e-6) for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]


def test_each_op_is_timed_by_the_kernels_torch_profiler_records_for_it(tmp_path):
    from memwall_plugin.records import CUDA_KERNEL_TIME

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=4, n_embd=1024, n_head=16, vocab_size=8192, n_positions=512)
    model = transformers.GPT2LMHeadModel(cfg).cuda().eval()
    ids = torch.randint(0, 8192, (8, 512), device="cuda")

    def step() -> None:
        with torch.no_grad():
            model(ids)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with memwall.profile(summary=False) as prof:
        step()
    rep = prof.report()
    assert rep.extra["time_source"]["cuda"] == CUDA_KERNEL_TIME
    assert "timing   the kernels each op ran" in memwall.render_text(rep, width=160)
    traced = _traced_kernels(step, tmp_path / "step.json")
    total, traced_total = sum(r.time_s for r in rep.rows), sum(s for _, s in traced)
    assert total == pytest.approx(traced_total, rel=0.05)
    traced_names = {name for name, _ in traced}
    owners: dict[str, set[str]] = collections.defaultdict(set)
    by_op: dict[str, float] = collections.defaultdict(float)
    for r in rep.rows:
        assert (r.time_s > 0) == bool(r.kernels), r  # time only where kernels ran, and then always
        assert set(r.kernels) <= traced_names, r
        by_op[r.op] += r.time_s
        for k in r.kernels:
            owners[k].add(r.op)
    traced_by_name: dict[str, float] = collections.defaultdict(float)
    for name, seconds in traced:
        traced_by_name[name] += seconds
    checked = []
    for op, seconds in by_op.items():
        names = {k for k, ops in owners.items() if op in ops}
        if seconds < 0.02 * total or any(len(owners[k]) > 1 for k in names):
            continue  # a kernel two ops ran cannot be split between them from the trace
        assert seconds == pytest.approx(sum(traced_by_name[k] for k in names), rel=0.05), op
        checked.append(op)
    assert len(checked) >= 3 and MATMULS & set(checked), checked


def test_a_batch_1_gpt2_decode_step_is_reported_launch_bound():
    from memwall_plugin.console import findings

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).cuda().eval()  # GPT-2 small
    ids = torch.randint(0, 50257, (1, 32), device="cuda")
    with torch.no_grad():
        token, cache = decode(model, ids)
        for _ in range(3):  # warm: each kernel's first launch loads it
            token, cache = decode(model, token, cache)
        torch.cuda.synchronize()
        with memwall.profile(summary=False) as prof:
            decode(model, token, cache)
    rep = prof.report()
    timeline = rep.extra["timeline"]
    assert 0 < timeline["device_busy_s"] < timeline["wall_s"]
    assert timeline["idle_fraction"] >= 0.5, timeline
    (said,) = [f for f in findings(rep) if "launch-bound" in f]
    assert f"idle {timeline['idle_fraction']:.0%}" in said and "memwall's own" in said
    assert f"per op over {timeline['op_calls']:,} ops" in said


def test_under_a_users_torch_profiler_ops_are_timed_with_cuda_events_and_the_report_says_so():
    a = torch.randn(2048, 2048, device="cuda")
    a @ a
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as tp:
        with memwall.profile(summary=False) as prof:
            a @ a
        torch.cuda.synchronize()
    rep = prof.report()
    source = rep.extra["time_source"]["cuda"]
    assert "CUDA events" in source and "another torch.profiler" in source, source
    assert one_row(rep, "aten.mm").time_s > 0 and "timeline" not in rep.extra
    assert any(e.name == "aten::mm" for e in tp.events())  # the user's profiler kept its record


def test_a_torch_profiler_opened_inside_memwall_takes_the_gpu_record_over():
    a = torch.randn(2048, 2048, device="cuda")
    a @ a
    a.relu()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with memwall.profile(summary=False) as prof:
        a @ a  # timed by its kernel
        with torch.profiler.profile(activities=acts) as tp:
            a.relu()  # timed with CUDA events while the user's profiler records
            torch.cuda.synchronize()
    rep = prof.report()
    mm, relu = one_row(rep, "aten.mm"), one_row(rep, "aten.relu")
    assert mm.kernels and mm.time_s > 0
    assert relu.time_s > 0 and not relu.kernels
    assert "in some steps" in rep.extra["time_source"]["cuda"]
    assert "timeline" not in rep.extra  # the step's record is partial: no idle share from it
    assert any(e.name == "aten::relu" for e in tp.events())  # the user's profiler has its record


def test_a_gpu_trace_read_by_memwall_analyze_has_each_ops_kernel_time(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=512, n_head=8, vocab_size=8192, n_positions=256)
    model = transformers.GPT2LMHeadModel(cfg).cuda()
    ids = torch.randint(0, 8192, (4, 256), device="cuda")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()

    step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts, record_shapes=True) as tp:
        step()
        torch.cuda.synchronize()
    path = tmp_path / "step.pt.trace.json"
    tp.export_chrome_trace(str(path))
    import json

    traced = sum(e["dur"] for e in json.loads(path.read_text())["traceEvents"]
                 if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS) * 1e-6
    rep = memwall.analyze_trace(path)
    # each op that launched kernels has their time; views and size queries, which launched none, none
    assert all(r.time_s == 0 for r in rep.rows if not r.kernels and r.bytes == 0 and not r.flops)
    assert sum(r.time_s for r in rep.rows if r.kernels) == pytest.approx(traced, rel=0.05)
    mm = [r for r in rep.rows if r.op in MATMULS]
    assert mm and all(r.time_s > 0 and r.kernels and r.flops for r in mm)
    assert {r.phase for r in mm} >= {"forward", "backward"}
    assert 0 < rep.extra["timeline"]["device_busy_s"] <= rep.extra["timeline"]["wall_s"]


def _kernel_rows(rep: memwall.Report) -> list[Any]:
    """A compiled run's kernel rows (each Inductor kernel or library call its regions ran)."""
    return [r for r in rep.rows if r.op == "higher_order.inductor_compiled_code" and "(kernel " in r.shapes]


def _traced_kernels(fn: Any) -> dict[str, float]:
    """torch.profiler's record of the kernels one call of `fn` ran: name -> seconds."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as tp:
        fn()
        torch.cuda.synchronize()
    out: dict[str, float] = collections.defaultdict(float)
    for e in tp.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out[e.name] += e.device_time * 1e-6  # us -> s
    return out


def test_a_compiled_function_on_cuda_is_its_triton_kernel_row_timed_by_the_kernel():
    torch._dynamo.reset()
    n = 2**26
    x = torch.randn(n, device="cuda")
    fn = torch.compile(lambda t: torch.relu(t * 2 + 1))
    expected = fn(x)
    torch.cuda.synchronize()
    with memwall.profile(summary=False) as prof:
        y = fn(x)
    assert torch.equal(y, expected)
    rep = prof.report()
    (row,) = _kernel_rows(rep)
    assert "triton_" in row.shapes and row.kernels and all(k.startswith("triton_") for k in row.kernels)
    # by hand: mul, add, relu, one FLOP per element each; fused, x read once and the result written once
    assert row.flops == 3 * n
    assert row.bytes == 2 * 4 * n
    assert row.eager_bytes == 6 * 4 * n
    # its time is its kernel's, as torch.profiler records the same kernel
    traced = _traced_kernels(lambda: fn(x))
    (name,) = [k for k in traced if k.startswith("triton_")]
    assert name in row.kernels
    assert row.time_s == pytest.approx(traced[name], rel=0.10)
    # the region's own row ran nothing on the device
    assert sum(r.time_s for r in rep.rows if r is not row) < 0.05 * row.time_s


def test_a_compiled_gpt2_step_on_cuda_is_its_kernels_each_counted_and_timed():
    import transformers

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=4096, n_positions=128,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).cuda()
    compiled = torch.compile(model)
    ids = torch.randint(0, 4096, (4, 128), device="cuda")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        compiled(ids, labels=ids).loss.backward()

    step()  # compiles forward and backward
    torch.cuda.synchronize()
    with memwall.profile(summary=False, model=model) as prof:
        step()
    rep = prof.report()
    with memwall.profile(summary=False, model=model, compiled="eager") as prof:
        step()
    eager = prof.report()
    kernels = _kernel_rows(rep)
    triton = [r for r in kernels if "(kernel triton_" in r.shapes]
    assert triton and {r.phase for r in triton} == {"forward", "backward"}
    assert all(r.flops is not None and r.bytes > 0 and r.time_s > 0 and r.kernels for r in triton), \
        [r.shapes[:80] for r in triton if not (r.flops is not None and r.time_s > 0)]
    # the GEMMs stay library calls, timed by their cuBLAS kernels
    gemms = [r for r in kernels if "(kernel extern_kernels." in r.shapes]
    assert gemms and all(r.time_s > 0 and r.flops for r in gemms)
    # each Triton row's kernel is one torch.profiler records for the same step
    traced = _traced_kernels(step)
    assert {k for r in triton for k in r.kernels} <= set(traced)
    # the kernels' FLOPs: the eager run's, but for what Inductor recomputes (<= 10% here)
    compiled_flops = sum(r.flops or 0 for r in rep.rows if r.phase in ("forward", "backward"))
    eager_flops = sum(r.flops or 0 for r in eager.rows if r.phase in ("forward", "backward"))
    assert eager_flops <= compiled_flops <= 1.10 * eager_flops, (compiled_flops, eager_flops)
    # and its time: the kernels' total within 10% of torch.profiler's for the step
    assert sum(r.time_s for r in rep.rows) == pytest.approx(sum(traced.values()), rel=0.10)


def test_a_region_compiled_with_reduce_overhead_is_one_row_per_graph_and_the_report_says_why():
    """torch.compile(mode="reduce-overhead"): the region runs as a CUDA graph (warm-up, record,
    then replays). memwall changes nothing (bits), counts each call from the region's graph,
    times it whole and says that the graph hid the kernels."""
    torch._dynamo.reset()
    n = 2**24
    x = torch.randn(n, device="cuda")
    fn = torch.compile(lambda t: torch.relu(t * 2 + 1), mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay: the graph exists before memwall starts
        expected = fn(x).clone()
    torch.cuda.synchronize()
    with memwall.profile(summary=False) as prof:
        got = [fn(x).clone() for _ in range(4)]
    assert all(torch.equal(g, expected) for g in got)
    rep = prof.report()
    assert rep.extra[CUDA_GRAPHS_KEY] == {"region_calls": 4}
    regions = [r for r in rep.rows if r.op == COMPILED_REGION]
    assert sum(r.calls for r in regions) == 4
    assert sum(r.flops or 0 for r in regions) == 4 * 3 * n  # mul, add, relu per element, per call
    assert all(r.time_s > 0 for r in regions)
    assert any("ran as CUDA graphs" in f for f in findings(rep))


def test_ops_captured_into_a_users_cuda_graph_are_not_counted_and_the_replays_run_as_without_memwall():
    a = torch.randn(256, 256, device="cuda")
    static = torch.empty_like(a)
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch's docs do it
        static.copy_(a @ a)
    torch.cuda.current_stream().wait_stream(side)
    with memwall.profile(summary=False) as prof:
        torch.relu(a)
        with torch.cuda.graph(graph):
            static.copy_(a @ a)
        for _ in range(3):
            graph.replay()
        torch.relu(a)
    torch.cuda.synchronize()
    assert torch.equal(static, a @ a)
    rep = prof.report()
    assert "aten.mm" not in {r.op for r in rep.rows}  # captured, not run then
    assert rep.extra[CUDA_GRAPHS_KEY]["captured_calls"]["aten.mm"] == 1
    assert any("captured into a CUDA graph" in f for f in findings(rep))
    # memwall's timing events stayed out of the graph: the ops after the replays are timed sanely
    (relu,) = [r for r in rep.rows if r.op == "aten.relu"]
    assert relu.calls == 2 and 0 < relu.time_s < 0.01


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU], ids=["lstm", "gru"])
def test_recurrent_layers_on_cuda_count_as_on_cpu(cls):
    """cuDNN runs a whole nn.LSTM or nn.GRU as one op (_cudnn_rnn): counted as the same layers on
    CPU count (oneDNN's LSTM layer, the GRU cell's separate ops), forward and backward."""
    torch.manual_seed(0)
    module = cls(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 8)
    with torch.no_grad():
        on_cpu = profiled(lambda: module(x))
    module.cuda()
    with torch.no_grad():
        on_gpu = profiled(lambda: module(x.cuda()))
    assert not on_gpu.uncounted, [r.name for r in on_gpu.uncounted]
    assert sum(r.flops or 0 for r in on_gpu.rows) == sum(r.flops or 0 for r in on_cpu.rows)
    trained = profiled(lambda: module(x.cuda())[0].sum().backward())
    assert not trained.uncounted, [r.name for r in trained.uncounted]
