"""memwall's GPU op times against torch.profiler's own record of the same step (needs a CUDA GPU).

    python benchmarks/kernel_clock.py [--json runs/gpu/kernel_clock.json]

For two GPT-2 forwards (GPT-2 small at batch 1 x 128, launch-bound; 4 layers of width 1024 at
batch 8 x 512, GEMM-bound; random weights) it profiles the step with memwall's kernel clock and
with CUDA events (`MEMWALL_CUDA_TIME=events`), and records it with torch.profiler: the total op
time each gives, the kernels' total in torch.profiler's trace, the GPU's busy time and idle share.
Then a batch-1 GPT-2 small decode step: the idle share memwall reports and the one torch.profiler's
bare trace shows. The figures quoted in the README come from this script.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import memwall_plugin as memwall
from memwall_plugin.console import findings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import decode as decode_step  # noqa: E402  (transformers' KV cache argument, by its version)

DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")


def traced(fn: Any, path: Path) -> dict[str, float]:
    """torch.profiler's record of `fn`: its kernels' total, the GPU's busy time, the span from the
    first op to the last kernel, and the idle share of that span."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as tp:
        fn()
        torch.cuda.synchronize()
    tp.export_chrome_trace(str(path))
    events = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("ph") == "X"]
    device = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") in DEVICE_CATS)
    ops = [e for e in events if e.get("cat") == "cpu_op"]
    start = min([e["ts"] for e in ops] + [device[0][0]])
    end = max([e["ts"] + e["dur"] for e in ops] + [b for _, b in device])
    busy, reach = 0.0, start
    for a, b in device:
        a = max(a, reach)
        if b > a:
            busy, reach = busy + b - a, b
    return {"kernels_s": sum(b - a for a, b in device) * 1e-6, "busy_s": busy * 1e-6,
            "span_s": (end - start) * 1e-6, "idle_fraction": 1 - busy / (end - start)}


def profiled(fn: Any, clock: str) -> memwall.Report:
    os.environ["MEMWALL_CUDA_TIME"] = clock
    try:
        with memwall.profile(summary=False) as prof:
            fn()
    finally:
        os.environ.pop("MEMWALL_CUDA_TIME", None)
    return prof.report()


def top_ops(rep: memwall.Report, n: int = 8) -> dict[str, float]:
    by_op: dict[str, float] = collections.defaultdict(float)
    for r in rep.rows:
        by_op[r.op] += r.time_s
    return dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:n])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="runs/gpu/kernel_clock.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    import transformers

    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    forwards = {
        "gpt2-small forward 1x128": (transformers.GPT2Config(), (1, 128)),
        "gpt2 4 layers x 1024 forward 8x512": (
            transformers.GPT2Config(n_layer=4, n_embd=1024, n_head=16, vocab_size=8192), (8, 512)),
    }
    for label, (cfg, shape) in forwards.items():
        model = transformers.GPT2LMHeadModel(cfg).cuda().eval()
        ids = torch.randint(0, cfg.vocab_size, shape, device="cuda")

        def forward(model: Any = model, ids: torch.Tensor = ids) -> None:
            with torch.no_grad():
                model(ids)

        for _ in range(3):  # warm: a kernel's first launch loads it
            forward()
        torch.cuda.synchronize()
        kernels, events = profiled(forward, "kernels"), profiled(forward, "events")
        results[label] = {
            "memwall_kernel_clock_s": sum(r.time_s for r in kernels.rows),
            "memwall_cuda_events_s": sum(r.time_s for r in events.rows),
            "torch_profiler": traced(forward, tmp / "forward.json"),
            "top_ops_kernel_clock_s": top_ops(kernels), "top_ops_cuda_events_s": top_ops(events),
            "timeline": kernels.extra.get("timeline"),
        }
        print(label, json.dumps(results[label], indent=1), flush=True)

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).cuda().eval()
    ids = torch.randint(0, 50257, (1, 32), device="cuda")
    with torch.no_grad():
        token, cache = decode_step(model, ids)
        state = {"cache": cache, "token": token}

        def decode() -> None:
            state["token"], state["cache"] = decode_step(model, state["token"], state["cache"])

        for _ in range(3):
            decode()
        torch.cuda.synchronize()
        bare = traced(decode, tmp / "decode.json")
        rep = profiled(decode, "kernels")
    results["gpt2-small decode step, batch 1"] = {
        "torch_profiler": bare, "memwall_timeline": rep.extra.get("timeline"),
        "findings": [f for f in findings(rep) if "launch-bound" in f],
    }
    print("decode", json.dumps(results["gpt2-small decode step, batch 1"], indent=1), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print(f"json: {args.json}")
    return results


if __name__ == "__main__":
    main()
