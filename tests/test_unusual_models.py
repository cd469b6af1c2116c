"""Unusual models (issue #8): each runs under memwall with hand-derived counts, and its results
stay bit-identical to the same run without memwall."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import one_row

import memwall_plugin as memwall

WAIT_S = 60  # a bound on waits between threads, so a broken test fails instead of hanging


def _profile(fn: Callable[[], Any], **kwargs: Any) -> tuple[Any, memwall.Report]:
    with memwall.profile(summary=False, **kwargs) as prof:
        out = fn()
    return out, prof.report()


def _flops(rep: memwall.Report, phase: str) -> int:
    return sum(r.flops or 0 for r in rep.filter(phase=phase))


def _mlp() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


# MLP on x: [2, 8]: addmm 2*2*8*16 + 2*16 bias adds, relu 1 per element, addmm 2*2*16*4 + 2*4
MLP_FLOPS = {"0": 2 * 2 * 8 * 16 + 2 * 16, "1": 2 * 16, "2": 2 * 2 * 16 * 4 + 2 * 4}


# --- torch.compile ------------------------------------------------------------------------------


class _CountingBackend:
    """aot_eager (Dynamo + AOTAutograd, no code generation) that counts compiles and runs."""

    def __init__(self) -> None:
        self.compiles = 0
        self.runs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        self.compiles += 1
        compiled = torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

        def run(*args: Any) -> Any:
            self.runs += 1
            return compiled(*args)

        return run


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)`:UserWarning")
def test_compiled_module_runs_eagerly_and_is_counted_then_compiled_code_runs_again(fresh_dynamo):
    model = _mlp()
    x = torch.randn(2, 8)
    backend = _CountingBackend()
    compiled = torch.compile(model, backend=backend)
    expected = compiled(x)  # compiled outside the profile
    assert (backend.compiles, backend.runs) == (1, 1)

    y, rep = _profile(lambda: compiled(x), model=model)

    # Dynamo does not trace under a dispatch mode: the compiled module ran its Python, op by op
    assert (backend.compiles, backend.runs) == (1, 1)
    assert torch.equal(y, expected)  # aot_eager runs the same aten kernels
    assert {r.phase for r in rep.rows} == {"forward"}
    counted = {r.module: r.flops for r in rep.rows if r.flops}  # named as the user's model
    assert counted == MLP_FLOPS
    assert not rep.uncounted
    # after the profile the compiled code runs again, without a recompile (torch 2.13 would
    # otherwise mark the frame skipped for good: pytorch/pytorch#190286)
    assert torch.equal(compiled(x), expected)
    assert (backend.compiles, backend.runs) == (1, 2)


def test_function_first_called_inside_a_profile_still_compiles_after_it(fresh_dynamo):
    backend = _CountingBackend()

    @torch.compile(backend=backend)
    def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 3

    x = torch.randn(4, 4)
    y, rep = _profile(lambda: scaled_tanh(x))
    assert backend.compiles == 0
    assert one_row(rep, "aten.tanh").flops == 16 and one_row(rep, "aten.mul").flops == 16
    assert torch.equal(scaled_tanh(x), y)
    assert (backend.compiles, backend.runs) == (1, 1)


def test_compile_stance_is_restored_after_the_profile(fresh_dynamo):
    backend = _CountingBackend()
    fn = torch.compile(lambda x: x + 1, backend=backend)
    with torch.compiler.set_stance("force_eager"):
        _profile(lambda: fn(torch.ones(2)))
        fn(torch.ones(2))  # the user's own stance holds after memwall's ends
    assert backend.compiles == 0
    fn(torch.ones(2))
    assert backend.compiles == 1
