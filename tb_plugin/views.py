"""Pure view builders for the Memory Wall tab: report in, JSON-ready data out.

Routes only parse requests and call these; tests call them directly. Nothing here reads a path
or recomputes the analysis: rows (ops and collectives alike, `rows.row_record`), bounds, roofs and
the headline (`headline.py`) come from the Report.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from memwall_plugin.tb_plugin.loader import Run

from memwall_plugin.ceilings import link_record
from memwall_plugin.console import findings
from memwall_plugin.devices import PEAK_KEYS, DeviceSpec, device_table, peak_key
from memwall_plugin.diff import ReportDiff, diff_record
from memwall_plugin.headline import headline, rank_record, slowest_rank
from memwall_plugin.memory import CATEGORIES, MemoryWhatIf
from memwall_plugin.rankheads import headlines, rank_heads
from memwall_plugin.ranks import CONDENSE_ABOVE, rank_spread
from memwall_plugin.records import FLOAT32_ASSUMED, ordered_phases
from memwall_plugin.report import Report, StepTotals
from memwall_plugin.roofline import launch_floor_s
from memwall_plugin.rows import Folded, Group, Row, group_rows, module_tree, optimizer_time_s, other_time_s, row_record
from memwall_plugin.rundir import Job


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _jobs_view(jobs: list[Job] | None) -> list[dict[str, Any]]:
    return [
        {"job": j.id, "label": j.label, "created_unix_s": j.created_unix_s, "ranks": sorted(j.ranks),
         "windows": [w.id for w in j.windows]}
        for j in jobs or []
    ]


def runs_view(runs: dict[str, Run], jobs: dict[str, list[Job] | None] | None = None,
              traces: dict[str, tuple[str, str | None]] | None = None) -> dict[str, Any]:
    """`/runs`: every run with its windows (recorded steps), ranks and jobs (newest first; a run
    directory two runs were written into holds two jobs, shown apart). A torch.profiler trace is
    a run of kind "trace" with its file, size and state (`traces`: the loader's `trace_state`)."""
    jobs = jobs or {}
    traces = traces or {}
    out = []
    for run in runs.values():
        entry: dict[str, Any] = {"run": run.name, "kind": "memwall", "ranks": list(run.ranks), "windows": [
            {"id": w.id, "rank": w.rank, "first_step": w.first_step, "last_step": w.last_step} for w in run.windows]}
        if run.trace is not None:
            state, error = traces.get(run.name, ("not analysed", None))
            entry.update(kind="trace", ranks=[], windows=[], trace={
                "file": run.trace.path.name, "size_bytes": run.trace.size_bytes, "state": state, "error": error,
                "note": TRACE_NOTES.get(state, state)})
        entry["jobs"] = _jobs_view(jobs.get(run.name))
        out.append(entry)
    return {"runs": out}


#: what the tab says of a trace in each state
TRACE_NOTES = {
    "not analysed": "torch.profiler trace, not yet analysed",
    "analysing": "torch.profiler trace, being analysed",
    "analysed": "torch.profiler trace, analysed by memwall",
    "failed": "torch.profiler trace memwall cannot analyse",
}

#: `report.extra["trace"]["uncounted_calls"]`'s reason for a trace recorded without shapes
_NO_SHAPES = "no input shapes recorded"


def trace_view(report: Report) -> dict[str, Any] | None:
    """What a report analysed from a torch.profiler trace says of it (`report.extra["trace"]`,
    `memwall analyze`): the file's name (never its server path), where the times came from, and
    the calls it could not count, by reason; None for memwall's own report."""
    info = report.extra.get("trace")
    if not isinstance(info, dict):
        return None
    uncounted = info.get("uncounted_calls")
    reasons = [(str(k), int(v)) for k, v in uncounted.items()] if isinstance(uncounted, dict) else []
    no_shapes = info.get("record_shapes") is False or any(reason.startswith(_NO_SHAPES) for reason, _ in reasons)
    return {
        "file": PurePath(str(info.get("path", ""))).name,
        "time_from": str(info.get("time_from", "")),
        "ops": info.get("ops"),
        "record_shapes": info.get("record_shapes"),
        "uncounted_calls": [{"reason": reason, "calls": calls} for reason, calls in reasons],
        "uncounted_total": sum(calls for _, calls in reasons),
        "float32_assumed": _float32_assumed(info.get("float32_assumed_calls")),
        "hint": ("re-record with torch.profiler.profile(record_shapes=True): without input shapes memwall "
                 "lists ops with their times but cannot count their FLOPs or bytes") if no_shapes else None,
    }


def _float32_assumed(calls: Any) -> dict[str, Any] | None:
    """The calls counted with their tensor lists taken as float32, and why; None for none."""
    if not isinstance(calls, dict) or not calls:
        return None
    return {"ops": [str(op) for op in calls], "calls": sum(int(n) for n in calls.values()), "why": FLOAT32_ASSUMED}


def devices_view() -> dict[str, Any]:
    """`/devices`: the table, for the what-if selector."""
    return {"devices": [{"key": d.key, "name": d.name, "memory_bytes": d.memory_bytes} for d in device_table()]}


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
        # every memory level, nearest first (caches, then main memory): one bandwidth roof each
        "levels": [
            {"name": level.name, "capacity_bytes": level.capacity_bytes, "capacity_source": level.capacity_source,
             "bytes_per_s": level.bandwidth_bytes_per_s,
             "source": None if level.bandwidth is None else level.bandwidth.source,
             "main": i == len(device.memory_levels) - 1}
            for i, level in enumerate(device.memory_levels)
        ],
    }


def _plotted(point: Row | Group) -> bool:
    """A point has a place on a log-log roofline: it computes, moves bytes, and was timed."""
    return bool(point.flops) and point.bytes > 0 and point.time_s > 0


def roof_of(r: Row, device: DeviceSpec | None) -> str | None:
    """The peak (a PEAK_KEYS name) whose roof an op row is placed under: its dtype's, or the one
    it was placed under instead (TF32 for an fp32 matmul on tensor cores, a dtype what-if's, a
    dtype the device lacks falling back to fp32). None for a collective or an unplaced row."""
    if device is None or r.collective is not None or r.peak_flops_per_s is None:
        return None
    peaks = dict(device.peaks)
    own = peak_key(r.dtype)
    for key in (own, "tf32", "fp32", *PEAK_KEYS):
        figure = peaks.get(key)
        if figure is not None and figure.value == r.peak_flops_per_s:
            return key
    return None


def _ratio(part: float | None, whole: float | None) -> float | None:
    return _finite(part / whole) if part is not None and whole else None


def row_view(index: int, r: Row, device: DeviceSpec | None = None, *, as_measured: bool = True) -> dict[str, Any]:
    """A row (an op or a collective) as the tab draws it: its record, an id, whether it is
    plotted, the peak it is placed under, and in a what-if its speed-up (measured time over
    projected).

    As measured (not a what-if), how far it is from its roofs: `headroom_s`, the seconds a kernel
    at the roof would save (measured time minus roofline time; negative where the measured time
    beat an estimated roof), and its achieved rates as fractions of its compute peak and of its
    memory level's (a collective's link's) bandwidth. In a what-if these are null: the times were
    measured against other roofs."""
    roof = r.roofline_time_s if as_measured else None
    return {"id": index, **row_record(r), "speedup": _finite(r.speedup), "memory_level_mixed": _mixed_level(r, device),
            "plotted": r.collective is None and _plotted(r), "roof": roof_of(r, device),
            "headroom_s": None if roof is None else _finite(r.time_s - roof),
            "peak_flops_fraction": _ratio(r.achieved_flops_per_s, r.peak_flops_per_s) if as_measured else None,
            "peak_bandwidth_fraction": _ratio(r.achieved_bytes_per_s, r.bandwidth_bytes_per_s) if as_measured else None}


def _mixed_level(r: Row, device: DeviceSpec | None) -> bool:
    """Whether the row's bytes came from several memory levels: its roof is then the rate they
    flow at together (ceilings.memory_roof_of), not the bandwidth of the level it is named by (the
    one that took most of their time), and its bound is against that blend. A blend within a tenth
    of the level's own bandwidth (a few cold bytes) reads as the level."""
    if device is None or not r.memory_level or not r.bandwidth_bytes_per_s or r.collective is not None:
        return False
    own = next((level.bandwidth_bytes_per_s for level in device.memory_levels if level.name == r.memory_level), None)
    return own is not None and own > 0 and abs(r.bandwidth_bytes_per_s - own) > _BLEND * own


_BLEND = 0.1


def folded_view(index: int, f: Folded, device: DeviceSpec | None = None, *, as_measured: bool = True) -> dict[str, Any]:
    """An (op, module, phase, dtype) row as the tab draws it (`row_view`), with how many input
    shapes it ran with and, when more than one, each shape's own row (`variants`, no ids)."""
    out = row_view(index, f.row, device, as_measured=as_measured)
    out["shapes_count"] = len(f.variants)
    if len(f.variants) > 1:
        out["variants"] = [{k: v for k, v in row_view(index, r, device, as_measured=as_measured).items() if k != "id"}
                           for r in f.variants]
    return out


BY = ("op", "shape")  # /report's rows: folded by (op, module, phase, dtype), or one per signature


def group_view(g: Group, ids: list[int] | None = None) -> dict[str, Any]:
    """A roll-up of rows as a point; `ids`: the rows' ids (the table's rows a click selects)."""
    achieved = g.flops / g.time_s if g.flops is not None and g.time_s > 0 else None
    out = {
        "key": g.key, "calls": g.calls, "flops": g.flops, "bytes": g.bytes, "time_s": g.time_s,
        "intensity": _finite(g.intensity), "bound": g.bound, "efficiency": _finite(g.efficiency),
        "achieved_flops_per_s": _finite(achieved), "plotted": _plotted(g),
        "projected_time_s": g.projected_time_s, "speedup": _finite(g.speedup),
    }
    if ids is not None:
        out["ids"] = ids
    return out


def _groups(rows: tuple[Row, ...], *fields: str) -> list[dict[str, Any]]:
    """The rows rolled up by `fields` ("module", or "module" and "phase"), longest time first,
    each with its fields' values and its rows' ids."""
    members: dict[tuple[str, ...], list[int]] = {}
    for i, r in enumerate(rows):
        members.setdefault(tuple(getattr(r, f) for f in fields), []).append(i)
    out = []
    for key, ids in members.items():
        view = group_view(group_rows(key[0], (rows[i] for i in ids)), ids)
        view.update(zip(fields, key, strict=True))
        out.append(view)
    return sorted(out, key=lambda g: (-g["time_s"], g["key"], g.get("phase", "")))


def program_point(kind: str, label: str, *, flops: int | None, nbytes: int, time_s: float, counted_time_s: float,
                  projected_time_s: float | None = None, **more: Any) -> dict[str, Any]:
    """A point for the program as a whole (the window, a phase, a step): its counted ops' FLOPs
    over their bytes, at their measured time (in a what-if, their projected time)."""
    placed = projected_time_s if projected_time_s is not None else counted_time_s
    achieved = flops / counted_time_s if flops and counted_time_s > 0 else None
    return {
        "kind": kind, "label": label, "flops": flops, "bytes": nbytes, "time_s": time_s,
        "counted_time_s": counted_time_s, "intensity": _finite(flops / nbytes) if flops and nbytes else None,
        "achieved_flops_per_s": _finite(achieved), "projected_time_s": projected_time_s,
        "plotted": bool(flops) and nbytes > 0 and placed > 0, **more,
    }


def _group_point(kind: str, label: str, g: Group) -> dict[str, Any]:
    return program_point(kind, label, flops=g.flops, nbytes=g.bytes, time_s=g.time_s, counted_time_s=g.counted_time_s,
                         projected_time_s=g.projected_time_s)


def _step_point(s: StepTotals) -> dict[str, Any]:
    label = f"step {s.first_step}" if s.step_count == 1 else f"steps {s.first_step}–{s.last_step}"
    return program_point("step", label, flops=s.flops, nbytes=s.bytes, time_s=s.time_s,
                         counted_time_s=s.counted_time_s, wall_time_s=s.wall_time_s, first_step=s.first_step,
                         last_step=s.last_step, step_count=s.step_count)


def program_points(report: Report, *, phase: str | None = None) -> list[dict[str, Any]]:
    """The program-level points: the whole window (its counted rows), each phase (where there are
    several), and each recorded step. Steps are whole steps: left out when one phase is shown, and
    in a what-if (a step's ops are not kept apart, so a step has no projection)."""
    whole = group_rows("", report.rows)
    points = [_group_point("window", "whole run" if phase is None else phase, whole)]
    phases = report.group_by("phase")
    if phase is None and len(phases) > 1:  # one phase alone is the whole run's point
        points += [_group_point("phase", g.key, g) for g in phases]
    if phase is None and report.projected_time_s is None:
        points += [_step_point(s) for s in report.step_totals]
    return points


def projection_view(report: Report, measured: Report,
                    folded: tuple[Folded, ...] | None = None) -> dict[str, Any] | None:
    """A what-if's projection, for the cards and the chart: on which device, the launch floor
    per kernel there, and the ops whose bound flips between the measured placement and this one
    (`Report.bound_changes`, per signature; ids index the shown rows: `folded`'s when the rows
    are folded). None for a report as measured."""
    if report.projected_time_s is None:
        return None
    device = report.device
    floor = launch_floor_s(device.kind) if device is not None else 0.0
    index = {id(r): i for i, r in enumerate(report.rows)} if folded is None else {
        id(v): i for i, f in enumerate(folded) for v in f.variants}
    changes = [
        {"id": index[id(after)], "op": after.op, "module": after.module, "phase": after.phase,
         "shapes": after.shapes, "before": before.bound, "after": after.bound,
         "intensity": _finite(after.intensity), "ridge_before": _finite(before.ridge_point),
         "ridge_after": _finite(after.ridge_point)}
        for before, after in measured.bound_changes(report)
    ]
    return {
        "device": device.name if device is not None else "",
        "measured_on": report.measured_on,
        "launch_floor_s": floor,
        "bound_changes": changes,
        "note": "Each op's least time there: its FLOPs at its dtype's peak or its bytes at the roof of the memory "
                "level they came from, whichever takes longer" + (
                    f", and at least {floor * 1e6:g} µs per kernel launch" if floor else " (no launch floor on a CPU)"),
    }


def report_view(report: Report, *, phase: str | None = None, measured: Report | None = None,
                by: str = "op") -> dict[str, Any]:
    """`/report`: headline cards, rows (operator points: by "op" one per op in its module and
    phase, input shapes folded, each with its shape variants; by "shape" one per signature),
    modules (module points), the module tree with forward/backward roll-ups, phases and the
    device's roofs. A what-if (`report` re-scored from `measured`) adds its projection."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    phases = ordered_phases(r.phase for r in report.rows)
    shown = report if phase is None else dataclasses.replace(report, rows=report.filter(phase=phase))
    before = measured if measured is None or phase is None else dataclasses.replace(
        measured, rows=measured.filter(phase=phase))
    head = headline(shown).record()
    as_measured = measured is None and report.projected_time_s is None  # a what-if: times against other roofs
    folded = shown.folded() if by == "op" else None
    listed = shown.rows if folded is None else tuple(f.row for f in folded)
    groups, forward, backward = module_tree(shown.rows)
    stepped = optimizer_time_s(shown.rows)
    tree = []
    for g in groups.values():
        node = group_view(g)
        node["parent"] = None if g.key == "" else g.key.rpartition(".")[0]
        node["forward_time_s"] = forward.get(g.key, 0.0)
        node["backward_time_s"] = backward.get(g.key, 0.0)
        # the optimizer's step apart, as the summary's tree says it ("opt"); the rest is other
        node["optimizer_time_s"] = stepped.get(g.key, 0.0)
        node["other_time_s"] = max(0.0, other_time_s(g, forward, backward) - node["optimizer_time_s"])
        tree.append(node)
    return {
        "device": device_view(report.device),
        "measured_on": report.measured_on,
        "bytes_per_element": report.bytes_per_element,
        "compute_dtype": report.compute_dtype,
        "phases": phases,
        "phase": phase,
        "job": report.job,
        "headline": {
            "steps": list(report.steps),
            "incomplete": report.incomplete,
            "wall_time_s": report.wall_time_s,
            **{k: head[k] for k in ("time_s", "flops", "bytes", "intensity", "memory_bound_fraction",
                                    "achieved_flops_per_s", "achieved_bytes_per_s", "coverage",
                                    "setup_time_s", "roofline_time_s", "uncounted_rows", "counted_time_s",
                                    "projected_time_s", "speedup", "projected_memory_bound_fraction",
                                    "launch_floor_fraction", "projected_flops_per_s")},
        },
        "by": by,
        "projection": None if before is None else projection_view(shown, before, folded),
        "rows": ([row_view(i, r, report.device, as_measured=as_measured) for i, r in enumerate(shown.rows)]
                 if folded is None
                 else [folded_view(i, f, report.device, as_measured=as_measured) for i, f in enumerate(folded)]),
        "findings": findings(report),  # the console's, for the whole run (a phase is a view of it)
        # groups of the listed rows: their ids are the table's
        "modules": _groups(listed, "module"),
        "module_phases": _groups(listed, "module", "phase"),  # prefill and decode apart
        "tree": tree,
        "phase_groups": [group_view(g) for g in shown.group_by("phase")],
        "program_points": program_points(shown, phase=phase),
        "comm": comm_view(report),  # collectives on the link's roof (torch.distributed), else null
        "trace": trace_view(report),  # analysed from a torch.profiler trace, else null
    }


def compare_view(run: str, report: Report, baseline: str, base: Report, diff: ReportDiff, *,
                 phase: str | None = None) -> dict[str, Any]:
    """`/compare`: the diff of the baseline (its "a" side) and this run ("b"), `diff_record` as
    `memwall diff --json` prints it, with which run, job and rank each side is, the baseline's
    roofs, and its points for the roofline (`phase`: that phase's only), as /report's rows and
    modules."""
    shown = base if phase is None else Report(rows=tuple(r for r in base.rows if r.phase == phase), device=base.device)
    folded = shown.folded()
    listed = tuple(f.row for f in folded)
    record = diff_record(diff)
    record["a"].update(run=baseline, job=base.job, rank=base.rank)
    record["b"].update(run=run, job=report.job, rank=report.rank)
    return {
        "run": run,
        "baseline": baseline,
        **record,
        "baseline_device": device_view(base.device),
        "baseline_rows": [folded_view(i, f, base.device) for i, f in enumerate(folded)],
        "baseline_modules": _groups(listed, "module"),
        "baseline_module_phases": _groups(listed, "module", "phase"),
    }


def comm_view(report: Report) -> dict[str, Any] | None:
    """`/report`'s "comm": the link, totals and the collective rows (None for a run without
    torch.distributed)."""
    link = report.link
    if link is None:
        return None
    head = headline(report).record()
    projection = report.comm_projection
    return {
        "rank": report.rank,
        "world_size": report.world_size,
        "backend": report.backend,
        "link": link_record(link),
        # several nodes: the network between them (`link` is then the link inside a node)
        "inter_link": None if report.inter_link is None else link_record(report.inter_link),
        "ranks_per_node": report.ranks_per_node,
        "nodes": report.nodes,
        "intra_bytes": report.intra_bytes,
        "inter_bytes": report.inter_bytes,
        # a communication what-if (world_size, intra_link, inter_link): per collective its
        # projected time and whether it becomes exposed, and the projected step time; else null
        "projection": None if projection is None else projection.record(),
        **{k: head[k] for k in ("message_bytes", "bytes_moved", "comm_time_s", "comm_share", "overlapped_s",
                                "exposed_s", "overlap_fraction", "untimed_calls")},
        "collectives": [row_view(i, c, report.device) for i, c in enumerate(report.collectives)],
    }


def ranks_view(run: str, reports: Mapping[int, Report], errors: dict[int, str], world_size: int,
               job: str | None = None, all_ranks: bool = False) -> dict[str, Any]:
    """`/ranks`: every rank's headline figures side by side, the slowest marked; ranks whose
    report is missing or unreadable are listed as such. Above `CONDENSE_ABOVE` ranks (unless
    `all_ranks`), `ranks` holds only the outliers, slowest first: `spread` condenses the rest."""
    heads = headlines(rank_heads(reports))
    slowest = slowest_rank(heads)
    known = set(reports) | set(errors)
    spread = rank_spread(reports, heads) if len(heads) > 1 else None
    condensed = spread is not None and len(heads) > CONDENSE_ABOVE and not all_ranks
    shown = heads
    if condensed and spread is not None:
        by_rank = {h.rank: h for h in heads}
        shown = [by_rank[o.rank] for o in (*spread.slowest, *spread.fastest)]
    return {
        "run": run,
        "job": job,
        "world_size": world_size,
        "slowest": None if slowest is None else slowest.rank,
        "condensed": condensed,
        "rank_count": len(heads),
        "spread": None if spread is None else spread.record(),
        "ranks": [rank_record(h, slowest) for h in shown],
        "errors": [{"rank": rank, "error": message} for rank, message in sorted(errors.items())],
        "missing": [r for r in range(world_size) if r not in known],
    }


#: `extra` keys only a memwall that measures memory (unless told not to) writes: where its op
#: times came from (recorder.py's TIME_SOURCE_KEY, written since after memory was first measured)
_WRITTEN_SINCE_MEMORY = ("time_source",)


def no_memory_reason(report: Report) -> str | None:
    """Why a report has no memory measurement: "trace" (analysed from a torch.profiler trace,
    which records no tensor lifetimes), "disabled" (a memwall that measures memory by default
    wrote it: profiled with memory=False or `memwall run --no-memory`), or "unknown" (that, or a
    memwall from before memory was measured); None when it has one."""
    if report.memory is not None:
        return None
    if isinstance(report.extra.get("trace"), dict):
        return "trace"
    if any(key in report.extra for key in _WRITTEN_SINCE_MEMORY):
        return "disabled"
    return "unknown"


#: what /memory_whatif says of a report without memory, by `no_memory_reason`
NO_MEMORY = {
    "trace": "it was analysed from a torch.profiler trace, which records no tensor lifetimes; profile the run with "
             "memwall.profile for the capacity view",
    "disabled": "it was profiled with memory=False (`memwall run --no-memory`); profile it again without "
                "memory=False / --no-memory to get one",
    "unknown": "it was profiled with memory=False (`memwall run --no-memory`) or by a memwall from before memory "
               "was measured; profile it again with memwall.profile to get one",
}


def memory_view(run: str, report: Report) -> dict[str, Any]:
    """`/memory`: the report's memory as its file holds it (`MemoryReport.to_dict()`), null for a
    report without one, with why (`no_memory`: `no_memory_reason`). Roll-ups by module prefix are
    the page's."""
    memory = report.memory
    return {
        "run": run,
        "rank": report.rank,
        "world_size": report.world_size,
        "job": report.job,
        "categories": list(CATEGORIES),
        "memory": None if memory is None else memory.to_dict(),
        "no_memory": no_memory_reason(report),
    }


def memory_whatif_view(run: str, report: Report, what_if: dict[str, Any], result: MemoryWhatIf, baseline_peak: int,
                       max_batch_scale: float | None, checkpointed: list[str], capacity_source: str) -> dict[str, Any]:
    """`/memory_whatif`: the what-if as asked, its `MemoryWhatIf`, the projection of the run
    without what-ifs (`baseline_peak_bytes`, what the change is measured against), the modules
    checkpointed and the largest batch scale that fits (null: no capacity known, or nothing that
    scales with the batch, which `max_batch_scale_unbounded` says)."""
    memory = report.memory
    assert memory is not None
    unbounded = max_batch_scale is not None and math.isinf(max_batch_scale)
    return {
        "run": run,
        "rank": report.rank,
        "what_if": what_if,
        "checkpointed": checkpointed,
        "measured_peak_bytes": memory.peak_bytes,
        "baseline_peak_bytes": baseline_peak,
        "peak_bytes": result.peak_bytes,
        "by_category": result.by_category,
        "extra_flops": result.extra_flops,
        "extra_time_s": _finite(result.extra_time_s),
        "comm_bytes": result.comm_bytes,
        "fits": result.fits,
        "capacity_bytes": result.capacity_bytes,
        "capacity_source": capacity_source if result.capacity_bytes else "",
        "notes": list(result.notes),
        "max_batch_scale": None if unbounded else max_batch_scale,
        "max_batch_scale_unbounded": unbounded,
    }
