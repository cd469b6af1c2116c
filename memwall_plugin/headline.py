"""The headline of a report: the figures every view leads with, computed once.

The console's header, `memwall report --json`'s totals, the tab's cards, the Scalars tab and
the ranks side by side all read a `Headline`, so no two of them can disagree.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwall_plugin.rows import speedup

if TYPE_CHECKING:  # read, never imported: the console draws headlines and reports draw with it
    from memwall_plugin.report import Report


@dataclass(frozen=True)
class Headline:
    """One report's headline figures (a window, a merged run, one step)."""

    rank: int
    world_size: int
    steps: tuple[int, ...]
    incomplete: bool
    wall_time_s: float  # wall time of the recorded steps, profiler overhead included
    time_s: float  # measured time in ops
    counted_time_s: float  # of it, in ops with a FLOP formula
    flops: int  # of the counted ops
    bytes: int  # every op's memory traffic
    intensity: float | None  # FLOPs per byte over the counted ops
    memory_bound_fraction: float  # share of op time in memory-bound ops, set-up left out
    coverage: float  # share of op time in counted ops, set-up left out
    setup_time_s: float  # of time_s, in set-up (weight init, data made before the first forward)
    roofline_time_s: float | None  # the least time the roofline allows the counted ops
    uncounted_rows: int
    # torch.distributed: this rank's collectives (zero / None for a single-process run)
    message_bytes: int
    bytes_moved: int
    comm_time_s: float | None  # host time with a collective in flight
    comm_share: float | None  # of the wall time
    overlapped_s: float | None
    exposed_s: float | None  # with a collective in flight and nothing else running
    overlap_fraction: float | None
    untimed_calls: int
    # a what-if's projection on its device (None for a report as measured): a roofline bound
    projected_time_s: float | None  # of the counted ops
    projected_memory_bound_fraction: float | None  # share of it at memory roofs there (not the launch floor)
    launch_floor_fraction: float | None  # share of it that is the launch floor, not the roofline

    @property
    def achieved_flops_per_s(self) -> float | None:
        return self.flops / self.counted_time_s if self.counted_time_s > 0 else None

    @property
    def achieved_bytes_per_s(self) -> float | None:
        return self.bytes / self.time_s if self.time_s > 0 else None

    @property
    def speedup(self) -> float | None:
        """Measured time of the counted ops over their projected time (a what-if's)."""
        return speedup(self.counted_time_s, self.projected_time_s)

    @property
    def projected_flops_per_s(self) -> float | None:
        return self.flops / self.projected_time_s if self.projected_time_s else None

    def record(self) -> dict[str, Any]:
        """JSON-ready (non-finite figures as None)."""
        out = dataclasses.asdict(self)
        out["steps"] = list(self.steps)
        out["achieved_flops_per_s"] = self.achieved_flops_per_s
        out["achieved_bytes_per_s"] = self.achieved_bytes_per_s
        out["speedup"] = self.speedup
        out["projected_flops_per_s"] = self.projected_flops_per_s
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars (Scalars tab), per recorded step."""
        out = {"memwall/flops": float(self.flops), "memwall/bytes": float(self.bytes),
               "memwall/op_time_s": self.time_s}
        if self.intensity is not None:
            out["memwall/intensity"] = self.intensity
        if self.time_s > 0:
            out["memwall/memory_bound_fraction"] = self.memory_bound_fraction
        if self.achieved_flops_per_s is not None:
            out["memwall/achieved_flops_per_s"] = self.achieved_flops_per_s
        if self.comm_time_s is not None:
            out["memwall/comm_time_s"] = self.comm_time_s
        return {k: v for k, v in out.items() if math.isfinite(v)}


def headline(report: Report) -> Headline:
    return Headline(
        rank=report.rank, world_size=report.world_size, steps=report.steps, incomplete=report.incomplete,
        wall_time_s=report.wall_time_s, time_s=report.total_time_s, counted_time_s=report.counted_time_s,
        flops=report.total_flops, bytes=report.total_bytes, intensity=report.intensity,
        memory_bound_fraction=report.memory_bound_time_fraction, coverage=report.coverage,
        setup_time_s=report.setup_time_s,
        roofline_time_s=report.roofline_time_s, uncounted_rows=len(report.uncounted),
        message_bytes=report.message_bytes, bytes_moved=report.bytes_moved, comm_time_s=report.comm_time_s,
        comm_share=report.comm_share, overlapped_s=report.overlapped_s, exposed_s=report.exposed_s,
        overlap_fraction=report.overlap_fraction, untimed_calls=report.untimed_calls,
        projected_time_s=report.projected_time_s,
        projected_memory_bound_fraction=report.projected_memory_bound_fraction,
        launch_floor_fraction=report.launch_floor_fraction,
    )


def rank_headlines(ranks: Mapping[int, Report]) -> list[Headline]:
    return [headline(r) for _, r in sorted(ranks.items())]


def rank_record(h: Headline, slowest: Headline | None) -> dict[str, Any]:
    """One rank in the ranks side by side (`memwall report --json`'s "ranks", the tab's /ranks)."""
    record = h.record()
    return {
        "rank": h.rank, "steps": len(h.steps), "wall_time_s": h.wall_time_s, "op_time_s": h.time_s,
        "flops": h.flops, "bytes": h.bytes, "comm_message_bytes": h.message_bytes,
        "comm_bytes_moved": h.bytes_moved, "comm_time_s": record["comm_time_s"],
        "exposed_comm_s": record["exposed_s"], "incomplete": h.incomplete, "comm_share": record["comm_share"],
        "slowest": slowest is not None and h.rank == slowest.rank,
    }


def slowest_rank(ranks: Iterable[Headline]) -> Headline | None:
    """The rank with the most time in ops: in a synchronous job the others wait for it inside
    collectives (their communication time is larger, their op time smaller)."""
    return max(ranks, key=lambda h: (h.time_s, -h.rank), default=None)
