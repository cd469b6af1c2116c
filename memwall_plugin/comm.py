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


def collective_rows(entries: Iterable[CollectiveCalls], bandwidth_bytes_per_s: float | None) -> tuple[Row, ...]:
    """One row per recorded signature, under the link's roof: messages and bytes moved from the
    formulas above."""
    rows = []
    for e in entries:
        if not e.calls and not e.timed_calls:
            continue
        message = message_of(e.call, e.group_size)
        calls = max(e.calls, e.timed_calls)  # a call issued before the window, completed in it
        rows.append(Row(
            op=e.call.op, overload=e.call.overload, module=e.module, phase=e.phase, calls=calls,
            dtype=message.dtype, shapes=message.shapes, flops=None, bytes_read=0, bytes_written=0,
            elements_read=0, elements_written=0, time_s=e.time_ns * 1e-9, peak_flops_per_s=None,
            bandwidth_bytes_per_s=bandwidth_bytes_per_s,
            collective=Collective(
                kind=message.kind, group_size=e.group_size, timed_calls=e.timed_calls,
                message_bytes=message.nbytes * calls, message_elements=message.elements * calls,
                bytes_moved=bytes_moved(message.kind, message.nbytes, e.group_size) * calls,
            ),
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
    return dataclasses.replace(row, collective=dataclasses.replace(c, message_bytes=message, bytes_moved=moved))
