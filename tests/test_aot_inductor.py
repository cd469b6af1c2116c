"""A model compiled ahead of time with AOTInductor (`torch._inductor.aoti_compile_and_package`,
loaded with `aoti_load_package`): its kernels run inside the package, where no dispatcher sees
them. Each call is a row of its own, listed uncounted with its time and the tensors it reads and
writes, never an empty step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import memwall_plugin as memwall
from memwall_plugin.console import findings

inductor = pytest.importorskip("torch._inductor")


@pytest.fixture(scope="module")
def package_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    program = torch.export.export(_model(), (torch.randn(8, 64),))
    path = tmp_path_factory.mktemp("aoti") / "model.pt2"
    return str(inductor.aoti_compile_and_package(program, package_path=str(path)))


@pytest.fixture(scope="module")
def packaged(package_path: str) -> tuple[torch.nn.Module, object]:
    return _model(), inductor.aoti_load_package(package_path)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)).eval()


class _Wrapper(torch.nn.Module):
    def __init__(self, runner: object) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)  # type: ignore[operator]


def test_each_call_of_an_aoti_model_is_an_uncounted_row_with_its_time_and_tensors(packaged):
    _, runner = packaged
    x = torch.randn(8, 64)
    with torch.no_grad():
        bare = runner(x)
        with memwall.profile(summary=False) as prof:
            out = runner(x)
            runner(x)
    assert torch.equal(out, bare)
    rep = prof.report()
    # before: an empty step (two small copies of the input, 0 FLOPs), its work "outside any op"
    (row,) = rep.rows
    assert (row.op, row.phase, row.module, row.calls) == ("memwall.aoti_model", "forward", "", 2)
    assert row.flops is None and row in rep.uncounted
    assert row.bytes == 2 * (x.nbytes + out.nbytes)  # per call: the input read, the output written
    assert row.time_s > 0
    assert any("AOTInductor models, whose kernels memwall cannot see" in f and "ExportedProgram.module()" in f
               for f in findings(rep))


def test_an_aoti_model_called_by_a_module_is_that_modules_row(packaged):
    model, runner = packaged
    own_call = type(runner).__call__
    wrapper = torch.nn.Sequential(_Wrapper(runner))
    x = torch.randn(8, 64)
    with torch.no_grad(), memwall.profile(model=wrapper, summary=False) as prof:
        assert type(runner).__call__ is not own_call  # observed while the profile records
        wrapper(x)
    (row,) = prof.report().rows
    assert (row.op, row.module, row.phase) == ("memwall.aoti_model", "0", "forward")
    assert type(runner).__call__ is own_call  # and as torch left it after
    # the program it was exported from counts its ops
    with torch.no_grad(), memwall.profile(model=model, summary=False) as eager:
        model(x)
    assert eager.report().uncounted == () and eager.report().total_flops > 0


def test_a_package_first_loaded_while_a_profile_records_is_seen(package_path):
    # as under `memwall run script.py`, where the script loads its package inside the profile:
    # torch imports the model's class then, after the profile started (a fresh process)
    script = textwrap.dedent(f"""
        import sys, torch
        import memwall_plugin as memwall
        with torch.no_grad(), memwall.profile(summary=False) as prof:
            runner = torch._inductor.aoti_load_package({package_path!r})
            runner(torch.randn(8, 64))
        print(sorted((r.op, r.calls) for r in prof.report().rows if r.op.startswith("memwall.")))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[('memwall.aoti_model', 1)]"
