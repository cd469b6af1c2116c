"""torch.compile while memwall records: compiled code runs compiled, each region one row.

memwall's dispatch mode declares `ignore_compile_internals`: Dynamo compiles as it would bare
(the mode is off while it traces) and the compiled program runs, bit for bit the program the
user compiled (the earlier "force_eager" approach ran it eagerly: other numerics, other
bottlenecks, no fusion). While a profile is open, Inductor wraps each region it compiles in its
`inductor_compiled_code` higher-order operator, so the mode sees a region's run as one call:
one row, timed as it ran, its FLOPs those of the aten ops Inductor fused into it (from the
compiled graph, by the registry's formulas), its bytes the region's inputs and outputs (what it
fused stays in registers and caches). Inductor wraps regions from the import of
memwall on (a dozen microseconds per region call); a region compiled before memwall was imported
is not wrapped: its library calls (matmuls) show, its fused kernels do not. Backends without
code generation (aot_eager, eager) run aten ops, which are recorded one by one.
"""

from __future__ import annotations

from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    compiled_region_graph,
    hop_name,
    is_higher_order_op,
    is_op_overload,
    propagate_shapes,
    wrap_compiled_regions,
    wrap_compiled_regions_from_now_on,
)
from memwall_plugin.hooks.score_facts import flex_scores
from memwall_plugin.hooks.signatures import build_call, device_of, signature

from memwall_plugin.formulas import REGISTRY
from memwall_plugin.records import FACTS_KEY, OpCall, RegionFacts


class CompiledRegions:
    """Holds Inductor's region wrapping on from `enter()` to `exit()` (nested profiles count)."""

    _depth = 0
    _previous: bool | None = None

    def enter(self) -> None:
        cls = CompiledRegions
        if cls._depth == 0:
            cls._previous = wrap_compiled_regions(True)
        cls._depth += 1

    def exit(self) -> None:
        cls = CompiledRegions
        if cls._depth == 0:
            return
        cls._depth -= 1
        if cls._depth == 0 and cls._previous is not None:
            wrap_compiled_regions(cls._previous)


# Regions are wrapped from memwall's import on (about 12 us per region call on this project's CPU
# when no profile is open), so that a model compiled before a profile opens is seen whole in it.
wrap_compiled_regions_from_now_on()

#: region id -> (its static op calls, its flex_attention nodes, its placeholders, a description)
_REGIONS: dict[int, tuple[tuple[OpCall, ...] | None, tuple[Any, ...], tuple[Any, ...], str]] = {}
_FLEX = ("flex_attention", "flex_attention_backward")


def _val(node: Any) -> Any:
    return torch.fx.node.map_arg(node, lambda n: n.meta.get("val"))


def _call_of(node: Any, facts: Any = None) -> OpCall:
    args, kwargs, out = _val(node.args), _val(node.kwargs), node.meta.get("val")
    kw = {k: signature(v) for k, v in kwargs.items()}
    if facts is not None:
        kw[FACTS_KEY] = facts
    return build_call(node.target, tuple(signature(a) for a in args), kw, signature(out), device_of((), out))


def _analyse(gm: Any, inputs: list[Any]) -> tuple[tuple[OpCall, ...] | None, tuple[Any, ...], tuple[Any, ...], str]:
    try:
        propagate_shapes(gm, inputs)
    except Exception as err:  # shapes only the run knows (a while_loop's carried values): uncounted
        return None, (), (), f"compiled region, its ops not sized ({type(err).__name__})"
    static: list[OpCall] = []
    flex: list[Any] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if is_higher_order_op(target) and hop_name(target) in _FLEX:
            flex.append(node)
        elif is_op_overload(target) or is_higher_order_op(target):
            static.append(_call_of(node))
    placeholders = tuple(n for n in gm.graph.nodes if n.op == "placeholder")
    names = [c.op.removeprefix("aten.") for c in static if c.op not in _VIEWS] + ["flex_attention"] * len(flex)
    distinct = list(dict.fromkeys(names))
    shown = ", ".join(distinct[:4]) + (", ..." if len(distinct) > 4 else "")
    text = f"compiled region: {len(names)} ops fused ({shown})" if names else "compiled region"
    # what would leave the region uncounted, named where the user sees the row
    missing = sorted({c.op for c in static if REGISTRY.flop_formula(c.op, c.overload) is None})
    if missing:
        text += f"; no FLOP formula for {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
    return tuple(static), tuple(flex), placeholders, text


#: view and metadata ops: not named in a region's description
_VIEWS = frozenset({"aten.view", "aten.permute", "aten.reshape", "aten.expand", "aten.t", "aten.transpose",
                    "aten.unsqueeze", "aten.squeeze", "aten.slice", "aten.select", "aten._unsafe_view",
                    "aten.alias", "aten.as_strided"})


def region_facts(args: tuple[Any, ...], kwargs: dict[str, Any]) -> RegionFacts | None:
    """The RegionFacts of an `inductor_compiled_code(region, inputs)` call."""
    if len(args) < 2:
        return None
    found = compiled_region_graph(args[0])
    if found is None:
        return None
    idx, gm = found
    region = _REGIONS.get(idx)
    if region is None:
        if len(_REGIONS) > 4096:  # recompiles without end: forget the oldest analyses
            _REGIONS.clear()
        region = _REGIONS[idx] = _analyse(gm, list(args[1]))
    static, flex, placeholders, text = region
    if static is None or not flex:
        return RegionFacts((idx,), static, text)
    # flex_attention's BlockMask is data: read it from the inputs this run was given
    inputs = args[1]
    env = {node: value for node, value in zip(placeholders, inputs, strict=False)}
    calls, facts = [], []
    for node in flex:
        # the run's inputs where the graph takes them; shapes (fake tensors) for what it computes
        runtime = torch.fx.node.map_arg(node.args, lambda n: env[n] if n in env else n.meta.get("val"))
        fact = flex_scores(hop_name(node.target), tuple(runtime))
        facts.append(fact)
        calls.append(_call_of(node, fact))
    return RegionFacts((idx, tuple(facts)), static + tuple(calls), text)


__all__ = ["CompiledRegions", "region_facts"]
