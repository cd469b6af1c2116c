"""Real models (random weights from transformers configs): the figures issue #2 asks for."""

from __future__ import annotations

import collections
import re

import pytest
import torch
from conftest import profiled
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import memwall_plugin as memwall

transformers = pytest.importorskip("transformers")

MATMUL_OPS = {
    "aten.mm", "aten.addmm", "aten.bmm",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_flash_attention_for_cpu_backward",
}
SEQ = 128


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config()
    return cfg, transformers.GPT2LMHeadModel(cfg)


def _in_blocks(rep: memwall.Report, phase: str) -> int:
    return sum(r.flops for r in rep.rows
               if r.op in MATMUL_OPS and r.phase == phase and r.module.startswith("transformer.h."))


def _hand_count_gpt2_blocks(cfg, s: int) -> int:
    d, h, layers = cfg.n_embd, cfg.n_head, cfg.n_layer
    per_layer = (
        2 * s * d * 3 * d + s * 3 * d  # c_attn: x @ W[d, 3d] + bias
        + 2 * s * s * d * 2 + 5 * h * s * s  # q k^T and P v over all heads, softmax
        + 2 * s * d * d + s * d  # attn.c_proj
        + 2 * s * d * 4 * d + s * 4 * d  # mlp.c_fc
        + 2 * s * 4 * d * d + s * d  # mlp.c_proj
    )
    return layers * per_layer


def test_gpt2_forward_matches_hand_count_flop_counter_and_fvcore(gpt2):
    cfg, model = gpt2
    model.eval()
    ids = torch.randint(0, cfg.vocab_size, (1, SEQ))
    with torch.no_grad():
        rep = profiled(lambda: model(ids), model=model)
    got = _in_blocks(rep, "forward")
    hand = _hand_count_gpt2_blocks(cfg, SEQ)
    assert abs(got - hand) / hand < 0.005, (got, hand)

    # torch's FlopCounterMode, independent; on the math attention backend (it has no formula for
    # the CPU flash kernel) and without bias adds or softmax, which it does not count
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids)
    counts = counter.get_flop_counts()
    theirs = sum(sum(counts[f"GPT2LMHeadModel.transformer.h.{i}"].values()) for i in range(cfg.n_layer))
    assert abs(got - theirs) / theirs < 0.005, (got, theirs)

    # fvcore (x2) on every linear layer of the blocks
    fv = memwall.fvcore_flops(model, (ids,))
    linears = [name for name, m in model.named_modules()
               if name.startswith("transformer.h.") and type(m).__name__ == "Conv1D"]
    assert len(linears) == 4 * cfg.n_layer
    mine = collections.Counter()
    for r in rep.rows:
        if r.op == "aten.addmm":
            mine[r.module] += r.flops
    for name in linears:
        assert abs(mine[name] - fv.by_module[name]) / fv.by_module[name] < 0.005, name


def test_gpt2_training_step_phases_and_backward_twice_forward(gpt2):
    cfg, model = gpt2
    model.train()
    ids = torch.randint(0, cfg.vocab_size, (1, SEQ))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()

    rep = profiled(step, model=model)
    phases = {r.phase for r in rep.rows}
    assert {"forward", "backward", "optimizer"} <= phases
    fwd, bwd = _in_blocks(rep, "forward"), _in_blocks(rep, "backward")
    assert abs(bwd / fwd - 2.0) < 0.1, bwd / fwd
    opt_rows = rep.filter(phase="optimizer")
    assert sum(r.flops or 0 for r in opt_rows) > 0 and sum(r.bytes for r in opt_rows) > 0
    assert not rep.uncounted, [r.name for r in rep.uncounted]


def test_fused_adamw_count_agrees_with_its_decomposed_ops(gpt2):
    """The fused kernel's per-element constant against the ops of the single-tensor AdamW."""
    _, model = gpt2
    small = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 10))
    totals = {}
    for kwargs in ({"foreach": False}, {"fused": True}):
        opt = torch.optim.AdamW(small.parameters(), lr=1e-3, **kwargs)
        for _ in range(2):  # the first step creates the state
            small(torch.randn(8, 64)).sum().backward()
            if _ == 1:
                rep = profiled(opt.step)
            else:
                opt.step()
            opt.zero_grad()
        totals[str(kwargs)] = sum(r.flops for r in rep.rows)
    single, fused = totals.values()
    assert abs(fused - single) / single < 0.05, totals


@pytest.mark.parametrize(("name", "kwargs"), [
    ("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "dampening": 0.1}),
    ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}), ("SGD", {"weight_decay": 1e-4}),
    ("Adam", {}), ("Adam", {"amsgrad": True}), ("Adam", {"weight_decay": 1e-2}),
    ("AdamW", {"weight_decay": 0.0}), ("AdamW", {"amsgrad": True}),
    ("Adagrad", {"weight_decay": 1e-2}),
])
def test_a_fused_optimizer_step_counts_what_its_unfused_step_counts(name, kwargs):
    """Each step of a fused optimizer against the same optimizer's step without it, op by op (the
    same hyperparameters; the first step too, where SGD's momentum buffer is the gradient). Before,
    fused SGD's momentum counted dampening it did not have, fused Adam the decoupled decay AdamW
    has, fused Adagrad less than its update."""
    counts = {}
    for flavour in ({"foreach": False}, {"fused": True}):
        torch.manual_seed(0)
        small = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
        opt = getattr(torch.optim, name)(small.parameters(), lr=1e-2, **kwargs, **flavour)
        per_step = []
        for _ in range(2):
            small(torch.randn(8, 16)).pow(2).sum().backward()
            rep = profiled(opt.step)
            opt.zero_grad()
            # the step counters (a scalar per parameter) are not the update
            per_step.append(sum(r.flops for r in rep.rows if re.search(r"\[\d", r.shapes)))
        counts[str(flavour)] = per_step
    single, fused = counts.values()
    assert fused == single, counts


def test_profiling_leaves_loss_and_gradients_bit_identical():
    cfg = transformers.GPT2Config(n_layer=2)  # dropout on: the RNG stream must not move either
    ids = torch.randint(0, cfg.vocab_size, (2, 32))

    def run(profile: bool):
        torch.manual_seed(1)
        model = transformers.GPT2LMHeadModel(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []

        def steps():
            for _ in range(2):
                loss = model(ids, labels=ids).loss
                loss.backward()
                grads = [p.grad.clone() for p in model.parameters()]
                opt.step()
                opt.zero_grad()
                losses.append(loss.detach())
            return grads

        if profile:
            with memwall.profile(model=model, summary=False):
                grads = steps()
        else:
            grads = steps()
        return losses, grads, [p.detach().clone() for p in model.parameters()]

    bare, profiled_run = run(False), run(True)
    for a, b in zip(bare[0], profiled_run[0]):
        assert torch.equal(a, b)
    for kind in (1, 2):
        assert all(torch.equal(a, b) for a, b in zip(bare[kind], profiled_run[kind]))


class _OpNames(TorchDispatchMode):
    """An independent list of every aten op that runs."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace != "profiler":
            self.names.add(f"{func.namespace}.{func._opname}")
        return func(*args, **(kwargs or {}))


def _models():
    yield "gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config()), \
        lambda m: m(torch.randint(0, 50257, (1, 64)), labels=torch.randint(0, 50257, (1, 64))).loss
    bert_cfg = transformers.BertConfig()
    yield "bert", transformers.BertForSequenceClassification(bert_cfg), \
        lambda m: m(torch.randint(0, bert_cfg.vocab_size, (2, 64)),
                    attention_mask=torch.ones(2, 64, dtype=torch.long), labels=torch.tensor([0, 1])).loss
    yield "resnet", transformers.ResNetForImageClassification(transformers.ResNetConfig()), \
        lambda m: m(torch.randn(2, 3, 64, 64), labels=torch.tensor([0, 1])).loss


@pytest.mark.parametrize("name", ["gpt2", "bert", "resnet"])
def test_coverage_every_forward_and_backward_op_is_counted(name):
    model, loss_fn = next((m, f) for n, m, f in _models() if n == name)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss_fn(model).backward()
        opt.step()
        opt.zero_grad()

    step()  # the first optimizer step creates its state; compare steady steps
    rep = profiled(step, model=model)
    with _OpNames() as seen:
        step()
    # nothing dropped: every op that ran is a row, counted or listed as uncounted
    assert seen.names == {r.op for r in rep.rows}
    uncounted = sorted({r.name for r in rep.uncounted})
    assert uncounted == [], f"{name}: ops without a FLOP formula: {uncounted}"
    assert rep.coverage == 1.0
    assert rep.filter(phase="backward") and rep.filter(phase="forward")
