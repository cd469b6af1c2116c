"""A first look: GPT-2 (random weights) reading a prompt, then generating token by token.

    python samples/quickstart.py --logdir runs/quickstart

The same model does the same kind of math in both phases, but reading the whole prompt at once is
matrix-matrix work (many FLOPs per byte fetched) while generating one token at a time is
matrix-vector work: every weight is fetched for a handful of FLOPs. memwall tells the two phases
apart by itself and shows the gap as arithmetic intensity.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

import memwall_plugin as memwall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", default="runs/quickstart", help="the run directory for the report")
    parser.add_argument("--tokens", type=int, default=128, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 layers (12 = GPT-2 small)")
    args = parser.parse_args()

    try:
        import transformers
    except ImportError:
        raise SystemExit("this sample needs transformers: pip install 'memwall-plugin[samples]'") from None

    console = Console()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers)
    model = transformers.GPT2LMHeadModel(config).eval()  # random weights: no download
    prompt = torch.randint(0, config.vocab_size, (1, args.tokens))

    start = time.perf_counter()
    with torch.no_grad(), memwall.profile(model=model, logdir=args.logdir, summary=False) as prof:
        # greedy decoding with the KV cache: the prompt in one call, then one token per call
        model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                       pad_token_id=config.eos_token_id)
    rep = prof.report()
    console.rule(f"GPT-2, {args.tokens}-token prompt, {args.new_tokens} new tokens "
                 f"({time.perf_counter() - start:.1f} s)")
    console.print(memwall.Summary(rep, memwall.SummaryOptions(top=10, module_depth=3)))

    console.rule("the memory wall in one line")
    real = {g.key: g for g in rep.group_by("phase")}
    paper = {g.key: g for g in rep.rescore(bytes_per_element=1).group_by("phase")}
    for phase in ("prefill", "decode"):
        console.print(
            f"{phase:8s} {real[phase].intensity:7.2f} FLOPs/byte in fp32, "
            f"{paper[phase].intensity:7.2f} with every tensor 8-bit (the paper's accounting), "
            f"{real[phase].time_s * 1e3:8.1f} ms for {real[phase].flops / 1e9:.2f} GFLOP",
            highlight=False,
        )
    console.print(f"report: {prof.saved[-1]}  (memwall report {args.logdir})", highlight=False)
    parent = Path(args.logdir).parent
    console.print(f"open it in TensorBoard: tensorboard --logdir {parent}  (the Memory Wall tab)",
                  highlight=False)


if __name__ == "__main__":
    main()
