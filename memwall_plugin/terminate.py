"""SIGTERM under a profile: memwall saves what it recorded, then the signal ends the process.

SIGTERM's default action ends a process at once, with no `finally` and no `with` exit: a profiled
run stopped by its scheduler (SLURM's or Kubernetes' preemption), by `timeout` or by `kill` lost
everything memwall had recorded; so did one whose terminal closed (SIGHUP: an ssh session that
dropped). While a profile is open on the main thread and nothing else handles the signal,
memwall's handler ends the open profiles, innermost first, as an error would: each
saves its partial report (marked incomplete) and its other files. Then the signal's default
action ends the process. No exception unwinds through the script, so none of its own code runs after the
signal (no `finally`, no `except BaseException` that could carry on), and the process ends by the
signal, exactly as it would have without memwall.

Python runs the handler at its next check wherever the main thread is. With memwall recording,
that is mostly inside memwall's handling of an op (every op runs below its dispatch mode), so
the profiles are ended from there: what the op was doing is left unfinished (an entry not yet
counted is dropped, memwall's dispatch mode, off torch's stack while it handles the op, is left
off). Only where memwall's state is rebuilt as a whole (a step boundary, a window or the profile
being saved) is the signal held, and delivered as soon as that is done.

From the signal on, a Python handler of SIGCHLD is set aside: when a whole job is signalled its
DataLoader workers die too, and DataLoader's watchdog would raise in the script (or cut memwall's
saving short). A forked child (a DataLoader worker) inherits the handler; there the signal takes
its default action at once. A distributed profile keeps its own guard
(`distributed.TerminationGuard`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

__all__ = ["GUARD", "SaveOnTerminate", "say"]

#: what ends a process by default and can be caught: a scheduler's SIGTERM, a closed terminal's SIGHUP
_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


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


def say(line: str) -> None:
    """A line on stderr from a signal handler: written whole, past Python's buffered stream (which
    the script may have been writing to when the signal landed)."""
    try:
        os.write(2, (line + "\n").encode(errors="replace"))
    except OSError:  # noqa: S110 - a closed stderr must not keep the process from ending as it should
        pass


def _quiet_child_watch() -> None:
    """SIGCHLD's default (ignored) in place of a Python handler of it (see the module's doc)."""
    try:
        if callable(signal.getsignal(signal.SIGCHLD)):
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except (AttributeError, ValueError):  # no SIGCHLD on this platform
        pass


class SaveOnTerminate:
    """memwall's SIGTERM handler (see the module's doc). `install(end)` puts it in place over the
    default action only, from the main thread only; `end(signum, frame)` ends the open profiles.
    `hold` and `release` bracket what must not be cut in two (a step boundary, a profile's exit):
    a SIGTERM meanwhile is delivered after it."""

    def __init__(self) -> None:
        self._end: Callable[[int, FrameType | None], None] | None = None
        self._pid: int | None = None
        self._holding = 0
        self._held: int | None = None
        self._signals: list[int] = []  # those memwall handles now

    def install(self, end: Callable[[int, FrameType | None], None]) -> bool:
        """Whether memwall now handles SIGTERM or SIGHUP (each only where its default action is in
        place: not where the script, a framework or another guard handles it, nor off the main
        thread)."""
        if self._pid is not None:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in _SIGNALS:
            try:
                if signal.getsignal(signum) is signal.SIG_DFL:
                    signal.signal(signum, self._handler)
                    self._signals.append(signum)
            except (ValueError, OSError):  # an interpreter that cannot set handlers
                pass
        if not self._signals:
            return False
        self._end, self._pid = end, os.getpid()
        return True

    def remove(self) -> None:
        """Each signal's default action again, unless the script has set its own handler since."""
        pid, self._pid, self._end = self._pid, None, None
        signals, self._signals = self._signals, []
        if pid is None or pid != os.getpid():
            return
        for signum in signals:
            try:
                if signal.getsignal(signum) == self._handler:
                    signal.signal(signum, signal.SIG_DFL)
            except ValueError:  # not the main thread: the handler stays, and acts only while installed
                pass

    def hold(self) -> None:
        self._holding += 1

    def release(self) -> None:
        """What held is done: a SIGTERM that came meanwhile is delivered now (to memwall again
        while a profile is open, else to its default action)."""
        self._holding = max(0, self._holding - 1)
        if not self._holding and self._held is not None:
            held, self._held = self._held, None
            os.kill(os.getpid(), held)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._pid is None or self._pid != os.getpid():
            _default_action(signum)  # a forked child (a DataLoader worker): as without memwall
        _quiet_child_watch()
        if self._holding:
            self._held = signum
            return
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


#: the process's one handler, shared by every profile
GUARD = SaveOnTerminate()
