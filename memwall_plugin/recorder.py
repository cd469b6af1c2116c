"""The recorder: capture and recorded windows, turned into reports.

It owns the capture (hooks/), the schedule's steps, the tables of op signatures per window and
for the whole run, the distributed session, and the device the rows are placed on. It knows
nothing of files, scalars or printing: each closed window and each recorded step is handed to
the callbacks `memwall.profile` gives it (its sinks).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from memwall_plugin.analysis import analysis_cache, rows_from_entries
from memwall_plugin.ceilings import ceilings_of, memory_roof_of, tf32_families
from memwall_plugin.devices import DeviceSpec, detect_device, resolve_device
from memwall_plugin.distributed import DistributedSession
from memwall_plugin.hooks.capture import FORKED_CHILD, Capture, CaptureEntry, merge_into, rename_phase
from memwall_plugin.hooks.kernel_clock import EVENTS, KERNELS
from memwall_plugin.hooks.memory import op_name
from memwall_plugin.memory_build import memory_report
from memwall_plugin.records import (
    CHANNELS_LAST_KEY,
    COMPILE_WALL_KEY,
    CUDA_GRAPHS_KEY,
    CUDA_KERNEL_TIME,
    OPTIMIZERS_KEY,
    OTHER,
    OTHER_THREADS_KEY,
    OWN_TIME_KEY,
    SCALER_SKIPPED_KEY,
    SETUP,
    SETUP_WALL_KEY,
    TIME_SOURCE_KEY,
    TIME_SOURCES,
    TIMELINE_KEY,
    UNCACHED_KEY,
    uncached_runs,
)
from memwall_plugin.registry import Registry
from memwall_plugin.report import (
    MAX_STEP_TOTALS,
    TAIL_OP_TIME_S,
    TAIL_WALL_TIME_S,
    Report,
    StepTotals,
    condense_steps,
)
from memwall_plugin.rundir import new_job_id
from memwall_plugin.schedule import Action

Table = dict[Any, CaptureEntry]
#: a recorded step's number and its report (built only when called)
StepCallback = Callable[[int, Callable[[], Report]], None]


#: the timeline's per-step entries kept in a report (the totals count every step)
TIMELINE_STEPS_KEPT = 1000


def timeline_extra(timeline: Sequence[tuple[int, float, float, float, int]]) -> dict[str, Any]:
    """`report.extra["timeline"]` from (step, wall s, GPU busy s, memwall's own s, op calls) per
    step: the figures a GPU trace's timeline gives (memwall_plugin/trace_analysis.py `_timeline`),
    and the host's time per op. The idle share is of the wall time less memwall's own measured
    work: the GPU's wait for memwall's Python is not the user's run's (the dispatch into memwall's
    mode is not measured, so some of memwall's cost stays in)."""
    def idle(wall: float, busy: float, own: float) -> float | None:
        work = wall - own
        return max(0.0, 1 - busy / work) if work > 0 else None

    def per_op(wall: float, own: float, calls: int) -> float | None:
        return (wall - own) / calls if calls else None

    wall_s = math.fsum(t[1] for t in timeline)
    busy_s = math.fsum(t[2] for t in timeline)
    own_s = math.fsum(t[3] for t in timeline)
    calls = sum(t[4] for t in timeline)
    return {"source": "the GPU's own record of the recorded steps (kernels, copies, sets; overlapping streams "
                      "counted once) against each step's wall time, memwall's own measured time left out",
            "steps": [{"step": step, "wall_s": wall, "device_busy_s": busy, "memwall_own_s": own,
                       "idle_fraction": idle(wall, busy, own), "op_calls": n, "host_s_per_op": per_op(wall, own, n)}
                      for step, wall, busy, own, n in timeline[-TIMELINE_STEPS_KEPT:]],
            "wall_s": wall_s, "device_busy_s": busy_s, "memwall_own_s": own_s,
            "idle_fraction": idle(wall_s, busy_s, own_s), "op_calls": calls,
            "host_s_per_op": per_op(wall_s, own_s, calls)}


def _merge(into: Table, table: Table) -> Table:
    """`table`'s calls added into `into`, which is returned (`table` itself when `into` is
    empty: the common single-window run copies nothing)."""
    if not into:
        return table
    merge_into(into, table)
    return into


#: convolutions, forward and backward: the argument that is their image (the backward's first
#: is the output's gradient, laid out as whatever made it)
_CONVOLUTIONS = {"aten.convolution": 0, "aten._convolution": 0, "aten.mkldnn_convolution": 0,
                 "aten.convolution_backward": 1}


def channels_last_share(entries: Any) -> float | None:
    """The share of the convolutions' time whose image was channels_last (None: no convolution
    of 4 or 5 dims ran)."""
    every = last = 0
    for e in entries:
        at = _CONVOLUTIONS.get(op_name(e.func))
        if at is None or len(e.arg_key) <= at:
            continue
        image = e.arg_key[at]
        if not (isinstance(image, tuple) and len(image) == 3 and isinstance(image[1], tuple)):
            continue
        shape, stride = tuple(image[0]), image[1]
        if len(shape) not in (4, 5) or len(stride) != len(shape):
            continue
        every += e.time_ns or 1
        if _channels_last(shape, stride):
            last += e.time_ns or 1
    return last / every if every else None


def _channels_last(shape: tuple[int, ...], stride: tuple[Any, ...]) -> bool:
    """Whether strides are NHWC's (NDHWC's): channels innermost, then width, height, (depth), batch."""
    c, spatial = shape[1], shape[2:]
    if c <= 1:
        return False  # one channel: both layouts alike
    expected, step = [0] * len(shape), 1
    for dim in (1, *range(len(shape) - 1, 1, -1), 0):
        expected[dim] = step
        step *= shape[dim]
    return all(size == 1 or int(k) == e for size, k, e in zip(shape, stride, expected)) and bool(spatial)


class Recorder:
    """Records steps by the schedule's actions and builds a report per window and for the run."""

    def __init__(
        self,
        *,
        registry: Registry,
        action_fn: Callable[[int], Action],
        device: DeviceSpec | None = None,
        link: Any = None,
        max_signatures: int | None = None,
        on_window: Callable[[Report], None] = lambda report: None,
        on_step: StepCallback | None = None,
        first_step: int = 0,
        memory: bool = True,
        tail: bool = False,
    ) -> None:
        self.memory = memory
        #: the run itself ends the steps (memwall run: at each optimizer step), so what follows the
        #: last step's end is a tail, not a step: its ops join the last window without a step of
        #: their own (no step number, no per-step report), its time in `extra` (TAIL_OP_TIME_S)
        self.tail = tail
        self._tail_s: tuple[float, float] | None = None  # the tail's (op time, wall time)
        self.registry = registry
        self.first_step = first_step  # steps are numbered from it; the schedule counts from 0
        self.action_fn = action_fn
        self.device = device  # None: detected from where the op time was spent
        self.max_signatures = max_signatures
        self.on_window = on_window
        self.on_step = on_step
        self.analyses = analysis_cache(registry)
        self.dist = DistributedSession(link)  # rank, collectives, link (memwall_plugin/distributed.py)
        self.capture: Capture | None = None
        self.step_num = 0
        self.action = Action.NONE
        self._step_start = 0.0
        self._all: Table = {}
        self._window: Table = {}
        self._window_steps: list[int] = []
        self._window_wall = 0.0
        self._window_own = 0.0  # memwall's own measured time in the window's steps (Capture.own_ns)
        #: (step, wall s, GPU busy s, memwall's own s, op calls) of the window's steps and the closed
        #: windows' whose GPU ops were timed by their kernels (hooks/kernel_clock.py): the timeline
        self._window_timeline: list[tuple[int, float, float, float, int]] = []
        self._timeline: list[tuple[int, float, float, float, int]] = []
        self._own_start = 0  # Capture.own_ns and the tracker's at the step's start
        #: each recorded step's totals, the window's and the closed windows' (condensed when long)
        self._window_totals: list[StepTotals] = []
        self._stride = 1  # steps per point in this window (doubled each time its points are condensed)
        self._all_totals: tuple[StepTotals, ...] = ()
        self._steps: list[int] = []
        self._wall = 0.0
        self._own = 0.0
        #: (step, seconds) of the wall time before the first work began, in the step it ended in
        self._setup_wall: tuple[int, float] | None = None
        #: step -> seconds torch.compile spent compiling in it (the steps that compiled only)
        self._compile_wall: dict[int, float] = {}
        #: the steps whose optimizer step a GradScaler skipped, and the tracker's count of skips
        #: when the last step ended
        self._skipped_steps: set[int] = set()
        self._uncached: dict[int, list[list[int]]] = {}  # step -> generation calls without a cache
        self._scaler_skips = 0
        self._compile_start = 0
        self.incomplete = False
        self._report: Report | None = None
        self.closed = False
        #: this run's job, for a run that is not one rank of a torch.distributed job
        self.job = new_job_id()
        #: where the profiles opened inside this one recorded in its place (their logdirs)
        self.nested: list[str] = []

    # -- lifetime ------------------------------------------------------------------------------
    def open(self, model: torch.nn.Module | None, suspended: bool,
             on_optimizer_step: Callable[[Any], None] | None = None) -> None:
        self.capture = Capture(model, max_signatures=self.max_signatures, analyse=self.analyses.analyse,
                               memory=self.memory)
        self.capture.suspended = suspended
        self.capture.open()
        self.dist.open(self.capture)
        if on_optimizer_step is not None:
            self.capture.tracker.on_optimizer_step = on_optimizer_step
        self.begin_step(self.first_step)

    def close(self) -> None:
        self.closed = True
        try:
            if self.capture is not None:
                self.capture.close()
        finally:
            self.dist.close()

    @property
    def failed(self) -> bool:
        return self.capture is not None and self.capture.failed is not None

    def other_threads(self) -> dict[str, int]:
        """Module calls and optimizer steps seen on threads memwall does not record, by thread."""
        capture = self.capture
        return {} if capture is None else dict(capture.tracker.other_threads)

    @property
    def in_forked_child(self) -> bool:
        """This process is a fork of the one that opened the profile (hooks/capture.py)."""
        return self.capture is not None and self.capture.failed == FORKED_CHILD

    def fail(self, err: BaseException, where: str) -> None:
        """An internal error outside the dispatch path: memwall stops for the rest of the run."""
        assert self.capture is not None
        self.capture.fail(err, where)
        self.incomplete = True
        try:
            self.capture.stop()
        except Exception:  # noqa: S110 - stopping is best effort once memwall has failed
            pass

    def pause(self) -> None:
        """A profile opened inside this one records in its place until it ends."""
        capture = self.capture
        if capture is None:
            return
        capture.suspended = True
        try:
            capture.stop()
        except Exception as err:  # another dispatch mode above ours: memwall gives up, the run goes on
            self.fail(err, "handing over to a nested memwall.profile")

    def resume(self) -> None:
        capture = self.capture
        if capture is None or self.closed:
            return
        capture.suspended = False
        if self.action.recording:
            try:
                capture.start()
            except Exception as err:
                self.fail(err, "resuming after a nested memwall.profile")

    # -- steps ---------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        assert self.capture is not None
        self.step_num = step
        self.action = self.action_fn(step - self.first_step)
        if self.action.recording:
            if self.capture.memory is not None:
                self.capture.memory.begin_step(step)
            self.capture.start()
        else:
            self.capture.stop()
        self._own_start = self._own_ns()
        self._compile_start = self.capture.tracker.compile_ns()
        self._step_start = time.perf_counter()

    def _own_ns(self) -> int:
        capture = self.capture
        return 0 if capture is None else capture.own_ns + capture.tracker.own_ns

    def end_step(self, *, final: bool) -> None:
        """The step ends: its table joins the window; a window the schedule closes (or the last
        one) becomes a report for `on_window`; a recorded step goes to `on_step`."""
        assert self.capture is not None
        elapsed = time.perf_counter() - self._step_start
        own = (self._own_ns() - self._own_start) / 1e9
        tracker = self.capture.tracker
        before = 0.0  # this step's wall time before the first work began (the first step's alone)
        if tracker.setup_ended_ns is not None:
            ended, tracker.setup_ended_ns = tracker.setup_ended_ns, None
            before = min(elapsed, max(0.0, ended / 1e9 - self._step_start))
            self._setup_wall = (self.step_num, before)
        # torch.compile compiling in the step (its first steps): no step's host time, nor GPU idling
        compiled = min(elapsed - before, max(0.0, (tracker.compile_ns() - self._compile_start) / 1e9))
        if compiled > 0:
            self._compile_wall[self.step_num] = self._compile_wall.get(self.step_num, 0.0) + compiled
        if self.capture.failed is not None:
            self.incomplete = True
        if tracker.scaler_skips != self._scaler_skips:  # a GradScaler skipped this step's update
            self._scaler_skips = tracker.scaler_skips
            self._skipped_steps.add(self.step_num)
        uncached = tracker.take_uncached()
        if uncached:
            self._uncached.setdefault(self.step_num, []).extend(uncached)
        table = self.capture.take()
        busy_ns, self.capture.device_busy_ns = self.capture.device_busy_ns, None
        # the GPU's idle share is of the step's work: a script's start-up before it is not waiting
        timed = None if busy_ns is None else (self.step_num, elapsed - before - compiled, busy_ns / 1e9, own,
                                              sum(e.calls for e in table.values()))
        # the first step ended before any work began: what it held as set-up is plain "other"
        # (a profile of bare ops, a step of set-up alone)
        rename = (SETUP, OTHER) if self.capture.tracker.setup_open else None
        if rename is not None:
            table = rename_phase(table, *rename)
            if self.capture.memory is not None:
                self.capture.memory.rename_phase(*rename)
        self.capture.end_step()
        tail = final and self.tail and self.step_num > self.first_step
        # a tail after a window the schedule has saved belongs to no window: not kept
        kept = self.action.kept and not (tail and not self._window_steps)
        if self.capture.memory is not None:
            self.capture.memory.end_step(kept=kept and bool(table) and not tail)
        span = (int(self._step_start * 1e9), int((self._step_start + elapsed) * 1e9))  # the step's wall
        self.dist.end_step(self.capture, table, kept, final, rename, span)
        step: StepTotals | None = None
        if kept and table:
            self._window = _merge(self._window, table)
            self._window_wall += elapsed
            self._window_own += own
            if tail:
                self._tail_s = (math.fsum(e.time_ns for e in table.values()) / 1e9, elapsed)
            else:
                self._window_steps.append(self.step_num)
                if timed is not None:
                    self._window_timeline.append(timed)
                step = self.step_totals(table, elapsed)
                self._add_step(step)
        closes = self.action is Action.RECORD_AND_SAVE or final
        report = self._close_window() if closes and self._window_steps else None
        if self.on_step is not None and kept and table and not tail:
            built: list[Report] = []

            def step_report() -> Report:
                """Built on the first call only: a step no sink asks about costs nothing."""
                if not built:
                    alone = report is not None and len(report.steps) == 1  # a window of this step alone
                    built.append(report if alone and report is not None else self.build(
                        table, (self.step_num,), elapsed, window_only=True, step_only=True,
                        step_totals=() if step is None else (step,), own=own,
                        timeline=() if timed is None else (timed,)))
                return built[0]

            self.on_step(self.step_num, step_report)

    def _add_step(self, step: StepTotals) -> None:
        """A step joins the window's points: its own point, or past MAX_STEP_TOTALS the last one
        until that holds `_stride` steps (then the points are condensed in pairs and the stride
        doubles), so a long window keeps at most MAX_STEP_TOTALS points of equal size."""
        totals = self._window_totals
        if totals and totals[-1].step_count < self._stride:
            totals[-1] = totals[-1] + step
        else:
            totals.append(step)
        if len(totals) > MAX_STEP_TOTALS:
            self._window_totals = list(condense_steps(totals, (len(totals) + 1) // 2))
            self._stride *= 2

    def step_totals(self, table: Table, wall: float) -> StepTotals:
        """This step's totals from its table: each signature's counts come from the analysis
        cache the report's rows are built from (analysed once, reused there)."""
        totals = self.analyses.totals  # each entry's analysis is remembered on it (AnalysisCache.of)
        flops = nbytes = 0
        time_ns = counted_ns = 0
        for e in table.values():
            t = totals(e)
            if t is None:  # a marker that computes nothing: in no row
                continue
            time_ns += e.time_ns
            if t.flops is not None:
                flops += t.flops
                nbytes += t.bytes_read + t.bytes_written
                counted_ns += e.time_ns
        return StepTotals(self.step_num, self.step_num, flops, nbytes, time_ns / 1e9, counted_ns / 1e9, wall)

    def _close_window(self) -> Report:
        steps = tuple(self._window_steps)
        report = self.build(self._window, steps, self._window_wall, window_only=True,
                            step_totals=condense_steps(self._window_totals), own=self._window_own,
                            timeline=self._window_timeline)
        self.dist.close_window()
        if self.capture is not None and self.capture.memory is not None:
            self.capture.memory.close_window()
        only_window = not self._all
        self._steps.extend(steps)
        self._wall += self._window_wall
        self._own += self._window_own
        self._timeline.extend(self._window_timeline)
        self._window_timeline = []
        self._all = _merge(self._all, self._window)
        self._all_totals = condense_steps(self._all_totals + report.step_totals)
        self._window, self._window_steps, self._window_wall, self._window_own = {}, [], 0.0, 0.0
        self._window_totals, self._stride = [], 1
        # the common case, one window: the run's report is this one (no second build)
        self._report = report if only_window else None
        self.on_window(report)
        return report

    @property
    def recorded_steps(self) -> tuple[int, ...]:
        return tuple(self._steps + self._window_steps)

    # -- reports -------------------------------------------------------------------------------
    @staticmethod
    def _ran_on(table: Table) -> str:
        """The device type where most op time was spent: "cuda", "mps" or "cpu"."""
        time_by_kind: dict[str, int] = {}
        for e in table.values():
            time_by_kind[e.device] = time_by_kind.get(e.device, 0) + e.time_ns
        kind = max(time_by_kind, key=lambda k: time_by_kind[k], default="cpu")
        return kind if kind in ("cuda", "mps") else "cpu"

    def measured_device(self, device: DeviceSpec | None, ran: str) -> DeviceSpec | None:
        """The device the ops ran on where it is not `device`, one chosen for the report (device=,
        --device, $MEMWALL_DEVICE) of another type (an H100's roofline for a run on this CPU): the
        detected one, on which the report is built before it is projected onto the chosen one, as
        `memwall report --device` does. None where they are of one type (the detected device, or
        one the user names for the hardware the run is on)."""
        if device is None:
            return None
        if device.kind == ran or (device.kind == "rocm" and ran == "cuda"):
            return None
        try:
            return detect_device(ran)
        except Exception:  # detection trouble: placed on the chosen device, as before
            return None

    def device_for(self, kind: str) -> DeviceSpec | None:
        """The explicit device, else the detected device of `kind`, where most op time was spent."""
        if self.device is not None:
            return self.device
        try:
            self.device = resolve_device(None, None, kind=kind)
        except Exception as exc:  # detection trouble must not lose the report
            warnings.warn(f"memwall: could not detect the device ({exc}); rows have no roofline",
                          RuntimeWarning, stacklevel=3)
            return None
        return self.device

    def _cuda_graphs(self) -> dict[str, Any]:
        """What the run's CUDA graphs hid from memwall, so far (hooks/capture.py)."""
        capture = self.capture
        if capture is None:
            return {}
        out: dict[str, Any] = {}
        if capture.graph_captured:
            out["captured_calls"] = dict(sorted(capture.graph_captured.items(), key=lambda kv: -kv[1]))
        if capture.graph_regions:
            out["region_calls"] = capture.graph_regions
        return out

    def build(self, table: Table, steps: tuple[int, ...], wall: float,
              window_only: bool = False, step_only: bool = False, step_totals: tuple[StepTotals, ...] = (),
              own: float = 0.0, timeline: Sequence[tuple[int, float, float, float, int]] = ()) -> Report:
        """The report of `table` (a step, a window or the whole run). `step_only`: one step's
        ops alone, for per-step sinks (its collectives are the window's, so none are added)."""
        rank, world = self.dist.rank_and_world()
        ran = self._ran_on(table)
        chosen = self.device_for(ran)
        measured = self.measured_device(chosen, ran)
        device = measured or chosen
        tf32 = tf32_families(device)
        comm = {} if step_only else self.dist.communication(device, window_only)
        rows = rows_from_entries(table.values(), self.registry, ceilings_of(device, tf32), self.analyses,
                                 memory_roof_of(device))
        memory = None
        if self.capture is not None and self.capture.memory is not None:
            tracker = self.capture.memory
            # sharding's added traffic crosses the network when the job spans nodes (as before levels)
            link = comm.get("inter_link") or comm.get("link")
            memory = memory_report(tracker, tracker.totals(window_only, step_only), rows, device, link,
                                   flops_of=self._flops_per_call)
        extra: dict[str, Any] = {}
        if self.nested:  # where profiles opened inside this one recorded in its place (empty: in memory only)
            extra["nested_profiles"] = list(self.nested)
        if self._tail_s is not None and not step_only:
            extra[TAIL_OP_TIME_S], extra[TAIL_WALL_TIME_S] = self._tail_s
        if own > 0:  # memwall's own measured time in the steps' wall time
            extra[OWN_TIME_KEY] = own
        if self._setup_wall is not None and self._setup_wall[0] in steps and self._setup_wall[1] > 0:
            extra[SETUP_WALL_KEY] = self._setup_wall[1]
        compiled = math.fsum(s for step, s in self._compile_wall.items() if step in steps)
        if compiled > 0:
            extra[COMPILE_WALL_KEY] = compiled
        kinds = sorted({e.device for e in table.values()} & TIME_SOURCES.keys())
        if kinds:  # where its times come from, per device type its ops ran on
            extra[TIME_SOURCE_KEY] = {kind: self._time_source(kind) for kind in kinds}
        if timeline:  # the GPU's own record of the steps: busy, or idle waiting for the host
            extra[TIMELINE_KEY] = timeline_extra(timeline)
        graphs = self._cuda_graphs()
        if graphs:
            extra[CUDA_GRAPHS_KEY] = graphs
        elsewhere = self.other_threads()
        if elsewhere:
            extra[OTHER_THREADS_KEY] = elsewhere
        skipped = sorted(self._skipped_steps.intersection(steps))
        if skipped:
            extra[SCALER_SKIPPED_KEY] = skipped
        layout = channels_last_share(table.values())
        if layout is not None:
            extra[CHANNELS_LAST_KEY] = layout
        uncached = [run for step in steps for run in self._uncached.get(step, ())]
        if uncached:
            extra[UNCACHED_KEY] = uncached_runs(uncached)
        if self.capture is not None and self.capture.tracker.optimizers:
            extra[OPTIMIZERS_KEY] = [{"class": name, "fused": fused, "fusable": fusable, "sparse": sparse}
                                     for name, fused, fusable, sparse in self.capture.tracker.optimizers]
        report = Report(
            rows=rows,
            memory=memory,
            device=device,
            measured_on=device.name if device is not None else "",
            tf32=tf32,
            steps=steps,
            wall_time_s=wall,
            incomplete=self.incomplete,
            rank=rank,
            world_size=world,
            torch_version=torch.__version__,
            created_unix_s=time.time(),
            job=self.dist.job() or self.job,
            **comm,
            extra=extra,
            step_totals=step_totals,
        )
        return report.rescore(device=chosen) if measured is not None else report

    def _time_source(self, kind: str) -> str:
        """How this run's ops on `kind` were timed; on a GPU, which clock (hooks/kernel_clock.py)."""
        capture = self.capture
        if kind != "cuda" or capture is None or KERNELS not in capture.clock.used:
            why = capture.clock.unavailable if kind == "cuda" and capture is not None else None
            return TIME_SOURCES[kind] + (f" (the kernels' own record was not used: {why})" if why else "")
        if EVENTS in capture.clock.used:
            return (f"{CUDA_KERNEL_TIME}; in some steps {TIME_SOURCES[kind]} "
                    f"({capture.clock.unavailable or 'the profiler was not available'})")
        return CUDA_KERNEL_TIME

    def _flops_per_call(self, entry: CaptureEntry) -> int | None:
        if entry.bucket is not None:  # past the signature cap: no exact per-call figure kept
            return None
        return self.analyses.of(entry).counted.flops

    def report(self) -> Report:
        """The report over every recorded step so far."""
        if self._report is not None and not self._window:
            return self._report
        table = dict(self._all)
        if self._window:
            table = {k: v.copy() for k, v in table.items()}
            table = _merge(table, self._window)
        report = self.build(table, self.recorded_steps, self._wall + self._window_wall,
                            step_totals=condense_steps(self._all_totals + tuple(self._window_totals)),
                            own=self._own + self._window_own, timeline=self._timeline + self._window_timeline)
        if self.closed and not self._window:
            self._report = report  # the profile has ended: nothing can change it any more
        return report
