"""What fusion saved (issue 23): a compiled region's row carries its eager counterfactual, the
fused aten ops counted one by one as eager would run them, checked against hand counts and
against the same code run eagerly; profiling a compiled model neither recompiles it nor
changes its numbers."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from conftest import one_row
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.report import load_report
from memwall_plugin.rows import fusion_savings, row_record

REGION = "higher_order.inductor_compiled_code"
N = 2**24


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _chain(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x * 2 + 1)


def test_relu_chain_region_and_its_eager_counterfactual(fresh_dynamo, tmp_path):
    x = torch.randn(N)
    counter = CompileCounterWithBackend("inductor")
    fn = torch.compile(_chain, backend=counter)
    expected = fn(x)
    assert counter.frame_count == 1
    with memwall.profile(summary=False) as prof:
        y = fn(x)
    rep = prof.report()
    assert counter.frame_count == 1  # ran compiled, not recompiled
    assert torch.equal(y, expected)

    assert [r.op for r in rep.rows] == [REGION]
    row = one_row(rep, REGION)
    # by hand: mul, add, relu, 1 FLOP per element each; fused: read x once, write the result once
    assert row.flops == 3 * N
    assert row.bytes == 2 * 4 * N
    # eagerly each of the 3 ops reads a [N] fp32 tensor and writes one: 3 * 2 * 4 * N bytes
    assert row.eager_calls == 3
    assert [op for op, *_ in row.eager_ops] == ["aten.mul", "aten.add", "aten.relu"]
    assert row.eager_bytes == 6 * 4 * N
    assert row.eager_flops == 3 * N
    assert row.fusion_saved_bytes == 4 * 4 * N
    record = row_record(row)
    assert (record["eager_calls"], record["eager_bytes"], record["fusion_saved_bytes"]) == (3, 6 * 4 * N, 4 * 4 * N)
    said = [f for f in findings(rep) if f.startswith("compiling removed")]
    assert len(said) == 1 and "(-66.7%)" in said[0] and "`(top level)`" in said[0], said

    # the same code run eagerly: the counterfactual is what eager measured
    with memwall.profile(summary=False) as prof:
        _chain(x)
    eager = prof.report()
    assert sorted(r.op for r in eager.rows) == sorted(op for op, *_ in row.eager_ops)
    assert sum(r.bytes for r in eager.rows) == row.eager_bytes
    assert sum(r.flops or 0 for r in eager.rows) == row.flops
    assert all(not r.eager_ops and "eager_bytes" not in row_record(r) for r in eager.rows)

    # the report file keeps it, and leaves it out of rows without one
    back = load_report(rep.save(tmp_path / "compiled.json"))
    assert back.rows == rep.rows
    assert "eager_ops" not in eager.save(tmp_path / "eager.json").read_text()

    # compiles as usual after the profile: a new shape is a new graph, run right
    small = torch.randn(8)
    assert torch.equal(fn(small), _chain(small))
    assert counter.frame_count == 2


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_savings_are_listed_per_compiled_module(fresh_dynamo):
    def mlp() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.Tanh())

    model = torch.nn.Sequential()
    model.add_module("a", torch.compile(mlp()))
    model.add_module("b", torch.compile(mlp()))
    x = torch.randn(64, 16)
    with torch.no_grad():
        model(x)
        with memwall.profile(summary=False, model=model) as prof:
            model(x)
    rep = prof.report()
    regions = {r.module: r for r in rep.rows if r.op == REGION}
    assert sorted(regions) == ["a", "b"]
    # inference: each region reads x, two weights and biases, writes its output; its ops run one
    # by one: 2 addmm (read x or h, the weight and bias, write h), relu and tanh (read h, write h)
    act, weight, bias = 64 * 16 * 4, 16 * 16 * 4, 16 * 4
    fused = act + 2 * (weight + bias) + act
    eager = 2 * (act + weight + bias + act) + 2 * (2 * act)
    savings = {s.module: s for s in fusion_savings(rep.rows)}
    assert sorted(savings) == ["a", "b"]
    assert all((s.bytes, s.eager_bytes, s.eager_calls) == (fused, eager, 4) for s in savings.values())
    said = [f for f in findings(rep) if f.startswith("compiling removed")]
    assert len(said) == 1 and "`a`" in said[0] and "`b`" in said[0], said


# --- a compiled GPT-2 training step --------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    return transformers.GPT2LMHeadModel(config)


def _step(run: Any, ids: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(2)  # dropout draws the same masks in each run
    loss = run(ids, labels=ids).loss
    loss.backward()
    return loss.detach()


def _fwd_bwd(rep: memwall.Report) -> list[memwall.Row]:
    return [r for r in rep.rows if r.phase in ("forward", "backward")]


def _flops_by_op(rows: list[memwall.Row]) -> dict[str, int]:
    """FLOPs per aten op: a region's by its fused ops."""
    out: dict[str, int] = {}
    for r in rows:
        for op, _, flops, _ in r.eager_ops or ((r.op, r.calls, r.flops, r.bytes),):
            out[op] = out.get(op, 0) + (flops or 0)
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_gpt2_step_same_flops_fewer_bytes_same_bits_no_recompile(fresh_dynamo):
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.logging.set_verbosity_error()
        model = _gpt2()
        eager_model = _gpt2()
    compiled = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters())
    _step(compiled, ids)  # the warm-up step compiles forward and backward
    opt.step()
    opt.zero_grad()
    state, opt_state = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())

    graphs = counters["stats"]["unique_graphs"]
    bare_loss = _step(compiled, ids)
    bare_grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    opt.zero_grad()
    model.load_state_dict(state)
    opt.load_state_dict(opt_state)

    with memwall.profile(summary=False, model=model) as prof:
        loss = _step(compiled, ids)
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        opt.zero_grad()
    rep = prof.report()
    _step(compiled, ids)  # and runs compiled as usual after
    assert counters["stats"]["unique_graphs"] == graphs, "profiling recompiled the model"

    # bit-identical to the same compiled step without memwall
    assert torch.equal(loss, bare_loss)
    assert all(torch.equal(g, b) for g, b in zip(grads, bare_grads, strict=True))

    regions = [r for r in rep.rows if r.op == REGION]
    assert {r.phase for r in regions} == {"forward", "backward"}
    assert all(r.time_s > 0 for r in rep.rows), [r.name for r in rep.rows if r.time_s <= 0]
    assert all(r.eager_ops and r.flops == r.eager_flops for r in regions)

    # the same step run eagerly, from the same initial state
    with memwall.profile(summary=False, model=eager_model) as prof:
        _step(eager_model, ids)
    eager = prof.report()
    compiled_rows, eager_rows = _fwd_bwd(rep), _fwd_bwd(eager)
    compiled_flops = sum(r.flops or 0 for r in compiled_rows)
    eager_flops = sum(r.flops or 0 for r in eager_rows)
    assert all(r.flops is not None for r in compiled_rows + eager_rows)
    by_compiled, by_eager = _flops_by_op(compiled_rows), _flops_by_op(eager_rows)
    differences = {op: by_compiled.get(op, 0) - by_eager.get(op, 0) for op in by_compiled.keys() | by_eager.keys()}
    differences = {op: d for op, d in differences.items() if d}
    print("FLOPs compiled - eager, by op:", sorted(differences.items(), key=lambda kv: -abs(kv[1])))
    assert sum(differences.values()) == compiled_flops - eager_flops
    # Inductor's graph is decomposed (layer norm, softmax, cross-entropy into their parts) and
    # recomputes a little in backward: the same step to within a few percent, never a region lost
    assert abs(compiled_flops - eager_flops) <= 0.05 * eager_flops, (compiled_flops, eager_flops)

    # fewer bytes than eager measured, and than the regions' own ops run one by one
    compiled_bytes = sum(r.bytes for r in compiled_rows)
    assert compiled_bytes < sum(r.bytes for r in eager_rows)
    savings = fusion_savings(rep.rows)
    assert savings and all(s.saved_bytes > 0 for s in savings)
    assert sum(s.eager_bytes for s in savings) == sum(r.eager_bytes or 0 for r in regions)
    print("saved per module:", [(s.module, s.eager_bytes, s.bytes) for s in savings])
    said = [f for f in findings(rep) if f.startswith("compiling removed")]
    assert len(said) == 1 and all(f"`{s.module or '(top level)'}`" in said[0] for s in savings[:3]), said
