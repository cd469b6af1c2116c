"""Atomic file writes: the one way memwall puts a file in place (reports, traces, calibration).

A reader, or a process that crashes meanwhile, sees the old file or the new one, never half of
one. There is no fsync, as in TensorBoard's event writers and torch.profiler's traces: after a
training step the disk flush stalled the caller ~12 ms here (5% of a BERT-Base forward), and it
only guards against a power failure in the seconds after the save.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """`fill(tmp)` writes the whole file at a temporary path beside `path`, which then takes its
    place in one rename; the temporary file never outlives a failure."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        # mkstemp makes the file private (0600), and a rename keeps that: a report TensorBoard
        # serves, or a teammate reads in a shared run directory, gets the mode any new file gets
        os.fchmod(fd, 0o666 & ~_umask())
    except (AttributeError, OSError):  # no fchmod (Windows), or a filesystem without modes
        pass
    finally:
        os.close(fd)
    try:
        fill(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it and back."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> Path:
    """`data` as the file at `path`, atomically. A full disk fails before the name is taken."""

    def fill(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0))
        try:
            view = memoryview(data)
            while view:  # a full disk fails here (ENOSPC)
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    return write_atomically(path, fill)
