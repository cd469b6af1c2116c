"""A PyTorch Lightning training run with memwall in Lightning's own profiler slot.

    python samples/train_lightning.py [--steps 20] [--logdir runs/lightning]
    tensorboard --logdir runs/lightning      # the Memory Wall tab

The LightningModule's `training_step` calls `self.net`; Lightning runs it (and the backward) inside
`optimizer.step(closure)`. memwall shows that work as forward and backward under `net.0`, `net.2`,
and only AdamW's update as optimizer work.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import lightning
import torch

import memwall_plugin as memwall
from memwall_plugin.integrations.lightning import MemwallProfiler


class MLP(lightning.LightningModule):
    def __init__(self, width: int = 256) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.GELU(), torch.nn.Linear(width, 10))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main(argv: Sequence[str] | None = None) -> memwall.Report | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (batches of 32)")
    parser.add_argument("--logdir", default="runs/lightning")
    parser.add_argument("--no-summary", dest="summary", action="store_false")
    args = parser.parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32 * args.steps, 64), torch.randint(0, 10, (32 * args.steps,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    profiler = MemwallProfiler(logdir=args.logdir, summary=args.summary)
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, profiler=profiler)
    trainer.fit(MLP(), loader)
    return profiler.report()


if __name__ == "__main__":
    main()
