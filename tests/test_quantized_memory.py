"""Quantized weights and optimizer state held in tensor subclasses (torchao's int8 and float8
weights, its 8-bit optimizers, NF4): memory counted at the bytes their inner tensors hold, not at
the nominal dtype the wrapper reports. Before, an int8 weight-only model's parameters read as
fp32 (4x their size), an 8-bit AdamW's state as fp32's, and the bf16 what-if told an int8 model to
widen its weights.

The subclass here is a small int8 weight-only tensor of the test's own, built the way torchao's
are (a traceable wrapper subclass: `__tensor_flatten__` names the tensors that hold its data), so
the expected bytes are a hand count of what it holds; torchao itself is not a dependency."""

from __future__ import annotations

import copy

import torch

import memwall_plugin as memwall


class Int8Weight(torch.Tensor):
    """An int8 weight with a float32 scale per output row; ops see it dequantized."""

    @staticmethod
    def __new__(cls, qdata: torch.Tensor, scale: torch.Tensor, shape: torch.Size, dtype: torch.dtype):
        return torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=qdata.device)

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> None:
        self.qdata, self.scale = qdata, scale

    def __tensor_flatten__(self):  # type: ignore[no-untyped-def]
        return ["qdata", "scale"], (self.shape, self.dtype)

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):  # type: ignore[no-untyped-def]
        return Int8Weight(inner["qdata"], inner["scale"], *ctx)

    @classmethod
    def quantize(cls, w: torch.Tensor) -> Int8Weight:
        scale = w.detach().abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
        return cls((w.detach() / scale).round().to(torch.int8), scale, w.shape, w.dtype)

    def dequantize(self) -> torch.Tensor:
        return self.qdata.to(self.dtype) * self.scale

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            (w,) = args
            return Int8Weight(w.qdata, w.scale, w.shape, w.dtype)
        plain = [a.dequantize() if isinstance(a, Int8Weight) else a for a in args]
        return func(*plain, **kwargs)


def _held(t: torch.Tensor) -> int:
    return t.qdata.numel() * 1 + t.scale.numel() * 4 if isinstance(t, Int8Weight) else t.numel() * t.element_size()


def _quantized_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256)).eval()
    for layer in (model[0], model[2]):
        layer.weight = torch.nn.Parameter(Int8Weight.quantize(layer.weight), requires_grad=False)
    return model


def test_int8_weights_count_the_bytes_they_hold_and_get_no_bf16_suggestion():
    model = _quantized_mlp()
    x = torch.randn(8, 256)
    with torch.no_grad():
        bare = model(x)
        with memwall.profile(model=model, summary=False) as prof:
            out = model(x)
    assert torch.equal(out, bare)  # the run is unchanged
    mem = prof.report().memory
    held = sum(_held(p) for p in model.parameters())
    nominal = sum(p.numel() * 4 for p in model.parameters())
    assert held * 3 < nominal  # int8 with a scale per row: about a quarter of fp32's bytes
    assert mem.peak_by_category["parameters"] == held
    # the weights are narrower than bf16 already, and their biases too few to halve the peak:
    # bf16 is not suggested for them (it would widen the int8 data to 2 bytes)
    assert all("parameters" not in label for label, _ in mem.suggestions() if label.startswith("bf16"))
    # a user asking for 2 bytes an element gets the floating-point parameters (scales, biases) at
    # 2 bytes and the int8 data at its width, as a bf16 conversion of the model keeps it (until
    # 2026-12-08 the int8 data was widened to 2 bytes)
    asked = mem.what_if(bytes_per_element={"parameters": 2})
    int8 = sum(p.qdata.numel() for p in model.parameters() if isinstance(p, Int8Weight))
    assert mem.peak_kept_bytes["parameters"] == int8
    assert asked.by_category["parameters"] == int8 + (held - int8) // 2


class _Int8Momentum(torch.optim.Optimizer):
    """SGD with momentum whose momentum is stored as int8 (an 8-bit optimizer's shape)."""

    def __init__(self, params, lr: float = 0.01) -> None:  # type: ignore[no-untyped-def]
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum"] = Int8Weight.quantize(p.grad)
                else:  # updated in place, as 8-bit optimizers do
                    held = state["momentum"]
                    new = Int8Weight.quantize(held.dequantize() * 0.9 + p.grad)
                    held.qdata.copy_(new.qdata)
                    held.scale.copy_(new.scale)
                p.add_(state["momentum"].dequantize(), alpha=-group["lr"])


def test_an_8bit_optimizer_state_counts_its_int8_bytes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    twin = copy.deepcopy(model)
    x, y = torch.randn(16, 128), torch.randn(16, 64)

    def train(m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    opt, twin_opt = _Int8Momentum(model.parameters()), _Int8Momentum(twin.parameters())
    train(model, opt)
    train(twin, twin_opt)
    with memwall.profile(model=model, summary=False) as prof:
        for _ in range(2):
            train(model, opt)
            prof.step()
    for _ in range(2):
        train(twin, twin_opt)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    mem = prof.report().memory
    state = sum(_held(s["momentum"]) for s in opt.state.values())
    assert state * 3 < sum(p.numel() * 4 for p in model.parameters())
    assert mem.peak_by_category["optimizer_state"] == state
