"""The table of FLOP and bytes formulas and families of aten ops, and the conventions they follow.

Conventions (also in the README):

* A multiply-add is 2 FLOPs (datasheets, torch's FlopCounterMode and the paper count so).
* Complex matmuls and convolutions count real arithmetic, as the real roof of their component
  width bounds them: a complex multiply-add is 4 real multiplies and 4 real adds, 8 FLOPs
  (FlopCounterMode counts 2). Elementwise ops and reductions on complex tensors count per
  complex element like real ones: a lower bound (a complex add is 2 real FLOPs, a multiply 6).
* Elementwise ops cost a fixed number of FLOPs per element they produce (`ELEMENTWISE`): every
  elementary arithmetic step, compare or transcendental function counts 1, so
  `addcmul = value * t1 * t2 + self` is 3 and `sigmoid = 1 / (1 + exp(-x))` is 4.
* Reductions cost per element they read (`REDUCTIONS`): `sum` 1, `var` 3, a vector norm 2.
* Softmax and log-softmax 5 per element (max, subtract, exp, sum, divide); their backward 4.
* Norms: normalising costs 5 per element (mean, subtract, square, sum, scale), plus 1 per element
  for each affine weight and bias present; their backward 8, plus 2 for a weight, 1 for a bias.
* Attention kernels count both matmuls over the full s_q x s_k score matrix (causal masking
  included, as torch's FlopCounterMode does) plus softmax; fused backward kernels also count the
  recomputed scores.
* Random number generation counts 1 per element (the transform to the distribution).
* Pure data movement (copy, cat, index, embedding gather, padding) is 0 FLOPs but moves bytes;
  views and metadata ops are 0 FLOPs and 0 bytes; allocation (`empty`) moves nothing.
* `add`/`sub` with a scale (`self + alpha * other`, alpha not one) are 2 per element.
* Optimizer steps count per parameter element: fused AdamW 14, SGD 2 (+2 weight decay,
  +3 momentum, +2 Nesterov).

Every formula takes an `OpCall` (shapes, not tensors). An op missing here is reported as
uncounted, never as zero.

Each section also puts its ops in their family (`registry.Family`), with the composites torch
decomposes before memwall sees them (`aten.linear`, `aten.layer_norm`) so that a trace or row
holding one whole has a family too. Every `_foreach_` kernel is "optimizer" whatever its
arithmetic: it runs over lists of parameters, gradients or optimizer state.
"""

from __future__ import annotations

import math

from memwall_plugin.records import (
    CELL_PARAMS,
    PACKED_LINEAR,
    Extent,
    FloatArg,
    NestedMeta,
    OpCall,
    RegionFacts,
    ScoreFacts,
    SparseMeta,
    TensorMeta,
    Traffic,
    extent,
    is_unit_scale,
)
from memwall_plugin.registry import Family, Registry, default_traffic

REGISTRY = Registry()
flops = REGISTRY.flops
traffic = REGISTRY.traffic

SOFTMAX_FLOPS = 5
SOFTMAX_BACKWARD_FLOPS = 4
NORM_FLOPS = 5
NORM_BACKWARD_FLOPS = 8


def _produced(call: OpCall) -> int:
    return sum(t.numel for t in call.written())


def _computed(call: OpCall) -> int:
    """The elements an elementwise op computes: those it writes, except where a sparse operand
    meets a dense result (a sparse gradient added into its weight: `weight.add_(grad, alpha=-lr)`),
    where only the operand's stored elements are computed."""
    produced = _produced(call)
    sparse = [t.numel for _, t in call.tensors() if isinstance(t, SparseMeta)]
    if sparse and not any(isinstance(t, SparseMeta) for t in call.written()):
        return min(produced, max(sparse))
    return produced


def _numel(t: TensorMeta | None) -> int:
    return 0 if t is None else t.numel


#: (a + bi)(c + di) + (e + fi): 4 real multiplies and 4 real adds, 4x a real multiply-add
COMPLEX_MULTIPLY_ADD = 4
#: (a + bi) + (c + di): 2 real adds
COMPLEX_ADD = 2


def _is_complex(call: OpCall) -> bool:
    first = call.first_tensor
    return first is not None and first.dtype.startswith("complex")


def _real(call: OpCall, multiply_adds: int, adds: int = 0) -> int:
    """Real FLOPs of `multiply_adds` (already x2) and `adds` in the call's element type."""
    if _is_complex(call):
        return COMPLEX_MULTIPLY_ADD * multiply_adds + COMPLEX_ADD * adds
    return multiply_adds + adds


# --- matmul family --------------------------------------------------------------------------

REGISTRY.set_family(
    Family.MATMUL,
    "aten.matmul", "aten.matmul_backward", "aten.mm", "aten._int_mm", "aten._scaled_mm", "aten.addmm",
    "aten._sparse_addmm", "aten._addmm_activation", "aten.bmm", "aten.baddbmm", "aten.addbmm", "aten._grouped_mm",
    "aten._scaled_grouped_mm", "aten.mv", "aten.addmv", "aten.dot", "aten.vdot",
    # composites torch runs as the ops above
    "aten.linear", "aten.bilinear", "aten._trilinear", "aten.tensordot", "aten.linalg_matmul", "aten.chain_matmul",
)


def mm_flops(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    # a: [m, k] @ b: [k, n] -> [m, n]
    m, k = a
    k2, n = b
    assert k == k2, f"mm inner dims differ: {a} @ {b}"
    return 2 * m * k * n


def bmm_flops(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    # a: [batch, m, k] @ b: [batch, k, n] -> [batch, m, n]
    batch, m, k = a
    _, _, n = b
    return 2 * batch * m * k * n


def matmul_flops(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """torch.matmul of two shapes: a vector operand is one row (column), leading dims broadcast."""
    m, k = (1, a[0]) if len(a) == 1 else a[-2:]
    n = 1 if len(b) == 1 else b[-1]
    batch = torch_broadcast(a[:-2], b[:-2])
    return 2 * math.prod(batch) * m * k * n


def torch_broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast of two batch shapes (size-1 dims stretch)."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def _operand_pairs(a: TensorMeta, b: TensorMeta) -> list[tuple[tuple[int, ...], tuple[int, ...]]] | None:
    """The shape pairs a matmul multiplies: one pair for plain tensors, one per component for
    nested tensors (each sequence at its own length); None when a nested tensor's components
    are unknown."""
    nested_a, nested_b = isinstance(a, NestedMeta), isinstance(b, NestedMeta)
    if not nested_a and not nested_b:
        return [(a.shape, b.shape)]
    parts_a = a.components if isinstance(a, NestedMeta) else None
    parts_b = b.components if isinstance(b, NestedMeta) else None
    if (nested_a and not parts_a) or (nested_b and not parts_b):
        return None
    if parts_a is not None and parts_b is not None:
        return list(zip(parts_a, parts_b, strict=True)) if len(parts_a) == len(parts_b) else None
    if parts_a is not None:
        return [(s, b.shape) for s in parts_a]
    assert parts_b is not None
    return [(a.shape, s) for s in parts_b]


@flops("aten.matmul")
def _matmul(call: OpCall) -> int | None:
    # reaches the mode whole only where torch runs it whole: nested tensors (a jagged batch
    # unbound into its sequences), each component its own matmul
    pairs = _operand_pairs(call.arg(0), call.arg(1))
    if pairs is None:
        return None
    return _real(call, sum(matmul_flops(a, b) for a, b in pairs))


@flops("aten.matmul_backward")
def _matmul_backward(call: OpCall) -> int | None:
    # grad_self = grad @ other^T and grad_other = self^T @ grad: each as large as the forward
    pairs = _operand_pairs(call["self"], call["other"])
    if pairs is None:
        return None
    mask = call.get("mask") or (True, True)
    forward = sum(matmul_flops(a, b) for a, b in pairs)
    return _real(call, forward * (int(bool(mask[0])) + int(bool(mask[1]))))


def _sparse_mm_flops(a: TensorMeta, b: TensorMeta) -> int | None:
    """A matmul with a sparse operand (torch.sparse.mm, a graph's adjacency times features): a
    multiply-add per stored element and column (row) of the dense other; None for a dense pair,
    and for two sparse operands (their products depend on where the elements meet)."""
    if isinstance(a, SparseMeta) and not isinstance(b, SparseMeta) and len(a.shape) == len(b.shape) == 2:
        return 2 * a.numel * b.shape[1]
    if isinstance(b, SparseMeta) and not isinstance(a, SparseMeta) and len(a.shape) == len(b.shape) == 2:
        return 2 * b.numel * a.shape[0]
    return None


@flops("aten.mm", "aten._int_mm", "aten._scaled_mm")
def _mm(call: OpCall) -> int | None:
    a, b = call.arg(0), call.arg(1)
    if isinstance(a, SparseMeta) or isinstance(b, SparseMeta):
        return _sparse_mm_flops(a, b)
    return _real(call, mm_flops(a.shape, b.shape))


@flops("aten._trilinear")
def _trilinear(call: OpCall) -> int | None:
    """nn.Bilinear's contraction and its gradients, as torch computes it
    (aten/src/ATen/native/Linear.cpp): over a joint space of dims, for each index of `unroll_dim`,
    i1 * i2 summed over the dims i3 lacks (a matmul: a multiply-add per element of the pair's
    space; a plain product where nothing is summed), that times i3 summed over the rest, and the
    slice added into the output (the whole output where the unrolled dim is itself summed)."""
    tensors = (call["i1"], call["i2"], call["i3"])
    expands = tuple(set(call[f"expand{k}"]) for k in (1, 2, 3))
    summed, unroll = set(call["sumdim"]), call.get("unroll_dim", 1)
    total = len(tensors[0].shape) + len(expands[0])
    sizes, next_dim = [1] * total, [0, 0, 0]
    for dim in range(total):
        for k, t in enumerate(tensors):
            if dim not in expands[k]:
                sizes[dim] = t.shape[next_dim[k]]
                next_dim[k] += 1
    others = [d for d in range(total) if d != unroll]
    in12 = {d for d in others if not (d in expands[0] and d in expands[1])}
    sum12 = {d for d in others if d in expands[2] and d in summed}
    sum23 = {d for d in others if d not in expands[2] and d in summed}
    pair12 = math.prod(sizes[d] for d in in12)
    pair23 = math.prod(sizes[d] for d in others if (d in in12 and d not in sum12) or d not in expands[2])
    # each index adds its slice of the output, or the whole output where the unrolled dim is summed
    added = math.prod(sizes[d] for d in range(total) if d not in summed and d != unroll)
    per_index = (2 if sum12 else 1) * pair12 + (2 if sum23 else 1) * pair23 + added
    return sizes[unroll] * per_index


def _scaled_add(call: OpCall, outputs: int) -> int:
    """`beta * self + alpha * product` beyond the product, per output element: the add (none
    when beta is 0: torch ignores self), and a multiply for each scale other than 1."""
    beta, alpha = call.get("beta"), call.get("alpha")
    if beta is FloatArg.ZERO or (type(beta) is int and beta == 0):
        return outputs * (0 if is_unit_scale(alpha) else 1)
    steps = 1 + (0 if is_unit_scale(beta) else 1) + (0 if is_unit_scale(alpha) else 1)
    return outputs * steps


@flops("aten.addmm", "aten._sparse_addmm")
def _addmm(call: OpCall) -> int | None:
    # beta * bias + alpha * (mat1 @ mat2): the matmul plus the add (and scales) per output element
    mat1, mat2 = call["mat1"], call["mat2"]
    m, _ = mat1.shape
    _, n = mat2.shape
    if isinstance(mat1, SparseMeta) or isinstance(mat2, SparseMeta):
        product = _sparse_mm_flops(mat1, mat2)
        return None if product is None else product + _scaled_add(call, m * n)
    return _real(call, mm_flops(mat1.shape, mat2.shape), _scaled_add(call, m * n))


@flops("aten._addmm_activation")
def _addmm_activation(call: OpCall) -> int | None:
    m, _ = call["mat1"].shape
    _, n = call["mat2"].shape
    act = ELEMENTWISE["gelu"] if call.get("use_gelu") else ELEMENTWISE["relu"]
    product = _addmm(call)
    return None if product is None else product + act * m * n


@flops("aten.bmm")
def _bmm(call: OpCall) -> int:
    return _real(call, bmm_flops(call.arg(0).shape, call.arg(1).shape))


@flops("aten.baddbmm")
def _baddbmm(call: OpCall) -> int:
    b, m, _ = call["batch1"].shape
    n = call["batch2"].shape[2]
    return _real(call, bmm_flops(call["batch1"].shape, call["batch2"].shape), _scaled_add(call, b * m * n))


@flops("aten.addbmm")
def _addbmm(call: OpCall) -> int:
    # beta * self + alpha * sum_b(batch1[b] @ batch2[b]): the b products, b - 1 adds to sum them
    # per output element, then the add (and scales)
    b, m, _ = call["batch1"].shape
    n = call["batch2"].shape[2]
    return _real(call, bmm_flops(call["batch1"].shape, call["batch2"].shape),
                 (b - 1) * m * n + _scaled_add(call, m * n))


@flops("aten._grouped_mm", "aten._scaled_grouped_mm")
def _grouped_mm(call: OpCall) -> int:
    """A matmul per group (mixture-of-experts layers). With `offs` one operand is split along a
    dim into groups, each multiplied by its own slice of the other, so the FLOPs are those of
    one matmul over the whole split dim, counted over every row (offsets are data: rows past
    the last offset, which the kernel skips, are counted too)."""
    a, b = call.arg(0).shape, call.arg(1).shape
    if len(a) == 3 and len(b) == 3:
        # [g, m, k] @ [g, k, n] -> [g, m, n]: a batched matmul
        total = bmm_flops(a, b)
    elif len(a) == 2 and len(b) == 3:
        # rows of [m, k] split into groups, group i @ [k, n] of b[i] -> [m, n]
        total = mm_flops(a, b[1:])
    elif len(a) == 3 and len(b) == 2:
        # [g, m, k] @ columns of [k, n] split into groups -> [m, n]
        total = mm_flops(a[1:], b)
    else:
        # the shared k split into groups (a weight gradient): [m, k_i] @ [k_i, n] -> [g, m, n]
        total = mm_flops(a, b)
    out = call.outputs[0]
    bias_adds = out.numel if call.get("bias") is not None and out is not None else 0
    return _real(call, total, bias_adds)


@flops("aten.mv")
def _mv(call: OpCall) -> int:
    # [m, n] @ [n] -> [m]
    m, n = call.arg(0).shape
    return _real(call, 2 * m * n)


@flops("aten.addmv")
def _addmv(call: OpCall) -> int:
    m, n = call["mat"].shape
    return _real(call, 2 * m * n, _scaled_add(call, m))


@flops("aten.dot", "aten.vdot")
def _dot(call: OpCall) -> int:
    return _real(call, 2 * call.arg(0).numel)


# --- convolution ----------------------------------------------------------------------------

REGISTRY.set_family(
    Family.CONV,
    "aten.convolution", "aten._convolution", "aten.convolution_backward",
    # composites, and the backend kernels aten.convolution runs (named in profiler traces)
    "aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.conv_transpose1d", "aten.conv_transpose2d",
    "aten.conv_transpose3d", "aten._convolution_mode", "aten.convolution_overrideable",
    "aten.convolution_backward_overrideable", "aten.cudnn_convolution", "aten.cudnn_convolution_transpose",
    "aten.mkldnn_convolution",
)


def conv_flops(
    x: tuple[int, ...], w: tuple[int, ...], out: tuple[int, ...], transposed: bool
) -> int:
    """Multiply-adds of a convolution, x2. x: [n, c_in, *in], w: [c_out, c_in/g, *k] (or
    [c_in, c_out/g, *k] transposed), out: [n, c_out, *out]."""
    kernel = math.prod(w[2:])
    if transposed:
        # every input pixel scatters into c_out/g channels over the kernel
        return 2 * x[0] * math.prod(x[2:]) * w[0] * w[1] * kernel
    return 2 * out[0] * math.prod(out[2:]) * w[0] * w[1] * kernel


@flops("aten.convolution", "aten._convolution")
def _convolution(call: OpCall) -> int:
    x, w, out = call["input"], call["weight"], call.outputs[0]
    assert out is not None
    total = conv_flops(x.shape, w.shape, out.shape, bool(call["transposed"]))
    return _real(call, total, out.numel if call.get("bias") is not None else 0)


@flops("aten.convolution_backward")
def _convolution_backward(call: OpCall) -> int:
    grad_out, x, w = call["grad_output"], call["input"], call["weight"]
    mask = call["output_mask"]
    fwd = conv_flops(x.shape, w.shape, grad_out.shape, bool(call["transposed"]))
    # grad_input and grad_weight are each a convolution as large as the forward one
    return _real(call, (fwd if mask[0] else 0) + (fwd if mask[1] else 0), grad_out.numel if mask[2] else 0)


# --- attention ------------------------------------------------------------------------------


def attention_flops(b: int, h: int, s_q: int, s_k: int, d: int, d_v: int) -> int:
    # scores = q: [b, h, s_q, d] @ k^T: [b, h, d, s_k] -> [b, h, s_q, s_k]
    # out = softmax(scores): [b, h, s_q, s_k] @ v: [b, h, s_k, d_v] -> [b, h, s_q, d_v]
    return attention_flops_of_scores(b * h * s_q * s_k, d, d_v)


def attention_flops_of_scores(scores: int, d: int, d_v: int) -> int:
    """Attention forward over `scores` query-key pairs (all of them, or the ones a mask's
    blocks or packed sequences leave): q.k per pair, softmax, and p.v per pair."""
    return 2 * scores * d + SOFTMAX_FLOPS * scores + 2 * scores * d_v


def attention_backward_flops(b: int, h: int, s_q: int, s_k: int, d: int, d_v: int) -> int:
    return attention_backward_flops_of_scores(b * h * s_q * s_k, b * h * s_q, d, d_v)


def attention_backward_flops_of_scores(scores: int, rows: int, d: int, d_v: int) -> int:
    """Attention backward over `scores` pairs and `rows` query rows (over batch and heads):
    recompute scores (q k^T) and probabilities, then dV = P^T dO, dP = dO V^T,
    dS = P * (dP - rowsum(dO * O)), dQ = dS K, dK = dS^T Q."""
    matmuls = 2 * scores * d + 2 * scores * d_v + 2 * scores * d_v + 2 * scores * d + 2 * scores * d
    return matmuls + SOFTMAX_FLOPS * scores + SOFTMAX_BACKWARD_FLOPS * scores + 2 * rows * d_v


def _bhsd(q: TensorMeta, k: TensorMeta, v: TensorMeta) -> tuple[int, int, int, int, int, int]:
    """[batch, heads, seq, dim] layout (scaled_dot_product_* ops); extra leading dims fold into b."""
    *lead, s_q, d = q.shape
    s_k = k.shape[-2]
    d_v = v.shape[-1]
    b = math.prod(lead[:-1]) if len(lead) > 1 else 1
    h = lead[-1] if lead else 1
    return b, h, s_q, s_k, d, d_v


def _bshd(q: TensorMeta, k: TensorMeta, v: TensorMeta) -> tuple[int, int, int, int, int, int]:
    """[batch, seq, heads, dim] layout (_flash_attention_* / _efficient_attention_* ops)."""
    b, s_q, h, d = q.shape
    return b, h, s_q, k.shape[1], d, v.shape[-1]


_SDPA_FORWARD = (
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_cudnn_attention",
    "aten._scaled_dot_product_fused_attention_overrideable",
)
_SDPA_BACKWARD = tuple(name + "_backward" for name in _SDPA_FORWARD)

REGISTRY.set_family(
    Family.ATTENTION,
    *_SDPA_FORWARD, *_SDPA_BACKWARD,
    "aten._flash_attention_forward", "aten._flash_attention_backward", "aten._efficient_attention_forward",
    "aten._efficient_attention_backward", "torch_attn._varlen_attn", "torch_attn._varlen_attn_out",
    "torch_attn._varlen_attn_backward", "higher_order.flex_attention", "higher_order.flex_attention_backward",
    # the composites torch picks a kernel under, nn.MultiheadAttention's fast path, the cuDNN
    # kernel's own op and flash's in-place form; triton's (no formula yet)
    "aten.scaled_dot_product_attention", "aten._scaled_dot_product_attention_math",
    "aten._scaled_dot_product_attention_math_for_mps", "aten._cudnn_attention_forward",
    "aten._cudnn_attention_backward", "aten._flash_attention_forward_no_dropout_inplace",
    "aten._native_multi_head_attention", "aten._triton_multi_head_attention", "aten._triton_scaled_dot_attention",
)


#: torch's CPU flash-attention kernel (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp) walks
#: the scores in tiles: query blocks of 256, 64 or 32 rows (for >= 768, >= 192 or fewer queries)
#: against key blocks of 512; with is_causal it stops each query block at the key block that
#: holds its last query's diagonal, computing that whole key block. Forward and backward alike.
CPU_FLASH_KV_SPLIT = 512


def cpu_flash_q_split(s_q: int) -> int:
    return 256 if s_q >= 768 else 64 if s_q >= 192 else 32


def cpu_flash_causal_scores(s_q: int, s_k: int) -> int:
    """Scores the CPU flash kernel computes per (batch, head) with is_causal: each query block
    of `rows` queries starting at m sees keys up to min(m + rows, s_k), in whole key blocks."""
    q_split, kv_split = min(cpu_flash_q_split(s_q), s_q), min(CPU_FLASH_KV_SPLIT, s_k)
    total = 0
    for m in range(0, s_q, q_split):
        rows = min(q_split, s_q - m)
        keys = min(m + rows, s_k)
        total += rows * sum(min(kv_split, s_k - n) for n in range(0, keys, kv_split))
    return total


def causal_pairs(s_q: int, s_k: int) -> int:
    """Query-key pairs a causal mask keeps (query i sees keys 0..i, torch's top-left alignment)."""
    if s_q <= s_k:
        return s_q * (s_q + 1) // 2
    return s_k * (s_k + 1) // 2 + (s_q - s_k) * s_k


def _sdpa_scores(call: OpCall, s_q: int, s_k: int) -> int:
    """Scores per (batch, head) the fused kernel computes: all of them, unless is_causal lets
    it skip tiles (the CPU kernel's tiles exactly; GPU kernels the pairs the mask keeps, their
    diagonal tiles computed in full add at most one tile per row). A given attn_mask is
    applied to scores computed in full: dense, as computed."""
    if not call.get("is_causal"):
        return s_q * s_k
    if call.op.startswith("aten._scaled_dot_product_flash_attention_for_cpu"):
        return cpu_flash_causal_scores(s_q, s_k)
    return causal_pairs(s_q, s_k)


@flops(*_SDPA_FORWARD)
def _sdpa(call: OpCall) -> int:
    b, h, s_q, s_k, d, d_v = _bhsd(call["query"], call["key"], call["value"])
    return attention_flops_of_scores(b * h * _sdpa_scores(call, s_q, s_k), d, d_v)


@flops(*_SDPA_BACKWARD)
def _sdpa_backward(call: OpCall) -> int:
    b, h, s_q, s_k, d, d_v = _bhsd(call["query"], call["key"], call["value"])
    return attention_backward_flops_of_scores(b * h * _sdpa_scores(call, s_q, s_k), b * h * s_q, d, d_v)


def _packed(call: OpCall) -> bool:
    """Variable-length (packed) sequences: offsets given, and q is [total, heads, dim]."""
    return any(call.get(name) is not None for name in ("cum_seq_q", "cu_seqlens_q", "cu_seq_q"))


def _packed_dims(call: OpCall) -> tuple[int, int, int]:
    """(heads, d, d_v) of packed attention: q [total_q, heads, d] (or [1, total_q, heads, d],
    the efficient kernel's layout), v [total_k, heads_kv, d_v]."""
    q, v = call["query"], call["value"]
    return q.shape[-2], q.shape[-1], v.shape[-1]


@flops("aten._flash_attention_forward", "aten._efficient_attention_forward",
       "torch_attn._varlen_attn", "torch_attn._varlen_attn_out")
def _flash_forward(call: OpCall) -> int | None:
    if _packed(call):
        # packed sequences: their lengths are data, read from the offsets when the op ran
        if not isinstance(call.facts, ScoreFacts):
            return None
        heads, d, d_v = _packed_dims(call)
        return attention_flops_of_scores(call.facts.scores * heads, d, d_v)
    return attention_flops(*_bshd(call["query"], call["key"], call["value"]))


@flops("aten._flash_attention_backward", "aten._efficient_attention_backward",
       "torch_attn._varlen_attn_backward")
def _flash_backward(call: OpCall) -> int | None:
    if _packed(call):
        if not isinstance(call.facts, ScoreFacts):
            return None
        heads, d, d_v = _packed_dims(call)
        rows = call["query"].numel // d  # every packed query row, over heads
        return attention_backward_flops_of_scores(call.facts.scores * heads, rows, d, d_v)
    return attention_backward_flops(*_bshd(call["query"], call["key"], call["value"]))


@flops("higher_order.flex_attention")
def _flex_attention(call: OpCall) -> int | None:
    # the blocks its BlockMask visits (read when it ran): q [b, h, s_q, d], v [b, h_kv, s_k, d_v]
    if not isinstance(call.facts, ScoreFacts):
        return None
    return attention_flops_of_scores(call.facts.scores, call["arg0"].shape[-1], call["arg2"].shape[-1])


@flops("higher_order.flex_attention_backward")
def _flex_attention_backward(call: OpCall) -> int | None:
    if not isinstance(call.facts, ScoreFacts):
        return None
    q, v = call["arg0"], call["arg2"]
    return attention_backward_flops_of_scores(call.facts.scores, q.numel // q.shape[-1], q.shape[-1], v.shape[-1])


_CPU_FLASH_NOTE = (
    "torch's CPU flash kernel computes every score of the s_q x s_k matrix and adds a given "
    "attn_mask (padding, a sliding window) to scores computed in full: counted dense, as computed; "
    "with is_causal it stops each block of 32/64/256 queries at the 512-key block holding its "
    "diagonal: counted tile for tile")
_GPU_ATTENTION_NOTE = (
    "GPU fused attention computes every score and adds an attn_bias to scores computed in full: "
    "counted dense; with is_causal counted as the pairs the mask keeps (the kernel computes its "
    "diagonal tiles whole: at most one tile more per row)")
_PACKED_NOTE = (
    "packed (variable-length) attention: len_q x len_k per sequence, read from the offsets; where "
    "they could not be read (meta, fake tensors) the row says so and counts max_seqlen, an upper bound")

#: How the count of an op was made where shapes alone do not say: the console prints the notes
#: of the ops a report holds (which backend ran, what it computes, what is an upper bound).
COUNT_NOTES: dict[str, str] = {
    **{name: _CPU_FLASH_NOTE for name in ("aten._scaled_dot_product_flash_attention_for_cpu",
                                          "aten._scaled_dot_product_flash_attention_for_cpu_backward")},
    **{name: _GPU_ATTENTION_NOTE for name in (*_SDPA_FORWARD, *_SDPA_BACKWARD) if "_for_cpu" not in name},
    **{name: _PACKED_NOTE for name in (
        "aten._flash_attention_forward", "aten._flash_attention_backward", "aten._efficient_attention_forward",
        "aten._efficient_attention_backward", "torch_attn._varlen_attn", "torch_attn._varlen_attn_out",
        "torch_attn._varlen_attn_backward")},
    "higher_order.flex_attention": (
        "flex_attention: the score blocks its BlockMask visits (partial blocks in full, the row says "
        "how many); run eagerly, torch computes it with its dense reference, every score: compile "
        "flex_attention for the block-sparse kernel"),
    "higher_order.flex_attention_backward": "flex_attention's backward: the blocks its BlockMask visits",
}


# a fused region holds ops of many families: deliberately none of them
REGISTRY.set_family(Family.OTHER, "higher_order.inductor_compiled_code")


@flops("higher_order.inductor_compiled_code")
def _compiled_region(call: OpCall) -> int | None:
    """A region torch.compile fused: the FLOPs of the aten ops it computes, by their formulas
    in this module (uncounted when one of them has none: never a partial count)."""
    if not isinstance(call.facts, RegionFacts) or call.facts.ops is None:
        return None
    total = 0
    for op in call.facts.ops:
        counted = REGISTRY.count(op).flops
        if counted is None:
            return None
        total += counted
    return total


# --- elementwise, activations, reductions --------------------------------------------------

ELEMENTWISE: dict[str, int] = {
    # arithmetic and comparisons: 1 per element produced
    **{
        name: 1
        for name in (
            "abs neg add sub mul div rsub reciprocal sqrt rsqrt exp exp2 expm1 log log2 log10 "
            "log1p sin cos tan asin acos atan sinh cosh tanh erf erfc erfinv pow clamp clamp_min "
            "clamp_max maximum minimum fmax fmin relu threshold sign sgn floor ceil round trunc "
            "frac remainder fmod eq ne lt le gt ge logical_and logical_or logical_not logical_xor "
            "bitwise_and bitwise_or bitwise_xor bitwise_not where masked_fill isnan isinf "
            "nan_to_num atan2 hypot copysign heaviside signbit lgamma digamma relu6 "
            "threshold_backward hardtanh_backward floor_divide asinh acosh atanh deg2rad rad2deg isposinf "
            "isneginf bitwise_left_shift bitwise_right_shift angle"
        ).split()
    },
    # special functions: one transcendental function per element, as lgamma, digamma and erfinv
    **{
        name: 1
        for name in (
            "i0 special_i0e special_i1 special_i1e special_ndtri special_log_ndtr special_erfcx special_airy_ai "
            "special_bessel_j0 special_bessel_j1 special_bessel_y0 special_bessel_y1 special_modified_bessel_i0 "
            "special_modified_bessel_i1 special_modified_bessel_k0 special_modified_bessel_k1 "
            "special_scaled_modified_bessel_k0 special_scaled_modified_bessel_k1 special_spherical_bessel_j0 "
            "igamma igammac special_zeta polygamma"
        ).split()
    },
    "special_entr": 3,  # -x ln x
    "special_xlog1py": 2,  # x log1p(y)
    "hardshrink": 2,  # |x| > lambda, select
    "hardshrink_backward": 2,
    "softshrink": 3,  # two compares and the shift
    "softshrink_backward": 2,
    "sinc": 3,  # sin(pi x) / (pi x)
    "logaddexp": 7,  # max(a, b) + log1p(exp(-|a - b|)): sub, abs, neg, exp, log1p, max, add
    "logaddexp2": 7,
    "linalg_cross": 3,  # a_i b_j - a_j b_i per output element
    "_add_relu": 2,
    "_masked_scale": 2,  # x * mask * scale
    "polar": 4,  # abs * cos(angle), abs * sin(angle)
    "xlogy": 2,
    "leaky_relu": 2,
    "hardtanh": 2,
    "lerp": 3,  # self + weight * (end - self)
    "addcmul": 3,  # self + value * t1 * t2
    "addcdiv": 3,  # self + value * t1 / t2
    "hardsigmoid": 3,
    "softplus": 3,  # log(1 + exp(beta x)) / beta
    "logit": 3,
    "sigmoid": 4,  # 1 / (1 + exp(-x))
    "elu": 4,
    "celu": 4,
    "hardswish": 4,
    "silu": 5,  # x * sigmoid(x)
    "selu": 5,
    "mish": 7,  # x * tanh(softplus(x))
    # backward of activations, per element of grad_input
    "leaky_relu_backward": 2,
    "hardsigmoid_backward": 2,
    "tanh_backward": 3,  # grad * (1 - y^2)
    "sigmoid_backward": 3,  # grad * y * (1 - y)
    "elu_backward": 3,
    "logit_backward": 3,
    "hardswish_backward": 4,
    "softplus_backward": 5,
    "silu_backward": 7,
    "mish_backward": 10,
}
# gelu: x/2 (1 + erf(x / sqrt 2)) is 5; the tanh approximation
# x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) is 9. Backward 9 and 15.
GELU_FLOPS = {"none": 5, "tanh": 9}
GELU_BACKWARD_FLOPS = {"none": 9, "tanh": 15}
ELEMENTWISE["gelu"] = GELU_FLOPS["none"]
#: torch's other names for elementwise ops (numpy's and SciPy's): composites an eager run
#: dispatches as the op they name, which a compiled graph can hold as they are (a dynamic-shape
#: graph's `true_divide` of a symbolic size), each costing what that op costs
ALIASES = {"true_divide": "div", "divide": "div", "multiply": "mul", "subtract": "sub", "negative": "neg",
           "absolute": "abs", "greater": "gt", "greater_equal": "ge", "less": "lt", "less_equal": "le",
           "not_equal": "ne", "arccos": "acos", "arcsin": "asin", "arctan": "atan", "arctan2": "atan2",
           "arccosh": "acosh", "arcsinh": "asinh", "arctanh": "atanh", "clip": "clamp", "fix": "trunc",
           "special_expit": "sigmoid", "float_power": "pow"}
ELEMENTWISE.update({alias: ELEMENTWISE[name] for alias, name in ALIASES.items()})

REDUCTIONS: dict[str, int] = {
    **{
        name: 1
        for name in (
            "sum nansum mean amax amin max min argmax argmin prod all any cumsum cumprod "
            "logcumsumexp count_nonzero aminmax equal _is_all_true _is_any_true"
        ).split()
    },
    "linalg_vector_norm": 2,  # square and add
    "norm": 2,
    "logsumexp": 3,  # max, exp, add
    "var": 3,  # subtract mean, square, add
    "std": 3,
    "var_mean": 3,
    "std_mean": 3,
}


def _elementwise(cost: int):  # type: ignore[no-untyped-def]
    def formula(call: OpCall) -> int:
        return cost * _computed(call)

    return formula


def _reduction(cost: int):  # type: ignore[no-untyped-def]
    def formula(call: OpCall) -> int:
        return cost * sum(t.numel for t in call.tensors_of(call.args[0][0]))

    return formula


def _variants(name: str) -> tuple[str, ...]:
    """The in-place and foreach forms share the per-element cost of the base op."""
    return (f"aten.{name}", f"aten.{name}_", f"aten._foreach_{name}", f"aten._foreach_{name}_")


def _set_variant_families(family: str, name: str) -> None:
    """The op and its in-place form are in `family`; its foreach forms are optimizer kernels."""
    op, in_place, foreach, foreach_in_place = _variants(name)
    REGISTRY.set_family(family, op, in_place)
    REGISTRY.set_family(Family.OPTIMIZER, foreach, foreach_in_place)


#: `self + alpha * other`: the multiply by alpha is a FLOP when alpha is not one
_SCALED = ("add", "sub", "rsub", "subtract")


def _scaled_elementwise(call: OpCall) -> int:
    return (1 if is_unit_scale(call.get("alpha")) else 2) * _computed(call)


for _name, _cost in ELEMENTWISE.items():
    if _name == "gelu":
        continue
    REGISTRY.add_flops(_variants(_name), _scaled_elementwise if _name in _SCALED else _elementwise(_cost))
    _set_variant_families(Family.ELEMENTWISE, _name)
for _name, _cost in REDUCTIONS.items():
    REGISTRY.add_flops(_variants(_name), _reduction(_cost))
    _set_variant_families(Family.REDUCTION, _name)

REGISTRY.set_family(Family.ELEMENTWISE, "aten.gelu", "aten.gelu_", "aten.gelu_backward")


@flops("aten.gelu", "aten.gelu_")
def _gelu(call: OpCall) -> int:
    return GELU_FLOPS[call.get("approximate") or "none"] * _produced(call)


@flops("aten.gelu_backward")
def _gelu_backward(call: OpCall) -> int:
    return GELU_BACKWARD_FLOPS[call.get("approximate") or "none"] * _produced(call)


# softmax normalises along a dim: with the norms
REGISTRY.set_family(
    Family.NORM,
    "aten._softmax", "aten._log_softmax", "aten._safe_softmax", "aten._softmax_backward_data",
    "aten._log_softmax_backward_data",
    # composites, and the masked kernels (nested and padded batches' attention)
    "aten.softmax", "aten.log_softmax", "aten._masked_softmax", "aten._masked_softmax_backward",
)


@flops("aten._softmax", "aten._log_softmax", "aten._safe_softmax")
def _softmax(call: OpCall) -> int:
    return SOFTMAX_FLOPS * call.arg(0).numel


@flops("aten._softmax_backward_data", "aten._log_softmax_backward_data")
def _softmax_backward(call: OpCall) -> int:
    return SOFTMAX_BACKWARD_FLOPS * call.arg(0).numel


# a comparison sort is neither elementwise nor a reduction: deliberately "other"; topk and a
# histogram reduce a dim, a membership test answers per element
REGISTRY.set_family(Family.OTHER, "aten.sort")
REGISTRY.set_family(Family.REDUCTION, "aten.topk", "aten.histc")
REGISTRY.set_family(Family.ELEMENTWISE, "aten.isin")

# fake quantization (quantization-aware training: torch.fake_quantize_per_tensor_affine and
# per-channel, their learnable forms, torch.ao's fused observer), per element of the input, as
# torch's CPU kernels compute it:
# - quantize q = round(x * inv_scale) + zero_point: 3;
# - out = (clamp(q, qmin, qmax) - zero_point) * scale: 4 (the clamp's two compares, sub, mul);
# - with the mask (the "cachemask" forms, which the backward multiplies the gradient by):
#   qmin <= q, q <= qmax and their and, 3 more.
# The tensor-qparams form is counted as enabled (its fake_quant_enabled flag is a tensor,
# whose value is not read).
FAKE_QUANT_FLOPS = 7
FAKE_QUANT_MASK_FLOPS = 3


_FAKE_QUANT_CACHEMASK = (
    "aten.fake_quantize_per_tensor_affine_cachemask", "aten._fake_quantize_per_tensor_affine_cachemask_tensor_qparams",
    "aten.fake_quantize_per_channel_affine_cachemask",
)
_FAKE_QUANT_LEARNABLE = (
    "aten._fake_quantize_learnable_per_tensor_affine", "aten._fake_quantize_learnable_per_channel_affine",
)
_FAKE_QUANT_LEARNABLE_BACKWARD = tuple(f"{name}_backward" for name in _FAKE_QUANT_LEARNABLE)
_FUSED_OBSERVER = ("aten._fused_moving_avg_obs_fq_helper", "aten._fused_moving_avg_obs_fq_helper_functional")


@flops(*_FAKE_QUANT_CACHEMASK)
def _fake_quantize_cachemask(call: OpCall) -> int:
    return (FAKE_QUANT_FLOPS + FAKE_QUANT_MASK_FLOPS) * call["self"].numel


@flops(*_FAKE_QUANT_LEARNABLE)
def _fake_quantize_learnable(call: OpCall) -> int:
    # the zero points rounded and clamped first (3 per channel: the round and the clamp's two
    # compares; one channel per tensor)
    return FAKE_QUANT_FLOPS * call["self"].numel + 3 * call["zero_point"].numel


@flops(*_FAKE_QUANT_LEARNABLE_BACKWARD)
def _fake_quantize_learnable_backward(call: OpCall) -> int:
    # per element: q = round(x * inv_scale + zero_point) (3), the range's two compares (2);
    # inside the range (the usual case) the input's gradient is the output's (a select, 1) and
    # the scale's is dY * ((q - zero_point) * scale - x) * inv_scale * grad_factor (6); the scale's
    # and zero point's gradients summed over the elements of each channel (2)
    return 14 * call["self"].numel


@flops(*_FUSED_OBSERVER)
def _fused_moving_avg_obs_fq(call: OpCall) -> int:
    # the observer: each element's min and max (2, per tensor or per channel); per channel, the
    # running min and max moved toward them (running + c * (new - running): 3 each) and the scale
    # and zero point made from them (scale = (max - min) / (qmax - qmin): 2; zero point
    # qmin - round(min / scale), clamped: 5); then the fake quantization with its mask. Counted
    # with the observer and the fake quantization on (both are flags in tensors, not read)
    channels = call["running_min"].numel
    return (2 + FAKE_QUANT_FLOPS + FAKE_QUANT_MASK_FLOPS) * call["self"].numel + 13 * channels


REGISTRY.set_family(Family.ELEMENTWISE, *_FAKE_QUANT_CACHEMASK, *_FAKE_QUANT_LEARNABLE, *_FAKE_QUANT_LEARNABLE_BACKWARD,
                    *_FUSED_OBSERVER)

# quantized_decomposed: the (de)quantize ops of PT2E quantization (prepare_pt2e/convert_pt2e, the
# X86 Inductor quantizer's int8 models) and of per-token and groupwise weight quantization. torch
# implements them in Python (torch/ao/quantization/fx/_decomposed.py) as a few aten ops, which
# run below a dispatch mode and are not seen one by one; compiled, Inductor fuses them into its
# kernels. Each is counted as the sum of those aten ops as memwall counts them (1 per element of
# each arithmetic op, compare or clamp; conversions and views 0), per input element n:
# - quantize: round(x * (1 / scale)) + zero_point, clamped: 4n; with per-channel, per-token or
#   per-group scales their reciprocal first (1 / scales: a reciprocal and a multiply, 2 per
#   scale); the groupwise form also checks for NaNs (isnan and its sum, 2n, and one compare);
# - dequantize: (x - zero_point) * scale: 2n (n without zero points);
# - choosing parameters: each element's min and max (aminmax, 1 per element as a reduction reads
#   it), then one-element ops (11 for the affine scheme, 8 for the symmetric); per token, |x| and
#   its max (2n) then a clamp and a divide per token; per token asymmetric, min and max (2n) then
#   16 ops per token (scale and the zero point picked from the two ends' errors);
# convert_element_type.no_fuse is a conversion: no arithmetic. (fake_quant_per_channel, QAT's, has
# an autograd kernel only: memwall sees the aten ops it runs.)
_QD = "quantized_decomposed."


def _per_scale(call: OpCall) -> int:
    """The reciprocal of a tensor of scales (a reciprocal and a multiply per scale)."""
    scales = call.get("scales")
    return 2 * scales.numel if isinstance(scales, TensorMeta) else 0


@flops(f"{_QD}quantize_per_tensor", f"{_QD}quantize_per_channel", f"{_QD}quantize_per_token")
def _quantize_decomposed(call: OpCall) -> int:
    return 4 * call.arg(0).numel + _per_scale(call)


@flops(f"{_QD}quantize_per_channel_group")
def _quantize_per_channel_group(call: OpCall) -> int:
    return 6 * call.arg(0).numel + _per_scale(call) + 1


@flops(f"{_QD}dequantize_per_tensor", f"{_QD}dequantize_per_token", f"{_QD}dequantize_per_channel_group")
def _dequantize_decomposed(call: OpCall) -> int:
    return 2 * call.arg(0).numel


@flops(f"{_QD}dequantize_per_channel")
def _dequantize_per_channel(call: OpCall) -> int:
    return (1 if call.get("zero_points") is None else 2) * call.arg(0).numel


@flops(f"{_QD}choose_qparams")
def _choose_qparams(call: OpCall) -> int:
    return call.arg(0).numel + 11


@flops(f"{_QD}choose_qparams_symmetric")
def _choose_qparams_symmetric(call: OpCall) -> int:
    return call.arg(0).numel + 8


def _tokens(call: OpCall) -> int:
    x = call.arg(0)
    return x.numel // x.shape[-1] if x.shape and x.shape[-1] else 1


@flops(f"{_QD}choose_qparams_per_token")
def _choose_qparams_per_token(call: OpCall) -> int:
    return 2 * call.arg(0).numel + 2 * _tokens(call)


@flops(f"{_QD}choose_qparams_per_token_asymmetric", f"{_QD}_choose_qparams_per_token_asymmetric_impl")
def _choose_qparams_per_token_asymmetric(call: OpCall) -> int:
    return 2 * call.arg(0).numel + 16 * _tokens(call)


@flops(f"{_QD}convert_element_type")
def _convert_element_type(call: OpCall) -> int:
    return 0


REGISTRY.set_family(
    Family.ELEMENTWISE, *(f"{_QD}{name}" for name in (
        "quantize_per_tensor", "quantize_per_channel", "quantize_per_token", "quantize_per_channel_group",
        "dequantize_per_tensor", "dequantize_per_channel", "dequantize_per_token", "dequantize_per_channel_group")))
REGISTRY.set_family(Family.DATA_MOVEMENT, f"{_QD}convert_element_type")
REGISTRY.set_family(
    Family.REDUCTION, *(f"{_QD}{name}" for name in (
        "choose_qparams", "choose_qparams_symmetric", "choose_qparams_per_token",
        "choose_qparams_per_token_asymmetric", "_choose_qparams_per_token_asymmetric_impl")))


@flops("aten.sort")
def _sort(call: OpCall) -> int:
    # comparisons of a comparison sort along one dim: n log2 n per row
    x = call.arg(0)
    dim = call.get("dim", -1)
    n = x.shape[dim] if x.shape else 1
    return 0 if n <= 1 else int(x.numel * math.log2(n))


@flops("aten.topk")
def _topk(call: OpCall) -> int:
    return call.arg(0).numel


HISTC_FLOPS = 4  # per element read: subtract min, scale to a bin, range check, count


@flops("aten.histc")
def _histc(call: OpCall) -> int:
    return HISTC_FLOPS * call.arg(0).numel


@flops("aten.isin")
def _isin(call: OpCall) -> int:
    """Membership tests. torch compares each element with each test element when the test set
    is small (its own threshold, below), else sorts both: counted as such (n log2 n compares)."""
    elements, test = call.tensors_of("elements"), call.tensors_of("test_elements")
    n = elements[0].numel if elements else 1
    m = test[0].numel if test else 1
    if m < 10 * n**0.145:
        return n * m
    return int((n + m) * math.log2(max(n + m, 2)))


# --- normalisation --------------------------------------------------------------------------

REGISTRY.set_family(
    Family.NORM,
    "aten.native_layer_norm", "aten.native_group_norm", "aten._fused_rms_norm", "aten.native_batch_norm",
    "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_functional", "aten.cudnn_batch_norm",
    "aten.miopen_batch_norm", "aten._native_batch_norm_legit_no_training", "aten.native_layer_norm_backward",
    "aten.native_group_norm_backward", "aten._fused_rms_norm_backward", "aten.native_batch_norm_backward",
    "aten.cudnn_batch_norm_backward", "aten.miopen_batch_norm_backward",
    # composites; batch-norm kernels (the with/no-update forms compiled and exported graphs hold;
    # SyncBatchNorm's statistics and their backward, CUDA's); weight normalisation
    "aten.layer_norm", "aten.group_norm", "aten.batch_norm", "aten.instance_norm", "aten.rms_norm",
    "aten._batch_norm_with_update", "aten._batch_norm_with_update_functional", "aten._batch_norm_no_update",
    "aten.batch_norm_backward", "aten._batch_norm_impl_index", "aten._batch_norm_impl_index_backward",
    "aten.batch_norm_stats", "aten.batch_norm_elemt", "aten.batch_norm_gather_stats",
    "aten.batch_norm_gather_stats_with_counts", "aten.batch_norm_update_stats", "aten.batch_norm_backward_reduce",
    "aten.batch_norm_backward_elemt", "aten._weight_norm", "aten._weight_norm_interface",
    "aten._weight_norm_interface_backward",
)


def _affine(call: OpCall, numel: int) -> int:
    return sum(numel for name in ("weight", "bias") if call.get(name) is not None)


@flops(
    "aten.native_layer_norm",
    "aten.native_group_norm",
    "aten._fused_rms_norm",
    "aten.native_batch_norm",
    "aten._native_batch_norm_legit",
    "aten._native_batch_norm_legit_functional",
    "aten.cudnn_batch_norm",
    "aten.miopen_batch_norm",
)
def _norm(call: OpCall) -> int:
    x = call.arg(0)
    # in inference, batch norm uses running statistics: subtract and scale only
    per_element = 2 if call.get("training") is False else NORM_FLOPS
    return per_element * x.numel + _affine(call, x.numel)


@flops("aten._native_batch_norm_legit_no_training")
def _norm_no_training(call: OpCall) -> int:
    x = call.arg(0)
    return 2 * x.numel + _affine(call, x.numel)


@flops(
    "aten.native_layer_norm_backward",
    "aten.native_group_norm_backward",
    "aten._fused_rms_norm_backward",
    "aten.native_batch_norm_backward",
    "aten.cudnn_batch_norm_backward",
    "aten.miopen_batch_norm_backward",
)
def _norm_backward(call: OpCall) -> int:
    grad = call.arg(0)
    mask = call.get("output_mask") or (True, True, True)
    total = NORM_BACKWARD_FLOPS * grad.numel if mask[0] else 0
    if len(mask) > 1 and mask[1]:
        total += 2 * grad.numel
    if len(mask) > 2 and mask[2]:
        total += grad.numel
    return total


# --- losses -----------------------------------------------------------------------------------


@flops("aten.nll_loss_forward", "aten.nll_loss2d_forward", "aten.nll_loss_backward",
       "aten.nll_loss2d_backward")
def _nll_loss(call: OpCall) -> int:
    # one gathered value per target, negated and summed
    return 2 * call["target"].numel


def _nll_traffic(call: OpCall) -> Traffic:
    """NLL reads only the log-probability of each target class, not the whole [N, C] input."""
    target = call["target"]
    logp = call["self"]
    read = [extent(target), extent(logp, target.numel)]
    weight = call.get("weight")
    if isinstance(weight, TensorMeta):
        read.append(extent(weight, min(weight.numel, target.numel)))
    if call.op.endswith("backward"):
        read.append(extent(call["grad_output"]))
        total_weight = call.get("total_weight")
        if isinstance(total_weight, TensorMeta):
            read.append(extent(total_weight))
    return Traffic(tuple(read), tuple(extent(t) for t in call.written()))


REGISTRY.add_traffic(
    ("aten.nll_loss_forward", "aten.nll_loss2d_forward", "aten.nll_loss_backward",
     "aten.nll_loss2d_backward"),
    _nll_traffic,
)

LOSSES: dict[str, int] = {
    "mse_loss": 3,  # subtract, square, add
    "mse_loss_backward": 3,
    "smooth_l1_loss": 4,
    "smooth_l1_loss_backward": 4,
    "huber_loss": 4,
    "huber_loss_backward": 4,
    "binary_cross_entropy": 7,
    "binary_cross_entropy_backward": 6,
    "binary_cross_entropy_with_logits": 10,
    "soft_margin_loss": 5,
}
def _loss(cost: int):  # type: ignore[no-untyped-def]
    def formula(call: OpCall) -> int:
        return cost * call["self"].numel  # per element of the prediction

    return formula


for _name, _cost in LOSSES.items():
    REGISTRY.add_flops(f"aten.{_name}", _loss(_cost))

# a loss is an elementwise expression per prediction (NLL: per target) and the sum its reduction
# asks for, fused in one kernel: counted with the elementwise ops
REGISTRY.set_family(
    Family.ELEMENTWISE,
    "aten.nll_loss_forward", "aten.nll_loss2d_forward", "aten.nll_loss_backward", "aten.nll_loss2d_backward",
    *(f"aten.{name}" for name in LOSSES),
)


# --- dropout and random numbers ---------------------------------------------------------------


@flops("aten.native_dropout")
def _native_dropout(call: OpCall) -> int:
    # draw, compare with p, scale
    return 3 * call.arg(0).numel


@flops("aten.native_dropout_backward")
def _native_dropout_backward(call: OpCall) -> int:
    return 2 * call.arg(0).numel  # grad * mask * scale


_RANDOM = (
    "bernoulli normal uniform random exponential geometric log_normal cauchy rand randn randint "
    "rand_like randn_like randint_like randperm multinomial"
).split()
REGISTRY.add_flops(
    tuple(n for name in _RANDOM for n in (f"aten.{name}", f"aten.{name}_")), _elementwise(1)
)
REGISTRY.set_family(
    Family.ELEMENTWISE,
    "aten.native_dropout", "aten.native_dropout_backward",
    *(n for name in _RANDOM for n in (f"aten.{name}", f"aten.{name}_")),
)


# --- pooling and resampling ---------------------------------------------------------------------

# pooling reduces each window (its backward spreads each gradient over its window, the same
# traffic); interpolation blends neighbours per output element
REGISTRY.set_family(
    Family.REDUCTION,
    "aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d", "aten.max_pool2d_with_indices",
    "aten.max_pool3d_with_indices", "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d",
    "aten.max_pool2d_with_indices_backward", "aten.max_pool3d_with_indices_backward", "aten.avg_pool2d_backward",
    "aten.avg_pool3d_backward", "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d", "aten.adaptive_max_pool2d",
    "aten._adaptive_avg_pool2d_backward", "aten._adaptive_avg_pool3d_backward", "aten.adaptive_max_pool2d_backward",
)
REGISTRY.set_family(
    Family.ELEMENTWISE,
    "aten.upsample_bilinear2d", "aten.upsample_linear1d", "aten.upsample_trilinear3d", "aten.upsample_bicubic2d",
    "aten.upsample_bilinear2d_backward", "aten.upsample_linear1d_backward", "aten.upsample_trilinear3d_backward",
    "aten.upsample_bicubic2d_backward",
)


@flops(
    "aten.max_pool1d", "aten.max_pool2d", "aten.max_pool3d",
    "aten.max_pool2d_with_indices", "aten.max_pool3d_with_indices",
    "aten.avg_pool1d", "aten.avg_pool2d", "aten.avg_pool3d",
)
def _pool(call: OpCall) -> int:
    out = call.outputs[0]
    assert out is not None
    kernel = tuple(call["kernel_size"])
    spatial = len(out.shape) - 2
    if len(kernel) == 1:  # one size for every spatial dim
        kernel = kernel * spatial
    return out.numel * math.prod(kernel)


@flops(
    "aten.max_pool2d_with_indices_backward", "aten.max_pool3d_with_indices_backward",
    "aten.avg_pool2d_backward", "aten.avg_pool3d_backward",
    "aten._adaptive_avg_pool2d", "aten._adaptive_avg_pool3d", "aten.adaptive_max_pool2d",
    "aten._adaptive_avg_pool2d_backward", "aten._adaptive_avg_pool3d_backward",
    "aten.adaptive_max_pool2d_backward",
)
def _pool_per_input(call: OpCall) -> int:
    # each input (or grad_output) element is added or compared once
    return call.arg(0).numel


def _interp_points(op: str, spatial: int) -> int:
    """Neighbours interpolation blends per output element: 2 per spatial dim (linear), 4 per
    spatial dim (cubic)."""
    return (4 if "bicubic" in op else 2) ** spatial


@flops("aten.upsample_bilinear2d", "aten.upsample_linear1d", "aten.upsample_trilinear3d",
       "aten.upsample_bicubic2d")
def _upsample_interp(call: OpCall) -> int:
    out = call.outputs[0]
    assert out is not None
    return 2 * _interp_points(call.op, len(out.shape) - 2) * out.numel  # a multiply-add per neighbour


@flops("aten.upsample_bilinear2d_backward", "aten.upsample_linear1d_backward",
       "aten.upsample_trilinear3d_backward", "aten.upsample_bicubic2d_backward")
def _upsample_interp_backward(call: OpCall) -> int:
    # each output gradient spread back over the neighbours it blended: a multiply-add each
    grad = call["grad_output"]
    return 2 * _interp_points(call.op, len(grad.shape) - 2) * grad.numel


# --- embedding and indexing: data movement with op-specific traffic ---------------------------

REGISTRY.set_family(
    Family.DATA_MOVEMENT,
    "aten.embedding", "aten.embedding_dense_backward", "aten._embedding_bag", "aten._embedding_bag_forward_only",
    "aten.index_put", "aten.index_put_", "aten._index_put_impl_", "aten._unsafe_masked_index_put_accumulate",
    "aten.index_add", "aten.index_add_", "aten.scatter_add", "aten.scatter_add_", "aten.scatter_reduce",
    "aten.scatter_reduce_", "aten.index_reduce", "aten.index_reduce_",
)


@flops("aten.embedding")
def _embedding(call: OpCall) -> int:
    return 0


def _rows_gathered(weight: TensorMeta, lookups: int) -> Extent:
    """The table rows `lookups` lookups of `weight`'s rows read: one row each, but never more than
    the table spans (compulsory traffic: a row looked up again is not read again), as the gathers
    (`_gather_traffic`) cap their source at its span."""
    return extent(weight, min(weight.span, lookups * math.prod(weight.shape[1:])))


@traffic("aten.embedding")
def _embedding_traffic(call: OpCall) -> Traffic:
    """A lookup reads the indices and the gathered rows (at most the whole table), never more."""
    weight, indices = call["weight"], call["indices"]
    read = (extent(indices), _rows_gathered(weight, indices.numel))
    return Traffic(read, tuple(extent(t) for t in call.written()))


@flops("aten.embedding_dense_backward")
def _embedding_backward(call: OpCall) -> int:
    return call["grad_output"].numel  # each gathered row is added into the gradient


#: `_embedding_bag`'s `mode` argument
EMBEDDING_BAG_SUM, EMBEDDING_BAG_MEAN, EMBEDDING_BAG_MAX = 0, 1, 2


@flops("aten._embedding_bag", "aten._embedding_bag_forward_only")
def _embedding_bag(call: OpCall) -> int:
    """The arithmetic torch does on the gathered rows, per element of the n = `indices.numel` rows
    of D elements gathered into B bags (B x D outputs):

    * sum: one add per gathered element, `n D` (torch accumulates every row into a zeroed bag);
      with per-sample weights (sum only) a multiply and an add, `2 n D`;
    * mean: the sum's `n D` adds, then one divide per output element, `B D` (torch divides the
      whole output by the bag sizes, an empty bag's by 1);
    * max: one compare per gathered element, `n D`, as memwall's max reductions count per element
      read (torch copies each bag's first row instead of comparing it: an upper bound by `B D`).

    Rows of `padding_idx`, which torch skips, count too (data decides them: an upper bound there).
    Building the bags' offsets and sizes is index bookkeeping, not counted."""
    weight, indices = call["weight"], call["indices"]
    gathered = indices.numel * math.prod(weight.shape[1:])
    if isinstance(call.get("per_sample_weights"), TensorMeta):
        return 2 * gathered
    if call.get("mode") == EMBEDDING_BAG_MEAN:
        output = call.outputs[0] if call.outputs else None
        if output is None:  # B bags: one per offset, less the closing one with include_last_offset
            output_rows = call["offsets"].numel - (1 if call.get("include_last_offset") else 0)
            return gathered + output_rows * math.prod(weight.shape[1:])
        return gathered + output.numel
    return gathered


@traffic("aten._embedding_bag", "aten._embedding_bag_forward_only")
def _embedding_bag_traffic(call: OpCall) -> Traffic:
    """The indices, the gathered rows (at most the whole table), the offsets and per-sample weights."""
    weight, indices = call["weight"], call["indices"]
    read = [extent(indices), _rows_gathered(weight, indices.numel)]
    read += [extent(t) for name, t in call.tensors() if name not in ("weight", "indices")]
    return Traffic(tuple(read), tuple(extent(t) for t in call.written()))


def _gather_traffic(source: str):  # type: ignore[no-untyped-def]
    """Gathers read as many source elements as they produce, plus the index tensors."""

    def formula(call: OpCall) -> Traffic:
        src = call[source]
        produced = sum(t.numel for t in call.written())
        read = [extent(src, min(src.span, produced))]
        read += [extent(t) for name, t in call.tensors() if name != source]
        return Traffic(tuple(read), tuple(extent(t) for t in call.written()))

    return formula


REGISTRY.add_traffic(
    ("aten.index_select", "aten.gather", "aten.index.Tensor", "aten._unsafe_index.Tensor",
     "aten.take", "aten.masked_select"),
    _gather_traffic("self"),
)


def _index_put_traffic(call: OpCall) -> Traffic:
    """In-place index_put_ reads the values and indices and writes only the indexed positions."""
    values = call["values"]
    read = [extent(t) for name, t in call.tensors() if name != "self"]
    if call.get("accumulate"):
        read.append(extent(call["self"], values.numel))
    return Traffic(tuple(read), (extent(call["self"], values.numel),))


REGISTRY.add_traffic(("aten.index_put_", "aten._index_put_impl_"), _index_put_traffic)


@flops("aten.index_put", "aten.index_put_", "aten._index_put_impl_")
def _index_put(call: OpCall) -> int:
    return call["values"].numel if call.get("accumulate") else 0


@flops("aten._unsafe_masked_index_put_accumulate")
def _masked_index_put_accumulate(call: OpCall) -> int:
    # compiled graphs' embedding backward: one add per value accumulated
    return call["values"].numel


@flops("aten.index_add", "aten.index_add_", "aten.scatter_add", "aten.scatter_add_",
       "aten.scatter_reduce", "aten.scatter_reduce_", "aten.index_reduce", "aten.index_reduce_")
def _scatter_accumulate(call: OpCall) -> int:
    """One add, multiply or compare (sum, prod, amax, amin) per source element combined into the
    output. `reduce="mean"` adds each source element, then divides every element of the output by
    its count, as torch does (`out.div_(count)` over the whole output, positions no index names
    divided by 1), with `include_self` or without: the output's numel more. (On CPU, an index
    expanded along the other dims takes torch's row-wise path, which divides only the rows some
    index names: an upper bound there.) Counting the elements per position and seeding the
    positions `include_self=False` resets are bookkeeping, not counted."""
    combined = call["source"].numel if call.get("source") is not None else call["src"].numel
    if call.get("reduce") == "mean":
        return combined + call["self"].numel
    return combined


def _write_only_self(call: OpCall) -> Traffic:
    """copy_, fill_, random fills: self is overwritten, not read."""
    read = tuple(extent(t) for name, t in call.tensors() if name not in ("self", *call.out_args))
    return Traffic(read, tuple(extent(t) for t in call.written()))


REGISTRY.add_traffic(
    ("aten.copy_", "aten.fill_", "aten.zero_", "aten._foreach_copy_", "aten._foreach_zero_",
     "aten.masked_fill_", "aten.zeros_like", "aten.ones_like", "aten.full_like", "aten.new_zeros",
     "aten.new_ones", "aten.new_full", "aten.rand_like", "aten.randn_like", "aten.randint_like")
    + tuple(f"aten.{name}_" for name in _RANDOM),
    _write_only_self,
)

_DATA_MOVEMENT = (
    "clone _to_copy copy copy_ cat stack hstack vstack constant_pad_nd reflection_pad1d "
    "reflection_pad2d reflection_pad3d replication_pad1d replication_pad2d replication_pad3d "
    "index_select gather index _unsafe_index take masked_select masked_scatter roll flip repeat "
    "repeat_interleave tril triu tril_ triu_ slice_backward select_backward index_select_backward "
    "scatter scatter_ narrow_copy unfold_backward as_strided_scatter slice_scatter select_scatter "
    "diagonal_scatter diagonal_backward _local_scalar_dense _reshape_copy view_copy expand_copy "
    "permute_copy t_copy transpose_copy unsqueeze_copy squeeze_copy alias_copy detach_copy "
    "lift_fresh_copy pixel_shuffle pixel_unshuffle im2col col2im upsample_nearest1d "
    "upsample_nearest2d upsample_nearest3d upsample_nearest2d_backward _pin_memory "
    "_foreach_copy_ embedding_renorm_ nonzero _unique _unique2 unique_dim unique_consecutive bincount "
    "masked_fill_ native_channel_shuffle channel_shuffle select_copy slice_copy unbind_copy split_copy "
    "split_with_sizes_copy _nested_tensor_from_tensor_list to_padded_tensor _nested_from_padded "
    "_nested_tensor_from_mask _nested_tensor_from_mask_left_aligned"
).split()


def _no_flops(call: OpCall) -> int:
    return 0


REGISTRY.add_flops(tuple(f"aten.{name}" for name in _DATA_MOVEMENT if name not in ("masked_fill_", "col2im")),
                   _no_flops)
# masked_fill_ is elementwise (ELEMENTWISE's variants), _foreach_copy_ a foreach kernel; col2im
# (nn.Fold) moves data but sums overlapping patches (its formula below)
REGISTRY.set_family(Family.DATA_MOVEMENT, *(f"aten.{name}" for name in _DATA_MOVEMENT
                                            if name not in ("masked_fill_", "_foreach_copy_")))
REGISTRY.set_family(Family.OPTIMIZER, "aten._foreach_copy_")
# the ops compiled graphs hold besides aten's (torch._inductor.inductor_prims): casts, index
# ranges and seed bookkeeping move data; a random draw is 1 per element (as aten.rand), a fused
# multiply-add 2
REGISTRY.add_flops(("prims.convert_element_type", "prims.iota", "prims.inductor_seeds",
                    "prims.inductor_lookup_seed"), _no_flops)
REGISTRY.add_flops(("prims.inductor_random",), _elementwise(1))
REGISTRY.add_flops(("prims.fma",), _elementwise(2))
REGISTRY.set_family(Family.DATA_MOVEMENT, "prims.convert_element_type", "prims.iota", "prims.inductor_seeds",
                    "prims.inductor_lookup_seed")
REGISTRY.set_family(Family.ELEMENTWISE, "prims.inductor_random", "prims.fma")
# torch's primitives (torch._prims) named as an elementwise aten op and computing the same: its cost
# per element. Eager code meets them where torch runs a reference implementation: forward-mode AD
# (torch.func.jvp, jacfwd, hessian) adds a tangent to a zero tangent with prims.add
_PRIMS_ELEMENTWISE = (
    "abs neg add sub mul div reciprocal sqrt rsqrt exp exp2 expm1 log log2 log10 log1p sin cos tan asin acos "
    "atan sinh cosh tanh erf erfc pow maximum minimum fmax fmin sign floor ceil round trunc remainder fmod eq "
    "ne lt le gt ge bitwise_and bitwise_or bitwise_xor bitwise_not where atan2 hypot signbit lgamma digamma "
    "asinh acosh atanh igamma igammac"
).split()
for _name in _PRIMS_ELEMENTWISE:
    REGISTRY.add_flops((f"prims.{_name}",), _elementwise(ELEMENTWISE[_name]))
REGISTRY.set_family(Family.ELEMENTWISE, *(f"prims.{name}" for name in _PRIMS_ELEMENTWISE))

# creation: writes its output, reads nothing; 0 FLOPs
_CREATION = (
    "zeros ones full zeros_like ones_like full_like new_zeros new_ones new_full fill_ zero_ "
    "arange linspace logspace scalar_tensor eye _foreach_zero_ tril_indices triu_indices"
).split()
REGISTRY.add_flops(tuple(f"aten.{name}" for name in _CREATION), _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *(f"aten.{name}" for name in _CREATION if name != "_foreach_zero_"))
REGISTRY.set_family(Family.OPTIMIZER, "aten._foreach_zero_")

# allocation: no data is touched
_ALLOCATION = (
    "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty",
    "aten.new_empty_strided", "aten.resize_", "aten.resize_as_",
    # a zero tensor with no storage (forward-mode AD's zero tangents): nothing is written
    "aten._efficientzerotensor",
    # a quantized tensor's storage (torch.ao's quantized modules, dynamic quantization's packing)
    "aten._empty_affine_quantized", "aten._empty_per_channel_affine_quantized",
)
REGISTRY.zero(*_ALLOCATION)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_ALLOCATION)

# views and metadata; ops whose schema marks every result as an alias are caught generically
_VIEWS = tuple(
    f"aten.{name}"
    for name in (
        "view _unsafe_view reshape _reshape_alias t transpose permute expand slice select "
        "split split_with_sizes unsqueeze squeeze alias detach as_strided unbind narrow "
        "lift_fresh unfold diagonal view_as_real view_as_complex _conj _neg_view real imag "
        "sym_size sym_stride sym_numel sym_storage_offset is_same_size "
        "_has_compatible_shallow_copy_type set_ squeeze_ unsqueeze_ t_ transpose_ as_strided_ "
        "_assert_async _assert_tensor_metadata record_stream _nested_tensor_size "
        "_nested_tensor_strides _nested_tensor_storage_offsets is_nonzero detach_ "
        "_propagate_xla_data _has_same_storage_numel is_pinned is_set_to "
        # a sparse tensor built from its indices and values (no copy), and its layout read
        "_sparse_coo_tensor_with_dims_and_tensors _sparse_coo_tensor_with_dims is_coalesced _coalesced_ "
        "_nnz sparse_dim dense_dim sparse_resize_ sparse_resize_and_clear_"
    ).split()
)
REGISTRY.zero(*_VIEWS)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_VIEWS)


# sparse tensors (sparse embedding gradients, sparse optimizers, graph adjacency; building one and
# reading its layout are views above): converting between layouts moves what is stored;
# coalescing sums each duplicate index's row into one; a dense tensor masked by a sparse one reads
# only the masked elements
_SPARSE_CONVERSIONS = tuple(
    f"aten.{name}" for name in (
        "_to_dense to_dense _to_sparse to_sparse _to_sparse_csr _to_sparse_csc _to_sparse_bsr _to_sparse_bsc "
        "sparse_mask"
    ).split()
)
REGISTRY.add_flops(_SPARSE_CONVERSIONS, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_SPARSE_CONVERSIONS)


@traffic("aten.sparse_mask")
def _sparse_mask_traffic(call: OpCall) -> Traffic:
    """self's elements where the mask stores one, and the mask's indices; the result written."""
    mask, dense = call["mask"], call["self"]
    return Traffic((extent(mask), extent(dense, mask.numel)), tuple(extent(t) for t in call.written()))


@flops("aten._coalesce")
def _coalesce(call: OpCall) -> int:
    out = call.outputs[0] if call.outputs else None
    return max(call["self"].numel - (out.numel if out is not None else 0), 0)


REGISTRY.set_family(Family.REDUCTION, "aten._coalesce")


@traffic("aten.add_", "aten.sub_")
def _sparse_into_dense_traffic(call: OpCall) -> Traffic:
    """A sparse operand added into a dense tensor in place reads and writes only the elements it
    stores (and reads its values and indices); any other add_ is compulsory traffic."""
    other, dense = call.get("other"), call["self"]
    if not isinstance(other, SparseMeta) or isinstance(dense, SparseMeta):
        return default_traffic(call)
    touched = extent(dense, min(other.numel, dense.numel))
    return Traffic((extent(other), touched), (touched,))


# FSDP2's own copies around its collectives (torch.distributed.fsdp): pure data movement
# fsdp.chunk_cat_mixed_dtype (torch 2.15) replaces fsdp.chunk_cat in the reduce-scatter copy-in: the same
# schema, each gradient read at its own dtype and written cast into the buffer
_FSDP_COPIES = ("fsdp.all_gather_copy_in", "fsdp.chunk_cat", "fsdp.chunk_cat_mixed_dtype", "fsdp.split_with_sizes_copy",
                "fsdp.copy_")
REGISTRY.add_flops(_FSDP_COPIES, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_FSDP_COPIES)


@traffic("fsdp.all_gather_copy_in")
def _fsdp_all_gather_copy_in(call: OpCall) -> Traffic:
    """Copies this rank's shards into its slice of the all-gather buffer (the schema names the
    buffer as an input and returns two views of it: neither is read or written whole)."""
    shards = tuple(extent(t) for t in call.tensors_of("all_gather_inputs"))
    return Traffic(shards, shards)


@traffic("fsdp.copy_")
def _fsdp_copy(call: OpCall) -> Traffic:
    """`tensor` is overwritten by `data`, not read."""
    return Traffic(tuple(extent(t) for t in call.tensors_of("data")),
                   tuple(extent(t) for t in call.tensors_of("tensor")))


# --- communication ---------------------------------------------------------------------------

# The collectives (comm.COLLECTIVE_OPS reads what each one moves; they are rows of their own
# kind, under the link's roof), the functional collectives' wait, and the wrapper they put their
# result in for autograd.
_FUNCTIONAL_COLLECTIVES = tuple(f"_c10d_functional.{name}" for name in (
    "all_reduce", "all_reduce_", "all_reduce_coalesced", "all_reduce_coalesced_", "all_gather_into_tensor",
    "all_gather_into_tensor_out", "all_gather_into_tensor_coalesced", "reduce_scatter_tensor",
    "reduce_scatter_tensor_out", "reduce_scatter_tensor_coalesced", "all_to_all_single", "broadcast", "broadcast_",
    "isend", "irecv", "wait_tensor"))
REGISTRY.set_family(
    Family.COMMUNICATION,
    "c10d.allreduce_", "c10d.allreduce_coalesced_", "c10d.allgather_", "c10d._allgather_base_",
    "c10d.allgather_coalesced_", "c10d.allgather_into_tensor_coalesced_", "c10d.reduce_scatter_",
    "c10d._reduce_scatter_base_", "c10d.reduce_scatter_tensor_coalesced_", "c10d.alltoall_", "c10d.alltoall_base_",
    "c10d.broadcast_", "c10d.reduce_", "c10d.gather_", "c10d.scatter_", "c10d.send", "c10d.recv_",
    "c10d.recv_any_source_", "c10d.barrier", "c10d.monitored_barrier_", *_FUNCTIONAL_COLLECTIVES,
    "_c10d_functional._wrap_tensor_autograd",
)
# inside a compiled region (a compiled tensor-parallel model's all-reduce, traced into its graph) a
# functional collective and its wait reach the formulas: no arithmetic here (memwall lists each
# with the run's collectives, sized from the graph: hooks/collectives.py). Eager ones never reach
# a formula: the collective recorder takes them
REGISTRY.add_flops(_FUNCTIONAL_COLLECTIVES, _no_flops)

# functional collectives wrap their result for autograd (an AsyncCollectiveTensor): no data touched
REGISTRY.zero("_c10d_functional._wrap_tensor_autograd")


# --- optimizers ------------------------------------------------------------------------------

# the fused steps (and their functional forms, which compiled graphs hold) and the grad scaler's
# kernels; every _foreach_ kernel is here too, put by its section
REGISTRY.set_family(
    Family.OPTIMIZER,
    "aten._fused_adamw_", "aten._fused_adam_", "aten._fused_sgd_", "aten._fused_adagrad_",
    "aten._fused_adamw", "aten._fused_adam", "aten._fused_sgd", "aten._fused_adagrad",
    "aten._amp_foreach_non_finite_check_and_unscale_", "aten._amp_update_scale_",
)

ADAM_FLOPS = 14  # m, v moments (7), sqrt/eps/divide (3), update (3), decoupled decay (1)


def _param_elements(call: OpCall) -> int:
    return sum(t.numel for t in call.tensors_of("self"))


@flops("aten._fused_adamw_", "aten._fused_adam_")
def _fused_adam(call: OpCall) -> int:
    """The arithmetic the foreach step of the same optimizer runs (op for op, as counted there):
    ADAM_FLOPS less the decoupled decay where there is no weight decay (Adam's is L2: added to
    the gradient, 2), one more for amsgrad's running maximum."""
    per_element = ADAM_FLOPS - 1 + (1 if call.get("amsgrad") else 0)
    if call.get("weight_decay"):
        per_element += 1 if call.op.startswith("aten._fused_adamw") else 2
    return per_element * _param_elements(call)


@flops("aten._fused_sgd_")
def _fused_sgd(call: OpCall) -> int:
    """As the foreach step counts it: the update (2), weight decay into the gradient (2), the
    momentum buffer (2, 3 with dampening; on the first step it is the gradient, no arithmetic),
    Nesterov's look-ahead (2)."""
    per_element = 2
    per_element += 2 if call.get("weight_decay") else 0
    if call.get("momentum") and not call.get("is_first_step"):
        per_element += 3 if call.get("dampening") else 2
    per_element += 2 if call.get("nesterov") else 0
    return per_element * _param_elements(call)


@flops("aten._fused_adagrad_")
def _fused_adagrad(call: OpCall) -> int:
    """As the single-tensor step counts it: the sum of squares (addcmul, 3), its root and eps (2),
    the update (addcdiv, 3); weight decay into the gradient (2)."""
    return (8 + (2 if call.get("weight_decay") else 0)) * _param_elements(call)


def _fused_optimizer_traffic(call: OpCall) -> Traffic:
    """Fused optimizers read params, grads and state, and write params and state (not grads,
    though their schema marks grads writable for unscaling)."""
    read = tuple(extent(t) for _, t in call.tensors())
    written = tuple(
        extent(t) for name in call.mutated if name != "grads" for t in call.tensors_of(name)
    )
    return Traffic(read, written)


REGISTRY.add_traffic(
    ("aten._fused_adamw_", "aten._fused_adam_", "aten._fused_sgd_", "aten._fused_adagrad_"),
    _fused_optimizer_traffic,
)

# --- what real code runs beyond the common layers ------------------------------------------------
# Found by running what users run (static KV caches, vision-language models, preference losses,
# AMP's grad scaler, RNNs, torch's own nn.Transformer fast path, audio and vision front ends,
# second-order optimizers) and listing what memwall reported uncounted.

# in-place forms of the matmuls, and the outer product: the same products and adds
REGISTRY.add_flops(("aten.addmm_",), _addmm)
REGISTRY.add_flops(("aten.baddbmm_",), _baddbmm)
REGISTRY.add_flops(("aten.addbmm_",), _addbmm)
REGISTRY.add_flops(("aten.addmv_",), _addmv)
# torch 2.15's scaled matmuls (float8 training): a matmul of their first two operands
REGISTRY.add_flops(("aten._scaled_mm_v2",), _mm)
REGISTRY.add_flops(("aten._scaled_grouped_mm_v2",), _grouped_mm)


# transformers' expert matmul as a custom op (transformers/integrations/moe.py): what its
# experts run under torch.compile in any dtype but bf16 (Inductor's grouped matmul takes bf16
# only), and where torch's grouped matmul cannot run; one torch.mm per expert over its rows of
# the tokens sorted by expert: input [s, k] and weights [e, k, n], as aten._grouped_mm's
REGISTRY.add_flops(("transformers.grouped_mm_fallback",), _grouped_mm)


@flops("transformers.grouped_mm_fallback_backward")
def _grouped_mm_fallback_backward(call: OpCall) -> int | None:
    # per expert, grad_input = grad_output @ weight[i]^T and grad_weight[i] = input^T @
    # grad_output: two matmuls of the forward's size (its input and weights lead the arguments)
    forward = _grouped_mm(call)
    return None if forward is None else 2 * forward


@flops("aten.addr", "aten.addr_")
def _addr(call: OpCall) -> int:
    # beta * self + alpha * outer(vec1, vec2): a multiply per output element, then the add
    outer = call["vec1"].numel * call["vec2"].numel
    return _real(call, outer, _scaled_add(call, outer))


@flops("aten._weight_int8pack_mm")
def _weight_int8pack_mm(call: OpCall) -> int:
    # x [m, k] @ int8 weight [n, k]^T, each output scaled by its channel's scale
    m, k = call["self"].shape
    n = call["mat2"].shape[0]
    return 2 * m * k * n + m * n


@flops("aten._weight_int4pack_mm", "aten._weight_int4pack_mm_for_cpu")
def _weight_int4pack_mm(call: OpCall) -> int | None:
    # x [m, k] @ a packed int4 weight [k, n]: each weight dequantized once per call (times its
    # group's scale, plus its zero point), then the matmul
    out = call.outputs[0]
    if out is None:
        return None
    x = call["self"]
    m, k = math.prod(x.shape[:-1]), x.shape[-1]
    n = out.shape[-1]
    return 2 * m * k * n + 2 * k * n


REGISTRY.set_family(
    Family.MATMUL, "aten.addmm_", "aten.baddbmm_", "aten.addbmm_", "aten.addmv_", "aten._scaled_mm_v2",
    "aten._scaled_grouped_mm_v2", "aten.addr", "aten.addr_", "aten._weight_int8pack_mm", "aten._weight_int4pack_mm",
    "aten._weight_int4pack_mm_for_cpu", "transformers.grouped_mm_fallback", "transformers.grouped_mm_fallback_backward",
)

# indexed writes: a static KV cache's index_copy_, index_fill_, a vision-language model's
# image features scattered into its text embeddings (masked_scatter_), put_


def _slice_elements(t: TensorMeta, dim: int) -> int:
    """Elements of one index along `dim` (a slice of t at one position)."""
    if not t.shape:
        return 1
    return t.numel // max(t.shape[dim], 1)


@traffic("aten.index_copy_")
def _index_copy_traffic(call: OpCall) -> Traffic:
    """Reads the index and the source; writes only the indexed slices of self."""
    source = call["source"]
    return Traffic((extent(call["index"]), extent(source)), (extent(call["self"], source.numel),))


@traffic("aten.index_fill_")
def _index_fill_traffic(call: OpCall) -> Traffic:
    """Reads the index (and a tensor value); writes the indexed slices of self."""
    this, index = call["self"], call["index"]
    read = tuple(extent(t) for name, t in call.tensors() if name != "self")
    return Traffic(read, (extent(this, index.numel * _slice_elements(this, call["dim"])),))


@traffic("aten.masked_scatter_")
def _masked_scatter_traffic(call: OpCall) -> Traffic:
    """Reads the mask and the source values it takes; writes self where the mask is set (a count
    only the data knows: at most all of self, counted so)."""
    this, source = call["self"], call["source"]
    read = (extent(call["mask"]), extent(source, min(source.span, this.numel)))
    return Traffic(read, (extent(this),))


@traffic("aten.put_")
def _put_traffic(call: OpCall) -> Traffic:
    """Like index_put_: reads the values and flat indices, writes (and accumulating, reads) the
    positions they name."""
    this, source = call["self"], call["source"]
    read = [extent(call["index"]), extent(source)]
    if call.get("accumulate"):
        read.append(extent(this, source.numel))
    return Traffic(tuple(read), (extent(this, source.numel),))


@flops("aten.put", "aten.put_")
def _put(call: OpCall) -> int:
    return call["source"].numel if call.get("accumulate") else 0


_INDEXED_WRITES = (
    "aten.index_copy", "aten.index_copy_", "aten.index_fill", "aten.index_fill_", "aten.masked_scatter_",
    "aten.masked_scatter_backward",
)
REGISTRY.add_flops(_INDEXED_WRITES, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_INDEXED_WRITES, "aten.put", "aten.put_")

# more pure data movement: copies that rearrange, pack or pick
_MORE_DATA_MOVEMENT = (
    "aten.diag_embed", "aten.diagonal_copy", "aten.unfold_copy", "aten.rot90", "aten.block_diag",
    "aten._chunk_cat", "aten.nonzero_static", "aten.complex", "aten._upsample_nearest_exact1d",
    "aten._upsample_nearest_exact2d", "aten._upsample_nearest_exact3d", "aten._upsample_nearest_exact1d_backward",
    "aten._upsample_nearest_exact2d_backward", "aten._upsample_nearest_exact3d_backward",
    "aten.upsample_nearest1d_backward", "aten.upsample_nearest3d_backward",
)
REGISTRY.add_flops(_MORE_DATA_MOVEMENT, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_MORE_DATA_MOVEMENT)
# the functional fill and zero: a new tensor written, self only gives the shape
REGISTRY.add_flops(("aten.fill", "aten.zero"), _no_flops)
REGISTRY.add_traffic(("aten.fill", "aten.zero"), _write_only_self)
REGISTRY.set_family(Family.DATA_MOVEMENT, "aten.fill", "aten.zero")
# views torch does not mark as aliases, an allocation, and the checks and tokens exported and
# compiled programs run (torch.export's .module(), torch._check): no data touched
_NOTHING_TOUCHED = (
    "aten.unsafe_split", "aten.unsafe_split_with_sizes", "aten.unsafe_chunk", "aten.empty_permuted",
    "aten._linalg_check_errors", "aten._assert_scalar", "aten._functional_assert_async",
    "aten._functional_assert_scalar", "aten.sym_constrain_range", "aten.sym_constrain_range_for_size",
    "aten._functional_sym_constrain_range", "aten._functional_sym_constrain_range_for_size",
    "aten._make_dep_token", "aten._print",
)
REGISTRY.zero(*_NOTHING_TOUCHED)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_NOTHING_TOUCHED)


def _pad_backward(call: OpCall) -> int:
    """Reflection and replication padding's backward: the gradient of each padded element is
    added into the element it copied, one add each (the rest is copied)."""
    return max(call["grad_output"].numel - call["self"].numel, 0)


_PAD_BACKWARD = tuple(f"aten.{kind}_pad{d}d_backward" for kind in ("reflection", "replication") for d in (1, 2, 3))
REGISTRY.add_flops(_PAD_BACKWARD, _pad_backward)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_PAD_BACKWARD)

# the shift operators under their Python names
_SHIFTS = ("aten.__lshift__", "aten.__rshift__", "aten.__ilshift__", "aten.__irshift__")
REGISTRY.add_flops(_SHIFTS, _elementwise(1))
REGISTRY.set_family(Family.ELEMENTWISE, *_SHIFTS)

#: log(sigmoid(x)) as torch computes it, min(x, 0) - log1p(exp(-|x|)): min, abs, neg, exp, log1p, sub
LOG_SIGMOID_FLOPS = 6
#: its backward from the saved exp(-|x|) = e: z = e / (1 + e), 1 - z or z by the sign of x, times grad
LOG_SIGMOID_BACKWARD_FLOPS = 5
#: glu(x) = a * sigmoid(b) for the halves a, b of x: sigmoid 4, multiply 1, per output element
GLU_FLOPS = 5
#: its backward per output gradient g: s = sigmoid(b) (4), grad_a = g s (1),
#: grad_b = g a s (1 - s) (4)
GLU_BACKWARD_FLOPS = 9


@flops("aten.log_sigmoid_forward")
def _log_sigmoid(call: OpCall) -> int:
    return LOG_SIGMOID_FLOPS * call["self"].numel


@flops("aten.log_sigmoid_backward")
def _log_sigmoid_backward(call: OpCall) -> int:
    return LOG_SIGMOID_BACKWARD_FLOPS * call["grad_output"].numel


@flops("aten.glu")
def _glu(call: OpCall) -> int:
    return GLU_FLOPS * call["self"].numel // 2


@flops("aten.glu_backward")
def _glu_backward(call: OpCall) -> int:
    return GLU_BACKWARD_FLOPS * call["grad_output"].numel


@flops("aten._prelu_kernel")
def _prelu(call: OpCall) -> int:
    return ELEMENTWISE["leaky_relu"] * call["self"].numel  # compare, multiply by the slope


@flops("aten._prelu_kernel_backward")
def _prelu_backward(call: OpCall) -> int:
    # grad_input: compare and multiply by the slope; grad_weight's terms: grad * x where x < 0
    return (ELEMENTWISE["leaky_relu_backward"] + 1) * call["self"].numel


@flops("aten.rrelu_with_noise", "aten.rrelu_with_noise_", "aten.rrelu_with_noise_functional")
def _rrelu(call: OpCall) -> int:
    # training draws a slope per element (1) before leaky_relu's compare and multiply (2)
    return (3 if call.get("training") else ELEMENTWISE["leaky_relu"]) * call["self"].numel


@flops("aten.rrelu_with_noise_backward")
def _rrelu_backward(call: OpCall) -> int:
    return ELEMENTWISE["leaky_relu_backward"] * call["grad_output"].numel


@flops("aten._fused_dropout")
def _fused_dropout(call: OpCall) -> int:
    return 3 * call["self"].numel  # as native_dropout: draw, compare with p, scale


@flops("aten.renorm", "aten.renorm_")
def _renorm(call: OpCall) -> int:
    # each sub-tensor's norm (2 per element), then each element rescaled (1)
    return 3 * call["self"].numel


@flops("aten.dist")
def _dist(call: OpCall) -> int:
    # the norm of the difference: subtract (1), then the norm's 2, per broadcast element
    n = math.prod(torch_broadcast(call["self"].shape, call["other"].shape))
    return (1 + REDUCTIONS["norm"]) * n


@flops("aten.trace")
def _trace(call: OpCall) -> int:
    shape = call["self"].shape
    return min(shape) if shape else 0  # one add per diagonal element


#: hann and hamming windows: a - b cos(2 pi n / (N - 1)): divide, multiply, cos, multiply, subtract
WINDOW_FLOPS = 5


@flops("aten.hann_window", "aten.hamming_window")
def _window(call: OpCall) -> int:
    return WINDOW_FLOPS * _produced(call)


REGISTRY.set_family(
    Family.ELEMENTWISE, "aten.log_sigmoid_forward", "aten.log_sigmoid_backward", "aten.glu", "aten.glu_backward",
    "aten._prelu_kernel", "aten._prelu_kernel_backward", "aten.rrelu_with_noise", "aten.rrelu_with_noise_",
    "aten.rrelu_with_noise_functional", "aten.rrelu_with_noise_backward", "aten._fused_dropout", "aten.hann_window",
    "aten.hamming_window",
)
REGISTRY.set_family(Family.NORM, "aten.renorm", "aten.renorm_")
REGISTRY.set_family(Family.REDUCTION, "aten.dist", "aten.trace")

# AMP's grad scaler (its family is set with the optimizers'): every gradient multiplied by 1/scale
# and checked for inf or nan; the scale's own update is a compare and a multiply on one element


@flops("aten._amp_foreach_non_finite_check_and_unscale_")
def _amp_unscale(call: OpCall) -> int:
    return 2 * sum(t.numel for t in call.tensors_of("self"))


@flops("aten._amp_update_scale_")
def _amp_update_scale(call: OpCall) -> int:
    return 2 * call["self"].numel



# searching, selecting and scanning


def _binary_search(values: int, boundaries: TensorMeta) -> int:
    """Compares of a binary search of each value among a sorted dim of n boundaries."""
    n = boundaries.shape[-1] if boundaries.shape else 1
    return values * math.ceil(math.log2(n + 1))


@flops("aten.searchsorted", "aten.bucketize")
def _searchsorted(call: OpCall) -> int:
    values = call.get("self")  # a Scalar's overloads search one value
    boundaries = call.get("sorted_sequence") or call["boundaries"]
    return _binary_search(values.numel if isinstance(values, TensorMeta) else 1, boundaries)


@flops("aten.kthvalue", "aten.median", "aten.nanmedian", "aten.cummax", "aten.cummin", "aten._cummax_helper",
       "aten._cummin_helper")
def _select_or_scan(call: OpCall) -> int:
    # a selection (k-th value, median) or a running max or min: one compare per element, as topk
    return call["self"].numel


@flops("aten.mode")
def _mode(call: OpCall) -> int:
    # each row sorted (n log2 n compares), then its runs counted (n)
    return _sort(call) + call["self"].numel


@flops("aten.segment_reduce")
def _segment_reduce(call: OpCall) -> int:
    return call["data"].numel


@flops("aten._segment_reduce_backward")
def _segment_reduce_backward(call: OpCall) -> int:
    return call["data"].numel  # each element's gradient (for max and min, a compare) once


REGISTRY.set_family(Family.OTHER, "aten.searchsorted", "aten.bucketize", "aten.mode")
REGISTRY.set_family(
    Family.REDUCTION, "aten.kthvalue", "aten.median", "aten.nanmedian", "aten.cummax", "aten.cummin",
    "aten._cummax_helper", "aten._cummin_helper", "aten.segment_reduce", "aten._segment_reduce_backward",
)

# pairwise distances (torch.cdist, F.pdist): per pair of rows and feature a difference, its power
# or absolute value, and the add (3), then a root per pair; for p = 2 torch.cdist runs large
# inputs as a matmul (_euclidean_dist)


def _pairs_and_features(call: OpCall) -> tuple[int, int]:
    x1, x2 = call["x1"].shape, call["x2"].shape
    batch = math.prod(torch_broadcast(x1[:-2], x2[:-2]))
    return batch * x1[-2] * x2[-2], x1[-1]


@flops("aten._cdist_forward", "aten._cdist_backward")
def _cdist(call: OpCall) -> int:
    # the backward's per pair and feature: the difference, scaled by grad / dist, accumulated
    pairs, features = _pairs_and_features(call)
    return 3 * pairs * features + pairs


@flops("aten._euclidean_dist")
def _euclidean_dist(call: OpCall) -> int:
    """|x|^2 + |y|^2 - 2 x.y, as torch computes it: each row's squared norm (2 per element), x
    scaled by -2, one matmul of rows extended by two columns (norms and ones), then a clamp and
    a square root per pair."""
    x1, x2 = call["x1"], call["x2"]
    pairs, features = _pairs_and_features(call)
    rows = x1.numel // features + x2.numel // features
    return 2 * pairs * (features + 2) + 2 * features * rows + x1.numel + 2 * pairs


@flops("aten._pdist_forward", "aten._pdist_backward")
def _pdist(call: OpCall) -> int:
    n, features = call["self"].shape[-2:]
    pairs = n * (n - 1) // 2
    return 3 * pairs * features + pairs


REGISTRY.set_family(Family.MATMUL, "aten._euclidean_dist")
# the direct forms reduce each pair's features
REGISTRY.set_family(Family.REDUCTION, "aten._cdist_forward", "aten._cdist_backward", "aten._pdist_forward",
                    "aten._pdist_backward")

# Fourier transforms: 5 N log2 N FLOPs for a complex transform of N points, half that for a real
# one (r2c, c2r): the count FFTW's benchmarks report speed by (benchFFT, fftw.org/speed/method.html),
# over the product of the transformed dims; plus a multiply per output element when normalised
FFT_COMPLEX_FLOPS = 5.0
FFT_REAL_FLOPS = 2.5


def _fft(call: OpCall, signal: TensorMeta, per_point: float) -> int:
    dims = [d % len(signal.shape) for d in call["dim"]] if signal.shape else []
    points = math.prod(signal.shape[d] for d in dims)
    if points <= 1:
        return 0
    transforms = signal.numel // points
    total = round(transforms * per_point * points * math.log2(points))
    out = call.outputs[0]
    return total + (out.numel if call.get("normalization") and out is not None else 0)


@flops("aten._fft_c2c")
def _fft_c2c(call: OpCall) -> int:
    return _fft(call, call["self"], FFT_COMPLEX_FLOPS)


@flops("aten._fft_r2c")
def _fft_r2c(call: OpCall) -> int:
    return _fft(call, call["self"], FFT_REAL_FLOPS)


@flops("aten._fft_c2r")
def _fft_c2r(call: OpCall) -> int | None:
    out = call.outputs[0]
    return None if out is None else _fft(call, out, FFT_REAL_FLOPS)


REGISTRY.set_family(Family.OTHER, "aten._fft_c2c", "aten._fft_r2c", "aten._fft_c2r")

# sampling at computed coordinates (F.grid_sample: spatial transformers, deformable attention):
# each output element blends its 2^d neighbours (bilinear, trilinear) or 16 (bicubic) as
# interpolation does; nearest picks one


def _grid_points(call: OpCall) -> int:
    spatial = len(call["input"].shape) - 2
    mode = call.get("interpolation_mode", 0)
    return {0: 2**spatial, 1: 0, 2: 16}.get(mode, 2**spatial)


@flops("aten.grid_sampler_2d", "aten.grid_sampler_3d", "aten._grid_sampler_2d_cpu_fallback")
def _grid_sample(call: OpCall) -> int | None:
    out = call.outputs[0]
    return None if out is None else 2 * _grid_points(call) * out.numel


@flops("aten.grid_sampler_2d_backward", "aten.grid_sampler_3d_backward",
       "aten._grid_sampler_2d_cpu_fallback_backward")
def _grid_sample_backward(call: OpCall) -> int:
    # each gradient spread over the points it blended (a multiply-add each) for the input; for the
    # grid, each point's value times its weight's derivative along each coordinate
    grad, points = call["grad_output"].numel, _grid_points(call)
    spatial = len(call["input"].shape) - 2
    mask = call.get("output_mask") or (True, True)
    return 2 * points * grad * (int(bool(mask[0])) + spatial * int(bool(mask[1])))


@flops("aten.affine_grid_generator")
def _affine_grid(call: OpCall) -> int:
    # each output location's d coordinates: a row of theta [d, d + 1] times (x, y[, z], 1)
    size = tuple(call["size"])
    spatial = len(size) - 2
    return 2 * size[0] * math.prod(size[2:]) * spatial * (spatial + 1)


REGISTRY.set_family(
    Family.ELEMENTWISE, "aten.grid_sampler_2d", "aten.grid_sampler_3d", "aten._grid_sampler_2d_cpu_fallback",
    "aten.grid_sampler_2d_backward", "aten.grid_sampler_3d_backward", "aten._grid_sampler_2d_cpu_fallback_backward",
)
REGISTRY.set_family(Family.MATMUL, "aten.affine_grid_generator")


@flops("aten._weight_norm_interface")
def _weight_norm(call: OpCall) -> int:
    # w = g * v / |v| over every dim but one: the norms (2 per element of v, a root and a divide
    # per norm), then each element scaled
    v, g = call["v"], call["g"]
    return 3 * v.numel + 2 * g.numel


@flops("aten._weight_norm_interface_backward")
def _weight_norm_backward(call: OpCall) -> int:
    # grad_g = sum(grad_w * v) / |v| (2 per element); grad_v = (g / |v|) (grad_w - v grad_g / |v|)
    # (3 per element); a few per norm
    v, norms = call["saved_v"], call["saved_norms"]
    return 5 * v.numel + 3 * norms.numel


# recurrent layers: per time step and batch row, the input and hidden projections of every gate,
# their sum (and biases), then the cell's elementwise arithmetic. An LSTM cell: sigmoid on three
# gates (4 each), tanh on the fourth and on c (1 each), c = f c + i g (3), h = o tanh(c) (1)
LSTM_CELL_FLOPS = 12 + 1 + 3 + 1 + 1


def _rnn_layer(w_ih: TensorMeta, w_hh: TensorMeta, biased: bool, hidden: int, cell: int) -> int:
    """One layer-direction's FLOPs per row (time step x batch row): the input and hidden
    projections of every gate, their sum and the two biases, the cell's `cell` per hidden unit."""
    gates = w_ih.shape[0]
    return 2 * gates * (w_ih.shape[-1] + w_hh.shape[-1]) + gates * (3 if biased else 1) + cell * hidden


def _rows(x: TensorMeta) -> int:
    """Time steps x batch rows (or packed steps) of a recurrent layer's input."""
    return x.numel // x.shape[-1]


@flops("aten.mkldnn_rnn_layer")
def _mkldnn_rnn_layer(call: OpCall) -> int | None:
    """One layer and direction of nn.LSTM on CPU (oneDNN runs LSTMs only)."""
    w_hh = call["weight1"]
    return _rows(call["input"]) * _rnn_layer(call["weight0"], w_hh, bool(call.get("has_biases")), w_hh.shape[-1],
                                             LSTM_CELL_FLOPS)


@flops("aten.mkldnn_rnn_layer_backward")
def _mkldnn_rnn_layer_backward(call: OpCall) -> int | None:
    """Twice the forward: the gradients of the inputs and of the weights each as large as the
    forward's products, and the gates' derivatives as many as their values."""
    w_hh = call["weight2"]
    return 2 * _rows(call["input"]) * _rnn_layer(call["weight1"], w_hh, bool(call.get("has_biases")),
                                                 w_hh.shape[-1], LSTM_CELL_FLOPS)


REGISTRY.set_family(Family.MATMUL, "aten.mkldnn_rnn_layer", "aten.mkldnn_rnn_layer_backward")

# torch's own nn.MultiheadAttention and nn.TransformerEncoderLayer in inference take a fast path:
# one op for the whole layer. Counted as the ops the same layer runs outside the fast path: the
# projections (matmul and bias) and q's scaling, scores and their softmax, the weighted sum, and
# for the encoder layer the two residual adds, two layer norms and the feed-forward block


def _attention_layer(b: int, s_q: int, s_k: int, embed: int, heads: int) -> int:
    tokens_q, tokens_k = b * s_q, b * s_k
    # q, k and v: a matmul and a bias add each; q scaled by 1/sqrt(head dim) (the fast path's
    # kernels scale q where scaled_dot_product_attention scales inside its own kernel)
    projections = 2 * embed * embed * (tokens_q + 2 * tokens_k) + embed * (tokens_q + 2 * tokens_k) + embed * tokens_q
    scores = b * heads * s_q * s_k
    # q k^T and the weighted sum of v, each a multiply-add per score and head dim, and the softmax
    attention = attention_flops_of_scores(scores, embed // heads, embed // heads)
    out = 2 * embed * embed * tokens_q + embed * tokens_q
    return projections + attention + out


def _nested_lengths(t: NestedMeta) -> list[int] | None:
    """Each sequence's length in a nested [batch, *, embed] batch; None where unknown."""
    if not t.components or any(len(c) != 2 for c in t.components):
        return None
    return [c[0] for c in t.components]


def _nested_attention_layer(call: OpCall, lengths: list[int], embed: int, heads: int) -> int:
    """Self-attention's fast path on a nested batch (nn.TransformerEncoder in inference with a padding
    mask), as torch runs it (aten/src/ATen/native/transformers/attention.cpp). On CPU the
    projections run on the real tokens only, but q, k and v are padded to the longest sequence T
    for the bias adds, q's scaling and both score matmuls (batch x heads x T x T), and the softmax
    covers each sequence's own L x L. On CUDA, with a head dim that is a multiple of 8, the
    projections carry their biases and scaled_dot_product_attention runs on the nested batch: each
    sequence's own scores only (read from torch's source; not yet checked on a GPU)."""
    tokens, padded = sum(lengths), len(lengths) * max(lengths, default=0)
    d = embed // heads
    own_scores = heads * sum(n * n for n in lengths)
    out = 2 * embed * embed * tokens + embed * tokens
    if call.device == "cuda" and d % 8 == 0:
        return 2 * embed * 3 * embed * tokens + 3 * embed * tokens + attention_flops_of_scores(own_scores, d, d) + out
    padded_scores = heads * len(lengths) * max(lengths, default=0) ** 2
    projections = 2 * embed * 3 * embed * tokens + 3 * embed * padded + embed * padded
    return projections + 2 * padded_scores * d + SOFTMAX_FLOPS * own_scores + 2 * padded_scores * d + out


@flops("aten._native_multi_head_attention")
def _native_mha(call: OpCall) -> int | None:
    q, k = call["query"], call["key"]
    if isinstance(q, NestedMeta):
        lengths = _nested_lengths(q)
        same_keys = isinstance(k, NestedMeta) and _nested_lengths(k) == lengths
        if lengths is None or not same_keys or call.get("need_weights"):
            return None
        return _nested_attention_layer(call, lengths, call["embed_dim"], call["num_head"])
    if len(q.shape) != 3:
        return None
    b, s_q, embed = q.shape
    heads = call["num_head"]
    total = _attention_layer(b, s_q, k.shape[1], embed, heads)
    if isinstance(call.get("mask"), TensorMeta):
        total += b * heads * s_q * k.shape[1]  # the mask added to the scores
    if call.get("need_weights") and call.get("average_attn_weights"):
        total += b * heads * s_q * k.shape[1]  # the weights averaged over heads
    return total


@flops("aten._transformer_encoder_layer_fwd")
def _transformer_encoder_layer(call: OpCall) -> int | None:
    src = call["src"]
    ffn = call["ffn_weight_1"].shape[0]
    if isinstance(src, NestedMeta):  # a padding mask made the batch nested: each sequence its own length
        lengths = _nested_lengths(src)
        if lengths is None:
            return None
        embed, tokens = call["embed_dim"], sum(lengths)
        total = _nested_attention_layer(call, lengths, embed, call["num_heads"])
    elif len(src.shape) != 3:
        return None
    else:
        b, s, embed = src.shape
        tokens = b * s
        total = _attention_layer(b, s, s, embed, call["num_heads"])
        if isinstance(call.get("mask"), TensorMeta):
            total += b * call["num_heads"] * s * s
    total += 2 * tokens * embed  # the two residual adds
    total += 2 * (NORM_FLOPS + 2) * tokens * embed  # two layer norms, each with weight and bias
    act = ELEMENTWISE["gelu"] if call.get("use_gelu") else ELEMENTWISE["relu"]
    total += 2 * tokens * embed * ffn + tokens * ffn + act * tokens * ffn  # linear 1, bias, activation
    total += 2 * tokens * ffn * embed + tokens * embed  # linear 2 and its bias
    return total


# (_native_multi_head_attention's family is attention, set with the fused attention kernels')
REGISTRY.set_family(Family.OTHER, "aten._transformer_encoder_layer_fwd")

# dense linear algebra (second-order optimizers: Shampoo, SOAP, K-FAC; Gaussian processes): the
# leading terms of LAPACK's operation counts, multiplies and adds together, for an n x n matrix
# (m x n where it may be rectangular) and k right-hand sides, times the batch. Factorisations and
# solves: LAPACK Working Note 41 (Installation Guide for LAPACK, 1999), Appendix C; eigenvalue
# and singular value decompositions, which iterate: Golub and Van Loan, Matrix Computations
# (4th ed., 2013), sections 8.3 and 8.6. A complex matrix counts 4 real FLOPs per real one.


def _square(t: TensorMeta) -> tuple[int, int]:
    """(batch, n) of a batch of n x n matrices."""
    return math.prod(t.shape[:-2]), t.shape[-1]


def _rhs(b: TensorMeta, n: int) -> int:
    """Right-hand sides of a batch of systems of order n: columns of B (a vector B is one)."""
    return 1 if len(b.shape) == 1 else b.numel // max(n, 1) // max(math.prod(b.shape[:-2]), 1)


def _lu(m: int, n: int) -> float:
    """LU with partial pivoting of m x n (getrf), m >= n: m n^2 - n^3 / 3."""
    m, n = max(m, n), min(m, n)
    return m * n * n - n**3 / 3


@flops("aten.linalg_cholesky_ex")
def _cholesky(call: OpCall) -> int:
    batch, n = _square(call["self"])
    return _real(call, round(batch * n**3 / 3))


@flops("aten.linalg_lu_factor_ex", "aten.linalg_lu")
def _lu_factor(call: OpCall) -> int:
    a = call.arg(0)
    return _real(call, round(math.prod(a.shape[:-2]) * _lu(a.shape[-2], a.shape[-1])))


@flops("aten._linalg_det", "aten._linalg_slogdet")
def _det(call: OpCall) -> int:
    batch, n = _square(call["A"])
    return _real(call, round(batch * (_lu(n, n) + n)))  # the LU, then the product of its diagonal


@flops("aten.linalg_inv_ex")
def _inv(call: OpCall) -> int:
    batch, n = _square(call["A"])
    return _real(call, round(batch * 2 * n**3))  # getrf 2n^3/3, then getri 4n^3/3


@flops("aten._linalg_solve_ex")
def _solve(call: OpCall) -> int:
    batch, n = _square(call["A"])
    k = _rhs(call["B"], n)
    return _real(call, round(batch * (_lu(n, n) + 2 * n * n * k)))  # getrf, then getrs


@flops("aten.linalg_solve_triangular", "aten.triangular_solve")
def _solve_triangular(call: OpCall) -> int:
    a = call["self"] if call.op.endswith("linalg_solve_triangular") else call["A"]
    b = call["B"] if call.op.endswith("linalg_solve_triangular") else call["self"]
    batch, n = _square(a)
    return _real(call, batch * n * n * (b.numel // max(batch * n, 1)))


@flops("aten.cholesky_solve")
def _cholesky_solve(call: OpCall) -> int:
    b, factor = call["self"], call["input2"]
    batch, n = _square(factor)
    return _real(call, 2 * batch * n * n * (b.numel // max(batch * n, 1)))  # two triangular solves


@flops("aten.linalg_qr")
def _qr(call: OpCall) -> int:
    # Householder QR of m x n (geqrf), 2mn^2 - 2n^3/3; Q formed from it (orgqr), as much again
    a = call["A"]
    m, n = max(a.shape[-2:]), min(a.shape[-2:])
    factor = 2 * m * n * n - 2 * n**3 / 3
    with_q = call.get("mode", "reduced") != "r"
    return _real(call, round(math.prod(a.shape[:-2]) * factor * (2 if with_q else 1)))


@flops("aten._linalg_eigh")
def _eigh(call: OpCall) -> int:
    # the symmetric QR algorithm: 4n^3/3 for the eigenvalues alone, about 9n^3 with the vectors
    batch, n = _square(call["A"])
    per = 9 * n**3 if call.get("compute_v", True) else 4 * n**3 / 3
    return _real(call, round(batch * per))


@flops("aten.linalg_eig", "aten._linalg_eigvals")
def _eig(call: OpCall) -> int:
    # the unsymmetric QR algorithm: about 10n^3 for the eigenvalues, 25n^3 with the vectors
    batch, n = _square(call.arg(0))
    return _real(call, round(batch * (25 if call.op.endswith("linalg_eig") else 10) * n**3))


@flops("aten._linalg_svd")
def _svd(call: OpCall) -> int:
    """m x n (m >= n): the cheaper of Golub-Kahan-Reinsch and R-SVD (which first reduces to n x n
    by QR): singular values alone 4mn^2 - 4n^3/3 or 2mn^2 + 2n^3; with thin U and V 14mn^2 + 8n^3
    or 6mn^2 + 20n^3 (full U: the m x m columns, counted as thin)."""
    a = call["A"]
    m, n = max(a.shape[-2:]), min(a.shape[-2:])
    if call.get("compute_uv", True):
        per = min(14 * m * n * n + 8 * n**3, 6 * m * n * n + 20 * n**3)
    else:
        per = min(4 * m * n * n - 4 * n**3 / 3, 2 * m * n * n + 2 * n**3)
    return _real(call, round(math.prod(a.shape[:-2]) * per))


_LINALG = (
    "aten.linalg_cholesky_ex", "aten.linalg_lu_factor_ex", "aten.linalg_lu", "aten._linalg_det",
    "aten._linalg_slogdet", "aten.linalg_inv_ex", "aten._linalg_solve_ex", "aten.linalg_solve_triangular",
    "aten.triangular_solve", "aten.cholesky_solve", "aten.linalg_qr", "aten._linalg_eigh", "aten.linalg_eig",
    "aten._linalg_eigvals", "aten._linalg_svd",
)
REGISTRY.set_family(Family.OTHER, *_LINALG)


# the batch-norm forms torch 2.3+ puts in compiled and exported graphs: with an update, training
# statistics (as native_batch_norm in training); without, the running ones; their backward as
# native_batch_norm_backward's
REGISTRY.add_flops(("aten._batch_norm_with_update", "aten._batch_norm_with_update_functional"), _norm)
REGISTRY.add_flops(("aten._batch_norm_no_update",), _norm_no_training)
REGISTRY.add_flops(("aten.batch_norm_backward",), _norm_backward)


@flops("aten._masked_softmax")
def _masked_softmax(call: OpCall) -> int:
    return (SOFTMAX_FLOPS + 1) * call["self"].numel  # the mask applied, then the softmax


@flops("aten._masked_softmax_backward")
def _masked_softmax_backward(call: OpCall) -> int:
    return (SOFTMAX_BACKWARD_FLOPS + 1) * call["grad_output"].numel


# more of what Inductor's decompositions leave in a compiled graph (torch._inductor.inductor_prims,
# torch._prims): without them a compiled region holding one is uncounted whole. flip's reversal and
# a forced layout move data; a max pool by window offsets compares as max_pool2d does, and its
# offsets turn into indices with a divide, a multiply and an add per spatial dim; the online
# softmax's first half reads each element for the max, subtracts, exponentiates and sums (4)
_PRIMS_DATA_MOVEMENT = ("prims.rev", "prims.inductor_force_stride_order", "prims.inductor_seed",
                        "prims.inductor_rand_eager_offset", "prims.inductor_rand_eager_offsets")
REGISTRY.add_flops(_PRIMS_DATA_MOVEMENT, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_PRIMS_DATA_MOVEMENT)
REGISTRY.add_flops(("prims.inductor_randint", "prims.inductor_cvt_e8m0_rceil"), _elementwise(1))
REGISTRY.set_family(Family.ELEMENTWISE, "prims.inductor_randint", "prims.inductor_cvt_e8m0_rceil")


REGISTRY.add_flops(("prims._low_memory_max_pool_with_offsets",), _pool)


@flops("prims._low_memory_max_pool_offsets_to_indices")
def _pool_offsets_to_indices(call: OpCall) -> int:
    return 3 * len(tuple(call["kernel_size"])) * call["self"].numel


@flops("prims.prepare_softmax_online")
def _prepare_softmax_online(call: OpCall) -> int:
    return (SOFTMAX_FLOPS - 1) * call["a"].numel


REGISTRY.add_flops(("prims._unsafe_index_put_",), _index_put)
REGISTRY.add_traffic(("prims._unsafe_index_put_",), _index_put_traffic)
REGISTRY.set_family(Family.REDUCTION, "prims._low_memory_max_pool_with_offsets")
REGISTRY.set_family(Family.ELEMENTWISE, "prims._low_memory_max_pool_offsets_to_indices")
REGISTRY.set_family(Family.NORM, "prims.prepare_softmax_online")
REGISTRY.set_family(Family.DATA_MOVEMENT, "prims._unsafe_index_put_")


# CTC loss (speech recognition: wav2vec2, HuBERT): a forward (alpha) recursion over a lattice of
# time steps x batch x (2 x target length + 1) positions, each cell the log of the sum of up to
# three predecessors' exps plus its emission: 2 compares for the max, 3 subtracts, 3 exps, 2
# adds, a log, the max added back and the emission added (13). Target lengths and input lengths
# are data: padded targets count every padded position, concatenated ones their total, every
# sequence its full T (an upper bound where sequences are shorter)
CTC_CELL_FLOPS = 13


def _ctc_cells(call: OpCall) -> int:
    log_probs, targets = call["log_probs"], call["targets"]
    steps = log_probs.shape[0]
    batch = log_probs.shape[1] if len(log_probs.shape) == 3 else 1
    if len(targets.shape) == 2:
        return steps * batch * (2 * targets.shape[-1] + 1)
    return steps * (2 * targets.numel + batch)


@flops("aten._ctc_loss")
def _ctc_loss(call: OpCall) -> int:
    return CTC_CELL_FLOPS * _ctc_cells(call)


@flops("aten._ctc_loss_backward")
def _ctc_loss_backward(call: OpCall) -> int:
    # the beta recursion as the alpha one; each cell's alpha + beta added (in log space: a
    # logaddexp, 7, and the add) into its label's gradient; then per log-probability the
    # gradient exp(lp) - exp(that + nll - lp), scaled by grad (5)
    return (CTC_CELL_FLOPS + 8) * _ctc_cells(call) + 5 * call["log_probs"].numel


REGISTRY.set_family(Family.ELEMENTWISE, "aten._ctc_loss", "aten._ctc_loss_backward")


# the fused optimizer steps' functional forms (compiled optimizer graphs): the same arithmetic,
# their results fresh tensors
REGISTRY.add_flops(("aten._fused_adamw", "aten._fused_adam"), _fused_adam)
REGISTRY.add_flops(("aten._fused_sgd",), _fused_sgd)
REGISTRY.add_flops(("aten._fused_adagrad",), _fused_adagrad)

@flops("aten.mvlgamma", "aten.mvlgamma_")
def _mvlgamma(call: OpCall) -> int:
    """The multivariate log-gamma: p lgammas, p subtracts and p adds per element."""
    return 3 * call["p"] * call["self"].numel


REGISTRY.set_family(Family.ELEMENTWISE, "aten.mvlgamma", "aten.mvlgamma_")

# random draws by rejection (gamma, Dirichlet, Poisson, binomial): one per element, as every
# random draw
_MORE_RANDOM = ("aten.poisson", "aten._standard_gamma", "aten._sample_dirichlet", "aten.normal_functional",
                "aten.binomial")
REGISTRY.add_flops(_MORE_RANDOM, _elementwise(1))
REGISTRY.set_family(Family.ELEMENTWISE, *_MORE_RANDOM)

# EmbeddingBag's backward (recommendation models): each index's row receives its bag's gradient
# (scaled by its per-sample weight when given); the per-sample weights' gradient is a dot product
# of the bag's gradient with each index's row


@flops("aten._embedding_bag_backward", "aten._embedding_bag_dense_backward",
       "aten._embedding_bag_sparse_backward")
def _embedding_bag_backward(call: OpCall) -> int:
    rows = call["indices"].numel * call["grad"].shape[-1]
    weighted = isinstance(call.get("per_sample_weights"), TensorMeta)
    return rows * (2 if weighted else 1)


@flops("aten._embedding_bag_per_sample_weights_backward")
def _embedding_bag_weights_backward(call: OpCall) -> int:
    return 2 * call["indices"].numel * call["grad"].shape[-1]


@traffic("aten._embedding_bag_per_sample_weights_backward")
def _embedding_bag_weights_backward_traffic(call: OpCall) -> Traffic:
    """Each weight's gradient gathers its index's row of the table: the gathered rows (at most the
    whole table) are read, as the forward's, not the whole table; the rest once each."""
    weight, indices = call["weight"], call["indices"]
    read = [_rows_gathered(weight, indices.numel)]
    read += [extent(t) for name, t in call.tensors() if name != "weight"]
    return Traffic(tuple(read), tuple(extent(t) for t in call.written()))


REGISTRY.set_family(Family.DATA_MOVEMENT, "aten._embedding_bag_backward", "aten._embedding_bag_dense_backward",
                    "aten._embedding_bag_sparse_backward", "aten._embedding_bag_per_sample_weights_backward")

# packing and padding sequences, unpooling: data moved, nothing computed
_PACKING = ("aten._pack_padded_sequence", "aten._jagged_to_padded_dense_forward",
            "aten._padded_dense_to_jagged_forward", "aten.max_unpool2d", "aten.max_unpool3d")
REGISTRY.add_flops(_PACKING, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_PACKING)

# pools not in the pooling section: adaptive 3-D max pooling and fractional max pooling (random
# windows of kernel_size); their backward one add per gradient
REGISTRY.add_flops(("aten.adaptive_max_pool3d", "aten.adaptive_max_pool3d_backward",
                    "aten.fractional_max_pool2d_backward", "aten.fractional_max_pool3d_backward"), _pool_per_input)
REGISTRY.add_flops(("aten.fractional_max_pool2d", "aten.fractional_max_pool3d"), _pool)
REGISTRY.set_family(
    Family.REDUCTION, "aten.adaptive_max_pool3d", "aten.adaptive_max_pool3d_backward", "aten.fractional_max_pool2d",
    "aten.fractional_max_pool2d_backward", "aten.fractional_max_pool3d", "aten.fractional_max_pool3d_backward",
)

# the multi-class margin loss per element of the prediction: margin - x[y] + x[i], clamp at 0,
# the power, the sum (4); its backward as many; soft margin's backward as its forward
REGISTRY.add_flops(("aten.multi_margin_loss", "aten.multi_margin_loss_backward"), _loss(4))
REGISTRY.add_flops(("aten.soft_margin_loss_backward",), _loss(LOSSES["soft_margin_loss"]))
REGISTRY.set_family(Family.ELEMENTWISE, "aten.multi_margin_loss", "aten.multi_margin_loss_backward",
                    "aten.soft_margin_loss_backward")


# nn.LSTM, nn.GRU and nn.RNN on GPUs: one cuDNN (or MIOpen) op runs every layer and direction.
# Per row (time step x batch row, or packed step) and layer-direction: the input and hidden
# projections of each gate, their sum and biases, the cell's arithmetic, an LSTM's projection of
# h (proj_size); as the CPU runs the same layers (mkldnn_rnn_layer, or the GRU and RNN cells'
# separate ops). An LSTM cell is LSTM_CELL_FLOPS per hidden unit; a GRU's two sigmoids (8), r
# times the hidden part of n (1), tanh (1) and h' = n + z (h - n) (3); a plain RNN's tanh or relu
CELL_FLOPS = {0: 1, 1: 1, 2: LSTM_CELL_FLOPS, 3: 13}  # by cuDNN's mode: RNN_RELU, RNN_TANH, LSTM, GRU


def _fused_rnn(call: OpCall) -> int | None:
    mode = call["mode"]
    if mode not in CELL_FLOPS:
        return None
    weights = call.tensors_of("weight")
    per = call["weight_stride0"]  # tensors per layer-direction: w_ih, w_hh[, b_ih, b_hh][, w_hr]
    hidden = call["hidden_size"]
    proj = call.get("proj_size") or 0
    per_row = sum(_rnn_layer(weights[first], weights[first + 1], per >= 4, hidden, CELL_FLOPS[mode])
                  + 2 * hidden * proj for first in range(0, len(weights), per))
    return _rows(call["input"]) * per_row


@flops("aten._cudnn_rnn", "aten.miopen_rnn")
def _cudnn_rnn(call: OpCall) -> int | None:
    return _fused_rnn(call)


@flops("aten._cudnn_rnn_backward", "aten.miopen_rnn_backward")
def _cudnn_rnn_backward(call: OpCall) -> int | None:
    # the gradients through time as large as the forward, the weights' gradients as much again
    forward = _fused_rnn(call)
    mask = call.get("output_mask") or (True,) * 4
    return None if forward is None else forward * (2 if mask[-1] else 1)


REGISTRY.set_family(Family.MATMUL, "aten._cudnn_rnn", "aten.miopen_rnn", "aten._cudnn_rnn_backward",
                    "aten.miopen_rnn_backward")


# SyncBatchNorm on GPUs splits batch norm across ranks: each rank's statistics (a sum and a sum of
# squares per element, as var: 3), the ranks' statistics combined (per rank and channel: a
# weighted mean and variance, 3), then each element normalised and scaled (2, plus its weight and
# bias); backward, each rank's sums of the gradient and of the gradient times x - mean (4 per
# element), then each element's gradient (7). Together as native batch norm's 5 + 2 forward and
# 8 + 2 + 1 backward


@flops("aten.batch_norm_stats")
def _bn_stats(call: OpCall) -> int:
    return REDUCTIONS["var"] * call["input"].numel


@flops("aten.batch_norm_gather_stats_with_counts", "aten.batch_norm_gather_stats")
def _bn_gather_stats(call: OpCall) -> int:
    return 3 * call["mean"].numel


@flops("aten.batch_norm_elemt")
def _bn_elemt(call: OpCall) -> int:
    x = call["input"]
    return 2 * x.numel + _affine(call, x.numel)


@flops("aten.batch_norm_backward_reduce")
def _bn_backward_reduce(call: OpCall) -> int:
    return 4 * call["input"].numel


@flops("aten.batch_norm_backward_elemt")
def _bn_backward_elemt(call: OpCall) -> int:
    return 7 * call["input"].numel


@flops("aten.batch_norm_update_stats")
def _bn_update_stats(call: OpCall) -> int:
    return REDUCTIONS["var"] * call["input"].numel


# the cuDNN attention kernel's own op (SDPA's cuDNN backend and packed sequences call it) and
# flash's in-place form: as the fused kernels above, [b, h, s, d] or packed
@flops("aten._cudnn_attention_forward")
def _cudnn_attention(call: OpCall) -> int | None:
    if len(call["query"].shape) == 3:  # packed: [total, heads, dim] (its backward always gets offsets)
        return _flash_forward(call)
    return _sdpa(call)


@flops("aten._cudnn_attention_backward")
def _cudnn_attention_backward(call: OpCall) -> int | None:
    if len(call["query"].shape) == 3:
        return _flash_backward(call)
    return _sdpa_backward(call)


REGISTRY.add_flops(("aten._flash_attention_forward_no_dropout_inplace",), _flash_forward)

# nn.Fold (col2im) sums the patches of its columns into the image: one add per column element
# that lands inside the output (each added into the zeroed image, as scatter_add's 1 per source
# element); elements that fall in the padding are skipped. Per spatial dim, the (block, kernel
# offset) pairs whose position is inside; nn.Unfold (im2col) only copies (data movement above)


def _fold_pairs(size: int, kernel: int, dilation: int, padding: int, stride: int) -> int | None:
    blocks = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if blocks <= 0:
        return None
    return sum(1 for b in range(blocks) for k in range(kernel) if 0 <= b * stride - padding + k * dilation < size)


@flops("aten.col2im")
def _col2im(call: OpCall) -> int | None:
    out = call.outputs[0] if call.outputs else None
    if out is None or len(out.shape) < 3:
        return None
    size, kernel = call["output_size"], call["kernel_size"]
    dilation, padding, stride = call["dilation"], call["padding"], call["stride"]
    planes = math.prod(out.shape[:-2])  # batch x channels
    adds = planes
    for d in range(2):
        pairs = _fold_pairs(size[d], kernel[d], dilation[d], padding[d], stride[d])
        if pairs is None:
            return None
        adds *= pairs
    return adds


# MKLDNN (oneDNN) layout tensors: torch.jit.optimize_for_inference and `.to_mkldnn()` convert
# activations and reorder conv weights into oneDNN's blocked layouts: data movement, every element
# of the dense side read or written. An MKLDNN tensor's strides are zeros past its first dim
# (opaque storage): its elements count as contiguous (hooks/signatures.py), here too where the
# mode's signature kept those strides
_MKLDNN_CONVERSIONS = ("aten.to_mkldnn", "aten.to_mkldnn_backward", "aten.to_dense_backward",
                       "aten.mkldnn_reorder_conv2d_weight", "aten.mkldnn_reorder_conv3d_weight")
REGISTRY.add_flops(_MKLDNN_CONVERSIONS, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_MKLDNN_CONVERSIONS)


def _whole(t: TensorMeta) -> Extent:
    """Every element of a tensor (a sparse one: what it stores), whatever its strides say."""
    return extent(t) if isinstance(t, SparseMeta) else extent(t, t.numel)


@traffic(*_MKLDNN_CONVERSIONS, "aten.to_dense", "aten._to_dense")
def _layout_conversion_traffic(call: OpCall) -> Traffic:
    """A layout conversion reads its input whole and writes its output whole."""
    return Traffic(tuple(_whole(t) for _, t in call.tensors()), tuple(_whole(t) for t in call.written()))


# torch.ao's dynamic quantization (quantize_dynamic: int8 or fp16 weights, float activations
# quantized per call inside the op). The packed weights are a TorchScript object, not a tensor:
# their signature holds the keys of the weight (at its packed element size: 1 byte for int8, 2 for
# fp16) and bias it packs (hooks/signatures.py), read by the default traffic as tensors. A linear
# layer: the matmul `2mkn` and its bias's `mn` adds as addmm's (k the input's last dim, n the
# output's), plus the fused relu's `mn`; the activation's own quantization is not counted (as the
# matmul's operand casts are not). Packing a weight copies it (data movement); the markers of
# a packed signature (PACKED_LINEAR, CELL_PARAMS) are records.py's, shared with the hooks


def _packed_linear(value: object) -> tuple[TensorMeta, TensorMeta | None] | None:
    """(weight, bias or None) of a packed linear weight's signature; None where it was unreadable."""
    if isinstance(value, tuple) and len(value) == 3 and value[0] == PACKED_LINEAR and isinstance(value[1], TensorMeta):
        return value[1], value[2] if isinstance(value[2], TensorMeta) else None
    return None


def _dynamic_linear(activation: int):  # type: ignore[no-untyped-def]
    def formula(call: OpCall) -> int | None:
        out = call.outputs[0] if call.outputs else None
        x = call["X"]
        if out is None or not x.shape:
            return None
        k, n = x.shape[-1], out.shape[-1]
        m = x.numel // max(k, 1)
        packed = _packed_linear(call.get("W_prepack"))
        biased = packed[1] is not None if packed is not None else call.get("bias") is not None
        return 2 * m * k * n + (m * n if biased else 0) + activation * m * n

    return formula


REGISTRY.add_flops(("quantized.linear_dynamic", "quantized.linear_dynamic_fp16",
                    "quantized.linear_dynamic_fp16_unpacked_weight"), _dynamic_linear(0))
REGISTRY.add_flops(("quantized.linear_relu_dynamic", "quantized.linear_relu_dynamic_fp16"),
                   _dynamic_linear(ELEMENTWISE["relu"]))


@traffic("quantized.linear_dynamic", "quantized.linear_dynamic_fp16", "quantized.linear_relu_dynamic",
         "quantized.linear_relu_dynamic_fp16")
def _dynamic_linear_traffic(call: OpCall) -> Traffic:
    """The activation, the packed weight and bias, the output; where the packed weights could not
    be read, the weight by the shapes (k x n at 1 byte, 2 for fp16), its bias unknown."""
    if _packed_linear(call.get("W_prepack")) is not None:
        return default_traffic(call)
    x, out = call["X"], call.outputs[0] if call.outputs else None
    read = [extent(x)]
    if out is not None and x.shape:
        read.append(Extent(x.shape[-1] * out.shape[-1], 2 if call.op.endswith("_fp16") else 1))
    return Traffic(tuple(read), tuple(extent(t) for t in call.written()))


_PREPACK = ("quantized.linear_prepack", "quantized.linear_prepack_fp16")
REGISTRY.add_flops(_PREPACK, _no_flops)
REGISTRY.set_family(Family.DATA_MOVEMENT, *_PREPACK)


# the dynamic quantized recurrent layers (nn.LSTM and nn.GRU through quantize_dynamic: one op for
# the whole layer stack; nn.LSTMCell, nn.GRUCell, nn.RNNCell one op per step): as the float layers
# count (`_rnn_layer` per row and layer-direction, its weights' shapes from the packed
# parameters), reading every packed weight and bias once


def _cell_params(call: OpCall) -> list[tuple[TensorMeta, TensorMeta, TensorMeta | None, TensorMeta | None]] | None:
    layers = []
    for value in call.get("params") or ():
        if not (isinstance(value, tuple) and len(value) == 5 and value[0] == CELL_PARAMS):
            return None
        layers.append(value[1:])
    return layers or None


def _quantized_rnn(cell: int):  # type: ignore[no-untyped-def]
    def formula(call: OpCall) -> int | None:
        layers = _cell_params(call)
        x = call.get("input") or call.get("data")
        if layers is None or not isinstance(x, TensorMeta):
            return None
        biased = bool(call.get("has_biases"))
        return _rows(x) * sum(_rnn_layer(w_ih, w_hh, biased, w_hh.shape[-1], cell) for w_ih, w_hh, _, _ in layers)

    return formula


REGISTRY.add_flops(("aten.quantized_lstm",), _quantized_rnn(LSTM_CELL_FLOPS))
REGISTRY.add_flops(("aten.quantized_gru",), _quantized_rnn(CELL_FLOPS[3]))


@traffic("aten.quantized_lstm", "aten.quantized_gru")
def _quantized_rnn_traffic(call: OpCall) -> Traffic:
    """Compulsory traffic, with each layer-direction's packed weights and biases read once."""
    base = default_traffic(call)
    packed = tuple(extent(t) for layer in _cell_params(call) or () for t in layer if t is not None)
    return Traffic(base.read + packed, base.written)


def _quantized_cell(cell: int):  # type: ignore[no-untyped-def]
    def formula(call: OpCall) -> int | None:
        w_ih, w_hh = _packed_linear(call["w_ih"]), _packed_linear(call["w_hh"])
        if w_ih is None or w_hh is None:
            return None
        return _rows(call["input"]) * _rnn_layer(w_ih[0], w_hh[0], True, w_hh[0].shape[-1], cell)

    return formula


REGISTRY.add_flops(("quantized.quantized_lstm_cell_dynamic",), _quantized_cell(LSTM_CELL_FLOPS))
REGISTRY.add_flops(("quantized.quantized_gru_cell_dynamic",), _quantized_cell(CELL_FLOPS[3]))
REGISTRY.add_flops(("quantized.quantized_rnn_tanh_cell_dynamic", "quantized.quantized_rnn_relu_cell_dynamic"),
                   _quantized_cell(CELL_FLOPS[1]))
REGISTRY.set_family(
    Family.MATMUL, "quantized.linear_dynamic", "quantized.linear_dynamic_fp16",
    "quantized.linear_dynamic_fp16_unpacked_weight", "quantized.linear_relu_dynamic",
    "quantized.linear_relu_dynamic_fp16", "aten.quantized_lstm", "aten.quantized_gru",
    "quantized.quantized_lstm_cell_dynamic", "quantized.quantized_gru_cell_dynamic",
    "quantized.quantized_rnn_tanh_cell_dynamic", "quantized.quantized_rnn_relu_cell_dynamic",
)

# how the counts above were made where shapes alone do not say: an upper bound, a convention
COUNT_NOTES.update({
    **dict.fromkeys(("aten._ctc_loss", "aten._ctc_loss_backward"), (
        "CTC loss: counted over its whole lattice, every padded target position and every sequence's "
        "full length (lengths are data): an upper bound where they are shorter")),
    **dict.fromkeys(("aten._fft_c2c", "aten._fft_r2c", "aten._fft_c2r"), (
        "FFTs: 5 N log2 N per complex transform of N points, half for real ones (FFTW's benchmark count)")),
    **dict.fromkeys(_LINALG, (
        "dense linear algebra: the leading terms of LAPACK's operation counts; eigen and singular value "
        "decompositions iterate, counted by Golub and Van Loan's estimates")),
    "aten._cudnn_attention_forward": _GPU_ATTENTION_NOTE,
    "aten._cudnn_attention_backward": _GPU_ATTENTION_NOTE,
    "aten._flash_attention_forward_no_dropout_inplace": _PACKED_NOTE,
})

REGISTRY.freeze()

__all__ = [
    "ELEMENTWISE",
    "REDUCTIONS",
    "LOSSES",
    "REGISTRY",
    "attention_flops",
    "attention_backward_flops",
    "bmm_flops",
    "conv_flops",
    "default_traffic",
    "mm_flops",
    "Extent",
]
