"""From captured entries to report rows: apply the formulas once per signature, times its calls.

Entries differ by module and phase, but their counts depend only on the op and its argument
signature: the twelve layers of a BERT share ~40 signatures among ~430 entries. Each distinct
signature is analysed once (`Analysis`, memoised in an `AnalysisCache`), and the default,
frozen registry keeps one cache per process, so a profile opened again in the same process (a
notebook cell re-run, a repeating schedule) does not analyse what it has already seen.
"""

from __future__ import annotations

import dataclasses
import operator
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from memwall_plugin.hooks.capture import CaptureEntry
from memwall_plugin.records import EagerOp, OpCall, RegionFacts
from memwall_plugin.registry import Counted, Registry, default_traffic
from memwall_plugin.rows import ROW_FIELDS, Row, merged

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


def count_safely(registry: Registry, call: OpCall, warned: set[str] | None = None) -> Counted:
    """Count one call; a formula that fails makes the op uncounted, with a warning (once per op
    when `warned` collects the ops already warned about)."""
    try:
        return registry.count(call)
    except Exception as exc:  # a formula bug must not lose the rest of the report
        if warned is not None:
            if f"{call.op}.{call.overload}" in warned:
                return Counted(None, default_traffic(call))
            warned.add(f"{call.op}.{call.overload}")
        warnings.warn(
            f"memwall: the formula for {call.op}.{call.overload} failed ({exc!r}); "
            "reporting it as uncounted",
            RuntimeWarning,
            stacklevel=2,
        )
        return Counted(None, default_traffic(call))


#: From this many signatures on, building a report shows a progress bar (on a terminal).
PROGRESS_FROM = 5000


@dataclass(frozen=True, slots=True)
class Analysis:
    """What one call signature counts to, per call."""

    call: OpCall
    counted: Counted
    dtype: str
    shapes: str
    # per-call traffic totals, summed once
    bytes_read: int
    bytes_written: int
    elements_read: int
    elements_written: int
    func: Any = None  # the overload analysed (the memo is keyed by its id)
    #: a compiled region's eager counterfactual per call (Row.eager_ops); () for any other op
    eager_ops: tuple[tuple[str, int, int | None, int], ...] = ()

    @property
    def ignored(self) -> bool:
        return self.call.op.startswith(_IGNORED_NAMESPACES)


class AnalysisCache:
    """Analyses by call signature, for one registry; bounded (cleared when full)."""

    def __init__(self, registry: Registry, limit: int = 200_000) -> None:
        self.registry = registry
        self.limit = limit
        self._by_key: dict[Any, Analysis] = {}
        self._warned: set[str] = set()  # ops whose formula failed: one warning each
        #: bumped by clear(): an analysis an entry remembers from before is not used again
        self._generation = 0

    def __len__(self) -> int:
        return len(self._by_key)

    def clear(self) -> None:
        self._by_key.clear()
        self._generation += 1

    def analyse(self, entry: CaptureEntry) -> Analysis:
        """The analysis of an entry's signature, computed now (not memoised)."""
        call = entry.call
        counted = count_safely(self.registry, call, self._warned)
        t = counted.traffic
        return Analysis(call, counted, op_dtype(call), call.shapes(), t.bytes_read, t.bytes_written,
                        t.elements_read, t.elements_written, entry.func, self.eager_ops(call))

    def eager_ops(self, call: OpCall) -> tuple[tuple[str, int, int | None, int], ...]:
        """A compiled region's fused ops counted one by one, as eager runs them: (op, calls,
        FLOPs, bytes) per op, by this registry's formulas and traffic model; views and other
        ops that compute and move nothing are left out. () for any other call."""
        facts = call.facts
        if not isinstance(facts, RegionFacts) or not facts.ops:
            return ()
        eager = facts.eager if facts.eager is not None else tuple(EagerOp(op.op, (op,)) for op in facts.ops)
        by_op: dict[str, tuple[int, int | None, int]] = {}
        for one in eager:
            op_flops: int | None = 0
            for part in one.parts:
                counted = count_safely(self.registry, part, self._warned)
                op_flops = None if op_flops is None or counted.flops is None else op_flops + counted.flops
            traffic = counted.traffic if one.traffic is None else one.traffic
            nbytes = traffic.bytes_read + traffic.bytes_written
            if op_flops == 0 and nbytes == 0:
                continue
            calls, flops, total = by_op.get(one.op, (0, 0, 0))
            by_op[one.op] = (calls + 1, None if flops is None or op_flops is None else flops + op_flops,
                             total + nbytes)
        return tuple((op, *counts) for op, counts in by_op.items())

    def of(self, entry: CaptureEntry) -> Analysis:
        # the entry remembers its analysis by this cache (a report build asks for each entry's
        # several times: rows, step totals, memory): hashing its signature again cost more than
        # the lookup itself
        remembered = entry.analysed
        if remembered is not None and remembered[0] is self and remembered[1] == self._generation:
            return remembered[2]
        # id(func): an OpOverload hashes in Python; the identity check below guards against a
        # freed overload's id being reused
        key = (id(entry.func), entry.arg_key, entry.kw_key, entry.out_key, entry.device)
        found = self._by_key.get(key)
        if found is None or found.func is not entry.func:
            found = self.analyse(entry)
            if len(self._by_key) >= self.limit:
                self.clear()
            self._by_key[key] = found
        else:
            entry.adopt_call(found.call)
        entry.analysed = (self, self._generation, found)
        return found

    def totals(self, entry: CaptureEntry) -> EntryTotals | None:
        """What an entry adds up to over all its calls; None for markers that compute nothing."""
        bucket = entry.bucket
        if bucket is not None:
            if bucket.op.startswith(_IGNORED_NAMESPACES):
                return None
            return EntryTotals(bucket.op, bucket.overload, bucket.dtype, bucket.shapes, bucket.flops,
                               bucket.bytes_read, bucket.bytes_written, bucket.elements_read,
                               bucket.elements_written)
        found = self.of(entry)
        if found.ignored:
            return None
        n = entry.calls
        flops = found.counted.flops
        return EntryTotals(found.call.op, found.call.overload, found.dtype, found.shapes,
                           None if flops is None else flops * n, found.bytes_read * n, found.bytes_written * n,
                           found.elements_read * n, found.elements_written * n)


@dataclass(frozen=True, slots=True)
class EntryTotals:
    """An entry's counts summed over its calls."""

    op: str
    overload: str
    dtype: str
    shapes: str
    flops: int | None
    bytes_read: int
    bytes_written: int
    elements_read: int
    elements_written: int


# rows_from_entries builds Rows positionally
if ROW_FIELDS != ("op", "overload", "module", "phase", "calls", "dtype", "shapes", "flops", "bytes_read",
                  "bytes_written", "elements_read", "elements_written", "time_s", "peak_flops_per_s",
                  "bandwidth_bytes_per_s", "collective", "reuse", "memory_level", "dram_bandwidth_bytes_per_s",
                  "projected_time_s", "kernels", "eager_ops"):
    raise ImportError("memwall: Row's fields changed order; update rows_from_entries to match")


def _row_maker() -> Callable[..., Row]:
    """Row(...) for the report build, ~3x faster: a frozen dataclass's __init__ sets each of
    Row's fields through object.__setattr__; this sets its slots directly. Same fields,
    same order, no checks skipped (Row's __init__ has none). Op rows have no collective."""
    new = object.__new__
    (s_op, s_overload, s_module, s_phase, s_calls, s_dtype, s_shapes, s_flops, s_bytes_read, s_bytes_written,
     s_elements_read, s_elements_written, s_time_s, s_peak, s_bandwidth, s_collective, s_reuse, s_level,
     s_dram, s_projected, s_kernels, s_eager_ops) = (getattr(Row, name).__set__ for name in ROW_FIELDS)

    def make(op: str, overload: str, module: str, phase: str, calls: int, dtype: str, shapes: str,
             flops: int | None, bytes_read: int, bytes_written: int, elements_read: int, elements_written: int,
             time_s: float, peak: float | None, bandwidth: float | None, reuse: tuple[tuple[int, int], ...],
             level: str, dram: float | None, eager_ops: tuple[tuple[str, int, int | None, int], ...],
             kernels: tuple[str, ...] = ()) -> Row:
        row = new(Row)
        s_op(row, op)
        s_overload(row, overload)
        s_module(row, module)
        s_phase(row, phase)
        s_calls(row, calls)
        s_dtype(row, dtype)
        s_shapes(row, shapes)
        s_flops(row, flops)
        s_bytes_read(row, bytes_read)
        s_bytes_written(row, bytes_written)
        s_elements_read(row, elements_read)
        s_elements_written(row, elements_written)
        s_time_s(row, time_s)
        s_peak(row, peak)
        s_bandwidth(row, bandwidth)
        s_collective(row, None)
        s_reuse(row, reuse)
        s_level(row, level)
        s_dram(row, dram)
        s_projected(row, None)  # measured, not a what-if
        s_kernels(row, kernels)  # the device's record of the kernels its calls ran, where there is one
        s_eager_ops(row, eager_ops)
        return row

    sample = ("aten.mm", "default", "a.b", "forward", 3, "float32", "[8,16]", 100, 10, 11, 5, 6, 0.5, 1e9, 2e9)
    tail = (((17, 64), (64, 8)), "L2", 1e9)
    eager = (("aten.mul", 2, 8, 64),)
    if make(*sample, *tail, eager) != Row(*sample, None, *tail, None, (), eager):
        raise ImportError("memwall: Row changed; update analysis._row_maker to match")
    return make


_new_row = _row_maker()

_SHARED: dict[int, AnalysisCache] = {}


def analysis_cache(registry: Registry) -> AnalysisCache:
    """The cache for `registry`: one per process for a frozen registry (its formulas cannot
    change), a fresh one for a registry that can still be edited."""
    if not registry.frozen:
        return AnalysisCache(registry)
    cache = _SHARED.get(id(registry))
    if cache is None or cache.registry is not registry:
        cache = _SHARED[id(registry)] = AnalysisCache(registry)
    return cache


def rows_from_entries(
    entries: Iterable[CaptureEntry], registry: Registry, ceilings: Callable[[str, str], tuple[Any, Any]] | None = None,
    cache: AnalysisCache | None = None, memory_roof: Callable[[tuple[tuple[int, int], ...]], Any] | None = None,
) -> tuple[Row, ...]:
    """One row per (op, overload, module, phase, dtype, shapes), totals over the calls of its
    entries (entries of one row differ in what rows do not show: strides, arguments), sorted by
    measured time (longest first). `ceilings(op, dtype)` gives the peak FLOP/s a row is placed under (and main memory's
    bandwidth), `memory_roof(reuse)` the memory level its data came from (ceilings.memory_roof_of);
    `cache` memoises the analysis of each signature (default: `analysis_cache(registry)`)."""
    if cache is None or cache.registry is not registry:
        cache = analysis_cache(registry)
    placed: dict[tuple[str, str], tuple[Any, Any]] = {}
    rows: list[Row] = []
    at: dict[tuple[str, str, str, str, str, str], int] = {}  # a row's key -> its index in rows
    entries = list(entries)
    if len(entries) >= PROGRESS_FROM and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import track

        entries = track(entries, description="memwall: analysing", transient=True,  # type: ignore[assignment]
                        console=Console(stderr=True))
    of = cache.of
    new_row = _new_row  # positional, in _ROW_FIELDS order: this loop runs once per entry
    for e in entries:
        if e.bucket is None:
            found = of(e)
            call = found.call
            op = call.op
            if op.startswith(_IGNORED_NAMESPACES):
                continue
            n = e.calls
            flops = found.counted.flops
            overload, dtype, shapes = call.overload, found.dtype, found.shapes
            flops = None if flops is None else flops * n
            bytes_read, bytes_written = found.bytes_read * n, found.bytes_written * n
            elements_read, elements_written = found.elements_read * n, found.elements_written * n
            eager_ops = found.eager_ops
            if eager_ops and n != 1:
                eager_ops = tuple((o, c * n, None if f is None else f * n, b * n) for o, c, f, b in eager_ops)
        else:
            totals = cache.totals(e)
            if totals is None:
                continue
            n = e.calls
            op, overload, dtype, shapes, flops = totals.op, totals.overload, totals.dtype, totals.shapes, totals.flops
            bytes_read, bytes_written = totals.bytes_read, totals.bytes_written
            elements_read, elements_written = totals.elements_read, totals.elements_written
            eager_ops = ()  # past the signature cap a region's calls are summed, not its ops
        if ceilings is None:
            peak, bandwidth = None, None
        else:
            ceiling = placed.get((op, dtype))
            if ceiling is None:
                ceiling = placed[(op, dtype)] = ceilings(op, dtype)
            peak, bandwidth = ceiling
        reuse = tuple(sorted(e.reuse.items())) if e.reuse else ()
        level, dram = "", bandwidth
        if memory_roof is not None:
            level, bandwidth, dram = memory_roof(reuse)
        row = new_row(op, overload, e.module, e.phase, n, dtype, shapes, flops, bytes_read, bytes_written,
                      elements_read, elements_written, e.time_ns * 1e-9, peak, bandwidth, reuse, level, dram,
                      eager_ops, () if e.kernels is None else tuple(e.kernels))
        key = (op, overload, e.module, e.phase, dtype, shapes)
        i = at.get(key)
        if i is None:
            at[key] = len(rows)
            rows.append(row)
            continue
        row = merged(rows[i], row)
        if memory_roof is not None and row.reuse:  # where the data of both came from
            level, bandwidth, dram = memory_roof(row.reuse)
            row = dataclasses.replace(row, memory_level=level, bandwidth_bytes_per_s=bandwidth,
                                      dram_bandwidth_bytes_per_s=dram)
        rows[i] = row
    return tuple(by_time(rows))


def by_time(rows: list[Row]) -> list[Row]:
    """`rows` longest first, ties by (op, module, phase, shapes), sorted in place. Comparing
    the string keys of every row cost more than the rest of the sort: they are compared only
    within runs of equal times (rows with no time, repeats of one op)."""
    rows.sort(key=_time_order, reverse=True)  # stable: ties keep their order until sorted below
    times = list(map(_time_order, rows))
    start, n = 0, len(rows)
    while start < n:
        end = start + 1
        while end < n and times[end] == times[start]:
            end += 1
        if end - start > 1:
            rows[start:end] = sorted(rows[start:end], key=_tie_order)
        start = end
    return rows


_tie_order = operator.attrgetter("op", "module", "phase", "shapes")
_time_order = operator.attrgetter("time_s")
