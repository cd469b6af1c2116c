"""Where a profile's results go: each a sink with one small protocol, called by `memwall.profile`.

A sink is told when the profile starts, when a step ends (with a way to get that step's report,
built only if a sink asks), when a recorded window closes (its report) and when the profile ends.
Every file write goes through the profile's `OutputGuard`: the first failure is one warning and
memwall writes nothing more, the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memwall_plugin.files import write_atomically
from memwall_plugin.headline import headline
from memwall_plugin.output import OutputGuard
from memwall_plugin.report import Report
from memwall_plugin.rundir import RunDir, window_name
from memwall_plugin.schedule import Action
from memwall_plugin.tensorboard import ScalarWriter, annotate_trace

if TYPE_CHECKING:
    from memwall_plugin.profile import profile

StepReport = Callable[[], Report]


class Sink:
    """The protocol (every method optional). `wants_steps`: `step` is called at each recorded
    step, with a function that builds that step's report alone (a pass over its signatures)."""

    wants_steps = False

    def start(self, prof: profile) -> None:
        """The profile is open; nothing is recorded yet."""

    def step(self, prof: profile, step: int, report: StepReport) -> None:
        """A recorded step ended (only when `wants_steps`)."""

    def window(self, prof: profile, report: Report) -> None:
        """A recorded window closed: `report` covers its steps."""

    def end(self, prof: profile) -> None:
        """The profile closed (capture removed); the run's report is `prof.report()`."""


class ReportFiles(Sink):
    """Each window's report into the run store (`rundir.py`); `saved` lists the files."""

    def __init__(self, logdir: Path, output: OutputGuard) -> None:
        self.store = RunDir(logdir)
        self.output = output
        self.saved: list[Path] = []

    def window(self, prof: profile, report: Report) -> None:
        if not (report.rows or report.collectives):
            return
        path = self.store.reports / window_name(report.rank, report.steps)
        saved = self.output.attempt("save the report", path, lambda: self.store.publish(report))
        if saved is not None:
            self.saved.append(saved)


class Scalars(Sink):
    """Headline scalars per recorded step (Scalars tab), from rank 0."""

    wants_steps = True

    def __init__(self, logdir: Path, output: OutputGuard) -> None:
        self.writer = ScalarWriter(logdir)
        self.output = output

    def step(self, prof: profile, step: int, report: StepReport) -> None:
        if not self.output.enabled or prof.rank != 0:
            return
        rep = report()
        values = headline(rep).scalars()
        if rep.memory is not None:
            values.update(rep.memory.scalars())
        self.output.attempt("write scalars to", self.writer.logdir, lambda: self.writer.write(step, values))

    def end(self, prof: profile) -> None:
        self.output.release("write scalars to", self.writer.logdir, self.writer.close)


#: the start of torch.profiler's warning that each cycle's events are cleared
_CYCLES_CLEARED = r"Warning: Profiler clears events at the end of each cycle"


@contextlib.contextmanager
def _cycles_cleared_unsaid() -> Iterator[None]:
    """torch.profiler warns, as a cycle of its schedule is prepared, that each cycle's events are
    cleared at its end (at the first cycle up to torch 2.13, at the second from 2.15): what
    memwall wants, as it writes each cycle's trace, and nothing the user could act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CYCLES_CLEARED, category=UserWarning)
        yield


class KinetoTrace(Sink):
    """A torch.profiler trace of the same steps into the logdir (PyTorch Profiler tab), its
    operator events annotated with memwall's figures when the profile ends."""

    def __init__(self, logdir: Path, action_fn: Callable[[int], Action], output: OutputGuard) -> None:
        self.logdir = logdir
        self.action_fn = action_fn
        self.output = output
        self.traces: list[Path] = []
        self._profiler: Any = None

    def start(self, prof: profile) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        names = {Action.NONE: "NONE", Action.WARMUP: "WARMUP", Action.RECORD: "RECORD",
                 Action.RECORD_AND_SAVE: "RECORD_AND_SAVE"}

        def schedule(step: int) -> Any:
            return getattr(torch.profiler.ProfilerAction, names[self.action_fn(step)])

        self._profiler = torch.profiler.profile(
            activities=activities, record_shapes=True, schedule=schedule, on_trace_ready=self._trace_ready,
        )
        with _cycles_cleared_unsaid():
            self._profiler.__enter__()

    def advance(self) -> None:
        """The user's step ended (every step: torch.profiler runs its own schedule)."""
        if self._profiler is not None:
            with _cycles_cleared_unsaid():
                self._profiler.step()

    def _trace_ready(self, kineto_prof: Any) -> None:
        name = f"{socket.gethostname()}_{os.getpid()}.{time.time_ns() // 1_000_000}.pt.trace.json"
        path = self.logdir / name
        if self.output.attempt("write the torch.profiler trace", path, lambda: _export_trace(kineto_prof, path)):
            self.traces.append(path)

    def end(self, prof: profile) -> None:
        if self._profiler is None:
            return
        kineto, self._profiler = self._profiler, None
        try:
            with _cycles_cleared_unsaid():
                kineto.__exit__(None, None, None)
            rows = prof.report().rows
            for path in self.traces:
                self.output.attempt("annotate the torch.profiler trace", path,
                                    functools.partial(annotate_trace, path, rows))
        except Exception as err:  # the run itself is done: memwall's trouble is only a warning
            warnings.warn(f"memwall: could not finish the torch.profiler trace: {err}", RuntimeWarning,
                          stacklevel=3)


def _export_trace(kineto_prof: Any, path: Path) -> Path:
    """torch.profiler's trace, written beside `path` and moved into place whole (the PyTorch
    Profiler tab never sees half a trace). torch logs a failed export instead of raising."""

    def fill(tmp: Path) -> None:
        kineto_prof.export_chrome_trace(str(tmp))
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise OSError(f"torch.profiler could not write {path.name} (its reason is logged above)")

    return write_atomically(path, fill)


def job_ranks(files: ReportFiles | None, report: Report, wait_s: float) -> Mapping[int, Report] | None:
    """Every rank's report of `report`'s job (waiting up to `wait_s` for ranks still saving
    theirs); None for a single-process run or one that saved nothing."""
    if not report.distributed or report.world_size <= 1 or files is None or not files.saved:
        return None
    return files.store.wait_for_ranks(report, 0.0 if report.incomplete else wait_s)


class Summary(Sink):
    """The summary, printed when the profile ends: on rank 0 (with every rank of the job side by
    side), or on every rank with summary="all"."""

    def __init__(self, every_rank: bool, files: ReportFiles | None, wait_s: float) -> None:
        self.every_rank = every_rank
        self.files = files
        self.wait_s = wait_s

    def end(self, prof: profile) -> None:
        if not (self.every_rank or prof.rank == 0):
            return
        try:
            if not prof.recorded_steps:  # said in one line, not left silent
                if not prof.nested:  # a profile opened inside it recorded the block, and says so
                    self._print_nothing(prof)
                return
            self._print(prof)
        except Exception as err:
            warnings.warn(f"memwall: could not print the summary: {type(err).__name__}: {err}", RuntimeWarning,
                          stacklevel=3)

    @staticmethod
    def _print_nothing(prof: profile) -> None:
        from rich.console import Console

        Console().print(prof.nothing_recorded(), highlight=False, markup=False)

    def _print(self, prof: profile) -> None:
        from rich.console import Console

        from memwall_plugin.console import SummaryOptions, print_summary

        console = Console()
        report = prof.report()
        options = SummaryOptions(logdir=str(self.files.store.root) if self.files is not None else "")
        print_summary(report, options, console=console, ranks=job_ranks(self.files, report, self.wait_s))
        if self.files is not None and self.files.saved:
            # one unbroken line however narrow the console (a pipe's 80 columns): a path to copy and grep
            console.print(f"report saved: {self.files.saved[-1]}", highlight=False, markup=False, soft_wrap=True)
        if prof.output.failure is not None:
            console.print("memwall stopped writing files in this run (see the warning above)",
                          highlight=False, markup=False)
