"""torch.func under memwall: per-sample gradients, Jacobians, Hessians and forward-mode AD run as in a
bare run (torch.func's grad and vjp refuse to start under a saved-tensors hook, which memwall's
memory tracking pushes), bit-identical, with every op counted: matmuls equal FlopCounterMode's,
forward-mode AD's primitives and zero tangents by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

import memwall_plugin as memwall

# torch.func imports its forward-mode decompositions with torch.jit.script, deprecated since torch 2.11: torch's
# own warning, on the first jvp in a process, bare or profiled
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

MATMULS = ("mm", "bmm", "addmm", "baddbmm")


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _tensors(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def _profiled(work: Callable[[], Any], tmp_path: Any) -> tuple[Any, memwall.Report]:
    with memwall.profile(summary=False, scalars=False, logdir=tmp_path / "run") as prof:
        out = work()
    return out, prof.report()


def _matmul_flops(rep: memwall.Report) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rep.rows:
        name = r.op.split(".")[-1]
        if name in MATMULS:
            out[name] = out.get(name, 0) + (r.flops or 0)
    return out


def _flop_counter(work: Callable[[], Any]) -> dict[str, int]:
    with FlopCounterMode(display=False) as counter:
        work()
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}


def _check(work: Callable[[], Any], tmp_path: Any) -> memwall.Report:
    bare = _tensors(work())
    expected = _flop_counter(work)
    out, rep = _profiled(work, tmp_path)
    got = _tensors(out)
    assert len(got) == len(bare) and all(torch.equal(a, b) for a, b in zip(got, bare))
    assert [r.op for r in rep.rows if not r.counted] == []
    assert expected and _matmul_flops(rep) == expected
    return rep


def test_per_sample_gradients_of_a_module_run_bit_identical_and_count_as_flop_counter(tmp_path: Any) -> None:
    model = _mlp()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    rep = _check(lambda: vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y), tmp_path)
    # vmap batches each sample's matmuls: the weight gradients are bmm over the 8 samples
    assert _matmul_flops(rep)["bmm"] > 0


def _function() -> Callable[[torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    w1, b1, w2, b2 = torch.randn(32, 16), torch.randn(32), torch.randn(4, 32), torch.randn(4)
    return lambda x: torch.nn.functional.gelu(x @ w1.T + b1) @ w2.T + b2


# FlopCounterMode's module tracker fails on torch.func's reverse-mode transforms of an nn.Module
# ("A leaf node was passed to _will_engine_execute_node"), so its counts come from a plain function
@pytest.mark.parametrize("transform", ["jacrev", "hessian", "vjp", "jacfwd", "jvp", "vmap"])
def test_jacobians_hessians_and_forward_mode_count_as_flop_counter(transform: str, tmp_path: Any) -> None:
    fn = _function()
    x = torch.randn(8, 16)
    works: dict[str, Callable[[], Any]] = {
        "jacrev": lambda: jacrev(fn)(x[0]),
        "hessian": lambda: hessian(lambda v: fn(v).sum())(x[0]),
        "vjp": lambda: vjp(fn, x)[1](torch.ones(8, 4)),
        "jacfwd": lambda: jacfwd(fn)(x[0]),
        "jvp": lambda: jvp(fn, (x,), (torch.ones_like(x),)),
        "vmap": lambda: vmap(fn)(x),
    }
    _check(works[transform], tmp_path)


def test_forward_mode_primitives_and_zero_tangents_by_hand(tmp_path: Any) -> None:
    """jvp of x @ W.T + b: b's tangent is an efficient zero tensor, added to the product's tangent by
    prims.add (one FLOP per output element); a zero tangent is no memory."""
    torch.manual_seed(0)
    w, b, x = torch.randn(1024, 1024), torch.randn(1024), torch.randn(4, 1024)
    out, rep = _profiled(lambda: jvp(lambda v: v @ w.T + b, (x,), (torch.ones_like(x),)), tmp_path)
    assert [r.op for r in rep.rows if not r.counted] == []
    assert sum(r.flops or 0 for r in rep.rows if r.op == "prims.add") == 4 * 1024
    # W's zero tangent (4 MiB) is not held: the peak is W, b, x and the small results
    assert rep.memory.peak_bytes < w.nbytes + 256 * 1024


def test_a_users_saved_tensors_hook_still_stops_grad_as_in_a_bare_run(tmp_path: Any) -> None:
    fn = _function()
    x = torch.randn(16)

    def work() -> Any:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            return grad(lambda v: fn(v).sum())(x)

    with pytest.raises(RuntimeError) as bare:
        work()
    with pytest.raises(RuntimeError) as profiled:
        _profiled(work, tmp_path)
    assert str(profiled.value) == str(bare.value)


def test_activations_are_seen_again_after_a_transform_and_torch_is_restored(tmp_path: Any) -> None:
    model = _mlp()
    x = torch.randn(8, 16)
    disable = torch.autograd.graph.disable_saved_tensors_hooks

    def work() -> None:
        jacrev(_function())(x[0])
        model(x).sum().backward()

    _, rep = _profiled(work, tmp_path)
    assert rep.memory.peak_by_category["activations"] > 0  # the backward's saved tensors, after jacrev
    assert torch.autograd.graph.disable_saved_tensors_hooks is disable
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):  # torch's own refusal is back
        with pytest.raises(RuntimeError, match="saved tensor hooks"):
            jacrev(_function())(x[0])


def test_a_transform_compiled_inside_a_profile_compiles_as_without_memwall(tmp_path: Any) -> None:
    """Dynamo inlines torch.func's `disable_saved_tensors_hooks`: a compile inside a profile sees
    torch's own function and no memwall hook on the stack (fullgraph: any graph break fails)."""
    fn = _function()
    x = torch.randn(8, 16)
    per_sample = lambda v: vmap(grad(lambda u: fn(u).sum()))(v)  # noqa: E731
    bare = torch.compile(per_sample, fullgraph=True)(x)
    torch._dynamo.reset()
    compiled = torch.compile(per_sample, fullgraph=True)
    out, rep = _profiled(lambda: compiled(x), tmp_path)
    assert torch.equal(out, bare)
    assert [r.op for r in rep.rows if not r.counted] == []
    # Inductor leaves the first layer's two matmuls to the library: x @ w1.T forward, and the
    # per-sample input gradient [8, 32] @ w1 ([32, 16]) backward, each 2 * 8 * 16 * 32
    library = [r for r in rep.rows if "extern_kernels.mm" in r.shapes]
    assert [r.flops for r in library] == [2 * 8 * 16 * 32] * 2
