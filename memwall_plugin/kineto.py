"""Reading torch.profiler (Kineto) Chrome-trace files: the events of one file, nested per thread.

A trace is JSON (`export_chrome_trace`, `tensorboard_trace_handler`'s `*.pt.trace.json`, either
gzipped): `traceEvents` holds complete events ("X": CPU ops, record_function ranges, Python
frames, kernels) and flow events ("s"/"f": forward op -> backward node, launch -> kernel). Times
are microseconds. Nothing here knows about FLOPs; memwall_plugin/trace_analysis.py counts.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TRACE_SUFFIXES", "Event", "Trace", "TraceError", "load_trace", "trace_files"]

#: the names `tensorboard_trace_handler` gives its traces (and `memwall.profile(kineto=True)`)
TRACE_SUFFIXES = (".pt.trace.json", ".pt.trace.json.gz")


class TraceError(ValueError):
    """A file that is not a torch.profiler trace, or one memwall cannot read."""


@dataclass(eq=False, slots=True)
class Event:
    """One complete ("X") event, with its place in its thread's nesting."""

    name: str
    cat: str
    pid: Any
    tid: Any
    ts_us: float
    dur_us: float
    args: dict[str, Any]
    parent: Event | None = None
    children: list[Event] = field(default_factory=list)

    @property
    def end_us(self) -> float:
        return self.ts_us + self.dur_us

    def ancestors(self) -> list[Event]:
        out, node = [], self.parent
        while node is not None:
            out.append(node)
            node = node.parent
        return out


@dataclass(slots=True)
class Trace:
    """The events of one trace file, nested per (pid, tid), in start order."""

    path: Path
    events: list[Event]
    roots: list[Event]
    #: flow starts ("s") by category: (pid, tid, ts_us, id)
    flow_starts: dict[str, list[tuple[Any, Any, float, Any]]]
    meta: dict[str, Any]

    @property
    def record_shapes(self) -> bool:
        """Whether the trace holds input shapes: its own flag, else any op with "Input Dims"."""
        flag = self.meta.get("record_shapes")
        if isinstance(flag, bool):
            return flag
        return any("Input Dims" in e.args for e in self.events if e.cat == "cpu_op")


def trace_files(path: Path) -> list[Path]:
    """The trace files at `path`: the file itself, or a directory's `*.pt.trace.json[.gz]` (one per
    rank and step, as `tensorboard_trace_handler` writes them), else its `*.json[.gz]`."""
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
        if not found:
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz")))
        if not found:
            raise TraceError(f"{path}: no torch.profiler trace (*.pt.trace.json, *.json, *.json.gz) in this directory")
        return found
    if not path.exists():
        raise TraceError(f"{path}: no such file")
    return [path]


_RECORD_ONE = ("memwall reads torch.profiler's Chrome-trace JSON, recorded with record_shapes=True and written by "
               "prof.export_chrome_trace(path) or torch.profiler.tensorboard_trace_handler(dir)")


def _read(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise TraceError(f"{path}: a damaged or truncated gzip file ({exc})") from None
    elif path.name.endswith(".gz"):
        raise TraceError(f"{path}: named .gz but not gzip-compressed")
    if not raw.strip():
        raise TraceError(f"{path}: the file is empty (a trace still being written, or a profile that never "
                         f"exported one?)")
    if raw[:1] == b"\x80":  # pickle's protocol mark
        raise TraceError(f"{path}: a Python pickle (a memory snapshot, torch.cuda.memory._dump_snapshot?), not a "
                         f"trace: {_RECORD_ONE}")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a torch.profiler trace (not text JSON)") from None
    except json.JSONDecodeError as exc:
        # JSON that breaks off (a trace cut short), or a file that never was JSON (a log)
        why = ("a trace cut short while it was written?" if raw.lstrip()[:1] in (b"{", b"[")
               else f"not JSON; {_RECORD_ONE}")
        raise TraceError(f"{path}: not a torch.profiler trace (invalid JSON at line {exc.lineno}: "
                         f"{exc.msg}; {why})") from None


def load_trace(path: Path) -> Trace:
    """One trace file's events, nested per thread (a child starts inside its parent)."""
    data = _read(path)
    raw_events = data.get("traceEvents") if isinstance(data, dict) else data if isinstance(data, list) else None
    if not isinstance(raw_events, list):
        if isinstance(data, dict) and "nodes" in data and "schema" in data:
            raise TraceError(f"{path}: a PyTorch execution trace (ExecutionTraceObserver's graph of ops), not the "
                             f"profiler's timeline: {_RECORD_ONE}")
        raise TraceError(f"{path}: not a torch.profiler trace (no traceEvents list)")
    events: list[Event] = []
    flows: dict[str, list[tuple[Any, Any, float, Any]]] = {}
    for e in raw_events:
        if not isinstance(e, dict):
            continue
        ph = e.get("ph")
        if ph == "X":
            try:
                ts, dur = float(e["ts"]), float(e.get("dur", 0.0))
            except (KeyError, TypeError, ValueError):
                continue
            args = e.get("args")
            events.append(Event(str(e.get("name", "")), str(e.get("cat", "")), e.get("pid"), e.get("tid"), ts, dur,
                                args if isinstance(args, dict) else {}))
        elif ph == "s":
            try:
                flows.setdefault(str(e.get("cat", "")), []).append((e.get("pid"), e.get("tid"), float(e["ts"]),
                                                                    e.get("id")))
            except (KeyError, TypeError, ValueError):
                continue
    if not any(e.cat in ("cpu_op", "user_annotation", "kernel") for e in events):
        raise TraceError(f"{path}: not a torch.profiler trace (no operator events in traceEvents)")
    meta = {k: v for k, v in data.items() if k != "traceEvents"} if isinstance(data, dict) else {}
    return Trace(path, events, _nest(events), flows, meta)


def _nest(events: list[Event]) -> list[Event]:
    """Link each event to the innermost event of its thread that it starts inside; the roots."""
    by_thread: dict[tuple[str, str], list[Event]] = {}
    for e in events:
        by_thread.setdefault((str(e.pid), str(e.tid)), []).append(e)
    roots: list[Event] = []
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e.ts_us, -e.dur_us))
        stack: list[Event] = []
        for e in thread:
            # by start: an event starting inside another is its child even when rounding makes it
            # end a fraction of a microsecond after it
            while stack and stack[-1].end_us <= e.ts_us:
                stack.pop()
            if stack:
                e.parent = stack[-1]
                stack[-1].children.append(e)
            else:
                roots.append(e)
            stack.append(e)
    return roots
