"""Pure view builders for the tab's distributed parts: a rank's collectives on the link's roof
(`/report`'s "comm"), and the ranks of one run side by side (`/ranks`)."""

from __future__ import annotations

import math
from typing import Any

from memwall_plugin.comm import CollectiveRow, rank_totals, slowest_rank
from memwall_plugin.report import Report


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def collective_view(index: int, c: CollectiveRow) -> dict[str, Any]:
    return {
        "id": index, "op": c.op, "kind": c.kind, "phase": c.phase, "module": c.module, "calls": c.calls,
        "timed_calls": c.timed_calls, "group_size": c.group_size, "dtype": c.dtype, "shapes": c.shapes,
        "message_bytes": c.message_bytes,
        "message_bytes_per_call": c.message_bytes // c.calls if c.calls else 0,
        "bytes_moved": c.bytes_moved, "time_s": c.time_s, "bound": c.bound,
        "bus_bandwidth_bytes_per_s": _finite(c.bus_bandwidth_bytes_per_s),
        "algorithm_bandwidth_bytes_per_s": _finite(c.algorithm_bandwidth_bytes_per_s),
        "link_bytes_per_s": _finite(c.link_bytes_per_s),
        "efficiency": _finite(c.efficiency), "roofline_time_s": _finite(c.roofline_time_s),
    }


def comm_view(report: Report) -> dict[str, Any] | None:
    """`/report`'s "comm": the link, totals and one entry per collective signature (None for a
    run without torch.distributed)."""
    comm = report.comm
    if comm is None:
        return None
    share = comm.comm_time_s / report.wall_time_s if comm.comm_time_s is not None and report.wall_time_s > 0 else None
    return {
        "rank": report.rank,
        "world_size": report.world_size,
        "backend": comm.backend,
        "link": comm.link.to_dict(),
        "message_bytes": comm.message_bytes,
        "bytes_moved": comm.bytes_moved,
        "comm_time_s": _finite(comm.comm_time_s),
        "comm_share": _finite(None if share is None else min(1.0, share)),
        "overlapped_s": _finite(comm.overlapped_s),
        "exposed_s": _finite(comm.exposed_s),
        "overlap_fraction": _finite(comm.overlap_fraction),
        "untimed_calls": comm.untimed_calls,
        "collectives": [collective_view(i, c) for i, c in enumerate(comm.collectives)],
    }


def ranks_view(run: str, reports: dict[int, Report], errors: dict[int, str], world_size: int) -> dict[str, Any]:
    """`/ranks`: every rank's headline figures side by side, the slowest marked; ranks whose
    report is missing or unreadable are listed as such."""
    totals = [rank_totals(r) for _, r in sorted(reports.items())]
    slowest = slowest_rank(totals)
    known = set(reports) | set(errors)
    return {
        "run": run,
        "world_size": world_size,
        "slowest": None if slowest is None else slowest.rank,
        "ranks": [
            {
                "rank": t.rank, "steps": t.steps, "wall_time_s": t.wall_time_s, "op_time_s": t.op_time_s,
                "flops": t.flops, "bytes": t.bytes, "comm_message_bytes": t.comm_message_bytes,
                "comm_bytes_moved": t.comm_bytes_moved, "comm_time_s": _finite(t.comm_time_s),
                "comm_share": _finite(t.comm_share), "exposed_comm_s": _finite(t.exposed_comm_s),
                "incomplete": t.incomplete, "slowest": slowest is not None and t.rank == slowest.rank,
            }
            for t in totals
        ],
        "errors": [{"rank": rank, "error": message} for rank, message in sorted(errors.items())],
        "missing": [r for r in range(world_size) if r not in known],
    }
