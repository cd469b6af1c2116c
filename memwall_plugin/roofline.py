"""The roofline: attainable FLOP/s = min(peak, intensity x bandwidth), and which side an op is on.

Pure functions of FLOPs, bytes, time and two ceilings; rows, modules, phases and steps all use them.
"""

from __future__ import annotations

COMPUTE = "compute"
MEMORY = "memory"
NONE = "none"  # neither computes nor moves data (views)
UNKNOWN = "unknown"  # no FLOP formula, or no ceilings for this device
COMMUNICATION = "communication"  # a collective, under the interconnect's roof (memwall_plugin/comm.py)
BOUNDS = (COMPUTE, MEMORY, NONE, UNKNOWN, COMMUNICATION)


def intensity(flops: int | None, nbytes: int) -> float | None:
    """FLOPs per byte moved; None when unknown or when nothing moves."""
    if flops is None or nbytes <= 0:
        return None
    return flops / nbytes


def bound(flops: int | None, nbytes: int, peak: float | None, bandwidth: float | None) -> str:
    """"memory" below the ridge point (pure data movement included), "compute" at or above it."""
    if flops is None:
        return UNKNOWN
    if nbytes <= 0:
        return NONE if flops == 0 else (COMPUTE if peak else UNKNOWN)
    if flops == 0:
        return MEMORY
    if not peak or not bandwidth:
        return UNKNOWN
    return MEMORY if flops / nbytes < peak / bandwidth else COMPUTE


def attainable_flops_per_s(
    flops: int | None, nbytes: int, peak: float | None, bandwidth: float | None
) -> float | None:
    if flops is None or not peak:
        return None
    if nbytes <= 0:
        return peak
    if not bandwidth:
        return None
    return min(peak, flops / nbytes * bandwidth)


def roofline_time_s(
    flops: int | None, nbytes: int, peak: float | None, bandwidth: float | None
) -> float | None:
    """The least time the roofline allows: max(flops / peak, bytes / bandwidth)."""
    if flops is None:
        return None
    compute = flops / peak if peak else (0.0 if flops == 0 else None)
    memory = nbytes / bandwidth if bandwidth else (0.0 if nbytes == 0 else None)
    if compute is None or memory is None:
        return None
    return max(compute, memory)


def efficiency(
    flops: int | None, nbytes: int, time_s: float, peak: float | None, bandwidth: float | None
) -> float | None:
    """Achieved over attainable: FLOP/s for ops that compute, bytes/s for pure data movement."""
    if flops is None or time_s <= 0:
        return None
    if flops == 0:
        return nbytes / time_s / bandwidth if nbytes and bandwidth else None
    roof = attainable_flops_per_s(flops, nbytes, peak, bandwidth)
    return flops / time_s / roof if roof else None
