"""Collectives on the interconnect roof: what each collective moves, and where it sits under the link.

A collective's *message* is the buffer the operation is about, as nccl-tests defines its "size":
the reduced buffer of an all-reduce, the gathered output of an all-gather, the input of a
reduce-scatter. *Bytes moved per rank* follow the bandwidth-optimal (ring) algorithm, the
convention of nccl-tests' bus bandwidth: an all-reduce sends 2(n-1)/n of the message out of each
rank, an all-gather, reduce-scatter or all-to-all (n-1)/n, a broadcast or point-to-point transfer
the whole message. Achieved bus bandwidth = bytes moved / measured time; the roof is the link's
bandwidth per direction; such a row's bound is "communication" (a third kind, beside memory and
compute).

Several nodes: a collective over ranks on several nodes (N nodes of L ranks each) sends part of
its bytes over the link inside a node (NVLink; loopback on one host) and part over the network
between nodes. The split follows the algorithm as NCCL runs such collectives across nodes, the
hierarchical (two-level) decomposition of the ring algorithm (NCCL's docs, "Collective
Operations" and nccl-tests' doc/PERFORMANCE.md on bus bandwidth; the same decomposition as
Horovod's hierarchical all-reduce and NCCL's CollNet/NVLS chains), per rank and message S:

- all-reduce = reduce-scatter inside the node ((L-1)/L S), all-reduce of the node's 1/L shard
  across the N nodes by the rank of each node holding it (ring: 2(N-1)/N x S/L), all-gather
  inside the node ((L-1)/L S): intra 2(L-1)/L S, inter 2(N-1)/(N L) S. Together 2(n-1)/n S with
  n = N L, nccl-tests' all-reduce bus factor;
- all-gather and reduce-scatter: one of those halves: intra (L-1)/L S, inter (N-1)/(N L) S
  (together (n-1)/n S);
- all-to-all, gather, scatter (point to point to every peer): S/n to each of the L-1 peers in the
  node, and to each of the n-L outside it: intra (L-1)/n S, inter (n-L)/n S;
- broadcast and reduce (a pipelined chain across the node leaders, then inside each node): the
  whole message on each level, S inter and S intra (the busiest rank's);
- send and receive: over the network when the job spans nodes (the peer is not recorded), else
  inside the node; a barrier moves nothing.

A group that spans the world has the job's N x L layout; a smaller group is taken to lie inside
one node when it fits (tensor-parallel groups), else over g/L nodes of L ranks.

Time on the two roofs: the phases run one after another (the hierarchical algorithm's
reduce-scatter, cross-node all-reduce and all-gather each wait for the one before), so a call's
least time is the sum of its bytes over each level's bandwidth: intra/B_intra + inter/B_inter
(`level_time_s`). An implementation that pipelines the phases in chunks overlaps them, down to
the slower of the two at best: the sum is then at most twice that.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol

from memwall_plugin.records import OpCall, TensorMeta
from memwall_plugin.rows import Collective, Row, sort_rows

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


def node_layout(group_size: int, ranks_per_node: int | None) -> tuple[Fraction, int]:
    """(nodes, ranks per node) a group of `group_size` ranks spans, with `ranks_per_node` ranks on
    each node of the job (None: all on one): a group that fits one node lies inside it."""
    per_node = ranks_per_node if ranks_per_node and ranks_per_node > 0 else group_size
    if group_size <= per_node:
        return Fraction(1), max(1, group_size)
    return Fraction(group_size, per_node), per_node


def level_factors(kind: str, group_size: int, ranks_per_node: int | None) -> tuple[Fraction, Fraction]:
    """(inside the node, between nodes): bytes one rank sends on each level per byte of message,
    by the hierarchical algorithm (the module's doc says which, and where it comes from). On one
    node: (bus_factor, 0)."""
    if kind not in KINDS:
        raise ValueError(f"unknown collective kind {kind!r}; expected one of {', '.join(KINDS)}")
    nodes, per_node = node_layout(group_size, ranks_per_node)
    several = nodes > 1
    if kind in (SEND, RECV):
        return (Fraction(0), Fraction(1)) if several else (Fraction(1), Fraction(0))
    n = group_size
    if kind == BARRIER or n <= 1:
        return Fraction(0), Fraction(0)
    L = per_node
    if kind == ALL_REDUCE:
        return Fraction(2 * (L - 1), L), 2 * (nodes - 1) / (nodes * L)
    if kind in (ALL_GATHER, REDUCE_SCATTER):
        return Fraction(L - 1, L), (nodes - 1) / (nodes * L)
    if kind in (BROADCAST, REDUCE):
        return Fraction(1 if L > 1 else 0), Fraction(1 if several else 0)
    return Fraction(L - 1, n), Fraction(n - L, n)  # all-to-all, gather, scatter


def split_bytes(kind: str, message_bytes: int, group_size: int, ranks_per_node: int | None) -> tuple[int, int]:
    """(intra, inter): bytes one rank sends inside its node and between nodes for one call."""
    intra, inter = level_factors(kind, group_size, ranks_per_node)
    return math.floor(message_bytes * intra), math.floor(message_bytes * inter)


def level_time_s(intra_bytes: int, inter_bytes: int, intra_bytes_per_s: float | None,
                 inter_bytes_per_s: float | None) -> float | None:
    """The least time to send these bytes, each level's under its own roof, phases one after
    another (the module's doc): intra/B_intra + inter/B_inter. None when a level with bytes to
    send has no known bandwidth."""
    total = 0.0
    for nbytes, bw in ((intra_bytes, intra_bytes_per_s), (inter_bytes, inter_bytes_per_s)):
        if nbytes:
            if not bw:
                return None
            total += nbytes / bw
    return total


def roof_bytes_per_s(c: Collective, intra_bytes_per_s: float | None,
                     inter_bytes_per_s: float | None) -> float | None:
    """The bandwidth a collective's bytes flow at under both roofs together: bytes sent over its
    `level_time_s` (the link's own, on one node; the link's, for rows written before the split)."""
    if c.intra_bytes is None or c.inter_bytes is None or not c.inter_bytes:
        return intra_bytes_per_s
    took = level_time_s(c.intra_bytes, c.inter_bytes, intra_bytes_per_s, inter_bytes_per_s)
    if took is None:
        return None
    return c.bytes_moved / took if took > 0 and c.bytes_moved else intra_bytes_per_s


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


# --- rows ----------------------------------------------------------------------------------------


class CollectiveCalls(Protocol):
    """What capture recorded of one collective signature (hooks/collectives.py's entries)."""

    call: OpCall
    module: str
    phase: str
    group_size: int
    calls: int
    timed_calls: int
    time_ns: int
    overlap_ns: int


def collective_rows(entries: Iterable[CollectiveCalls], bandwidth_bytes_per_s: float | None,
                    ranks_per_node: int | None = None, inter_bytes_per_s: float | None = None) -> tuple[Row, ...]:
    """One row per recorded signature, under the links' roofs: messages, bytes moved and their
    split inside / between nodes (`ranks_per_node` ranks on each node) from the formulas above."""
    rows = []
    for e in entries:
        if not e.calls and not e.timed_calls:
            continue
        message = message_of(e.call, e.group_size)
        calls = max(e.calls, e.timed_calls)  # a call issued before the window, completed in it
        intra, inter = split_bytes(message.kind, message.nbytes, e.group_size, ranks_per_node)
        collective = Collective(
            kind=message.kind, group_size=e.group_size, timed_calls=e.timed_calls,
            message_bytes=message.nbytes * calls, message_elements=message.elements * calls,
            bytes_moved=bytes_moved(message.kind, message.nbytes, e.group_size) * calls,
            intra_bytes=intra * calls, inter_bytes=inter * calls,
            overlapped_s=getattr(e, "overlap_ns", 0) * 1e-9 if e.timed_calls else None,
        )
        rows.append(Row(
            op=e.call.op, overload=e.call.overload, module=e.module, phase=e.phase, calls=calls,
            dtype=message.dtype, shapes=message.shapes, flops=None, bytes_read=0, bytes_written=0,
            elements_read=0, elements_written=0, time_s=e.time_ns * 1e-9, peak_flops_per_s=None,
            bandwidth_bytes_per_s=roof_bytes_per_s(collective, bandwidth_bytes_per_s, inter_bytes_per_s),
            collective=collective,
        ))
    return sort_rows(rows)


def resized(row: Row, bytes_per_element: int) -> Row:
    """A collective row with every message re-sized to `bytes_per_element` per element (the
    paper's what-if): its bytes moved follow from the message by the same algorithm."""
    c = row.collective
    if c is None:
        raise ValueError(f"{row.op} is not a collective")
    message = c.message_elements * bytes_per_element
    per_call = message // row.calls if row.calls else 0
    moved = bytes_moved(c.kind, per_call, c.group_size) * row.calls
    intra, inter = c.intra_bytes, c.inter_bytes
    if intra is not None and inter is not None:
        # the same split as measured, at the new size (per call, as the algorithm counts it)
        old = c.message_bytes // row.calls if row.calls else 0
        intra = math.floor(intra * per_call / old) if old else 0
        inter = math.floor(inter * per_call / old) if old else 0
    return dataclasses.replace(row, collective=dataclasses.replace(c, message_bytes=message, bytes_moved=moved,
                                                                   intra_bytes=intra, inter_bytes=inter))
