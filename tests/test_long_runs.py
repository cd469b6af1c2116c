"""Long runs keep memwall's memory bounded: by distinct signatures (capped; growing shapes go to
power-of-two buckets that are still counted exactly), never by calls or steps."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
import warnings

import pytest
import torch
from conftest import flops_apart, profiled

import memwall_plugin as memwall

D = 8  # model width of the toy decoder


class _Attention(torch.nn.Module):
    """One decode step of single-head attention over a cache that grows by one token."""

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([cache, x], 0)  # (L, D)
        weights = (x @ keys.T).softmax(-1)  # (1, L)
        return weights @ keys, keys


def _decode(steps: int, prof: memwall.profile | None = None, memory_at: tuple[int, ...] = ()) -> dict[int, int]:
    torch.manual_seed(0)
    attention = _Attention()
    cache = torch.zeros(0, D)
    x = torch.randn(1, D)
    memory = {}
    with torch.no_grad():
        for step in range(1, steps + 1):
            x, cache = attention(x, cache)
            if prof is not None:
                prof.step()
            if step in memory_at:
                gc.collect()  # what is still held, not cycles no collection has reached yet
                memory[step] = tracemalloc.get_traced_memory()[0]
    return memory


def _mm_flops_by_hand(steps: int) -> int:
    # step with L cached tokens: (1, D) @ (D, L) and (1, L) @ (L, D), 2 FLOPs per multiply-add
    return sum(2 * D * n + 2 * n * D for n in range(1, steps + 1))


def test_past_the_cap_shapes_share_buckets_and_every_flop_and_byte_is_still_counted() -> None:
    steps = 300
    with memwall.profile(summary=False) as exact:
        _decode(steps, exact)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=False, max_signatures=50) as capped:
            _decode(steps, capped)
    cap_warnings = [w for w in caught if "distinct op signatures" in str(w.message)]
    assert len(cap_warnings) == 1

    full, bounded = exact.report(), capped.report()
    assert len(full.rows) > 1000  # every step brings new shapes
    # 50 exact signatures, then per op at most log2(300) + 1 buckets
    assert len(bounded.rows) <= 50 + 6 * 10
    assert any("<=" in r.shapes for r in bounded.rows)
    # FLOPs and bytes are the same, exactly, and the matmuls match the hand count
    mm_flops = sum(r.flops or 0 for r in bounded.rows if r.op == "aten.mm")
    assert mm_flops == _mm_flops_by_hand(steps)
    assert bounded.totals().flops == full.totals().flops
    assert bounded.totals().bytes == full.totals().bytes
    assert sum(r.calls for r in bounded.rows) == sum(r.calls for r in full.rows)


def test_bucket_shapes_are_power_of_two_upper_bounds() -> None:
    with memwall.profile(summary=False, max_signatures=1) as prof:
        _decode(40, prof)
    shapes = {r.shapes for r in prof.report().rows if r.op == "aten.mm" and "<=" in r.shapes}
    # (1, D) @ (D, L) for L = 33..40 all fall into the bucket L <= 64 (D = 8 is a power of two)
    assert "[1, <=8] x [<=8, <=64]" in shapes


def test_2000_decode_steps_with_growing_shapes_keep_memory_bounded() -> None:
    tracemalloc.start()
    try:
        with memwall.profile(summary=False, max_signatures=200) as prof:
            memory = _decode(2000, prof, memory_at=(1000, 2000))
    finally:
        tracemalloc.stop()
    growth = memory[2000] - memory[1000]
    # uncapped, each step adds ~6 signatures (several kB); capped, only the list of step numbers grows
    assert growth < 150_000, f"memwall grew by {growth:,} bytes over 1,000 decode steps"
    assert len(prof.report().rows) < 200 + 6 * 12


def _fixed_model_steps(profiled: bool) -> tuple[int, memwall.profile | None]:
    """Python's traced bytes after step 1,500 less those after step 500 of a small training loop,
    recorded by memwall when `profiled`, and memwall's profile."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(2, 4)
    prof = memwall.profile(model=model, summary=False) if profiled else None
    memory = {}
    tracemalloc.start()
    try:
        with prof if prof is not None else contextlib.nullcontext():
            for step in range(1, 1501):
                model(x).sum().backward()
                opt.step()
                opt.zero_grad()
                if prof is not None:
                    prof.step()
                if step in (500, 1500):
                    gc.collect()
                    memory[step] = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return memory[1500] - memory[500], prof


def test_many_steps_of_a_fixed_model_keep_memory_bounded() -> None:
    # the same loop without memwall grows too: torch keeps ~48 B a step (allocated inside
    # F.linear, torch 2.11 to 2.15, memwall not imported), which is not memwall's to bound
    bare, _ = _fixed_model_steps(profiled=False)
    growth, prof = _fixed_model_steps(profiled=True)
    assert prof is not None
    # a table bounded by signatures does not grow at all; a table by call or step grows by MBs.
    # What grows here is the report's tuple of step numbers (~40 B a step) and the condensed
    # step totals, whose buckets merge and refill as steps come
    assert growth - bare < 100_000, f"memwall grew by {growth - bare:,} bytes over 1,000 steps (bare: {bare:,})"
    rep = prof.report()
    assert len(rep.steps) == 1500 and len(rep.rows) < 60
    first_linear = [r for r in rep.rows if r.op == "aten.addmm" and r.module == "0"]
    assert [r.calls for r in first_linear] == [1500]
    # the step points condense to equal buckets of neighbouring steps, every step in one of them
    assert len(rep.step_totals) <= memwall.report.MAX_STEP_TOTALS
    assert sum(s.step_count for s in rep.step_totals) == 1500
    assert {s.step_count for s in rep.step_totals[:-1]} == {rep.step_totals[0].step_count} != {1}


def test_max_signatures_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="max_signatures must be a positive int"):
        memwall.profile(max_signatures=0)


def test_a_decodes_growing_lengths_fold_into_buckets_by_design_without_a_warning() -> None:
    """Decoding: each token makes the KV length one longer. Those sizes are bucketed from the
    second length on (the first signature of each op stays exact), silently, and every FLOP and
    byte is counted exactly: the same totals as a run with every length kept apart."""
    steps = 300
    with memwall.profile(summary=False, max_signatures=10**9) as exact:
        _decode(steps, exact)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not the cap's warning, nor any other
        with memwall.profile(summary=False) as prof:
            with prof.phase("decode"):
                _decode(steps, prof)
    full, folded = exact.report(), prof.report()
    assert len(full.rows) > 1000  # every step brings new shapes
    assert {r.phase for r in folded.rows} == {"decode"}
    # per op: its first length exact, then one bucket per power of two up to 512 (1, 2, 4, ... 512);
    # the two matmuls (scores and values) are two roles of one op, each with its buckets
    per_op: dict[str, int] = {}
    for r in folded.rows:
        per_op[r.op] = per_op.get(r.op, 0) + 1
    assert per_op.pop("aten.mm") <= 2 * (1 + 10)
    assert max(per_op.values()) <= 1 + 10
    per_op["aten.mm"] = 1
    mm = [r for r in folded.rows if r.op == "aten.mm"]
    # (1, D) @ (D, L): only L grew; D stays exact in the bucket's shapes
    assert f"[1, {D}] x [{D}, <=512]" in {r.shapes for r in mm}
    assert sum(r.flops or 0 for r in mm) == _mm_flops_by_hand(steps)
    assert folded.totals().flops == full.totals().flops
    assert folded.totals().bytes == full.totals().bytes
    assert sum(r.calls for r in folded.rows) == sum(r.calls for r in full.rows)
    # the views fold the buckets too: one row per op
    assert len(folded.folded()) == len(per_op)


def test_indices_ranges_and_scalars_that_change_every_call_are_one_signature() -> None:
    """A map-style dataset under a DataLoader (`dataset[i]`: a select at a new index per sample), a
    hand-written batch (`x[i:i + 8]`: a new range per batch) and a loss scaled by the step (`loss *
    step`) change an integer at every call. Keyed by value each was a signature of its own: a
    Lightning epoch over a 100,000-sample TensorDataset passed the cap (10,000) and memwall warned
    of "growing shapes" for a model whose shapes never change, then analysed every call alone."""
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4000, 32), torch.randn(4000, 1))
    inputs = torch.randn(800, 32)
    model = torch.nn.Linear(32, 1)

    def work() -> None:
        for i, (x, y) in enumerate(DataLoader(data, batch_size=8)):  # 500 batches of 8 samples
            (torch.nn.functional.mse_loss(model(x), y) * (i + 2)).backward()
        for i in range(0, 800, 8):  # 100 batches sliced by hand
            model(inputs[i:i + 8]).sum().backward()

    with FlopCounterMode(display=False) as counter:
        work()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=False, max_signatures=1000) as prof:
            work()
    assert not [w for w in caught if "distinct op signatures" in str(w.message)]
    rep = prof.report()
    assert len(rep.rows) < 60, len(rep.rows)
    calls = {op: sum(r.calls for r in rep.rows if r.op == op) for op in ("aten.select", "aten.slice")}
    assert calls["aten.select"] == 2 * 4000  # each sample's input and target
    assert calls["aten.slice"] >= 100
    (scaled,) = [r for r in rep.rows if r.op == "aten.mul" and r.phase == "forward"]
    assert scaled.calls == 500 and scaled.flops == 500  # one multiply per (scalar) loss, every step
    matmuls = sum(r.flops for r in rep.rows if r.op in ("aten.addmm", "aten.mm"))
    # torch's own count of the same work, and the bias each forward addmm adds (8 outputs; torch
    # counts only the products)
    assert matmuls == counter.get_total_flops() + 600 * 8


def test_integers_that_decide_a_count_or_a_size_are_kept() -> None:
    """Folding integers that are values keeps what formulas ask of them (a scale of one is free,
    a beta of zero drops a term) and never folds a size: arange's numbers are its length."""
    x, a, b = torch.randn(16, 8), torch.randn(16, 4), torch.randn(4, 8)
    with memwall.profile(summary=False) as prof:
        x * 3
        x * 5
    (mul,) = [r for r in prof.report().rows if r.op == "aten.mul"]
    assert mul.calls == 2 and mul.flops == 2 * 16 * 8
    # each form profiled apart (one row holds every call of an op, module, phase and input shapes)
    assert flops_apart("aten.add", lambda: x.add(x, alpha=1), lambda: x.add(x, alpha=2)) == [16 * 8, 2 * 16 * 8]
    mm = 2 * 16 * 4 * 8
    assert flops_apart("aten.addmm", lambda: torch.addmm(x, a, b, beta=0),
                       lambda: torch.addmm(x, a, b, beta=2)) == [mm, mm + 2 * 16 * 8]  # beta 0: no add
    assert sorted(r.bytes_written for n in (5, 7) for r in profiled(lambda n=n: torch.arange(n)).rows
                  if r.op == "aten.arange") == [5 * 8, 7 * 8]
