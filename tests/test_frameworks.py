"""Training steps as frameworks write them: the forward and backward run inside
`optimizer.step(closure)` (Lightning's automatic optimization, LBFGS), a module called from a
method of the module that holds it (a LightningModule's `training_step`), and host time."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import rows_of

import memwall_plugin as memwall
from memwall_plugin.console import findings, host_time_share


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _phase_flops(rep: memwall.Report) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rep.rows:
        out[r.phase] = out.get(r.phase, 0) + (r.flops or 0)
    return out


def _train(closure: bool, steps: int = 3) -> tuple[memwall.Report, torch.Tensor]:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(8, 16)
    with memwall.profile(model=model, summary=False) as prof:
        for _ in range(steps):
            def step() -> torch.Tensor:
                opt.zero_grad()
                loss = model(x).pow(2).mean()
                loss.backward()
                return loss

            if closure:
                opt.step(step)
            else:
                step()
                opt.step()
            prof.step()
    return prof.report(), model[0].weight.detach().clone()


def test_a_closure_step_has_the_phases_of_an_explicit_loop():
    explicit, w_explicit = _train(closure=False)
    closed, w_closed = _train(closure=True)
    assert torch.equal(w_explicit, w_closed)  # the same training, bit for bit
    # forward and backward inside optimizer.step(closure) are forward and backward work, with the
    # explicit loop's totals per phase; only AdamW's update is "optimizer"
    assert _phase_flops(closed) == _phase_flops(explicit)
    assert set(_phase_flops(closed)) == {"forward", "backward", "optimizer"}
    forward = {(r.op, r.module) for r in closed.rows if r.phase == "forward"}
    assert {("aten.addmm", "0"), ("aten.gelu", "1"), ("aten.addmm", "2")} <= forward
    optimizer_ops = {r.op for r in closed.rows if r.phase == "optimizer"}
    assert not optimizer_ops & {"aten.addmm", "aten.gelu", "aten.mm"}, optimizer_ops
    assert {r.module for r in closed.rows if r.phase == "optimizer"} == {""}


class _LitLike(torch.nn.Module):
    """The shape of a LightningModule: `training_step` calls `self.net`; `forward` never runs."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _model()

    def training_step(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).pow(2).mean()


def test_modules_are_named_from_the_module_whose_method_calls_them():
    lit = _LitLike()
    opt = torch.optim.SGD(lit.parameters(), lr=0.1)
    x = torch.randn(8, 16)
    with memwall.profile(summary=False) as prof:  # no model=: roots are found as modules run
        opt.step(lambda: (opt.zero_grad(), lit.training_step(x).backward())[-1])
    rep = prof.report()
    forward = {(r.op, r.module) for r in rep.rows if r.phase == "forward"}
    assert {("aten.addmm", "net.0"), ("aten.gelu", "net.1"), ("aten.addmm", "net.2")} <= forward
    backward_modules = {r.module for r in rep.rows if r.phase == "backward"}
    assert {"net.0", "net.2"} <= backward_modules  # weight gradients go to the modules that own them


def test_a_plain_model_call_keeps_its_own_names():
    model, x = _model(), torch.randn(4, 16)
    with memwall.profile(summary=False) as prof:
        model(x)
    assert {r.module for r in prof.report().rows} == {"0", "1", "2"}


def _report_with_wall(wall_s: float, op_s: float) -> memwall.Report:
    row = memwall.Row(op="aten.mm", overload="default", module="", phase="forward", calls=1, dtype="float32",
                      shapes="", flops=10**9, bytes_read=10**6, bytes_written=10**6, elements_read=1,
                      elements_written=1, time_s=op_s)
    return memwall.Report(rows=(row,), steps=(0,), wall_time_s=wall_s)


def test_host_time_is_a_finding_when_it_bounds_the_step():
    host_bound = _report_with_wall(wall_s=2.145, op_s=0.388)  # the HF Trainer run: 82% outside ops
    assert host_time_share(host_bound) == (2.145 - 0.388) / 2.145
    (note,) = [f for f in findings(host_bound) if "outside any op" in f]
    assert note.startswith("82% of the recorded steps' wall time is outside any op")
    op_bound = _report_with_wall(wall_s=1.0, op_s=0.93)
    assert not [f for f in findings(op_bound) if "outside any op" in f]


def test_a_host_bound_generation_is_told_to_batch_not_to_load_data_with_workers():
    """A generate() call of one new token (a prefill, no decode step) whose own Python between
    model calls bounds it was advised "larger batches, a DataLoader with workers", and its ops
    outside the model "move it into DataLoader workers": a generation loads no data in its loop.
    The run: a tiny GPT-2 whose logits processor sleeps (the host's own work)."""
    transformers = pytest.importorskip("transformers")
    from memwall_plugin.console import advice

    class Slow(transformers.LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            time.sleep(0.2)
            return scores

    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)).eval()
    ids = torch.randint(1, 100, (1, 8))
    with memwall.profile(model=model, summary=False) as prof, torch.no_grad():
        model.generate(ids, max_new_tokens=1, do_sample=False, pad_token_id=0,
                       logits_processor=transformers.LogitsProcessorList([Slow()]))
    rep = prof.report()
    assert {r.phase for r in rep.rows} >= {"prefill"} and "decode" not in {r.phase for r in rep.rows}
    (note,) = [f for f in findings(rep) if "outside any op" in f]
    assert "DataLoader" not in note and "generate()" in note and "more sequences per call" in note, note
    assert "DataLoader" not in advice("outside-the-model", rep)
    assert "generate()" in advice("outside-the-model", rep)
    # generate()'s own steps run between the model's calls: compiling the model, or a static cache,
    # does not fuse them (a run using both was told to use both)
    assert "does not reach them" in advice("outside-the-model", rep)
    assert "fuses them" not in advice("outside-the-model", rep)
    # a decoding run's matmul advice stays a decoding run's
    assert "batched decoding" not in advice("matmul", rep)
    # what ran before the model's first call was generate()'s, not weight init or data alone
    from memwall_plugin.console import render_text
    assert {"setup", "prefill"} <= {r.phase for r in rep.rows}
    assert "(weight init, data, generate()'s preparation of the inputs" in render_text(rep, width=160)


def test_a_host_bound_cpu_run_is_not_told_to_use_cuda_graphs():
    """A CPU run bound by its Python was advised CUDA graphs, which a CPU has not: compiling
    (fewer, fused ops, fewer dispatches from Python) is its remedy."""
    model, x = _model(), torch.randn(4, 16)
    with memwall.profile(summary=False) as prof:
        for _ in range(3):
            model(x)
            time.sleep(0.05)  # the loop's own Python: data, logging
            prof.step()
    rep = prof.report()
    assert rep.device is not None and rep.device.kind == "cpu"
    (note,) = [f for f in findings(rep) if "outside any op" in f]
    assert "CUDA graphs" not in note and "torch.compile" in note, note


def test_a_host_bound_compiled_cpu_run_is_not_told_to_compile():
    """A compiled training loop's host time was answered with "torch.compile (fewer, fused ops)",
    which it already ran: what is left to compile is between its regions."""
    torch._dynamo.reset()
    model, x = _model(), torch.randn(4, 16)
    compiled = torch.compile(model)
    compiled(x)  # compiled before the profile
    with memwall.profile(summary=False) as prof:
        for _ in range(3):
            compiled(x)
            time.sleep(0.05)  # the loop's own Python: data, logging
            prof.step()
    (note,) = [f for f in findings(prof.report()) if "outside any op" in f]
    assert "torch.compile (" not in note and "graph breaks" in note, note


def test_a_gemm_bound_loop_has_no_host_time_finding():
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    with memwall.profile(summary=False) as prof:
        for _ in range(3):
            a @ b
            prof.step()
    rep = prof.report()
    assert host_time_share(rep) < 0.5, (rep.wall_time_s, rep.total_time_s)
    assert not [f for f in findings(rep) if "outside any op" in f]


def test_memwalls_own_time_is_measured_and_left_out_of_the_host_time(monkeypatch):
    """memwall made slow on purpose (2 ms of its own after each op): the report says how much of
    the wall time was memwall's, and the host-time share and finding leave it out."""
    import time

    from memwall_plugin.hooks.capture import Capture

    from memwall_plugin.records import OWN_TIME_KEY

    real = Capture.record

    def slow(self, *args, **kwargs):
        time.sleep(0.002)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Capture, "record", slow)
    x = torch.randn(64, 64)
    with memwall.profile(summary=False) as prof:
        for _ in range(50):
            x = x + 1
    rep = prof.report()
    own = rep.extra[OWN_TIME_KEY]
    assert 50 * 0.002 <= own <= rep.wall_time_s
    assert (rep.wall_time_s - rep.total_time_s) / rep.wall_time_s > 0.9  # memwall's sleeps, nearly all of it
    assert host_time_share(rep) < 0.5, (rep.wall_time_s, rep.total_time_s, own)
    assert not [f for f in findings(rep) if "outside any op" in f]
    assert "memwall itself" in str(rep)


def test_grad_scaler_work_is_labelled_as_such():
    """AMP's GradScaler: unscaling and the inf checks are `grad_scaler` work, AdamW's update alone
    is `optimizer`, and the training is the same, bit for bit."""

    def train(prof: memwall.profile | None) -> torch.Tensor:
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        x = torch.randn(8, 16)
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
            if prof is not None:
                prof.step()
        return model[0].weight.detach().clone()

    bare = train(None)
    with memwall.profile(summary=False) as prof:
        watched = train(prof)
    assert torch.equal(bare, watched)
    rep = prof.report()
    phases = {r.op: r.phase for r in rep.rows if r.op.startswith("aten._amp_")}
    assert phases == {"aten._amp_foreach_non_finite_check_and_unscale_": "grad_scaler",
                      "aten._amp_update_scale_": "grad_scaler"}
    assert not {r.op for r in rep.rows if r.phase == "optimizer"} & set(phases)
    assert {r.phase for r in rep.rows} >= {"forward", "backward", "optimizer", "grad_scaler"}
    # the wrappers are gone once the profile ends
    assert torch.amp.GradScaler.update.__qualname__ == "GradScaler.update"
    assert "method" not in torch.amp.GradScaler.unscale_.__code__.co_name


def test_an_iteration_whose_update_the_grad_scaler_skips_is_a_step_of_its_own():
    """Steps that end at optimizer steps (`memwall run`): an fp16 run's first iterations overflow
    while the GradScaler's scale settles, and it skips their optimizer step. Each such iteration
    joined the next one's step (six iterations read as three steps, the first holding four
    forwards). The truth: the iterations the loop ran, AdamW's own step count, the scale's halvings."""

    def train(prof: memwall.profile | None) -> tuple[torch.Tensor, int, list[float]]:
        model = _model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        # a scale near fp32's largest: the scaled gradients overflow until it has halved enough
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)
        x = torch.randn(8, 16) * 8
        scales = []
        for _ in range(6):
            opt.zero_grad()
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
        return model[0].weight.detach().clone(), int(opt.state[model[0].weight]["step"]), scales

    bare, updates, scales = train(None)
    skipped = [i for i in range(6) if i == 0 and scales[0] < 2.0**127 or i > 0 and scales[i] < scales[i - 1]]
    assert 0 < len(skipped) == 6 - updates < 6, (scales, updates)  # some skipped, some updated
    with memwall.profile(summary=False, step_on_optimizer=True) as prof:
        watched, watched_updates, watched_scales = train(prof)
    assert torch.equal(bare, watched) and (watched_updates, watched_scales) == (updates, scales)
    rep = prof.report()
    assert rep.steps == tuple(range(6)), rep.steps
    assert rep.extra["scaler_skipped_steps"] == skipped
    # one forward per step: the first layer's addmm once each
    assert sum(r.calls for r in rows_of(rep, "aten.addmm") if r.module == "0" and r.phase == "forward") == 6
    assert f"steps {skipped[0]}-{skipped[-1]}: the GradScaler skipped the optimizer's update" in " ".join(
        str(rep).split())


def test_steps_can_be_numbered_from_the_frameworks_count(tmp_path):
    """A resumed training at global step 10: memwall's steps go on from it, the schedule still
    counts from the profile's first step (wait one, record two)."""
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with memwall.profile(logdir=tmp_path, summary=False, scalars=False, first_step=10,
                         schedule=memwall.schedule(wait=1, warmup=0, active=2)) as prof:
        for _ in range(4):
            a @ b
            prof.step()
    assert prof.report().steps == (11, 12) and prof.step_num == 14
    assert [p.name for p in prof.saved] == ["rank0_steps000011-000012.json"]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="first_step"):
            memwall.profile(first_step=bad)


# --- steps the optimizer ends (memwall run): the tail after the last is no step ------------------


def _five_optimizer_steps_then_evaluate(prof_args: dict, tmp_path) -> memwall.profile:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 16)
    with memwall.profile(logdir=tmp_path, summary=False, step_on_optimizer=True, **prof_args) as prof:
        for _ in range(5):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():  # the tail: an evaluation after training, an op found nowhere else
            torch.special.erfinv(torch.tanh(model(x)) * 0.5)
    return prof


def _scalar_steps(logdir) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("memwall/flops")}


def test_the_tail_after_the_last_optimizer_step_is_kept_but_is_no_step(tmp_path):
    prof = _five_optimizer_steps_then_evaluate({}, tmp_path)
    rep = prof.report()
    assert rep.steps == (0, 1, 2, 3, 4)
    assert rows_of(rep, "aten.erfinv") and rep.tail_op_time_s is not None and rep.tail_op_time_s > 0
    (saved,) = prof.saved
    assert saved.name == "rank0_steps000000-000004.json"
    assert memwall.load_report(saved).tail_op_time_s == rep.tail_op_time_s
    # one scalar per step, and the last is a whole step: 2 Linear forwards, backwards, an SGD update
    flops = _scalar_steps(tmp_path)
    assert sorted(flops) == [0, 1, 2, 3, 4]
    assert flops[4] == flops[1] and flops[4] > 0


def test_a_tail_after_a_window_the_schedule_saved_is_not_recorded(tmp_path):
    prof = _five_optimizer_steps_then_evaluate({"schedule": memwall.schedule(wait=0, warmup=0, active=5)},
                                               tmp_path)
    rep = prof.report()
    assert rep.steps == (0, 1, 2, 3, 4) and not rows_of(rep, "aten.erfinv") and rep.tail_op_time_s is None
    assert [p.name for p in prof.saved] == ["rank0_steps000000-000004.json"]


def test_without_optimizer_steps_the_whole_run_is_one_step(tmp_path):
    with memwall.profile(logdir=tmp_path, summary=False, step_on_optimizer=True) as prof:
        _model()(torch.randn(2, 16))
    rep = prof.report()
    assert rep.steps == (0,) and rep.tail_op_time_s is None
