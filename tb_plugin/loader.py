"""Finds memwall reports under a logdir and loads them, without blocking TensorBoard's server.

A run is a directory holding `plugins/memwall/*.json` (the run store, `rundir.py`); its name is
its path relative to the logdir ("." for the logdir itself), as TensorBoard names runs. Scans run on a background thread
started on first use (never at import); requests read the last completed scan and trigger a
fresh one when it is older than `rescan_s`, so new runs and new steps appear while TensorBoard
runs. Parsed reports (and files that cannot be read) are cached by the stamp of the open file
they were read from, so a report replaced while it is read is never cached under the wrong
version. Only files under the logdir are read: a link to a file elsewhere is refused.

A torch.profiler trace (`*.pt.trace.json[.gz]`) in a directory without memwall's reports is a run
too, named by its path relative to the logdir: it is analysed (`analyze_trace`) when first asked
for, once even when requests race, and its report (or its error) cached by the file's stamp.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memwall_plugin.kineto import TraceError
from memwall_plugin.report import Report, ReportError, parse_report
from memwall_plugin.rundir import TraceFile, Window, scan_logdir
from memwall_plugin.trace_analysis import analyze_trace
from memwall_plugin.validation import ReportFile, Stamp, is_inside

__all__ = ["ReportLoader", "Run", "TraceFile", "Window", "scan"]

logger = logging.getLogger(__name__)

#: a trace's state in `/runs`
NOT_ANALYSED, ANALYSING, ANALYSED, FAILED = "not analysed", "analysing", "analysed", "failed"


@dataclass(frozen=True)
class Run:
    """A run directory as the tab names it, and its report windows (`rundir.py`)."""

    name: str
    windows: tuple[Window, ...]
    #: a torch.profiler trace memwall analyses when asked (its one window is the trace file)
    trace: TraceFile | None = None

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted({w.rank for w in self.windows}))


def scan(logdir: Path) -> dict[str, Run]:
    """Every run under `logdir` with its report windows, sorted by rank and first step; then the
    torch.profiler traces outside memwall's run directories, a run each."""
    runs = {}
    stores, traces = scan_logdir(logdir)
    for name, store in stores.items():
        windows = store.windows()
        if windows:
            runs[name] = Run(name, windows)
    for name, trace in traces.items():
        if name not in runs:
            runs[name] = Run(name, (Window(trace.path.name, trace.path, 0, -1, -1),), trace)
    return runs


def _trace_stamp(path: Path) -> Stamp:
    st = os.stat(path, follow_symlinks=False)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ReportLoader:
    """Cached, thread-safe access to the runs and reports under one logdir."""

    def __init__(
        self, logdir: str | os.PathLike[str], rescan_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logdir = Path(logdir).expanduser().resolve()
        self.rescan_s = rescan_s
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, Run] = {}
        self._scanned_at: float | None = None
        self._scanning: threading.Thread | None = None
        self._first_scan = threading.Event()
        self._reports: dict[Path, tuple[Stamp, Report | ReportError]] = {}
        self._traces: dict[Path, tuple[Stamp, Report | TraceError]] = {}
        self._analysing: dict[Path, threading.Lock] = {}

    # -- scanning ------------------------------------------------------------------------------
    def _scan_now(self) -> None:
        try:
            runs = scan(self.logdir)
        except OSError:
            runs = {}
        with self._lock:
            self._runs = runs
            self._scanned_at = self._clock()
            self._scanning = None
        self._first_scan.set()

    def _refresh(self) -> None:
        """Start a background scan when the last one is stale and none is running."""
        with self._lock:
            fresh = self._scanned_at is not None and self._clock() - self._scanned_at < self.rescan_s
            if fresh or self._scanning is not None:
                return
            self._scanning = threading.Thread(target=self._scan_now, name="memwall-scan", daemon=True)
            self._scanning.start()

    def is_active(self, first_wait_s: float = 2.0) -> bool:
        """Cheap: the last scan's answer (a scan starts in the background when stale). Only the
        very first call waits, briefly, so the tab is not listed as inactive at start-up."""
        self._refresh()
        self._first_scan.wait(first_wait_s)
        with self._lock:
            return bool(self._runs)

    def runs(self, wait_s: float = 10.0) -> dict[str, Run]:
        """The runs of the last completed scan (waiting for the very first one)."""
        self._refresh()
        self._first_scan.wait(wait_s)
        with self._lock:
            return dict(self._runs)

    def rescan(self) -> dict[str, Run]:
        """Scan now, on this thread (tests, and a refresh the user asked for)."""
        self._scan_now()
        with self._lock:
            return dict(self._runs)

    # -- reports -------------------------------------------------------------------------------
    def load(self, window: Window) -> Report:
        """The parsed report of a window; ReportError if it cannot be read (the message names
        the file by its window, never by the server's path)."""
        source = f"{window.id}.json"
        if not is_inside(window.path, self.logdir):
            raise ReportError(f"{source} is a link to a file outside the logdir; memwall reads only "
                              "report files under the logdir TensorBoard was given")
        with ReportFile(os.path.realpath(window.path), source) as file:
            with self._lock:
                cached = self._reports.get(window.path)
            if cached is not None and cached[0] == file.stamp:
                outcome = cached[1]
            else:
                try:
                    outcome = parse_report(file.read(), source)
                except ReportError as exc:
                    outcome = exc
                with self._lock:
                    self._reports[window.path] = (file.stamp, outcome)
        if isinstance(outcome, ReportError):
            raise ReportError(str(outcome))
        return outcome

    # -- torch.profiler traces -----------------------------------------------------------------------
    def trace_state(self, trace: TraceFile) -> tuple[str, str | None]:
        """Cheap (a stat, no analysis): whether the trace is analysed in its current version, being
        analysed, not yet, or failed (with its error)."""
        try:
            stamp = _trace_stamp(trace.path)
        except OSError:
            return FAILED, f"{trace.name}: the file is gone"
        with self._lock:
            cached = self._traces.get(trace.path)
            lock = self._analysing.get(trace.path)
        if cached is not None and cached[0] == stamp:
            outcome = cached[1]
            return (FAILED, str(outcome)) if isinstance(outcome, TraceError) else (ANALYSED, None)
        return (ANALYSING if lock is not None and lock.locked() else NOT_ANALYSED), None

    def analysed(self, trace: TraceFile) -> Report:
        """The report of a trace (`analyze_trace`), analysed once per version of the file (its
        inode, size and times): a request racing one that is analysing it waits for that answer.
        TraceError when it cannot be analysed; the message names the file by its path in the
        logdir, never by the server's."""
        with self._lock:
            lock = self._analysing.setdefault(trace.path, threading.Lock())
        with lock:
            try:
                if not is_inside(trace.path, self.logdir) or os.path.islink(trace.path):
                    raise TraceError(f"{trace.name} is a link; memwall reads only traces under the logdir")
                stamp = _trace_stamp(trace.path)
            except OSError as exc:
                raise TraceError(f"{trace.name}: cannot read it ({exc.strerror or type(exc).__name__})") from None
            with self._lock:
                cached = self._traces.get(trace.path)
            if cached is not None and cached[0] == stamp:
                outcome = cached[1]
            else:
                outcome = self._analyse(trace)
                with self._lock:  # under the stamp from before: a file rewritten meanwhile is analysed again
                    self._traces[trace.path] = (stamp, outcome)
        if isinstance(outcome, TraceError):
            raise TraceError(str(outcome))
        return outcome

    def _analyse(self, trace: TraceFile) -> Report | TraceError:
        try:
            with warnings.catch_warnings():  # what it warns of (no shapes recorded) is in the report's banner
                warnings.simplefilter("ignore", RuntimeWarning)
                return analyze_trace(trace.path)
        except TraceError as exc:
            return TraceError(_without_paths(str(exc), trace, self.logdir))
        except Exception as exc:  # memwall's own failure on this file: the others still work
            logger.exception("memwall: could not analyse %s", trace.path)
            return TraceError(f"{trace.name}: memwall could not analyse this trace ({type(exc).__name__}); "
                              "TensorBoard's log has the details")


def _without_paths(message: str, trace: TraceFile, logdir: Path) -> str:
    """A trace's error naming the file by its path in the logdir, never by the server's."""
    for path in sorted({str(trace.path), os.path.realpath(trace.path)}, key=len, reverse=True):
        message = message.replace(path, trace.name)
    return message.replace(str(logdir), "<logdir>")
