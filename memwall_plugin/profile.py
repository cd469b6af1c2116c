"""`memwall.profile`: the context manager that records a run and hands back its report.

The profile owns the capture and the recorded windows (tables of op signatures, turned into
reports by `analysis.py`); everything that leaves the process goes through its sinks
(`sinks.py`: report files, scalars, the torch.profiler trace, the summary)."""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import torch

from memwall_plugin import sinks
from memwall_plugin.analysis import analysis_cache, rows_from_entries
from memwall_plugin.calibrate import auto_calibrate, auto_calibration_wanted
from memwall_plugin.ceilings import ceilings_of
from memwall_plugin.devices import DeviceSpec, resolve_device
from memwall_plugin.distributed import DistributedSession
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.hooks.capture import Capture, CaptureEntry, merge_into
from memwall_plugin.output import OutputGuard
from memwall_plugin.registry import Registry
from memwall_plugin.report import Report
from memwall_plugin.rundir import PLUGIN_DIR, new_job_id
from memwall_plugin.schedule import Action, as_action_fn

__all__ = ["PLUGIN_DIR", "default_registry", "profile"]
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
        self._report: Report | None = None
        self.step_on_optimizer = step_on_optimizer
        self._primary_optimizer: weakref.ref[Any] | None = None
        if kineto and self.logdir is None:
            raise ValueError("kineto=True records a torch.profiler trace into the run directory: "
                             "pass logdir= as well")
        self.kineto = kineto
        self._scalars_wanted = scalars
        self._analyses = analysis_cache(self.registry)
        self.output = OutputGuard()  # every file write goes through it
        self._dist = DistributedSession(link)  # rank, collectives, link (memwall_plugin/distributed.py)
        #: where results go (memwall_plugin/sinks.py), made when the profile opens
        self.sinks: list[sinks.Sink] = []
        self._files: sinks.ReportFiles | None = None
        self._trace: sinks.KinetoTrace | None = None
        #: this run's job, for a run that is not one rank of a torch.distributed job
        self._job = new_job_id()
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
            self.sinks = self._make_sinks(idle)
            for sink in self.sinks:
                sink.start(self)
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
        try:
            for sink in self.sinks:
                try:
                    sink.end(self)
                except Exception as err:  # the run itself is done: memwall's trouble is only a warning
                    warnings.warn(f"memwall: {type(sink).__name__.lower()} could not finish: "
                                  f"{type(err).__name__}: {err}", RuntimeWarning, stacklevel=2)
            self._dist.ended()
        finally:
            self._hand_back()
        return False  # the user's exception, if any, propagates unchanged

    # -- sinks ---------------------------------------------------------------------------------
    def _make_sinks(self, idle: bool) -> list[sinks.Sink]:
        out: list[sinks.Sink] = []
        if self.logdir is not None:
            if self.kineto and not idle:
                self._trace = sinks.KinetoTrace(self.logdir, self._action_fn, self.output)
                out.append(self._trace)
            self._files = sinks.ReportFiles(self.logdir, self.output)
            out.append(self._files)
            if self._scalars_wanted:
                out.append(sinks.Scalars(self.logdir, self.output))
        if self.summary:
            out.append(sinks.Summary(self.summary == "all", self._files, RANKS_WAIT_S))
        return out

    @property
    def saved(self) -> list[Path]:
        """The report files this profile wrote (one per recorded window)."""
        return self._files.saved if self._files is not None else []

    @property
    def traces(self) -> list[Path]:
        """The torch.profiler traces this profile wrote (kineto=True)."""
        return self._trace.traces if self._trace is not None else []

    @property
    def recorded_steps(self) -> tuple[int, ...]:
        return tuple(self._steps + self._window_steps)

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
            if self._trace is not None:
                self._trace.advance()
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
        return sinks.Summary(False, self._files, wait_s).ranks(self.report())

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
        step_sinks = [sink for sink in self.sinks if sink.wants_steps] if self._action.kept and table else []
        if self._action.kept and table:
            self._window = _merge(self._window, table)
            self._window_steps.append(self._step_num)
            self._window_wall += elapsed
        report = self._close_window() if closes and self._window_steps else None
        if step_sinks:
            if report is not None and len(report.steps) == 1:
                step_report = report  # a window of this step alone: its report is the step's
            else:
                step_report = self._build(table, (self._step_num,), elapsed, window_only=True, step_only=True)
            for sink in step_sinks:
                sink.step(self, self._step_num, lambda: step_report)

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
        for sink in self.sinks:
            sink.window(self, report)
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

    def _build(self, table: dict[Any, CaptureEntry], steps: tuple[int, ...], wall: float,
               window_only: bool = False, step_only: bool = False) -> Report:
        """The report of `table` (a step, a window or the whole run). `step_only`: one step's
        ops alone, for per-step sinks (its collectives are the window's, so none are added)."""
        rank, world = self._dist.rank_and_world()
        device = self._device_for(table)
        tf32 = self._tf32(device)
        comm = {} if step_only else self._dist.communication(device, window_only)
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
            job=self._dist.job() or self._job,
            **comm,
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


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
