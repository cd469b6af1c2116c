"""Two runs side by side: what got faster or slower, by how much, and which ops crossed the ridge.

Run A is the one before (the baseline), run B the one after (a larger batch, bf16, torch.compile,
a new kernel). Ops are matched by (op, module, phase): a larger batch changes every shape, and a
cast changes the dtype, so the signatures of one op in one module and phase are folded together
on each side (`rows.group_rows`: FLOPs and bytes summed, placed under the roofs of the run's own
device). Speed-up is time A / time B: above 1, B is faster.

Pure: `memwall diff` (console_diff.py, cli.py) and the tab's /compare route read the same
`ReportDiff`, and `diff_record` is its one JSON projection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memwall_plugin.records import COMPILE_WALL_KEY, ordered_phases, seconds_in
from memwall_plugin.rows import Group, Row, group_by, group_rows

if TYPE_CHECKING:  # a report is read here, never built
    from memwall_plugin.devices import DeviceSpec
    from memwall_plugin.report import Report

#: what the main list of a diff is matched by: an op in its module and phase, a module, a phase
DIFF_BY = ("op", "module", "phase")


@dataclass(frozen=True)
class Compared:
    """One op (in its module and phase), module, phase or the whole run, in A and in B. A side is
    None where that run has no such work (an op fused away, a phase only one run has). `op`,
    `module` and `phase` say what is matched: an op has all three; a module its path; a phase its
    name; the whole run none."""

    op: str | None
    module: str | None
    phase: str | None
    a: Group | None
    b: Group | None
    signatures_a: int = 0  # rows folded into `a` (shapes, dtypes, overloads)
    signatures_b: int = 0

    @property
    def label(self) -> str:
        if self.op is not None:
            return f"{self.op} in {self.module or '(top level)'}, {self.phase}"
        if self.module is not None:
            return self.module or "(top level)"
        return self.phase if self.phase is not None else "total"

    @property
    def time_a_s(self) -> float:
        return self.a.time_s if self.a is not None else 0.0

    @property
    def time_b_s(self) -> float:
        return self.b.time_s if self.b is not None else 0.0

    @property
    def time_delta_s(self) -> float:
        """Time B - time A: negative where B is faster (a win), positive where slower (a loss)."""
        return self.time_b_s - self.time_a_s

    @property
    def speedup(self) -> float | None:
        """Time A / time B (None where either run lacks it, or B took no measurable time)."""
        if self.a is None or self.b is None or self.b.time_s <= 0:
            return None
        return self.a.time_s / self.b.time_s

    @property
    def bound_a(self) -> str | None:
        return self.a.bound if self.a is not None else None

    @property
    def bound_b(self) -> str | None:
        return self.b.bound if self.b is not None else None

    @property
    def bound_changed(self) -> bool:
        return self.a is not None and self.b is not None and self.a.bound != self.b.bound


#: the op of a region torch.compile (Inductor) compiled, run as one call
COMPILED_REGION = "higher_order.inductor_compiled_code"


@dataclass(frozen=True)
class Fusion:
    """The compiled regions of one run in a module and phase, against the ops of the other run
    they replaced: that run's ops in the same phase, in the module or below it, named in the
    regions' eager counterfactual (`Row.eager_ops`). `compiled` says which run compiled ("A" or
    "B"); `eager_bytes` is what the counterfactual says those ops move, beside what the other
    run measured them moving."""

    compared: Compared  # op COMPILED_REGION; the compiled run's side its regions, the other its ops
    compiled: str
    replaced_ops: tuple[str, ...]
    eager_bytes: int


@dataclass(frozen=True)
class ReportDiff:
    """Run A against run B: the whole run, each phase, the `by` list (ops, modules or phases),
    the ops whose bound changed, and notes on what makes the two harder to compare."""

    by: str
    total: Compared
    phases: tuple[Compared, ...]  # built-in phases in display order, then the user's labels
    entries: tuple[Compared, ...]  # matched by `by`; the longer of the two times first
    #: ops (matched by op, module and phase) on both sides whose bound differs
    bound_changes: tuple[Compared, ...]
    steps_a: int
    steps_b: int
    wall_time_a_s: float
    wall_time_b_s: float
    memory_bound_fraction_a: float  # share of op time in memory-bound ops
    memory_bound_fraction_b: float
    device_a: str | None  # the device each run is placed on (its roofs)
    device_b: str | None
    same_roofs: bool  # both placed on the same peaks and memory bandwidths
    notes: tuple[str, ...]
    #: each compiled region (by module and phase) with the other run's ops it replaced
    fusions: tuple[Fusion, ...] = ()

    @property
    def speedup(self) -> float | None:
        """Time in ops A / time in ops B: the whole run's speed-up."""
        return self.total.speedup

    @property
    def wall_speedup(self) -> float | None:
        return self.wall_time_a_s / self.wall_time_b_s if self.wall_time_b_s > 0 and self.wall_time_a_s > 0 else None

    def wins(self, top: int = 5) -> tuple[Compared, ...]:
        """The entries B saved the most time in, most first (an op gone from B saves all of its)."""
        return tuple(sorted((c for c in self.entries if c.time_delta_s < 0), key=_delta_order)[:top])

    def losses(self, top: int = 5) -> tuple[Compared, ...]:
        """The entries B spent the most extra time in, most first (an op new in B adds all of its)."""
        return tuple(sorted((c for c in self.entries if c.time_delta_s > 0), key=_delta_order)[:top])


def _delta_order(c: Compared) -> tuple[float, str]:
    return (-abs(c.time_delta_s), c.label)


def _roofs(device: DeviceSpec | None) -> tuple[Any, ...] | None:
    """What places rows on a roofline: the peaks and every memory level's bandwidth (not where
    the figures came from, nor the device's name)."""
    if device is None:
        return None
    return (tuple((key, fig.value) for key, fig in device.peaks),
            tuple((level.name, level.bandwidth_bytes_per_s) for level in device.memory_levels))


def _side(key: str, rows: list[Row]) -> Group | None:
    return group_rows(key, rows) if rows else None


def _match(a: Iterable[Row], b: Iterable[Row], key: Any) -> list[tuple[Any, list[Row], list[Row]]]:
    """Rows of A and of B bucketed by `key(row)`, in first-seen order (A's, then B's new ones)."""
    buckets: dict[Any, tuple[list[Row], list[Row]]] = {}
    for side, rows in ((0, a), (1, b)):
        for r in rows:
            buckets.setdefault(key(r), ([], []))[side].append(r)
    return [(k, ra, rb) for k, (ra, rb) in buckets.items()]


def _by_op(a: Report, b: Report) -> list[Compared]:
    return [
        Compared(op, module, phase, _side(op, ra), _side(op, rb), len(ra), len(rb))
        for (op, module, phase), ra, rb in _match(a.rows, b.rows, lambda r: (r.op, r.module, r.phase))
    ]


def _within(module: str, path: str) -> bool:
    return not module or path == module or path.startswith(module + ".")


def _fusions(a: Report, b: Report) -> list[Fusion]:
    """A run's compiled regions paired with the ops of the other run they replaced. An op is
    given to the innermost region (by module) of its phase whose counterfactual names it."""
    out: list[Fusion] = []
    for compiled, mine, theirs in (("B", b, a), ("A", a, b)):
        regions: dict[tuple[str, str], list[Row]] = {}
        for r in mine.rows:
            if r.op == COMPILED_REGION and r.eager_ops:
                regions.setdefault((r.module, r.phase), []).append(r)
        if not regions:
            continue
        names = {key: {op for r in rows for op, *_ in r.eager_ops} for key, rows in regions.items()}
        replaced: dict[tuple[str, str], list[Row]] = {key: [] for key in regions}
        for r in theirs.rows:
            if r.op == COMPILED_REGION:
                continue
            holders = [key for key in regions if key[1] == r.phase and r.op in names[key] and _within(key[0], r.module)]
            if holders:
                replaced[max(holders, key=lambda k: len(k[0]))].append(r)
        for (module, phase), rows in regions.items():
            ops = replaced[(module, phase)]
            if not ops:
                continue
            eager, fused = _side(COMPILED_REGION, ops), _side(COMPILED_REGION, rows)
            pair = (eager, fused) if compiled == "B" else (fused, eager)
            counts = (len(ops), len(rows)) if compiled == "B" else (len(rows), len(ops))
            out.append(Fusion(Compared(COMPILED_REGION, module, phase, *pair, *counts), compiled,
                              tuple(sorted({r.op for r in ops})), sum(r.eager_bytes or 0 for r in rows)))
    return sorted(out, key=lambda f: (-max(f.compared.time_a_s, f.compared.time_b_s), f.compared.label))


def _by_group(a: Report, b: Report, by: str) -> list[Compared]:
    groups_a = {g.key: g for g in group_by(a.rows, by)}
    groups_b = {g.key: g for g in group_by(b.rows, by)}
    count_a = _count(a.rows, by)
    count_b = _count(b.rows, by)
    keys = list(groups_a) + [k for k in groups_b if k not in groups_a]
    return [
        Compared(None, key if by == "module" else None, key if by == "phase" else None,
                 groups_a.get(key), groups_b.get(key), count_a.get(key, 0), count_b.get(key, 0))
        for key in keys
    ]


def _count(rows: Iterable[Row], by: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[getattr(r, by)] = out.get(getattr(r, by), 0) + 1
    return out


def _longest_first(entries: Iterable[Compared]) -> tuple[Compared, ...]:
    return tuple(sorted(entries, key=lambda c: (-max(c.time_a_s, c.time_b_s), c.label)))


def _ms(seconds: float) -> str:
    """3 significant digits, in seconds from one second on: 41.2 ms, 13.8 s (not 1.38e+04 ms)."""
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1e3:.3g} ms"


def _notes(a: Report, b: Report, same_roofs: bool, sides: tuple[str, str] = ("A", "B")) -> list[str]:
    """What makes the two runs harder to compare, each run called by its name in `sides`."""
    name_a, name_b = sides
    notes = []
    if a.device is None or b.device is None:
        missing = [side for side, rep in ((name_a, a), (name_b, b)) if rep.device is None]
        notes.append(f"{' and '.join(missing)} {'has' if len(missing) == 1 else 'have'} no device: bounds there are "
                     "unknown; times still compare")
    elif not same_roofs:
        notes.append(f"the roofs differ ({name_a} on {a.device.name}, {name_b} on {b.device.name}): each op's bound "
                     "and efficiency are against its own run's device; times compare as measured. Re-place both "
                     "on one device (memwall diff --device) to compare bounds")
    if a.measured_on and b.measured_on and a.measured_on != b.measured_on:
        notes.append(f"the times were measured on different machines ({name_a} on {a.measured_on}, "
                     f"{name_b} on {b.measured_on})")
    if a.bytes_per_element != b.bytes_per_element:
        def size(n: int | None) -> str:
            return "as measured" if n is None else f"{n} bytes per element"

        notes.append(f"the tensors are sized differently ({name_a}: {size(a.bytes_per_element)}, "
                     f"{name_b}: {size(b.bytes_per_element)})")
    steps_a, steps_b = len(a.steps) or 1, len(b.steps) or 1
    if steps_a != steps_b:
        notes.append(f"{name_a} recorded {steps_a} step(s), {name_b} {steps_b}: figures are totals over each run's "
                     f"recorded steps; per step, {name_a} took {_ms(a.total_time_s / steps_a)} in ops and {name_b} "
                     f"{_ms(b.total_time_s / steps_b)}")
    for side, rep in ((name_a, a), (name_b, b)):
        if rep.incomplete:
            notes.append(f"{side} is incomplete: its profiled block ended by an exception")
        compiling = seconds_in(rep.extra, COMPILE_WALL_KEY)
        if compiling > 0:
            notes.append(f"{side}'s wall time holds {_ms(compiling)} of torch.compile compiling (its first "
                         "steps): the op times compare; for the wall time, compare steps recorded after it")
    if a.collectives or b.collectives:
        notes.append("collectives (torch.distributed) are not compared here: `memwall report` shows each run's")
    return notes


def diff_reports(a: Report, b: Report, by: str = "op", sides: tuple[str, str] = ("A", "B")) -> ReportDiff:
    """Run A (before) against run B (after): totals, phases and the `by` list ("op": an op in its
    module and phase; "module"; "phase"), each side under its own run's roofs. `sides`: what the
    notes call the two runs (the tab's "the baseline" and "this run")."""
    if by not in DIFF_BY:
        raise ValueError(f"by must be one of {', '.join(DIFF_BY)}, got {by!r}")
    for side, rep in (("A", a), ("B", b)):
        if not rep.rows:
            raise ValueError(f"run {side} recorded no ops: there is nothing to compare")
    ops = _by_op(a, b)
    phases = {c.phase: c for c in _by_group(a, b, "phase")}
    same_roofs = _roofs(a.device) == _roofs(b.device)
    entries = ops if by == "op" else _by_group(a, b, by)
    return ReportDiff(
        by=by,
        total=Compared(None, None, None, a.totals(), b.totals(), len(a.rows), len(b.rows)),
        phases=tuple(phases[p] for p in ordered_phases(p for p in phases if p is not None)),
        entries=_longest_first(entries),
        bound_changes=_longest_first(c for c in ops if c.bound_changed),
        steps_a=len(a.steps), steps_b=len(b.steps),
        wall_time_a_s=a.wall_time_s, wall_time_b_s=b.wall_time_s,
        memory_bound_fraction_a=a.memory_bound_time_fraction, memory_bound_fraction_b=b.memory_bound_time_fraction,
        device_a=a.device.name if a.device is not None else None,
        device_b=b.device.name if b.device is not None else None,
        same_roofs=same_roofs,
        notes=tuple(_notes(a, b, same_roofs, sides)),
        fusions=tuple(_fusions(a, b)),
    )


# --- JSON ------------------------------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def side_record(g: Group | None, signatures: int) -> dict[str, Any] | None:
    """One side of a compared entry as JSON-ready data (None where the run lacks it)."""
    if g is None:
        return None
    return {
        "calls": g.calls, "flops": g.flops, "bytes": g.bytes, "time_s": g.time_s,
        "intensity": _finite(g.intensity), "bound": g.bound, "efficiency": _finite(g.efficiency),
        "achieved_flops_per_s": _finite(g.achieved_flops_per_s), "signatures": signatures,
    }


def compared_record(c: Compared) -> dict[str, Any]:
    return {
        "op": c.op, "module": c.module, "phase": c.phase, "label": c.label,
        "a": side_record(c.a, c.signatures_a), "b": side_record(c.b, c.signatures_b),
        "time_delta_s": c.time_delta_s, "speedup": _finite(c.speedup), "bound_changed": c.bound_changed,
    }


def diff_record(d: ReportDiff, top: int = 10) -> dict[str, Any]:
    """The diff as JSON-ready data: `memwall diff --json` prints it, the tab's /compare serves it."""
    return {
        "by": d.by,
        "speedup": _finite(d.speedup),
        "wall_speedup": _finite(d.wall_speedup),
        "a": {"steps": d.steps_a, "wall_time_s": d.wall_time_a_s, "device": d.device_a,
              "memory_bound_fraction": d.memory_bound_fraction_a},
        "b": {"steps": d.steps_b, "wall_time_s": d.wall_time_b_s, "device": d.device_b,
              "memory_bound_fraction": d.memory_bound_fraction_b},
        "same_roofs": d.same_roofs,
        "notes": list(d.notes),
        "total": compared_record(d.total),
        "phases": [compared_record(c) for c in d.phases],
        "entries": [compared_record(c) for c in d.entries],
        "wins": [compared_record(c) for c in d.wins(top)],
        "losses": [compared_record(c) for c in d.losses(top)],
        "bound_changes": [compared_record(c) for c in d.bound_changes],
        "fusions": [{**compared_record(f.compared), "compiled": f.compiled, "replaced_ops": list(f.replaced_ops),
                     "eager_bytes": f.eager_bytes} for f in d.fusions],
    }
