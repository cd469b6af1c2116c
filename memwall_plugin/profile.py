"""`memwall.profile`: the context manager that records a run and hands back its report."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch

from memwall_plugin.analysis import analysis_cache, rows_from_entries
from memwall_plugin.calibrate import auto_calibrate, auto_calibration_wanted
from memwall_plugin.devices import DeviceSpec, resolve_device
from memwall_plugin.distributed import DistributedSession, publish, wait_for_ranks
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.hooks.capture import Capture, CaptureEntry, merge_into
from memwall_plugin.output import OutputGuard
from memwall_plugin.registry import Registry
from memwall_plugin.report import Report, ceilings_of
from memwall_plugin.schedule import Action, as_action_fn
from memwall_plugin.tensorboard import ScalarWriter, StepTotals, annotate_trace, rows_totals, step_totals

PLUGIN_DIR = Path("plugins") / "memwall"
#: How long rank 0's summary waits for the other ranks' reports of the same job.
RANKS_WAIT_S = 10.0


def default_registry() -> Registry:
    """The built-in formulas (read-only; `.copy()` it to add your own)."""
    return REGISTRY


class _PhaseLabel:
    """Sets a phase label now; as a context manager, restores the previous one on exit."""

    def __init__(self, tracker: Any, name: str | None) -> None:
        self._tracker = tracker
        self._previous = tracker.user_label
        tracker.user_label = name

    def __enter__(self) -> _PhaseLabel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._tracker.user_label = self._previous


def _tf32_families() -> tuple[str, ...]:
    families = []
    if torch.backends.cuda.matmul.allow_tf32:
        families.append("matmul")
    if torch.backends.cudnn.allow_tf32:
        families.append("conv")
    return tuple(families)


def _merge(into: dict[Any, CaptureEntry], table: dict[Any, CaptureEntry]) -> dict[Any, CaptureEntry]:
    """`table`'s calls added into `into`, which is returned (`table` itself when `into` is
    empty: the common single-window run copies nothing)."""
    if not into:
        return table
    merge_into(into, table)
    return into


class profile:  # noqa: N801 - named like torch.profiler.profile, which users know
    """Record every aten op of the enclosed work: FLOPs, bytes moved, module, phase, time.

    ```python
    with memwall.profile(model=model, logdir="runs/exp1") as prof:
        for batch in loader:
            train_step(batch)
            prof.step()
    rep = prof.report()
    ```

    * `model`: name ops by this model's `named_modules()` paths and track only its modules;
      without it every module that runs is tracked.
    * `logdir`: the run directory; each recorded window is saved atomically under
      `<logdir>/plugins/memwall/` when it ends (also when the block raises: marked incomplete).
      If a write fails (a full or read-only disk, a logdir that cannot be created), one warning
      says so and memwall writes nothing more; the run and `prof.report()` go on unchanged.
    * `schedule`: `memwall.schedule(wait=, warmup=, active=, repeat=)` or a
      `torch.profiler.schedule`; steps outside the active window run with nothing installed.
    * `registry`: formulas to count with (default: `memwall.default_registry()`).
    * `summary`: print a summary when the block ends; under torch.distributed on rank 0 only
      (with every rank side by side), `summary="all"` prints one on every rank.
    * `device`: place the run on this device's roofline ("H100 SXM", a DeviceSpec); default:
      the detected device ($MEMWALL_DEVICE overrides), with calibrated ceilings when cached.
    * `peaks`: override figures, e.g. `{"fp32": 80e9, "bandwidth": 23e9}` (FLOP/s, bytes/s);
      $MEMWALL_PEAKS="fp32=80e9,bandwidth=23e9" does the same.
    * `kineto`: also record a torch.profiler trace of the same steps into `logdir` (for the
      PyTorch Profiler tab), its operator events annotated with memwall's figures.
    * `scalars`: with a logdir, write headline scalars per recorded step (Scalars tab).
    * `step_on_optimizer`: mark a step at each step of the first optimizer (`memwall run`).
    * `max_signatures`: distinct (op, module, phase, shapes) kept apart per run (default
      10,000); past it, new shapes are grouped into power-of-two buckets, still counted exactly,
      so memory stays bounded when shapes keep growing (long decodes).
    * `link`: under torch.distributed, the interconnect roof for collectives: its bandwidth per
      direction in bytes/s (50e9) or {"bandwidth": 50e9, "name": "InfiniBand NDR"};
      $MEMWALL_LINK="bandwidth=50e9,name=InfiniBand NDR" does the same. Default: detected.
    """

    #: the profile recording now: the innermost open one (the ones it was opened inside wait)
    _open: profile | None = None

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        logdir: str | os.PathLike[str] | None = None,
        schedule: Any = None,
        *,
        registry: Registry | None = None,
        summary: bool | Literal["all"] = True,
        device: str | DeviceSpec | None = None,
        peaks: dict[str, float] | None = None,
        step_on_optimizer: bool = False,
        kineto: bool = False,
        scalars: bool = True,
        max_signatures: int | None = None,
        link: Any = None,
    ) -> None:
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or None), got {type(model).__name__}")
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError("registry must be a memwall Registry, e.g. memwall.default_registry().copy()")
        if max_signatures is not None and (not isinstance(max_signatures, int) or max_signatures < 1):
            raise ValueError(f"max_signatures must be a positive int (default {Capture.MAX_SIGNATURES:,}), "
                             f"got {max_signatures!r}")
        self.max_signatures = max_signatures
        self.model = model
        self.logdir = Path(logdir) if logdir is not None else None
        self._action_fn = as_action_fn(schedule)
        self.registry = registry or REGISTRY
        self.summary = summary
        # a named device or peaks are checked now, so a typo fails before the run, not after
        self._device_arg = device
        self._peaks_arg = peaks
        self._device: DeviceSpec | None = None
        if device is not None or peaks is not None:
            self._device = resolve_device(device, peaks)
        self._capture: Capture | None = None
        self._step_num = 0
        self._action = Action.NONE
        self._step_start = 0.0
        self._all: dict[Any, CaptureEntry] = {}
        self._window: dict[Any, CaptureEntry] = {}
        self._window_steps: list[int] = []
        self._window_wall = 0.0
        self._steps: list[int] = []
        self._wall = 0.0
        self._incomplete = False
        self.saved: list[Path] = []
        self._report: Report | None = None
        self.step_on_optimizer = step_on_optimizer
        self._primary_optimizer: weakref.ref[Any] | None = None
        if kineto and self.logdir is None:
            raise ValueError("kineto=True records a torch.profiler trace into the run directory: "
                             "pass logdir= as well")
        self.kineto = kineto
        self._kineto: Any = None
        self.traces: list[Path] = []
        self._scalars = ScalarWriter(self.logdir) if scalars and self.logdir is not None else None
        self._analyses = analysis_cache(self.registry)
        self._output = OutputGuard()  # every file write goes through it
        self._dist = DistributedSession(link)  # rank, collectives, link (memwall_plugin/distributed.py)
        self._entered = False
        self._thread = threading.get_ident()
        #: the profile this one took over from (opened inside it), resumed when this one ends
        self._outer: profile | None = None
        #: where the profiles opened inside this one recorded in its place (their logdirs)
        self.nested: list[str] = []

    # -- context -------------------------------------------------------------------------------
    def __enter__(self) -> profile:
        if self._entered:
            raise RuntimeError("this memwall.profile is already open: enter a profile object once "
                               "(make a new memwall.profile(...) for another block)")
        outer = profile._open
        idle = outer is not None and outer._thread != threading.get_ident()
        if idle:
            warnings.warn("memwall: a memwall.profile is already recording on another thread; this one "
                          "records nothing (profile from the thread that runs the model)",
                          RuntimeWarning, stacklevel=2)
        elif outer is not None:
            # a profile opened inside another (the script's own under `memwall run`, a library
            # that profiles itself): this one records its own window; the outer one waits
            self._outer = outer
            outer._yield_to(self)
            if self.kineto and any(p.kineto for p in self._outers()):
                warnings.warn("memwall: an enclosing memwall.profile already records a torch.profiler trace; "
                              "this one does not record a second (kineto=True ignored)", RuntimeWarning,
                              stacklevel=2)
                self.kineto = False
        self._thread = threading.get_ident()
        if not idle:
            profile._open = self
        self._entered = True
        try:
            if self._device is None and not idle and auto_calibration_wanted():
                # before anything is recorded: the measurement is not part of the user's run
                auto_calibrate(report=_to_stderr)
            if self.kineto and not idle:
                self._start_kineto()
            self._capture = Capture(self.model, max_signatures=self.max_signatures, analyse=self._analyses.analyse)
            self._capture.suspended = idle
            self._capture.open()
            self._dist.open(self._capture)
            if self.step_on_optimizer:
                self._capture.tracker.on_optimizer_step = self._optimizer_stepped
            self._begin_step(0)
        except BaseException:
            try:
                self._close()
            finally:
                self._hand_back()
            raise
        return self

    def _outers(self) -> list[profile]:
        chain, outer = [], self._outer
        while outer is not None:
            chain.append(outer)
            outer = outer._outer
        return chain

    def _yield_to(self, inner: profile) -> None:
        """A profile opened inside this one records from now on: stop recording until it ends."""
        self.nested.append(str(inner.logdir) if inner.logdir is not None else "")
        capture = self._capture
        if capture is None:
            return
        capture.suspended = True
        try:
            capture.stop()
        except Exception as err:  # another dispatch mode above ours: memwall gives up, the run goes on
            self._fail(err, "handing over to a nested memwall.profile")

    def _hand_back(self) -> None:
        """This profile has ended: the one it took over from records again."""
        outer, self._outer = self._outer, None
        if outer is None:
            return
        capture = outer._capture
        if capture is None or not outer._entered:
            return
        capture.suspended = False
        if outer._action.recording:
            try:
                capture.start()
            except Exception as err:
                outer._fail(err, "resuming after a nested memwall.profile")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        self._dist.ending()  # a SIGTERM from here on waits until the report is saved
        # a script that ends by sys.exit(0) finished its work; anything else did not
        self._incomplete = self._incomplete or (exc_type is not None and not (
            isinstance(exc, SystemExit) and exc.code in (0, None)
        ))
        try:
            self._end_step(final=True)
        except Exception as err:  # memwall's own trouble must not fail or replace the user's run
            warnings.warn(f"memwall: could not finish the profile: {type(err).__name__}: {err}",
                          RuntimeWarning, stacklevel=2)
        finally:
            self._close()
            self._finish_tensorboard()
        try:
            if self._dist.prints_summary(self.summary) and self._steps:
                try:
                    self._print_summary()
                except Exception as err:
                    warnings.warn(f"memwall: could not print the summary: {type(err).__name__}: {err}",
                                  RuntimeWarning, stacklevel=2)
            self._dist.ended()
        finally:
            self._hand_back()
        return False  # the user's exception, if any, propagates unchanged

    # -- TensorBoard ---------------------------------------------------------------------------
    def _start_kineto(self) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        names = {Action.NONE: "NONE", Action.WARMUP: "WARMUP", Action.RECORD: "RECORD",
                 Action.RECORD_AND_SAVE: "RECORD_AND_SAVE"}

        def schedule(step: int) -> Any:
            return getattr(torch.profiler.ProfilerAction, names[self._action_fn(step)])

        self._kineto = torch.profiler.profile(
            activities=activities, record_shapes=True, schedule=schedule,
            on_trace_ready=self._trace_ready,
        )
        self._kineto.__enter__()

    def _trace_ready(self, kineto_prof: Any) -> None:
        assert self.logdir is not None
        name = f"{socket.gethostname()}_{os.getpid()}.{time.time_ns() // 1_000_000}.pt.trace.json"
        path = self.logdir / name
        if self._output.attempt("write the torch.profiler trace", path, lambda: _export_trace(kineto_prof, path)):
            self.traces.append(path)

    def _finish_tensorboard(self) -> None:
        """Stop torch.profiler, annotate its traces, close the scalar writer; never raise over
        the user's exception."""
        try:
            if self._kineto is not None:
                kineto, self._kineto = self._kineto, None
                kineto.__exit__(None, None, None)
                rows = self.report().rows
                for path in self.traces:
                    self._output.attempt("annotate the torch.profiler trace", path,
                                         functools.partial(annotate_trace, path, rows))
        except Exception as err:  # the run itself is done: memwall's trouble is only a warning
            warnings.warn(f"memwall: could not finish the torch.profiler trace: {err}",
                          RuntimeWarning, stacklevel=3)
        finally:
            if self._scalars is not None:
                self._output.release("write scalars to", self._scalars.logdir, self._scalars.close)

    def _close(self) -> None:
        try:
            if self._capture is not None:
                self._capture.close()
        finally:
            self._dist.close()
            self._entered = False
            if profile._open is self:
                profile._open = self._outer

    # -- steps ---------------------------------------------------------------------------------
    def step(self) -> None:
        """Mark the end of a step (a training iteration, a generated token, ...)."""
        if not self._entered:
            raise RuntimeError("prof.step() was called outside its `with memwall.profile(...)` block")
        capture = self._capture
        if capture is not None and capture.failed is not None:
            self._step_num += 1  # memwall is off for this run: steps are only counted
            return
        following = self._step_num + 1
        try:
            self._end_step(final=False)
            self._begin_step(following)
            if self._kineto is not None:
                self._kineto.step()
        except Exception as err:  # memwall's own trouble must never stop the user's loop
            self._fail(err, "marking a step")
            self._step_num = following

    def _fail(self, err: BaseException, where: str) -> None:
        """An internal error outside the dispatch path: memwall stops for the rest of the run."""
        assert self._capture is not None
        self._capture.fail(err, where)
        self._incomplete = True
        try:
            self._capture.stop()
        except Exception:  # noqa: S110 - stopping is best effort once memwall has failed
            pass

    @property
    def step_num(self) -> int:
        return self._step_num

    @property
    def rank(self) -> int:
        """This process's rank under torch.distributed (0 otherwise)."""
        return self._dist.rank_and_world()[0]

    def job_reports(self, wait_s: float = RANKS_WAIT_S) -> dict[int, Report] | None:
        """Under torch.distributed, with a logdir: every rank's report of this job (waiting up to
        `wait_s` for ranks still saving theirs); None for a single-process run."""
        report = self.report()
        if report.comm is None or report.world_size <= 1 or not self.saved:
            return None
        return wait_for_ranks(self.saved[-1].parent, report, 0.0 if report.incomplete else wait_s)

    def _optimizer_stepped(self, optimizer: Any) -> None:
        # one step per iteration: the first optimizer that steps marks the boundaries
        if self._primary_optimizer is None or self._primary_optimizer() is None:
            self._primary_optimizer = weakref.ref(optimizer)
        if self._primary_optimizer() is optimizer and self._entered:
            self.step()

    def phase(self, name: str | None) -> _PhaseLabel:
        """Label the forward work that follows ("prefill", "decode", or a name of your own):
        `prof.phase("decode")` until the next call, or `with prof.phase("decode"): ...`.
        `prof.phase(None)` clears it. Backward and optimizer work keep their phases."""
        if self._capture is None or not self._entered:
            raise RuntimeError("prof.phase() labels work inside its `with memwall.profile(...)` block")
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise ValueError(f"a phase is a short name like 'decode' or 'prefill', got {name!r}")
        return _PhaseLabel(self._capture.tracker, name)

    def _begin_step(self, step: int) -> None:
        assert self._capture is not None
        self._step_num = step
        self._action = self._action_fn(step)
        if self._action.recording:
            self._capture.start()
        else:
            self._capture.stop()
        self._step_start = time.perf_counter()

    def _end_step(self, *, final: bool) -> None:
        assert self._capture is not None
        elapsed = time.perf_counter() - self._step_start
        if self._capture.failed is not None:
            self._incomplete = True
        table = self._capture.take()
        self._capture.end_step()
        self._dist.end_step(self._capture, table, self._action.kept, final)
        closes = self._action is Action.RECORD_AND_SAVE or final
        scalars = None
        if self._action.kept and table:
            if self._scalars is not None and self._output.enabled and self._dist.rank_and_world()[0] == 0:
                scalars = self._scalars
            if scalars is not None and not (closes and not self._window_steps):
                # the window goes on (or holds earlier steps): this step's totals on their own
                self._write_scalars(scalars, step_totals(table.values(), self._analyses, self._ceilings(table)))
                scalars = None
            self._window = _merge(self._window, table)
            self._window_steps.append(self._step_num)
            self._window_wall += elapsed
        if self._action is Action.RECORD_AND_SAVE or (final and self._window_steps):
            report = self._close_window()
            if scalars is not None:  # a window of this step alone: its report's rows are the step's
                self._write_scalars(scalars, rows_totals(report.rows))

    def _write_scalars(self, scalars: ScalarWriter, totals: StepTotals) -> None:
        step = self._step_num
        self._output.attempt("write scalars to", scalars.logdir, lambda: scalars.write(step, totals))

    def _close_window(self) -> Report:
        steps = tuple(self._window_steps)
        report = self._build(self._window, steps, self._window_wall, window_only=True)
        self._dist.close_window()
        only_window = not self._all
        self._steps.extend(steps)
        self._wall += self._window_wall
        self._all = _merge(self._all, self._window)
        self._window, self._window_steps, self._window_wall = {}, [], 0.0
        # the common case, one window: the run's report is this one (no second build)
        self._report = report if only_window else None
        if self.logdir is not None and (report.rows or (report.comm and report.comm.collectives)):
            name = f"rank{report.rank}_steps{steps[0]:06d}-{steps[-1]:06d}.json"
            directory = self.logdir / PLUGIN_DIR
            saved = self._output.attempt("save the report", directory / name, lambda: publish(report, directory, name))
            if saved is not None:
                self.saved.append(saved)
        return report

    # -- results -------------------------------------------------------------------------------
    def _device_for(self, table: dict[Any, CaptureEntry]) -> DeviceSpec | None:
        """The explicit device, else the detected device where most op time was spent."""
        if self._device is not None:
            return self._device
        time_by_kind: dict[str, int] = {}
        for e in table.values():
            time_by_kind[e.device] = time_by_kind.get(e.device, 0) + e.time_ns
        kind = max(time_by_kind, key=lambda k: time_by_kind[k], default="cpu")
        kind = kind if kind in ("cuda", "mps") else "cpu"
        try:
            self._device = resolve_device(None, None, kind=kind)
        except Exception as exc:  # detection trouble must not lose the report
            warnings.warn(f"memwall: could not detect the device ({exc}); rows have no roofline",
                          RuntimeWarning, stacklevel=3)
            return None
        return self._device

    def _tf32(self, device: DeviceSpec | None) -> tuple[str, ...]:
        return _tf32_families() if device is not None and device.kind == "cuda" else ()

    def _ceilings(self, table: dict[Any, CaptureEntry]) -> Any:
        device = self._device_for(table)
        return ceilings_of(device, self._tf32(device))

    def _build(self, table: dict[Any, CaptureEntry], steps: tuple[int, ...], wall: float,
               window_only: bool = False) -> Report:
        rank, world = self._dist.rank_and_world()
        device = self._device_for(table)
        tf32 = self._tf32(device)
        return Report(
            rows=rows_from_entries(table.values(), self.registry, ceilings_of(device, tf32), self._analyses),
            device=device,
            measured_on=device.name if device is not None else "",
            tf32=tf32,
            steps=steps,
            wall_time_s=wall,
            incomplete=self._incomplete,
            rank=rank,
            world_size=world,
            torch_version=torch.__version__,
            created_unix_s=time.time(),
            comm=self._dist.communication(device, window_only),
            # where profiles opened inside this one recorded in its place (empty: in memory only)
            extra={"nested_profiles": list(self.nested)} if self.nested else {},
        )

    def report(self) -> Report:
        """The report over every recorded step so far."""
        if self._report is not None and not self._window:
            return self._report
        table = dict(self._all)
        if self._window:
            table = {k: v.copy() for k, v in table.items()}
            table = _merge(table, self._window)
        report = self._build(table, tuple(self._steps + self._window_steps), self._wall + self._window_wall)
        if not self._entered and not self._window:
            self._report = report  # the profile has ended: nothing can change it any more
        return report

    def _print_summary(self) -> None:
        from rich.console import Console

        from memwall_plugin.console import print_summary

        console = Console()
        print_summary(self.report(), console=console, ranks=self.job_reports())
        if self.saved:
            console.print(f"report saved: {self.saved[-1]}", highlight=False, markup=False)
        if self._output.failure is not None:
            console.print("memwall stopped writing files in this run (see the warning above)",
                          highlight=False, markup=False)


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _export_trace(kineto_prof: Any, path: Path) -> Path:
    """torch.profiler's trace, written beside `path` and moved into place whole (the PyTorch
    Profiler tab never sees half a trace). torch logs a failed export instead of raising."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        kineto_prof.export_chrome_trace(str(tmp))
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise OSError(f"torch.profiler could not write {tmp.name} (its reason is logged above)")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path
