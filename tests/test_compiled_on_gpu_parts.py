"""How memwall follows a compiled region's Triton kernels on a GPU, checked without one.

On a GPU a region's generated module launches Triton kernels (`triton_*.run(...)`) where on the
CPU it calls C++ kernels. What can be checked here: the kernels' argument roles read from the
source Inductor writes (its naming of pointers), each launch going through memwall's observer on
the same tensors with the module's own kernel restored afterwards, and the bookkeeping that gives
each launch's device time to its kernel's row. The device side (the kernel clock's ranges, CUDA
events) runs in tests/test_cuda.py on a GPU."""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from memwall_plugin.hooks import capture as capture_mod
from memwall_plugin.hooks._torch_private import kernel_roles_of_source, kernels_observed
from memwall_plugin.hooks.compiled import KernelObserver
from memwall_plugin.hooks.signatures import signature

from tests.conftest import region_handle

#: a wrapper module shaped as Inductor writes one for a GPU (names, `async_compile.triton(...)`
#: with the kernel's source, launches by `.run(..., stream=...)`); its "Triton" kernels are
#: stand-ins computing on the CPU what the real ones would
WRAPPER = """
import torch


class _Launcher:
    def __init__(self, fn):
        self.fn, self.launches = fn, 0

    def run(self, *args, stream=None):
        self.launches += 1
        return self.fn(*args)


class async_compile:
    @staticmethod
    def triton(name, source, device_str=None):
        return _Launcher(KERNELS[name])


def _fused(in_ptr0, out_ptr0, xnumel):
    out_ptr0.copy_(torch.relu(in_ptr0 * 2 + 1))


def _inplace(in_out_ptr0, in_ptr0, xnumel):
    in_out_ptr0.add_(in_ptr0)


KERNELS = {"triton_poi_fused_add_mul_relu_0": _fused, "triton_poi_fused_add_1": _inplace}

triton_poi_fused_add_mul_relu_0 = async_compile.triton('triton_poi_fused_add_mul_relu_0', '''
import triton
import triton.language as tl

@triton_heuristics.pointwise(size_hints={'x': 1024}, filename=__file__)
@triton.jit
def triton_poi_fused_add_mul_relu_0(in_ptr0, out_ptr0, xnumel, XBLOCK : tl.constexpr):
    xnumel = 1024
''', device_str='cuda')

triton_poi_fused_add_1 = async_compile.triton('triton_poi_fused_add_1', '''
@triton.jit
def triton_poi_fused_add_1(in_out_ptr0, in_ptr0, xnumel, XBLOCK : tl.constexpr):
    pass
''', device_str='cuda')


def call(args):
    x, y = args
    buf0 = torch.empty_like(x)
    triton_poi_fused_add_mul_relu_0.run(x, buf0, 1024, stream=0)
    triton_poi_fused_add_1.run(buf0, y, 1024, stream=0)
    return (buf0,)
"""


@pytest.fixture
def wrapper(tmp_path: Path) -> Any:
    path = tmp_path / "cgpu_wrapper.py"
    path.write_text(WRAPPER)
    module = types.ModuleType("cgpu_wrapper")
    module.__file__ = str(path)
    exec(compile(WRAPPER, str(path), "exec"), module.__dict__)
    sys.modules["cgpu_wrapper"] = module
    yield module
    del sys.modules["cgpu_wrapper"]


def test_triton_kernels_roles_are_read_from_the_source_inductor_writes():
    roles = kernel_roles_of_source(WRAPPER + """
triton_tem_fused_mm_2 = async_compile.triton('triton_tem_fused_mm_2', '''
@triton.jit
def triton_tem_fused_mm_2(arg_A, arg_B, out_ptr0, ws_ptr, ks0):
    pass
''', device_str='cuda')
cpp_fused_relu_3 = async_compile.cpp_pybinding(['const float*', 'float*'], r'''
extern "C"  void kernel(const float* in_ptr0,
                       float* out_ptr0,
                       const int64_t ks0)
''')
""")
    # by hand from the definitions above: launched with .run, the compile-time constants not passed
    assert roles == {
        "triton_poi_fused_add_mul_relu_0": (("in", "out", ""), True),
        "triton_poi_fused_add_1": (("inout", "in", ""), True),
        "triton_tem_fused_mm_2": (("in", "in", "out", "", ""), True),  # a template's inputs: arg_*
        "cpp_fused_relu_3": (("in", "out", ""), False),  # a C++ kernel: called
    }


def test_each_triton_launch_goes_through_the_observer_on_the_same_tensors(wrapper: Any):
    x, y = torch.randn(1024), torch.randn(1024)
    expected = torch.relu(x * 2 + 1) + y
    own = wrapper.triton_poi_fused_add_mul_relu_0
    observer = KernelObserver()
    with kernels_observed(region_handle(wrapper.call), observer) as observed:
        assert observed
        assert wrapper.triton_poi_fused_add_mul_relu_0.launches == 0  # the kernel's own attributes
        (out,) = wrapper.call([x, y])
    assert torch.equal(out, expected)  # the same launches, on the same tensors
    assert wrapper.triton_poi_fused_add_mul_relu_0 is own and own.launches == 1  # restored
    assert not observer.failed
    names = [name for name, *_ in observer.runs]
    assert names == ["triton_poi_fused_add_mul_relu_0", "triton_poi_fused_add_1"]
    (_, reads0, writes0, _), (_, reads1, writes1, _) = observer.runs
    assert (reads0, writes0) == ((signature(x),), (signature(out),))
    # in place: the buffer read and written, y read; the size argument moves nothing
    assert (reads1, writes1) == ((signature(out), signature(y)), (signature(out),))


class _Clock:
    running = True


class _Capture:
    """The parts of a Capture `_DeviceKernels` uses (its events from the real `event_pair`)."""

    event_pair = capture_mod.Capture.event_pair

    def __init__(self, clock: bool) -> None:
        self.clock = _Clock()
        self.clock.running = clock
        self.pending_kernels: list[Any] = []
        self.pending_events: list[Any] = []
        self.free_events: dict[int, list[Any]] = {}


def _region_run(clock: bool, launches: int,
                capturing: pytest.MonkeyPatch | None = None) -> tuple[_Capture, Any, Any]:
    """A region run through `_DeviceKernels`: its capture, the observer, the region's own range.
    With `capturing`, a CUDA graph captures its launches (Inductor recording a graph partition
    under mode="reduce-overhead"): the region's range or pair is opened before the capture."""
    cap = _Capture(clock=clock)
    observer = capture_mod._DeviceKernels(cap)
    whole = observer.open_region()
    with capturing.context() if capturing is not None else contextlib.nullcontext() as patch:
        if patch is not None:
            patch.setattr(capture_mod, "_capturing", lambda: True)
        for k in range(launches):
            t = torch.ones(4)
            out = observer(f"k{k}", ("in", "out"), lambda a, b: b.copy_(a), (t, torch.empty_like(t)), {})
            if patch is not None:
                assert torch.equal(out, t)  # the launch itself goes ahead unchanged
    observer.close_region(whole)
    return cap, observer, whole


def test_on_the_kernel_clock_each_launch_has_a_range_of_its_own_inside_the_regions(monkeypatch):
    marks: list[Any] = []
    monkeypatch.setattr(capture_mod, "mark", lambda i: marks.append(("open", i)) or i)
    monkeypatch.setattr(capture_mod, "unmark", lambda h: marks.append(("close", h)))
    cap, observer, whole = _region_run(clock=True, launches=2)
    # the region's range holds each launch's own: the clock gives a kernel to the innermost
    assert marks == [("open", 0), ("open", 1), ("close", 1), ("open", 2), ("close", 2), ("close", 0)]
    region, k0, k1 = object(), object(), object()
    observer.settle(whole, region, [k0, k1])
    assert cap.pending_kernels == [region, k0, k1]
    # a region recorded whole (its kernels not matched to its graph): all of it the region's
    cap, observer, whole = _region_run(clock=True, launches=1)
    observer.settle(whole, region, None)
    assert cap.pending_kernels == [region, region]


class _Event:
    def __init__(self, enable_timing: bool = False) -> None:
        self.recorded: list[Any] = []

    def record(self, stream: Any) -> None:
        self.recorded.append(stream)


class _Stream:
    device_index = 0


def test_with_cuda_events_each_launch_has_its_pair_and_the_region_keeps_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(capture_mod, "current_cuda_stream", _Stream)
    cap, observer, whole = _region_run(clock=False, launches=2)
    region, k0, k1 = object(), object(), object()
    observer.settle(whole, region, [k0, k1])
    assert [(e, len(a.recorded), len(b.recorded)) for e, a, b, _ in cap.pending_events] == [(k0, 1, 1), (k1, 1, 1)]
    # the region's own pair goes back unused: between its kernels the GPU ran none of its work
    assert cap.free_events[0] == [whole[0], whole[1]]
    # recorded whole: the region's pair times it, the launches' pairs go back
    cap, observer, whole = _region_run(clock=False, launches=1)
    observer.settle(whole, region, None)
    assert [e for e, *_ in cap.pending_events] == [region] and len(cap.free_events[0]) == 2


def test_launches_a_cuda_graph_captures_are_counted_and_timed_with_their_region(monkeypatch):
    marks: list[Any] = []
    monkeypatch.setattr(capture_mod, "mark", lambda i: marks.append(("open", i)) or i)
    monkeypatch.setattr(capture_mod, "unmark", lambda h: marks.append(("close", h)))
    cap, observer, whole = _region_run(clock=True, launches=2, capturing=monkeypatch)
    assert marks == [("open", 0), ("close", 0)]  # no range of memwall's inside the graph
    assert [name for name, *_ in observer.runs] == ["k0", "k1"]  # both counted, as kernel rows
    region, k0, k1 = object(), object(), object()
    observer.settle(whole, region, [k0, k1])
    assert cap.pending_kernels == [region]  # the replay's kernels ran under the region's range
    # with CUDA events: none is made for a captured launch; the region's pair times the replay
    made: list[Any] = []
    monkeypatch.setattr(torch.cuda, "Event", lambda enable_timing=False: made.append(1) or _Event())
    monkeypatch.setattr(capture_mod, "current_cuda_stream", _Stream)
    cap, observer, whole = _region_run(clock=False, launches=2, capturing=monkeypatch)
    assert len(made) == 2  # the region's own pair only
    observer.settle(whole, region, [k0, k1])
    assert [e for e, *_ in cap.pending_events] == [region]


def test_a_region_whose_graph_partitions_run_as_cuda_graphs_is_told_apart():
    """Graph partitions (Inductor's default): the region is the generated module's `runner.call`,
    and under mode="reduce-overhead" each partition the runner calls is cudagraphify-wrapped."""
    from memwall_plugin.hooks._torch_private import replays_cuda_graph
    from torch._inductor.compile_fx import cudagraphify

    class Runner:  # as Inductor's wrapper code writes it
        def __init__(self, partitions: list[Any]) -> None:
            self.partitions = partitions

        def call(self, args: list[Any]) -> list[Any]:
            return self.partitions[0](args)

    def partition_0(args: list[Any]) -> list[Any]:
        return args

    graphed = region_handle(Runner([cudagraphify(partition_0, device_index=0, stack_traces=[], is_backward=False,
                                                 is_inference=True)]).call)
    plain = region_handle(Runner([partition_0]).call)
    assert replays_cuda_graph(graphed)
    assert not replays_cuda_graph(plain)
