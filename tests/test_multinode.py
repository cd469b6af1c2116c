"""A job over two "nodes" on this machine (two torchrun launches of 2 gloo ranks each, meeting at a
c10d rendezvous on 127.0.0.1), launched by the test itself: 4 rank reports recognised as 2 nodes,
each collective's bytes split inside / between nodes by the hierarchical algorithm, placed on the
two links' roofs, and the interconnect what-if (`rescore(world_size=..., link=...)`) in the
report, the console, JSON and the tab.

Ground truth is counted here by hand from the model's parameter sizes (DDP all-reduces its
gradients once per backward), never with memwall's own formulas."""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from memwall_plugin.tb_plugin.plugin import MemwallPlugin
from torchrun_job import SAMPLE, torchrun_nodes

import memwall_plugin as memwall
from memwall_plugin import cli
from memwall_plugin.ceilings import parse_links, resolve_links
from memwall_plugin.devices import lookup_device
from memwall_plugin.ranks import node_names, rank_spread

WIDTH, DEPTH, STEPS = 64, 2, 2
NODES, PER_NODE = 2, 2
# the sample's MLP: DEPTH x Linear(WIDTH, WIDTH) then Linear(WIDTH, 10), float32
GRADIENT_BYTES = 4 * (DEPTH * (WIDTH * WIDTH + WIDTH) + WIDTH * 10 + 10)  # 35,880 bytes
INTRA_BW, INTER_BW = 2e9, 1e9  # the links the job is run with (--link), bytes/s per direction


def _reports(logdir: Path) -> dict[int, memwall.Report]:
    files = sorted((logdir / "plugins" / "memwall").glob("rank*.json"))
    return {r.rank: r for r in (memwall.load_report(f) for f in files)}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The DDP sample under `memwall run` on 2 nodes x 2 ranks, links set per level."""
    where = tmp_path_factory.mktemp("nodes")
    results = torchrun_nodes("-m", "memwall_plugin.cli", "run", "--logdir", "runs/mn",
                             "--link", f"intra={INTRA_BW:g},inter={INTER_BW:g},inter_name=test network",
                             str(SAMPLE), "--no-profile", "--steps", str(STEPS), "--width", str(WIDTH),
                             "--depth", str(DEPTH), cwd=where, nodes=NODES, per_node=PER_NODE, timeout=120)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return where / "runs" / "mn", results


# --- hand counts -----------------------------------------------------------------------------------


def hierarchical_ring_all_reduce(message: float, nodes: int, per_node: int) -> tuple[float, float]:
    """(intra, inter) bytes one rank sends in an all-reduce of `message` bytes, counted chunk by
    chunk: a ring reduce-scatter inside the node (L-1 chunks of S/L), a ring all-reduce of the
    node's S/L shard between the N ranks holding it (N-1 reduce-scatter and N-1 all-gather chunks
    of S/(L N)), a ring all-gather inside the node (L-1 chunks of S/L)."""
    chunk_in_node = message / per_node
    reduce_scatter = (per_node - 1) * chunk_in_node
    all_gather = (per_node - 1) * chunk_in_node
    shard_chunk = message / per_node / nodes
    across = 2 * (nodes - 1) * shard_chunk
    return reduce_scatter + all_gather, across


def hand_bytes(kind: str, message: float, nodes: int, per_node: int) -> tuple[float, float]:
    """The same count for the other collectives the sample issues: an all-gather is the all-reduce's
    second half (inside, then the shard across), a broadcast the whole message down each level."""
    if kind == "all_reduce":
        return hierarchical_ring_all_reduce(message, nodes, per_node)
    if kind in ("all_gather", "reduce_scatter"):
        intra, inter = hierarchical_ring_all_reduce(message, nodes, per_node)
        return intra / 2, inter / 2
    if kind == "broadcast":
        return (message if per_node > 1 else 0.0), (message if nodes > 1 else 0.0)
    raise AssertionError(f"no hand count for {kind}")


# --- the job -----------------------------------------------------------------------------------------


def test_two_launches_give_four_ranks_on_two_nodes(two_nodes):
    logdir, _ = two_nodes
    reports = _reports(logdir)
    assert sorted(reports) == [0, 1, 2, 3]
    assert len({r.job for r in reports.values()}) == 1
    for rep in reports.values():
        assert (rep.world_size, rep.local_world_size, rep.nodes, rep.ranks_per_node) == (4, 2, 2, 2)
        assert rep.backend == "gloo" and not rep.incomplete
    # one host name for all four: the node is told apart by torchrun's node index (GROUP_RANK)
    assert len({r.hostname for r in reports.values()}) == 1
    names = node_names(reports)
    by_node: dict[str, list[int]] = {}
    for rank, name in names.items():
        by_node.setdefault(name, []).append(rank)
    assert sorted(map(sorted, by_node.values())) == [[0, 1], [2, 3]]  # the same order as torchrun's RANK
    assert {reports[r].group_rank for r in (0, 1)} != {reports[r].group_rank for r in (2, 3)}
    spread = rank_spread(reports)
    assert spread is not None and len(spread.nodes) == 2 and all(len(n.ranks) == 2 for n in spread.nodes)


def test_links_per_level_are_reported_with_their_source(two_nodes):
    logdir, _ = two_nodes
    for rep in _reports(logdir).values():
        assert (rep.link.bytes_per_s, rep.link.bandwidth.source) == (INTRA_BW, "user")
        assert (rep.inter_link.name, rep.inter_link.bytes_per_s, rep.inter_link.bandwidth.source) == (
            "test network", INTER_BW, "user")


def test_all_reduce_bytes_split_inside_and_between_nodes_as_a_hierarchical_ring(two_nodes):
    logdir, _ = two_nodes
    intra, inter = hierarchical_ring_all_reduce(GRADIENT_BYTES, NODES, PER_NODE)
    assert (intra, inter) == (GRADIENT_BYTES, GRADIENT_BYTES / 2)  # 2 x (S/2) inside, 2 x (S/4) across
    for rep in _reports(logdir).values():
        all_reduce = [c for c in rep.collectives if c.collective.kind == "all_reduce"]
        assert {c.phase for c in all_reduce} == {"backward"}
        assert sum(c.collective.message_bytes for c in all_reduce) == STEPS * GRADIENT_BYTES
        assert sum(c.collective.intra_bytes for c in all_reduce) == STEPS * intra
        assert sum(c.collective.inter_bytes for c in all_reduce) == STEPS * inter
        for c in rep.collectives:  # every collective: its split, and its roof (the two levels' phases in turn)
            per_call = c.collective.message_bytes / c.calls
            want_intra, want_inter = hand_bytes(c.collective.kind, per_call, NODES, PER_NODE)
            assert c.collective.intra_bytes == pytest.approx(c.calls * want_intra, abs=c.calls)
            assert c.collective.inter_bytes == pytest.approx(c.calls * want_inter, abs=c.calls)
            took = c.collective.intra_bytes / INTRA_BW + c.collective.inter_bytes / INTER_BW
            assert c.roofline_time_s == pytest.approx(took, rel=1e-9)


def test_console_and_json_show_each_collectives_bytes_per_level(two_nodes, capsys):
    logdir, results = two_nodes
    printed = "".join(r.stdout for r in results)
    assert printed.count("steps recorded") == 1  # rank 0 alone prints
    assert "intra    configured link within a node, 2 GB/s per direction (user)" in printed
    assert "inter    test network, 1 GB/s per direction (user)" in printed
    assert cli.main(["report", str(logdir), "--rank", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    comm = data["comm"]
    assert comm["nodes"] == 2 and comm["inter_link"]["source"] == "user" and comm["link"]["bytes_per_s"] == INTRA_BW
    (all_reduce,) = [c for c in comm["collectives"] if c["kind"] == "all_reduce"]
    split = (all_reduce["intra_bytes"], all_reduce["inter_bytes"])
    assert split == (STEPS * GRADIENT_BYTES, STEPS * GRADIENT_BYTES // 2)
    assert comm["projection"] is None  # as measured


# --- the interconnect what-if ------------------------------------------------------------------------

WHAT_IF_WORLD, WHAT_IF_INTER = 64, 50e9


def hand_bus_time(kind: str, message: float, calls: int, intra_bw: float, inter_bw: float) -> float:
    """The algorithmic bus time of `calls` calls at 64 ranks, 2 per node (32 nodes): each level's
    hand-counted bytes over its bandwidth, the hierarchical phases one after another."""
    intra, inter = hand_bytes(kind, message, WHAT_IF_WORLD // PER_NODE, PER_NODE)
    return calls * (intra / intra_bw + inter / inter_bw)


def test_rescore_to_64_ranks_on_a_faster_network_gives_each_collectives_bus_time(two_nodes):
    logdir, _ = two_nodes
    for rep in _reports(logdir).values():
        what_if = rep.rescore(world_size=WHAT_IF_WORLD, link={"inter": WHAT_IF_INTER})
        assert what_if.inter_link.bytes_per_s == WHAT_IF_INTER and what_if.inter_link.bandwidth.source == "user"
        assert what_if.link == rep.link  # the level not given stays as measured
        for before, after in zip(rep.collectives, what_if.collectives, strict=True):
            per_call = before.collective.message_bytes / before.calls
            want = hand_bus_time(before.collective.kind, per_call, before.calls, INTRA_BW, WHAT_IF_INTER)
            # memwall counts whole bytes per call (rounded down): within a byte per call on each level
            byte = before.calls * (1 / INTRA_BW + 1 / WHAT_IF_INTER)
            assert after.projected_time_s == pytest.approx(want, rel=1e-9, abs=byte), after.collective.kind
            assert after.collective.group_size == WHAT_IF_WORLD
            assert before.projected_time_s is None  # as measured: no projection
        # the DDP all-reduce: S inside the node, 2 x 31/32 x S/2 across, per step
        (ar,) = [c for c in what_if.collectives if c.collective.kind == "all_reduce"]
        assert ar.projected_time_s == pytest.approx(
            STEPS * (GRADIENT_BYTES / INTRA_BW + 2 * 31 / 32 * GRADIENT_BYTES / 2 / WHAT_IF_INTER), rel=1e-6)
        # exposed: projected longer than the compute it overlapped, as measured
        p = what_if.comm_projection
        assert p is not None and (p.world_size, p.nodes, p.ranks_per_node) == (64, 32, 2)
        for c, row in zip(p.collectives, what_if.collectives, strict=True):
            assert c.overlap_s == pytest.approx(row.collective.overlapped_s * row.calls / row.collective.timed_calls)
            assert c.exposed == (row.projected_time_s > c.overlap_s)
        steps = len(rep.steps)
        exposed = math.fsum(max(0.0, c.projected_time_s - c.overlap_s) for c in p.collectives) / steps
        assert p.step_time_s == pytest.approx(rep.wall_time_s / steps - rep.exposed_s / steps + exposed)
        # a slow network (1 kB/s): the gradient all-reduce outlasts the backward it overlapped
        slow = rep.rescore(world_size=WHAT_IF_WORLD, link={"inter": 1e3}).comm_projection
        assert "all_reduce" in {c.kind for c in slow.exposed_collectives}
        assert slow.step_time_s > rep.wall_time_s / steps


def test_rescore_shows_the_projection_in_console_and_json(two_nodes, capsys):
    logdir, _ = two_nodes
    rep = _reports(logdir)[0]
    what_if = rep.rescore(world_size=WHAT_IF_WORLD, link={"inter": WHAT_IF_INTER})
    text = str(what_if)
    assert "Projected at 64 ranks (32 node(s) of 2)" in text and "exposed (longer than the compute" in text
    header = text[text.index("collectives by time"):].splitlines()[1].split()
    assert "projected" in header and "exposed" in header and "intra" in header and "inter" in header
    record = cli.report_json(what_if)["comm"]["projection"]
    assert [c["projected_time_s"] for c in record["collectives"]] == [c.projected_time_s for c in what_if.collectives]


def test_link_settings_per_level_and_the_old_forms():
    assert parse_links(50e9) == {"intra": (50e9, ""), "inter": (50e9, "")}  # one value: both levels
    assert parse_links("bandwidth=25e9,name=RoCE") == {"intra": (25e9, "RoCE"), "inter": (25e9, "RoCE")}
    assert parse_links("intra=900e9,inter=50e9,inter_name=IB NDR") == {"intra": (900e9, ""), "inter": (50e9, "IB NDR")}
    assert parse_links({"inter": 50e9}) == {"inter": (50e9, "")}
    with pytest.raises(ValueError, match="intra=..., inter="):
        parse_links("intra=1e9,speed=3")
    h100 = lookup_device("H100 SXM")
    intra, inter = resolve_links(h100, 16, 8, environ={})  # two nodes of 8: NVLink inside, network unknown
    assert (intra.name, intra.bytes_per_s, intra.bandwidth.source) == ("NVLink 4.0", 450e9, "datasheet")
    assert inter.bandwidth is None and "inter" in inter.note
    intra, inter = resolve_links(h100, 16, 8, environ={"MEMWALL_LINK": "inter=50e9"})
    assert (intra.bytes_per_s, inter.bytes_per_s, inter.bandwidth.source) == (450e9, 50e9, "user")
    assert resolve_links(h100, 8, 8, override=100e9, environ={})[1] is None  # one node: no network


def test_old_reports_without_the_split_still_load_and_project(two_nodes, tmp_path):
    logdir, _ = two_nodes
    (source,) = (logdir / "plugins" / "memwall").glob("rank0_*.json")
    data = json.loads(source.read_text())
    data.pop("inter_link")
    for c in data["collectives"]:
        for key in ("intra_bytes", "inter_bytes", "overlapped_s"):
            c["collective"].pop(key)
    old = tmp_path / "rank0_old.json"
    old.write_text(json.dumps(data))
    rep = memwall.load_report(old)
    assert rep.inter_link is None and rep.intra_bytes is None and "Communication" in str(rep)
    what_if = rep.rescore(world_size=WHAT_IF_WORLD, link={"intra": INTRA_BW, "inter": WHAT_IF_INTER})
    (ar,) = [c for c in what_if.collectives if c.collective.kind == "all_reduce"]
    assert ar.projected_time_s == pytest.approx(hand_bus_time("all_reduce", GRADIENT_BYTES, STEPS, INTRA_BW,
                                                              WHAT_IF_INTER), rel=1e-6)
    assert what_if.comm_projection.step_time_s is not None  # overlap shared out by measured time


# --- the tab -----------------------------------------------------------------------------------------


def test_tab_report_route_returns_the_projection(two_nodes):
    logdir, _ = two_nodes
    plugin = MemwallPlugin(SimpleNamespace(logdir=str(logdir.parent)))
    measured = plugin.report_impl({"run": "mn", "rank": "1"})["comm"]
    assert measured["projection"] is None and measured["inter_link"]["bytes_per_s"] == INTER_BW
    view = plugin.report_impl({"run": "mn", "rank": "1", "world_size": "64", "inter_link": "50e9"})["comm"]
    rep = _reports(logdir)[1].rescore(world_size=WHAT_IF_WORLD, link={"inter": WHAT_IF_INTER})
    assert [c["projected_time_s"] for c in view["collectives"]] == pytest.approx(
        [c.projected_time_s for c in rep.collectives])
    assert view["projection"]["world_size"] == 64 and view["inter_link"]["bytes_per_s"] == WHAT_IF_INTER
    assert view["projection"]["exposed"] == [c.index for c in rep.comm_projection.exposed_collectives]
    from memwall_plugin.tb_plugin.plugin import RequestError

    with pytest.raises(RequestError, match="inter_link must be a bandwidth"):
        plugin.report_impl({"run": "mn", "rank": "1", "inter_link": "fast"})


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver")
def test_tab_shows_the_projection_in_a_browser(two_nodes, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from tb_logdir import running_tensorboard

    logdir, _ = two_nodes
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'c'}",
                 "--window-size=1400,2000"):
        options.add_argument(flag)
    with running_tensorboard(logdir.parent, timeout=60) as (_, port):
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
        try:
            def wait(until, timeout=60):
                return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(until)

            driver.get(f"http://127.0.0.1:{port}/#memwall")
            driver.switch_to.frame(wait(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0])
            wait(lambda d: d.find_elements(By.CSS_SELECTOR, "form.mw-comm-whatif"))
            shown = driver.find_element(By.CSS_SELECTOR, ".mw-comm-link").text
            rank = int(shown.split()[1])  # "rank R of 4 · gloo · 2 nodes of 2 ranks"
            assert "2 nodes of 2 ranks" in shown
            assert "between nodes: test network, 1.00 GB/s per direction (user)" in driver.find_element(
                By.CSS_SELECTOR, ".mw-comm-inter").text
            assert "test network" in driver.find_element(By.CSS_SELECTOR, "text.mw-inter-label").text  # its roof
            heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, ".mw-collectives th")]
            assert "intra-node" in heads and "inter-node" in heads and "projected" not in heads
            driver.find_element(By.CSS_SELECTOR, "input.mw-world-size").send_keys("64")
            driver.find_element(By.CSS_SELECTOR, "input.mw-inter-link").send_keys("50e9")
            driver.find_element(By.CSS_SELECTOR, "button.mw-comm-project").click()
            line = wait(lambda d: d.find_elements(By.CSS_SELECTOR, ".mw-comm-projected"))[0].text
            assert line.startswith("Projected at 64 ranks (32 node(s) of 2):") and "step" in line
            heads = [th.text for th in driver.find_elements(By.CSS_SELECTOR, ".mw-collectives th")]
            assert heads[-2:] == ["projected", "exposed"]
            rep = _reports(logdir)[rank].rescore(world_size=WHAT_IF_WORLD, link={"inter": WHAT_IF_INTER})
            rows = driver.find_elements(By.CSS_SELECTOR, "tr.mw-collective")
            assert len(rows) == len(rep.collectives)
            assert all(r.find_elements(By.TAG_NAME, "td")[-2].text not in ("", "?") for r in rows)
            exposed = driver.find_elements(By.CSS_SELECTOR, "tr.mw-collective.mw-exposed")
            assert len(exposed) == len(rep.comm_projection.exposed_collectives)
            assert all(r.find_elements(By.TAG_NAME, "td")[-1].text.startswith("exposed +") for r in exposed)
            where = Path(os.environ.get("MEMWALL_SCREENSHOTS") or tmp_path)
            where.mkdir(parents=True, exist_ok=True)
            driver.execute_script("document.querySelector('.mw-comm-whatif').scrollIntoView()")
            driver.save_screenshot(str(where / "memwall-tab-interconnect-what-if.png"))
            # the same figures over HTTP
            query = urllib.parse.urlencode({"run": "mn", "rank": rank, "world_size": 64, "inter_link": "50e9"})
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/memwall/report?{query}", timeout=30) as r:
                comm = json.loads(r.read())["comm"]
            assert [c["projected_time_s"] for c in comm["collectives"]] == pytest.approx(
                [c.projected_time_s for c in rep.collectives])
        finally:
            driver.quit()
