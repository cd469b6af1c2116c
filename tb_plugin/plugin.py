"""The Memory Wall tab: TensorBoard routes (thin) over the loader and the view builders.

Registered through the `tensorboard_plugins` entry point. Request parameters are validated and
matched against what the loader found; no route builds a path from a request. The plugin opens
no socket of its own: it is served by TensorBoard's server, wherever TensorBoard binds.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from memwall_plugin.tb_plugin import views
from memwall_plugin.tb_plugin.loader import ANALYSED, ReportLoader, Run, Window
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin
from werkzeug import wrappers

from memwall_plugin.devices import lookup_device, resolve_device
from memwall_plugin.diff import DIFF_BY, diff_reports
from memwall_plugin.kineto import TraceError
from memwall_plugin.memory import SHARDING, parse_bytes_per_element
from memwall_plugin.report import Report, ReportError
from memwall_plugin.rundir import Job, group_jobs, pick_job, read_jobs
from memwall_plugin.whatif import DTYPES

#: the dtypes the tab offers for a what-if (`/report?dtype=`)
WHAT_IF_DTYPES = ("bf16", "fp16", "fp8", "fp32")

PLUGIN_NAME = "memwall"
TAB_NAME = "Memory Wall"

#: One fixed route per static file: there is no path to traverse.
STATIC_FILES = {
    "/static/index.js": ("index.js", "text/javascript"),
    "/static/chart.js": ("chart.js", "text/javascript"),
    "/static/table.js": ("table.js", "text/javascript"),
    "/static/tree.js": ("tree.js", "text/javascript"),
    "/static/format.js": ("format.js", "text/javascript"),
    "/static/comm.js": ("comm.js", "text/javascript"),
    "/static/memory.js": ("memory.js", "text/javascript"),
    "/static/compare.js": ("compare.js", "text/javascript"),
    "/static/style.css": ("style.css", "text/css"),
}

_PHASE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_PARAM = 512
#: The parameters each data route takes; anything else is refused (a typo is not ignored).
ROUTE_PARAMS: dict[str, tuple[str, ...]] = {
    "/runs": (),
    "/devices": (),
    "/report": ("run", "job", "rank", "window", "phase", "device", "bytes_per_element", "dtype", "by", "world_size",
                "intra_link", "inter_link"),
    "/compare": ("run", "job", "rank", "window", "baseline", "baseline_job", "baseline_rank", "by", "phase", "device",
                 "bytes_per_element", "dtype"),
    "/ranks": ("run", "job", "all"),
    "/memory": ("run", "job", "rank", "window"),
    "/memory_whatif": ("run", "job", "rank", "window", "checkpoint", "shard", "world_size", "bytes_per_element",
                       "batch_scale", "master_weights", "device"),
}

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request the plugin refuses: `code` is the HTTP status, the message says why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class MemwallPlugin(base_plugin.TBPlugin):
    plugin_name = PLUGIN_NAME

    def __init__(self, context: base_plugin.TBContext) -> None:
        self.loader = ReportLoader(context.logdir or ".")

    def get_plugin_apps(self) -> dict[str, Any]:
        apps: dict[str, Any] = {
            "/runs": self.runs_route,
            "/report": self.report_route,
            "/devices": self.devices_route,
            "/ranks": self.ranks_route,
            "/compare": self.compare_route,
            "/memory": self.memory_route,
            "/memory_whatif": self.memory_whatif_route,
        }
        for route in STATIC_FILES:
            apps[route] = self.static_route
        return apps

    def is_active(self) -> bool:
        return self.loader.is_active()

    def frontend_metadata(self) -> base_plugin.FrontendMetadata:
        return base_plugin.FrontendMetadata(es_module_path="/static/index.js", tab_name=TAB_NAME)

    # -- implementations (what tests call) ---------------------------------------------------------
    def runs_impl(self) -> dict[str, Any]:
        """Every run; a torch.profiler trace with its state (analysed or not: listing never
        analyses one)."""
        runs = self.loader.runs()
        traces = {name: self.loader.trace_state(run.trace) for name, run in runs.items() if run.trace is not None}
        jobs = {name: self._jobs_or_none(run) for name, run in runs.items()
                if run.trace is None or traces[name][0] == ANALYSED}
        return views.runs_view(runs, jobs, traces)

    def report_impl(self, args: dict[str, str]) -> dict[str, Any]:
        """The view of one run: one job's windows of one rank (one window, or all of them
        merged), optionally one phase, optionally re-scored for another device or element size
        (then with its projection: each op's least time there, and the ops whose bound flips).
        Jobs are never summed: the newest is shown unless `job` names another."""
        check_params("/report", args)
        run, report = self._selected(args)
        phase = _phase_param(args)
        scored = _what_if(args, report)
        measured = None if scored is report else report  # as measured: no projection
        report = scored
        if phase is not None and phase not in {r.phase for r in report.rows}:
            raise RequestError(404, f"run {run.name!r} has no {phase!r} work")
        by = args.get("by") or "op"
        if by not in views.BY:
            raise RequestError(400, f"by must be one of {', '.join(views.BY)}, got {by[:40]!r}")
        return views.report_view(report, phase=phase, measured=measured, by=by)

    def compare_impl(self, args: dict[str, str]) -> dict[str, Any]:
        """The selected report (as /report selects it) against a baseline run's (its newest job
        unless `baseline_job` names another; the same rank, or `baseline_rank`): `diff_reports(
        baseline, run)`, so "a" is the baseline and "b" this run, and speed-up is time baseline /
        time run. A what-if (device, bytes_per_element) re-scores both; `phase` selects only the
        baseline's points (as /report's), the comparison covers every phase."""
        check_params("/compare", args)
        baseline = args.get("baseline") or ""
        if not baseline:
            raise RequestError(400, "compare needs baseline=RUN, the run to compare with (GET ./runs lists them)")
        by = args.get("by") or "op"
        if by not in DIFF_BY:
            raise RequestError(400, f"by must be one of {', '.join(DIFF_BY)}, got {by[:40]!r}")
        phase = _phase_param(args)
        run, report = self._selected(args)
        picked = {"run": baseline, "job": args.get("baseline_job") or "",
                  "rank": args.get("baseline_rank") or args.get("rank") or ""}
        try:
            base_run, base = self._selected({k: v for k, v in picked.items() if v})
        except RequestError as exc:
            raise RequestError(exc.code, f"baseline: {exc}") from None
        report, base = _what_if(args, report), _what_if(args, base)
        try:
            diff = diff_reports(base, report, by=by, sides=("the baseline", "this run"))
        except ValueError as exc:  # a run without ops: nothing to compare
            raise RequestError(404, f"run {run.name!r} against baseline {base_run.name!r}: {exc}") from None
        return views.compare_view(run.name, report, base_run.name, base, diff, phase=phase)

    def ranks_impl(self, args: dict[str, str]) -> dict[str, Any]:
        """Every rank of one job of a run side by side, or above 16 ranks their spread and
        outliers (`all=1`: every rank still); a rank whose report cannot be read is listed with
        its error, the others are still shown."""
        check_params("/ranks", args)
        run = self._run(args)
        jobs, bad = self._read(run)
        job = self._pick(run, jobs, args) if jobs else None
        reports = job.ranks if job is not None else {}  # their heads are read, not the reports
        errors = {w.rank: message for w, message in bad.items() if w.rank not in reports}
        world = max((h.world_size for h in job.heads), default=len(run.ranks)) if job is not None \
            else len(run.ranks)
        all_ranks = _int_param(args, "all", default=0, low=0, high=1) == 1
        return views.ranks_view(run.name, reports, errors, world, job=None if job is None else job.id,
                                all_ranks=all_ranks)

    def _selected(self, args: dict[str, str]) -> tuple[Run, Report]:
        """The report the selection parameters name (run, job, rank, window), as every data route
        but /runs and /devices reads them."""
        run = self._run(args)
        window_id = args.get("window", "all") or "all"
        if window_id != "all":
            loaded, bad = self._loaded(run)
            rank = _int_param(args, "rank", default=None, low=0, high=1 << 20)
            found = [(w, r) for w, r in loaded if w.id == window_id and rank in (None, w.rank)]
            broken = [w for w in bad if w.id == window_id and rank in (None, w.rank)]
            if broken:
                raise RequestError(422, bad[broken[0]])
            if not found:
                raise RequestError(404, f"run {run.name!r} has no window {window_id!r}")
            self._check_names(run, found)
            return run, found[0][1]
        jobs, bad = self._read(run)
        job = self._pick(run, jobs, args) if jobs else None
        default = min(job.ranks) if job is not None else run.ranks[0]
        rank = _int_param(args, "rank", default=default, low=0, high=1 << 20)
        broken = [w for w in bad if w.rank == rank]
        if broken:
            raise RequestError(422, bad[broken[0]])
        if job is None or rank not in job.ranks:
            raise RequestError(404, f"run {run.name!r} has no report for rank {rank}"
                                    + (f" in job {job.label}" if job is not None else ""))
        try:
            return run, job.ranks[rank]  # read in full now: its file may have changed since its head was read
        except ReportError as exc:
            raise RequestError(422, f"run {run.name!r}: {exc}") from None

    def memory_impl(self, args: dict[str, str]) -> dict[str, Any]:
        """The memory of the selected report (`Report.memory`, as the report file holds it);
        `memory` is null for a report written before memwall measured memory."""
        check_params("/memory", args)
        run, report = self._selected(args)
        return views.memory_view(run.name, report)

    def memory_whatif_impl(self, args: dict[str, str]) -> dict[str, Any]:
        """`MemoryReport.what_if` of the selected report with the query's what-ifs, and the
        largest batch scale that fits under them."""
        check_params("/memory_whatif", args)
        run, report = self._selected(args)
        memory = report.memory
        if memory is None:
            why = views.NO_MEMORY[views.no_memory_reason(report) or "unknown"]
            raise RequestError(404, f"run {run.name!r}: this report has no memory measurement: {why}")
        what_if = memory_what_if_args(args)
        capacity, source = memory.capacity_bytes, memory.capacity_source
        device = args.get("device") or None
        if device is not None:
            try:
                spec = resolve_device(device)
            except LookupError:
                raise RequestError(400, f"unknown device {device[:60]!r}; GET ./devices lists them") from None
            except ValueError as exc:
                raise RequestError(400, f"device {device[:60]!r}: {exc}") from None
            if not spec.memory_bytes:
                raise RequestError(400, f"device {spec.name!r} has no memory capacity in memwall's table; "
                                        "choose another device")
            capacity, source = spec.memory_bytes, spec.name
        try:
            targets = memory.checkpoint_targets(what_if["checkpoint"]) if what_if["checkpoint"] else []
            result = memory.what_if(capacity_bytes=capacity, **what_if)
            baseline = memory.what_if(capacity_bytes=capacity).peak_bytes
            largest = memory.max_batch_scale(capacity_bytes=capacity,
                                             **{k: v for k, v in what_if.items() if k != "batch_scale"})
        except ValueError as exc:  # a checkpoint path no module ran under, a category or size refused
            raise RequestError(400, str(exc)) from None
        return views.memory_whatif_view(run.name, report, what_if, result, baseline, largest, targets, source)

    # -- the run store ------------------------------------------------------------------------------
    def _run(self, args: dict[str, str]) -> Run:
        run = self.loader.runs().get(args.get("run", ""))
        if run is None:
            raise RequestError(404, f"unknown run {args.get('run', '')!r}; GET ./runs lists the runs")
        return run

    def _loaded(self, run: Run) -> tuple[list[tuple[Window, Report]], dict[Window, str]]:
        """Every window of a run that can be read, and the error of each that cannot (naming the
        file within the run, never the server's path)."""
        loaded, bad = [], {}
        if run.trace is not None:  # analysed here, on first use (cached per version of the file)
            window = run.windows[0]
            try:
                loaded.append((window, self.loader.analysed(run.trace)))
            except TraceError as exc:  # the message starts with the trace's name (the run's)
                bad[window] = str(exc)
            return loaded, bad
        for w in run.windows:
            try:
                loaded.append((w, self.loader.load(w)))
            except ReportError as exc:
                bad[w] = f"run {run.name!r}: " + str(exc).replace(str(w.path), f"{w.id}.json")
        return loaded, bad

    def _read(self, run: Run) -> tuple[list[Job], dict[Window, str]]:
        """The jobs of a run (`read_jobs`: every rank's head, a report read in full only when asked
        for), and the error of each window that cannot be read."""
        if run.trace is not None:  # one window, analysed on first use
            loaded, traced = self._loaded(run)
            return self._check_names(run, loaded), traced
        bad: dict[Window, str] = {}

        def failed(w: Window, exc: ReportError) -> None:
            bad[w] = f"run {run.name!r}: " + str(exc).replace(str(w.path), f"{w.id}.json")

        try:
            return read_jobs(run.windows, self.loader.load, failed), bad
        except ValueError as exc:  # windows that contradict their names (ranks)
            raise RequestError(422, f"run {run.name!r}: its report files disagree: {exc}") from None

    def _check_names(self, run: Run, loaded: list[tuple[Window, Report]]) -> list[Job]:
        try:
            return group_jobs(loaded)
        except ValueError as exc:  # windows that contradict their names (ranks)
            raise RequestError(422, f"run {run.name!r}: its report files disagree: {exc}") from None

    def _job(self, run: Run, loaded: list[tuple[Window, Report]], args: dict[str, str]) -> Job:
        return self._pick(run, self._check_names(run, loaded), args)

    def _pick(self, run: Run, jobs: list[Job], args: dict[str, str]) -> Job:
        try:
            return pick_job(jobs, args.get("job") or None)
        except LookupError as exc:
            raise RequestError(404, f"run {run.name!r}: job {exc}") from None

    def _jobs_or_none(self, run: Run) -> list[Job] | None:
        try:
            return self._read(run)[0]
        except (ValueError, RequestError):
            return None

    # -- routes ------------------------------------------------------------------------------------
    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def runs_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/runs", lambda args: self.runs_impl())

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def devices_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/devices", lambda args: views.devices_view())

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def report_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/report", self.report_impl)

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def ranks_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/ranks", self.ranks_impl)

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def compare_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/compare", self.compare_impl)

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def memory_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/memory", self.memory_impl)

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def memory_whatif_route(self, request: wrappers.Request) -> wrappers.Response:
        return _respond(request, "/memory_whatif", self.memory_whatif_impl)

    @wrappers.Request.application  # type: ignore[arg-type]  # werkzeug types it for functions
    def static_route(self, request: wrappers.Request) -> wrappers.Response:
        suffix = request.path[request.path.index("/static/"):]
        name, mimetype = STATIC_FILES[suffix]
        body = resources.files("memwall_plugin.tb_plugin").joinpath("static", name).read_bytes()
        return http_util.Respond(request, body, mimetype)


def _respond(request: wrappers.Request, route: str, impl: Callable[[dict[str, str]], Any]) -> wrappers.Response:
    """JSON from `impl(parameters)`; a refused request is its 4xx with the reason, and memwall's
    own failure a 500 that names no server path (the traceback goes to TensorBoard's log)."""
    try:
        args = request_params(route, request.args)
        return http_util.Respond(request, impl(args), "application/json")
    except RequestError as exc:
        return http_util.Respond(request, {"error": str(exc)}, "application/json", code=exc.code)
    except Exception as exc:
        logger.exception("memwall: %s failed", route)
        body = {"error": f"memwall could not answer {route} ({type(exc).__name__}); TensorBoard's log has the details"}
        return http_util.Respond(request, body, "application/json", code=500)


def request_params(route: str, args: Any) -> dict[str, str]:
    """A request's query as one value per name, each checked by `check_params`."""
    for name in args:
        if len(args.getlist(name)) > 1:
            raise RequestError(400, f"parameter {name[:40]!r} is given more than once")
    params = {name: args.get(name) for name in args}
    check_params(route, params)
    return params


def check_params(route: str, args: dict[str, str]) -> None:
    """Only the route's own parameters, each short text."""
    allowed = ROUTE_PARAMS[route]
    for name, value in args.items():
        if name not in allowed:
            takes = f"takes {', '.join(allowed)}" if allowed else "takes no parameters"
            raise RequestError(400, f"unknown parameter {name[:40]!r}: {route.lstrip('/')} {takes}")
        if not isinstance(value, str) or len(value) > _MAX_PARAM or "\x00" in value:
            raise RequestError(400, f"parameter {name!r} is too long or not text")


def _phase_param(args: dict[str, str]) -> str | None:
    phase = args.get("phase") or None
    if phase is not None and not _PHASE.match(phase):
        raise RequestError(400, f"phase {phase!r} is not a phase name")
    return phase


def _what_if(args: dict[str, str], report: Report) -> Report:
    """The report re-scored for the request's what-if device, element size and compute dtype, if
    it asks; the report itself otherwise."""
    device = args.get("device") or None
    bpe = args.get("bytes_per_element") or None
    dtype = args.get("dtype") or None
    comm = _comm_what_if(args, report)
    if device is None and bpe is None and dtype is None:
        return report if comm is None else report.rescore(**comm)
    try:
        spec = lookup_device(device) if device is not None else None
    except LookupError:
        raise RequestError(400, f"unknown device {device!r}; GET ./devices lists them") from None
    if dtype is not None and dtype not in DTYPES:
        raise RequestError(400, f"dtype {dtype[:40]!r}: choose one of {', '.join(WHAT_IF_DTYPES)}")
    return report.rescore(bytes_per_element=_int_param(args, "bytes_per_element", None, 1, 16) if bpe else None,
                          device=spec, dtype=dtype, **(comm or {}))


_BANDWIDTH = re.compile(r"^\d{1,15}(\.\d{1,6})?([eE]\d{1,2})?$")


def _comm_what_if(args: dict[str, str], report: Report) -> dict[str, Any] | None:
    """The communication what-if a request asks for (`world_size`, `intra_link`, `inter_link` in
    bytes/s per direction): rescore's keyword arguments, or None."""
    world = _int_param(args, "world_size", None, 1, 1 << 20)
    links = {}
    for level in ("intra", "inter"):
        text = (args.get(f"{level}_link") or "").strip()
        if not text:
            continue
        if not _BANDWIDTH.match(text) or not 0 < float(text) < 1e15:
            raise RequestError(400, f"{level}_link must be a bandwidth in bytes/s per direction like 50e9, "
                                    f"got {text[:40]!r}")
        links[level] = float(text)
    if world is None and not links:
        return None
    if report.link is None:
        raise RequestError(400, "world_size and the links project collectives: this run recorded none "
                                "(not a torch.distributed run)")
    return {"world_size": world, "link": links or None}


def _int_param(args: dict[str, str], name: str, default: Any, low: int, high: int) -> Any:
    text = args.get(name)
    if text is None or text == "":
        return default
    if not re.fullmatch(r"\d{1,8}", text):
        raise RequestError(400, f"{name} must be a whole number, got {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise RequestError(400, f"{name} must be between {low} and {high}, got {value}")
    return value


_PATH = re.compile(r"^[^\x00-\x1f,]{1,200}$")
_NUMBER = re.compile(r"^\d{1,7}(\.\d{1,6})?$")


def _float_param(args: dict[str, str], name: str, default: float, low: float, high: float) -> float:
    text = (args.get(name) or "").strip()
    if text == "":
        return default
    if text.startswith("-") and _NUMBER.match(text[1:].strip()):  # a number, but not one above 0
        raise RequestError(400, f"{name} must be positive: above {low:g} and at most {high:g}, got {text[:40]!r}")
    if not _NUMBER.match(text):
        raise RequestError(400, f"{name} must be a number like 2 or 0.5, got {text[:40]!r}")
    value = float(text)
    if not low < value <= high:
        raise RequestError(400, f"{name} must be above {low:g} and at most {high:g}, got {text!r}")
    return value


def memory_what_if_args(args: dict[str, str]) -> dict[str, Any]:
    """The keyword arguments of `MemoryReport.what_if` from `/memory_whatif`'s query (all but
    the capacity): each checked here, with a message naming the parameter and what it takes."""
    checkpoint = [p.strip() for p in (args.get("checkpoint") or "").split(",") if p.strip()]
    for path in checkpoint:
        if not _PATH.match(path):
            raise RequestError(400, f"checkpoint: {path[:40]!r} is not a module path; give module paths "
                                    "separated by commas, e.g. checkpoint=transformer.h")
    shard = (args.get("shard") or "").strip().lower() or None
    if shard == "none":
        shard = None
    if shard is not None and shard not in SHARDING:
        raise RequestError(400, f"shard={shard[:40]!r}: choose one of none, {', '.join(SHARDING)}")
    world_size = _int_param(args, "world_size", default=1, low=1, high=1 << 20)
    try:
        bpe = parse_bytes_per_element(args.get("bytes_per_element"))
    except ValueError as exc:
        raise RequestError(400, str(exc)) from None
    master = (args.get("master_weights") or "").strip().lower()
    if master not in ("", "0", "1", "true", "false"):
        raise RequestError(400, f"master_weights must be true or false, got {master[:40]!r}")
    return {
        "checkpoint": checkpoint or None,
        "shard": shard,
        "world_size": world_size,
        "bytes_per_element": bpe or None,
        "batch_scale": _float_param(args, "batch_scale", 1.0, 0.0, 1e6),
        "master_weights": master in ("1", "true"),
    }
