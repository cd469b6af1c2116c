"""memwall: where the memory wall stops your PyTorch run.

```python
import memwall_plugin as memwall
with memwall.profile(model=model, logdir="runs/exp1") as prof:
    ...
    prof.step()
rep = prof.report()
```
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from memwall_plugin.console import Summary, SummaryOptions, findings, format_summary, render_text
from memwall_plugin.devices import (
    DeviceSpec,
    Figure,
    cpu_spec,
    detect_device,
    device_table,
    lookup_device,
    resolve_device,
)
from memwall_plugin.kineto import TraceError
from memwall_plugin.memory import MemoryModule, MemoryReport, MemoryWhatIf
from memwall_plugin.records import (
    BACKWARD,
    FORWARD,
    OPTIMIZER,
    OTHER,
    PHASES,
    RECOMPUTE,
    SETUP,
    Extent,
    OpCall,
    TensorMeta,
    Traffic,
)
from memwall_plugin.registry import Registry, RegistryError
from memwall_plugin.report import SCHEMA_VERSION, Group, Report, ReportError, Row, load_report
from memwall_plugin.schedule import Action, Schedule, schedule

if TYPE_CHECKING:  # imported on first use (below): reading reports needs no torch
    from memwall_plugin.calibrate import Calibration, calibrate
    from memwall_plugin.fvcore_counter import FvcoreCount, fvcore_flops
    from memwall_plugin.hooks.capture import ProfilerConflictError
    from memwall_plugin.profile import default_registry, profile
    from memwall_plugin.trace_analysis import analyze_trace

#: names whose modules import torch, imported when first used: `memwall report` and the tab read
#: reports without paying torch's import (seconds), profiling imports it as before
_ON_USE = {
    "Calibration": "memwall_plugin.calibrate", "calibrate": "memwall_plugin.calibrate",
    "FvcoreCount": "memwall_plugin.fvcore_counter", "fvcore_flops": "memwall_plugin.fvcore_counter",
    "ProfilerConflictError": "memwall_plugin.hooks.capture",
    "default_registry": "memwall_plugin.profile", "profile": "memwall_plugin.profile",
    "analyze_trace": "memwall_plugin.trace_analysis",
}


def __getattr__(name: str) -> Any:
    module = _ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'memwall_plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """The package, whose `profile` and `calibrate` are functions of the submodules of those names:
    importing the submodule binds the package's attribute to the module, so the function is bound
    in its place (as the eager import that bound it after the submodule did)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _ON_USE.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


class _AfterTorch:
    """A meta-path finder that, once torch has been imported, imports `hooks/compiled.py` (see
    `_wrap_compiled_regions`), then takes itself off the path."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "torch":
            return None
        import importlib.machinery

        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            try:
                importlib.import_module("memwall_plugin.hooks.compiled")
            except Exception:  # torch's import must not fail for memwall: a profile imports it again
                pass

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _wrap_compiled_regions() -> None:
    """Regions torch.compile makes are wrapped from memwall's import on (`hooks/compiled.py`), so
    a model compiled before a profile opens is seen whole in it. That module needs torch, which
    reading reports never does: it is imported now if torch is loaded, else as soon as torch is."""
    if "torch" in sys.modules:
        importlib.import_module("memwall_plugin.hooks.compiled")
    elif not any(isinstance(f, _AfterTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTorch())


_wrap_compiled_regions()

__version__ = "0.1.0"

__all__ = [
    "BACKWARD",
    "FORWARD",
    "OPTIMIZER",
    "OTHER",
    "PHASES",
    "RECOMPUTE",
    "SCHEMA_VERSION",
    "SETUP",
    "Action",
    "Calibration",
    "DeviceSpec",
    "Figure",
    "Group",
    "Extent",
    "FvcoreCount",
    "OpCall",
    "ProfilerConflictError",
    "Registry",
    "RegistryError",
    "MemoryModule",
    "MemoryReport",
    "MemoryWhatIf",
    "Report",
    "ReportError",
    "Row",
    "Schedule",
    "Summary",
    "SummaryOptions",
    "TensorMeta",
    "TraceError",
    "Traffic",
    "analyze_trace",
    "calibrate",
    "cpu_spec",
    "default_registry",
    "detect_device",
    "device_table",
    "lookup_device",
    "resolve_device",
    "findings",
    "format_summary",
    "render_text",
    "fvcore_flops",
    "load_report",
    "profile",
    "schedule",
]
