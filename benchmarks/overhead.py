"""The overhead benchmark this project quotes: memwall against a bare run and the anchor tools.

    python benchmarks/overhead.py [--quick] [--json runs/bench/overhead.json] [--device cuda]

For each workload (GPT-2 small forward, a GPT-2 training step with AdamW, BERT-Base forward,
GPT-2 generating 32 tokens; random weights from the configs) it times alternating A/B pairs in
one process: a bare run against each of

* memwall, active step: `memwall.profile` around the work, building and saving the report
  (memory measured, the default);
* memwall with `memory=False`: the same without measuring memory (the capacity wall's cost is
  the difference between the two);
* memwall, inactive step: inside an open profile whose schedule is idle for that step;
* torch.profiler with record_shapes, its exit included (since torch 2.13 its exit leaves its
  events unprocessed until they are read);
* torch.profiler the usual way, its trace written by `tensorboard_trace_handler` at its exit;
* torch.profiler with its per-op table read, `key_averages(group_by_input_shape=True)`: what
  memwall's report is (ops by shape, with their times), in torch.profiler's terms;
* torch's FlopCounterMode;

and reports the median of the paired ratios, the first pair (warm-up) excluded; each timed run
is divided by the mean of the bare runs just before and after it. It also measures
scale: building, rescoring and saving a report of 100,000 op calls, and the report size and
memwall's memory after a 1,000-step run of a small model.

With `--device cuda` the models run on the GPU and every timing waits for it (the targets were set
for the CPU machine; on a GPU small batches are bound by launching kernels, which memwall's
per-op Python work competes with).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

import memwall_plugin as memwall
from memwall_plugin.devices import cpu_spec

TARGETS = {"gpt2-forward": 1.10, "gpt2-train": 1.10, "bert-forward": 1.10, "gpt2-generate": 1.50}
INACTIVE_TARGET = 1.01


def workloads(quick: bool, device: str = "cpu", pairs: int | None = None) -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (one step of work, pairs to time)."""
    import transformers

    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().to(device)
    bert = transformers.BertModel(transformers.BertConfig()).eval().to(device)
    train = transformers.GPT2LMHeadModel(transformers.GPT2Config()).to(device)
    opt = torch.optim.AdamW(train.parameters(), lr=1e-4)
    ids1 = torch.randint(0, 50257, (1, 128), device=device)
    bert_ids = torch.randint(0, 30522, (1, 128), device=device)
    ids4 = torch.randint(0, 50257, (4, 128), device=device)
    prompt = torch.randint(0, 50257, (1, 16), device=device)

    def gpt2_forward() -> None:
        with torch.no_grad():
            gpt2(ids1)

    def bert_forward() -> None:
        with torch.no_grad():
            bert(bert_ids)

    def train_step() -> None:
        train(ids4, labels=ids4).loss.backward()
        opt.step()
        opt.zero_grad()

    def generate() -> None:
        with torch.no_grad():
            gpt2.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0)

    forward = 4 if quick else 20  # the sub-second forwards: their ratios are the noisiest
    return {
        "gpt2-forward": (gpt2_forward, pairs or forward),
        "gpt2-train": (train_step, pairs or (2 if quick else 4)),
        "bert-forward": (bert_forward, pairs or forward),
        "gpt2-generate": (generate, pairs or (3 if quick else 6)),
    }


def _no_wait() -> None:
    pass


#: waits for the device before and after each timing (torch.cuda.synchronize under --device cuda)
_wait: Callable[[], None] = _no_wait


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    _wait()
    start = time.perf_counter()
    fn()
    _wait()
    return time.perf_counter() - start


def variants(work: Callable[[], Any], logdir: Path) -> dict[str, Callable[[], Any]]:
    runs = iter(range(10**9))

    def memwall_active() -> None:
        # a run directory of its own each time, as a user's run has (no name to step around)
        with memwall.profile(logdir=logdir / f"run{next(runs)}", summary=False, scalars=False) as prof:
            work()
        prof.report()

    def memwall_without_memory() -> None:
        with memwall.profile(logdir=logdir / f"run{next(runs)}", summary=False, scalars=False, memory=False) as prof:
            work()
        prof.report()

    def torch_profiler() -> None:
        with torch.profiler.profile(record_shapes=True):
            work()

    def torch_profiler_saved() -> None:
        handler = torch.profiler.tensorboard_trace_handler(str(logdir / f"tp{next(runs)}"))
        with torch.profiler.profile(record_shapes=True, on_trace_ready=handler):
            work()

    def torch_profiler_table() -> None:
        with torch.profiler.profile(record_shapes=True) as prof:
            work()
        prof.key_averages(group_by_input_shape=True)

    def flop_counter() -> None:
        with FlopCounterMode(display=False):
            work()

    return {"memwall active": memwall_active, "memwall memory=False": memwall_without_memory,
            "torch.profiler": torch_profiler, "torch.profiler + trace saved": torch_profiler_saved,
            "torch.profiler + op table": torch_profiler_table, "FlopCounterMode": flop_counter}


def paired_ratios(work: Callable[[], Any], other: Callable[[], Any], pairs: int) -> list[float]:
    """Alternating bare and `other` runs (bare, other, bare, other, ..., bare); each `other` run
    is divided by the mean of the bare runs on either side of it, so a machine that speeds up
    or slows down over the run (a shared host) shifts both alike."""
    timed(work)
    timed(other)  # warm-up: the first pair is not counted
    ratios = []
    before = timed(work)
    for _ in range(pairs):
        then = timed(other)
        after = timed(work)
        ratios.append(then / ((before + after) / 2))
        before = after
    return ratios


def inactive_ratios(work: Callable[[], Any], pairs: int) -> list[float]:
    """A step inside an open profile whose schedule is idle (the work, then `prof.step()`),
    against bare steps run outside any profile, bracketed as in `paired_ratios`."""
    def idle_step() -> None:
        with memwall.profile(schedule=memwall.schedule(skip_first=10**9), summary=False) as prof:
            timings.append(timed(lambda: (work(), prof.step())))  # the profile's entry and exit are not timed

    timings: list[float] = []
    timed(work)
    idle_step()  # warm-up
    ratios = []
    before = timed(work)
    for _ in range(pairs):
        idle_step()
        after = timed(work)
        ratios.append(timings[-1] / ((before + after) / 2))
        before = after
    return ratios


def scale(logdir: Path) -> dict[str, float]:
    """Report of 100,000 op calls (build, rescore, save) and a 1,000-step run's size and memory."""
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=False)  # ~110 ops a step
    x = torch.randn(16, 32)
    tracemalloc.start()
    with memwall.profile(model=model, summary=False, scalars=False) as prof:
        for _ in range(1000):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
            prof.step()
        _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    start = time.perf_counter()
    rep = prof.report()
    rescored = rep.rescore(bytes_per_element=1, device="h100-sxm")
    path = rescored.save(logdir / "scale.json")
    build_s = time.perf_counter() - start
    calls = sum(r.calls for r in rep.rows)
    return {"op_calls": calls, "steps": len(rep.steps), "rows": len(rep.rows),
            "build_rescore_save_s": build_s, "report_bytes": path.stat().st_size,
            "memwall_peak_memory_bytes": peak}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer pairs (a smoke run)")
    parser.add_argument("--json", default="runs/bench/overhead.json")
    parser.add_argument("--only", nargs="*", help="workloads to run (default: all)")
    parser.add_argument("--pairs", type=int, help="pairs per variant for every workload (default: 20 for the "
                                                  "forwards, 4 for training, 6 for generation)")
    parser.add_argument("--no-scale", action="store_true",
                        help="skip the scale measurements (a report of 100,000 op calls: host work)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run")
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 1:
        parser.error(f"--pairs needs at least 1 pair, got {args.pairs}")
    console = Console(width=160)
    global _wait
    _wait = _no_wait
    machine = {"cpu": cpu_spec().name, "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "device": args.device}
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available here")
        _wait = torch.cuda.synchronize
        machine["gpu"] = torch.cuda.get_device_name()
    results: dict[str, Any] = {"machine": machine, "workloads": {}}
    with tempfile.TemporaryDirectory() as tmp:
        logdir = Path(tmp)
        for name, (work, pairs) in workloads(args.quick, args.device, args.pairs).items():
            if args.only and name not in args.only:
                continue
            console.print(f"[dim]timing {name} ({pairs} pairs per variant)...[/dim]")
            bare = min(timed(work) for _ in range(2))
            row: dict[str, Any] = {"bare_s": bare, "pairs": pairs}
            row["memwall inactive"] = statistics.median(inactive_ratios(work, pairs))
            for label, variant in variants(work, logdir).items():
                row[label] = statistics.median(paired_ratios(work, variant, pairs))
            results["workloads"][name] = row
        if not args.no_scale:
            console.print("[dim]scale...[/dim]")
            results["scale"] = scale(logdir)

    where = machine.get("gpu") or machine["cpu"]  # the CPU's name says the threads in use
    table = Table(title=f"memwall overhead: median paired ratio to a bare run "
                        f"({where}, torch {machine['torch']})", title_justify="left")
    for column in ("workload", "bare", "memwall active", "target", "memory=False", "memwall inactive",
                   "torch.profiler", "+ trace saved", "+ op table", "FlopCounterMode"):
        table.add_column(column, justify="left" if column == "workload" else "right")
    for name, row in results["workloads"].items():
        target = TARGETS[name]
        ok = "ok" if row["memwall active"] <= target else "MISSED"
        table.add_row(name, f"{row['bare_s']:.2f} s", f"{row['memwall active']:.2f}x",
                      f"<= {target:.2f}x {ok}", f"{row['memwall memory=False']:.2f}x",
                      f"{row['memwall inactive']:.3f}x"
                      + ("" if row["memwall inactive"] <= INACTIVE_TARGET else " MISSED"),
                      f"{row['torch.profiler']:.2f}x", f"{row['torch.profiler + trace saved']:.2f}x",
                      f"{row['torch.profiler + op table']:.2f}x", f"{row['FlopCounterMode']:.2f}x")
    console.print(table)
    s = results.get("scale")
    if s:
        console.print(f"scale: {s['op_calls']:,} op calls over {s['steps']} steps -> {s['rows']} rows; "
                      f"build + rescore + save {s['build_rescore_save_s']:.2f} s (target < 1 s); "
                      f"report {s['report_bytes'] / 1e6:.2f} MB (target < 5 MB); "
                      f"memwall peak memory {s['memwall_peak_memory_bytes'] / 1e6:.1f} MB", highlight=False)
    save_json(results, args.json, console)
    return results


def save_json(results: dict[str, Any], path: str, console: Console) -> None:
    """The benchmarks' results file (its directory made), and where it is."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    console.print(f"json: {out}", highlight=False)


if __name__ == "__main__":
    main()
