"""Dispatch-level recording: every aten op becomes an aggregated entry (signature -> calls, time).

The hot path (`_CaptureMode.__torch_dispatch__`) times the op, finds its module and phase, and
folds the call into a table keyed by (op, module, phase, argument signature). Only the first
call of a signature builds the full `OpCall` metadata; tensors are never kept.

A `Router` (`Capture.route`) takes some ops off the table and records them its own way:
hooks/collectives.py's recorder takes torch.distributed's collectives.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from memwall_plugin.hooks._torch_private import (
    AOTI_MODEL,
    SUBGRAPH_HOPS,
    UncompiledDispatchMode,
    active_fake_mode,
    call_below_mode,
    call_unrecorded,
    current_autograd_node,
    current_cuda_stream,
    dispatch_keys,
    dispatch_mode_stack,
    fwd_grad_enabled,
    has_backend_kernel,
    has_composite_kernel,
    hop_name,
    in_backward,
    in_backward_seed,
    in_compiled_call,
    is_compiled_function_node,
    is_higher_order_op,
    is_traced_tensor_type,
    keep_keys_past_compiled_calls,
    kernels_observed,
    never_compiled,
    numbers_as_tensors,
    observe_aoti_calls,
    op_schema,
    peek_sequence_nr,
    python_key_on,
    replays_cuda_graph,
    tensors_in,
    unrecorded,
    warm_up_dispatch,
)
from memwall_plugin.hooks.compiled import WRAPPER as _WRAPPER
from memwall_plugin.hooks.compiled import (
    CompiledRegions,
    KernelObserver,
    region_facts,
    region_output_modules,
    split_by_kernel,
)
from memwall_plugin.hooks.kernel_clock import KernelClock, mark, unmark
from memwall_plugin.hooks.memory import MemoryTracker, op_name
from memwall_plugin.hooks.modules import ModuleTracker
from memwall_plugin.hooks.residency import Residency
from memwall_plugin.hooks.score_facts import reader_for
from memwall_plugin.hooks.signatures import (
    PLAIN,
    build_call,
    device_of,
    fold_kwarg,
    fold_values,
    is_tensor_key,
    meta_of_key,
    opaque,
    signature,
    value_blind,
)

from memwall_plugin.records import (
    BACKWARD,
    DECODE,
    FACTS_KEY,
    FORWARD,
    GRAD_SCALER,
    OPTIMIZER,
    OTHER,
    RECOMPUTE,
    SETUP,
    OpCall,
    RegionFacts,
    float_arg,
    list_shapes_text,
)

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter  # no dispatch of its own: a plain tensor to the mode (compiled code)
_ONES_LIKE = torch.ops.aten.ones_like.default
#: torch hands a mode this op outside the dispatcher too: a tensor's shallow copy (hooks/_torch_private.py)
_DETACH = torch.ops.aten.detach.default
_perf_counter_ns = time.perf_counter_ns


class ProfilerConflictError(RuntimeError):
    """Kept for code that catches it: memwall no longer raises it. One profile records at a time
    (`memwall.profile`'s one rule, memwall_plugin/profile.py): a profile opened inside another
    takes over and hands back, so two captures never record at once."""


class CaptureEntry:
    """All calls of one signature: how many, how long, and what the call looked like.

    The hot path keeps only the signature it already computed (shapes, strides and dtypes of
    the arguments) and the first call's output signature; `call` builds the OpCall from them
    the first time it is asked for (when the report is made), not while the model runs."""

    __slots__ = ("func", "arg_key", "kw_key", "out_key", "device", "module", "phase", "calls", "time_ns", "_call",
                 "bucket", "reuse", "analysed", "kernels")

    def __init__(self, func: Any, arg_key: tuple[Any, ...], kw_key: tuple[Any, ...] | None, out_key: Any,
                 device: str, module: str, phase: str, calls: int = 0, time_ns: int = 0) -> None:
        self.func, self.arg_key, self.kw_key, self.out_key, self.device = func, arg_key, kw_key, out_key, device
        self.module, self.phase, self.calls, self.time_ns = module, phase, calls, time_ns
        self._call: OpCall | None = None
        #: past the signature cap: the counts of every call folded into this shape bucket
        self.bucket: Bucket | None = None
        #: bytes its calls touched by reuse bucket (hooks/residency.py): where their data lived
        self.reuse: dict[int, int] = {}
        #: (the analysis cache, its generation, the analysis) of this signature, once analysed
        self.analysed: tuple[Any, int, Any] | None = None
        #: the device kernels its calls ran, by name in the order first seen (hooks/kernel_clock.py)
        self.kernels: dict[str, None] | None = None

    @property
    def call(self) -> OpCall:
        if self._call is None:
            self._call = build_call(self.func, self.arg_key, dict(self.kw_key or ()), self.out_key, self.device)
        return self._call

    def adopt_call(self, call: OpCall) -> None:
        """Share the OpCall already built for an entry with the same signature."""
        if self._call is None:
            self._call = call

    def copy(self) -> CaptureEntry:
        twin = CaptureEntry(self.func, self.arg_key, self.kw_key, self.out_key, self.device, self.module,
                            self.phase, self.calls, self.time_ns)
        twin._call = self._call
        twin.bucket = self.bucket.copy() if self.bucket is not None else None
        twin.reuse = dict(self.reuse)
        twin.kernels = None if self.kernels is None else dict(self.kernels)
        return twin

    def merge(self, other: CaptureEntry) -> None:
        self.calls += other.calls
        self.time_ns += other.time_ns
        reuse = self.reuse
        for bucket, nbytes in other.reuse.items():
            reuse[bucket] = reuse.get(bucket, 0) + nbytes
        if self.bucket is not None and other.bucket is not None:
            self.bucket.merge(other.bucket)
        if other.kernels:
            if self.kernels is None:
                self.kernels = {}
            self.kernels.update(other.kernels)


def merge_into(into: dict[Any, Any], table: dict[Any, Any]) -> None:
    """Add `table`'s entries (anything with `.merge`) into `into`, key by key."""
    for key, entry in table.items():
        mine = into.get(key)
        if mine is None:
            into[key] = entry
        else:
            mine.merge(entry)


def rename_phase(table: dict[Any, Any], old: str, new: str) -> dict[Any, Any]:
    """`table` (capture or collective entries, keyed with their phase third) with the entries of
    phase `old` moved to phase `new`: their keys too, merged where one is there already."""
    kept = {key: entry for key, entry in table.items() if entry.phase != old}
    moved = {}
    for key, entry in table.items():
        if entry.phase == old:
            entry.phase = new
            moved[(*key[:2], new, *key[3:])] = entry
    merge_into(kept, moved)
    return kept


class Bucket:
    """Calls of one op whose shapes fell into the same power-of-two bucket once the run had
    more distinct signatures than its cap. Each call is counted exactly when it is folded in;
    only the shapes shown are approximate ("<=N")."""

    __slots__ = ("op", "overload", "dtype", "shapes", "flops", "bytes_read", "bytes_written", "elements_read",
                 "elements_written")

    def __init__(self, op: str, overload: str, dtype: str, shapes: str) -> None:
        self.op, self.overload, self.dtype, self.shapes = op, overload, dtype, shapes
        self.flops: int | None = 0
        self.bytes_read = self.bytes_written = self.elements_read = self.elements_written = 0

    def add(self, analysis: Any) -> None:
        """Fold one call in (`analysis`: its per-call counts, see memwall_plugin.analysis)."""
        flops = analysis.counted.flops
        self.flops = None if flops is None or self.flops is None else self.flops + flops
        self.bytes_read += analysis.bytes_read
        self.bytes_written += analysis.bytes_written
        self.elements_read += analysis.elements_read
        self.elements_written += analysis.elements_written

    def merge(self, other: Bucket) -> None:
        self.flops = None if self.flops is None or other.flops is None else self.flops + other.flops
        self.bytes_read += other.bytes_read
        self.bytes_written += other.bytes_written
        self.elements_read += other.elements_read
        self.elements_written += other.elements_written

    def copy(self) -> Bucket:
        twin = Bucket(self.op, self.overload, self.dtype, self.shapes)
        twin.merge(self)
        twin.flops = self.flops
        return twin


_BUCKETED = "<=bucket"  # marks a bucketed tensor signature: (_BUCKETED, shape upper bounds, dtype)


def _bucket_int(n: int) -> int:
    """n rounded away from zero to a power of two; -2..2 (dims, flags) stay as they are."""
    if -2 <= n <= 2:
        return n
    bound = 1 << (abs(n) - 1).bit_length()
    return bound if n > 0 else -bound


def bucket_key(value: Any) -> Any:
    """A signature with every size rounded up to a power of two (strides dropped)."""
    if is_tensor_key(value):
        shape, _, dtype = value
        return (_BUCKETED, tuple(_bucket_int(d) for d in shape), dtype)
    if type(value) is tuple:
        return tuple(bucket_key(v) for v in value)
    if type(value) is int:
        return _bucket_int(value)
    return value


_GROWN = "<=grown"  # marks a decode signature whose growing sizes are bucketed: (_GROWN, dims, dtype)


def fold_growing(first: Any, value: Any) -> Any:
    """`value` (a signature) with each size that differs from the same place in `first` rounded
    up to a power of two, as ("<=", bound); sizes that stay the same stay exact (strides dropped).
    None when the two differ in anything but sizes (a rank, a dtype, a flag)."""
    if is_tensor_key(value):
        if not is_tensor_key(first) or first[2] != value[2] or len(first[0]) != len(value[0]):
            return None
        return (_GROWN, tuple(d if d == f else ("<=", _bucket_int(d)) for d, f in zip(value[0], first[0])), value[2])
    if type(value) is tuple:
        if type(first) is not tuple or len(first) != len(value):
            return None
        parts = []
        for f, v in zip(first, value):
            part = fold_growing(f, v)
            if part is None:
                return None
            parts.append(part)
        return tuple(parts)
    if type(value) is int and type(first) is int:
        return value if value == first else ("<=", _bucket_int(value))
    return value if value == first else None


def skeleton(value: Any) -> Any:
    """A signature with its sizes erased (a tensor's rank and dtype, an int's type): signatures
    with one skeleton differ only in sizes, the ones a decode grows."""
    if is_tensor_key(value):
        return (len(value[0]), value[2])
    if type(value) is tuple:
        return tuple(skeleton(v) for v in value)
    if type(value) is int:
        return int
    return value


def _bucket_text(value: Any) -> str | None:
    if type(value) is tuple and len(value) == 3 and value[0] == _BUCKETED:
        return "[" + ", ".join(str(d) if d <= 2 else f"<={d}" for d in value[1]) + "]"
    if type(value) is tuple and len(value) == 3 and value[0] == _GROWN:
        return "[" + ", ".join(str(d) if type(d) is int else f"<={d[1]}" for d in value[1]) + "]"
    return None


def bucket_shapes(arg_key: tuple[Any, ...]) -> str:
    """The input shapes of a bucket, as Row.shapes writes them: "[1, <=16, <=1024] x [..]"."""
    parts = []
    for value in arg_key:
        text = _bucket_text(value)
        if text is not None:
            parts.append(text)
        elif type(value) is tuple and value and _bucket_text(value[0]) is not None:
            parts.append(list_shapes_text([_bucket_text(v) or "?" for v in value]))
    return " x ".join(parts)


def _first_tensor_is_cuda(args: tuple[Any, ...]) -> bool:
    for a in args:
        if isinstance(a, _Tensor):
            return a.is_cuda
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], _Tensor):
            return a[0].is_cuda
    return False


def _makes_on_cuda(kwargs: dict[str, Any]) -> bool:
    """An op making its tensor on a GPU from none there (a factory op: arange, zeros, randn; a copy
    to the GPU: `_to_copy(device="cuda")`): its kernel or copy is timed on the device like any
    other op's (a host clock would time its launch)."""
    device = kwargs.get("device")
    return device is not None and (getattr(device, "type", device) == "cuda" or str(device).startswith("cuda:"))


def _is_function(value: Any) -> bool:
    """A subgraph argument of a higher-order operator: a function or GraphModule, not data."""
    return callable(value) and not isinstance(value, (_Tensor, type))


def _builds_graph(args: tuple[Any, ...]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for a in args:
        if isinstance(a, _Tensor) and a.requires_grad:
            return True
    return False


def _in_function_forward() -> bool:
    """Inside a custom autograd.Function's forward: torch runs it with grad mode and forward-mode
    AD both off, which torch.no_grad alone does not do; inference mode does, and says so."""
    return not torch.is_grad_enabled() and not fwd_grad_enabled() and not torch.is_inference_mode_enabled()


#: id(overload) -> (composite, factory, the overload), read once. Keyed by id because an
#: OpOverload hashes in Python; holding the overload keeps its id from being reused.
_FACTS: dict[int, tuple[bool, bool, bool, Any]] = {}


def _facts(func: Any) -> tuple[bool, bool, bool, Any]:
    """Whether an overload has a CompositeImplicitAutograd decomposition, whether it takes no
    tensor at all (a factory: torch.randn, empty_strided), and whether it is a higher-order
    operator (flex_attention, cond, while_loop, scan: a program of other ops, with no schema)."""
    facts = _FACTS.get(id(func))
    if facts is None:
        hop = is_higher_order_op(func)
        schema = None if hop else op_schema(func)
        factory = schema is not None and not any("Tensor" in str(a.type) for a in schema.arguments)
        facts = _FACTS[id(func)] = (not hop and has_composite_kernel(func), factory, hop, func)
    return facts


#: (id(overload), device type) -> whether memwall may run the overload's decomposition in its
#: place; holds the overload so its id is not reused
_DECOMPOSES: dict[tuple[int, str], tuple[bool, Any]] = {}


def decomposes(func: Any, args: tuple[Any, ...]) -> bool:
    """Whether a CompositeImplicitAutograd op that reached the mode whole may be run as its
    decomposition (so its inner ops are recorded): only when torch itself would run that
    decomposition, i.e. the op has no kernel of its own for these tensors. An op with a kernel
    (silu_backward on CPU and CUDA) runs the kernel, bit for bit what the bare run computes,
    and is counted by its own formula. Nested, sparse and other layouts keep their own kernels."""
    first = None
    for a in args:
        if isinstance(a, _Tensor):
            first = a
            break
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], _Tensor):
            first = a[0]
            break
    if first is None or first.is_nested or first.layout is not torch.strided:
        return False
    device = first.device.type
    known = _DECOMPOSES.get((id(func), device))
    if known is None:
        known = _DECOMPOSES[(id(func), device)] = (has_backend_kernel(func, device) is False, func)
    return known[0]


#: id(overload) -> (its facts reader, the overload) or None: see hooks/score_facts.py
_READERS: dict[int, Any] = {}
_UNREAD = object()


def _reader_of(func: Any) -> Any:
    reader = reader_for(func)
    found = _READERS[id(func)] = None if reader is None else (reader, func)
    return found


_BLINDS: dict[int, Any] = {}  # id(func) -> (its value_blind, func kept alive), or None


def _blind_of(func: Any) -> Any:
    blind = value_blind(func)
    found = _BLINDS[id(func)] = None if blind is None else (blind, func)
    return found


#: runs a routed op in the capture's place and returns its result: handler(func, args, kwargs)
Handler = Callable[[Any, tuple[Any, ...], dict[str, Any]], Any]


class Router(Protocol):
    """Ops a capture hands to someone else instead of folding them into its table.

    `routes` is read once each time recording starts. While `in_flight` is non-zero (routed ops
    under way: collectives not yet complete), the time each other op takes is added to `busy_ns`:
    the work this thread overlaps with them. A capture without a router pays nothing for either."""

    @property
    def routes(self) -> Mapping[Any, Handler]:
        """op overload -> the handler that runs and records it."""
        ...

    @property
    def in_flight(self) -> int:
        """How many routed ops are under way (started, not yet complete)."""
        ...

    #: ns that other ops took while `in_flight` was non-zero; the capture adds to it
    busy_ns: int

    # optional: `in_region(calls, module, phase)`, told the ops of each compiled region that ran
    # (some may be ops the router takes, traced into it); `retired` (a container, truthy while
    # the router holds what it should let go of on this thread) and `let_go_done()`, called
    # between two ops while `retired` is truthy


def _capturing() -> bool:
    """Whether the current CUDA stream is capturing a CUDA graph (torch.cuda.graph,
    make_graphed_callables, Inductor's reduce-overhead): work launched now does not run now, but
    at each replay. Never before CUDA is initialised (torch's check would raise on a torch built
    without CUDA, or without a driver)."""
    return torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing()


def _run(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an op the mode was handed as calling it would, without a second torch.profiler event
    for it (hooks/_torch_private.py): torch.profiler counts each op as often as without memwall."""
    __tracebackhide__ = True  # noqa: F841 - see _CaptureMode.__torch_dispatch__
    return call_unrecorded(func, args, kwargs) if func is _DETACH else call_below_mode(func, args, kwargs)


class _CaptureMode(UncompiledDispatchMode):
    #: higher-order operators (flex_attention, torch.cond, while_loop, scan, ...) come to
    #: __torch_dispatch__ too, instead of torch raising NotImplementedError in the user's code
    supports_higher_order_operators = True

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # torch.compile'd code compiles with this mode off and runs compiled with it on
        # (hooks/compiled.py): the program the user compiled, not an eager stand-in
        return True

    def __init__(self, capture: Capture, cuda: bool) -> None:
        super().__init__()
        self._capture = capture
        self._cuda = cuda

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        # an error of the user's op passes through here: IPython and pytest leave this frame
        # out of the traceback they show (the error is the user's, not memwall's)
        __tracebackhide__ = True  # noqa: F841
        kwargs = kwargs or {}
        capture = self._capture
        if capture._mode is not self or capture.failed is not None:
            # memwall broke earlier in this run, or this mode was left on torch's stack when
            # recording stopped inside a compiled call (Capture.stop): stay out of the way
            return func(*args, **kwargs) if is_higher_order_op(func) else _run(func, args, kwargs)
        if types:
            if any(is_traced_tensor_type(t) for t in types):
                # fake tensors only carry metadata (FakeTensorMode, DTensor's sharding
                # propagation), functional ones a trace's functionalization (the mode below
                # this one handles them): no work, nothing recorded
                return func(*args, **kwargs)
            if any(t is not _Tensor and t is not _Parameter for t in types):  # plain Tensor here at times
                # DTensor, nested jagged tensors, wrapper subclasses: the subclass runs its own
                # dispatch after this NotImplemented, with this mode active, so the ops it runs on
                # its inner tensors are counted at the shapes that really run (a DTensor's local
                # shard, a jagged tensor's packed values)
                # its inner tensors require no grad: the ops it runs on them are this op's, on the
                # autograd graph or not (a loss on a DTensor outside any module: forward)
                capture.subclass_node = peek_sequence_nr() if _builds_graph(args) else -1
                return NotImplemented
        facts = _FACTS.get(id(func))  # read inline: this runs for every op
        composite, factory, hop, _ = facts if facts is not None else _facts(func)
        if hop:
            # torch hands a higher-order operator to the mode with the mode popped: calling it
            # runs it exactly as it runs without memwall
            if hop_name(func) in SUBGRAPH_HOPS:
                # its eager kernel calls the functions it was given (cond's branches, a loop
                # body): they run with this mode entered, so their ops are recorded as they
                # execute, at the shapes and in the module and phase where they run
                return func(*[self._entered(a) if _is_function(a) else a for a in args], **kwargs)
            if hop_name(func) == "inductor_compiled_code":
                return self._region(func, args, kwargs)
            # any other (flex_attention, and ones torch adds later): one row, timed, counted
            # where a formula names it, listed uncounted otherwise (never a silent zero)
            if self._cuda and _first_tensor_is_cuda(args):
                return self._dispatch_cuda(func, args, kwargs, hop=True)
            start = _perf_counter_ns()
            out = func(*args, **kwargs)  # not a dispatcher call: no profiler event of its own
            end = _perf_counter_ns()
            try:
                capture.record(func, args, kwargs, out, end - start)
            except Exception as err:
                capture.fail(err, func)
            capture.own_ns += _perf_counter_ns() - end
            return out
        if active_fake_mode() is not None:
            # a FakeTensorMode below this one makes fake tensors of real ones (torch.randn, a
            # constant lifted by a trace: AOTAutograd's lift_fresh): no work, nothing recorded
            return func(*args, **kwargs)
        if composite and decomposes(func, args):
            # a composite op reached the mode whole (inference mode; inside a subclass): run its
            # decomposition under the mode, as torch would, so its ops are counted as they are
            # with grad enabled
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if self._cuda and (_first_tensor_is_cuda(args) or _makes_on_cuda(kwargs)):
            try:
                return self._dispatch_cuda(func, args, kwargs)
            except RuntimeError:
                numbers = numbers_as_tensors(func, args, kwargs)  # see below
                if numbers is None:
                    raise
                return self._dispatch_cuda(func, *numbers)
        start = _perf_counter_ns()
        # the user's op, run where the dispatcher was taking it (_run, inlined: this runs for every
        # op): its errors are the user's, unchanged
        try:
            out = call_unrecorded(func, args, kwargs) if func is _DETACH else call_below_mode(func, args, kwargs)
        except RuntimeError:
            # a TorchScript graph's scalar constant, handed to this mode as a Python number where
            # the op takes a tensor: called with the tensor the interpreter held, as without memwall
            numbers = numbers_as_tensors(func, args, kwargs)
            if numbers is None:
                raise
            args, kwargs = numbers
            start = _perf_counter_ns()
            out = call_below_mode(func, args, kwargs)
        end = _perf_counter_ns()
        try:
            capture.record(func, args, kwargs, out, end - start)
        except Exception as err:  # memwall's own error: the op's result is returned regardless
            capture.fail(err, func)
        capture.own_ns += _perf_counter_ns() - end  # memwall's own time, left out of the host's
        return out

    def _region(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A region torch.compile compiled (hooks/compiled.py): read what its row needs before it
        runs (it frees its inputs as it goes; memwall keeps none of them), run it, record it."""
        capture = self._capture
        tracker = capture.tracker
        begin = _perf_counter_ns()
        try:
            inputs = args[1] if len(args) > 1 and isinstance(args[1], list) else []
            key = (opaque(args[0]), tuple([signature(t) for t in inputs]))
            with unrecorded():  # sizing its graph runs ops (on fake tensors): memwall's own work
                region: tuple[Any, ...] = (key, region_facts(args, kwargs), device_of(tuple(inputs), None))
            # a compiled optimizer.step(): Dynamo traced its step hooks to nothing, so its region
            # marks the optimizer's phase, its state and (memwall run) the step's end itself
            stepping = region[1] is not None and region[1].optimizer and tracker.compiled_step_began(inputs)
        except Exception as err:
            capture.fail(err, func)
            return func(*args, **kwargs)
        del inputs
        if not stepping:
            if tracker.step_pending:  # the end of a compiled step before it (memwall run)
                begin += tracker.work_begins()
                if not capture.recording:  # the step it began records nothing (a schedule's idle step)
                    return func(*args, **kwargs)
            return self._run_region(func, args, kwargs, region, begin)
        try:
            return self._run_region(func, args, kwargs, region, begin)
        finally:
            tracker.compiled_step_ended()

    def _run_region(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], region: tuple[Any, ...],
                    begin: int) -> Any:
        capture = self._capture
        key = region[0]
        if self._cuda and region[2] == "cuda":
            return self._region_on_gpu(func, args, kwargs, region, begin)
        observer = KernelObserver()
        with kernels_observed(args[0], observer) as observed:
            start = _perf_counter_ns()
            out = func(*args, **kwargs)
            end = _perf_counter_ns()
            elapsed = end - start - observer.own_ns
        capture.own_ns += start - begin + observer.own_ns  # sizing the region, noting its kernels
        try:
            kernels = None
            facts = region[1]
            split = (split_by_kernel(facts.key[0], facts, observer.runs)
                     if observed and observer.runs and not observer.failed and facts is not None else None)
            if split is not None:
                # kernel by kernel (hooks/compiled.py): each kernel a row; the region's row keeps
                # what no kernel was matched to and the wrapper's time between kernels
                split, rest = split
                kernels = [(module, arg_key, out_key, kernel_facts, run[3])
                           for (module, arg_key, out_key, kernel_facts), run in zip(split, observer.runs, strict=True)]
                elapsed -= sum(run[3] for run in observer.runs)
                # the rest: no buffers of its own (the region's inputs and outputs are the kernels')
                region = ((key[0], ()), rest or _WRAPPER, region[2], ())
            entry = capture.record(func, args, kwargs, out, elapsed, region, kernels)
            capture.collectives_in_region(facts, entry)
            capture.region_made(facts, out, entry)
        except Exception as err:
            capture.fail(err, func)
        capture.own_ns += _perf_counter_ns() - end
        return out

    def _region_on_gpu(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], region: tuple[Any, ...],
                       begin: int) -> Any:
        """A compiled region on a GPU, kernel by kernel as on the CPU (`_region`), each kernel timed
        on the device: by the kernels the clock records under its own range, else by a pair of
        CUDA events around its launch. Without its kernels (no generated module found, memwall's
        own failure), one row for the region, timed as a whole."""
        capture = self._capture
        if _capturing():  # into a user's CUDA graph: it runs at the replays (`_dispatch_cuda`)
            capture.captured_into_graph(func)
            return func(*args, **kwargs)
        if replays_cuda_graph(args[0]):
            # mode="reduce-overhead": the region's kernels run inside its CUDA graph, none is
            # launched from Python; one row, timed as a whole (the report says so)
            capture.graph_regions += 1
        try:
            observer = _DeviceKernels(capture)
            whole = observer.open_region()
        except Exception as err:
            capture.fail(err, func)
            return func(*args, **kwargs)
        try:
            with kernels_observed(args[0], observer) as observed:
                start = _perf_counter_ns()
                out = func(*args, **kwargs)
                end = _perf_counter_ns()
        finally:
            observer.close_region(whole)
        capture.own_ns += start - begin + observer.own_ns
        try:
            facts = region[1]
            split = (split_by_kernel(facts.key[0], facts, observer.runs)
                     if observed and observer.runs and not observer.failed and facts is not None else None)
            kernels = None
            if split is not None:
                split, rest = split
                kernels = [(module, arg_key, out_key, kernel_facts, 0)
                           for module, arg_key, out_key, kernel_facts in split]
                key = region[0]
                region = ((key[0], ()), rest or _WRAPPER, region[2], ())
            made: list[CaptureEntry] = []
            entry = capture.record(func, args, kwargs, out, 0, region, kernels, made)
            observer.settle(whole, entry, made if kernels is not None else None)
            capture.collectives_in_region(facts, entry)
            capture.region_made(facts, out, entry)
        except Exception as err:
            capture.fail(err, func)
        capture.own_ns += _perf_counter_ns() - end
        return out

    def _entered(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run_recorded(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return run_recorded

    def _dispatch_cuda(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], region: Any = None,
                       hop: bool = False) -> Any:
        __tracebackhide__ = True  # noqa: F841 - see __torch_dispatch__
        capture = self._capture
        if _capturing():
            # captured into a CUDA graph of the user's (torch.cuda.graph): it runs at each replay,
            # which memwall does not see, not now. Nothing is counted or timed for it, and no
            # timing event of memwall's is recorded into the user's graph (a replay would record it
            # again once it times another op); the report says how many calls were captured
            capture.captured_into_graph(func)
            return func(*args, **kwargs) if hop else _run(func, args, kwargs)
        if capture.clock.running:
            # device time from the kernels the op ran (hooks/kernel_clock.py), read at the step's end
            index = len(capture.pending_kernels)
            handle = mark(index)
            try:
                out = func(*args, **kwargs) if hop else _run(func, args, kwargs)
            finally:
                unmark(handle)
            try:
                capture.pending_kernels.append(capture.record(func, args, kwargs, out, 0, region))
            except Exception as err:
                capture.fail(err, func)
            return out
        # device time from events, resolved at the step's end: no synchronisation per op
        try:
            start_event, end_event, stream = capture.event_pair()
            start_event.record(stream)
        except Exception as err:
            capture.fail(err, func)
            return func(*args, **kwargs) if hop else _run(func, args, kwargs)
        out = func(*args, **kwargs) if hop else _run(func, args, kwargs)
        try:
            end_event.record(stream)
            entry = capture.record(func, args, kwargs, out, 0, region)
            capture.pending_events.append((entry, start_event, end_event, stream.device_index))
        except Exception as err:
            capture.fail(err, func)
        return out


class _DeviceKernels(KernelObserver):
    """A compiled region's kernel launches on a GPU (hooks/compiled.py's KernelObserver, on the
    device's clock): each launch under a range of its own in the kernel clock's record, or between
    a pair of CUDA events where the clock is off, its buffers noted as on the CPU. The region as
    a whole gets a range (or a pair) too: what no observed launch ran (an aten call the wrapper
    makes) is the region's own row's; `settle` gives each its entry once the region is recorded."""

    def __init__(self, capture: Capture) -> None:
        super().__init__()
        self._capture = capture
        self._clock = capture.clock.running
        #: per launch: its index in the clock's record, or its (start, end, stream) events; None
        #: for a launch a CUDA graph captured (it ran at the replay, in the region's own time)
        self.slots: list[Any] = []

    def open_region(self) -> Any:
        """Open a range in the clock's record, (its index, the range), or start a pair of events,
        (start, end, stream): the region's own, or one launch's."""
        capture = self._capture
        if self._clock:
            index = len(capture.pending_kernels)
            capture.pending_kernels.append(None)
            return index, mark(index)
        start, end, stream = capture.event_pair()
        start.record(stream)
        return start, end, stream

    def close_region(self, whole: Any) -> None:
        if self._clock:
            unmark(whole[1])
        else:
            whole[1].record(whole[2])

    def __call__(self, name: str, roles: tuple[str, ...] | None, kernel: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        begin = _perf_counter_ns()
        if _capturing():
            # Inductor records a CUDA graph of this part of the region (a graph partition under
            # mode="reduce-overhead"): the kernel runs at the graph's replay, inside the region's
            # range or pair, so it is counted but not timed apart; no range or event of memwall's
            # goes into the graph
            out = kernel(*args, **kwargs)
            try:
                self.slots.append(None)
                self._note(name, roles, args, kwargs, out, 0)
            except Exception:  # memwall's own error: the kernel's result stands, the region stays whole
                self.failed = True
            self.own_ns += _perf_counter_ns() - begin
            return out
        try:
            slot = self.open_region()  # the launch's own range (or pair), inside the region's
        except Exception:  # memwall's own error: the launch goes ahead, the region stays whole
            self.failed = True
            return kernel(*args, **kwargs)
        launch = _perf_counter_ns()
        try:
            out = kernel(*args, **kwargs)
        finally:
            launched = _perf_counter_ns()
            if self._clock:
                unmark(slot[1])
        try:
            if not self._clock:
                slot[1].record(slot[2])
            self.slots.append(slot[0] if self._clock else slot)
            self._note(name, roles, args, kwargs, out, 0)
        except Exception:  # memwall's own error: the kernel's result stands, the region stays whole
            self.failed = True
        self.own_ns += launch - begin + _perf_counter_ns() - launched
        return out

    def settle(self, whole: Any, entry: CaptureEntry, made: list[CaptureEntry] | None) -> None:
        """Give the device time to the entries: each launch's to its kernel's entry (`made`, in
        launch order), or all of it to the region's `entry` where it is one row (`made` None)."""
        capture = self._capture
        if self._clock:
            capture.pending_kernels[whole[0]] = entry  # what ran outside the observed launches
            for k, index in enumerate(self.slots):
                if index is not None:
                    capture.pending_kernels[index] = made[k] if made is not None else entry
            return
        start, end, stream = whole
        free = capture.free_events.setdefault(stream.device_index, [])
        if made is None or None in self.slots:  # None: a launch a CUDA graph captured
            # one pair for the region (and a graph's replay of its captured launches, run inside
            # it): the launches' own pairs go back unread
            capture.pending_events.append((entry, start, end, stream.device_index))
            for slot in self.slots:
                if slot is not None:
                    free.extend(slot[:2])
            return
        # the kernels' times are their rows'; the region's row keeps none of the device's time
        free.extend((start, end))
        for (k_start, k_end, k_stream), k_entry in zip(self.slots, made, strict=True):
            capture.pending_events.append((k_entry, k_start, k_end, k_stream.device_index))


class _RoutedCaptureMode(_CaptureMode):
    """The capture's mode with a router: its ops go to their handlers, and while any is in flight
    every other op's time is added to the router's busy time. Only a capture with a router enters
    this mode, so the plain one has no lookup to make per op."""

    def __init__(self, capture: Capture, cuda: bool, router: Router) -> None:
        super().__init__(capture, cuda)
        self._router = router
        self._routes = router.routes
        self._retired = getattr(router, "retired", ())
        self._let_go = getattr(router, "let_go_done", None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        handler = self._routes.get(func)
        router = self._router
        if handler is not None and self._capture.failed is None and self._capture._mode is self:
            return handler(func, args, kwargs or {})
        if self._retired:
            self._let_go()
        if router.in_flight:
            start = _perf_counter_ns()
            out = super().__torch_dispatch__(func, types, args, kwargs)
            router.busy_ns += _perf_counter_ns() - start
            return out
        return super().__torch_dispatch__(func, types, args, kwargs)


#: what a forked child's copy of a capture says instead of recording (`_in_forked_child`)
FORKED_CHILD = "a forked child process: the parent records the run"
_LIVE: weakref.WeakSet[Capture] = weakref.WeakSet()  # captures made in this process


def _in_forked_child() -> None:
    """A forked child (a DataLoader worker, a fork-started multiprocessing pool) inherits the
    forking thread's dispatch mode and hooks. Its work is not what the profile records and its
    copy of the records is never read, so memwall stays out of its way there, silently, as after
    an internal error: ops go straight to torch, module and memory hooks do nothing. Before, a
    DataLoader worker recorded every op of its __getitem__ and ran it ~5x slower."""
    for capture in list(_LIVE):
        capture.failed = FORKED_CHILD
        capture.tracker.disabled = True
        if capture.memory is not None and capture.memory.failed is None:
            capture.memory.failed = FORKED_CHILD
        mode = capture._mode
        # the child's only thread is the one that forked: where that thread was recording, the
        # mode leaves its stack too (on top only: a mode of the user's above it stays as it is)
        stack = dispatch_mode_stack()
        if mode is not None and stack and stack[-1] is mode:
            capture._mode = None
            with contextlib.suppress(Exception):
                mode.__exit__(None, None, None)


os.register_at_fork(after_in_child=_in_forked_child)


class Capture:
    """Records aten ops into `table` while started. Its owner (memwall.profile's recorder)
    makes sure one capture records at a time.

    `analyse` counts a call from its entry (memwall_plugin.analysis: `AnalysisCache.analyse`):
    past the signature cap each call is counted as it is folded into its shape bucket. It is
    passed in because the counting side imports capture, not the other way round."""


    #: distinct signatures kept apart per run by default; past it, new shapes share buckets
    MAX_SIGNATURES = 10_000

    def __init__(self, model: torch.nn.Module | None = None, *, analyse: Callable[[CaptureEntry], Any],
                 max_signatures: int | None = None, memory: bool = False) -> None:
        self.tracker = ModuleTracker(model)
        #: how recently each tensor an op touches was touched before: the cache level it is in
        self.residency = Residency()
        #: live storages by category (hooks/memory.py), when the profile measures memory
        self.memory: MemoryTracker | None = MemoryTracker(self.tracker) if memory else None
        if self.memory is not None:
            self.tracker.memory = self.memory
            for root in self.tracker.roots():  # the model given: its parameters from the start
                self.memory.add_root(root, self.tracker.names)  # under the tracker's paths (a wrapper's step left out)
        self.table: dict[Any, CaptureEntry] = {}
        self.max_signatures = self.MAX_SIGNATURES if max_signatures is None else max_signatures
        #: every exact signature kept this run (across steps): what the cap counts
        self.known: set[Any] = set()
        self.bucketed_calls = 0
        self._analyse = analyse
        self._bucket_memo: dict[Any, Any] = {}
        #: the first arguments' signature of each (op, module, phase, skeleton, keywords) in decoding
        self._first_decode: dict[tuple[Any, ...], Any] = {}
        self._grown_memo: dict[Any, Any] = {}  # exact key -> its fold (`_grown`)
        self._mode: _CaptureMode | None = None
        #: a mode recording stopped with, left on torch's stack, passing every op through: it was
        #: stopped inside a torch.compile'd call, or while torch had it handle an op (`stop`)
        self._lingering: _CaptureMode | None = None
        #: the mode was entered inside a torch.compile'd call, which may have turned it off as it
        #: returned (`start`)
        self._resync = False
        self._said_passed_by = False
        self._router: Router | None = None
        self._compiled = CompiledRegions()  # regions compiled while open are seen whole
        self.pending_events: list[tuple[CaptureEntry, Any, Any, int]] = []
        #: GPU ops timed by their kernels (hooks/kernel_clock.py): the entry of each op index
        self.clock = KernelClock(on_handover=self._clock_handed_over)
        self.pending_kernels: list[CaptureEntry | None] = []
        #: nanoseconds the GPU ran anything in the steps taken so far, per step (`take`)
        self.device_busy_ns: int | None = None
        #: events whose times were read, by device index: reused rather than created per op
        self.free_events: dict[int, list[Any]] = {}
        #: CUDA graphs: calls captured into a graph of the user's while recording, by op (they
        #: run at its replays, which memwall does not see: neither counted nor timed), and calls
        #: of compiled regions that run as a CUDA graph (mode="reduce-overhead": one row each)
        self.graph_captured: dict[str, int] = {}
        self.graph_regions = 0
        #: why recording stopped for good (an internal error), or None while healthy
        self.failed: str | None = None
        #: nanoseconds of memwall's own work inside the recorded steps that it measures: recording
        #: each op after it ran, sizing and observing compiled regions (the module hooks' is the
        #: tracker's `own_ns`); what the recorder leaves out of the host's time
        self.own_ns = 0
        #: another profile records in this one's place (a profile opened inside it): start()
        #: does nothing until it is resumed
        self.suspended = False
        #: the next autograd sequence number when a tensor subclass's op on the autograd graph was
        #: handed to its own dispatch: while no node has been made since, the ops it runs on its
        #: inner tensors are that op's
        self.subclass_node = -1
        self.tracker.on_error = self.fail
        warm_up_dispatch()
        _LIVE.add(self)

    def fail(self, err: BaseException, where: Any = None) -> None:
        """An internal error: stop recording for the rest of the run, say so once. The user's
        work goes on untouched; what was recorded before stays in the table."""
        if self.failed is not None:
            return
        place = f" while recording {where}" if where is not None else ""
        self.failed = f"{type(err).__name__}: {err}{place}"
        self.tracker.disabled = True
        warnings.warn(
            f"memwall: internal error{place} ({type(err).__name__}: {err}). memwall stopped recording "
            "for the rest of this run; your run continues unaffected and the report keeps what was "
            "recorded before, marked incomplete. Please report this error to the memwall maintainers.",
            RuntimeWarning,
            stacklevel=2,
        )

    @property
    def recording(self) -> bool:
        return self._mode is not None

    def open(self) -> None:
        """Begin the capture's lifetime (optimizer tracking, compiled regions); start() / stop()
        toggle recording."""
        self.tracker.open()
        self._compiled.enter()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.tracker.close()
            self._compiled.exit()
            if self.memory is not None:
                self.memory.close()

    def start(self) -> None:
        if self._mode is not None or self.failed is not None or self.suspended:
            return
        self.settle_mode()
        self.tracker.install()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        router = self._router
        mode = _CaptureMode if router is None else _RoutedCaptureMode
        # the mode runs inside torch's own frames, which Dynamo's frame hook may be watching (a
        # module compiled in place): its frames run as written, never compiled
        never_compiled(mode.__torch_dispatch__)
        if cuda:
            self.clock.start()
        lingering = self._lingering
        stack = dispatch_mode_stack() if lingering is not None else []
        if (stack and stack[-1] is lingering and type(lingering) is mode and lingering._cuda == cuda
                and getattr(lingering, "_router", None) is router):
            # recording stopped and starts again inside one compiled call (a step boundary
            # there): the mode still on torch's stack records again, nothing to enter
            self._mode, self._lingering = lingering, None
        else:
            self._mode = _CaptureMode(self, cuda) if router is None else _RoutedCaptureMode(self, cuda, router)
            compiled = in_compiled_call()
            keys = dispatch_keys()[0] if compiled else None
            self._mode.__enter__()
            # entered inside a torch.compile'd call (prof.step() at a graph break): the call puts
            # back the keys it began with as it returns, which would turn the mode off. The keys
            # it puts back get the mode's; else the mode is turned on again right after the call
            if compiled and not keep_keys_past_compiled_calls(keys):
                self._resync = True
                self.tracker.settle_mode = self.settle_mode
        observe_aoti_calls(self._aoti_call)
        if self.memory is not None:
            self.memory.start()

    def _aoti_call(self, call: Callable[..., Any], model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """An AOTInductor model's call (`torch._inductor.aoti_load_package`): its kernels run inside
        the package, where no dispatcher sees them, so it is one row of its own (`memwall.aoti_model`,
        no formula: listed uncounted with its time and the tensors it reads and writes), in the
        module that called it, else as a forward of its own. It runs with the mode out of the way
        (an aten op it falls back to is inside its row's time, not a row too)."""
        if self.failed is not None or self._mode is None:
            return call(model, *args, **kwargs)
        inputs = tensors_in((args, kwargs))
        cuda = self._mode._cuda and any(t.is_cuda for t in inputs)
        events = None
        if cuda:
            try:
                events = self.event_pair()
                events[0].record(events[2])
            except Exception as err:
                self.fail(err, AOTI_MODEL)
                return call(model, *args, **kwargs)
        with self.unseen():
            start = _perf_counter_ns()
            out = call(model, *args, **kwargs)  # the user's call: its errors are the user's
            end = _perf_counter_ns()
        try:
            if events is not None:
                events[1].record(events[2])
            outputs = tensors_in(out)
            tracker = self.tracker
            top = not tracker.stack
            if top:  # called outside any module: the model's forward is this call
                tracker.stack.append("")
            if tracker.setup_open:
                tracker.end_setup()
            try:
                entry = self.record(AOTI_MODEL, (inputs,), {}, outputs, 0 if events is not None else end - start)
            finally:
                if top:
                    tracker.stack.pop()
            if events is not None:
                self.pending_events.append((entry, events[0], events[1], events[2].device_index))
        except Exception as err:  # memwall's own error: the call's result is returned regardless
            self.fail(err, AOTI_MODEL)
        self.own_ns += _perf_counter_ns() - end
        return out

    @contextlib.contextmanager
    def unseen(self) -> Iterator[None]:
        """The block runs with the dispatch mode out of the way (module hooks, tables and the
        step stay as they are): for another profiler's step marker. A mode torch is handed a
        record_function's enter or exit in wraps it in a PythonDispatchMode range of its own,
        which then crosses the marked boundary."""
        mode = self._mode
        stack = dispatch_mode_stack() if mode is not None else []
        if not stack or stack[-1] is not mode:  # not recording, or a mode of the user's is on top
            yield
            return
        mode.__exit__(None, None, None)
        try:
            yield
        finally:
            mode.__enter__()

    def region_made(self, facts: RegionFacts | None, out: Any, entry: CaptureEntry) -> None:
        """Each output of a compiled region, with the module its graph computed it in, for the
        memory section: the compiled function saves its activations after the region, under the
        compiled module's path (`MemoryTracker.made_in`)."""
        memory = self.memory
        if memory is None or not isinstance(out, (list, tuple)):
            return
        paths = region_output_modules(facts)
        if paths:
            qualify = self.tracker.qualify
            memory.made_in(out, [qualify(p, entry.module) if p else "" for p in paths])

    def collectives_in_region(self, facts: RegionFacts | None, entry: CaptureEntry) -> None:
        """Collectives traced into a compiled region that ran (a compiled tensor-parallel
        model's): the run's communication, listed with the eager ones (their time is the
        region's), in the region's module and phase."""
        in_region = getattr(self._router, "in_region", None)  # a router may take none of them
        if facts is not None and facts.ops and in_region is not None:
            in_region(facts.ops, entry.module, entry.phase)

    def route(self, router: Router | None) -> None:
        """Hand the ops `router.routes` names to `router` from now on (None: to the table again);
        a capture that is recording re-enters its mode to take the change up."""
        self._router = router
        if self.recording:
            self.stop()
            self.start()

    def stop(self) -> None:
        """Stop recording; the table is kept. Safe to call when not started."""
        if self._resync and self._mode is not None and not python_key_on():
            self._passed_by()
        self.settle_mode()
        mode, self._mode = self._mode, None
        if mode is not None:
            observe_aoti_calls(None)
        if self.memory is not None:
            self.memory.stop()
        if self.failed != FORKED_CHILD:  # a forked child cannot use its parent's CUDA context
            self.resolve_kernels()
        try:
            if mode is not None:
                stack = dispatch_mode_stack()
                on_stack = any(m is mode for m in stack)
                if on_stack and stack[-1] is not mode:
                    raise RuntimeError(
                        "a dispatch mode entered inside memwall.profile is still active; "
                        "exit it before the profile ends or calls prof.step()"
                    )
                linger = not on_stack
                if on_stack:
                    compiled = in_compiled_call()
                    keys = dispatch_keys()[0] if compiled else None
                    mode.__exit__(None, None, None)
                    if compiled and not keep_keys_past_compiled_calls(keys):
                        mode.__enter__()
                        linger = True
                if linger:
                    # a step boundary inside a torch.compile'd call (an optimizer step hook in a
                    # frame Dynamo ran eagerly, prof.step() after a graph break) that will put
                    # the Python key back on as it returns, with torch 2.13 (from 2.14 the keys
                    # it puts back lose the mode's): with no mode left every op after it would
                    # fail. Or the mode is off torch's stack while torch has it handle an op (a
                    # compiled region that ends a step, a SIGTERM ending the profile there), and
                    # torch puts it back after. Either way it stays, passing ops through, until
                    # memwall is next called outside the call (`settle_mode`)
                    self._lingering = mode
                    self.tracker.settle_mode = self.settle_mode
        finally:
            self.tracker.remove()

    def _passed_by(self) -> None:
        """The mode entered inside a torch.compile'd call was turned off as the call returned,
        and memwall ran outside compiled code nowhere since (a whole training step compiled, with
        prof.step() inside it): the ops since then passed it by. Said once."""
        if self._said_passed_by:
            return
        self._said_passed_by = True
        warnings.warn(
            "memwall: recording began inside a torch.compile'd call (prof.step() inside a compiled "
            f"function), and torch {torch.__version__} turned memwall's recording off as the call "
            "returned: the ops that ran after it until this step's end were not recorded (the next "
            "compiled call's forward and optimizer step among them). Call prof.step() after the "
            "compiled function returns, or use torch 2.14 or later, where memwall records on.",
            RuntimeWarning,
            stacklevel=5,  # prof.step()'s caller
        )

    def settle_mode(self) -> None:
        """Once memwall runs outside any torch.compile'd call again (a module's or an optimizer
        step's hook, a step boundary, the profile's end): take off the mode recording stopped
        with inside one, and turn back on the mode entered inside one that the call's end
        turned off (the Python key off, so every op passed it by)."""
        lingering, resync = self._lingering, self._resync
        if (lingering is None and not resync) or in_compiled_call():
            return
        stack = dispatch_mode_stack()
        if lingering is not None and stack and stack[-1] is lingering:
            self._lingering = None
            lingering.__exit__(None, None, None)
        mode = self._mode
        if resync:
            self._resync = False
            if mode is not None and stack and stack[-1] is mode and not python_key_on():
                mode.__exit__(None, None, None)  # off and on again: torch sets the keys anew
                mode.__enter__()
        if self._lingering is None:  # one under a mode of the user's stays until that is gone
            self.tracker.settle_mode = None

    def settle(self) -> None:
        """Leave out the op whose recording a SIGTERM cut short (terminate.py ends the profile
        wherever the signal lands): an entry made for it but not counted yet, its tensors noted
        only in part."""
        if any(not e.calls for e in self.table.values()):
            self.table = {k: e for k, e in self.table.items() if e.calls}
        self.residency.settle()

    def take(self) -> dict[Any, CaptureEntry]:
        """Hand over the table recorded so far and start a new one (GPU times resolved, reuse
        distances worked out)."""
        self.resolve_events()
        self.resolve_kernels()
        if self._mode is not None and self._mode._cuda:  # still recording: the next step's kernels
            self.clock.start()
        self.residency.flush()
        table, self.table = self.table, {}
        self._bucket_memo.clear()  # growing shapes rarely come back in a later step
        return table

    def _clock_handed_over(self) -> None:
        """Another torch.profiler starts: the ops so far get their kernels (the rest of the step,
        and the steps while it records, are timed with CUDA events)."""
        self.resolve_kernels()
        self.device_busy_ns = None  # the GPU's record of this step is partial: no timeline for it

    def captured_into_graph(self, func: Any) -> None:
        # as its row would name it ("aten.mm", "higher_order.inductor_compiled_code")
        name = f"higher_order.{hop_name(func)}" if is_higher_order_op(func) else op_name(func)
        self.graph_captured[name] = self.graph_captured.get(name, 0) + 1

    def event_pair(self) -> tuple[Any, Any, Any]:
        """Two timing events for the current stream (reused once read, else new), and the stream."""
        stream = current_cuda_stream()
        free = self.free_events.get(stream.device_index)
        start = free.pop() if free else torch.cuda.Event(enable_timing=True)
        end = free.pop() if free else torch.cuda.Event(enable_timing=True)
        return start, end, stream

    def resolve_kernels(self) -> None:
        """Stop the kernel clock and add each op's kernel time and names to its entry; the GPU's
        busy time joins `device_busy_ns`."""
        if not self.clock.running:
            if self.clock.lost:  # handed over from another thread: these ops' record is gone
                self.pending_kernels = []
            return
        pending, self.pending_kernels = self.pending_kernels, []
        ops, busy = self.clock.stop()
        self.device_busy_ns = (self.device_busy_ns or 0) + busy
        for index, entry in enumerate(pending):
            ran = ops.get(index)
            if ran is None or entry is None:  # no kernel (a view, a size query): no device time
                continue
            entry.time_ns += ran.ns
            if entry.kernels is None:
                entry.kernels = {}
            for name in ran.names:
                entry.kernels.setdefault(name)

    def resolve_events(self) -> None:
        """Wait once for the GPU and add each op's event-measured time to its entry."""
        if not self.pending_events:
            return
        pending, self.pending_events = self.pending_events, []
        pending[-1][2].synchronize()
        free = self.free_events
        for entry, start_event, end_event, device in pending:
            if not end_event.query():  # recorded on another stream that is still busy
                end_event.synchronize()
            entry.time_ns += int(start_event.elapsed_time(end_event) * 1e6)  # ms -> ns
            free.setdefault(device, []).extend((start_event, end_event))

    def end_step(self) -> None:
        self.tracker.end_step()

    def record(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, elapsed_ns: int,
        region: tuple[Any, ...] | None = None, kernels: list[tuple[str, Any, Any, Any, int]] | None = None,
        made: list[CaptureEntry] | None = None,
    ) -> CaptureEntry:
        """Fold one call into the table. `region`: (argument signature, facts, device type[,
        output signature]) of a compiled region, read before it ran (it frees its inputs as it
        goes). `kernels`: the region's kernel calls, each (module below the region's, argument
        signature, output signature, facts, ns), rows of their own in the region's phase; their
        entries, in order, are appended to `made`."""
        tracker = self.tracker
        node = current_autograd_node()
        if node is not None:
            self.subclass_node = -1  # a backward pass: the forward's subclass op is done with
            if tracker.setup_open:  # a backward pass: work has run (a functional model's too)
                tracker.end_setup()
            if self.memory is not None and self.memory.unarmed:  # before any gradient accumulates
                self.memory.arm()
            if tracker.stack:
                # a module's forward re-run inside backward: activation checkpointing recomputing it
                phase, module = RECOMPUTE, tracker.stack[-1]
            elif is_compiled_function_node(node):  # an aot_eager backward graph, op by op
                phase, module = BACKWARD, tracker.in_graph_backward(node)
            else:
                phase, module = BACKWARD, tracker.path_for_node(node)
                if torch.is_grad_enabled():
                    # create_graph=True (a gradient penalty, a Hessian-vector product): the nodes
                    # this op made are differentiated by a later backward, which names them by it
                    tracker.mark_backward_nodes(module)
        elif tracker.stack:
            # a module's forward, also inside optimizer.step(closure) (Lightning, LBFGS): phases
            # follow what runs, not the Python frame that encloses it
            phase = tracker.user_label or tracker.generation_label or FORWARD
            # autograd made a node for an op that builds the graph, before the op reached the mode
            if tracker.flat:
                module = tracker.in_flat_graph(_builds_graph(args))
            elif tracker.compiled:
                # in a compiled module: its graph, run op by op by Dynamo's eager backends?
                module = tracker.in_graph_forward(_builds_graph(args)) or tracker.stack[-1]
            else:
                module = tracker.stack[-1]
        elif tracker.in_optimizer and (not torch.is_grad_enabled() or tracker.compiled_step):
            # the optimizer's own update, which runs without grad; the closure it calls runs with
            # grad on (a loss, a framework's bookkeeping of it) and falls through to what it is.
            # A compiled step's region runs whatever the grad mode outside it
            phase, module = OPTIMIZER, ""
            if tracker.setup_open:
                tracker.end_setup()
        elif (graph_module := tracker.in_graph_forward(builds := _builds_graph(args))) is not None:
            # a compiled model's op, run by Dynamo's `eager`/`aot_eager` graph (no module hook fires)
            phase, module = tracker.user_label or tracker.generation_label or FORWARD, graph_module
            if tracker.setup_open:
                tracker.end_setup()
            if self.memory is not None and self.memory.unarmed and (builds or _in_function_forward()):
                self.memory.arm()
        elif builds or _in_function_forward() or self.subclass_node == peek_sequence_nr():
            # outside any module but on the autograd graph: a loss, a functional model, the
            # forward of a custom autograd.Function (which torch runs with grad mode off);
            # `loss.backward()` makes its seed gradient (ones_like) here too, before any Node runs
            phase, module = tracker.user_label or FORWARD, ""
            if self.memory is not None and self.memory.unarmed:  # a graph that a backward may run
                self.memory.arm()
            if func is _ONES_LIKE and in_backward_seed():
                phase = BACKWARD
        elif in_backward():
            # a backward pass's hooks, where no Node runs: a module's full backward hook (Opacus's
            # per-sample gradients), a tensor's gradient hook, the pass's final callbacks
            phase, module = tracker.user_label or BACKWARD, ""
            if tracker.setup_open:
                tracker.end_setup()
        else:
            # before the first work (a module's forward: the tracker's hook ends set-up there, or a
            # backward pass, an optimizer step): set-up. Ops outside modules that touch the autograd
            # graph (a parameter detached while a wrapper is built) and the user's labels do not end it
            phase = tracker.user_label or (GRAD_SCALER if tracker.in_scaler else SETUP if tracker.setup_open else OTHER)
            module = ""
        if kernels:
            for below, k_args, k_out, k_facts, ns in kernels:
                where = tracker.qualify(below, module)  # memoised by the tracker
                k_kw = ((FACTS_KEY, k_facts),)
                k_key = (id(func), where, phase, k_args, k_kw)
                k_entry = self.table.get(k_key)
                if k_entry is None:
                    k_entry = self.table[k_key] = CaptureEntry(
                        func, k_args, k_kw, k_out, region[2] if region else "cpu", where, phase)
                k_entry.calls += 1
                k_entry.time_ns += ns
                if made is not None:
                    made.append(k_entry)
        if region is not None:  # a compiled region: its signature and facts were read before it ran
            arg_key, device = region[0], region[2]
            kw_key: tuple[tuple[str, Any], ...] | None = ((FACTS_KEY, region[1]),) if region[1] else None
        else:
            device = None
            # signature() unrolled for the top-level arguments: this runs for every op
            parts: list[Any] = []
            for a in args:
                if type(a) is _Tensor or isinstance(a, _Tensor):
                    try:
                        st = a.stride()
                        # a sparse COO tensor's strides are zeros (torch 2.15; others raise), and
                        # an MKLDNN tensor's past its first dim: signature() keys both
                        parts.append((a.shape, st, a.dtype) if 0 not in st or not (a.is_sparse or a.is_mkldnn)
                                     else signature(a))
                    except (RuntimeError, NotImplementedError):
                        parts.append(signature(a))
                elif type(a) is float:
                    parts.append(float_arg(a))
                elif type(a) is list or type(a) is tuple:
                    parts.append(signature(a))
                elif type(a) in PLAIN:
                    parts.append(a)
                else:
                    parts.append(signature(a))
            # integers that are values, not sizes (`x * step`, `dataset[i]`): folded, or each value
            # would be a signature of its own
            blind = _BLINDS.get(id(func), _UNREAD)
            if blind is _UNREAD:
                blind = _blind_of(func)
            values = None if blind is None else blind[0]
            if values is not None:
                fold_values(values, parts)
            arg_key = tuple(parts)
            kw_key = tuple([(k, fold_kwarg(values, k, v)) for k, v in kwargs.items()]) if kwargs else None
            reader = _READERS.get(id(func), _UNREAD)
            if reader is _UNREAD:
                reader = _reader_of(func)
            if reader is not None:  # a count that depends on argument values (flex_attention's mask)
                with unrecorded():  # reading a BlockMask runs ops of memwall's own
                    facts = reader[0](args, kwargs)
                if facts is not None:
                    kw_key = (*(kw_key or ()), (FACTS_KEY, facts))
        # id(func): an OpOverload hashes in Python; the entry keeps func itself alive
        key = (id(func), module, phase, arg_key, kw_key)
        entry = self.table.get(key)
        if entry is None:
            known = self.known
            # a decode's growing lengths, in the model and in generate()'s loop around it (phase
            # other, once decoding began): one row per power-of-two bucket, not per length
            grown = (self._grown(key, func, module, phase, arg_key, kw_key)
                     if phase == DECODE or (phase == OTHER and self._first_decode) else None)
            if grown is not None:
                entry = self._bucketed(func, module, phase, arg_key, kw_key, args, out, grown)
            elif len(known) < self.max_signatures or key in known:
                known.add(key)
                try:  # signature(out), inline for the common plain tensor
                    out_key = (region[3] if region is not None and len(region) > 3 else
                               (out.shape, out.stride(), out.dtype)
                               if type(out) is _Tensor and not out.is_nested and not out.is_sparse
                               and not out.is_mkldnn
                               else signature(out))
                except (RuntimeError, NotImplementedError):  # layouts without strides
                    out_key = signature(out)
                entry = CaptureEntry(func, arg_key, kw_key, out_key, device or device_of(args, out), module, phase)
                self.table[key] = entry
            else:
                entry = self._bucketed(func, module, phase, arg_key, kw_key, args, out)
        elif entry.bucket is not None:
            entry = self._bucketed(func, module, phase, arg_key, kw_key, args, out)
        entry.calls += 1
        entry.time_ns += elapsed_ns
        self.residency.observe(args, out, entry.reuse)
        if self.memory is not None:
            self.memory.after_op(args, out, phase, entry, module)
        return entry

    def _grown(self, key: Any, func: Any, module: str, phase: str, arg_key: tuple[Any, ...], kw_key: Any) -> Any:
        """In decoding, a new signature of an op that ran here before with other sizes (the KV
        length grows by one each token): its arguments with the sizes that grew bucketed
        (`fold_growing`); None for the first signature of each op, place and skeleton (its
        arguments' ranks, dtypes and values other than sizes), kept exact. Keyword arguments
        grow too (a padded batch's attention mask, given to attention as `attn_mask`). Returns
        (arguments, keyword arguments) folded. A folded signature never enters the table under
        its exact key, so its fold is memoised by that key (layers repeat it within a token)."""
        memo = self._grown_memo
        if key in memo:
            return memo[key]
        site = (id(func), module, phase, skeleton(arg_key), skeleton(kw_key))
        first = self._first_decode.get(site)
        if first is None:
            self._first_decode[site] = (arg_key, kw_key)
            return None
        if len(memo) >= 1024:  # bounded like the bucket memo: a long decode keeps growing
            memo.clear()
        args = fold_growing(first[0], arg_key)
        kw = fold_growing(first[1], kw_key) if kw_key is not None else None
        grown = memo[key] = None if args is None or (kw is None and kw_key is not None) else (args, kw)
        return grown

    def _bucketed(self, func: Any, module: str, phase: str, arg_key: tuple[Any, ...], kw_key: Any,
                  args: tuple[Any, ...], out: Any, grown: Any = None) -> CaptureEntry:
        """Count this call exactly now and fold it into its shape bucket: past the cap (every size
        bucketed), or a decode's growing sizes (`grown`: those sizes bucketed, by design)."""
        if grown is None and self.bucketed_calls == 0:
            warnings.warn(
                f"memwall: this run has more than {self.max_signatures:,} distinct op signatures (growing "
                "shapes?); new ones are grouped into power-of-two shape buckets to keep memory bounded. "
                "FLOPs and bytes stay exact; their shapes show as '<=N'. "
                "Pass max_signatures= to memwall.profile to keep more apart.",
                RuntimeWarning, stacklevel=4,
            )
        if grown is None:
            self.bucketed_calls += 1
        exact = CaptureEntry(func, arg_key, kw_key, signature(out), device_of(args, out), module, phase)
        memo_key = (func, arg_key, kw_key, exact.out_key, exact.device)
        analysis = self._bucket_memo.get(memo_key)  # layers repeat shapes within a step
        if analysis is None:
            if len(self._bucket_memo) >= 1024:  # one very long step (a whole generate() call)
                self._bucket_memo.clear()
            analysis = self._bucket_memo[memo_key] = self._analyse(exact)
        bucket_args, bucket_kw = (bucket_key(arg_key), bucket_key(kw_key)) if grown is None else grown
        key = (func, module, phase, bucket_args, bucket_kw)
        entry = self.table.get(key)
        if entry is None:
            entry = CaptureEntry(func, bucket_args, bucket_kw, None, exact.device, module, phase)
            entry.bucket = Bucket(analysis.call.op, analysis.call.overload, analysis.dtype, bucket_shapes(bucket_args))
            self.table[key] = entry
        entry.bucket.add(analysis)  # type: ignore[union-attr]
        return entry


__all__ = ["Bucket", "Capture", "CaptureEntry", "Handler", "ProfilerConflictError", "Router", "build_call",
           "merge_into", "meta_of_key", "rename_phase", "signature"]
