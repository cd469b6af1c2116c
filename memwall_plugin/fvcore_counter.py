"""fvcore as an independent FLOP counter, converted to memwall's convention.

fvcore's `FlopCountAnalysis` traces the model with `torch.jit.trace` and runs a handle per op.
Its matmul-like handles (`addmm`, `bmm`, `_convolution`, `einsum`, `linear`, `matmul`, `mm`)
count one FLOP per multiply-add; memwall (like datasheets and torch's FlopCounterMode) counts
two, so `fvcore_flops` doubles those, per module and operator. Its other handles count per
element in their own units and are kept as fvcore reports them: adaptive average pooling 1 per
input element; layer, group and instance norm 5 per input element (4 without an affine weight);
batch norm the same in training and 2 (1) in eval (fvcore 0.1.5.post20210327, the oldest
supported, counts 5 (4) in eval too); nearest upsampling 1, bilinear upsampling and grid sampling
4 per output element. fvcore skips every other op and never counts a bias add (memwall adds 1 per
output element), so compare it with memwall on matmuls, convolutions and average pooling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

FVCORE_TO_MEMWALL = 2  # a multiply-add: 1 FLOP in fvcore, 2 in memwall

#: fvcore's names for the ops whose handles count multiply-adds (fvcore/nn/jit_handles.py:
#: addmm_flop_jit, bmm_flop_jit, conv_flop_jit (named "conv"), einsum_flop_jit, linear_flop_jit,
#: matmul_flop_jit for matmul and mm); every other handle counts elements, kept as it is
MULTIPLY_ADD_OPS = frozenset({"addmm", "bmm", "conv", "einsum", "linear", "matmul", "mm"})


@dataclass(frozen=True)
class FvcoreCount:
    """Per-module FLOPs (memwall convention) and the ops fvcore could not count."""

    by_module: dict[str, int]  # named_modules() path -> FLOPs, "" = the whole model
    by_operator: dict[str, int]  # fvcore's operator name ("linear", "conv", ...) -> FLOPs
    unsupported_ops: dict[str, int]  # op -> occurrences fvcore skipped


class _Traceable(torch.nn.Module):
    """Wraps a model whose output is a dict or dataclass (transformers' ModelOutput) so that
    torch.jit.trace sees a tuple of tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_tensors(self.model(*args)))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def fvcore_flops(model: torch.nn.Module, inputs: Any) -> FvcoreCount:
    """Run fvcore's FlopCountAnalysis on `model(*inputs)` and return its FLOPs per module and
    per operator, keyed by the model's own `named_modules()` paths, with multiply-add counts
    doubled (`MULTIPLY_ADD_OPS`) and the element counts of its other handles as they are."""
    with warnings.catch_warnings():
        # fvcore scripts a loss with TorchScript at import and traces models with it: torch
        # deprecates TorchScript, fvcore has no other path, and the user can do nothing about it
        # (a DeprecationWarning up to torch 2.13, a FutureWarning, which users see, from 2.15)
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=category)
        try:
            from fvcore.nn import FlopCountAnalysis
        except ImportError as exc:  # pragma: no cover - fvcore is a dependency
            raise ImportError("fvcore is not installed: pip install fvcore") from exc
        if isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        analysis = FlopCountAnalysis(_Traceable(model), tuple(inputs))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        # converted per operator before summing: a module's total mixes both kinds of count
        counts = {
            module: {op: _to_memwall(op, n) for op, n in ops.items()}
            for module, ops in analysis.by_module_and_operator().items()
        }
    return FvcoreCount(
        by_module={
            _unwrap(k): sum(ops.values())
            for k, ops in counts.items()
            if k  # "" is the wrapper; "model" is the user's model
        },
        by_operator=counts.get("", {}),
        unsupported_ops=dict(analysis.unsupported_ops()),
    )


def _to_memwall(op: str, count: float) -> int:
    """One fvcore count in memwall's convention: a multiply-add count doubled, others as they
    are (einsum's handle returns a float)."""
    return int(count) * (FVCORE_TO_MEMWALL if op in MULTIPLY_ADD_OPS else 1)


def _unwrap(name: str) -> str:
    return "" if name == "model" else name.removeprefix("model.")
