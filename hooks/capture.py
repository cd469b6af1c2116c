"""Dispatch-level recording: every aten op becomes an aggregated entry (signature -> calls, time).

The hot path (`_CaptureMode.__torch_dispatch__`) times the op, finds its module and phase, and
folds the call into a table keyed by (op, module, phase, argument signature). Only the first
call of a signature builds the full `OpCall` metadata; tensors are never kept.

Python float arguments enter the key only as zero / non-zero: their values (learning rates,
bias corrections) change every step and would make the table grow without bound, while the
formulas only ask whether a term is present.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    TorchDispatchMode,
    current_autograd_node,
    dispatch_mode_stack,
    warm_up_dispatch,
)
from memwall_plugin.hooks.modules import ModuleTracker

from memwall_plugin.records import BACKWARD, FORWARD, OPTIMIZER, OTHER, OpCall, TensorMeta

_Tensor = torch.Tensor
_perf_counter_ns = time.perf_counter_ns


class ProfilerConflictError(RuntimeError):
    """Raised when a second memwall capture is started while one is active."""


@dataclass(slots=True)
class CaptureEntry:
    """All calls of one signature: how many, how long, and the first call's metadata."""

    call: OpCall
    module: str
    phase: str
    calls: int = 0
    time_ns: int = 0

    def merge(self, other: CaptureEntry) -> None:
        self.calls += other.calls
        self.time_ns += other.time_ns


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_meta(t: torch.Tensor) -> TensorMeta:
    shape = tuple(int(n) for n in t.shape)
    try:
        stride = tuple(int(s) for s in t.stride())
    except (RuntimeError, NotImplementedError):  # sparse and other layouts without strides
        stride = _contiguous_strides(shape)
    return TensorMeta(shape, stride, _dtype_name(t.dtype), t.dtype.itemsize)


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, running = [], 1
    for n in reversed(shape):
        strides.append(running)
        running *= max(n, 1)
    return tuple(reversed(strides))


def _meta_value(value: Any) -> Any:
    """An argument as formulas see it: tensors become TensorMeta, lists become tuples."""
    if isinstance(value, _Tensor):
        return tensor_meta(value)
    if isinstance(value, (list, tuple)):
        return tuple(_meta_value(v) for v in value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)  # dtype, device, layout, memory_format: their names


def _flatten_outputs(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        flat: list[Any] = []
        for item in out:
            flat.extend(_flatten_outputs(item))
        return flat
    return [out]


def build_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> OpCall:
    """The OpCall of one aten call, from its schema: arguments by name, aliasing, mutation."""
    schema = func._schema
    values: list[tuple[str, Any]] = []
    mutated: list[str] = []
    out_args: list[str] = []
    for index, argument in enumerate(schema.arguments):
        if index < len(args):
            value = args[index]
        elif argument.name in kwargs:
            value = kwargs[argument.name]
        elif argument.has_default_value():
            value = argument.default_value
        else:
            continue
        values.append((argument.name, _meta_value(value)))
        alias = argument.alias_info
        if alias is not None and alias.is_write:
            mutated.append(argument.name)
            if argument.is_out:
                out_args.append(argument.name)

    outputs: list[TensorMeta | None] = []
    aliased: list[bool] = []
    returns = schema.returns
    results = out if len(returns) != 1 else (out,)
    if isinstance(results, (list, tuple)) and len(returns) == len(results):
        for ret, result in zip(returns, results, strict=True):
            for item in _flatten_outputs(result):
                outputs.append(tensor_meta(item) if isinstance(item, _Tensor) else None)
                aliased.append(ret.alias_info is not None)
    else:
        for item in _flatten_outputs(out):
            outputs.append(tensor_meta(item) if isinstance(item, _Tensor) else None)
            aliased.append(False)

    namespace, _, name = schema.name.partition("::")
    first = next((a for a in (*args, *_flatten_outputs(out)) if isinstance(a, _Tensor)), None)
    if first is None:
        listed = (t for a in args if isinstance(a, (list, tuple)) for t in a)
        first = next((t for t in listed if isinstance(t, _Tensor)), None)
    return OpCall(
        op=f"{namespace}.{name}",
        overload=func._overloadname,
        args=tuple(values),
        outputs=tuple(outputs),
        mutated=tuple(mutated),
        out_args=tuple(out_args),
        aliased_outputs=tuple(aliased),
        device=first.device.type if first is not None else "cpu",
    )


def _key_of(value: Any) -> Any:
    """The hashable signature of one argument (cheap: no metadata objects)."""
    if isinstance(value, _Tensor):
        return (value.shape, value.stride(), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_key_of(v) for v in value)
    if isinstance(value, float):
        return value == 0.0
    return value


def _first_tensor_is_cuda(args: tuple[Any, ...]) -> bool:
    for a in args:
        if isinstance(a, _Tensor):
            return a.is_cuda
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], _Tensor):
            return a[0].is_cuda
    return False


def _builds_graph(args: tuple[Any, ...]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for a in args:
        if isinstance(a, _Tensor) and a.requires_grad:
            return True
    return False


class _CaptureMode(TorchDispatchMode):
    def __init__(self, capture: Capture, cuda: bool) -> None:
        super().__init__()
        self._capture = capture
        self._cuda = cuda

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self._cuda and _first_tensor_is_cuda(args):
            # device time from events, resolved at the step's end: no synchronisation per op
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
            out = func(*args, **kwargs)
            end_event.record()
            entry = self._capture.record(func, args, kwargs, out, 0)
            self._capture.pending_events.append((entry, start_event, end_event))
            return out
        start = _perf_counter_ns()
        out = func(*args, **kwargs)
        elapsed = _perf_counter_ns() - start
        self._capture.record(func, args, kwargs, out, elapsed)
        return out


class Capture:
    """Records aten ops into `table` while started. One capture may be active per process."""

    _active: Capture | None = None

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.tracker = ModuleTracker(model)
        self.table: dict[Any, CaptureEntry] = {}
        self._mode: _CaptureMode | None = None
        self.pending_events: list[tuple[CaptureEntry, Any, Any]] = []
        warm_up_dispatch()

    @property
    def recording(self) -> bool:
        return self._mode is not None

    def open(self) -> None:
        """Begin the capture's lifetime (optimizer tracking); start() / stop() toggle recording."""
        self.tracker.open()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.tracker.close()

    def start(self) -> None:
        if self._mode is not None:
            return
        if Capture._active is not None and Capture._active is not self:
            raise ProfilerConflictError(
                "memwall.profile is already active; profiles cannot be nested. "
                "Call prof.step() to mark steps inside one profile instead."
            )
        Capture._active = self
        self.tracker.install()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self._mode = _CaptureMode(self, cuda)
        self._mode.__enter__()

    def stop(self) -> None:
        """Stop recording; the table is kept. Safe to call when not started."""
        mode, self._mode = self._mode, None
        try:
            if mode is not None:
                stack = dispatch_mode_stack()
                if stack and stack[-1] is not mode:
                    raise RuntimeError(
                        "a dispatch mode entered inside memwall.profile is still active; "
                        "exit it before the profile ends or calls prof.step()"
                    )
                mode.__exit__(None, None, None)
        finally:
            self.tracker.remove()
            if Capture._active is self:
                Capture._active = None

    def take(self) -> dict[Any, CaptureEntry]:
        """Hand over the table recorded so far and start a new one (GPU times resolved)."""
        self.resolve_events()
        table, self.table = self.table, {}
        return table

    def resolve_events(self) -> None:
        """Wait once for the GPU and add each op's event-measured time to its entry."""
        if not self.pending_events:
            return
        pending, self.pending_events = self.pending_events, []
        pending[-1][2].synchronize()
        for entry, start_event, end_event in pending:
            entry.time_ns += int(start_event.elapsed_time(end_event) * 1e6)  # ms -> ns

    def end_step(self) -> None:
        self.tracker.end_step()

    def record(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, elapsed_ns: int
    ) -> CaptureEntry:
        tracker = self.tracker
        node = current_autograd_node()
        if node is not None:
            phase = BACKWARD
            # a forward re-run inside backward (activation checkpointing) keeps its module
            module = tracker.stack[-1] if tracker.stack else tracker.path_for_node(node)
        elif tracker.in_optimizer:
            phase, module = OPTIMIZER, ""
        elif tracker.stack:
            phase = tracker.user_label or tracker.generation_label or FORWARD
            module = tracker.stack[-1]
        elif _builds_graph(args):
            # outside any module but on the autograd graph: a loss, a functional model
            phase, module = tracker.user_label or FORWARD, ""
        else:
            phase, module = tracker.user_label or OTHER, ""
        key = (
            func,
            module,
            phase,
            tuple([_key_of(a) for a in args]),
            tuple([(k, _key_of(v)) for k, v in kwargs.items()]) if kwargs else None,
        )
        entry = self.table.get(key)
        if entry is None:
            entry = CaptureEntry(build_call(func, args, kwargs, out), module, phase)
            self.table[key] = entry
        entry.calls += 1
        entry.time_ns += elapsed_ns
        return entry


__all__ = ["Capture", "CaptureEntry", "ProfilerConflictError", "build_call", "tensor_meta"]
