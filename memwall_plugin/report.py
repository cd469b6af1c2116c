"""The report of a profiled run (one rank): its rows and what the run was, as one frozen record.

Rows carry totals over all calls of their signature (`rows.py`): `rows` the aten ops, on the
device's roofline; `collectives` the torch.distributed collectives, under the link's roof. Bytes
are kept both as bytes (at the real element sizes) and as element counts, so `rescore` can
re-size every tensor without the model. The file format is `reportfile.py`; the summary that
`str(report)` prints is `console.py`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwall_plugin import reportfile, roofline, whatif
from memwall_plugin.ceilings import Link, place_rows
from memwall_plugin.devices import DeviceSpec
from memwall_plugin.files import write_bytes_atomically
from memwall_plugin.memory import MemoryReport, merge_memory
from memwall_plugin.records import (
    CHANNELS_LAST_KEY,
    COMPILE_WALL_KEY,
    OTHER_THREADS_KEY,
    OWN_TIME_KEY,
    PHASES,
    SCALER_SKIPPED_KEY,
    SETUP,
    SETUP_WALL_KEY,
    UNCACHED_KEY,
)
from memwall_plugin.rows import (
    Folded,
    Group,
    Row,
    fold_shapes,
    group_by,
    group_rows,
    merge_rows,
    projected_time_s,
    speedup,
)
from memwall_plugin.validation import ReportError, parse_json, read_report_bytes

SCHEMA_VERSION = reportfile.SCHEMA_VERSION
#: `extra` keys of a run whose steps the run itself ended (memwall run: at each optimizer step):
#: the op time and wall time after the last step's end, in the rows and the wall time, no step
TAIL_OP_TIME_S = "tail_op_time_s"
TAIL_WALL_TIME_S = "tail_wall_time_s"

#: the most step points a report keeps: past it, neighbouring steps are condensed in pairs, so a
#: 10,000-step run keeps a few hundred points that still cover every recorded step
MAX_STEP_TOTALS = 512

__all__ = ["MAX_STEP_TOTALS", "SCHEMA_VERSION", "TAIL_OP_TIME_S", "TAIL_WALL_TIME_S", "Group", "Report", "ReportError",
           "Row", "StepTotals", "condense_steps", "load_report", "merge_reports", "parse_report"]


@dataclass(frozen=True, slots=True)
class StepTotals:
    """A recorded step's totals, one roofline point: its counted ops' FLOPs over their bytes, at
    their measured time. Past `MAX_STEP_TOTALS` steps, one point holds several neighbouring steps
    (`step_count` of them, numbered first_step..last_step)."""

    first_step: int
    last_step: int
    flops: int  # of the counted ops (those with a FLOP formula)
    bytes: int  # moved by the counted ops
    time_s: float  # measured time in every op of the step
    counted_time_s: float  # of it, in the counted ops
    wall_time_s: float  # the step's wall time, profiler overhead included
    step_count: int = 1

    def __add__(self, other: StepTotals) -> StepTotals:
        return StepTotals(min(self.first_step, other.first_step), max(self.last_step, other.last_step),
                          self.flops + other.flops, self.bytes + other.bytes, self.time_s + other.time_s,
                          self.counted_time_s + other.counted_time_s, self.wall_time_s + other.wall_time_s,
                          self.step_count + other.step_count)


def condense_steps(steps: Iterable[StepTotals], limit: int = MAX_STEP_TOTALS) -> tuple[StepTotals, ...]:
    """Steps in order of their numbers, neighbours summed in pairs until at most `limit` remain."""
    out = sorted(steps, key=lambda s: (s.first_step, s.last_step))
    while len(out) > max(limit, 1):
        out = [out[i] + out[i + 1] if i + 1 < len(out) else out[i] for i in range(0, len(out), 2)]
    return tuple(out)


@dataclass(frozen=True)
class Report:
    """The analysis of the active steps of one profiled run (one rank)."""

    rows: tuple[Row, ...]
    device: DeviceSpec | None = None  # the roofline the rows are placed on
    steps: tuple[int, ...] = ()  # indices of the recorded (active) steps
    wall_time_s: float = 0.0  # wall time of the recorded steps, profiler overhead included
    incomplete: bool = False  # the profiled block ended by an exception
    bytes_per_element: int | None = None  # set by rescore(); None = the real element sizes
    #: set by rescore(dtype=...): the dtype every floating-point op is computed in; None = as run
    compute_dtype: str | None = None
    measured_on: str = ""  # name of the device the times were measured on
    tf32: tuple[str, ...] = ()  # op families that ran on TF32 tensor cores ("matmul", "conv")
    rank: int = 0
    world_size: int = 1
    torch_version: str = ""
    created_unix_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=True)
    #: the run this window belongs to: the same for every window and rank of one job (one
    #: `memwall.profile` block, one torchrun launch), different for the next run in the logdir
    job: str = ""
    # -- torch.distributed (memwall_plugin/comm.py): collectives on the link's roof --------------
    collectives: tuple[Row, ...] = ()
    link: Link | None = None  # None: not a distributed run. On several nodes: the link inside a node
    #: the network between nodes, for a job on several nodes (local_world_size < world_size); None
    #: on one node, and in reports written before memwall split the levels
    inter_link: Link | None = None
    backend: str = ""  # "gloo", "nccl", ...
    local_world_size: int | None = None  # ranks on this host
    # where this rank ran (the launcher's environment at profile time): its host, and torchrun's
    # LOCAL_RANK and GROUP_RANK (the node's index); "" / None in reports written before memwall
    # recorded them, or without a launcher that says
    hostname: str = ""
    local_rank: int | None = None
    group_rank: int | None = None
    # Host wall time with at least one collective in flight, summed over the recorded steps
    # (None when no collective could be timed: CUDA collectives complete on the device).
    comm_time_s: float | None = None
    # Of comm_time_s, the time this rank's main thread spent inside ops (and memwall's
    # bookkeeping of them) meanwhile: communication hidden behind other work. CPU timing only.
    overlapped_s: float | None = None
    # -- capacity (memwall_plugin/memory.py): what held memory, the peak, the what-ifs ---------
    memory: MemoryReport | None = None
    #: each recorded step's totals, in step order (condensed past MAX_STEP_TOTALS); empty in a
    #: report written before memwall kept them, and for a trace analysed after the fact
    step_totals: tuple[StepTotals, ...] = ()
    #: set by rescore(world_size=...): the scale the collectives are projected to; None = as run
    what_if_world_size: int | None = None

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
    def work_rows(self) -> tuple[Row, ...]:
        """The rows the shares and findings are about: all but set-up (weight init, data made
        before the first forward), unless the report holds nothing else (a set-up phase alone)."""
        work = tuple(r for r in self.rows if r.phase != SETUP)
        return work if work else self.rows

    @property
    def setup_time_s(self) -> float:
        """Measured time in set-up ops (phase "setup"): in the totals, not in the shares."""
        return math.fsum(r.time_s for r in self.rows if r.phase == SETUP)

    @property
    def tail_op_time_s(self) -> float | None:
        """Op time after the last step the run itself ended (memwall run: the last optimizer
        step); those ops are in the rows and no step. None when there was no such tail."""
        value = self.extra.get(TAIL_OP_TIME_S)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def coverage(self) -> float:
        """Share of measured time spent in counted ops (1.0 when nothing was timed); set-up left
        out (`work_rows`)."""
        rows = self.work_rows
        total = math.fsum(r.time_s for r in rows)
        if total <= 0:
            return 1.0 if all(r.flops is not None for r in rows) else 0.0
        return math.fsum(r.time_s for r in rows if r.flops is not None) / total

    @property
    def memory_bound_time_fraction(self) -> float:
        """Share of measured time spent in memory-bound ops (pure data movement included); set-up
        left out (`work_rows`)."""
        rows = self.work_rows
        total = math.fsum(r.time_s for r in rows)
        if total <= 0:
            return 0.0
        return math.fsum(r.time_s for r in rows if r.bound == roofline.MEMORY) / total

    @property
    def measured_elsewhere(self) -> bool:
        """A what-if on another device: the rows are placed on `device`, their times were measured
        on `measured_on`, so time against this device's roofs says nothing."""
        return bool(self.measured_on) and self.device is not None and self.measured_on != self.device.name

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

    # -- a what-if's projection (whatif.py) ------------------------------------------------------
    @property
    def projected_time_s(self) -> float | None:
        """A what-if's projected time for the counted ops on its device: each row's roofline time
        there, at least the launch floor per call (`Row.projected_time_s`), summed. A roofline
        bound, not a measurement; None for a report as measured."""
        return projected_time_s(self.rows)

    @property
    def speedup(self) -> float | None:
        """`counted_time_s` (measured) over `projected_time_s`: how many times faster the what-if
        projects the counted ops to run (uncounted ops are in neither)."""
        return speedup(self.counted_time_s, self.projected_time_s)

    @property
    def projected_memory_bound_fraction(self) -> float | None:
        """Share of the projected time that memory-bound ops spend at the bandwidth roof of the
        what-if's device: a row's time above its roofline time is the launch floor's
        (`launch_floor_fraction`), so the two shares and the compute-bound one add up to the whole."""
        total = self.projected_time_s
        if not total:
            return None
        return math.fsum(min(r.projected_time_s or 0.0, r.roofline_time_s or 0.0) for r in self.rows
                         if r.flops is not None and r.bound == roofline.MEMORY) / total

    @property
    def launch_floor_fraction(self) -> float | None:
        """Share of the projected time that is the launch floor, not the roofline: where a row's
        kernels are shorter than launching them takes (`roofline.GPU_LAUNCH_FLOOR_S`)."""
        total = self.projected_time_s
        if not total:
            return None
        return math.fsum(max(0.0, (r.projected_time_s or 0.0) - (r.roofline_time_s or 0.0))
                         for r in self.rows if r.flops is not None) / total

    def totals(self) -> Group:
        """The whole report as one roofline point (a step, or the recorded window)."""
        return group_rows("total", self.rows)

    def folded(self) -> tuple[Folded, ...]:
        """The rows as the views show them by default: one per (op, module, phase, dtype), its
        input-shape variants summed (`Folded.row`) and kept (`Folded.variants`); longest first."""
        return fold_shapes(self.rows)

    def group_by(self, by: str) -> tuple[Group, ...]:
        """Roll rows up by "op", "module" (exact path), "module_tree" (every ancestor path too)
        or "phase"; longest time first."""
        return group_by(self.rows, by)

    # -- communication -------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        """A rank of a torch.distributed run (its collectives are recorded)."""
        return self.link is not None

    @property
    def message_bytes(self) -> int:
        return sum(r.collective.message_bytes for r in self.collectives if r.collective is not None)

    @property
    def bytes_moved(self) -> int:
        """Bytes this rank sent in collectives, by the bandwidth-optimal algorithm."""
        return sum(r.bytes for r in self.collectives)

    @property
    def exposed_s(self) -> float | None:
        """Time with a collective in flight and nothing else running on the main thread."""
        if self.comm_time_s is None or self.overlapped_s is None:
            return None
        return max(0.0, self.comm_time_s - self.overlapped_s)

    @property
    def overlap_fraction(self) -> float | None:
        if self.comm_time_s is None or self.overlapped_s is None or self.comm_time_s <= 0:
            return None
        return min(1.0, self.overlapped_s / self.comm_time_s)

    @property
    def comm_share(self) -> float | None:
        """Share of the wall time with a collective in flight."""
        if self.comm_time_s is None or self.wall_time_s <= 0:
            return None
        return min(1.0, self.comm_time_s / self.wall_time_s)

    @property
    def ranks_per_node(self) -> int:
        """Ranks on each node (torchrun's LOCAL_WORLD_SIZE; all on one without a launcher)."""
        return max(1, min(self.local_world_size or self.world_size, self.world_size))

    @property
    def nodes(self) -> int:
        """Nodes the job ran on: its ranks over the ranks per node."""
        return max(1, -(-self.world_size // self.ranks_per_node))

    @property
    def intra_bytes(self) -> int | None:
        """Bytes this rank sent inside its node (None: a report from before the split)."""
        values = [r.collective.intra_bytes for r in self.collectives if r.collective is not None]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def inter_bytes(self) -> int | None:
        """Bytes this rank sent over the network between nodes (None: a report from before the split)."""
        values = [r.collective.inter_bytes for r in self.collectives if r.collective is not None]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    @property
    def comm_projection(self) -> whatif.CommProjection | None:
        """A communication what-if's projection (`rescore(world_size=..., link=...)`): each
        collective's time on the new links at the new scale, which become exposed, and the
        projected step time. None for a report whose collectives are as measured."""
        return whatif.comm_projection(self)

    @property
    def untimed_calls(self) -> int:
        return sum(r.calls - r.collective.timed_calls for r in self.collectives if r.collective is not None)

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
        self, bytes_per_element: int | None = None, device: str | DeviceSpec | None = None,
        dtype: str | None = None, *, world_size: int | None = None, link: Any = None,
    ) -> Report:
        """A new report re-scored without re-running the model: every tensor re-sized to
        `bytes_per_element` (the paper's 8-bit accounting is 1), every floating-point op computed
        in `dtype` ("bf16": under its peak, its tensors at its 2 bytes unless `bytes_per_element`
        says otherwise) and/or every row placed on another `device` ("H100 SXM", or a
        DeviceSpec). FLOPs and measured times are unchanged;
        each op row gets its projected time there (`Row.projected_time_s`; the report's
        `projected_time_s` and `speedup`); `bound_changes(original)` on the result lists the ops
        that changed side.

        Communication (a torch.distributed rank): `world_size` projects every collective over the
        whole job to that many ranks (the same ranks per node; a smaller group keeps its size) and
        `link` places them on other links: a number or "bandwidth=..." (every level), or per
        level {"intra": bytes/s, "inter": bytes/s} / "intra=...,inter=..." (a level left out keeps
        the report's). Each collective's bytes follow its algorithm at the new scale (intra- and
        inter-node parts, comm.py) and its `projected_time_s` is its algorithmic bus time there;
        `comm_projection` says which become exposed and the projected step time."""
        changes = whatif.rescored(self, bytes_per_element, device, dtype)
        if world_size is not None or link is not None:
            changes.update(whatif.comm_rescored(dataclasses.replace(self, **changes), world_size, link))
        return dataclasses.replace(self, **changes)

    def bound_changes(self, other: Report) -> tuple[tuple[Row, Row], ...]:
        """Pairs (row here, same row in `other`) whose bound differs: the ops that change side
        of the ridge between two scorings of one run (e.g. `rep` and `rep.rescore(...)`)."""
        return whatif.bound_changes(self.rows, other.rows)

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return reportfile.encode(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "report") -> Report:
        """A report from its JSON object; every field is checked (types, ranges, unknown or
        missing fields), so anything that is not a report memwall wrote is a ReportError."""
        return reportfile.decode(cls, data, source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report as JSON, atomically (`files.py`)."""
        data = json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode()  # ASCII
        return write_bytes_atomically(path, data)

    # -- rendering (console.py draws; it reads the report, it does not import this module) ------
    def __str__(self) -> str:
        from memwall_plugin.console import format_summary

        return format_summary(self)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from memwall_plugin.console import Summary

        yield Summary(self)

    def __repr__(self) -> str:
        """One line: what the report holds (a notebook's text/plain, saved in the notebook, and the
        Python prompt's echo), not its every row; the summary is `print(report)`."""
        from memwall_plugin.console import report_repr

        return report_repr(self)

    def _repr_html_(self) -> str:
        """Jupyter shows the summary, as the one a profile prints at its end there."""
        from memwall_plugin.console import Summary, notebook_html

        return notebook_html(Summary(self))


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
    try:
        return Report.from_dict(parse_json(raw, source), source)
    except ReportError:
        parse_json(raw, source, strict=True)  # a parser's error (a 50-digit count, 1e400) says more
        raise


def _total(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else math.fsum(v for v in values if v is not None)


def merge_reports(reports: Iterable[Report]) -> Report:
    """Several windows of one run (one rank of one job) as one report: rows of one signature
    summed (ops and collectives alike), times added."""
    reports = sorted(reports, key=lambda r: r.created_unix_s)
    if not reports:
        raise ValueError("no reports to merge")
    if len({r.rank for r in reports}) > 1:
        raise ValueError("merge_reports combines the windows of one rank; these come from several ranks")
    if len({r.job for r in reports}) > 1:
        raise ValueError("merge_reports combines the windows of one job; these come from several jobs "
                         "(runs written into one logdir): pick one job")
    if len(reports) == 1:
        return reports[0]
    last = reports[-1]
    distributed = [r for r in reports if r.distributed]
    rows = merge_rows(*(r.rows for r in reports))
    if last.device is not None:  # where the merged rows' data lived, over every window
        rows = place_rows(rows, last.device, last.tf32)
        if any(r.projected_time_s is not None for r in rows):  # saved what-ifs: projected as now placed
            rows = whatif.projected(rows, last.device)
    return dataclasses.replace(
        last,
        rows=rows,
        collectives=merge_rows(*(r.collectives for r in reports)),
        steps=tuple(sorted({s for r in reports for s in r.steps})),
        wall_time_s=math.fsum(r.wall_time_s for r in reports),
        incomplete=any(r.incomplete for r in reports),
        link=distributed[-1].link if distributed else None,
        inter_link=distributed[-1].inter_link if distributed else None,
        comm_time_s=_total(r.comm_time_s for r in distributed) if distributed else None,
        overlapped_s=_total(r.overlapped_s for r in distributed) if distributed else None,
        memory=merge_memory([r.memory for r in reports]),
        step_totals=condense_steps(s for r in reports for s in r.step_totals),
        extra=merge_extra(reports),
    )


#: `Report.extra` figures of a window that add up over windows (seconds)
_SUMMED_EXTRA = (OWN_TIME_KEY, SETUP_WALL_KEY, COMPILE_WALL_KEY)


def merge_extra(reports: list[Report]) -> dict[str, Any]:
    """The `extra` of several windows of one run: the last window's, with what each window
    measured of its own steps summed or joined (memwall's own time, set-up and compile wall
    time, skipped steps, generation without a cache, calls on other threads), and the
    convolutions' channels_last share weighted by each window's convolution time."""
    out = dict(reports[-1].extra)
    for key in _SUMMED_EXTRA:
        values = [r.extra[key] for r in reports if _number(r.extra.get(key))]
        if values:
            out[key] = math.fsum(values)
    skipped = sorted({s for r in reports for s in r.extra.get(SCALER_SKIPPED_KEY) or () if isinstance(s, int)})
    if skipped:
        out[SCALER_SKIPPED_KEY] = skipped
    uncached = [u for r in reports for u in r.extra.get(UNCACHED_KEY) or ()]
    if uncached:
        out[UNCACHED_KEY] = uncached
    threads: dict[str, int] = {}
    for r in reports:
        found = r.extra.get(OTHER_THREADS_KEY)
        for name, calls in (found.items() if isinstance(found, dict) else ()):
            if _number(calls):
                threads[name] = threads.get(name, 0) + int(calls)
    if threads:
        out[OTHER_THREADS_KEY] = threads
    shares = [(r.extra[CHANNELS_LAST_KEY], _convolution_time(r)) for r in reports
              if _number(r.extra.get(CHANNELS_LAST_KEY))]
    if shares:
        weight = math.fsum(w for _, w in shares)
        out[CHANNELS_LAST_KEY] = (math.fsum(v * w for v, w in shares) / weight if weight
                                  else math.fsum(v for v, _ in shares) / len(shares))
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _convolution_time(report: Report) -> float:
    return math.fsum(r.time_s for r in report.rows if "convolution" in r.op)
