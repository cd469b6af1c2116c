"""`MemwallCallback`: memwall as a Hugging Face `Trainer` callback.

```python
from memwall_plugin.integrations.transformers import MemwallCallback

trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[MemwallCallback()])
trainer.train()
```

It records training from `on_train_begin` to `on_train_end`; a step is the Trainer's step (one
optimizer step: with `gradient_accumulation_steps`, its micro-batches are inside it). The report
goes to `logdir`, else `$TENSORBOARD_LOGGING_DIR` or the arguments' `logging_dir` (where the
Trainer's own TensorBoard scalars go), else `<output_dir>/runs/memwall`. The summary is printed on
the main process only. Other arguments are `memwall.profile`'s (`schedule`, `device`...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from memwall_plugin.profile import profile
from memwall_plugin.report import Report


def training_logdir(args: Any) -> Path:
    """Where the Trainer's own TensorBoard scalars go, as transformers decides it."""
    env = os.environ.get("TENSORBOARD_LOGGING_DIR")
    if env:
        return Path(env).expanduser()
    logging_dir = getattr(args, "logging_dir", None)  # transformers 4.x
    if logging_dir:
        return Path(logging_dir)
    return Path(args.output_dir) / "runs" / "memwall"


class MemwallCallback(TrainerCallback):  # type: ignore[misc]  # transformers is untyped for mypy here
    """A `TrainerCallback` that records the Trainer's training steps with `memwall.profile`."""

    def __init__(self, logdir: str | os.PathLike[str] | None = None, **profile_args: Any) -> None:
        for reserved in ("model", "logdir", "step_on_optimizer", "first_step"):
            if reserved in profile_args:
                raise TypeError(f"MemwallCallback sets {reserved}= itself; pass logdir= as its first argument")
        profile(**profile_args)  # the arguments are checked now, before the Trainer runs
        self.logdir = Path(logdir) if logdir is not None else None
        self.profile_args = profile_args
        self.prof: profile | None = None
        self._report: Report | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.prof is not None:
            return
        summary = self.profile_args.get("summary", True) if state.is_world_process_zero else False
        args_ = {**self.profile_args, "summary": summary}
        # memwall's step s is the work that takes the Trainer to global step s: its scalars and the
        # Trainer's line up, a resumed training's steps go on from its count
        self.prof = profile(model=model, logdir=self.logdir or training_logdir(args),
                            first_step=state.global_step + 1, **args_)
        self.prof.__enter__()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.prof is None:
            return
        if state.max_steps and state.global_step >= state.max_steps:
            self._close()  # the last step: what follows (the Trainer's wrap-up) is no step
        else:
            self.prof.step()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()  # an early stop, or a Trainer that never said its last step

    def _close(self) -> None:
        prof, self.prof = self.prof, None
        if prof is not None:
            prof.__exit__(None, None, None)
            self._report = prof.report()

    def report(self) -> Report | None:
        """The report of the training memwall recorded (None before training started)."""
        return self.prof.report() if self.prof is not None else self._report
