"""memwall: where the memory wall stops your PyTorch run.

```python
import memwall_plugin as memwall
with memwall.profile(model=model, logdir="runs/exp1") as prof:
    ...
    prof.step()
rep = prof.report()
```
"""

from memwall_plugin.calibrate import Calibration, calibrate
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
from memwall_plugin.fvcore_counter import FvcoreCount, fvcore_flops
from memwall_plugin.hooks.capture import ProfilerConflictError
from memwall_plugin.memory import MemoryModule, MemoryReport, MemoryWhatIf
from memwall_plugin.profile import default_registry, profile
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
from memwall_plugin.trace_analysis import TraceError, analyze_trace

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
