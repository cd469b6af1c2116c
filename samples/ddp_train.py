"""Data-parallel training profiled on every rank: the collectives on the interconnect roof.

    torchrun --nproc_per_node 2 samples/ddp_train.py                  # DDP: NCCL with a GPU per rank, else gloo on CPU
    torchrun --nproc_per_node 2 samples/ddp_train.py --fsdp           # FSDP2 (fully_shard)
    memwall report runs/ddp_train                                     # every rank side by side
    tensorboard --logdir runs                                         # the Memory Wall tab

A small MLP on random data, SGD. Each rank writes its own report into the same run directory
(`rank<R>_steps...json`); rank 0 prints the summary with every rank side by side. With DDP the
gradients are all-reduced from C++ buckets during backward: the all-reduce messages of a step
add up to the model's gradient bytes. With FSDP2 each layer's parameters are all-gathered before
its forward (and again before its backward) and its gradients reduce-scattered after backward.
"""

from __future__ import annotations

import argparse
import datetime
import os

import torch
import torch.distributed as dist

import memwall_plugin as memwall


def build_model(width: int, depth: int) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(width, 10))
    return torch.nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> memwall.Report:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd",
                        help="adamw keeps two moments per parameter (sharded too under FSDP2)")
    parser.add_argument("--logdir", default="runs/ddp_train")
    parser.add_argument("--no-profile", action="store_true", help="no memwall.profile (for `memwall run`)")
    parser.add_argument("--die-at-step", type=int, default=-1,
                        help="rank 1 kills itself (SIGKILL) at this step: what the other ranks' reports keep")
    parser.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto",
                        help="auto: NCCL when every rank on this host has a GPU of its own, else gloo on CPU")
    args = parser.parse_args(argv)

    backend = args.backend
    if backend == "auto":  # NCCL refuses two ranks on one GPU
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= ranks_here else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=60))
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model(args.width, args.depth).to(device)
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        wrapped = fully_shard(model)
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = (torch.optim.AdamW(wrapped.parameters(), lr=1e-3) if args.optimizer == "adamw"
                 else torch.optim.SGD(wrapped.parameters(), lr=0.01))
    torch.manual_seed(1 + rank)  # each rank its own data

    def train_step() -> None:
        x = torch.randn(args.batch, args.width, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        torch.nn.functional.cross_entropy(wrapped(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    report: memwall.Report | None = None
    try:
        if args.no_profile:
            for step in range(args.steps):
                _maybe_die(args, rank, step)
                train_step()
        else:
            with memwall.profile(model=wrapped, logdir=args.logdir) as prof:
                for step in range(args.steps):
                    _maybe_die(args, rank, step)
                    train_step()
                    prof.step()
            report = prof.report()
    finally:
        dist.destroy_process_group()
    return report if report is not None else memwall.Report(rows=())


def _maybe_die(args: argparse.Namespace, rank: int, step: int) -> None:
    if rank == 1 and step == args.die_at_step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
