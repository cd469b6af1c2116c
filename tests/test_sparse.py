"""Sparse tensors under memwall: sparse embedding gradients and the optimizers that take them
(recommendation models), and sparse adjacency matmuls (graph networks). Each op is counted by what
the sparse tensor stores, not by its dense shape: hand counts, and runs bit-identical to bare ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import memwall_plugin as memwall

# torch's own warnings about its sparse layouts, bare runs too
pytestmark = [pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state"),
              pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")]

ROWS, DIM, BAGS = 1000, 32, (0, 10, 25, 30)


def _recommender(optimizer: str) -> tuple[Callable[[], None], list[torch.nn.Module], torch.Tensor]:
    torch.manual_seed(0)
    bags = torch.nn.EmbeddingBag(ROWS, DIM, mode="sum", sparse=True)
    table = torch.nn.Embedding(500, DIM, sparse=True)
    head = torch.nn.Linear(2 * DIM, 1)
    sparse = [*bags.parameters(), *table.parameters()]
    if optimizer == "SparseAdam":
        opts: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse, lr=0.01),
                                             torch.optim.Adam(head.parameters())]
    else:
        opts = [getattr(torch.optim, optimizer)([*sparse, *head.parameters()], lr=0.1)]
    ids = torch.randint(0, ROWS, (40,))
    offsets, users = torch.tensor(BAGS), torch.randint(0, 500, (len(BAGS),))

    def step() -> None:
        head(torch.cat([bags(ids, offsets), table(users)], 1)).sum().backward()
        for opt in opts:
            opt.step()
            opt.zero_grad()

    return step, [bags, table, head], ids


def _weights(modules: list[torch.nn.Module]) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


@pytest.mark.parametrize("optimizer", ["SGD", "SparseAdam", "Adagrad"])
def test_sparse_embedding_training_runs_bit_identical_with_every_op_counted(optimizer: str, tmp_path: Any) -> None:
    step, modules, _ = _recommender(optimizer)
    step()
    step()
    bare = _weights(modules)
    step, modules, _ = _recommender(optimizer)
    step()
    with memwall.profile(summary=False, scalars=False, logdir=tmp_path / "run") as prof:
        step()
    rep = prof.report()
    assert all(torch.equal(a, b) for a, b in zip(_weights(modules), bare))
    assert [r.op for r in rep.rows if not r.counted] == []


def test_a_sparse_gradient_updates_only_the_rows_it_holds(tmp_path: Any) -> None:
    """SGD adds the bag table's sparse gradient (one row per looked-up id: 40 x 32, the ids as
    int64 indices) into the 1000 x 32 weight, scaled by -lr: 2 FLOPs per stored element, and the
    weight's touched rows read and written, not the whole table."""
    step, _, ids = _recommender("SGD")
    with memwall.profile(summary=False, scalars=False, logdir=tmp_path / "run") as prof:
        step()
    update = [r for r in prof.report().rows if r.op == "aten.add_" and r.shapes.startswith(f"[{ROWS}, {DIM}]")]
    assert len(update) == 1
    stored = len(ids) * DIM
    assert update[0].flops == 2 * stored
    assert update[0].bytes_read == 4 * stored + 8 * len(ids) + 4 * stored  # values, indices, the rows
    assert update[0].bytes_written == 4 * stored
    assert "sparse, 1,280 stored" in update[0].shapes


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_sparse_adjacency_matmul_counts_a_multiply_add_per_stored_edge_and_feature(layout: str,
                                                                                      tmp_path: Any) -> None:
    torch.manual_seed(0)
    n, f, out = 200, 16, 8
    adjacency = (torch.rand(n, n) < 0.05).float()
    edges = int(adjacency.count_nonzero())
    adj = adjacency.to_sparse() if layout == "coo" else adjacency.to_sparse_csr()
    x, w = torch.randn(n, f, requires_grad=True), torch.randn(f, out, requires_grad=True)

    def step() -> torch.Tensor:
        h = torch.sparse.mm(adj, x @ w) if layout == "coo" else adj @ (x @ w)
        h.relu().sum().backward()
        return h.detach()

    bare = step()
    bare_grad = x.grad.clone()
    x.grad = w.grad = None
    with memwall.profile(summary=False, scalars=False, logdir=tmp_path / "run") as prof:
        got = step()
    rep = prof.report()
    assert torch.equal(got, bare) and torch.equal(x.grad, bare_grad)
    assert [r.op for r in rep.rows if not r.counted] == []
    sparse_rows = [r for r in rep.rows if "sparse" in r.shapes and r.flops]
    # forward A @ (x w), and backward A^T @ grad: each 2 x edges x 8 features, not 2 x 200 x 200 x 8
    assert sorted(r.phase for r in sparse_rows) == ["backward", "forward"]
    assert all(r.flops == 2 * edges * out for r in sparse_rows)


def test_coalescing_adds_each_duplicate_row_once(tmp_path: Any) -> None:
    indices = torch.tensor([[0, 3, 0, 5, 3, 0]])  # row 0 three times, row 3 twice: 3 duplicates
    grad = torch.sparse_coo_tensor(indices, torch.randn(6, 4), (8, 4))
    with memwall.profile(summary=False, scalars=False, logdir=tmp_path / "run") as prof:
        merged = grad.coalesce()
    bare = grad.coalesce()
    assert torch.equal(merged.to_dense(), bare.to_dense())
    row = [r for r in prof.report().rows if r.op == "aten._coalesce"]
    assert [r.flops for r in row] == [3 * 4]


@pytest.mark.filterwarnings("ignore:Warning. Profiler clears events")  # torch 2.11's, on its profiler's second use
def test_a_trace_of_a_sparse_update_lists_it_uncounted_instead_of_counting_the_dense_shape(tmp_path: Any) -> None:
    """torch.profiler records a sparse tensor's dense shape ([1000, 32]) and no strides: memwall
    analyze cannot know what it stores, so the update is listed uncounted, with why."""
    step, _, _ = _recommender("SGD")
    step()
    with torch.profiler.profile(record_shapes=True) as prof:
        step()
    path = tmp_path / "step.pt.trace.json"
    prof.export_chrome_trace(str(path))
    rep = memwall.analyze_trace(path)
    update = [r for r in rep.rows if r.op == "aten.add_" and r.shapes.startswith(f"[{ROWS}, {DIM}]")]
    assert update and all(r.flops is None for r in update)
    reasons = rep.extra["trace"]["uncounted_calls"]
    assert any("sparse tensor" in reason for reason in reasons)
    assert [r for r in rep.rows if r.op == "aten.addmm" and r.flops]  # the dense head is counted
    from memwall_plugin.console import findings
    assert any("sparse tensor's dense shape" in line for line in findings(rep))


def test_sparse_gradients_count_as_gradient_memory(tmp_path: Any) -> None:
    """After a backward, the bag table's sparse gradient holds 40 looked-up rows of 32 floats, the
    user table's 4, and the head's dense weight and bias 65 floats: the capacity view's gradients
    (their values; the indices are left out)."""
    step, (bags, table, head), ids = _recommender("SGD")
    step()
    users = torch.tensor([1, 2, 3, 4])
    with memwall.profile(summary=False, scalars=False, logdir=tmp_path / "run") as prof:
        head(torch.cat([bags(ids, torch.tensor(BAGS)), table(users)], 1)).sum().backward()
    assert bags.weight.grad.is_sparse
    assert prof.report().memory.peak_by_category["gradients"] == 4 * (len(ids) * DIM + len(users) * DIM + 2 * DIM + 1)
