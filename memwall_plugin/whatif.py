"""What-ifs: a report re-scored without re-running the model.

Every tensor re-sized to another element size (the paper's 8-bit accounting), every row placed on
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
    """Rows with every tensor (every collective's message) at `bytes_per_element` per element."""
    if isinstance(bytes_per_element, bool) or not isinstance(bytes_per_element, int) or bytes_per_element <= 0:
        raise ValueError(f"bytes_per_element must be a positive int (1 for 8-bit, 2 for 16-bit), "
                         f"got {bytes_per_element!r}")
    return tuple(
        comm.resized(r, bytes_per_element) if r.collective is not None else dataclasses.replace(
            r, bytes_read=r.elements_read * bytes_per_element, bytes_written=r.elements_written * bytes_per_element)
        for r in rows
    )


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
             device: str | DeviceSpec | None = None) -> dict[str, Any]:
    """The fields of `report` that change under the what-if, its rows projected on the device
    (none when the what-if leaves the run as measured: the device it ran on, its element sizes)."""
    changes: dict[str, Any] = {}
    rows, collectives = report.rows, report.collectives
    if bytes_per_element is not None:
        rows, collectives = resized(rows, bytes_per_element), resized(collectives, bytes_per_element)
        changes.update(rows=rows, collectives=collectives, bytes_per_element=bytes_per_element)
    if device is not None:
        spec = device_of(device)
        # TF32 is a property of the run's settings; on a new device it applies if it has TF32
        changes.update(rows=place_rows(rows, spec, report.tf32), device=spec)
        if report.link is not None:
            link = relink(report.link, spec, report.world_size, report.local_world_size)
            changes.update(link=link, collectives=place_collectives(collectives, link))
    if changes:
        target: DeviceSpec | None = changes.get("device", report.device)
        as_measured = changes.get("bytes_per_element", report.bytes_per_element) is None and (
            target is None or target.name == report.measured_on)
        changes["rows"] = projected(changes.get("rows", report.rows), None if as_measured else target)
    return changes


def bound_changes(before: tuple[Row, ...], after: tuple[Row, ...]) -> tuple[tuple[Row, Row], ...]:
    """Pairs (row before, the same row after) whose bound differs: the ops that change side of
    the ridge between two scorings of one run."""
    if len(before) != len(after):
        raise ValueError("bound_changes compares two scorings of the same run (same rows)")
    return tuple((a, b) for a, b in zip(before, after) if a.bound != b.bound)
