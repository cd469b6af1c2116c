"""CUDA graphs under memwall, checked without a GPU: what a graph hides is said, never guessed.

Work captured into a CUDA graph (torch.cuda.graph) does not run when it is launched but at each
replay, which memwall does not see: memwall must neither count it as run nor record its timing
events into the user's graph (a replay would record them again while memwall reuses them for
other ops). A region torch.compile runs as a CUDA graph (mode="reduce-overhead") launches none
of its kernels from Python: it is one row, and the report says why. The device side runs in
tests/test_cuda.py on a GPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from memwall_plugin.hooks import capture as capture_mod
from memwall_plugin.hooks._torch_private import replays_cuda_graph

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.records import CUDA_GRAPHS_KEY
from tests.conftest import region_handle


def _no_event(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("memwall made a timing event while a CUDA graph was being captured")


@pytest.fixture
def capturing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The current stream is capturing a CUDA graph; any timing event memwall made would fail."""
    monkeypatch.setattr(capture_mod, "_capturing", lambda: True)
    monkeypatch.setattr(torch.cuda, "Event", _no_event)


def test_ops_captured_into_a_graph_run_untouched_are_not_counted_and_are_named(tmp_path, capturing, monkeypatch):
    a, b = torch.randn(32, 16), torch.randn(16, 8)
    expected = torch.mm(a, b)
    with memwall.profile(logdir=tmp_path, summary=False, scalars=False) as prof:
        torch.relu(a)  # recorded as usual
        with monkeypatch.context() as gpu:
            # the mode's GPU path, taken here by CPU tensors, while the stream captures
            gpu.setattr(prof._recorder.capture._mode, "_cuda", True)
            gpu.setattr(capture_mod, "_first_tensor_is_cuda", lambda args: True)
            out = [torch.mm(a, b) for _ in range(3)]
            torch.add(a, a)
    assert all(torch.equal(o, expected) for o in out)  # the op ran as it would without memwall
    rep = prof.report()
    assert {r.op for r in rep.rows} == {"aten.relu"}  # the captured calls are not counted as run
    assert rep.extra[CUDA_GRAPHS_KEY] == {"captured_calls": {"aten.mm": 3, "aten.add": 1}}
    (note,) = [f for f in findings(rep) if "captured into a CUDA graph" in f]
    assert note.startswith("4 op calls (mm x3, add x1) were captured into a CUDA graph")
    # the report file keeps it: the tab and `memwall report` read the same record
    (path,) = prof.saved
    assert memwall.load_report(path).extra[CUDA_GRAPHS_KEY] == rep.extra[CUDA_GRAPHS_KEY]


def test_a_compiled_region_launched_while_capturing_runs_untouched_and_is_named(tmp_path, capturing):
    ran: list[Any] = []

    def region_op(handle: Any, inputs: list[Any]) -> Any:  # stands for inductor_compiled_code
        ran.append(handle)
        return [inputs[0] * 2]

    x = torch.ones(4)
    with memwall.profile(logdir=tmp_path, summary=False, scalars=False) as prof:
        mode = prof._recorder.capture._mode
        (out,) = mode._region_on_gpu(region_op, ("handle", [x]), {}, (("k", ()), None, "cuda"), 0)
    assert ran == ["handle"] and torch.equal(out, x * 2)  # run once, as handed over
    (captured,) = prof.report().extra[CUDA_GRAPHS_KEY]["captured_calls"].items()
    assert "region_op" in captured[0] and captured[1] == 1


def test_a_region_run_as_a_cuda_graph_is_told_apart_from_one_run_kernel_by_kernel():
    """torch.compile(mode="reduce-overhead") hands the region operator Inductor's cudagraphify
    wrapper (built here as Inductor builds it; making it needs no GPU, running it would)."""
    from torch._inductor.compile_fx import cudagraphify

    def call(args: list[Any]) -> list[Any]:  # a generated module's entry point
        return args

    graphed = region_handle(cudagraphify(call, device_index=0, stack_traces=[], is_backward=False, is_inference=True))
    assert replays_cuda_graph(graphed)
    assert not replays_cuda_graph(region_handle(call))
    assert not replays_cuda_graph(object())  # anything else: no claim


def test_the_report_says_plainly_that_graph_replays_hid_the_kernels():
    rep = memwall.Report(rows=(), extra={CUDA_GRAPHS_KEY: {"region_calls": 12}})
    (note,) = findings(rep)  # a report with no rows still says it
    assert note.startswith("12 calls of compiled regions ran as CUDA graphs (torch.compile "
                           "mode=\"reduce-overhead\": ") and "not split into its kernels" in note
    assert not [f for f in findings(memwall.Report(rows=())) if "CUDA graph" in f]
