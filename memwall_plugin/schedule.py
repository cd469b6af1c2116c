"""Which steps are recorded: wait / warmup / active / repeat, as torch.profiler.schedule does."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Action(enum.Enum):
    NONE = "none"  # nothing installed: the step runs at full speed
    WARMUP = "warmup"  # recorded and discarded (first-call effects settle)
    RECORD = "record"
    RECORD_AND_SAVE = "record_and_save"  # last active step of a window: the window is saved

    @property
    def recording(self) -> bool:
        return self is not Action.NONE

    @property
    def kept(self) -> bool:
        return self in (Action.RECORD, Action.RECORD_AND_SAVE)


@dataclass(frozen=True)
class Schedule:
    """Skip `skip_first` steps, then cycle: `wait` idle, `warmup` discarded, `active` recorded.
    `repeat=0` cycles until the profile ends."""

    wait: int = 0
    warmup: int = 0
    active: int = 1
    repeat: int = 0
    skip_first: int = 0

    def __post_init__(self) -> None:
        for name in ("wait", "warmup", "active", "repeat", "skip_first"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"schedule {name} must be a non-negative int, got {value!r}")
        if self.active < 1:
            raise ValueError("schedule active must be at least 1 (the steps to record)")

    def __call__(self, step: int) -> Action:
        if step < self.skip_first:
            return Action.NONE
        step -= self.skip_first
        cycle = self.wait + self.warmup + self.active
        if self.repeat and step >= cycle * self.repeat:
            return Action.NONE
        pos = step % cycle
        if pos < self.wait:
            return Action.NONE
        if pos < self.wait + self.warmup:
            return Action.WARMUP
        return Action.RECORD_AND_SAVE if pos == cycle - 1 else Action.RECORD


def schedule(
    *, wait: int = 0, warmup: int = 0, active: int = 1, repeat: int = 0, skip_first: int = 0
) -> Schedule:
    """Like `torch.profiler.schedule`: `memwall.schedule(wait=1, warmup=1, active=3, repeat=2)`."""
    return Schedule(wait, warmup, active, repeat, skip_first)


def always(step: int) -> Action:
    """The default: every step is recorded, and saved when the profile ends."""
    return Action.RECORD


def as_action_fn(value: Any) -> Callable[[int], Action]:
    """Accept a memwall schedule, a torch.profiler schedule, or None (record every step)."""
    if value is None:
        return always
    if not callable(value):
        raise TypeError(
            f"schedule must be memwall.schedule(...) or torch.profiler.schedule(...), got {value!r}"
        )

    def action(step: int) -> Action:
        result = value(step)
        if isinstance(result, Action):
            return result
        name = getattr(result, "name", str(result)).lower()  # torch.profiler.ProfilerAction
        try:
            return Action(name)
        except ValueError:
            raise TypeError(f"schedule returned {result!r} for step {step}; expected an Action") from None

    return action
