"""The row: everything memwall measures, placed under one roof.

An aten op is a row under its dtype's compute roof and the roof of the memory level its data was
served from (a cache when it was touched recently enough, else main memory); a collective is a row
under the link's roof (its `bound` is "communication") and carries what only collectives have in
a small nested `Collective` record. Rows of any kind are merged, grouped, checked, projected to
JSON and sorted by the functions here, so ops and collectives cannot drift apart.

Pure: no files, no devices, no rendering. `report.py` aggregates rows into a run's report.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwall_plugin import roofline
from memwall_plugin.devices import CACHE_LEVELS
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.records import BACKWARD, GRAD_SCALER, OPTIMIZER, OTHER, RECOMPUTE, SETUP


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
class Collective:
    """What only a collective row has (memwall_plugin/comm.py says how each figure is derived):
    its kind, the group it ran over, its message and the bytes this rank sent by the
    bandwidth-optimal algorithm. Totals over the row's calls; `timed_calls` of them were seen
    to complete (the row's time covers those)."""

    kind: str  # "all_reduce", "all_gather", ...
    group_size: int
    timed_calls: int
    message_bytes: int
    message_elements: int
    bytes_moved: int
    # Of the bytes this rank sent, those over the link inside its node and those over the network
    # between nodes, by the collective's algorithm across nodes (comm.level_factors); None in
    # reports written before memwall split them.
    intra_bytes: int | None = None
    inter_bytes: int | None = None
    # Busy time on this rank's main thread while its calls were in flight (their own overlap with
    # other work, summed over the timed calls); None where no call was timed on the host.
    overlapped_s: float | None = None


@dataclass(frozen=True, slots=True)
class Row(RooflinePoint):
    """All calls of one signature (op, module, phase, input shapes and dtypes), placed under a roof.

    An op's bytes are its memory traffic, under `bandwidth_bytes_per_s` (memory) and
    `peak_flops_per_s` (its dtype's compute roof). A collective's bytes are those it sent over
    the link, `bandwidth_bytes_per_s` is the link's (per direction), it has no compute roof and
    no FLOP count (`flops` None: its reductions are not counted), and `collective` is set."""

    op: str  # "aten.addmm", "c10d.allreduce_"
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
    # the ceilings this row is placed under (its dtype's peak on the report's device; the memory
    # level its data came from, memwall_plugin/ceilings.py; a link)
    peak_flops_per_s: float | None = None
    bandwidth_bytes_per_s: float | None = None
    collective: Collective | None = None
    #: bytes its calls touched by reuse bucket (records.reuse_bucket; records.COLD: main memory):
    #: where its data lived, whatever device it is placed on
    reuse: tuple[tuple[int, int], ...] = ()
    #: the memory level it is placed under ("L2", "DRAM", "HBM"): the level that takes most of its
    #: roofline time; "" = none (a collective, no device)
    memory_level: str = ""
    #: main memory's bandwidth, the paper's roof: every byte a compulsory DRAM transfer
    dram_bandwidth_bytes_per_s: float | None = None
    #: a what-if's projection (whatif.py): the least time its calls take on the what-if's device,
    #: the roofline time there but at least the device's launch floor per call
    #: (roofline.projected_time_s); None for a report as measured, an uncounted op, a collective
    projected_time_s: float | None = None
    #: the device kernels its calls ran (a GPU trace's, `memwall analyze`), in the order first
    #: seen: whether a tensor-core GEMM ran; () where none were recorded
    kernels: tuple[str, ...] = ()
    #: a compiled region's eager counterfactual (hooks/compiled.py): the aten ops Inductor fused
    #: into it, each as (op, calls, FLOPs, bytes) counted by the same registry as if run eagerly,
    #: every op reading its inputs from memory and writing its output there; totals over the
    #: row's calls, views left out; () for any other row (or a region whose ops were not sized)
    eager_ops: tuple[tuple[str, int, int | None, int], ...] = ()

    @property
    def bytes(self) -> int:
        c = self.collective
        return self.bytes_read + self.bytes_written if c is None else c.bytes_moved

    @property
    def counted(self) -> bool:
        return self.flops is not None

    @property
    def in_cache(self) -> bool:
        """Whether its data was served from a cache level, not main memory."""
        return self.memory_level in CACHE_LEVELS and self.collective is None

    # -- under main memory's roof (the paper's: every byte moved to or from DRAM) -------------------
    @property
    def dram_efficiency(self) -> float | None:
        if self.collective is not None:
            return None
        return roofline.efficiency(self.flops, self.bytes_read + self.bytes_written, self.time_s,
                                   self.peak_flops_per_s, self.dram_bandwidth_bytes_per_s)

    @property
    def dram_roofline_time_s(self) -> float | None:
        if self.collective is not None:
            return None
        return roofline.roofline_time_s(self.flops, self.bytes_read + self.bytes_written,
                                        self.peak_flops_per_s, self.dram_bandwidth_bytes_per_s)

    @property
    def name(self) -> str:
        """op.overload ("aten.add.Tensor"); the op alone where the overload is unknown (a trace's)."""
        return f"{self.op}.{self.overload}" if self.overload else self.op

    @property
    def speedup(self) -> float | None:
        """Measured time over a what-if's projected time (None as measured, or uncounted)."""
        return speedup(self.time_s, self.projected_time_s) if self.flops is not None else None

    # -- a compiled region's eager counterfactual ---------------------------------------------------
    @property
    def eager_calls(self) -> int | None:
        """The aten op calls its region's calls stand for (None: not a sized compiled region)."""
        return sum(calls for _, calls, _, _ in self.eager_ops) if self.eager_ops else None

    @property
    def eager_flops(self) -> int | None:
        """Its fused ops' FLOPs counted one by one: the row's own, by the same formulas (None
        where one has no formula); a compiled run's FLOPs differ from an eager run's only where
        its graph differs (decompositions, recomputation), not by fusing."""
        if not self.eager_ops or any(f is None for _, _, f, _ in self.eager_ops):
            return None
        return sum(f for _, _, f, _ in self.eager_ops if f is not None)

    @property
    def eager_bytes(self) -> int | None:
        """The bytes its fused ops would move run eagerly, one by one (None: not a sized region)."""
        return sum(b for _, _, _, b in self.eager_ops) if self.eager_ops else None

    @property
    def fusion_saved_bytes(self) -> int | None:
        """Eager bytes less the bytes the region moved: the traffic compiling removed."""
        eager = self.eager_bytes
        return None if eager is None else eager - self.bytes

    @property
    def eager_dram_roofline_time_s(self) -> float | None:
        """The least time its fused ops would take run eagerly, one by one, on this row's roofs
        (its compute peak, main memory's bandwidth: an eager op's result goes out to memory and
        comes back for the next): the same projection as `dram_roofline_time_s`, op by op. None
        where an op has no FLOP formula or the row has no roof."""
        if not self.eager_ops or self.peak_flops_per_s is None:
            return None
        return _sum_or_none(roofline.roofline_time_s(f, b, self.peak_flops_per_s, self.dram_bandwidth_bytes_per_s)
                            for _, _, f, b in self.eager_ops)

    # -- under the link's roof ---------------------------------------------------------------------
    @property
    def bound(self) -> str:
        if self.collective is not None:
            return roofline.COMMUNICATION
        return roofline.bound(self.flops, self.bytes_read + self.bytes_written, self.peak_flops_per_s,
                              self.bandwidth_bytes_per_s)

    @property
    def timed_bytes(self) -> int:
        """Bytes of the calls the measured time covers (all of an op's; a collective's timed ones)."""
        c = self.collective
        if c is None:
            return self.bytes
        return c.bytes_moved * c.timed_calls // self.calls if self.calls else 0

    @property
    def achieved_bytes_per_s(self) -> float | None:
        """Bytes per second: an op's memory traffic, a collective's bus bandwidth."""
        c = self.collective
        if c is None:
            return self.bytes / self.time_s if self.time_s > 0 else None
        if not c.timed_calls or self.time_s <= 0 or not c.bytes_moved:
            return None
        return self.timed_bytes / self.time_s

    @property
    def bus_bandwidth_bytes_per_s(self) -> float | None:
        """A collective's achieved bus bandwidth: bytes sent / measured time (timed calls only)."""
        return None if self.collective is None else self.achieved_bytes_per_s

    @property
    def algorithm_bandwidth_bytes_per_s(self) -> float | None:
        """A collective's message bytes / measured time (nccl-tests' algbw)."""
        c = self.collective
        if c is None or not c.timed_calls or self.time_s <= 0 or not c.message_bytes:
            return None
        return c.message_bytes * c.timed_calls / self.calls / self.time_s

    @property
    def efficiency(self) -> float | None:
        if self.collective is None:
            return roofline.efficiency(self.flops, self.bytes_read + self.bytes_written, self.time_s,
                                       self.peak_flops_per_s, self.bandwidth_bytes_per_s)
        bus = self.achieved_bytes_per_s
        return bus / self.bandwidth_bytes_per_s if bus is not None and self.bandwidth_bytes_per_s else None

    @property
    def roofline_time_s(self) -> float | None:
        c = self.collective
        if c is None:
            return roofline.roofline_time_s(self.flops, self.bytes_read + self.bytes_written,
                                            self.peak_flops_per_s, self.bandwidth_bytes_per_s)
        if not c.bytes_moved:
            return 0.0
        return c.bytes_moved / self.bandwidth_bytes_per_s if self.bandwidth_bytes_per_s else None


#: Row's fields, in order (the report file's row object, the positional row maker in analysis.py)
ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Row))
#: what identifies a row: two rows with these equal are the same signature (merged by summing)
_KEY_FIELDS = ("op", "overload", "module", "phase", "dtype", "shapes")
_COLLECTIVE_KEY = ("kind", "group_size")
#: the roof a row is under: kept as is when merging (merged rows of ops are placed again,
#: memwall_plugin/ceilings.place_rows, when where their data lived changed)
_ROOF_FIELDS = ("peak_flops_per_s", "bandwidth_bytes_per_s", "memory_level", "dram_bandwidth_bytes_per_s")

#: The projection of a row for JSON (`memwall report --json`, CSV, the tab): its fields and the
#: roofline figures derived from them. Collective rows add `COLLECTIVE_COLUMNS`.
ROW_COLUMNS = (
    "op", "overload", "module", "phase", "calls", "dtype", "shapes", "flops", "bytes_read",
    "bytes_written", "bytes", "time_s", "intensity", "bound", "peak_flops_per_s",
    "bandwidth_bytes_per_s", "attainable_flops_per_s", "achieved_flops_per_s", "achieved_bytes_per_s",
    "efficiency", "roofline_time_s", "memory_level", "in_cache", "dram_bandwidth_bytes_per_s",
    "dram_efficiency", "dram_roofline_time_s", "projected_time_s", "kernels", "family",
)
COLLECTIVE_COLUMNS = (
    "kind", "group_size", "timed_calls", "message_bytes", "message_bytes_per_call", "bytes_moved",
    "bus_bandwidth_bytes_per_s", "algorithm_bandwidth_bytes_per_s", "link_bytes_per_s",
    "intra_bytes", "inter_bytes", "overlapped_s",
)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def row_record(r: Row) -> dict[str, Any]:
    """A row as JSON-ready data (non-finite figures as None): the one projection the CLI's
    --json and --csv and the tab use, with the op's family from the registry. A collective's
    record adds its collective figures."""
    out = {name: _finite(getattr(r, name)) for name in ROW_COLUMNS[:-1]}
    out["kernels"] = list(r.kernels)
    out["family"] = REGISTRY.family(r.op, r.overload)  # registry metadata: matmul, norm, communication...
    if r.eager_ops:  # a compiled region's: what its fused ops would cost run eagerly
        out.update(eager_calls=r.eager_calls, eager_flops=r.eager_flops, eager_bytes=r.eager_bytes,
                   fusion_saved_bytes=r.fusion_saved_bytes, dram_roofline_time_s=_finite(r.dram_roofline_time_s),
                   eager_dram_roofline_time_s=_finite(r.eager_dram_roofline_time_s),
                   eager_ops=[{"op": op, "calls": n, "flops": f, "bytes": b} for op, n, f, b in r.eager_ops])
    c = r.collective
    if c is not None:
        out.update(
            kind=c.kind, group_size=c.group_size, timed_calls=c.timed_calls, message_bytes=c.message_bytes,
            message_bytes_per_call=c.message_bytes // r.calls if r.calls else 0, bytes_moved=c.bytes_moved,
            bus_bandwidth_bytes_per_s=_finite(r.bus_bandwidth_bytes_per_s),
            algorithm_bandwidth_bytes_per_s=_finite(r.algorithm_bandwidth_bytes_per_s),
            link_bytes_per_s=r.bandwidth_bytes_per_s,
            intra_bytes=c.intra_bytes, inter_bytes=c.inter_bytes, overlapped_s=c.overlapped_s,
        )
    return out


def row_key(r: Row) -> tuple[Any, ...]:
    c = r.collective
    key = tuple(getattr(r, f) for f in _KEY_FIELDS)
    return key if c is None else key + tuple(getattr(c, f) for f in _COLLECTIVE_KEY)


def _add(a: Any, b: Any) -> Any:
    """One field of two rows of one signature summed: counts and times add, an unknown (None)
    count stays unknown."""
    if a is None or b is None:
        return None
    return a + b


def merge_reuse(*parts: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Reuse histograms (bucket, bytes) summed bucket by bucket."""
    total: dict[int, int] = {}
    for part in parts:
        for bucket, nbytes in part:
            total[bucket] = total.get(bucket, 0) + nbytes
    return tuple(sorted(total.items()))


def merge_eager_ops(*parts: Iterable[tuple[str, int, int | None, int]]) -> tuple[tuple[str, int, int | None, int], ...]:
    """Eager counterfactuals (op, calls, FLOPs, bytes) summed op by op, in the order first seen."""
    total: dict[str, tuple[int, int | None, int]] = {}
    for part in parts:
        for op, calls, flops, nbytes in part:
            mine = total.get(op)
            total[op] = (calls, flops, nbytes) if mine is None else (
                mine[0] + calls, _add(mine[1], flops), mine[2] + nbytes)
    return tuple((op, *counts) for op, counts in total.items())


def _sum_record(a: Any, b: Any, keep: tuple[str, ...]) -> Any:
    changes = {}
    for f in dataclasses.fields(a):
        if f.name in keep:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            changes[f.name] = _sum_record(x, y, _COLLECTIVE_KEY)
        elif f.name == "reuse":
            changes[f.name] = merge_reuse(x, y)
        elif f.name == "kernels":  # the names either ran, each once
            changes[f.name] = tuple(dict.fromkeys(x + y))
        elif f.name == "eager_ops":
            changes[f.name] = merge_eager_ops(x, y)
        else:
            changes[f.name] = _add(x, y)
    return dataclasses.replace(a, **changes)


def merged(a: Row, b: Row) -> Row:
    """Two rows of one key (`row_key`) as one: every numeric field of Row and of its nested
    record summed, `a`'s roofs kept."""
    return _sum_record(a, b, _KEY_FIELDS + _ROOF_FIELDS)  # type: ignore[no-any-return]


def merge_rows(*parts: Iterable[Row]) -> tuple[Row, ...]:
    """Rows of several windows (or steps) as one table: rows of one signature summed field by
    field (every numeric field of Row and of its nested record; roofs kept), sorted."""
    rows_by_key: dict[tuple[Any, ...], Row] = {}
    for rows in parts:
        for r in rows:
            key = row_key(r)
            mine = rows_by_key.get(key)
            rows_by_key[key] = r if mine is None else merged(mine, r)
    return sort_rows(rows_by_key.values())


@dataclass(frozen=True, slots=True)
class Folded:
    """An (op, module, phase, dtype) row: the calls of every input shape it ran with summed into
    `row` (its `shapes` says how many), each shape's own row in `variants`, longest first."""

    row: Row
    variants: tuple[Row, ...]


#: what identifies a folded row: a row's signature less its input shapes
_FOLD_FIELDS = ("op", "overload", "module", "phase", "dtype")


def _fold_key(r: Row) -> tuple[Any, ...]:
    c = r.collective
    key = tuple(getattr(r, f) for f in _FOLD_FIELDS)
    return key if c is None else key + tuple(getattr(c, f) for f in _COLLECTIVE_KEY)


def shapes_summary(variants: tuple[Row, ...]) -> str:
    """What a folded row shows for its shapes: the one shape, or how many and the longest's."""
    if len(variants) == 1:
        return variants[0].shapes
    return f"{len(variants)} shapes, longest {variants[0].shapes}"


def _fold(variants: tuple[Row, ...]) -> Row:
    """One row of several shape variants: counts, times and reuse summed; placed under the roof
    the variants' bytes flow at together (each variant's own level, blended), at the level that
    takes most of the variants' memory time."""
    first = variants[0]
    if len(variants) == 1:
        return first
    total = first
    for v in variants[1:]:
        total = _sum_record(total, v, _KEY_FIELDS + _ROOF_FIELDS)
    if first.collective is not None:
        return dataclasses.replace(total, shapes=shapes_summary(variants))
    seconds: dict[str, float] = {}
    for v in variants:
        if v.bytes and v.bandwidth_bytes_per_s:
            seconds[v.memory_level] = seconds.get(v.memory_level, 0.0) + v.bytes / v.bandwidth_bytes_per_s
    level = max(seconds, key=lambda k: seconds[k]) if seconds else first.memory_level
    return dataclasses.replace(
        total, shapes=shapes_summary(variants), memory_level=level,
        bandwidth_bytes_per_s=_blended_bandwidth(list(variants), first),
    )


def fold_shapes(rows: Iterable[Row]) -> tuple[Folded, ...]:
    """Rows of one (op, module, phase, dtype) that differ only in their input shapes as one
    row each (the views' default: `memwall report --by shape` and the tab's expandable rows
    show the variants); longest time first."""
    buckets: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        buckets.setdefault(_fold_key(r), []).append(r)
    folded = [Folded(_fold(variants := sort_rows(members)), variants) for members in buckets.values()]
    return tuple(sorted(folded, key=lambda f: _sort_key(f.row)))


def _sort_key(r: Row) -> tuple[Any, ...]:
    c = r.collective
    return (-r.time_s, -(c.message_bytes if c is not None else 0), r.op, r.module, r.phase, r.shapes)


def sort_rows(rows: Iterable[Row]) -> tuple[Row, ...]:
    """Longest time first; ties by the larger message (collectives), then op, module, phase, shapes."""
    return tuple(sorted(rows, key=_sort_key))


# --- groups ------------------------------------------------------------------------------------------


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
    bandwidth_bytes_per_s: float | None  # its rows' memory roofs, each weighted by the bytes it moved
    counted_time_s: float = 0.0  # of time_s, in counted rows
    #: a what-if's projection of its counted rows, summed (`projected_time_s`); None as measured
    projected_time_s: float | None = None

    @property
    def speedup(self) -> float | None:
        """Measured time of the counted rows over their projected time (a what-if's)."""
        return speedup(self.counted_time_s, self.projected_time_s)


def _blended_bandwidth(rows: list[Row], dominant: Row | None) -> float | None:
    """The bandwidth the rows' bytes flow at together: bytes / the seconds each row's bytes
    take under its own memory roof (rows from cache and from DRAM in one phase). The dominant
    row's roof where some row has none."""
    seconds, nbytes = 0.0, 0
    for r in rows:
        if r.bytes:
            if not r.bandwidth_bytes_per_s:
                return dominant.bandwidth_bytes_per_s if dominant else None
            seconds += r.bytes / r.bandwidth_bytes_per_s
            nbytes += r.bytes
    if not seconds:
        return dominant.bandwidth_bytes_per_s if dominant else None
    return nbytes / seconds


def projected_time_s(rows: Iterable[Row]) -> float | None:
    """The projected time of the counted rows (a what-if's): their projections summed; None when
    none is counted or one lacks a projection (a report as measured)."""
    times = [r.projected_time_s for r in rows if r.flops is not None]
    if not times or any(t is None for t in times):
        return None
    return math.fsum(t for t in times if t is not None)


def speedup(measured_s: float, projected_s: float | None) -> float | None:
    """How many times faster the projection is than the measurement (None without one)."""
    return measured_s / projected_s if projected_s and measured_s > 0 else None


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
        bandwidth_bytes_per_s=_blended_bandwidth(counted, dominant),
        counted_time_s=math.fsum(r.time_s for r in counted),
        projected_time_s=projected_time_s(counted),
    )


@dataclass(frozen=True, slots=True)
class FusionSaving:
    """What compiling saved in one module (its compiled regions' rows): the bytes their fused
    ops would move run eagerly one by one against the bytes the regions moved."""

    module: str
    regions: int  # kernel calls (a region observed whole: its calls)
    eager_calls: int  # the aten op calls they stand for
    eager_bytes: int
    bytes: int
    #: the least time main memory's roofline allows the regions (`Row.dram_roofline_time_s`) and
    #: their ops run eagerly (`Row.eager_dram_roofline_time_s`): a projection, None where a row
    #: has none (no roof, an op without a FLOP formula)
    roof_s: float | None = None
    eager_roof_s: float | None = None
    time_s: float = 0.0  # the regions' measured time

    @property
    def roof_saved_fraction(self) -> float | None:
        """Share of the eager ops' least time (on main memory's roofline) that compiling removed."""
        if self.roof_s is None or not self.eager_roof_s:
            return None
        return 1 - self.roof_s / self.eager_roof_s

    @property
    def saved_bytes(self) -> int:
        return self.eager_bytes - self.bytes

    @property
    def saved_fraction(self) -> float | None:
        """Share of the eager traffic that compiling removed (None when eager moved nothing)."""
        return self.saved_bytes / self.eager_bytes if self.eager_bytes else None


def fusion_savings(rows: Iterable[Row]) -> tuple[FusionSaving, ...]:
    """Per module, what compiling saved (rows with an eager counterfactual only); most bytes
    saved first. The run's total is `total_fusion_saving` of them."""
    by_module: dict[str, list[Row]] = {}
    for r in rows:
        if r.eager_ops:
            by_module.setdefault(r.module, []).append(r)
    out = [FusionSaving(module, sum(r.calls for r in members), sum(r.eager_calls or 0 for r in members),
                        sum(r.eager_bytes or 0 for r in members), sum(r.bytes for r in members),
                        _sum_or_none(r.dram_roofline_time_s for r in members),
                        _sum_or_none(r.eager_dram_roofline_time_s for r in members),
                        math.fsum(r.time_s for r in members))
           for module, members in by_module.items()]
    return tuple(sorted(out, key=lambda s: (-s.saved_bytes, s.module)))


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else math.fsum(v for v in values if v is not None)


def total_fusion_saving(savings: Iterable[FusionSaving]) -> FusionSaving | None:
    """The modules' savings as one (module ""); None without any."""
    savings = tuple(savings)
    if not savings:
        return None
    return FusionSaving("", sum(s.regions for s in savings), sum(s.eager_calls for s in savings),
                        sum(s.eager_bytes for s in savings), sum(s.bytes for s in savings),
                        _sum_or_none(s.roof_s for s in savings), _sum_or_none(s.eager_roof_s for s in savings),
                        math.fsum(s.time_s for s in savings))


GROUP_BY = ("op", "module", "module_tree", "phase")


def _module_paths(module: str) -> list[str]:
    """A module path and every ancestor, the top level ("") first."""
    parts = module.split(".") if module else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


def group_by(rows: Iterable[Row], by: str) -> tuple[Group, ...]:
    """Roll rows up by "op", "module" (exact path), "module_tree" (every ancestor path too)
    or "phase"; longest time first."""
    if by not in GROUP_BY:
        raise ValueError(f"group_by takes 'op', 'module', 'module_tree' or 'phase', not {by!r}")
    buckets: dict[str, list[Row]] = {}
    for r in rows:
        if by == "module_tree":
            keys = _module_paths(r.module)
        else:
            keys = [getattr(r, by)]
        for k in keys:
            buckets.setdefault(k, []).append(r)
    groups = [group_rows(k, members) for k, members in buckets.items()]
    return tuple(sorted(groups, key=lambda g: (-g.time_s, g.key)))


#: phases on neither side of a module's forward/backward split
_NEITHER_SIDE = frozenset({OPTIMIZER, GRAD_SCALER, SETUP, OTHER})


def module_tree(rows: Iterable[Row]) -> tuple[dict[str, Group], dict[str, float], dict[str, float]]:
    """Every module path and its ancestors rolled up, with the forward-side and the backward time
    under each path: backward includes recomputation (it runs in backward); forward is the model's
    forward work (training's forward, generation's prefill and decode, a label of the user's). An
    optimizer step, the grad scaler, set-up and work outside any phase are neither: what is left
    of a group's time."""
    rows = tuple(rows)
    groups = {g.key: g for g in group_by(rows, "module_tree")}
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    for r in rows:
        if r.phase in _NEITHER_SIDE:
            continue
        side = backward if r.phase in (BACKWARD, RECOMPUTE) else forward
        for key in _module_paths(r.module):
            side[key] = side.get(key, 0.0) + r.time_s
    return groups, forward, backward


def optimizer_time_s(rows: Iterable[Row]) -> dict[str, float]:
    """The optimizer steps' time under each module path and its ancestors (module_tree's keys):
    of the time on neither side, the part the summary's tree names."""
    out: dict[str, float] = {}
    for r in rows:
        if r.phase == OPTIMIZER:
            for key in _module_paths(r.module):
                out[key] = out.get(key, 0.0) + r.time_s
    return out


def other_time_s(group: Group, forward: dict[str, float], backward: dict[str, float]) -> float:
    """A module_tree group's time on neither side: an optimizer step, the grad scaler, set-up and
    work outside any phase."""
    return max(group.time_s - forward.get(group.key, 0.0) - backward.get(group.key, 0.0), 0.0)
