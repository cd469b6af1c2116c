"""headline.py: the figures every view leads with, from a hand-built report whose totals are
worked out by hand (not by summing the report's rows again)."""

from __future__ import annotations

import pytest
from test_rows import all_reduce, op

import memwall_plugin as memwall
from memwall_plugin.ceilings import Link
from memwall_plugin.devices import ESTIMATED, Figure
from memwall_plugin.headline import headline, rank_record, slowest_rank


def report(**changes) -> memwall.Report:
    # mm: 1024 FLOPs, 896 B, 1 ms, memory-bound (1.14 FLOP/B under a ridge of 10)
    # gemm: 1024 * 64 FLOPs and the same 896 B, 2 ms: 73 FLOP/B, compute-bound
    # an op without a formula: 896 B, 1 ms, uncounted
    rows = (op(time_s=0.001), op("aten.bmm", flops=1024 * 64, time_s=0.002), op("mylib.op", flops=None, time_s=0.001))
    return memwall.Report(**{"rows": rows, "steps": (0, 1), "wall_time_s": 0.010, **changes})


def test_the_headline_of_a_single_process_run():
    h = headline(report())
    assert (h.time_s, h.counted_time_s) == (pytest.approx(0.004), pytest.approx(0.003))
    assert (h.flops, h.bytes, h.uncounted_rows) == (1024 + 65536, 3 * 896, 1)
    assert h.intensity == pytest.approx((1024 + 65536) / (2 * 896))  # over the counted ops' bytes
    assert h.memory_bound_fraction == pytest.approx(0.25)  # the mm's 1 ms of 4
    assert h.coverage == pytest.approx(0.75)
    assert h.roofline_time_s == pytest.approx(896 / 1e10 + 65536 / 1e11)
    assert h.achieved_flops_per_s == pytest.approx(66560 / 0.003)
    assert (h.comm_time_s, h.bytes_moved, h.untimed_calls) == (None, 0, 0)


def test_scalars_are_the_headlines_figures():
    scalars = headline(report()).scalars()
    assert scalars["memwall/flops"] == 66560 and scalars["memwall/bytes"] == 2688
    assert scalars["memwall/memory_bound_fraction"] == pytest.approx(0.25)
    assert "memwall/comm_time_s" not in scalars


def test_the_headline_of_a_rank_with_collectives():
    link = Link("loopback TCP (one host)", Figure(2e9, ESTIMATED))
    rank = report(collectives=(all_reduce(calls=2, timed=1),), link=link, comm_time_s=0.004, overlapped_s=0.001,
                  world_size=2)
    h = headline(rank)
    assert (h.message_bytes, h.bytes_moved, h.untimed_calls) == (8000, 8000, 1)
    assert h.comm_share == pytest.approx(0.4)  # 4 ms in flight of 10 ms wall
    assert (h.exposed_s, h.overlap_fraction) == (pytest.approx(0.003), pytest.approx(0.25))
    assert h.time_s == pytest.approx(0.004)  # op time stays the ops': collectives are on the link
    assert headline(rank).scalars()["memwall/comm_time_s"] == 0.004


def test_the_slowest_rank_has_the_most_time_in_ops():
    fast, slow = headline(report(rank=0)), headline(report(rank=1, wall_time_s=0.02, rows=(op(time_s=0.009),)))
    assert slowest_rank([fast, slow]) is slow and slowest_rank([]) is None
    record = rank_record(slow, slow)
    assert (record["rank"], record["steps"], record["op_time_s"], record["slowest"]) == (1, 2, 0.009, True)
    assert rank_record(fast, slow)["slowest"] is False


def test_set_up_is_in_the_totals_and_out_of_the_shares():
    # the report above plus 6 ms of set-up: weight init drawn before the first forward (memory-bound,
    # 1.14 FLOP/B) and an uncounted op that loaded data
    setup = (op("aten.normal_", module="", phase="setup", time_s=0.005),
             op("mylib.load", module="", phase="setup", flops=None, time_s=0.001))
    h = headline(report(rows=report().rows + setup))
    assert h.time_s == pytest.approx(0.010) and h.setup_time_s == pytest.approx(0.006)  # totals keep it
    assert h.flops == 1024 + 65536 + 1024
    # by hand, over the 4 ms of work alone: the mm's 1 ms memory-bound, 3 ms of 4 counted
    assert h.memory_bound_fraction == pytest.approx(0.25)
    assert h.coverage == pytest.approx(0.75)
    assert headline(report()).setup_time_s == 0.0


def test_a_report_of_set_up_alone_has_its_shares_over_it():
    """The tab's phase filter on "setup": there is nothing else to compare against."""
    rows = (op("aten.normal_", module="", phase="setup", time_s=0.003),
            op("mylib.load", module="", phase="setup", flops=None, time_s=0.001))
    h = headline(report(rows=rows))
    assert (h.memory_bound_fraction, h.coverage) == (pytest.approx(0.75), pytest.approx(0.75))
