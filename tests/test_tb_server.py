"""The Memory Wall tab as a server: no listener of its own, every parameter validated (fuzzed),
report strings never parsed as HTML, unreadable or hostile files confined to their run, and
requests racing a run being rewritten answered with the old or the new data, never an error."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memwall_plugin.tb_plugin.loader import ReportLoader, scan
from memwall_plugin.tb_plugin.plugin import ROUTE_PARAMS, STATIC_FILES, MemwallPlugin
from tb_logdir import make_logdir, running_tensorboard
from tensorboard.plugins import base_plugin
from werkzeug.test import Client

import memwall_plugin as memwall

STATIC = Path(memwall.__file__).parent.parent / "tb_plugin" / "static"
WINDOW = "rank0_steps000000-000000"


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    make_logdir(root)
    return root


@pytest.fixture
def plugin(logdir):
    return MemwallPlugin(base_plugin.TBContext(logdir=str(logdir)))


def get(plugin: MemwallPlugin, route: str, query: Any = None) -> tuple[int, Any]:
    client = Client(plugin.get_plugin_apps()[route])
    response = client.get(f"/data/plugin/memwall{route}", query_string=query)
    body = response.get_data()
    return response.status_code, json.loads(body) if response.mimetype == "application/json" else body


def two_versions(logdir: Path) -> tuple[memwall.Report, memwall.Report]:
    """A real report and a second version of it (other times, another module name)."""
    good = next((logdir / "train" / "plugins" / "memwall").glob("*.json"))
    first = memwall.load_report(good)
    rows = tuple(dataclasses.replace(r, time_s=r.time_s * 3, module=r.module + "_v2") for r in first.rows)
    return first, dataclasses.replace(first, rows=rows, steps=(0,))


# --- no listener of its own ----------------------------------------------------------------------


def test_plugin_opens_no_socket(logdir, monkeypatch):
    """Constructed, asked whether it is active, and every route served: no socket is created."""
    opened: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        opened.append(args)
        raise AssertionError("the memwall plugin opened a socket")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_server", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(logdir)))
    assert plugin.is_active()
    queries = {route: {"run": "train"} for route in ("/report", "/ranks", "/memory", "/memory_whatif")}
    queries["/compare"] = {"run": "train", "baseline": "evil"}
    for route in plugin.get_plugin_apps():
        status, _ = get(plugin, route, queries.get(route))
        assert status == 200, route
    assert opened == []


def _listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process `pid` itself listens on (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host, port = address.split(":")
                found.add((host if width == 32 else socket.inet_ntoa(bytes.fromhex(host)[::-1]), int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads listening sockets from Linux /proc")
def test_tensorboard_with_the_tab_listens_only_where_it_is_told(logdir):
    with running_tensorboard(logdir, "--load_fast", "false") as (proc, port):
        base = f"http://127.0.0.1:{port}/data"
        for route in ("runs", "devices", "report?run=train", "static/index.js"):  # the tab at work
            with urllib.request.urlopen(f"{base}/plugin/memwall/{route}", timeout=30) as r:
                assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/plugin/memwall/report?run=train&run=evil", timeout=30)
        assert refused.value.code == 400
        assert _listening(proc.pid) == {("127.0.0.1", port)}


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route,query,code,message", [
    ("/report", {"run": "train", "windw": "all"}, 400, "unknown parameter 'windw'"),
    ("/report", [("run", "train"), ("run", "evil")], 400, "more than once"),
    ("/report", {"run": "train", "rank": "1" * 9}, 400, "whole number"),
    ("/report", {"run": "train", "device": "x" * 600}, 400, "too long"),
    ("/report", {"run": "tr\x00ain"}, 400, "not text"),
    ("/runs", {"path": "/etc"}, 400, "runs takes no parameters"),
    ("/devices", {"x": "1"}, 400, "devices takes no parameters"),
    ("/memory", {"run": "train", "device": "h100-sxm"}, 400, "unknown parameter 'device': memory takes run, job"),
    ("/memory_whatif", {"run": "train", "checkpoint": "0,\x00"}, 400, "not text"),
    ("/memory_whatif", {"run": "train", "checkpoint": "0,a\tb"}, 400, "is not a module path"),
    ("/memory_whatif", {"run": "train", "batch_scale": "1e9"}, 400, "batch_scale must be a number"),
    ("/memory_whatif", {"run": "train", "batch_scale": "9999999"}, 400, "at most 1e+06"),
    ("/memory_whatif", {"run": "train", "shard": "zero3", "world_size": "1" * 9}, 400, "whole number"),
    ("/memory_whatif", {"run": "train", "bytes_per_element": "=2"}, 400, "is not CATEGORY=BYTES"),
])
def test_every_parameter_is_validated(plugin, route, query, code, message):
    status, body = get(plugin, route, query)
    assert status == code and message in body["error"], body


def test_every_route_is_known_and_fixed(plugin):
    apps = plugin.get_plugin_apps()
    assert set(apps) == set(ROUTE_PARAMS) | set(STATIC_FILES)


param_names = st.sampled_from([*ROUTE_PARAMS["/report"], "path", "file", "../run", ""]) | st.text(max_size=6)
param_values = (st.sampled_from(["train", "evil", "corrupt", "nested/future", "0", "all", WINDOW, "forward",
                                 "h100-sxm", "1", "16", "-1", "../train", "/etc/passwd", "%2e%2e", ""])
                | st.text(max_size=40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(query=st.lists(st.tuples(param_names, param_values), max_size=5))
def test_fuzzed_requests_get_an_answer_never_a_crash(plugin, query):
    status, body = get(plugin, "/report", query)
    assert status in (200, 400, 404, 422), (query, status, body)
    if status != 200:
        assert body["error"] and "/tmp" not in body["error"]


whatif_names = st.sampled_from([*ROUTE_PARAMS["/memory_whatif"], "path", ""]) | st.text(max_size=6)
whatif_values = (st.sampled_from(["train", "0", "all", WINDOW, "0,2", "zero3", "fsdp", "none", "8", "0.5", "1e3",
                                  "parameters=2", "activations=0.5,other=1", "true", "h100-sxm", "H100 SXM",
                                  "../train", "-1", "inf", "nan", ""])
                 | st.text(max_size=40))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(query=st.lists(st.tuples(whatif_names, whatif_values), max_size=6))
def test_fuzzed_memory_whatif_requests_get_an_answer_never_a_crash(plugin, query):
    status, body = get(plugin, "/memory_whatif", query)
    assert status in (200, 400, 404, 422), (query, status, body)
    if status != 200:
        assert body["error"] and "/tmp" not in body["error"]
    else:
        assert body["peak_bytes"] >= 0 and json.dumps(body, allow_nan=False)


compare_names = st.sampled_from([*ROUTE_PARAMS["/compare"], "path", ""]) | st.text(max_size=6)
compare_values = (st.sampled_from(["train", "evil", "corrupt", "nested/future", "0", "all", WINDOW, "forward",
                                   "op", "module", "phase", "h100-sxm", "1", "../train", "%2e%2e", ""])
                  | st.text(max_size=40))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(query=st.lists(st.tuples(compare_names, compare_values), max_size=6))
def test_fuzzed_compare_requests_get_an_answer_never_a_crash(plugin, query):
    status, body = get(plugin, "/compare", [("run", "train"), ("baseline", "evil"), *query])
    assert status in (200, 400, 404, 422), (query, status, body)
    if status != 200:
        assert body["error"] and "/tmp" not in body["error"]
    else:
        assert json.dumps(body, allow_nan=False)


def test_memwall_failure_is_a_500_naming_no_path(plugin, monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"boom in {plugin.loader.logdir}")

    monkeypatch.setattr("memwall_plugin.tb_plugin.views.report_view", broken)
    status, body = get(plugin, "/report", {"run": "train"})
    assert status == 500 and "RuntimeError" in body["error"]
    assert str(plugin.loader.logdir) not in body["error"]
    assert get(plugin, "/runs")[0] == 200


# --- strings are text ----------------------------------------------------------------------------

#: Ways a script turns a string into markup or code; report strings reach the page only as text.
HTML_SINKS = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser|"
                        r"createContextualFragment|\beval\(|new Function|setAttribute\(\s*['\"]on|"
                        r"\.on\w+\s*=(?!=)|\.(href|src)\s*=(?!=)|srcdoc")


def test_frontend_never_parses_strings_as_html():
    sources = {name: (STATIC / name).read_text() for name, _ in STATIC_FILES.values() if name.endswith(".js")}
    assert len(sources) == 8  # index, chart, table, tree, format, comm, memory, compare
    for name, source in sources.items():
        found = [m.group() for m in HTML_SINKS.finditer(source)]
        assert found == [] or (name == "index.js" and found == [".href ="]), (name, found)
    # index.js' one .href is its own stylesheet: a constant
    assert "sheet.href = './static/style.css';" in sources["index.js"]
    # text reaches the page through el(), which sets textContent
    assert "node.textContent = String(text)" in sources["format.js"]


# --- files: confined to their run ----------------------------------------------------------------


def _window_file(root: Path, run: str) -> Path:
    path = root / run / "plugins" / "memwall" / f"{WINDOW}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_a_link_outside_the_logdir_is_refused(tmp_path, logdir):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret, _ = two_versions(logdir)
    secret_path = secret.save(outside / "secret.json")
    root = tmp_path / "logdir"
    _window_file(root, "leak").symlink_to(secret_path)
    inside = secret.save(root / "kept" / "report.json")
    _window_file(root, "linked").symlink_to(inside)  # a link inside the logdir is fine
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(root)))
    status, body = get(plugin, "/report", {"run": "leak"})
    assert status == 422 and "outside the logdir" in body["error"]
    assert str(outside) not in body["error"]
    assert get(plugin, "/report", {"run": "linked"})[0] == 200


def test_a_directory_or_fifo_named_like_a_report_does_not_stop_the_others(tmp_path, logdir):
    good, _ = two_versions(logdir)
    good.save(_window_file(tmp_path, "good"))
    _window_file(tmp_path, "dir").mkdir()
    good.save(_window_file(tmp_path, "fifo").with_name("rank0_steps000001-000001.json"))
    os.mkfifo(_window_file(tmp_path, "fifo"))
    runs = scan(tmp_path)
    assert "dir" not in runs  # a directory is not a window
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    status, body = get(plugin, "/report", {"run": "fifo"})
    assert status == 422 and "not a regular file" in body["error"]
    assert get(plugin, "/report", {"run": "fifo", "window": "rank0_steps000001-000001"})[0] == 200
    assert get(plugin, "/report", {"run": "good"})[0] == 200


def test_windows_that_contradict_their_names_are_a_422(tmp_path, logdir):
    first, _ = two_versions(logdir)
    first.save(_window_file(tmp_path, "mixed"))
    dataclasses.replace(first, rank=3).save(_window_file(tmp_path, "mixed").with_name("rank0_steps000001-000001.json"))
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    status, body = get(plugin, "/report", {"run": "mixed"})
    assert status == 422 and "disagree" in body["error"]


def test_bad_files_are_cached_too(tmp_path, logdir, monkeypatch):
    path = _window_file(tmp_path, "bad")
    path.write_text("{" * 50)
    loader = ReportLoader(tmp_path)
    window = loader.rescan()["bad"].windows[0]
    parses: list[int] = []
    real = memwall.report.parse_report

    def counting(raw: bytes, source: str = "report") -> memwall.Report:
        parses.append(len(raw))
        return real(raw, source)

    monkeypatch.setattr("memwall_plugin.tb_plugin.loader.parse_report", counting)
    for _ in range(3):
        with pytest.raises(memwall.ReportError, match="not valid JSON"):
            loader.load(window)
    assert len(parses) == 1  # a broken file is not parsed again on every request


# --- a run rewritten while it is served ----------------------------------------------------------


def test_cache_follows_a_replaced_file_even_with_the_same_size_and_mtime(tmp_path, logdir):
    first, _ = two_versions(logdir)
    rows = tuple(dataclasses.replace(r, overload=r.overload.upper()) for r in first.rows)  # same length
    second = dataclasses.replace(first, rows=rows)
    assert second != first
    path = first.save(_window_file(tmp_path, "run"))
    loader = ReportLoader(tmp_path)
    window = loader.rescan()["run"].windows[0]
    assert loader.load(window) == first
    stamp = path.stat()
    second.save(path)
    assert path.stat().st_size == stamp.st_size
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same size, same mtime: a new file
    assert loader.load(window) == second


def test_requests_racing_a_rewrite_get_the_old_or_the_new_data(tmp_path, logdir):
    first, second = two_versions(logdir)
    path = _window_file(tmp_path, "live")
    first.save(path)
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    plugin.loader.rescan_s = 0.0  # rescan on every request: the scan races the writer too
    expected = {}
    for version in (first, second):
        version.save(path)
        for query in ({"run": "live"}, {"run": "live", "window": WINDOW}, {"run": "live", "phase": "forward"}):
            expected.setdefault(json.dumps(query), []).append(get(plugin, "/report", query)[1])
    assert all(a != b for a, b in expected.values())
    runs_body = get(plugin, "/runs")[1]

    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            for version in (first, second):
                version.save(path)  # atomically, as memwall.profile does
                writes[0] += 1

    failures: list[Any] = []
    answered = [0]

    def reader() -> None:
        for i in range(40):
            query = list(expected)[i % len(expected)]
            status, body = get(plugin, "/report", json.loads(query))
            if status != 200 or body not in expected[query]:
                failures.append((query, status, body.get("error") if isinstance(body, dict) else body))
            if get(plugin, "/runs") != (200, runs_body):
                failures.append(("/runs",))
            answered[0] += 1

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert failures == []
    assert answered[0] == 240 and writes[0] > 10
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_profile_writing_while_the_tab_reads(tmp_path):
    """The real writer: memwall.profile saving windows step after step while requests arrive."""
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    plugin.loader.rescan_s = 0.0
    failures: list[Any] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for run in plugin.runs_impl()["runs"]:
                for w in run["windows"]:
                    status, body = get(plugin, "/report", {"run": run["run"], "window": w["id"]})
                    if status != 200:
                        failures.append((w["id"], status, body))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    try:
        with memwall.profile(model=model, logdir=tmp_path / "live", schedule=memwall.schedule(active=1),
                             summary=False) as prof:
            for _ in range(12):
                model(torch.randn(8, 16)).sum().backward()
                prof.step()
    finally:
        done.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len(plugin.loader.rescan()["live"].windows) == 12
