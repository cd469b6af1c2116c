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


#: The least time one kernel takes on a GPU, its launch included: 2 us, a stated assumption.
#: Kernels are queued asynchronously, so a kernel's launch hides behind the one before it, but a
#: stream of short kernels runs no faster than the host issues them, and each CUDA launch costs
#: the host a few microseconds (NVIDIA's "Getting Started with CUDA Graphs",
#: developer.nvidia.com/blog/cuda-graphs/, times short kernels launched back to back at a few
#: microseconds each, launch overhead included). memwall takes the low end, 2 us, so that a
#: projection stays a lower bound: eager PyTorch adds its own host work per op on top, and only
#: CUDA graphs (one launch for many kernels) go below it. A projection counts one kernel per call
#: of an op that computes or moves bytes (some ops launch several: a lower bound again).
GPU_LAUNCH_FLOOR_S = 2e-6
#: A CPU runs an op on the calling thread: nothing is launched. torch's own cost per op (about
#: 1 us on the test machine, README) is left out too: a CPU projection is the roofline alone.
CPU_LAUNCH_FLOOR_S = 0.0


def launch_floor_s(kind: str) -> float:
    """The floor per kernel on a device of `kind` (cuda, rocm, mps: a GPU; cpu)."""
    return CPU_LAUNCH_FLOOR_S if kind == "cpu" else GPU_LAUNCH_FLOOR_S


def projected_time_s(
    flops: int | None, nbytes: int, peak: float | None, bandwidth: float | None, launches: int,
    floor_s: float,
) -> float | None:
    """The least time `launches` kernels doing this work take: the roofline time, but at least
    `floor_s` per launch (a floor, not an addition: a longer kernel hides the next one's launch).
    Work that neither computes nor moves bytes (a view) launches nothing and takes no time."""
    if flops == 0 and nbytes <= 0:
        return 0.0
    roof = roofline_time_s(flops, nbytes, peak, bandwidth)
    return None if roof is None else max(roof, launches * floor_s)
