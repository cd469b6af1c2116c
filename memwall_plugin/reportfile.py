"""The report file format: versioned JSON, encoded from and decoded into the report's dataclasses.

Every field is checked by checks derived from the dataclasses (`validation.py`), rows of ops and
collectives alike, so anything that is not a report memwall wrote becomes one ReportError.

Version 2 (this one): `meta` holds the run's scalar fields (its job, and for torch.distributed
runs the backend and the time with a collective in flight), `link` the interconnect roof,
`rows` the op rows and `collectives` the collective rows (rows with a nested `collective`);
`meta.step_totals`, where present, each recorded step's totals (files written before it lack it);
`meta.hostname`, `meta.local_rank`, `meta.group_rank`, where present, where a rank ran;
`inter_link`, where present (a job on several nodes), the network between nodes (`link` is then
the link inside a node), and each collective's `intra_bytes` / `inter_bytes` / `overlapped_s`
(files written before lack them).
Version 1 files (collectives in a separate `comm` object, no job) are read by `upgrade_v1`.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import TYPE_CHECKING, Any

from memwall_plugin.ceilings import Link
from memwall_plugin.comm import KINDS
from memwall_plugin.devices import DeviceSpec
from memwall_plugin.memory import CATEGORIES, MemoryModule, MemoryReport
from memwall_plugin.rows import ROW_FIELDS, Row
from memwall_plugin.validation import (
    FieldError,
    ReportError,
    check_device,
    check_float,
    check_int,
    check_object,
    check_str,
    dataclass_fields,
    invalid,
)

if TYPE_CHECKING:
    from memwall_plugin.report import Report

FORMAT = "memwall-report"
SCHEMA_VERSION = 2
#: versions this memwall reads (older ones are upgraded on reading)
READABLE_VERSIONS = (1, 2)
#: the keys of a report file's top level
TOP_LEVEL_KEYS = ("format", "schema_version", "meta", "device", "link", "inter_link", "rows", "collectives",
                  "memory")
#: Report fields that are not in `meta`
_APART = ("rows", "collectives", "device", "link", "inter_link", "memory")
#: `meta` fields written only when known (files of single-process runs are unchanged by them)
_PLACEMENT = ("hostname", "local_rank", "group_rank")


#: a row's fields in ROW_FIELDS order, read in one C call (this runs once per row of every save)
_ROW_VALUES = operator.attrgetter(*ROW_FIELDS)


def _row_dict(r: Row) -> dict[str, Any]:
    out = dict(zip(ROW_FIELDS, _ROW_VALUES(r)))
    out["reuse"] = [list(pair) for pair in r.reuse]
    c = out.pop("collective")
    if c is not None:  # op rows leave it out: most rows are ops
        out["collective"] = dataclasses.asdict(c)
    if out["projected_time_s"] is None:  # only a what-if's rows have one: a measured report's file is unchanged
        del out["projected_time_s"]
    if out["kernels"]:  # only a GPU trace's rows name their kernels
        out["kernels"] = list(out["kernels"])
    else:
        del out["kernels"]
    if out["eager_ops"]:  # only a compiled region's rows have an eager counterfactual
        out["eager_ops"] = [list(op) for op in out["eager_ops"]]
    else:
        del out["eager_ops"]
    return out


def encode(report: Report) -> dict[str, Any]:
    """The JSON object of a report."""
    meta = {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.name not in _APART}
    meta["steps"] = list(report.steps)
    meta["tf32"] = list(report.tf32)
    if meta["compute_dtype"] is None:  # only a dtype what-if's: a measured report's file is unchanged
        del meta["compute_dtype"]
    if meta["what_if_world_size"] is None:  # only a scale what-if's
        del meta["what_if_world_size"]
    for key in _PLACEMENT:  # where a rank ran: only torch.distributed ranks say
        if meta[key] in ("", None):
            del meta[key]
    if report.step_totals:  # a list of objects, checked field by field on reading (validation.py)
        meta["step_totals"] = [dataclasses.asdict(s) for s in report.step_totals]
    else:
        del meta["step_totals"]
    out: dict[str, Any] = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "meta": meta,
        "device": None if report.device is None else report.device.to_dict(),
        "rows": [_row_dict(r) for r in report.rows],
    }
    if report.link is not None:
        out["link"] = dataclasses.asdict(report.link)
    if report.inter_link is not None:  # several nodes: the network between them
        out["inter_link"] = dataclasses.asdict(report.inter_link)
    if report.collectives:
        out["collectives"] = [_row_dict(r) for r in report.collectives]
    if report.memory is not None:
        out["memory"] = report.memory.to_dict()
    return out


def decode(cls: type[Report], data: Any, source: str = "report") -> Report:
    """A report from its JSON object; every field is checked (types, ranges, unknown or
    missing fields)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportError(f"{source} is not a memwall report (no 'format': 'memwall-report')")
    version = data.get("schema_version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise ReportError(
            f"{source} has schema_version {version!r}; this memwall reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Upgrade memwall-plugin, or re-profile with this version."
        )
    if version == 1:
        data = upgrade_v1(data, source)
    meta, rows = data.get("meta"), data.get("rows")
    if not isinstance(meta, dict) or not isinstance(rows, list):
        raise ReportError(f"{source} lacks its 'meta' object or 'rows' list")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ReportError(f"{source} has an unknown top-level field {unknown[0][:60]!r}; "
                          "was it written by a newer memwall?")
    collectives = data.get("collectives", [])
    if not isinstance(collectives, list):
        raise ReportError(f"{source}: 'collectives' must be a list")
    try:
        row_fields = dataclass_fields(Row)
        parsed = tuple(_check_row(f"rows[{i}]", r, row_fields, False) for i, r in enumerate(rows))
        comm = tuple(_check_row(f"collectives[{i}]", r, row_fields, True) for i, r in enumerate(collectives))
        kwargs = check_object("meta", meta, dataclass_fields(cls, _APART))
        device = data.get("device")
        spec = None if device is None else DeviceSpec.from_dict(check_device("device", device))
        link = data.get("link")
        kwargs["link"] = None if link is None else Link(**check_object("link", link, dataclass_fields(Link)))
        inter = data.get("inter_link")
        kwargs["inter_link"] = None if inter is None else Link(**check_object("inter_link", inter,
                                                                              dataclass_fields(Link)))
        memory = data.get("memory")
        kwargs["memory"] = None if memory is None else _memory(memory)
        for i, step in enumerate(kwargs.get("step_totals", ())):
            over = step.counted_time_s > step.time_s * (1 + 1e-9)
            if step.last_step < step.first_step or step.step_count < 1 or over:
                raise FieldError(f"meta.step_totals[{i}] is not a step: its last step precedes its first, it holds "
                                 "no step, or its counted time exceeds its op time")
        if spec is not None and any("dram_bandwidth_bytes_per_s" not in r for r in rows if isinstance(r, dict)):
            parsed = _main_memory_rows(parsed, rows, spec)
        return cls(rows=parsed, collectives=comm, device=spec, **kwargs)
    except FieldError as exc:
        raise invalid(source, exc) from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise ReportError(f"{source} has a malformed field: {exc}") from None


def _main_memory_rows(parsed: tuple[Row, ...], raw: list[Any], spec: DeviceSpec) -> tuple[Row, ...]:
    """Rows written before memory levels (no reuse recorded): every byte from main memory, as
    they were placed then."""
    main = spec.memory_levels[-1].name
    return tuple(dataclasses.replace(r, memory_level=main, dram_bandwidth_bytes_per_s=r.bandwidth_bytes_per_s)
                 if "dram_bandwidth_bytes_per_s" not in d else r for r, d in zip(parsed, raw, strict=True))


def _check_row(path: str, data: Any, fields: Any, collective: bool) -> Row:
    row = Row(**check_object(path, data, fields))
    c = row.collective
    if (c is not None) != collective:
        raise FieldError(f"{path} is {'not ' if collective else ''}a collective, in the list of "
                         f"{'collectives' if collective else 'op rows'}")
    if c is not None:
        if c.kind not in KINDS:
            raise FieldError(f"{path}.collective.kind must be one of {', '.join(KINDS)}, got {c.kind!r}")
        if c.timed_calls > row.calls:
            raise FieldError(f"{path}.collective.timed_calls ({c.timed_calls}) exceeds calls ({row.calls})")
    return row


def _memory(data: Any) -> MemoryReport:
    """The memory object, every field checked: byte counts whole and non-negative, categories
    known, each timeline point [op index, phase, one count per category, module], modules as
    MemoryModule's fields."""
    if not isinstance(data, dict):
        raise FieldError("memory must be an object")
    known = {f.name for f in dataclasses.fields(MemoryReport)}
    unknown = [k for k in data if k not in known]
    if unknown:
        raise FieldError(f"memory has an unknown field {unknown[0][:60]!r}")
    out: dict[str, Any] = {"peak_bytes": check_int("memory.peak_bytes", data.get("peak_bytes"))}
    for key in ("peak_by_category", "peak_elements", "peak_kept_bytes"):
        values = data.get(key, {})
        if not isinstance(values, dict) or any(k not in CATEGORIES for k in values):
            raise FieldError(f"memory.{key} must map the categories ({', '.join(CATEGORIES)}) to counts")
        out[key] = {k: check_int(f"memory.{key}.{k}", v) for k, v in values.items()}
    peak_at = data.get("peak_at", ["", "", ""])
    if not isinstance(peak_at, list) or len(peak_at) != 3:
        raise FieldError("memory.peak_at must be [phase, op, module]")
    out["peak_at"] = tuple(check_str(f"memory.peak_at[{i}]", v) for i, v in enumerate(peak_at))
    out["peak_step"] = check_int("memory.peak_step", data.get("peak_step", 0))
    for key in ("capacity_bytes", "allocator_peak_bytes", "trainable_elements", "model_parameter_bytes",
                "rank_parameter_bytes", "state_model_bytes", "state_rank_bytes", "forward_only_parameter_bytes"):
        value = data.get(key)
        out[key] = None if value is None else check_int(f"memory.{key}", value)
    out["sharded_over"] = check_int("memory.sharded_over", data.get("sharded_over", 1), 1)
    out["sharded_by"] = check_str("memory.sharded_by", data.get("sharded_by", ""))
    out["state_sharded_over"] = check_int("memory.state_sharded_over", data.get("state_sharded_over", 1), 1)
    link = data.get("link_bytes_per_s")
    out["link_bytes_per_s"] = None if link is None else check_float("memory.link_bytes_per_s", link)
    out["capacity_source"] = check_str("memory.capacity_source", data.get("capacity_source", ""))
    notes = data.get("notes", [])
    if not isinstance(notes, list):
        raise FieldError("memory.notes must be a list of strings")
    out["notes"] = tuple(check_str(f"memory.notes[{i}]", n) for i, n in enumerate(notes))
    modules = data.get("modules", [])
    if not isinstance(modules, list):
        raise FieldError("memory.modules must be a list")
    fields = dataclass_fields(MemoryModule)
    out["modules"] = tuple(MemoryModule(**check_object(f"memory.modules[{i}]", m, fields))
                           for i, m in enumerate(modules))
    timeline = data.get("timeline", [])
    if not isinstance(timeline, list):
        raise FieldError("memory.timeline must be a list")
    points = []
    for i, point in enumerate(timeline):
        where = f"memory.timeline[{i}]"
        if not isinstance(point, list) or len(point) != 4 or not isinstance(point[2], list) \
                or len(point[2]) != len(CATEGORIES):
            raise FieldError(f"{where} must be [op index, phase, [{len(CATEGORIES)} byte counts], module]")
        points.append((check_int(f"{where}[0]", point[0]), check_str(f"{where}[1]", point[1]),
                       tuple(check_int(f"{where}[2][{j}]", v) for j, v in enumerate(point[2])),
                       check_str(f"{where}[3]", point[3])))
    out["timeline"] = tuple(points)
    fixed = data.get("timeline_batch_fixed", [])
    if not isinstance(fixed, list) or (fixed and len(fixed) != len(points)) \
            or any(not isinstance(point, list) or len(point) != len(CATEGORIES) for point in fixed):
        raise FieldError("memory.timeline_batch_fixed must hold, per timeline point, "
                         f"[{len(CATEGORIES)} byte counts]")
    out["timeline_batch_fixed"] = tuple(tuple(check_int(f"memory.timeline_batch_fixed[{i}][{j}]", v)
                                              for j, v in enumerate(point)) for i, point in enumerate(fixed))
    return MemoryReport(**out)


_V1_COMM_META = ("backend", "job", "local_world_size", "comm_time_s", "overlapped_s")


def upgrade_v1(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A version-1 report as version 2: its `comm` object becomes the link, the collective rows
    and run fields of `meta`. Its own fields are checked as version 2's are, after the move."""
    out = {k: v for k, v in data.items() if k != "comm"}
    comm = data.get("comm")
    if comm is None:
        return out
    if not isinstance(comm, dict):
        raise ReportError(f"{source}: 'comm' must be an object")
    unknown = [k for k in comm if k not in ("link", "collectives", *_V1_COMM_META)]
    if unknown:
        raise ReportError(f"{source}: comm has an unknown field {unknown[0][:60]!r}")
    meta = out.get("meta")
    if isinstance(meta, dict):
        out["meta"] = {**meta, **{k: comm[k] for k in _V1_COMM_META if k in comm}}
    link = comm.get("link")
    if isinstance(link, dict):
        value = link.get("bytes_per_s")
        out["link"] = {"name": link.get("name"), "note": link.get("note", ""),
                       "bandwidth": None if value is None else {"value": value, "source": link.get("source")}}
    else:
        out["link"] = link
    rows = comm.get("collectives", [])
    if not isinstance(rows, list):
        raise ReportError(f"{source}: comm.collectives must be a list")
    out["collectives"] = [_v1_collective(r) for r in rows]
    return out


_V1_COLLECTIVE = ("kind", "group_size", "timed_calls", "message_bytes", "message_elements", "bytes_moved")


def _v1_collective(r: Any) -> Any:
    if not isinstance(r, dict):
        return r  # the check names it
    row = {k: v for k, v in r.items() if k not in (*_V1_COLLECTIVE, "link_bytes_per_s")}
    row.update(overload="default", flops=None, bytes_read=0, bytes_written=0, elements_read=0, elements_written=0,
               peak_flops_per_s=None, bandwidth_bytes_per_s=r.get("link_bytes_per_s"),
               collective={k: r[k] for k in _V1_COLLECTIVE if k in r})
    return row
