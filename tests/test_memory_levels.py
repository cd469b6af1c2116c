"""Memory levels: each op placed under the roof of the level its data was served from.

Ground truth from outside memwall: cache sizes written into a fake sysfs tree, reuse distances
counted by hand for loops whose every touch is known, and the placement arithmetic worked out by
hand on a device with round numbers.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any

import pytest
import torch
from memwall_plugin.hooks.residency import Residency

import memwall_plugin as memwall
from memwall_plugin.ceilings import level_of, memory_roof_of, place_rows
from memwall_plugin.devices import (
    CALIBRATED,
    ESTIMATED,
    DeviceSpec,
    Figure,
    MemoryLevel,
    cpu_cache_levels,
    lookup_device,
    parse_peaks,
    read_cpu_caches,
    resolve_device,
)
from memwall_plugin.records import COLD, reuse_bucket
from memwall_plugin.report import merge_reports

KIB, MIB = 2**10, 2**20


def _sysfs(root, caches):
    for i, (level, kind, size, shared) in enumerate(caches):
        index = root / f"index{i}"
        index.mkdir(parents=True)
        (index / "level").write_text(f"{level}\n")
        (index / "type").write_text(f"{kind}\n")
        (index / "size").write_text(f"{size}\n")
        (index / "shared_cpu_list").write_text(f"{shared}\n")


def test_cpu_caches_come_from_sysfs_and_private_levels_add_up_over_the_threads_in_use(tmp_path):
    _sysfs(tmp_path, [(1, "Data", "48K", "0"), (1, "Instruction", "32K", "0"), (2, "Unified", "2048K", "0"),
                      (3, "Unified", "36M", "0-7")])
    found = read_cpu_caches(str(tmp_path))
    assert found == [(1, 48 * KIB, 1), (2, 2 * MIB, 1), (3, 36 * MIB, 8)]  # the instruction cache left out
    levels = cpu_cache_levels(found, threads=4, clock_hz=3e9, cpus=8)
    # four threads on four cores: four private L1s and L2s, one shared L3
    assert [(lv.name, lv.capacity_bytes) for lv in levels] == [("L1", 4 * 48 * KIB), ("L2", 8 * MIB),
                                                                ("L3", 36 * MIB)]
    assert {lv.bandwidth.source for lv in levels} == {ESTIMATED}
    assert "sysfs" in levels[0].capacity_source and "shared by 8" in levels[2].capacity_source
    assert read_cpu_caches(str(tmp_path / "absent")) == []


def test_a_device_keeps_its_levels_through_its_file_and_user_figures_replace_a_level():
    spec = lookup_device("a100-sxm4-40gb")
    l2, hbm = spec.memory_levels
    assert (l2.name, l2.capacity_bytes, hbm.name) == ("L2", 40 * MIB, "HBM")
    assert l2.bandwidth.value == pytest.approx(5120 * 1.41e9, rel=1e-3) and "whitepaper" in l2.capacity_source
    assert DeviceSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    changed = resolve_device(spec, {"L2": 9e12})
    assert changed.caches[0].bandwidth == Figure(9e12, "user")
    assert parse_peaks("fp32=1e12,l2=3e11") == ({"fp32": 1e12, "L2": 3e11}, None)
    with pytest.raises(ValueError, match="no cache level 'L3'"):
        resolve_device(spec, {"L3": 1e12})


def test_reuse_distance_by_hand():
    r = Residency()
    x, y = torch.ones(64 * KIB // 4), torch.ones(64 * KIB // 4)  # 64 KiB each
    seen: dict[int, int] = {}
    r.observe((x,), x, seen)  # first touch: cold; the in-place output is where its input was
    r.flush()
    assert seen == {COLD: 2 * 64 * KIB}
    seen.clear()
    r.observe((x,), x, seen)  # touched again at once: its own 64 KiB
    r.flush()
    assert seen == {reuse_bucket(64 * KIB): 2 * 64 * KIB}
    seen.clear()
    r.observe((y,), None, seen)
    r.observe((x, y), None, seen)  # x: y's 64 KiB since, plus its own; y: x's just now, plus its own
    r.flush()
    assert seen == {COLD: 64 * KIB, reuse_bucket(128 * KIB): 2 * 64 * KIB}
    # a list is walked tensor by tensor, as foreach ops do: 100 tensors of 64 KiB, twice
    many = [torch.ones(64 * KIB // 4) for _ in range(100)]
    r.observe((many,), None, {})
    again: dict[int, int] = {}
    r.observe((many,), None, again)
    r.flush()
    assert again == {reuse_bucket(100 * 64 * KIB): 100 * 64 * KIB}  # 6.25 MiB: bucket 2**23
    assert reuse_bucket(1) == 0 and reuse_bucket(2 * MIB) == 21 and reuse_bucket(2 * MIB + 1) == 22


def _device() -> DeviceSpec:
    """Round numbers: L1 64 KiB at 400 GB/s, L2 2 MiB at 200 GB/s, DRAM at 50 GB/s."""
    return DeviceSpec(key="test", name="test CPU", kind="cpu", peaks=(("fp32", Figure(1e11, CALIBRATED)),),
                      bandwidth=Figure(50e9, CALIBRATED),
                      caches=(MemoryLevel("L1", 64 * KIB, Figure(400e9, CALIBRATED)),
                              MemoryLevel("L2", 2 * MIB, Figure(200e9, CALIBRATED))))


def test_placement_by_hand():
    device = _device()
    assert level_of(device, 16) == ("L1", 400e9)  # 64 KiB fits L1
    assert level_of(device, 17) == ("L2", 200e9)
    assert level_of(device, 21) == ("L2", 200e9)  # 2 MiB fits L2
    assert level_of(device, 22) == ("DRAM", 50e9)
    assert level_of(device, COLD) == ("DRAM", 50e9)
    place = memory_roof_of(device)
    assert place(((18, 100),)) == ("L2", 200e9, 50e9)
    assert place(()) == ("DRAM", 50e9, 50e9)  # nothing recorded (an old report): main memory
    # half the bytes from L2, half from DRAM: 200 B in 100/200e9 + 100/50e9 s = 80 GB/s; DRAM takes most time
    level, bw, main = place(((18, 100), (COLD, 100)))
    assert (level, main) == ("DRAM", 50e9) and bw == pytest.approx(80e9)
    row = memwall.Row(op="aten.add_", overload="Tensor", module="", phase="optimizer", calls=1, dtype="float32",
                      shapes="", flops=1000, bytes_read=8000, bytes_written=4000, elements_read=2000,
                      elements_written=1000, time_s=12000 / 100e9, reuse=((18, 12000),))
    (placed,) = place_rows([row], device)
    assert (placed.memory_level, placed.in_cache) == ("L2", True)
    assert placed.efficiency == pytest.approx(0.5)  # 100 GB/s under L2's 200
    assert placed.dram_efficiency == pytest.approx(2.0)  # the paper's view: above DRAM's 50
    (on_a100,) = place_rows([row], lookup_device("a100-sxm4-40gb"))
    assert on_a100.memory_level == "L2" and on_a100.bandwidth_bytes_per_s == pytest.approx(5120 * 1.41e9, rel=1e-3)


def test_in_place_updates_run_from_cache_and_a_large_copy_from_dram():
    n = 256 * KIB // 4
    x, y = torch.rand(n), torch.rand(n)
    big = torch.rand(8 * MIB)  # 32 MiB: beyond L2 (and the copy's 64 MiB beyond any L3 here)
    dst = torch.empty_like(big)
    device = _device()
    with memwall.profile(summary=False, device=device) as prof:
        for _ in range(200):
            x.mul_(0.9)
            x.add_(y)
        for _ in range(3):
            dst.copy_(big)
    rows = {r.op: r for r in prof.report().rows}
    for op in ("aten.mul_", "aten.add_"):
        assert rows[op].memory_level == "L2" and rows[op].in_cache, rows[op]
    assert rows["aten.copy_"].memory_level == "DRAM" and not rows["aten.copy_"].in_cache


def test_calibrated_levels_keep_in_place_updates_at_or_under_their_roof(tmp_path, monkeypatch):
    """The issue's loop, after `memwall calibrate`: 256 KB in-place updates read 2-5x DRAM's
    roof; under their cache level's measured roof they stay under it."""
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))
    spec = memwall.detect_device("cpu")
    if not spec.caches:
        pytest.skip("this OS does not report its CPU caches")
    calibration = memwall.calibrate(spec, quick=True, dtypes=(torch.float32,))
    assert set(calibration.levels_bytes_per_s) == {c.name for c in spec.caches}
    measured = memwall.detect_device("cpu")
    assert {c.bandwidth.source for c in measured.caches} == {CALIBRATED}
    speeds = [c.bandwidth.value for c in measured.memory_levels]
    assert speeds == sorted(speeds, reverse=True)  # a nearer level is never slower
    n = 256 * KIB // 4
    x, y = torch.rand(n), torch.rand(n)
    with memwall.profile(summary=False) as prof:
        for _ in range(200):
            x.mul_(0.9)
            x.add_(y)
    for r in prof.report().rows:
        assert r.in_cache and r.efficiency <= 1.2, (r.op, r.memory_level, r.efficiency)



def test_main_memory_is_measured_on_arrays_four_times_the_last_level_cache(tmp_path, monkeypatch):
    """A 480 MiB L3 (the CI host's Xeon) held most of a fixed 128 MB in-place scale, and calibration
    took that cache's speed for main memory's: an out-of-place add then read 15% of its roof. Each
    streaming kernel's arrays now span four times the largest cache in front of main memory (a
    96 MiB L3 here: the one-array scale grows past 128 MB, the three-array triad stays at it)."""
    calibration = importlib.import_module("memwall_plugin.calibrate")  # the package exports the function
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path))
    spans: dict[str, int] = {}

    def best_seconds(device, name, arrays_n, n, repeats, budget_s, buffer=None):  # sizes, no streams
        spans.setdefault(name, 4 * arrays_n * n)  # the first call per kernel is main memory's
        assert buffer is None or buffer.numel() >= arrays_n * n
        return 1.0

    monkeypatch.setattr(calibration, "_best_seconds", best_seconds)
    spec = dataclasses.replace(
        memwall.detect_device("cpu"),
        caches=(MemoryLevel("L2", 2 * MIB, None, "test"), MemoryLevel("L3", 96 * MIB, None, "test")),
    )
    result = memwall.calibrate(spec, quick=True, dtypes=(torch.float32,))
    assert set(spans) == {"copy", "triad", "scale", "add"}
    assert min(spans.values()) >= 4 * 96 * MIB, spans
    assert spans["triad"] == 3 * 128 * MIB  # 384 MiB already
    assert result.details["stream_elements"] == 4 * 96 * MIB // 4  # the in-place scale: one array
    # where the caches are small, the 128 MB arrays stay
    spans.clear()
    calibration.measure_stream(torch.device("cpu"), cache_bytes=8 * MIB, repeats=1)
    assert spans == {"copy": 2 * 128 * MIB, "triad": 3 * 128 * MIB, "scale": 128 * MIB, "add": 2 * 128 * MIB}


def test_report_files_keep_reuse_and_old_rows_read_as_main_memory(tmp_path):
    device = _device()
    row = memwall.Row(op="aten.add_", overload="Tensor", module="", phase="other", calls=1, dtype="float32",
                      shapes="", flops=1000, bytes_read=8000, bytes_written=4000, elements_read=2000,
                      elements_written=1000, time_s=1e-6, reuse=((18, 12000),))
    rep = memwall.Report(rows=place_rows([row], device), device=device, steps=(0,), wall_time_s=1.0)
    back = memwall.Report.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back.rows == rep.rows and back.device == device
    old = rep.to_dict()
    for r in old["rows"]:
        for key in ("reuse", "memory_level", "dram_bandwidth_bytes_per_s"):
            del r[key]
    (before,) = memwall.Report.from_dict(old).rows
    assert (before.memory_level, before.dram_bandwidth_bytes_per_s) == ("DRAM", 200e9)  # placed as it was
    bad = rep.to_dict()
    bad["rows"][0]["reuse"] = [[18]]
    with pytest.raises(memwall.ReportError, match=r"reuse\[0\] must be a list of 2"):
        memwall.Report.from_dict(bad)


def test_merged_windows_are_placed_again_from_their_summed_reuse():
    device = _device()
    base = memwall.Row(op="aten.add_", overload="Tensor", module="", phase="other", calls=1, dtype="float32",
                       shapes="", flops=1000, bytes_read=8000, bytes_written=4000, elements_read=2000,
                       elements_written=1000, time_s=1e-6)
    cold = dataclasses.replace(base, reuse=((COLD, 12000),))
    warm = dataclasses.replace(base, reuse=((18, 12000),))
    first = memwall.Report(rows=place_rows([cold], device), device=device, steps=(0,), created_unix_s=1.0)
    later = [memwall.Report(rows=place_rows([warm], device), device=device, steps=(s,), created_unix_s=2.0 + s)
             for s in (1, 2, 3)]
    (merged,) = merge_reports([first, *later]).rows
    assert merged.reuse == ((18, 36000), (COLD, 12000))
    # 36 kB at 200 GB/s (180 ns) and 12 kB at 50 GB/s (240 ns): DRAM takes most of the time
    assert merged.memory_level == "DRAM"
    assert merged.bandwidth_bytes_per_s == pytest.approx(48000 / (36000 / 200e9 + 12000 / 50e9))


def test_the_summary_names_the_level_and_findings_say_what_bounds_cached_updates():
    from memwall_plugin.console import findings, render_text

    device = _device()

    def row(op, reuse, nbytes, time_s):
        return memwall.Row(op=op, overload="Tensor", module="", phase="optimizer", calls=100, dtype="float32",
                           shapes="[65536]", flops=nbytes // 8, bytes_read=nbytes // 2, bytes_written=nbytes // 2,
                           elements_read=nbytes // 8, elements_written=nbytes // 8, time_s=time_s, reuse=reuse)

    # 101 MB in 1 ms from L2 (101 GB/s); 10 MB in 1 ms from DRAM (10 GB/s)
    rows = place_rows([row("aten.add_", ((19, 1),), 101_000_000, 0.001),
                       row("aten.mul_", ((COLD, 1),), 10_000_000, 0.001)], device)
    rep = memwall.Report(rows=rows, device=device, steps=(0,), wall_time_s=0.0021)
    text = render_text(rep, width=120)
    assert "caches   L1 64 KiB 400 GB/s (calibrated), L2 2 MiB 200 GB/s (calibrated)" in text
    assert "cache    50% of op time ran on data still in cache (L2 50%)" in text
    header = next(line for line in text.splitlines() if line.startswith("op "))
    assert "level" in header
    add = next(line for line in text.splitlines() if line.startswith("add_ "))
    assert " L2 " in add and add.endswith("50%")  # 101 GB/s under L2's 200, not 202% of DRAM's 50
    (finding,) = [f for f in findings(rep) if "optimizer" in f]
    # add_ takes the larger share of the time: the level that serves most of it is named
    assert "they run from L2 at 101 GB/s: bound by the L2, not DRAM" in finding
    # the same bytes 100x slower: 1% of the L2's roof is no bandwidth bound, each op's fixed cost is
    slow = place_rows([row("aten.add_", ((19, 1),), 101_000_000, 0.1),
                       row("aten.mul_", ((COLD, 1),), 10_000_000, 0.001)], device)
    (finding,) = [f for f in findings(memwall.Report(rows=slow, device=device, steps=(0,), wall_time_s=0.11))
                  if "optimizer" in f]
    assert "they run from L2 at 1.01 GB/s, 0.5% of its 200 GB/s" in finding and "fixed cost" in finding
    assert "bound by the L2, not DRAM" not in finding


def test_a_finding_names_the_levels_own_roof_where_a_rows_calls_ran_from_several_levels():
    """A row whose calls ran mostly from L2 and partly from DRAM is placed under a roof between the
    two (154 GB/s here); the finding said "0.7% of its 154 GB/s" of "the L2" beside a header
    giving the L2's 200 GB/s. It names the level's own figure, the header's."""
    from memwall_plugin.console import findings

    device = _device()
    row = memwall.Row(op="aten.add_", overload="Tensor", module="", phase="optimizer", calls=100, dtype="float32",
                      shapes="[65536]", flops=12_500_000, bytes_read=50_000_000, bytes_written=50_000_000,
                      elements_read=12_500_000, elements_written=12_500_000, time_s=0.1,
                      reuse=((19, 90_000_000), (COLD, 10_000_000)))
    (placed,) = place_rows([row], device)
    assert placed.memory_level == "L2" and 150e9 < placed.bandwidth_bytes_per_s < 160e9
    rep = memwall.Report(rows=(placed,), device=device, steps=(0,), wall_time_s=0.11)
    (finding,) = [f for f in findings(rep) if "optimizer" in f]
    assert "they run from L2 at 1 GB/s, 0.5% of its 200 GB/s" in finding, finding


def _reuse_by_hand(calls: list[tuple[list[torch.Tensor], dict[int, int]]], horizon: int) -> None:
    """The reuse histogram the slow way, one touch at a time: a dict of each address's last touch."""
    clock, last = 0, {}
    for tensors, into in calls:
        here: dict[int, int] = {}
        for t in tensors:
            address, size = t.data_ptr(), t.nbytes
            if address in here:  # again in one call (an in-place output): where it was
                bucket = here[address]
            else:
                footprint = clock - last[address] + size if address in last else None
                bucket = COLD if footprint is None or footprint > horizon else reuse_bucket(footprint)
                clock += size
                last[address] = clock
                here[address] = bucket
            into[bucket] = into.get(bucket, 0) + size


@pytest.mark.parametrize("flush_at", [1, 7, 1 << 16])
def test_reuse_worked_out_in_bulk_matches_touch_by_touch(monkeypatch, flush_at):
    """Random calls over a pool of tensors (views at a shared address, lists, in-place outputs),
    worked out in bulk across flushes, against a touch-by-touch count: equal exactly, also with
    a horizon small enough that some touches fall beyond it."""
    import random

    from memwall_plugin.hooks import residency

    monkeypatch.setattr(residency, "FLUSH_AT", flush_at)
    monkeypatch.setattr(residency, "HORIZON", 3000)
    rng = random.Random(0)
    base = [torch.ones(rng.choice([1, 3, 16, 100, 250])) for _ in range(12)]
    pool = base + [b[: max(1, len(b) // 2)] for b in base[:4]]  # views: the same address, fewer bytes
    r = residency.Residency()
    calls: list[tuple[list[torch.Tensor], dict[int, int]]] = []
    mine: list[dict[int, int]] = []
    for _ in range(400):
        args: tuple[Any, ...] = tuple(rng.sample(pool, rng.randint(0, 3)))
        if rng.random() < 0.2:
            args = (list(args), 2.0)  # a foreach op's list, and a scalar
        out: Any = rng.choice([None, args[0] if args and isinstance(args[0], torch.Tensor) else None,
                               rng.choice(pool), [rng.choice(pool), rng.choice(pool)]])
        flat = [t for a in args for t in (a if isinstance(a, list) else [a]) if isinstance(t, torch.Tensor)]
        flat += out if isinstance(out, list) else [out] if out is not None else []
        calls.append((flat, {}))
        mine.append({})
        r.observe(args, out, mine[-1])
    r.flush()
    _reuse_by_hand(calls, 3000)
    assert mine == [into for _, into in calls]
    assert any(COLD in m for m in mine[100:]) and any(b != COLD for m in mine for b in m)


def test_reuse_forgetting_addresses_reads_cold_never_warmer(monkeypatch):
    """Past CARRIED remembered addresses the oldest are forgotten: a touch of one reads cold,
    never a faster level than the truth."""
    from memwall_plugin.hooks import residency

    monkeypatch.setattr(residency, "FLUSH_AT", 5)
    monkeypatch.setattr(residency, "CARRIED", 3)
    pool = [torch.ones(8) for _ in range(10)]
    r = residency.Residency()
    calls, mine = [], []
    for i in range(200):
        t = pool[(i * 7) % 10]
        calls.append(([t], {}))
        mine.append({})
        r.observe((t,), None, mine[-1])
    r.flush()
    _reuse_by_hand(calls, residency.HORIZON)
    truth = [into for _, into in calls]
    assert all(m == t or set(m) == {COLD} for m, t in zip(mine, truth))
    assert sum(m != t for m, t in zip(mine, truth)) > 0  # some were forgotten
