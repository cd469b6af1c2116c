"""The case study of "AI and Memory Wall" (Gholami et al., IEEE Micro 2024, Figure 3, from Kim et
al. 2023, "Full Stack Optimization of Transformer Inference"), reproduced on this machine.

    python samples/paper_case_study.py                      # BERT-Base, BERT-Large, GPT-2 at 128/256/512
    python samples/paper_case_study.py --seq-lens 128 1024 4096

BERT-Base, BERT-Large and GPT-2 (transformers configs, random weights: no download), batch 1.
BERT processes the whole sequence at once; GPT-2 generates the whole sequence one token at a time
with its KV cache (the paper's totals are for generating the full length). For each model and
length: total FLOPs, MOPs (bytes moved), arithmetic intensity and measured latency normalised to
BERT-Base at the shortest length, in two accountings:

* the paper's: every parameter and activation 8-bit (`Report.rescore(bytes_per_element=1)`),
  transformer blocks only (no embeddings, pooler or LM head);
* the real fp32 run, every op.

Hand-derived FLOPs of the transformer blocks (2 FLOPs per multiply-add; matmuls only, the
elementwise work adds well under 2%), with d the hidden size, f the FFN size (4d), L layers:

* encoder over s tokens, per layer: Q, K, V and output projections 2·s·d·4d, FFN 2·s·d·f·2,
  scores q·kᵀ 2·s²·d and P·v 2·s²·d:

      FLOPs = L · (2·s·d·(4d + 2f) + 4·s²·d)        (BERT-Base: 24·s·d² + 4·s²·d per layer)

* decoder generating n tokens with a KV cache: token t (1..n) runs the projections and FFN on one
  row and attends over t cached positions:

      FLOPs = L · (n·2·d·(4d + 2f) + Σ_t 4·t·d) = L · (2·n·d·(4d + 2f) + 2·d·n·(n + 1))

Writes a four-panel PNG like the paper's figure, a TensorBoard run per model and length, a JSON of
the results, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import memwall_plugin as memwall

MODELS = ("bert-base", "bert-large", "gpt2")
BLOCKS = {"bert": "encoder.layer", "gpt2": "transformer.h"}


@dataclass(frozen=True)
class Result:
    model: str
    seq_len: int
    paper_flops: int  # transformer blocks, the paper's accounting
    paper_bytes: int  # MOPs at 1 byte per element
    paper_intensity: float
    fp32_flops: int  # every op of the real run
    fp32_bytes: int
    fp32_intensity: float
    latency_s: float  # a bare run (no profiler), best of two
    block_flops: int  # counted FLOPs of the blocks
    hand_flops: int  # the docstring's formula
    normalised_latency: float = 0.0


def build(name: str, max_len: int, tiny: bool, fused: bool = False) -> tuple[torch.nn.Module, Any]:
    """The model from its config. Attention is unfused ("eager": the s x s scores are real
    tensors) as in Kim et al.'s accounting, unless `fused` (scaled_dot_product_attention)."""
    import transformers

    attention = "sdpa" if fused else "eager"
    if name.startswith("bert"):
        sizes = {"bert-base": {}, "bert-large": dict(hidden_size=1024, num_hidden_layers=24,
                                                      num_attention_heads=16, intermediate_size=4096)}[name]
        if tiny:
            sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256)
        config = transformers.BertConfig(**sizes, max_position_embeddings=max(512, max_len),
                                         attn_implementation=attention)
        return transformers.BertModel(config).eval(), config
    sizes = dict(n_embd=64, n_layer=2, n_head=2) if tiny else {}
    config = transformers.GPT2Config(**sizes, n_positions=max(1024, max_len), attn_implementation=attention)
    return transformers.GPT2LMHeadModel(config).eval(), config


def encoder_flops(layers: int, d: int, f: int, s: int) -> int:
    return layers * (2 * s * d * (4 * d + 2 * f) + 4 * s * s * d)


def generation_flops(layers: int, d: int, f: int, n: int) -> int:
    return layers * (2 * n * d * (4 * d + 2 * f) + 2 * d * n * (n + 1))


def hand_flops(name: str, config: Any, s: int) -> int:
    if name.startswith("bert"):
        return encoder_flops(config.num_hidden_layers, config.hidden_size, config.intermediate_size, s)
    return generation_flops(config.n_layer, config.n_embd, 4 * config.n_embd, s)


def workload(name: str, model: torch.nn.Module, config: Any, s: int) -> Any:
    torch.manual_seed(0)
    if name.startswith("bert"):
        ids = torch.randint(0, config.vocab_size, (1, s))
        return lambda: model(ids)

    first = torch.randint(0, config.vocab_size, (1, 1))

    def generate() -> None:  # greedy, one token per call, the KV cache carried along
        # s model calls: the first token, then one call per token until the cache holds s
        model.generate(first, max_new_tokens=s, min_new_tokens=s, do_sample=False,
                       pad_token_id=config.eos_token_id)

    return generate


def measure(name: str, model: torch.nn.Module, config: Any, s: int, logdir: Path) -> Result:
    run = workload(name, model, config, s)
    with torch.no_grad():
        run()  # warm-up
        latency = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            run()
            latency = min(latency, time.perf_counter() - start)
        with memwall.profile(model=model, logdir=logdir / f"{name}-{s}", summary=False) as prof:
            run()
    rep = prof.report()
    prefix = BLOCKS["bert" if name.startswith("bert") else "gpt2"]
    paper = rep.rescore(bytes_per_element=1).filter(module_prefix=prefix)
    blocks = rep.filter(module_prefix=prefix)
    paper_flops = sum(r.flops or 0 for r in paper)
    paper_bytes = sum(r.bytes for r in paper)
    return Result(
        model=name, seq_len=s,
        paper_flops=paper_flops, paper_bytes=paper_bytes, paper_intensity=paper_flops / paper_bytes,
        fp32_flops=rep.total_flops, fp32_bytes=rep.total_bytes, fp32_intensity=rep.intensity or 0.0,
        latency_s=latency, block_flops=sum(r.flops or 0 for r in blocks),
        hand_flops=hand_flops(name, config, s),
    )


def normalise(results: list[Result]) -> tuple[list[Result], str]:
    base = min((r for r in results if r.model == "bert-base"), key=lambda r: r.seq_len, default=None)
    base = base or results[0]
    out = [Result(**{**asdict(r), "normalised_latency": r.latency_s / base.latency_s}) for r in results]
    return out, f"{base.model} at {base.seq_len}"


def plot(results: list[Result], base: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in MODELS if any(r.model == m for r in results)]
    lengths = sorted({r.seq_len for r in results})
    colors = {"bert-base": "#1e88e5", "bert-large": "#3949ab", "gpt2": "#ef6c00"}
    panels = [
        ("paper_flops", "(a) FLOPs, transformer blocks", "FLOPs"),
        ("paper_bytes", "(b) MOPs (8-bit), transformer blocks", "bytes moved"),
        ("paper_intensity", "(c) arithmetic intensity (8-bit)", "FLOPs / byte"),
        ("normalised_latency", f"(d) latency, normalised to {base}", "× latency (measured, fp32)"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    width = 0.8 / len(models)
    for ax, (field, title, ylabel) in zip(axes.flat, panels):
        for i, model in enumerate(models):
            values = [next((getattr(r, field) for r in results if r.model == model and r.seq_len == s), 0)
                      for s in lengths]
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(lengths))]
            ax.bar(xs, values, width=width, label=model, color=colors[model])
        ax.set_yscale("log")
        ax.set_xticks(range(len(lengths)), [str(s) for s in lengths])
        ax.set_xlabel("sequence length (tokens; GPT-2: tokens generated)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.legend(fontsize=9, loc="best")
    fig.suptitle("BERT (whole sequence at once) vs GPT-2 (token-by-token generation), batch 1 — "
                 "after Gholami et al. 2024, Fig. 3", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[Result], base: str) -> Table:
    t = Table(title="The memory wall, measured here", title_justify="left",
              caption=f"FLOPs, MOPs and 8-bit (FLOPs/byte): the paper's accounting, every tensor 8-bit, "
                      f"transformer blocks only; fp32 (FLOPs/byte): the real run, every op; latency: a bare "
                      f"fp32 run, x {base}; hand: counted block FLOPs against the docstring's formula",
              caption_justify="left")
    for name in ("model", "seq", "FLOPs", "MOPs", "8-bit", "fp32", "latency", "hand"):
        t.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for r in results:
        t.add_row(r.model, str(r.seq_len), memwall.console.si(r.paper_flops), memwall.console.si(r.paper_bytes, "B"),
                  f"{r.paper_intensity:.1f}", f"{r.fp32_intensity:.2f}", f"{r.normalised_latency:.1f}x",
                  f"{r.block_flops / r.hand_flops - 1:+.1%}")
    return t


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512],
                        help="sequence lengths (up to 4096 for those with time)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--logdir", default="runs/paper", help="a TensorBoard run per model and length")
    parser.add_argument("--out", default="runs/paper", help="where the PNG and results.json go")
    parser.add_argument("--tiny", action="store_true", help="tiny configs: a smoke test in seconds")
    parser.add_argument("--fused-attention", action="store_true",
                        help="fused attention kernels (never write the s x s scores) instead of the paper's unfused")
    args = parser.parse_args(argv)
    if any(s < 2 or s > 4096 for s in args.seq_lens):
        parser.error("--seq-lens take values from 2 to 4096")

    console = Console()
    logdir, out = Path(args.logdir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for m in args.models for s in sorted(args.seq_lens)]
    results: list[Result] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("case study", total=len(jobs))
        built: dict[str, tuple[torch.nn.Module, Any]] = {}
        for name, s in jobs:
            progress.update(task, description=f"{name}, {s} tokens")
            if name not in built:
                built = {name: build(name, max(args.seq_lens), args.tiny, args.fused_attention)}  # one at a time
            model, config = built[name]
            results.append(measure(name, model, config, s, logdir))
            progress.advance(task)
    results, base = normalise(results)
    console.print(table(results, base))
    png = out / "paper_case_study.png"
    plot(results, base, png)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    console.print(f"figure: {png}\nresults: {out / 'results.json'}\n"
                  f"open the runs in TensorBoard: tensorboard --logdir {logdir}", highlight=False)
    return results


if __name__ == "__main__":
    main()
