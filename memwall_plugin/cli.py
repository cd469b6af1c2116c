"""The `memwall` command: run, report, analyze, diff, devices, calibrate."""

from __future__ import annotations

import argparse
import builtins
import csv
import dataclasses
import importlib.util
import json
import os
import runpy
import sys
import traceback
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from memwall_plugin.ceilings import link_record, parse_links
from memwall_plugin.console import Summary, SummaryOptions, binary_size, si
from memwall_plugin.console_diff import DiffLabels, DiffSummary
from memwall_plugin.devices import PEAK_KEYS, DeviceSpec, device_table, parse_peaks, resolve_device
from memwall_plugin.diff import diff_record, diff_reports
from memwall_plugin.headline import headline, rank_record, slowest_rank
from memwall_plugin.memory import parse_bytes_per_element
from memwall_plugin.rankheads import headlines, rank_heads
from memwall_plugin.ranks import CONDENSE_ABOVE, rank_spread
from memwall_plugin.report import Report, ReportError, load_report
from memwall_plugin.rows import ROW_COLUMNS, Group, row_record
from memwall_plugin.rundir import Job, RunDir, Window, find_runs, new_job_id, pick_job, read_jobs, window_of
from memwall_plugin.schedule import Schedule

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def device_table_renderable(spec: DeviceSpec) -> Table:
    table = Table(title=f"{spec.name}  [{spec.kind}]", title_justify="left", show_edge=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("ridge (FLOP/B)", justify="right")
    table.add_column("source")
    for key, figure in spec.peaks:
        ridge = spec.ridge_point(key)
        ridge_text = f"{ridge:.3g}" if ridge else "-"
        table.add_row(f"peak {key}", si(figure.value, "FLOP/s"), ridge_text, figure.source)
    for level in spec.caches:  # nearest first; capacity for the threads in use, where it comes from
        fp32 = spec.peak_flops_per_s("float32")
        ridge = fp32 / level.bandwidth.value if fp32 and level.bandwidth else None
        table.add_row(f"{level.name} bandwidth ({binary_size(level.capacity_bytes)})",
                      si(level.bandwidth.value if level.bandwidth else None, "B/s"),
                      f"{ridge:.3g}" if ridge else "-", level.bandwidth.source if level.bandwidth else "unknown")
    bw = spec.bandwidth
    bw_source = bw.source if bw else "unknown"
    main = spec.memory_levels[-1].name
    table.add_row(f"memory bandwidth ({main})", si(bw.value if bw else None, "B/s"), "", bw_source)
    if spec.memory_bytes:
        table.add_row("memory", si(float(spec.memory_bytes), "B"), "", "")
    if spec.interconnect_bandwidth:
        table.add_row(f"interconnect ({spec.interconnect})", si(spec.interconnect_bandwidth.value, "B/s"),
                      "", spec.interconnect_bandwidth.source)
    capacities = "; ".join(f"{level.name} {level.capacity_source}" for level in spec.caches if level.capacity_source)
    table.caption = "\n".join(filter(None, [spec.source, spec.notes, capacities and f"cache sizes: {capacities}"]))
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

        console.print_json(json.dumps(spec.to_dict()))
        return 0
    console.print(device_table_renderable(spec))
    return 0


def _peaks_option(text: str | None) -> dict[str, float] | None:
    """--peaks fp32=80e9,bandwidth=23e9 as profile()'s peaks= argument."""
    if not text:
        return None
    try:
        flops, bw = parse_peaks(text)
    except ValueError as exc:
        raise CliError(f"--peaks: {exc}") from None
    return {**flops, **({"bandwidth": bw} if bw is not None else {})}


def _resolve(args: argparse.Namespace) -> DeviceSpec:
    try:
        return resolve_device(getattr(args, "device", None), _peaks_option(getattr(args, "peaks", None)))
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
    steps = 5 + len(spec.caches)  # four GEMM dtypes, main memory, each cache level
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"calibrating {spec.name}", total=steps)

        def advance(what: str) -> None:
            progress.update(task, description=f"calibrating: {what}", advance=1)

        calibration = calibrate(spec, quick=args.quick, progress=advance)
    console.print(f"measured ceilings cached in {cache_dir() / 'calibration.json'}")
    console.print(device_table_renderable(detect_device(kind)))
    for name, found in calibration.details.get("levels", {}).items():
        shown = calibration.levels_bytes_per_s.get(name)
        if shown and found.get("measured") and shown > found["measured"]:
            console.print(f"[dim]{name}: measured {si(found['measured'], 'B/s')}; shown at a farther level's "
                          f"{si(shown, 'B/s')}, since a nearer level serves its data at least as fast[/dim]")
    skipped = {k: v for k, v in calibration.details.items() if str(v).startswith("skipped")}
    for key, why in skipped.items():
        console.print(f"[dim]{key}: {why}[/dim]")
    return 0


def _windows_of(path: Path) -> list[Window]:
    """The report files of one run: a file, or every window of the one run under a logdir."""
    if path.is_file():
        return [window_of(path)]
    if not path.is_dir():
        raise CliError(f"{path}: no such file or directory; pass a logdir or a report .json")
    runs = find_runs(path)
    if not runs:
        raise CliError(f"{path} holds no memwall report (looked for plugins/memwall/*.json under it)")
    if len(runs) > 1:
        listing = "\n  ".join(str(r.root) for r in runs.values())
        raise CliError(f"{path} holds {len(runs)} runs; pass one of:\n  {listing}")
    (run,) = runs.values()
    return list(run.windows())


def load_jobs(path: Path, command: str = "report") -> list[Job]:
    """Every job of a run, newest first, each rank's windows merged. A window that cannot be read
    is named on stderr and left out, so one truncated file does not hide the rest; only when none
    can be read is it an error."""
    windows = _windows_of(path)
    failed: list[str] = []
    try:
        jobs = read_jobs(windows, lambda w: load_report(w.path), lambda w, exc: failed.append(str(exc)))
    except ValueError as exc:  # windows that contradict each other
        raise CliError(f"{path}: its report files disagree: {exc}") from None
    if not jobs:
        raise CliError(failed[0] if len(failed) == 1 else
                       f"none of the {len(windows)} report files could be read:\n  " + "\n  ".join(failed))
    for message in failed:
        print(f"memwall {command}: left out: {message}", file=sys.stderr)
    if failed:
        what = "this summary" if command == "report" else f"the comparison of {path}"
        print(f"memwall {command}: {what} covers {len(windows) - len(failed)} of {len(windows)} report files",
              file=sys.stderr)
    return jobs


def load_run(path: Path, rank: int | None = None, job: Job | None = None) -> Report:
    """One rank of a run's job (default: the newest job, the lowest rank), its windows merged."""
    job = load_jobs(path)[0] if job is None else job
    ranks = job.ranks
    chosen = min(ranks) if rank is None else rank
    if chosen not in ranks:
        raise CliError(f"{path} has no report of rank {chosen}; it has rank(s) {', '.join(map(str, ranks))}")
    try:
        return ranks[chosen]  # read in full now (`read_jobs`): it may have changed since its head was read
    except ReportError as exc:
        raise CliError(str(exc)) from None


def report_json(report: Report, by: str | None = None, ranks: Mapping[int, Report] | None = None,
                jobs: list[Job] | None = None) -> dict[str, Any]:
    """Totals and rows (or groups) with their roofline fields, for `memwall report --json`."""
    head = headline(report).record()
    totals = {
        "flops": head["flops"], "bytes": head["bytes"], "time_s": head["time_s"],
        "wall_time_s": head["wall_time_s"], "intensity": head["intensity"],
        "memory_bound_time_fraction": head["memory_bound_fraction"],
        "roofline_time_s": head["roofline_time_s"], "coverage": head["coverage"],
        "setup_time_s": head["setup_time_s"], "tail_op_time_s": report.tail_op_time_s,
        "uncounted_rows": head["uncounted_rows"], "steps": head["steps"],
        "incomplete": head["incomplete"], "bytes_per_element": report.bytes_per_element,
        "compute_dtype": report.compute_dtype,
        # a what-if's (--device, --dtype, --bytes-per-element) projection of the counted ops; null as measured
        "projected_time_s": head["projected_time_s"], "speedup": head["speedup"],
    }
    out: dict[str, Any] = {
        "job": report.job,
        "device": None if report.device is None else report.device.to_dict(),
        "totals": totals,
        "rows": [row_record(r) for r in report.rows],
    }
    if jobs is not None and len(jobs) > 1:
        out["jobs"] = [{"job": j.id, "created_unix_s": j.created_unix_s, "ranks": sorted(j.ranks)} for j in jobs]
    if by is not None:
        out["groups"] = [group_record(g) for g in report.group_by(by)]
    if report.link is not None:
        out["comm"] = {
            "rank": report.rank, "world_size": report.world_size,
            "link": link_record(report.link),
            # several nodes: the network between them (`link` is then the link inside a node)
            "inter_link": None if report.inter_link is None else link_record(report.inter_link),
            "ranks_per_node": report.ranks_per_node, "nodes": report.nodes,
            "intra_bytes": report.intra_bytes, "inter_bytes": report.inter_bytes,
            # a communication what-if (Report.rescore(world_size=..., link=...)): projected times, exposed
            "projection": None if report.comm_projection is None else report.comm_projection.record(),
            "message_bytes": head["message_bytes"],
            "bytes_moved": head["bytes_moved"], "comm_time_s": head["comm_time_s"],
            "overlapped_s": head["overlapped_s"], "exposed_s": head["exposed_s"],
            "collectives": [row_record(c) for c in report.collectives],
        }
    if ranks and len(ranks) > 1:
        heads = headlines(rank_heads(ranks))
        slowest = slowest_rank(heads)
        out["ranks"] = [rank_record(h, slowest) for h in heads]
        spread = rank_spread(ranks, heads)
        out["rank_spread"] = None if spread is None else spread.record()
    return out


def group_record(g: Group) -> dict[str, Any]:
    return {
        "key": g.key, "calls": g.calls, "flops": g.flops, "bytes": g.bytes, "time_s": g.time_s,
        "intensity": g.intensity, "bound": g.bound, "efficiency": g.efficiency,
        "roofline_time_s": g.roofline_time_s, "projected_time_s": g.projected_time_s, "speedup": g.speedup,
    }


#: a text cell starting with one of these is read as a formula by spreadsheets
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None; text that a spreadsheet would run as a formula (a module or
    label named "=HYPERLINK(...)") gets a leading apostrophe. Numbers are left as they are."""
    if value is None:
        return ""
    if isinstance(value, list):  # a row's kernels: one cell
        value = "; ".join(map(str, value))
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    path = Path(args.path)
    jobs = load_jobs(path)
    try:
        job = pick_job(jobs, args.job)
    except LookupError as exc:
        raise CliError(f"--job {exc}") from None
    if len(jobs) > 1:
        others = ", ".join(j.label for j in jobs if j is not job)
        print(f"memwall report: {path} holds {len(jobs)} jobs (runs written into one logdir); this is "
              f"{'the newest, ' if job is jobs[0] else ''}{job.label}. Other(s): {others}; pick one with --job",
              file=sys.stderr)
    ranks = job.ranks
    report = load_run(path, args.rank, job)
    if args.memory or _memory_what_if_asked(args):
        return _memory_report(report, args, console)
    if args.device or args.bytes_per_element or args.dtype:
        try:
            ranks = {r: rep.rescore(bytes_per_element=args.bytes_per_element, device=args.device, dtype=args.dtype)
                     for r, rep in ranks.items()}
        except (LookupError, ValueError) as exc:
            raise CliError(str(exc)) from None
        report = ranks[report.rank]
    if args.json:
        by = None if args.by == "shape" else args.by  # --json's rows are per signature already
        sys.stdout.write(json.dumps(report_json(report, by, ranks, jobs), allow_nan=False) + "\n")
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        if args.by and args.by != "shape":
            writer.writerow(["key", "calls", "flops", "bytes", "time_s", "intensity", "bound",
                             "efficiency", "roofline_time_s", "projected_time_s", "speedup"])
            for g in report.group_by(args.by):
                record = group_record(g)
                writer.writerow([_csv_cell(v) for v in record.values()])
        else:
            writer.writerow(ROW_COLUMNS)
            for r in report.rows:
                record = row_record(r)
                writer.writerow([_csv_cell(record[c]) for c in ROW_COLUMNS])
        return 0
    # a job of many ranks: the job alone, unless a rank was asked for (then that rank in full)
    options = SummaryOptions(top=args.top, by=args.by or "op", all_ranks=args.all_ranks,
                             job_view=args.rank is None, logdir=str(path))
    console.print(Summary(report, options, ranks if len(ranks) > 1 else None))
    return 0


#: a trace this large (bytes on disk) is said to be read before its analysis begins
_SAY_READING_FROM = 32 * 1024 * 1024


def _cmd_analyze(args: argparse.Namespace, console: Console) -> int:
    from memwall_plugin.records import FLOAT32_ASSUMED
    from memwall_plugin.trace_analysis import TRACE_KEY, TraceError, analyze_trace, trace_files

    try:
        files = [f for path in args.traces for f in trace_files(Path(path))]
        peaks = _peaks_option(args.peaks)
    except (TraceError, ValueError) as exc:
        raise CliError(str(exc)) from None
    job = new_job_id()  # the traces of one command are one job: its ranks, or its profiler cycles
    reports = []
    left_out: list[str] = []
    for path in files:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if size >= _SAY_READING_FROM:  # reading and nesting a big trace takes a while before any count
            print(f"memwall analyze: reading {path} ({size / 1e6:,.0f} MB)", file=sys.stderr)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                report = analyze_trace(path, device=args.device, peaks=peaks)
            except TraceError as exc:
                if len(files) == 1:
                    raise CliError(str(exc)) from None
                # one damaged file (a rank that died mid-write) does not cost the others
                print(f"memwall analyze: left out: {exc}", file=sys.stderr)
                left_out.append(str(path))
                continue
            except (LookupError, ValueError) as exc:
                raise CliError(str(exc)) from None
        for w in caught:
            print(f"memwall analyze: {str(w.message).removeprefix('memwall: ')}", file=sys.stderr)
        report = dataclasses.replace(report, job=job)
        reasons = report.extra.get(TRACE_KEY, {}).get("uncounted_calls", {})
        for reason, calls in reasons.items():
            print(f"memwall analyze: {path}: {calls:,} op calls not counted: {reason}", file=sys.stderr)
        assumed = report.extra.get(TRACE_KEY, {}).get("float32_assumed_calls", {})
        if assumed:
            print(f"memwall analyze: {path}: {sum(assumed.values()):,} op calls ({', '.join(assumed)}) counted with "
                  f"their tensor lists taken as float32: {FLOAT32_ASSUMED}", file=sys.stderr)
        if args.logdir:
            saved = RunDir(args.logdir).publish(report)
            print(f"memwall analyze: {path}: report saved to {saved}", file=sys.stderr)
        reports.append((path, report))
    if not reports:
        raise CliError(f"none of the {len(files)} traces could be read (each is named above)")
    if args.json:
        records = [dict(report_json(r), trace=str(p)) for p, r in reports]
        sys.stdout.write(json.dumps(records[0] if len(files) == 1 else records, allow_nan=False) + "\n")
        return 1 if left_out else 0
    for path, report in reports:
        if len(reports) > 1:
            console.print(Text(f"{path}", style="bold"))
        console.print(Summary(report, SummaryOptions(top=args.top, by=args.by or "op")))
    if left_out:
        print(f"memwall analyze: {len(left_out)} of {len(files)} traces left out (unreadable, named above): "
              f"{', '.join(left_out)}", file=sys.stderr)
        return 1
    return 0


def _memory_what_if_asked(args: argparse.Namespace) -> bool:
    return bool(args.checkpoint or args.shard or args.precision or args.master_weights or args.batch_scale != 1.0
                or args.capacity)


def _parse_precision(text: str | None) -> dict[str, float]:
    try:
        return parse_bytes_per_element(text)
    except ValueError as exc:
        raise CliError(f"--precision: {exc}") from None


def _memory_report(report: Report, args: argparse.Namespace, console: Console) -> int:
    from memwall_plugin.console import memory_section

    mem = report.memory
    if mem is None:
        raise CliError(f"{args.path}: this run has no memory measurement (written by an older memwall, or with "
                       "memory=False); re-profile it with memwall.profile(memory=True)")
    capacity = None
    if args.capacity:
        try:
            capacity = resolve_device(args.capacity, None).memory_bytes
        except (LookupError, ValueError) as exc:
            raise CliError(f"--capacity: {exc}") from None
        if not capacity:
            raise CliError(f"--capacity {args.capacity!r}: memwall's table has no memory size for it")
    what_ifs = None
    result = None
    if _memory_what_if_asked(args):
        try:
            result = mem.what_if(checkpoint=args.checkpoint, shard=args.shard, world_size=args.world_size,
                                 bytes_per_element=_parse_precision(args.precision),
                                 batch_scale=args.batch_scale, master_weights=args.master_weights,
                                 capacity_bytes=capacity)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        asked = [f"checkpoint {', '.join(args.checkpoint)}" if args.checkpoint else "",
                 f"{args.shard} over {args.world_size} ranks" if args.shard else "",
                 f"precision {args.precision}" if args.precision else "",
                 "fp32 master weights" if args.master_weights else "",
                 f"batch x{args.batch_scale:g}" if args.batch_scale != 1.0 else "",
                 f"on {args.capacity}" if args.capacity else ""]
        what_ifs = [(" + ".join(a for a in asked if a), result)]
    if args.json:
        out: dict[str, Any] = {"job": report.job, "rank": report.rank, "memory": mem.to_dict()}
        if result is not None:
            out["what_if"] = dataclasses.asdict(result)
            out["what_if"]["notes"] = list(result.notes)
        sys.stdout.write(json.dumps(out, allow_nan=False) + "\n")
        return 0
    console.print(memory_section(mem, console.width < 100, what_ifs, width=console.width))
    if result is not None:
        for note in result.notes:
            console.print(Text(f"  {note}", style="dim"))
    return 0


def _side_jobs(side: str, path: Path) -> list[Job]:
    try:
        return load_jobs(path, command="diff")
    except CliError as exc:
        raise CliError(f"run {side}: {exc}") from None


def _side_job(side: str, path: Path, jobs: list[Job], wanted: str | None) -> Job:
    try:
        job = pick_job(jobs, wanted)
    except LookupError as exc:
        raise CliError(f"--job-{side.lower()} {exc}") from None
    if len(jobs) > 1 and wanted is None:
        others = ", ".join(j.label for j in jobs if j is not job)
        print(f"memwall diff: run {side} ({path}) holds {len(jobs)} jobs (runs written into one logdir); this is the "
              f"newest, {job.label}. Other(s): {others}; pick one with --job-{side.lower()}", file=sys.stderr)
    return job


def _diff_label(path: Path, job: Job, jobs: list[Job], report: Report) -> str:
    parts = [str(path)]
    if len(jobs) > 1:
        parts.append(f"job {job.label}")
    if report.world_size > 1:
        parts.append(f"rank {report.rank}")
    return ", ".join(parts)


def _cmd_diff(args: argparse.Namespace, console: Console) -> int:
    path_a, path_b = Path(args.run_a), Path(args.run_b)
    jobs_a = _side_jobs("A", path_a)
    same = path_a.exists() and path_b.exists() and path_a.resolve() == path_b.resolve()
    jobs_b = jobs_a if same else _side_jobs("B", path_b)
    if same and args.job_a is None and args.job_b is None:
        # one logdir written twice (a hard-coded logdir run before and after a change)
        if len(jobs_a) < 2:
            raise CliError(f"A and B are the same run ({path_a}), which holds one job: pass two runs, or two "
                           "jobs of one logdir with --job-a and --job-b")
        job_a, job_b = jobs_a[1], jobs_a[0]
        print(f"memwall diff: {path_a} holds {len(jobs_a)} jobs: A is the one before the newest ({job_a.label}), "
              f"B the newest ({job_b.label}); pick others with --job-a and --job-b", file=sys.stderr)
    else:
        job_a = _side_job("A", path_a, jobs_a, args.job_a)
        job_b = _side_job("B", path_b, jobs_b, args.job_b)
    reports = {}
    for side, path, job in (("A", path_a, job_a), ("B", path_b, job_b)):
        try:
            reports[side] = load_run(path, args.rank, job)
        except CliError as exc:
            raise CliError(f"run {side}: {exc}") from None
        if args.device or args.bytes_per_element:
            try:
                reports[side] = reports[side].rescore(bytes_per_element=args.bytes_per_element, device=args.device)
            except (LookupError, ValueError, TypeError) as exc:
                raise CliError(str(exc)) from None
    try:
        diff = diff_reports(reports["A"], reports["B"], by=args.by)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        out = diff_record(diff, top=args.top)
        for side, path, job in (("a", path_a, job_a), ("b", path_b, job_b)):
            out[side].update(path=str(path), job=job.id, rank=reports[side.upper()].rank)
        sys.stdout.write(json.dumps(out, allow_nan=False) + "\n")
        return 0
    labels = DiffLabels(_diff_label(path_a, job_a, jobs_a, reports["A"]),
                        _diff_label(path_b, job_b, jobs_b, reports["B"]))
    console.print(DiffSummary(diff, labels, top=args.top))
    return 0


def _parse_schedule(text: str) -> Schedule:
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in ("wait", "warmup", "active", "repeat", "skip_first"):
            raise CliError(f"--schedule {text!r}: write it as wait=1,warmup=1,active=3,repeat=2")
        try:
            values[name.strip()] = int(value)
        except ValueError:
            raise CliError(f"--schedule: {value!r} is not a whole number") from None
    try:
        return Schedule(**values)
    except ValueError as exc:
        raise CliError(f"--schedule: {exc}") from None


def _run_script(path: str) -> None:
    """Run the script at `path` (absolute) as `python script.py` runs it: in a fresh `__main__`
    module whose `__file__` is that path, with `sys.argv` as the caller set it (runpy.run_path
    would set `sys.argv[0]` to the path it is given, which `python script.py` leaves as typed)."""
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __loader__=None, __package__=None, __spec__=None,
                         __builtins__=builtins)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _cmd_run(args: argparse.Namespace, console: Console) -> int:
    script_args = list(args.args)
    if args.module:
        target, argv0 = args.module, args.module
        try:
            found = importlib.util.find_spec(args.module)
        except (ImportError, ValueError):  # a parent package that is missing or broken
            found = None
        if found is None:
            raise CliError(f"-m {args.module}: no module named {args.module!r} on sys.path (run from the folder "
                           "that holds it, or install it)")
    else:
        if not script_args:
            raise CliError("name a script to run: memwall run train.py [its arguments], or -m module")
        target = script_args.pop(0)
        path = Path(target)
        if not path.is_file():
            raise CliError(f"{target}: no such file; pass the path of a Python script")
        # its absolute path, as `python script.py` gives it (Python >= 3.9): `__file__`, and the
        # files its tracebacks name, are the same after the script changes directory
        argv0, target = target, os.path.abspath(target)  # sys.argv[0] stays as it was typed
        try:  # a script that cannot compile never runs: say so as Python does, with no report
            compile(path.read_bytes(), target, "exec")
        except (SyntaxError, ValueError) as exc:
            traceback.print_exception(type(exc), exc, None)
            return 1
    from memwall_plugin.distributed import default_run_stamp  # torch: only `memwall run` needs it
    from memwall_plugin.profile import profile

    stem = (args.module or Path(target).stem).replace(".", "_")
    # the ranks of one torchrun job share the launcher's start time, so they pick one directory
    logdir = Path(args.logdir or Path("runs") / f"{stem}-{default_run_stamp()}")
    # a run directory that cannot be one: said before the script runs, not after its whole run
    blocked = next((p for p in (logdir.absolute(), *logdir.absolute().parents) if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise CliError(f"--logdir {logdir}: {'it' if blocked == logdir.absolute() else blocked} is a file, not a "
                       "directory; pass a directory for the run's reports (it is made if missing)")
    peaks = _peaks_option(args.peaks)
    if args.link:
        try:
            parse_links(args.link)
        except ValueError as exc:
            raise CliError(f"--link: {exc}") from None
    try:
        prof = profile(
            logdir=logdir, schedule=_parse_schedule(args.schedule) if args.schedule else None,
            device=args.device, peaks=peaks, summary=False, step_on_optimizer=not args.no_step,
            link=args.link, memory=args.memory,
        )
    except (LookupError, ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None

    def summarize_before_the_signal_ends_it() -> None:
        """A SIGTERM or SIGHUP ends the script (memwall_plugin/terminate.py): the summary of what
        was recorded, as at its own end, before the signal ends the process."""
        sys.stdout.flush()
        report = prof.report()
        if args.summary and report.steps and (prof.rank == 0 or args.all_ranks):
            console.print(Summary(report, SummaryOptions(top=args.top, logdir=str(logdir)), prof.job_reports()))

    prof.on_ended_by_signal = summarize_before_the_signal_ends_it

    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [argv0, *script_args]
    if not args.module:
        sys.path.insert(0, str(Path(target).resolve().parent))  # as `python script.py` does
    code = 0
    try:
        with prof:
            if args.module:
                runpy.run_module(args.module, run_name="__main__", alter_sys=True)
            else:
                _run_script(target)
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", file=sys.stderr)
        code = 130
    except BaseException as exc:  # the script's own error: print it as Python would
        _print_script_traceback(exc)
        code = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    sys.stdout.flush()
    sys.stderr.flush()
    report = prof.report()
    if prof.rank != 0 and not args.all_ranks:  # under torchrun: rank 0 speaks for the job
        return code
    if args.summary and report.steps:
        console.print(Summary(report, SummaryOptions(top=args.top, logdir=str(logdir)), prof.job_reports()))
    for where in prof.nested:
        saved = f"report under {where}" if where else "no logdir: its report stayed in the script"
        console.print(f"memwall: the script opened its own memwall.profile, which recorded its block in place "
                      f"of memwall run ({saved}); memwall run recorded the rest", highlight=False, markup=False)
    if code not in (0, 130) and report.steps and not report.incomplete:
        console.print(f"memwall: the script exited with status {code}", highlight=False, markup=False)
    if prof.saved:
        console.print(f"memwall: report saved under {logdir / 'plugins' / 'memwall'}"
                      f"{' (incomplete)' if report.incomplete else ''}", highlight=False, markup=False,
                      soft_wrap=True)  # one line: a path to copy
    elif not report.steps and not prof.nested:
        console.print(prof.nothing_recorded(), highlight=False, markup=False)
    return code


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)  # sys.exit("message") prints it and exits with 1
    return 1


def _print_script_traceback(exc: BaseException) -> None:
    """The traceback from the script's own frames on (runpy and memwall frames left out)."""
    tb = exc.__traceback__
    here = str(Path(__file__).resolve().parent)
    while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(here)
                              or "runpy" in tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memwall",
        description="See where the memory wall stops your PyTorch run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall run train.py --lr 3e-4\n  memwall report runs/exp1\n"
               "  memwall diff runs/batch1 runs/batch8\n  memwall analyze trace.json\n"
               "  memwall devices\n  memwall calibrate",
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
        epilog="examples:\n  memwall report runs/exp1\n  memwall report runs/exp1 --by module --top 30\n"
               "  memwall report runs/exp1 --json > exp1.json\n  memwall report runs/exp1 --csv > exp1.csv\n"
               "  memwall report runs/exp1 --device 'H100 SXM' --bytes-per-element 1\n"
               "  memwall report runs/exp1 --device 'H100 SXM' --dtype bf16   # projected time in bf16 there\n"
               "A report file that cannot be read is named on stderr and left out of the summary; the\n"
               "exit status is 2 only when no report file of the run can be read.",
    )
    rep.add_argument("path", help="a run's logdir (all its recorded windows) or one report .json")
    rep.add_argument("--top", type=_positive, default=15, help="rows in the main table (default 15)")
    rep.add_argument("--by", choices=["op", "shape", "module", "phase"],
                     help="op (default): one row per op in its module and phase, input shapes folded; "
                          "shape: each input-shape signature its own row; module, phase: groups")
    out = rep.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print totals and rows as JSON")
    out.add_argument("--csv", action="store_true", help="print rows (or --by groups) as CSV")
    rep.add_argument("--rank", type=_non_negative,
                     help=f"the rank to summarise in full (default: the lowest; above {CONDENSE_ABOVE} ranks the "
                          "job alone: the ranks' spread, the slowest and fastest with why, the nodes)")
    rep.add_argument("--all-ranks", action="store_true",
                     help=f"list every rank of the job side by side (default: above {CONDENSE_ABOVE} ranks, "
                          "their spread, the slowest and fastest ranks with why, and the nodes)")
    rep.add_argument("--job", help="the job to summarise when runs were written into one logdir (its id or a "
                                   "prefix of it; default: the newest)")
    rep.add_argument("--device", help="re-place the run on another device's roofline")
    rep.add_argument("--bytes-per-element", type=int, help="re-size every tensor (1 = the paper's 8-bit)")
    rep.add_argument("--dtype", help="compute every floating-point op in this dtype (bf16, fp16, fp8, fp32): "
                                     "under its peak, every tensor at its size unless --bytes-per-element says")
    mem = rep.add_argument_group("memory (the capacity wall)")
    mem.add_argument("--memory", action="store_true",
                     help="show what held memory (peak, categories, modules) and what-ifs; with --json, as JSON")
    mem.add_argument("--checkpoint", action="append", metavar="PATH",
                     help="what-if: checkpoint the modules directly under PATH (every block of "
                          "'transformer.h'); repeatable")
    mem.add_argument("--shard", choices=["zero1", "zero2", "zero3", "fsdp"],
                     help="what-if: shard over --world-size ranks")
    mem.add_argument("--world-size", type=_positive, default=1, help="ranks for --shard (default 1)")
    mem.add_argument("--precision", metavar="CAT=BYTES,...",
                     help="what-if: element sizes per category, e.g. parameters=2,gradients=2,activations=1")
    mem.add_argument("--master-weights", action="store_true", help="what-if: keep fp32 master weights")
    mem.add_argument("--batch-scale", type=float, default=1.0, help="what-if: scale the batch (or sequence)")
    mem.add_argument("--capacity", metavar="DEVICE",
                     help="what-if: fit against this device's memory (e.g. 'H100 SXM') instead of the run's")
    rep.set_defaults(func=_cmd_report)

    ana = sub.add_parser(
        "analyze", help="count a torch.profiler trace (recorded with record_shapes=True) as memwall would",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall analyze trace.json\n  memwall analyze log/worker0.pt.trace.json.gz --json\n"
               "  memwall analyze log/ --logdir runs/from-trace   # every trace in log/, saved for the tab\n"
               "Each aten op is counted with memwall's formulas (output shapes from a replay on meta\n"
               "tensors); times and phases come from the trace. Ops whose inputs the trace did not\n"
               "record are listed as uncounted, with their time.",
    )
    ana.add_argument("traces", nargs="+", metavar="TRACE",
                     help="a trace .json or .json.gz, or a directory of them (tensorboard_trace_handler's)")
    ana.add_argument("--top", type=_positive, default=15, help="rows in the main table (default 15)")
    ana.add_argument("--by", choices=["op", "shape", "module", "phase"], help="as memwall report's --by")
    ana.add_argument("--json", action="store_true", help="print totals and rows as JSON (a list for several traces)")
    ana.add_argument("--logdir", help="also save each trace's report into this run directory (TensorBoard tab)")
    ana.add_argument("--device", help="place the rows on this device's roofline (default: the trace's GPU if "
                                      "memwall knows it, else this machine)")
    ana.add_argument("--peaks", help="override figures: fp32=80e9,bandwidth=23e9 (FLOP/s, bytes/s)")
    ana.set_defaults(func=_cmd_analyze)

    dif = sub.add_parser(
        "diff", help="two saved runs side by side: speed-ups, biggest wins and losses, ops that crossed the ridge",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall diff runs/batch1 runs/batch8\n  memwall diff runs/fp32 runs/bf16 --by module\n"
               "  memwall diff runs/eager runs/compiled --json > diff.json\n"
               "  memwall diff runs/exp1 runs/exp1           # the two newest jobs of one logdir\n"
               "  memwall diff runs/a100 runs/h100 --device 'H100 SXM'   # both on one roofline\n"
               "A is the run before, B the run after: speed-up = time A / time B (above 1, B is faster).\n"
               "Ops are matched by op, module and phase; their shapes and dtypes are folded together.",
    )
    dif.add_argument("run_a", metavar="RUN_A", help="the run before: a logdir or one report .json")
    dif.add_argument("run_b", metavar="RUN_B", help="the run after: a logdir or one report .json")
    dif.add_argument("--by", choices=["op", "module", "phase"], default="op",
                     help="what the side-by-side table lists: ops in their module and phase (default), modules, "
                          "or phases only")
    dif.add_argument("--top", type=_positive, default=15, help="rows in the side-by-side table (default 15)")
    dif.add_argument("--json", action="store_true", help="print the comparison as JSON")
    dif.add_argument("--rank", type=_non_negative, help="the rank to compare in both runs (default: each one's lowest)")
    dif.add_argument("--job-a", help="run A's job, when runs were written into one logdir (default: the newest)")
    dif.add_argument("--job-b", help="run B's job (default: the newest)")
    dif.add_argument("--device", help="re-place both runs on this device's roofline")
    dif.add_argument("--bytes-per-element", type=int, help="re-size every tensor of both runs (1 = 8-bit)")
    dif.set_defaults(func=_cmd_diff)

    run = sub.add_parser(
        "run", help="run an unmodified Python script under memwall",
        usage=RUN_USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  memwall run train.py --lr 3e-4\n  memwall run --logdir runs/exp1 train.py\n"
               "  memwall run --schedule wait=1,warmup=1,active=3 train.py\n  memwall run -m mypkg.train\n"
               "The script runs as `python script.py` would (sys.argv, __main__, exit code); a step ends\n"
               "at each optimizer step, and what runs after the last one is the run's tail: in the rows\n"
               "and totals, not a step.",
    )
    run.add_argument("-m", dest="module", help="run a module as `python -m module` does")
    run.add_argument("--logdir", help="run directory for the report (default runs/<script>-<time>)")
    run.add_argument("--schedule", help="record only some steps: wait=1,warmup=1,active=3,repeat=2")
    run.add_argument("--device", help="place the run on this device's roofline (e.g. 'H100 SXM'; one of "
                                      "another type than the run's is a what-if: times measured here, "
                                      "projected there)")
    run.add_argument("--peaks", help="override figures: fp32=80e9,bandwidth=23e9 (FLOP/s, bytes/s)")
    run.add_argument("--link", help="interconnect roof for collectives (torch.distributed): bytes/s per "
                                    "direction, or bandwidth=50e9,name=InfiniBand (one roof for all traffic), "
                                    "or per level: intra=900e9,inter=50e9 (inside a node, between nodes; "
                                    "names: inter_name=InfiniBand) (default: detected)")
    run.add_argument("--all-ranks", action="store_true",
                     help="under torchrun, every rank prints its summary (default: rank 0 only)")
    run.add_argument("--top", type=_positive, default=15, help="rows in the summary table (default 15)")
    run.add_argument("--no-summary", dest="summary", action="store_false", help="print no summary")
    run.add_argument("--no-step", action="store_true",
                     help="do not mark steps at optimizer steps (the whole run is one step)")
    run.add_argument("--no-memory", dest="memory", action="store_false",
                     help="do not measure memory (no capacity view; the lowest overhead, as memory=False)")
    run.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    run.set_defaults(func=_cmd_run)
    return parser


def _whole_number(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def _non_negative(text: str) -> int:
    return _whole_number(text, 0)


def _positive(text: str) -> int:
    return _whole_number(text, 1)


_RUN_OPTIONS_WITH_VALUE = {"--logdir", "--schedule", "--device", "--peaks", "--top", "--link"}
RUN_USAGE = "memwall run [options] script.py [script args]  |  memwall run [options] -m module [args]"


def _split_run(argv: list[str]) -> list[str]:
    """`run [options] script.py args` / `run [options] -m module args`: memwall's options end at
    the script or the module name; everything after belongs to the script, `--flags` included."""
    i = 1
    while i < len(argv):
        token = argv[i]
        if token == "-m":
            cut = min(i + 2, len(argv))
            return [*argv[:cut], "--", *argv[cut:]]
        if token == "--":
            return argv
        if token.startswith("-"):
            i += 1 if "=" in token or token not in _RUN_OPTIONS_WITH_VALUE else 2
            continue
        return [*argv[:i], "--", *argv[i:]]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        argv = _split_run(argv)
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # memwall's own options come before the script: say so with run's usage
            print(f"usage: {RUN_USAGE}\nmemwall run: error: unrecognized option {unknown[0]!r}; memwall's options "
                  "come before the script (`memwall run -h` lists them), the script's after it", file=sys.stderr)
            return EXIT_USAGE
    else:
        args = parser.parse_args(argv)
    if getattr(args, "args", None) and args.args[0] == "--":
        args.args = args.args[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    console = Console()
    try:
        return int(args.func(args, console))
    except CliError as exc:
        print(f"memwall {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `memwall report ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
