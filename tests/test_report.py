"""Report files: exact round trip, rescore, and clear errors for files that are not reports."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import profiled

import memwall_plugin as memwall


@pytest.fixture
def report() -> memwall.Report:
    lin = torch.nn.Linear(32, 64)
    emb = torch.nn.Embedding(100, 32)
    idx = torch.randint(0, 100, (4, 8))
    return profiled(lambda: lin(emb(idx)).relu().sum().backward())


def test_save_and_load_round_trip_exactly(report, tmp_path):
    path = report.save(tmp_path / "r.json")
    loaded = memwall.load_report(path)
    assert loaded == report
    assert loaded.rows == report.rows
    assert [r.time_s for r in loaded.rows] == [r.time_s for r in report.rows]


def test_saved_file_is_versioned_json_with_totals_per_row(report, tmp_path):
    data = json.loads(report.save(tmp_path / "r.json").read_text())
    assert data["format"] == "memwall-report"
    assert data["schema_version"] == memwall.SCHEMA_VERSION
    fields = {"op", "module", "phase", "calls", "flops", "bytes_read", "bytes_written", "time_s"}
    assert fields <= set(data["rows"][0])


def test_rescore_resizes_every_tensor_and_keeps_flops(report):
    eight_bit = report.rescore(bytes_per_element=1)
    assert eight_bit.total_flops == report.total_flops
    assert eight_bit.bytes_per_element == 1
    for before, after in zip(report.rows, eight_bit.rows):
        assert after.bytes == before.elements_read + before.elements_written
        assert after.flops == before.flops and after.time_s == before.time_s
    # fp32 everywhere except int64 indices: bytes shrink by about 4x
    assert 3.5 < report.total_bytes / eight_bit.total_bytes <= 4.5
    assert eight_bit.rescore(bytes_per_element=2).total_bytes == 2 * eight_bit.total_bytes
    with pytest.raises(ValueError, match="positive int"):
        report.rescore(bytes_per_element=0)


def test_totals_are_the_hand_counts():
    a, b, c = torch.randn(8, 16), torch.randn(16, 4), torch.randn(8, 4)
    rep = profiled(lambda: (a @ b) + c)
    # mm: 2*8*16*4 = 1024 FLOPs, reads 128 + 64 floats, writes 32; add: 32 FLOPs, reads 2 x 32, writes 32
    assert rep.total_flops == 1024 + 32
    assert rep.total_bytes == 4 * (128 + 64 + 32) + 4 * (32 + 32 + 32)
    assert rep.intensity == pytest.approx(1056 / 1280) and rep.uncounted == ()
    assert {r.op: r.calls for r in rep.rows} == {"aten.mm": 1, "aten.add": 1}


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "not valid JSON"),
        ('{"format": "memwall-report", "schema_version": 1, "meta": {}, "rows": [', "truncated"),
        ('{"hello": 1}', "not a memwall report"),
        ('{"format": "memwall-report", "schema_version": 99, "meta": {}, "rows": []}', "schema_version 99"),
        ('{"format": "memwall-report", "schema_version": 1, "meta": {}, "rows": [{"op": "x"}]}', "lacks"),
    ],
)
def test_bad_files_are_rejected_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(memwall.ReportError, match=message):
        memwall.load_report(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(memwall.ReportError, match="no such file"):
        memwall.load_report(tmp_path / "nope.json")
    with pytest.raises(memwall.ReportError, match="directory"):
        memwall.load_report(tmp_path)


def test_hostile_numbers_are_rejected(report, tmp_path):
    data = report.to_dict()
    data["rows"][0]["calls"] = -5
    path = tmp_path / "neg.json"
    path.write_text(json.dumps(data))
    with pytest.raises(memwall.ReportError, match="non-negative"):
        memwall.load_report(path)
    data["rows"][0]["calls"] = 1
    data["rows"][0]["time_s"] = float("nan")
    path.write_text(json.dumps(data))
    with pytest.raises(memwall.ReportError, match="finite"):
        memwall.load_report(path)


def test_save_leaves_no_temporary_files(report, tmp_path):
    report.save(tmp_path / "a.json")
    report.save(tmp_path / "a.json")  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_summary_text_names_the_top_ops(report):
    text = memwall.format_summary(report)
    assert "addmm" in text and "coverage" in text


# --- per-step totals (the tab's step points) -----------------------------------------------------


def test_each_recorded_step_keeps_its_own_totals_and_the_file_round_trips_them(tmp_path):
    """Step i runs i+1 matmuls [m,k]@[k,n] in fp32: 2*m*k*n FLOPs and 4*(m*k + k*n + m*n) bytes
    each (by hand), so the three step points differ, and over both windows (a schedule of 2
    active steps, repeated) they add up to the run."""
    m, k, n = 16, 32, 8
    a, b = torch.randn(m, k), torch.randn(k, n)
    with memwall.profile(logdir=tmp_path, summary=False, scalars=False,
                         schedule=memwall.schedule(wait=0, warmup=0, active=2, repeat=2)) as prof:
        for step in range(3):
            for _ in range(step + 1):
                a @ b
            prof.step()
    run = prof.report()
    assert [(s.first_step, s.last_step, s.step_count) for s in run.step_totals] == [(0, 0, 1), (1, 1, 1), (2, 2, 1)]
    assert [s.flops for s in run.step_totals] == [(i + 1) * 2 * m * k * n for i in range(3)]
    assert [s.bytes for s in run.step_totals] == [(i + 1) * 4 * (m * k + k * n + m * n) for i in range(3)]
    assert sum(s.flops for s in run.step_totals) == 6 * 2 * m * k * n == run.total_flops
    assert all(0 < s.counted_time_s <= s.time_s <= s.wall_time_s for s in run.step_totals)
    files = sorted((tmp_path / "plugins" / "memwall").glob("*.json"))
    windows = [memwall.load_report(f) for f in files]
    assert [[s.first_step for s in w.step_totals] for w in windows] == [[0, 1], [2]]
    merged = memwall.report.merge_reports(windows)
    assert merged.step_totals == run.step_totals  # read back exactly, and merged in step order
    # a file written before memwall kept step totals loads, with none
    data = json.loads(files[0].read_text())
    del data["meta"]["step_totals"]
    assert memwall.report.parse_report(json.dumps(data).encode()).step_totals == ()


def test_windows_merged_add_up_what_each_measured_of_its_own_steps(tmp_path):
    """`memwall report DIR` over a run of several windows kept the last window's `extra`: its
    memwall's own time alone (110 ms where the run's summary said 219 ms), so the merged report's
    host share rose (37% to 52%) and a host-bound finding appeared that the live summary had
    not. The truth: the run's own report at its end, and each window's file."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 3, 32, 32)
    with memwall.profile(model=model, logdir=tmp_path, summary=False, scalars=False,
                         schedule=memwall.schedule(wait=0, warmup=0, active=2, repeat=2)) as prof:
        for _ in range(4):
            model(x if prof.step_num < 2 else x.contiguous(memory_format=torch.channels_last)).sum().backward()
            prof.step()
    run = prof.report()
    windows = [memwall.load_report(f) for f in sorted((tmp_path / "plugins" / "memwall").glob("*.json"))]
    assert len(windows) == 2
    own = [w.extra["memwall_own_time_s"] for w in windows]
    merged = memwall.report.merge_reports(windows)
    assert merged.extra["memwall_own_time_s"] == pytest.approx(sum(own)) == pytest.approx(
        run.extra["memwall_own_time_s"])
    assert own[0] > 0 and own[1] > 0 and merged.extra["memwall_own_time_s"] > max(own)
    # the convolutions ran NCHW in the first window, NHWC in the second: weighted by their time
    shares = [w.extra["channels_last_share"] for w in windows]
    assert shares == [0.0, 1.0] and 0.0 < merged.extra["channels_last_share"] < 1.0


def test_a_step_totals_entry_that_is_not_a_step_is_a_report_error(tmp_path):
    a = torch.randn(4, 4)
    with memwall.profile(logdir=tmp_path, summary=False, scalars=False) as prof:
        a @ a
        prof.step()
    (path,) = (tmp_path / "plugins" / "memwall").glob("*.json")
    data = json.loads(path.read_text())
    for field, value, message in (("last_step", -1, "non-negative"), ("flops", 1.5, "whole number"),
                                  ("color", "red", "unknown field")):
        bad = json.loads(json.dumps(data))
        bad["meta"]["step_totals"][0][field] = value
        with pytest.raises(memwall.ReportError, match=message):
            memwall.report.parse_report(json.dumps(bad).encode())
    backwards = json.loads(json.dumps(data))
    backwards["meta"]["step_totals"][0].update(first_step=5, last_step=2)
    with pytest.raises(memwall.ReportError, match="is not a step"):
        memwall.report.parse_report(json.dumps(backwards).encode())


def test_a_long_run_keeps_a_bounded_number_of_step_points_that_cover_every_step():
    """10,000 steps condense, neighbours in pairs, to at most MAX_STEP_TOTALS points; nothing is
    lost: the points' FLOPs and step counts add up to the steps'."""
    from memwall_plugin.report import MAX_STEP_TOTALS, StepTotals, condense_steps

    steps = [StepTotals(i, i, 1000 + i, 10, 0.5, 0.25, 1.0) for i in range(10_000)]
    points = condense_steps(reversed(steps))
    assert MAX_STEP_TOTALS // 2 < len(points) <= MAX_STEP_TOTALS
    assert sum(p.flops for p in points) == sum(1000 + i for i in range(10_000))
    assert sum(p.step_count for p in points) == 10_000
    assert points[0].first_step == 0 and points[-1].last_step == 9_999
    assert all(p.last_step + 1 == q.first_step for p, q in zip(points, points[1:]))  # in order, no gap


def test_a_report_says_how_its_op_times_were_taken(report, tmp_path):
    """A CPU run's times are the host clock around each op: the report says so in its file; its
    summary leaves it unsaid (a CUDA run's, taken with events, adds a line: tests/test_cuda.py)."""
    assert set(report.extra["time_source"]) == {"cpu"}
    assert "host clock" in report.extra["time_source"]["cpu"]
    assert memwall.load_report(report.save(tmp_path / "r.json")).extra["time_source"] == report.extra["time_source"]
    assert "timing " not in memwall.render_text(report, width=120)
    cuda = dataclasses.replace(report, extra={**report.extra, "time_source": {"cuda": "events"}})
    assert "timing   CUDA events around each op" in memwall.render_text(cuda, width=120)
