"""The pattern to copy: a training loop wrapped in memwall.profile.

    python samples/train_gpt2.py --steps 8 --logdir runs/train_gpt2
    tensorboard --logdir runs          # Memory Wall tab, plus memwall/* scalars beside the loss

GPT-2 (random weights from its config: no download) on random tokens, AdamW. memwall records a
few steps after a warm-up (the schedule), writes a report per recorded window and headline
scalars per step into the run directory, and prints a summary at the end.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.tensorboard import SummaryWriter

import memwall_plugin as memwall


def main(argv: list[str] | None = None) -> memwall.Report:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--logdir", default="runs/train_gpt2")
    parser.add_argument("--tiny", action="store_true", help="a tiny GPT-2: a smoke test in seconds")
    args = parser.parse_args(argv)

    import transformers

    torch.manual_seed(0)
    sizes = dict(n_embd=64, n_layer=2, n_head=2) if args.tiny else dict(n_layer=args.layers)
    config = transformers.GPT2Config(**sizes)
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    writer = SummaryWriter(args.logdir)  # your own scalars, in the same run directory

    schedule = memwall.schedule(wait=1, warmup=1, active=max(1, args.steps - 2))
    with memwall.profile(model=model, logdir=args.logdir, schedule=schedule) as prof:
        for step in range(args.steps):
            tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq_len))
            loss = model(tokens, labels=tokens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            writer.add_scalar("train/loss", loss.item(), step)
            prof.step()
    writer.close()
    return prof.report()


if __name__ == "__main__":
    main()
