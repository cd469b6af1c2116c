"""From captured entries to report rows: apply the formulas once per signature, times its calls."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from memwall_plugin.hooks.capture import CaptureEntry
from memwall_plugin.records import OpCall
from memwall_plugin.registry import Counted, Registry, default_traffic
from memwall_plugin.report import Row

_FLOATING = ("float", "bfloat", "complex")
# record_function markers (torch.profiler, optimizer.step) dispatch as ops but compute nothing
_IGNORED_NAMESPACES = ("profiler.",)


def op_dtype(call: OpCall) -> str:
    """The dtype an op computes in: its first floating input, else first output, else any."""
    tensors = [t for _, t in call.tensors()]
    for t in tensors + [o for o in call.outputs if o is not None]:
        if t.dtype.startswith(_FLOATING):
            return t.dtype
    first = call.first_tensor
    return first.dtype if first is not None else ""


def count_safely(registry: Registry, call: OpCall) -> Counted:
    """Count one call; a formula that fails makes the op uncounted, with a warning."""
    try:
        return registry.count(call)
    except Exception as exc:  # a formula bug must not lose the rest of the report
        warnings.warn(
            f"memwall: the formula for {call.op}.{call.overload} failed ({exc!r}); "
            "reporting it as uncounted",
            RuntimeWarning,
            stacklevel=2,
        )
        return Counted(None, default_traffic(call))


#: From this many signatures on, building a report shows a progress bar (on a terminal).
PROGRESS_FROM = 5000


def rows_from_entries(
    entries: Iterable[CaptureEntry], registry: Registry, ceilings: Callable[[str, str], tuple[Any, Any]] | None = None,
) -> tuple[Row, ...]:
    """One row per entry, totals over its calls, sorted by measured time (longest first).
    `ceilings(op, dtype)` gives the (peak FLOP/s, bandwidth) a row is placed under."""
    rows = []
    entries = list(entries)
    if len(entries) >= PROGRESS_FROM and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track

        entries = track(entries, description="memwall: analysing", transient=True,  # type: ignore[assignment]
                        console=Console(stderr=True))
    for e in entries:
        call = e.call
        if call.op.startswith(_IGNORED_NAMESPACES):
            continue
        counted = count_safely(registry, call)
        n = e.calls
        t = counted.traffic
        dtype = op_dtype(call)
        peak, bandwidth = ceilings(call.op, dtype) if ceilings else (None, None)
        rows.append(
            Row(
                op=call.op,
                overload=call.overload,
                module=e.module,
                phase=e.phase,
                calls=n,
                dtype=dtype,
                shapes=call.shapes(),
                flops=None if counted.flops is None else counted.flops * n,
                bytes_read=t.bytes_read * n,
                bytes_written=t.bytes_written * n,
                elements_read=t.elements_read * n,
                elements_written=t.elements_written * n,
                time_s=e.time_ns * 1e-9,
                peak_flops_per_s=peak,
                bandwidth_bytes_per_s=bandwidth,
            )
        )
    rows.sort(key=lambda r: (-r.time_s, r.op, r.module, r.phase, r.shapes))
    return tuple(rows)
