"""Ops that real code runs beyond the common layers, each counted (never listed as uncounted)
and checked against hand counts from shapes or against the same computation decomposed into ops
whose counts are checked elsewhere (tests/test_formulas.py, FlopCounterMode)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import flops_apart, one_row, profiled, rows_of, transformers_moe
from memwall_plugin.hooks.signatures import build_call, signature

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.formulas import REGISTRY


def _total(rep: memwall.Report, phase: str | None = None) -> int:
    return sum(r.flops or 0 for r in rep.rows if phase is None or r.phase == phase)


def _snippets() -> dict[str, object]:
    """Short pieces of what users run, each touching ops the common layers do not."""

    def static_kv_cache():
        cache = torch.zeros(1, 2, 16, 8)
        cache.index_copy_(2, torch.tensor([3]), torch.randn(1, 2, 1, 8))
        torch.index_copy(cache, 2, torch.tensor([4]), torch.randn(1, 2, 1, 8))
        cache.index_fill_(2, torch.tensor([0, 1]), 0.0)

    def image_features_into_text():
        emb = torch.randn(2, 10, 16, requires_grad=True)
        img = torch.randn(6, 16, requires_grad=True)
        mask = torch.zeros(2, 10, 16, dtype=torch.bool)
        mask[0, 2:5] = True
        torch._check_tensor_all(mask.sum(-1) <= img.shape[-1])  # transformers' check of the token count
        emb.masked_scatter(mask, img).sum().backward()

    def preference_loss_and_glu():
        logits = torch.randn(8, requires_grad=True)
        (F.logsigmoid(logits).mean() + F.glu(torch.randn(4, 16, requires_grad=True)).sum()).backward()

    def grad_scaler_step():
        model = nn.Linear(8, 8)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(torch.randn(4, 8)).float().sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def in_place_matmuls():
        torch.randn(4, 5).addmm_(torch.randn(4, 3), torch.randn(3, 5))
        torch.randn(2, 4, 5).baddbmm_(torch.randn(2, 4, 3), torch.randn(2, 3, 5))
        torch.randn(4).addmv_(torch.randn(4, 3), torch.randn(3))
        torch.addr(torch.randn(4, 5), torch.randn(4), torch.randn(5))

    def audio_front_end():
        conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1, padding_mode="reflect"), dim=2)
        wave = torch.randn(400)
        spec = torch.stft(wave, n_fft=64, window=torch.hann_window(64), return_complex=True).abs()
        (conv(torch.randn(1, 4, 10, requires_grad=True)).sum() + spec.sum()).backward()

    def vision_front_end():
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        theta = torch.randn(2, 2, 3, requires_grad=True)
        grid = F.affine_grid(theta, [2, 3, 6, 6], align_corners=False)
        conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
        out = F.grid_sample(conv(x), grid, align_corners=False)
        (out.sum() + F.interpolate(x, scale_factor=2, mode="bicubic").sum()
         + F.interpolate(x, scale_factor=2, mode="nearest-exact").sum()).backward()

    def rope_as_complex_numbers():
        freqs = torch.outer(torch.arange(16).float(), torch.randn(4))
        cis = torch.polar(torch.ones_like(freqs), freqs)
        xq = torch.view_as_complex(torch.randn(1, 16, 2, 4, 2))
        torch.view_as_real(xq * cis.view(1, 16, 1, 4)).flatten(3)

    def recurrent_layers():
        for cls in (nn.LSTM, nn.GRU):
            cls(8, 16, num_layers=2, batch_first=True)(torch.randn(2, 5, 8))[0].sum().backward()

    def transformer_fast_path():
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
        with torch.no_grad():
            nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)(torch.randn(2, 6, 32))

    def second_order_optimizer():
        a = torch.randn(16, 16)
        spd = a @ a.T + 16 * torch.eye(16)
        torch.linalg.eigh(spd)
        torch.linalg.cholesky(spd)
        torch.linalg.qr(a)
        torch.linalg.svd(a)
        torch.linalg.solve(spd, torch.randn(16, 3))
        torch.linalg.inv(spd)
        torch.linalg.slogdet(spd)
        torch.linalg.solve_triangular(torch.linalg.cholesky(spd), torch.randn(16, 4), upper=False)  # Qwen3-Next

    def search_select_distance():
        bins = torch.sort(torch.randn(32)).values
        x = torch.randn(4, 33)
        torch.searchsorted(bins, torch.randn(4, 10))
        torch.bucketize(torch.randn(10), bins)
        x.median(dim=1)
        x.kthvalue(3, dim=1)
        torch.cummax(x, 1)
        torch.cdist(torch.randn(2, 10, 8), torch.randn(2, 12, 8))
        F.pdist(torch.randn(10, 4))

    def recommendation_and_packed_sequences():
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        bag = nn.EmbeddingBag(50, 8, mode="sum")
        weights = torch.rand(20, requires_grad=True)
        bag(torch.randint(0, 50, (20,)), torch.tensor([0, 5, 12]), per_sample_weights=weights).sum().backward()
        packed = pack_padded_sequence(torch.randn(3, 5, 4), torch.tensor([5, 3, 2]), batch_first=True)
        pad_packed_sequence(nn.GRU(4, 6, batch_first=True)(packed)[0], batch_first=True)[0].sum().backward()

    def probabilistic_models():
        x = torch.rand(8) + 0.1
        torch.special.i0e(x)
        torch.special.ndtri(x / 2)
        torch.special.entr(x)
        torch.polygamma(1, x)
        torch.mvlgamma(x + 2, 2)
        torch.distributions.Dirichlet(torch.ones(4)).sample()
        torch.poisson(x)
        torch.distributions.Binomial(10, probs=x / 2).sample()  # aten.binomial

    def pools_and_losses():
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        out, where = F.max_pool2d(x, 2, return_indices=True)
        scores = torch.randn(4, 5, requires_grad=True)
        (F.max_unpool2d(out, where, 2).sum() + F.fractional_max_pool2d(x, 2, output_size=(4, 4)).sum()
         + F.adaptive_max_pool3d(x.unsqueeze(0), 2).sum() + F.multi_margin_loss(scores, torch.randint(0, 5, (4,)))
         + F.soft_margin_loss(scores, torch.ones(4, 5))).backward()

    def misc():
        x = torch.randn(8)
        torch.logaddexp(x, x)
        torch.sinc(x)
        torch.asinh(x)
        F.hardshrink(x)
        torch.linalg.cross(torch.randn(4, 3), torch.randn(4, 3))
        torch.randint(0, 255, (8,), dtype=torch.uint8) >> 4
        torch.trace(torch.randn(4, 4))
        torch.diag_embed(torch.randn(2, 3))
        torch.rot90(torch.randn(3, 4))
        nn.PReLU(4)(torch.randn(2, 4, 5, requires_grad=True)).sum().backward()

    return {name: fn for name, fn in locals().items() if callable(fn)}


@pytest.mark.parametrize("name", sorted(_snippets()))
def test_every_op_these_snippets_run_is_counted(name):
    rep = profiled(_snippets()[name])
    assert rep.rows
    assert not rep.uncounted, [r.name for r in rep.uncounted]


def test_static_kv_cache_writes_only_the_new_positions():
    heads, length, dim = 2, 16, 8
    cache = torch.zeros(1, heads, length, dim)
    new = torch.randn(1, heads, 1, dim)
    rep = profiled(lambda: cache.index_copy_(2, torch.tensor([3]), new))
    row = one_row(rep, "aten.index_copy_")
    assert row.flops == 0
    assert row.bytes_written == heads * dim * 4  # one position per head, not the whole cache
    assert row.bytes_read == heads * dim * 4 + 8  # the new keys and the int64 position
    filled = profiled(lambda: cache.index_fill_(2, torch.tensor([0, 1]), 0.0))
    assert one_row(filled, "aten.index_fill_").bytes_written == heads * 2 * dim * 4


def test_generate_with_a_static_cache_is_counted_and_unchanged():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    prompt = torch.randint(0, 128, (1, 6))
    kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, cache_implementation="static")
    bare = model.generate(prompt, **kwargs)
    with memwall.profile(summary=False) as prof:
        seen = model.generate(prompt, **kwargs)
    assert torch.equal(bare, seen)
    rep = prof.report()
    assert not rep.uncounted, [r.name for r in rep.uncounted]
    # transformers 5 writes the cache with index_copy_, 4.x with index_put_: the prompt's 6 positions,
    # then one per decode step (3), of keys and of values, in each of the 2 layers, 2 kv heads x 8 dims
    writes = [r for r in rep.rows if r.op in ("aten.index_copy_", "aten.index_put_", "aten._index_put_impl_")]
    assert sum(r.bytes_written for r in writes) == 2 * 2 * (6 + 3) * 2 * 8 * 4


def test_logsigmoid_and_glu_by_hand():
    x = torch.randn(8, requires_grad=True)
    rep = profiled(lambda: F.logsigmoid(x).sum().backward())
    # min(x, 0) - log1p(exp(-|x|)): min, abs, neg, exp, log1p, sub
    assert one_row(rep, "aten.log_sigmoid_forward").flops == 6 * 8
    # from e = exp(-|x|): e / (1 + e), its complement by sign, times grad
    assert one_row(rep, "aten.log_sigmoid_backward").flops == 5 * 8
    y = torch.randn(4, 16, requires_grad=True)
    rep = profiled(lambda: F.glu(y).sum().backward())
    # 4 x 8 outputs: sigmoid (4) and a multiply; backward sigmoid, g s, g a s (1 - s)
    assert one_row(rep, "aten.glu").flops == 5 * 32
    assert one_row(rep, "aten.glu_backward").flops == 9 * 32


def test_fake_quantization_for_quantization_aware_training_by_hand():
    """Quantization-aware training's fake quantization (torch.fake_quantize_*, the learnable forms,
    torch.ao's fused observer): each counted by hand per element of the input, and bit-identical
    to the bare run. Before, each was an uncounted row."""
    n, channels = 8 * 16, 16

    def qat_ops() -> list[torch.Tensor]:
        torch.manual_seed(0)
        x = torch.randn(8, 16, requires_grad=True)
        scale, zero = torch.full((channels,), 0.05), torch.zeros(channels, dtype=torch.int32)
        learned_scale = torch.tensor([0.05], requires_grad=True)
        learned_zero = torch.tensor([0.0], requires_grad=True)
        outs = [
            torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127),
            torch.fake_quantize_per_tensor_affine(x, torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32),
                                                  -128, 127),
            torch.fake_quantize_per_channel_affine(x, scale, zero, 1, -128, 127),
            torch._fake_quantize_learnable_per_tensor_affine(x, learned_scale, learned_zero, -128, 127, 1.0),
        ]
        sum(o.sum() for o in outs).backward()
        with torch.no_grad():
            running = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.05]),
                       torch.tensor([0], dtype=torch.int32)]
            observed = torch.fused_moving_avg_obs_fake_quant(x, torch.tensor([1]), torch.tensor([1]), *running, 0.01,
                                                             -128, 127, 0)
        return [*outs, observed, x.grad, learned_scale.grad, learned_zero.grad, *running]

    bare = qat_ops()
    with memwall.profile(summary=False) as prof:
        got = qat_ops()
    rep = prof.report()
    for a, b in zip(got, bare, strict=True):
        assert torch.equal(a, b)
    # round(x / scale) + zero point (3), clamp (2), - zero point, * scale (2); the mask: 2
    # compares and their and (3)
    assert one_row(rep, "aten.fake_quantize_per_tensor_affine_cachemask").flops == 10 * n
    assert one_row(rep, "aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams").flops == 10 * n
    assert one_row(rep, "aten.fake_quantize_per_channel_affine_cachemask").flops == 10 * n
    # the learnable form: no mask; its zero point rounded and clamped (3)
    assert one_row(rep, "aten._fake_quantize_learnable_per_tensor_affine").flops == 7 * n + 3
    assert one_row(rep, "aten._fake_quantize_learnable_per_tensor_affine_backward").flops == 14 * n
    # the fused observer: min and max per element, then the fake quantization with its mask; per
    # channel (one here) the moving averages (6) and the qparams (7)
    assert one_row(rep, "aten._fused_moving_avg_obs_fq_helper").flops == 12 * n + 13
    assert not rep.uncounted


def _quantized_decomposed_cases() -> list[tuple[str, Callable[[Any], Any], Callable[[], tuple[Any, ...]]]]:
    """(name, op of the quantized_decomposed namespace or the Python decomposition torch runs for
    it, its arguments): the namespace registered on import of torch's own module."""
    import torch.ao.quantization.fx._decomposed as D

    ops = torch.ops.quantized_decomposed

    def x() -> torch.Tensor:
        return torch.randn(6, 16)

    def q() -> torch.Tensor:
        return torch.randint(-128, 128, (6, 16), dtype=torch.int8)

    def scales(n: int) -> torch.Tensor:
        return torch.rand(n) + 0.1

    def zeros(n: int) -> torch.Tensor:
        return torch.randint(-3, 3, (n,))

    # a name ending in op: the op; the decomposition is the Python function of the same pairing
    return [
        ("quantize_per_tensor", (ops.quantize_per_tensor.default, D.quantize_per_tensor),
         lambda: (x(), 0.1, 3, -128, 127, torch.int8)),
        ("quantize_per_tensor.tensor", (ops.quantize_per_tensor.tensor, D.quantize_per_tensor_tensor),
         lambda: (x(), torch.tensor(0.1), torch.tensor(3), -128, 127, torch.int8)),
        ("dequantize_per_tensor", (ops.dequantize_per_tensor.default, D.dequantize_per_tensor),
         lambda: (q(), 0.1, 3, -128, 127, torch.int8)),
        ("quantize_per_channel", (ops.quantize_per_channel.default, D.quantize_per_channel),
         lambda: (x(), scales(6), zeros(6), 0, -128, 127, torch.int8)),
        ("dequantize_per_channel", (ops.dequantize_per_channel.default, D.dequantize_per_channel),
         lambda: (q(), scales(16), zeros(16), 1, -128, 127, torch.int8)),
        ("dequantize_per_channel, no zero points", (ops.dequantize_per_channel.default, D.dequantize_per_channel),
         lambda: (q(), scales(6), None, 0, -128, 127, torch.int8)),
        ("choose_qparams", (ops.choose_qparams.tensor, D.choose_qparams_tensor),
         lambda: (x(), -128, 127, 1e-5, torch.int8)),
        ("choose_qparams_symmetric", (ops.choose_qparams_symmetric.tensor, D.choose_qparams_symmetric_tensor),
         lambda: (x(), -128, 127, 1e-5, torch.int8)),
        ("choose_qparams_per_token", (ops.choose_qparams_per_token.default, D.choose_qparams_per_token),
         lambda: (x(), torch.int8)),
        ("choose_qparams_per_token_asymmetric",
         (ops.choose_qparams_per_token_asymmetric.default, D.choose_qparams_per_token_asymmetric),
         lambda: (x(), torch.int8)),
        ("quantize_per_token", (ops.quantize_per_token.default, D.quantize_per_token),
         lambda: (x(), scales(6).view(6, 1), zeros(6).view(6, 1), -128, 127, torch.int8)),
        ("dequantize_per_token", (ops.dequantize_per_token.default, D.dequantize_per_token),
         lambda: (q(), scales(6).view(6, 1), zeros(6).view(6, 1), -128, 127, torch.int8, torch.float32)),
        ("quantize_per_channel_group", (ops.quantize_per_channel_group.default, D.quantize_per_channel_group),
         lambda: (x(), scales(12), zeros(12), -128, 127, torch.int8, 8)),
        ("dequantize_per_channel_group", (ops.dequantize_per_channel_group.default, D.dequantize_per_channel_group),
         lambda: (q(), scales(12), zeros(12), -128, 127, torch.int8, 8, torch.float32)),
        ("convert_element_type", (ops.convert_element_type.no_fuse, D.convert_element_type),
         lambda: (x(), torch.bfloat16)),
    ]


@pytest.mark.parametrize("case", range(15))
def test_quantized_decomposed_ops_count_as_the_aten_ops_torch_implements_them_with(case):
    """PT2E quantization's (de)quantize ops and the per-token and groupwise ones
    (`torch.ops.quantized_decomposed`): torch runs each as a few aten ops in Python, below
    memwall's dispatch mode, so memwall sees the op whole. Its count is checked against torch's own
    decomposition run as plain Python, whose aten ops memwall records one by one: the same FLOPs,
    and the op's results are the bare run's. Before, every one was uncounted."""
    name, (op, decomposition), make_args = _quantized_decomposed_cases()[case]
    torch.manual_seed(0)
    args = make_args()
    bare = op(*args)
    with memwall.profile(summary=False) as prof:
        got = op(*args)
    rep = prof.report()
    with memwall.profile(summary=False) as prof:
        decomposition(*args)
    by_torch = prof.report()
    assert not rep.uncounted, (name, [r.name for r in rep.uncounted])
    assert not by_torch.uncounted, (name, [r.name for r in by_torch.uncounted])
    for a, b in zip(got if isinstance(got, tuple) else (got,), bare if isinstance(bare, tuple) else (bare,),
                    strict=True):
        assert torch.equal(a, b), name
    (row,) = [r for r in rep.rows if r.op.startswith("quantized_decomposed.")]
    assert row.flops > 0 or name == "convert_element_type", name  # a cast: no arithmetic
    assert row.flops == sum(r.flops for r in by_torch.rows), (name, [(r.op, r.flops) for r in by_torch.rows])


def test_compiled_pt2e_quantization_pattern_is_counted_as_eager():
    """A converted PT2E int8 linear (dequantize the int8 weight per channel, quantize and
    dequantize the activation, the float linear), compiled: Inductor fuses the (de)quantize ops
    into its kernels, which were uncounted; now the region counts what the eager ops count."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the namespace)

    ops = torch.ops.quantized_decomposed
    torch.manual_seed(0)
    weight = torch.randint(-128, 128, (32, 16), dtype=torch.int8)
    w_scales, w_zeros = torch.rand(32) + 0.01, torch.zeros(32, dtype=torch.int64)
    bias = torch.randn(32)

    def int8_linear(x: torch.Tensor) -> torch.Tensor:
        w = ops.dequantize_per_channel(weight, w_scales, w_zeros, 0, -128, 127, torch.int8)
        xq = ops.quantize_per_tensor(x, 0.02, 0, -128, 127, torch.int8)
        xd = ops.dequantize_per_tensor(xq, 0.02, 0, -128, 127, torch.int8)
        return torch.relu(F.linear(xd, w, bias))

    x = torch.randn(8, 16)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(int8_linear)
        bare = compiled(x)
        with memwall.profile(summary=False) as prof:
            got = compiled(x)
        rep = prof.report()
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, bare)
    eager = profiled(lambda: int8_linear(x))
    assert not rep.uncounted, [r.name for r in rep.uncounted]
    assert not eager.uncounted, [r.name for r in eager.uncounted]
    fused: dict[str, int] = {}
    for row in rep.rows:
        for op, _, flops, _ in row.eager_ops:
            fused[op] = fused.get(op, 0) + (flops or 0)
    for name in ("dequantize_per_channel", "quantize_per_tensor", "dequantize_per_tensor"):
        assert fused[f"quantized_decomposed.{name}"] == one_row(eager, f"quantized_decomposed.{name}").flops > 0
    assert sum(r.flops for r in rep.rows) == sum(r.flops for r in eager.rows)


def test_grad_scaler_unscales_every_gradient_element():
    model = nn.Linear(8, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")

    def step():
        scaler.scale(model(torch.randn(4, 8)).sum()).backward()
        scaler.step(opt)
        scaler.update()

    rep = profiled(step)
    unscale = one_row(rep, "aten._amp_foreach_non_finite_check_and_unscale_")
    assert unscale.flops == 2 * (64 + 8)  # times 1/scale and a finite check per gradient element
    assert unscale.phase == "grad_scaler"
    assert not rep.uncounted


def test_in_place_matmuls_count_as_their_out_of_place_forms():
    m, k, n, b = 4, 3, 5, 2
    a, w, c = torch.randn(m, k), torch.randn(k, n), torch.randn(m, n)
    rep = profiled(lambda: (c.clone().addmm_(a, w), torch.addmm(c, a, w)))
    assert one_row(rep, "aten.addmm_").flops == one_row(rep, "aten.addmm").flops == 2 * m * k * n + m * n
    b1, b2, cb = torch.randn(b, m, k), torch.randn(b, k, n), torch.randn(b, m, n)
    rep = profiled(lambda: cb.clone().baddbmm_(b1, b2, beta=0.5))
    assert one_row(rep, "aten.baddbmm_").flops == 2 * b * m * k * n + 2 * b * m * n  # + add, beta scale
    rep = profiled(lambda: torch.addr(c, torch.randn(m), torch.randn(n), alpha=2))
    assert one_row(rep, "aten.addr").flops == m * n + 2 * m * n  # product, alpha scale, add


def test_lstm_layer_counts_as_its_cell_run_step_by_step():
    i, h, t, b = 8, 16, 5, 3
    lstm, cell = nn.LSTM(i, h, batch_first=True), nn.LSTMCell(i, h)
    x = torch.randn(b, t, i)
    rep = profiled(lambda: lstm(x)[0].sum().backward())
    layer = one_row(rep, "aten.mkldnn_rnn_layer")

    def by_cell():
        hx, cx = torch.zeros(b, h), torch.zeros(b, h)
        for step in range(t):
            hx, cx = cell(x[:, step], (hx, cx))

    with torch.no_grad():
        steps = profiled(by_cell)
    # the cell, decomposed into addmm, add, sigmoid, tanh and mul, each counted on its own
    assert layer.flops == _total(steps)
    assert layer.flops == t * b * (2 * 4 * h * (i + h) + 3 * 4 * h + 18 * h)
    # the gradients of inputs and weights as large as the products, gates' derivatives as their values
    assert one_row(rep, "aten.mkldnn_rnn_layer_backward").flops == 2 * layer.flops


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_fast_path_counts_as_the_layer_outside_it(norm_first):
    b, s, e, heads = 2, 6, 32, 4
    layer = nn.TransformerEncoderLayer(e, heads, 64, batch_first=True, norm_first=norm_first,
                                       activation="gelu").eval()
    x = torch.randn(b, s, e)
    with torch.no_grad():
        fast = profiled(lambda: layer(x))
    slow = profiled(lambda: layer(x))  # grad enabled: torch takes the path of separate ops
    fused = one_row(fast, "aten._transformer_encoder_layer_fwd")
    assert not rows_of(slow, "aten._transformer_encoder_layer_fwd")
    # the same ops, plus q's scaling, which scaled_dot_product_attention does inside its kernel
    assert fused.flops == _total(slow) + b * s * e
    mha = nn.MultiheadAttention(e, heads, batch_first=True).eval()
    with torch.no_grad():
        fast = profiled(lambda: mha(x, x, x))
    slow = profiled(lambda: mha(x, x, x))  # with the weights, q scaled as its own op
    assert one_row(fast, "aten._native_multi_head_attention").flops == _total(slow)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage")  # torch's, bare too
@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")  # torch 2.11's, on its profiler's second use
def test_transformer_fast_path_on_a_padded_batch_counts_what_torch_runs_on_its_nested_tensor():
    """nn.TransformerEncoder in inference with a padding mask packs the batch into a nested tensor;
    torch's fused layer then runs the projections and the feed-forward block on the real tokens, but
    pads q, k and v to the longest sequence for the bias adds, q's scaling and both score matmuls."""
    e, heads, ffn, lengths = 64, 4, 128, (6, 8, 10)
    b, t, n, d = len(lengths), max(lengths), sum(lengths), e // heads
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(e, heads, ffn, batch_first=True), 1,
                                    enable_nested_tensor=True).eval()
    x = torch.randn(b, t, e)
    pad = torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]
    outputs = []
    with torch.no_grad():
        bare = encoder(x, src_key_padding_mask=pad)
        rep = profiled(lambda: outputs.append(encoder(x, src_key_padding_mask=pad)))
        with torch.profiler.profile(record_shapes=True) as prof:
            encoder(x, src_key_padding_mask=pad)
    fused = one_row(rep, "aten._transformer_encoder_layer_fwd")
    assert [r.op for r in rep.rows if not r.counted] == []
    # torch's own record of the layer's matmuls: the projections on the 24 real tokens, the scores
    # padded to [3 x 4 heads, 10, 10]
    first_factor = {"aten::mm": 0, "aten::bmm": 0, "aten::addmm": 1, "aten::_addmm_activation": 1}
    matmuls: dict[str, int] = {}
    for ev in prof.events():
        if ev.name in first_factor:
            a, w = ev.input_shapes[first_factor[ev.name]:first_factor[ev.name] + 2]
            matmuls[ev.name] = matmuls.get(ev.name, 0) + 2 * math.prod(a) * w[-1]
    assert matmuls["aten::bmm"] == 2 * (2 * b * heads * t * t * d)
    assert matmuls["aten::mm"] + matmuls["aten::addmm"] + matmuls["aten::_addmm_activation"] == \
        2 * n * e * (3 * e + e + ffn + ffn)

    # the same layer on each sequence alone (grad enabled: the path of separate ops, nothing padded),
    # plus what the padding adds: q's scaling (which scaled_dot_product_attention does inside its
    # kernel) and the bias adds of q, k and v on every padded row, and both score matmuls over the
    # padded pairs; the softmax covers each sequence's own scores
    alone = sum(_total(profiled(lambda i=i: encoder.layers[0](x[i:i + 1, :lengths[i]])))
                for i in range(b))
    padding = e * b * t + 3 * e * (b * t - n) + 2 * 2 * d * heads * (b * t * t - sum(s * s for s in lengths))
    assert fused.flops == alone + padding
    assert torch.equal(outputs[0], bare)


def test_bilinear_counts_torchs_unrolled_contraction_by_hand():
    """nn.Bilinear runs aten._trilinear (Linear.cpp): for each of the O outputs, x1 [N, I1] times the
    weight's slice [I1, I2] summed over I1 (a matmul), that times x2 summed over I2 (a dot per
    row), added into its output column."""
    n, i1, i2, o = 4, 5, 7, 3
    layer = nn.Bilinear(i1, i2, o)
    x1, x2 = torch.randn(n, i1, requires_grad=True), torch.randn(n, i2, requires_grad=True)
    rep = profiled(lambda: layer(x1, x2).sum().backward())
    assert one_row(rep, "aten._trilinear", "forward").flops == o * (2 * n * i1 * i2 + 2 * n * i2 + n)
    # backward, three more contractions, each unrolled over the O outputs:
    # x1's gradient: grad[:, k] times the weight slice (N x I1 x I2 products), summed with x2 over I2
    # (a multiply-add each), the whole [N, I1] result added per k
    # x2's gradient: x1 times the slice summed over I1, times grad[:, k] (N x I2), [N, I2] added per k
    # the weight's gradient: x1 times grad[:, k] (N x I1), times x2 summed over N, its [I1, I2] slice added
    backward = o * ((n * i1 * i2 + 2 * n * i1 * i2 + n * i1) + (2 * n * i1 * i2 + n * i2 + n * i2)
                    + (n * i1 + 2 * n * i1 * i2 + i1 * i2))
    assert sum(r.flops or 0 for r in rows_of(rep, "aten._trilinear", "backward")) == backward


def test_fft_counts_5_n_log2_n_per_complex_transform():
    x = torch.randn(3, 64)
    rep = profiled(lambda: torch.fft.rfft(x))
    assert one_row(rep, "aten._fft_r2c").flops == 3 * 2.5 * 64 * 6  # half a complex transform
    z = torch.randn(2, 8, 8, dtype=torch.complex64)
    rep = profiled(lambda: torch.fft.fft2(z, norm="ortho"))
    # one 64-point transform per 8 x 8 plane, and a scale per output element
    assert one_row(rep, "aten._fft_c2c").flops == 2 * 5 * 64 * 6 + 2 * 64
    y = torch.randn(4, 33, dtype=torch.complex64)
    rep = profiled(lambda: torch.fft.irfft(y, n=64))
    assert one_row(rep, "aten._fft_c2r").flops == 4 * 2.5 * 64 * 6 + 4 * 64  # "backward": scaled by 1/n


def test_grid_sampling_and_resampling_by_hand():
    n, c, h, w, ho, wo = 2, 3, 8, 8, 6, 5
    x = torch.randn(n, c, h, w, requires_grad=True)
    theta = torch.randn(n, 2, 3, requires_grad=True)
    rep = profiled(lambda: F.grid_sample(x, F.affine_grid(theta, [n, c, ho, wo], align_corners=False),
                                         align_corners=False).sum().backward())
    # each location's (x, y) = theta [2, 3] @ (u, v, 1): 6 multiply-adds
    assert one_row(rep, "aten.affine_grid_generator").flops == n * ho * wo * 2 * 3 * 2
    out = n * c * ho * wo
    assert one_row(rep, "aten.grid_sampler_2d").flops == 2 * 4 * out  # 4 neighbours blended
    # to the input: each gradient spread over its 4 neighbours; to the grid: each neighbour's value
    # times its weight's derivative along x and along y
    assert one_row(rep, "aten.grid_sampler_2d_backward").flops == 2 * 4 * out * (1 + 2)
    grid = torch.rand(n, ho, wo, 2) * 2 - 1
    assert flops_apart("aten.grid_sampler_2d", lambda: F.grid_sample(x, grid, mode="nearest", align_corners=False),
                       lambda: F.grid_sample(x, grid, mode="bicubic", align_corners=False)) == [0, 2 * 16 * out]
    small = torch.randn(1, 2, 4, 4, requires_grad=True)
    rep = profiled(lambda: (F.interpolate(small, scale_factor=2, mode="bicubic").sum()
                            + F.interpolate(small, scale_factor=2, mode="bilinear").sum()).backward())
    # bicubic blends a 4 x 4 neighbourhood, bilinear 2 x 2; their backward spreads each gradient back
    assert one_row(rep, "aten.upsample_bicubic2d").flops == 2 * 16 * 2 * 8 * 8
    assert one_row(rep, "aten.upsample_bicubic2d_backward").flops == 2 * 16 * 2 * 8 * 8
    assert one_row(rep, "aten.upsample_bilinear2d_backward").flops == 2 * 4 * 2 * 8 * 8


def test_padding_backward_adds_each_padded_gradient_once():
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    rep = profiled(lambda: F.pad(x, (1, 2, 1, 1), mode="reflect").sum().backward())
    padded = 3 * (8 + 2) * (8 + 3)
    assert one_row(rep, "aten.reflection_pad2d_backward").flops == padded - 3 * 8 * 8


def test_weight_norm_by_hand():
    conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 6, 3), dim=0)
    x = torch.randn(1, 4, 10)
    rep = profiled(lambda: conv(x).sum().backward())
    v = 6 * 4 * 3  # norms over each output channel's 12 weights
    assert one_row(rep, "aten._weight_norm_interface").flops == 3 * v + 2 * 6
    assert one_row(rep, "aten._weight_norm_interface_backward").flops == 5 * v + 3 * 6


def test_dense_linear_algebra_by_lapack_counts():
    n, k = 16, 3
    a = torch.randn(n, n)
    spd = a @ a.T + n * torch.eye(n)
    # values only, as a bare run's eigvalsh asks for them (under a dispatch mode torch asks for vectors)
    rep = profiled(lambda: (torch.linalg.cholesky(spd), torch.linalg.solve(spd, torch.randn(n, k)),
                            torch.linalg.inv(spd), torch.linalg.qr(a), torch.linalg.svd(a, full_matrices=False)))
    lu = n**3 - n**3 / 3  # m n^2 - n^3 / 3 at m = n
    assert one_row(rep, "aten.linalg_cholesky_ex").flops == round(n**3 / 3)
    assert one_row(rep, "aten._linalg_solve_ex").flops == round(lu + 2 * n * n * k)
    assert one_row(rep, "aten.linalg_inv_ex").flops == 2 * n**3
    assert flops_apart("aten._linalg_eigh", lambda: torch.linalg.eigh(spd),
                       lambda: torch.ops.aten._linalg_eigh(spd, "L", False)) == [round(4 * n**3 / 3), 9 * n**3]
    assert one_row(rep, "aten.linalg_qr").flops == round(2 * (2 * n**3 - 2 * n**3 / 3))  # R, then Q
    assert one_row(rep, "aten._linalg_svd").flops == 22 * n**3  # Golub-Kahan-Reinsch, square


def test_search_selection_and_distances_by_hand():
    bins = torch.sort(torch.randn(32)).values
    x = torch.randn(4, 33)
    rep = profiled(lambda: (torch.searchsorted(bins, torch.randn(4, 10)), x.median(dim=1), torch.cummax(x, 1)))
    assert one_row(rep, "aten.searchsorted").flops == 40 * math.ceil(math.log2(33))  # a binary search each
    assert one_row(rep, "aten.median").flops == 4 * 33
    assert one_row(rep, "aten.cummax").flops == 4 * 33
    x1, x2 = torch.randn(2, 10, 8), torch.randn(2, 12, 8)
    rep = profiled(lambda: (torch.cdist(x1, x2), torch.cdist(x1, x2, compute_mode="use_mm_for_euclid_dist")))
    pairs = 2 * 10 * 12
    # per pair and feature: difference, square, add; a root per pair
    assert one_row(rep, "aten._cdist_forward").flops == 3 * pairs * 8 + pairs
    # |x|^2 + |y|^2 - 2 x.y: the squared norms, -2 x, a matmul over 8 + 2 columns, clamp and root
    assert one_row(rep, "aten._euclidean_dist").flops == (2 * pairs * 10 + 2 * 8 * (20 + 24) + 2 * 10 * 8
                                                          + 2 * pairs)


@pytest.mark.xfail(strict=True, reason="torch computes vectors for values-only linalg under any dispatch mode "
                                       "(README, Known limits)")
def test_values_only_linalg_is_bit_identical():
    a = torch.randn(16, 12)
    bare = torch.linalg.svdvals(a), torch.linalg.eigvalsh(a.T @ a)
    with memwall.profile(summary=False):
        seen = torch.linalg.svdvals(a), torch.linalg.eigvalsh(a.T @ a)
    assert all(torch.equal(x, y) for x, y in zip(bare, seen, strict=True))


def test_batch_norm_forms_of_compiled_graphs_count_as_eager_batch_norm():
    x, w, b = torch.randn(4, 3, 5, 5), torch.ones(3), torch.zeros(3)

    def stats():
        return torch.zeros(3), torch.ones(3)

    eager = [profiled(lambda: F.batch_norm(x, *stats(), w, b, training=True)),
             profiled(lambda: F.batch_norm(x, *stats(), w, b, training=False))]
    graphs = profiled(lambda: (torch.ops.aten._batch_norm_with_update(x, w, b, *stats(), 0.1, 1e-5),
                               torch.ops.aten._batch_norm_no_update(x, w, b, *stats(), 0.1, 1e-5)))
    assert sorted(r.flops for rep in eager for r in rows_of(rep, "aten.native_batch_norm")
                  + rows_of(rep, "aten._native_batch_norm_legit_no_training")) == sorted(
        [one_row(graphs, "aten._batch_norm_with_update").flops, one_row(graphs, "aten._batch_norm_no_update").flops])
    # training: normalise (5) and the affine weight and bias per element; inference: subtract and scale
    assert one_row(graphs, "aten._batch_norm_with_update").flops == (5 + 2) * x.numel()
    assert one_row(graphs, "aten._batch_norm_no_update").flops == (2 + 2) * x.numel()
    scores = torch.randn(2, 4, 6)
    rep = profiled(lambda: torch._masked_softmax(scores, torch.zeros(2, 4, 6, dtype=torch.bool), 2, 0))
    assert one_row(rep, "aten._masked_softmax").flops == (1 + 5) * 48  # the mask, then softmax's 5


def test_compiled_regions_holding_inductors_own_prims_are_counted():
    """Inductor decomposes flip into prims.rev and a max pool into prims' offset-based pool: a region
    holding one was uncounted whole."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.max_pool2d(torch.relu(self.conv(x)), 2)
            return (y.flip(-1) * y).softmax(-1).sum()

    torch._dynamo.reset()
    try:
        net, x = Net(), torch.randn(2, 3, 16, 16)
        compiled = torch.compile(net)
        compiled(x).backward()
        rep = profiled(lambda: compiled(x).backward())
        eager = profiled(lambda: net(x).backward())
    finally:
        torch._dynamo.reset()
    assert not rep.uncounted, [r.name for r in rep.uncounted]
    fused: dict[str, int] = {}
    for row in rep.rows:
        for op, _, flops, _ in row.eager_ops:
            fused[op] = fused.get(op, 0) + (flops or 0)
    # the pool inside the region counts as the eager pool: one compare per window element
    pool = one_row(eager, "aten.max_pool2d_with_indices").flops
    assert fused["aten.max_pool2d_with_indices"] == pool == 2 * 8 * 8 * 8 * 4


def test_ctc_loss_counts_its_lattice():
    steps, batch, classes, length = 12, 2, 6, 3
    log_probs = torch.randn(steps, batch, classes).log_softmax(-1).requires_grad_()
    targets = torch.randint(1, classes, (batch, length))
    lengths, target_lengths = torch.full((batch,), steps), torch.full((batch,), length)
    rep = profiled(lambda: F.ctc_loss(log_probs, targets, lengths, target_lengths).backward())
    cells = steps * batch * (2 * length + 1)  # blanks around and between the labels
    # per cell: the log of a sum of three predecessors' exps, plus the emission
    assert one_row(rep, "aten._ctc_loss").flops == 13 * cells
    # beta as alpha, alpha + beta into each label's gradient, then per log-probability the gradient
    assert one_row(rep, "aten._ctc_loss_backward").flops == (13 + 8) * cells + 5 * log_probs.numel()
    assert not rep.uncounted
    # the summary says the count is an upper bound where sequences are shorter than their padding
    assert any(f.startswith("how _ctc_loss") and "upper bound" in f for f in findings(rep))
    flat = profiled(lambda: F.ctc_loss(log_probs, targets.flatten(), lengths, target_lengths))
    assert one_row(flat, "aten._ctc_loss").flops == 13 * steps * (2 * batch * length + batch)


def test_embedding_bag_backward_by_hand():
    bag = nn.EmbeddingBag(50, 8, mode="sum")
    indices, offsets = torch.randint(0, 50, (20,)), torch.tensor([0, 5, 12])
    weights = torch.rand(20, requires_grad=True)
    rep = profiled(lambda: bag(indices, offsets, per_sample_weights=weights).sum().backward())
    # each of the 20 indices' rows receives its bag's gradient, scaled by its weight
    assert one_row(rep, "aten._embedding_bag_backward").flops == 20 * 8 * 2
    # each weight's gradient: its bag's gradient . its row
    assert one_row(rep, "aten._embedding_bag_per_sample_weights_backward").flops == 2 * 20 * 8


def test_embedding_reads_at_most_its_table_as_the_gathers_do():
    # a 100 x 32 fp32 table looked up 10,000 times: every row of the table is read at most once
    # (compulsory traffic), as index_select's source: 12,800 B of table, never 10,000 rows' 1,280,000 B
    table, lookups, dim, bags = 100, 10_000, 32, 1_000
    weight, indices = torch.randn(table, dim), torch.randint(0, table, (lookups,))
    offsets = torch.arange(0, lookups, lookups // bags)
    table_bytes, index_bytes, offset_bytes = table * dim * 4, lookups * 8, bags * 8  # 12,800, 80,000, 8,000
    gathered = profiled(lambda: weight.index_select(0, indices))
    looked_up = profiled(lambda: F.embedding(indices, weight))
    assert torch.equal(weight.index_select(0, indices), F.embedding(indices, weight))
    assert one_row(gathered, "aten.index_select").bytes_read == index_bytes + table_bytes == 92_800
    assert one_row(looked_up, "aten.embedding").bytes_read == index_bytes + table_bytes  # was 1,360,000
    assert one_row(looked_up, "aten.embedding").bytes_written == lookups * dim * 4
    # EmbeddingBag, inference (`_embedding_bag_forward_only`) and training (`_embedding_bag`): the
    # table at most, the indices and the offsets (was 1,368,000: every lookup's row)
    bag_reads = index_bytes + table_bytes + offset_bytes
    assert bag_reads == 100_800
    inference = profiled(lambda: F.embedding_bag(indices, weight, offsets, mode="sum"))
    assert one_row(inference, "aten._embedding_bag_forward_only").bytes_read == bag_reads
    trained = weight.clone().requires_grad_()
    training = profiled(lambda: F.embedding_bag(indices, trained, offsets, mode="sum"))
    assert one_row(training, "aten._embedding_bag").bytes_read == bag_reads
    # fewer lookups than rows: only the 400 rows looked up, not the 20,000-row table
    big, few = torch.randn(20_000, dim), torch.randint(0, 20_000, (400,))
    assert one_row(profiled(lambda: F.embedding(few, big)), "aten.embedding").bytes_read == 400 * 8 + 400 * dim * 4


def test_embedding_bag_weights_gradient_reads_only_the_gathered_rows():
    # the per-sample weights' gradient: weight i's is its bag's gradient . its index's row, so it
    # gathers 400 rows of the 20,000-row table (51,200 B), not the whole table (2,560,000 B)
    rows, dim, lookups, bags = 20_000, 32, 400, 50
    weight, indices = torch.randn(rows, dim), torch.randint(0, rows, (lookups,))
    offsets = torch.arange(0, lookups, lookups // bags)
    offset2bag = torch.arange(lookups) // (lookups // bags)  # each index's bag
    grad = torch.randn(bags, dim)
    op = torch.ops.aten._embedding_bag_per_sample_weights_backward
    got = op(grad, weight, indices, offsets, offset2bag, 0)
    assert torch.allclose(got, (grad[offset2bag] * weight[indices]).sum(-1), atol=1e-5)
    row = one_row(profiled(lambda: op(grad, weight, indices, offsets, offset2bag, 0)),
                  "aten._embedding_bag_per_sample_weights_backward")
    # grad 6,400 + the gathered rows 51,200 + indices 3,200 + offsets 400 + offset2bag 3,200
    assert row.bytes_read == bags * dim * 4 + lookups * dim * 4 + lookups * 8 + bags * 8 + lookups * 8 == 64_400
    assert row.bytes_written == lookups * 4
    assert row.flops == 2 * lookups * dim  # a multiply-add per row element


@pytest.mark.parametrize("mode, kwargs, expected", [
    ("sum", {}, 400 * 32),  # an add per gathered element: n D
    ("sum", {"per_sample_weights": True}, 2 * 400 * 32),  # w_i x row_i, then the add: 2 n D (was n D)
    ("mean", {}, 400 * 32 + 50 * 32),  # the sum's adds, then each of the B x D outputs divided (was n D)
    ("mean", {"include_last_offset": True}, 400 * 32 + 50 * 32),  # the same 50 bags, closed by a 51st offset
    ("max", {}, 400 * 32),  # a compare per gathered element, as max reductions count per element read
])
def test_embedding_bag_forward_by_hand(mode, kwargs, expected):
    # n = 400 indices into a 1,000 x 32 table (D = 32), B = 50 bags of 8
    n, bags, dim = 400, 50, 32
    weight, indices = torch.randn(1000, dim), torch.randint(0, 1000, (n,))
    offsets = torch.arange(0, n + (1 if kwargs.get("include_last_offset") else 0), n // bags)
    if kwargs.get("per_sample_weights"):
        kwargs = {**kwargs, "per_sample_weights": torch.rand(n)}
    out = F.embedding_bag(indices, weight, offsets, mode=mode, **kwargs)
    # what torch computes: mean is the sum divided per output element by its bag's size (8);
    # with weights, each row is scaled before the sum
    rows = weight[indices].view(bags, n // bags, dim)
    if "per_sample_weights" in kwargs:
        rows = rows * kwargs["per_sample_weights"].view(bags, n // bags, 1)
    reference = {"sum": rows.sum(1), "mean": rows.sum(1) / (n // bags), "max": rows.amax(1)}[mode]
    assert torch.allclose(out, reference, atol=1e-5)
    rep = profiled(lambda: F.embedding_bag(indices, weight, offsets, mode=mode, **kwargs))
    assert one_row(rep, "aten._embedding_bag_forward_only").flops == expected


@pytest.mark.filterwarnings("ignore:index_reduce\\(\\) is in beta")
@pytest.mark.parametrize("include_self", [True, False])
def test_scatter_and_index_reduce_mean_divide_every_output_element(include_self):
    # 1,000 source rows of 16 combined into a 50 x 16 output: one add (multiply, compare) per
    # source element, 16,000; mean then divides each of the output's 800 elements by its count
    # (torch: out.div_(count) over the whole output, count 1 where no index lands)
    out_rows, src_rows, dim = 50, 1000, 16
    index = torch.randint(0, out_rows - 5, (src_rows,))  # the last 5 rows receive nothing
    src, base = torch.randn(src_rows, dim), torch.randn(out_rows, dim)
    index2d = index.unsqueeze(1).repeat(1, dim)  # a materialised index: torch's general path
    combined, divides = src_rows * dim, out_rows * dim
    count = torch.zeros(out_rows).index_add_(0, index, torch.ones(src_rows)) + (1 if include_self else 0)
    total = torch.zeros(out_rows, dim).index_add_(0, index, src) + (base if include_self else 0)
    # a row no index names keeps self's value (divided by 1), with include_self or without
    by_hand = torch.where(count[:, None] > 0, total / count.clamp(min=1)[:, None], base)
    scatter = base.scatter_reduce(0, index2d, src, "mean", include_self=include_self)
    assert torch.allclose(scatter, by_hand, atol=1e-5)
    assert torch.allclose(base.index_reduce(0, index, src, "mean", include_self=include_self), by_hand, atol=1e-5)
    expected = {"mean": combined + divides, "prod": combined, "amax": combined, "amin": combined, "sum": combined}
    for reduce, flops in expected.items():
        rep = profiled(lambda r=reduce: base.scatter_reduce(0, index2d, src, r, include_self=include_self))
        assert one_row(rep, "aten.scatter_reduce").flops == flops, reduce  # mean was 16,000
        if reduce != "sum":  # index_reduce has no sum (index_add is it)
            rep = profiled(lambda r=reduce: base.index_reduce(0, index, src, r, include_self=include_self))
            assert one_row(rep, "aten.index_reduce").flops == flops, reduce
    in_place = profiled(lambda: base.clone().scatter_reduce_(0, index2d, src, "mean", include_self=include_self))
    assert one_row(in_place, "aten.scatter_reduce_").flops == combined + divides
    # an index expanded over the row (PyG's message passing) takes torch's row-wise CPU path, which
    # divides only the 45 rows some index names: counted as the whole output, an upper bound
    expanded = profiled(lambda: base.scatter_reduce(0, index[:, None].expand(src_rows, dim), src, "mean",
                                                    include_self=include_self))
    assert one_row(expanded, "aten.scatter_reduce").flops == combined + divides

def test_functional_fused_optimizer_steps_count_as_the_in_place_ones():
    params, grads = [torch.randn(10, 10), torch.randn(7)], [torch.randn(10, 10), torch.randn(7)]

    def state():
        return [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], [], \
            [torch.tensor(1.0) for _ in params]

    kwargs = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8, amsgrad=False, maximize=False)
    rep = profiled(lambda: (torch._fused_adamw_([p.clone() for p in params], grads, *state(), **kwargs),
                            torch.ops.aten._fused_adamw([p.clone() for p in params], grads, *state(), **kwargs)))
    assert one_row(rep, "aten._fused_adamw").flops == one_row(rep, "aten._fused_adamw_").flops == 14 * 107


def _meta_count(op, args: tuple, out: tuple) -> int | None:
    """What memwall counts for one call of `op` with these (meta) arguments and results."""
    call = build_call(op, tuple(signature(a) for a in args), {}, tuple(signature(o) for o in out), device="cuda")
    return REGISTRY.count(call).flops


def _cudnn_rnn_flops(mode: int, gates: int, inputs: int, hidden: int, layers: int, bidirectional: bool,
                     steps: int, batch: int) -> int | None:
    """What memwall counts for the one cuDNN op that runs an nn.LSTM, nn.GRU or nn.RNN on a GPU,
    from the call's arguments as torch passes them (weights per layer and direction: w_ih, w_hh,
    b_ih, b_hh); sized on the meta device, as no GPU runs it here."""
    directions = 2 if bidirectional else 1
    weights = []
    for layer in range(layers):
        for _ in range(directions):
            width = inputs if layer == 0 else hidden * directions
            weights += [torch.empty(gates * hidden, width, device="meta"),
                        torch.empty(gates * hidden, hidden, device="meta"),
                        torch.empty(gates * hidden, device="meta"), torch.empty(gates * hidden, device="meta")]
    x = torch.empty(steps, batch, inputs, device="meta")
    hx = torch.empty(layers * directions, batch, hidden, device="meta")
    args = (x, weights, 4, None, hx, hx if mode == 2 else None, mode, hidden, 0, layers, False, 0.0, True,
            bidirectional, [], None)
    out = (torch.empty(steps, batch, hidden * directions, device="meta"), hx, hx, torch.empty(1, device="meta"),
           torch.empty(1, device="meta"))
    return _meta_count(torch.ops.aten._cudnn_rnn.default, args, out)


@pytest.mark.parametrize("cls, mode, gates", [(nn.LSTM, 2, 4), (nn.GRU, 3, 3), (nn.RNN, 1, 1)],
                         ids=["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
def test_cudnn_rnn_counts_as_the_same_layers_run_on_cpu(cls, mode, gates, layers, bidirectional):
    """On CPU an LSTM runs as oneDNN layers (held to its cell above) and a GRU or RNN as separate
    matmuls and elementwise ops; on a GPU each runs as one cuDNN op, which must count the same."""
    steps, batch, inputs, hidden = 5, 3, 8, 16
    module = cls(inputs, hidden, num_layers=layers, bidirectional=bidirectional)
    x = torch.randn(steps, batch, inputs)
    with torch.no_grad():
        on_cpu = profiled(lambda: module(x))
    assert not on_cpu.uncounted
    fused = _cudnn_rnn_flops(mode, gates, inputs, hidden, layers, bidirectional, steps, batch)
    assert fused == _total(on_cpu)


def test_sync_batch_norm_counts_as_batch_norm_plus_combining_the_ranks():
    """SyncBatchNorm (CUDA only) splits batch norm into per-rank statistics, their combination
    over the ranks, and the elementwise normalisation; together they must count what batch norm
    counts on one process (held to hand counts in test_formulas.py), plus the combination."""
    n, c, h, w, ranks = 4, 3, 5, 5, 8
    x = torch.randn(n, c, h, w, requires_grad=True)
    bn = nn.BatchNorm2d(c)
    eager = profiled(lambda: bn(x).sum().backward())
    forward = one_row(eager, "aten.native_batch_norm").flops
    backward = one_row(eager, "aten.native_batch_norm_backward").flops

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    xm, per_channel, gathered = meta(n, c, h, w), meta(c), meta(ranks, c)
    aten = torch.ops.aten
    stats = _meta_count(aten.batch_norm_stats.default, (xm, 1e-5), (per_channel, per_channel))
    combine = _meta_count(aten.batch_norm_gather_stats_with_counts.default,
                          (xm, gathered, gathered, per_channel, per_channel, 0.1, 1e-5, meta(ranks)),
                          (per_channel, per_channel))
    elemt = _meta_count(aten.batch_norm_elemt.default, (xm, per_channel, per_channel, per_channel, per_channel, 1e-5),
                        (xm,))
    assert combine == 3 * ranks * c  # a weighted mean and variance per rank and channel
    assert stats + elemt == forward
    reduce = _meta_count(aten.batch_norm_backward_reduce.default,
                         (xm, xm, per_channel, per_channel, per_channel, True, True, True),
                         (per_channel, per_channel, per_channel, per_channel))
    elemt_backward = _meta_count(aten.batch_norm_backward_elemt.default,
                                 (xm, xm, per_channel, per_channel, per_channel, per_channel, per_channel,
                                  meta(ranks)), (xm,))
    assert reduce + elemt_backward == backward


@pytest.mark.parametrize("causal", [False, True])
def test_cudnn_attentions_own_op_counts_as_sdpas_cudnn_backend(causal):
    """SDPA's cuDNN backend (a GPU's) calls the kernel's own op: both must count the same scores."""
    b, h, s, d = 2, 4, 64, 16

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    q, lse, seed = meta(b, h, s, d), meta(b, h, s), meta(2)
    aten = torch.ops.aten
    sdpa = _meta_count(aten._scaled_dot_product_cudnn_attention.default, (q, q, q, None, True, 0.0, causal, False),
                       (q, lse, seed, seed, 0, 0, seed, seed, seed))
    own = _meta_count(aten._cudnn_attention_forward.default, (q, q, q, None, None, None, s, s, True, 0.0, causal),
                      (q, lse, seed, seed, s, s, seed, seed, seed))
    assert own == sdpa
    sdpa_backward = _meta_count(aten._scaled_dot_product_cudnn_attention_backward.default,
                                (q, q, q, q, q, lse, seed, seed, q, seed, seed, s, s, 0.0, causal), (q, q, q))
    own_backward = _meta_count(aten._cudnn_attention_backward.default,
                               (q, q, q, q, q, lse, seed, seed, q, seed, seed, s, s, 0.0, causal), (q, q, q))
    assert own_backward == sdpa_backward


def test_weight_only_quantized_matmuls_by_hand():
    m, k, n = 4, 64, 32
    x = torch.randn(m, k)
    int8 = torch.randint(-128, 127, (n, k), dtype=torch.int8)
    int4 = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
    scales_and_zeros = torch.rand(k // 32, n, 2)
    rep = profiled(lambda: (torch.ops.aten._weight_int8pack_mm(x, int8, torch.rand(n)),
                            torch.ops.aten._weight_int4pack_mm_for_cpu(x, int4, 32, scales_and_zeros)))
    # the matmul, then each output scaled by its channel's scale
    assert one_row(rep, "aten._weight_int8pack_mm").flops == 2 * m * k * n + m * n
    # the matmul, with each int4 weight dequantised once: its group's scale and zero point
    assert one_row(rep, "aten._weight_int4pack_mm_for_cpu").flops == 2 * m * k * n + 2 * k * n


def test_transformers_grouped_mm_custom_op_counts_as_its_matmuls_per_expert():
    # transformers runs its experts as this custom op under torch.compile (fp32, fp16 weights),
    # where the op is one kernel call; its own implementation is a torch.mm per expert over that
    # expert's rows (and two per expert backward): run that implementation eagerly, as plain ops,
    # and the custom op must count what its mm calls do
    moe = transformers_moe()
    torch.manual_seed(0)
    x = torch.randn(12, 8, requires_grad=True)
    w = torch.randn(3, 8, 6, requires_grad=True)
    offs = torch.tensor([4, 9, 12])  # experts of 4, 5 and 3 rows
    with memwall.profile(summary=False) as whole:
        torch.ops.transformers.grouped_mm_fallback(x, w, offs).sum().backward()
    with memwall.profile(summary=False) as forward_parts:
        out = moe._grouped_mm_fallback(x.detach(), w.detach(), offs)
    rep = whole.report()
    assert rep.uncounted == ()
    assert {r.op for r in forward_parts.report().rows if r.flops} == {"aten.mm"}

    def mm(part: memwall.profile) -> int:
        return sum(r.flops for r in part.report().rows if r.op == "aten.mm")

    assert one_row(rep, "transformers.grouped_mm_fallback").flops == mm(forward_parts) == 2 * 12 * 8 * 6
    if not hasattr(moe, "_grouped_mm_fallback_bwd"):
        # before transformers 5.23 the backward is no op of its own: Python (autograd's) calling
        # torch.mm per expert, for the input's gradient and the weights'
        assert not rows_of(rep, "transformers.grouped_mm_fallback_backward")
        assert sum(r.flops for r in rows_of(rep, "aten.mm", "backward")) == 2 * (2 * 12 * 8 * 6)
        return
    with memwall.profile(summary=False) as backward_parts:
        moe._grouped_mm_fallback_bwd(x.detach(), w.detach(), offs, torch.ones_like(out))
    assert {r.op for r in backward_parts.report().rows if r.flops} == {"aten.mm"}
    assert one_row(rep, "transformers.grouped_mm_fallback_backward").flops == mm(backward_parts) == 2 * (2 * 12 * 8 * 6)
