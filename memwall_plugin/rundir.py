"""The run store: where reports live in a logdir, what they are named, and which belong together.

A run directory holds `plugins/memwall/rank<R>_steps<FIRST>-<LAST>.json`, one file per recorded
window of one rank (`<stem>.N.json` when another job already took the name). Every report names
its job (`Report.job`), the same for every window and rank of one `memwall.profile` block or one
torchrun launch: windows of one job are merged per rank, and two jobs written into one logdir
(a hard-coded logdir, run twice) are never summed. `memwall report`, the tab and rank 0's
summary all read runs through this module; `memwall.profile` writes through it. A scan also
finds the torch.profiler traces outside run directories, which the tab offers to analyse.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memwall_plugin.kineto import TRACE_SUFFIXES
from memwall_plugin.rankheads import (
    CACHE_ABOVE,
    HeadCache,
    LazyRanks,
    RankHead,
    file_head,
    file_stamp,
    head_of,
    rank_heads,
    write_file_head,
)
from memwall_plugin.report import Report, ReportError, load_report, merge_reports
from memwall_plugin.validation import Stamp

PLUGIN_DIR = Path("plugins") / "memwall"
# "rank0_steps000000-000003.json"; "...-000003.1.json" when another job had the name
_WINDOW = re.compile(r"^rank(?P<rank>\d+)_steps(?P<first>\d+)-(?P<last>\d+)(?:\.\d+)?\.json$")
#: how many files of one name `publish` tries before giving up
_MAX_SUFFIX = 10_000


@dataclass(frozen=True)
class Window:
    """One report file: the recorded steps `first..last` of one rank (as its name says)."""

    id: str  # the file name without .json: what requests name
    path: Path
    rank: int
    first_step: int  # -1 when the file name does not say
    last_step: int


def window_name(rank: int, steps: tuple[int, ...]) -> str:
    return f"rank{rank}_steps{steps[0]:06d}-{steps[-1]:06d}.json"


def window_of(path: Path) -> Window:
    match = _WINDOW.match(path.name)
    if match is None:
        return Window(path.stem, path, 0, -1, -1)
    return Window(path.stem, path, int(match["rank"]), int(match["first"]), int(match["last"]))


@dataclass(frozen=True)
class Job:
    """The windows of one job in a run directory, and each rank's report (its windows merged)."""

    id: str  # Report.job ("" for reports written before memwall recorded jobs)
    windows: tuple[Window, ...]
    #: each rank's report, its windows merged (`read_jobs`: read in full when first asked for)
    ranks: Mapping[int, Report] = field(compare=False)
    created_unix_s: float  # when its newest window was written

    @property
    def label(self) -> str:
        return self.id or "(unnamed)"

    @property
    def heads(self) -> list[RankHead]:
        """Each rank's headline and placement, by rank, without reading the reports in full
        where `read_jobs` found them cached."""
        return rank_heads(self.ranks)


def group_jobs(loaded: Iterable[tuple[Window, Report]]) -> list[Job]:
    """Loaded windows grouped by job, each rank's windows merged; newest job first. Raises
    ValueError when windows of one job and rank contradict each other."""
    by_job: dict[str, list[tuple[Window, Report]]] = {}
    for window, report in loaded:
        if window.first_step >= 0 and report.rank != window.rank:
            raise ValueError(f"{window.id}.json holds rank {report.rank}'s report, its name says rank {window.rank}")
        by_job.setdefault(report.job, []).append((window, report))
    jobs = []
    for job, members in by_job.items():
        by_rank: dict[int, list[Report]] = {}
        for _, report in members:
            by_rank.setdefault(report.rank, []).append(report)
        ranks = {rank: merge_reports(reports) for rank, reports in sorted(by_rank.items())}
        windows = tuple(sorted((w for w, _ in members), key=lambda w: (w.rank, w.first_step, w.id)))
        jobs.append(Job(job, windows, ranks, max(r.created_unix_s for _, r in members)))
    return sorted(jobs, key=lambda j: (-j.created_unix_s, j.id))


def read_jobs(windows: Sequence[Window], load: Callable[[Window], Report],
              on_error: Callable[[Window, ReportError], None]) -> list[Job]:
    """`group_jobs` of the windows that can be read, each rank's report read in full only when
    asked for (`Job.ranks`) and its head from the sidecar (`rankheads.py`) where the files are
    unchanged since it was written: a large job's views read the heads of every rank and the
    report of one. A window that cannot be read goes to `on_error` and is left out; ValueError
    when windows of one job and rank contradict each other."""
    folders = {w.path.parent for w in windows}
    cache = HeadCache(next(iter(folders)), keep=len(windows) > CACHE_ABOVE and len(folders) == 1) \
        if folders else None
    read: dict[Window, Report] = {}
    found: list[tuple[Window, Stamp | None, RankHead]] = []
    for w in windows:
        stamp = file_stamp(w.path)  # before the read: a file changed meanwhile is read again next time
        head = cache.get((w.path.name,), (stamp,)) if cache is not None and stamp is not None else None
        if head is None and stamp is not None:  # the head its rank left when it wrote the file
            head = file_head(w.path, stamp)
            if head is not None and cache is not None:
                cache.put((w.path.name,), (stamp,), head)
        if head is None:
            try:
                report = read[w] = load(w)
            except ReportError as exc:
                on_error(w, exc)
                continue
            head = head_of(report)
            if cache is not None and stamp is not None:
                cache.put((w.path.name,), (stamp,), head)
        if w.first_step >= 0 and head.rank != w.rank:
            raise ValueError(f"{w.id}.json holds rank {head.rank}'s report, its name says rank {w.rank}")
        found.append((w, stamp, head))

    def load_rank(members: list[Window]) -> Report:
        return merge_reports(read[w] if w in read else load(w) for w in members)

    by_job: dict[str, list[tuple[Window, Stamp | None, RankHead]]] = {}
    for item in found:
        by_job.setdefault(item[2].job, []).append(item)
    jobs = []
    for job, members in by_job.items():
        by_rank: dict[int, list[tuple[Window, Stamp | None, RankHead]]] = {}
        for item in members:
            by_rank.setdefault(item[2].rank, []).append(item)
        heads: dict[int, RankHead] = {}
        loaded: dict[int, Report] = {}
        windows_of: dict[int, list[Window]] = {}
        for rank, items in sorted(by_rank.items()):
            items.sort(key=lambda i: i[0].path.name)
            windows_of[rank] = [i[0] for i in items]
            if len(items) == 1:
                heads[rank] = items[0][2]
                if items[0][0] in read:
                    loaded[rank] = read[items[0][0]]
                continue
            names = tuple(i[0].path.name for i in items)
            stamps = tuple(i[1] for i in items if i[1] is not None)
            cached = cache is not None and len(stamps) == len(items)
            head = cache.get(names, stamps) if cache is not None and cached else None
            if head is None:
                merged = loaded[rank] = load_rank(windows_of[rank])
                head = head_of(merged)
                if cache is not None and cached:
                    cache.put(names, stamps, head)
            heads[rank] = head
        ranks = LazyRanks(heads, functools.partial(_rank_of, load_rank, windows_of), loaded)
        ordered = tuple(sorted((i[0] for i in members), key=lambda w: (w.rank, w.first_step, w.id)))
        jobs.append(Job(job, ordered, ranks, max(i[2].created_unix_s for i in members)))
    if cache is not None:
        cache.save(w.path.name for w in windows)
    return sorted(jobs, key=lambda j: (-j.created_unix_s, j.id))


def _rank_of(load_rank: Callable[[list[Window]], Report], windows_of: dict[int, list[Window]], rank: int) -> Report:
    return load_rank(windows_of[rank])


def pick_job(jobs: list[Job], wanted: str | None) -> Job:
    """The job asked for (its id, or a unique prefix of it), else the newest. LookupError names
    the jobs there are."""
    if not jobs:
        raise LookupError("no readable report")
    if wanted is None or wanted == "":
        return jobs[0]
    exact = [j for j in jobs if wanted in (j.id, j.label)]  # "(unnamed)": reports from before jobs
    found = exact or [j for j in jobs if j.id.startswith(wanted)]
    if len(found) != 1:
        listing = ", ".join(j.label for j in jobs)
        what = "matches several jobs" if found else "is not a job here"
        raise LookupError(f"{wanted!r} {what}; the jobs are (newest first): {listing}")
    return found[0]


class RunDir:
    """One run directory: names, writes and reads its report windows."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.reports = self.root / PLUGIN_DIR

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # -- writing ---------------------------------------------------------------------------------
    def publish(self, report: Report) -> Path:
        """Save `report` under its window's name, or, when a file of another job already has that
        name (a second run or a restart writing into the same directory), as `<stem>.1.json`,
        `<stem>.2.json`, ...: never over another report. The name is claimed with a hard link,
        so two processes cannot both take it."""
        if not report.steps:
            raise ValueError("a report without recorded steps has no window to publish")
        name = window_name(report.rank, report.steps)
        directory = self.reports
        directory.mkdir(parents=True, exist_ok=True)
        staged = report.save(directory / f".{name}.{os.getpid()}.staged")
        stem = name.removesuffix(".json")
        published = None
        try:
            for attempt in range(_MAX_SUFFIX):
                candidate = directory / (name if attempt == 0 else f"{stem}.{attempt}.json")
                try:
                    os.link(staged, candidate)
                    published = candidate
                    break
                except FileExistsError:
                    continue
                except OSError:  # a filesystem without hard links: check, then rename
                    if candidate.exists():
                        continue
                    os.replace(staged, candidate)
                    published = candidate
                    break
            else:
                raise FileExistsError(f"{directory} already holds {_MAX_SUFFIX:,} reports named {stem}.*.json")
        finally:
            staged.unlink(missing_ok=True)
        assert published is not None
        if report.world_size > 1:  # a job's rank: its head for the job views (after the unlink: its stamp)
            write_file_head(published, report)
        return published

    # -- reading ---------------------------------------------------------------------------------
    def windows(self) -> tuple[Window, ...]:
        """Every report file, by rank and first step (files being written are skipped)."""
        try:
            names = [e.name for e in os.scandir(self.reports) if e.name.endswith(".json")
                     and not e.name.startswith(".") and not e.is_dir(follow_symlinks=False)]
        except OSError:
            return ()
        return tuple(sorted((window_of(self.reports / n) for n in names), key=lambda w: (w.rank, w.first_step, w.id)))

    def load(self, load: Callable[[Window], Report] | None = None,
             on_error: Callable[[Window, ReportError], None] | None = None) -> list[tuple[Window, Report]]:
        """Every window that can be read; one that cannot goes to `on_error` (and is left out),
        so one truncated file does not hide the rest."""
        read = load or (lambda w: load_report(w.path))
        out = []
        for w in self.windows():
            try:
                out.append((w, read(w)))
            except (ReportError, OSError) as exc:
                if on_error is not None:
                    on_error(w, exc if isinstance(exc, ReportError) else ReportError(f"{w.id}.json: {exc}"))
        return out

    def jobs(self, load: Callable[[Window], Report] | None = None,
             on_error: Callable[[Window, ReportError], None] | None = None) -> list[Job]:
        """The jobs of this run directory, newest first (`read_jobs`: each rank's report read in
        full when asked for, its head from the sidecar where unchanged); `load` reads a window,
        `on_error` hears of each that cannot be read (it is left out)."""
        return read_jobs(self.windows(), load or (lambda w: load_report(w.path)),
                         on_error or (lambda w, exc: None))

    def wait_for_ranks(self, mine: Report, timeout_s: float) -> Mapping[int, Report]:
        """The reports of every rank of `mine`'s job, waiting up to `timeout_s` for ranks whose
        last recorded step has not reached `mine`'s yet (they are still saving). Each poll reads
        the ranks' heads (`read_jobs`), not their reports in full."""
        last = max(mine.steps, default=-1)
        deadline = time.monotonic() + timeout_s
        while True:
            found: Mapping[int, Report] = {}
            try:
                found = next((j.ranks for j in self.jobs() if j.id == mine.job), {})
            except ValueError:  # windows that contradict each other: show none rather than wrong ones
                found = {}
            heads = {h.rank: h.headline for h in rank_heads(found)}
            done = all(
                r in heads and (heads[r].incomplete or max(heads[r].steps, default=-1) >= last)
                for r in range(mine.world_size)
            )
            if done or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)


@dataclass(frozen=True)
class TraceFile:
    """A torch.profiler trace in a logdir (`tensorboard_trace_handler`'s `*.pt.trace.json[.gz]`)
    in a directory that holds no memwall report: the tab offers to analyse it."""

    name: str  # its path relative to the logdir: what requests name
    path: Path
    size_bytes: int


def find_runs(logdir: str | os.PathLike[str]) -> dict[str, RunDir]:
    """Every run directory under `logdir` (its own too), by name: its path relative to the logdir,
    "." for the logdir itself, as TensorBoard names runs. Links are not followed."""
    return scan_logdir(logdir)[0]


def scan_logdir(logdir: str | os.PathLike[str]) -> tuple[dict[str, RunDir], dict[str, TraceFile]]:
    """`find_runs`, and every torch.profiler trace under `logdir` outside memwall's run
    directories, by its path relative to the logdir. A run directory that has memwall's report
    keeps its trace (`memwall.profile(kineto=True)` writes one beside it) for the PyTorch Profiler
    tab: memwall's own report counted every op as it ran. Links are not followed, hidden files
    and directories are skipped."""
    root = Path(logdir)
    runs: dict[str, RunDir] = {}
    traces: dict[Path, list[os.DirEntry[str]]] = {}
    if not root.is_dir():
        return runs, {}
    for here_text, dirs, files in os.walk(root, followlinks=False):
        here = Path(here_text)
        if here.name == PLUGIN_DIR.name and here.parent.name == PLUGIN_DIR.parent.name:
            run_root = here.parent.parent
            if any(f.endswith(".json") and not f.startswith(".") for f in files):
                name = run_root.relative_to(root).as_posix() if run_root != root else "."
                runs[name] = RunDir(run_root)
            dirs.clear()
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if any(f.endswith(TRACE_SUFFIXES) for f in files):
            try:
                traces[here] = [e for e in os.scandir(here) if e.name.endswith(TRACE_SUFFIXES)
                                and not e.name.startswith(".") and e.is_file(follow_symlinks=False)]
            except OSError:
                continue
    found: dict[str, TraceFile] = {}
    for here, entries in traces.items():
        if (here.relative_to(root).as_posix() if here != root else ".") in runs:
            continue
        for entry in entries:
            path = here / entry.name
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
            found[path.relative_to(root).as_posix()] = TraceFile(path.relative_to(root).as_posix(), path, size)
    return dict(sorted(runs.items())), dict(sorted(found.items()))


def new_job_id() -> str:
    """A job id for a run that is not one rank of a torch.distributed job: when it started, and
    a random part so two runs started in one second differ."""
    import uuid

    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
