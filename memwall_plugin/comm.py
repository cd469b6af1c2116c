"""Collectives on the interconnect roof: what each collective moves, and where it sits under the link.

A collective's *message* is the buffer the operation is about, as nccl-tests defines its "size":
the reduced buffer of an all-reduce, the gathered output of an all-gather, the input of a
reduce-scatter. *Bytes moved per rank* follow the bandwidth-optimal (ring) algorithm, the
convention of nccl-tests' bus bandwidth: an all-reduce sends 2(n-1)/n of the message out of each
rank, an all-gather, reduce-scatter or all-to-all (n-1)/n, a broadcast or point-to-point transfer
the whole message. Achieved bus bandwidth = bytes moved / measured time; the roof is the link's
bandwidth per direction; such a row's bound is "communication" (a third kind, beside memory and
compute).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from memwall_plugin.devices import ESTIMATED, SOURCES, USER, DeviceSpec, Figure
from memwall_plugin.records import OpCall, TensorMeta
from memwall_plugin.roofline import COMMUNICATION

if TYPE_CHECKING:
    from memwall_plugin.report import Report

ALL_REDUCE = "all_reduce"
ALL_GATHER = "all_gather"
REDUCE_SCATTER = "reduce_scatter"
ALL_TO_ALL = "all_to_all"
BROADCAST = "broadcast"
REDUCE = "reduce"
GATHER = "gather"
SCATTER = "scatter"
SEND = "send"
RECV = "recv"
BARRIER = "barrier"
KINDS = (ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, ALL_TO_ALL, BROADCAST, REDUCE, GATHER, SCATTER, SEND, RECV,
         BARRIER)


@dataclass(frozen=True, slots=True)
class CollectiveOp:
    """How to read one collective op: its kind, the schema argument that holds its message, and
    whether that argument holds one rank's part only (the message is then n times it)."""

    kind: str
    message_arg: str | None
    per_rank: bool = False


#: Every collective op memwall recognises, by dispatcher name: the c10d ops that ProcessGroup
#: methods (and DDP's C++ reducer, FSDP) go through, and the functional collectives.
COLLECTIVE_OPS: dict[str, CollectiveOp] = {
    "c10d.allreduce_": CollectiveOp(ALL_REDUCE, "tensors"),
    "c10d.allreduce_coalesced_": CollectiveOp(ALL_REDUCE, "tensors"),
    "c10d.allgather_": CollectiveOp(ALL_GATHER, "output_tensors"),
    "c10d._allgather_base_": CollectiveOp(ALL_GATHER, "output_tensor"),
    "c10d.allgather_coalesced_": CollectiveOp(ALL_GATHER, "output_lists"),
    "c10d.allgather_into_tensor_coalesced_": CollectiveOp(ALL_GATHER, "outputs"),
    "c10d.reduce_scatter_": CollectiveOp(REDUCE_SCATTER, "input_tensors"),
    "c10d._reduce_scatter_base_": CollectiveOp(REDUCE_SCATTER, "input_tensor"),
    "c10d.reduce_scatter_tensor_coalesced_": CollectiveOp(REDUCE_SCATTER, "inputs"),
    "c10d.alltoall_": CollectiveOp(ALL_TO_ALL, "input_tensors"),
    "c10d.alltoall_base_": CollectiveOp(ALL_TO_ALL, "input"),
    "c10d.broadcast_": CollectiveOp(BROADCAST, "tensors"),
    "c10d.reduce_": CollectiveOp(REDUCE, "tensors"),
    "c10d.gather_": CollectiveOp(GATHER, "input_tensors", per_rank=True),
    "c10d.scatter_": CollectiveOp(SCATTER, "output_tensors", per_rank=True),
    "c10d.send": CollectiveOp(SEND, "tensors"),
    "c10d.recv_": CollectiveOp(RECV, "tensors"),
    "c10d.recv_any_source_": CollectiveOp(RECV, "tensors"),
    "c10d.barrier": CollectiveOp(BARRIER, None),
    "c10d.monitored_barrier_": CollectiveOp(BARRIER, None),
    "_c10d_functional.all_reduce": CollectiveOp(ALL_REDUCE, "input"),
    "_c10d_functional.all_reduce_": CollectiveOp(ALL_REDUCE, "input"),
    "_c10d_functional.all_reduce_coalesced": CollectiveOp(ALL_REDUCE, "inputs"),
    "_c10d_functional.all_reduce_coalesced_": CollectiveOp(ALL_REDUCE, "inputs"),
    "_c10d_functional.all_gather_into_tensor": CollectiveOp(ALL_GATHER, "input", per_rank=True),
    "_c10d_functional.all_gather_into_tensor_out": CollectiveOp(ALL_GATHER, "input", per_rank=True),
    "_c10d_functional.all_gather_into_tensor_coalesced": CollectiveOp(ALL_GATHER, "inputs", per_rank=True),
    "_c10d_functional.reduce_scatter_tensor": CollectiveOp(REDUCE_SCATTER, "input"),
    "_c10d_functional.reduce_scatter_tensor_out": CollectiveOp(REDUCE_SCATTER, "input"),
    "_c10d_functional.reduce_scatter_tensor_coalesced": CollectiveOp(REDUCE_SCATTER, "inputs"),
    "_c10d_functional.all_to_all_single": CollectiveOp(ALL_TO_ALL, "input"),
    "_c10d_functional.broadcast": CollectiveOp(BROADCAST, "input"),
    "_c10d_functional.broadcast_": CollectiveOp(BROADCAST, "input"),
    "_c10d_functional.isend": CollectiveOp(SEND, "tensor"),
    "_c10d_functional.irecv": CollectiveOp(RECV, "tensor"),
}

#: The functional collectives' completion: the result is ready when this returns.
WAIT_OP = "_c10d_functional.wait_tensor"

ENV_LINK = "MEMWALL_LINK"
#: A loopback TCP transfer copies every byte twice (into the kernel's socket buffer and out of
#: it), each copy reading and writing it: four bytes of memory traffic per byte delivered.
LOOPBACK_TRAFFIC_PER_BYTE = 4


def bus_factor(kind: str, group_size: int) -> Fraction:
    """Bytes each rank sends per byte of message, by the bandwidth-optimal algorithm (nccl-tests'
    bus-bandwidth factor): all-reduce 2(n-1)/n (reduce-scatter then all-gather around a ring),
    all-gather / reduce-scatter / all-to-all / gather / scatter (n-1)/n, broadcast / reduce 1
    (pipelined along a ring), send / recv 1, barrier 0. A group of one moves nothing."""
    if kind not in KINDS:
        raise ValueError(f"unknown collective kind {kind!r}; expected one of {', '.join(KINDS)}")
    if kind in (SEND, RECV):
        return Fraction(1)
    n = group_size
    if kind == BARRIER or n <= 1:
        return Fraction(0)
    if kind == ALL_REDUCE:
        return Fraction(2 * (n - 1), n)
    if kind in (BROADCAST, REDUCE):
        return Fraction(1)
    return Fraction(n - 1, n)


def bytes_moved(kind: str, message_bytes: int, group_size: int) -> int:
    """Bytes one rank sends for one call (whole bytes, rounded down)."""
    return math.floor(message_bytes * bus_factor(kind, group_size))


def _metas(value: Any) -> list[TensorMeta]:
    if isinstance(value, TensorMeta):
        return [value]
    if isinstance(value, tuple):
        return [m for item in value for m in _metas(item)]
    return []


@dataclass(frozen=True, slots=True)
class Message:
    """The message of one call: bytes and elements (all tensors together) and their dtype."""

    kind: str
    nbytes: int
    elements: int
    dtype: str
    shapes: str


def message_of(call: OpCall, group_size: int) -> Message:
    """What one call of a collective is about, from its schema arguments (`COLLECTIVE_OPS`)."""
    spec = COLLECTIVE_OPS.get(call.op)
    if spec is None:
        raise ValueError(f"{call.op} is not a collective memwall knows")
    metas = _metas(call.get(spec.message_arg)) if spec.message_arg else []
    scale = group_size if spec.per_rank else 1
    dtype = metas[0].dtype if metas else ""
    if len(metas) > 2:
        shapes = f"{len(metas)} tensors, first {list(metas[0].shape)}"
    else:
        shapes = " x ".join(str(list(m.shape)) for m in metas)
    return Message(
        kind=spec.kind,
        nbytes=scale * sum(m.nbytes for m in metas),
        elements=scale * sum(m.span for m in metas),
        dtype=dtype,
        shapes=shapes,
    )


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """The interconnect a rank's collectives travel over, and its bandwidth per direction."""

    name: str  # "NVLink 4.0", "PCIe Gen5 x16", "loopback TCP (gloo)", "network"
    bandwidth: Figure | None  # bytes/s per direction; None = unknown (configure it)
    note: str = ""  # how the figure was arrived at

    @property
    def bytes_per_s(self) -> float | None:
        return self.bandwidth.value if self.bandwidth is not None else None

    def to_dict(self) -> dict[str, Any]:
        bw = self.bandwidth
        return {"name": self.name, "bytes_per_s": None if bw is None else bw.value,
                "source": None if bw is None else bw.source, "note": self.note}

    @classmethod
    def from_dict(cls, data: Any) -> Link:
        if not isinstance(data, dict):
            raise TypeError(f"comm.link is {type(data).__name__}, not an object")
        value, source = data.get("bytes_per_s"), data.get("source")
        bandwidth = None
        if value is not None:
            _check_positive("comm.link.bytes_per_s", value)
            if source not in SOURCES:
                raise ValueError(f"comm.link.source must be one of {', '.join(SOURCES)}, got {source!r}")
            bandwidth = Figure(float(value), source)
        return cls(name=_text(data, "name", "comm.link"), bandwidth=bandwidth, note=str(data.get("note", "")))


@dataclass(frozen=True, slots=True)
class CollectiveRow:
    """All calls of one collective signature (op, phase, module, group size, message shapes)."""

    op: str  # "c10d.allreduce_"
    kind: str  # "all_reduce"
    phase: str
    module: str
    calls: int
    timed_calls: int  # calls whose completion was observed (time_s covers these)
    group_size: int
    dtype: str
    shapes: str
    message_bytes: int  # totals over calls
    message_elements: int
    bytes_moved: int  # sent by this rank, by the algorithm (see `bus_factor`)
    time_s: float  # issue to completion, summed over the timed calls
    link_bytes_per_s: float | None = None  # the roof this row is placed under

    @property
    def bound(self) -> str:
        return COMMUNICATION

    @property
    def name(self) -> str:
        return self.op

    @property
    def timed_bytes_moved(self) -> int:
        return self.bytes_moved * self.timed_calls // self.calls if self.calls else 0

    @property
    def bus_bandwidth_bytes_per_s(self) -> float | None:
        """Achieved bus bandwidth: bytes moved per rank / measured time (timed calls only)."""
        if not self.timed_calls or self.time_s <= 0 or not self.bytes_moved:
            return None
        return self.timed_bytes_moved / self.time_s

    @property
    def algorithm_bandwidth_bytes_per_s(self) -> float | None:
        """Message bytes / measured time (nccl-tests' algbw)."""
        if not self.timed_calls or self.time_s <= 0 or not self.message_bytes:
            return None
        return self.message_bytes * self.timed_calls / self.calls / self.time_s

    @property
    def efficiency(self) -> float | None:
        """Achieved bus bandwidth / the link's bandwidth."""
        bus = self.bus_bandwidth_bytes_per_s
        return bus / self.link_bytes_per_s if bus is not None and self.link_bytes_per_s else None

    @property
    def roofline_time_s(self) -> float | None:
        """The least time the link allows for every call: bytes moved / link bandwidth."""
        if not self.bytes_moved:
            return 0.0
        return self.bytes_moved / self.link_bytes_per_s if self.link_bytes_per_s else None


_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(CollectiveRow))
_REQUIRED_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(CollectiveRow) if f.default is dataclasses.MISSING)
_ROW_INTS = ("calls", "timed_calls", "group_size", "message_bytes", "message_elements", "bytes_moved")


@dataclass(frozen=True)
class Communication:
    """One rank's communication over the recorded steps: its collectives on the link's roof,
    the time with any collective in flight, and how much of it other work overlapped."""

    link: Link
    collectives: tuple[CollectiveRow, ...] = ()
    backend: str = ""  # "gloo", "nccl", ...
    job: str = ""  # the same for every rank of one job (and differs between jobs)
    local_world_size: int | None = None  # ranks on this host
    # Host wall time with at least one collective in flight, summed over the recorded steps
    # (None when no collective could be timed: CUDA collectives complete on the device).
    comm_time_s: float | None = None
    # Of comm_time_s, the time this rank's main thread spent inside ops (and memwall's
    # bookkeeping of them) meanwhile: communication hidden behind other work. CPU timing only.
    overlapped_s: float | None = None

    @property
    def message_bytes(self) -> int:
        return sum(r.message_bytes for r in self.collectives)

    @property
    def bytes_moved(self) -> int:
        return sum(r.bytes_moved for r in self.collectives)

    @property
    def collective_time_s(self) -> float:
        """Issue-to-completion time summed over collectives (concurrent ones count twice)."""
        return math.fsum(r.time_s for r in self.collectives)

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
    def untimed_calls(self) -> int:
        return sum(r.calls - r.timed_calls for r in self.collectives)

    def by_kind(self) -> dict[str, tuple[int, int, int, float]]:
        """kind -> (calls, message bytes, bytes moved, time_s), largest message first."""
        out: dict[str, tuple[int, int, int, float]] = {}
        for r in self.collectives:
            calls, msg, moved, t = out.get(r.kind, (0, 0, 0, 0.0))
            out[r.kind] = (calls + r.calls, msg + r.message_bytes, moved + r.bytes_moved, t + r.time_s)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))

    # -- what-if -------------------------------------------------------------------------------
    def on_link(self, link: Link) -> Communication:
        """The same collectives placed under another link's roof."""
        rows = tuple(dataclasses.replace(r, link_bytes_per_s=link.bytes_per_s) for r in self.collectives)
        return dataclasses.replace(self, link=link, collectives=rows)

    def resized(self, bytes_per_element: int) -> Communication:
        """Every message re-sized to `bytes_per_element` per element (the paper's what-if)."""
        rows = []
        for r in self.collectives:
            message = r.message_elements * bytes_per_element
            per_call = message // r.calls if r.calls else 0
            rows.append(dataclasses.replace(
                r, message_bytes=message, bytes_moved=bytes_moved(r.kind, per_call, r.group_size) * r.calls))
        return dataclasses.replace(self, collectives=tuple(rows))

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "link": self.link.to_dict(),
            "backend": self.backend,
            "job": self.job,
            "local_world_size": self.local_world_size,
            "comm_time_s": self.comm_time_s,
            "overlapped_s": self.overlapped_s,
            "collectives": [{name: getattr(r, name) for name in _ROW_FIELDS} for r in self.collectives],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Communication:
        """Parse and check the report's "comm" object; ValueError / TypeError / KeyError name the
        field that is wrong."""
        if not isinstance(data, dict):
            raise TypeError(f"comm is {type(data).__name__}, not an object")
        rows = data.get("collectives", [])
        if not isinstance(rows, list):
            raise TypeError("comm.collectives must be a list")
        local = data.get("local_world_size")
        if local is not None:
            _check_count("comm.local_world_size", local, low=1)
        times = {}
        for name in ("comm_time_s", "overlapped_s"):
            value = data.get(name)
            if value is not None:
                _check_seconds(f"comm.{name}", value)
                value = float(value)
            times[name] = value
        return cls(
            link=Link.from_dict(data.get("link")),
            collectives=tuple(_row_from_dict(r) for r in rows),
            backend=str(data.get("backend", "")),
            job=str(data.get("job", "")),
            local_world_size=local,
            **times,
        )


def _row_from_dict(data: Any) -> CollectiveRow:
    if not isinstance(data, dict):
        raise TypeError(f"a collective is {type(data).__name__}, not an object")
    missing = [name for name in _REQUIRED_ROW_FIELDS if name not in data]
    if missing:
        raise KeyError(f"collective lacks {', '.join(missing)}")
    row = CollectiveRow(**{name: data[name] for name in _ROW_FIELDS if name in data})
    for name in _ROW_INTS:
        _check_count(f"collective field {name}", getattr(row, name), low=0)
    if row.timed_calls > row.calls:
        raise ValueError(f"collective field timed_calls ({row.timed_calls}) exceeds calls ({row.calls})")
    if row.kind not in KINDS:
        raise ValueError(f"collective field kind must be one of {', '.join(KINDS)}, got {row.kind!r}")
    for name in ("op", "phase", "module", "dtype", "shapes"):
        if not isinstance(getattr(row, name), str):
            raise TypeError(f"collective field {name} must be text, got {getattr(row, name)!r}")
    _check_seconds("collective field time_s", row.time_s)
    if row.link_bytes_per_s is not None:
        _check_positive("collective field link_bytes_per_s", row.link_bytes_per_s)
    return dataclasses.replace(row, time_s=float(row.time_s))


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise TypeError(f"{where}.{key} must be text, got {value!r}")
    return value


def _check_count(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number of seconds, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive number (bytes/s), got {value!r}")


def merge_communication(parts: list[Communication]) -> Communication:
    """Several windows of one rank as one: identical collectives summed, times added."""
    if len(parts) == 1:
        return parts[0]
    merged: dict[tuple[Any, ...], CollectiveRow] = {}
    for part in parts:
        for r in part.collectives:
            key = (r.op, r.kind, r.phase, r.module, r.group_size, r.dtype, r.shapes)
            mine = merged.get(key)
            merged[key] = r if mine is None else dataclasses.replace(
                mine,
                calls=mine.calls + r.calls,
                timed_calls=mine.timed_calls + r.timed_calls,
                message_bytes=mine.message_bytes + r.message_bytes,
                message_elements=mine.message_elements + r.message_elements,
                bytes_moved=mine.bytes_moved + r.bytes_moved,
                time_s=mine.time_s + r.time_s,
            )

    def total(name: str) -> float | None:
        values = [getattr(p, name) for p in parts]
        return None if any(v is None for v in values) else math.fsum(values)

    last = parts[-1]
    return dataclasses.replace(
        last,
        collectives=sort_rows(merged.values()),
        comm_time_s=total("comm_time_s"),
        overlapped_s=total("overlapped_s"),
    )


def sort_rows(rows: Any) -> tuple[CollectiveRow, ...]:
    """Longest time first, then the largest message."""
    return tuple(sorted(rows, key=lambda r: (-r.time_s, -r.message_bytes, r.op, r.phase, r.module, r.shapes)))


# --- the link ------------------------------------------------------------------------------------


def parse_link(value: Any) -> tuple[float, str]:
    """A link override -> (bytes/s per direction, name). Takes 50e9, "50e9",
    "bandwidth=50e9,name=InfiniBand NDR" or {"bandwidth": 50e9, "name": "InfiniBand NDR"}."""
    usage = ("a link is its bandwidth per direction in bytes/s: 50e9, or 'bandwidth=50e9,name=InfiniBand NDR' "
             "(profile(link=...), memwall run --link, $MEMWALL_LINK)")
    name = ""
    if isinstance(value, str):
        text = value.strip()
        if "=" not in text:
            value = text
        else:
            fields: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, item = part.partition("=")
                if not sep or key.strip() not in ("bandwidth", "name"):
                    raise ValueError(f"{part!r} is not bandwidth=... or name=...; {usage}")
                fields[key.strip()] = item.strip()
            value = fields
    if isinstance(value, dict):
        unknown = set(value) - {"bandwidth", "name"}
        if unknown or "bandwidth" not in value:
            raise ValueError(f"link {value!r}: {usage}")
        name = str(value.get("name", ""))
        value = value["bandwidth"]
    try:
        bandwidth = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ValueError(f"link bandwidth {value!r} is not a number; {usage}") from None
    if not 0 < bandwidth < math.inf:
        raise ValueError(f"link bandwidth must be a positive number of bytes/s, got {value!r}")
    return bandwidth, name


def resolve_link(
    device: DeviceSpec | None,
    world_size: int,
    local_world_size: int | None,
    override: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Link:
    """The link a rank's collectives are placed under, and where its figure came from:

    1. the user's: `profile(link=...)`, else $MEMWALL_LINK;
    2. ranks on several hosts: the network between them, unknown until configured;
    3. a GPU: its interconnect from the device table (NVLink generation or PCIe), per direction:
       datasheets give both directions together;
    4. a CPU (gloo over loopback TCP on one host): estimated from the memory bandwidth, since a
       loopback transfer moves every byte through memory four times (`LOOPBACK_TRAFFIC_PER_BYTE`).
    """
    env = os.environ if environ is None else environ
    if override is None and env.get(ENV_LINK):
        try:
            bandwidth, name = parse_link(env[ENV_LINK])
        except ValueError as exc:
            raise ValueError(f"${ENV_LINK}: {exc}") from None
        return Link(name or "configured link", Figure(bandwidth, USER), f"from ${ENV_LINK}")
    if override is not None:
        bandwidth, name = parse_link(override)
        return Link(name or "configured link", Figure(bandwidth, USER), "from profile(link=...)")
    if local_world_size is not None and local_world_size < world_size:
        return Link("network between hosts", None,
                    f"not detected: set its bandwidth per direction with profile(link=...) or ${ENV_LINK}")
    if device is not None and device.kind != "cpu":
        figure = device.interconnect_bandwidth
        if figure is not None:
            return Link(device.interconnect or "interconnect", Figure(figure.value / 2, figure.source),
                        f"{device.name}: half of the datasheet's {figure.value / 1e9:g} GB/s, which counts "
                        "both directions")
        return Link(device.interconnect or "unknown link", None,
                    f"{device.name} has no interconnect figure: set one with profile(link=...) or ${ENV_LINK}")
    memory = device.bandwidth if device is not None else None
    if memory is None:
        return Link("loopback TCP", None, f"no memory bandwidth to estimate it from: set ${ENV_LINK}")
    return Link("loopback TCP (one host)", Figure(memory.value / LOOPBACK_TRAFFIC_PER_BYTE, ESTIMATED),
                f"memory bandwidth ({memory.source}) / {LOOPBACK_TRAFFIC_PER_BYTE}: each byte is copied into "
                "and out of the kernel")


def relink(comm: Communication, device: DeviceSpec, world_size: int) -> Communication:
    """A what-if device's link for a report's collectives: ranks on one host move to the new
    device's interconnect; a network between hosts, or a configured link, stays."""
    if comm.link.bandwidth is not None and comm.link.bandwidth.source == USER:
        return comm
    if comm.local_world_size is not None and comm.local_world_size < world_size:
        return comm
    return comm.on_link(resolve_link(device, world_size, comm.local_world_size, environ={}))


# --- ranks side by side --------------------------------------------------------------------------


@dataclass(frozen=True)
class RankTotals:
    """One rank's headline figures, for the side-by-side table."""

    rank: int
    steps: int
    wall_time_s: float
    op_time_s: float  # time in ops (compute and data movement on this rank)
    flops: int
    bytes: int
    comm_message_bytes: int
    comm_bytes_moved: int
    comm_time_s: float | None  # host time with a collective in flight
    exposed_comm_s: float | None  # of it, with nothing else running
    incomplete: bool

    @property
    def comm_share(self) -> float | None:
        """Share of the wall time with a collective in flight."""
        if self.comm_time_s is None or self.wall_time_s <= 0:
            return None
        return min(1.0, self.comm_time_s / self.wall_time_s)


def rank_totals(report: Report) -> RankTotals:
    comm = report.comm
    return RankTotals(
        rank=report.rank, steps=len(report.steps), wall_time_s=report.wall_time_s,
        op_time_s=report.total_time_s, flops=report.total_flops, bytes=report.total_bytes,
        comm_message_bytes=comm.message_bytes if comm else 0, comm_bytes_moved=comm.bytes_moved if comm else 0,
        comm_time_s=comm.comm_time_s if comm else None, exposed_comm_s=comm.exposed_s if comm else None,
        incomplete=report.incomplete,
    )


def slowest_rank(ranks: Iterable[RankTotals]) -> RankTotals | None:
    """The rank with the most time in ops: in a synchronous job the others wait for it inside
    collectives (their communication time is larger, their op time smaller)."""
    return max(ranks, key=lambda r: (r.op_time_s, -r.rank), default=None)
