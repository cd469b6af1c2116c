"""The `memwall` command: devices, calibrate, report."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from memwall_plugin.devices import PEAK_KEYS, DeviceSpec, device_table, parse_peaks, resolve_device
from memwall_plugin.report import Report, ReportError, load_report

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _si(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:,.1f} {prefix}{unit}"
    return f"{value:,.1f} {unit}"


def device_table_renderable(spec: DeviceSpec) -> Table:
    table = Table(title=f"{spec.name}  [{spec.kind}]", title_justify="left", show_edge=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ridge (FLOP/B)", justify="right")
    table.add_column("source")
    for key, figure in spec.peaks:
        ridge = spec.ridge_point(key)
        ridge_text = f"{ridge:.3g}" if ridge else "-"
        table.add_row(f"peak {key}", _si(figure.value, "FLOP/s"), ridge_text, figure.source)
    bw = spec.bandwidth
    bw_source = bw.source if bw else "unknown"
    table.add_row("memory bandwidth", _si(bw.value if bw else None, "B/s"), "", bw_source)
    if spec.memory_bytes:
        table.add_row("memory", _si(float(spec.memory_bytes), "B"), "", "")
    if spec.interconnect_bandwidth:
        table.add_row(f"interconnect ({spec.interconnect})", _si(spec.interconnect_bandwidth.value, "B/s"),
                      "", spec.interconnect_bandwidth.source)
    table.caption = "\n".join(filter(None, [spec.source, spec.notes]))
    table.caption_justify = "left"
    return table


def _cmd_devices(args: argparse.Namespace, console: Console) -> int:
    if args.list:
        table = Table(title="devices memwall knows (dense datasheet peaks, TFLOP/s; bandwidth GB/s)",
                      title_justify="left", show_edge=False)
        table.add_column("key")
        table.add_column("name")
        for key in PEAK_KEYS:
            table.add_column(key, justify="right")
        table.add_column("GB/s", justify="right")
        for spec in device_table():
            peaks = dict(spec.peaks)
            table.add_row(spec.key, spec.name, *(
                f"{peaks[k].value / 1e12:g}" if k in peaks else "-" for k in PEAK_KEYS
            ), f"{spec.bandwidth_bytes_per_s / 1e9:g}" if spec.bandwidth_bytes_per_s else "-")
        console.print(table)
        return 0
    spec = _resolve(args)
    if args.json:
        import json

        console.print_json(json.dumps(spec.to_dict()))
        return 0
    console.print(device_table_renderable(spec))
    return 0


def _resolve(args: argparse.Namespace) -> DeviceSpec:
    peaks: dict[str, float] = {}
    if getattr(args, "peaks", None):
        try:
            flops, bw = parse_peaks(args.peaks)
        except ValueError as exc:
            raise CliError(f"--peaks: {exc}") from None
        peaks = dict(flops)
        if bw is not None:
            peaks["bandwidth"] = bw
    try:
        return resolve_device(getattr(args, "device", None), peaks or None)
    except (LookupError, ValueError) as exc:
        raise CliError(str(exc)) from None


def _cmd_calibrate(args: argparse.Namespace, console: Console) -> int:
    import torch

    from memwall_plugin.calibrate import cache_dir, calibrate
    from memwall_plugin.devices import detect_device

    kind = args.kind or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise CliError("--kind cuda: no CUDA device is available here")
    spec = detect_device(kind)
    steps = 5  # four GEMM dtypes and STREAM
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"calibrating {spec.name}", total=steps)

        def advance(what: str) -> None:
            progress.update(task, description=f"calibrating: {what}", advance=1)

        calibration = calibrate(spec, quick=args.quick, progress=advance)
    console.print(f"measured ceilings cached in {cache_dir() / 'calibration.json'}")
    console.print(device_table_renderable(detect_device(kind)))
    skipped = {k: v for k, v in calibration.details.items() if str(v).startswith("skipped")}
    for key, why in skipped.items():
        console.print(f"[dim]{key}: {why}[/dim]")
    return 0


def _find_report(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.rglob("plugins/memwall/*.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise CliError(f"{path} holds no memwall report (looked for plugins/memwall/*.json under it)")
        return found[-1]
    raise CliError(f"{path}: no such file or directory; pass a logdir or a report .json")


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    from memwall_plugin.summary import format_summary

    path = _find_report(Path(args.path))
    try:
        report: Report = load_report(path)
    except ReportError as exc:
        raise CliError(str(exc)) from None
    if args.device or args.bytes_per_element:
        try:
            report = report.rescore(bytes_per_element=args.bytes_per_element, device=args.device)
        except (LookupError, ValueError) as exc:
            raise CliError(str(exc)) from None
    console.print(f"{path}")
    console.print(format_summary(report, top=args.top), markup=False, highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memwall",
        description="See where the memory wall stops your PyTorch run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall devices\n  memwall devices --device 'H100 SXM'\n"
               "  memwall calibrate\n  memwall report runs/exp1",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    dev = sub.add_parser(
        "devices", help="the detected device, its peaks and where each figure came from",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall devices\n  memwall devices --list\n"
               "  memwall devices --device h100-pcie\n  memwall devices --peaks fp32=80e9,bandwidth=23e9\n"
               "environment: MEMWALL_DEVICE names a device, MEMWALL_PEAKS overrides figures",
    )
    dev.add_argument("--device", help="a device from the table instead of the detected one (e.g. 'H100 SXM')")
    dev.add_argument("--peaks", help="override figures: fp32=80e9,bf16=1e9,bandwidth=23e9 (FLOP/s, bytes/s)")
    dev.add_argument("--list", action="store_true", help="list every device in memwall's table")
    dev.add_argument("--json", action="store_true", help="print the device as JSON")
    dev.set_defaults(func=_cmd_devices)

    cal = sub.add_parser(
        "calibrate", help="measure this machine's ceilings (GEMM per dtype, STREAM triad) and cache them",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall calibrate\n  memwall calibrate --quick\n"
               "the cache lives in $MEMWALL_CACHE_DIR (default ~/.cache/memwall)",
    )
    cal.add_argument("--quick", action="store_true", help="smaller problems: seconds instead of a minute")
    cal.add_argument("--kind", choices=["cpu", "cuda"],
                     help="which device to measure (default: cuda if present)")
    cal.set_defaults(func=_cmd_calibrate)

    rep = sub.add_parser(
        "report", help="the summary of a saved run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall report runs/exp1\n  memwall report runs/exp1 --device 'H100 SXM' "
               "--bytes-per-element 1",
    )
    rep.add_argument("path", help="a logdir (its newest report) or a report .json")
    rep.add_argument("--top", type=int, default=15, help="rows in the operator table (default 15)")
    rep.add_argument("--device", help="re-place the run on another device's roofline")
    rep.add_argument("--bytes-per-element", type=int, help="re-size every tensor (1 = the paper's 8-bit)")
    rep.set_defaults(func=_cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    console = Console()
    try:
        return int(args.func(args, console))
    except CliError as exc:
        print(f"memwall {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
