"""FLOP formulas against hand-derived counts (2 FLOPs per multiply-add) and torch's FlopCounterMode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import flops_apart, one_row, profiled, rows_of, transformers_moe_or_none
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import memwall_plugin as memwall
from memwall_plugin.formulas import ELEMENTWISE, REDUCTIONS, REGISTRY


def test_mm_and_addmm():
    a, b, bias = torch.randn(32, 64), torch.randn(64, 16), torch.randn(16)
    rep = profiled(lambda: (a @ b, torch.addmm(bias, a, b)))
    assert one_row(rep, "aten.mm").flops == 2 * 32 * 64 * 16
    # the matmul plus one bias add per output element
    assert one_row(rep, "aten.addmm").flops == 2 * 32 * 64 * 16 + 32 * 16


def test_bmm_and_baddbmm_and_mv():
    a, b = torch.randn(4, 8, 16), torch.randn(4, 16, 5)
    m, v = torch.randn(7, 9), torch.randn(9)
    rep = profiled(lambda: (a @ b, torch.baddbmm(torch.randn(4, 8, 5), a, b), torch.mv(m, v)))
    assert one_row(rep, "aten.bmm").flops == 2 * 4 * 8 * 16 * 5
    assert one_row(rep, "aten.baddbmm").flops == 2 * 4 * 8 * 16 * 5 + 4 * 8 * 5
    assert one_row(rep, "aten.mv").flops == 2 * 7 * 9


def test_counts_repeat_over_calls():
    a, b = torch.randn(8, 8), torch.randn(8, 8)

    def work():
        for _ in range(10):
            a @ b

    row = one_row(profiled(work), "aten.mm")
    assert row.calls == 10
    assert row.flops == 10 * 2 * 8 * 8 * 8


@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_forward_and_backward(bias):
    n, c_in, c_out, h, w, k = 2, 3, 8, 16, 16, 3
    conv = torch.nn.Conv2d(c_in, c_out, k, padding=1, bias=bias)
    x = torch.randn(n, c_in, h, w, requires_grad=True)
    rep = profiled(lambda: conv(x).sum().backward())
    macs = n * c_out * h * w * c_in * k * k  # output pixels x filter size
    fwd = one_row(rep, "aten.convolution")
    assert fwd.flops == 2 * macs + (n * c_out * h * w if bias else 0)
    bwd = one_row(rep, "aten.convolution_backward")
    # grad_input and grad_weight are each as large as the forward; grad_bias sums grad_output
    assert bwd.flops == 2 * (2 * macs) + (n * c_out * h * w if bias else 0)


def test_grouped_and_transposed_conv():
    x = torch.randn(1, 8, 10, 10)
    grouped = torch.nn.Conv2d(8, 8, 3, groups=4, bias=False)
    up = torch.nn.ConvTranspose2d(8, 4, 2, stride=2, bias=False)
    rep = profiled(lambda: (grouped(x), up(x)))
    convs = {r.shapes: r.flops for r in rows_of(rep, "aten.convolution")}
    assert convs["[1, 8, 10, 10] x [8, 2, 3, 3]"] == 2 * (8 * 8 * 8) * 2 * 9  # c_in/groups = 2
    # transposed: every input pixel scatters into c_out channels over the 2x2 kernel
    assert convs["[1, 8, 10, 10] x [8, 4, 2, 2]"] == 2 * (10 * 10) * 8 * 4 * 4


def test_fused_attention_forward_and_backward():
    b, h, s, d = 2, 4, 32, 16
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    rep = profiled(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward())
    scores = b * h * s * s
    fwd = one_row(rep, "aten._scaled_dot_product_flash_attention_for_cpu")
    # q k^T and P v, each 2 FLOPs per multiply-add, plus softmax at 5 per score
    assert fwd.flops == 2 * scores * d + 2 * scores * d + 5 * scores
    bwd = one_row(rep, "aten._scaled_dot_product_flash_attention_for_cpu_backward")
    # recomputed q k^T, dV, dP, dQ, dK (5 matmuls), softmax recompute and backward, rowsum(dO*O)
    assert bwd.flops == 5 * 2 * scores * d + 5 * scores + 4 * scores + 2 * b * h * s * d


def test_attention_matmuls_agree_with_flop_counter_mode():
    q = torch.randn(1, 12, 128, 64)
    # FlopCounterMode (torch 2.13) has no formula for the CPU flash kernel and would count 0;
    # on the math backend it counts the two bmm's, which memwall's fused formula must equal.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, q, q)
    rep = profiled(lambda: F.scaled_dot_product_attention(q, q, q))
    softmax = 5 * 12 * 128 * 128
    assert counter.get_total_flops() == 2 * 2 * 12 * 128 * 128 * 64
    assert rep.total_flops - softmax == counter.get_total_flops()


def test_norms_softmax_activations():
    x = torch.randn(4, 10, 32)
    ln = torch.nn.LayerNorm(32)
    rep = profiled(lambda: (ln(x), x.softmax(-1), torch.relu(x), torch.sigmoid(x), x.sum(-1), x.var(-1)))
    n = x.numel()
    assert one_row(rep, "aten.native_layer_norm").flops == 5 * n + 2 * n  # normalise + affine
    assert one_row(rep, "aten._softmax").flops == 5 * n
    gelus = flops_apart("aten.gelu", lambda: F.gelu(x), lambda: F.gelu(x, approximate="tanh"))
    assert gelus == [5 * n, 9 * n]  # erf form, tanh approximation
    assert one_row(rep, "aten.relu").flops == n
    assert one_row(rep, "aten.sigmoid").flops == 4 * n
    assert one_row(rep, "aten.sum").flops == n
    assert one_row(rep, "aten.var").flops == 3 * n


def test_elementwise_broadcast_counts_output_elements():
    x, b = torch.randn(64, 128), torch.randn(128)
    row = one_row(profiled(lambda: x + b), "aten.add")
    assert row.flops == 64 * 128


def test_cross_entropy_counts_log_softmax_and_nll():
    logits, target = torch.randn(8, 100, requires_grad=True), torch.randint(0, 100, (8,))
    rep = profiled(lambda: F.cross_entropy(logits, target).backward())
    assert one_row(rep, "aten._log_softmax").flops == 5 * 800
    assert one_row(rep, "aten.nll_loss_forward").flops == 2 * 8
    assert one_row(rep, "aten.nll_loss_backward").flops == 2 * 8
    assert one_row(rep, "aten._log_softmax_backward_data").flops == 4 * 800


def test_data_movement_is_zero_flops_but_moves_bytes():
    x = torch.randn(16, 32)
    rep = profiled(lambda: (torch.cat([x, x]), x.clone(), x.t().contiguous()))
    for op in ("aten.cat", "aten.clone"):
        for row in rows_of(rep, op):
            assert row.flops == 0
            assert row.bytes > 0


def test_foreach_ops_count_every_list_element():
    params = [torch.randn(10, 10), torch.randn(7)]
    others = [torch.randn(10, 10), torch.randn(7)]
    rep = profiled(lambda: (torch._foreach_add_(params, others),
                            torch._foreach_addcmul_(params, others, others, value=0.5)))
    assert one_row(rep, "aten._foreach_add_").flops == 107
    assert one_row(rep, "aten._foreach_addcmul_").flops == 3 * 107


def test_uncounted_op_is_reported_not_zero():
    registry = memwall.default_registry().copy()
    registry._flops.pop("aten.mm")  # pretend the formula is missing
    a = torch.randn(4, 4)
    with memwall.profile(registry=registry, summary=False) as prof:
        a @ a
    rep = prof.report()
    row = one_row(rep, "aten.mm")
    assert row.flops is None
    assert row in rep.uncounted
    assert row.bytes == 3 * 16 * 4  # bytes are still counted
    assert rep.coverage < 1.0


def test_registry_rejects_duplicates_and_protects_the_default():
    registry = memwall.default_registry().copy()
    with pytest.raises(memwall.RegistryError, match="already registered"):
        registry.add_flops("aten.mm", lambda call: 0)
    with pytest.raises(memwall.RegistryError, match="read-only"):
        memwall.default_registry().add_flops("aten.my_op", lambda call: 0)

    @registry.flops("mylib.fancy")
    def fancy(call):
        return 7

    assert registry.flop_formula("mylib.fancy", "default") is fancy


def test_custom_formula_for_a_custom_op():
    lib = torch.library.Library("memwall_test", "DEF")
    lib.define("scale(Tensor x) -> Tensor")
    lib.impl("scale", lambda x: x * 3, "CPU")
    x = torch.randn(5, 6)
    rep = profiled(lambda: torch.ops.memwall_test.scale(x))
    assert one_row(rep, "memwall_test.scale").flops is None  # unknown: uncounted, not zero
    registry = memwall.default_registry().copy()
    registry.add_flops("memwall_test.scale", lambda call: call["x"].numel)
    with memwall.profile(registry=registry, summary=False) as prof:
        torch.ops.memwall_test.scale(x)
    assert one_row(prof.report(), "memwall_test.scale").flops == 30


#: ops memwall registers that torch's oldest supported release (2.11) does not have yet: the
#: torch release each was seen in first (`torch.ops.torch_attn._varlen_attn_out`: in 2.13, not 2.11;
#: `fsdp.chunk_cat_mixed_dtype`: in 2.15, not in 2.14.1's FSDP2 sources)
_NEWER_THAN_THE_FLOOR = {"torch_attn._varlen_attn_out": (2, 13), "fsdp.chunk_cat_mixed_dtype": (2, 15),
                        "prims.inductor_rand_eager_offset": (2, 15), "prims.inductor_rand_eager_offsets": (2, 15),
                        "aten._flash_attention_forward_no_dropout_inplace": (2, 15),
                        # the functional collectives' send and receive: in 2.15, not in 2.11
                        "_c10d_functional.isend": (2, 15), "_c10d_functional.irecv": (2, 15)}
_TORCH = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])


def test_every_named_base_op_exists_in_torch():
    """Catches typos: each elementwise, reduction and explicitly named op is a real op of its
    namespace (aten, or FSDP's and the functional collectives' own, registered on import)."""
    import torch._inductor.inductor_prims  # noqa: F401  (the prims compiled graphs hold)
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (PT2E's quantized_decomposed ops)
    import torch.distributed._functional_collectives  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401
    import torch.nn.attention.flex_attention  # noqa: F401  (the flex_attention HOPs)
    import torch.nn.attention.varlen  # noqa: F401  (torch_attn's packed-attention ops)

    # transformers' expert matmul custom ops, registered on import by the transformers that has
    # them (5.x; the backward's from 5.23, before which it is Python calling torch.mm); formulas
    # for them wait for them on older ones
    moe = transformers_moe_or_none()
    libraries = {"transformers": moe is not None}
    if moe is not None and not hasattr(moe, "_grouped_mm_fallback_bwd"):
        libraries["transformers.grouped_mm_fallback_backward"] = False

    names = [f"aten.{n}" for n in list(ELEMENTWISE) + list(REDUCTIONS)]
    explicit = [n for n in REGISTRY.names() if not n.startswith(("aten._foreach_", "profiler."))]
    missing = []
    for name in set(names) | {n for n in explicit if not n.endswith("_")}:
        namespace, op, *_ = name.split(".")
        if not hasattr(getattr(torch.ops, namespace), op) and _TORCH < _NEWER_THAN_THE_FLOOR.get(name, (0, 0)):
            continue  # an op of a later torch, registered for the torch that has it
        if libraries.get(namespace) is False or libraries.get(f"{namespace}.{op}") is False:
            continue  # a library's op, where this version of the library has none
        if not hasattr(getattr(torch.ops, namespace), op):
            missing.append(name)
    assert not missing, f"registered ops unknown to torch: {sorted(missing)}"


def test_pool_kernel_given_as_one_int():
    x = torch.randn(1, 2, 8, 8)
    rep = profiled(lambda: F.max_pool2d(x, 2))
    row = one_row(rep, "aten.max_pool2d_with_indices")
    assert row.flops == (2 * 4 * 4) * 4  # output elements x kernel (2x2)


def test_layer_norm_backward_and_gelu_backward():
    x = torch.randn(6, 32, requires_grad=True)
    ln = torch.nn.LayerNorm(32)
    rep = profiled(lambda: F.gelu(ln(x)).sum().backward())
    n = x.numel()
    assert one_row(rep, "aten.native_layer_norm_backward").flops == 8 * n + 2 * n + n
    assert one_row(rep, "aten.gelu_backward").flops == 9 * n
    assert math.isclose(rep.coverage, 1.0)


@pytest.mark.parametrize("kind", ["fused", "foreach", "single"])
def test_sgd_counts_2_flops_per_element_and_6_with_weight_decay_and_momentum(kind):
    # documented per parameter element: update 2 (p - lr * g); weight decay 2 (g + wd * p);
    # momentum 2 (buf * m + (1 - dampening) * g: with dampening 0 the add's scale is one). The
    # fused kernel counted 3 for it until 2026-12-07, where the other two paths' ops count 2
    n = 1000
    expected = {"fused": (2, 6), "foreach": (2, 6), "single": (2, 6)}[kind]
    for options, per_element in zip(({}, {"weight_decay": 0.1, "momentum": 0.9}), expected):
        p = torch.nn.Parameter(torch.randn(n))
        p.grad = torch.randn(n)
        opt = torch.optim.SGD([p], lr=0.1, fused=kind == "fused", foreach=kind == "foreach", **options)
        opt.step()  # momentum buffers made
        rep = profiled(opt.step)
        assert sum(r.flops for r in rep.rows if r.phase == "optimizer") == per_element * n, (kind, options)


def test_float_arguments_reach_formulas_as_their_value_class_never_inverted():
    from memwall_plugin.hooks.capture import build_call, signature

    from memwall_plugin.records import FloatArg

    assert [signature(v) for v in (0.0, -0.0, 1.0, 0.5, -1.0)] == [
        FloatArg.ZERO, FloatArg.ZERO, FloatArg.ONE, FloatArg.OTHER, FloatArg.OTHER]
    assert not FloatArg.ZERO and FloatArg.ONE and FloatArg.OTHER
    x = torch.randn(3)
    call = build_call(torch.ops.aten.add.Tensor, (signature(x), signature(x)), {"alpha": signature(0.5)},
                      signature(x))
    assert call["alpha"] is FloatArg.OTHER
    call = build_call(torch.ops.aten.add.Tensor, (signature(x), signature(x)), {}, signature(x))
    assert call["alpha"] == 1  # the schema's default, an int: a unit scale
    a = torch.randn(50)
    assert flops_apart("aten.add", lambda: a.add(a, alpha=0.5), lambda: a.add(a, alpha=1.0)) == [50, 100]
    assert flops_apart("aten.sub", lambda: a.sub(a)) == [50]


def test_grouped_mm_counts_every_layout_by_hand():
    g, m, k, n = 4, 24, 16, 8
    offs = torch.tensor([5, 11, 20, 24], dtype=torch.int32)  # rows per group: 5, 6, 9, 4
    x, w = torch.randn(m, k), torch.randn(g, k, n)
    batched = torch.randn(g, m, k)
    rep = profiled(lambda: (
        torch._grouped_mm(x, w, offs=offs),  # 2d x 3d: groups split the rows of x
        torch._grouped_mm(batched, w),  # 3d x 3d: a batched matmul
        torch._grouped_mm(x.t().contiguous(), torch.randn(m, n), offs=offs),  # 2d x 2d: the weight gradient
    ))
    by_shapes = {r.shapes: r.flops for r in rep.rows if r.op == "aten._grouped_mm"}
    # sum over groups of 2 * m_g * k * n, the groups covering all m rows
    assert by_shapes[f"[{m}, {k}] x [{g}, {k}, {n}] x [{g}]"] == sum(2 * rows * k * n for rows in (5, 6, 9, 4))
    assert by_shapes[f"[{g}, {m}, {k}] x [{g}, {k}, {n}]"] == g * 2 * m * k * n
    # grad_w[g] = x_g^T @ grad_out_g: [k, m_g] @ [m_g, n] per group
    assert by_shapes[f"[{k}, {m}] x [{m}, {n}] x [{g}]"] == sum(2 * k * rows * n for rows in (5, 6, 9, 4))


def test_moe_router_and_generation_ops_are_counted():
    expert_ids = torch.randint(0, 8, (64,)).float()
    tokens = torch.randint(0, 100, (4, 16))
    rep = profiled(lambda: (torch.histc(expert_ids, bins=8, min=0, max=7), torch.floor_divide(tokens, 3),
                            torch.isin(tokens[:, -1], torch.tensor([0, 2]))))
    assert one_row(rep, "aten.histc").flops == 4 * 64  # subtract, scale, range check, count
    assert one_row(rep, "aten.floor_divide").flops == 4 * 16
    assert one_row(rep, "aten.isin").flops == 4 * 2  # each element against each test element
    assert not rep.uncounted


def test_addmm_family_counts_the_add_and_scales_it_computes():
    # torch: beta * self + alpha * (mat1 @ mat2); with beta = 0 self is ignored
    m, k, n = 3, 5, 4
    bias, a, b = torch.randn(m, n), torch.randn(m, k), torch.randn(k, n)
    cases = {  # (beta, alpha) -> by hand: 2mkn, plus per output element the add and each scale
        (1, 1): 2 * m * k * n + m * n,
        (0, 1): 2 * m * k * n,
        (0.0, 2.0): 2 * m * k * n + m * n,
        (0.5, 1): 2 * m * k * n + 2 * m * n,
        (0.5, 2.0): 2 * m * k * n + 3 * m * n,
    }
    for (beta, alpha), expected in cases.items():
        rep = profiled(lambda beta=beta, alpha=alpha: torch.addmm(bias, a, b, beta=beta, alpha=alpha))
        assert one_row(rep, "aten.addmm").flops == expected, (beta, alpha)
    # addbmm sums 2 products per output element (1 add) before the bias add
    b1, b2 = torch.randn(2, m, k), torch.randn(2, k, n)
    rep = profiled(lambda: torch.addbmm(bias, b1, b2))
    assert one_row(rep, "aten.addbmm").flops == 2 * 2 * m * k * n + m * n + m * n
