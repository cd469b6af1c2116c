"""Pure view builders for the Memory Wall tab: report in, JSON-ready data out.

Routes only parse requests and call these; tests call them directly. Nothing here reads a path
or recomputes the analysis: rows, bounds and roofs come from the Report.
"""

from __future__ import annotations

import math
from typing import Any

from memwall_plugin.tb_plugin.comm_views import comm_view
from memwall_plugin.tb_plugin.loader import Run

from memwall_plugin.devices import PEAK_KEYS, DeviceSpec, device_table
from memwall_plugin.records import ordered_phases
from memwall_plugin.report import Group, Report, Row, module_tree


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def runs_view(runs: dict[str, Run]) -> dict[str, Any]:
    """`/runs`: every run with its windows (recorded steps) and ranks."""
    return {
        "runs": [
            {
                "run": run.name,
                "ranks": list(run.ranks),
                "windows": [
                    {"id": w.id, "rank": w.rank, "first_step": w.first_step, "last_step": w.last_step}
                    for w in run.windows
                ],
            }
            for run in runs.values()
        ]
    }


def devices_view() -> dict[str, Any]:
    """`/devices`: the table, for the what-if selector."""
    return {"devices": [{"key": d.key, "name": d.name} for d in device_table()]}


def device_view(device: DeviceSpec | None) -> dict[str, Any] | None:
    if device is None:
        return None
    bw = device.bandwidth
    return {
        "key": device.key,
        "name": device.name,
        "kind": device.kind,
        "source": device.source,
        "notes": device.notes,
        "peaks": [
            {"dtype": key, "flops_per_s": fig.value, "source": fig.source,
             "ridge": _finite(device.ridge_point(key))}
            for key, fig in device.peaks
            if key in PEAK_KEYS
        ],
        "bandwidth": None if bw is None else {"bytes_per_s": bw.value, "source": bw.source},
    }


def _plotted(point: Row | Group) -> bool:
    """A point has a place on a log-log roofline: it computes, moves bytes, and was timed."""
    return bool(point.flops) and point.bytes > 0 and point.time_s > 0


def row_view(index: int, r: Row) -> dict[str, Any]:
    return {
        "id": index, "op": r.op, "overload": r.overload, "module": r.module, "phase": r.phase,
        "calls": r.calls, "dtype": r.dtype, "shapes": r.shapes, "flops": r.flops, "bytes": r.bytes,
        "time_s": r.time_s, "intensity": _finite(r.intensity), "bound": r.bound,
        "attainable_flops_per_s": _finite(r.attainable_flops_per_s),
        "achieved_flops_per_s": _finite(r.achieved_flops_per_s),
        "achieved_bytes_per_s": _finite(r.achieved_bytes_per_s),
        "efficiency": _finite(r.efficiency), "plotted": _plotted(r),
    }


def group_view(g: Group) -> dict[str, Any]:
    achieved = g.flops / g.time_s if g.flops is not None and g.time_s > 0 else None
    return {
        "key": g.key, "calls": g.calls, "flops": g.flops, "bytes": g.bytes, "time_s": g.time_s,
        "intensity": _finite(g.intensity), "bound": g.bound, "efficiency": _finite(g.efficiency),
        "achieved_flops_per_s": _finite(achieved), "plotted": _plotted(g),
    }


def report_view(report: Report, *, phase: str | None = None) -> dict[str, Any]:
    """`/report`: headline cards, rows (operator points), modules (module points), the module
    tree with forward/backward roll-ups, phases and the device's roofs."""
    phases = ordered_phases(r.phase for r in report.rows)
    shown = report if phase is None else Report(rows=report.filter(phase=phase), device=report.device)
    total = shown.total_time_s
    counted_time = shown.counted_time_s
    flops = shown.total_flops
    groups, forward, backward = module_tree(shown)
    tree = []
    for g in groups.values():
        node = group_view(g)
        node["parent"] = None if g.key == "" else g.key.rpartition(".")[0]
        node["forward_time_s"] = forward.get(g.key, 0.0)
        node["backward_time_s"] = backward.get(g.key, 0.0)
        tree.append(node)
    return {
        "device": device_view(report.device),
        "measured_on": report.measured_on,
        "bytes_per_element": report.bytes_per_element,
        "phases": phases,
        "phase": phase,
        "headline": {
            "steps": list(report.steps),
            "incomplete": report.incomplete,
            "time_s": total,
            "wall_time_s": report.wall_time_s,
            "flops": flops,
            "bytes": shown.total_bytes,
            "intensity": _finite(shown.intensity),
            "memory_bound_fraction": shown.memory_bound_time_fraction,
            "achieved_flops_per_s": flops / counted_time if counted_time > 0 else None,
            "achieved_bytes_per_s": shown.total_bytes / total if total > 0 else None,
            "coverage": shown.coverage,
            "roofline_time_s": _finite(shown.roofline_time_s),
            "uncounted_rows": len(shown.uncounted),
        },
        "rows": [row_view(i, r) for i, r in enumerate(shown.rows)],
        "modules": [group_view(g) for g in shown.group_by("module")],
        "tree": tree,
        "phase_groups": [group_view(g) for g in shown.group_by("phase")],
        "comm": comm_view(report),  # collectives on the link's roof (torch.distributed), else null
    }
