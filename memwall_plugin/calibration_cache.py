"""The calibration cache: measured ceilings per device, written by `memwall calibrate` (and a
profile's first run on a CPU) and read whenever that device is detected again.

Kept apart from the measurement (calibrate.py, which needs torch and devices.py) so that device
detection reads the cache without importing what writes it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memwall_plugin.files import write_bytes_atomically

if TYPE_CHECKING:
    from memwall_plugin.devices import DeviceSpec

ENV_CACHE_DIR = "MEMWALL_CACHE_DIR"
CACHE_VERSION = 1


def cache_dir() -> Path:
    """$MEMWALL_CACHE_DIR, else memwall's folder in the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "memwall"


def device_fingerprint(spec: DeviceSpec) -> str:
    """Calibrations are valid for one device model and (on CPU) one thread count."""
    if spec.kind == "cpu":
        return f"cpu:{spec.name}"  # the name carries the model and the threads in use
    return f"{spec.kind}:{spec.name}:{spec.memory_bytes}"


@dataclass(frozen=True)
class Calibration:
    """Measured ceilings of one device."""

    fingerprint: str
    peaks_flops_per_s: dict[str, float]  # peak key -> FLOP/s
    bandwidth_bytes_per_s: float  # main memory: the best of STREAM copy/triad and in-place scale/add
    copy_bytes_per_s: float
    measured_unix_s: float
    details: dict[str, Any]
    #: each cache level's bandwidth by its name ("L2"), measured by `memwall calibrate` (calibrate.measure_levels)
    levels_bytes_per_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CACHE_VERSION, "fingerprint": self.fingerprint,
            "peaks_flops_per_s": self.peaks_flops_per_s,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "copy_bytes_per_s": self.copy_bytes_per_s,
            "measured_unix_s": self.measured_unix_s, "details": self.details,
            "levels_bytes_per_s": self.levels_bytes_per_s,
        }


def cache_file() -> Path:
    return cache_dir() / "calibration.json"


def calibration_stamp() -> tuple[str, int]:
    """Where the cache is and when it last changed: detection is re-done when this changes."""
    path = cache_file()
    try:
        return (str(path), path.stat().st_mtime_ns)
    except OSError:
        return (str(path), 0)


def _load_all() -> dict[str, Any]:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    devices = data.get("devices")
    return devices if isinstance(devices, dict) else {}


def load_calibration(spec: DeviceSpec) -> Calibration | None:
    """The cached calibration of `spec`'s device, None when there is none (or it is unreadable)."""
    entry = _load_all().get(device_fingerprint(spec))
    if not isinstance(entry, dict):
        return None
    try:
        peaks = {str(k): float(v) for k, v in entry["peaks_flops_per_s"].items() if float(v) > 0}
        return Calibration(
            fingerprint=str(entry["fingerprint"]), peaks_flops_per_s=peaks,
            bandwidth_bytes_per_s=float(entry["bandwidth_bytes_per_s"]),
            copy_bytes_per_s=float(entry["copy_bytes_per_s"]),
            measured_unix_s=float(entry["measured_unix_s"]), details=dict(entry.get("details", {})),
            levels_bytes_per_s={str(k): float(v) for k, v in entry.get("levels_bytes_per_s", {}).items()
                                if float(v) > 0},
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return None  # an unreadable cache entry is ignored, never fatal


def save_calibration(calibration: Calibration) -> Path:
    """Add (or replace) one device's calibration in the cache, written atomically; the cache file."""
    devices = _load_all()
    devices[calibration.fingerprint] = calibration.to_dict()
    data = json.dumps({"version": CACHE_VERSION, "devices": devices}, indent=1).encode("utf-8")
    return write_bytes_atomically(cache_file(), data)


__all__ = ["CACHE_VERSION", "ENV_CACHE_DIR", "Calibration", "cache_dir", "cache_file", "calibration_stamp",
           "device_fingerprint", "load_calibration", "save_calibration"]
