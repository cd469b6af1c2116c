"""What an attention call's count needs from its arguments' values, read when the op runs.

Shapes decide most counts. Three attention forms compute a number of scores that only the data
says: flex_attention visits the blocks its BlockMask lists (a causal mask over 8 x 8 blocks
visits 36), and packed (variable-length) attention computes `len_q x len_k` scores per sequence
of a batch whose offsets are a tensor. For these calls capture reads the values once per call
and keys the signature by the result (`ScoreFacts`), so calls with other masks or other lengths
are rows of their own. The reads are small (block counts, one offset per sequence) but on a GPU
they wait for the device: memwall reads them only for these ops.

Offsets that cannot be read (meta or fake tensors) give an upper bound from `max_seqlen`,
marked not exact, as torch's FlopCounterMode counts them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import flex_block_mask, hop_name, is_higher_order_op, op_schema

from memwall_plugin.records import ScoreFacts

Reader = Callable[[tuple[Any, ...], dict[str, Any]], ScoreFacts | None]


def _readable(t: Any) -> bool:
    return (isinstance(t, torch.Tensor) and t.device.type != "meta" and not t.is_nested
            and type(t) is torch.Tensor)


def flex_scores(func_name: str, args: tuple[Any, ...]) -> ScoreFacts | None:
    """The query-key pairs flex_attention computes: for each (batch, head, query block) the
    kv blocks its BlockMask lists, partial and full alike (a partial block applies mask_mod
    to scores it computed in full), each `rows x cols` of the block as cut by the sequence
    ends. A mask broadcast over batch or heads counts once per batch element and head."""
    parts = flex_block_mask(func_name, args)
    if parts is None or len(args) < 2:
        return None
    query, key = args[0], args[1]
    kv_num, kv_idx, full_num, full_idx, q_block, kv_block = parts
    if not isinstance(query, torch.Tensor) or not isinstance(key, torch.Tensor):
        return None
    batch, heads, len_q, len_k = query.shape[0], query.shape[1], query.shape[-2], key.shape[-2]
    if q_block >= len_q and kv_block >= len_k:  # flex_attention without a block_mask: one block
        return ScoreFacts(batch * heads * len_q * len_k, True, "no BlockMask: every score")
    if not _readable(kv_num) or not _readable(kv_idx):
        return None
    with torch.no_grad():
        n_q = kv_num.shape[-1]
        rows = (len_q - torch.arange(n_q, device=kv_num.device) * q_block).clamp(0, q_block)
        area = torch.zeros((), dtype=torch.int64, device=kv_num.device)
        visited = 0
        for num, idx in ((kv_num, kv_idx), (full_num, full_idx)):
            if num is None or idx is None:
                continue
            width = idx.shape[-1]
            listed = torch.arange(width, device=idx.device) < num.unsqueeze(-1)  # [Bm, Hm, n_q, width]
            cols = (len_k - idx.long() * kv_block).clamp(0, kv_block) * listed
            area = area + (cols.sum(-1) * rows).sum()
            visited += int(num.sum())
        mask_b, mask_h = kv_num.shape[0], kv_num.shape[1]
        scale = (batch // mask_b if mask_b else 0) * (heads // mask_h if mask_h else 0)
        scores = int(area) * scale
    n_kv = -(-len_k // kv_block)
    total_blocks = mask_b * mask_h * n_q * n_kv
    return ScoreFacts(scores, True, f"BlockMask: {visited:,} of {total_blocks:,} blocks of {q_block}x{kv_block}")


def _lengths(offsets: Any) -> list[int] | None:
    if not _readable(offsets) or offsets.dim() != 1:
        return None
    values = offsets.tolist()
    return [b - a for a, b in zip(values, values[1:])]


def varlen_scores(offsets_q: Any, offsets_k: Any, max_q: Any, max_k: Any) -> ScoreFacts | None:
    """Score pairs of packed sequences: sum of len_q x len_k per sequence, read from the
    offsets; when they cannot be read, sequences x max_q x max_k, an upper bound."""
    if not isinstance(offsets_q, torch.Tensor):
        return None
    if offsets_k is None:
        offsets_k = offsets_q
    q, k = _lengths(offsets_q), _lengths(offsets_k)
    if q is not None and k is not None and len(q) == len(k):
        shown = f"{min(q)}..{max(q)}" if len(set(q)) > 1 else str(q[0]) if q else "-"
        return ScoreFacts(sum(a * b for a, b in zip(q, k)), True, f"{len(q)} packed sequences, lengths {shown}")
    if type(max_q) is int and type(max_k) is int and isinstance(offsets_q, torch.Tensor):
        n = max(offsets_q.shape[0] - 1, 0)
        return ScoreFacts(n * max_q * max_k, False,
                          f"{n} packed sequences, offsets unreadable: at most {max_q}x{max_k} each")
    return None


def _argument(func: Any, name: str) -> int | None:
    for i, a in enumerate(op_schema(func).arguments):
        if a.name == name:
            return i
    return None


def _varlen_reader(func: Any, names: tuple[str, str, str, str]) -> Reader | None:
    positions = [_argument(func, n) for n in names]
    if positions[0] is None:
        return None

    def read(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ScoreFacts | None:
        values = []
        for name, pos in zip(names, positions, strict=True):
            if pos is not None and pos < len(args):
                values.append(args[pos])
            else:
                values.append(kwargs.get(name))
        return varlen_scores(*values)

    return read


#: packed-attention ops and the names of their (offsets q, offsets k, max q, max k) arguments
_VARLEN = {
    "aten::_flash_attention_forward": ("cum_seq_q", "cum_seq_k", "max_q", "max_k"),
    "aten::_flash_attention_backward": ("cum_seq_q", "cum_seq_k", "max_q", "max_k"),
    "aten::_efficient_attention_forward": ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"),
    "aten::_efficient_attention_backward": ("cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k"),
    "aten::_cudnn_attention_forward": ("cum_seq_q", "cum_seq_k", "max_q", "max_k"),
    "torch_attn::_varlen_attn": ("cu_seq_q", "cu_seq_k", "max_q", "max_k"),
    "torch_attn::_varlen_attn_out": ("cu_seq_q", "cu_seq_k", "max_q", "max_k"),
    "torch_attn::_varlen_attn_backward": ("cu_seq_q", "cu_seq_k", "max_q", "max_k"),
}


def reader_for(func: Any) -> Reader | None:
    """The facts reader of an op, or None for the (many) ops whose count shapes decide."""
    if is_higher_order_op(func):
        name = hop_name(func)
        if name in ("flex_attention", "flex_attention_backward"):
            return lambda args, kwargs: flex_scores(name, args)
        return None
    schema = op_schema(func)
    names = _VARLEN.get(schema.name) if schema is not None else None
    return _varlen_reader(func, names) if names is not None else None


__all__ = ["Reader", "flex_scores", "reader_for", "varlen_scores"]
