"""The report of a profiled run: one row per aggregated call signature, saved as versioned JSON.

Rows carry totals over all calls of their signature. Bytes are kept both as bytes (at the real
element sizes) and as element counts, so `rescore` can re-size every tensor without the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwall_plugin.records import PHASES

SCHEMA_VERSION = 1


class ReportError(ValueError):
    """A report file that cannot be read: the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class Row:
    """All calls of one signature (op, module, phase, input shapes and dtypes)."""

    op: str  # "aten.addmm"
    overload: str  # "default"
    module: str  # "transformer.h.3.attn.c_attn"; "" = top level, outside any submodule
    phase: str  # forward | backward | optimizer | other
    calls: int
    dtype: str  # the op's compute dtype: its first floating input, else its first tensor
    shapes: str  # input shapes, for display
    flops: int | None  # total over calls; None = no formula (uncounted)
    bytes_read: int
    bytes_written: int
    elements_read: int
    elements_written: int
    time_s: float  # measured, summed over calls

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def counted(self) -> bool:
        return self.flops is not None

    @property
    def name(self) -> str:
        return f"{self.op}.{self.overload}"


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Row))


@dataclass(frozen=True)
class Report:
    """The analysis of the active steps of one profiled run (one rank)."""

    rows: tuple[Row, ...]
    steps: tuple[int, ...] = ()  # indices of the recorded (active) steps
    wall_time_s: float = 0.0  # wall time of the recorded steps, profiler overhead included
    incomplete: bool = False  # the profiled block ended by an exception
    bytes_per_element: int | None = None  # set by rescore(); None = the real element sizes
    rank: int = 0
    world_size: int = 1
    torch_version: str = ""
    created_unix_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=True)

    schema_version = SCHEMA_VERSION

    # -- totals --------------------------------------------------------------------------------
    @property
    def total_flops(self) -> int:
        """FLOPs of every counted row (uncounted rows are not zero: see `uncounted`)."""
        return sum(r.flops for r in self.rows if r.flops is not None)

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.rows)

    @property
    def total_time_s(self) -> float:
        """Measured time summed over all ops."""
        return math.fsum(r.time_s for r in self.rows)

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte over the counted rows."""
        counted_bytes = sum(r.bytes for r in self.rows if r.flops is not None)
        return self.total_flops / counted_bytes if counted_bytes else None

    @property
    def uncounted(self) -> tuple[Row, ...]:
        """Rows with no FLOP formula: shown with their calls and time, never as zero."""
        return tuple(r for r in self.rows if r.flops is None)

    @property
    def coverage(self) -> float:
        """Share of measured time spent in counted ops (1.0 when nothing was timed)."""
        total = self.total_time_s
        if total <= 0:
            return 1.0 if not self.uncounted else 0.0
        return math.fsum(r.time_s for r in self.rows if r.flops is not None) / total

    def filter(
        self,
        *,
        phase: str | None = None,
        module_prefix: str | None = None,
        op: str | None = None,
    ) -> tuple[Row, ...]:
        """Rows of one phase, under one module path (a dotted prefix), or of one op."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)}")
        out = []
        for r in self.rows:
            if phase is not None and r.phase != phase:
                continue
            if op is not None and r.op != op:
                continue
            if module_prefix is not None and not _under(r.module, module_prefix):
                continue
            out.append(r)
        return tuple(out)

    # -- what-if -------------------------------------------------------------------------------
    def rescore(self, bytes_per_element: int | None = None) -> Report:
        """A new report with every tensor re-sized to `bytes_per_element` (the paper's 8-bit
        accounting is `bytes_per_element=1`); FLOPs and times are unchanged."""
        if bytes_per_element is None:
            return self
        if isinstance(bytes_per_element, bool) or not isinstance(bytes_per_element, int) or (
            bytes_per_element <= 0
        ):
            raise ValueError(
                f"bytes_per_element must be a positive int (1 for 8-bit, 2 for 16-bit), "
                f"got {bytes_per_element!r}"
            )
        rows = tuple(
            dataclasses.replace(
                r,
                bytes_read=r.elements_read * bytes_per_element,
                bytes_written=r.elements_written * bytes_per_element,
            )
            for r in self.rows
        )
        return dataclasses.replace(self, rows=rows, bytes_per_element=bytes_per_element)

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        meta = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "rows"
        }
        meta["steps"] = list(self.steps)
        return {
            "format": "memwall-report",
            "schema_version": SCHEMA_VERSION,
            "meta": meta,
            "rows": [{name: getattr(r, name) for name in _ROW_FIELDS} for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "report") -> Report:
        if not isinstance(data, dict) or data.get("format") != "memwall-report":
            raise ReportError(f"{source} is not a memwall report (no 'format': 'memwall-report')")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ReportError(
                f"{source} has schema_version {version!r}; this memwall reads version "
                f"{SCHEMA_VERSION}. Upgrade memwall-plugin, or re-profile with this version."
            )
        meta, rows = data.get("meta"), data.get("rows")
        if not isinstance(meta, dict) or not isinstance(rows, list):
            raise ReportError(f"{source} lacks its 'meta' object or 'rows' list")
        try:
            parsed = tuple(_row_from_dict(r) for r in rows)
            kwargs = {f.name: meta[f.name] for f in dataclasses.fields(cls) if f.name in meta}
            kwargs["steps"] = tuple(int(s) for s in kwargs.get("steps", ()))
            return cls(rows=parsed, **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"{source} has a malformed field: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically: a reader sees the old file or the new one."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, allow_nan=False, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def __str__(self) -> str:
        from memwall_plugin.summary import format_summary

        return format_summary(self)


def _under(module: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return not prefix or module == prefix or module.startswith(prefix + ".")


def _row_from_dict(data: Any) -> Row:
    if not isinstance(data, dict):
        raise TypeError(f"a row is {type(data).__name__}, not an object")
    missing = [name for name in _ROW_FIELDS if name not in data]
    if missing:
        raise KeyError(f"row lacks {', '.join(missing)}")
    row = Row(**{name: data[name] for name in _ROW_FIELDS})
    for name in ("calls", "bytes_read", "bytes_written", "elements_read", "elements_written"):
        value = getattr(row, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"row field {name} must be a non-negative integer, got {value!r}")
    if row.flops is not None and (isinstance(row.flops, bool) or not isinstance(row.flops, int)):
        raise ValueError(f"row field flops must be an integer or null, got {row.flops!r}")
    if not isinstance(row.time_s, (int, float)) or not math.isfinite(row.time_s) or row.time_s < 0:
        raise ValueError(f"row field time_s must be a finite non-negative number, got {row.time_s!r}")
    return dataclasses.replace(row, time_s=float(row.time_s))


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read a report saved by `Report.save` (or by `memwall.profile(logdir=...)`)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{source}: no such file; pass the path of a memwall .json report") from None
    except IsADirectoryError:
        raise ReportError(
            f"{source} is a directory; pass a report file (<logdir>/plugins/memwall/*.json)"
        ) from None
    except UnicodeDecodeError:
        raise ReportError(f"{source} is not a text file; is it a memwall report?") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{source} is not valid JSON ({exc}); it may be truncated") from None
    return Report.from_dict(data, source)
