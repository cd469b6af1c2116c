"""Exporting inside a profile (a training script that ends by exporting its model, under `memwall
run`): `torch.export.export`, strict or not, `ExportedProgram.run_decompositions()` (which
`torch.onnx.export` runs) export the program a bare run exports, and only the model's real calls
are recorded (the traces run on fake and functional tensors: no work). Before, a strict export
failed inside a profile (Dynamo traced memwall's global module hooks) and so did
`run_decompositions` (memwall's mode handed functional tensors back to their own dispatch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import memwall_plugin as memwall


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _export(model: torch.nn.Module, x: torch.Tensor, strict: bool) -> tuple[str, str]:
    program = torch.export.export(model, (x,), strict=strict)
    return program.graph_module.code, program.run_decompositions().graph_module.code


@pytest.mark.parametrize("strict", [False, True], ids=["non_strict", "strict"])
def test_a_model_exported_inside_a_profile_is_the_program_a_bare_run_exports(strict):
    model, x = _model(), torch.randn(8, 16)
    bare = _export(model, x, strict)
    with memwall.profile(model=model, summary=False) as prof:
        y = model(x)
        exported = _export(model, x, strict)
        again = model(x)
    assert exported == bare
    assert torch.equal(y, again)
    with memwall.profile(model=model, summary=False) as one_forward:
        model(x)
    # the exports' traces recorded nothing: the two real forwards are all there is
    rep, ref = prof.report(), one_forward.report()
    assert ref.total_flops > 0 and rep.total_flops == 2 * ref.total_flops
    assert {(r.op, r.module) for r in rep.rows if r.module} == {(r.op, r.module) for r in ref.rows}
    # what the exports run for real (a strict one copies the example inputs and asks whether
    # the parameters are pinned) is counted too
    assert [r.op for r in rep.rows if r.flops is None] == []


def test_an_aot_compiled_function_counts_its_real_calls_and_not_its_trace():
    """functorch's `aot_function` traces under a FakeTensorMode that lifts real constants into
    fake ones (`lift_fresh`): before, memwall recorded that op, read a fake tensor's data pointer
    (a warning printed into the user's run) and stopped recording."""
    from functorch.compile import aot_function, nop

    def f(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.add_(1)
        return torch.mm(y, y)

    x = torch.randn(32, 32)
    compiled = aot_function(f, fw_compiler=nop)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with memwall.profile(summary=False) as prof:
            out = compiled(x)
    assert torch.equal(out, f(x))
    rep = prof.report()
    assert not rep.incomplete
    # the compiled graph's real call: a clone, 32*32 adds, a 32x32x32 matmul
    assert {r.op: r.flops for r in rep.rows} == {"aten.clone": 0, "aten.add": 32 * 32, "aten.mm": 2 * 32**3}


def test_a_strict_export_first_imported_inside_a_profile(tmp_path):
    """`memwall run` starts recording before the script imports torch.export: its strict
    capture is hidden from memwall's hooks when torch imports it."""
    script = textwrap.dedent("""
        import sys
        import torch
        import memwall_plugin as memwall
        assert "torch.export._trace" not in sys.modules
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
        with memwall.profile(model=model, summary=False):
            program = torch.export.export(model, (torch.randn(2, 4),), strict=True)
        print(len(list(program.graph.nodes)))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 0


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.act = torch.nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x)) + x


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class _Outer(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.pre = torch.nn.Linear(8, 8)
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.pre(x))


def _training_step(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


def _profiled_step(model: torch.nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], memwall.Report]:
    with memwall.profile(summary=False) as prof:
        grads = _training_step(model, x)
    return grads, prof.report()


def _by_row(rep: memwall.Report) -> list[tuple[object, ...]]:
    return sorted((r.op, r.module, r.phase, r.calls, r.flops, r.bytes_read, r.bytes_written) for r in rep.rows)


def _activations(rep: memwall.Report) -> dict[str, int]:
    assert rep.memory is not None
    return {m.module: m.activation_bytes for m in rep.memory.modules if m.activation_bytes}


@pytest.mark.parametrize("nested", [False, True], ids=["whole", "inside_a_model"])
def test_an_exported_programs_module_is_read_per_module_as_the_eager_model(nested):
    """`ExportedProgram.module()` runs one generated forward that calls aten ops directly: no
    submodule is called, so every op was owned by the graph module itself. Each line of that
    code is one node of the graph, and the node names the module it came from: a training step of
    the exported module now reads as the eager model's, row for row (op, module, phase, calls,
    FLOPs, bytes), forward and backward, with the same activations per module, and the same
    gradients as its bare run. Also as a submodule of another model."""
    torch.manual_seed(0)
    eager, x = _Net(), torch.randn(3, 8)
    flat = torch.export.export(eager, (x,)).module()
    if nested:
        eager, flat = _Outer(eager), _Outer(flat)
        flat.pre = eager.pre
    bare = _training_step(flat, x)
    eager_grads, eager_rep = _profiled_step(eager, x)
    grads, rep = _profiled_step(flat, x)
    assert all(torch.equal(a, b) for a, b in zip(grads, bare, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(grads, eager_grads, strict=True))
    assert _by_row(rep) == _by_row(eager_rep)
    prefix = "inner." if nested else ""
    assert {r.module for r in rep.rows if r.flops} >= {f"{prefix}blocks.0.lin", f"{prefix}blocks.1.act",
                                                       f"{prefix}head"}
    assert _activations(rep) == _activations(eager_rep)


def test_nodes_a_pass_inserted_into_an_exported_graph_go_to_the_module_they_feed():
    """A pass over an exported graph (PT2E quantization inserting quantize and dequantize nodes)
    adds nodes that name no module: each is read as part of the module of the op it feeds. The
    graph recompiled after the pass is read from its new code."""
    torch.manual_seed(0)
    model, x = _Net(), torch.randn(3, 8)
    flat = torch.export.export(model, (x,)).module()
    with memwall.profile(summary=False) as prof:
        flat(x)
    assert {r.module for r in prof.report().rows if r.op == "aten.mul"} == set()
    graph = flat.graph
    head = next(n for n in graph.nodes if n.op == "call_function"
                and list(n.meta.get("nn_module_stack", {}).values())[-1][0] == "head")
    with graph.inserting_before(head):
        scaled = graph.call_function(torch.ops.aten.mul.Tensor, (head.args[0], 0.5))
    head.replace_input_with(head.args[0], scaled)
    flat.recompile()
    bare = flat(x)
    with memwall.profile(summary=False) as prof:
        got = flat(x)
    assert torch.equal(got, bare)
    rows = [r for r in prof.report().rows if r.op == "aten.mul"]
    assert [(r.module, r.flops) for r in rows] == [("head", 3 * 8)]


class _ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_a_graph_module_sharing_a_models_layers_keeps_their_names_and_is_named_as_the_user_holds_it():
    """A torch.fx GraphModule made from a model holds the model's own layers. It was named after
    a local variable of torch.fx's call wrapper (`obj`), and its layers took that name for good:
    the eager model's later calls read `obj.conv`, `obj.fc`. An exported program's module (new
    layers) read `obj_2`. The truth: the names the script gives them."""
    torch.manual_seed(0)
    net, x = _ConvNet().eval(), torch.randn(4, 3, 8, 8)
    gm = torch.fx.symbolic_trace(net)
    exported = torch.export.export(net, (x,)).module()
    with torch.no_grad(), memwall.profile(summary=False) as prof:
        for label, model in (("first", net), ("graph", gm), ("exported", exported), ("again", net)):
            with prof.phase(label):
                model(x)
    where: dict[str, set[str]] = {}
    for r in prof.report().rows:
        if r.op in ("aten.convolution", "aten.addmm", "aten.relu"):
            where.setdefault(r.phase, set()).add(f"{r.op}@{r.module}")
    eager = {"aten.convolution@conv", "aten.addmm@fc", "aten.relu@"}
    assert where["first"] == where["again"] == eager, where
    assert where["graph"] == {"aten.convolution@conv", "aten.addmm@fc", "aten.relu@gm"}, where["graph"]
    assert where["exported"] == {"aten.convolution@exported.conv", "aten.addmm@exported.fc",
                                 "aten.relu@exported"}, where["exported"]
