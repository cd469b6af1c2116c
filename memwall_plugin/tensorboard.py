"""What memwall adds to TensorBoard's other tabs: headline scalars per step (Scalars / Time
Series), and memwall's figures on the operator events of a torch.profiler trace (PyTorch
Profiler tab, Perfetto, chrome://tracing)."""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from memwall_plugin.files import write_atomically
from memwall_plugin.rows import Row


class ScalarWriter:
    """Writes headline scalars per step into the run directory as a TensorBoard event file,
    lazily and synchronously: a write that fails (a full disk) raises here, to memwall's one
    warning, not in a background thread that prints its own traceback (SummaryWriter's)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._file: Any = None
        self._records: Any = None

    def _open(self) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time_ns()
        name = f"events.out.tfevents.{now // 10**9:010d}.{socket.gethostname()}.{os.getpid()}.{now}.memwall"
        self._file = open(self.logdir / name, "xb")  # kept open for the run; close() closes it
        self._records = RecordWriter(self._file)
        self._records.write(Event(wall_time=now / 1e9, file_version="brain.Event:2").SerializeToString())

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """One step's scalars (`Headline.scalars()`)."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        if self._file is None:
            self._open()
        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()
                  if math.isfinite(value)]
        event = Event(wall_time=time.time(), step=step, summary=Summary(value=values))
        self._records.write(event.SerializeToString())
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            file, self._file, self._records = self._file, None, None
            file.close()


# --- torch.profiler trace annotation ---------------------------------------------------------

#: Input types in a trace's "Input type" that are not tensors.
_NOT_TENSORS = {"", "Scalar", "ScalarList", "GenericList", "TensorList", "None", "Device", "Layout",
                "ScalarType", "MemoryFormat", "bool[]", "int[]"}


def trace_shapes(args: dict[str, Any]) -> str | None:
    """The tensor input shapes of a trace event, written as memwall's `Row.shapes`."""
    dims, types = args.get("Input Dims"), args.get("Input type")
    if not isinstance(dims, list) or not isinstance(types, list) or len(dims) != len(types):
        return None
    parts = []
    for d, t in zip(dims, types):
        if t in _NOT_TENSORS or not isinstance(d, list):
            continue
        if d and isinstance(d[0], list):  # a list of tensors
            parts.append(f"{len(d)} x {d[0]}")
        else:
            parts.append(str(d))
    return " x ".join(parts)


def annotation_index(rows: Iterable[Row]) -> dict[tuple[str, str], dict[str, Any]]:
    """(aten::op, shapes) -> memwall's per-call figures, as trace args (no dots in keys)."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r.flops is None or r.calls == 0:
            continue
        name = "aten::" + r.op.removeprefix("aten.") if r.op.startswith("aten.") else r.op
        key = (name, r.shapes)
        if key in index:
            continue
        args: dict[str, Any] = {
            "memwall_flops": r.flops // r.calls,
            "memwall_bytes": r.bytes // r.calls,
            "memwall_bound": r.bound,
        }
        if r.intensity is not None and math.isfinite(r.intensity):
            args["memwall_intensity"] = round(r.intensity, 6)
        index[key] = args
    return index


def annotate_trace(path: Path, rows: Iterable[Row]) -> int:
    """Add memwall's FLOPs, bytes, intensity and bound to the matching operator events of a
    chrome trace, in place (atomically). Returns how many events were annotated."""
    data = json.loads(path.read_text(encoding="utf-8"))
    events = data.get("traceEvents") if isinstance(data, dict) else None
    if not isinstance(events, list):
        return 0
    index = annotation_index(rows)
    annotated = 0
    for event in events:
        if not isinstance(event, dict) or event.get("cat") != "cpu_op":
            continue
        args = event.get("args")
        if not isinstance(args, dict):
            continue
        shapes = trace_shapes(args)
        extra = index.get((str(event.get("name")), shapes)) if shapes is not None else None
        if extra:
            args.update(extra)
            annotated += 1

    def fill(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)

    write_atomically(path, fill)
    return annotated
