"""How cheap can capture get? The floors of the two routes to per-op FLOPs and bytes, side by side.

    python benchmarks/routes.py [--quick] [--only bert-forward ...] [--json runs/bench/routes.json]

memwall counts every aten op. There are two ways to see each op: a Python `TorchDispatchMode`
(memwall's capture) or torch.profiler's C++ recording, read back afterwards. This benchmark times,
on the workloads of `overhead.py` and in the same paired way (median of bare/variant ratios,
first pair excluded), the least each route must do, next to memwall itself:

* dispatch route
  - `empty mode`: a TorchDispatchMode that only calls the op;
  - `lean recording mode`: one that also counts calls per (op, input shapes and dtypes), with no
    pytree flattening, no module paths, no phases, no timing;
* profiler route
  - `profiler recording`: torch.profiler's C++ recording with record_shapes, started and stopped
    through `torch.autograd._enable_profiler` / `_disable_profiler` (no FunctionEvents built);
  - `profiler + read events`: the same, then reading each event's name, input shapes and dtypes
    into a table of call signatures: the least a capture built on it must read back, before
    output shapes, module paths, phases or any formula;
* memwall
  - `memwall capture`: memwall's capture with the report build left out;
  - `memwall active`: the full active step of `overhead.py` (capture, build, save).

Timing as in `overhead.py`: each variant run against the mean of the bare runs around it.

A route whose floor is already above a target cannot meet it, whatever is built on top of it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode

import memwall_plugin as memwall

sys.path.insert(0, str(Path(__file__).parent))
from overhead import TARGETS, paired_ratios, save_json, workloads  # noqa: E402
from overhead import variants as overhead_variants  # noqa: E402


class EmptyMode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


class LeanRecordingMode(TorchDispatchMode):
    """Calls per (op, shapes and dtypes of its top-level tensor arguments)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[Any, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        key = (func, tuple((a.shape, a.dtype) if isinstance(a, torch.Tensor) else None for a in args))
        self.calls[key] = self.calls.get(key, 0) + 1
        return out


def _profiler_config() -> tuple[Any, set[Any]]:
    from torch._C._profiler import ProfilerActivity, ProfilerConfig, ProfilerState, _ExperimentalConfig

    # state, record_shapes, profile_memory, with_stack, with_flops, with_modules, experimental
    config = ProfilerConfig(ProfilerState.KINETO, True, False, False, False, False, _ExperimentalConfig())
    return config, {ProfilerActivity.CPU}


def profiler_recording(work: Callable[[], Any]) -> Any:
    """torch.profiler's recording around `work`; its raw result (events not yet read)."""
    from torch.autograd import _disable_profiler, _enable_profiler, _prepare_profiler

    config, activities = _profiler_config()
    _prepare_profiler(config, activities)  # before every enable: a second enable without it crashes
    _enable_profiler(config, activities)
    try:
        work()
    finally:
        result = _disable_profiler()
    return result


def read_signatures(result: Any) -> dict[Any, int]:
    """Calls per (name, input shapes, dtypes): the least a profiler-based capture reads back."""
    calls: dict[Any, int] = {}
    for event in result.events():
        key = (event.name(), tuple(tuple(s) for s in event.shapes()), tuple(event.dtypes()))
        calls[key] = calls.get(key, 0) + 1
    return calls


def variants(work: Callable[[], Any], logdir: Path) -> dict[str, Callable[[], Any]]:
    import memwall_plugin.recorder as recorder_module  # memwall_plugin imports it lazily

    def empty_mode() -> None:
        with EmptyMode():
            work()

    def lean_mode() -> None:
        with LeanRecordingMode():
            work()

    def recording() -> None:
        profiler_recording(work)

    def recording_read() -> None:
        read_signatures(profiler_recording(work))

    def memwall_capture() -> None:
        real = recorder_module.Recorder._close_window
        recorder_module.Recorder._close_window = lambda self: None  # record only: no report is built
        try:
            with memwall.profile(summary=False, scalars=False):
                work()
        finally:
            recorder_module.Recorder._close_window = real

    return {"empty mode": empty_mode, "lean recording mode": lean_mode, "profiler recording": recording,
            "profiler + read events": recording_read, "memwall capture": memwall_capture,
            "memwall active": overhead_variants(work, logdir)["memwall active"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer pairs (a smoke run)")
    parser.add_argument("--json", default="runs/bench/routes.json")
    parser.add_argument("--only", nargs="*", help="workloads to run (default: all)")
    parser.add_argument("--pairs", type=int, help="pairs per variant for every workload")
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 1:
        parser.error(f"--pairs needs at least 1 pair, got {args.pairs}")
    console = Console(width=140)
    results: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (work, pairs) in workloads(args.quick, pairs=args.pairs).items():
            if args.only and name not in args.only:
                continue
            console.print(f"[dim]timing {name} ({pairs} pairs per variant)...[/dim]")
            row: dict[str, Any] = {"pairs": pairs}
            for label, variant in variants(work, Path(tmp)).items():
                row[label] = statistics.median(paired_ratios(work, variant, pairs))
            results["workloads"][name] = row

    labels = ("empty mode", "lean recording mode", "profiler recording", "profiler + read events",
              "memwall capture", "memwall active")
    table = Table(title=f"capture routes: median paired ratio to a bare run ({results['threads']} threads, "
                        f"torch {results['torch']})", title_justify="left")
    table.add_column("workload")
    table.add_column("target", justify="right")
    for label in labels:
        table.add_column(label, justify="right")
    for name, row in results["workloads"].items():
        table.add_row(name, f"<= {TARGETS[name]:.2f}x", *(f"{row[label]:.3f}x" for label in labels))
    console.print(table)
    save_json(results, args.json, console)
    return results


if __name__ == "__main__":
    main()
