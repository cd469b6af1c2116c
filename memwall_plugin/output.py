"""memwall's file writing during a run (reports, scalars, traces) behind one switch: the first
write that fails (a full or read-only disk, a logdir that cannot be created) warns once and
turns all later writing off, so the run it watches goes on unchanged."""

from __future__ import annotations

import errno
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TypeVar

T = TypeVar("T")

_ADVICE = {
    errno.ENOSPC: "free some space, or pass a logdir= on another disk",
    errno.EDQUOT: "free some space within your quota, or pass a logdir= on another disk",
    errno.EROFS: "pass a logdir= on a writable disk (this one is read-only)",
    errno.EACCES: "pass a logdir= you are allowed to write to",
    errno.EPERM: "pass a logdir= you are allowed to write to",
    errno.ENOTDIR: "pass a logdir= whose parents are directories (part of this path is a file)",
    errno.EEXIST: "pass a logdir= whose parents are directories (part of this path is a file)",
    errno.ENAMETOOLONG: "pass a shorter logdir=",
}


class OutputGuard:
    """Runs each write of one profile; after the first failure, none."""

    def __init__(self) -> None:
        self.failure: str | None = None  # the warning given, once writing stopped

    @property
    def enabled(self) -> bool:
        return self.failure is None

    def attempt(self, what: str, path: Path | str, write: Callable[[], T]) -> T | None:
        """`write()`, unless writing has stopped; a failure stops it (one warning) and gives None."""
        if self.failure is not None:
            return None
        try:
            return write()
        except Exception as exc:
            self._stop(what, path, exc)
            return None

    def release(self, what: str, path: Path | str, close: Callable[[], None]) -> None:
        """Close a writer even after writing stopped (its files and threads are let go); a
        failure to close is one more reason to stop, but never a second warning."""
        try:
            close()
        except Exception as exc:
            if self.failure is None:
                self._stop(what, path, exc)

    def _stop(self, what: str, path: Path | str, exc: Exception) -> None:
        self.failure = describe_failure(what, path, exc)
        try:
            warnings.warn(self.failure, RuntimeWarning, stacklevel=_first_frame_outside_memwall())
        except Warning:  # warnings turned into errors must not stop the user's run either
            print(self.failure, file=sys.stderr)


def _first_frame_outside_memwall() -> int:
    """The stacklevel that points the warning at the user's line, not memwall's internals."""
    frame: FrameType | None = sys._getframe(1)  # stacklevel 1: the caller of warnings.warn (_stop)
    level = 1
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("memwall_plugin"):
        frame, level = frame.f_back, level + 1
    return level


def describe_failure(what: str, path: Path | str, exc: Exception) -> str:
    """One message: what failed where, why (with its errno name), what it means, what to do."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        reason = f"{exc.strerror or os.strerror(exc.errno)} [{name}]"
        advice = _ADVICE.get(exc.errno, "pass another logdir=")
    elif isinstance(exc, OSError):
        reason, advice = str(exc), "check the disk, or pass another logdir="
    else:
        reason = f"{type(exc).__name__}: {exc}"
        advice = "pass another logdir=, and please report this to memwall's issue tracker"
    return (
        f"memwall: could not {what} {path}: {reason}. memwall writes no more files in this run; "
        f"your training goes on unchanged, and prof.report() and the summary still have every "
        f"recorded step. To keep the files, {advice}."
    )
