"""GPT-2 decoding as the batch grows: where it crosses from memory-bound to compute-bound.

    python samples/decode_batch_sweep.py --batches 1 2 4 8 16 32 64 --out runs/decode_sweep

Decoding one token for B sequences multiplies each weight matrix by B rows: about 2·B FLOPs per
weight fetched, so the intensity of the decode matmuls grows with B until the KV cache traffic
catches up. Each batch size is profiled once on this CPU; the same report is re-scored, without
re-running, for an H100 SXM and an A100 (80 GB SXM), in fp32, bf16 and 8 bits. The
crossing is the first batch whose decode matmuls (the linear layers and LM head) reach the
device's ridge point for that precision (fp32, bf16 with 2-byte tensors, int8 with 1-byte ones).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import memwall_plugin as memwall

MATMULS = ("aten.addmm", "aten.mm")
TARGETS = {"this CPU": None, "H100 SXM": "h100-sxm", "A100 80GB SXM": "a100-sxm4-80gb"}


@dataclass(frozen=True)
class Point:
    batch: int
    intensity_fp32: float  # decode matmuls, real element sizes
    intensity_bf16: float  # every tensor 2 bytes
    intensity_8bit: float  # every tensor 1 byte
    time_per_token_s: float
    memory_bound_share: dict[str, float]  # target -> share of matmul time memory-bound (fp32)


def decode_report(model: torch.nn.Module, vocab: int, batch: int, context: int, tokens: int) -> memwall.Report:
    torch.manual_seed(0)
    prompt = torch.randint(0, vocab, (batch, context))
    with torch.no_grad(), memwall.profile(model=model, summary=False) as prof:
        # the prompt fills the KV cache (prefill), then `tokens` steps of one token each (decode):
        # memwall tells the two apart; only decode rows are read below
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens + 1,
                       min_new_tokens=tokens + 1, do_sample=False, pad_token_id=0)
    return prof.report()


def matmul_intensity(rep: memwall.Report) -> float:
    rows = [r for r in rep.rows if r.op in MATMULS and r.phase == "decode"]
    return sum(r.flops or 0 for r in rows) / sum(r.bytes for r in rows)


def main(argv: list[str] | None = None) -> list[Point]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--context", type=int, default=64, help="prompt tokens already in the cache")
    parser.add_argument("--tokens", type=int, default=8, help="tokens decoded per batch size")
    parser.add_argument("--out", default="runs/decode_sweep")
    parser.add_argument("--tiny", action="store_true", help="a tiny GPT-2: a smoke test in seconds")
    args = parser.parse_args(argv)

    import transformers

    torch.manual_seed(0)
    sizes = dict(n_embd=64, n_layer=2, n_head=2) if args.tiny else {}
    config = transformers.GPT2Config(**sizes)
    model = transformers.GPT2LMHeadModel(config).eval()
    console = Console()
    devices = {name: (memwall.lookup_device(key) if key else None) for name, key in TARGETS.items()}
    points: list[Point] = []
    for batch in sorted(args.batches):
        rep = decode_report(model, config.vocab_size, batch, args.context, args.tokens)
        shares = {}
        for name, spec in devices.items():
            placed = rep if spec is None else rep.rescore(device=spec)
            rows = [r for r in placed.rows if r.op in MATMULS and r.phase == "decode"]
            total = sum(r.time_s for r in rows)
            shares[name] = sum(r.time_s for r in rows if r.bound == "memory") / total if total else 0.0
        decode_time = sum(r.time_s for r in rep.rows if r.phase == "decode")
        points.append(Point(batch, matmul_intensity(rep), matmul_intensity(rep.rescore(bytes_per_element=2)),
                            matmul_intensity(rep.rescore(bytes_per_element=1)), decode_time / args.tokens, shares))
        if batch == sorted(args.batches)[0]:
            devices["this CPU"] = rep.device

    table = Table(title="GPT-2 decode matmuls as the batch grows", title_justify="left")
    for name in ("batch", "FLOP/B fp32", "FLOP/B bf16", "FLOP/B 8-bit", "ms / step"):
        table.add_column(name, justify="right")
    for p in points:
        table.add_row(str(p.batch), f"{p.intensity_fp32:.2f}", f"{p.intensity_bf16:.2f}",
                      f"{p.intensity_8bit:.2f}", f"{p.time_per_token_s * 1e3:.1f}")
    console.print(table)
    crossings = {}
    for name, spec in devices.items():
        if spec is None:
            continue
        for label, field, dtype in (("fp32", "intensity_fp32", "float32"), ("bf16", "intensity_bf16", "bf16"),
                                    ("8-bit", "intensity_8bit", "int8")):
            ridge = spec.ridge_point(dtype)
            first = next((p.batch for p in points if getattr(p, field) >= (ridge or float("inf"))), None)
            crossings[f"{name} {label}"] = {"ridge": ridge, "first_compute_bound_batch": first}
            where = (f"compute-bound from batch {first}" if first
                     else f"memory-bound at every batch up to {points[-1].batch}")
            console.print(f"{name:14s} {label:5s}: ridge {ridge or 0:7.1f} FLOP/B -> decode matmuls {where}",
                          highlight=False)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_sweep.json").write_text(json.dumps(
        {"points": [asdict(p) for p in points], "crossings": crossings}, indent=1))
    console.print(f"results: {out / 'decode_sweep.json'}", highlight=False)
    return points


if __name__ == "__main__":
    main()
