"""Capture: module paths and phases, aggregation, schedules, and a clean lifecycle."""

from __future__ import annotations

import json
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import one_row, profiled, rows_of
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optim_module
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

import memwall_plugin as memwall


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.inner(x) * 2)


def _per_op_hook_counts() -> tuple[int, ...]:
    """What costs time per module call or per op (optimizer hooks fire once per step)."""
    return (
        len(nn_module._global_forward_pre_hooks),
        len(nn_module._global_forward_hooks),
        len(_get_current_dispatch_mode_stack()),
    )


def _global_hook_counts() -> tuple[int, ...]:
    return (
        len(nn_module._global_forward_pre_hooks),
        len(nn_module._global_forward_hooks),
        len(optim_module._global_optimizer_pre_hooks),
        len(optim_module._global_optimizer_post_hooks),
        len(_get_current_dispatch_mode_stack()),
    )


@pytest.mark.parametrize("pass_model", [True, False])
def test_forward_and_backward_ops_carry_named_modules_paths(pass_model):
    model = Block()
    x = torch.randn(4, 16)
    rep = profiled(lambda: model(x).sum().backward(), model=model if pass_model else None)
    fwd = {r.module for r in rows_of(rep, "aten.addmm", "forward")}
    assert fwd == {"inner.0", "inner.2", "head"}
    # backward matmuls go to the module whose forward made them
    bwd = {r.module for r in rep.filter(phase="backward") if r.op == "aten.mm"}
    assert bwd == {"inner.0", "inner.2", "head"}
    assert one_row(rep, "aten.threshold_backward").module == "inner.1"
    assert one_row(rep, "aten.mul", "forward").module == ""  # the root's own op


def test_gradient_accumulation_goes_to_the_parameter_module():
    model = Block()
    x = torch.randn(4, 16)
    model(x).sum().backward()  # grads exist: the next backward accumulates with add_
    rep = profiled(lambda: model(x).sum().backward(), model=model)
    accumulate = [r for r in rep.filter(phase="backward") if r.op == "aten.add_"]
    assert {r.module for r in accumulate} == {"inner.0", "inner.2", "head"}


def test_with_model_other_modules_are_not_tracked_but_a_second_model():
    """With `model=`, a module of no parameters outside it (a loss) is not tracked: its ops are
    the top level's; one with parameters called outside it is a second model, named by what it
    was called through (below: the local variable `other`)."""
    model, other, loss = Block(), torch.nn.Linear(2, 2), torch.nn.MSELoss()
    x = torch.randn(4, 16)
    rep = profiled(lambda: loss(other(model(x)), torch.zeros(4, 2)), model=model)
    assert {r.module for r in rows_of(rep, "aten.addmm")} == {"inner.0", "inner.2", "head", "other"}
    assert {r.module for r in rows_of(rep, "aten.mse_loss")} == {""}


def _wrapped(how: str, model: torch.nn.Module) -> torch.nn.Module:
    if how == "compiled":  # the rows were named so before; the memory section read `_orig_mod.inner.0`
        return torch.compile(model)
    if how == "DataParallel":  # no GPU: it runs its module as its own forward
        return torch.nn.DataParallel(model)
    if how == "checkpoint_wrapper":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        model.inner = checkpoint_wrapper(model.inner)
        return model
    if how == "Fabric":
        lightning = pytest.importorskip("lightning")
        return lightning.Fabric(accelerator="cpu", devices=1).setup_module(model)
    raise AssertionError(how)


@pytest.mark.parametrize("pass_model", [True, False])
@pytest.mark.parametrize("how", ["compiled", "DataParallel", "checkpoint_wrapper", "Fabric"])
def test_a_wrapped_models_modules_are_named_as_the_bare_models(how, pass_model):
    """A wrapper that runs the model as its own forward adds a step to every path (DDP's and
    DataParallel's `module.`, Lightning Fabric's `_forward_module.` and `_original_module.`, torch's
    checkpoint wrapper's `_checkpoint_wrapped_module.`): the same model read `_original_module.inner.0`
    under Fabric and `inner.0` alone, and `memwall diff` paired none of its modules."""
    torch.manual_seed(0)
    model, x = Block(), torch.randn(4, 16)
    bare = profiled(lambda: model(x).sum().backward(), model=model if pass_model else None)
    wrapped = _wrapped(how, model)
    rep = profiled(lambda: wrapped(x).sum().backward(), model=wrapped if pass_model else None)
    # the bare model's own paths are the truth, row by row and in the memory section
    if how != "compiled":  # compiled regions are rows of their own, named in test_compiled_savings.py
        assert {r.module for r in rows_of(rep, "aten.addmm")} == {r.module for r in rows_of(bare, "aten.addmm")}
        assert {r.module for r in rep.filter(phase="backward") if r.op == "aten.mm"} == {"inner.0", "inner.2", "head"}
    assert {(m.module, m.parameter_bytes) for m in rep.memory.modules if m.parameter_bytes} == {
        (m.module, m.parameter_bytes) for m in bare.memory.modules if m.parameter_bytes}


def test_a_second_model_run_beside_the_first_is_named_by_what_holds_it():
    """Distillation, an EMA copy, a pipeline's VAE: a second model called outside the first. It
    took the first one's paths (the teacher's `0` was the student's `0`), one set of rows for two
    models. Each model profiled alone is the truth: the first met keeps its paths, the second's
    rows are its own under the name it was called by."""
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    student, x = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), torch.randn(4, 16)

    def matmuls(rep: memwall.Report) -> dict[tuple[str, str, str], int | None]:
        return {(r.op, r.module, r.phase): r.flops for r in rep.rows if r.op in ("aten.addmm", "aten.mm")}

    def distill() -> None:
        with torch.no_grad():
            target = teacher(x).softmax(-1)
        F.cross_entropy(student(x), target).backward()

    with torch.no_grad():
        alone_teacher = matmuls(profiled(lambda: teacher(x)))
    alone_student = matmuls(profiled(lambda: F.cross_entropy(student(x), torch.full((4, 2), 0.5)).backward()))
    got = matmuls(profiled(distill))
    assert {k: v for k, v in got.items() if not k[1].startswith("student.")} == alone_teacher
    assert {(op, module.removeprefix("student."), phase): v for (op, module, phase), v in got.items()
            if module.startswith("student.")} == alone_student


def _logps(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """An RL script's helper (TRL's style): the log-probabilities of a model, called for the policy
    and for the reference model through one parameter name."""
    return model(ids).log_softmax(-1)


class _Policy(torch.nn.Module):  # as a causal LM: its body is `model`
    def __init__(self) -> None:
        super().__init__()
        self.model, self.head = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x).relu())


def test_a_second_model_called_through_a_helpers_parameter_takes_its_callers_name():
    """The reference model of an RL loop, called through a helper's parameter `model`, took that
    name, which the policy's own `model` part holds: it read `model_2`, as if a part of the policy.
    A name some other model's path begins with is passed over for the caller's (`ref`)."""
    import copy

    torch.manual_seed(0)
    policy = _Policy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    x = torch.randn(4, 16)

    def step() -> None:
        new = _logps(policy, x)
        with torch.no_grad():
            old = _logps(ref, x)
        (new - old).pow(2).mean().backward()

    rep = profiled(step)
    modules = {r.module for r in rep.rows if r.op == "aten.addmm"}
    assert modules == {"model", "head", "ref.model", "ref.head"}, modules


class _Decoder(torch.nn.Module):  # as diffusers' AutoencoderKL: its decode() calls its submodules
    def __init__(self) -> None:
        super().__init__()
        self.post, self.body = torch.nn.Linear(2, 8), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 16))

    def decode(self, z):
        return self.body(self.post(z))


def test_a_pipelines_second_model_run_through_a_method_is_named_by_the_pipelines_attribute():
    """A pipeline (no module) calls its denoiser, then its VAE's decode(), a method that calls the
    VAE's submodules: they keep the VAE's paths, under the pipeline's name for it."""

    class Pipeline:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.denoiser = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Linear(32, 2))
            self.vae = _Decoder()

        def __call__(self, z):
            return self.vae.decode(self.denoiser(z))

    pipe = Pipeline()
    rep = profiled(lambda: pipe(torch.randn(3, 2)))
    assert {r.module for r in rows_of(rep, "aten.addmm")} == {"0", "1", "vae.post", "vae.body.1"}
    assert one_row(rep, "aten.relu").module == "vae.body.0"


def test_with_model_given_a_second_model_is_named_and_holds_its_weights_as_parameters():
    """`model=` names the given model's ops; a second model called outside it (a frozen UNet beside
    a diffusers ControlNet, the VAE a denoising loop decodes with) read at the top level, and its
    weights were `other` (a 4 MB UNet's). Now it is named as without `model=`, and every weight is
    a parameter: the bare parameters of both models are the truth. A wrapper around the given
    model, called instead of it, is no second model: the given model keeps its own paths."""
    torch.manual_seed(0)
    denoiser = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    vae = _Decoder().requires_grad_(False)
    z = torch.randn(3, 2)

    def step():
        vae.decode(denoiser(z)).square().mean().backward()

    rep = profiled(step, model=denoiser)
    assert {r.module for r in rows_of(rep, "aten.addmm")} == {"0", "2", "vae.post", "vae.body.1"}
    assert {r.module for r in rows_of(rep, "aten.relu")} == {"1", "vae.body.0"}
    params = {m.module: m.parameter_bytes for m in rep.memory.modules if m.parameter_bytes}
    bare = {**{f"{name}": sum(p.nbytes for p in module.parameters(recurse=False))
               for name, module in denoiser.named_modules()},
            **{f"vae.{name}": sum(p.nbytes for p in module.parameters(recurse=False))
               for name, module in vae.named_modules()}}
    assert params == {k: v for k, v in bare.items() if v}
    assert rep.memory.peak_by_category["parameters"] == sum(bare.values())

    class Wrapper(torch.nn.Module):  # calls the given model and a head of its own
        def __init__(self):
            super().__init__()
            self.inner, self.head = denoiser, torch.nn.Linear(2, 4)

        def forward(self, x):
            return self.head(self.inner(x))

    wrapper = Wrapper()
    rep = profiled(lambda: wrapper(z).sum().backward(), model=denoiser)
    assert {r.module for r in rows_of(rep, "aten.addmm")} == {"0", "2", ""}  # the head: not tracked, as before


class _Rotate(torch.nn.Module):  # a module held by no model, as hub kernels wrap a function
    def forward(self, x):
        return torch.cat((-x[..., 4:], x[..., :4]), dim=-1)


_ROTATE = _Rotate()


class _Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x):
        return _ROTATE(self.proj(x))


def test_a_module_shared_outside_the_model_goes_to_each_caller():
    """transformers 5 runs `apply_rotary_pos_emb` as one `kernels` Func module held by no layer:
    its ops went to the first layer that called it (all four layers' RoPE under layer 0)."""
    model = torch.nn.Sequential(*[_Attention() for _ in range(3)])
    x = torch.randn(2, 8)
    rep = profiled(lambda: model(x).sum().backward())
    callers = {f"{i}._Rotate" for i in range(3)}
    assert {r.module: r.calls for r in rows_of(rep, "aten.neg", "forward")} == dict.fromkeys(callers, 1)
    assert {r.module for r in rows_of(rep, "aten.neg", "backward")} == callers
    # with model= given, the shared module is not the model's: its ops stay with each caller
    rep = profiled(lambda: model(x).sum().backward(), model=model)
    assert {r.module for r in rows_of(rep, "aten.neg", "forward")} == {"0", "1", "2"}


class _Func(torch.nn.Module):
    """As Hugging Face's `kernels` runs a function (transformers 5's RoPE): one global instance no
    model holds, which calls the calling layer's own private instance of the same class."""

    kernel_layer_name = "rotary_pos_emb"
    private: dict[int, _Func] = {}

    def forward(self, x, layer=None):
        if layer is not None:
            return _Func.private[layer](x)
        return torch.cat((-x[..., 4:], x[..., :4]), dim=-1)


_FUNC = _Func()


class _KernelsAttention(_Attention):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        _Func.private[index] = _Func()

    def forward(self, x):
        return _FUNC(self.proj(x), layer=self.index)


def test_a_function_run_as_a_module_by_kernels_is_named_once_by_its_kernel_name():
    """Under `memwall run` (no model= given) Llama's RoPE ops were named `self_attn.Func.Func`:
    the class name of kernels' wrapper, twice (the global instance calls the layer's own)."""
    model = torch.nn.Sequential(*[_KernelsAttention(i) for i in range(3)])
    x = torch.randn(2, 8)
    rep = profiled(lambda: model(x).sum().backward())
    callers = {f"{i}.rotary_pos_emb" for i in range(3)}
    assert {r.module: r.calls for r in rows_of(rep, "aten.neg", "forward")} == dict.fromkeys(callers, 1)
    assert {r.module for r in rows_of(rep, "aten.neg", "backward")} == callers
    assert {r.module for r in rows_of(rep, "aten.addmm", "forward")} == {"0.proj", "1.proj", "2.proj"}


def test_llamas_rope_is_named_by_its_kernel_name_when_transformers_runs_it_through_kernels():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama

    if not isinstance(modeling_llama.apply_rotary_pos_emb, torch.nn.Module):
        pytest.skip(f"transformers {transformers.__version__} runs RoPE as a plain function (no `kernels`)")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (1, 8))
    rep = profiled(lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert not [r.module for r in rep.rows if "Func" in r.module]
    rope = {f"model.layers.{i}.self_attn.rotary_pos_emb" for i in range(2)}
    assert {r.module for r in rows_of(rep, "aten.neg", "forward")} == rope
    assert {r.module for r in rows_of(rep, "aten.neg", "backward")} == rope


def test_optimizer_phase_for_every_optimizer_flavour():
    model = Block()
    for kwargs in ({"foreach": False}, {"foreach": True}, {"fused": True}):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **kwargs)
        model(torch.randn(4, 16)).sum().backward()

        def step(opt=opt):
            opt.step()
            opt.zero_grad()

        rep = profiled(step, model=model)
        assert rep.rows and all(r.phase == "optimizer" for r in rep.rows), kwargs
        assert sum(r.flops or 0 for r in rep.rows) > 0
        assert sum(r.bytes for r in rep.rows) > 0


def test_identical_calls_aggregate_into_one_row():
    model = Block()
    x = torch.randn(4, 16)
    with memwall.profile(model=model, summary=False) as prof:
        for _ in range(200):
            model(x)
            prof.step()
    rep = prof.report()
    assert len(rep.steps) == 200
    assert len(rep.rows) == len({(r.op, r.module, r.phase, r.shapes) for r in rep.rows})
    assert all(r.calls % 200 == 0 for r in rep.rows)
    assert len(rep.rows) < 20


@pytest.mark.parametrize("foreach", [False, True])
def test_changing_learning_rate_does_not_grow_the_table(foreach):
    def optimizer_rows(steps: int) -> int:
        model = torch.nn.Linear(8, 8)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, foreach=foreach)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
        with memwall.profile(model=model, summary=False) as prof:
            for _ in range(steps):
                model(torch.randn(2, 8)).sum().backward()
                opt.step()
                opt.zero_grad()
                sched.step()
                prof.step()
        return len(prof.report().filter(phase="optimizer"))

    # lr and bias corrections change every step; the signatures must not
    assert optimizer_rows(5) == optimizer_rows(40)


def test_schedule_records_only_active_steps_and_installs_nothing_otherwise():
    model = Block()
    x = torch.randn(4, 16)
    baseline = _per_op_hook_counts()
    installed = []
    with memwall.profile(model=model, schedule=memwall.schedule(wait=1, warmup=1, active=2, repeat=1),
                         summary=False) as prof:
        for _ in range(6):
            installed.append(_per_op_hook_counts() != baseline)
            model(x)
            prof.step()
    assert installed == [False, True, True, True, False, False]
    rep = prof.report()
    assert rep.steps == (2, 3)
    assert {r.calls for r in rows_of(rep, "aten.addmm")} == {2}


def test_torch_profiler_schedule_is_accepted():
    x = torch.randn(4, 4)
    with memwall.profile(schedule=torch.profiler.schedule(wait=1, warmup=0, active=1, repeat=1),
                         summary=False) as prof:
        for _ in range(3):
            x @ x
            prof.step()
    assert prof.report().steps == (1,)


def test_nothing_left_behind_after_normal_exit():
    baseline = _global_hook_counts()
    model = Block()
    with memwall.profile(model=model, summary=False):
        assert _global_hook_counts() != baseline
        model(torch.randn(2, 16))
    assert _global_hook_counts() == baseline


def test_user_exception_propagates_unchanged_and_leaves_a_report(tmp_path):
    baseline = _global_hook_counts()
    model = Block()

    class UserError(Exception):
        pass

    error = UserError("boom")
    with pytest.raises(UserError) as info:
        with memwall.profile(model=model, logdir=tmp_path, summary=False):
            model(torch.randn(2, 16))
            raise error
    assert info.value is error
    assert _global_hook_counts() == baseline
    (saved,) = (tmp_path / "plugins" / "memwall").glob("*.json")
    rep = memwall.load_report(saved)
    assert rep.incomplete
    assert rows_of(rep, "aten.addmm")


def test_keyboard_interrupt_propagates_and_cleans_up():
    baseline = _global_hook_counts()
    with pytest.raises(KeyboardInterrupt):
        with memwall.profile(summary=False):
            torch.randn(3) + 1
            raise KeyboardInterrupt
    assert _global_hook_counts() == baseline


def test_profile_opened_inside_another_records_its_block_and_the_outer_resumes(tmp_path):
    baseline = _global_hook_counts()
    x = torch.randn(4)
    with memwall.profile(summary=False) as outer:
        x * 2  # the outer's
        with memwall.profile(logdir=tmp_path, summary=False) as inner:
            x + 1  # the inner's alone
            inner.step()
            x.abs()
        x - 1  # the outer's again
        outer.step()
        x.neg()
    inner_ops = {r.op for r in inner.report().rows}
    outer_ops = {r.op for r in outer.report().rows}
    assert {"aten.add", "aten.abs"} <= inner_ops and not {"aten.mul", "aten.sub", "aten.neg"} & inner_ops
    assert {"aten.mul", "aten.sub", "aten.neg"} <= outer_ops and not {"aten.add", "aten.abs"} & outer_ops
    assert inner.report().steps == (0, 1)
    assert outer.nested == outer.report().extra["nested_profiles"] == [str(tmp_path)]
    assert any("opened inside this one recorded in its place" in note and str(tmp_path) in note
               for note in memwall.findings(outer.report()))
    assert memwall.load_report(inner.saved[0]).rows  # the inner one's own report file
    assert _global_hook_counts() == baseline


def test_profile_on_another_thread_records_nothing_and_does_not_disturb_this_one():
    import threading

    seen: list[memwall.Report] = []

    def other() -> None:
        with pytest.warns(RuntimeWarning, match="another thread"):
            with memwall.profile(summary=False) as prof:
                torch.randn(4).exp()
        seen.append(prof.report())

    with memwall.profile(summary=False) as mine:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        torch.randn(4) * 2
    assert seen and not seen[0].rows
    assert rows_of(mine.report(), "aten.mul") and not rows_of(mine.report(), "aten.exp")


def test_logdir_holds_a_report_per_window(tmp_path):
    x = torch.randn(8, 8)
    with memwall.profile(logdir=tmp_path, schedule=memwall.schedule(wait=1, active=2), summary=False) as prof:
        for _ in range(6):
            x @ x
            prof.step()
    files = sorted(p.name for p in (tmp_path / "plugins" / "memwall").glob("*.json"))
    assert files == ["rank0_steps000001-000002.json", "rank0_steps000004-000005.json"]
    for name in files:
        data = json.loads((tmp_path / "plugins" / "memwall" / name).read_text())
        assert data["schema_version"] == memwall.SCHEMA_VERSION
    assert prof.report().steps == (1, 2, 4, 5)


def test_summary_is_printed_on_exit(capsys):
    with memwall.profile():
        torch.randn(64, 64) @ torch.randn(64, 64)
    out = capsys.readouterr().out
    assert "memwall  1 step recorded" in out and "mm" in out


def test_bad_arguments_say_what_to_do():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        memwall.profile(model="gpt2")
    with pytest.raises(TypeError, match="schedule"):
        memwall.profile(schedule=3)
    with pytest.raises(ValueError, match="active"):
        memwall.schedule(active=0)


@pytest.mark.parametrize("fn", [F.silu, F.mish], ids=["silu", "mish"])
def test_activation_gradients_are_bit_identical_to_a_bare_run(fn):
    # silu_backward and mish_backward have a CPU kernel and a CompositeImplicitAutograd
    # decomposition that rounds differently: memwall must run the kernel the bare run runs
    x = torch.randn(4096, 1024, requires_grad=True)
    fn(x).sum().backward()
    bare, x.grad = x.grad.clone(), None
    with memwall.profile(summary=False) as prof:
        fn(x).sum().backward()
    assert torch.equal(x.grad, bare)
    backward = {r.op for r in prof.report().rows if r.phase == "backward"}
    assert f"aten.{fn.__name__}_backward" in backward  # counted as the kernel that ran
    assert not prof.report().uncounted


def test_channel_shuffle_in_inference_mode_runs_its_kernel():
    x = torch.randn(2, 8, 5, 5)
    with torch.inference_mode():
        bare = torch.native_channel_shuffle(x, 4)
        with memwall.profile(summary=False) as prof:
            out = torch.native_channel_shuffle(x, 4)
    assert torch.equal(out, bare)
    assert [r.op for r in prof.report().rows] == ["aten.native_channel_shuffle"]
    assert not prof.report().uncounted


def test_list_arguments_show_every_distinct_shape():
    k = torch.randn(1, 12, 63, 64)
    rep = profiled(lambda: (torch.cat([torch.empty(0), k.flatten()]), torch.cat([k, k], 2)))
    assert {r.shapes for r in rows_of(rep, "aten.cat")} == {"([0], [48384])", "2 x [1, 12, 63, 64]"}


def test_the_seed_gradient_of_backward_is_backward_work():
    x = torch.randn(8, requires_grad=True)
    rep = profiled(lambda: (x * 2).sum().backward())
    assert one_row(rep, "aten.ones_like").phase == "backward"
    assert one_row(rep, "aten.mul", "forward")


class _MulRouter:
    """A Router that takes aten.mul.Tensor and, once it has run one, says it is in flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.busy_ns = 0

    @property
    def routes(self):
        return {torch.ops.aten.mul.Tensor: self.run}

    def run(self, func, args, kwargs):
        self.calls += 1
        self.in_flight = 1
        return func(*args, **kwargs)


def test_a_router_takes_its_ops_off_the_table_and_gets_the_time_of_ops_run_while_they_fly():
    from memwall_plugin.hooks.capture import Capture

    capture, router = Capture(analyse=lambda entry: None), _MulRouter()
    x = torch.ones(4)
    capture.open()
    try:
        capture.start()
        x + x
        capture.route(router)  # taken up at once by a capture that is recording
        y = x * x
        x + y  # run while the routed op is in flight: busy time
        capture.route(None)
        x * x
    finally:
        capture.close()
    calls = {}
    for entry in capture.table.values():
        calls[entry.call.op] = calls.get(entry.call.op, 0) + entry.calls
    assert calls == {"aten.add": 2, "aten.mul": 1}
    assert router.calls == 1 and torch.equal(y, x)
    assert router.busy_ns > 0


# --- set-up: what runs before the first work ----------------------------------------------------


def _phases(rep: memwall.Report, op: str) -> set[str]:
    return {r.phase for r in rows_of(rep, op)}


def test_weight_init_and_data_before_the_first_forward_are_setup():
    with memwall.profile(summary=False) as prof:
        model = Block()  # its Linears draw their weights (uniform_)
        torch.nn.init.normal_(model.head.weight)
        x = torch.randn(4, 16)
        with torch.no_grad():
            model(x)
            torch.rand(3)  # between model calls, once work has begun: other
            model(x)
    rep = prof.report()
    assert _phases(rep, "aten.uniform_") == {"setup"} and _phases(rep, "aten.normal_") == {"setup"}
    assert _phases(rep, "aten.randn") == {"setup"}
    assert _phases(rep, "aten.addmm") == {"forward"}
    assert one_row(rep, "aten.rand").phase == "other"
    # kept whole in the totals, out of the shares
    assert rep.setup_time_s > 0 and rep.setup_time_s < rep.total_time_s
    assert all(r.phase != "setup" for r in rep.work_rows)


def test_bare_ops_with_no_work_after_them_stay_other():
    """A profile of ops alone (no module, no autograd graph): nothing marks them as set-up."""
    rep = profiled(lambda: torch.randn(8, 8) @ torch.randn(8, 8))
    assert {r.phase for r in rep.rows} == {"other"}


def test_setup_is_only_in_the_first_step():
    with memwall.profile(summary=False) as prof:
        torch.randn(4)  # step 0 ends with no work in it: other
        prof.step()
        model = torch.nn.Linear(4, 2)  # step 1: a step's data, not set-up
        model(torch.ones(3, 4))
        prof.step()
    rep = prof.report()
    assert _phases(rep, "aten.randn") == {"other"} and _phases(rep, "aten.uniform_") == {"other"}


def test_the_users_phase_label_wins_over_setup():
    with memwall.profile(summary=False) as prof:
        with prof.phase("load"):
            x = torch.rand(4, 16)
        torch.randn(3)  # a label names its own ops: it does not say the work has begun
        Block()(x)
    rep = prof.report()
    assert _phases(rep, "aten.rand") == {"load"} and _phases(rep, "aten.randn") == {"setup"}


def test_a_functional_model_ends_setup_at_its_backward():
    """No module at all: the graph's ops are forward work as before; the first backward pass says
    work has run, so later data-making is "other", not set-up."""
    w = torch.randn(16, 4, requires_grad=True)
    with memwall.profile(summary=False) as prof:
        x = torch.randn(8, 16)  # before any work: set-up
        (x @ w).pow(2).mean().backward()
        torch.rand(8, 16)  # after it: other
    rep = prof.report()
    assert _phases(rep, "aten.randn") == {"setup"} and _phases(rep, "aten.rand") == {"other"}
    assert _phases(rep, "aten.mm") >= {"forward", "backward"}


def test_work_in_a_backward_pass_final_callback_is_backward():
    """A callback queued on the autograd engine (as DDP and FSDP queue theirs) runs at the end of
    the backward pass, where no autograd Node runs: its ops are backward work, not "other"."""
    model, scale = torch.nn.Linear(8, 4), torch.randn(4, 4)
    x = torch.randn(5, 8, requires_grad=True)

    def queue(grad: torch.Tensor) -> torch.Tensor:
        torch.autograd.Variable._execution_engine.queue_callback(lambda: scale.mul_(2))
        return grad

    x.register_hook(queue)
    with memwall.profile(summary=False) as prof:
        model(x).sum().backward()
        scale.mul_(3)  # after the pass: other
    rep = prof.report()
    assert sorted((r.phase, r.flops) for r in rep.rows if r.op == "aten.mul_") == [("backward", 16), ("other", 16)]


def test_with_model_any_modules_forward_ends_setup():
    """With model= given, another module's forward (here a second model, named by its variable;
    one not tracked is the same) is forward work as before, so set-up ends there too, not at the
    model's first forward."""
    model, other = Block(), torch.nn.Linear(16, 16)
    with memwall.profile(model=model, summary=False) as prof:
        torch.randn(4, 16)
        x = other(torch.ones(4, 16))
        torch.rand(4)
        model(x)
    rep = prof.report()
    assert _phases(rep, "aten.randn") == {"setup"} and _phases(rep, "aten.rand") == {"other"}
    assert {(r.module, r.phase) for r in rows_of(rep, "aten.addmm")} >= {("other", "forward"), ("head", "forward")}


def test_a_slow_step_boundary_is_in_no_steps_own_time(monkeypatch):
    """memwall's own time is measured inside the steps' wall time; the boundary between two steps
    (closing one, saving a window, opening the next) is in neither, even when the optimizer's
    step hook runs it."""
    from memwall_plugin import recorder
    from memwall_plugin.records import OWN_TIME_KEY

    end_step = recorder.Recorder.end_step

    def slow_boundary(self, *, final):
        end_step(self, final=final)
        time.sleep(0.05)  # a window saved to a slow disk, say

    monkeypatch.setattr(recorder.Recorder, "end_step", slow_boundary)
    model = Block()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 16)
    with memwall.profile(model=model, step_on_optimizer=True, summary=False) as prof:
        for _ in range(4):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
    rep = prof.report()
    # before, each boundary's 50 ms went into the next step's own time, beyond its wall time
    assert len(rep.steps) >= 4
    assert 0 < rep.extra[OWN_TIME_KEY] <= rep.wall_time_s


def test_a_scripts_start_up_before_the_first_work_is_no_steps_host_time():
    """Under `memwall run` the first step's wall time begins at the script's start: imports, the
    model and trainer built, DataLoader workers started. A transformers.Trainer run of 6 steps read
    '92% of the wall time outside any op' from its start-up alone. The wall time before the first
    work is kept apart (`setup_wall_time_s`) and out of the host-time share."""
    from memwall_plugin.console import host_time_share, render_text
    from memwall_plugin.records import SETUP_WALL_KEY

    torch.manual_seed(0)
    with memwall.profile(step_on_optimizer=True, summary=False) as prof:
        time.sleep(0.5)  # start-up: no op runs
        model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(512, 512)
        for _ in range(3):
            model(x).square().mean().backward()  # ~3 GFLOP a step: ops are most of each step
            opt.step()
            opt.zero_grad()
    rep = prof.report()
    start_up = rep.extra[SETUP_WALL_KEY]
    assert 0.5 <= start_up < rep.wall_time_s
    assert start_up / rep.wall_time_s > 0.5  # before, the host-time share was at least this
    assert host_time_share(rep) < 0.5
    setup_line = next(line for line in render_text(rep, width=160).splitlines() if line.startswith("setup"))
    assert "of the wall time" in setup_line


def test_a_gradient_penaltys_second_backward_is_its_modules_work():
    """WGAN-GP: autograd.grad(create_graph=True) builds a graph in the first backward, and the loss's
    backward runs through it. Its convolutions (11% of a critic's op time) read `(top level)`:
    the nodes a backward makes were in no module's timeline. They are the modules' whose forward
    ops they differentiate; the FLOPs are FlopCounterMode's for the same second backward."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 4, 2, 1), torch.nn.LeakyReLU(0.2),
                                 torch.nn.Conv2d(16, 1, 4, 1, 0))
    x = torch.randn(4, 3, 8, 8, requires_grad=True)

    def penalty() -> torch.Tensor:
        (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
        return ((g.flatten(1).norm(2, dim=1) - 1) ** 2).mean()

    with memwall.profile(summary=False) as prof:
        gp = penalty()
        gp.backward()
    rows = [r for r in prof.report().rows if r.op == "aten.convolution" and r.phase == "backward"]
    assert rows and {r.module for r in rows} == {"0", "2"}, [(r.module, r.flops) for r in rows]
    gp = penalty()
    with FlopCounterMode(display=False) as counter:
        gp.backward()
    assert sum(r.flops or 0 for r in rows) == counter.get_flop_counts()["Global"][torch.ops.aten.convolution]
