"""TorchScript inside a profile: a model traced (`torch.jit.trace`) while memwall records, and a
traced model's calls. Before, the trace failed its own check (memwall's hooks called tensor
methods that the tracer recorded into the user's graph, and a 0-dim tensor from it made the report
unsavable), and a traced graph's scalar constants, which reach a Python dispatch mode as Python
numbers (pytorch/pytorch#130726), failed the op when memwall called it again. The truth: bare
traces and bare runs, bit for bit, and the layer's matmul by hand."""

from __future__ import annotations

import warnings

import pytest
import torch

import memwall_plugin as memwall
from memwall_plugin.report import load_report


class _Gelu(torch.nn.Module):  # GPT-2's tanh approximation, written out: scalar constants in the graph
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = torch.nn.Linear(8, 8), _Gelu()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def _trace(model: torch.nn.Module, x: torch.Tensor, **kwargs: object) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation
        return torch.jit.trace(model, (x,), **kwargs)


def test_a_model_traced_inside_a_profile_is_the_graph_a_bare_trace_makes(tmp_path):
    torch.manual_seed(0)
    model, x = _Block().eval(), torch.randn(2, 8)
    bare = _trace(model, x)  # checks its trace by running it again (check_trace), as by default
    with memwall.profile(logdir=tmp_path, summary=False) as prof:
        traced = _trace(model, x)
    assert traced.code == bare.code
    assert torch.equal(traced(x), bare(x)) and torch.equal(traced(x), model(x))
    rep = prof.report()
    # the trace runs the model (its modules' hooks fire: `fc`), and its check runs the traced
    # graph (TorchScript runs it without Python module hooks: no module, outside any forward):
    # real work, each call of the layer's matmul by hand
    fc = [r for r in rep.rows if r.op == "aten.addmm"]
    assert {(r.module, r.phase) for r in fc} == {("fc", "forward"), ("", "other")}, fc
    assert sum(r.flops for r in fc) == sum(r.calls for r in fc) * (2 * 2 * 8 * 8 + 2 * 8)
    assert isinstance(rep.memory.trainable_elements, int)
    (saved,) = (tmp_path / "plugins" / "memwall").glob("*.json")
    assert load_report(saved).total_flops == rep.total_flops


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_traced_graphs_scalar_constants_run_under_the_profile_as_without_it(dtype):
    torch.manual_seed(0)
    model, x = _Block().eval().to(dtype), torch.randn(2, 8, dtype=dtype)
    calls = 4  # the profiling executor's first runs, then its optimized graph
    outputs = {}
    for watched in (False, True):
        traced = _trace(model, x, check_trace=False)  # a fresh graph each: its first calls profile
        with torch.no_grad():
            if watched:
                with memwall.profile(summary=False) as prof:
                    outputs[watched] = [traced(x) for _ in range(calls)]
            else:
                outputs[watched] = [traced(x) for _ in range(calls)]
    assert all(torch.equal(a, b) and a.dtype == b.dtype == dtype for a, b in zip(outputs[False], outputs[True]))
    rep = prof.report()
    linear = [r for r in rep.rows if r.op in ("aten.addmm", "aten.linear", "aten.mm")]
    assert sum(r.flops for r in linear) == calls * (2 * 2 * 8 * 8 + 2 * 8)  # x @ W.T + b, by hand
    assert not rep.uncounted, [r.op for r in rep.uncounted]


def test_an_integer_input_times_a_traced_float_constant_keeps_the_bare_dtype():
    def halve(x: torch.Tensor) -> torch.Tensor:
        return x * 0.5 + 1.25

    x = torch.arange(6)
    bare, watched = _trace(halve, x, check_trace=False), _trace(halve, x, check_trace=False)
    expected = [bare(x) for _ in range(3)]
    with memwall.profile(summary=False):
        got = [watched(x) for _ in range(3)]
    assert all(torch.equal(a, b) and a.dtype == b.dtype == torch.float32 for a, b in zip(expected, got))
