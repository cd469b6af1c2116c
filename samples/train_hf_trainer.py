"""A Hugging Face `Trainer` fine-tuning a small GPT-2 (random weights, built from a config) with
memwall as one of its callbacks.

    python samples/train_hf_trainer.py [--steps 6] [--accumulate 2] [--out runs/hf]
    tensorboard --logdir runs/hf              # the Trainer's scalars and the Memory Wall tab

A step is an optimizer step: with gradient accumulation each holds that many forwards and
backwards. One TensorBoard over `--out` shows the Trainer's scalars and the Memory Wall tab.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import transformers

import memwall_plugin as memwall
from memwall_plugin.integrations.transformers import MemwallCallback


def main(argv: Sequence[str] | None = None) -> memwall.Report | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--accumulate", type=int, default=2, help="gradient accumulation steps")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", default="runs/hf")
    parser.add_argument("--no-summary", dest="summary", action="store_false")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=args.layers, n_head=4, n_embd=128, n_positions=128, vocab_size=1000,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    tokens = torch.randint(0, config.vocab_size, (args.steps * args.accumulate * 4, 64))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    # the Trainer's own scalars go under <out>/runs/, memwall's report to <out>: one TensorBoard
    training = transformers.TrainingArguments(
        output_dir=args.out, max_steps=args.steps, gradient_accumulation_steps=args.accumulate,
        per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True, use_cpu=True,
        report_to=["tensorboard"], logging_steps=1,
    )
    callback = MemwallCallback(args.out, summary=args.summary)
    transformers.Trainer(model=model, args=training, train_dataset=data, callbacks=[callback]).train()
    return callback.report()


if __name__ == "__main__":
    main()
