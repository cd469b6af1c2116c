"""A first look: GPT-2 (random weights) processing a prompt at once vs generating token by token.

    python samples/quickstart.py --logdir runs/quickstart

The same model does the same kind of math in both, but a whole prompt is matrix-matrix work
(many FLOPs per byte fetched) while decoding one token at a time is matrix-vector work: every
weight is fetched for a handful of FLOPs. memwall shows the gap as arithmetic intensity.
"""

from __future__ import annotations

import argparse
import time

import torch

import memwall_plugin as memwall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--logdir", default="runs/quickstart", help="where reports are written")
    parser.add_argument("--tokens", type=int, default=128, help="prompt length (and tokens generated)")
    parser.add_argument("--layers", type=int, default=12, help="GPT-2 layers (12 = GPT-2 small)")
    args = parser.parse_args()

    try:
        import transformers
    except ImportError:
        raise SystemExit("this sample needs transformers: pip install 'memwall-plugin[samples]'") from None

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers)
    model = transformers.GPT2LMHeadModel(config).eval()  # random weights: no download
    prompt = torch.randint(0, config.vocab_size, (1, args.tokens))
    decode_steps = max(1, args.tokens // 4)

    reports = {}
    for name, work in (
        ("prefill", lambda: model(prompt)),
        ("decode", lambda: _decode(model, prompt[:, :1], decode_steps)),
    ):
        start = time.perf_counter()
        logdir = f"{args.logdir}/{name}"
        with torch.no_grad(), memwall.profile(model=model, logdir=logdir, summary=False) as prof:
            work()
        reports[name] = prof.report()
        print(f"\n=== {name}  ({time.perf_counter() - start:.1f} s) " + "=" * 40)
        print(memwall.format_summary(reports[name], top=8))

    pre, dec = reports["prefill"], reports["decode"]
    print("\n=== the memory wall in one line " + "=" * 30)
    print(f"prefill of {args.tokens} tokens: {pre.intensity:.1f} FLOPs/byte;  "
          f"decoding {decode_steps} tokens one at a time: {dec.intensity:.2f} FLOPs/byte "
          f"({pre.intensity / dec.intensity:.0f}x lower)")
    eight_bit = dec.rescore(bytes_per_element=1)
    print(f"decode with every tensor 8-bit (the paper's accounting): {eight_bit.intensity:.2f} FLOPs/byte")
    print(f"reports: {args.logdir}/prefill and {args.logdir}/decode (plugins/memwall/*.json)")


def _decode(model: torch.nn.Module, first: torch.Tensor, steps: int) -> None:
    """Greedy decoding with the KV cache: one token per forward."""
    out = model(first, use_cache=True)
    past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    for _ in range(steps - 1):
        out = model(token, past_key_values=past, use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)


if __name__ == "__main__":
    main()
