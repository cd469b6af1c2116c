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
