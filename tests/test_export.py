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
