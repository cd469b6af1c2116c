"""SIGTERM under a profile: memwall saves what it recorded, then the signal ends the process.

SIGTERM's default action ends a process at once, with no `finally` and no `with` exit: a profiled
run stopped by its scheduler (SLURM's or Kubernetes' preemption), by `timeout` or by `kill` lost
everything memwall had recorded. While a profile is open on the main thread and nothing else
handles SIGTERM, memwall's handler ends the open profiles, innermost first, as an error would: each
saves its partial report (marked incomplete) and its other files. Then SIGTERM's default action
ends the process. No exception unwinds through the script, so none of its own code runs after the
signal (no `finally`, no `except BaseException` that could carry on), and the process ends by the
signal, exactly as it would have without memwall.

Where the signal lands decides when memwall acts:

- in the script, or in torch or a library the script called: at once;
- inside memwall's own code (an op being recorded, torch handing an op to memwall's dispatch
  mode, a module hook, a step boundary): the signal is
  sent again, a millisecond later, until it lands outside (for at most DEFER_S), so the tables
  are read whole;
- while a profile ends (its exit saves its files): it is held, and delivered once they are written.

A forked child (a DataLoader worker) inherits the handler; there the signal takes its default
action at once. A distributed profile keeps its own guard (`distributed.TerminationGuard`).
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, TypeVar

__all__ = ["DEFER_S", "SaveOnTerminate", "encloses_user_code", "landed_in_memwall"]

#: The longest a signal waits for memwall's own code to return before memwall acts regardless.
DEFER_S = 2.0

_ENCLOSING: set[CodeType] = set()
_F = TypeVar("_F", bound=Callable[..., Any])


def encloses_user_code(fn: _F) -> _F:
    """Mark `fn`, memwall code that runs the user's own (`memwall run`'s script, a module compiled
    in place that memwall steps around, the functions a higher-order op runs): a signal landing in
    the user's code below it lands in the user's code, not in memwall's."""
    _ENCLOSING.add(fn.__code__)
    return fn


def landed_in_memwall(frame: FrameType | None) -> bool:
    """Whether `frame` (where a signal landed) runs memwall's own code: the innermost memwall
    frame around it is not one that runs the user's code."""
    while frame is not None:
        if frame.f_code in _ENCLOSING:
            return False
        if str(frame.f_globals.get("__name__", "")).startswith("memwall_plugin"):
            return True
        frame = frame.f_back
    return False


def _default_action(signum: int) -> None:
    """End the process by `signum`, as its default action does."""
    try:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        # delivered before kill returns when this thread is the one to take it; else another
        # thread takes it at once: the script's code does not run meanwhile
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os._exit(128 + signum)


class SaveOnTerminate:
    """memwall's SIGTERM handler (see the module's doc). `install(end)` puts it in place over the
    default action only, from the main thread only; `end(signum, frame)` ends the open profiles.
    `hold` and `release` bracket a profile's exit: a SIGTERM meanwhile is delivered after it."""

    def __init__(self) -> None:
        self._end: Callable[[int, FrameType | None], None] | None = None
        self._busy: Callable[[], bool] | None = None
        self._pid: int | None = None
        self._holding = 0
        self._held: int | None = None
        self._deferred_since: float | None = None

    @property
    def installed(self) -> bool:
        return self._pid is not None

    def install(self, end: Callable[[int, FrameType | None], None], busy: Callable[[], bool]) -> bool:
        """Whether memwall now handles SIGTERM (False where the script, a framework or another
        guard already does, or off the main thread). `busy()`: memwall is in the middle of
        something its frames do not show (torch dispatching an op to its mode)."""
        if self._pid is not None:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return False
            signal.signal(signal.SIGTERM, self._handler)
        except (ValueError, OSError):  # an interpreter that cannot set handlers
            return False
        self._end, self._busy, self._pid = end, busy, os.getpid()
        return True

    def remove(self) -> None:
        """SIGTERM's default action again, unless the script has set its own handler since."""
        pid, self._pid, self._end, self._busy = self._pid, None, None, None
        self._deferred_since = None
        if pid is None or pid != os.getpid():
            return
        try:
            if signal.getsignal(signal.SIGTERM) == self._handler:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except ValueError:  # not the main thread: the handler stays, and acts only while installed
            pass

    def hold(self) -> None:
        self._holding += 1

    def release(self) -> None:
        """The exit that held is done: a SIGTERM that came meanwhile is delivered now (to memwall
        again while an outer profile is open, else to its default action)."""
        self._holding = max(0, self._holding - 1)
        if not self._holding and self._held is not None:
            held, self._held = self._held, None
            os.kill(os.getpid(), held)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        try:
            if self._pid is None or self._pid != os.getpid():
                _default_action(signum)  # a forked child (a DataLoader worker): as without memwall
            if self._holding:
                self._held = signum
                return
            busy = self._busy
            if landed_in_memwall(frame) or (busy is not None and busy()):
                now = time.monotonic()
                if self._deferred_since is None:
                    self._deferred_since = now
                if now - self._deferred_since < DEFER_S:
                    # sent again from a bare thread (none of threading's locks, which the code the
                    # signal landed in may hold), handled at Python's next check after it
                    _thread.start_new_thread(_send_soon, (os.getpid(), signum))
                    return
        except BaseException:  # never into the code the signal landed in: the default action
            _default_action(signum)
        self._holding += 1  # a second SIGTERM while the profiles end waits for them
        try:
            end = self._end
            if end is not None:
                end(signum, frame)
        except BaseException:  # noqa: S110 - the process ends by the signal regardless
            pass
        finally:
            self.remove()
            _default_action(signum)


def _send_soon(pid: int, signum: int) -> None:
    time.sleep(0.001)  # memwall's code around an op takes tens of microseconds
    os.kill(pid, signum)


#: the process's one handler, shared by every profile
GUARD = SaveOnTerminate()
