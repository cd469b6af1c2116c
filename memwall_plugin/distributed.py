"""memwall under torch.distributed: each rank's identity, job and link, and its collectives per
recorded window (as rows, `comm.py`). Files are the run store's (`rundir.py`).

`memwall.profile` keeps one `DistributedSession`; everything rank-specific goes through it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from memwall_plugin.ceilings import parse_links, resolve_links
from memwall_plugin.comm import collective_rows
from memwall_plugin.devices import DeviceSpec
from memwall_plugin.hooks.capture import merge_into, rename_phase
from memwall_plugin.hooks.collectives import (
    CollectiveEntry,
    CollectiveRecorder,
    StepTiming,
    absorb_collectives,
    enable_collectives,
)
from memwall_plugin.hooks.process_group import job_store
from memwall_plugin.rundir import new_job_id
from memwall_plugin.terminate import say

if TYPE_CHECKING:
    from memwall_plugin.hooks.capture import Capture, CaptureEntry

_JOB_KEY = "memwall/job"


# --- who am I ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RankInfo:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_world_size: int  # ranks on this host
    backend: str  # "gloo", "nccl", ...
    job: str  # the same on every rank of one job; differs between jobs and restarts


def _env_int(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    try:
        return int((os.environ if environ is None else environ).get(name, default))
    except ValueError:
        return default


def _initialized() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def launched_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """A process group exists, or a launcher (torchrun) says this is one rank of several."""
    return _initialized() or _env_int("WORLD_SIZE", 1, environ) > 1


def rank_info() -> RankInfo | None:
    """This rank's identity, once the default process group exists."""
    if not _initialized():
        return None
    dist = torch.distributed
    world = dist.get_world_size()
    # without a launcher that says otherwise, every rank is taken to be on this host
    local = _env_int("LOCAL_WORLD_SIZE", world)
    return RankInfo(dist.get_rank(), world, max(1, min(local, world)), str(dist.get_backend()), job_id())


def placement(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Where this rank runs: its host, and the launcher's LOCAL_RANK and GROUP_RANK (torchrun's
    index of this node) where it sets them; the report's `hostname`, `local_rank`, `group_rank`."""
    env = os.environ if environ is None else environ

    def number(name: str) -> int | None:
        value = _env_int(name, -1, env)
        return value if value >= 0 else None

    return {"hostname": socket.gethostname(), "local_rank": number("LOCAL_RANK"), "group_rank": number("GROUP_RANK")}


def job_id() -> str:
    """The same text on every rank of one job: the first rank to ask writes its proposal into the
    job's key-value store (compare-and-set, no collective), every rank reads the winner back.
    Without a store: the launcher's address, port, run id and restart count."""
    proposal = new_job_id()
    store = job_store()
    if store is not None:
        try:
            value = store.compare_set(_JOB_KEY, "", proposal)
            return value.decode() if isinstance(value, bytes) else str(value)
        except Exception:  # a store without compare_set: fall back to the environment
            pass
    env = os.environ
    return "-".join([env.get("MASTER_ADDR", "local"), env.get("MASTER_PORT", ""),
                     env.get("TORCHELASTIC_RUN_ID", ""), env.get("TORCHELASTIC_RESTART_COUNT", "0")])


def launcher_started_unix_s(pid: int | None = None) -> float | None:
    """When the launcher (the parent process: torchrun's agent, mp.spawn's parent) started, from
    /proc; the same for every rank it launched. None where /proc cannot tell."""
    pid = os.getppid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def default_run_stamp() -> str:
    """`memwall run`'s default run-directory suffix: the launcher's start time for the ranks of a
    torchrun job (so all local ranks pick one directory), else now."""
    started = launcher_started_unix_s() if launched_distributed() else None
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(started if started is not None else time.time()))


# --- windows -------------------------------------------------------------------------------------


def _copy(table: dict[Any, CollectiveEntry]) -> dict[Any, CollectiveEntry]:
    out = {}
    for key, entry in table.items():
        twin = entry.empty_twin()
        twin.merge(entry)
        out[key] = twin
    return out


class _Part:
    """Collectives and timing of some recorded steps (a window, or the whole run)."""

    def __init__(self) -> None:
        self.entries: dict[Any, CollectiveEntry] = {}
        self.timing = StepTiming()

    def add(self, entries: dict[Any, CollectiveEntry], timing: StepTiming) -> None:
        merge_into(self.entries, entries)
        self.timing.add(timing)

    def plus(self, other: _Part) -> _Part:
        both = _Part()
        both.add(_copy(self.entries), self.timing)
        both.add(_copy(other.entries), other.timing)
        return both


# --- the profile's side --------------------------------------------------------------------------


#: Python versions that run a signal handler where an exception it raises skips `__exit__`s
_UNWIND_SKIPS_EXITS = sys.version_info < (3, 11)
_RETRY_S = 0.05


class Terminated(SystemExit):
    """The SystemExit a SIGTERM raises under a distributed profile: the run was cut short by its
    launcher, not ended by the script's own sys.exit (the report is incomplete)."""


def _profile_ending(frame: FrameType | None) -> bool:
    """Whether the signal landed as a profile's exit begins, before it could hold signals. That
    is where it lands when it came while C code ran that then failed (a collective waiting on a
    dead peer): Python runs a handler at its next check, the first line the exit runs. Raising
    there would end the exit before the report is saved."""
    return (frame is not None and frame.f_code.co_name == "__exit__"
            and frame.f_globals.get("__name__") == "memwall_plugin.profile")


class TerminationGuard:
    """While a distributed profile runs, SIGTERM (what torchrun sends the other ranks when one
    fails) raises SystemExit(143) in the main thread, so the profile ends, saves its partial
    report (marked incomplete) and the process exits as it would have. From the profile's exit
    until its report is saved, a SIGTERM is held and delivered again, with its default action,
    after that (the guard stays up through the save: `remove` comes after it). Installed only
    over the default handler, and only from the main thread."""

    def __init__(self) -> None:
        self._installed = False
        self._holding = False
        self._held: int | None = None

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self._holding or _profile_ending(frame):
            self._held = signum
            return
        if _UNWIND_SKIPS_EXITS and sys.exc_info()[1] is not None:
            # Python 3.10 runs a handler while an exception unwinds (a collective that failed as
            # its peer died), where an exception raised passes over the `with` blocks it unwinds
            # through: the profile's exit, and its report, never came. Held: the profile's exit,
            # if that exception ends it, delivers it once saved; and sent again shortly, should
            # the script catch the exception and go on (then it raises as usual)
            self._held = signum
            retry = threading.Timer(_RETRY_S, os.kill, (os.getpid(), signum))
            retry.daemon = True
            retry.start()
            return
        self._held = None  # raised now: the profile's exit has nothing more to deliver
        where = f" in {frame.f_code.co_filename}:{frame.f_lineno} ({frame.f_code.co_name})" if frame else ""
        # the rank's own log says why it stopped and where (a launcher stops every rank this way)
        say(f"memwall: rank {os.environ.get('RANK', '?')} got signal {signum} (its launcher stopping it?){where}; "
            "saving its partial report")
        raise Terminated(128 + signum)

    def hold(self) -> None:
        self._holding = True

    @property
    def holding(self) -> bool:
        return self._holding

    def deliver_held(self) -> None:
        """After remove(): a SIGTERM that came while holding ends the process now."""
        held, self._held = self._held, None
        if held is not None:
            os.kill(os.getpid(), held)

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._handler)
            self._installed = True

    def remove(self) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) == self._handler:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed = False
        self._holding = False


class DistributedSession:
    """What `memwall.profile` does under torch.distributed: makes its capture record collectives
    once this is one rank of several, keeps them per window like the op table, knows the rank."""

    def __init__(self, link: Any = None) -> None:
        if link is not None:
            parse_links(link)  # a typo fails before the run, not after it
        self._link_arg = link
        self.recorder: CollectiveRecorder | None = None
        self.info: RankInfo | None = None
        self._window = _Part()
        self._all = _Part()
        self._guard = TerminationGuard()

    @property
    def active(self) -> bool:
        return self.recorder is not None

    def open(self, capture: Capture) -> None:
        if launched_distributed():
            self._enable(capture)

    def ending(self) -> None:
        """The profile is saving: a SIGTERM now waits until it is done (`ended`)."""
        self._guard.hold()

    def close(self) -> None:
        if not self._guard.holding:  # a profile that is ending keeps it until its report is saved
            self._guard.remove()
        if self.recorder is not None:
            self.recorder.close()

    def ended(self) -> None:
        """The report is saved (or could not be): SIGTERM has its default action again, and one
        that came while saving is delivered now."""
        self._guard.remove()
        self._guard.deliver_held()

    def _enable(self, capture: Capture) -> None:
        world = torch.distributed.get_world_size() if _initialized() else _env_int("WORLD_SIZE", 1)
        self.recorder = enable_collectives(capture, world)
        self._guard.install()

    def _observe(self) -> None:
        if self.info is None:
            self.info = rank_info()

    def end_step(self, capture: Capture, table: dict[Any, CaptureEntry], kept: bool, final: bool = False,
                 rename: tuple[str, str] | None = None, span: tuple[int, int] | None = None) -> None:
        """After the capture's take(): the step's collectives go where its ops go. At the last
        step, collectives still in flight are waited for (briefly) so their time is not lost.
        `rename`: (old, new) phase of the step's collectives, as its ops were renamed. `span`:
        the step's start and end (perf_counter ns), which bound its time in collectives."""
        self._observe()
        if self.recorder is None:
            if not _initialized():
                return
            self._enable(capture)  # the process group was created inside this step
            assert self.recorder is not None
            absorb_collectives(table, self.recorder)
        entries, timing = self.recorder.take(drain=final, span=span)
        if rename is not None:
            entries = rename_phase(entries, *rename)
        if kept:
            self._window.add(entries, timing)

    def close_window(self) -> None:
        self._all.add(self._window.entries, self._window.timing)
        self._window = _Part()

    def rank_and_world(self) -> tuple[int, int]:
        """Remembered once seen, so a report built after destroy_process_group() keeps its rank."""
        self._observe()
        if self.info is not None:
            return self.info.rank, self.info.world_size
        return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)

    def job(self) -> str | None:
        """The job of this rank, the same on every rank; None before a process group exists."""
        self._observe()
        return self.info.job if self.info is not None else None

    def communication(self, device: DeviceSpec | None, window_only: bool) -> dict[str, Any]:
        """The report's torch.distributed fields (none for a single-process run): the
        collectives of the open window, or of every recorded step so far, under the link's roof."""
        if self.recorder is None:
            return {}
        part = self._window if window_only else self._all.plus(self._window)
        rank, world = self.rank_and_world()
        info = self.info
        local = info.local_world_size if info else max(1, min(_env_int("LOCAL_WORLD_SIZE", world), world))
        link, inter_link = resolve_links(device, world, local, self._link_arg)
        timing = part.timing
        inter = inter_link.bytes_per_s if inter_link is not None else None
        return {
            "link": link,
            "inter_link": inter_link,
            "collectives": collective_rows(part.entries.values(), link.bytes_per_s, local, inter),
            "backend": info.backend if info else "",
            "local_world_size": local,
            **placement(),
            "comm_time_s": None if timing.untimed else timing.comm_ns * 1e-9,
            "overlapped_s": None if timing.untimed else timing.overlapped_ns * 1e-9,
        }



__all__ = [
    "DistributedSession", "RankInfo", "default_run_stamp", "job_id", "launched_distributed", "rank_info",
]
