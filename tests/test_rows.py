"""rows.py: the row every measurement is, merged, grouped, projected and sorted the same way for
ops and collectives. Expectations are written out by hand."""

from __future__ import annotations

import dataclasses

import pytest

import memwall_plugin as memwall
from memwall_plugin.ceilings import place_rows
from memwall_plugin.console import render_text
from memwall_plugin.rows import (
    COLLECTIVE_COLUMNS,
    ROW_COLUMNS,
    Collective,
    Row,
    group_by,
    merge_rows,
    module_tree,
    optimizer_time_s,
    row_key,
    row_record,
    sort_rows,
)


def op(name: str = "aten.mm", *, module: str = "a.b", phase: str = "forward", shapes: str = "[8, 16] x [16, 4]",
       calls: int = 1, flops: int | None = 1024, time_s: float = 0.001) -> Row:
    # 8x16 @ 16x4 in fp32: 2*8*16*4 = 1024 FLOPs; reads 128 + 64 floats (768 B), writes 32 (128 B)
    return Row(op=name, overload="default", module=module, phase=phase, calls=calls, dtype="float32",
               shapes=shapes, flops=flops, bytes_read=768 * calls, bytes_written=128 * calls,
               elements_read=192 * calls, elements_written=32 * calls, time_s=time_s,
               peak_flops_per_s=1e11, bandwidth_bytes_per_s=1e10)


def all_reduce(calls: int = 2, timed: int = 2, time_s: float = 0.004) -> Row:
    # 1000 floats all-reduced over 2 ranks per call: 4000-byte message, 4000 bytes sent (ring)
    return Row(op="c10d.allreduce_", overload="default", module="", phase="backward", calls=calls, dtype="float32",
               shapes="[1000]", flops=None, bytes_read=0, bytes_written=0, elements_read=0, elements_written=0,
               time_s=time_s, bandwidth_bytes_per_s=2e9,
               collective=Collective(kind="all_reduce", group_size=2, timed_calls=timed, message_bytes=4000 * calls,
                                     message_elements=1000 * calls, bytes_moved=4000 * calls))


def test_an_op_row_on_the_roofline():
    r = op()
    assert r.bytes == 896 and r.intensity == pytest.approx(1024 / 896)
    # ridge 1e11 / 1e10 = 10 FLOP/B: 1.14 is left of it
    assert r.bound == "memory" and r.roofline_time_s == pytest.approx(896 / 1e10)
    assert r.achieved_flops_per_s == pytest.approx(1.024e6) and r.bus_bandwidth_bytes_per_s is None


def test_a_collective_row_on_the_links_roof():
    r = all_reduce(calls=4, timed=2, time_s=0.004)
    # 16000 bytes sent over 4 calls; 2 timed: 8000 bytes in 4 ms = 2 MB/s against a 2 GB/s link
    assert r.bytes == 16000 and r.timed_bytes == 8000 and r.bound == "communication"
    assert r.bus_bandwidth_bytes_per_s == pytest.approx(2e6) and r.efficiency == pytest.approx(1e-3)
    assert r.algorithm_bandwidth_bytes_per_s == pytest.approx(8000 / 0.004)
    assert r.roofline_time_s == pytest.approx(16000 / 2e9) and r.intensity is None


def test_merge_sums_every_field_of_one_signature():
    merged = merge_rows([op(calls=1, time_s=0.001)], [op(calls=2, time_s=0.002), all_reduce()], [all_reduce(1, 1)])
    mm, ar = sorted(merged, key=lambda r: r.op)
    assert (mm.calls, mm.flops, mm.bytes_read, mm.bytes_written, mm.time_s) == (3, 2048, 768 * 3, 128 * 3,
                                                                                 pytest.approx(0.003))
    assert (mm.peak_flops_per_s, mm.bandwidth_bytes_per_s) == (1e11, 1e10)  # roofs are kept, not added
    assert (ar.calls, ar.collective.timed_calls, ar.collective.message_bytes, ar.bytes) == (3, 3, 12000, 12000)
    assert ar.collective.group_size == 2 and ar.collective.kind == "all_reduce"  # keys, not sums


def test_merge_keeps_signatures_apart_and_an_unknown_count_unknown():
    merged = merge_rows([op(), op(shapes="[4, 16] x [16, 4]"), op(module="a.c"), op(phase="backward")])
    assert len(merged) == 4
    (one,) = merge_rows([op(flops=None)], [op()])
    assert one.flops is None and one.calls == 2  # an uncounted call makes the total uncounted
    two_groups = merge_rows([all_reduce()], [dataclasses.replace(all_reduce(), collective=dataclasses.replace(
        all_reduce().collective, group_size=4))])
    assert len(two_groups) == 2  # one collective over 2 ranks and over 4 are not one signature


def test_sorted_by_time_then_message_then_name():
    a = op("aten.add", time_s=0.002)
    b = op("aten.mm", time_s=0.002)
    c = op("aten.mul", time_s=0.003)
    small, large = all_reduce(1, 0, 0.0), all_reduce(3, 0, 0.0)
    assert [r.op for r in sort_rows([b, small, a, c])] == ["aten.mul", "aten.add", "aten.mm", "c10d.allreduce_"]
    assert sort_rows([small, large]) == (large, small)  # untimed collectives: the larger message first


def test_groups_and_the_module_tree():
    rows = [op(module="enc.0.attn", time_s=0.003), op(module="enc.1.mlp", time_s=0.001),
            op(module="", time_s=0.004, flops=None), op(module="enc.0.attn", phase="backward", time_s=0.002)]
    by_module = {g.key: g for g in group_by(rows, "module")}
    assert by_module["enc.0.attn"].time_s == pytest.approx(0.005) and by_module["enc.0.attn"].calls == 2
    assert by_module[""].flops is None and by_module[""].uncounted_calls == 1
    groups, forward, backward = module_tree(rows)
    assert set(groups) == {"", "enc", "enc.0", "enc.0.attn", "enc.1", "enc.1.mlp"}
    assert groups["enc"].time_s == pytest.approx(0.006) and groups[""].time_s == pytest.approx(0.010)
    assert groups["enc"].flops == 3 * 1024  # the uncounted row is not a zero in the counted sum
    assert forward["enc.0"] == pytest.approx(0.003) and backward["enc.0"] == pytest.approx(0.002)
    with pytest.raises(ValueError, match="group_by takes"):
        group_by(rows, "dtype")


def test_module_tree_keeps_the_optimizer_and_work_outside_phases_off_forward():
    rows = [op(module="enc.0", time_s=0.003), op(module="enc.0", phase="decode", time_s=0.001),
            op(module="enc.0", phase="backward", time_s=0.002), op(module="enc.0", phase="recompute", time_s=0.0005),
            op("aten._foreach_add_", module="", phase="optimizer", time_s=0.004),
            op("aten.mul_", module="", phase="other", time_s=0.002), op(module="enc.0", phase="eval", time_s=0.001)]
    groups, forward, backward = module_tree(rows)
    # forward-side: training's forward, generation's decode, a label of the user's; recompute is backward's
    assert forward["enc.0"] == pytest.approx(0.005) and backward["enc.0"] == pytest.approx(0.0025)
    # the optimizer step and the work outside any phase are on neither side of the model's split
    assert forward[""] == pytest.approx(0.005) and groups[""].time_s == pytest.approx(0.0135)
    device = memwall.lookup_device("a100-sxm4-80gb")
    text = render_text(memwall.Report(rows=place_rows(rows, device), device=device, steps=(0,)), width=140)
    # the optimizer's 4 ms named apart from the 2 ms outside any phase (both read "other 6 ms")
    assert "(model)  100%  fwd 5 ms bwd 2.5 ms opt 4 ms other 2 ms" in text
    assert optimizer_time_s(rows) == {"": pytest.approx(0.004)}


def test_module_tree_folds_wrappers_and_gives_block_lists_no_level():
    """PEFT wraps a model three times (base_model.model.model): with the tree's four levels spent
    on wrappers and the `layers` list, no decoder layer ever showed. A chain of modules each
    holding all of its one child's time is one node; a list of numbered blocks takes no level."""
    base = "base_model.model.model"
    rows = [op(module=f"{base}.layers.{i}.self_attn.q_proj.lora_{ab}", time_s=0.001 * (i + 1))
            for i in range(2) for ab in "AB"] + [op(module=f"{base}.norm", time_s=0.0005),
                                               op(module="base_model.model.lm_head", time_s=0.002)]
    device = memwall.lookup_device("a100-sxm4-80gb")
    text = render_text(memwall.Report(rows=place_rows(rows, device), device=device, steps=(0,)), width=140)
    tree = text.split("Modules (rolled up)")[1].split("\n\n")[0]
    names = [line.split("── ")[1].split("  ")[0] for line in tree.splitlines() if "── " in line]
    # base_model holds only base_model.model, which has lm_head beside model: folded down to it
    assert names[:3] == ["(model)", "base_model.model", "model"]
    # each layer holds one chain down to the adapters' parent: one node, under `layers`
    assert {"layers", "1.self_attn.q_proj", "0.self_attn.q_proj", "norm", "lm_head"} == set(names[3:])


def test_one_record_for_ops_and_collectives():
    record = row_record(op())
    assert tuple(record) == ROW_COLUMNS
    assert record["bytes"] == 896 and record["bound"] == "memory" and record["family"] == "matmul"
    c = row_record(all_reduce(calls=2))
    assert tuple(c) == ROW_COLUMNS + COLLECTIVE_COLUMNS
    assert (c["bound"], c["message_bytes_per_call"], c["bytes_moved"], c["link_bytes_per_s"]) == (
        "communication", 4000, 8000, 2e9)
    assert c["flops"] is None and c["intensity"] is None and c["family"] == "communication"


def test_report_rows_are_longest_first_with_ties_in_op_module_phase_shapes_order():
    # analysis.by_time compares names only within runs of equal times; a plain sort on the whole
    # key is the reference, over rows with many ties (untimed rows, repeated times)
    import random

    from memwall_plugin.analysis import by_time

    rng = random.Random(7)
    rows = [op(rng.choice(["aten.mm", "aten.add", "aten.relu"]), module=rng.choice(["a", "b", "a.c"]),
               phase=rng.choice(["forward", "backward"]), shapes=rng.choice(["[1]", "[2]"]),
               time_s=rng.choice([0.0, 0.001, 0.002, 0.5]) + (rng.random() if rng.random() < 0.3 else 0.0))
            for _ in range(400)]
    expected = sorted(rows, key=lambda r: (-r.time_s, r.op, r.module, r.phase, r.shapes))
    assert [id(r) for r in by_time(list(rows))] == [id(r) for r in expected]


def test_calls_that_differ_only_in_strides_or_arguments_are_one_row():
    """A row is one (op, overload, module, phase, dtype, shapes): calls that differ in what a row
    does not show (an input's strides, a plain argument) are summed into it, as the README's rows
    promise (they were separate rows with one key: `--by shape`, the JSON and `memwall diff` met
    the key twice)."""
    import torch

    a, b = torch.randn(64, 64), torch.randn(64, 64)
    with memwall.profile(summary=False, memory=False) as prof:
        for _ in range(3):
            torch.add(a, b)
            torch.add(a.t(), b)  # a transposed input: other strides
            torch.add(a, b, alpha=2.0)  # another argument
    rows = [r for r in prof.report().rows if r.op == "aten.add"]
    assert len(rows) == 1
    (row,) = rows
    # 9 calls of 64 x 64 adds (alpha's multiply aside: 1 FLOP an element for the plain ones)
    assert row.calls == 9 and row.shapes == "[64, 64] x [64, 64]"
    assert row.flops is not None and row.flops >= 9 * 64 * 64
    # each call reads two 16 KiB inputs and writes one 16 KiB output
    assert row.bytes_read == 9 * 2 * 64 * 64 * 4 and row.bytes_written == 9 * 64 * 64 * 4
    keys = [row_key(r) for r in prof.report().rows]
    assert len(keys) == len(set(keys))
