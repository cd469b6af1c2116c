"""A `MemoryReport` from what the capture's memory tracker saw (hooks/memory.py) and the rows."""

from __future__ import annotations

import os
from typing import Any

from memwall_plugin.devices import DeviceSpec
from memwall_plugin.diff import COMPILED_REGION
from memwall_plugin.hooks.memory import forward_flops, trailing_flops
from memwall_plugin.memory import CATEGORIES, MemoryModule, MemoryReport
from memwall_plugin.records import BACKWARD, FORWARD, RECOMPUTE
from memwall_plugin.rows import Row


def host_memory_bytes() -> int | None:
    """The host's physical RAM (the capacity a CPU run has)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def capacity_of(device: DeviceSpec | None) -> tuple[int | None, str]:
    if device is not None and device.memory_bytes:
        source = "device properties" if device.kind == "cuda" else "device table"
        return device.memory_bytes, f"{device.name}, {source}"
    if device is None or device.kind == "cpu":
        ram = host_memory_bytes()
        return ram, "host RAM" if ram else ""
    return None, ""


def memory_report(tracker: Any, totals: Any, rows: tuple[Row, ...], device: DeviceSpec | None,
                  link: Any = None, flops_of: Any = None) -> MemoryReport | None:
    """The report of `totals` (hooks/memory.py's MemoryTotals: a step, a window or the run)."""
    best = totals.best
    if best is None:
        return None
    n_steps = max(1, totals.steps)
    fwd_flops: dict[str, int] = {}
    fwd_time: dict[str, float] = {}
    for r in rows:
        if r.phase == FORWARD:
            fwd_flops[r.module] = fwd_flops.get(r.module, 0) + (r.flops or 0)
            fwd_time[r.module] = fwd_time.get(r.module, 0.0) + r.time_s
    own, acts, outputs = totals.owned, totals.activations, totals.outputs
    trailing = trailing_flops(best, flops_of) if flops_of is not None else {}
    per_step = {m: flops // n_steps for m, flops in fwd_flops.items()}
    if flops_of is not None:
        # what a checkpoint recomputes: the forward passes with grad mode on of the step the
        # memory is of (an evaluation's under no_grad, which the rows' forward holds, never is);
        # their time, the rows' in the same share
        recomputable = forward_flops(best, flops_of)
        for m, flops in fwd_flops.items():
            fwd_time[m] = fwd_time.get(m, 0.0) * (min(1.0, recomputable.get(m, 0) * n_steps / flops) if flops else 1.0)
        per_step = recomputable
    names = sorted(set(own) | set(acts) | set(outputs) | set(per_step))
    modules = tuple(
        MemoryModule(
            module=m,
            parameter_bytes=own.get(m, [0, 0, 0])[0],
            # as an optimizer step read them, else the most held at once
            gradient_bytes=totals.grads_read.get(m, own.get(m, [0, 0, 0])[1]) if totals.grads_read
            else own.get(m, [0, 0, 0])[1],
            optimizer_state_bytes=own.get(m, [0, 0, 0])[2],
            activation_bytes=acts.get(m, 0),
            output_bytes=outputs.get(m, 0),
            forward_flops=per_step.get(m, 0),
            forward_time_s=fwd_time.get(m, 0.0) / n_steps,
            trailing_flops=trailing.get(m, 0),
        )
        for m in names
    )
    capacity, source = capacity_of(device)
    notes = []
    forward_only = _forward_only_parameter_bytes(rows, modules)
    if tracker.failed:
        notes.append(f"memory tracking stopped early: {tracker.failed}")
    if any(r.op == COMPILED_REGION for r in rows):
        # what Inductor's generated code allocates and frees inside a region runs below the ops
        notes.append("tensors a compiled region makes and frees inside it (its temporaries) are not seen: the "
                     "peak can be below the process's (README, Known limits)")
    return MemoryReport(
        peak_bytes=best.peak,
        peak_by_category=dict(zip(CATEGORIES, best.peak_by_cat)),
        peak_elements=dict(zip(CATEGORIES, best.peak_elems)),
        peak_kept_bytes={c: kept for c, kept in zip(CATEGORIES, best.peak_kept) if kept},
        peak_at=best.peak_at,
        peak_step=best.step,
        capacity_bytes=capacity,
        capacity_source=source,
        modules=modules,
        timeline=tuple(point[:4] for point in best.timeline),
        timeline_batch_fixed=tuple(point[4] for point in best.timeline),
        allocator_peak_bytes=totals.allocator_peak,
        trainable_elements=tracker.trainable_elements,
        sharded_over=tracker.sharded_over,
        sharded_by=tracker.sharded_by,
        model_parameter_bytes=tracker.model_parameter_bytes if tracker.sharded_over > 1 else None,
        rank_parameter_bytes=tracker.rank_parameter_bytes if tracker.sharded_over > 1 else None,
        state_sharded_over=tracker.state_sharded_over,
        state_model_bytes=tracker.state_model_bytes if tracker.state_sharded_over > 1 else None,
        state_rank_bytes=tracker.state_rank_bytes if tracker.state_sharded_over > 1 else None,
        link_bytes_per_s=getattr(link, "bytes_per_s", None),
        notes=tuple(notes),
        forward_only_parameter_bytes=forward_only,
    )


def _forward_only_parameter_bytes(rows: tuple[Row, ...], modules: tuple[MemoryModule, ...]) -> int | None:
    """The parameter bytes of the model's parts no backward pass ran through (a frozen reference
    model or teacher called under no_grad, a frozen feature extractor): ZeRO-3 gathers them for
    their forward only. A part is a top-level module (the first name of a path: a second model's
    own name, or a child of the first model), as sharding wraps whole parts: a frozen layer inside
    a part that trains is gathered with it in backward. None where nothing ran backward, or a
    compiled region's backward hides which parts it ran through."""
    backward = {r.module.split(".", 1)[0] for r in rows if r.phase in (BACKWARD, RECOMPUTE)}
    if not backward or any(r.op == COMPILED_REGION and r.phase in (BACKWARD, RECOMPUTE) for r in rows):
        return None
    return sum(m.parameter_bytes for m in modules
               if m.module and m.parameter_bytes and m.module.split(".", 1)[0] not in backward)


__all__ = ["capacity_of", "host_memory_bytes", "memory_report"]
