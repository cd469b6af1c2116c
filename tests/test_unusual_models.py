"""Unusual models (issue #8): each runs under memwall with hand-derived counts, and its results
stay bit-identical to the same run without memwall."""

from __future__ import annotations

import contextlib
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import one_row, rows_of
from torch.utils._pytree import tree_map
from torch.utils.checkpoint import checkpoint

import memwall_plugin as memwall
from memwall_plugin.rows import module_tree

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


def test_compiled_module_runs_its_compiled_code_under_the_profile_and_is_counted(fresh_dynamo):
    model = _mlp()
    x = torch.randn(2, 8)
    backend = _CountingBackend()
    compiled = torch.compile(model, backend=backend)
    expected = compiled(x)  # compiled outside the profile
    assert (backend.compiles, backend.runs) == (1, 1)

    y, rep = _profile(lambda: compiled(x), model=model)

    # the compiled program ran (no recompile, no eager stand-in): aot_eager's graph runs its
    # aten ops, each recorded; memwall's module hooks traced to nothing (no graph break)
    assert (backend.compiles, backend.runs) == (1, 2)
    assert torch.equal(y, expected)
    assert sum(r.flops or 0 for r in rep.rows) == sum(MLP_FLOPS.values())
    assert not rep.uncounted
    assert torch.equal(compiled(x), expected)
    assert (backend.compiles, backend.runs) == (1, 3)


def test_function_first_called_inside_a_profile_compiles_there_and_runs_after_it(fresh_dynamo):
    backend = _CountingBackend()

    @torch.compile(backend=backend)
    def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) * 3

    x = torch.randn(4, 4)
    y, rep = _profile(lambda: scaled_tanh(x))
    assert (backend.compiles, backend.runs) == (1, 1)  # compiled with memwall's mode off
    assert one_row(rep, "aten.tanh").flops == 16 and one_row(rep, "aten.mul").flops == 16
    assert torch.equal(scaled_tanh(x), y)
    assert (backend.compiles, backend.runs) == (1, 2)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.act = torch.nn.Linear(32, 32), torch.nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.fc(x))


class _Residual(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _step_by_module(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[Any, int], dict[str, int], Any]:
    """One training step under memwall: FLOPs by (phase, module) (those with any), activation
    bytes by module, and the loss with every gradient."""
    with memwall.profile(summary=False, scalars=False) as prof:
        loss = model(x).sum()
        loss.backward()
        prof.step()
    rep = prof.report()
    flops: dict[Any, int] = {}
    for r in rep.rows:
        if r.flops:
            flops[(r.phase, r.module)] = flops.get((r.phase, r.module), 0) + r.flops
    grads = [loss.detach()] + [p.grad.clone() for p in model.parameters()]
    return flops, {m.module: m.activation_bytes for m in rep.memory.modules}, grads


@pytest.mark.parametrize("how", ["eager", "aot_eager", "submodule"])
def test_a_model_compiled_with_an_eager_backend_names_each_op_as_its_eager_run_does(fresh_dynamo, how):
    """Dynamo's `eager` and `aot_eager` backends run the graph module Dynamo made op by op, and
    no module hook fires inside it (memwall's are hidden from Dynamo): every op read the top
    level. Each op now goes to the module its graph node was traced in (the line of the graph's
    code that calls it), so the step reads as the uncompiled model's, module by module; the
    program and its bits are the compiled one's."""
    x = torch.randn(8, 32)
    torch.manual_seed(0)
    eager = _step_by_module(_Residual(), x)
    # by hand: each block's Linear 2*8*32*32 + 8*32 (bias) FLOPs forward, GELU and the residual
    # add 8*32 each; the head 2*8*32*4 + 8*4
    assert eager[0][("forward", "blocks.1.fc")] == 2 * 8 * 32 * 32 + 8 * 32
    assert eager[0][("forward", "head")] == 2 * 8 * 32 * 4 + 8 * 4

    def build() -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(0)
        net = _Residual()
        if how == "submodule":
            net.blocks[1].compile(backend="eager")  # one block compiled in place
            return net, net
        return net, torch.compile(net, backend=how)

    bare_net, bare = build()
    bare(x).sum().backward()  # compiles, outside any profile
    bare_net.zero_grad()
    loss = bare(x).sum()
    loss.backward()
    expected = [loss.detach()] + [p.grad.clone() for p in bare_net.parameters()]
    net, compiled = build()
    compiled(x).sum().backward()
    net.zero_grad()
    flops, activations, grads = _step_by_module(compiled, x)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected, strict=True))
    if how == "aot_eager":
        # AOTAutograd's own graphs: the forward's ops as the eager run's; in backward each matmul
        # and GELU gradient goes to its module (a node AOTAutograd names no module for, the
        # residual gradients' sum, is the top level's); its saved tensors are its one node's
        assert {k: v for k, v in flops.items() if k[0] == "forward"} == {
            k: v for k, v in eager[0].items() if k[0] == "forward"}
        for module in ("blocks.0.fc", "blocks.0.act", "blocks.1.act", "head"):
            assert flops[("backward", module)] == eager[0][("backward", module)], module
    else:
        assert flops == eager[0]
        assert activations == eager[1]


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


# --- tensor subclasses --------------------------------------------------------------------------


class Float64Shadow(torch.Tensor):
    """A float32 tensor on the outside that computes in float64 inside (a wrapper subclass, in
    the style of torch's own test subclasses)."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> Float64Shadow:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls, elem.shape, dtype=torch.float32, device=elem.device, strides=elem.stride())

    def __init__(self, elem: torch.Tensor) -> None:
        self.elem = elem.to(torch.float64)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        def unwrap(t: Any) -> Any:
            if isinstance(t, Float64Shadow):
                return t.elem
            return t.to(torch.float64) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
        return tree_map(lambda t: Float64Shadow(t) if isinstance(t, torch.Tensor) else t, out)


def test_wrapper_subclass_is_counted_at_the_shapes_and_dtypes_it_computes_in():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    out, rep = _profile(lambda: lin(Float64Shadow(x)), model=lin)
    assert isinstance(out, Float64Shadow)
    assert torch.equal(out.elem, lin(Float64Shadow(x)).elem)
    addmm = one_row(rep, "aten.addmm")
    assert addmm.flops == 2 * 2 * 4 * 3 + 2 * 3
    # the real work: float64 inputs [3] + [2, 4] + [4, 3] read, [2, 3] written, 8 bytes each
    assert addmm.dtype == "float64"
    assert (addmm.bytes_read, addmm.bytes_written) == ((3 + 8 + 12) * 8, 6 * 8)


def _jagged(requires_grad: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    parts = [torch.randn(2, 4, generator=gen), torch.randn(3, 4, generator=gen)]
    return torch.nested.nested_tensor(parts, layout=torch.jagged, requires_grad=requires_grad)


def _jagged_run(lin: torch.nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    y = lin(x)
    y.values().sum().backward()
    assert x.grad is not None and lin.weight.grad is not None and lin.bias.grad is not None
    return y.values(), x.grad.values(), lin.weight.grad, lin.bias.grad


def test_nested_jagged_tensor_is_counted_on_its_packed_values():
    lin = torch.nn.Linear(4, 3)
    lin_bare = torch.nn.Linear(4, 3)
    lin_bare.load_state_dict(lin.state_dict())
    x = _jagged(requires_grad=True)  # [2, j, 4]: 2 + 3 = 5 rows packed

    out, rep = _profile(lambda: _jagged_run(lin, x), model=lin)

    for a, b in zip(out, _jagged_run(lin_bare, _jagged(requires_grad=True)), strict=True):
        assert torch.equal(a, b)
    addmm = one_row(rep, "aten.addmm", "forward")
    assert addmm.shapes == "[3] x [5, 4] x [4, 3]"
    assert addmm.flops == 2 * 5 * 4 * 3 + 5 * 3
    # grad_input [5, 3] @ [3, 4] and grad_weight [3, 5] @ [5, 4]; the bias gradient sums 15
    assert sorted(r.flops for r in rows_of(rep, "aten.mm", "backward")) == [120, 120]
    assert one_row(rep, "aten.sum", "backward").flops == 15
    assert not rep.uncounted


def test_strided_nested_tensor_counts_its_packed_elements():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nested tensors is in prototype")
        nested = torch.nested.nested_tensor([torch.randn(2, 4), torch.randn(3, 4)])
    out, rep = _profile(lambda: nested * 2)
    assert all(torch.equal(a, b) for a, b in zip(out.unbind(), (nested * 2).unbind(), strict=True))
    mul = one_row(rep, "aten.mul")
    assert (mul.shapes, mul.flops, mul.bytes_read, mul.bytes_written) == ("nested 2 x [2..3, 4]", 20, 80, 80)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dtensor_on_one_process_is_counted_on_its_local_shards():
    dist = torch.distributed
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        a, b = torch.randn(4, 6), torch.randn(6, 5)
        da, db = distribute_tensor(a, mesh, [Shard(0)]), distribute_tensor(b, mesh, [Replicate()])
        out, rep = _profile(lambda: (da @ db).sum())
        assert torch.equal(out.full_tensor(), (a @ b).sum())
        assert one_row(rep, "aten.mm").flops == 2 * 4 * 6 * 5
        assert one_row(rep, "aten.sum").flops == 20
        assert (rep.rank, rep.world_size) == (0, 1)
    finally:
        dist.destroy_process_group()


def test_a_loss_on_a_dtensor_outside_any_module_is_forward_work():
    """A tensor-parallel model's loss, computed outside the model on its DTensor output: DTensor
    runs each op on its local shard, which requires no grad, so those ops read as work off the
    autograd graph, phase `other`, not the forward they are. Each is the forward's now, and the
    ops of a check run on a detached result stay `other`."""
    dist = torch.distributed
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.manual_seed(0)
        lin = torch.nn.Linear(6, 4)
        x, target = torch.randn(3, 6), torch.randn(3, 4)
        dx, dtarget = distribute_tensor(x, mesh, [Replicate()]), distribute_tensor(target, mesh, [Replicate()])
        weight = torch.nn.Parameter(distribute_tensor(lin.weight.detach(), mesh, [Replicate()]))

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            loss = ((dx @ weight.t() - dtarget) ** 2).mean()
            loss.backward()
            return loss.detach(), loss.detach().abs()  # a check on the detached loss: off the graph

        (loss, _), rep = _profile(step)
        assert torch.equal(loss.full_tensor(), ((x @ lin.weight.detach().t() - target) ** 2).mean())
        for op in ("aten.mm", "aten.sub", "aten.pow", "aten.mean"):
            assert {r.phase for r in rows_of(rep, op) if r.phase != "backward"} == {"forward"}, op
        assert {r.phase for r in rows_of(rep, "aten.abs")} == {"other"}
    finally:
        dist.destroy_process_group()


# --- meta and fake tensors ----------------------------------------------------------------------

# Linear(64 -> 32) on [8, 64]: 2*8*64*32 multiply-adds x2 plus 8*32 bias adds
LINEAR_64_32_FLOPS = 2 * 8 * 64 * 32 + 8 * 32


def test_meta_device_model_is_counted_without_running_it():
    lin = torch.nn.Linear(64, 32, device="meta")
    x = torch.randn(8, 64, device="meta", requires_grad=True)
    _, rep = _profile(lambda: lin(x).sum().backward(), model=lin)
    assert x.grad is not None and x.grad.is_meta
    addmm = one_row(rep, "aten.addmm", "forward")
    assert addmm.flops == LINEAR_64_32_FLOPS
    assert (addmm.bytes_read, addmm.bytes_written) == ((32 + 8 * 64 + 64 * 32) * 4, 8 * 32 * 4)
    # grad_input [8, 32] @ [32, 64] and grad_weight [32, 8] @ [8, 64]
    assert sorted(r.flops for r in rows_of(rep, "aten.mm", "backward")) == [2 * 8 * 32 * 64] * 2


@pytest.mark.parametrize("fake_outside", [False, True], ids=["fake_inside_profile", "profile_inside_fake"])
def test_fake_tensor_mode_records_nothing_and_does_not_crash(fake_outside):
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    def run() -> torch.Tensor:
        lin = torch.nn.Linear(64, 32)
        return torch.relu(lin(torch.randn(8, 64)))

    fake = FakeTensorMode()
    if fake_outside:
        with fake:
            out, rep = _profile(run)
    else:
        with memwall.profile(summary=False) as prof:
            with fake:
                out = run()
        rep = prof.report()
    assert isinstance(out, FakeTensor) and out.shape == (8, 32)
    # fake tensors carry metadata only: no work ran, nothing is recorded (the meta device
    # counts a model without running it)
    assert rep.rows == ()
    # and memwall still records real work after the fake mode is gone
    _, real = _profile(lambda: torch.relu(torch.randn(8, 32)))
    assert one_row(real, "aten.relu").flops == 8 * 32


# --- no_grad and inference_mode -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_and_inference_mode_count_as_forward_like_grad_mode(mode):
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.GELU(),
                              torch.nn.Linear(16, 4))
    x = torch.randn(2, 8)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode

    def under_mode() -> torch.Tensor:
        with context():
            return net(x)

    out, rep = _profile(under_mode, model=net)
    reference, grad_rep = _profile(lambda: net(x), model=net)
    assert torch.equal(out, reference)
    # addmm 2*2*8*16 + 32; layer norm 5 per element + weight and bias 1 each, over 32;
    # gelu 5 per element; addmm 2*2*16*4 + 8
    per_module = {r.module: r.flops for r in rep.rows if r.flops}
    assert per_module == {"0": 544, "1": 7 * 32, "2": 5 * 32, "3": 264}
    assert not rep.uncounted and {r.phase for r in rep.rows} == {"forward"}

    def table(report: memwall.Report) -> list[tuple[Any, ...]]:
        return sorted((r.op, r.module, r.phase, r.calls, r.shapes, r.flops, r.bytes) for r in report.rows)

    assert table(rep) == table(grad_rep)


# --- complex and integer dtypes -----------------------------------------------------------------


def test_complex_matmul_counts_real_arithmetic():
    a = torch.randn(3, 4, dtype=torch.complex64)
    b = torch.randn(4, 5, dtype=torch.complex64)
    (mm, add), rep = _profile(lambda: (a @ b, a + a))
    assert torch.equal(mm, a @ b) and torch.equal(add, a + a)
    row = one_row(rep, "aten.mm")
    # each of 3*5 outputs sums 4 complex products: 4 real multiplies + 4 real adds each
    assert (row.dtype, row.flops) == ("complex64", 3 * 5 * 4 * 8)
    assert (row.bytes_read, row.bytes_written) == ((12 + 20) * 8, 15 * 8)
    assert one_row(rep, "aten.add").flops == 12  # per complex element (a documented lower bound)


def test_integer_ops_report_their_dtype():
    a = torch.randint(-5, 5, (3, 4))
    b = torch.randint(-5, 5, (4, 5))
    c = torch.randint(-5, 5, (3, 4), dtype=torch.int32)
    (mm, add), rep = _profile(lambda: (a @ b, c + c))
    assert torch.equal(mm, a @ b) and torch.equal(add, c + c)
    row = one_row(rep, "aten.mm")
    assert (row.dtype, row.flops, row.bytes_read) == ("int64", 2 * 3 * 4 * 5, (12 + 20) * 8)
    row = one_row(rep, "aten.add")
    assert (row.dtype, row.flops, row.bytes_read, row.bytes_written) == ("int32", 12, 24 * 4, 12 * 4)


# --- activation checkpointing -------------------------------------------------------------------


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.act = torch.nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


class CheckpointedNet(torch.nn.Module):
    def __init__(self, use_reentrant: bool | None) -> None:
        super().__init__()
        self.block = Block()
        self.head = torch.nn.Linear(4, 1)
        self.use_reentrant = use_reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_reentrant is None:
            h = self.block(x)
        else:
            h = checkpoint(self.block, x, use_reentrant=self.use_reentrant)
        return self.head(h)


def _train_step(net: CheckpointedNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss = net(x).sum()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert x.grad is not None and all(g is not None for g in grads)
    return (loss, x.grad, *grads)  # type: ignore[arg-type]


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
def test_checkpointed_forward_is_recomputed_in_backward_and_labelled(use_reentrant):
    net = CheckpointedNet(use_reentrant)
    bare = CheckpointedNet(use_reentrant)
    bare.load_state_dict(net.state_dict())
    x = torch.randn(2, 4, requires_grad=True)
    x_bare = x.detach().clone().requires_grad_(True)

    out, rep = _profile(lambda: _train_step(net, x), model=net)

    for a, b in zip(out, _train_step(bare, x_bare), strict=True):
        assert torch.equal(a, b)
    # forward: block.lin addmm 2*2*4*4 + 8, tanh 8, head addmm 2*2*4*1 + 2, the loss's sum 2
    assert _flops(rep, "forward") == 72 + 8 + 18 + 2
    # the block's forward again, inside backward, under its own module paths
    recompute = {(r.op, r.module): r.flops for r in rep.filter(phase="recompute")
                 if r.flops}
    assert recompute == {("aten.addmm", "block.lin"): 72, ("aten.tanh", "block.act"): 8}
    # backward proper: head mm 16 + 16, bias sum 2; tanh_backward 3 per element 24;
    # block.lin mm 64 + 64, bias sum 8
    assert _flops(rep, "backward") == 16 + 16 + 2 + 24 + 64 + 64 + 8
    # the module tree puts recomputation on the backward side, where its time is spent
    _, forward_time, backward_time = module_tree(rep.rows)

    def time_under(path: str, phases: set[str]) -> float:
        return sum(r.time_s for r in rep.rows if r.phase in phases and (r.module + ".").startswith(path + "."))

    assert time_under("block", {"recompute"}) > 0
    assert backward_time["block"] == pytest.approx(time_under("block", {"backward", "recompute"}))
    assert forward_time["block"] == pytest.approx(time_under("block", {"forward"}))
    assert "recompute" in memwall.render_text(rep, width=120)


def test_without_checkpointing_nothing_is_labelled_recompute():
    net = CheckpointedNet(use_reentrant=None)
    _, rep = _profile(lambda: _train_step(net, torch.randn(2, 4, requires_grad=True)), model=net)
    assert not rep.filter(phase="recompute") and _flops(rep, "backward") == 194


class SelectiveNet(torch.nn.Module):
    """Blocks of Linear-GELU-Linear, each checkpointed selectively (torch.utils.checkpoint's
    `context_fn`): the policy saves the matmuls' outputs and recomputes the rest."""

    def __init__(self, blocks: int = 4, width: int = 32) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width))
            for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + checkpoint(block, x, use_reentrant=False, context_fn=_SAVE_MATMULS)
        return x


def _save_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    saved = (torch.ops.aten.addmm.default, torch.ops.aten.mm.default)
    return CheckpointPolicy.MUST_SAVE if op in saved else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_matmuls)


_SAVE_MATMULS = _selective_contexts  # as torch's docs write it, and torch.compile can trace it


def _selective_step(net: SelectiveNet, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    loss = net(x).square().mean()
    loss.backward()
    return (loss, *[p.grad for p in net.parameters()])  # type: ignore[arg-type]


def test_selective_checkpointing_keeps_the_outputs_its_policy_saves_as_activations():
    """What the policy saves, torch keeps in checkpoint's own cache, past autograd's saved
    tensors: they are activations all the same, of the modules that made them, held from the
    forward to the backward. Hand count at the end of the forward (batch B, width d, 4 blocks):
    each block's input, which checkpoint keeps (B*d), its two matmul outputs (B*4d and B*d), and
    the output, which the loss's square saves (B*d); fp32."""
    torch.manual_seed(0)
    net, bare = SelectiveNet(), SelectiveNet()
    bare.load_state_dict(net.state_dict())
    batch, width = 16, 32
    x = torch.randn(batch, width)
    out, rep = _profile(lambda: _selective_step(net, x), model=net)
    for a, b in zip(out, _selective_step(bare, x), strict=True):
        assert torch.equal(a, b)

    from memwall_plugin.memory import CATEGORIES

    activations = CATEGORIES.index("activations")
    forward = [values for _, phase, values, _ in rep.memory.timeline if phase == "forward"]
    assert forward[-1][activations] == 4 * (batch * width + batch * 4 * width + batch * width) * 4 + batch * width * 4
    for i in range(4):
        assert rep.memory.module(f"blocks.{i}.0").activation_bytes == batch * 4 * width * 4
        assert rep.memory.module(f"blocks.{i}.2").activation_bytes == batch * width * 4
    # the backward takes the matmuls from the cache and recomputes only the GELUs
    recomputed = {r.op for r in rep.filter(phase="recompute") if r.flops}
    assert recomputed == {"aten.gelu"}
    recomputed_gelu = sum(r.flops for r in rows_of(rep, "aten.gelu", "recompute"))
    assert recomputed_gelu == sum(r.flops for r in rows_of(rep, "aten.gelu", "forward")) > 0



@pytest.mark.parametrize("user_hooks", [False, True], ids=["alone", "inside_save_on_cpu"])
def test_selective_checkpointing_warns_as_in_a_bare_run(user_hooks):
    """Selective checkpointing looks for a user's saved-tensors hooks around it (torch 2.15 warns
    when it finds one: a later release routes its cache through them). memwall's own hook is not
    the user's: the profiled run warns exactly when and what the bare run does."""

    def warned(profiled: bool) -> list[tuple[type, str]]:
        torch.manual_seed(0)
        net = SelectiveNet(blocks=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outer = memwall.profile(summary=False, model=net) if profiled else contextlib.nullcontext()
            with outer, torch.autograd.graph.save_on_cpu() if user_hooks else contextlib.nullcontext():
                _selective_step(net, torch.randn(4, 32))
        return sorted({(w.category, str(w.message)) for w in caught if "checkpoint" in str(w.message)})

    assert warned(profiled=True) == warned(profiled=False)


# --- threads --------------------------------------------------------------------------------------


class Waiting(torch.nn.Module):
    """Runs its forward up to a point, then waits there for the main thread."""

    def __init__(self, inside: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.inside, self.release = inside, release

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.inside.set()
        assert self.release.wait(WAIT_S)
        return torch.special.erfinv(torch.tanh(y) * 0.5)


def _in_thread(fn: Callable[[], Any], results: dict[str, Any]) -> threading.Thread:
    def target() -> None:
        results["out"] = fn()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_another_threads_module_neither_recorded_nor_mixed_into_module_paths():
    inside, release = threading.Event(), threading.Event()
    other = Waiting(inside, release)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    x, x_other = torch.randn(2, 4), torch.randn(2, 4)
    results: dict[str, Any] = {}

    def run() -> torch.Tensor:
        thread = _in_thread(lambda: other(x_other), results)
        try:
            assert inside.wait(WAIT_S)  # the other thread is inside its module's forward now
            return model(x)
        finally:
            release.set()
            thread.join(WAIT_S)

    out, rep = _profile(run)  # no model=: every module that runs on this thread is tracked
    assert torch.equal(out, model(x))
    with torch.no_grad():
        assert torch.equal(results["out"], other(x_other))
    # dispatch modes are per thread: the other thread's ops are not recorded at all
    assert not rows_of(rep, "aten.erfinv") and not rows_of(rep, "aten.tanh")
    assert {(r.op, r.module) for r in rep.rows if r.flops} == {("aten.addmm", "0"), ("aten.relu", "1")}


class WaitingSGD(torch.optim.SGD):
    """An optimizer whose step waits inside, between torch's step pre- and post-hooks."""

    inside: threading.Event
    release: threading.Event

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        self.inside.set()
        assert self.release.wait(WAIT_S)
        return super().step(closure)


def test_another_threads_optimizer_step_neither_labels_ops_nor_marks_steps():
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    opt = WaitingSGD([param], lr=0.5)
    opt.inside, opt.release = threading.Event(), threading.Event()
    model = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)

    with memwall.profile(summary=False, step_on_optimizer=True) as prof:
        thread = _in_thread(opt.step, {})
        try:
            assert opt.inside.wait(WAIT_S)  # the other thread is inside optimizer.step()
            out = model(x)
        finally:
            opt.release.set()
            thread.join(WAIT_S)
        step = prof.step_num
    rep = prof.report()
    assert step == 0  # the other thread's step did not end this thread's step
    assert torch.equal(out, model(x)) and torch.equal(param.detach(), torch.full((3,), 0.5))
    assert not rep.filter(phase="optimizer")
    assert one_row(rep, "aten.addmm").phase == "forward"


# --- DataLoader worker processes ----------------------------------------------------------------


class Erfinv(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Each item made with an op that appears nowhere else in the test: erfinv."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(index)
        return torch.special.erfinv(torch.tanh(torch.randn(3, generator=gen)) * 0.5)


def _epoch(profiled: bool) -> tuple[list[torch.Tensor], memwall.Report | None]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    loader = torch.utils.data.DataLoader(Erfinv(), batch_size=4, num_workers=2)
    context = memwall.profile(model=lin, summary=False) if profiled else contextlib.nullcontext()
    with context as prof:
        outs = [lin(batch) for batch in loader]
    return outs, prof.report() if profiled else None


def test_dataloader_workers_ops_stay_in_their_processes():
    outs, rep = _epoch(profiled=True)
    bare, _ = _epoch(profiled=False)
    assert len(outs) == 2 and all(torch.equal(a, b) for a, b in zip(outs, bare, strict=True))
    assert rep is not None
    # the dataset's ops and the collation (stack) ran in the workers, not here
    assert not rows_of(rep, "aten.erfinv") and not rows_of(rep, "aten.tanh") and not rows_of(rep, "aten.stack")
    addmm = one_row(rep, "aten.addmm")
    assert (addmm.phase, addmm.calls, addmm.flops) == ("forward", 2, 2 * (2 * 4 * 3 * 2 + 4 * 2))
