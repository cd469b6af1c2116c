"""The TensorBoard plugin's backend: routes called directly, loader, views, scalars, traces."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import pytest
from memwall_plugin.tb_plugin import views
from memwall_plugin.tb_plugin.loader import ReportLoader, scan
from memwall_plugin.tb_plugin.plugin import STATIC_FILES, MemwallPlugin
from tb_logdir import BATCH_MATMULS, EVIL, make_batch_runs, make_logdir, make_memory_runs, make_trace_runs
from tensorboard.plugins import base_plugin
from werkzeug.test import Client

import memwall_plugin as memwall
from memwall_plugin.ceilings import place_rows
from memwall_plugin.console import findings
from memwall_plugin.devices import resolve_device
from memwall_plugin.memory import CATEGORIES, MemoryReport

STATIC = Path(memwall.__file__).parent.parent / "tb_plugin" / "static"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("logdir")
    make_logdir(root, big_rows=10_000, kineto=True)
    return root


@pytest.fixture
def plugin(logdir):
    return MemwallPlugin(base_plugin.TBContext(logdir=str(logdir)))


def get(plugin, route, **params):
    client = Client(plugin.get_plugin_apps()[route])
    response = client.get(f"/data/plugin/memwall{route}", query_string=params)
    body = response.get_data()
    return response.status_code, json.loads(body) if response.mimetype == "application/json" else body


def test_runs_lists_every_run_with_steps_and_ranks(plugin):
    status, body = get(plugin, "/runs")
    assert status == 200
    runs = {r["run"]: r for r in body["runs"]}
    assert set(runs) == {"train", "evil", "corrupt", "nested/future", "big"}
    assert runs["train"]["ranks"] == [0]
    assert [(w["first_step"], w["last_step"]) for w in runs["train"]["windows"]] == [(0, 1), (2, 3)]


def test_report_view_matches_the_saved_report(plugin, logdir):
    status, body = get(plugin, "/report", run="train")
    assert status == 200
    files = sorted((logdir / "train" / "plugins" / "memwall").glob("*.json"))
    merged = memwall.report.merge_reports(memwall.load_report(f) for f in files)
    assert len(body["rows"]) == len(merged.folded())  # one per (op, module, phase, dtype) ...
    assert sum(r.get("shapes_count", 1) for r in body["rows"]) == len(merged.rows)  # ... each shape kept
    assert len(get(plugin, "/report", run="train", by="shape")[1]["rows"]) == len(merged.rows)
    assert get(plugin, "/report", run="train", by="shapes")[0] == 400
    assert body["headline"]["flops"] == merged.total_flops
    assert body["headline"]["steps"] == [0, 1, 2, 3]
    assert {r["bound"] for r in body["rows"]} <= {"memory", "compute", "none", "unknown"}
    one = get(plugin, "/report", run="train", window=files[0].stem)[1]
    assert one["headline"]["steps"] == [0, 1]
    backward = get(plugin, "/report", run="train", phase="backward")[1]
    assert {r["phase"] for r in backward["rows"]} == {"backward"}
    # the console's findings, for the whole run whichever phase is shown
    assert body["findings"] == findings(merged) and body["findings"]
    assert backward["findings"] == body["findings"]


def test_report_carries_program_points_module_phase_points_and_each_rows_roof(plugin, logdir):
    """The chart's program-level points (the whole run, each phase, each recorded step), module
    points split by phase with the ids of their rows, and the peak each row is placed under."""
    body = get(plugin, "/report", run="train")[1]
    files = sorted((logdir / "train" / "plugins" / "memwall").glob("*.json"))
    merged = memwall.report.merge_reports(memwall.load_report(f) for f in files)
    points = body["program_points"]
    (whole,) = [p for p in points if p["kind"] == "window"]
    assert whole["label"] == "whole run" and whole["flops"] == body["headline"]["flops"]
    assert whole["bytes"] == sum(r.bytes for r in merged.rows if r.flops is not None)
    assert sorted(p["label"] for p in points if p["kind"] == "phase") == sorted(body["phases"])
    steps = [p for p in points if p["kind"] == "step"]
    assert [p["label"] for p in steps] == ["step 0", "step 1", "step 2", "step 3"]  # both windows'
    # the steps' own tables, counted apart, add up to the run's rows (the run has no tail)
    assert sum(p["flops"] for p in steps) == merged.total_flops
    assert all(p["plotted"] and p["achieved_flops_per_s"] > 0 for p in points)
    # module x phase: the first Linear's forward and backward are two points, each its rows'
    pairs = {(g["module"], g["phase"]): g for g in body["module_phases"]}
    assert ("0", "forward") in pairs and ("0", "backward") in pairs
    for (module, phase), group in pairs.items():
        assert {(body["rows"][i]["module"], body["rows"][i]["phase"]) for i in group["ids"]} == {(module, phase)}
    assert sorted(i for g in pairs.values() for i in g["ids"]) == list(range(len(body["rows"])))
    # an fp32 run on the CPU is placed under the fp32 roof only; on an H100 with TF32 matmuls
    # its matmuls move to the TF32 roof
    assert {r["roof"] for r in body["rows"] if r["flops"]} == {"fp32"}
    h100 = merged.rescore(device="h100-sxm")
    tf32 = dataclasses.replace(h100, tf32=("matmul",), rows=place_rows(h100.rows, h100.device, ("matmul",)))
    roofs = {(r["family"], r["roof"]) for r in views.report_view(tf32)["rows"] if r["flops"]}
    assert ("matmul", "tf32") in roofs and ("elementwise", "fp32") in roofs
    # one phase: no step points (a step spans every phase)
    backward = get(plugin, "/report", run="train", phase="backward")[1]
    assert [p["kind"] for p in backward["program_points"]] == ["window"]


def test_what_if_rescores_on_the_server(plugin):
    base = get(plugin, "/report", run="train")[1]
    h100 = get(plugin, "/report", run="train", device="h100-sxm", bytes_per_element="1")[1]
    assert h100["device"]["key"] == "h100-sxm" and h100["bytes_per_element"] == 1
    assert h100["headline"]["flops"] == base["headline"]["flops"]
    assert h100["headline"]["bytes"] < base["headline"]["bytes"]
    assert h100["measured_on"] != h100["device"]["name"]
    # a what-if projects; the run as measured does not
    assert h100["headline"]["projected_time_s"] > 0 and h100["projection"]["device"] == h100["device"]["name"]
    assert base["headline"]["projected_time_s"] is None and base["projection"] is None
    bf16 = get(plugin, "/report", run="train", device="h100-sxm", dtype="bf16")[1]
    assert (bf16["compute_dtype"], bf16["bytes_per_element"]) == ("bfloat16", 2)
    assert {r["dtype"] for r in bf16["rows"]} <= {"bfloat16", "int64", "bool"}  # the run's fp32 ops, in bf16


@pytest.mark.parametrize("params,code", [
    ({"run": "nope"}, 404),
    ({"run": "../train"}, 404),
    ({"run": "/etc"}, 404),
    ({"run": "train/../evil"}, 404),
    ({"run": "train", "window": "../../corrupt/plugins/memwall/rank0_steps000000-000000"}, 404),
    ({"run": "train", "window": "/etc/passwd"}, 404),
    ({"run": "train", "rank": "../1"}, 400),
    ({"run": "train", "rank": "7"}, 404),
    ({"run": "train", "phase": "../x"}, 400),
    ({"run": "train", "phase": "decode"}, 404),
    ({"run": "train", "device": "../../etc/passwd"}, 400),
    ({"run": "train", "bytes_per_element": "-1"}, 400),
    ({"run": "train", "bytes_per_element": "99"}, 400),
    ({"run": "train", "dtype": "int4"}, 400),
    ({"run": "train" * 200}, 400),
])
def test_bad_parameters_get_a_clear_4xx(plugin, params, code):
    status, body = get(plugin, "/report", **params)
    assert status == code, body
    assert body["error"]
    assert get(plugin, "/report", run="train")[0] == 200  # the others keep working


def test_broken_reports_fail_for_their_run_only(plugin):
    status, body = get(plugin, "/report", run="corrupt")
    assert status == 422 and "corrupt" in body["error"] and "truncated" in body["error"]
    assert "/" not in body["error"].split(":", 1)[1].split("(")[0]  # no server paths
    status, body = get(plugin, "/report", run="nested/future")
    assert status == 422 and "schema_version 99" in body["error"]
    assert get(plugin, "/report", run="evil")[0] == 200


def test_module_names_travel_as_data(plugin):
    body = get(plugin, "/report", run="evil")[1]
    assert any(r["module"] == f"{EVIL}.body" for r in body["rows"])
    for name in STATIC_FILES.values():
        source = (STATIC / name[0]).read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, name


def test_static_routes_are_fixed(plugin):
    for route in STATIC_FILES:
        status, body = get(plugin, route)
        assert status == 200 and body
    assert "/static/*" not in plugin.get_plugin_apps()
    meta = plugin.frontend_metadata()
    assert meta.es_module_path == "/static/index.js" and meta.tab_name == "Memory Wall"


def test_big_run_view_is_built_quickly(plugin):
    start = time.perf_counter()
    status, body = get(plugin, "/report", run="big")
    assert status == 200 and len(body["rows"]) == 10_000
    assert time.perf_counter() - start < 30  # generous: a shared machine; the point is no blow-up


def test_loader_picks_up_new_runs_and_windows(tmp_path):
    loader = ReportLoader(tmp_path, rescan_s=0.0)
    assert loader.rescan() == {}
    with memwall.profile(logdir=tmp_path / "late", summary=False):
        import torch

        torch.randn(8, 8) @ torch.randn(8, 8)
    assert "late" in loader.rescan()
    assert loader.is_active()
    assert scan(tmp_path / "missing") == {}


def test_scalars_per_step_are_written(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir / "train"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"memwall/flops", "memwall/bytes", "memwall/intensity", "memwall/memory_bound_fraction",
            "memwall/achieved_flops_per_s"} <= tags
    flops = events.Scalars("memwall/flops")
    assert [e.step for e in flops] == [0, 1, 2, 3]
    assert all(e.value > 0 for e in flops)


def test_kineto_trace_carries_memwall_figures(logdir):
    traces = list((logdir / "train").glob("*.pt.trace.json"))
    assert traces
    data = json.loads(traces[0].read_text())
    annotated = [e for e in data["traceEvents"] if "memwall_flops" in e.get("args", {})]
    assert annotated
    for event in annotated:
        args = event["args"]
        assert all("." not in key for key in args if key.startswith("memwall"))
        assert isinstance(args["memwall_flops"], int) and isinstance(args["memwall_bytes"], int)
        if "memwall_intensity" in args:
            assert args["memwall_intensity"] == args["memwall_intensity"]  # finite, not NaN
    addmm = next(e for e in annotated
                 if e["name"] == "aten::addmm" and e["args"]["Input Dims"][1] == [32, 64])
    assert addmm["args"]["memwall_flops"] == 2 * 32 * 64 * 256 + 32 * 256  # by hand


@pytest.mark.parametrize("active", [1, 2])
def test_scalar_flops_are_the_hand_count_per_step(tmp_path, active):
    """Steps saved alone (totals read off the report's rows) and steps in a longer window (totals
    from the step's own table) both write a step's own FLOPs: 2*m*n*k for a matmul."""
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with memwall.profile(logdir=tmp_path, summary=False,
                         schedule=memwall.schedule(wait=0, warmup=0, active=active)) as prof:
        for _ in range(4):
            a @ b
            prof.step()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    flops = events.Scalars("memwall/flops")
    assert [e.step for e in flops] == [0, 1, 2, 3]
    assert [e.value for e in flops] == [2 * 8 * 16 * 4] * 4
    assert [e.value for e in events.Scalars("memwall/bytes")] == [4 * (8 * 16 + 16 * 4 + 8 * 4)] * 4


# --- memory (the capacity wall) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_runs(tmp_path_factory):
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("memory")
    runs = make_memory_runs(root)
    return root, runs


@pytest.fixture
def memory_plugin(memory_runs):
    return MemwallPlugin(base_plugin.TBContext(logdir=str(memory_runs[0])))


def test_memory_route_returns_the_reports_memory(memory_plugin, memory_runs):
    _, runs = memory_runs
    memory = runs["memory"]  # prof.report().memory of the profiled GPT-2
    assert memwall.load_report(runs["gpt"]).memory == memory  # the file holds what the profile measured
    status, body = get(memory_plugin, "/memory", run="gpt")
    assert status == 200, body
    got = body["memory"]
    assert body["categories"] == list(CATEGORIES) and body["world_size"] == 1
    assert got["peak_bytes"] == memory.peak_bytes > 0
    assert got["peak_by_category"] == memory.peak_by_category
    assert got["peak_at"] == list(memory.peak_at) and got["peak_step"] == memory.peak_step
    assert got["capacity_bytes"] == memory.capacity_bytes and got["capacity_source"] == memory.capacity_source
    assert [m["module"] for m in got["modules"]] == [m.module for m in memory.modules]
    block = next(m for m in got["modules"] if m["module"] == "transformer.h.0.mlp.c_fc")
    assert block["parameter_bytes"] == memory.module("transformer.h.0.mlp.c_fc").parameter_bytes > 0
    assert len(got["timeline"]) == len(memory.timeline)
    assert MemoryReport.from_dict(got) == memory  # the whole record, as the file holds it
    # one window, selected as /report selects it, is the same here (one window in this run)
    window = runs["gpt"].stem
    assert get(memory_plugin, "/memory", run="gpt", window=window)[1]["memory"] == got


def test_a_report_without_memory_is_an_empty_state_not_an_error(memory_plugin):
    status, body = get(memory_plugin, "/memory", run="old")
    assert status == 200 and body["memory"] is None
    status, body = get(memory_plugin, "/memory_whatif", run="old", shard="zero3", world_size="8")
    assert status == 404 and "no memory measurement" in body["error"]
    assert get(memory_plugin, "/memory", run="nope")[0] == 404


def test_a_report_without_memory_says_why(memory_plugin, memory_runs, traces):
    """/memory's `no_memory` and /memory_whatif's 404 name the cause: an analysed trace, a run
    profiled with memory=False, or (a report from before memwall wrote where its times came from)
    either that or an older memwall."""
    assert memwall.load_report(memory_runs[1]["nomemory"]).memory is None  # memory=False: none measured
    reasons = {run: get(memory_plugin, "/memory", run=run)[1]["no_memory"] for run in ("gpt", "nomemory", "old")}
    assert reasons == {"gpt": None, "nomemory": "disabled", "old": "unknown"}
    status, body = get(memory_plugin, "/memory_whatif", run="nomemory")
    assert status == 404 and "profiled with memory=False (`memwall run --no-memory`)" in body["error"]
    assert "before memory was measured" not in body["error"]
    status, body = get(memory_plugin, "/memory_whatif", run="old")
    assert status == 404 and "memory=False" in body["error"] and "before memory was measured" in body["error"]
    trace_plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(traces[0])))
    status, body = get(trace_plugin, "/memory", run=_trace_run(traces, "hf"))
    assert status == 200 and body["memory"] is None and body["no_memory"] == "trace"
    status, body = get(trace_plugin, "/memory_whatif", run=_trace_run(traces, "hf"))
    assert status == 404 and "torch.profiler trace, which records no tensor lifetimes" in body["error"]
    assert "memory=False" not in body["error"] and "before memory was measured" not in body["error"]


def test_compare_notes_call_the_runs_the_baseline_and_this_run(memory_runs, tmp_path):
    """`memwall diff`'s notes say A and B; the tab's say "the baseline" and "this run", as its
    cards and tables do."""
    report = memwall.load_report(memory_runs[1]["gpt"])
    cut = dataclasses.replace(report, steps=report.steps[:2], incomplete=True, measured_on="another machine")
    cut.save(tmp_path / "cut" / "plugins" / "memwall" / memory_runs[1]["gpt"].name)
    report.save(tmp_path / "whole" / "plugins" / "memwall" / memory_runs[1]["gpt"].name)
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    status, body = get(plugin, "/compare", run="cut", baseline="whole")
    assert status == 200, body
    notes = body["notes"]
    assert f"the times were measured on different machines (the baseline on {report.measured_on}, this run on " \
           "another machine)" in notes, notes
    assert any(n.startswith("the baseline recorded 3 step(s), this run 2: ") and "per step, the baseline took " in n
               and " in ops and this run " in n for n in notes), notes
    assert "this run is incomplete: its profiled block ended by an exception" in notes, notes
    assert not [n for n in notes if {"A", "B", "A's", "B's"} & set(n.replace(",", " ").replace("(", " ").split())]


@pytest.mark.parametrize("query,kwargs,device", [
    ({}, {}, None),
    ({"checkpoint": "transformer.h"}, {"checkpoint": ["transformer.h"]}, None),
    ({"shard": "zero3", "world_size": "8"}, {"shard": "zero3", "world_size": 8}, None),
    ({"shard": "zero1", "world_size": "4", "checkpoint": "transformer.h.0,transformer.h.1"},
     {"shard": "zero1", "world_size": 4, "checkpoint": ["transformer.h.0", "transformer.h.1"]}, None),
    ({"bytes_per_element": "parameters=2,activations=1", "master_weights": "true"},
     {"bytes_per_element": {"parameters": 2, "activations": 1}, "master_weights": True}, None),
    ({"batch_scale": "2.5", "device": "H100 SXM"}, {"batch_scale": 2.5}, "H100 SXM"),
    ({"checkpoint": "transformer.h", "shard": "zero3", "world_size": "8", "device": "h100-sxm"},
     {"checkpoint": ["transformer.h"], "shard": "zero3", "world_size": 8}, "h100-sxm"),
])
def test_memory_whatif_route_is_what_if_called_directly(memory_plugin, memory_runs, query, kwargs, device):
    memory = memory_runs[1]["memory"]
    capacity = resolve_device(device).memory_bytes if device else memory.capacity_bytes
    status, body = get(memory_plugin, "/memory_whatif", run="gpt", **query)
    assert status == 200, body
    direct = memory.what_if(capacity_bytes=capacity, **kwargs)
    assert body["peak_bytes"] == direct.peak_bytes
    assert body["by_category"] == direct.by_category
    assert body["extra_flops"] == direct.extra_flops and body["comm_bytes"] == direct.comm_bytes
    assert body["extra_time_s"] == pytest.approx(direct.extra_time_s)
    assert body["fits"] == direct.fits and body["capacity_bytes"] == direct.capacity_bytes == capacity
    assert body["notes"] == list(direct.notes)
    largest = memory.max_batch_scale(capacity_bytes=capacity, **{k: v for k, v in kwargs.items() if k != "batch_scale"})
    assert body["max_batch_scale"] == pytest.approx(largest)
    assert body["measured_peak_bytes"] == memory.peak_bytes
    assert body["baseline_peak_bytes"] == memory.what_if().peak_bytes
    assert body["checkpointed"] == (memory.checkpoint_targets(kwargs["checkpoint"]) if "checkpoint" in kwargs else [])
    if device:
        assert body["capacity_source"] == resolve_device(device).name
    if "checkpoint" in kwargs or "shard" in kwargs:
        assert body["peak_bytes"] < body["baseline_peak_bytes"]


@pytest.mark.parametrize("query,message", [
    ({"shard": "zero9"}, "shard='zero9': choose one of none, zero1, zero2, zero3, fsdp"),
    ({"checkpoint": "transformer.nope"}, "checkpoint='transformer.nope': no module of that path ran"),
    ({"bytes_per_element": "params=2"}, "is not CATEGORY=BYTES with a category of parameters"),
    ({"bytes_per_element": "parameters=two"}, "must be a size in bytes above 0 and at most 16"),
    ({"bytes_per_element": "parameters=32"}, "must be a size in bytes above 0 and at most 16"),
    ({"bytes_per_element": "parameters=2,parameters=1"}, "parameters is given more than once"),
    ({"batch_scale": "-1"}, "batch_scale must be positive: above 0 and at most 1e+06, got '-1'"),
    ({"batch_scale": "-3"}, "batch_scale must be positive"),
    ({"batch_scale": "two"}, "batch_scale must be a number like 2 or 0.5, got 'two'"),
    ({"batch_scale": "0"}, "batch_scale must be above 0"),
    ({"world_size": "0", "shard": "zero3"}, "world_size must be between 1 and"),
    ({"master_weights": "maybe"}, "master_weights must be true or false"),
    ({"device": "H999"}, "unknown device 'H999'; GET ./devices lists them"),
    ({"checkpointt": "transformer.h"}, "unknown parameter 'checkpointt': memory_whatif takes run, job, rank"),
])
def test_memory_whatif_bad_parameters_are_a_400_that_says_why(memory_plugin, query, message):
    status, body = get(memory_plugin, "/memory_whatif", run="gpt", **query)
    assert status == 400 and message in body["error"], body
    assert get(memory_plugin, "/memory_whatif", run="gpt")[0] == 200


def test_devices_carry_their_memory_for_the_capacity_selector(plugin):
    devices = {d["key"]: d for d in get(plugin, "/devices")[1]["devices"]}
    assert devices["h100-sxm"]["memory_bytes"] == resolve_device("H100 SXM").memory_bytes == 80_000_000_000


def test_a_what_if_view_carries_the_projection_and_the_ops_that_change_side():
    from memwall_plugin.tb_plugin.views import report_view
    from test_whatif import skinny_gemm_report

    measured = skinny_gemm_report()
    view = report_view(measured.rescore(device="H100 SXM"), measured=measured)
    # the matmul's 270,532,608 B at the H100's 3.35 TB/s: 80.756 us, against 10 ms measured on the A100
    assert view["headline"]["projected_time_s"] == pytest.approx(80.756e-6, rel=1e-4)
    assert view["headline"]["speedup"] == pytest.approx(0.01 / 80.756e-6, rel=1e-4)
    assert view["headline"]["projected_memory_bound_fraction"] == 1.0
    assert view["rows"][0]["projected_time_s"] == pytest.approx(80.756e-6, rel=1e-4)
    projection = view["projection"]
    assert (projection["device"], projection["measured_on"]) == ("NVIDIA H100 SXM5 80GB", "NVIDIA A100 SXM4 80GB")
    assert projection["launch_floor_s"] == 2e-6 and "2 µs per kernel launch" in projection["note"]
    # 15.9 FLOP/B: compute-bound under the A100's ridge of 9.6, memory-bound under the H100's 20
    (change,) = projection["bound_changes"]
    assert (change["id"], change["before"], change["after"]) == (0, "compute", "memory")
    assert change["ridge_after"] == pytest.approx(20.0)
    as_measured = report_view(measured)
    assert as_measured["projection"] is None and as_measured["headline"]["projected_time_s"] is None
    assert as_measured["rows"][0]["projected_time_s"] is None
    # headroom and the shares of the peaks are the run's as measured, not a what-if's (its times
    # were not measured against the H100's roofs)
    row = view["rows"][0]
    assert (row["headroom_s"], row["peak_flops_fraction"], row["peak_bandwidth_fraction"]) == (None, None, None)


def test_a_row_says_its_headroom_and_its_shares_of_the_peaks():
    from memwall_plugin.tb_plugin.views import report_view
    from test_whatif import skinny_gemm_report

    (row,) = report_view(skinny_gemm_report())["rows"]
    # by hand, on the A100's datasheet roofs (19.5 TFLOP/s fp32, 2.039 TB/s): the FLOPs take
    # 4,294,967,296 / 19.5e12 = 220.26 us, the bytes 270,532,608 / 2.039e12 = 132.68 us; the roof
    # is the longer, so a kernel at the roof would save 10 ms - 220.26 us = 9.7797 ms
    assert row["roofline_time_s"] == pytest.approx(220.26e-6, rel=1e-4)
    assert row["headroom_s"] == pytest.approx(9.7797e-3, rel=1e-4)
    # 4.295e11 FLOP/s achieved is 2.2026% of 19.5 TFLOP/s; 2.705e10 B/s is 1.3268% of 2.039 TB/s
    assert row["peak_flops_fraction"] == pytest.approx(0.022026, rel=1e-4)
    assert row["peak_bandwidth_fraction"] == pytest.approx(0.013268, rel=1e-4)


# --- compare: a run against a baseline -------------------------------------------------------------


@pytest.fixture(scope="module")
def batch_plugin(tmp_path_factory):
    """Runs b1 and b8 (tb_logdir.BATCH_MLP at batch 1 and 8, ridge 2 FLOP/B) and a truncated one."""
    root = tmp_path_factory.mktemp("batches")
    runs = make_batch_runs(root)
    (good,) = (runs[8] / "plugins" / "memwall").glob("*.json")
    broken = root / "broken" / "plugins" / "memwall" / good.name
    broken.parent.mkdir(parents=True)
    broken.write_text(good.read_text()[:400])
    return MemwallPlugin(base_plugin.TBContext(logdir=str(root)))


def test_compare_route_is_the_diff_of_the_baseline_and_the_run(batch_plugin):
    status, body = get(batch_plugin, "/compare", run="b8", baseline="b1")
    assert status == 200, body
    assert (body["run"], body["baseline"]) == ("b8", "b1")
    assert (body["a"]["run"], body["b"]["run"]) == ("b1", "b8")  # a: the baseline, b: this run
    changed = {(c["op"], c["module"], c["phase"]) for c in body["bound_changes"]}
    assert changed == BATCH_MATMULS
    assert {(c["a"]["bound"], c["b"]["bound"]) for c in body["bound_changes"]} == {("memory", "compute")}
    # each phase's speed-up: the baseline's time over this run's, as /report measured each
    times = {run: {g["key"]: g["time_s"] for g in get(batch_plugin, "/report", run=run)[1]["phase_groups"]}
             for run in ("b1", "b8")}
    assert {p["phase"] for p in body["phases"]} == set(times["b1"]) >= {"forward", "backward", "optimizer"}
    for phase in body["phases"]:
        assert phase["speedup"] == pytest.approx(times["b1"][phase["phase"]] / times["b8"][phase["phase"]])
    baseline = get(batch_plugin, "/report", run="b1")[1]
    assert body["speedup"] == pytest.approx(baseline["headline"]["time_s"]
                                            / get(batch_plugin, "/report", run="b8")[1]["headline"]["time_s"])
    # the baseline's points are its /report rows and modules
    assert body["baseline_rows"] == baseline["rows"] and body["baseline_modules"] == baseline["modules"]
    assert body["baseline_device"] == baseline["device"] and body["same_roofs"]
    assert json.dumps(body, allow_nan=False)


def test_compare_by_module_a_phase_of_points_and_a_what_if_on_both(batch_plugin):
    body = get(batch_plugin, "/compare", run="b8", baseline="b1", by="module", phase="forward")[1]
    assert {e["module"] for e in body["entries"]} == {"", "0", "1", "2"}
    assert {r["phase"] for r in body["baseline_rows"]} == {"forward"}
    assert {p["phase"] for p in body["phases"]} >= {"forward", "backward"}  # the comparison covers every phase
    h100 = get(batch_plugin, "/compare", run="b8", baseline="b1", device="h100-sxm")[1]
    assert h100["a"]["device"] == h100["b"]["device"] == resolve_device("h100-sxm").name
    assert h100["baseline_device"]["key"] == "h100-sxm"


@pytest.mark.parametrize("params,code,message", [
    ({"run": "b8"}, 400, "compare needs baseline=RUN"),
    ({"run": "b8", "baseline": "nope"}, 404, "baseline: unknown run 'nope'"),
    ({"run": "nope", "baseline": "b1"}, 404, "unknown run 'nope'"),
    ({"run": "b8", "baseline": "broken"}, 422, "baseline: run 'broken'"),
    ({"run": "b8", "baseline": "b1", "baseline_rank": "3"}, 404, "baseline: run 'b1' has no report for rank 3"),
    ({"run": "b8", "baseline": "b1", "baseline_job": "zzz"}, 404, "baseline: run 'b1': job 'zzz' is not a job here"),
    ({"run": "b8", "baseline": "b1", "by": "shape"}, 400, "by must be one of op, module, phase"),
    ({"run": "b8", "baseline": "b1", "phase": "../x"}, 400, "is not a phase name"),
    ({"run": "b8", "baseline": "b1", "device": "H999"}, 400, "unknown device 'H999'"),
    ({"run": "b8", "baseline": "b1", "base": "b1"}, 400, "unknown parameter 'base'"),
])
def test_compare_bad_parameters_are_a_4xx_that_says_which_side(batch_plugin, params, code, message):
    status, body = get(batch_plugin, "/compare", **params)
    assert status == code and message in body["error"], body
    assert get(batch_plugin, "/compare", run="b8", baseline="b1")[0] == 200


# --- torch.profiler traces found in the logdir ------------------------------------------------------


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    root = tmp_path_factory.mktemp("traces")
    return root, make_trace_runs(root)


def _counting(monkeypatch, delay_s: float = 0.0) -> list[Path]:
    """Count (and optionally slow down) the loader's trace analyses."""
    from memwall_plugin.tb_plugin import loader

    calls: list[Path] = []
    real = loader.analyze_trace

    def counted(path, **kwargs):
        calls.append(Path(path))
        time.sleep(delay_s)
        return real(path, **kwargs)

    monkeypatch.setattr(loader, "analyze_trace", counted)
    return calls


def _trace_run(traces, key: str) -> str:
    root, made = traces
    return made[key].relative_to(root).as_posix()


def test_a_torch_profiler_trace_is_a_run_analysed_on_first_request(traces, monkeypatch):
    root, made = traces
    calls = _counting(monkeypatch)
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(root)))
    name = _trace_run(traces, "hf")
    status, body = get(plugin, "/runs")
    runs = {r["run"]: r for r in body["runs"]}
    assert set(runs) == {name, _trace_run(traces, "noshapes"), _trace_run(traces, "damaged")}
    assert runs[name]["kind"] == "trace" and runs[name]["jobs"] == []
    assert runs[name]["trace"] == {"file": made["hf"].name, "size_bytes": made["hf"].stat().st_size,
                                   "state": "not analysed", "error": None,
                                   "note": "torch.profiler trace, not yet analysed"}
    assert calls == []  # listing never analyses
    assert plugin.is_active()  # a logdir of torch.profiler traces alone shows the tab

    status, body = get(plugin, "/report", run=name)
    assert status == 200, body
    assert calls == [made["hf"]]
    # the same count as `memwall analyze` of the file, and as memwall.profile of the same step
    assert body["headline"]["flops"] == memwall.analyze_trace(made["hf"]).total_flops
    assert body["headline"]["flops"] == sum(r.flops for r in made["reference"].rows)
    assert body["trace"] == {"file": made["hf"].name, "time_from": "CPU op spans", "ops": body["trace"]["ops"],
                             "record_shapes": True, "uncounted_calls": [], "uncounted_total": 0, "hint": None,
                             "float32_assumed": None}
    assert body["trace"]["ops"] > 10 and {"forward", "backward", "optimizer"} <= set(body["phases"])
    assert str(root) not in json.dumps(body)

    # a second request, and the other routes, read the cache
    assert get(plugin, "/report", run=name)[0] == 200
    assert get(plugin, "/report", run=name, device="h100-sxm")[0] == 200
    assert get(plugin, "/memory", run=name) == (200, {"run": name, "rank": 0, "world_size": 1,
                                                     "job": f"trace-{made['hf'].name}",
                                                     "categories": list(CATEGORIES), "memory": None,
                                                     "no_memory": "trace"})
    assert len(calls) == 1
    listed = {r["run"]: r for r in get(plugin, "/runs")[1]["runs"]}[name]
    assert listed["trace"]["state"] == "analysed" and listed["jobs"][0]["ranks"] == [0]

    # a new version of the file is analysed again
    st = made["hf"].stat()
    os.utime(made["hf"], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert get(plugin, "/report", run=name)[0] == 200
    assert len(calls) == 2


def test_a_trace_is_analysed_once_while_requests_race(traces, monkeypatch):
    calls = _counting(monkeypatch, delay_s=0.5)
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(traces[0])))
    name = _trace_run(traces, "hf")
    answers: list[int] = []

    def ask() -> None:
        answers.append(plugin.report_impl({"run": name})["headline"]["flops"])

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    assert {r["run"]: r for r in plugin.runs_impl()["runs"]}[name]["trace"]["state"] == "analysing"
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(answers) == 4 and len(set(answers)) == 1


def test_a_damaged_trace_is_its_runs_error_and_the_others_still_work(traces):
    root, made = traces
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(root)))
    name = _trace_run(traces, "damaged")
    status, body = get(plugin, "/report", run=name)
    assert status == 422
    assert body["error"].startswith(f"{name}: a damaged or truncated gzip file")
    assert str(root) not in body["error"]
    listed = {r["run"]: r for r in get(plugin, "/runs")[1]["runs"]}
    assert listed[name]["trace"]["state"] == "failed" and listed[name]["trace"]["error"] == body["error"]
    assert get(plugin, "/report", run=_trace_run(traces, "hf"))[0] == 200
    # a file that is no trace at all
    (root / "junk").mkdir(exist_ok=True)
    (root / "junk" / "a.pt.trace.json").write_text("{\"not\": \"a trace\"}")
    plugin.loader.rescan()
    status, body = get(plugin, "/report", run="junk/a.pt.trace.json")
    assert status == 422 and "not a torch.profiler trace" in body["error"] and str(root) not in body["error"]


def test_a_trace_without_shapes_says_to_record_them(traces):
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(traces[0])))
    status, body = get(plugin, "/report", run=_trace_run(traces, "noshapes"))
    assert status == 200
    banner = body["trace"]
    assert banner["record_shapes"] is False and "record_shapes=True" in banner["hint"]
    assert banner["uncounted_total"] == banner["ops"] > 0
    assert banner["uncounted_calls"][0]["reason"].startswith("no input shapes recorded")
    assert body["headline"]["uncounted_rows"] == len(body["rows"])
    # the What to do panel says the same, not "register formulas"
    assert any("record_shapes=True" in f for f in body["findings"])
    assert not any("register formulas" in f for f in body["findings"])


def test_a_run_with_memwalls_report_does_not_offer_its_kineto_trace(logdir, plugin):
    """memwall.profile(kineto=True) writes a torch.profiler trace beside its report: memwall's own
    report (every op counted as it ran) is the run; the trace is for the PyTorch Profiler tab."""
    assert list((logdir / "train").glob("*.pt.trace.json"))
    runs = get(plugin, "/runs")[1]["runs"]
    assert [r["kind"] for r in runs if r["run"] == "train"] == ["memwall"]
    assert not [r for r in runs if r["kind"] == "trace"]


def test_a_saved_analysis_is_a_memwall_run_with_the_trace_banner(traces, tmp_path, capsys):
    """`memwall analyze TRACE --logdir DIR` saves a report: the tab shows it as a memwall run,
    with the same banner a trace run gets."""
    from memwall_plugin.cli import main

    root, made = traces
    assert main(["analyze", str(made["hf"]), "--logdir", str(tmp_path / "from-trace")]) == 0
    capsys.readouterr()
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    assert [(r["run"], r["kind"]) for r in get(plugin, "/runs")[1]["runs"]] == [("from-trace", "memwall")]
    status, body = get(plugin, "/report", run="from-trace")
    assert status == 200
    assert body["trace"]["file"] == made["hf"].name and body["trace"]["time_from"] == "CPU op spans"
    assert body["headline"]["flops"] == sum(r.flops for r in made["reference"].rows)


def test_a_rows_memory_level_says_when_its_roof_is_a_blend_of_levels(memory_plugin, memory_runs):
    """A row whose bytes came from several memory levels is named by the one that took most of
    their time and placed under the rate they flow at together: the table read "DRAM" beside a
    compute bound that DRAM's ridge contradicts (0.898 FLOP/B, DRAM's ridge 2.23). Such a row is
    marked (a blend within a tenth of the level's own bandwidth reads as the level): no row left
    unmarked has a bound its named level's ridge contradicts."""
    status, view = get(memory_plugin, "/report", run="gpt")
    assert status == 200, view
    levels = {level["name"]: level["bytes_per_s"] for level in view["device"]["levels"]}
    counted = [r for r in view["rows"] if r["flops"] and r["memory_level"] and r["bound"] in ("memory", "compute")]
    mixed = [r for r in counted if r["memory_level_mixed"]]
    assert mixed and len(mixed) < len(counted), (len(mixed), len(counted))
    for r in counted:
        own = levels[r["memory_level"]]
        far = abs(r["bandwidth_bytes_per_s"] - own) > 0.1 * own
        assert r["memory_level_mixed"] == far, r
        contradicted = (r["intensity"] >= r["peak_flops_per_s"] / own) != (r["bound"] == "compute")
        near_ridge = abs(r["intensity"] * own / r["peak_flops_per_s"] - 1) <= 0.1
        assert not contradicted or r["memory_level_mixed"] or near_ridge, r


def test_the_module_tree_names_the_optimizers_time_as_the_summary_does(memory_plugin, memory_runs):
    """The summary's tree says "opt 217 ms"; the tab's said "other 217 ms", the optimizer's step
    folded into other. Each node's time is its forward, backward, optimizer and other parts."""
    status, view = get(memory_plugin, "/report", run="gpt")
    assert status == 200, view
    report = memwall.load_report(memory_runs[1]["gpt"])
    stepped = sum(r.time_s for r in report.rows if r.phase == "optimizer")
    root = next(n for n in view["tree"] if n["parent"] is None)
    assert stepped > 0 and root["optimizer_time_s"] == pytest.approx(stepped)
    for node in view["tree"]:
        parts = node["forward_time_s"] + node["backward_time_s"] + node["optimizer_time_s"] + node["other_time_s"]
        assert parts == pytest.approx(node["time_s"]), node
