"""`fvcore_flops` against hand counts: multiply-add counts doubled, fvcore's element counts not."""

from __future__ import annotations

import collections
import subprocess
import sys

import pytest
import torch
from conftest import profiled
from torch import nn

import memwall_plugin as memwall

pytest.importorskip("fvcore")

N, C_IN, C_OUT, H, W, K = 2, 3, 4, 8, 8, 3
POOLED = 2  # AdaptiveAvgPool2d(2): [N, C_OUT, 2, 2]
FEATURES, CLASSES = C_OUT * POOLED * POOLED, 10


class _Gram(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [n, t, c] @ [n, c, p] -> [n, t, p]; not torch.einsum: the oldest supported fvcore's
        # einsum handle asserts on the 3 inputs aten::einsum has in torch 2.x
        return torch.bmm(x.transpose(1, 2), x)


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C_IN, C_OUT, K, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(POOLED)
        self.gram = _Gram()
        self.norm = nn.LayerNorm(FEATURES)
        self.fc = nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.conv(x)).flatten(2)  # [N, C_OUT, 4]
        gram = self.gram(pooled)  # [N, 4, 4]
        return self.fc(self.norm(gram.flatten(1)))


# hand counts; a multiply-add is 2 FLOPs in memwall and 1 in fvcore
CONV_MACS = N * C_OUT * H * W * C_IN * K * K  # every output element: C_IN x K x K multiply-adds
GRAM_MACS = N * (POOLED * POOLED) ** 2 * C_OUT  # [4, 4] outputs per sample, each over C_OUT
FC_MACS = N * FEATURES * CLASSES
POOL_READS = N * C_OUT * H * W  # an average pool adds each input element once
NORM_ELEMENTS = N * FEATURES


@pytest.fixture(scope="module")
def small() -> tuple[_Small, torch.Tensor]:
    torch.manual_seed(0)
    return _Small().eval(), torch.randn(N, C_IN, H, W)


def test_fvcore_doubles_only_multiply_adds(small):
    model, x = small
    fv = memwall.fvcore_flops(model, (x,))
    expected = {
        "conv": 2 * CONV_MACS,  # 27,648
        "pool": POOL_READS,  # 512: fvcore counts 1 per input element, as memwall does
        "gram": 2 * GRAM_MACS,  # 256
        # fvcore's own estimate for a norm with an affine weight, 5 per element, kept as it is
        "norm": 5 * NORM_ELEMENTS,  # 160
        "fc": 2 * FC_MACS,  # 640: no bias add in fvcore
    }
    assert {k: v for k, v in fv.by_module.items() if k} == expected
    assert fv.by_module[""] == sum(expected.values())
    assert fv.by_operator == {
        "conv": expected["conv"],
        "adaptive_avg_pool2d": expected["pool"],
        "bmm": expected["gram"],
        "layer_norm": expected["norm"],
        "linear": expected["fc"],
    }


def test_fvcore_agrees_with_memwall_where_both_count_the_same_work(small):
    model, x = small
    fv = memwall.fvcore_flops(model, (x,))
    with torch.no_grad():
        rep = profiled(lambda: model(x), model=model)
    mine: collections.Counter[str] = collections.Counter()
    for r in rep.rows:
        mine[r.module] += r.flops or 0
    # the same work: a convolution without bias, an average pool, a bmm
    for name in ("conv", "pool", "gram"):
        assert mine[name] == fv.by_module[name], name
    # memwall adds the bias, one add per output element
    assert mine["fc"] == fv.by_module["fc"] + N * CLASSES == 2 * FC_MACS + N * CLASSES
    # memwall's norm: 5 per element plus 1 each for the affine weight and bias
    assert mine["norm"] == (5 + 2) * NORM_ELEMENTS


def test_fvcore_flops_says_nothing_of_torchscripts_deprecation():
    """fvcore scripts a loss with TorchScript when imported and traces models with it; torch
    deprecates TorchScript (a FutureWarning, shown to users, from torch 2.15). The user can do
    nothing about it: `fvcore_flops` keeps it quiet. Run in a fresh interpreter, where fvcore's
    import (and its warning) happens inside the call, with every warning an error."""
    code = ("import torch, memwall_plugin as m\n"
            "print(m.fvcore_flops(torch.nn.Linear(4, 3), torch.randn(2, 4)).by_operator)\n")
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning",
                           "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "{'linear': 48}"  # 2 rows x 3 outputs x 4 inputs multiply-adds, doubled
