"""Finds memwall reports under a logdir and loads them, without blocking TensorBoard's server.

A run is a directory holding `plugins/memwall/*.json` (the run store, `rundir.py`); its name is
its path relative to the logdir ("." for the logdir itself), as TensorBoard names runs. Scans run on a background thread
started on first use (never at import); requests read the last completed scan and trigger a
fresh one when it is older than `rescan_s`, so new runs and new steps appear while TensorBoard
runs. Parsed reports (and files that cannot be read) are cached by the stamp of the open file
they were read from, so a report replaced while it is read is never cached under the wrong
version. Only files under the logdir are read: a link to a file elsewhere is refused.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from memwall_plugin.report import Report, ReportError, parse_report
from memwall_plugin.rundir import Window, find_runs
from memwall_plugin.validation import ReportFile, Stamp, is_inside

__all__ = ["ReportLoader", "Run", "Window", "scan"]


@dataclass(frozen=True)
class Run:
    """A run directory as the tab names it, and its report windows (`rundir.py`)."""

    name: str
    windows: tuple[Window, ...]

    @property
    def ranks(self) -> tuple[int, ...]:
        return tuple(sorted({w.rank for w in self.windows}))


def scan(logdir: Path) -> dict[str, Run]:
    """Every run under `logdir` with its report windows, sorted by rank and first step."""
    runs = {}
    for name, store in find_runs(logdir).items():
        windows = store.windows()
        if windows:
            runs[name] = Run(name, windows)
    return runs


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
