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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memwall_plugin import roofline
from memwall_plugin.comm import Communication, merge_communication, relink
from memwall_plugin.devices import DeviceSpec, lookup_device
from memwall_plugin.records import BACKWARD, PHASES, RECOMPUTE
from memwall_plugin.validation import (
    TOP_LEVEL_KEYS,
    FieldError,
    ReportError,
    check_device,
    check_object,
    dataclass_fields,
    invalid,
    parse_json,
    read_report_bytes,
)

SCHEMA_VERSION = 1


class RooflinePoint:
    """The roofline of anything with flops, bytes, time_s and the two ceilings (rows, groups)."""

    __slots__ = ()
    flops: int | None
    time_s: float
    peak_flops_per_s: float | None
    bandwidth_bytes_per_s: float | None

    if TYPE_CHECKING:

        @property
        def bytes(self) -> int: ...

    @property
    def intensity(self) -> float | None:
        """FLOPs per byte moved (None when uncounted or nothing moves)."""
        return roofline.intensity(self.flops, self.bytes)

    @property
    def ridge_point(self) -> float | None:
        if not self.peak_flops_per_s or not self.bandwidth_bytes_per_s:
            return None
        return self.peak_flops_per_s / self.bandwidth_bytes_per_s

    @property
    def bound(self) -> str:
        """"memory" | "compute" | "none" (views) | "unknown" (uncounted, or no ceilings)."""
        return roofline.bound(self.flops, self.bytes, self.peak_flops_per_s, self.bandwidth_bytes_per_s)

    @property
    def attainable_flops_per_s(self) -> float | None:
        return roofline.attainable_flops_per_s(
            self.flops, self.bytes, self.peak_flops_per_s, self.bandwidth_bytes_per_s
        )

    @property
    def achieved_flops_per_s(self) -> float | None:
        return self.flops / self.time_s if self.flops is not None and self.time_s > 0 else None

    @property
    def achieved_bytes_per_s(self) -> float | None:
        return self.bytes / self.time_s if self.time_s > 0 else None

    @property
    def efficiency(self) -> float | None:
        """Achieved / attainable (FLOP/s; bytes/s for pure data movement)."""
        return roofline.efficiency(
            self.flops, self.bytes, self.time_s, self.peak_flops_per_s, self.bandwidth_bytes_per_s
        )

    @property
    def roofline_time_s(self) -> float | None:
        """The least time the roofline allows: max(flops / peak, bytes / bandwidth)."""
        return roofline.roofline_time_s(
            self.flops, self.bytes, self.peak_flops_per_s, self.bandwidth_bytes_per_s
        )


@dataclass(frozen=True, slots=True)
class Row(RooflinePoint):
    """All calls of one signature (op, module, phase, input shapes and dtypes)."""

    op: str  # "aten.addmm"
    overload: str  # "default"
    module: str  # "transformer.h.3.attn.c_attn"; "" = top level, outside any submodule
    phase: str  # forward | backward | recompute | optimizer | prefill | decode | other, or a label
    calls: int
    dtype: str  # the op's compute dtype: its first floating input, else its first tensor
    shapes: str  # input shapes, for display
    flops: int | None  # total over calls; None = no formula (uncounted)
    bytes_read: int
    bytes_written: int
    elements_read: int
    elements_written: int
    time_s: float  # measured, summed over calls
    # the ceilings this row is placed under (its dtype's peak on the report's device)
    peak_flops_per_s: float | None = None
    bandwidth_bytes_per_s: float | None = None

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


#: Op families that run on TF32 tensor cores when torch allows it for fp32 on CUDA.
TF32_FAMILIES = {
    "matmul": frozenset({
        "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._addmm_activation",
        "aten.mv", "aten.addmv",
    }),
    "conv": frozenset({"aten.convolution", "aten._convolution", "aten.convolution_backward"}),
}


def ceilings_of(device: DeviceSpec | None, tf32: tuple[str, ...] = ()) -> Any:
    """(op, dtype) -> (peak FLOP/s, bandwidth) on `device`; TF32 for fp32 matmul/conv where enabled."""
    tf32_ops = frozenset().union(*(TF32_FAMILIES[f] for f in tf32 if f in TF32_FAMILIES))
    use_tf32 = device is not None and device.peak("tf32") is not None and bool(tf32_ops)
    cache: dict[tuple[str, str], tuple[float | None, float | None]] = {}

    def ceilings(op: str, dtype: str) -> tuple[float | None, float | None]:
        if device is None:
            return None, None
        key = (op, dtype) if use_tf32 else ("", dtype)
        found = cache.get(key)
        if found is None:
            roof = "tf32" if use_tf32 and dtype == "float32" and op in tf32_ops else dtype
            found = cache[key] = (device.peak_flops_per_s(roof), device.bandwidth_bytes_per_s)
        return found

    return ceilings


def place_rows(rows: Iterable[Row], device: DeviceSpec | None, tf32: tuple[str, ...] = ()) -> tuple[Row, ...]:
    """Put each row under its dtype's roof on `device` (TF32 for fp32 matmul/conv where enabled)."""
    ceilings = ceilings_of(device, tf32)
    out = []
    for r in rows:
        peak, bw = ceilings(r.op, r.dtype)
        out.append(dataclasses.replace(r, peak_flops_per_s=peak, bandwidth_bytes_per_s=bw))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Group(RooflinePoint):
    """Rows rolled up by op, module or phase, placed on the same roofline."""

    key: str
    calls: int
    flops: int | None  # None when every row is uncounted
    uncounted_calls: int
    bytes: int
    time_s: float
    peak_flops_per_s: float | None  # the roof of the group's dominant dtype (by FLOPs)
    bandwidth_bytes_per_s: float | None


def group_rows(key: str, rows: Iterable[Row]) -> Group:
    rows = list(rows)
    counted = [r for r in rows if r.flops is not None]
    dominant = max(counted or rows, key=lambda r: (r.flops or 0, r.time_s), default=None)
    return Group(
        key=key,
        calls=sum(r.calls for r in rows),
        flops=sum(r.flops for r in counted) if counted else None,  # type: ignore[misc]
        uncounted_calls=sum(r.calls for r in rows if r.flops is None),
        bytes=sum(r.bytes for r in counted),
        time_s=math.fsum(r.time_s for r in rows),
        peak_flops_per_s=dominant.peak_flops_per_s if dominant else None,
        bandwidth_bytes_per_s=dominant.bandwidth_bytes_per_s if dominant else None,
    )


@dataclass(frozen=True)
class Report:
    """The analysis of the active steps of one profiled run (one rank)."""

    rows: tuple[Row, ...]
    device: DeviceSpec | None = None  # the roofline the rows are placed on
    steps: tuple[int, ...] = ()  # indices of the recorded (active) steps
    wall_time_s: float = 0.0  # wall time of the recorded steps, profiler overhead included
    incomplete: bool = False  # the profiled block ended by an exception
    bytes_per_element: int | None = None  # set by rescore(); None = the real element sizes
    measured_on: str = ""  # name of the device the times were measured on
    tf32: tuple[str, ...] = ()  # op families that ran on TF32 tensor cores ("matmul", "conv")
    rank: int = 0
    world_size: int = 1
    torch_version: str = ""
    created_unix_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=True)
    # collectives on the interconnect roof (runs under torch.distributed; memwall_plugin/comm.py)
    comm: Communication | None = None

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

    @property
    def memory_bound_time_fraction(self) -> float:
        """Share of measured time spent in memory-bound ops (pure data movement included)."""
        total = self.total_time_s
        if total <= 0:
            return 0.0
        return math.fsum(r.time_s for r in self.rows if r.bound == roofline.MEMORY) / total

    @property
    def roofline_time_s(self) -> float | None:
        """Sum over counted ops of max(flops / peak, bytes / bandwidth): the least time the
        roofline allows for the counted work (compare with `counted_time_s`)."""
        times = [r.roofline_time_s for r in self.rows if r.flops is not None]
        if any(t is None for t in times):
            return None
        return math.fsum(t for t in times if t is not None)

    @property
    def counted_time_s(self) -> float:
        return math.fsum(r.time_s for r in self.rows if r.flops is not None)

    def totals(self) -> Group:
        """The whole report as one roofline point (a step, or the recorded window)."""
        return group_rows("total", self.rows)

    def group_by(self, by: str) -> tuple[Group, ...]:
        """Roll rows up by "op", "module" (exact path), "module_tree" (every ancestor path too)
        or "phase"; longest time first."""
        buckets: dict[str, list[Row]] = {}
        for r in self.rows:
            if by == "op":
                keys = [r.op]
            elif by == "module":
                keys = [r.module]
            elif by == "module_tree":
                parts = r.module.split(".") if r.module else []
                keys = [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]
            elif by == "phase":
                keys = [r.phase]
            else:
                raise ValueError(f"group_by takes 'op', 'module', 'module_tree' or 'phase', not {by!r}")
            for k in keys:
                buckets.setdefault(k, []).append(r)
        groups = [group_rows(k, rows) for k, rows in buckets.items()]
        return tuple(sorted(groups, key=lambda g: (-g.time_s, g.key)))

    def filter(
        self,
        *,
        phase: str | None = None,
        module_prefix: str | None = None,
        op: str | None = None,
        bound: str | None = None,
    ) -> tuple[Row, ...]:
        """Rows of one phase, under one module path (a dotted prefix), of one op or bound."""
        if phase is not None and phase not in PHASES and phase not in {r.phase for r in self.rows}:
            raise ValueError(f"unknown phase {phase!r}; expected one of {', '.join(PHASES)} or a label "
                             "used with prof.phase()")
        if bound is not None and bound not in roofline.BOUNDS:
            raise ValueError(f"unknown bound {bound!r}; expected one of {', '.join(roofline.BOUNDS)}")
        out = []
        for r in self.rows:
            if phase is not None and r.phase != phase:
                continue
            if op is not None and r.op != op:
                continue
            if module_prefix is not None and not _under(r.module, module_prefix):
                continue
            if bound is not None and r.bound != bound:
                continue
            out.append(r)
        return tuple(out)

    # -- what-if -------------------------------------------------------------------------------
    def rescore(
        self, bytes_per_element: int | None = None, device: str | DeviceSpec | None = None
    ) -> Report:
        """A new report re-scored without re-running the model: every tensor re-sized to
        `bytes_per_element` (the paper's 8-bit accounting is 1) and/or every row placed on
        another `device` ("H100 SXM", or a DeviceSpec). FLOPs and measured times are unchanged;
        `bound_changes(original)` on the result lists the ops that changed side."""
        rows = self.rows
        changes: dict[str, Any] = {}
        if bytes_per_element is not None:
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
                for r in rows
            )
            changes["bytes_per_element"] = bytes_per_element
        if device is not None:
            spec = lookup_device(device) if isinstance(device, str) else device
            if not isinstance(spec, DeviceSpec):
                raise TypeError(f"device must be a name like 'H100 SXM' or a DeviceSpec, got {device!r}")
            # TF32 is a property of the run's settings; on a new device it applies if it has TF32
            rows = place_rows(rows, spec, self.tf32)
            changes["device"] = spec
        if self.comm is not None:
            comm = self.comm.resized(bytes_per_element) if bytes_per_element is not None else self.comm
            changes["comm"] = relink(comm, changes["device"], self.world_size) if device is not None else comm
        return dataclasses.replace(self, rows=rows, **changes)

    def bound_changes(self, other: Report) -> tuple[tuple[Row, Row], ...]:
        """Pairs (row here, same row in `other`) whose bound differs: the ops that change side
        of the ridge between two scorings of one run (e.g. `rep` and `rep.rescore(...)`)."""
        if len(other.rows) != len(self.rows):
            raise ValueError("bound_changes compares two scorings of the same run (same rows)")
        return tuple((a, b) for a, b in zip(self.rows, other.rows) if a.bound != b.bound)

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        meta = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("rows", "device", "comm")
        }
        meta["steps"] = list(self.steps)
        meta["tf32"] = list(self.tf32)
        out = {
            "format": "memwall-report",
            "schema_version": SCHEMA_VERSION,
            "meta": meta,
            "device": None if self.device is None else self.device.to_dict(),
            "rows": [{name: getattr(r, name) for name in _ROW_FIELDS} for r in self.rows],
        }
        if self.comm is not None:  # optional: reports without it (and older ones) stay version 1
            out["comm"] = self.comm.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "report") -> Report:
        """A report from its JSON object; every field is checked (types, ranges, unknown or
        missing fields), so anything that is not a report memwall wrote is a ReportError."""
        if not isinstance(data, dict) or data.get("format") != "memwall-report":
            raise ReportError(f"{source} is not a memwall report (no 'format': 'memwall-report')")
        version = data.get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            raise ReportError(
                f"{source} has schema_version {version!r}; this memwall reads version "
                f"{SCHEMA_VERSION}. Upgrade memwall-plugin, or re-profile with this version."
            )
        meta, rows = data.get("meta"), data.get("rows")
        if not isinstance(meta, dict) or not isinstance(rows, list):
            raise ReportError(f"{source} lacks its 'meta' object or 'rows' list")
        unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
        if unknown:
            raise ReportError(f"{source} has an unknown top-level field {unknown[0][:60]!r}; "
                              "was it written by a newer memwall?")
        try:
            row_fields = dataclass_fields(Row)
            parsed = tuple(Row(**check_object(f"rows[{i}]", r, row_fields)) for i, r in enumerate(rows))
            kwargs = check_object("meta", meta, dataclass_fields(cls, ("rows", "device", "comm")))
            device = data.get("device")
            spec = None if device is None else DeviceSpec.from_dict(check_device("device", device))
            comm = data.get("comm")
            kwargs["comm"] = None if comm is None else Communication.from_dict(comm)
            return cls(rows=parsed, device=spec, **kwargs)
        except FieldError as exc:
            raise invalid(source, exc) from None
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
            raise ReportError(f"{source} has a malformed field: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically: a reader, or a process that crashes meanwhile,
        sees the old file or the new one, never half of one.

        There is no fsync, as in TensorBoard's event writers and torch.profiler's traces: after a
        training step the disk flush stalled the caller ~12 ms here (5% of a BERT-Base forward),
        and it only guards against a power failure in the seconds after the save."""
        target = Path(path)
        data = json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode()  # ASCII
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            try:
                view = memoryview(data)
                while view:  # a full disk fails here (ENOSPC), before the name is taken
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def __str__(self) -> str:
        from memwall_plugin.console import format_summary

        return format_summary(self)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from memwall_plugin.console import Summary

        yield Summary(self)

    def _repr_html_(self) -> str:
        """Jupyter shows the summary."""
        from memwall_plugin.console import summary_html

        return summary_html(self)


def _under(module: str, prefix: str) -> bool:
    prefix = prefix.rstrip(".")
    return not prefix or module == prefix or module.startswith(prefix + ".")


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read a report saved by `Report.save` (or by `memwall.profile(logdir=...)`). Anything else
    (truncated, corrupt, too large, a newer schema, hostile values) raises ReportError."""
    source = str(path)
    return parse_report(read_report_bytes(path, source), source)


def parse_report(raw: bytes, source: str = "report") -> Report:
    """A report from the bytes of its file (`source` names it in errors)."""
    return Report.from_dict(parse_json(raw, source), source)


def merge_reports(reports: Iterable[Report]) -> Report:
    """Several windows of one run (one rank) as one report: identical rows are summed."""
    reports = list(reports)
    if not reports:
        raise ValueError("no reports to merge")
    if len({r.rank for r in reports}) > 1:
        raise ValueError("merge_reports combines the windows of one rank; these come from several ranks")
    if len(reports) == 1:
        return reports[0]
    merged: dict[tuple[Any, ...], Row] = {}
    for rep in reports:
        for r in rep.rows:
            key = (r.op, r.overload, r.module, r.phase, r.dtype, r.shapes)
            mine = merged.get(key)
            if mine is None:
                merged[key] = r
                continue
            merged[key] = dataclasses.replace(
                mine,
                calls=mine.calls + r.calls,
                flops=None if mine.flops is None or r.flops is None else mine.flops + r.flops,
                bytes_read=mine.bytes_read + r.bytes_read,
                bytes_written=mine.bytes_written + r.bytes_written,
                elements_read=mine.elements_read + r.elements_read,
                elements_written=mine.elements_written + r.elements_written,
                time_s=mine.time_s + r.time_s,
            )
    rows = sorted(merged.values(), key=lambda r: (-r.time_s, r.op, r.module, r.phase, r.shapes))
    last = max(reports, key=lambda r: r.created_unix_s)
    comms = [r.comm for r in sorted(reports, key=lambda r: r.created_unix_s) if r.comm is not None]
    return dataclasses.replace(
        last,
        comm=merge_communication(comms) if comms else None,
        rows=tuple(rows),
        steps=tuple(sorted({s for r in reports for s in r.steps})),
        wall_time_s=math.fsum(r.wall_time_s for r in reports),
        incomplete=any(r.incomplete for r in reports),
    )


def module_tree(report: Report) -> tuple[dict[str, Group], dict[str, float], dict[str, float]]:
    """Every module path and its ancestors rolled up, with the forward-side (everything but
    backward) and backward time under each path; recomputation runs in backward."""
    groups = {g.key: g for g in report.group_by("module_tree")}
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    for r in report.rows:
        side = backward if r.phase in (BACKWARD, RECOMPUTE) else forward
        parts = r.module.split(".") if r.module else []
        for key in [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]:
            side[key] = side.get(key, 0.0) + r.time_s
    return groups, forward, backward
