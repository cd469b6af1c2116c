"""The summary's distributed part: the link and the collectives on its roof, and the ranks of one
job side by side (slowest marked). Shown only for reports that have collectives or ranks."""

from __future__ import annotations

from collections.abc import Mapping

from rich import box
from rich.console import Group as RichGroup
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from memwall_plugin.comm import Communication, rank_totals, slowest_rank
from memwall_plugin.console import _dur, _pct, si
from memwall_plugin.report import Report

_COMM_STYLE = "bold magenta"


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                 show_edge=False, pad_edge=False, expand=False)


def communication_header(report: Report, comm: Communication) -> RichGroup:
    link = comm.link
    title = Text("Communication", style="bold")
    title.append(f"  rank {report.rank} of {report.world_size}{', ' + comm.backend if comm.backend else ''}")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, min_width=8)
    grid.add_column()
    roof = f"{si(link.bytes_per_s, 'B/s')} per direction ({link.bandwidth.source})" if link.bandwidth else "unknown"
    grid.add_row("link", f"{link.name}, {roof}")
    if link.note:
        grid.add_row("", Text(link.note, style="dim"))
    calls = sum(r.calls for r in comm.collectives)
    grid.add_row("moved", f"{calls:,} collective calls, {si(comm.message_bytes, 'B')} in messages, "
                          f"{si(comm.bytes_moved, 'B')} sent by this rank")
    if comm.comm_time_s is not None:
        share = comm.comm_time_s / report.wall_time_s if report.wall_time_s > 0 else None
        grid.add_row("time", Text(f"{_dur(comm.comm_time_s)} with a collective in flight, {_pct(share)} of wall",
                                  style=_COMM_STYLE if share is not None and share >= 0.3 else ""))
        if comm.overlap_fraction is not None:
            grid.add_row("overlap", f"{_pct(comm.overlap_fraction)} of it overlapped by other work on this rank, "
                                    f"{_dur(comm.exposed_s or 0.0)} exposed")
    else:
        grid.add_row("time", Text("not measured on the host: the collectives completed on a device", style="dim"))
    if comm.untimed_calls:
        grid.add_row("", Text(f"{comm.untimed_calls:,} call(s) not timed (in flight at a step's end, failed, "
                              "or on a device)", style="dim"))
    return RichGroup(title, grid)


def collectives_table(comm: Communication, narrow: bool, wide: bool, top: int = 15) -> Table:
    table = _table(f"Top {min(top, len(comm.collectives))} of {len(comm.collectives)} collectives by time")
    table.add_column("collective", no_wrap=True)
    table.add_column("phase", no_wrap=True)
    if wide:
        table.add_column("calls", justify="right", no_wrap=True)
    table.add_column("message", justify="right", no_wrap=True)
    if not narrow:
        table.add_column("sent", justify="right", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("bus B/s", justify="right", no_wrap=True)
    table.add_column("bound", no_wrap=True)
    table.add_column("roof", justify="right", no_wrap=True)
    for r in comm.collectives[:top]:
        per_call = r.message_bytes // r.calls if r.calls else 0
        cells = [r.kind, r.phase if wide else {"forward": "fwd", "backward": "bwd"}.get(r.phase, r.phase)]
        if wide:
            cells.append(f"{r.calls:,}")
        cells.append(si(per_call, "B"))
        if not narrow:
            cells.append(si(r.bytes_moved, "B"))
        cells += [_dur(r.time_s) if r.timed_calls else "-", si(r.bus_bandwidth_bytes_per_s),
                  "COMM", _pct(r.efficiency)]
        table.add_row(*cells[:-2], Text(cells[-2], style=_COMM_STYLE), cells[-1])
    return table


def ranks_table(ranks: Mapping[int, Report], narrow: bool) -> Table:
    totals = [rank_totals(r) for r in ranks.values()]
    slowest = slowest_rank(totals)
    table = _table("Ranks side by side")
    names = ["rank", "wall", "in ops", "FLOPs", "bytes", "sent", "comm", "exposed"]
    if narrow:
        names.remove("bytes")
        names.remove("exposed")
    for name in names:
        table.add_column(name, justify="left" if name == "rank" else "right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for t in totals:
        cells = {"rank": str(t.rank), "wall": _dur(t.wall_time_s), "in ops": _dur(t.op_time_s),
                 "FLOPs": si(t.flops), "bytes": si(t.bytes, "B"), "sent": si(t.comm_bytes_moved, "B"),
                 "comm": _pct(t.comm_share), "exposed": "-" if t.exposed_comm_s is None else _dur(t.exposed_comm_s)}
        mark = Text("slowest", style="bold red") if slowest is not None and t.rank == slowest.rank else Text("")
        if t.incomplete:
            mark.append(" incomplete", style="red")
        table.add_row(*(cells[n] for n in names), mark)
    return table


def comm_sections(report: Report, ranks: Mapping[int, Report] | None, narrow: bool,
                  wide: bool) -> list[RenderableType]:
    """The parts to add to the summary (none for a single-process run)."""
    parts: list[RenderableType] = []
    comm = report.comm
    if comm is not None:
        parts.append(communication_header(report, comm))
        if comm.collectives:
            parts.append(collectives_table(comm, narrow, wide))
    if ranks and len(ranks) > 1:
        parts.append(ranks_table(ranks, narrow))
        missing = [r for r in range(report.world_size) if r not in ranks]
        if missing:
            parts.append(Text(f"no report (yet) from rank(s) {', '.join(map(str, missing))}", style="dim"))
    return parts
