"""Records torch.distributed collectives while a capture runs: which, how large, where, how long.

Collectives reach the dispatcher as c10d ops (ProcessGroup methods, and so DDP's C++ reducer,
FSDP and explicit `torch.distributed` calls) or as functional collectives. A capture made
collective-aware (`enable_collectives`) routes them here instead of into its op table.

What "time" means: a c10d op enqueues its work on the backend and returns a Work at once; the
collective's time is from the call until that Work completes, as seen by a watcher thread of
memwall's that waits on the run's Works in the order they were issued (so it includes waiting for
the slowest peer and for collectives queued before it). The run's end joins that thread (see
`CollectiveRecorder.close`). A functional collective completes when `wait_tensor` on its result
returns. Work on a GPU completes on the device, not on the host: such calls are counted, not
timed. The stamps are taken in Python, so they may trail the real completion by the time the
watcher waits for the GIL (at most the interpreter's switch interval, 5 ms by default, while the
training thread runs Python); at a step's end memwall lets finished collectives stamp before it
closes the step.

Nothing of memwall's runs on the backend's threads, and nothing of memwall's is released there: a done-callback
on a c10d future (`Future.add_done_callback`) is a Python function that the backend's thread calls
and then releases, each time taking the GIL; when the script ends right after its last collective,
the training thread can free DDP's reducer (and with it the process group, whose destructor joins
the backend's threads) while holding the GIL that thread waits for: a deadlock at exit (seen with
gloo: the rank never exits). So completion is waited for on memwall's own thread, and each Work
is let go on the training thread, between two ops, as soon as it completed: a Work holds its
collective's buffers (FSDP2's gathered parameters, the gradients it reduce-scatters), which a bare
run frees once the collective is waited for. The backend's thread may then hold the last reference
and destroy it; a Work's destructor releases the thread-local state captured at its issue, which
holds memwall's saved-tensors hook (a Python object, whose release takes the GIL) while a step is
recorded. So each collective is issued with that hook off the stack; where it cannot be (a
checkpoint's hooks above it), its Work is let go LET_GO_S after it completed, by when the
backend's thread has let go of it. The collective's tensors can still need the GIL there (they
reached memwall's mode, so they have Python objects: DDP's buckets, never shown to Python in a
bare run); so no process group a recorded collective ran on is torn down before the interpreter
exits (`_kept_groups`).

Overlap: while any collective is in flight, the time each other op takes on this thread is
added to `busy_ns`; a collective's overlap is the busy time between its issue and completion.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import queue
import threading
import time
from collections import deque
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    call_below_mode,
    current_autograd_node,
    group_size_by_name,
    in_backward,
    is_accumulate_grad,
    unbox_process_group,
    unbox_work,
    without_own_saved_tensors_hook,
)
from memwall_plugin.hooks.capture import Capture, CaptureEntry, Handler
from memwall_plugin.hooks.modules import ModuleTracker
from memwall_plugin.hooks.signatures import build_call, schema_of, signature

from memwall_plugin.comm import COLLECTIVE_OPS, RECV, SEND, WAIT_OP
from memwall_plugin.records import BACKWARD, FORWARD, OPTIMIZER, OTHER, SETUP, OpCall

_perf_counter_ns = time.perf_counter_ns
_ScriptObject = torch.ScriptObject
_ISSUE, _WAIT, _POINT_TO_POINT = "issue", "wait", "point-to-point"
NAMESPACES = ("c10d.", "_c10d_functional.")


@functools.cache
def collective_routes() -> dict[Any, str]:
    """Every collective overload (and the functional `wait_tensor`) -> how the mode treats it."""
    routes: dict[Any, str] = {}
    if not torch.distributed.is_available():
        return routes
    # c10d's sends and receives return a Work only the user may wait for; the functional ones'
    # results are waited for once, by wait_tensor, like any functional collective's
    for name, route in [*((n, _POINT_TO_POINT if spec.kind in (SEND, RECV) and n.startswith("c10d.") else _ISSUE)
                          for n, spec in COLLECTIVE_OPS.items()), (WAIT_OP, _WAIT)]:
        namespace, _, op_name = name.partition(".")
        try:
            packet = getattr(getattr(torch.ops, namespace), op_name)
        except (AttributeError, RuntimeError):
            continue  # not in this torch build
        for overload in packet.overloads():
            routes[getattr(packet, overload)] = route
    return routes


class CollectiveEntry:
    """All calls of one collective signature: calls, and the time of those seen completing."""

    __slots__ = ("func", "arg_key", "device", "module", "phase", "group_size", "calls", "timed_calls", "time_ns",
                 "overlap_ns", "_call")

    def __init__(self, func: Any, arg_key: tuple[Any, ...], device: str, module: str, phase: str,
                 group_size: int, calls: int = 0) -> None:
        self.func, self.arg_key, self.device, self.module, self.phase = func, arg_key, device, module, phase
        self.group_size, self.calls, self.timed_calls, self.time_ns = group_size, calls, 0, 0
        self.overlap_ns = 0  # busy time on this thread while its timed calls flew
        self._call: OpCall | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.func, self.module, self.phase, self.group_size, self.arg_key)

    @property
    def call(self) -> OpCall:
        """The call's arguments by schema name (tensors as metadata), built on first use."""
        if self._call is None:
            self._call = build_call(self.func, self.arg_key, {}, None, self.device)
        return self._call

    def empty_twin(self) -> CollectiveEntry:
        twin = CollectiveEntry(self.func, self.arg_key, self.device, self.module, self.phase, self.group_size)
        twin._call = self._call
        return twin

    def merge(self, other: CollectiveEntry) -> None:
        self.calls += other.calls
        self.timed_calls += other.timed_calls
        self.time_ns += other.time_ns
        self.overlap_ns += other.overlap_ns


class _Flight:
    """One call between its issue and its completion."""

    __slots__ = ("entry", "start_ns", "busy_start_ns", "end_ns", "busy_end_ns", "ok", "work", "clean")

    def __init__(self, entry: CollectiveEntry, start_ns: int, busy_start_ns: int) -> None:
        self.entry, self.start_ns, self.busy_start_ns = entry, start_ns, busy_start_ns
        self.end_ns = self.busy_end_ns = 0
        self.ok = False
        self.work: Any = None  # its Work, held until completion is stamped
        self.clean = False  # issued with nothing of memwall's on the saved-tensors stack


#: At a step's end, how long to let completion callbacks of finished collectives run (they wait
#: for the GIL the training thread holds; DDP may go on before they have run). The wait ends as
#: soon as every finished collective is stamped, so the bound only matters on a loaded machine,
#: where 50 ms proved too short (a reduce-scatter's watcher thread stamped after the step ended).
SETTLE_S = 0.5
#: At the run's end, how long to wait for collectives still in flight (a dead peer never ends them).
DRAIN_S = 2.0
#: At close, how long to wait for the watcher thread to end once it has nothing left to wait for
#: (it needs the GIL a few times: on a loaded machine that can take a while).
JOIN_S = 5.0
#: How long after a collective completed its Work is let go (between two ops on the training
#: thread): the backend's thread drops its own references right after it marks the Work complete.
LET_GO_S = 0.002
_LET_GO_NS = int(LET_GO_S * 1e9)
#: At the interpreter's exit, how long the GIL is let go before the process groups memwall kept
#: are (a backend's thread still releasing a Work takes it meanwhile).
EXIT_SETTLE_S = 0.02

#: Every process group a recorded collective ran on, by id, kept alive until the interpreter
#: exits. A tensor that reached memwall's mode has a Python object for the rest of its life (DDP's
#: gradient buckets, which a bare run never shows to Python), and a C++ reference that is the last
#: but the Python object's own gives that object up, taking the GIL. If the backend's thread
#: releases a Work of such tensors that way while the training thread tears the group down (DDP's
#: reducer freed at the script's end, the GIL held by its destructor while it joins that thread),
#: neither goes on: the rank never exits (torch 2.11 and gloo, about one run in five under
#: `memwall run`). Kept here, the group outlives every reducer and module of the script, and is
#: torn down at exit, after the GIL was let go for the backend's last releases.
_kept_groups: dict[int, Any] = {}


def _keep_until_exit(group: Any) -> None:
    if id(group) in _kept_groups:
        return
    if not _kept_groups:
        atexit.register(_let_groups_go)  # once per set of kept groups
    _kept_groups[id(group)] = group


def _let_groups_go() -> None:
    if _kept_groups:
        time.sleep(EXIT_SETTLE_S)  # lets the GIL go
        _kept_groups.clear()


class StepTiming:
    """A step's communication timing: host time with any collective in flight (the union of the
    calls' intervals) and the busy time inside it; `untimed` when some call could not be timed
    (it completed on a device), so the sums are incomplete."""

    __slots__ = ("comm_ns", "overlapped_ns", "untimed")

    def __init__(self, comm_ns: int = 0, overlapped_ns: int = 0, untimed: bool = False) -> None:
        self.comm_ns, self.overlapped_ns, self.untimed = comm_ns, overlapped_ns, untimed

    def add(self, other: StepTiming) -> None:
        self.comm_ns += other.comm_ns
        self.overlapped_ns += other.overlapped_ns
        self.untimed = self.untimed or other.untimed


def _where(tracker: ModuleTracker) -> tuple[str, str]:
    """(phase, module) of a collective issued now. In backward, one issued by a node a module's
    forward made (tensor parallelism's all-reduce of an input's gradient, FSDP2's reduce-scatter
    after a layer's backward) is that module's; one issued from a gradient's accumulation or the
    engine's final callbacks (DDP's buckets: a bucket holds many modules' gradients) stays at
    the top level."""
    node = current_autograd_node()
    if node is not None or in_backward():  # in backward, its final callbacks too
        if tracker.stack:
            return BACKWARD, tracker.stack[-1]
        return BACKWARD, tracker.path_for_node(node) if node is not None and not is_accumulate_grad(node) else ""
    if tracker.stack:  # a module's forward, inside optimizer.step(closure) too
        return tracker.user_label or tracker.generation_label or FORWARD, tracker.stack[-1]
    if tracker.in_optimizer and not torch.is_grad_enabled():  # not its closure (grad on)
        return OPTIMIZER, ""
    return tracker.user_label or (SETUP if tracker.setup_open else OTHER), ""


def _group_size(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], world_size: int) -> int:
    """The size of the group a collective runs on; a c10d group is also kept until the
    interpreter exits (`_kept_groups`), where it is unboxed."""
    values = dict(kwargs)
    for (name, _), value in zip(schema_of(func).arguments, args):
        values[name] = value
    if isinstance(values.get("process_group"), _ScriptObject):
        group = unbox_process_group(values["process_group"])
        if group is not None:
            _keep_until_exit(group)
            return int(group.size())
    if isinstance(values.get("group_size"), int):
        return int(values["group_size"])
    if "group_name" in values:
        size = group_size_by_name(values["group_name"])
        if size is not None:
            return size
    return world_size


def _arg_key(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # process groups, reduce ops and works are script objects: the group enters the key as its size
    return tuple(None if isinstance(a, _ScriptObject) else signature(a) for a in args)


def _strip_objects(key: Any) -> Any:
    """A signature made by the plain capture, its script objects replaced by None."""
    if isinstance(key, _ScriptObject):
        return None
    if type(key) is tuple and not (len(key) == 3 and type(key[0]) is torch.Size):
        return tuple(_strip_objects(k) for k in key)
    return key


def _device_of(args: tuple[Any, ...]) -> str:
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)):
            found = _device_of(tuple(value))
            if found:
                return found
    return ""


def _work_of(out: Any) -> Any:
    candidate = out[-1] if isinstance(out, tuple) and out else out
    return unbox_work(candidate) if isinstance(candidate, _ScriptObject) else None


class CollectiveRecorder:
    """The collectives of the running step, their timing, and the busy time while they fly: the
    capture's Router (hooks/capture.py) for collectives."""

    def __init__(self, tracker: ModuleTracker, world_size: int = 1) -> None:
        self.tracker = tracker
        self.world_size = world_size
        self.table: dict[Any, CollectiveEntry] = {}
        self.in_flight = 0  # read on every op while > 0; changed under _lock
        self.busy_ns = 0  # written on the capturing thread only
        self._lock = threading.RLock()  # re-entered by a SIGTERM's handler landing inside it (terminate.py)
        self._done: deque[_Flight] = deque()  # appended from the backend's threads
        self._functional: dict[int, _Flight] = {}  # result data_ptr -> its call
        self._untimed_device_calls = False
        self._pending: dict[int, _Flight] = {}  # in flight, by id
        self._watched: queue.SimpleQueue[tuple[Any, _Flight] | None] = queue.SimpleQueue()
        self._watcher: threading.Thread | None = None
        self._watching = 0  # works handed to the watcher and not yet done; changed under _lock
        #: (Work, completion ns) the watcher saw complete (appended by it), let go of in order on
        #: the training thread (`let_go_done`, between two ops); truthy while any waits
        self.retired: deque[tuple[Any, int]] = deque()
        self._routes: dict[Any, Handler] | None = None
        #: the entry each collective traced into a compiled region makes, by what it is and where
        self._in_regions: dict[Any, CollectiveEntry] = {}

    @property
    def routes(self) -> dict[Any, Handler]:
        """Every collective overload -> `issue` (c10d's sends and receives -> `point_to_point`);
        the functional `wait_tensor` -> `wait`."""
        if self._routes is None:
            handlers = {_ISSUE: self.issue, _WAIT: self.wait, _POINT_TO_POINT: self.point_to_point}
            self._routes = {func: handlers[route] for func, route in collective_routes().items()}
        return self._routes

    # -- the capturing thread ------------------------------------------------------------------
    def _entry(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CollectiveEntry:
        phase, module = _where(self.tracker)
        all_args = args + tuple(kwargs.values())
        group = _group_size(func, args, kwargs, self.world_size)
        entry = CollectiveEntry(func, _arg_key(all_args), _device_of(all_args) or "cpu", module, phase, group)
        found = self.table.get(entry.key)
        if found is None:
            self.table[entry.key] = found = entry
        return found

    def _fly(self, flight: _Flight) -> None:
        with self._lock:
            self.in_flight += 1
            self._pending[id(flight)] = flight

    def issue(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        # memwall's saved-tensors hook off the stack for the call where it can be: the Work keeps
        # no object of memwall's in the thread-local state it captures (see the module's doc)
        clean = without_own_saved_tensors_hook()
        busy, start = self.busy_ns, _perf_counter_ns()
        with clean if clean is not None else contextlib.nullcontext():
            out = call_below_mode(func, args, kwargs)  # no second torch.profiler event for the call
        returned = _perf_counter_ns()
        entry = self._entry(func, args, kwargs)
        entry.calls += 1
        flight = _Flight(entry, start, busy)
        if entry.device != "cpu":
            self._untimed_device_calls = True  # completes on the device: counted, not timed
            return out
        if func.namespace == "_c10d_functional":
            result = out[0] if isinstance(out, (list, tuple)) and out else out
            if isinstance(result, torch.Tensor):
                self._fly(flight)
                self._functional[result.data_ptr()] = flight
            return out
        work = _work_of(out)
        if work is None:  # ran synchronously (monitored_barrier)
            flight.end_ns, flight.busy_end_ns, flight.ok = returned, self.busy_ns, True
            self._done.append(flight)
            return out
        flight.work = work
        flight.clean = clean is not None
        self._fly(flight)
        self._watch(work, flight)  # never a done-callback on its future: see the module's doc
        return out

    def point_to_point(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A send or a receive (`isend`, `irecv`, `batch_isend_irecv`: pipeline parallelism):
        counted, not timed. Its Work can be waited for once only (a second wait on a gloo send
        or receive never returns: the user's own `wait()` would hang), and it does not say it
        completed before that wait, so memwall leaves it to the user's thread alone."""
        out = call_below_mode(func, args, kwargs)
        self._entry(func, args, kwargs).calls += 1
        return out

    def in_region(self, calls: tuple[OpCall, ...], module: str, phase: str) -> None:
        """A compiled region ran these ops: each collective among them (a functional collective
        Dynamo traced into the graph, as a compiled tensor-parallel model's) is one call, counted
        and sized from the region's graph, not timed (its time is the region's own)."""
        for call in calls:
            if call.op not in COLLECTIVE_OPS:
                continue
            key = (call.op, call.overload, module, phase, call.args)
            entry = self._in_regions.get(key)
            if entry is None:
                group = call.get("group_size")
                if not isinstance(group, int):
                    name = call.get("group_name")
                    group = (group_size_by_name(name) if isinstance(name, str) else None) or self.world_size
                entry = CollectiveEntry(_overload(call.op, call.overload), call.args, call.device, module, phase, group)
                entry._call = call
                self._in_regions[key] = entry
            found = self.table.get(entry.key)
            if found is None:
                found = self.table[entry.key] = entry.empty_twin()
            found.calls += 1

    def _watch(self, work: Any, flight: _Flight) -> None:
        if self._watcher is None:
            self._watched = queue.SimpleQueue()  # the thread's own: a closed one's None stays with it
            self._watcher = threading.Thread(target=self._watch_loop, args=(self._watched,),
                                             name="memwall-collectives", daemon=True)
            self._watcher.start()
        with self._lock:
            self._watching += 1
        self._watched.put((work, flight))

    def close(self) -> None:
        """End the watcher thread and let go of every Work, before the profile returns.

        The thread must not outlive the profile: it holds a c10d Work until it ends, and a Work's
        Python object gives up the GIL to destroy it and takes it back, in a C++ destructor. A
        thread that does that while the interpreter shuts down (the script ending right after the
        profile and destroy_process_group()) is ended by Python inside that destructor, which
        aborts the process ("terminate called without an active exception", SIGABRT). So the
        thread is joined here, and waits for nothing but its queue while idle. A collective that
        never completes (a dead peer) keeps it blocked in its wait: it is then left behind."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            self._watched.put(None)
            with self._lock:
                stuck = self._watching > 0  # still waiting for a work: the drain gave up on it
            if not stuck:
                watcher.join(JOIN_S)
        with self._lock:
            for flight in self._pending.values():
                flight.work = None  # a collective that never completed: no timing is coming
        self.retired.clear()  # every Work, also one not yet LET_GO_S past its completion

    def let_go_done(self) -> None:
        """Between two ops on the training thread: let go of the Works that completed more than
        LET_GO_S ago, in order (see the module's doc)."""
        retired = self.retired
        now = _perf_counter_ns()
        while retired and now - retired[0][1] >= _LET_GO_NS:
            retired.popleft()

    def wait(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A functional collective's `wait_tensor`: its call completes when this returns."""
        out = call_below_mode(func, args, kwargs)
        end = _perf_counter_ns()
        tensor = args[0] if args else kwargs.get("tensor")
        flight = self._functional.pop(tensor.data_ptr(), None) if isinstance(tensor, torch.Tensor) else None
        if flight is not None:
            self._finish(flight, end, True)
        return out

    def take(self, drain: bool = False,
             span: tuple[int, int] | None = None) -> tuple[dict[Any, CollectiveEntry], StepTiming]:
        """Hand over the step's collectives (calls completed since the last take add their time
        here) and its timing, within `span` (the step's start and end, perf_counter ns); start a
        new table. `drain` (the run's last take): first wait, up to DRAIN_S, for collectives
        still in flight, since no later take would time them."""
        if drain:
            self._drain()
        self._settle()
        table, self.table = self.table, {}
        flights = []
        while self._done:
            flights.append(self._done.popleft())
        for f in flights:
            if not f.ok:
                continue
            key = f.entry.key
            entry = table.get(key)
            if entry is None:  # issued in an earlier step, completed in this one
                table[key] = entry = f.entry.empty_twin()
            entry.timed_calls += 1
            entry.time_ns += f.end_ns - f.start_ns
            entry.overlap_ns += max(0, min(f.end_ns - f.start_ns, f.busy_end_ns - f.busy_start_ns))
        timing = _union([f for f in flights if f.ok], span)
        timing.untimed, self._untimed_device_calls = self._untimed_device_calls, False
        self._drop_stale_functional()
        self.let_go_done()
        return table, timing

    def _settle(self) -> None:
        """Let the callbacks of collectives whose Work has finished stamp their completion (they
        need the GIL this thread holds); collectives still running stay in flight."""
        deadline = _perf_counter_ns() + int(SETTLE_S * 1e9)
        while _perf_counter_ns() < deadline:
            with self._lock:
                works = [f.work for f in self._pending.values() if f.work is not None]
            if not any(_finished(w) for w in works):
                return
            time.sleep(0.0002)  # releases the GIL

    def _drain(self) -> None:
        deadline = _perf_counter_ns() + int(DRAIN_S * 1e9)
        while _perf_counter_ns() < deadline:
            with self._lock:
                waiting = any(f.work is not None for f in self._pending.values())
            if not waiting:
                return
            time.sleep(0.001)  # releases the GIL for the backend's callbacks and the watcher

    def _drop_stale_functional(self) -> None:
        # a functional result never waited on must not keep `in_flight` up for ever
        if self._functional:
            stale = list(self._functional.values())
            self._functional.clear()
            with self._lock:
                self.in_flight -= len(stale)
                for f in stale:
                    self._pending.pop(id(f), None)

    # -- the backend's threads and the watcher --------------------------------------------------
    def _watch_loop(self, watched: queue.SimpleQueue[tuple[Any, _Flight] | None]) -> None:
        while True:
            item = watched.get()
            if item is None:
                return
            work, flight = item
            del item
            try:
                work.wait()
                ok = True
            except Exception:
                ok = False
            end = _perf_counter_ns()
            # let go of on the training thread, never here: at once (the backend's thread may then
            # destroy it, with nothing of memwall's in it), else once LET_GO_S have passed
            self.retired.append((work, 0 if flight.clean else end))
            with self._lock:
                self._watching -= 1  # before _finish: once the run's drain has seen it, close() joins
            self._finish(flight, end, ok)
            # hold nothing while blocked on the queue (nor when the thread ends): see close()
            del work, flight

    def _finish(self, flight: _Flight, end_ns: int, ok: bool) -> None:
        # order matters: _settle() waits while a pending flight's work is finished, so the flight
        # must be in _done before it leaves _pending (and keeps its work until then)
        try:
            flight.end_ns, flight.busy_end_ns, flight.ok = end_ns, self.busy_ns, ok
            self._done.append(flight)
        finally:
            with self._lock:
                self.in_flight -= 1
                self._pending.pop(id(flight), None)
            flight.work = None


@functools.cache
def _overload(op: str, overload: str) -> Any:
    """The op overload an OpCall names ("_c10d_functional.all_reduce_", "default")."""
    namespace, _, name = op.partition(".")
    return getattr(getattr(getattr(torch.ops, namespace), name), overload)


def _finished(work: Any) -> bool:
    try:
        return bool(work.is_completed())
    except RuntimeError:
        return False


def _union(flights: list[_Flight], span: tuple[int, int] | None = None) -> StepTiming:
    """Merge the calls' intervals; each merged span adds its length and the busy time inside.
    `span` (the step's start and end, perf_counter ns): only the part of each call inside it
    counts, so a step's time with a collective in flight is never more than its wall time (a
    call issued in an earlier step, or waited for after the last one ended, adds only its part in
    this step)."""
    timing = StepTiming()
    low, high = span if span is not None else (-1 << 62, 1 << 62)
    spans = sorted((max(f.start_ns, low), min(f.end_ns, high), f.busy_start_ns, f.busy_end_ns) for f in flights)
    spans = [s for s in spans if s[1] > s[0]]
    i = 0
    while i < len(spans):
        start, end, busy_start, busy_end = spans[i]
        i += 1
        while i < len(spans) and spans[i][0] <= end:
            if spans[i][1] > end:
                end, busy_end = spans[i][1], spans[i][3]
            i += 1
        length = end - start
        timing.comm_ns += length
        timing.overlapped_ns += max(0, min(length, busy_end - busy_start))
    return timing


def enable_collectives(capture: Capture, world_size: int = 1) -> CollectiveRecorder:
    """Make `capture` route collectives to a new recorder (re-entering its mode if recording)."""
    recorder = CollectiveRecorder(capture.tracker, world_size)
    capture.route(recorder)
    return recorder


def absorb_collectives(table: dict[Any, CaptureEntry], recorder: CollectiveRecorder) -> None:
    """Move collectives recorded as plain ops (before the capture was made collective-aware:
    the process group was created inside the step) out of `table`, as untimed calls."""
    for key in [k for k, e in table.items() if e.call.op.startswith(NAMESPACES)]:
        plain = table.pop(key)
        if plain.call.op not in COLLECTIVE_OPS:
            continue  # wait_tensor and other c10d helpers: not collectives themselves
        entry = CollectiveEntry(plain.func, _strip_objects(plain.arg_key), plain.device, plain.module, plain.phase,
                                recorder.world_size, plain.calls)
        found = recorder.table.get(entry.key)
        if found is None:
            recorder.table[entry.key] = entry
        else:
            found.merge(entry)


__all__ = ["CollectiveEntry", "CollectiveRecorder", "StepTiming", "absorb_collectives", "collective_routes",
           "enable_collectives"]
