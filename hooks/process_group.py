"""What memwall reads of torch.distributed's default process group beyond its public API: the
key-value store the ranks of one job share (they agree on a job id through it, no collective).
The core reaches torch internals only through `hooks/`; this is that door for the process group."""

from __future__ import annotations

from typing import Any

from memwall_plugin.hooks._torch_private import default_store


def job_store() -> Any:
    """The default process group's key-value store, or None when there is none (no process
    group, or a torch that hides it)."""
    return default_store()


__all__ = ["job_store"]
