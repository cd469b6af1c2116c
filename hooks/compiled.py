"""torch.compile while memwall records: compiled code runs compiled, each kernel one row.

memwall's dispatch mode declares `ignore_compile_internals`: Dynamo compiles as it would bare
(the mode is off while it traces) and the compiled program runs, bit for bit the program the
user compiled (the earlier "force_eager" approach ran it eagerly: other numerics, other
bottlenecks, no fusion). While a profile is open, Inductor wraps each region it compiles in its
`inductor_compiled_code` higher-order operator, so the mode sees a region's run as one call.
On CPU it runs that call with the generated module's kernels observed (`kernels_observed`,
hooks/_torch_private.py: its `cpp_fused_*` functions, `extern_kernels` and the ops it calls
itself (`torch.ops.aten.*`: Inductor's fallbacks, CPU flash attention; custom ops, which Inductor
never lowers, `torch.ops.transformers.grouped_mm_fallback`) swapped for timing
wrappers for that call, the same kernels on the same buffers: numerics unchanged, nothing
recompiled), and each kernel becomes a row: timed as it ran, its bytes the buffers it read and
wrote (the C++ signature's in_ptr/out_ptr/in_out_ptr; a library call's tensors and its out=),
its FLOPs those of the post-grad graph's nodes it computes (`split_by_kernel`: a library call
takes the first unmatched node of its op with the shape it writes; a fused kernel, named after
the original aten ops it fused, takes each remaining node whose op its name lists, at or after
its inputs' kernels), its module the one those nodes were traced in (their nn_module_stack, as
the origins pass notes it). The region's own row keeps the wrapper's time between kernels and
any node no kernel was matched to, named in its description. Where no kernel is observed (a
region without its generated module; a CUDA region: Triton kernels are not observed yet) the
region is one row: its FLOPs those of the aten ops it fused, its bytes its inputs and outputs.
Each kernel's eager counterfactual (what fusion saved) is the ops an eager run would dispatch
instead: the region graph's nodes grouped back into the aten ops Inductor decomposed (by the
origins memwall's post-grad pass notes), forward ops recomputed in backward left out; an eager
op whose nodes span kernels goes to the kernel of its first matched node. Inductor wraps regions
from the import of memwall on (a dozen microseconds per region call); a region compiled before
memwall was imported is not wrapped: its library calls (matmuls) show, its fused kernels do not.
Backends without code generation (aot_eager, eager) run aten ops, recorded one by one.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    compiled_region_graph,
    hop_name,
    is_higher_order_op,
    is_op_overload,
    never_traced,
    propagate_shapes,
    region_eager_origins,
    region_graph_kept,
    region_is_optimizer_step,
    region_node_modules,
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

#: region id (with its sizes, for a dynamic-shape graph) -> (its static op calls, its
#: flex_attention nodes, its placeholders, a description, the ops an eager run would dispatch
#: instead)
_REGIONS: dict[Any, tuple[tuple[OpCall, ...] | None, tuple[Any, ...], tuple[Any, ...], str,
                          tuple[EagerOp, ...] | None]] = {}
_FLEX = ("flex_attention", "flex_attention_backward")
#: a dynamic-shape region's id -> the keys of its analyses, oldest first: at most _SIZES_KEPT
#: (sizes come and go in a run of varying lengths; an analysis of a large graph holds megabytes)
_SIZED: dict[int, list[Any]] = {}
_SIZES_KEPT = 64


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
               ) -> tuple[tuple[EagerOp, tuple[str, ...]], ...]:
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

    out: list[tuple[EagerOp, tuple[str, ...]]] = []
    for members in groups.values():
        first = members[0]
        names = tuple(n.name for n in members)
        if not product(first):  # not decomposed: the call itself
            if first in calls:
                out.append((EagerOp(calls[first].op, (calls[first],)), names))
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
        out.append((EagerOp(origins[first.name][0], parts, traffic), names))
    return tuple(out)


def _listed(names: list[str], most: int) -> str:
    """"a, b, c, ..." : the first `most` names, and an ellipsis when there are more."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def _no_formula(calls: Any) -> str:
    """"; no FLOP formula for aten.x, ..." where some of `calls` have none (what leaves a row
    uncounted, named where the user sees it); "" where every call has one."""
    missing = sorted({c.op for c in calls if REGISTRY.flop_formula(c.op, c.overload) is None})
    return f"; no FLOP formula for {_listed(missing, 3)}" if missing else ""


def _analyse(gm: Any, inputs: list[Any], idx: Any = -1
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
    grouped = None if origins is None or flex else _eager_ops(gm, calls, origins)
    eager = None if grouped is None else tuple(op for op, _ in grouped)
    if not flex:  # flex_attention's counts come from the run's BlockMask: such a region stays whole
        _NODES[idx] = _nodes_of(gm, calls, origins or {}, grouped)
    _OUTPUTS[idx] = _output_modules(gm)
    placeholders = tuple(n for n in gm.graph.nodes if n.op == "placeholder")
    names = [c.op.removeprefix("aten.") for c in static if c.op not in _VIEWS] + ["flex_attention"] * len(flex)
    shown = _listed(list(dict.fromkeys(names)), 4)
    text = f"compiled region: {len(names)} ops fused ({shown})" if names else "compiled region"
    text += _no_formula(static)
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
        return None if region_graph_kept() else UNSEEN
    idx, gm = found
    # a graph compiled for dynamic shapes takes its sizes as int inputs (its SymInts): it is
    # sized again for each set of them, where a static graph is sized once
    dims = tuple([a for a in args[1] if type(a) is int])
    key: Any = (idx, dims) if dims else idx
    region = _REGIONS.get(key)
    if region is None:
        if len(_REGIONS) > 4096:  # recompiles without end: forget the oldest analyses
            _REGIONS.clear()
            _NODES.clear()
            _OUTPUTS.clear()
            _KERNELS.clear()
            _SIZED.clear()
        if dims:  # a dynamic graph keeps its latest sizes' analyses (each holds every node's call)
            sized = _SIZED.setdefault(idx, [])
            sized.append(key)
            if len(sized) > _SIZES_KEPT:
                oldest = sized.pop(0)
                _REGIONS.pop(oldest, None)
                _NODES.pop(oldest, None)
                _OUTPUTS.pop(oldest, None)
        region = _REGIONS[key] = _analyse(gm, list(args[1]), key)
    static, flex, placeholders, text, eager = region
    optimizer = region_is_optimizer_step(gm)
    if static is None or not flex:
        return RegionFacts((key,), static, text, eager, optimizer)
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
    return RegionFacts((key, tuple(facts)), static + tuple(calls), text, optimizer=optimizer)


#: torch 2.11 keeps no graph of a compiled region: memwall keeps those it sees Inductor build in
#: this process, and says why it cannot count one it did not
UNSEEN = RegionFacts(("unseen",), None, (
    "compiled region not sized: torch 2.11 keeps no graph of a region, and this one was not compiled "
    "in this process (Inductor loaded it from its cache): TORCHINDUCTOR_FX_GRAPH_CACHE=0 "
    "TORCHINDUCTOR_AUTOGRAD_CACHE=0, or torch >= 2.13, count it"))


# --- kernel by kernel -------------------------------------------------------------------------

#: the facts of a region's own row when every op it computes went to a kernel's row: the wrapper's
#: time between kernels (allocating buffers, views), no FLOPs, no bytes
WRAPPER = RegionFacts(("wrapper",), (), "compiled region: its wrapper's code between kernels (buffers, views)")


class _Node:
    """A node of a region's graph that computes (views left out), as kernels are matched to it."""

    __slots__ = ("name", "names", "shape", "inputs", "call", "module")

    def __init__(self, name: str, names: tuple[str, ...], shape: Any, inputs: tuple[str, ...], call: OpCall,
                 module: str) -> None:
        self.name, self.names, self.shape, self.inputs = name, names, shape, inputs
        self.call, self.module = call, module


#: region id -> (its computing nodes in graph order, each eager op with its nodes' names)
_NODES: dict[Any, tuple[tuple[_Node, ...], tuple[tuple[EagerOp, tuple[str, ...]], ...] | None]] = {}
#: by region key: the module path (below the compiled module) each output of the region's graph
#: was computed in, "" where unknown (`_output_modules`)
_OUTPUTS: dict[Any, tuple[str, ...]] = {}


def _output_modules(gm: Any) -> tuple[str, ...]:
    """The module each output of a region's graph was computed in, in the order the region
    returns them. A compiled forward returns the tensors it saves for backward beside its
    results; the compiled function saves them after the region, under the compiled module's own
    path, so they are named here by the nodes that made them (`layers.3.mlp.up`), as eager names
    an activation by the module that saved it. () when the graph's nodes carry no modules."""
    modules = region_node_modules(gm)
    if not modules:
        return ()
    output = next((n for n in reversed(gm.graph.nodes) if n.op == "output"), None)
    if output is None or not output.args:
        return ()
    values = output.args[0] if isinstance(output.args[0], (tuple, list)) else (output.args[0],)
    return tuple(modules.get(v.name, "") if isinstance(v, torch.fx.Node) else "" for v in values)


def region_output_modules(facts: RegionFacts | None) -> tuple[str, ...]:
    """`_output_modules` of the region `facts` describe (() when not known)."""
    if facts is None or not facts.key:
        return ()
    return _OUTPUTS.get(facts.key[0], ())


#: (region id, its kernel calls' names and buffers) -> the kernel split (split_by_kernel)
_KERNELS: dict[Any, Any] = {}


def _nodes_of(gm: Any, calls: dict[Any, OpCall], origins: dict[str, tuple[str, str, int | None, bool]],
              grouped: tuple[tuple[EagerOp, tuple[str, ...]], ...] | None) -> Any:
    modules = region_node_modules(gm)
    through: dict[str, tuple[str, ...]] = {}  # a view node: the computing nodes it shows
    nodes: list[_Node] = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n not in calls:
            continue
        ins = tuple(dict.fromkeys(m for i in n.all_input_nodes for m in through.get(i.name, (i.name,))))
        if is_view(calls[n]):
            through[n.name] = ins
            continue
        val = n.meta.get("val")
        if isinstance(val, (tuple, list)) and val:
            # an op of several outputs: a library call writes them in order, those it computes
            # (convolution_backward of an input needing no gradient: no input gradient, None)
            val = next((v for v in val if isinstance(v, torch.Tensor)), None)
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
        # the names Inductor builds a kernel's name from (the op before decomposition), and the node's own
        names = tuple(dict.fromkeys(x for x in ((origins[n.name][0] if n.name in origins else ""),
                                               calls[n].op) if x))
        nodes.append(_Node(n.name, tuple(x.split(".", 1)[-1] for x in names), shape, ins, calls[n],
                           modules.get(n.name, "")))
    return tuple(nodes), grouped


class KernelObserver:
    """Times each kernel call of a compiled region as it runs (hooks/_torch_private.py
    `kernels_observed` routes them here) and notes the buffers it reads and writes."""

    def __init__(self) -> None:
        #: (kernel name, read buffers' signatures, written buffers' signatures, ns) per call
        self.runs: list[tuple[str, tuple[Any, ...], tuple[Any, ...], int]] = []
        self.failed = False  # a call could not be noted: the region is recorded whole
        #: ns spent noting calls (memwall's own work, inside the region's call): not the region's
        self.own_ns = 0

    def __call__(self, name: str, roles: tuple[str, ...] | None, kernel: Any, args: tuple[Any, ...],
                 kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter_ns()
        out = kernel(*args, **kwargs)
        ns = time.perf_counter_ns() - start
        try:
            self._note(name, roles, args, kwargs, out, ns)
        except Exception:  # memwall's own error: the kernel's result stands, the region stays whole
            self.failed = True
        self.own_ns += time.perf_counter_ns() - start - ns
        return out

    def _note(self, name: str, roles: tuple[str, ...] | None, args: tuple[Any, ...], kwargs: dict[str, Any],
              out: Any, ns: int) -> None:
        reads: list[Any] = []
        writes: list[Any] = []
        if roles is None:  # a library call: out= written (else its result), the rest read
            target = kwargs.get("out")
            for a in (*args, *(v for k, v in kwargs.items() if k != "out")):
                if isinstance(a, torch.Tensor):
                    reads.append(signature(a))
            for w in ((target,) if target is not None else out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(w, torch.Tensor):
                    writes.append(signature(w))
        else:
            gathered: list[torch.Tensor] = []
            for a, role in zip(args, roles, strict=False):
                if isinstance(a, torch.Tensor):
                    if role in ("in", "inout"):
                        reads.append(signature(a))
                    elif role == "gather":
                        gathered.append(a)
                    if role in ("out", "inout"):
                        writes.append(signature(a))
            if gathered:
                reads += _gathered_reads(gathered, args, roles)
        self.runs.append((name, tuple(reads), tuple(writes), ns))


def _gathered_reads(gathered: list[torch.Tensor], args: tuple[Any, ...], roles: tuple[str, ...]) -> list[Any]:
    """The signatures of what a fused kernel reads of the buffers it loads by index (an embedding's
    table, `_INDIRECT_LOAD` in hooks/_torch_private.py): a row per index it reads (its integer
    inputs' elements), or as many elements as it writes where that is more (it cannot gather more
    than it makes from them without reducing them), never more than the buffer: a flat signature
    of that many elements (a gather of one token's row from a 1 MiB table read 1 MiB before)."""
    lookups = sum(a.numel() for a, role in zip(args, roles, strict=False)
                  if role in ("in", "inout") and isinstance(a, torch.Tensor) and not a.is_floating_point()
                  and not a.is_complex())
    written = sum(a.numel() for a, role in zip(args, roles, strict=False)
                  if role in ("out", "inout") and isinstance(a, torch.Tensor))
    out = []
    for table in gathered:
        row = math.prod(table.shape[1:])  # shapes only: no op runs here
        elements = min(table.numel(), max(lookups * row, written))
        out.append((torch.Size([elements]), (1,), table.dtype))
    return out


def _short(kernel: str) -> str:
    """The op names a fused kernel's name lists: `cpp_fused_add_mul_relu_0` -> `_add_mul_relu_`."""
    body = kernel.split("fused_", 1)[-1] if "fused_" in kernel else ""
    return "_" + re.sub(r"_\d+$", "", body) + "_"


def _is_library(name: str) -> bool:
    """Whether a kernel call is a library call, `extern_kernels.mm`, or an op the wrapper calls
    itself (Inductor's fallbacks, `aten._scaled_dot_product_flash_attention_for_cpu`; custom ops,
    `transformers.grouped_mm_fallback`), named `<namespace>.<op>`; generated kernels are named
    as Python names (`cpp_fused_add_0`, `triton_poi_fused_add_0`), without a dot."""
    return "." in name


#: per kernel call: (its module below the region's, its argument key, its output key, its facts)
_Kernel = tuple[str, tuple[Any, ...], tuple[Any, ...], RegionFacts]


def split_by_kernel(idx: Any, facts: RegionFacts, runs: list[tuple[str, tuple[Any, ...], tuple[Any, ...], int]]
                    ) -> tuple[list[_Kernel], RegionFacts | None] | None:
    """A region's run kernel by kernel: per kernel call (its module below the region's, its
    argument key, its output key, its facts: the graph's nodes it computes, and the eager ops
    they came from), and the facts of what no kernel was matched to (None when nothing is left).

    Matching, from what Inductor leaves in the generated code: a library call
    (`extern_kernels.mm`, or an aten op the wrapper calls itself) is the first unmatched node of
    that op (or of an op decomposed into it) with the shape it writes (its first output's); a
    fused kernel is named after the ops it fused (their original aten
    names, `cpp_fused_add_mul_relu_0`), so each remaining node goes to the first kernel, in call
    order, at or after the kernels of its inputs, whose name lists its op. Inductor lists at most
    ten op names in a kernel's name: a node whose op is not listed is left to the remainder.
    None where the region is not split (its ops not sized, or flex_attention in it)."""
    memo_key = (idx, tuple((n, w) for n, _, w, _ in runs))
    found = _KERNELS.get(memo_key)
    if found is not None:
        return found
    if len(_KERNELS) > 4096:  # buffers of ever new sizes (dynamic shapes): forget the oldest splits
        _KERNELS.clear()
    if idx not in _NODES:
        return None
    nodes, grouped = _NODES[idx]
    owner: dict[str, int] = {}
    for k, (name, _, writes, _) in enumerate(runs):
        if not _is_library(name):
            continue
        op = name.split(".", 1)[1]
        shape = tuple(meta_of_key(writes[0]).shape) if writes else None
        for node in nodes:
            if node.name not in owner and op in node.names and node.shape == shape:
                owner[node.name] = k
                break
    fused = [(k, _short(name)) for k, (name, *_) in enumerate(runs) if not _is_library(name)]
    for node in nodes:
        if node.name in owner:
            continue
        after = max((owner[i] for i in node.inputs if i in owner), default=-1)
        for k, listed in fused:
            if k >= after and any(f"_{n}_" in listed for n in node.names):
                owner[node.name] = k
                break
    ops: list[list[OpCall]] = [[] for _ in runs]
    modules: list[dict[str, int]] = [{} for _ in runs]
    left: list[OpCall] = []
    for node in nodes:
        held = owner.get(node.name)
        if held is None:
            left.append(node.call)
        else:
            ops[held].append(node.call)
            modules[held][node.module] = modules[held].get(node.module, 0) + 1
    eager: list[list[EagerOp]] | None = None
    left_eager: list[EagerOp] = []
    if grouped is not None:
        eager = [[] for _ in runs]
        for eager_op, members in grouped:
            at = next((owner[n] for n in members if n in owner), None)
            (left_eager if at is None else eager[at]).append(eager_op)
    kernels = []
    for k, (name, reads, writes, _) in enumerate(runs):
        fused_ops = list(dict.fromkeys(c.op.removeprefix("aten.") for c in ops[k]))
        text = f"kernel {name}: " + (f"{len(ops[k])} ops ({_listed(fused_ops, 4)})"
                                     if fused_ops else "no op of the region's graph matched to it")
        text += _no_formula(ops[k])
        module = max(modules[k], key=modules[k].__getitem__) if modules[k] else ""
        kernels.append((module, (name, reads), writes,
                        RegionFacts((idx, k, name), tuple(ops[k]), text, None if eager is None else tuple(eager[k]))))
    rest = None
    if left or (facts.ops is None):
        unmatched = list(dict.fromkeys(c.op.removeprefix("aten.") for c in left))
        text = (f"compiled region: {len(left)} ops no kernel was matched to ({_listed(unmatched, 4)}), their FLOPs"
                " here, their bytes in no kernel's buffers; its time the wrapper's between kernels")
        text += _no_formula(left)
        rest = RegionFacts((idx, "rest"), tuple(left) if facts.ops is not None else None, text,
                           None if eager is None else tuple(left_eager))
    found = _KERNELS[memo_key] = (kernels, rest)
    return found


# `never_traced` is handed on for memwall_plugin/profile.py (only hooks/ imports _torch_private):
# `prof.step()` written inside a torch.compile'd function runs as Python at a graph break
__all__ = ["WRAPPER", "CompiledRegions", "KernelObserver", "never_traced", "region_facts", "split_by_kernel"]
