"""torch.compile while memwall records: compiled code runs eagerly, and compiles again after.

Dynamo does not trace a frame while a (non-infrastructure) TorchDispatchMode is active; torch
2.13 then marks the frame's code object to be skipped for good (pytorch/pytorch#190286), so a
compiled model touched once inside a profile would stay eager for the rest of the process.
While recording, memwall sets torch's public "force_eager" compiler stance instead: compiled
callables run their original Python, every aten op of it is counted, nothing is marked, and the
stance the user had is restored when recording stops.
"""

from __future__ import annotations

from typing import Any

import torch


class EagerCompile:
    """Holds the "force_eager" stance from `enter()` to `exit()`; the prior stance comes back."""

    def __init__(self) -> None:
        self._stance: Any = None

    def enter(self) -> None:
        if self._stance is not None:
            return
        try:
            self._stance = torch.compiler.set_stance("force_eager")
        except RuntimeError:
            # called from inside a compiled region, where torch forbids changing the stance:
            # Dynamo's own fallback (eager while the mode is active) still applies
            self._stance = None

    def exit(self) -> None:
        stance, self._stance = self._stance, None
        if stance is not None:
            stance.__exit__(None, None, None)


__all__ = ["EagerCompile"]
