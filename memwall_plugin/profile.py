"""`memwall.profile`: the context manager that records a run and hands back its report.

A thin session: the recorder (`recorder.py`: capture and windows -> reports) does the recording,
the sinks (`sinks.py`: report files, scalars, the torch.profiler trace, the summary) take what
leaves the process. The profile checks its arguments, wires the two together, keeps the one
rule that a single profile records at a time (profiles opened inside it take over, then hand
back), and never lets memwall's own trouble stop or change the user's run."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import sysconfig
import threading
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Literal

import torch

from memwall_plugin import sinks
from memwall_plugin.calibrate import auto_calibrate, auto_calibration_wanted, beaten_calibration
from memwall_plugin.devices import DeviceSpec, resolve_device
from memwall_plugin.distributed import Terminated
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.hooks.capture import Capture
from memwall_plugin.hooks.compiled import never_traced
from memwall_plugin.hooks.kernel_clock import wanted as cuda_time_wanted
from memwall_plugin.output import OutputGuard
from memwall_plugin.recorder import Recorder
from memwall_plugin.registry import Registry
from memwall_plugin.report import Report
from memwall_plugin.rundir import PLUGIN_DIR
from memwall_plugin.schedule import as_action_fn
from memwall_plugin.terminate import GUARD, say

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


class profile:  # noqa: N801 - named like torch.profiler.profile, which users know
    """Record every aten op of the enclosed work: FLOPs, bytes moved, module, phase, time.

    ```python
    with memwall.profile(model=model, logdir="runs/exp1") as prof:
        for batch in loader:
            train_step(batch)
            prof.step()
    rep = prof.report()
    ```

    * `model`: name ops by this model's `named_modules()` paths and track only its modules and
      a second model called outside it (a teacher, a pipeline's VAE: named by what it is called
      through); without it every module that runs is tracked.
    * `logdir`: the run directory (a relative one from the directory current when the profile
      is made); each recorded window is saved atomically under
      `<logdir>/plugins/memwall/` when it ends (also when the block raises: marked incomplete).
      If a write fails (a full or read-only disk, a logdir that cannot be created), one warning
      says so and memwall writes nothing more; the run and `prof.report()` go on unchanged.
    * `schedule`: `memwall.schedule(wait=, warmup=, active=, repeat=)` or a
      `torch.profiler.schedule`; steps outside the active window run with nothing installed.
    * `registry`: formulas to count with (default: `memwall.default_registry()`).
    * `summary`: print a summary when the block ends; under torch.distributed on rank 0 only
      (with every rank side by side), `summary="all"` prints one on every rank.
    * `device`: place the run on this device's roofline ("H100 SXM", a DeviceSpec); default:
      the detected device ($MEMWALL_DEVICE overrides), with calibrated ceilings when cached. A
      device of another type than the run's (an H100 for a CPU run) makes the report a what-if:
      times measured on the detected device, projected onto this one.
    * `peaks`: override figures, e.g. `{"fp32": 80e9, "bandwidth": 23e9}` (FLOP/s, bytes/s);
      $MEMWALL_PEAKS="fp32=80e9,bandwidth=23e9" does the same.
    * `kineto`: also record a torch.profiler trace of the same steps into `logdir` (for the
      PyTorch Profiler tab), its operator events annotated with memwall's figures.
    * `scalars`: with a logdir, write headline scalars per recorded step (Scalars tab).
    * `step_on_optimizer`: a step ends at each step of the first optimizer (`memwall run`); what
      runs after the last one (a final evaluation, saving) is the run's tail: its ops are in the
      rows and the wall time, it is no step (`report().tail_op_time_s`).
    * `max_signatures`: distinct (op, module, phase, shapes) kept apart per run (default
      10,000); past it, new shapes are grouped into power-of-two buckets, still counted exactly,
      so memory stays bounded when shapes keep growing. Decoding needs no cap: there, by design,
      the sizes that grow from token to token (the KV length) are bucketed from the second length
      on ("[1, 12, <=512, 64]"), the others kept exact, every call counted exactly.
    * `first_step`: the number of the first step (a resumed training's step count, a framework's
      global step), so reports and scalars line up with the framework's own; the schedule still
      counts from the profile's first step.
    * `memory`: measure what holds memory during the recorded steps (parameters, gradients,
      optimizer state, activations, KV cache, other; per module; the peak): `report().memory`.
    * `link`: under torch.distributed, the interconnect roof for collectives: its bandwidth per
      direction in bytes/s (50e9) or {"bandwidth": 50e9, "name": "InfiniBand NDR"};
      $MEMWALL_LINK="bandwidth=50e9,name=InfiniBand NDR" does the same. Default: detected.
    * `compiled`: what torch.compile'd code does while the profile is open. "compiled" (the
      default): it runs compiled, each Inductor region one row with the ops it fused and their
      eager counterfactual (what fusion saved). "eager": it runs eagerly
      (`torch.compiler.set_stance("force_eager")` while the profile is open), every aten op its
      own row, as the model would run uncompiled; it compiles as usual after.
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
        first_step: int = 0,
        memory: bool = True,
        compiled: Literal["compiled", "eager"] = "compiled",
    ) -> None:
        if compiled not in ("compiled", "eager"):
            raise ValueError(f"compiled must be \"compiled\" (run torch.compile'd code compiled) or \"eager\" "
                             f"(run it eagerly while recording), got {compiled!r}")
        self.compiled = compiled
        cuda_time_wanted()  # a misspelt $MEMWALL_CUDA_TIME fails here, before the run
        self._stance: contextlib.ExitStack | None = None
        if not isinstance(memory, bool):
            raise TypeError(f"memory must be True or False, got {memory!r}")
        if isinstance(first_step, bool) or not isinstance(first_step, int) or first_step < 0:
            raise ValueError(f"first_step must be a whole number >= 0 (the framework's step count), got {first_step!r}")
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or None), got {type(model).__name__}")
        if registry is not None and not isinstance(registry, Registry):
            raise TypeError("registry must be a memwall Registry, e.g. memwall.default_registry().copy()")
        if max_signatures is not None and (not isinstance(max_signatures, int) or max_signatures < 1):
            raise ValueError(f"max_signatures must be a positive int (default {Capture.MAX_SIGNATURES:,}), "
                             f"got {max_signatures!r}")
        self.model = model
        self.logdir = Path(logdir) if logdir is not None else None
        # where it is now: a script that changes directory later still writes here
        self._write_to = self.logdir.absolute() if self.logdir is not None else None
        self.registry = registry or REGISTRY
        self.summary = summary
        if kineto and self.logdir is None:
            raise ValueError("kineto=True records a torch.profiler trace into the run directory: "
                             "pass logdir= as well")
        self.kineto = kineto
        self.step_on_optimizer = step_on_optimizer
        self._scalars_wanted = scalars
        self._action_fn = as_action_fn(schedule)
        self.scheduled = schedule is not None
        # a named device, peaks or link are checked now, so a typo fails before the run, not after
        spec = resolve_device(device, peaks) if device is not None or peaks is not None else None
        self._device_chosen = spec is not None
        self._recorder = Recorder(registry=self.registry, action_fn=self._action_fn, device=spec, link=link,
                                  max_signatures=max_signatures, on_window=self._window_closed,
                                  on_step=self._step_recorded, first_step=first_step, memory=memory,
                                  tail=step_on_optimizer)
        self.output = OutputGuard()  # every file write goes through it
        #: where results go (memwall_plugin/sinks.py), made when the profile opens
        self.sinks: list[sinks.Sink] = []
        self._files: sinks.ReportFiles | None = None
        self._trace: sinks.KinetoTrace | None = None
        self._primary_optimizer: weakref.ref[Any] | None = None
        self._entered = False
        self._warned_step_open = False  # prof.report() inside the block has said what it leaves out
        self._guards_sigterm = False  # this profile put memwall's SIGTERM handler in place
        self._thread = threading.get_ident()
        #: the profile this one took over from (opened inside it), resumed when this one ends
        self._outer: profile | None = None
        #: called once this profile has ended because a signal ends the process (terminate.py),
        #: before the process ends: `memwall run` prints its summary there
        self.on_ended_by_signal: Callable[[], None] | None = None

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
            if self._recorder.device is None and not idle and auto_calibration_wanted():
                # before anything is recorded: the measurement is not part of the user's run
                auto_calibrate(report=_to_stderr)
            self.sinks = self._make_sinks(idle)
            for sink in self.sinks:
                sink.start(self)
            if self.compiled == "eager":
                self._stance = contextlib.ExitStack()
                self._stance.enter_context(torch.compiler.set_stance("force_eager"))
            self._recorder.open(self.model, suspended=idle,
                                on_optimizer_step=self._optimizer_stepped if self.step_on_optimizer else None)
        except BaseException:
            try:
                self._close()
            finally:
                self._hand_back()
            raise
        if outer is None and not idle:
            # a SIGTERM (a scheduler's preemption, `timeout`, `kill`) ends the process once the open
            # profiles have saved what they recorded (terminate.py); over the default action only
            self._guards_sigterm = GUARD.install(_end_by_signal)
        return self

    def _outers(self) -> list[profile]:
        chain, outer = [], self._outer
        while outer is not None:
            chain.append(outer)
            outer = outer._outer
        return chain

    def _yield_to(self, inner: profile) -> None:
        """A profile opened inside this one records from now on: stop recording until it ends."""
        self._recorder.nested.append(str(inner.logdir) if inner.logdir is not None else "")
        self._recorder.pause()

    def _hand_back(self) -> None:
        """This profile has ended: the one it took over from records again."""
        outer, self._outer = self._outer, None
        if outer is not None and outer._entered:
            outer._recorder.resume()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        recorder = self._recorder
        if recorder.in_forked_child:
            # a child forked inside the block (os.fork) leaves it: the parent saves the run's
            # report; the child's copy of the records saves nothing, prints nothing
            try:
                self._close()
            finally:
                self._hand_back()
                if self._guards_sigterm:
                    self._guards_sigterm = False
                    GUARD.remove()
            return False
        recorder.dist.ending()  # a SIGTERM from here on waits until the report is saved
        GUARD.hold()
        # a script that ends by sys.exit (whatever its status) ended where it chose to: nothing it
        # would have done is missing; any other exception (a launcher's SIGTERM too) cut it short
        recorder.incomplete = recorder.incomplete or (exc_type is not None and (
            not isinstance(exc, SystemExit) or isinstance(exc, Terminated)))
        try:
            capture = recorder.capture
            if capture is not None and capture.tracker.step_pending:
                capture.tracker.work_begins()  # a compiled optimizer step ended the last step
            recorder.end_step(final=True)
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
            if self.sinks and not self._device_chosen and not recorder.failed:
                self._check_calibration()
        finally:
            try:
                self._hand_back()
            finally:
                recorder.dist.ended()  # saved: a SIGTERM held since the exit began ends the process now
                if self._guards_sigterm:
                    self._guards_sigterm = False
                    GUARD.remove()
                GUARD.release()  # one held meanwhile: delivered (memwall's again while an outer profile is open)
        return False  # the user's exception, if any, propagates unchanged

    def _check_calibration(self) -> None:
        """An automatic calibration this run's own ops beat (taken while the machine was busy, it
        read the peak low) is measured again at the next profile; the findings said so."""
        try:
            report = self.report()
            device = report.device
            fp32 = device.peak("float32") if device is not None else None
            # a calibrated peak, not one $MEMWALL_PEAKS set (beaten_calibration marks automatic ones only)
            if device is not None and fp32 is not None and fp32.source == "calibrated" and report.rows:
                from memwall_plugin.console import above_the_peak

                if above_the_peak(report, report.total_time_s, keys=("fp32",)):
                    beaten_calibration(device)
        except Exception:  # a read-only cache, an odd report: the next profile keeps what it has
            pass

    # -- sinks ---------------------------------------------------------------------------------
    def _make_sinks(self, idle: bool) -> list[sinks.Sink]:
        out: list[sinks.Sink] = []
        if self._write_to is not None:
            if self.kineto and not idle:
                self._trace = sinks.KinetoTrace(self._write_to, self._action_fn, self.output)
                out.append(self._trace)
            self._files = sinks.ReportFiles(self._write_to, self.output)
            out.append(self._files)
            if self._scalars_wanted:
                out.append(sinks.Scalars(self._write_to, self.output))
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
        return self._recorder.recorded_steps

    @property
    def nested(self) -> list[str]:
        """Where the profiles opened inside this one recorded in its place (their logdirs)."""
        return self._recorder.nested

    def _window_closed(self, report: Report) -> None:
        for sink in self.sinks:
            sink.window(self, report)

    def _step_recorded(self, step: int, report: Callable[[], Report]) -> None:
        for sink in self.sinks:
            if sink.wants_steps:
                sink.step(self, step, report)

    def _close(self) -> None:
        try:
            self._recorder.close()
        finally:
            stance, self._stance = self._stance, None
            if stance is not None:
                stance.close()
            self._entered = False
            if profile._open is self:
                profile._open = self._outer

    # -- steps ---------------------------------------------------------------------------------
    def step(self) -> None:
        """Mark the end of a step (a training iteration, a generated token, ...)."""
        if not self._entered:
            raise RuntimeError("prof.step() was called outside its `with memwall.profile(...)` block")
        recorder = self._recorder
        if recorder.failed:
            recorder.step_num += 1  # memwall is off for this run: steps are only counted
            return
        following = recorder.step_num + 1
        GUARD.hold()  # a SIGTERM waits until the step boundary is done (terminate.py)
        try:
            recorder.end_step(final=False)
            if self._trace is not None:
                # torch.profiler's step marker (ProfilerStep#N), with memwall's mode out of its way
                assert recorder.capture is not None
                with recorder.capture.unseen():
                    self._trace.advance()
            recorder.begin_step(following)
        except Exception as err:  # memwall's own trouble must never stop the user's loop
            recorder.fail(err, "marking a step")
            recorder.step_num = following
        finally:
            GUARD.release()

    @property
    def step_num(self) -> int:
        return self._recorder.step_num

    @property
    def rank(self) -> int:
        """This process's rank under torch.distributed (0 otherwise)."""
        return self._recorder.dist.rank_and_world()[0]

    def job_reports(self, wait_s: float = RANKS_WAIT_S) -> Mapping[int, Report] | None:
        """Under torch.distributed, with a logdir: every rank's report of this job (waiting up to
        `wait_s` for ranks still saving theirs), each read in full when first asked for; None for
        a single-process run."""
        return sinks.job_ranks(self._files, self.report(), wait_s)

    def _optimizer_stepped(self, optimizer: Any) -> None:
        if optimizer is None:  # a compiled optimizer.step() ended: its region, not a hook, said so
            if self._entered and (self._primary_optimizer is None or self._primary_optimizer() is None):
                self.step()
            return
        # one step per iteration: the first optimizer that steps marks the boundaries
        if self._primary_optimizer is None or self._primary_optimizer() is None:
            self._primary_optimizer = weakref.ref(optimizer)
        if self._primary_optimizer() is optimizer and self._entered:
            self.step()

    def phase(self, name: str | None) -> _PhaseLabel:
        """Label the forward work that follows ("prefill", "decode", or a name of your own):
        `prof.phase("decode")` until the next call, or `with prof.phase("decode"): ...`.
        `prof.phase(None)` clears it. Backward and optimizer work keep their phases."""
        capture = self._recorder.capture
        if capture is None or not self._entered:
            raise RuntimeError("prof.phase() labels work inside its `with memwall.profile(...)` block")
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise ValueError(f"a phase is a short name like 'decode' or 'prefill', got {name!r}")
        return _PhaseLabel(capture.tracker, name)

    def report(self) -> Report:
        """The report over every recorded step so far. Inside the block that is the steps
        `prof.step()` has ended: the step in progress is not in it (the first time it has recorded
        work, a warning says so), and the whole run's report comes after the block."""
        recorder = self._recorder
        capture = recorder.capture
        if self._entered and not self._warned_step_open and capture is not None and capture.table:
            self._warned_step_open = True
            steps = len(recorder.recorded_steps)
            warnings.warn(f"memwall: prof.report() inside its `with memwall.profile()` block covers the steps "
                          f"ended so far ({steps}), not the one in progress: call prof.report() after the block "
                          "for the whole run, or end a step with prof.step() first", RuntimeWarning, stacklevel=2)
        return recorder.report()

    def nothing_recorded(self) -> str:
        """One line saying why a profile recorded nothing, where memwall can tell (another thread,
        a schedule whose active steps never came): the summary in place of its tables."""
        from memwall_plugin.console import nothing_recorded_note

        recorder = self._recorder
        steps = recorder.step_num - recorder.first_step + 1  # the last, ended or not, included
        return nothing_recorded_note(steps, self.scheduled, recorder.other_threads(), self.step_on_optimizer)


# `prof.step()` written inside a torch.compile'd function (a whole training step compiled) runs as
# Python at a graph break, as torch.profiler's own step does, instead of being traced into the graph
never_traced(profile.step, "memwall's step boundary runs as Python, outside the graph")


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _where(frame: FrameType | None) -> str:
    """Where a signal landed, as the script sees it: the innermost frame outside memwall, torch and
    Python's own library (with memwall recording, a signal mostly lands in its handling of an op)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    f = frame
    while f is not None and (str(f.f_globals.get("__name__", "")).partition(".")[0] in ("memwall_plugin", "torch")
                             or f.f_code.co_filename.startswith(stdlib)):
        f = f.f_back
    f = f or frame
    return f" in {f.f_code.co_filename}:{f.f_lineno} ({f.f_code.co_name})" if f is not None else ""


def _end_by_signal(signum: int, frame: FrameType | None) -> None:
    """SIGTERM or SIGHUP (terminate.py): end the open profiles, innermost first, as an error ends
    them; each saves its partial report. The process then ends by the signal."""
    name = signal.Signals(signum).name
    say(f"memwall: the process got {name}{_where(frame)}; saving what was recorded before it ends")
    saved: list[Path] = []  # where each profile wrote its reports
    prof = profile._open
    while prof is not None and prof._entered:
        outer = prof._outer
        try:
            capture = prof._recorder.capture
            if capture is not None:
                capture.settle()
            prof.__exit__(Terminated, Terminated(128 + signum), None)
            if prof.on_ended_by_signal is not None:
                prof.on_ended_by_signal()
        except BaseException as err:  # one profile's trouble must not keep the others from saving
            say(f"memwall: could not finish a profile: {type(err).__name__}: {err}")
        if prof.saved:
            saved.append(prof.saved[-1].parent)
        prof = outer
    for folder in dict.fromkeys(saved):
        say(f"memwall: partial report saved under {folder}")
