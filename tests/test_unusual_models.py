"""Unusual models (issue #8): each runs under memwall with hand-derived counts, and its results
stay bit-identical to the same run without memwall."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import one_row, rows_of

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


# --- custom autograd Function -------------------------------------------------------------------


class Cube(torch.autograd.Function):
    """y = x * x * x; dy/dx = 3 * x * x."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * 3 * x * x


class CubeLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Cube.apply(self.lin(x))


def _cube_run(model: CubeLayer, x: torch.Tensor, functional: bool) -> tuple[torch.Tensor, ...]:
    # functional: Cube applied outside any module, to the output of one
    y = Cube.apply(model.lin(x)) if functional else model(x)
    y.sum().backward()
    assert model.lin.weight.grad is not None and x.grad is not None
    return y, x.grad, model.lin.weight.grad


@pytest.mark.parametrize("functional", [False, True], ids=["in_a_module", "outside_modules"])
def test_custom_autograd_function_ops_are_counted_in_forward_and_backward(functional):
    model = CubeLayer()
    x = torch.randn(3, 4, requires_grad=True)
    x_bare = x.detach().clone().requires_grad_(True)
    model_bare = CubeLayer()
    model_bare.load_state_dict(model.state_dict())

    out, rep = _profile(lambda: _cube_run(model, x, functional), model=model)

    for a, b in zip(out, _cube_run(model_bare, x_bare, functional), strict=True):
        assert torch.equal(a, b)
    n = 3 * 5  # elements Cube works on: lin's output
    forward = rows_of(rep, "aten.mul", "forward")
    # x * x * x: two multiplies of n elements, inside Function.forward (run with grad mode off),
    # in the root's own forward or outside any module: module ""
    assert sum(r.calls for r in forward) == 2 and sum(r.flops or 0 for r in forward) == 2 * n
    backward = rows_of(rep, "aten.mul", "backward")
    # grad * 3 * x * x: three multiplies, attributed to where the Function was applied
    assert sum(r.calls for r in backward) == 3 and sum(r.flops or 0 for r in backward) == 3 * n
    assert {r.module for r in forward + backward} == {""}
    assert one_row(rep, "aten.addmm").module == "lin"
    assert not rep.filter(phase="other")


# --- torch.library custom op --------------------------------------------------------------------


@torch.library.custom_op("memwall_test::scale_add", mutates_args=())
def scale_add(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return x * alpha + y


@scale_add.register_fake
def _scale_add_fake(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.empty_like(x)


def test_custom_op_is_its_own_uncounted_op_with_bytes_and_time():
    x, y = torch.randn(4, 5), torch.randn(4, 5)
    out, rep = _profile(lambda: scale_add(x, y, 2.0))
    assert torch.equal(out, x * 2.0 + y)
    row = one_row(rep, "memwall_test.scale_add")
    assert row.flops is None and row in rep.uncounted
    assert (row.calls, row.bytes_read, row.bytes_written) == (1, 2 * 20 * 4, 20 * 4)
    assert row.time_s > 0
    assert [r.op for r in rep.rows] == ["memwall_test.scale_add"]  # its inside is its own


def test_custom_op_is_counted_with_a_formula_from_a_registry_copy():
    registry = memwall.default_registry().copy()

    @registry.flops("memwall_test.scale_add")
    def _scale_add_flops(call: memwall.OpCall) -> int:
        return 2 * call["x"].numel  # a multiply and an add per element

    x, y = torch.randn(4, 5), torch.randn(4, 5)
    _, rep = _profile(lambda: scale_add(x, y, 2.0), registry=registry)
    assert one_row(rep, "memwall_test.scale_add").flops == 40
    assert not rep.uncounted and rep.coverage == 1.0
