"""torch.compile while memwall records: compiled code runs compiled, each region one row.

memwall's dispatch mode declares `ignore_compile_internals`: Dynamo compiles as it would bare
(the mode is off while it traces) and the compiled program runs, bit for bit the program the
user compiled (the earlier "force_eager" approach ran it eagerly: other numerics, other
bottlenecks, no fusion). While a profile is open, Inductor wraps each region it compiles in its
`inductor_compiled_code` higher-order operator, so the mode sees a region's run as one call:
one row, timed as it ran, its FLOPs those of the aten ops Inductor fused into it (from the
compiled graph, by the registry's formulas), its bytes the region's inputs and outputs (what it
fused stays in registers and caches). Its eager counterfactual (what fusion saved) is the ops an
eager run would dispatch instead: the region graph's nodes grouped back into the aten ops Inductor
decomposed (by the origins memwall's post-grad pass notes, hooks/_torch_private.py), forward ops
recomputed in backward left out. Inductor wraps regions from the import of
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
    region_eager_origins,
    wrap_compiled_regions,
    wrap_compiled_regions_from_now_on,
)
from memwall_plugin.hooks.score_facts import flex_scores
from memwall_plugin.hooks.signatures import build_call, device_of, meta_of_key, signature

from memwall_plugin.formulas import REGISTRY
from memwall_plugin.records import FACTS_KEY, EagerOp, Extent, OpCall, RegionFacts, Traffic, extent
from memwall_plugin.registry import is_view


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

#: region id -> (its static op calls, its flex_attention nodes, its placeholders, a description,
#: the ops an eager run would dispatch instead)
_REGIONS: dict[int, tuple[tuple[OpCall, ...] | None, tuple[Any, ...], tuple[Any, ...], str,
                          tuple[EagerOp, ...] | None]] = {}
_FLEX = ("flex_attention", "flex_attention_backward")


def _val(node: Any) -> Any:
    return torch.fx.node.map_arg(node, lambda n: n.meta.get("val"))


def _call_of(node: Any, facts: Any = None) -> OpCall:
    args, kwargs, out = _val(node.args), _val(node.kwargs), node.meta.get("val")
    kw = {k: signature(v) for k, v in kwargs.items()}
    if facts is not None:
        kw[FACTS_KEY] = facts
    return build_call(node.target, tuple(signature(a) for a in args), kw, signature(out), device_of((), out))


def _extents(value: Any) -> list[Extent]:
    """The extent of each tensor in a node's value (a tensor or a tuple of them)."""
    if isinstance(value, torch.Tensor):
        return [extent(meta_of_key(signature(value)))]
    if isinstance(value, (list, tuple)):
        return [e for item in value for e in _extents(item)]
    return []


def _eager_ops(gm: Any, calls: dict[Any, OpCall], origins: dict[str, tuple[str, str, int | None, bool]]
               ) -> tuple[EagerOp, ...]:
    """The ops an eager run of this graph would dispatch, in graph order: a node Inductor kept
    as it was is its own op; the nodes one op was decomposed into (the same original op and
    autograd sequence number, or, where there is none, joined by an edge) are that one op.
    Forward ops a backward graph recomputes are left out: an eager run keeps their results."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and not origins.get(n.name, (0, 0, 0, False))[3]]

    def product(node: Any) -> bool:  # a node a decomposition made, not the eager op itself
        found = origins.get(node.name)
        return found is not None and not (is_op_overload(node.target) and str(node.target) == f"{found[0]}.{found[1]}")

    parent = {n: n for n in nodes}

    def root(n: Any) -> Any:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    by_key: dict[tuple[str, str, int], Any] = {}
    for n in nodes:
        if not product(n):
            continue
        op, overload, seq, _ = origins[n.name]
        if seq is not None:
            first = by_key.setdefault((op, overload, seq), n)
            parent[root(n)] = root(first)
    for n in nodes:
        if not product(n):
            continue
        for m in n.all_input_nodes:
            if m in parent and product(m) and origins[m.name][:2] == origins[n.name][:2] and (
                    origins[m.name][2] is None or origins[n.name][2] is None):
                parent[root(n)] = root(m)
    groups: dict[Any, list[Any]] = {}
    for n in nodes:
        groups.setdefault(root(n), []).append(n)

    out: list[EagerOp] = []
    for members in groups.values():
        first = members[0]
        if not product(first):  # not decomposed: the call itself
            if first in calls:
                out.append(EagerOp(calls[first].op, (calls[first],)))
            continue
        parts = tuple(calls[n] for n in members if n in calls)
        if not parts or all(is_view(p) for p in parts):
            continue  # views and tuple items: move nothing
        inside = set(members)
        read = {m for n in members for m in n.all_input_nodes if m not in inside}
        # results the graph's other ops use, and the graph's outputs that are no step on the
        # way to another of the op's nodes (those are intermediates the graph saves for
        # backward, where the eager op keeps its own result)
        written = [n for n in members if any(u not in inside and u.op != "output" for u in n.users)
                   or (any(u.op == "output" for u in n.users) and not any(u in inside for u in n.users))]
        traffic = Traffic(tuple(e for m in read for e in _extents(m.meta.get("val"))),
                          tuple(e for n in written for e in _extents(n.meta.get("val"))))
        out.append(EagerOp(origins[first.name][0], parts, traffic))
    return tuple(out)


def _analyse(gm: Any, inputs: list[Any]
             ) -> tuple[tuple[OpCall, ...] | None, tuple[Any, ...], tuple[Any, ...], str, tuple[EagerOp, ...] | None]:
    try:
        propagate_shapes(gm, inputs)
    except Exception as err:  # shapes only the run knows (a while_loop's carried values): uncounted
        return None, (), (), f"compiled region, its ops not sized ({type(err).__name__})", None
    static: list[OpCall] = []
    flex: list[Any] = []
    calls: dict[Any, OpCall] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if is_higher_order_op(target) and hop_name(target) in _FLEX:
            flex.append(node)
        elif is_op_overload(target) or is_higher_order_op(target):
            calls[node] = _call_of(node)
            static.append(calls[node])
    origins = region_eager_origins(gm)
    eager = None if origins is None or flex else _eager_ops(gm, calls, origins)
    placeholders = tuple(n for n in gm.graph.nodes if n.op == "placeholder")
    names = [c.op.removeprefix("aten.") for c in static if c.op not in _VIEWS] + ["flex_attention"] * len(flex)
    distinct = list(dict.fromkeys(names))
    shown = ", ".join(distinct[:4]) + (", ..." if len(distinct) > 4 else "")
    text = f"compiled region: {len(names)} ops fused ({shown})" if names else "compiled region"
    # what would leave the region uncounted, named where the user sees the row
    missing = sorted({c.op for c in static if REGISTRY.flop_formula(c.op, c.overload) is None})
    if missing:
        text += f"; no FLOP formula for {', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}"
    return tuple(static), tuple(flex), placeholders, text, eager


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
    static, flex, placeholders, text, eager = region
    if static is None or not flex:
        return RegionFacts((idx,), static, text, eager)
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
