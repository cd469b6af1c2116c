"""`MemwallProfiler`: memwall as a PyTorch Lightning profiler.

```python
from memwall_plugin.integrations.lightning import MemwallProfiler

trainer = lightning.Trainer(max_epochs=1, profiler=MemwallProfiler(logdir="runs/lit"))
trainer.fit(model, loader)
```

It records `fit`'s training from the first training epoch to the end of fitting; a step is an
optimizer step (with `accumulate_grad_batches`, its micro-batches are inside it). Module paths are
the LightningModule's (`net.0`), phases follow what runs (the forward and backward Lightning runs
inside `optimizer.step(closure)` are forward and backward). Without `logdir`, the report goes to
the Trainer's log directory (its logger's, e.g. `lightning_logs/version_0`), beside its own
TensorBoard scalars. Other arguments are `memwall.profile`'s (`schedule`, `device`, `summary`...).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.profilers import Profiler

from memwall_plugin.console import render_text
from memwall_plugin.profile import profile
from memwall_plugin.report import Report

#: the action Lightning starts once per training epoch: memwall opens at the first
TRAINING_ACTION = "run_training_epoch"


class MemwallProfiler(Profiler):
    """A Lightning profiler that records training with `memwall.profile`."""

    def __init__(self, logdir: str | os.PathLike[str] | None = None, *, dirpath: str | Path | None = None,
                 filename: str | None = None, **profile_args: Any) -> None:
        self.prof: profile | None = None  # set first: Lightning's __del__ tears down
        self._log_dir: str | None = None
        self._report: Report | None = None
        super().__init__(dirpath=dirpath, filename=filename)
        for reserved in ("model", "logdir", "step_on_optimizer"):
            if reserved in profile_args:
                raise TypeError(f"MemwallProfiler sets {reserved}= itself; pass logdir= as its first argument")
        profile(**profile_args)  # the arguments are checked now, before the Trainer runs
        self.logdir = Path(logdir) if logdir is not None else None
        self.profile_args = profile_args

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        super().setup(stage=stage, local_rank=local_rank, log_dir=log_dir)
        self._log_dir = log_dir

    def start(self, action_name: str) -> None:
        if action_name == TRAINING_ACTION and self.prof is None and self._stage in (None, "fit"):
            logdir = self.logdir or (Path(self._log_dir) if self._log_dir else Path("lightning_logs") / "memwall")
            self.prof = profile(logdir=logdir, step_on_optimizer=True, **self.profile_args)
            self.prof.__enter__()

    def stop(self, action_name: str) -> None:
        pass  # steps are the optimizer's; the profile ends with the fit (teardown)

    def report(self) -> Report | None:
        """The report of the training memwall recorded (None before training started)."""
        if self.prof is not None:
            return self.prof.report()
        return self._report

    def summary(self) -> str:
        # Lightning writes this to `dirpath/filename` when given; memwall prints its own
        # summary to the terminal (rank zero) when the fit ends
        report = self.report()
        return render_text(report) if report is not None and self.filename else ""

    def teardown(self, stage: str | None) -> None:
        prof, self.prof = self.prof, None
        if prof is not None:
            prof.__exit__(None, None, None)
            self._report = prof.report()
        super().teardown(stage=stage)
