"""The capture layer: module and optimizer tracking plus dispatch-level recording of aten ops.

Installed as `memwall_plugin.hooks`. `_torch_private` is the only module here (and in memwall)
that touches private torch APIs.
"""

from memwall_plugin.hooks.capture import Capture, CaptureEntry, ProfilerConflictError
from memwall_plugin.hooks.modules import ModuleTracker

__all__ = ["Capture", "CaptureEntry", "ModuleTracker", "ProfilerConflictError"]
