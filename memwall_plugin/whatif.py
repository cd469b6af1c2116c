"""What-ifs: a report re-scored without re-running the model.

Every tensor re-sized to another element size (the paper's 8-bit accounting), every floating-point
op computed in another dtype (under its peak, its tensors at its size), every row placed on
another device's roofs (its link too, for ranks on one host). FLOPs and measured times stay as
measured; the changes come back as report fields, which `Report.rescore` applies.

A what-if also projects each op row's time on its device (`Row.projected_time_s`): the roofline
time there (its dtype's peak, the roof of the memory level its data came from), at least the
device's launch floor per call (`roofline.launch_floor_s`). A projection is a roofline bound, not
a measurement: no kernel reaches its roof. A report as measured has none.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from memwall_plugin import comm, roofline
from memwall_plugin.ceilings import place_collectives, place_rows, relink
from memwall_plugin.devices import DeviceSpec, lookup_device
from memwall_plugin.rows import Row

if TYPE_CHECKING:  # a report is read here, never built: report.py calls this module
    from memwall_plugin.report import Report


def resized(rows: tuple[Row, ...], bytes_per_element: int) -> tuple[Row, ...]:
    """Rows with every tensor (every collective's message) at `bytes_per_element` per element.
    A compiled region's eager counterfactual is dropped: it keeps bytes, not elements."""
    if isinstance(bytes_per_element, bool) or not isinstance(bytes_per_element, int) or bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be a positive int (1 for 8-bit, 2 for 16-bit), "
                         f"got {bytes_per_element!r}")
    return tuple(
        comm.resized(r, bytes_per_element) if r.collective is not None else dataclasses.replace(
            r, bytes_read=r.elements_read * bytes_per_element, bytes_written=r.elements_written * bytes_per_element,
            eager_ops=())
        for r in rows
    )


#: The dtypes a what-if can compute in: name -> (torch dtype name, bytes per element). A what-if
#: dtype is where the run's floating-point ops would compute and store ("in bf16"): their rows go
#: under that dtype's peak, and every tensor takes its element size unless `bytes_per_element` says.
DTYPES = {
    "fp64": ("float64", 8), "float64": ("float64", 8),
    "fp32": ("float32", 4), "float32": ("float32", 4),
    "bf16": ("bfloat16", 2), "bfloat16": ("bfloat16", 2),
    "fp16": ("float16", 2), "float16": ("float16", 2), "half": ("float16", 2),
    "fp8": ("float8_e4m3fn", 1), "float8_e4m3fn": ("float8_e4m3fn", 1),
}
#: row dtypes that a dtype what-if changes: the real floating-point ones (complex and integer
#: arithmetic, and bool, stay as they ran)
FLOATING = frozenset({"float64", "float32", "bfloat16", "float16", "half", "float8_e4m3fn", "float8_e5m2",
                      "float8_e4m3fnuz", "float8_e5m2fnuz"})


def dtype_of(dtype: str) -> tuple[str, int]:
    """A what-if dtype ("bf16", "bfloat16", "torch.float16", ...) -> (torch dtype name, bytes per element)."""
    found = DTYPES.get(str(dtype).removeprefix("torch.").lower()) if isinstance(dtype, str) else None
    if found is None:
        names = ", ".join(k for k in DTYPES if not k.startswith(("float", "half")))
        raise ValueError(f"dtype must be one of {names} (or torch's name for one), got {dtype!r}")
    return found


def computed_in(rows: tuple[Row, ...], dtype: str) -> tuple[Row, ...]:
    """Op rows with their floating-point ops computed in `dtype` (a torch dtype name)."""
    return tuple(dataclasses.replace(r, dtype=dtype) if r.collective is None and r.dtype in FLOATING else r
                 for r in rows)


def device_of(device: str | DeviceSpec) -> DeviceSpec:
    spec = lookup_device(device) if isinstance(device, str) else device
    if not isinstance(spec, DeviceSpec):
        raise TypeError(f"device must be a name like 'H100 SXM' or a DeviceSpec, got {device!r}")
    return spec


def projected(rows: tuple[Row, ...], device: DeviceSpec | None) -> tuple[Row, ...]:
    """Op rows with their projected time on `device`, the one they are placed on (None: rows as
    measured, no projection). Collectives are not projected: their time is the link's and the
    overlap with compute, which a roofline does not say."""
    floor = roofline.launch_floor_s(device.kind) if device is not None else 0.0
    return tuple(
        dataclasses.replace(r, projected_time_s=None if device is None or r.collective is not None else
                            roofline.projected_time_s(r.flops, r.bytes, r.peak_flops_per_s,
                                                      r.bandwidth_bytes_per_s, r.calls, floor))
        for r in rows
    )


def rescored(report: Report, bytes_per_element: int | None = None,
             device: str | DeviceSpec | None = None, dtype: str | None = None) -> dict[str, Any]:
    """The fields of `report` that change under the what-if, its rows projected on the device
    (none when the what-if leaves the run as measured: the device it ran on, its dtypes and
    element sizes)."""
    changes: dict[str, Any] = {}
    rows, collectives = report.rows, report.collectives
    if dtype is not None:
        name, size = dtype_of(dtype)
        rows = computed_in(rows, name)
        changes.update(rows=rows, compute_dtype=name)
        bytes_per_element = size if bytes_per_element is None else bytes_per_element
    if bytes_per_element is not None:
        rows, collectives = resized(rows, bytes_per_element), resized(collectives, bytes_per_element)
        changes.update(rows=rows, collectives=collectives, bytes_per_element=bytes_per_element)
    if device is None and dtype is not None:
        device = report.device  # placed again: each row under its new dtype's peak
    if device is not None:
        spec = device_of(device)
        # TF32 is a property of the run's settings; on a new device it applies if it has TF32
        changes.update(rows=place_rows(rows, spec, report.tf32), device=spec)
        if report.link is not None:
            link = relink(report.link, spec, report.world_size, report.local_world_size)
            changes.update(link=link, collectives=place_collectives(collectives, link))
    if changes:
        target: DeviceSpec | None = changes.get("device", report.device)
        as_measured = changes.get("bytes_per_element", report.bytes_per_element) is None and changes.get(
            "compute_dtype", report.compute_dtype) is None and (target is None or target.name == report.measured_on)
        changes["rows"] = projected(changes.get("rows", report.rows), None if as_measured else target)
    return changes


def bound_changes(before: tuple[Row, ...], after: tuple[Row, ...]) -> tuple[tuple[Row, Row], ...]:
    """Pairs (row before, the same row after) whose bound differs: the ops that change side of
    the ridge between two scorings of one run."""
    if len(before) != len(after):
        raise ValueError("bound_changes compares two scorings of the same run (same rows)")
    return tuple((a, b) for a, b in zip(before, after) if a.bound != b.bound)
