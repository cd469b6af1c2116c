"""Processes forked inside a profile (DataLoader workers, os.fork): memwall records the run in the
process that opened the profile. A child inherits the forking thread's dispatch mode and hooks;
there memwall steps out of the way, records nothing and saves nothing."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.data import DataLoader, Dataset

import memwall_plugin as memwall

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin",
                                reason="fork start method (Linux)")


class _Items(Dataset):
    """Items made with torch ops, each saying what its worker process saw."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = torch.arange(4, dtype=torch.float32) + i
        for _ in range(3):
            x = x * 1.5 + 1
        return x, os.getpid(), len(_get_current_dispatch_mode_stack())


def _batches() -> list[tuple[torch.Tensor, list[int], list[int]]]:
    loader = DataLoader(_Items(), batch_size=4, num_workers=2, multiprocessing_context="fork",
                        collate_fn=lambda items: (torch.stack([x for x, _, _ in items]),
                                                  [p for _, p, _ in items], [m for _, _, m in items]))
    return list(loader)


def test_dataloader_workers_run_without_memwalls_mode_and_the_parent_records_its_own_work(tmp_path):
    bare = _batches()
    model = torch.nn.Linear(4, 2)
    with memwall.profile(model=model, logdir=tmp_path, summary=False) as prof:
        batches = _batches()
        out = [model(x) for x, _, _ in batches]
    for (x, pids, modes), (x0, _, _) in zip(batches, bare):
        assert torch.equal(x, x0)
        assert os.getpid() not in pids  # made in the workers
        assert modes == [0, 0, 0, 0]  # before, each worker ran its ops through memwall's mode
    assert [o.shape for o in out] == [torch.Size([4, 2])] * 2
    rep = prof.report()
    assert rep.filter(op="aten.addmm")[0].calls == 2
    assert not rep.incomplete
    assert not any(r.op == "aten.mul" for r in rep.rows)  # the items' ops ran in the workers
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_a_child_forked_inside_the_block_saves_and_prints_nothing(tmp_path, capfd):
    model = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with memwall.profile(model=model, logdir=tmp_path, summary=True) as prof:
        model(x)
        pid = os.fork()
        if pid == 0:  # the child: runs a step of its own and leaves the block
            code = 1
            try:
                child_out = model(x)  # its ops are not recorded anywhere
                code = 0 if len(_get_current_dispatch_mode_stack()) == 0 and child_out.shape == (3, 2) else 3
            finally:
                prof.__exit__(None, None, None)
                code = code or (4 if list(tmp_path.rglob("*.json")) else 0)
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not list(tmp_path.rglob("*.json"))  # the child saved nothing
        child_printed = capfd.readouterr()
        model(x)
    assert "memwall" not in child_printed.out and "memwall" not in child_printed.err
    rep = prof.report()
    assert rep.filter(op="aten.addmm")[0].calls == 2 and not rep.incomplete
    assert len(list(tmp_path.rglob("*.json"))) == 1
