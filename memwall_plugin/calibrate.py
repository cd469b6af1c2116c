"""`memwall calibrate`: measure this machine's ceilings (a large GEMM per dtype, streaming kernels
sized to main memory and to each cache level).

Results are cached per device (calibration_cache.py: `$MEMWALL_CACHE_DIR`, default `~/.cache/memwall`), preferred
over datasheet or estimated figures whenever that device is detected again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from memwall_plugin.calibration_cache import (
    Calibration,
    cache_dir,
    cache_file,
    device_fingerprint,
    load_calibration,
    save_calibration,
)
from memwall_plugin.devices import DeviceSpec, cpu_spec, peak_key

#: "0" turns off the short measurement memwall makes the first time it profiles on a CPU
ENV_AUTO = "MEMWALL_CALIBRATE"

_CALIBRATED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# --- measurement ---------------------------------------------------------------------------------


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    def run(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run


def _repeated(fn: Callable[[], Any], single_s: float, budget_s: float) -> tuple[Callable[[], Any], int]:
    """`fn` run enough times back to back that one timing lasts about `budget_s`: a fast GPU
    kernel timed alone would measure the synchronisation around it."""
    times = max(1, min(1000, int(budget_s / max(single_s, 1e-7))))

    def many() -> None:
        for _ in range(times):
            fn()

    return many, times


def measure_gemm(
    dtype: torch.dtype, device: torch.device, *, budget_s: float = 0.3, max_n: int = 4096, repeats: int = 3,
    first_n: int = 256,
) -> tuple[float, int]:
    """Best FLOP/s of an n x n x n matmul; n doubles from `first_n` until one matmul takes
    `budget_s` (or reaches `max_n`)."""
    timed = _timer(device)
    generator = torch.Generator(device=device).manual_seed(0)  # never the user's random stream
    n = min(first_n, max_n)
    while True:
        a = torch.randn(n, n, device=device, generator=generator).to(dtype)
        b = torch.randn(n, n, device=device, generator=generator).to(dtype)

        def matmul(a: torch.Tensor = a, b: torch.Tensor = b) -> torch.Tensor:
            return a @ b

        matmul()  # untimed: the first call pays for library set-up and kernel loading
        single = timed(matmul)
        if single >= budget_s or n >= max_n:
            break
        n *= 2
    many, times = _repeated(matmul, single, budget_s)
    best = min(timed(many) for _ in range(repeats)) / times
    return 2 * n**3 / best, n


#: The streaming kernels, fp32: (name, arrays, bytes counted per element as memwall counts them).
#: STREAM's copy and triad write a fresh array (a CPU reads each written line first, traffic
#: memwall does not count); the in-place scale and add read and write the same lines, as an
#: optimizer's updates do. A level's roof is the best of them: what its ops can reach.
KERNELS = (("copy", 2, 8), ("triad", 3, 12), ("scale", 1, 8), ("add", 2, 12))


def _kernel(name: str, arrays: list[torch.Tensor]) -> Callable[[], Any]:
    if name == "copy":
        a, b = arrays
        return lambda: a.copy_(b)
    if name == "triad":
        a, b, c = arrays
        return lambda: torch.add(b, c, alpha=3.0, out=a)
    if name == "scale":
        (a,) = arrays
        return lambda: a.mul_(-1.0)  # stays normal however often it runs (0.999 would reach denormals)
    (a, b) = arrays
    return lambda: a.add_(b)


def _best_seconds(
    device: torch.device, name: str, arrays_n: int, n: int, repeats: int, budget_s: float,
    buffer: torch.Tensor | None = None,
) -> float:
    """Best seconds per call of kernel `name` on `arrays_n` fp32 arrays of `n` elements (the first
    ones of `buffer` where given, else fresh ones)."""
    timed = _timer(device)
    if buffer is None:
        generator = torch.Generator(device=device).manual_seed(0)  # never the user's random stream
        arrays = [torch.rand(n, device=device, generator=generator) for _ in range(arrays_n)]
    else:
        arrays = list(buffer[: arrays_n * n].view(arrays_n, n).unbind(0))
    kernel = _kernel(name, arrays)
    kernel()  # touches every page and loads the kernel
    many, times = _repeated(kernel, timed(kernel), budget_s)
    return min(timed(many) for _ in range(repeats)) / times


def measure_stream(
    device: torch.device, *, elements: int | None = None, repeats: int = 5, budget_s: float = 0.02,
    kernels: tuple[str, ...] = ("copy", "triad", "scale", "add"), cache_bytes: int = 0,
) -> tuple[float, dict[str, float], int]:
    """Main memory's bandwidth: the best bytes/s of the streaming kernels (`KERNELS`) on arrays
    far larger than the last-level cache; also each kernel's. Each array holds `elements` (default
    32M, 128 MB each), more where a kernel's arrays together would not span four times
    `cache_bytes` (the largest cache in front of main memory): a 480 MiB L3 held most of a 128 MB
    in-place scale and passed its speed off as main memory's. The kernels share one buffer, its
    pages touched once (a first touch costs far more than a pass: 3.3 s for 2 GB on a VM).
    Returns the largest array's elements."""
    floor = elements or 32 * 2**20
    spanned = -(-4 * cache_bytes // 4)  # fp32 elements in four times the cache, rounded up
    sizes = {name: (arrays_n, per_element, max(floor, -(-spanned // arrays_n)))
             for name, arrays_n, per_element in KERNELS if name in kernels}
    buffer = torch.empty(max(arrays_n * n for arrays_n, _, n in sizes.values()), device=device)
    buffer.fill_(1.0)  # finite under every kernel however often it runs (scale flips its sign)
    each = {name: per_element * n / _best_seconds(device, name, arrays_n, n, repeats, budget_s, buffer)
            for name, (arrays_n, per_element, n) in sizes.items()}
    return max(each.values()), each, max(n for _, _, n in sizes.values())


def measure_level(
    device: torch.device, capacity_bytes: int, *, repeats: int = 5, budget_s: float = 0.01,
    kernels: tuple[str, ...] = ("copy", "triad", "scale", "add"),
) -> tuple[float, dict[str, Any]]:
    """A cache level's bandwidth: each streaming kernel timed on data filling an eighth and a half
    of the level; the bandwidth is the slope between the two (bytes per second of kernel time,
    without the fixed cost of launching an op, which small ops pay in full), the best kernel's.
    Where noise makes a slope meaningless, the rate reached on the larger size stands."""
    small, large = capacity_bytes // 8, capacity_bytes // 2
    best, details = 0.0, {}
    for name, arrays_n, per_element in KERNELS:
        if name not in kernels:
            continue
        sizes = [max(256, footprint // (4 * arrays_n)) for footprint in (small, large)]
        seconds = [_best_seconds(device, name, arrays_n, n, repeats, budget_s) for n in sizes]
        counted = [per_element * n for n in sizes]
        reached = counted[1] / seconds[1]
        slope = (counted[1] - counted[0]) / (seconds[1] - seconds[0]) if seconds[1] > seconds[0] else None
        value = slope if slope is not None and reached <= slope <= 4 * reached else reached
        details[name] = {"bytes_per_s": value, "reached_bytes_per_s": reached, "overhead_s":
                         max(0.0, seconds[1] - counted[1] / value)}
        best = max(best, value)
    return best, details


def measure_levels(
    spec: DeviceSpec, device: torch.device, main_bytes_per_s: float, *, quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Each cache level of `spec` measured (`measure_level`), nearest first. A level is never
    slower than the one beyond it (data a nearer level holds it serves at least as fast as the
    farther one would): where noise says otherwise, the farther level's figure stands."""
    measured: dict[str, float] = {}
    details: dict[str, Any] = {}
    for level in spec.caches:
        if not level.capacity_bytes:
            continue
        if progress:
            progress(f"{level.name} bandwidth ({level.capacity_bytes // 2**10} KiB)")
        kernels = ("scale", "add") if quick else ("copy", "triad", "scale", "add")
        value, kernels_found = measure_level(device, level.capacity_bytes, repeats=3 if quick else 5, kernels=kernels)
        details[level.name] = {"measured": value, "kernels": kernels_found}
        measured[level.name] = value
    floor = main_bytes_per_s
    for level in reversed(spec.caches):
        if level.name in measured:
            measured[level.name] = floor = max(measured[level.name], floor)
    return measured, details


def calibrate(
    spec: DeviceSpec,
    *,
    device: torch.device | None = None,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    save: bool = True,
    dtypes: tuple[torch.dtype, ...] = _CALIBRATED_DTYPES,
    repeats: int | None = None,
) -> Calibration:
    """Measure `spec`'s device: a GEMM per supported dtype, main memory's bandwidth and each cache
    level's; cache it."""
    device = device or torch.device("cuda" if spec.kind in ("cuda", "rocm") else spec.kind)
    budget = 0.05 if quick else 0.3
    peaks: dict[str, float] = {}
    details: dict[str, Any] = {"quick": quick, "threads": torch.get_num_threads()}
    # the GEMMs' runs come in two passes, one on each side of the memory measurements: a shared
    # machine's slow spell (a neighbour's burst, clocks still rising) then spoils at most one of
    # them, where back-to-back runs all fell in it (a quick calibration once read 28% low)
    gemm_repeats = repeats or 3
    passes = (gemm_repeats - gemm_repeats // 2, gemm_repeats // 2)
    sizes: dict[torch.dtype, int] = {}

    def gemm_pass(dtype: torch.dtype, runs: int) -> None:
        name = str(dtype).removeprefix("torch.")
        if progress:
            progress(f"GEMM {name}")
        try:
            # a GPU reaches its peak only on large products (H100 bf16: ~80% at 8192)
            # the second pass runs at the size the first one found
            largest = sizes.get(dtype) or (8192 if device.type == "cuda" else 2048 if quick else 4096)
            flops, n = measure_gemm(dtype, device, budget_s=budget, max_n=largest, repeats=runs,
                                    first_n=sizes.get(dtype, 256))
        except (RuntimeError, TypeError) as exc:  # dtype not supported here
            details[f"gemm_{name}"] = f"skipped: {exc}"
            return
        peaks[peak_key(name)] = max(flops, peaks.get(peak_key(name), 0.0))
        details[f"gemm_{name}_n"] = sizes[dtype] = n

    for dtype in dtypes:
        gemm_pass(dtype, passes[0])
    if progress:
        progress("memory bandwidth (STREAM copy, triad; in-place scale, add)")
    # a pass over the triad's arrays takes ~10 ms: many of them cost little, and on a shared
    # machine only the best pass shows the memory system (3 passes read ~40% low at times)
    last_level = max((level.capacity_bytes or 0 for level in spec.caches), default=0)
    main, each, n = measure_stream(device, repeats=repeats or 10, cache_bytes=last_level)
    details["stream_elements"] = n
    details["stream_bytes_per_s"] = each
    levels, details["levels"] = measure_levels(spec, device, main, quick=quick, progress=progress)
    if passes[1]:
        for dtype in list(sizes):  # the dtypes this device ran
            gemm_pass(dtype, passes[1])
    calibration = Calibration(
        fingerprint=device_fingerprint(spec), peaks_flops_per_s=peaks, bandwidth_bytes_per_s=main,
        copy_bytes_per_s=each["copy"], measured_unix_s=time.time(), details=details, levels_bytes_per_s=levels,
    )
    if save:
        save_calibration(calibration)
    return calibration


_auto_failed = False  # the cache could not be written: measure at most once per process


def auto_calibration_wanted(environ: Any = None) -> bool:
    """Whether a profile about to record on this machine's CPU should measure it first: no
    device or peaks chosen, no GPU, one process (ranks sharing a host would measure each other),
    not turned off by $MEMWALL_CALIBRATE=0, and nothing measured for this CPU yet."""
    env = os.environ if environ is None else environ
    if _auto_failed or env.get(ENV_AUTO, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if env.get("MEMWALL_DEVICE") or env.get("MEMWALL_PEAKS") or env.get("WORLD_SIZE", "1").strip() not in ("", "1"):
        return False
    try:
        mps = getattr(torch.backends, "mps", None)
        if torch.cuda.is_available() or (mps is not None and mps.is_available()):
            return False
        cached = load_calibration(cpu_spec())
        # measured anew: never measured, or measured automatically and beaten by a run's ops since
        return cached is None or bool(cached.details.get("automatic") and cached.details.get("beaten"))
    except Exception:  # an odd machine: keep the estimate rather than trouble the user's run
        return False


def beaten_calibration(spec: DeviceSpec) -> bool:
    """Mark `spec`'s cached calibration as beaten by a run's ops (they ran faster than its fp32
    peak allows: measured while the machine was busy, it read low). An automatic one is measured
    again at the next profile; one `memwall calibrate` took is the user's, and stays. Whether it
    was marked."""
    cached = load_calibration(spec)
    if cached is None or not cached.details.get("automatic") or cached.details.get("beaten"):
        return False
    save_calibration(dataclasses.replace(cached, details={**cached.details, "beaten": True}))
    return True


def auto_calibrate(report: Callable[[str], None] | None = None) -> Calibration | None:
    """The first profile on a CPU: a short fp32 GEMM, memory and cache bandwidths (about three seconds),
    cached like `memwall calibrate`'s figures. Never raises: trouble leaves the estimate."""
    global _auto_failed
    spec = cpu_spec()
    if report is not None:
        cached = load_calibration(spec)
        again = cached is not None and cached.details.get("beaten")
        how = "again (a run's ops beat the peak measured before) " if again else "once "
        report(f"memwall: measuring this CPU's ceilings {how}(fp32 GEMM, memory and cache bandwidths; about "
               "three seconds), "
               f"cached in {cache_file()}; ${ENV_AUTO}=0 skips this")
    try:
        with torch.no_grad():
            # quick sizes, but the best of many runs: a shared machine's noise only slows a run
            calibration = calibrate(spec, quick=True, dtypes=(torch.float32,), save=False, repeats=8)
        calibration = dataclasses.replace(calibration, details={**calibration.details, "automatic": True})
        save_calibration(calibration)
    except Exception as exc:  # a read-only home, an odd machine: the estimate stands
        _auto_failed = True
        if report is not None:
            report(f"memwall: could not measure or cache this CPU's ceilings ({type(exc).__name__}: {exc}); "
                   "using the estimate")
        return None
    return calibration


#: Calibration, cache_dir and load_calibration belong to calibration_cache; named here for this module's importers
__all__ = ["ENV_AUTO", "KERNELS", "Calibration", "auto_calibrate", "auto_calibration_wanted", "beaten_calibration",
           "cache_dir",
           "calibrate", "load_calibration", "measure_gemm", "measure_level", "measure_levels", "measure_stream"]
