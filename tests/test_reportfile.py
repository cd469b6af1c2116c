"""reportfile.py and validation.py: report files against the worst a disk or a person can hand
memwall. Truncated, corrupt, wrong-schema and hostile files each give one clear ReportError (never
a raw exception, a hang or a later crash), and a file that loads can be shown. The loader is
fuzzed with hypothesis."""

from __future__ import annotations

import copy
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import profiled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memwall_plugin.tb_plugin import views

import memwall_plugin as memwall
from memwall_plugin.report import merge_reports, parse_report
from memwall_plugin.validation import MAX_REPORT_MB_ENV

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def report() -> memwall.Report:
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 16)
    emb = torch.nn.Embedding(20, 8)
    idx = torch.randint(0, 20, (2, 3))
    return profiled(lambda: lin(emb(idx)).relu().sum().backward())


@pytest.fixture(scope="module")
def good(report) -> dict[str, Any]:
    data = report.to_dict()
    assert data["device"] is not None and data["rows"]
    return data


def load_text(tmp_path: Path, text: str | bytes) -> memwall.Report:
    path = tmp_path / "r.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return memwall.load_report(path)


def edited(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `data` with the value at a dotted path ("rows.0.calls") replaced."""
    out = copy.deepcopy(data)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value
    return out


def usable(rep: memwall.Report) -> None:
    """Everything a reader does with a loaded report works on it."""
    views.report_view(rep)
    views.report_view(rep.rescore(bytes_per_element=1))
    every_row = memwall.SummaryOptions(top=len(rep.rows) + 1)
    for by in ("op", "module", "phase"):
        memwall.render_text(rep, width=120, options=every_row.with_(by=by))
    memwall.render_text(merge_reports([rep, rep]), width=80)
    json.dumps(views.report_view(rep), allow_nan=True)


# --- hostile values, one by one ------------------------------------------------------------------

HOSTILE = [
    # (where, value, what the message must say)
    ("rows.0.time_s", 1e308, "up to 1e30"),
    ("rows.0.calls", 10**31, "1e30"),
    ("rows.0.flops", -1, "non-negative"),
    ("rows.0.calls", "3", "whole number, got a string"),
    ("rows.0.calls", 2.5, "whole number"),
    ("rows.0.calls", True, "whole number, got a boolean"),
    ("rows.0.time_s", "0.1", "must be a number, got a string"),
    ("rows.0.op", 7, r"rows\[0\].op must be a string"),
    ("rows.0.module", ["a"], r"rows\[0\].module must be a string, got a list"),
    ("rows.0.peak_flops_per_s", 0.0, "positive"),
    ("rows.0", ["op"], r"rows\[0\] must be an object, got a list"),
    ("rows", {"op": 1}, "'rows' list"),
    ("meta", [], "'meta' object"),
    ("meta.steps", "0", "meta.steps must be a list"),
    ("meta.steps", [0, True], r"meta.steps\[1\] must be a whole number"),
    ("meta.steps", [0, -3], r"meta.steps\[1\]"),
    ("meta.tf32", [1], r"meta.tf32\[0\] must be a string"),
    ("meta.incomplete", "no", "meta.incomplete must be true or false"),
    ("meta.world_size", 0, "meta.world_size"),
    ("meta.rank", -1, "meta.rank"),
    ("meta.bytes_per_element", 0, "meta.bytes_per_element"),
    ("meta.wall_time_s", -1.0, "meta.wall_time_s"),
    ("meta.extra", [], "meta.extra must be an object"),
    ("device", "cpu", "device must be an object"),
    ("device.peaks", [], "device.peaks must be an object"),
    ("device.peaks.fp32.value", "1e12", "device.peaks.fp32.value must be a number"),
    ("device.peaks.fp32.value", True, "device.peaks.fp32.value must be a number"),
    ("device.peaks.fp32.source", "trust me", "must be one of"),
    ("device.name", {"x": 1}, "device.name must be a string"),
    ("device.memory_bytes", 1.5, "device.memory_bytes must be a whole number"),
    ("schema_version", True, "schema_version True"),
    ("schema_version", 1.0, "schema_version 1.0"),
    ("format", "memwall-report ", "not a memwall report"),
]


@pytest.mark.parametrize("where,value,message", HOSTILE, ids=[f"{w}={v!r}"[:40] for w, v, _ in HOSTILE])
def test_hostile_value_is_a_clear_report_error(good, tmp_path, where, value, message):
    with pytest.raises(memwall.ReportError, match=message):
        load_text(tmp_path, json.dumps(edited(good, where, value)))
    with pytest.raises(memwall.ReportError, match=message):  # the same check without a file
        memwall.Report.from_dict(edited(good, where, value))


@pytest.mark.parametrize("where", ["", "meta", "rows.0", "device", "device.peaks.fp32"])
def test_unknown_fields_are_rejected_by_name(good, tmp_path, where):
    data = copy.deepcopy(good)
    node: Any = data
    for key in filter(None, where.split(".")):
        node = node[int(key)] if isinstance(node, list) else node[key]
    node["surprise_field"] = 1
    with pytest.raises(memwall.ReportError, match="surprise_field"):
        load_text(tmp_path, json.dumps(data))


def test_missing_row_fields_are_named(good, tmp_path):
    data = copy.deepcopy(good)
    del data["rows"][0]["bytes_read"], data["rows"][0]["shapes"]
    with pytest.raises(memwall.ReportError, match=r"rows\[0\] lacks bytes_read, shapes"):
        load_text(tmp_path, json.dumps(data))


@pytest.mark.parametrize("text,message", [
    ("1" * 10_000, "10,000 digits"),  # json's own int() would raise a bare ValueError
    ('{"format": "memwall-report", "n": ' + "9" * 5000 + "}", "digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # json's own parser: RecursionError
    ('{"a": NaN}', "NaN is not a number memwall writes"),
    ('{"a": -Infinity}', "-Infinity"),
    ('{"a": 1e400}', "too large for a float"),
    ('{"format": "memwall-report", "format": "memwall-report"}', "'format' appears twice"),
    ('{"format": "memwall-report"} {"x": 1}', "extra data"),
    ("\ufeff{}", "not valid JSON"),
    ("", "not valid JSON"),
    ("null", "not a memwall report"),
])
def test_hostile_json_is_a_clear_report_error(tmp_path, text, message):
    with pytest.raises(memwall.ReportError, match=message):
        load_text(tmp_path, text)


def test_deep_nesting_inside_extra_is_bounded(good, tmp_path):
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    with pytest.raises(memwall.ReportError, match="nested deeper than 32"):
        load_text(tmp_path, json.dumps(edited(good, "meta.extra", deep)))
    shallow = edited(good, "meta.extra", {"note": "ok", "list": [1, 2.5, None, {"x": "y"}]})
    assert load_text(tmp_path, json.dumps(shallow)).extra["list"][3] == {"x": "y"}


def test_text_that_is_not_unicode_is_rejected(good, tmp_path):
    raw = json.dumps(good).encode()
    with pytest.raises(memwall.ReportError, match=r"not UTF-8 text \(byte 0xff"):
        load_text(tmp_path, raw[:50] + b"\xff\xfe" + raw[50:])
    lone = json.dumps(edited(good, "rows.0.module", "a\ud800b"))  # valid JSON, not valid text
    with pytest.raises(memwall.ReportError, match=r"rows\[0\].module holds text that is not valid Unicode"):
        load_text(tmp_path, lone)


def test_every_truncation_is_rejected(report, tmp_path):
    raw = json.dumps(report.to_dict(), separators=(",", ":")).encode()
    for cut in range(len(raw) - 1, 0, -7):
        with pytest.raises(memwall.ReportError, match="truncated"):
            parse_report(raw[:cut], "r.json")


def test_file_size_is_capped_before_reading(tmp_path, monkeypatch, report):
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:  # a sparse 1 GiB file: rejected from its size, never read
        f.truncate(1 << 30)
    with pytest.raises(memwall.ReportError, match=rf"1,024 MB, over the 128 MB .*\${MAX_REPORT_MB_ENV}"):
        memwall.load_report(huge)
    path = report.save(tmp_path / "r.json")
    monkeypatch.setenv(MAX_REPORT_MB_ENV, "0.001")
    with pytest.raises(memwall.ReportError, match="over the 0 MB"):
        memwall.load_report(path)
    monkeypatch.setenv(MAX_REPORT_MB_ENV, "lots")
    with pytest.raises(memwall.ReportError, match="not a size in MB"):
        memwall.load_report(path)
    monkeypatch.setenv(MAX_REPORT_MB_ENV, "1")
    assert memwall.load_report(path) == report


def test_things_that_are_not_files_never_hang(tmp_path):
    named = tmp_path / "rank0_steps000000-000000.json"
    named.mkdir()
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    outcomes: dict[str, str] = {}

    def load_all() -> None:
        for name, path in [("dir", named), ("fifo", fifo), ("device", Path("/dev/zero"))]:
            try:
                memwall.load_report(path)
            except memwall.ReportError as exc:
                outcomes[name] = str(exc)

    worker = threading.Thread(target=load_all, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a hang fails the test instead of stalling the suite
    assert not worker.is_alive(), "load_report blocked on a file that is not a regular file"
    assert "is a directory" in outcomes["dir"]
    assert "not a regular file" in outcomes["fifo"] and "not a regular file" in outcomes["device"]


def test_a_valid_report_with_odd_but_legal_values_loads_and_shows(good, tmp_path):
    data = edited(good, "rows.0.time_s", 0.0)
    data = edited(data, "rows.0.flops", None)
    data = edited(data, "rows.0.module", "<b>x</b>[/red]\x1b[2J")
    data = edited(data, "meta.wall_time_s", 1e30)
    rep = load_text(tmp_path, json.dumps(data))
    usable(rep)
    # a module name is text in every view: not rich markup, not HTML, not a terminal escape
    text = memwall.render_text(rep, width=200, options=memwall.SummaryOptions(top=100, by="module"))
    assert "<b>x</b>[/red]\\x1b[2J" in text and "\x1b" not in text
    assert "<b>x</b>" not in rep._repr_html_() and "&lt;b&gt;x&lt;/b&gt;" in rep._repr_html_()


# --- fuzzing -------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The report's dict with one to three values replaced, keys removed or keys added."""
    out = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(out)))
        if not path:
            continue
        parent: Any = out
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return out


def _outcome(load: Any) -> memwall.Report | None:
    try:
        rep = load()
    except memwall.ReportError as exc:
        assert str(exc)
        return None
    usable(rep)  # whatever loads can be shown
    return rep


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_report_dicts(good, data):
    mutant = data.draw(mutated(good))
    _outcome(lambda: memwall.Report.from_dict(mutant))  # NaN and huge ints reach the checks here
    raw = json.dumps(mutant, allow_nan=True).encode()
    _outcome(lambda: parse_report(raw, "fuzz.json"))


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_report_bytes(good, data):
    raw = bytearray(json.dumps(good).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del raw[at:at + data.draw(st.integers(1, 16))]
        else:
            del raw[at:]
        if not raw:
            raw = bytearray(b"{")
    _outcome(lambda: parse_report(bytes(raw), "fuzz.json"))


def test_every_field_survives_the_strict_round_trip(report, tmp_path):
    import dataclasses

    full = dataclasses.replace(
        report.rescore(bytes_per_element=1), incomplete=True, tf32=("matmul",), rank=3, world_size=4,
        extra={"note": "ünïcode ✓", "nested": {"list": [1, 2.5, None, True]}},
    )
    assert memwall.load_report(full.save(tmp_path / "full.json")) == full


@pytest.mark.parametrize("fails", ["write", "replace"])
def test_a_failed_save_leaves_the_previous_file_whole(report, tmp_path, monkeypatch, fails):
    import dataclasses
    import errno

    path = report.save(tmp_path / "r.json")
    before = path.read_bytes()

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, fails, full)
    with pytest.raises(OSError, match="No space"):
        dataclasses.replace(report, incomplete=True).save(path)
    assert path.read_bytes() == before  # readers still see the old report, whole
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # and no temporary file
