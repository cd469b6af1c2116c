"""The ranks of a job at scale: their spread (median, p90, extremes), the outlying ranks with why
they stand out, and the nodes they ran on.

A job of hundreds of ranks does not read as a list. Every figure here comes from the ranks'
headlines (`headline.py`), so the console, `memwall report --json` and the tab's /ranks agree.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwall_plugin.headline import Headline
from memwall_plugin.rankheads import RankHead, rank_heads

if TYPE_CHECKING:
    from memwall_plugin.report import Report

#: above this many ranks, the views show the spread and the outliers, not every rank
CONDENSE_ABOVE = 16
#: the slowest and the fastest ranks shown
TOP_OUTLIERS = 5
#: a rank whose time in ops is within this share of the median is not an outlier
OUTLIER_SHARE = 0.01
#: the nodes shown (slowest first) before "... N more"
TOP_NODES = 8

#: where a rank's wall time went, each against the median rank's: why it stands out
REASONS = ("compute", "memory-bound work", "waiting in collectives", "host time outside ops")


@dataclass(frozen=True)
class Spread:
    """One figure over the ranks."""

    min: float
    median: float
    p90: float
    max: float

    def record(self) -> dict[str, float]:
        return {"min": self.min, "median": self.median, "p90": self.p90, "max": self.max}


def spread(values: Sequence[float]) -> Spread | None:
    """Min, median, 90th percentile (nearest rank) and max; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return Spread(ordered[0], statistics.median(ordered), p90, ordered[-1])


@dataclass(frozen=True)
class RankTime:
    """A rank's wall time, split where it went (the parts `REASONS` names, in that order)."""

    compute_s: float  # ops not memory-bound (compute-bound and uncounted), set-up left out
    memory_s: float  # memory-bound ops, set-up left out
    waiting_s: float  # a collective in flight and nothing else running (exposed)
    host_s: float  # the rest of the wall time: outside ops and collectives

    @property
    def parts(self) -> tuple[float, float, float, float]:
        return self.compute_s, self.memory_s, self.waiting_s, self.host_s


def rank_time(h: Headline) -> RankTime:
    work = max(0.0, h.time_s - h.setup_time_s)
    memory = work * h.memory_bound_fraction
    waiting = h.exposed_s if h.exposed_s is not None else (h.comm_time_s or 0.0)
    return RankTime(work - memory, memory, waiting, max(0.0, h.wall_time_s - h.time_s - waiting))


def node_of(report: Report | RankHead) -> str:
    """The node a rank ran on: its host's name, else (a report from before memwall recorded it)
    its rank over the ranks per host."""
    if report.hostname:
        return report.hostname
    per_node = report.local_world_size or report.world_size or 1
    return f"node {report.rank // max(1, per_node)}"


def node_names(reports: Mapping[int, Report | RankHead]) -> dict[int, str]:
    """Each rank's node (`node_of`), told apart by torchrun's node index (GROUP_RANK) where
    several nodes share a host name (a multi-node job launched on one machine): "host node 1"."""
    names = {rank: node_of(r) for rank, r in reports.items()}
    groups: dict[str, set[int | None]] = {}
    for rank, r in reports.items():
        groups.setdefault(names[rank], set()).add(r.group_rank if r.hostname else None)
    for rank, r in reports.items():
        if len(groups[names[rank]]) > 1 and r.group_rank is not None:
            names[rank] = f"{names[rank]} node {r.group_rank}"
    return names


@dataclass(frozen=True)
class Outlier:
    """A rank far from the median: how far, and the part of its time that differs most."""

    rank: int
    node: str
    op_time_s: float
    delta_s: float  # its time in ops minus the median rank's
    share: float  # delta_s over the median's time in ops
    reason: str  # one of REASONS: the part that differs most, in the outlier's direction
    reason_delta_s: float  # that part minus the median's

    @property
    def because(self) -> str:
        more = "more" if self.reason_delta_s >= 0 else "less"
        return f"{more} {self.reason}"

    def record(self) -> dict[str, Any]:
        return {"rank": self.rank, "node": self.node, "op_time_s": self.op_time_s, "delta_s": self.delta_s,
                "share": self.share, "reason": self.reason, "reason_delta_s": self.reason_delta_s,
                "because": self.because}


@dataclass(frozen=True)
class Node:
    """The ranks of one node."""

    name: str
    ranks: tuple[int, ...]
    op_time_s: Spread
    comm_share: Spread | None
    slowest_rank: int

    def record(self) -> dict[str, Any]:
        return {"node": self.name, "ranks": list(self.ranks), "op_time_s": self.op_time_s.record(),
                "comm_share": None if self.comm_share is None else self.comm_share.record(),
                "slowest_rank": self.slowest_rank}


@dataclass(frozen=True)
class RankSpread:
    """A job's ranks condensed: spreads of the headline figures, outliers, nodes."""

    ranks: int
    op_time_s: Spread
    wall_time_s: Spread
    comm_time_s: Spread | None  # None where no rank timed its collectives on the host
    comm_share: Spread | None
    sent_bytes: Spread
    memory_bound: Spread  # share of each rank's op time (set-up left out) in memory-bound ops
    slowest: tuple[Outlier, ...]  # slowest first
    fastest: tuple[Outlier, ...]  # fastest first
    nodes: tuple[Node, ...]  # slowest first: by median time in ops, then by the slowest rank's

    @property
    def slowest_node(self) -> Node | None:
        return self.nodes[0] if len(self.nodes) > 1 else None

    def record(self) -> dict[str, Any]:
        def rec(s: Spread | None) -> dict[str, float] | None:
            return None if s is None else s.record()

        return {
            "ranks": self.ranks, "nodes": len(self.nodes),
            "op_time_s": rec(self.op_time_s), "wall_time_s": rec(self.wall_time_s),
            "comm_time_s": rec(self.comm_time_s), "comm_share": rec(self.comm_share),
            "comm_bytes_moved": rec(self.sent_bytes), "memory_bound_fraction": rec(self.memory_bound),
            "slowest": [o.record() for o in self.slowest], "fastest": [o.record() for o in self.fastest],
            "by_node": [n.record() for n in self.nodes],
            "slowest_node": None if self.slowest_node is None else self.slowest_node.name,
        }


def _known(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def rank_spread(reports: Mapping[int, Report], heads: Sequence[Headline] | None = None,
                top: int = TOP_OUTLIERS) -> RankSpread | None:
    """The ranks of one job condensed (None for no rank). `heads`: their headlines, if at hand.
    Reads each rank's head (`rankheads.py`), never a `LazyRanks`' reports in full."""
    if not reports:
        return None
    places = {p.rank: p for p in rank_heads(reports)}
    heads = list(heads) if heads is not None else [p.headline for p in places.values()]
    named = node_names(places)
    nodes = {h.rank: named[h.rank] for h in heads}
    times = {h.rank: rank_time(h) for h in heads}
    medians = [statistics.median(t.parts[i] for t in times.values()) for i in range(len(REASONS))]
    median_ops = statistics.median(h.time_s for h in heads)

    def outlier(h: Headline, sign: int) -> Outlier:
        deltas = [p - m for p, m in zip(times[h.rank].parts, medians, strict=True)]
        # the slow stand out by what they spend more on, the fast by the op work they do less of
        pick = max(range(len(REASONS)), key=lambda i: deltas[i]) if sign > 0 else \
            min(range(2), key=lambda i: deltas[i])
        delta = h.time_s - median_ops
        return Outlier(h.rank, nodes[h.rank], h.time_s, delta, delta / median_ops if median_ops > 0 else 0.0,
                       REASONS[pick], deltas[pick])

    far = [h for h in heads if abs(h.time_s - median_ops) > OUTLIER_SHARE * median_ops]
    slow = sorted((h for h in far if h.time_s > median_ops), key=lambda h: (-h.time_s, h.rank))[:top]
    fast = sorted((h for h in far if h.time_s < median_ops), key=lambda h: (h.time_s, h.rank))[:top]

    by_node: dict[str, list[Headline]] = {}
    for h in heads:
        by_node.setdefault(nodes[h.rank], []).append(h)
    node_list = []
    for name, members in by_node.items():
        ops = spread([h.time_s for h in members])
        assert ops is not None
        slowest = max(members, key=lambda h: (h.time_s, -h.rank))
        node_list.append(Node(name, tuple(h.rank for h in members), ops,
                              spread(_known([h.comm_share for h in members])), slowest.rank))
    node_list.sort(key=lambda n: (-n.op_time_s.median, -n.op_time_s.max, n.ranks[0]))

    def of(get: Callable[[Headline], float | None]) -> Spread | None:
        return spread(_known([get(h) for h in heads]))

    op_time, wall, sent = of(lambda h: h.time_s), of(lambda h: h.wall_time_s), of(lambda h: float(h.bytes_moved))
    memory = of(lambda h: h.memory_bound_fraction)
    assert op_time is not None and wall is not None and sent is not None and memory is not None
    return RankSpread(len(heads), op_time, wall, of(lambda h: h.comm_time_s), of(lambda h: h.comm_share), sent, memory,
                      tuple(outlier(h, 1) for h in slow), tuple(outlier(h, -1) for h in fast), tuple(node_list))
