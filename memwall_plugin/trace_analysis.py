"""`memwall analyze`: a torch.profiler trace recorded with `record_shapes=True`, counted by memwall.

Each op the trace recorded is counted as `memwall.profile` counts it: only the ops its dispatch
mode would see (below autograd: a composite op such as aten::linear is its parts, and the ops an
op's kernel calls inside it are not rows of their own), with the same registry and analysis
(memwall_plugin/analysis.py). A trace keeps input shapes only; outputs come from running each
distinct call once on meta tensors (hooks/replay.py). Times are the trace's: the kernels an op
launched where the trace has device activity, else the op's own CPU span (its inner ops are part
of it, as they are of a captured op's time); where the trace has device activity, an op that
launched nothing and moves no data (a view) gets none: its span is the host's. Phases come from
the trace's ranges: autograd's `evaluate_function` (backward), `Optimizer.step#...` (optimizer),
`ProfilerStep#N` (steps); generate()'s calls of its model from the tokens each embeds (prefill, decode).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memwall_plugin.analysis import analysis_cache, rows_from_entries
from memwall_plugin.ceilings import ceilings_of, memory_roof_of, place_rows, resolve_links
from memwall_plugin.comm import COLLECTIVE_OPS, collective_rows
from memwall_plugin.devices import DeviceSpec, detect_device, lookup_device, resolve_device
from memwall_plugin.diff import COMPILED_REGION
from memwall_plugin.hooks.capture import CaptureEntry
from memwall_plugin.hooks.kernel_clock import busy_time
from memwall_plugin.hooks.replay import (
    ReplayError,
    TracedInputs,
    decomposes_above_mode,
    find_op,
    has_unstrided_tensor,
    pick_overload,
    replay,
    trace_dtype,
)
from memwall_plugin.hooks.signatures import contiguous_meta, schema_of
from memwall_plugin.kineto import Event, Trace, TraceError, load_trace, trace_files
from memwall_plugin.records import (
    BACKWARD,
    DECODE,
    FORWARD,
    OPTIMIZER,
    OTHER,
    OUTSIDE_OPS,
    PREFILL,
    TIMELINE_KEY,
    UNCACHED_KEY,
    OpCall,
    uncached_runs,
)
from memwall_plugin.registry import Registry
from memwall_plugin.report import Report
from memwall_plugin.rows import Row, merge_rows

__all__ = ["OUTSIDE_OPS", "TraceError", "analyze_trace", "trace_files"]

_BACKWARD_RANGE = "autograd::engine::evaluate_function:"
_OPTIMIZER_RANGE = "Optimizer.step#"
_STEP_RANGE = "ProfilerStep#"
#: torch.utils.data.DataLoader's range around fetching a batch (its record_function)
_DATALOADER_RANGE = "enumerate(DataLoader)#"
_MODULE_RANGE = "nn.Module: "
#: transformers' generate(), as a trace recorded with_stack=True names its Python frame
_GENERATE_FRAME = re.compile(r"generation/utils\.py\(\d+\): generate$")
#: Lightning's PyTorchProfiler (record_module_names, its default) names each module's forward
#: "[pl][module]torch.nn.modules.linear.Linear: net.0": the model's own path
_LIGHTNING_MODULE_RANGE = "[pl][module]"
#: Inductor's range around each call of a compiled graph: its fused kernels run inside it with no
#: op event of their own (a CPU trace), or launched outside any op (a GPU trace's Triton kernels)
_COMPILED_GRAPH_RANGE = "## Call CompiledFxGraph"
#: what a compiled region's row says in place of shapes, and why it is uncounted
_REGION_SHAPES = "fused kernels the trace does not open: memwall.profile counts them"
_REGION_WHY = "a compiled region's fused kernels (the trace records no op inside them)"
#: device work launched outside any op memwall counts (OUTSIDE_OPS: a CUDA graph's replay, an
#: extension's own launches): one uncounted row per module and phase
_OUTSIDE_SHAPES = "launched outside any op memwall counts"
_OUTSIDE_WHY = "device work launched outside any op (a CUDA graph replay, an extension's own kernels)"
_DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
_LAUNCH_CATS = ("cuda_runtime", "cuda_driver", "hip_runtime", "hip_driver", "runtime")
#: profiler markers dispatch as ops but compute nothing (memwall.analysis ignores them too)
_SKIPPED_NAMESPACES = ("profiler::",)
#: autograd-only ops: their autograd kernel does all the work and never passes them on to the
#: dispatch mode, so capture does not see them
_AUTOGRAD_ONLY = frozenset({"aten::detach_", "aten::requires_grad_", "aten::retain_grad", "aten::retains_grad",
                            "aten::set_data", "aten::data", "aten::_version", "aten::output_nr", "aten::is_leaf",
                            "aten::_backward"})
#: what torch.tensor(data) runs before it hands the new tensor to the dispatch mode (aten::lift_fresh):
#: with the mode's dispatch key excluded, so capture does not see them
_TENSOR_FROM_DATA = ("aten::empty", "aten::to", "aten::_to_copy", "aten::copy_", "aten::empty_strided")
#: from this many ops on, the analysis shows a progress bar on a terminal
PROGRESS_FROM = 5000
#: `Report.extra` key: what the trace held and what could not be counted
TRACE_KEY = "trace"


@dataclass(slots=True)
class _Op:
    """An op event memwall's capture would have recorded."""

    event: Event
    name: str  # as capture would see it (_AS_CAPTURED)
    packet: Any
    inputs: TracedInputs | None
    func: Any  # the overload its inputs fit; None when unknown
    time_ns: int = 0
    builds_graph: bool = False
    kernels: list[str] = field(default_factory=list)  # the device kernels it launched, by name


@dataclass(slots=True)
class _Walk:
    """What a walk over one trace found."""

    ops: list[_Op] = field(default_factory=list)
    by_event: dict[int, _Op] = field(default_factory=dict)
    modules: bool = False  # the trace has nn.Module ranges (with_stack=True)
    #: calls of compiled graphs (Inductor's ranges): their time beside the ops inside them
    regions: list[_Op] = field(default_factory=list)
    region_by_event: dict[int, _Op] = field(default_factory=dict)
    #: launches of device work outside any op and any compiled region, each an `_Op` of its own
    #: (its launch's event; its time the work's)
    outside: list[_Op] = field(default_factory=list)


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _inputs(event: Event) -> TracedInputs | None:
    args = event.args
    types, dims = args.get("Input type"), args.get("Input Dims")
    if not isinstance(types, list) or not isinstance(dims, list) or len(types) != len(dims):
        return None
    strides = args.get("Input Strides")
    concrete = args.get("Concrete Inputs")
    n = len(types)
    return TracedInputs(
        tuple(str(t) for t in types), _frozen(dims),
        _frozen(strides) if isinstance(strides, list) and len(strides) == n else (None,) * n,
        tuple(str(c) for c in concrete) if isinstance(concrete, list) and len(concrete) == n else ("",) * n)


class _Overloads:
    """Op names -> packets, and events -> the overload their inputs fit, memoised."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._packets: dict[str, Any] = {}
        self._picked: dict[tuple[str, TracedInputs], Any] = {}
        self._all_decompose: dict[str, bool] = {}

    def packet(self, name: str) -> Any:
        if name not in self._packets:
            self._packets[name] = None if name.startswith(_SKIPPED_NAMESPACES) else find_op(name)
        return self._packets[name]

    def overload(self, name: str, packet: Any, inputs: TracedInputs | None) -> Any:
        if inputs is None:
            return None
        key = (name, inputs)
        if key not in self._picked:
            self._picked[key] = pick_overload(packet, inputs)
        return self._picked[key]

    def decomposes(self, name: str, packet: Any, func: Any) -> bool:
        """Whether capture would see this call's parts rather than the call (composite ops)."""
        if func is not None:
            return decomposes_above_mode(func, self.device)
        if name not in self._all_decompose:  # no shapes: as its default overload, else as all of them
            names = packet.overloads()
            overloads = [getattr(packet, o) for o in (["default"] if "default" in names else names)]
            self._all_decompose[name] = bool(overloads) and all(
                decomposes_above_mode(f, self.device) for f in overloads)
        return self._all_decompose[name]


def _as_captured(name: str, inputs: TracedInputs | None) -> tuple[str, TracedInputs | None]:
    """The op capture sees in place of a traced one: reshape takes view, not _reshape_alias, when a
    dispatch mode is active (both count 0 FLOPs and 0 bytes; the rows then match by name)."""
    if name == "aten::_reshape_alias":
        if inputs is not None:
            inputs = TracedInputs(inputs.types[:2], inputs.dims[:2], inputs.strides[:2], inputs.concrete[:2])
        return "aten::view", inputs
    return name, inputs


def _made_from_data(siblings: list[Event]) -> set[int]:
    """The events of torch.tensor(data) before its aten::lift_fresh: back to its aten::empty."""
    unseen: set[int] = set()
    for i, e in enumerate(siblings):
        if e.name == "aten::lift_fresh":
            run = []
            for before in reversed(siblings[:i]):
                if before.name not in _TENSOR_FROM_DATA:
                    break
                run.append(before)
                if before.name == "aten::empty":
                    unseen.update(id(b) for b in run)
                    break
    return unseen


_CASTS = frozenset({"aten::to", "aten::_to_copy"})
#: DDP's reducer's ranges ("torch.distributed.ddp.reducer::copy_bucket_to_grad")
_DDP_REDUCER = "ddp.reducer::"


def _autocast_wrapper(e: Event) -> bool:
    """Whether an op event is autocast's wrapper around the op: inside it the op is called again
    with its inputs cast first, which is what capture sees, beneath autocast. (An op whose kernel
    calls the op again, arange its out variant, casting nothing, is one op.)"""
    names = {c.name for c in e.children if c.cat == "cpu_op"}
    return e.name in names and not names.isdisjoint(_CASTS)


def _walk(trace: Trace, overloads: _Overloads) -> _Walk:
    """The ops capture would see: outermost op events, through composite ops to their parts."""
    found = _Walk()
    pending: list[Event] = list(reversed(trace.roots))
    unseen = _made_from_data(trace.roots)
    while pending:
        e = pending.pop()
        if id(e) in unseen or e.name in _AUTOGRAD_ONLY:
            continue
        if (e.cat == "python_function" and e.name.startswith(_MODULE_RANGE)) or \
                e.name.startswith(_LIGHTNING_MODULE_RANGE):
            found.modules = True
        if e.name.startswith(_COMPILED_GRAPH_RANGE):
            region = _Op(e, COMPILED_REGION, None, None, None, 0)
            found.regions.append(region)
            found.region_by_event[id(e)] = region
        if e.cat == "cpu_op" and not _autocast_wrapper(e):
            name, inputs = _as_captured(e.name, _inputs(e))
            packet = overloads.packet(name)
            if packet is not None:
                func = overloads.overload(name, packet, inputs)
                if not overloads.decomposes(name, packet, func):
                    op = _Op(e, name, packet, inputs, func, round(e.dur_us * 1000))
                    found.ops.append(op)
                    found.by_event[id(e)] = op
                    continue  # what its kernel calls inside it is part of it
        if e.children:
            unseen.update(_made_from_data(e.children))
            pending.extend(reversed(e.children))
    return found


def _innermost_at(roots: list[Event], ts: float) -> Event | None:
    """The innermost event of a thread (its roots, in start order) that `ts` falls inside."""
    found, level = None, roots
    while level:
        i = bisect.bisect_right([c.ts_us for c in level], ts) - 1
        if i < 0 or level[i].end_us < ts:
            break
        found = level[i]
        level = found.children
    return found


#: gloo's range around a collective's work on its own thread ("gloo:all_reduce"): the collective's
#: time on a CPU trace, where the c10d op's own span is only its enqueueing
_GLOO_RANGE = "gloo:"


@dataclass(slots=True)
class _TracedCollective:
    """One collective signature of a trace, as memwall_plugin/comm.py's rows read a live one's."""

    call: OpCall
    module: str
    phase: str
    group_size: int
    calls: int = 0
    timed_calls: int = 0
    time_ns: int = 0
    overlap_ns: int = 0


def _shapes_in(dims: Any) -> list[tuple[int, ...]]:
    """The tensor shapes a recorded argument holds: a tensor's dims, a list's (or a list of
    lists') in order."""
    if isinstance(dims, tuple) and all(isinstance(d, int) for d in dims):
        return [dims]
    if isinstance(dims, tuple):
        return [shape for item in dims for shape in _shapes_in(item)]
    return []


def _comm_dtype(op: _Op, work: Event | None) -> torch.dtype | None:
    """The message's dtype where the trace says it: NCCL's record_param_comms inside the op, the
    tensor argument's recorded type, or that of gloo's range for it (`work`)."""
    named = [c.args.get("dtype") for c in op.event.children if c.name == "record_param_comms"]
    named += list(op.inputs.types) if op.inputs is not None else []
    if work is not None and isinstance(work.args.get("Input type"), list):
        named += work.args["Input type"]
    return next((d for d in map(trace_dtype, named) if d is not None), None)


def _overlap_ns(work: Event, busy: list[tuple[float, float]], starts: list[float]) -> int:
    """How long the main thread ran ops while `work` (a collective on gloo's thread) was in flight."""
    total = 0.0
    i = max(0, bisect.bisect_right(starts, work.ts_us) - 1)
    while i < len(busy) and busy[i][0] < work.end_us:
        total += max(0.0, min(busy[i][1], work.end_us) - max(busy[i][0], work.ts_us))
        i += 1
    return round(total * 1000)


def _collectives(trace: Trace, walk: _Walk, phases: _Phases, world: int,
                 assumed: dict[str, int]) -> tuple[list[_TracedCollective], list[_Op]]:
    """The trace's torch.distributed collectives (c10d's ops), each signature's calls, message and
    time: on a GPU its kernels' (NCCL's), on a CPU gloo's range for it on its own thread, the next
    to start after the op (which only enqueues it). Returns them and the collective ops it could
    not read (no recorded message)."""
    # gloo runs a group's work in order on its thread, each under a range that starts after its
    # c10d op enqueued it (a reduce-scatter under "gloo:all_reduce", gloo's way to do it)
    gloo = sorted((e for e in trace.events if e.name.startswith(_GLOO_RANGE)), key=lambda e: e.ts_us)
    next_range = 0
    found: dict[Any, _TracedCollective] = {}
    unread: list[_Op] = []
    collective = [o for o in walk.ops if o.name.replace("::", ".", 1) in COLLECTIVE_OPS]
    ids = {id(o) for o in collective}
    # the ops of the threads that issued collectives, in time order: what overlapped them
    threads = {(o.event.pid, o.event.tid) for o in collective}
    busy = sorted((o.event.ts_us, o.event.end_us) for o in walk.ops
                  if (o.event.pid, o.event.tid) in threads and id(o) not in ids)
    starts = [b[0] for b in busy]
    dtypes: dict[tuple[str, tuple[tuple[int, ...], ...]], torch.dtype] = {}
    for op in sorted(collective, key=lambda o: o.event.ts_us):
        name = op.name.replace("::", ".", 1)
        spec = COLLECTIVE_OPS[name]
        work = None
        if not op.kernels:  # a CPU collective: the next of gloo's ranges to start after it
            while next_range < len(gloo) and gloo[next_range].ts_us < op.event.ts_us:
                next_range += 1
            if next_range < len(gloo):
                work, next_range = gloo[next_range], next_range + 1
        schema = schema_of(op.packet.default) if op.packet is not None and hasattr(op.packet, "default") else None
        names = [a for a, _ in schema.arguments] if schema is not None else []
        if op.inputs is None or (spec.message_arg is not None and spec.message_arg not in names):
            unread.append(op)
            continue
        shapes: list[tuple[int, ...]] = []
        if spec.message_arg is not None:
            at = names.index(spec.message_arg)
            shapes = _shapes_in(op.inputs.dims[at]) if at < len(op.inputs.dims) else []
        # gloo's range of the trace's last collective can be cut off unfinished, with no types: the
        # same op over the same shapes earlier said its dtype
        dtype = _comm_dtype(op, work) or dtypes.get((name, tuple(shapes)))
        if dtype is not None:
            dtypes[(name, tuple(shapes))] = dtype
        else:
            if shapes:
                assumed[name] = assumed.get(name, 0) + 1
            dtype = torch.float32
        metas = tuple(contiguous_meta(s, dtype) for s in shapes)
        group = world
        for child in op.event.children:  # NCCL's record_param_comms names its group's size
            size = child.args.get("Group size")
            if child.name == "record_param_comms" and isinstance(size, int) and size > 0:
                group = size
        phase, module = phases.of(op)
        key = (name, module, phase, group, tuple(shapes), dtype)
        entry = found.get(key)
        if entry is None:
            args = ((spec.message_arg, metas),) if spec.message_arg is not None else ()
            call = OpCall(name, "default", args, ())
            entry = found[key] = _TracedCollective(call, module, phase, group)
        entry.calls += 1
        entry.timed_calls += 1
        if work is not None:
            entry.time_ns += round(work.dur_us * 1000)
            entry.overlap_ns += _overlap_ns(work, busy, starts)
        else:  # its kernels' time (NCCL's on a GPU), else its own span
            entry.time_ns += op.time_ns
    return list(found.values()), unread


def _regions_own_time(walk: _Walk) -> None:
    """A CPU trace: each compiled region's time is its span less the counted ops inside it (the
    extern kernels Inductor calls, its fallbacks): the rest is its fused kernels'."""
    inside: dict[int, float] = {}
    for op in walk.ops:
        region = _counted_ancestor(op.event.parent, walk.region_by_event)
        if region is not None:
            inside[id(region)] = inside.get(id(region), 0.0) + op.event.dur_us
    for region in walk.regions:
        region.time_ns = max(0, round((region.event.dur_us - inside.get(id(region), 0.0)) * 1000))


def _counted_ancestor(event: Event | None, by_event: dict[int, _Op]) -> _Op | None:
    while event is not None:
        op = by_event.get(id(event))
        if op is not None:
            return op
        event = event.parent
    return None


class _Phases:
    """Phase and module of each op, from the ranges around it (see the module's docstring)."""

    def __init__(self, trace: Trace, walk: _Walk) -> None:
        self.walk = walk
        threads: dict[tuple[str, str], list[Event]] = {}
        for root in trace.roots:
            threads.setdefault((str(root.pid), str(root.tid)), []).append(root)
        self.threads = threads
        # forward ops that made an autograd node: the start of their forward->backward flow
        self.node_op: dict[Any, _Op] = {}
        # a flow starts where the op that made the node starts: found by its start first, as the
        # nesting can be broken by ranges that outlive the Python call that opened them (Lightning's
        # ProfilerStep, opened in its profiler's stop()), which hides ops from a walk down to them
        starts = {(str(op.event.pid), str(op.event.tid), op.event.ts_us): op for op in reversed(walk.ops)}
        for pid, tid, ts, flow_id in trace.flow_starts.get("fwdbwd", []):
            op = starts.get((str(pid), str(tid), ts))
            if op is None:
                op = _counted_ancestor(_innermost_at(threads.get((str(pid), str(tid)), []), ts), walk.by_event)
            if op is not None:
                op.builds_graph = True
                self.node_op[flow_id] = op
        self.backward_starts = sorted(e.ts_us for e in trace.events if e.name.startswith(_BACKWARD_RANGE))
        steps = sorted((e for e in trace.events if e.name.startswith(_STEP_RANGE)), key=lambda e: e.ts_us)
        self.steps = steps
        self._step_starts = [e.ts_us for e in steps]
        #: where each optimizer step ended: a step's boundary where no ProfilerStep range says it
        self._optimizer_ends = sorted(e.end_us for e in trace.events if e.name.startswith(_OPTIMIZER_RANGE))
        self._modules: dict[int, str] = {}
        #: generate()'s calls of its model: id(their module range) -> prefill or decode
        self._generation, self.uncached = _generation_calls(trace) if walk.modules else ({}, [])

    def step_of(self, ts: float) -> Event | None:
        i = bisect.bisect_right(self._step_starts, ts) - 1
        if i >= 0 and self.steps[i].end_us >= ts:
            return self.steps[i]
        return None

    def module_of(self, op: _Op) -> str:
        known = self._modules.get(id(op.event))
        if known is None:
            ancestors = op.event.ancestors()
            # Lightning's range holds the module's path in the model: the innermost says it all
            lightning = next((a.name for a in ancestors if a.name.startswith(_LIGHTNING_MODULE_RANGE)), None)
            if lightning is not None:
                known = lightning.rpartition(": ")[2] if ": " in lightning else ""
            else:
                names = [a.name[len(_MODULE_RANGE):] for a in reversed(ancestors)
                         if a.cat == "python_function" and a.name.startswith(_MODULE_RANGE)]
                known = ".".join(names)
            self._modules[id(op.event)] = known
        return known

    def of(self, op: _Op) -> tuple[str, str]:
        """(phase, module) of a counted op."""
        ancestors = op.event.ancestors()
        for a in ancestors:
            if a.name.startswith(_BACKWARD_RANGE):
                made_by = self.node_op.get(a.args.get("Sequence number"))
                return BACKWARD, self.module_of(made_by) if made_by is not None else ""
        if any(_DDP_REDUCER in a.name for a in ancestors):
            # DDP's reducer at the end of backward (its buckets copied back into the gradients),
            # in the autograd engine's callback, outside any node's range
            return BACKWARD, ""
        # a module's forward, and what builds the autograd graph, is forward work also inside an
        # optimizer's step: Lightning (and LBFGS) run the training step in step()'s closure
        module = self.module_of(op)
        if module:
            if self._generation:
                for a in ancestors:
                    label = self._generation.get(id(a))
                    if label is not None:
                        return label, module
            return FORWARD, module
        if op.builds_graph:
            return FORWARD, ""
        for a in ancestors:
            if a.name.startswith(_OPTIMIZER_RANGE):
                # step()'s closure (Lightning's training step): what runs before the step's first
                # backward pass is its forward (a loss outside any module, where no flow says so)
                i = bisect.bisect_right(self.backward_starts, op.event.ts_us)
                closure_forward = (i < len(self.backward_starts) and self.backward_starts[i] < a.end_us
                                   and not (i > 0 and self.backward_starts[i - 1] >= a.ts_us))
                return (FORWARD if closure_forward else OPTIMIZER), ""
        if any(a.cat == "python_function" and a.name.endswith(": _make_grads") for a in ancestors):
            return BACKWARD, ""  # the seed gradient of loss.backward()
        if op.builds_graph:
            return FORWARD, ""
        if op.name == "aten::ones_like" and self._seeds_backward(op):
            return BACKWARD, ""
        if self.walk.modules:
            return OTHER, ""
        if any(a.name.startswith(_DATALOADER_RANGE) for a in ancestors):
            return OTHER, ""  # the DataLoader fetching a batch (its collate's stack): data loading
        # no module ranges (with_stack=False): what runs before the step's backward is its forward
        # (a Trainer's token count there too: the trace cannot tell it from the model's first ops)
        ts = op.event.ts_us
        step = self.step_of(ts)
        if step is not None:
            began = step.ts_us
        else:  # no ProfilerStep ranges (a plain profile around several steps): the last optimizer step's end
            j = bisect.bisect_right(self._optimizer_ends, ts)
            began = self._optimizer_ends[j - 1] if j else -math.inf
        i = bisect.bisect_right(self.backward_starts, ts)
        before_backward = i == 0 or self.backward_starts[i - 1] < began
        return (FORWARD if before_backward else OTHER), ""

    def _seeds_backward(self, op: _Op) -> bool:
        """A 0-dim ones_like just before autograd's first node runs: loss.backward()'s seed."""
        dims = op.event.args.get("Input Dims")
        if not (isinstance(dims, list) and dims and dims[0] == []):
            return False
        i = bisect.bisect_right(self.backward_starts, op.event.end_us)
        if i >= len(self.backward_starts):
            return False
        next_backward = self.backward_starts[i]
        return not any(o.event.tid == op.event.tid and op.event.end_us <= o.event.ts_us < next_backward
                       and not any(a.name.startswith(_BACKWARD_RANGE) for a in o.event.ancestors())
                       for o in self.walk.ops)


def _generation_calls(trace: Trace) -> tuple[dict[int, str], list[list[int]]]:
    """The model calls of each transformers `generate()` in a trace recorded with its Python
    stack, labelled as `memwall.profile` labels them (from the cache each call is handed, which a
    trace does not record): by id of the call's module range, "prefill" or "decode".

    A call is one of a generation's when it is a module range outside any other, directly inside
    generate() (the innermost), of the module that generate() called last (an encoder-decoder's
    encoder, called once first, keeps `forward`). A model's calls inside one outermost generate()
    make one generation (an assistant model's, over the rounds of its own generate() inside its
    main model's), whose first call is the prefill. A later call is a decode step when it embeds
    fewer tokens than a call without a cache would (the prompt's length plus one per call before
    it: a decode step embeds the new tokens only); where no embedding says, it is a decode step
    (generate() keeps a cache by default). Also the runs of calls without a cache (the tokens
    each embedded, from the prefill on), as `memwall.profile` lists them (records.UNCACHED_KEY)."""
    calls: dict[int, tuple[Event, list[Event]]] = {}  # id(a generate range) -> its outermost, its calls
    embedded: dict[int, int] = {}  # id(a model call's range) -> tokens its first embedding looked up
    for e in trace.events:
        if e.cat == "python_function" and e.name.startswith(_MODULE_RANGE):
            ancestors = e.ancestors()
            if any(a.name.startswith(_MODULE_RANGE) for a in ancestors):
                continue
            frames = [a for a in ancestors if a.cat == "python_function" and _GENERATE_FRAME.search(a.name)]
            if frames:
                calls.setdefault(id(frames[0]), (frames[-1], []))[1].append(e)
        elif e.name == "aten::embedding":
            dims = e.args.get("Input Dims")
            if not (isinstance(dims, list) and len(dims) > 1 and isinstance(dims[1], list) and dims[1]):
                continue
            root = next((a for a in reversed(e.ancestors()) if a.name.startswith(_MODULE_RANGE)), None)
            if root is not None and id(root) not in embedded:
                embedded[id(root)] = dims[1][-1]  # the indices' last dim: the tokens per sequence
    generations: dict[tuple[int, str], list[Event]] = {}  # (id(outermost generate), model) -> calls
    for outermost, found in calls.values():
        model = max(found, key=lambda e: e.ts_us).name
        generations.setdefault((id(outermost), model), []).extend(e for e in found if e.name == model)
    labels: dict[int, str] = {}
    uncached: list[list[int]] = []
    for mine in generations.values():
        mine.sort(key=lambda e: e.ts_us)
        first = embedded.get(id(mine[0]))
        labels[id(mine[0])] = PREFILL
        run = [first] if first is not None else []
        for i, e in enumerate(mine[1:], 1):
            tokens = embedded.get(id(e))
            full = first is not None and tokens is not None and tokens >= first + i
            labels[id(e)] = PREFILL if full else DECODE
            if full and tokens == run[-1] + 1:
                run.append(tokens)
        if len(run) > 1:
            uncached.append(run)
    return labels, uncached


def _device_times(trace: Trace, walk: _Walk) -> bool:
    """Each op's time from the device kernels it launched (its launch calls correlated to them),
    where the trace recorded device activity; False when it did not."""
    kernels: dict[Any, float] = {}
    names: dict[Any, list[str]] = {}
    for e in trace.events:
        if e.cat in _DEVICE_CATS:
            corr = e.args.get("correlation")
            if corr is not None:
                kernels[corr] = kernels.get(corr, 0.0) + e.dur_us
                names.setdefault(corr, []).append(_kernel_name(e))
    if not kernels:
        return False
    device_ns: dict[int, float] = {}
    for e in trace.events:
        if e.cat in _LAUNCH_CATS:
            corr = e.args.get("correlation")
            dur = kernels.get(corr)
            if dur is None:
                continue
            op = _counted_ancestor(e.parent, walk.by_event)
            if op is None:  # a compiled region's own launch (a Triton kernel): the region's
                op = _counted_ancestor(e.parent, walk.region_by_event)
            if op is None:  # in no op at all: said, not dropped
                walk.outside.append(_Op(e, OUTSIDE_OPS, None, None, None, round(dur * 1000), kernels=names[corr]))
                continue
            device_ns[id(op)] = device_ns.get(id(op), 0.0) + dur * 1000
            op.kernels.extend(names[corr])
    for op in walk.ops:
        if id(op) in device_ns:  # ops that launched nothing keep their CPU span
            op.time_ns = round(device_ns[id(op)])
    for region in walk.regions:  # a region's time is its own kernels' (its ops have theirs)
        region.time_ns = round(device_ns.get(id(region), 0.0))
    return True


def _kernel_name(e: Event) -> str:
    """A kernel's name as a row lists it: a copy or set by its kind ("Memcpy HtoD (Pinned ->
    Device)"), a kernel by its function's name without its template arguments and parameters
    ("ampere_sgemm_128x64_nn", "at::native::vectorized_elementwise_kernel")."""
    name = e.name
    if e.cat != "kernel":
        return name
    name = name.removeprefix("void ")
    cut = len(name)
    for mark in ("<", "("):
        at = name.find(mark)
        if 0 < at < cut:
            cut = at
    return name[:cut][:120]


def _timeline(trace: Trace, steps: list[Event]) -> dict[str, Any] | None:
    """Where the trace recorded device activity: per step (each `ProfilerStep#N`, else the span
    of the trace's ops) its wall time, the time the device ran anything (kernels, copies, sets;
    overlapping streams counted once) and the share it sat idle, waiting for the host. None
    without device activity."""
    device = sorted((e.ts_us, e.end_us) for e in trace.events if e.cat in _DEVICE_CATS)
    if not device:
        return None
    if steps:
        windows = [(e.name[len(_STEP_RANGE):], e.ts_us, e.end_us) for e in steps]
    else:
        ops = [e for e in trace.events if e.cat == "cpu_op"]
        start = min([e.ts_us for e in ops] + [device[0][0]])
        end = max([e.end_us for e in ops] + [b for _, b in device])
        windows = [("", start, end)]
    out: list[dict[str, Any]] = []
    for name, start, end in windows:
        first = bisect.bisect_left(device, (start, -math.inf))
        # an interval that began before the window can reach into it: look back a little
        lead = [iv for iv in device[max(0, first - 64):first] if iv[1] > start]
        busy = busy_time(lead + device[first:], start, end)
        wall = max(end - start, 0.0)
        out.append({"step": int(name) if name.isdigit() else None, "wall_s": wall * 1e-6, "device_busy_s": busy * 1e-6,
                    "idle_fraction": 1 - busy / wall if wall > 0 else None})
    wall_s = math.fsum(w["wall_s"] for w in out)
    busy_s = math.fsum(w["device_busy_s"] for w in out)
    return {"source": "the trace's device activity (kernels, memcpy, memset)", "steps": out, "wall_s": wall_s,
            "device_busy_s": busy_s, "idle_fraction": 1 - busy_s / wall_s if wall_s > 0 else None}


def _shapes_text(inputs: TracedInputs | None) -> str:
    if inputs is None:
        return ""
    return " x ".join(_bracketed(d) for d, t in zip(inputs.dims, inputs.types, strict=True) if t != "Scalar" and d)


def _bracketed(dims: Any) -> str:
    """Recorded dims as the counted rows write shapes: [1000, 32] (a tensor list: [[4, 32], [4, 32]])."""
    return f"[{', '.join(_bracketed(d) for d in dims)}]" if isinstance(dims, tuple) else str(dims)


def _progress(items: list[_Op]) -> Iterator[_Op]:
    if len(items) >= PROGRESS_FROM and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track

        yield from track(items, description="memwall: counting the trace's ops", transient=True,
                         console=Console(stderr=True))
    else:
        yield from items


def _device_for(trace: Trace, kind: str, device: str | DeviceSpec | None,
                peaks: dict[str, float] | None) -> tuple[DeviceSpec | None, str, DeviceSpec | None]:
    """The device the rows are placed on, the name of the one the trace was measured on, and the
    device the report is then projected onto (None: none). A GPU chosen for a CPU trace (device=,
    $MEMWALL_DEVICE) is such a what-if: the rows are placed on the CPU it is read on, as without
    the choice, then projected onto the GPU, as `memwall report --device` does."""
    props = trace.meta.get("deviceProperties")
    traced = ""
    if kind == "cuda" and isinstance(props, list) and props and isinstance(props[0], dict):
        traced = str(props[0].get("name", ""))
    if device is None and traced:
        try:  # a GPU trace read elsewhere: its own GPU's roofline, when memwall's table knows it
            known = lookup_device(traced)
        except LookupError:
            pass
        else:  # the GPU that ran it, under the table's name: no what-if
            spec = resolve_device(known, peaks, kind=kind)
            note = f"the trace names it {traced}"
            return dataclasses.replace(spec, notes=f"{spec.notes}; {note}" if spec.notes else note), spec.name, None
    if device is None and kind == "cuda" and not _cuda_here():
        # a GPU's trace read on a machine without one, its GPU unnamed or unknown to memwall: this
        # CPU's roofs would be wrong for its kernels, so the rows stay unplaced until told
        warnings.warn(
            f"memwall: this trace ran on {traced or 'a GPU it does not name'}, which memwall cannot place "
            "on a roofline here (no such GPU on this machine"
            + (", nor in memwall's device table" if traced else "") + "): its FLOPs, bytes and kernel times "
            "are counted but not placed under a roof. Pass --device (e.g. --device 'A100 SXM'; "
            "`memwall devices --list` names them) or device= to analyze_trace.",
            RuntimeWarning, stacklevel=3,
        )
        return None, traced or "an unnamed GPU", None
    try:
        spec = resolve_device(device, peaks, kind=kind)
    except (RuntimeError, LookupError, ValueError):
        if device is not None:
            raise
        spec = resolve_device(None, peaks, kind="cpu")
    if kind == "cpu" and spec.kind != "cpu":  # a GPU chosen for a CPU trace: a what-if
        here = resolve_device(detect_device("cpu"), peaks)  # this CPU, whatever $MEMWALL_DEVICE names
        return here, here.name, spec
    return spec, traced or spec.name, None


def _cuda_here() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def analyze_trace(path: str | Path, *, device: str | DeviceSpec | None = None,
                  peaks: dict[str, float] | None = None, registry: Registry | None = None) -> Report:
    """The memwall report of a torch.profiler trace (`export_chrome_trace` or
    `tensorboard_trace_handler` output, plain or gzipped; a directory holding one trace) recorded
    with `record_shapes=True`. Ops whose inputs the trace lacks are rows without a count (flops
    None) with their time; `report.extra["trace"]` says how many and why.

    `device`/`peaks`: the roofline to place the rows on (default: the GPU the trace names when
    memwall knows it, else this machine's device, as `memwall.profile` detects it)."""
    from memwall_plugin.formulas import REGISTRY

    registry = registry or REGISTRY
    files = trace_files(Path(path))
    if len(files) > 1:
        listing = ", ".join(str(f) for f in files[:5]) + (", ..." if len(files) > 5 else "")
        raise TraceError(f"{path} holds {len(files)} traces ({listing}); analyse them one at a time "
                         "(memwall analyze takes several)")
    trace = load_trace(files[0])
    if not trace.record_shapes:
        import warnings

        warnings.warn(f"memwall: {trace.path} was recorded without record_shapes=True: its ops are listed with "
                      "their times but cannot be counted; re-record with "
                      "torch.profiler.profile(record_shapes=True)", RuntimeWarning, stacklevel=2)
    kind = "cuda" if any(e.cat in _DEVICE_CATS for e in trace.events) else "cpu"
    overloads = _Overloads(kind)
    walk = _walk(trace, overloads)
    on_device = _device_times(trace, walk)
    if not on_device:
        _regions_own_time(walk)
    phases = _Phases(trace, walk)

    entries: dict[Any, CaptureEntry] = {}
    kernels: dict[Any, list[str]] = {}  # entry key -> the kernels its calls launched
    uncounted: dict[tuple[str, str, str, str], list[Any]] = {}  # (op, module, phase, shapes) -> calls, ns
    why: dict[str, int] = {}
    assumed: dict[str, int] = {}  # op -> calls whose tensor lists were taken to be float32
    numbers: dict[str, int] = {}  # op -> calls with a 0-dim float64 / int64 input taken for a Python number
    replayed: dict[tuple[Any, TracedInputs], Any] = {}
    dist = trace.meta.get("distributedInfo")
    rank = int(dist.get("rank", 0)) if isinstance(dist, dict) else 0
    world = int(dist.get("world_size", 1)) if isinstance(dist, dict) else 1
    # torch.distributed's collectives go on the link's roof, as memwall.profile puts them
    collectives, unread = _collectives(trace, walk, phases, world, assumed)
    unread_ids = {id(o) for o in unread}
    comm = {id(o) for o in walk.ops if o.name.replace("::", ".", 1) in COLLECTIVE_OPS and id(o) not in unread_ids}
    for op in _progress(walk.ops):
        if id(op) in comm:
            continue
        phase, module = phases.of(op)
        inputs, func = op.inputs, op.func
        reason = ""
        if inputs is None:
            reason = "no input shapes recorded (record_shapes=False)"
        elif func is None:
            reason = "no overload fits the recorded inputs"
        elif has_unstrided_tensor(inputs):
            reason = "a sparse tensor argument (the trace records its dense shape, not what it stores)"
        else:
            assert inputs is not None
            done = replayed.get((func, inputs))
            if done is None:
                try:
                    done = replayed[(func, inputs)] = replay(func, inputs)
                except ReplayError as exc:
                    done = replayed[(func, inputs)] = exc
            if isinstance(done, ReplayError):
                reason = f"could not be replayed on meta tensors ({done})"
            else:
                key = (id(func), module, phase, done.arg_key, done.kw_key)
                entry = entries.get(key)
                if entry is None:
                    entry = entries[key] = CaptureEntry(func, done.arg_key, done.kw_key, done.out_key, kind, module,
                                                        phase)
                entry.calls += 1
                entry.time_ns += op.time_ns
                for assumption, calls in ((done.assumed_list_dtype, assumed), (done.assumed_number, numbers)):
                    if assumption:
                        name = op.name.replace("::", ".", 1)
                        calls[name] = calls.get(name, 0) + 1
                if op.kernels:
                    kernels.setdefault(key, []).extend(op.kernels)
                continue
        why[reason] = why.get(reason, 0) + 1
        name = op.name.replace("::", ".", 1)
        slot = uncounted.setdefault((name, module, phase, _shapes_text(inputs)), [0, 0, []])
        slot[0] += 1
        slot[1] += op.time_ns
        slot[2].extend(op.kernels)

    # a compiled region: one uncounted row of the time its fused kernels took, beside the ops
    # inside it (counted as any op); device work launched outside any op: one row of its kernels.
    # Before, the first was outside any op and the second dropped: both silent
    regions = [r for r in walk.regions if r.time_ns > 0 or r.kernels]
    for items, what, shapes_text, reason in ((regions, COMPILED_REGION, _REGION_SHAPES, _REGION_WHY),
                                             (walk.outside, OUTSIDE_OPS, _OUTSIDE_SHAPES, _OUTSIDE_WHY)):
        for item in items:
            phase, module = phases.of(item)
            why[reason] = why.get(reason, 0) + 1
            slot = uncounted.setdefault((what, module, phase, shapes_text), [0, 0, []])
            slot[0] += 1
            slot[1] += item.time_ns
            slot[2].extend(item.kernels)

    spec, measured_on, onto = _device_for(trace, kind, device, peaks)
    cache, ceilings, roof = analysis_cache(registry), ceilings_of(spec), memory_roof_of(spec)
    rows = []
    idle_host_s = 0.0  # a GPU trace's views and metadata ops: the host's time, not an op's
    for key, entry in entries.items():  # row by row: each keeps the kernels its calls ran
        (row,) = rows_from_entries((entry,), registry, ceilings, cache, roof)
        ran = kernels.get(key)
        if on_device and not ran and row.bytes == 0 and not row.flops and row.time_s:
            # it launched nothing on the device and moves no data (a view, a size query): its
            # CPU span is the host's time, which the timeline counts, not work of the op's
            idle_host_s += row.time_s
            row = dataclasses.replace(row, time_s=0.0)
        rows.append(dataclasses.replace(row, kernels=tuple(dict.fromkeys(ran))) if ran else row)
    rows = list(merge_rows(rows))  # calls apart only in strides or arguments: one row
    rows.extend(place_rows((Row(op, "", module, phase, calls, "", shapes, None, 0, 0, 0, 0, ns * 1e-9,
                                kernels=tuple(dict.fromkeys(ran)))
                            for (op, module, phase, shapes), (calls, ns, ran) in uncounted.items()), spec))
    rows.sort(key=lambda r: (r.op, r.module, r.phase, r.shapes))
    rows.sort(key=lambda r: r.time_s, reverse=True)

    steps = tuple(sorted({int(s.name[len(_STEP_RANGE):]) for s in phases.steps
                          if s.name[len(_STEP_RANGE):].isdigit()})) or (0,)
    if phases.steps:
        wall = math.fsum(s.dur_us for s in phases.steps) * 1e-6
    else:
        ops = [e for e in trace.events if e.cat == "cpu_op"]
        wall = (max(e.end_us for e in ops) - min(e.ts_us for e in ops)) * 1e-6 if ops else 0.0
    info: dict[str, Any] = {
        "path": str(trace.path),
        "record_shapes": trace.record_shapes,
        "ops": len(walk.ops),
        "distinct_calls": len(replayed),
        "time_from": "device kernels" if on_device else "CPU op spans",
        # a GPU trace: ops that launched nothing and move no data get no time (their CPU spans,
        # summed here); others that launched nothing (work on CPU tensors) keep their CPU span
        **({"host_only_ops_s": idle_host_s} if on_device else {}),
        "uncounted_calls": dict(sorted(why.items(), key=lambda kv: -kv[1])),
        # counted, with an assumption: the trace records a tensor list's shapes, not its dtype
        "float32_assumed_calls": dict(sorted(assumed.items(), key=lambda kv: -kv[1])),
        # counted, with an assumption: a trace records a Python number torch wrapped (`x * 0.5`)
        # as a 0-dim tensor, like a real one; such an input after the first is taken for a number,
        # its bytes not counted (8 bytes short per call where it was a real 0-dim tensor)
        "number_assumed_calls": dict(sorted(numbers.items(), key=lambda kv: -kv[1])),
    }
    extra: dict[str, Any] = {TRACE_KEY: info}
    if phases.uncached:
        extra[UNCACHED_KEY] = uncached_runs(phases.uncached)
    timeline = _timeline(trace, phases.steps)
    if timeline is not None:
        extra[TIMELINE_KEY] = timeline
    distributed: dict[str, Any] = {}
    if collectives or (isinstance(dist, dict) and world > 1):
        # one host's ranks unless the link is set ($MEMWALL_LINK): a trace does not say where ranks ran
        link, inter_link = resolve_links(spec, world, world)
        inter = inter_link.bytes_per_s if inter_link is not None else None
        timed = [c for c in collectives if c.timed_calls]
        distributed = {
            "link": link, "inter_link": inter_link, "backend": str(dist.get("backend", "")) if dist else "",
            "local_world_size": world,
            "collectives": collective_rows(collectives, link.bytes_per_s, world, inter),
            "comm_time_s": sum(c.time_ns for c in timed) * 1e-9 if timed else None,
            # the issuing thread's ops while gloo's work flew (a GPU trace's NCCL kernels: not known)
            "overlapped_s": sum(c.overlap_ns for c in timed) * 1e-9 if timed and kind == "cpu" else None,
        }
    report = Report(rows=tuple(rows), device=spec, steps=steps, wall_time_s=wall, measured_on=measured_on,
                    rank=rank, world_size=world, created_unix_s=trace.path.stat().st_mtime, **distributed,
                    job=f"trace-{trace.path.name}", extra=extra)
    return report.rescore(device=onto) if onto is not None else report
