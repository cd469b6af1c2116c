"""What-ifs: a report re-scored without re-running the model.

Every tensor re-sized to another element size (the paper's 8-bit accounting), every floating-point
op computed in another dtype (under its peak, its tensors at its size), every row placed on
another device's roofs (its link too, for ranks on one host). FLOPs and measured times stay as
measured; the changes come back as report fields, which `Report.rescore` applies.

A what-if also projects each op row's time on its device (`Row.projected_time_s`): the roofline
time there (its dtype's peak, the roof of the memory level its data came from), at least the
device's launch floor per call (`roofline.launch_floor_s`). A projection is a roofline bound, not
a measurement: no kernel reaches its roof. A report as measured has none.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwall_plugin import comm, roofline
from memwall_plugin.ceilings import INTER, INTRA, Link, parse_links, place_collectives, place_rows, relink
from memwall_plugin.devices import USER, DeviceSpec, Figure, lookup_device
from memwall_plugin.rows import Row

if TYPE_CHECKING:  # a report is read here, never built: report.py calls this module
    from memwall_plugin.report import Report


def resized(rows: tuple[Row, ...], bytes_per_element: int) -> tuple[Row, ...]:
    """Rows with every tensor (every collective's message) at `bytes_per_element` per element.
    A compiled region's eager counterfactual is dropped: it keeps bytes, not elements."""
    if isinstance(bytes_per_element, bool) or not isinstance(bytes_per_element, int) or bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be a positive int (1 for 8-bit, 2 for 16-bit), "
                         f"got {bytes_per_element!r}")
    return tuple(
        comm.resized(r, bytes_per_element) if r.collective is not None else dataclasses.replace(
            r, bytes_read=r.elements_read * bytes_per_element, bytes_written=r.elements_written * bytes_per_element,
            eager_ops=())
        for r in rows
    )


#: The dtypes a what-if can compute in: name -> (torch dtype name, bytes per element). A what-if
#: dtype is where the run's floating-point ops would compute and store ("in bf16"): their rows go
#: under that dtype's peak, and every tensor takes its element size unless `bytes_per_element` says.
DTYPES = {
    "fp64": ("float64", 8), "float64": ("float64", 8),
    "fp32": ("float32", 4), "float32": ("float32", 4),
    "bf16": ("bfloat16", 2), "bfloat16": ("bfloat16", 2),
    "fp16": ("float16", 2), "float16": ("float16", 2), "half": ("float16", 2),
    "fp8": ("float8_e4m3fn", 1), "float8_e4m3fn": ("float8_e4m3fn", 1),
}
#: row dtypes that a dtype what-if changes: the real floating-point ones (complex and integer
#: arithmetic, and bool, stay as they ran)
FLOATING = frozenset({"float64", "float32", "bfloat16", "float16", "half", "float8_e4m3fn", "float8_e5m2",
                      "float8_e4m3fnuz", "float8_e5m2fnuz"})


def dtype_of(dtype: str) -> tuple[str, int]:
    """A what-if dtype ("bf16", "bfloat16", "torch.float16", ...) -> (torch dtype name, bytes per element)."""
    found = DTYPES.get(str(dtype).removeprefix("torch.").lower()) if isinstance(dtype, str) else None
    if found is None:
        names = ", ".join(k for k in DTYPES if not k.startswith(("float", "half")))
        raise ValueError(f"dtype must be one of {names} (or torch's name for one), got {dtype!r}")
    return found


def computed_in(rows: tuple[Row, ...], dtype: str) -> tuple[Row, ...]:
    """Op rows with their floating-point ops computed in `dtype` (a torch dtype name)."""
    return tuple(dataclasses.replace(r, dtype=dtype) if r.collective is None and r.dtype in FLOATING else r
                 for r in rows)


def device_of(device: str | DeviceSpec) -> DeviceSpec:
    spec = lookup_device(device) if isinstance(device, str) else device
    if not isinstance(spec, DeviceSpec):
        raise TypeError(f"device must be a name like 'H100 SXM' or a DeviceSpec, got {device!r}")
    return spec


def projected(rows: tuple[Row, ...], device: DeviceSpec | None) -> tuple[Row, ...]:
    """Op rows with their projected time on `device`, the one they are placed on (None: rows as
    measured, no projection). Collectives are not projected: their time is the link's and the
    overlap with compute, which a roofline does not say."""
    floor = roofline.launch_floor_s(device.kind) if device is not None else 0.0
    return tuple(
        dataclasses.replace(r, projected_time_s=None if device is None or r.collective is not None else
                            roofline.projected_time_s(r.flops, r.bytes, r.peak_flops_per_s,
                                                      r.bandwidth_bytes_per_s, r.calls, floor))
        for r in rows
    )


def rescored(report: Report, bytes_per_element: int | None = None,
             device: str | DeviceSpec | None = None, dtype: str | None = None) -> dict[str, Any]:
    """The fields of `report` that change under the what-if, its rows projected on the device
    (none when the what-if leaves the run as measured: the device it ran on, its dtypes and
    element sizes)."""
    changes: dict[str, Any] = {}
    rows, collectives = report.rows, report.collectives
    if dtype is not None:
        name, size = dtype_of(dtype)
        rows = computed_in(rows, name)
        changes.update(rows=rows, compute_dtype=name)
        bytes_per_element = size if bytes_per_element is None else bytes_per_element
    if bytes_per_element is not None:
        rows, collectives = resized(rows, bytes_per_element), resized(collectives, bytes_per_element)
        changes.update(rows=rows, collectives=collectives, bytes_per_element=bytes_per_element)
    if device is None and dtype is not None:
        device = report.device  # placed again: each row under its new dtype's peak
    if device is not None:
        spec = device_of(device)
        # TF32 is a property of the run's settings; on a new device it applies if it has TF32
        changes.update(rows=place_rows(rows, spec, report.tf32), device=spec)
        if report.link is not None:
            # several nodes: the link inside a node moves to the new device's; the network stays
            world = report.world_size if report.inter_link is None else report.ranks_per_node
            link = relink(report.link, spec, world, report.local_world_size)
            changes.update(link=link, collectives=place_collectives(collectives, link, report.inter_link))
    if changes:
        target: DeviceSpec | None = changes.get("device", report.device)
        as_measured = changes.get("bytes_per_element", report.bytes_per_element) is None and changes.get(
            "compute_dtype", report.compute_dtype) is None and (target is None or target.name == report.measured_on)
        changes["rows"] = projected(changes.get("rows", report.rows), None if as_measured else target)
    return changes


def bound_changes(before: tuple[Row, ...], after: tuple[Row, ...]) -> tuple[tuple[Row, Row], ...]:
    """Pairs (row before, the same row after) whose bound differs: the ops that change side of
    the ridge between two scorings of one run."""
    if len(before) != len(after):
        raise ValueError("bound_changes compares two scorings of the same run (same rows)")
    return tuple((a, b) for a, b in zip(before, after) if a.bound != b.bound)


# --- communication: another scale, other links ----------------------------------------------------


def what_if_links(report: Report, link: Any, nodes: int) -> tuple[Link | None, Link | None]:
    """The links of a communication what-if: the levels `link` sets (`parse_links`), the report's
    for the others; a job that grows onto several nodes gets an unknown network until one is
    given."""
    intra, inter = report.link, report.inter_link
    given = parse_links(link) if link is not None else {}
    if INTRA in given:
        bandwidth, name = given[INTRA]
        intra = Link(name or (intra.name if intra is not None else "link"), Figure(bandwidth, USER),
                     "what-if: rescore(link=...)")
    if INTER in given and nodes > 1:
        bandwidth, name = given[INTER]
        inter = Link(name or (inter.name if inter is not None else "network between nodes"), Figure(bandwidth, USER),
                     "what-if: rescore(link=...)")
    if nodes <= 1:
        inter = None
    elif inter is None:
        inter = Link("network between nodes", None, "unknown: give it with rescore(link={'inter': ...})")
    return intra, inter


def project_collective(row: Row, measured_world: int, world_size: int, ranks_per_node: int,
                       intra_bytes_per_s: float | None, inter_bytes_per_s: float | None) -> Row:
    """A collective row at `world_size` ranks (`ranks_per_node` on each node): a group of the
    whole job grows with it (a smaller one keeps its size), its message stays what the model
    gives (a gather's and a scatter's grows with the group), its bytes and their split follow the
    algorithm (comm.py), and `projected_time_s` is its algorithmic bus time on the links,
    every call: intra/B_intra + inter/B_inter."""
    c = row.collective
    assert c is not None
    group = world_size if c.group_size == measured_world else c.group_size
    calls = row.calls or 1
    message = c.message_bytes // calls
    elements = c.message_elements
    if c.kind in (comm.GATHER, comm.SCATTER) and c.group_size:
        message = message * group // c.group_size
        elements = elements * group // c.group_size
    intra, inter = comm.split_bytes(c.kind, message, group, ranks_per_node)
    moved = comm.bytes_moved(c.kind, message, group)
    projected = comm.Collective(
        kind=c.kind, group_size=group, timed_calls=c.timed_calls, message_bytes=message * row.calls,
        message_elements=elements, bytes_moved=moved * row.calls, intra_bytes=intra * row.calls,
        inter_bytes=inter * row.calls, overlapped_s=c.overlapped_s)
    took = comm.level_time_s(intra * row.calls, inter * row.calls, intra_bytes_per_s, inter_bytes_per_s)
    return dataclasses.replace(row, collective=projected, projected_time_s=took, peak_flops_per_s=None,
                               bandwidth_bytes_per_s=comm.roof_bytes_per_s(projected, intra_bytes_per_s,
                                                                           inter_bytes_per_s))


def comm_rescored(report: Report, world_size: int | None, link: Any) -> dict[str, Any]:
    """The fields a communication what-if changes: the links, and every collective projected
    (`project_collective`) at `world_size` ranks (None: as run) with the job's ranks per node."""
    if world_size is not None and (isinstance(world_size, bool) or not isinstance(world_size, int)
                                   or world_size < 1):
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if report.link is None:
        raise ValueError("a communication what-if (world_size=, link=) needs a torch.distributed rank's report: "
                         "this one recorded no collectives")
    world = report.world_size if world_size is None else world_size
    per_node = min(report.ranks_per_node, world)
    nodes = -(-world // per_node)
    intra, inter = what_if_links(report, link, nodes)
    intra_bw = intra.bytes_per_s if intra is not None else None
    inter_bw = inter.bytes_per_s if inter is not None else None
    rows = tuple(project_collective(r, report.world_size, world, per_node, intra_bw, inter_bw)
                 for r in report.collectives)
    return {"collectives": rows, "link": intra, "inter_link": inter, "what_if_world_size": world}


@dataclass(frozen=True)
class ProjectedCollective:
    """One collective in a communication what-if: its projected time against the compute it
    overlapped as measured; exposed where the projection outlasts it."""

    index: int  # in the report's collectives
    kind: str
    phase: str
    projected_time_s: float | None  # None: a level without a known bandwidth
    overlap_s: float | None  # the busy time it overlapped, as measured (None: not timed)
    measured_time_s: float

    @property
    def exposed_s(self) -> float | None:
        """The projected time not hidden behind the compute it overlapped."""
        if self.projected_time_s is None:
            return None
        return max(0.0, self.projected_time_s - (self.overlap_s or 0.0))

    @property
    def exposed(self) -> bool:
        """Longer than the compute it overlapped."""
        exposed = self.exposed_s
        return exposed is not None and exposed > 0.0

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "kind": self.kind, "phase": self.phase,
                "projected_time_s": self.projected_time_s, "overlap_s": self.overlap_s,
                "measured_time_s": self.measured_time_s, "exposed_s": self.exposed_s, "exposed": self.exposed}


@dataclass(frozen=True)
class CommProjection:
    """A communication what-if on a report: each collective projected, and the step time with
    the measured exposed communication replaced by the projected exposed time."""

    world_size: int
    ranks_per_node: int
    collectives: tuple[ProjectedCollective, ...]
    steps: int
    measured_step_s: float  # wall time per recorded step
    measured_exposed_s: float | None  # per step, as measured (None: not timed on the host)

    @property
    def nodes(self) -> int:
        return -(-self.world_size // self.ranks_per_node)

    @property
    def comm_time_s(self) -> float | None:
        """Projected time of every collective per step, back to back (None: a level unknown)."""
        times = [c.projected_time_s for c in self.collectives]
        return None if any(t is None for t in times) else math.fsum(t for t in times if t is not None) / self.steps

    @property
    def exposed_s(self) -> float | None:
        """Projected exposed communication per step."""
        times = [c.exposed_s for c in self.collectives]
        return None if any(t is None for t in times) else math.fsum(t for t in times if t is not None) / self.steps

    @property
    def exposed_collectives(self) -> tuple[ProjectedCollective, ...]:
        """The collectives longer than the compute they overlapped, longest exposure first."""
        return tuple(sorted((c for c in self.collectives if c.exposed), key=lambda c: -(c.exposed_s or 0.0)))

    @property
    def step_time_s(self) -> float | None:
        """Projected step time: the measured step, its exposed communication replaced by the
        projected exposed time (None: a level's bandwidth unknown)."""
        exposed = self.exposed_s
        if exposed is None:
            return None
        return max(0.0, self.measured_step_s - (self.measured_exposed_s or 0.0)) + exposed

    def record(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "ranks_per_node": self.ranks_per_node, "nodes": self.nodes,
                "steps": self.steps, "measured_step_s": self.measured_step_s,
                "measured_exposed_s": self.measured_exposed_s, "comm_time_s": self.comm_time_s,
                "exposed_s": self.exposed_s, "step_time_s": self.step_time_s,
                "exposed": [c.index for c in self.exposed_collectives],
                "collectives": [c.record() for c in self.collectives]}


def comm_projection(report: Report) -> CommProjection | None:
    """The projection of a communication what-if (None: the collectives are as measured). Each
    collective's overlap is its own, as measured (`Collective.overlapped_s`, its timed calls'
    scaled to all); reports from before it was recorded share the rank's overlapped time out by
    each collective's measured time."""
    rows = report.collectives
    if not rows or all(r.projected_time_s is None for r in rows) and report.what_if_world_size is None:
        return None
    total = math.fsum(r.time_s for r in rows)
    out = []
    for i, r in enumerate(rows):
        c = r.collective
        assert c is not None
        if c.overlapped_s is not None and c.timed_calls:
            overlap: float | None = c.overlapped_s * r.calls / c.timed_calls
        elif report.overlapped_s is not None and total > 0:
            overlap = report.overlapped_s * r.time_s / total
        else:
            overlap = None
        out.append(ProjectedCollective(i, c.kind, r.phase, r.projected_time_s, overlap, r.time_s))
    steps = max(1, len(report.steps))
    return CommProjection(report.what_if_world_size or report.world_size, report.ranks_per_node
                          if report.what_if_world_size is None else min(report.ranks_per_node,
                                                                        report.what_if_world_size),
                          tuple(out), steps, report.wall_time_s / steps,
                          None if report.exposed_s is None else report.exposed_s / steps)
