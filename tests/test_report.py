"""Report files: exact round trip, rescore, and clear errors for files that are not reports."""

from __future__ import annotations

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
