"""The bytes model: compulsory traffic, broadcast spans, in-place writes, views, gathers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import one_row, profiled, rows_of

F32 = 4


def test_linear_moves_exactly_its_operands():
    lin = torch.nn.Linear(1024, 4096)
    x = torch.randn(64, 1024)
    rep = profiled(lambda: lin(x), model=lin)
    assert rep.total_bytes == 4 * (64 * 1024 + 4096 * 1024 + 4096 + 64 * 4096)
    addmm = one_row(rep, "aten.addmm")
    assert addmm.bytes_written == 4 * 64 * 4096
    assert one_row(rep, "aten.t").bytes == 0  # the weight transpose is a view


def test_embedding_reads_gathered_rows_not_the_table():
    emb = torch.nn.Embedding(50000, 512)
    idx = torch.randint(0, 50000, (8,))
    rep = profiled(lambda: emb(idx), model=emb)
    row = one_row(rep, "aten.embedding")
    assert row.bytes == 8 * 8 + 8 * 512 * F32 + 8 * 512 * F32  # indices, rows read, rows written
    assert row.bytes < 100_000  # kilobytes, not the 100 MB table
    assert row.flops == 0


def test_broadcast_operand_counts_once():
    x, b = torch.randn(64, 1024), torch.randn(1024)
    row = one_row(profiled(lambda: x + b), "aten.add")
    assert row.bytes_read == F32 * (64 * 1024 + 1024)
    assert row.bytes_written == F32 * 64 * 1024


def test_stride_zero_expanded_input_counts_its_span():
    x, y = torch.randn(64, 1024), torch.randn(1, 1024)
    row = one_row(profiled(lambda: x * y.expand(64, 1024)), "aten.mul")
    assert row.bytes_read == F32 * (64 * 1024 + 1024)


def test_in_place_writes_once():
    x, y = torch.randn(1000), torch.randn(1000)
    rep = profiled(lambda: (x.relu_(), x.add_(y)))
    relu = one_row(rep, "aten.relu_")
    assert (relu.bytes_read, relu.bytes_written) == (F32 * 1000, F32 * 1000)
    add = one_row(rep, "aten.add_")
    assert (add.bytes_read, add.bytes_written) == (2 * F32 * 1000, F32 * 1000)


def test_out_argument_is_written_not_read():
    a, b, out = torch.randn(100), torch.randn(100), torch.empty(100)
    row = one_row(profiled(lambda: torch.add(a, b, out=out)), "aten.add")
    assert (row.bytes_read, row.bytes_written) == (2 * F32 * 100, F32 * 100)


def test_views_move_nothing():
    x = torch.randn(8, 16, 32)
    rep = profiled(
        lambda: (x.view(128, 32), x.transpose(0, 1), x[2:5], x.unsqueeze(0), x.expand(2, 8, 16, 32))
    )
    assert rep.total_bytes == 0
    assert all(r.flops == 0 for r in rep.rows)


def test_copy_overwrites_without_reading_the_destination():
    dst, src = torch.empty(256), torch.randn(256)
    row = one_row(profiled(lambda: dst.copy_(src)), "aten.copy_")
    assert (row.bytes_read, row.bytes_written) == (F32 * 256, F32 * 256)


def test_index_select_reads_selected_rows():
    table = torch.randn(10000, 64)
    idx = torch.tensor([1, 5, 9])
    row = one_row(profiled(lambda: table.index_select(0, idx)), "aten.index_select")
    assert row.bytes_read == 3 * 8 + 3 * 64 * F32
    assert row.bytes_written == 3 * 64 * F32


def test_nll_loss_reads_one_log_prob_per_target():
    logp = torch.randn(32, 50000).log_softmax(-1)
    target = torch.randint(0, 50000, (32,))
    rep = profiled(lambda: F.nll_loss(logp, target))
    row = one_row(rep, "aten.nll_loss_forward")
    assert row.bytes_read == 32 * 8 + 32 * F32


def test_fused_attention_never_writes_the_score_matrix():
    b, h, s, d = 1, 4, 256, 32
    q = torch.randn(b, h, s, d)
    row = one_row(profiled(lambda: F.scaled_dot_product_attention(q, q, q)),
                  "aten._scaled_dot_product_flash_attention_for_cpu")
    # reads q, k, v; writes the output and the log-sum-exp per row; no s x s matrix
    assert row.bytes_read == 3 * F32 * b * h * s * d
    assert row.bytes_written == F32 * (b * h * s * d + b * h * s)


def test_empty_allocation_moves_nothing_but_zeros_writes():
    rep = profiled(lambda: (torch.empty(1000), torch.zeros(1000), torch.zeros_like(torch.empty(10))))
    assert all(r.bytes == 0 for r in rows_of(rep, "aten.empty"))
    assert one_row(rep, "aten.zeros").bytes_written == F32 * 1000
    assert one_row(rep, "aten.zeros_like").bytes_read == 0


@pytest.mark.parametrize("dtype,size", [(torch.float16, 2), (torch.bfloat16, 2), (torch.float64, 8)])
def test_element_size_follows_dtype(dtype, size):
    x = torch.randn(100, dtype=dtype)
    row = one_row(profiled(lambda: x * 2), "aten.mul")
    assert row.bytes == 2 * 100 * size
    assert row.dtype == str(dtype).removeprefix("torch.")
