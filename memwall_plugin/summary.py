"""A plain-text summary of a report: headline totals, the top ops by time, phases, uncounted ops."""

from __future__ import annotations

from collections import defaultdict

from memwall_plugin.records import PHASES
from memwall_plugin.report import Report, Row


def si(value: float | None, unit: str = "") -> str:
    """12.3 G, 4.56 M: three significant digits with an SI prefix; "-" for unknown."""
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _intensity(flops: int | None, nbytes: int) -> str:
    if flops is None:
        return "uncounted"
    if nbytes == 0:
        return "-"
    return f"{flops / nbytes:.3g}"


_BOUND_MARK = {"memory": "MEMORY", "compute": "compute", "none": "-", "unknown": "?"}


def _ridge(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _table(headers: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Columns padded to fit; the first `left` columns are text (left-aligned), the rest numbers."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def format_summary(report: Report, top: int = 15) -> str:
    """The report as text: what ran, how much it computed and moved, and where time went."""
    total_time = report.total_time_s
    lines = [
        f"memwall: {len(report.steps)} step(s) recorded"
        + (" (INCOMPLETE: the profiled block raised)" if report.incomplete else ""),
        f"  op time {total_time * 1e3:.1f} ms   wall {report.wall_time_s * 1e3:.1f} ms   "
        f"FLOPs {si(report.total_flops)}   bytes {si(report.total_bytes, 'B')}   "
        f"intensity {_intensity(report.total_flops, report.total_bytes)} FLOP/B   "
        f"coverage {report.coverage:.1%} of op time counted",
    ]
    if report.bytes_per_element is not None:
        lines.append(f"  bytes re-scored at {report.bytes_per_element} byte(s) per element")
    device = report.device
    if device is not None:
        fp32 = device.peak("float32")
        bw = device.bandwidth
        lines.append(
            f"  device {device.name}: fp32 peak {si(fp32.value if fp32 else None, 'FLOP/s')} "
            f"({fp32.source if fp32 else 'unknown'}), bandwidth {si(bw.value if bw else None, 'B/s')} "
            f"({bw.source if bw else 'unknown'}), fp32 ridge {_ridge(device.ridge_point('float32'))} FLOP/B"
        )
        if report.measured_on and report.measured_on != device.name:
            lines.append(f"  times measured on {report.measured_on}; roofline of {device.name}")
        predicted = report.roofline_time_s
        lines.append(
            f"  memory-bound ops take {report.memory_bound_time_fraction:.1%} of op time; "
            f"roofline time {_ms(predicted)} vs measured {_ms(report.counted_time_s)} (counted ops)"
        )
    lines.append("")
    body = []
    for r in report.rows[:top]:
        share = r.time_s / total_time if total_time > 0 else 0.0
        eff = r.efficiency
        body.append([
            r.op.removeprefix("aten."), r.module or "(top)", r.phase, str(r.calls),
            f"{share:.1%}", si(r.flops), si(r.bytes, "B"), _intensity(r.flops, r.bytes),
            _BOUND_MARK.get(r.bound, r.bound), "-" if eff is None else f"{eff:.0%}",
        ])
    lines += _table(
        ["op", "module", "phase", "calls", "time", "FLOPs", "bytes", "FLOP/B", "bound", "of roof"], body, 3
    )

    by_phase: dict[str, list[Row]] = defaultdict(list)
    for r in report.rows:
        by_phase[r.phase].append(r)
    phase_rows = []
    for phase in PHASES:
        rows = by_phase.get(phase)
        if not rows:
            continue
        flops = sum(r.flops for r in rows if r.flops is not None)
        nbytes = sum(r.bytes for r in rows)
        time_s = sum(r.time_s for r in rows)
        share = time_s / total_time if total_time > 0 else 0.0
        phase_rows.append([phase, str(sum(r.calls for r in rows)), f"{share:.1%}",
                           si(flops), si(nbytes, "B"), _intensity(flops, nbytes)])
    lines += [""] + _table(["phase", "calls", "time", "FLOPs", "bytes", "FLOP/B"], phase_rows, 1)

    uncounted: dict[str, list[Row]] = defaultdict(list)
    for r in report.uncounted:
        uncounted[r.name].append(r)
    if uncounted:
        lines += ["", "uncounted ops (no FLOP formula; bytes still counted):"]
        for name, rows in sorted(uncounted.items(), key=lambda kv: -sum(r.time_s for r in kv[1])):
            lines.append(
                f"  {name}: {sum(r.calls for r in rows)} calls, {sum(r.time_s for r in rows) * 1e3:.2f} ms"
            )
    return "\n".join(lines)
