"""`memwall calibrate`: measure this machine's ceilings (a large GEMM per dtype, a STREAM triad).

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
    dtype: torch.dtype, device: torch.device, *, budget_s: float = 0.3, max_n: int = 4096, repeats: int = 3
) -> tuple[float, int]:
    """Best FLOP/s of an n x n x n matmul; n doubles until one matmul takes `budget_s`."""
    timed = _timer(device)
    generator = torch.Generator(device=device).manual_seed(0)  # never the user's random stream
    n = 256
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


def measure_stream(
    device: torch.device, *, elements: int | None = None, repeats: int = 5, budget_s: float = 0.02
) -> tuple[float, float, int]:
    """STREAM-style copy and triad (a = b + s*c) in fp32: best bytes/s of each.

    Arrays are far larger than the last-level cache (default 32M elements, 128 MB each)."""
    timed = _timer(device)
    n = elements or 32 * 2**20
    generator = torch.Generator(device=device).manual_seed(0)  # never the user's random stream
    a = torch.empty(n, device=device)
    b = torch.rand(n, device=device, generator=generator)
    c = torch.rand(n, device=device, generator=generator)

    def copy() -> None:
        a.copy_(b)

    def triad() -> None:
        torch.add(b, c, alpha=3.0, out=a)

    results = []
    for kernel in (copy, triad):
        kernel()  # touches every page and loads the kernel
        many, times = _repeated(kernel, timed(kernel), budget_s)
        results.append(min(timed(many) for _ in range(repeats)) / times)
    copy_s, triad_s = results
    return 3 * 4 * n / triad_s, 2 * 4 * n / copy_s, n


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
    """Measure `spec`'s device: a GEMM per supported dtype and a STREAM copy/triad; cache it."""
    device = device or torch.device("cuda" if spec.kind in ("cuda", "rocm") else spec.kind)
    budget = 0.05 if quick else 0.3
    peaks: dict[str, float] = {}
    details: dict[str, Any] = {"quick": quick, "threads": torch.get_num_threads()}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        if progress:
            progress(f"GEMM {name}")
        try:
            # a GPU reaches its peak only on large products (H100 bf16: ~80% at 8192)
            largest = 8192 if device.type == "cuda" else 2048 if quick else 4096
            flops, n = measure_gemm(dtype, device, budget_s=budget, max_n=largest, repeats=repeats or 3)
        except (RuntimeError, TypeError) as exc:  # dtype not supported here
            details[f"gemm_{name}"] = f"skipped: {exc}"
            continue
        peaks[peak_key(name)] = flops
        details[f"gemm_{name}_n"] = n
    if progress:
        progress("STREAM copy and triad")
    # a pass over the triad's arrays takes ~10 ms: many of them cost little, and on a shared
    # machine only the best pass shows the memory system (3 passes read ~40% low at times)
    triad, copy, n = measure_stream(device, repeats=repeats or 10)
    details["stream_elements"] = n
    calibration = Calibration(
        fingerprint=device_fingerprint(spec), peaks_flops_per_s=peaks, bandwidth_bytes_per_s=triad,
        copy_bytes_per_s=copy, measured_unix_s=time.time(), details=details,
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
        return load_calibration(cpu_spec()) is None
    except Exception:  # an odd machine: keep the estimate rather than trouble the user's run
        return False


def auto_calibrate(report: Callable[[str], None] | None = None) -> Calibration | None:
    """The first profile on a CPU: a short fp32 GEMM and a STREAM triad (about two seconds),
    cached like `memwall calibrate`'s figures. Never raises: trouble leaves the estimate."""
    global _auto_failed
    spec = cpu_spec()
    if report is not None:
        report(f"memwall: measuring this CPU's ceilings once (fp32 GEMM, STREAM triad; about two seconds), "
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
__all__ = ["ENV_AUTO", "Calibration", "auto_calibrate", "auto_calibration_wanted", "cache_dir", "calibrate",
           "load_calibration", "measure_gemm", "measure_stream"]
