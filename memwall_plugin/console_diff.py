"""`memwall diff` in the terminal: two runs side by side (a rich renderable over a `ReportDiff`):
the whole run and each phase with its speed-up, the ops (modules, phases) A against B, the biggest
wins and losses, the ops that crossed the ridge, and what makes the two hard to compare.
Every name from a report is drawn as plain text, never as rich markup.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from memwall_plugin.console import _SHORT_PHASE, NARROW, WIDE, _bound, _dur, _num, _pct, _text, si
from memwall_plugin.diff import Compared, ReportDiff
from memwall_plugin.rows import Group

VERY_WIDE = 140  # from this many columns the operator table shows FLOPs too (and from 160, bytes)


@dataclass(frozen=True)
class DiffLabels:
    """What the two runs are called in the header (their paths, jobs, ranks)."""

    a: str = "A"
    b: str = "B"


def speedup_text(value: float | None) -> Text:
    """2.31x in green (B faster), 0.52x in red (B slower), "-" where either lacks the work."""
    if value is None:
        return Text("-", style="dim")
    style = "green" if value >= 1.05 else "red" if value <= 1 / 1.05 else ""
    return Text(f"{value:.3g}x", style=style)


def _delta(seconds: float) -> Text:
    if seconds == 0:
        return Text("0", style="dim")
    sign = "+" if seconds > 0 else "-"
    return Text(f"{sign}{_dur(abs(seconds))}", style="red" if seconds > 0 else "green")


def _time(g: Group | None) -> str:
    return "-" if g is None else _dur(g.time_s)


def _bounds(c: Compared) -> Text:
    """"MEMORY -> compute" where the bound changed, else the one bound (a side alone: its own)."""
    if c.bound_changed:
        text = _bound(c.bound_a or "")
        text.append(" -> ")
        text.append_text(_bound(c.bound_b or ""))
        return text
    if c.b is not None:
        return _bound(c.b.bound)
    return _bound(c.a.bound) if c.a is not None else Text("")


def _pair(c: Compared, show: Callable[[Group], str]) -> str:
    """"6.29 M -> 50.3 M": a figure in A and in B ("-" on a side that lacks the work)."""
    return f"{show(c.a) if c.a else '-'} -> {show(c.b) if c.b else '-'}"


def _presence(c: Compared) -> Text:
    if c.a is None:
        return Text("new in B", style="italic")
    if c.b is None:
        return Text("gone in B", style="italic")
    return Text("")


class DiffSummary:
    """The diff of two runs, as a rich renderable."""

    def __init__(self, diff: ReportDiff, labels: DiffLabels | None = None, top: int = 15, changes: int = 5) -> None:
        self.diff = diff
        self.labels = labels or DiffLabels()
        self.top = top  # rows in the side-by-side table
        self.changes = changes  # rows in the wins and in the losses

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._width = options.max_width
        self._narrow = options.max_width < NARROW
        self._wide = options.max_width >= WIDE
        d = self.diff
        yield self.header()
        yield Text("")
        yield self.phase_table()
        if d.by != "phase":
            yield Text("")
            yield self.entries_table()
        for title, rows in (("Biggest wins (time saved in B)", d.wins(self.changes)),
                            ("Biggest losses (time added in B)", d.losses(self.changes))):
            if rows:
                yield Text("")
                yield self.change_table(title, rows)
        if d.fusions:
            yield Text("")
            yield self.fusion_table()
        yield Text("")
        yield self.bound_table()
        if d.notes:
            yield Text("")
            yield Text("Notes", style="bold")
            grid = Table.grid(padding=(0, 1))
            grid.add_column(no_wrap=True)
            grid.add_column()
            for note in d.notes:
                grid.add_row("*", _text(note))
            yield grid

    _narrow = False
    _wide = True
    _width = WIDE

    # -- parts ---------------------------------------------------------------------------------
    def header(self) -> RichGroup:
        d, labels = self.diff, self.labels
        a, b = d.total.a, d.total.b
        assert a is not None and b is not None
        title = Text("memwall diff", style="bold")
        title.append("  speed-up = time A / time B (above 1: B is faster)", style="dim")
        lines = [title]
        for side, label, steps, device in (("A", labels.a, d.steps_a, d.device_a),
                                           ("B", labels.b, d.steps_b, d.device_b)):
            line = Text(f"{side}        ")
            line.append_text(_text(label))
            line.append_text(_text(f"  ({steps} step{'s' if steps != 1 else ''}, on {device or 'no device'})",
                                   style="dim"))
            lines.append(line)
        time = Text(f"time     {_dur(a.time_s)} -> {_dur(b.time_s)} in ops: ")
        time.append_text(speedup_text(d.speedup))
        if d.wall_speedup is not None:
            time.append(f"  (wall {_dur(d.wall_time_a_s)} -> {_dur(d.wall_time_b_s)}: ")
            time.append_text(speedup_text(d.wall_speedup))
            time.append(")")
        lines.append(time)
        lines.append(Text(f"work     {si(a.flops, 'FLOP')} -> {si(b.flops, 'FLOP')}, "
                          f"{si(a.bytes, 'B')} -> {si(b.bytes, 'B')} moved"))
        lines.append(Text(f"FLOP/B   {_num(a.intensity)} -> {_num(b.intensity)}; memory-bound "
                          f"{_pct(d.memory_bound_fraction_a)} -> {_pct(d.memory_bound_fraction_b)} of op time"))
        roofs = Text("roofs    ")
        if d.same_roofs:
            roofs.append_text(_text(f"the same ({d.device_a or 'no device'})"))
        else:
            roofs.append("DIFFERENT", style="bold yellow")
            roofs.append_text(_text(f" (A: {d.device_a or 'no device'}, B: {d.device_b or 'no device'}): "
                                    "bounds are each against its own device; times compare as measured"))
        lines.append(roofs)
        return RichGroup(*lines)

    def _table(self, title: str) -> Table:
        return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                     show_edge=False, pad_edge=False, expand=False)

    def phase_table(self) -> Table:
        d = self.diff
        table = self._table("Phases")
        table.add_column("phase", no_wrap=True)
        for name in ("time A", "time B", "speed-up"):
            table.add_column(name, justify="right", no_wrap=True)
        if not self._narrow:
            table.add_column("FLOP/B A", justify="right", no_wrap=True)
            table.add_column("FLOP/B B", justify="right", no_wrap=True)
        table.add_column("bound", no_wrap=True)
        for c in (*d.phases, d.total):
            label = _text(self._phase(c.phase)) if c.phase is not None else Text("total", style="bold")
            cells: list[Text | str] = [label, _time(c.a), _time(c.b), speedup_text(c.speedup)]
            if not self._narrow:
                cells += [_num(c.a.intensity if c.a else None), _num(c.b.intensity if c.b else None)]
            table.add_row(*cells, _bounds(c) if c.phase is not None else Text(""))
        return table

    def _phase(self, phase: str) -> str:
        return phase if self._wide else _SHORT_PHASE.get(phase, phase)

    def _keys(self) -> list[str]:
        return {"op": ["op", "module", "phase"], "module": ["module"], "phase": ["phase"]}[self.diff.by]

    def _key_cells(self, c: Compared) -> list[Text]:
        cells = []
        for key in self._keys():
            if key == "op":
                cells.append(_text((c.op or "").removeprefix("aten.")))
            elif key == "module":
                cells.append(_text(c.module or "(top)"))
            else:
                cells.append(_text(self._phase(c.phase or "")))
        return cells

    def _key_columns(self, table: Table) -> None:
        for key in self._keys():
            if key == "module":
                table.add_column(key, overflow="fold", min_width=8)
            else:
                table.add_column(key, no_wrap=True, overflow="ellipsis", max_width=28 if self._wide else 16)

    def entries_table(self) -> Table:
        d = self.diff
        what = {"op": "ops (in their module and phase; shapes folded)", "module": "modules", "phase": "phases"}[d.by]
        table = self._table(f"Top {min(self.top, len(d.entries))} of {len(d.entries)} {what}, by time")
        self._key_columns(table)
        # what fits: the times and the speed-up always; then intensity, FLOPs and bytes as it widens
        numbers = ["time A", "time B", "speed-up"]
        if self._wide:
            numbers.append("FLOP/B A -> B")
        if self._width >= VERY_WIDE:
            numbers.insert(3, "FLOPs A -> B")
        if self._width >= VERY_WIDE + 20:
            numbers.insert(4, "bytes A -> B")
        for name in numbers:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("bound", no_wrap=True)
        for c in d.entries[: self.top]:
            cells: dict[str, Text | str] = {
                "time A": _time(c.a), "time B": _time(c.b),
                "speed-up": speedup_text(c.speedup) if c.a and c.b else _presence(c),
                "FLOPs A -> B": _pair(c, lambda g: si(g.flops)),
                "bytes A -> B": _pair(c, lambda g: si(g.bytes, "B")),
                "FLOP/B A -> B": _pair(c, lambda g: _num(g.intensity)),
            }
            table.add_row(*self._key_cells(c), *(cells[n] for n in numbers), _bounds(c))
        return table

    def change_table(self, title: str, rows: tuple[Compared, ...]) -> Table:
        table = self._table(title)
        self._key_columns(table)
        for name in ("time A", "time B", "change", "speed-up"):
            table.add_column(name, justify="right", no_wrap=True)
        for c in rows:
            table.add_row(*self._key_cells(c), _time(c.a), _time(c.b), _delta(c.time_delta_s),
                          speedup_text(c.speedup) if c.a and c.b else _presence(c))
        return table

    def fusion_table(self) -> Table:
        """Each compiled region (by module and phase) beside the other run's ops it replaced."""
        d = self.diff
        table = self._table(f"Compiled regions and the eager ops they replaced ({len(d.fusions)})")
        table.add_column("module", overflow="fold", min_width=8)
        table.add_column("phase", no_wrap=True)
        table.add_column("compiled in", no_wrap=True)
        table.add_column("eager ops replaced", overflow="fold", min_width=12)
        for name in ("time A", "time B", "speed-up", "bytes A -> B"):
            table.add_column(name, justify="right", no_wrap=True)
        for f in d.fusions:
            c = f.compared
            ops = ", ".join(op.removeprefix("aten.") for op in f.replaced_ops)
            table.add_row(_text(c.module or "(top)"), _text(self._phase(c.phase or "")), f.compiled, _text(ops),
                          _time(c.a), _time(c.b), speedup_text(c.speedup), _pair(c, lambda g: si(g.bytes, "B")))
        return table

    def bound_table(self) -> RichGroup:
        rows = self.diff.bound_changes
        if not rows:
            return RichGroup(Text("Bound changes: none (no op, matched by op, module and phase, crossed the ridge)",
                                  style="bold"))
        title = Text(f"Bound changes: {len(rows)} op{'s' if len(rows) != 1 else ''} crossed the ridge", style="bold")
        title.append(" (matched by op, module and phase)", style="dim")
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
        table.add_column("op", no_wrap=True, overflow="ellipsis", max_width=28 if self._wide else 16)
        table.add_column("module", overflow="fold", min_width=8)
        table.add_column("phase", no_wrap=True)
        numbers = ["FLOP/B A", "FLOP/B B"] + (["% of roof A", "% of roof B"] if self._wide else [])
        for name in numbers:
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("bound A -> B", no_wrap=True)
        for c in rows:
            assert c.a is not None and c.b is not None
            cells = {"FLOP/B A": _num(c.a.intensity), "FLOP/B B": _num(c.b.intensity),
                     "% of roof A": _pct(c.a.efficiency), "% of roof B": _pct(c.b.efficiency)}
            table.add_row(_text((c.op or "").removeprefix("aten.")), _text(c.module or "(top)"),
                          _text(self._phase(c.phase or "")), *(cells[n] for n in numbers), _bounds(c))
        return RichGroup(title, table)


def render_diff_text(diff: ReportDiff, width: int = 100, labels: DiffLabels | None = None, top: int = 15) -> str:
    """The diff as plain text (no color), `width` columns wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      force_jupyter=False, legacy_windows=False, soft_wrap=False)
    console.print(DiffSummary(diff, labels, top))
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"
