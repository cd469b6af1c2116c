"""fvcore as an independent FLOP counter, converted to memwall's convention.

fvcore's `FlopCountAnalysis` traces the model with `torch.jit.trace` and counts one FLOP per
multiply-add; memwall (like datasheets and torch's FlopCounterMode) counts two. It has handles
for matmul, linear, convolution, einsum, batch/layer/group norm and upsampling and skips other
ops, so compare it with memwall on those.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

FVCORE_TO_MEMWALL = 2  # a multiply-add: 1 FLOP in fvcore, 2 in memwall


@dataclass(frozen=True)
class FvcoreCount:
    """Per-module FLOPs (memwall convention) and the ops fvcore could not count."""

    by_module: dict[str, int]  # named_modules() path -> FLOPs, "" = the whole model
    by_operator: dict[str, int]  # fvcore's operator name ("linear", "matmul", ...) -> FLOPs
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
    """Run fvcore's FlopCountAnalysis on `model(*inputs)` and return FLOPs x2 per module,
    keyed by the model's own `named_modules()` paths."""
    with warnings.catch_warnings():
        # fvcore scripts a loss with TorchScript at import and traces models with it: torch
        # deprecates TorchScript, fvcore has no other path, and the user can do nothing about it
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
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
        by_module, by_operator = analysis.by_module(), analysis.by_operator()
    return FvcoreCount(
        by_module={
            _unwrap(k): FVCORE_TO_MEMWALL * int(v)
            for k, v in by_module.items()
            if k  # "" is the wrapper; "model" is the user's model
        },
        by_operator={k: FVCORE_TO_MEMWALL * int(v) for k, v in by_operator.items()},
        unsupported_ops=dict(analysis.unsupported_ops()),
    )


def _unwrap(name: str) -> str:
    return "" if name == "model" else name.removeprefix("model.")
