"""Each GPU op's time from the device's own record: the kernels it launched.

While a step records on a GPU, torch's profiler runs with user-scope ranges only: memwall opens
one range, `memwall#<n>`, around the n-th op it times, and the profiler records the kernels (and
copies, sets) the GPU ran under a device-side annotation of that name. An op's time is the sum
of the durations of the kernels inside its annotation: the GPU's time on that op alone, without
the time it sat waiting for the host's next launch, which a pair of CUDA events around the op
counts in. The union of all the step's device activity is the GPU's busy time: what the step's
timeline (launch-bound or not) is made of.

Where the profiler cannot record device activity (no CUPTI in this torch, another torch.profiler
already recording, `MEMWALL_CUDA_TIME=events`), memwall keeps timing ops with CUDA events, and
the report says which clock its GPU times come from. One profiler records at a time: when a
torch.profiler starts while memwall's clock runs (the user's, opened inside memwall.profile, or
`kineto=True`'s on its schedule), memwall reads what its clock holds so far and hands over, and
times ops with CUDA events until that profiler has ended.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    device_activity_supported,
    marker_enter,
    marker_exit,
    other_profiler_open,
    profiler_running,
    start_device_activity,
    stop_device_activity,
    unwatch_other_profilers,
    watch_other_profilers,
)

#: names of memwall's ranges: PREFIX + the op's index in the step
PREFIX = "memwall#"
#: $MEMWALL_CUDA_TIME: "kernels" (default: the device's record where torch can take it) or
#: "events" (CUDA events around each op)
ENV = "MEMWALL_CUDA_TIME"
KERNELS, EVENTS = "kernels", "events"


def wanted(environ: Any = None) -> bool:
    env = os.environ if environ is None else environ
    value = env.get(ENV, KERNELS).strip().lower()
    if value not in (KERNELS, EVENTS):
        raise ValueError(f"${ENV}={value!r}: use {KERNELS!r} (the kernels' own durations, from torch's profiler) "
                         f"or {EVENTS!r} (CUDA events around each op)")
    return value == KERNELS


class OpKernels:
    """What the GPU ran for one op call: total kernel time and the kernels' names in order."""

    __slots__ = ("ns", "names")

    def __init__(self) -> None:
        self.ns = 0
        self.names: list[str] = []


def attribute(events: Iterable[tuple[str, bool, int, int, int]]) -> tuple[dict[int, OpKernels], list[tuple[int, int]]]:
    """From the profiler's events (name, on the device, stream, start ns, end ns): per op index
    the kernels inside its annotation on the same stream (the innermost where ranges nest), and
    every device activity interval (kernels, copies, sets), sorted: the GPU's busy time."""
    annotations: dict[int, list[tuple[int, int, int]]] = {}  # stream -> (start, end, op index)
    activity: list[tuple[str, int, int, int]] = []
    for name, on_device, stream, start, end in events:
        if not on_device:
            continue
        if name.startswith(PREFIX):
            try:
                annotations.setdefault(stream, []).append((start, end, int(name[len(PREFIX):])))
            except ValueError:
                continue
        else:
            activity.append((name, stream, start, end))
    starts: dict[int, list[int]] = {}
    for stream, spans in annotations.items():
        spans.sort()
        starts[stream] = [s for s, _, _ in spans]
    ops: dict[int, OpKernels] = {}
    busy: list[tuple[int, int]] = []
    for name, stream, start, end in activity:
        busy.append((start, end))
        if stream not in annotations:
            continue
        spans = annotations[stream]
        i = bisect.bisect_right(starts[stream], start) - 1
        while i >= 0:  # the latest annotation that began at or before the kernel and holds it
            a_start, a_end, index = spans[i]
            if a_end >= end:
                op = ops.get(index)
                if op is None:
                    op = ops[index] = OpKernels()
                op.ns += end - start
                op.names.append(name)
                break
            if start - a_start > 10**9:  # nothing that long ago holds it
                break
            i -= 1
    busy.sort()
    return ops, busy


def busy_time(intervals: Iterable[tuple[float, float]], start: float = -math.inf, end: float = math.inf) -> float:
    """How long at least one of the (sorted) intervals runs within [start, end]: overlapping
    streams counted once. In the intervals' own unit (ns here, us in a trace)."""
    busy: float = 0
    reach = start
    for a, b in intervals:
        a, b = max(a, reach), min(b, end)
        if b > a:
            busy += b - a
            reach = b
        if reach >= end:
            break
    return busy


#: why a run's GPU ops went to CUDA events while another torch.profiler recorded
HANDED_OVER = "a torch.profiler recorded while memwall.profile did (one profiler records at a time)"


class KernelClock:
    """Times a capture's GPU ops by their kernels. `start()` before the ops, `mark(i)` / `unmark`
    around the i-th op, `stop()` after them: each op index's kernels, and the GPU's busy ns.
    `on_handover` runs when another torch.profiler is about to start while this one records: it
    must read the clock (`stop()`) while it still holds the ops so far."""

    def __init__(self, on_handover: Callable[[], None] | None = None) -> None:
        #: why this run's GPU ops were timed with CUDA events, at times or always (None: never)
        self.unavailable: str | None = None
        self._never: str | None = None  # why the clock cannot be used in this run at all
        self.running = False
        self._checked = False
        self._on_handover = on_handover
        self._thread = 0
        #: a handover from another thread's profiler: the clock's record is lost, not read
        self.lost = False
        #: the clocks this run's GPU ops were timed with so far: KERNELS, EVENTS (both: at times)
        self.used: set[str] = set()

    def available(self) -> bool:
        """Whether this run can use the clock at all (the choice, the torch build): checked once."""
        if not self._checked:
            self._checked = True
            if not wanted():
                self._never = f"${ENV}=events"
            elif not device_activity_supported():
                self._never = "this torch's profiler cannot record CUDA activity (no Kineto/CUPTI)"
            self.unavailable = self._never
        return self._never is None

    def start(self) -> bool:
        """Start recording (False: it cannot now, `unavailable` says why, and the GPU ops until
        the next start are timed with CUDA events)."""
        if not self.running:
            self.running = self._start()
        self.used.add(KERNELS if self.running else EVENTS)
        return self.running

    def _start(self) -> bool:
        if not self.available():
            return False
        if profiler_running() or other_profiler_open():  # torch.profiler's own, or kineto=True's
            self.unavailable = HANDED_OVER
            return False
        try:
            start_device_activity()
        except Exception as exc:  # an odd build, a profiler that would not start: CUDA events then
            self.unavailable = f"torch's profiler did not start ({type(exc).__name__}: {exc})"
            return False
        self._thread = threading.get_ident()
        watch_other_profilers(self._handover)
        return True

    def _handover(self) -> None:
        """Another torch.profiler is starting: read what this clock holds, then stop."""
        if not self.running:
            return
        self.unavailable = HANDED_OVER
        self.used.add(EVENTS)  # the rest of the step's GPU ops
        if threading.get_ident() != self._thread:
            # the profiler's state is the recording thread's: it cannot be read from here
            self.running, self.lost = False, True
            unwatch_other_profilers(self._handover)
            return
        if self._on_handover is not None:
            self._on_handover()
        if self.running:  # no callback read it
            self.stop()

    def stop(self) -> tuple[dict[int, OpKernels], int]:
        """Wait for the GPU, stop recording: each op index's kernels and the GPU's busy ns."""
        if not self.running:
            return {}, 0
        self.running = False
        unwatch_other_profilers(self._handover)
        torch.cuda.synchronize()  # the last kernels are in the record only once they ran
        ops, busy = attribute(stop_device_activity())
        return ops, int(busy_time(busy))


def mark(index: int) -> Any:
    return marker_enter(PREFIX + str(index))


unmark = marker_exit
