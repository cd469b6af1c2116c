"""Long runs: memwall's memory stays bounded by distinct signatures, not by steps or calls.

    python benchmarks/long_runs.py [--steps 10000] [--tokens 2000] [--json runs/bench/long_runs.json]

* 10,000 profiled training steps of a small MLP (prof.step() after each);
* a tiny GPT-2 generating 2,000 tokens in one generate() call (the sequence, and so the
  attention shapes, grow every token), with the default signature cap and with the cap lifted.

For each: memwall's Python memory (tracemalloc, peak and at the end, the model's tensors are not
Python allocations), distinct signatures kept, calls folded into shape buckets, report rows,
the saved report's size and the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import memwall_plugin as memwall

sys.path.insert(0, str(Path(__file__).parent))
from overhead import save_json  # noqa: E402


def _measure(run: Any, **profile_args: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the cap's one warning
            with memwall.profile(logdir=tmp, summary=False, scalars=False, **profile_args) as prof:
                run(prof)
        wall = time.perf_counter() - start
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rep = prof.report()
        capture = prof._recorder.capture
        assert capture is not None
        return {"wall_s": wall, "memory_peak_bytes": peak, "memory_end_bytes": current,
                "signatures": len(capture.known), "bucketed_calls": capture.bucketed_calls,
                "rows": len(rep.rows), "op_calls": sum(r.calls for r in rep.rows),
                "report_bytes": sum(p.stat().st_size for p in prof.saved)}


def training(steps: int) -> Any:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(16, 32)

    def run(prof: Any) -> None:
        for _ in range(steps):
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            prof.step()

    return run


def decoding(tokens: int) -> Any:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=tokens + 16)
    model = transformers.GPT2LMHeadModel(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, 8))

    def run(prof: Any) -> None:
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)

    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=2_000)
    parser.add_argument("--json", default="runs/bench/long_runs.json")
    args = parser.parse_args(argv)
    console = Console(width=120)
    results: dict[str, Any] = {}
    cases = [
        (f"train MLP, {args.steps:,} steps", training(args.steps), {}),
        (f"GPT-2 tiny, decode {args.tokens:,} tokens", decoding(args.tokens), {}),
        (f"GPT-2 tiny, decode {args.tokens:,} tokens, no cap", decoding(args.tokens), {"max_signatures": 10**9}),
    ]
    for name, run, extra in cases:
        console.print(f"[dim]{name}...[/dim]")
        results[name] = _measure(run, **extra)
    table = Table(title="memwall on long runs (memory: tracemalloc, Python allocations)", title_justify="left")
    for column in ("run", "wall", "memwall peak", "at end", "signatures", "bucketed calls", "rows", "op calls",
                   "report"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['wall_s']:.1f} s", f"{r['memory_peak_bytes'] / 1e6:.1f} MB",
                      f"{r['memory_end_bytes'] / 1e6:.1f} MB", f"{r['signatures']:,}", f"{r['bucketed_calls']:,}",
                      f"{r['rows']:,}", f"{r['op_calls']:,}", f"{r['report_bytes'] / 1e6:.2f} MB")
    console.print(table)
    save_json(results, args.json, console)
    return results


if __name__ == "__main__":
    main()
