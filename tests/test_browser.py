"""The Memory Wall tab in a real browser: TensorBoard on 127.0.0.1 over real profiled runs, opened
in headless Chromium (Debian's chromium and chromium-driver, installed by .ci/run).

Set MEMWALL_SCREENSHOTS=DIR to keep the screenshots."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tb_logdir import (
    BATCH_MATMULS,
    EVIL,
    XSS_DEVICE,
    XSS_OP,
    XSS_PHASE,
    XSS_RUN,
    make_batch_runs,
    make_edge_runs,
    make_hostile_run,
    make_logdir,
    make_memory_runs,
    make_trace_runs,
    running_tensorboard,
)
from torchrun_job import replicate_ranks

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.devices import CALIBRATED, DATASHEET, ESTIMATED, DeviceSpec, Figure, MemoryLevel, resolve_device
from memwall_plugin.memory import CATEGORIES
from memwall_plugin.records import ordered_phases
from memwall_plugin.report import merge_reports
from memwall_plugin.rows import group_rows

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium and chromium-driver: .ci/run installs them")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait as _Wait  # noqa: E402


def WebDriverWait(driver, timeout):  # noqa: N802 - the controls are rebuilt on every update
    return _Wait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))


def _select(driver, css: str, value: str) -> None:
    """Choose an option as a user would: set it and fire the change event."""
    driver.execute_script(
        "const s = document.querySelector(arguments[0]); s.value = arguments[1];"
        "s.dispatchEvent(new Event('change'));", css, value)


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tensorboard(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tb")
    make_logdir(logdir, big_rows=10_000, kineto=True, distributed=True)
    make_hostile_run(logdir)
    memory = make_memory_runs(logdir)["memory"]  # runs gpt, tight and old
    with running_tensorboard(logdir, "--reload_interval", "2", timeout=60) as (_, port):
        yield f"http://127.0.0.1:{port}", logdir, memory


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,2000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    where = Path(os.environ.get("MEMWALL_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def _open_tab(driver, base: str, query: str = ""):
    driver.get("about:blank")  # a fresh page: a hash-only navigation would keep the last state
    driver.get(f"{base}/{query}#memwall")
    iframe = WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0]
    driver.switch_to.frame(iframe)
    WebDriverWait(driver, 60).until(  # the first run's view has loaded
        lambda d: d.find_elements(By.CSS_SELECTOR, "select.mw-run") and d.find_elements(By.CSS_SELECTOR, ".mw-card")
        and d.find_element(By.CSS_SELECTOR, ".mw-status").text == "")


def _choose_run(driver, run: str, ready: str = ".mw-card"):
    _select(driver, "select.mw-run", run)
    WebDriverWait(driver, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "select.mw-run").get_attribute("value") == run
        and (d.find_elements(By.CSS_SELECTOR, ready) or "cannot be shown" in d.find_element(
            By.CSS_SELECTOR, ".mw-status").text)
        and d.find_element(By.CSS_SELECTOR, ".mw-status").text != "Loading…"
    )


def test_tab_shows_one_point_per_operator_row_and_the_table_its_rows(tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "train")
    files = sorted((logdir / "train" / "plugins" / "memwall").glob("*.json"))
    report = merge_reports(memwall.load_report(f) for f in files)
    rows = [f.row for f in report.folded()]  # one per (op, module, phase, dtype), input shapes folded
    plotted = [r for r in rows if r.flops and r.bytes > 0 and r.time_s > 0]
    points = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart circle.mw-point")
    assert len(points) == len(plotted) > 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row")) == len(rows)
    memory = browser.find_elements(By.CSS_SELECTOR, "circle.mw-point.mw-memory")
    assert len(memory) == sum(r.bound == "memory" for r in plotted)
    cards = browser.find_element(By.CSS_SELECTOR, ".mw-cards").text
    assert "MEMORY-BOUND" in cards.upper() and "DEVICE" in cards.upper()
    # sorting by FLOPs puts the biggest matmul first
    browser.find_element(By.CSS_SELECTOR, "th[data-key='flops']").click()
    first = browser.find_element(By.CSS_SELECTOR, "tbody tr.mw-row td").text
    assert first == max(rows, key=lambda r: r.flops or 0).op.removeprefix("aten.")
    # the module toggle places one point per module
    _select(browser, "select.mw-points", "module")
    modules = {g.key for g in report.group_by("module") if g.flops and g.bytes and g.time_s > 0}
    assert len(browser.find_elements(By.CSS_SELECTOR, "circle.mw-point")) == len(modules)
    _screenshot(browser, "memwall-tab-train", tmp_path)


def test_module_tree_splits_forward_backward_and_the_optimizer(tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "train", ready=".mw-tree-line")
    files = sorted((logdir / "train" / "plugins" / "memwall").glob("*.json"))
    report = merge_reports(memwall.load_report(f) for f in files)
    optimizer = sum(r.time_s for r in report.rows if r.phase == "optimizer")
    assert optimizer > 0
    root = browser.find_element(By.CSS_SELECTOR, ".mw-tree-line").text
    # the run's AdamW step is under the model's root, neither its forward nor its backward
    assert "fwd " in root and " · bwd " in root and " · opt " in root, root
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.CSS_SELECTOR, ".mw-tree-line"))
    _screenshot(browser, "memwall-tab-tree", tmp_path)


def test_what_if_device_replaces_the_roofs(tensorboard, browser):
    base, _, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "train")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "text.mw-roof-label"))
    # this CPU's roofs are estimates (the tests do not measure the machine): drawn and labelled so
    labels = " ".join(t.text for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-roof-label"))
    assert "(estimated)" in labels
    assert browser.find_elements(By.CSS_SELECTOR, "line.mw-roof-estimated")
    _select(browser, "select.mw-device", "h100-sxm")
    WebDriverWait(browser, 60).until(lambda d: "H100" in d.find_element(By.CSS_SELECTOR, ".mw-cards").text)
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-roof-label")]
    # an fp32 run draws the roofs its rows are placed under only: the H100's dense bf16 roof
    # (989 TFLOP/s) appears once its ops are computed in bf16
    assert not any("989" in t for t in labels)
    _select(browser, "select.mw-dtype", "bf16")
    WebDriverWait(browser, 60).until(lambda d: any(
        "989" in t.text for t in d.find_elements(By.CSS_SELECTOR, "text.mw-roof-label")))
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-roof-label")]
    # its datasheet roofs are not estimates; its L2's bandwidth is (NVIDIA publishes none): dashed, and labelled so
    estimated = [t for t in labels if "(estimated)" in t]
    assert len(estimated) == 1 and estimated[0].startswith("L2 ")
    dashed = browser.find_elements(By.CSS_SELECTOR, "line.mw-roof-estimated")
    assert [line.get_attribute("data-levels") for line in dashed] == ["L2"]
    assert any(t.startswith("HBM · ") and t.endswith("(datasheet)") for t in labels)


def test_hostile_module_name_is_text(tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "evil")
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row td")]
    assert f"{EVIL}.body" in cells
    assert browser.find_elements(By.TAG_NAME, "img") == []
    # hover the point of the hostile module's matmul (the event the pointer would send); points
    # carry their row's index, and rows are ordered by measured time, so find it by its module
    (path,) = (logdir / "evil" / "plugins" / "memwall").glob("*.json")
    index = next(i for i, r in enumerate(memwall.load_report(path).rows)
                 if r.module == f"{EVIL}.body" and r.op == "aten.addmm")
    browser.execute_script(
        "const p = document.querySelector(`circle.mw-point[data-id='${arguments[0]}']`);"
        "const box = p.getBoundingClientRect();"
        "p.dispatchEvent(new MouseEvent('mouseenter', {clientX: box.x + 2, clientY: box.y + 2}));", index)
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".mw-tooltip").is_displayed())
    assert EVIL in browser.find_element(By.CSS_SELECTOR, ".mw-tooltip").text
    # the memory table names the module as text too
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.mw-memory-row"))
    modules = [tr.get_attribute("data-module") for tr in browser.find_elements(By.CSS_SELECTOR, "tr.mw-memory-row")]
    assert f"{EVIL}.body" in modules
    assert browser.find_elements(By.TAG_NAME, "img") == []
    _screenshot(browser, "memwall-tab-evil", tmp_path)


def test_run_op_phase_and_device_names_are_text(tensorboard, browser, tmp_path):
    """Every string a report carries reaches the page as text: none is parsed as HTML (each
    would set window.__mw_xss if it were), and each shows verbatim."""
    base, _, _ = tensorboard
    _open_tab(browser, base)
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "select.mw-run option")]
    assert XSS_RUN in options
    _choose_run(browser, XSS_RUN)
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row td")]
    assert any(c.startswith(XSS_OP) for c in cells) and XSS_PHASE in cells
    phases = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "select.mw-phase option")]
    assert XSS_PHASE in phases
    cards = browser.find_element(By.CSS_SELECTOR, ".mw-cards").text
    assert XSS_DEVICE in cards and f"times measured on {XSS_DEVICE} measured" in cards
    title = browser.find_element(By.CSS_SELECTOR, "tbody tr.mw-row td").get_attribute("title")
    assert XSS_OP in title and "<u>" in title  # the op cell's tooltip: op, shapes, dtype as text
    browser.execute_script(
        "const p = document.querySelector('circle.mw-point'); const box = p.getBoundingClientRect();"
        "p.dispatchEvent(new MouseEvent('mouseenter', {clientX: box.x + 2, clientY: box.y + 2}));")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".mw-tooltip").is_displayed())
    assert XSS_OP in browser.find_element(By.CSS_SELECTOR, ".mw-tooltip").text
    for node in browser.find_elements(By.CSS_SELECTOR, "td, option, .mw-card"):  # mouse over all of it
        browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", node)
    assert browser.find_elements(By.CSS_SELECTOR, "img, svg[onload], [onerror], [onload], [onmouseover], a, i, u") == []
    assert browser.execute_script("return [window.__mw_xss, window.top.__mw_xss]") == [None, None]
    _screenshot(browser, "memwall-tab-xss", tmp_path)


def test_broken_run_shows_its_error_and_others_still_work(tensorboard, browser, tmp_path):
    base, _, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "corrupt")
    status = browser.find_element(By.CSS_SELECTOR, ".mw-status").text
    assert "cannot be shown" in status and "truncated" in status
    _screenshot(browser, "memwall-tab-corrupt", tmp_path)
    _choose_run(browser, "nested/future")
    assert "schema_version 99" in browser.find_element(By.CSS_SELECTOR, ".mw-status").text
    _choose_run(browser, "train")
    assert browser.find_elements(By.CSS_SELECTOR, "circle.mw-point")


def test_ten_thousand_rows_stay_fast(tensorboard, browser):
    base, _, _ = tensorboard
    _open_tab(browser, base)
    start = time.monotonic()
    _choose_run(browser, "big")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".mw-count").text.startswith("10,000"))
    assert time.monotonic() - start < 30
    assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row")) < 100  # virtualised
    box = browser.find_element(By.CSS_SELECTOR, ".mw-filter-module")
    box.send_keys("layers.7.")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".mw-count").text.startswith("10 of"))


def test_distributed_run_shows_ranks_side_by_side_and_collectives_under_the_link(tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "ddp", ready="tr.mw-rank")
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.mw-rank")) == 2)
    files = sorted((logdir / "ddp" / "plugins" / "memwall").glob("rank*.json"))
    reports = {r.rank: r for r in (memwall.load_report(f) for f in files)}
    ranks = browser.find_elements(By.CSS_SELECTOR, "tr.mw-rank")
    assert [r.get_attribute("data-rank") for r in ranks] == ["0", "1"]
    assert sum("slowest" in r.text for r in ranks) == 1
    # rank 0's collectives: one table row each, one point each under the link roof when timed
    rep = reports[0]
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.mw-collective")
    assert len(rows) == len(rep.collectives) and any("all_reduce" in r.text for r in rows)
    timed = [c for c in rep.collectives if c.bus_bandwidth_bytes_per_s and c.collective.message_bytes]
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.mw-link-chart circle.mw-communication")) == len(timed)
    assert rep.link.name in browser.find_element(By.CSS_SELECTOR, "text.mw-link-label").text
    assert "COMMUNICATION" in browser.find_element(By.CSS_SELECTOR, ".mw-cards").text.upper()
    # the sharding what-if shards over the run's own ranks by default
    world = WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input.mw-world"))[0]
    assert world.get_attribute("value") == str(rep.world_size) == "2"
    _screenshot(browser, "memwall-tab-ddp", tmp_path)
    # a click on rank 1 shows rank 1's report
    browser.find_element(By.CSS_SELECTOR, "tr.mw-rank[data-rank='1']").click()
    WebDriverWait(browser, 60).until(lambda d: "rank 1 of 2" in d.find_element(By.CSS_SELECTOR, ".mw-comm").text)
    assert browser.find_element(By.CSS_SELECTOR, "select.mw-rank").get_attribute("value") == "1"
    browser.execute_script("document.querySelector('.mw-comm-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-ddp-collectives", tmp_path)


def test_a_job_of_many_ranks_shows_their_spread_and_the_straggler_first(tensorboard, browser, tmp_path):
    """40 ranks copied from the ddp run's rank 1, rank 29 with every op 1.5x slower: the ranks part
    leads with the straggler and why, lists it first among the outliers, and lists every rank on
    one click."""
    base, logdir, _ = tensorboard
    (source,) = (logdir / "ddp" / "plugins" / "memwall").glob("rank1_*.json")
    replicate_ranks(source, logdir / "ddp40", 40, straggler=29, per_node=8)
    deadline = time.monotonic() + 60  # the loader rescans every few seconds
    while not any(r["run"] == "ddp40" and len(r["ranks"]) == 40
                  for r in _get_json(f"{base}/data/plugin/memwall/runs")["runs"]):  # type: ignore[index]
        assert time.monotonic() < deadline, "the 40 ranks never showed up in /runs"
        time.sleep(0.5)
    _open_tab(browser, base)
    _choose_run(browser, "ddp40", ready="tr.mw-outlier")
    lead = browser.find_element(By.CSS_SELECTOR, ".mw-straggler").text
    assert lead.startswith("Slowest: rank 29 (node3), +50% in ops vs the median: more ")
    outliers = browser.find_elements(By.CSS_SELECTOR, "tr.mw-outlier")
    assert [r.get_attribute("data-rank") for r in outliers] == ["29"] and "slowest" in outliers[0].text
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.mw-spread")) >= 4  # in ops, wall, comm share, sent
    nodes = browser.find_elements(By.CSS_SELECTOR, "tr.mw-node")
    assert len(nodes) == 5 and nodes[0].text.startswith("node3")
    browser.execute_script("document.querySelector('.mw-ranks-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-ranks-spread", tmp_path)
    browser.find_element(By.CSS_SELECTOR, "button.mw-all-ranks").click()
    WebDriverWait(browser, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.mw-rank")) == 40)
    slowest = browser.find_elements(By.CSS_SELECTOR, "tr.mw-rank.mw-slowest")
    assert [r.get_attribute("data-rank") for r in slowest] == ["29"]
    _screenshot(browser, "memwall-tab-ranks-all", tmp_path)


def test_two_runs_into_one_logdir_are_two_jobs_shown_apart(tensorboard, browser, tmp_path):
    """One script run twice into a hard-coded logdir: the tab shows the newest job (its 3 steps,
    not 5 of both summed) and a job selector that brings back the older one (2 steps)."""
    base, logdir, _ = tensorboard
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    for steps in (2, 3):
        with memwall.profile(logdir=logdir / "twice", summary=False, scalars=False) as prof:
            for _ in range(steps):
                a @ b
                prof.step()
    deadline = time.monotonic() + 60  # the loader rescans every few seconds
    while not any(r["run"] == "twice" and len(r["jobs"]) == 2
                  for r in _get_json(f"{base}/data/plugin/memwall/runs")["runs"]):  # type: ignore[index]
        assert time.monotonic() < deadline, "the second job never showed up in /runs"
        time.sleep(0.5)
    _open_tab(browser, base)
    _choose_run(browser, "twice")
    jobs = browser.find_elements(By.CSS_SELECTOR, "select.mw-job option")
    assert len(jobs) == 2 and jobs[0].text.startswith("newest")
    cards = browser.find_element(By.CSS_SELECTOR, ".mw-cards")
    assert "3 step(s)" in cards.text
    _select(browser, "select.mw-job", jobs[1].get_attribute("value"))
    WebDriverWait(browser, 60).until(lambda d: "2 step(s)" in d.find_element(By.CSS_SELECTOR, ".mw-cards").text)
    _screenshot(browser, "memwall-tab-two-jobs", tmp_path)


def test_pytorch_profiler_tab_loads_the_annotated_trace(tensorboard):
    base, _, _ = tensorboard
    deadline = time.monotonic() + 90
    runs: list = []
    while time.monotonic() < deadline:
        payload = _get_json(f"{base}/data/plugin/pytorch_profiler/runs")
        runs = payload.get("runs", []) if isinstance(payload, dict) else payload
        if "train" in runs and not (isinstance(payload, dict) and payload.get("loading")):
            break
        time.sleep(1)
    assert "train" in runs
    listing = _get_json(f"{base}/data/plugins_listing")
    assert listing["memwall"]["enabled"] and listing["pytorch_profiler"]["enabled"]
    workers = _get_json(f"{base}/data/plugin/pytorch_profiler/workers?run=train&view=Operator")
    spans = _get_json(f"{base}/data/plugin/pytorch_profiler/spans?run=train&worker={workers[0]}")
    span = spans[0] if spans else ""
    table = _get_json(f"{base}/data/plugin/pytorch_profiler/operation/table?run=train"
                      f"&worker={workers[0]}&span={span}&view=Operator&group_by=Operation")
    names = {row["name"] for row in table["data"]}
    assert "aten::addmm" in names


def _si(value: float, unit: str) -> str:
    """format.js' si(): three significant digits with an SI prefix."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{f'{value / factor:#.3g}'.rstrip('.')} {prefix}{unit}"
    return f"{float(f'{value:.3g}'):g} {unit}"


def _pct(value: float) -> str:
    """format.js' pct()."""
    return f"{value * 100:.0f}%" if value >= 0.1 else f"{value * 100:.1f}%"


def _share(value: float) -> str:
    """format.js' share(): pct(), or two significant digits under 0.1%, and <0.001% under that."""
    if value == 0 or value >= 0.001:
        return _pct(value)
    return f"{float(f'{value * 100:.2g}'):g}%" if value >= 1e-5 else "<0.001%"


def _projected(driver) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, ".mw-projected-peak").get_attribute("data-bytes"))


def _wait_projected(driver, peak: int) -> None:
    WebDriverWait(driver, 60).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".mw-projected-peak") and _projected(d) == peak
        and not d.find_elements(By.CSS_SELECTOR, ".mw-whatif-result.mw-loading"))


def test_memory_view_shows_the_peak_step_the_modules_and_what_ifs(tensorboard, browser, tmp_path):
    """The GPT-2 run's memory: the peak step stacked by category, the peak and the capacity in
    text, one table row per module; checkpointing transformer.h, then ZeRO-3 over 8 ranks, change
    the projected peak to what MemoryReport.what_if projects."""
    base, _, memory = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "gpt", ready="tr.mw-memory-row")
    _wait_projected(browser, memory.what_if().peak_bytes)
    categories = {c for k, c in enumerate(CATEGORIES) if any(p[2][k] for p in memory.timeline)}
    areas = browser.find_elements(By.CSS_SELECTOR, "svg.mw-memory-chart path.mw-area")
    assert {a.get_attribute("data-category") for a in areas} == categories >= {"parameters", "activations"}
    legend = browser.find_element(By.CSS_SELECTOR, ".mw-memory-legend").text
    assert all(f"{label} {_si(memory.peak_by_category[c], 'B')}" in legend for c, label in
               (("activations", "activations"), ("optimizer_state", "optimizer state"), ("parameters", "parameters")))
    phase, op, module = memory.peak_at
    label = browser.find_element(By.CSS_SELECTOR, "text.mw-peak-label").text
    assert f"peak {_si(memory.peak_bytes, 'B')}" in label and phase in label and op in label
    summary = browser.find_element(By.CSS_SELECTOR, ".mw-memory-summary").text
    fraction = memory.peak_bytes / memory.capacity_bytes
    assert (f"peak {_si(memory.peak_bytes, 'B')} of capacity {_si(memory.capacity_bytes, 'B')} "
            f"({fraction * 100:.1f}%)") in summary and memory.capacity_source in summary
    # host RAM dwarfs this peak: the capacity is stated, not drawn
    assert not browser.find_elements(By.CSS_SELECTOR, "line.mw-capacity")
    assert "off this scale" in browser.find_element(By.CSS_SELECTOR, ".mw-memory-notes").text
    assert "MEMORY PEAK" in browser.find_element(By.CSS_SELECTOR, ".mw-cards").text.upper()
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.mw-memory-row")
    assert len(rows) == len(memory.modules)
    biggest = max(memory.modules, key=lambda m: m.total_bytes)
    assert rows[0].get_attribute("data-module") == biggest.module
    # sorted by parameters: an embedding or a projection holds the most
    browser.find_element(By.CSS_SELECTOR, ".mw-memory-table th[data-key='parameter_bytes']").click()
    first = browser.find_element(By.CSS_SELECTOR, "tr.mw-memory-row").get_attribute("data-module")
    assert first == max(memory.modules, key=lambda m: m.parameter_bytes).module
    # rolled up to three path components: one row per block
    _select(browser, "select.mw-memory-rollup", "3")
    rolled = [tr.get_attribute("data-module") for tr in browser.find_elements(By.CSS_SELECTOR, "tr.mw-memory-row")]
    assert len(rolled) == len({".".join(m.module.split(".")[:3]) for m in memory.modules})
    assert {f"transformer.h.{i}" for i in range(4)} <= set(rolled)
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-memory", tmp_path)

    # what-ifs: checkpoint the blocks, then shard over 8 ranks, then an H100's capacity
    browser.find_element(By.CSS_SELECTOR, "input.mw-ckpt[value='transformer.h']").click()
    checkpointed = memory.what_if(checkpoint=["transformer.h"])
    _wait_projected(browser, checkpointed.peak_bytes)
    assert checkpointed.peak_bytes < memory.what_if().peak_bytes
    extra = browser.find_element(By.CSS_SELECTOR, ".mw-extra-flops .mw-card-value").text
    assert extra == _si(checkpointed.extra_flops, "")
    _select(browser, "select.mw-shard", "zero3")  # world size 8 is the default
    sharded = memory.what_if(checkpoint=["transformer.h"], shard="zero3", world_size=8)
    _wait_projected(browser, sharded.peak_bytes)
    assert sharded.peak_bytes < checkpointed.peak_bytes
    result = browser.find_element(By.CSS_SELECTOR, ".mw-whatif-result").text
    assert f"projected peak {_si(sharded.peak_bytes, 'B')}" in result
    assert browser.find_element(By.CSS_SELECTOR, ".mw-comm-bytes .mw-card-value").text == _si(sharded.comm_bytes, "B")
    assert "transformer.h.3" in result  # the blocks checkpointed
    assert f"what-if peak {_si(sharded.peak_bytes, 'B')}" in browser.find_element(
        By.CSS_SELECTOR, "text.mw-projected-label").text
    _select(browser, "select.mw-capacity-device", "h100-sxm")
    WebDriverWait(browser, 60).until(
        lambda d: "NVIDIA H100" in d.find_element(By.CSS_SELECTOR, ".mw-whatif-result").text)
    largest = memory.max_batch_scale(capacity_bytes=80_000_000_000, checkpoint=["transformer.h"], shard="zero3",
                                     world_size=8)
    assert largest is not None
    expected = f"{float(f'{largest:.3g}'):g}×"  # format.js' num(): three significant digits
    assert browser.find_element(By.CSS_SELECTOR, ".mw-max-batch .mw-card-value").text == expected
    assert browser.find_element(By.CSS_SELECTOR, ".mw-fits").text == "fits"
    browser.execute_script("document.querySelector('.mw-whatif').scrollIntoView()")
    _screenshot(browser, "memwall-tab-memory-whatif", tmp_path)


def test_memory_view_draws_a_capacity_on_its_scale_and_says_when_a_report_has_no_memory(tensorboard, browser, tmp_path):
    base, _, memory = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "tight", ready="tr.mw-memory-row")
    capacity = memory.peak_bytes * 5 // 4
    line = WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "text.mw-capacity-label"))[0]
    assert line.text == f"capacity {_si(capacity, 'B')} (a test's capacity: 1.25x the peak)"
    assert "(80%)" in browser.find_element(By.CSS_SELECTOR, ".mw-memory-summary").text
    # twice the batch does not fit in 1.25x the peak
    browser.execute_script("const b = document.querySelector('input.mw-batch'); b.value = '2';"
                           "b.dispatchEvent(new Event('change'));")
    _wait_projected(browser, memory.what_if(batch_scale=2.0).peak_bytes)
    assert browser.find_element(By.CSS_SELECTOR, ".mw-fits").text == "does not fit"
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-memory-tight", tmp_path)
    _choose_run(browser, "old")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".mw-memory-empty").is_displayed())
    assert "no memory measurement" in browser.find_element(By.CSS_SELECTOR, ".mw-memory-empty").text
    assert not browser.find_elements(By.CSS_SELECTOR, "tr.mw-memory-row")
    assert browser.find_elements(By.CSS_SELECTOR, "circle.mw-point")  # the rest of the tab works
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-memory-old", tmp_path)


KIB, MIB = 2**10, 2**20
#: A device with round figures and three caches, L2 and L3 at one bandwidth (as calibration finds
#: them on many CPUs: a nearer level is never shown slower than a farther one); the L1's is an estimate.
LEVELS_DEVICE = DeviceSpec(
    key="test-levels", name="a test CPU with caches", kind="cpu", peaks=(("fp32", Figure(500e9, CALIBRATED)),),
    bandwidth=Figure(20e9, CALIBRATED), source="a test's round figures",
    caches=(MemoryLevel("L1", 64 * KIB, Figure(800e9, ESTIMATED), "a test's"),
            MemoryLevel("L2", 2 * MIB, Figure(300e9, CALIBRATED), "a test's"),
            MemoryLevel("L3", 32 * MIB, Figure(300e9, CALIBRATED), "a test's")),
)


def _element_screenshot(element, name: str, tmp_path: Path) -> Path:
    where = Path(os.environ.get("MEMWALL_SCREENSHOTS") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    path = where / f"{name}.png"
    element.screenshot(str(path))
    assert path.stat().st_size > 10_000
    return path


def _labels_apart(driver, css: str) -> bool:
    """Whether no two of these labels, all written along parallel slopes (one angle), overlap: their
    boxes compared in the frame the text runs in."""
    boxes = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((t) => {"
        "  const b = t.getBBox(), m = t.getCTM(), a = -Math.atan2(m.b, m.a);"
        "  const pts = [[b.x, b.y], [b.x + b.width, b.y], [b.x, b.y + b.height], [b.x + b.width, b.y + b.height]]"
        "    .map(([x, y]) => [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f])"
        "    .map(([x, y]) => [x * Math.cos(a) - y * Math.sin(a), x * Math.sin(a) + y * Math.cos(a)]);"
        "  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);"
        "  return [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)];"
        "});", css)
    assert len(boxes) > 1
    return all(min(a[2], b[2]) - max(a[0], b[0]) <= 1 or min(a[3], b[3]) - max(a[1], b[1]) <= 1
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_each_memory_level_has_its_slope_its_colored_points_and_a_table_column(browser, tmp_path):
    """Ops whose data stays in cache sit under their cache's slope, the rest under main memory's.
    Three workloads of known footprint on LEVELS_DEVICE (given, so neither this machine's caches
    nor a calibration matter): in-place updates of one 16 KiB tensor (L1, 64 KiB; a division, its
    own row once input shapes are folded), of two 256 KiB
    tensors (512 KiB between reuses: L2, 2 MiB), and copies, plain and scaled, of a 128 MiB tensor
    (DRAM). The chart draws one labelled slope per distinct bandwidth (L2 and L3 share one), the
    points carry their level and its color, and the table has a level column."""
    logdir = tmp_path / "logdir"
    small, x, y = torch.randn(4 * KIB), torch.randn(64 * KIB), torch.randn(64 * KIB)
    big = torch.randn(32 * MIB)
    out = torch.empty_like(big)
    with memwall.profile(logdir=logdir / "levels", device=LEVELS_DEVICE, summary=False, scalars=False) as prof:
        for _ in range(200):
            small.div_(1.01)
        for _ in range(200):
            x.mul_(0.9)
            x.add_(y)
        for _ in range(3):
            out.copy_(big)
            torch.mul(big, 0.5, out=out)
        prof.step()
    (path,) = (logdir / "levels" / "plugins" / "memwall").glob("*.json")
    report = memwall.load_report(path)
    rows = [f.row for f in report.folded()]  # the tab's: input shapes folded
    plotted = [r for r in rows if r.flops and r.bytes > 0 and r.time_s > 0]
    assert {r.memory_level for r in plotted} == {"L1", "L2", "DRAM"}  # the workload is what it says
    assert all(r.bound == "memory" for r in plotted)  # every intensity is far left of every ridge

    with running_tensorboard(logdir, timeout=60) as (_, port):
        _open_tab(browser, f"http://127.0.0.1:{port}")
        # (a) one slope per distinct bandwidth, nearest level first: L1; L2 and L3; DRAM, each labelled
        slopes = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart line.mw-roof-bw")
        assert sorted(s.get_attribute("data-levels") for s in slopes) == ["DRAM", "L1", "L2 L3"]
        dashed = browser.find_elements(By.CSS_SELECTOR, "line.mw-roof-bw.mw-roof-estimated")
        assert [s.get_attribute("data-levels") for s in dashed] == ["L1"]  # the estimated one
        labels = {t.get_attribute("data-levels"): t.text
                  for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-level-label")}
        assert labels == {"L1": f"L1 64 KiB · {_si(800e9, 'B/s')} (estimated)",
                          "L2 L3": f"L2, L3 · {_si(300e9, 'B/s')} (calibrated)",
                          "DRAM": f"DRAM · {_si(20e9, 'B/s')} (calibrated)"}
        assert _labels_apart(browser, "text.mw-level-label"), labels  # staggered: none prints over another
        # (b) every point carries its row's level; from a cache, that level's color
        points = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart circle.mw-point")
        assert sorted(p.get_attribute("data-level") for p in points) == sorted(r.memory_level for r in plotted)
        for level in ("L1", "L2"):
            colored = browser.find_elements(By.CSS_SELECTOR, f"circle.mw-point.mw-cache.mw-level-{level.lower()}")
            assert len(colored) == sum(r.memory_level == level for r in plotted) > 0
        main = browser.find_elements(By.CSS_SELECTOR, "circle.mw-point.mw-memory[data-level='DRAM']")
        assert main and not browser.find_elements(By.CSS_SELECTOR, "circle.mw-cache[data-level='DRAM']")
        keys = browser.find_elements(By.CSS_SELECTOR, ".mw-legend .mw-key[data-level]")
        assert [k.get_attribute("data-level") for k in keys] == ["L1", "L2", "DRAM"]
        assert [k.text for k in keys] == ["memory-bound from L1", "memory-bound from L2", "memory-bound from DRAM"]
        # the tooltip of a point from a cache: its level, and how it fares under main memory's roof
        point = browser.find_element(By.CSS_SELECTOR, "circle.mw-point[data-level='L2']")
        row = rows[int(point.get_attribute("data-id"))]  # points carry their row's index
        assert row.memory_level == "L2" and row.in_cache
        browser.execute_script(
            "const box = arguments[0].getBoundingClientRect();"
            "arguments[0].dispatchEvent(new MouseEvent('mouseenter', {clientX: box.x + 2, clientY: box.y + 2}));",
            point)
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".mw-tooltip").is_displayed())
        tooltip = browser.find_element(By.CSS_SELECTOR, ".mw-tooltip").text
        # its roof: L2's, or a little under where a few of its bytes came cold from DRAM (then said
        # to be the levels' blend)
        mixed = abs(row.bandwidth_bytes_per_s - 300e9) > 0.1 * 300e9
        others, blend = (" and others (most of the time)", ", the levels' blend") if mixed else ("", "")
        assert f"memory level L2{others} · roof {_si(row.bandwidth_bytes_per_s, 'B/s')}{blend}" in tooltip
        assert f"against main memory's roof ({_si(20e9, 'B/s')}): {_pct(row.dram_efficiency)}" in tooltip
        browser.execute_script("document.querySelector('circle.mw-point').dispatchEvent(new MouseEvent('mouseleave'))")
        browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
        _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "levels_chart", tmp_path)
        _screenshot(browser, "memwall-tab-levels", tmp_path)
        # (c) the table's level column: each row's level, collectives none; sorted by name
        headers = [th.get_attribute("data-key") for th in browser.find_elements(By.CSS_SELECTOR, ".mw-table-box th")]
        column = headers.index("memory_level")
        assert browser.find_elements(By.CSS_SELECTOR, ".mw-table-box th")[column].text == "level"
        cells = [tr.find_elements(By.CSS_SELECTOR, "td")[column].text
                 for tr in browser.find_elements(By.CSS_SELECTOR, ".mw-table-box tbody tr.mw-row")]
        assert sorted(c.removesuffix(" +") for c in cells) == sorted(r.memory_level for r in rows)
        assert {"L1", "L2", "DRAM"} <= {c.removesuffix(" +") for c in cells}
        browser.find_element(By.CSS_SELECTOR, "th[data-key='memory_level']").click()
        first = browser.find_element(By.CSS_SELECTOR, ".mw-table-box tbody tr.mw-row").find_elements(By.TAG_NAME, "td")
        assert first[column].text == "DRAM"  # ascending by name: DRAM, L1, L2


def _duration(seconds: float) -> str:
    """format.js' duration(): three significant digits, s, ms or µs."""
    for factor, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if seconds >= factor or unit == "µs":
            return f"{f'{seconds / factor:#.3g}'.rstrip('.')} {unit}"
    raise AssertionError


def _times(value: float) -> str:
    """format.js' times(): a speed-up."""
    return f"{round(value):,}×" if value >= 100 else f"{float(f'{value:.2g}'):g}×"


def test_what_if_device_shows_the_projection_in_cards_chart_table_and_bound_changes(tensorboard, browser, tmp_path):
    """A CPU run (a 1024x1024 fp32 matmul, an add of two 4M-float vectors, 200 in-place adds on 64
    floats) with an H100 SXM5 chosen: the cards give the projected time and speed-up of /report's
    projection, the points move up to their FLOPs over their projected time (the matmul onto the
    fp32 roof; the tiny adds under it, at the launch floor), the table shows projected times, the ops
    whose bound flips are listed, and the page says a projection is a bound, not a measurement."""
    base, logdir, _ = tensorboard
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    # in fp64: its own row, not folded with the fp32 matmul's shape (one row per op, module, phase, dtype)
    c, d = torch.randn(32, 256, dtype=torch.float64), torch.randn(256, 256, dtype=torch.float64)
    x, y, small = torch.randn(1 << 22), torch.randn(1 << 22), torch.randn(64)
    with memwall.profile(logdir=logdir / "projection", summary=False, scalars=False) as prof:
        a @ b
        c @ d  # 2 x 32 x 256 x 256 FLOPs over (8192 + 65536 + 8192) x 8 B: 6.4 FLOP/B
        x + y
        for _ in range(200):
            small.add_(1.0)
        prof.step()
    deadline = time.monotonic() + 60  # the loader rescans every few seconds
    while not any(r["run"] == "projection" for r in _get_json(f"{base}/data/plugin/memwall/runs")["runs"]):  # type: ignore[index]
        assert time.monotonic() < deadline, "the run never showed up in /runs"
        time.sleep(0.5)
    measured = _get_json(f"{base}/data/plugin/memwall/report?run=projection")
    h100 = _get_json(f"{base}/data/plugin/memwall/report?run=projection&device=h100-sxm")
    assert measured["projection"] is None and measured["headline"]["projected_time_s"] is None  # type: ignore[index]
    rows = {(r["op"], r["shapes"]): r for r in h100["rows"]}  # type: ignore[index]
    mm, tiny = rows["aten.mm", "[1024, 1024] x [1024, 1024]"], rows["aten.add_", "[64]"]
    skinny = rows["aten.mm", "[32, 256] x [256, 256]"]
    # by hand (devices.csv's H100 SXM5 row): 2 * 1024^3 FLOPs / 67 TFLOP/s = 32.05 us; 200 launches x 2 us
    assert mm["projected_time_s"] == pytest.approx(32.052e-6, rel=1e-4)
    assert tiny["projected_time_s"] == pytest.approx(400e-6)

    _open_tab(browser, base)
    _choose_run(browser, "projection")
    point = f"circle.mw-point[data-id='{mm['id']}']"
    before = float(browser.find_element(By.CSS_SELECTOR, point).get_attribute("data-flops-per-s"))
    assert before == pytest.approx(measured["rows"][mm["id"]]["achieved_flops_per_s"])  # type: ignore[index]
    assert "TIME IN OPS" in browser.find_element(By.CSS_SELECTOR, ".mw-cards").text.upper()
    assert not browser.find_element(By.CSS_SELECTOR, ".mw-projection").is_displayed()
    assert "% of roof" in browser.find_element(By.CSS_SELECTOR, ".mw-table-box thead").text

    _select(browser, "select.mw-device", "h100-sxm")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".mw-projected-time"))
    head = h100["headline"]  # type: ignore[index]
    card = browser.find_element(By.CSS_SELECTOR, ".mw-projected-time .mw-card-value").text
    assert card == _duration(head["projected_time_s"])
    assert browser.find_element(By.CSS_SELECTOR, ".mw-speedup .mw-card-value").text == \
        f"{_times(head['speedup'])} faster"
    assert "TIME IN OPS" not in browser.find_element(By.CSS_SELECTOR, ".mw-cards").text.upper()
    banner = browser.find_element(By.CSS_SELECTOR, ".mw-projection").text
    assert "Projected on NVIDIA H100 SXM5 80GB: a roofline bound, not a measurement." in banner
    assert "at least 2 µs per kernel launch" in banner
    # the matmul's point moves up to 2^31 FLOPs / 32.05 us = 67 TFLOP/s: onto the fp32 roof
    after = float(browser.find_element(By.CSS_SELECTOR, point).get_attribute("data-flops-per-s"))
    assert after == pytest.approx(67e12, rel=1e-4) and after > 100 * before
    roof = browser.find_element(By.CSS_SELECTOR, "line.mw-roof[data-dtype~='fp32']")
    cy = float(browser.find_element(By.CSS_SELECTOR, point).get_attribute("cy"))
    assert cy == pytest.approx(float(roof.get_attribute("y1")), abs=1.0)
    # the tiny adds sit under their roof, at the launch floor: 200 x 64 FLOPs / 400 us = 32 MFLOP/s
    add = float(browser.find_element(By.CSS_SELECTOR, f"circle.mw-point[data-id='{tiny['id']}']")
                .get_attribute("data-flops-per-s"))
    assert add == pytest.approx(200 * 64 / 400e-6)
    # so does the skinny matmul: its 655,360 B take 196 ns at 3.35 TB/s, under one launch's 2 us
    assert skinny["projected_time_s"] == pytest.approx(2e-6)
    floored = browser.find_elements(By.CSS_SELECTOR, "circle.mw-point.mw-floored")
    assert sorted(p.get_attribute("data-id") for p in floored) == sorted([str(tiny["id"]), str(skinny["id"])])
    legend = browser.find_element(By.CSS_SELECTOR, ".mw-legend").text
    assert "projected time" in legend and "at the launch floor" in legend
    # the table: projected time and speed-up where the roof was
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, ".mw-table-box th")]
    assert headers[-2:] == ["projected", "speed-up"] and "% of roof" not in headers
    line = browser.find_element(By.CSS_SELECTOR, f".mw-table-box tr.mw-row[data-id='{mm['id']}']")
    assert [td.text for td in line.find_elements(By.TAG_NAME, "td")][-2:] == [
        _duration(mm["projected_time_s"]), _times(mm["speedup"])]
    # the ops whose bound flips between this CPU's roofs and the H100's: the skinny matmul's 6.4
    # FLOP/B are under the H100's fp64 ridge (67 / 3.35 = 20 FLOP/B), over this CPU's if it is lower
    changes = h100["projection"]["bound_changes"]  # type: ignore[index]
    assert skinny["bound"] == "memory"
    assert (skinny["id"] in [c["id"] for c in changes]) == (measured["rows"][skinny["id"]]["bound"] == "compute")  # type: ignore[index]
    title = browser.find_element(By.CSS_SELECTOR, ".mw-changes-part h2").text
    assert title == f"Ops that change side of the ridge on NVIDIA H100 SXM5 80GB: {len(changes)}"
    listed = browser.find_elements(By.CSS_SELECTOR, "tr.mw-change")
    assert [int(tr.get_attribute("data-id")) for tr in listed] == [c["id"] for c in changes][:50]
    browser.execute_script("window.scrollTo(0, 0)")
    _screenshot(browser, "memwall-tab-projection", tmp_path)
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "projection_chart", tmp_path)
    # "in bf16": the projected time of /report's bf16 what-if (the matmul at 989 TFLOP/s, 2-byte tensors)
    bf16 = _get_json(f"{base}/data/plugin/memwall/report?run=projection&device=h100-sxm&dtype=bf16")
    _select(browser, "select.mw-dtype", "bf16")
    WebDriverWait(browser, 60).until(lambda d: "computed in bfloat16" in d.find_element(By.CSS_SELECTOR,
                                                                                       ".mw-projection").text)
    assert browser.find_element(By.CSS_SELECTOR, ".mw-projected-time .mw-card-value").text == \
        _duration(bf16["headline"]["projected_time_s"])  # type: ignore[index]
    assert bf16["headline"]["projected_time_s"] < head["projected_time_s"]  # type: ignore[index]
    _select(browser, "select.mw-dtype", "")
    WebDriverWait(browser, 60).until(  # the controls are rebuilt once the view has loaded
        lambda d: d.find_elements(By.CSS_SELECTOR, "select.mw-device")
        and "bfloat16" not in d.find_element(By.CSS_SELECTOR, ".mw-projection").text)
    # back as measured: the measurement again
    _select(browser, "select.mw-device", "")
    WebDriverWait(browser, 60).until(
        lambda d: "TIME IN OPS" in d.find_element(By.CSS_SELECTOR, ".mw-cards").text.upper())
    assert not browser.find_element(By.CSS_SELECTOR, ".mw-projection").is_displayed()
    assert float(browser.find_element(By.CSS_SELECTOR, point).get_attribute("data-flops-per-s")) == \
        pytest.approx(before)


def _speedup(value: float) -> str:
    """compare.js' speedup(): three significant digits and a times sign."""
    return f"{float(f'{value:.3g}'):g}×"


def test_compare_mode_shows_the_speedups_and_the_matmuls_that_crossed_the_ridge(browser, tmp_path):
    """The MLP at batch 1 (the baseline) and at batch 8, on a device whose ridge is at 2 FLOP/B:
    compare mode shows each phase's speed-up (time at batch 1 / time at batch 8, from the two
    reports), the four matmuls that went from memory- to compute-bound, and both runs' points on
    one roofline, the baseline's hollow."""
    logdir = tmp_path / "batches"
    runs = make_batch_runs(logdir)
    reports = {b: merge_reports(memwall.load_report(f) for f in (path / "plugins" / "memwall").glob("*.json"))
               for b, path in runs.items()}
    times = {b: {g.key: g.time_s for g in rep.group_by("phase")} for b, rep in reports.items()}
    with running_tensorboard(logdir, timeout=60) as (_, port):
        _open_tab(browser, f"http://127.0.0.1:{port}")
        _choose_run(browser, "b8")
        _select(browser, "select.mw-baseline", "b1")
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".mw-speedup-total")
                                         and d.find_elements(By.CSS_SELECTOR, "tr.mw-bound-change"))
        assert browser.find_element(By.CSS_SELECTOR, ".mw-compare-part h2").text == "Compared with b1 (the baseline)"
        total = browser.find_element(By.CSS_SELECTOR, ".mw-speedup-total .mw-card-value").text
        assert total == _speedup(reports[1].total_time_s / reports[8].total_time_s)
        cards = {c.get_attribute("data-phase"): c.find_element(By.CSS_SELECTOR, ".mw-card-value").text
                 for c in browser.find_elements(By.CSS_SELECTOR, ".mw-speedup-phase")}
        assert set(cards) == set(times[1]) >= {"forward", "backward", "optimizer"}
        for phase, shown in cards.items():
            assert shown == _speedup(times[1][phase] / times[8][phase]), phase
        # a phase this run is slower in is marked so (red), one it is faster in too (green)
        for card in browser.find_elements(By.CSS_SELECTOR, ".mw-speedup-phase"):
            ratio = times[1][card.get_attribute("data-phase")] / times[8][card.get_attribute("data-phase")]
            marks = set(card.get_attribute("class").split()) & {"mw-slower", "mw-faster"}
            assert marks == ({"mw-slower"} if ratio < 1 / 1.05 else {"mw-faster"} if ratio > 1.05 else set())
        changes = browser.find_elements(By.CSS_SELECTOR, "tr.mw-bound-change")
        assert {(r.get_attribute("data-op"), r.get_attribute("data-module"), r.get_attribute("data-phase"))
                for r in changes} == BATCH_MATMULS
        assert all(r.find_elements(By.TAG_NAME, "td")[-1].text == "memory → compute" for r in changes)
        heading = browser.find_element(By.CSS_SELECTOR, ".mw-compare h3.mw-bound-title").text
        assert heading.startswith("Bound changes: 4 ops crossed the ridge")
        losses = browser.find_element(By.CSS_SELECTOR, ".mw-compare-losses").text
        assert "mm" in losses and "+" in losses
        # both runs on one roofline: this run's points, and the baseline's hollow ones
        folded = {b: [f.row for f in rep.folded()] for b, rep in reports.items()}  # the tab's rows: shapes folded
        plotted = {b: [r for r in rows if r.flops and r.bytes > 0 and r.time_s > 0] for b, rows in folded.items()}
        assert len(browser.find_elements(By.CSS_SELECTOR, "circle.mw-baseline")) == len(plotted[1])
        assert len(browser.find_elements(By.CSS_SELECTOR, "circle.mw-point:not(.mw-baseline)")) == len(plotted[8])
        # the baseline's forward matmuls are memory-bound, this run's compute-bound
        for b, css in ((1, "circle.mw-baseline"), (8, "circle.mw-point:not(.mw-baseline)")):
            bounds = {p.get_attribute("data-id"): p.get_attribute("class")
                      for p in browser.find_elements(By.CSS_SELECTOR, css)}
            for i, r in enumerate(folded[b]):
                if r.op == "aten.addmm":
                    assert ("mw-baseline-memory" if b == 1 else "mw-compute") in bounds[str(i)].split()
        legend = browser.find_element(By.CSS_SELECTOR, ".mw-legend").text
        assert f"baseline: b1 ({len(plotted[1])} points)" in legend
        _screenshot(browser, "memwall-tab-compare", tmp_path)
        browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
        _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "compare_chart", tmp_path)
        # no baseline: compare mode leaves, the chart keeps this run's points only
        _select(browser, "select.mw-baseline", "")
        WebDriverWait(browser, 60).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "circle.mw-baseline"))
        assert not browser.find_element(By.CSS_SELECTOR, ".mw-compare-part").is_displayed()


# --- the roofline chart: program points, selection, roofs in use, filters, zoom -------------------


def _click(driver, element) -> None:
    """A click as the pointer sends it (SVG shapes can lie under labels that take no clicks)."""
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", element)


# --- the operator table's roofline columns, the findings, dark mode -----------------------------


def _train_report(logdir: Path) -> memwall.Report:
    files = sorted((logdir / "train" / "plugins" / "memwall").glob("*.json"))
    return merge_reports(memwall.load_report(f) for f in files)


def _chart_range(driver) -> list[float]:
    chart = driver.find_element(By.CSS_SELECTOR, ".mw-chart-box svg.mw-chart")
    return [float(chart.get_attribute(f"data-{k}")) for k in ("x0", "x1", "y0", "y1")]


def test_chart_draws_the_run_its_phases_and_steps_and_a_click_selects_between_point_and_row(
        tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "train")
    report = _train_report(logdir)
    rows = [f.row for f in report.folded()]  # the tab's: input shapes folded
    marks = [(g.get_attribute("data-kind"), g.get_attribute("data-label"))
             for g in browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart g.mw-program")]
    assert [label for kind, label in marks if kind == "window"] == ["whole run"]
    phases = {r.phase for r in report.rows if r.flops}
    assert sorted(label for kind, label in marks if kind == "phase") == sorted(phases)
    assert [label for kind, label in marks if kind == "step"] == [f"step {s}" for s in report.steps] != []
    named = {t.text for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-program-label")}
    assert {"whole run", "forward", "backward", "step 0"} <= named
    # the program points are not operator points: one operator point per plotted row still
    plotted = [i for i, r in enumerate(rows) if r.flops and r.bytes > 0 and r.time_s > 0]
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart circle.mw-point")) == len(plotted)
    browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart_program_points", tmp_path)

    # a click on the point of the longest matmul selects its row (and only it) in the table
    matmul = max((i for i in plotted if rows[i].op == "aten.addmm"), key=lambda i: rows[i].time_s)
    _click(browser, browser.find_element(By.CSS_SELECTOR, f"circle.mw-point[data-id='{matmul}']"))
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row.mw-selected"))
    selected = browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row.mw-selected")
    assert [tr.get_attribute("data-id") for tr in selected] == [str(matmul)]
    assert "mw-selected" in browser.find_element(By.CSS_SELECTOR, f"circle.mw-point[data-id='{matmul}']") \
        .get_attribute("class")
    # a click on another row marks its point instead
    other = next(i for i in plotted if i != matmul)
    row = browser.find_element(By.CSS_SELECTOR, f"tbody tr.mw-row[data-id='{other}']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
    row.click()
    WebDriverWait(browser, 30).until(lambda d: [c.get_attribute("data-id") for c in d.find_elements(
        By.CSS_SELECTOR, "circle.mw-point.mw-selected")] == [str(other)])
    assert [tr.get_attribute("data-id") for tr in browser.find_elements(
        By.CSS_SELECTOR, "tbody tr.mw-row.mw-selected")] == [str(other)]
    # module x phase points: the first Linear's forward and backward apart, labelled by name and phase
    _select(browser, "select.mw-points", "module_phase")
    members = {}
    for r in rows:
        members.setdefault((r.module, r.phase), []).append(r)
    groups = [key for key, rows in members.items()
              if (g := group_rows("", rows)).flops and g.bytes > 0 and g.time_s > 0]
    points = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart circle.mw-point")
    assert sorted((p.get_attribute("data-id"), p.get_attribute("data-phase")) for p in points) == sorted(groups)
    labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-point-label")]
    assert "0 · forward" in labels and "0 · backward" in labels
    browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart_module_phase", tmp_path)
    _select(browser, "select.mw-points", "op")


#: A device whose fp32 peak is an estimate and whose 16- and 8-bit peaks are from a datasheet
ROOFS_DEVICE = DeviceSpec(
    key="test-roofs", name="a test device with four peaks", kind="cpu",
    peaks=(("fp32", Figure(400e9, ESTIMATED)), ("bf16", Figure(3.2e12, DATASHEET)), ("fp16", Figure(1.6e12, DATASHEET)),
           ("int8", Figure(6.4e12, DATASHEET))),
    bandwidth=Figure(50e9, DATASHEET), source="a test's round figures",
)


def test_chart_draws_only_the_roofs_in_use_estimated_ones_dashed(browser, tmp_path):
    """fp32 ops alone (a matmul and an add) on a device with fp32, bf16, fp16 and int8 peaks: only
    the fp32 roof is drawn, dashed and labelled as the estimate it is; on an H100 (datasheet
    figures) the fp32 roof is solid and says where it came from."""
    logdir = tmp_path / "logdir"
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    with memwall.profile(logdir=logdir / "fp32", device=ROOFS_DEVICE, summary=False, scalars=False) as prof:
        for _ in range(2):
            (a @ b).add_(1.0)
            prof.step()
    with running_tensorboard(logdir, timeout=60) as (_, port):
        base = f"http://127.0.0.1:{port}"
        data = _get_json(f"{base}/data/plugin/memwall/report?run=fp32")
        assert {r["dtype"] for r in data["rows"] if r["flops"]} == {"float32"}
        assert {p["dtype"] for p in data["device"]["peaks"]} == {"fp32", "bf16", "fp16", "int8"}
        _open_tab(browser, base)
        roofs = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart line.mw-roof[data-dtype]")
        assert [r.get_attribute("data-dtype") for r in roofs] == ["fp32"]
        assert roofs[0].get_attribute("stroke-dasharray") == "6 4"
        assert browser.execute_script("return getComputedStyle(arguments[0]).strokeDasharray", roofs[0]) != "none"
        labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "text.mw-roof-label[data-dtype]")]
        assert labels == [f"fp32 {_si(400e9, 'FLOP/s')} (estimated)"]
        # the bandwidth slope (a datasheet figure) is solid and says so
        slope = browser.find_element(By.CSS_SELECTOR, "svg.mw-chart line.mw-roof-bw")
        assert slope.get_attribute("stroke-dasharray") is None
        slope_labels = browser.find_elements(By.CSS_SELECTOR, "text.mw-level-label")
        assert any(t.text.endswith("(datasheet)") for t in slope_labels)
        browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
        _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart_fp32_roofs", tmp_path)
        _select(browser, "select.mw-device", "h100-sxm")
        WebDriverWait(browser, 60).until(lambda d: "H100" in d.find_element(By.CSS_SELECTOR, ".mw-cards").text)
        roofs = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart line.mw-roof[data-dtype]")
        assert [r.get_attribute("data-dtype") for r in roofs] == ["fp32"]
        assert roofs[0].get_attribute("stroke-dasharray") is None
        assert browser.execute_script("return getComputedStyle(arguments[0]).strokeDasharray", roofs[0]) == "none"
        label = browser.find_element(By.CSS_SELECTOR, "text.mw-roof-label[data-dtype]").text
        assert label.startswith("fp32 ") and label.endswith("(datasheet)")
        browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
        _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart_h100_whatif", tmp_path)


def test_chart_filters_hide_points_and_a_drag_zooms(tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    _open_tab(browser, base)
    _choose_run(browser, "train")
    data = _get_json(f"{base}/data/plugin/memwall/report?run=train")
    plotted = [r for r in data["rows"] if r["plotted"]]
    families = {r["family"] for r in plotted}
    assert "matmul" in families and len(families) > 1
    css = "svg.mw-chart circle.mw-point"
    assert len(browser.find_elements(By.CSS_SELECTOR, css)) == len(plotted)
    # untick matmul: its points go, every other stays
    browser.find_element(By.CSS_SELECTOR, "input[data-filter='family:matmul']").click()
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css))
                                     == sum(r["family"] != "matmul" for r in plotted))
    assert not browser.find_elements(By.CSS_SELECTOR, "circle.mw-point[data-family='matmul']")
    # and the memory-bound ones too: the compute-bound non-matmuls are left
    browser.find_element(By.CSS_SELECTOR, "input[data-filter='bound:memory']").click()
    left = [r for r in plotted if r["family"] != "matmul" and r["bound"] != "memory"]
    WebDriverWait(browser, 30).until(lambda d: sorted(c.get_attribute("data-id") for c in d.find_elements(
        By.CSS_SELECTOR, css)) == sorted(str(r["id"]) for r in left))
    for key in ("family:matmul", "bound:memory"):
        browser.find_element(By.CSS_SELECTOR, f"input[data-filter='{key}']").click()
    WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) == len(plotted))

    # drag a rectangle over the middle of the plot: the axes span less, and fewer points show
    before = _chart_range(browser)
    chart = browser.find_element(By.CSS_SELECTOR, ".mw-chart-box svg.mw-chart")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
    width, height = chart.size["width"], chart.size["height"]
    ActionChains(browser).move_to_element_with_offset(chart, int(-width * 0.25), int(-height * 0.25)) \
        .click_and_hold().move_by_offset(int(width * 0.3), int(height * 0.3)).release().perform()
    WebDriverWait(browser, 30).until(lambda d: _chart_range(d) != before)
    after = _chart_range(browser)
    assert before[0] < after[0] < after[1] < before[1] and before[2] < after[2] < after[3] < before[3]
    assert browser.find_element(By.CSS_SELECTOR, "button.mw-zoom-reset").is_enabled()
    ticks = browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart text.mw-tick")
    assert len(ticks) >= 4  # a zoomed axis still has ticks (2 and 5 times the decades)
    browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart_zoomed", tmp_path)
    # a double-click zooms back out
    ActionChains(browser).double_click(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box svg.mw-chart")).perform()
    WebDriverWait(browser, 30).until(lambda d: _chart_range(d) == before)
    assert not browser.find_element(By.CSS_SELECTOR, "button.mw-zoom-reset").is_enabled()


def _row_title(r) -> str:
    """table.js' row tooltip: what identifies the row."""
    return f"{r.op}.{r.overload} {r.shapes} ({r.dtype}) · {r.module or '(top level)'} · {r.phase}"


def test_operator_table_says_how_far_each_row_is_from_its_roofs_and_sorts_by_headroom(tensorboard, browser, tmp_path):
    """Each row's achieved rates, their shares of its peaks and its headroom (measured time minus
    the roofline's least time: what a kernel at the roof would save), from the saved report's
    rows; sorting by headroom puts the largest first."""
    base, logdir, _ = tensorboard
    report = _train_report(logdir)
    _open_tab(browser, base)
    _choose_run(browser, "train")
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, ".mw-table-box th")]
    assert headers == ["op", "module", "phase", "calls", "time", "FLOPs", "bytes", "FLOP/B", "FLOP/s", "B/s",
                       "% peak FLOP/s", "% peak B/s", "% of roof", "headroom", "bound", "level"]
    browser.find_element(By.CSS_SELECTOR, "th[data-key='headroom_s']").click()
    assert browser.find_element(By.CSS_SELECTOR, "th[data-key='headroom_s']").get_attribute("data-direction") == "desc"
    rows = [f.row for f in report.folded()]  # the tab's rows: one per (op, module, phase, dtype)
    by_title = {_row_title(r): r for r in rows}
    assert len(by_title) == len(rows)  # each row told apart by its tooltip
    lines = browser.find_elements(By.CSS_SELECTOR, ".mw-table-box tbody tr.mw-row")
    shown = [by_title[tr.get_attribute("title")] for tr in lines]
    assert len(shown) == len(rows)

    def headroom(r):
        return None if r.roofline_time_s is None else r.time_s - r.roofline_time_s

    known = [headroom(r) for r in shown if headroom(r) is not None]
    assert known == sorted(known, reverse=True) and len(known) > 5
    assert all(headroom(r) is None for r in shown[len(known):])  # uncounted rows last
    top = max((r for r in rows if r.roofline_time_s is not None), key=headroom)
    assert shown[0] is top
    keys = [th.get_attribute("data-key") for th in browser.find_elements(By.CSS_SELECTOR, ".mw-table-box th")]
    cells = dict(zip(keys, [td.text for td in lines[0].find_elements(By.TAG_NAME, "td")]))
    assert cells["op"] == top.op.removeprefix("aten.") and cells["module"] == (top.module or "(top level)")
    assert cells["phase"] == top.phase
    assert cells["time_s"] == _duration(top.time_s)
    assert cells["headroom_s"] == _duration(top.time_s - top.roofline_time_s)
    assert cells["achieved_flops_per_s"] == _si(top.flops / top.time_s, "").strip()
    assert cells["achieved_bytes_per_s"] == _si(top.bytes / top.time_s, "B/s")
    assert cells["peak_flops_fraction"] == _share(top.flops / top.time_s / top.peak_flops_per_s)
    assert cells["peak_bandwidth_fraction"] == _share(top.bytes / top.time_s / top.bandwidth_bytes_per_s)
    assert cells["efficiency"] == _share(top.efficiency)
    browser.execute_script("document.querySelector('.mw-table-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-table-box"), "table-headroom-light", tmp_path)


def _cells(line) -> dict[str, str]:
    return {td.get_attribute("data-key"): td.text for td in line.find_elements(By.TAG_NAME, "td")}


def test_a_row_with_several_input_shapes_expands_into_one_line_per_shape(tensorboard, browser, tmp_path):
    """The train run's matmuls ran with two input shapes in one module and phase: the tab shows
    one row for each, and its ▸ shows each shape's calls, time, FLOPs and bytes, from the saved
    report's own rows for those shapes."""
    base, logdir, _ = tensorboard
    report = _train_report(logdir)
    several = [f for f in report.folded() if len(f.variants) > 1]
    assert several  # mm in the backward pass: the weight's gradient and the input's
    _open_tab(browser, base)
    _choose_run(browser, "train")
    expandable = browser.find_elements(By.CSS_SELECTOR, ".mw-table-box tr.mw-row.mw-has-variants")
    assert sorted(tr.get_attribute("title") for tr in expandable) == sorted(_row_title(f.row) for f in several)
    assert not browser.find_elements(By.CSS_SELECTOR, "tr.mw-variant")
    folded = several[0]
    line = next(tr for tr in expandable if tr.get_attribute("title") == _row_title(folded.row))
    cell = line.find_element(By.CSS_SELECTOR, "td.mw-expandable")
    assert cell.text == folded.row.op.removeprefix("aten.") and cell.get_attribute("aria-expanded") == "false"
    parent = line.get_attribute("data-id")
    cell.click()  # the table is drawn again: its lines are new elements
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.mw-variant"))
    assert browser.find_element(By.CSS_SELECTOR, f"tr.mw-row[data-id='{parent}'] td.mw-expandable") \
        .get_attribute("aria-expanded") == "true"
    subs = browser.find_elements(By.CSS_SELECTOR, f"tr.mw-variant[data-parent='{parent}']")
    assert len(subs) == len(browser.find_elements(By.CSS_SELECTOR, "tr.mw-variant")) == len(folded.variants)
    # right under their row, longest first (the table's sort), each with its own figures
    following = browser.execute_script(
        "const rows = [...document.querySelectorAll('.mw-table-box tbody tr')];"
        "const at = rows.findIndex((tr) => tr.dataset.id === arguments[0] && tr.classList.contains('mw-row'));"
        "return rows.slice(at + 1, at + 1 + arguments[1]).map((tr) => tr.className);", parent, len(subs))
    assert all("mw-variant" in c.split() for c in following)
    variants = sorted(folded.variants, key=lambda v: -v.time_s)
    for sub, v in zip(subs, variants):
        cells = _cells(sub)
        assert cells["op"] == v.shapes and sub.get_attribute("title") == _row_title(v)
        assert cells["calls"] == f"{v.calls:,}" and cells["time_s"] == _duration(v.time_s)
        assert cells["flops"] == _si(v.flops, "").strip() and cells["bytes"] == _si(v.bytes, "B")
        assert cells["module"] == cells["phase"] == ""  # its row's
    assert sum(v.calls for v in folded.variants) == folded.row.calls
    browser.execute_script("document.querySelector('.mw-table-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-table-box"), "table-variants-light", tmp_path)
    # sorted again, the lines follow their row; a second click folds them away
    browser.find_element(By.CSS_SELECTOR, "th[data-key='flops']").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, f"tr.mw-variant[data-parent='{parent}']")) == len(variants)
    browser.find_element(By.CSS_SELECTOR, f"tr.mw-row[data-id='{parent}'] td.mw-expandable").click()
    WebDriverWait(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "tr.mw-variant"))


def test_what_to_do_panel_shows_the_consoles_findings(tensorboard, browser, tmp_path):
    base, logdir, _ = tensorboard
    expected = findings(_train_report(logdir))
    assert expected  # the tiny MLP on estimated CPU roofs has a few
    _open_tab(browser, base)
    _choose_run(browser, "train")
    part = browser.find_element(By.CSS_SELECTOR, ".mw-findings-part")
    assert part.is_displayed() and part.find_element(By.TAG_NAME, "h2").text == "What to do"
    items = [li.text for li in part.find_elements(By.CSS_SELECTOR, "li.mw-finding")]
    assert items == [f.replace("`", "") for f in expected]
    # a `name` is set as code, as text
    quoted = [piece for f in expected for i, piece in enumerate(f.split("`")) if i % 2 and piece]
    assert [c.text for c in part.find_elements(By.TAG_NAME, "code")] == quoted
    _element_screenshot(part, "findings-light", tmp_path)
    # under a phase filter the findings stay the whole run's, and the title says so
    _select(browser, "select.mw-phase", "backward")
    WebDriverWait(browser, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".mw-findings-part h2").text
                                     == "What to do (the whole run, not only backward)")
    assert [li.text for li in part.find_elements(By.CSS_SELECTOR, "li.mw-finding")] == items
    # a hostile module name in a finding stays text
    _choose_run(browser, "evil")
    evil = findings(memwall.load_report(next((logdir / "evil" / "plugins" / "memwall").glob("*.json"))))
    items = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "li.mw-finding")]
    assert items == [f.replace("`", "") for f in evil]
    assert browser.find_elements(By.TAG_NAME, "img") == []


def _rgb(css: str) -> tuple[int, ...]:
    """"rgb(48, 48, 48)" -> (48, 48, 48)."""
    return tuple(int(float(v)) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def _luminance(css: str) -> float:
    r, g, b = _rgb(css)
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def _colors(driver) -> dict[str, float]:
    """The luminance (0 black, 1 white) of the tab's background, text, a card, the table's head and
    its cells, and the chart's grid lines."""
    return driver.execute_script("""
        const style = (css, prop) => getComputedStyle(document.querySelector(css))[prop];
        return {body: style('body', 'backgroundColor'), text: style('body', 'color'),
                card: style('.mw-card', 'backgroundColor'), head: style('.mw-table-box th', 'backgroundColor'),
                cell: style('.mw-table-box td', 'color'),
                scroller: style('.mw-table-box .mw-scroller', 'backgroundColor'),
                grid: style('line.mw-grid', 'stroke')};""")


def test_dark_mode_follows_tensorboards(tensorboard, browser, tmp_path):
    """TensorBoard's dark mode (`?darkMode=true`, its setting, or the browser's preference) puts a
    `dark-mode` class on its page's body; the tab follows it, and follows it back."""
    base, _, _ = tensorboard
    _open_tab(browser, base, query="?darkMode=true")
    browser.switch_to.default_content()
    assert "dark-mode" in browser.find_element(By.TAG_NAME, "body").get_attribute("class").split()
    browser.switch_to.frame(browser.find_elements(By.TAG_NAME, "iframe")[0])
    _choose_run(browser, "train")
    WebDriverWait(browser, 10).until(lambda d: "mw-dark" in d.find_element(By.TAG_NAME, "html").get_attribute("class"))
    dark = {k: _luminance(v) for k, v in _colors(browser).items()}
    assert dark["body"] < 0.25 and dark["card"] < 0.3 and dark["head"] < 0.35 and dark["scroller"] < 0.3, dark
    assert dark["text"] > 0.8 and dark["cell"] > 0.8, dark
    assert dark["grid"] < 0.45, dark  # grid lines faint on the dark chart, not white
    browser.execute_script("window.scrollTo(0, 0)")
    _screenshot(browser, "memwall-tab-dark", tmp_path)
    browser.find_element(By.CSS_SELECTOR, ".mw-table-box td.mw-expandable").click()
    browser.execute_script("document.querySelector('.mw-table-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-table-box"), "table-dark", tmp_path)
    browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart-dark", tmp_path)
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.mw-memory-row"))
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-memory-part"), "memory-dark", tmp_path)
    # TensorBoard switched back to light (its page's class goes): the tab follows without a reload
    browser.switch_to.default_content()
    browser.execute_script("document.body.classList.remove('dark-mode')")
    browser.switch_to.frame(browser.find_elements(By.TAG_NAME, "iframe")[0])
    WebDriverWait(browser, 10).until(
        lambda d: "mw-dark" not in d.find_element(By.TAG_NAME, "html").get_attribute("class"))
    light = {k: _luminance(v) for k, v in _colors(browser).items()}
    assert light["body"] > 0.9 and light["card"] > 0.95 and light["text"] < 0.2, light
    browser.execute_script("window.scrollTo(0, 0)")
    _screenshot(browser, "memwall-tab-light", tmp_path)


# --- torch.profiler traces the tab finds in the logdir ----------------------------------------------


def test_a_torch_profiler_trace_in_the_logdir_is_analysed_and_shown_as_a_run(browser, tmp_path):
    """A logdir torch.profiler alone wrote (no memwall report): each trace is listed as not yet
    analysed; choosing one analyses it on the server and shows it as a memwall run, with a banner
    naming the file, where the times came from and what is uncounted. A damaged trace is its
    run's error; a trace named like HTML stays text."""
    logdir = tmp_path / "traces"
    made = make_trace_runs(logdir)
    (logdir / "evil").mkdir()
    evil = logdir / "evil" / f"{XSS_RUN}.pt.trace.json.gz"
    evil.write_bytes(made["hf"].read_bytes())
    name = made["hf"].relative_to(logdir).as_posix()
    rows = [f.row for f in memwall.analyze_trace(made["hf"]).folded()]
    with running_tensorboard(logdir, timeout=60) as (_, port):
        browser.get("about:blank")
        browser.get(f"http://127.0.0.1:{port}/#memwall")
        browser.switch_to.frame(WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))[0])
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "select.mw-run option"))
        options = browser.find_elements(By.CSS_SELECTOR, "select.mw-run option")
        labels = {o.get_attribute("value"): o.text for o in options}
        assert labels[name] == f"{name} — torch.profiler trace, not yet analysed"
        assert labels[f"evil/{XSS_RUN}.pt.trace.json.gz"].startswith(f"evil/{XSS_RUN}.pt.trace.json.gz — ")
        # the first run in the list is the damaged trace: its error, and no view
        WebDriverWait(browser, 60).until(
            lambda d: "cannot be shown" in d.find_element(By.CSS_SELECTOR, ".mw-status").text)
        status = browser.find_element(By.CSS_SELECTOR, ".mw-status").text
        assert "damaged/worker0.1.pt.trace.json.gz: a damaged or truncated gzip file" in status
        assert str(logdir) not in status and not browser.find_elements(By.CSS_SELECTOR, ".mw-card")
        _screenshot(browser, "memwall-tab-trace-damaged", tmp_path)
        _select(browser, "select.mw-run", name)
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row")
                                         and d.find_element(By.CSS_SELECTOR, ".mw-trace").is_displayed())
        banner = browser.find_element(By.CSS_SELECTOR, ".mw-trace").text
        assert banner.startswith(f"Analysed from a torch.profiler trace: {made['hf'].name}")
        assert "times from CPU op spans" in banner and "Every call counted" in banner
        assert len(browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row")) == len(rows)
        plotted = [r for r in rows if r.flops and r.bytes > 0 and r.time_s > 0]
        assert len(browser.find_elements(By.CSS_SELECTOR, "svg.mw-chart circle.mw-point")) == len(plotted) > 5
        label = browser.find_element(By.CSS_SELECTOR, f"select.mw-run option[value='{name}']").text
        assert label == f"{name} — torch.profiler trace, analysed by memwall"
        assert not browser.find_elements(By.CSS_SELECTOR, "select.mw-rank, select.mw-window")
        _screenshot(browser, "memwall-tab-trace", tmp_path)
        # a trace without shapes: its ops listed uncounted, and what to do
        _select(browser, "select.mw-run", made["noshapes"].relative_to(logdir).as_posix())
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".mw-trace-hint"))
        hint = browser.find_element(By.CSS_SELECTOR, ".mw-trace-hint").text
        assert "record_shapes=True" in hint
        assert "uncounted" in browser.find_element(By.CSS_SELECTOR, ".mw-trace-uncounted").text
        _screenshot(browser, "memwall-tab-trace-noshapes", tmp_path)
        # a trace named like HTML, its analysis slowed down (the page's answers held back 3 s): the
        # tab says it is analysing, shows nothing of the run before, and stays usable meanwhile
        browser.execute_script(
            "const real = window.fetch; window.fetch = (url, ...rest) => String(url).startsWith('./report') ?"
            " new Promise((done) => setTimeout(() => done(real(url, ...rest)), 3000)) : real(url, ...rest);")
        _select(browser, "select.mw-run", f"evil/{XSS_RUN}.pt.trace.json.gz")
        status = browser.find_element(By.CSS_SELECTOR, ".mw-status").text
        assert status.startswith(f"Analysing {XSS_RUN}.pt.trace.json.gz (") and "a torch.profiler trace" in status
        assert not browser.find_elements(By.CSS_SELECTOR, "tbody tr.mw-row, .mw-card")
        assert browser.find_element(By.CSS_SELECTOR, "select.mw-run").is_enabled()
        _screenshot(browser, "memwall-tab-trace-analysing", tmp_path)
        WebDriverWait(browser, 60).until(lambda d: XSS_RUN in d.find_element(By.CSS_SELECTOR, ".mw-trace").text)
        assert browser.find_elements(By.CSS_SELECTOR, "img, [onerror]") == []
        assert browser.execute_script("return [window.__mw_xss, window.top.__mw_xss]") == [None, None]


def test_a_compiled_region_row_shows_the_ops_it_fused_and_what_compiling_saved(browser, tmp_path):
    """A region torch.compile fused (relu(x * 2 + 1) on 2^16 fp32 elements): the table's row names
    the eager ops it fused and, in its bytes cell, the traffic compiling saved against them run
    one by one, hand-counted: fused, x read once and the result written once (2 x 4 x 2^16 B);
    eagerly, each of the 3 ops reads and writes a tensor (6 x 4 x 2^16 B): -66.7%."""
    n = 2**16
    torch._dynamo.reset()
    fn = torch.compile(lambda x: torch.relu(x * 2 + 1))
    x = torch.randn(n)
    fn(x)
    logdir = tmp_path / "compiled"
    with memwall.profile(logdir=logdir / "relu", summary=False):
        fn(x)
    torch._dynamo.reset()
    with running_tensorboard(logdir, timeout=60) as (_, port):
        _open_tab(browser, f"http://127.0.0.1:{port}")
        _choose_run(browser, "relu")
        # the kernel's row (the region's own row, its wrapper's time, fused nothing)
        (line,) = [tr for tr in browser.find_elements(By.CSS_SELECTOR, ".mw-table-box tbody tr.mw-row")
                   if "inductor_compiled_code" in _cells(tr)["op"] and "fused 3 eager op calls" in
                   (tr.get_attribute("title") or "")]
        title = line.get_attribute("title")
        assert "fused 3 eager op calls: mul ×1, add ×1, relu ×1" in title, title
        assert f"eagerly they move {_si(6 * 4 * n, 'B')}; compiling saved {_si(4 * 4 * n, 'B')} (−66.7%)" in title
        # memory-bound (1 FLOP per 8 bytes): on main memory's roofline the fused call takes a third
        assert "least time on main memory's roofline: " in title and "compiled (−66.7%)" in title, title
        cell = line.find_element(By.CSS_SELECTOR, "td[data-key='bytes']")
        assert cell.text == f"{_si(2 * 4 * n, 'B')} −66.7%"
        assert cell.find_element(By.CSS_SELECTOR, ".mw-fusion-saved").text == "−66.7%"
        assert f"compiling saved {_si(4 * 4 * n, 'B')}" in cell.get_attribute("title")
        _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-table-box"), "table-compiled-region", tmp_path)


# --- the tab's edges: the keyboard, runs without memory or FLOPs, crashed runs, broken traces ------


@pytest.fixture(scope="module")
def edges(tmp_path_factory):
    """One TensorBoard over the GPT-2 memory runs (gpt, tight, old, nomemory), the edge runs
    (mlp, crashed, nothing) and torch.profiler traces (hf, noshapes, damaged); the runs' names as
    the tab lists them."""
    logdir = tmp_path_factory.mktemp("edges")
    memory = make_memory_runs(logdir)["memory"]
    make_edge_runs(logdir)
    traces = make_trace_runs(logdir)
    names = {key: traces[key].relative_to(logdir).as_posix() for key in ("hf", "damaged")}
    with running_tensorboard(logdir, timeout=60) as (_, port):
        yield f"http://127.0.0.1:{port}", logdir, memory, names


def _settle(driver) -> None:
    """Two animation frames: a scroll's event and what it redraws have run."""
    driver.execute_async_script("const done = arguments[0];"
                                "requestAnimationFrame(() => requestAnimationFrame(() => done()));")


def _active(driver) -> dict:
    return driver.execute_script(
        "const a = document.activeElement, tr = a.closest('tr');"
        "return {tag: a.tagName, cls: a.className || '', row: tr ? tr.dataset.id || null : null,"
        "        inTable: Boolean(a.closest('.mw-table-box')), inMemory: Boolean(a.closest('.mw-memory-part'))};")


def _tab_stops(driver, css: str) -> list[str | None]:
    """The `tabindex` of each element `css` matches."""
    return [e.get_attribute("tabindex") for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_keyboard_sorts_by_a_header_and_the_table_is_one_tab_stop_with_arrows_between_rows(edges, browser, tmp_path):
    """Headers are in the tab order and sort on Enter, saying so (aria-sort). The rows' ▸ are one
    Tab stop (roving tabindex: the focused row's ▸ is 0, the others -1): Tab from the headers
    reaches the first ▸, ArrowDown goes from ▸ to ▸ down the scrolling table without losing focus
    (a scroll redraws nothing that is not virtualised), ArrowUp back, Enter expands a row and keeps
    the focus on it, one Tab leaves the table for the memory what-ifs, and Shift+Tab comes back to
    the ▸ last focused. The module tree's ▸ are one Tab stop the same way."""
    base, _, _, _ = edges
    _open_tab(browser, base)
    _choose_run(browser, "gpt", ready="tr.mw-memory-row")
    header = browser.find_element(By.CSS_SELECTOR, ".mw-table-box th[data-key='flops']")
    assert header.get_attribute("tabindex") == "0" and header.get_attribute("aria-sort") == "none"
    assert browser.find_element(By.CSS_SELECTOR, ".mw-table-box th[data-key='time_s']") \
        .get_attribute("aria-sort") == "descending"
    browser.execute_script("arguments[0].focus()", header)
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    assert header.get_attribute("aria-sort") == "descending" and "mw-sorted" in header.get_attribute("class")
    browser.switch_to.active_element.send_keys(" ")
    assert header.get_attribute("aria-sort") == "ascending"
    header.send_keys(Keys.ENTER)  # back to the most FLOPs first
    cells = browser.find_elements(By.CSS_SELECTOR, ".mw-table-box td.mw-expandable")
    assert len(cells) > 3
    expandable = ".mw-table-box td.mw-expandable"
    assert _tab_stops(browser, expandable) == ["0"] + ["-1"] * (len(cells) - 1)
    # from the last header, one Tab: the first row's ▸
    browser.execute_script("document.querySelector('.mw-table-box th:last-child').focus()")
    browser.switch_to.active_element.send_keys(Keys.TAB)
    first = _active(browser)["row"]
    assert "mw-expandable" in _active(browser)["cls"] and first == cells[0].find_element(By.XPATH, "..") \
        .get_attribute("data-id")
    # Enter expands the row: its lines are drawn again, and the focus stays on its ▸
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    WebDriverWait(browser, 10).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, f"tr.mw-variant[data-parent='{first}']"))
    assert _active(browser) | {"cls": ""} == {"tag": "TD", "cls": "", "row": first, "inTable": True, "inMemory": False}
    browser.switch_to.active_element.send_keys(Keys.ENTER)  # folded again
    seen = [first]
    for _ in range(len(cells) - 1):
        browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
        _settle(browser)
        now = _active(browser)
        assert now["tag"] != "BODY", f"the focus was lost after the ▸ of row {seen[-1]}"
        assert now["inTable"] and "mw-expandable" in now["cls"] and now["row"] not in seen
        seen.append(now["row"])
        # the focused ▸ alone is in the tab order
        assert browser.execute_script(
            "return [...document.querySelectorAll(arguments[0])].filter((c) => c.tabIndex === 0)"
            ".map((c) => c.closest('tr').dataset.id)", expandable) == [now["row"]]
    assert len(seen) == len(cells)  # every ▸ once, in order
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)  # the last stays
    assert _active(browser)["row"] == seen[-1]
    assert browser.execute_script("return document.querySelector('.mw-table-box .mw-scroller').scrollTop") > 0
    browser.switch_to.active_element.send_keys(Keys.ARROW_UP)
    _settle(browser)
    assert _active(browser)["row"] == seen[-2]
    # one Tab leaves the table, on to the memory section (its table's headers, then the what-ifs)
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert not _active(browser)["inTable"]
    for _ in range(20):
        if _active(browser)["inMemory"]:
            break
        browser.switch_to.active_element.send_keys(Keys.TAB)
    assert _active(browser)["inMemory"]
    _screenshot(browser, "memwall-tab-keyboard", tmp_path)
    # back into the table: the ▸ last focused
    browser.execute_script("document.querySelector('.mw-table-box th:last-child').focus()")
    browser.switch_to.active_element.send_keys(Keys.TAB)
    assert _active(browser)["row"] == seen[-2]

    # the module tree: one ▸ in the tab order; ArrowDown to the next in view, Enter folds it
    summaries = browser.find_elements(By.CSS_SELECTOR, ".mw-tree summary")
    assert len(summaries) > 2 and _tab_stops(browser, ".mw-tree summary") == ["0"] + ["-1"] * (len(summaries) - 1)
    browser.execute_script("arguments[0].focus()", summaries[0])
    browser.switch_to.active_element.send_keys(Keys.ARROW_DOWN)
    second = browser.switch_to.active_element
    assert second.tag_name == "summary" and second != summaries[0]
    assert _tab_stops(browser, ".mw-tree summary").count("0") == 1 and second.get_attribute("tabindex") == "0"
    opened = browser.execute_script("return arguments[0].parentElement.open", second)
    second.send_keys(Keys.ENTER)
    assert browser.execute_script("return arguments[0].parentElement.open", second) is not opened
    browser.switch_to.active_element.send_keys(Keys.ARROW_UP)
    assert browser.switch_to.active_element == summaries[0]
    browser.switch_to.active_element.send_keys(Keys.TAB)  # one Tab leaves the tree
    assert not browser.execute_script("return Boolean(document.activeElement.closest('.mw-tree'))")


def test_a_report_without_memory_says_why_and_a_trace_says_how_to_record_modules(edges, browser, tmp_path):
    """No memory: an analysed trace says a trace records no tensor lifetimes, a memory=False run
    that it was measured without, an older report both causes. A trace without module ranges says
    how to record them (not `model=`)."""
    base, _, _, names = edges
    _open_tab(browser, base)
    texts = {}
    for run in ("nomemory", "old", names["hf"]):
        _choose_run(browser, run)
        WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, ".mw-memory-empty").is_displayed())
        texts[run] = browser.find_element(By.CSS_SELECTOR, ".mw-memory-empty").text
        assert "no memory measurement" in texts[run]
    assert "memory=False" in texts["nomemory"] and "--no-memory" in texts["nomemory"]
    assert "before memory was measured" not in texts["nomemory"] and "trace" not in texts["nomemory"]
    assert "memory=False" in texts["old"] and "before memory was measured" in texts["old"]
    trace = texts[names["hf"]]
    assert "torch.profiler trace" in trace and "records no tensor lifetimes" in trace and "memwall.profile" in trace
    assert "memory=False" not in trace and "before memory was measured" not in trace
    tree = browser.find_element(By.CSS_SELECTOR, ".mw-tree").text
    assert "with_stack=True" in tree and "pass model=" not in tree
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-trace-no-memory", tmp_path)
    _choose_run(browser, "mlp")  # memwall's own run: its module tree
    assert "No module paths" not in browser.find_element(By.CSS_SELECTOR, ".mw-tree").text


def test_a_crashed_run_has_a_banner_and_compare_notes_name_the_baseline_and_this_run(edges, browser, tmp_path):
    base, _, _, _ = edges
    _open_tab(browser, base)
    _choose_run(browser, "mlp")
    assert not browser.find_element(By.CSS_SELECTOR, ".mw-incomplete").is_displayed()
    _choose_run(browser, "crashed")
    banner = browser.find_element(By.CSS_SELECTOR, ".mw-incomplete")
    assert banner.is_displayed()
    assert "this run ended early (an exception or a signal): its last step (step 2) is partial" in banner.text
    _select(browser, "select.mw-baseline", "mlp")
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".mw-compare-note"))
    notes = [n.text for n in browser.find_elements(By.CSS_SELECTOR, ".mw-compare-note")]
    assert "this run is incomplete: its profiled block ended by an exception" in notes, notes
    assert any(n.startswith("the baseline recorded 2 step(s), this run 3:") and "per step, the baseline took" in n
               for n in notes), notes
    assert not any(word in ("A", "B", "A's", "B's") for n in notes for word in n.replace(",", " ").split()), notes
    _screenshot(browser, "memwall-tab-crashed-compare", tmp_path)
    _select(browser, "select.mw-baseline", "")
    _choose_run(browser, "mlp")
    assert not browser.find_element(By.CSS_SELECTOR, ".mw-incomplete").is_displayed()


def test_an_empty_roofline_says_why_and_program_marks_are_hoverable_inside(edges, browser, tmp_path):
    base, _, _, _ = edges
    _open_tab(browser, base)
    _choose_run(browser, "nothing")
    message = browser.find_element(By.CSS_SELECTOR, "svg.mw-chart g.mw-chart-empty").text
    assert "Nothing to place on the roofline" in message and "Of the 2 rows: 2 do no floating-point work" in message
    browser.execute_script("document.querySelector('.mw-chart-box').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-chart-box"), "chart-nothing-counted", tmp_path)
    _choose_run(browser, "mlp")
    assert not browser.find_elements(By.CSS_SELECTOR, "g.mw-chart-empty")
    # the middle of each hollow mark is its own: the pointer there is over it (its tooltip's)
    hits = browser.execute_script(
        "return [...document.querySelectorAll('svg.mw-chart g.mw-program')].map((g) => {"
        "  const b = g.querySelector('.mw-program-mark').getBoundingClientRect();"
        "  const hit = document.elementFromPoint(b.x + b.width / 2, b.y + b.height / 2);"
        "  const over = hit && hit.closest('g.mw-program');"
        "  return [g.dataset.label, over ? over.dataset.label : null];"
        "});")
    assert len(hits) >= 3 and all(over is not None for _, over in hits), hits  # a mark, if another's over it
    label = next(label for label, over in hits if over == label)  # one on top at its middle
    mark = browser.find_element(By.CSS_SELECTOR, f"g.mw-program[data-label='{label}'] .mw-program-mark")
    ActionChains(browser).move_to_element(mark).perform()  # its middle, inside its outline
    WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, ".mw-chart-box .mw-tooltip").is_displayed())
    assert browser.find_element(By.CSS_SELECTOR, ".mw-chart-box .mw-tooltip").text.startswith(label)


def test_a_broken_trace_leaves_no_empty_sections(edges, browser, tmp_path):
    base, _, _, names = edges
    _open_tab(browser, base)
    parts = (".mw-roofline-part", ".mw-operators-part", ".mw-memory-part", ".mw-modules-part")
    assert all(browser.find_element(By.CSS_SELECTOR, p).is_displayed() for p in parts)
    _choose_run(browser, names["damaged"])
    assert "cannot be shown" in browser.find_element(By.CSS_SELECTOR, ".mw-status").text
    assert not [p for p in parts if browser.find_element(By.CSS_SELECTOR, p).is_displayed()]
    assert not browser.find_element(By.CSS_SELECTOR, ".mw-app").text.count("Operators")
    _screenshot(browser, "memwall-tab-trace-broken", tmp_path)
    _choose_run(browser, "mlp")
    assert all(browser.find_element(By.CSS_SELECTOR, p).is_displayed() for p in parts)


def _box(driver, css: str) -> dict:
    return driver.execute_script("const b = document.querySelector(arguments[0]).getBoundingClientRect();"
                                 "return {top: b.top, bottom: b.bottom};", css)


def test_memory_what_ifs_redo_the_notes_keep_the_peak_label_clear_and_say_each_size(edges, browser, tmp_path):
    """A batch what-if far over the peak draws the capacity: the note that it is off the scale
    goes, and the peak's label stays above the axis' ticks. Each precision selector says its size
    as measured, or that nothing was held at the peak. A what-if device's capacity is the memory
    card's; a point's tooltip gives its share of the roof as the table does."""
    base, _, memory, _ = edges
    _open_tab(browser, base)
    _choose_run(browser, "gpt", ready="tr.mw-memory-row")
    _wait_projected(browser, memory.what_if().peak_bytes)
    assert "off this scale" in browser.find_element(By.CSS_SELECTOR, ".mw-memory-notes").text
    labels = {c: browser.find_element(By.CSS_SELECTOR, f"select.mw-bpe-{c} option[value='']").text for c in CATEGORIES}
    for c in CATEGORIES:
        held, elements = memory.peak_by_category.get(c, 0), memory.peak_elements.get(c)
        held -= memory.peak_kept_bytes.get(c, 0)  # integer tensors: not in the elements
        if held and elements:
            assert labels[c] == f"as measured ({float(f'{held / elements:.3g}'):g} B)", labels
        else:
            assert labels[c] == "as measured (none at the peak)", labels
    assert labels["gradients"] == "as measured (none at the peak)"  # zero_grad freed them before the peak
    scale = memory.capacity_bytes / memory.what_if().peak_bytes  # the what-if's peak at about the capacity
    browser.execute_script("const b = document.querySelector('input.mw-batch'); b.value = arguments[0];"
                           "b.dispatchEvent(new Event('change'));", str(round(scale)))
    projected = memory.what_if(batch_scale=float(round(scale))).peak_bytes
    _wait_projected(browser, projected)
    assert browser.find_elements(By.CSS_SELECTOR, "line.mw-capacity")  # on the scale now
    assert "off this scale" not in browser.find_element(By.CSS_SELECTOR, ".mw-memory-notes").text
    label = _box(browser, "text.mw-peak-label")
    ticks = browser.execute_script(  # the x axis' ticks
        "return Math.min(...[...document.querySelectorAll('svg.mw-memory-chart text.mw-tick[text-anchor=middle]')]"
        "  .map((t) => t.getBoundingClientRect().top));")
    assert label["bottom"] <= ticks, (label, ticks)
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _element_screenshot(browser.find_element(By.CSS_SELECTOR, ".mw-memory-chart-box"), "memory-batch-big", tmp_path)
    # a point's tooltip: its share of the roof as the table's cell writes it (a tiny share, written
    # with more digits than a percentage's one, where the run has one: it depends on the versions)
    point = browser.execute_script(
        "const cellOf = (c) => document.querySelector("
        "  `.mw-table-box tr.mw-row[data-id='${c.dataset.id}'] td[data-key=efficiency]`);"
        "const points = [...document.querySelectorAll('svg.mw-chart circle.mw-point')].filter((c) => cellOf(c));"
        "return points.find((c) => /^(\\d+\\.\\d\\d+%|<0\\.001%)$/.test(cellOf(c).textContent))"
        "  || points.find((c) => /%$/.test(cellOf(c).textContent));")
    assert point is not None
    cell = browser.find_element(By.CSS_SELECTOR, f".mw-table-box tr.mw-row[data-id='{point.get_attribute('data-id')}'] "
                                "td[data-key='efficiency']").text
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseenter', {clientX: 5, clientY: 5}))", point)
    tooltip = browser.find_element(By.CSS_SELECTOR, ".mw-chart-box .mw-tooltip").text
    assert f"attainable ({cell})" in tooltip, (cell, tooltip)
    # a what-if device: the memory card is against its capacity
    h100 = resolve_device("h100-sxm")
    _select(browser, "select.mw-device", "h100-sxm")
    WebDriverWait(browser, 60).until(
        lambda d: "what-if device" in d.find_element(By.CSS_SELECTOR, ".mw-memory-card").text)
    card = browser.find_element(By.CSS_SELECTOR, ".mw-memory-card .mw-card-note").text
    assert card == (f"{_pct(memory.peak_bytes / h100.memory_bytes)} of {_si(h100.memory_bytes, 'B')} "
                    f"({h100.name}, the what-if device)"), card
    assert "host RAM" not in card


def _multiple(value: float) -> str:
    """The number format.js' times() writes before its ×."""
    return f"{round(value):,}" if value >= 100 else f"{float(f'{value:.2g}'):g}"


def _set_batch(driver, scale: str) -> None:
    driver.execute_script("const b = document.querySelector('input.mw-batch'); b.value = arguments[0];"
                          "b.dispatchEvent(new Event('change'));", scale)


def test_a_what_if_many_times_the_peak_reads_as_a_multiple_not_a_run_of_digits(edges, browser, tmp_path):
    """A batch 100,000 times larger: the projected peak's change and its share of the capacity
    read as multiples ("×38,077", "3,808× it"), not as "+3807608%"; a small change stays a
    percentage."""
    base, _, memory, _ = edges
    _open_tab(browser, base)
    _choose_run(browser, "tight", ready="tr.mw-memory-row")
    baseline = memory.what_if().peak_bytes
    _wait_projected(browser, baseline)
    capacity = memory.peak_bytes * 5 // 4  # the tight run's
    _set_batch(browser, "2")
    doubled = memory.what_if(batch_scale=2.0).peak_bytes
    _wait_projected(browser, doubled)
    head = browser.find_element(By.CSS_SELECTOR, ".mw-whatif-head").text
    assert f"+{_pct(doubled / baseline - 1)} from {_si(baseline, 'B')} without the what-ifs" in head, head
    assert f"{_pct(doubled / capacity)} of it" in head, head
    _set_batch(browser, "100000")
    scaled = memory.what_if(batch_scale=1e5).peak_bytes
    _wait_projected(browser, scaled)
    head = browser.find_element(By.CSS_SELECTOR, ".mw-whatif-head").text
    assert scaled / baseline > 100 and scaled / capacity > 100
    assert f"×{_multiple(scaled / baseline)} from {_si(baseline, 'B')} without the what-ifs" in head, head
    assert f"· {_multiple(scaled / capacity)}× it" in head, head
    text = browser.find_element(By.CSS_SELECTOR, ".mw-memory-part").text
    assert not re.search(r"\d{4,}%", text.replace(",", "")), text
    browser.execute_script("document.querySelector('.mw-whatif').scrollIntoView()")
    _screenshot(browser, "memwall-tab-memory-many-times", tmp_path)


def test_the_memory_capacity_follows_the_what_if_device_and_can_be_chosen_apart(edges, browser, tmp_path):
    """Choosing a what-if device at the top chooses its capacity in the memory section too (its
    selector, the capacity line and the chart's notes, with no what-if peak drawn for a capacity
    alone); the memory section can then choose another capacity on its own, and the top's "as
    measured" brings back the measured one."""
    base, _, memory, _ = edges
    _open_tab(browser, base)
    _choose_run(browser, "gpt", ready="tr.mw-memory-row")
    _wait_projected(browser, memory.what_if().peak_bytes)
    chosen = "select.mw-capacity-device"
    assert browser.find_element(By.CSS_SELECTOR, chosen).get_attribute("value") == ""
    h100, t4 = resolve_device("h100-sxm"), resolve_device("t4")

    def shows(capacity: int, name: str):
        def ready(d) -> bool:
            summary = d.find_element(By.CSS_SELECTOR, ".mw-memory-summary").text
            return (f"of capacity {_si(capacity, 'B')}" in summary and f"capacity: {name}" in summary
                    and not d.find_elements(By.CSS_SELECTOR, ".mw-whatif-result.mw-loading")
                    and f"in {_si(capacity, 'B')} ({name})" in d.find_element(
                        By.CSS_SELECTOR, ".mw-whatif-result").text)
        WebDriverWait(browser, 60).until(ready)

    _select(browser, "select.mw-device", "h100-sxm")
    shows(h100.memory_bytes, h100.name)
    assert browser.find_element(By.CSS_SELECTOR, chosen).get_attribute("value") == "h100-sxm"
    notes = browser.find_element(By.CSS_SELECTOR, ".mw-memory-notes").text
    assert f"The capacity ({_si(h100.memory_bytes, 'B')}) is off this scale" in notes, notes
    assert not browser.find_elements(By.CSS_SELECTOR, "text.mw-projected-label")  # a capacity changes no peak
    # the memory section on its own: a T4's 16 GB, the top still an H100
    _select(browser, chosen, "t4")
    shows(t4.memory_bytes, t4.name)
    assert browser.find_element(By.CSS_SELECTOR, "select.mw-device").get_attribute("value") == "h100-sxm"
    notes = browser.find_element(By.CSS_SELECTOR, ".mw-memory-notes").text
    assert f"The capacity ({_si(t4.memory_bytes, 'B')}) is off this scale" in notes, notes
    browser.execute_script("document.querySelector('.mw-memory-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-memory-follows-device", tmp_path)
    # back to as measured at the top: the measured capacity again
    _select(browser, "select.mw-device", "")
    WebDriverWait(browser, 60).until(
        lambda d: f"capacity: {memory.capacity_source}" in d.find_element(By.CSS_SELECTOR, ".mw-memory-summary").text)
    assert browser.find_element(By.CSS_SELECTOR, chosen).get_attribute("value") == ""


def test_the_phases_table_shows_the_consoles_phase_figures(edges, browser, tmp_path):
    """The console's Phases table in the tab: one row per phase in the console's order, each with
    its calls, time, share of the op time, FLOPs, bytes, FLOP/B, bound and roof reached, from the
    report's own rows rolled up by phase; a what-if shows each phase's projected time and speed-up."""
    base, logdir, _, _ = edges
    (path,) = (logdir / "gpt" / "plugins" / "memwall").glob("*.json")
    report = memwall.load_report(path)
    groups = {g.key: g for g in report.group_by("phase")}
    order = ordered_phases(groups)
    assert len(order) >= 3  # forward, backward, optimizer
    total = report.total_time_s
    _open_tab(browser, base)
    _choose_run(browser, "gpt", ready="tr.mw-memory-row")
    part = browser.find_element(By.CSS_SELECTOR, ".mw-phases-part")
    assert part.find_element(By.TAG_NAME, "h2").text == "Phases"
    heads = [th.text for th in part.find_elements(By.CSS_SELECTOR, "th")]
    assert heads == ["phase", "calls", "time", "share", "FLOPs", "bytes", "FLOP/B", "bound", "% of roof"]

    def num(value: float | None) -> str:
        return "-" if value is None else f"{float(f'{value:.3g}'):g}"

    lines = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
             for tr in part.find_elements(By.CSS_SELECTOR, "tr.mw-phase-row")]
    assert lines == [[key, f"{g.calls:,}", _duration(g.time_s), _pct(g.time_s / total),
                      _si(g.flops, "").strip() if g.flops is not None else "-", _si(g.bytes, "B"),
                      num(g.intensity), g.bound, _pct(g.efficiency) if g.efficiency is not None else "-"]
                     for key, g in ((k, groups[k]) for k in order)]
    browser.execute_script("document.querySelector('.mw-phases-part').scrollIntoView()")
    _screenshot(browser, "memwall-tab-phases", tmp_path)
    _select(browser, "select.mw-device", "h100-sxm")
    WebDriverWait(browser, 60).until(
        lambda d: "speed-up" in [th.text for th in d.find_elements(By.CSS_SELECTOR, ".mw-phases-part th")])
    heads = [th.text for th in browser.find_elements(By.CSS_SELECTOR, ".mw-phases-part th")]
    assert heads[-3:] == ["bound", "projected", "speed-up"] and heads[2] == "measured"
    cells = [td.text for td in browser.find_element(By.CSS_SELECTOR, ".mw-phases-part tr.mw-phase-row")
             .find_elements(By.TAG_NAME, "td")]
    assert cells[0] == order[0] and cells[-1].endswith("×") and cells[-2] != "-"
