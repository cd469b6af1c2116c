"""The terminal summary: a rich renderable over a Report (header, top operators, module tree,
phases, collectives and ranks under torch.distributed, findings). Renders in a terminal, in plain
text (no color when not a terminal) and in Jupyter; `format_summary` gives the plain text at a
fixed width. Every text that comes from a report is drawn as plain text, never as rich markup.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.console import Group as RichGroup
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from memwall_plugin.comm import RECV, SEND
from memwall_plugin.devices import Figure, native_bf16, peak_key
from memwall_plugin.diff import COMPILED_REGION
from memwall_plugin.formulas import COUNT_NOTES, REGISTRY
from memwall_plugin.headline import Headline, headline, slowest_rank
from memwall_plugin.memory import MemoryReport, MemoryWhatIf
from memwall_plugin.rankheads import headlines, rank_heads
from memwall_plugin.ranks import CONDENSE_ABOVE, OUTLIER_SHARE, TOP_NODES, RankSpread, rank_spread
from memwall_plugin.records import (
    AOTI_MODEL_OP,
    BACKWARD,
    CHANNELS_LAST_KEY,
    COMPILE_WALL_KEY,
    CUDA_GRAPHS_KEY,
    CUDA_KERNEL_TIME,
    DECODE,
    OPTIMIZER,
    OPTIMIZERS_KEY,
    OTHER_THREADS_KEY,
    OUTSIDE_OPS,
    OWN_TIME_KEY,
    PREFILL,
    SCALER_SKIPPED_KEY,
    SETUP_WALL_KEY,
    TIME_SOURCE_KEY,
    TIMELINE_KEY,
    UNCACHED_KEY,
    ordered_phases,
    seconds_in,
)
from memwall_plugin.registry import Family
from memwall_plugin.roofline import COMMUNICATION, COMPUTE, MEMORY, launch_floor_s
from memwall_plugin.rows import (
    FusionSaving,
    Group,
    Row,
    fusion_savings,
    module_tree,
    optimizer_time_s,
    other_time_s,
    speedup,
    total_fusion_saving,
)

if TYPE_CHECKING:  # drawn, not imported: report.py's str() and Jupyter view call this module
    from memwall_plugin.report import Report

GROUP_BY = ("op", "shape", "module", "phase")
#: a GPU idle this share of the steps' wall time (its device activity recorded) is launch-bound
LAUNCH_BOUND_IDLE = 0.5
WIDE = 120  # from this many columns the tables show every column
FULL = 180  # from this many the operator table adds each row's dtype and input shapes
NARROW = 100  # below this many they drop calls and bytes and shorten phase names
_SHORT_PHASE = {"forward": "fwd", "backward": "bwd", "recompute": "rcmp", "optimizer": "opt", "grad_scaler": "scaler"}


@dataclass(frozen=True)
class SummaryOptions:
    """What the summary shows. Copy with changes: `options.with_(top=5)`."""

    top: int = 15  # rows in the operator table
    #: what the main table lists: op (an op's calls in one module and phase, its input shapes
    #: folded), shape (each input-shape signature its own row), module | phase (groups)
    by: str = "op"
    module_depth: int = 4  # levels of the module tree
    module_children: int = 4  # children shown per tree node (the rest are summed up)
    findings: bool = True
    memory: bool = True  # the Memory section, when the report measured memory
    #: every rank of a job side by side, however many; by default a job of more than
    #: `ranks.CONDENSE_ABOVE` ranks shows their spread, outliers and nodes instead
    all_ranks: bool = False
    #: a job of more than `ranks.CONDENSE_ABOVE` ranks (without `all_ranks`): True, the job alone
    #: (its ranks' spread, outliers and nodes, and how to see one rank in full); False, the
    #: report's own rank in full under one line on the job (`memwall report --rank N`)
    job_view: bool = True
    #: the run directory the pointers name (`memwall report <logdir> --rank N`); "" says <logdir>
    logdir: str = ""

    def __post_init__(self) -> None:
        if self.by not in GROUP_BY:
            raise ValueError(f"by must be one of {', '.join(GROUP_BY)}, got {self.by!r}")
        if self.top < 1:
            raise ValueError(f"top must be at least 1, got {self.top}")

    def with_(self, **changes: object) -> SummaryOptions:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


# --- numbers -------------------------------------------------------------------------------------


def si(value: float | None, unit: str = "") -> str:
    """12.3 G, 4.56 M: three significant digits with an SI prefix; "-" for unknown."""
    if value is None:
        return "-"
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def binary_size(nbytes: int | None) -> str:
    """A capacity as its vendor states it: 64 KiB, 2 MiB, 50 MiB ("?" when unknown)."""
    if not nbytes:
        return "?"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}"
    return f"{nbytes} B"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}" if value >= 0.1 else f"{value:.1%}"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.1f} ms"


def _dur(seconds: float) -> str:
    """3 significant digits: 812 us, 41.2 ms, 1.43 s."""
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def _times(speedup: float | None) -> str:
    """A speed-up in a table cell: 976x, 2.5x, 0.62x ("-" unknown)."""
    if speedup is None:
        return "-"
    return f"{speedup:,.0f}x" if speedup >= 100 else f"{speedup:.2g}x"


def _faster(speedup: float | None) -> str:
    """976x faster, 2.5x faster, 1.6x slower ("-" unknown)."""
    if speedup is None or speedup <= 0:
        return "-"
    if speedup < 1:
        return f"{1 / speedup:.2g}x slower"
    return f"{speedup:,.0f}x faster" if speedup >= 100 else f"{speedup:.2g}x faster"


_BOUND_STYLE = {MEMORY: "bold yellow", COMPUTE: "green", COMMUNICATION: "bold magenta"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _text(name: str, style: str = "") -> Text:
    """A name from the run (module, op, phase, device) as plain text: never read as rich markup,
    its control characters (a terminal escape sequence in a module name) shown escaped."""
    return Text(_CONTROL.sub(lambda m: repr(m.group())[1:-1], name), style=style)


def _short_dtype(dtype: str) -> str:
    """fp32, bf16, int64: a dtype's name as the peaks line writes it (torch's name otherwise)."""
    return peak_key(dtype) if dtype.startswith(("float", "bfloat", "complex")) else dtype


def _initials(name: str) -> str:
    """A module name shrunk to the first letter of each of its words ("self_attn" -> "s_a",
    "lora_A" -> "l_A"): siblings that differ in a later word stay apart."""
    return "_".join(word[:1] for word in name.split("_"))


def _tail(name: str, width: int) -> str:
    """A dotted module path cut to `width`: the leaf and the layer numbers are what tell rows
    apart, so the names above the leaf shrink to their words' first letters first (PEFT's
    "lora_A" and "lora_B" -> "l_A", "l_B"; "transformer.h.0.attn.c_attn" -> "t.h.0.a.c_attn"),
    then all but the leaf's parent to one letter, then the path is cut from the left
    ("…0.a.c_attn")."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    # words' initials, then the first letter only (not the leaf's parent's: lora_A and lora_B
    # stay apart), from the outermost inwards, numbers kept
    for shrink, last in ((_initials, len(parts) - 1), (lambda part: part[:1], len(parts) - 2)):
        for i in range(last):
            if len(".".join(parts)) <= width:
                break
            if not parts[i].isdigit():
                parts[i] = shrink(parts[i])
    if len(".".join(parts)) <= width:
        return ".".join(parts)
    while len(parts) > 1 and len(".".join(parts)) + 1 > width:  # whole names off the left
        parts = parts[1:]
    short = ".".join(parts)
    if len(short) + 1 <= width:
        return "…" + short
    return "…" + short[len(short) - width + 1:]


def _middle(name: str, width: int) -> str:
    """A name cut to `width` in the middle, keeping its last word: an op and its backward stay
    apart ("max_pool2…backward", "max_pool2d_wit…ices")."""
    if len(name) <= width:
        return name
    word = name.rpartition("_")[2]
    keep = min(len(word), width - 5) if word and word != name else (width - 1) // 2
    return name[: width - 1 - keep] + "…" + name[len(name) - keep:]


def _bound(bound: str) -> Text:
    label = {MEMORY: "MEMORY", COMPUTE: "compute", COMMUNICATION: "COMM", "none": "-", "unknown": "?"}.get(bound, bound)
    return Text(label, style=_BOUND_STYLE.get(bound, "dim"))


# --- findings ------------------------------------------------------------------------------------

#: the finding's category of each op family (registry metadata, formulas.py)
_CATEGORY = {Family.MATMUL: "matmul", Family.CONV: "convolution", Family.ATTENTION: "attention",
             Family.NORM: "norm/softmax", Family.REDUCTION: "reduction"}
#: categories named by their family even when a row of theirs counts no FLOPs
_BY_FAMILY = ("matmul", "convolution", "attention")
#: data movement by index: a row per index read or written (embedding tables, message passing)
_BY_INDEX = frozenset(f"aten.{name}" for name in (
    "embedding", "embedding_dense_backward", "_embedding_bag", "_embedding_bag_forward_only",
    "_embedding_bag_backward", "_embedding_bag_dense_backward", "_embedding_bag_sparse_backward",
    "_embedding_bag_per_sample_weights_backward", "index_select", "index_select_backward", "gather",
    "gather_backward", "take", "index", "_unsafe_index", "index_put", "index_put_", "_index_put_impl_",
    "_unsafe_index_put", "index_add", "index_add_", "index_copy", "index_copy_", "index_reduce", "index_reduce_",
    "scatter", "scatter_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_"))

_ADVICE = {
    "elementwise": "fusing them (torch.compile) or a larger batch raises their intensity",
    "compiled": "torch.compile has fused these already (each kernel reads its inputs and writes its outputs "
                "once): a larger batch or a narrower dtype (bf16) is what raises their intensity now",
    "matmul": "more rows per weight fetched (a larger batch, more tokens per call) raises their intensity",
    "convolution": "channels_last (model.to(memory_format=torch.channels_last)) runs them without layout "
                   "copies, a larger batch reuses each filter on more images, and torch.compile fuses the "
                   "elementwise ops that follow them (bias, norm, activation) into one pass",
    "attention": "each block of queries reads all of K and V: longer sequences per call (short ones packed "
                 "together) or more query heads per K/V head (grouped-query attention) raise their intensity",
    "data movement": "avoiding copies (contiguous layouts, fewer casts and cats) removes the traffic",
    "gather/scatter": "they move rows by index (embedding lookups, message passing), each row once per index: "
                      "fewer bytes per row (a bf16 or quantized table), fewer repeated indices per call, or "
                      "the gather fused with what consumes it (torch.compile, a segment-reduce or sparse "
                      "matmul kernel) cuts their traffic",
    "norm/softmax": "fused kernels (torch.compile, fused attention and norms) cut their traffic",
    "reduction": "fusing the reduction into its producer (torch.compile) avoids a round trip to memory",
    "optimizer": "a fused optimizer (fused=True) reads and writes each parameter once",
    "compiled optimizer": "the compiled step reads and writes each parameter, gradient and state once "
                          "already: fewer bytes per state element (an 8-bit optimizer) or sharding the "
                          "state (ZeRO) is what cuts its traffic",
    "grad scaler": "a fused optimizer (fused=True) takes the GradScaler's scale and inf flag and unscales "
                   "inside its own pass, instead of reading every gradient once more",
    "outside-the-model": "this is data preparation or bookkeeping between model calls; move it into "
                         "DataLoader workers or out of the loop",
}
#: the advice instead, for a run that decodes (generation: one token per model call)
_DECODE_ADVICE = {
    "matmul": "more rows per weight fetched (a larger batch, batched decoding) raises their intensity",
    "attention": "each decoded token's query reads the whole KV cache: more query heads per K/V head "
                 "(grouped-query attention) or a smaller cache dtype raises their intensity",
    "outside-the-model": "in a generation run these are mostly generate()'s own steps around model calls (the "
                         "logits' processing, sampling or beam bookkeeping, the cache's reordering and masks): "
                         "more sequences per call spread them (compiling the model, or a static cache, does not reach "
                         "them: they run between its calls)",
}
#: the convolution advice where they already run channels_last (this share of their time or more)
_CHANNELS_LAST_ALREADY = 0.95
_CHANNELS_LAST_ADVICE = ("they run channels_last already: a larger batch reuses each filter on more images, and "
                         "torch.compile fuses the elementwise ops that follow them (bias, norm, activation) into "
                         "one pass")
#: the advice of _DECODE_ADVICE that holds for any generation run, a prefill alone included
_GENERATION_ADVICE = ("outside-the-model",)


def advice(cat: str, report: Report) -> str:
    """What raises a memory-bound category's intensity, for this run: decoding is named only
    where the run decodes; an optimizer's fused form only where torch has one and the run's
    optimizer does not use it (`Report.extra["optimizers"]`; a report without it: the general
    advice)."""
    if cat in ("optimizer", "grad scaler"):
        known = _optimizer_advice(cat, report.extra.get(OPTIMIZERS_KEY))
        if known:
            return known
    if cat == "convolution":
        share = report.extra.get(CHANNELS_LAST_KEY)
        if isinstance(share, (int, float)) and share >= _CHANNELS_LAST_ALREADY:
            return _CHANNELS_LAST_ADVICE
    phases = {r.phase for r in report.rows}
    generates = DECODE in phases or (PREFILL in phases and cat in _GENERATION_ADVICE)
    return (_DECODE_ADVICE.get(cat) if generates else None) or _ADVICE[cat]


def uncached_generation(report: Report) -> str | None:
    """The finding for generate() calling its model without a KV cache (`UNCACHED_KEY`), or None."""
    runs = [u for u in report.extra.get(UNCACHED_KEY) or () if isinstance(u, dict)]
    try:
        calls = sum(int(u["calls"]) for u in runs)
        passes = sum(int(u["token_passes"]) for u in runs)
        cached = sum(int(u["first_tokens"]) + int(u["calls"]) - 1 for u in runs)
        shortest, longest = min(int(u["first_tokens"]) for u in runs), max(int(u["last_tokens"]) for u in runs)
    except (KeyError, TypeError, ValueError):  # a report file written otherwise: no finding
        return None
    if not calls or cached <= 0:
        return None
    return (f"generate() called the model {calls:,} times without a KV cache, each call over the whole sequence "
            f"so far ({shortest:,} to {longest:,} tokens): {passes:,} token positions computed per sequence "
            f"where a cache computes {cached:,} ({passes / cached:.1f}x fewer). use_cache=False was passed, or the "
            "model's config says use_cache=False (fine-tuning scripts set it for gradient checkpointing): pass "
            "use_cache=True to generate().")


def _generates(report: Report) -> bool:
    """Whether the run generated (prefill or decode calls) and trained nothing."""
    phases = {r.phase for r in report.rows}
    return bool(phases & {PREFILL, DECODE}) and not phases & {BACKWARD, OPTIMIZER}


def _optimizer_advice(cat: str, optimizers: Any) -> str | None:
    """The optimizer's or the GradScaler's advice for the optimizers that ran (None: not known)."""
    if not isinstance(optimizers, list) or not optimizers:
        return None
    seen = [o for o in optimizers if isinstance(o, dict) and isinstance(o.get("class"), str)]
    unfused = list(dict.fromkeys(o["class"] for o in seen if o.get("fusable") and not o.get("fused")))
    sparse = list(dict.fromkeys(o["class"] for o in seen if o.get("sparse") and not o.get("fused")))
    if unfused:
        names = " and ".join(f"{name}(..., fused=True)" for name in unfused)
        # an optimizer of sparse gradients is left out: torch's fused forms refuse them
        also = f" ({' and '.join(sparse)} of sparse gradients has none)" if sparse else ""
        if cat == "optimizer":
            return f"a fused optimizer ({names}) reads and writes each parameter once{also}"
        return (f"a fused optimizer ({names}) takes the GradScaler's scale and inf flag and unscales inside "
                f"its own pass, instead of reading every gradient once more{also}")
    fused = list(dict.fromkeys(o["class"] for o in seen if o.get("fused")))
    other = list(dict.fromkeys(o["class"] for o in seen if not o.get("fused") and not o.get("sparse")))
    if not fused and not other and not sparse:
        return None
    if cat == "grad scaler":
        return ("bf16 autocast (torch.autocast(dtype=torch.bfloat16)) needs no GradScaler where the device "
                "supports it; fp16 needs the scaler's pass over the gradients")
    parts = []
    if fused:
        parts.append(f"{' and '.join(fused)} runs fused already (what is left is its step counters and state "
                     "set-up)")
    if other:
        parts.append(f"{' and '.join(other)} has no fused form in torch: compiling its step "
                     "(torch.compile(optimizer.step)) fuses it")
    if sparse:  # a fused form, or a compiled step, takes no sparse gradient
        parts.append(f"{' and '.join(sparse)} updates sparse gradients (only the rows looked up), which torch's "
                     "fused forms do not take")
    return "; ".join(parts) + ("; fewer bytes per state element (an 8-bit optimizer) or sharding the state (ZeRO) "
                               "cuts its traffic")


def category(row: Row) -> str:
    """What a finding calls a memory-bound row: by phase first (optimizer, outside the model),
    then by its op's family in the registry (matmuls, convolutions, attention, ...)."""
    if row.phase == "optimizer":
        return "compiled optimizer" if row.op == COMPILED_REGION else "optimizer"
    if row.phase == "grad_scaler":
        return "grad scaler"
    if row.phase == "other":
        return "outside-the-model"
    if row.op == COMPILED_REGION:  # torch.compile's kernels and regions: fusing is done
        return "compiled"
    family = REGISTRY.family(row.op, row.overload)
    found = _CATEGORY.get(family)
    if found in _BY_FAMILY:
        return found
    if row.op in _BY_INDEX:
        return "gather/scatter"
    if row.flops == 0 or family == Family.DATA_MOVEMENT:  # an accumulate's adds keep it data movement
        return "data movement"
    return found or "elementwise"


def module_pattern(module: str) -> str:
    """"transformer.h.3.mlp.act" -> "transformer.h.*.mlp.act": layer indices generalised."""
    if not module:
        return "(top level)"
    return ".".join("*" if p.isdigit() else p for p in module.split("."))


#: from this share of the recorded wall time outside ops, host time is what bounds the steps
HOST_BOUND_SHARE = 0.5


def host_time_share(report: Report) -> float | None:
    """Share of the recorded steps' wall time spent outside any op and outside exposed
    communication: Python, data loading and collation, logging; memwall's own work, where the
    report measured it (`own_time_s`), left out (its dispatch into each op, unmeasured, stays in).
    The wall time before the first work (`setup_wall_s`: a script's start-up) and the set-up ops
    in it are left out too, and torch.compile's compiling (`compile_wall_s`): they are no step's
    host time."""
    wall = report.wall_time_s - setup_wall_s(report) - compile_wall_s(report)
    if wall <= 0:
        return None
    ops = report.total_time_s - report.setup_time_s
    outside = wall - ops - (report.exposed_s or 0.0) - own_time_s(report)
    return max(0.0, min(1.0, outside / wall))


def setup_wall_s(report: Report) -> float:
    """Wall time in the recorded steps before the first work began (0 where the report does not
    say), at most the report's wall time."""
    return min(seconds_in(report.extra, SETUP_WALL_KEY), report.wall_time_s)


def compile_wall_s(report: Report) -> float:
    """Wall time torch.compile spent compiling in the recorded steps (0 where the report does not
    say), at most the report's wall time less its start-up."""
    return min(seconds_in(report.extra, COMPILE_WALL_KEY), max(0.0, report.wall_time_s - setup_wall_s(report)))


#: compiling takes this share of the wall time or more: a finding says the steps are compile's
COMPILE_SHARE = 0.2


def own_time_s(report: Report) -> float:
    """memwall's own work inside the recorded steps' wall time, as it measured it (0 where the
    report does not say: a trace's, a file written before memwall measured it)."""
    return seconds_in(report.extra, OWN_TIME_KEY)


def cache_time(report: Report) -> dict[str, float]:
    """Op time by the cache level the ops' data came from (ops from main memory and set-up left
    out)."""
    out: dict[str, float] = {}
    for r in report.work_rows:
        if r.in_cache and r.time_s > 0:
            out[r.memory_level] = out.get(r.memory_level, 0.0) + r.time_s
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


#: below this share of their cache level's roof, ops on cached data are bound by each op's fixed
#: cost, not by the level's bandwidth
FIXED_COST_SHARE = 0.1


def _served_from(rows: list[Row], main: str, levels: dict[str, float] | None = None) -> str:
    """"; they run from L2 at 101 GB/s: bound by the L2, not DRAM" where most of the rows' time
    ran on data in one cache level, else "". `levels`: each level's bandwidth as the header gives
    it, the roof named (a row whose calls ran from several levels has a roof between theirs)."""
    by_level: dict[str, list[Row]] = {}
    for r in rows:
        by_level.setdefault(r.memory_level, []).append(r)
    level, members = max(by_level.items(), key=lambda kv: sum(r.time_s for r in kv[1]))
    seconds = sum(r.time_s for r in members)
    if not members[0].in_cache or seconds < 0.5 * sum(r.time_s for r in rows) or seconds <= 0:
        return ""
    rate = sum(r.bytes for r in members) / seconds
    # the level's roof over the same bytes (each row under its own: the level's, per dtype alike)
    least = sum(r.bytes / r.bandwidth_bytes_per_s for r in members if r.bandwidth_bytes_per_s)
    roof = sum(r.bytes for r in members if r.bandwidth_bytes_per_s) / least if least else None
    roof = (levels or {}).get(level) or roof
    if roof and rate < FIXED_COST_SHARE * roof:
        return (f"; they run from {level} at {si(rate, 'B/s')}, {rate / roof:.1%} of its {si(roof, 'B/s')}: so "
                f"little data per op that each op's fixed cost (dispatch, Python), not the {level}'s bandwidth, "
                "bounds them")
    return f"; they run from {level} at {si(rate, 'B/s')}: bound by the {level}, not {main or 'main memory'}"


def _dtype_check(report: Report, rows: list[Row]) -> str:
    """The dtype to check, where a faster one is there to take: the compute-bound time is mostly
    fp32 and the device runs bf16 on matrix units (a GPU's tensor cores; a CPU's AMX or bf16
    instructions, as its flags say). "" otherwise: nothing about dtypes on a CPU without them."""
    device = report.device
    fp32 = math.fsum(r.time_s for r in rows if r.dtype == "float32")
    if device is None or fp32 < 0.5 * math.fsum(r.time_s for r in rows):
        return ""
    if device.kind in ("cuda", "rocm"):
        return "the dtype (a tensor-core dtype such as bf16) and "
    unit = native_bf16(device)
    return f"the dtype (bf16, which this CPU runs natively on {unit}) and " if unit else ""


_DIM = re.compile(r"\d+")


def _misaligned(rows: list[Row]) -> bool:
    """Whether a matmul's or convolution's input has a dimension past 16 that is not a multiple of 8
    (a vocabulary of 50,257, a hidden size of 1,000): the sizes the shapes advice is about. Small
    ones (3 channels, a 3 x 3 kernel) are what they are."""
    families = (Family.MATMUL, Family.CONV)
    return any(int(d) > 16 and int(d) % 8 for r in rows if REGISTRY.family(r.op, r.overload) in families
               for d in _DIM.findall(r.shapes))


def _longest_names(rows: list[Row]) -> list[str]:
    """The rows' op names, the longest in time first."""
    time: dict[str, float] = {}
    for r in rows:
        time[r.name] = time.get(r.name, 0.0) + r.time_s
    return sorted(time, key=lambda name: (-time[name], name))


def other_threads_note(other_threads: Any) -> str | None:
    """What ran on threads memwall does not record (`Report.extra["other_threads"]`), and how to
    record it; None when nothing did."""
    if not isinstance(other_threads, dict) or not other_threads:
        return None
    calls = sum(n for n in other_threads.values() if isinstance(n, int))
    names = sorted(other_threads, key=lambda k: -other_threads[k] if isinstance(other_threads[k], int) else 0)
    listed = ", ".join(f"`{n}`" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{calls:,} module call{'s' if calls != 1 else ''} ran on other threads ({listed}), which memwall "
            "does not record: their ops are not in this report. memwall records the thread that opened the "
            "profile; open `memwall.profile` inside the function that thread runs (generate() run by a "
            "streamer's thread, a server's worker) to record them.")


def _step_list(steps: list[int], most: int = 6) -> str:
    """Step numbers as runs ("0-2, 5, 9"), the first `most` runs and a count of the rest."""
    runs: list[list[int]] = []
    for n in sorted(set(steps)):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:most])
    return text + (f" and {len(runs) - most} more runs" if len(runs) > most else "")


def nothing_recorded_note(steps: int, scheduled: bool, other_threads: Any, step_on_optimizer: bool = False) -> str:
    """The summary of a profile that recorded no op, and why where memwall can tell."""
    elsewhere = other_threads_note(other_threads)
    if elsewhere:
        return f"memwall recorded nothing: {elsewhere}"
    if scheduled and steps:
        which = "did not record it" if steps == 1 else "recorded none of them"
        text = (f"memwall recorded nothing: {steps} step{'s' if steps != 1 else ''} ran and the schedule {which} "
                "(its wait and warm-up steps come first)")
        if step_on_optimizer and steps == 1:
            # memwall run ends steps at optimizer steps: a script that takes none (inference) is one
            # step; a compiled optimizer.step() runs no step hook, so only a recorded step sees it end
            text += ("; memwall run ends a step at each optimizer step, so a script that takes none (inference) "
                     "is one step, and one whose optimizer step is compiled (torch.compile) runs no step hook "
                     "while not recorded: run without --schedule, or open memwall.profile with a schedule and "
                     "call prof.step() yourself")
        return text + "."
    return ("memwall recorded nothing: no PyTorch op ran on this thread inside the profile. Work in other "
            "processes is not recorded here: for torch.multiprocessing.spawn's workers, launch the script with "
            "`torchrun -m memwall_plugin.cli run`, or open memwall.profile in the worker's function.")


def findings(report: Report) -> list[str]:
    """A few plain-language conclusions, largest effect first. Set-up (weight init, data made
    before the first forward) is left out: the shares are of the work's op time."""
    work = report.work_rows
    total = math.fsum(r.time_s for r in work)
    out: list[str] = []
    elsewhere = other_threads_note(report.extra.get(OTHER_THREADS_KEY))
    if elsewhere:
        out.append(elsewhere)
    if total <= 0 or not report.rows:
        return out + cuda_graph_notes(report)  # a run whose work all went into CUDA graphs says so
    host = host_time_share(report)
    compiling = compile_wall_s(report)
    if report.wall_time_s > 0 and compiling / report.wall_time_s >= COMPILE_SHARE:
        # memwall run ends steps at optimizer steps: a compiled one is seen ending only while recorded
        compiled_step = any(r.phase == "optimizer" and r.op == COMPILED_REGION for r in report.rows)
        how = ("`memwall.schedule(wait=2, active=3)` with your own prof.step() calls: a compiled optimizer step "
               "runs no step hook, so `memwall run --schedule` cannot see idle steps end" if compiled_step else
               "`memwall.schedule(wait=2, active=3)`, `memwall run --schedule wait=2,active=3`")
        out.append(
            f"{compiling / report.wall_time_s:.0%} of the recorded steps' wall time ({_dur(compiling)}) went to "
            "torch.compile compiling (left out of the shares below): these are a compiled run's first steps, "
            f"not its steady state; record later ones ({how}).")
    timeline = report.extra.get(TIMELINE_KEY)
    timeline = timeline if isinstance(timeline, dict) else {}
    idle = timeline.get("idle_fraction")
    if isinstance(idle, (int, float)) and idle >= LAUNCH_BOUND_IDLE:
        # the device's own record: it sat idle between kernels, waiting for the host to launch them
        own = timeline.get("memwall_own_s") or 0.0  # a live run's: memwall's own work is not the run's wait
        left_out = f", memwall's own {_dur(own)} left out" if own else ""
        per_op = timeline.get("host_s_per_op")
        if isinstance(per_op, (int, float)) and timeline.get("op_calls"):
            left_out += f"; the host took {_dur(per_op)} per op over {timeline['op_calls']:,} ops"
        out.append(
            f"the GPU was idle {idle:.0%} of the recorded steps waiting for the host (busy "
            f"{_dur(timeline.get('device_busy_s') or 0.0)} of {_dur((timeline.get('wall_s') or 0.0) - own)}"
            f"{left_out}): the run is "
            f"launch-bound, and the roofline does not apply to it; {_launch_remedies(report)}."
        )
    elif host is not None and host >= HOST_BOUND_SHARE:
        own = own_time_s(report)
        left_out = f"; memwall's own {_dur(own)} left out" if own else ""
        # compiled code's first calls (loading the kernels it built) are outside the compile callbacks
        first_calls = ", compiled code's first calls" if compiling > 0 else ""
        p2p = sum(c.calls for c in report.collectives
                  if c.collective is not None and c.collective.kind in (SEND, RECV))
        # a pipeline stage waits for its neighbour's activations and gradients in the Works of
        # its receives, which memwall leaves untimed to the user's thread: that wait is the bubble
        bubble = (f", waiting for this rank's {p2p:,} sends and receives, which are not timed: a pipeline "
                  "stage waiting for its neighbour, the pipeline's bubble" if p2p else "")
        # fewer launches from Python: CUDA graphs on a GPU; on a CPU, compiling (fewer, fused ops),
        # or where the run is compiled already, fewer graph breaks between its regions
        compiled = any(r.op == COMPILED_REGION for r in report.rows)
        fewer = ("more of the step in its CUDA graphs" if _uses_cuda_graphs(report) else "CUDA graphs"
                 if report.device is None or report.device.kind != "cpu" else
                 "fewer graph breaks (it runs compiled already; TORCH_LOGS=graph_breaks lists them)" if compiled
                 else "torch.compile (fewer, fused ops)")
        remedy = ("more microbatches per step or an interleaved schedule shrink a pipeline's bubble; larger "
                  f"batches, a DataLoader with workers, or {fewer} the rest." if p2p else
                  f"larger batches, a DataLoader with workers, or {fewer} would.")
        host_work = "Python, data loading, logging"
        if not p2p and _generates(report):  # no data loading: generate()'s own Python around each call
            host_work = "Python: generate()'s own steps around each model call, logging"
            remedy = f"more sequences per call (batched generation) or {fewer} would."
        out.append(
            f"{host:.0%} of the recorded steps' wall time is outside any op ({host_work}"
            f"{first_calls}{bubble}{left_out}): the memory wall is not what limits this run; {remedy}"
        )
    comm = communication_finding(report)
    if comm:
        out.append(comm)
    memory_rows = [r for r in work if r.bound == MEMORY]
    if memory_rows and report.memory_bound_time_fraction >= 0.1:
        by_cat: dict[str, list[Row]] = {}
        for r in memory_rows:
            by_cat.setdefault(category(r), []).append(r)
        ranked = sorted(by_cat.items(), key=lambda kv: -sum(r.time_s for r in kv[1]))
        for cat, rows in ranked[:2]:
            share = sum(r.time_s for r in rows) / total
            if share < 0.05:
                continue
            where: dict[str, float] = {}
            for r in rows:
                pattern = module_pattern(r.module)
                where[pattern] = where.get(pattern, 0.0) + r.time_s
            pattern = max(where, key=lambda k: where[k])
            inside = [r for r in rows if module_pattern(r.module) == pattern]
            modules = {r.module for r in inside}
            if len(modules) > 1 and set(pattern.split(".")) == {"*"}:
                # a Sequential's children at the top (`0`, `1`, ...): `*` alone names nothing
                named = sorted(modules, key=lambda m: [int(p) for p in m.split(".")])
                place = ", ".join(f"`{m}`" for m in named[:3]) + (", ..." if len(named) > 3 else "")
            else:
                place = f"`{modules.pop() or '(top level)' if len(modules) == 1 else pattern}`"
            op_time: dict[str, float] = {}
            for r in inside:
                op_time[r.op.removeprefix("aten.")] = op_time.get(r.op.removeprefix("aten."), 0.0) + r.time_s
            ops = sorted(op_time, key=lambda op: -op_time[op])[:3]
            main = report.device.memory_levels[-1].name if report.device is not None else ""
            levels = {m.name: m.bandwidth_bytes_per_s for m in report.device.memory_levels
                      if m.bandwidth_bytes_per_s} if report.device is not None else {}
            out.append(
                f"{share:.0%} of op time is in memory-bound {cat} ops, most under {place} "
                f"({', '.join(ops)}){'' if report.measured_elsewhere else _served_from(inside, main, levels)}: "
                f"{advice(cat, report)}."
            )
    phases = {g.key: g for g in report.group_by("phase")}
    prefill, decode = phases.get("prefill"), phases.get("decode")
    if prefill and decode and prefill.intensity and decode.intensity and (
        prefill.intensity >= 2 * decode.intensity
    ):
        out.append(
            f"decode runs at {decode.intensity:.2g} FLOP/byte against prefill's {prefill.intensity:.3g} "
            f"({prefill.intensity / decode.intensity:.0f}x lower): each generated token fetches every "
            "weight for a few FLOPs; batching sequences raises it."
        )
    uncached = uncached_generation(report)
    if uncached:
        out.append(uncached)
    # a what-if on another device: its roofs against times measured here say nothing
    compute_rows = [] if report.measured_elsewhere else [
        r for r in work if r.bound == COMPUTE and r.efficiency is not None]
    compute_time = sum(r.time_s for r in compute_rows)
    if compute_rows and compute_time / total >= 0.2 and report.projected_time_s is None:
        achieved = sum(r.flops or 0 for r in compute_rows) / compute_time
        roof = sum(r.attainable_flops_per_s or 0 for r in compute_rows) / len(compute_rows)
        if roof and achieved / roof < 0.3:
            dtype = _dtype_check(report, compute_rows)
            if _misaligned(compute_rows):
                check = f"check {dtype}shapes (multiples of 8 or 16)"
            else:  # sizes already multiples of 8: what is left is how small they are
                check = (f"{'check ' + dtype.removesuffix(' and ') + '; ' if dtype else ''}their sizes are "
                         "multiples of 8 already: small matrices leave the units idle, and more rows per call (a "
                         "larger batch) fill them")
            out.append(f"compute-bound ops reach {_pct(achieved / roof)} of their roof on average: {check}.")
    if report.coverage < 0.95:
        uncounted = [r for r in work if r.flops is None]
        # an op with a formula is uncounted only where its inputs were not recorded (a trace's);
        # in a trace recorded without any shapes no op could be counted, formula or not
        trace = report.extra.get("trace")
        shapeless = isinstance(trace, dict) and trace.get("record_shapes") is False
        # a compiled region has its formula (the sum of its ops'): uncounted, it could not be sized
        unsized = [r for r in uncounted if r.op == COMPILED_REGION and not shapeless]
        unshaped = [r for r in uncounted if r not in unsized
                    and (shapeless or REGISTRY.flop_formula(r.op, r.overload or "default") is not None)]
        # an AOTInductor model's call (hooks/capture.py): its kernels ran where memwall cannot see
        packaged = [r for r in uncounted if r.op == AOTI_MODEL_OP]
        # a trace's device work launched outside any op (a CUDA graph's replay): no op to count
        outside = [r for r in uncounted if r.op == OUTSIDE_OPS]
        unformulated = [r for r in uncounted
                        if r not in unshaped and r not in unsized and r not in packaged and r not in outside]
        reasons = trace.get("uncounted_calls") if isinstance(trace, dict) else None
        sparse = isinstance(reasons, dict) and any("sparse" in str(reason) for reason in reasons)
        unshaped_why, unshaped_fix = "whose inputs were not recorded", (
            ": their FLOPs are unknown, not zero; re-record the trace with torch.profiler.profile(record_shapes=True).")
        if sparse:  # a trace records a sparse tensor's dense shape, not what it stores (trace_analysis.py)
            unshaped_why, unshaped_fix = "whose inputs the trace does not size", (
                ": their FLOPs are unknown, not zero; a trace records a sparse tensor's dense shape, not what it "
                "stores: profile the run with memwall.profile to count them (and record_shapes=True for any op "
                "without shapes).")
        for rows, why, fix in (
            (packaged, "of AOTInductor models, whose kernels memwall cannot see",
             ": their FLOPs are unknown, not zero, and their bytes are their inputs and outputs only; "
             "profile the program they were exported from (ExportedProgram.module()) or torch.compile it "
             "to count its ops."),
            (unformulated, "without a FLOP formula", "; their FLOPs are unknown, not zero (register formulas with "
                                                     "memwall.default_registry().copy())."),
            (unsized, "of compiled regions memwall could not size", ": their FLOPs are unknown, not zero; each "
                                                                   "row's shapes say why and what counts them."),
            (unshaped, unshaped_why, unshaped_fix),
            (outside, "of device work launched outside any op (a CUDA graph's replay, an extension's own "
                      "kernels)", ": their FLOPs are unknown, not zero; each row names its kernels."),
        ):
            if rows:
                names = _longest_names(rows)
                share = math.fsum(r.time_s for r in rows) / total
                out.append(f"{share:.0%} of op time is in ops {why} "
                           f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}){fix}")
    fused = fusion_finding(report.rows)
    if fused:
        out.append(fused)
    noted = sorted({r.op for r in report.rows if r.op in COUNT_NOTES and r.flops})
    for text in dict.fromkeys(COUNT_NOTES[op] for op in noted):
        ops = [op.removeprefix("aten.") for op in noted if COUNT_NOTES[op] == text]
        out.append(f"how {', '.join(ops)} {'is' if len(ops) == 1 else 'are'} counted: {text}.")
    nested = report.extra.get("nested_profiles")
    if isinstance(nested, list) and nested:
        saved = sorted({str(where) for where in nested if where})
        out.append(
            f"{len(nested)} memwall.profile block{'s' if len(nested) > 1 else ''} opened inside this one recorded "
            "in its place: their ops are in their own report" + (f"s ({', '.join(saved)})" if saved else "s")
            + ", not in this one."
        )
    out.extend(cuda_graph_notes(report))
    # a what-if on another device: rates measured here against its roofs, and calibrating this
    # machine, say nothing of it (the projection says what it is: a bound from its datasheet)
    remote = report.measured_elsewhere
    out.extend([] if remote else above_the_peak(report, total))
    estimated = {} if remote else estimated_roofs(report)
    if estimated:
        names = list(estimated)
        text = f"{_and(names)} {'is' if len(names) == 1 else 'are'} estimated, not measured"
        if any(estimated.values()):
            text += ": run `memwall calibrate` for this machine's real ceilings"
        if not all(estimated.values()):
            text += ("; `memwall calibrate` measures floating-point GEMMs only: MEMWALL_PEAKS=\"int8=...\" "
                     "sets an integer peak")
        out.append(text + ".")
    return out


#: from this share of the wall time with a collective in flight, the interconnect is a wall of the run's
COMM_SHARE = 0.2
#: below this share of the link's roof, a run's collectives are bound by their latency, not the link
LATENCY_BOUND = 0.1


_PHASE_WORDS = {"optimizer": "the optimizer step", "setup": "set-up", "other": "work outside any step phase",
                "grad_scaler": "the grad scaler's work", "recompute": "recomputation"}


def communication_finding(report: Report) -> str | None:
    """The paper's interconnect wall on this rank: where collectives are in flight for a fifth of
    the wall time or more, how much of it nothing else ran, and whether their size (latency: many
    small calls, as tensor parallelism's decode all-reduces) or the link's bandwidth bounds them."""
    share, link = report.comm_share, report.link
    timed = [c for c in report.collectives if c.time_s > 0 and c.collective is not None]
    if share is None or share < COMM_SHARE or not timed:
        return None
    calls = sum(c.collective.timed_calls or c.calls for c in timed if c.collective is not None)
    time_s = math.fsum(c.time_s for c in timed)
    message = sum(c.collective.message_bytes for c in timed if c.collective is not None)
    moved = sum(c.bytes for c in timed)
    by_phase: dict[str, float] = {}
    for c in timed:
        by_phase[c.phase] = by_phase.get(c.phase, 0.0) + c.time_s
    phase = max(by_phase, key=lambda k: by_phase[k])
    exposed = report.exposed_s
    text = (f"{share:.0%} of the wall time had a collective in flight"
            + (f", {_dur(exposed)} of it with nothing else running" if exposed is not None else "")
            + f" ({calls:,} calls, {si(message / max(1, calls), 'B')} each on average, most of their time in "
              f"{_PHASE_WORDS.get(phase, phase)}): ")
    roof = link.bytes_per_s if link is not None else None
    if roof and calls and moved / time_s < LATENCY_BOUND * roof:
        # a collective ends when the last rank has joined it: its time here is the link's latency
        # and the wait for the other ranks, which one rank's report cannot tell apart
        return text + (f"each took {_dur(time_s / calls)} where the link's {si(roof, 'B/s')} moves its bytes in "
                       f"{_dur(moved / calls / roof)}: not the link's bandwidth but each call's latency and the "
                       "wait for the slowest rank to join it bound them; fewer, larger collectives help (more "
                       "sequences or tokens per step, gradients bucketed together), and so do ranks evenly loaded "
                       "(the ranks side by side show the slowest) and collectives overlapped with compute.")
    if roof:
        return text + (f"they move their bytes at {moved / time_s / roof:.0%} of the link's {si(roof, 'B/s')}: the "
                       "bytes bound them; fewer bytes (bf16 gradients, sharded instead of replicated state), "
                       "overlapping them with compute, or a faster link help.")
    return text + "the link's bandwidth is unknown (MEMWALL_LINK sets it): its roof would say which bounds them."


#: how far above its compute peak a row's FLOP rate may read before the peak is taken for wrong
#: (a row's time has the timer's grain; its FLOPs are the kernel's nominal ones)
ABOVE_PEAK = 1.25


def above_the_peak(report: Report, op_time_s: float, keys: tuple[str, ...] | None = None) -> list[str]:
    """Rows whose FLOP rate beats the compute peak they are placed under, by peak: that peak is
    too low (an automatic calibration taken while the machine was busy reads low and is kept), or
    their times are short of their work. Only where such rows hold 1% of the op time or more."""
    device = report.device
    if device is None or op_time_s <= 0:
        return []
    peaks = dict(device.peaks)
    over: dict[str, list[Row]] = {}
    for r in report.rows:
        if r.collective is None and r.flops and r.time_s > 0 and r.peak_flops_per_s:
            if r.flops / r.time_s > ABOVE_PEAK * r.peak_flops_per_s:
                key = _peak_of(r, peaks)
                if keys is None or key in keys:
                    over.setdefault(key, []).append(r)
    out = []
    for key, rows in over.items():
        if math.fsum(r.time_s for r in rows) < 0.01 * op_time_s:
            continue
        figure = peaks.get(key)
        peak = figure.value if figure is not None else rows[0].peak_flops_per_s or 0.0
        most = max((r.flops or 0) / r.time_s for r in rows) / peak
        rows.sort(key=lambda r: -r.time_s)
        ops = list(dict.fromkeys("compiled regions" if r.op == COMPILED_REGION else r.op.removeprefix("aten.")
                                 for r in rows))
        modules = list(dict.fromkeys(f"`{r.module or '(top level)'}`" for r in rows))
        source = figure.source if figure is not None else ""
        if source == "calibrated" and "automatically" in device.source:
            why = ("the automatic calibration read it low (measured while the machine was busy?): the next "
                   "profile measures it again, and `memwall calibrate` measures every ceiling now")
        elif source == "calibrated":
            why = ("the calibration read it low (one measured while the machine was busy does) and is kept "
                   "until measured again: run `memwall calibrate`")
        elif source == "estimated":
            why = "the estimate is low: run `memwall calibrate` for this machine's real peak"
        elif source == "user":
            why = ("the peak given (peaks=, --peaks, $MEMWALL_PEAKS) is low: `memwall calibrate` measures this "
                   "machine's")
        else:
            why = ("a peak the device cannot beat, so these rows' times are short of their work (or their FLOPs "
                   "count more than ran)")
        out.append(f"{len(rows)} op row{'s' if len(rows) > 1 else ''} ({', '.join(ops[:3])}"
                   f"{', ...' if len(ops) > 3 else ''}; most under {', '.join(modules[:3])}"
                   f"{', ...' if len(modules) > 3 else ''}) ran faster than the {key} peak allows, up to "
                   f"{most:.1f}x its {si(peak, 'FLOP/s')} ({source or 'given'}): {why}. Until then their share "
                   "of the roof and their bound are off.")
    return out


def _peak_of(r: Row, peaks: dict[str, Figure]) -> str:
    """The peak a row stands under: its dtype's, or another's it falls back to (tf32)."""
    return next((k for k, f in peaks.items() if f.value == r.peak_flops_per_s), peak_key(r.dtype))


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def estimated_roofs(report: Report) -> dict[str, bool]:
    """The estimated figures this run's counted rows stand under ("the fp32 peak", "the DRAM
    bandwidth"), each with whether `memwall calibrate` measures it (it times floating-point
    GEMMs, not integer ones): a roof no row uses (an int8 peak in a float run) is not worth a
    finding."""
    device = report.device
    if device is None:
        return {}
    peaks = dict(device.peaks)
    memory = device.memory_levels
    levels = {level.name: level.bandwidth for level in memory}
    main = memory[-1].name
    names: dict[str, bool] = {}
    for r in report.rows:
        if r.collective is not None or r.flops is None:
            continue
        if r.flops and r.peak_flops_per_s is not None:
            key = _peak_of(r, peaks)
            figure = peaks.get(key)
            if figure is not None and figure.source == "estimated":
                names[f"the {key} peak"] = not key.startswith("int")
        if r.bytes_read + r.bytes_written and r.bandwidth_bytes_per_s is not None:
            level = r.memory_level or main
            figure = levels.get(level)
            if figure is not None and figure.source == "estimated":
                names[f"the {level} bandwidth"] = True
    return names


def _uses_cuda_graphs(report: Report) -> bool:
    """Whether work of this run ran as CUDA graphs (torch.compile's reduce-overhead, or graphs
    the user captured), as far as memwall saw."""
    graphs = report.extra.get(CUDA_GRAPHS_KEY)
    return isinstance(graphs, dict) and bool(graphs.get("region_calls") or graphs.get("captured_calls"))


def _launch_remedies(report: Report) -> str:
    """What helps a launch-bound run: CUDA graphs are not news to a run that uses them."""
    if _uses_cuda_graphs(report):
        return ("the run uses CUDA graphs already: capturing more of the step into them (what runs outside "
                "a graph launches kernel by kernel) or larger batches help")
    return "CUDA graphs, larger batches or torch.compile's reduce-overhead mode help"


def cuda_graph_notes(report: Report) -> list[str]:
    """What CUDA graphs hid from memwall in this run (`report.extra["cuda_graphs"]`), plainly."""
    graphs = report.extra.get(CUDA_GRAPHS_KEY)
    if not isinstance(graphs, dict):
        return []
    out = []
    regions = graphs.get("region_calls")
    if isinstance(regions, int) and regions > 0:
        out.append(f"{regions:,} call{'s' if regions > 1 else ''} of compiled regions ran as CUDA graphs "
                   "(torch.compile mode=\"reduce-overhead\": warm-up, record, then replays): memwall does not "
                   "see a graph's kernels one by one, so each call is one row (its FLOPs and bytes from its "
                   "graph, its time the whole call's), not split into its kernels.")
    captured = graphs.get("captured_calls")
    if isinstance(captured, dict) and captured:
        calls = sum(n for n in captured.values() if isinstance(n, int))
        ops = ", ".join(f"{op.removeprefix('aten.')} x{n}" for op, n in list(captured.items())[:4])
        more = ", ..." if len(captured) > 4 else ""
        out.append(f"{calls:,} op call{'s' if calls > 1 else ''} ({ops}{more}) were captured into a CUDA graph "
                   "(torch.cuda.graph) while memwall recorded: they run at the graph's replays, which memwall "
                   "does not see, so they are neither counted nor timed here. Profile the run without the graph "
                   "(or with torch.compile's default mode) to see its ops.")
    return out


def _saving(s: FusionSaving) -> str:
    share = s.saved_fraction
    return f"{si(abs(s.saved_bytes), 'B')} of traffic" + ("" if share is None else f" ({-share:+.1%})")


def fusion_finding(rows: tuple[Row, ...]) -> str | None:
    """What compiling saved, per module and for the run: "compiling removed 268 MB of traffic
    (-66.7%) in `mlp`"; None without compiled regions."""
    savings = fusion_savings(rows)
    total = total_fusion_saving(savings)
    if total is None:
        return None
    verb = "removed" if total.saved_bytes >= 0 else "added"
    text = (f"compiling {verb} {_saving(total)}: {total.regions} compiled kernel or region call"
            f"{'s' if total.regions != 1 else ''} moved {si(total.bytes, 'B')} where the {total.eager_calls} "
            f"aten op calls they stand for would move {si(total.eager_bytes, 'B')} run eagerly")
    roof = total.roof_saved_fraction
    if roof is not None and total.roof_s is not None and total.eager_roof_s is not None:
        # a projection on the same roofs for both, said as one: the eager ops' time was not measured
        text += (f"; the least time main memory's roofline allows goes from {_dur(total.eager_roof_s)} eagerly to "
                 f"{_dur(total.roof_s)} ({-roof:+.1%}; the compiled calls measured {_dur(total.time_s)})")
    if len(savings) == 1:
        return text + f", in `{savings[0].module or '(top level)'}`."
    shown = "; ".join(f"`{s.module or '(top level)'}` {_saving(s)}" for s in savings[:3])
    return text + f"; by module: {shown}{'; ...' if len(savings) > 3 else ''}."


# --- the renderable ------------------------------------------------------------------------------


class Summary:
    """The summary of a report, as a rich renderable."""

    def __init__(self, report: Report, options: SummaryOptions | None = None,
                 ranks: Mapping[int, Report] | None = None) -> None:
        self.report = report
        self.options = options or SummaryOptions()
        self.ranks = ranks  # every rank of the job (torch.distributed), shown side by side

    def __str__(self) -> str:
        """The plain text, 100 columns wide (`print(Summary(...))`)."""
        return _plain(self, 100)

    __repr__ = __str__  # a notebook's text/plain, beside `_repr_html_`

    def _repr_html_(self) -> str:
        """Jupyter shows it as the summary a profile prints at its end there (`notebook_html`)."""
        return notebook_html(self)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self._narrow = options.max_width < NARROW
        self._wide = options.max_width >= WIDE
        self._full = options.max_width >= FULL
        self._max_width = options.max_width
        spread = self.rank_spread()
        if spread is not None and self.options.job_view:  # a job of many ranks: the job, not one rank's rows
            yield self.job_header(spread)
            yield Text("")
            yield self.ranks_section(spread)
            yield Text("")
            yield self.rank_pointer(spread)
            return
        yield self.header()
        if spread is not None:
            yield _text(f"the job's {spread.ranks:,} ranks (their spread, outliers and nodes): "
                        f"memwall report {self._logdir}", style="dim")
        yield Text("")
        yield self.main_table()
        if self.options.by != "phase":
            yield Text("")
            yield self.phase_table()
        tree = self.module_tree()
        if tree is not None:
            yield Text("")
            yield tree
        for part in self.distributed_parts():
            yield Text("")
            yield part
        if self.report.memory is not None and self.options.memory:
            yield Text("")
            yield memory_section(self.report.memory, self._narrow, width=self._max_width)
        if self.options.findings:
            notes = findings(self.report)
            if notes:
                yield Text("")
                grid = Table.grid(padding=(0, 1))
                grid.add_column(no_wrap=True)
                grid.add_column()
                for note in notes:
                    grid.add_row("*", _text(note))
                yield Text("Findings", style="bold")
                yield grid

    # -- parts ---------------------------------------------------------------------------------
    def rank_spread(self) -> RankSpread | None:
        """The job's ranks condensed, when there are too many to list (and --all-ranks is off)."""
        ranks = self.ranks
        if not ranks or len(ranks) <= CONDENSE_ABOVE or self.options.all_ranks:
            return None
        if not hasattr(self, "_spread"):
            self._spread = rank_spread(ranks)
        return self._spread

    def header(self) -> RichGroup:
        rep = self.report
        head = headline(rep)
        lines: list[Text | Table] = []
        title = Text("memwall", style="bold")
        title.append(f"  {len(rep.steps)} step{'s' if len(rep.steps) != 1 else ''} recorded")
        if rep.incomplete:
            title.append("  INCOMPLETE: the profiled block was cut short", style="bold red")  # an error, a signal
        lines.append(title)
        spread = self.rank_spread()
        if spread is not None:
            job = Text(f"job      {spread.ranks:,} ranks on {len(spread.nodes):,} node(s); this is rank {rep.rank}; ")
            job.append_text(self._job_line(spread, "slowest "))
            lines.append(job)
        lines.extend(self._device_lines(caches=True))
        lines.extend(self._rank_lines(head))
        return RichGroup(*(_hanging(line) for line in lines))

    @property
    def _logdir(self) -> str:
        return self.options.logdir or "<logdir>"

    def job_header(self, spread: RankSpread) -> RichGroup:
        """A job of many ranks: its size, the straggler and why, the roofs its ranks ran under."""
        rep = self.report
        heads = headlines(rank_heads(self.ranks or {}))
        steps = max((len(h.steps) for h in heads), default=len(rep.steps))
        title = Text("memwall", style="bold")
        title.append(f"  {steps} step{'s' if steps != 1 else ''} recorded, {spread.ranks:,} ranks on "
                     f"{len(spread.nodes):,} node(s)")
        incomplete = [h.rank for h in heads if h.incomplete]
        if incomplete:
            title.append(f"  INCOMPLETE: the profiled block was cut short on {len(incomplete):,} rank(s)",
                         style="bold red")
        lines: list[Text | Table] = [title, self._job_line(spread, "slowest  ")]
        lines.extend(self._device_lines(caches=False))
        link = rep.link
        if link is not None:
            roof = (f"{si(link.bytes_per_s, 'B/s')} per direction ({link.bandwidth.source})" if link.bandwidth
                    else "unknown")
            lines.append(_text(f"link     {link.name}, {roof}"))
        return RichGroup(*lines)

    def _job_line(self, spread: RankSpread, lead: str) -> Text:
        """The slowest rank of a job, where it ran, by how much and why."""
        if not spread.slowest:
            return Text(f"{lead}no rank more than {OUTLIER_SHARE:.0%} from the median in ops")
        o = spread.slowest[0]
        line = Text(lead)
        line.append(f"rank {o.rank}", style="bold red")
        line.append_text(_text(f" ({o.node}): {_signed_pct(o.share)} in ops vs the median, {o.because}"))
        return line

    def rank_pointer(self, spread: RankSpread) -> RichGroup:
        """How to see one rank in full (the slowest), or every rank, in place of one rank's tables."""
        rank = spread.slowest[0].rank if spread.slowest else self.report.rank
        which = " (the slowest)" if spread.slowest else ""
        return RichGroup(
            _text(f"One rank in full (operators, phases, modules, collectives, memory, findings): "
                  f"memwall report {self._logdir} --rank {rank}{which}", style="dim"),
            _text(f"Every rank side by side: memwall report {self._logdir} --all-ranks", style="dim"))

    def _device_lines(self, caches: bool) -> list[Text | Table]:
        """The device the rows are placed on: its peaks, memory and (`caches`) cache roofs; and
        what a what-if changed."""
        rep = self.report
        lines: list[Text | Table] = []
        device = rep.device
        if device is not None:
            # the usual training precisions, and any other whose roof this run's counted work is
            # placed under (fp64 for a float64 run: its rows' "% of roof" is of that peak)
            flops_by_key: dict[str, int] = {}
            for r in rep.rows:
                if r.flops:
                    key = peak_key(r.dtype)
                    flops_by_key[key] = flops_by_key.get(key, 0) + r.flops
            shown = {"fp32", "bf16", "fp16", "tf32"} | flops_by_key.keys()
            peaks = ", ".join(
                f"{key} {si(fig.value, 'FLOP/s')} ({fig.source})" for key, fig in device.peaks if key in shown
            )
            bw = device.bandwidth
            ridges = f"fp32 ridge {_num(device.ridge_point('float32'))} FLOP/B"
            most = max(flops_by_key, key=lambda k: flops_by_key[k]) if flops_by_key else "fp32"
            if most != "fp32" and device.ridge_point(most):
                ridges += f", {most} {_num(device.ridge_point(most))} FLOP/B"
            lines.append(_text(f"device   {device.name}"))
            lines.append(Text(f"peaks    {peaks or 'unknown'}"))
            lines.append(Text(
                f"memory   {si(bw.value if bw else None, 'B/s')} ({bw.source if bw else 'unknown'}), {ridges}"
            ))
            if device.caches and caches:
                lines.append(Text("caches   " + ", ".join(
                    f"{c.name} {binary_size(c.capacity_bytes)} "
                    f"{si(c.bandwidth.value if c.bandwidth else None, 'B/s')} "
                    f"({c.bandwidth.source if c.bandwidth else 'unknown'})" for c in device.caches)))
            if rep.measured_elsewhere:
                lines.append(_text(f"what-if  times measured on {rep.measured_on}", style="italic"))
        if rep.compute_dtype is not None:
            lines.append(_text(f"what-if  every floating-point op computed in {rep.compute_dtype}, under its peak",
                               style="italic"))
        if rep.bytes_per_element is not None:
            lines.append(Text(f"what-if  every tensor re-sized to {rep.bytes_per_element} byte(s) each",
                              style="italic"))
        return lines

    def _rank_lines(self, head: Headline) -> list[Text | Table]:
        """This report's time, work and bound (the header's lines after the device's)."""
        rep = self.report
        lines: list[Text | Table] = []
        roof = head.roofline_time_s
        sources = rep.extra.get(TIME_SOURCE_KEY)
        if isinstance(sources, dict) and "cuda" in sources:  # the host clock on a CPU goes without saying
            if str(sources["cuda"]).startswith(CUDA_KERNEL_TIME):
                lines.append(_text("timing   the kernels each op ran, from the GPU's own record (torch's profiler)",
                                   style="dim"))
            else:
                lines.append(_text("timing   CUDA events around each op on its stream (launch to end: the GPU's waits "
                                   "for the host are in it)", style="dim"))
        own = own_time_s(rep)
        lines.append(Text(
            f"time     {_ms(head.time_s)} in ops (wall {_ms(head.wall_time_s)}"
            f"{f', memwall itself {_ms(own)} of it' if own else ''}), roofline "
            # a what-if's roofline can be microseconds: shown as the projection is
            f"{_dur(roof) if head.projected_time_s is not None and roof is not None else _ms(roof)} for the counted ops"
        ))
        before = setup_wall_s(rep)
        # said where it is something: set-up ops' time, or a start-up a share of the wall time
        # shows (a profile's first ~50 us before its first op is not: "0 us of it ... 61 us")
        shown = head.setup_time_s > 0 or (head.wall_time_s > 0 and f"{before / head.wall_time_s:.0%}" != "0%")
        if head.setup_time_s < head.time_s and shown:
            # a report of set-up alone has its shares over it
            start_up = f"; {_dur(before)} of the wall time" if before > 0 else ""
            # a generation's set-up also holds generate()'s own work before its first model call
            prepared = ", generate()'s preparation of the inputs" if _generates(rep) else ""
            lines.append(Text(f"setup    {_dur(head.setup_time_s)} of it before the first forward (weight init, "
                              f"data{prepared}{start_up}): not counted in the shares or findings"))
        compiling = compile_wall_s(rep)
        if compiling > 0:
            lines.append(Text(f"compile  {_dur(compiling)} of the wall time compiling (torch.compile): not counted "
                              "in the shares or findings"))
        skipped = rep.extra.get(SCALER_SKIPPED_KEY)
        if isinstance(skipped, list) and skipped:
            which = _step_list(skipped)
            lines.append(Text(f"skipped  {'steps' if len(skipped) > 1 else 'step'} {which}: the GradScaler skipped "
                              "the optimizer's update (inf or NaN gradients): forward and backward ran, no update"))
        tail = rep.tail_op_time_s
        if tail is not None:
            lines.append(Text(f"tail     {_dur(tail)} in ops after the last optimizer step: in the time and the "
                              "rows, not a step"))
        if head.projected_time_s is not None:
            lines.extend(self.projection_lines(head))
        lines.append(Text(
            f"work     {si(head.flops, 'FLOP')}, {si(head.bytes, 'B')} moved, "
            f"intensity {_num(head.intensity)} FLOP/B"
        ))
        mem = Text("bound    ")
        mem.append(f"{head.memory_bound_fraction:.0%} of op time memory-bound",
                   style=_BOUND_STYLE[MEMORY] if head.memory_bound_fraction >= 0.5 else "")
        mem.append(f", coverage {head.coverage:.1%} of op time counted")
        lines.append(mem)
        cached = cache_time(rep)
        if cached:
            total = math.fsum(r.time_s for r in rep.work_rows)
            levels = ", ".join(f"{name} {t / total:.0%}" for name, t in cached.items())
            lines.append(Text(
                f"cache    {sum(cached.values()) / total:.0%} of op time ran on data still in cache ({levels}): "
                "those ops are placed under that level's roof, not main memory's"))
        return lines

    def projection_lines(self, head: Headline) -> list[Text | Table]:
        """A what-if's projection: the counted ops' least time on its device against their
        measured time, per phase too, and what bounds it there."""
        rep = self.report
        where = rep.device.name if rep.device is not None else "this device"
        title = _text(f"projected on {where}: {_dur(head.projected_time_s or 0.0)} ({_faster(head.speedup)}), ",
                      style="bold")
        title.append("a roofline bound, not a measurement", style="italic")
        grid = Table.grid(padding=(0, 1))  # continued lines keep their indent
        grid.add_column(no_wrap=True, min_width=8)
        grid.add_column()
        phases = {g.key: g for g in rep.group_by("phase")}
        parts = [f"{key} {_dur(g.projected_time_s)} ({_faster(g.speedup)})" for key in ordered_phases(phases)
                 if (g := phases[key]).projected_time_s]
        if parts:
            grid.add_row("", _text(", ".join(parts)))
        there = f"{_pct(head.projected_memory_bound_fraction)} of it at memory roofs there"
        floor = launch_floor_s(rep.device.kind) if rep.device is not None else 0.0
        if floor:
            there += f", {_pct(head.launch_floor_fraction)} the launch floor ({_dur(floor)} per kernel)"
        there += f"; measured {_ms(head.counted_time_s)} in the counted ops on {rep.measured_on or 'the run'}"
        grid.add_row("", _text(there))
        return [title, grid]

    _narrow = False
    _wide = True
    _full = False

    @property
    def _projected(self) -> bool:
        """A what-if: tables show the projected time where a measured report shows the roof."""
        return self.report.projected_time_s is not None

    def _numbers(self) -> tuple[str, ...]:
        if self._narrow:
            return ("time", "FLOPs", "FLOP/B")
        if not self._wide:
            return ("time", "FLOPs", "bytes", "FLOP/B")
        return ("calls", "time", "FLOPs", "bytes", "FLOP/B")

    def _table(self, title: str, first: list[str], levels: bool = False) -> Table:
        table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False, expand=False)
        for name in first:  # names come cut to their width (_tail, _middle): columns never wrap
            width = 30 if name == "shapes" else self._name_width(name) if len(first) > 1 else self._group_width
            if name == "op / shapes":  # an op's name, then its dtype and shapes folded beneath
                table.add_column(name, overflow="fold", max_width=40)
            else:
                table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=width)
        for name in self._numbers():
            table.add_column(name, justify="right", no_wrap=True)
        if levels:
            table.add_column("lvl" if self._narrow else "level", no_wrap=True)
        table.add_column("bound", no_wrap=True)
        if self._projected:  # measured time against another device's roof means nothing
            table.add_column("proj." if self._narrow else "projected", justify="right", no_wrap=True)
            if self._speedups(levels if first[0] == "op" else None):
                table.add_column("speed-up", justify="right", no_wrap=True)
        else:
            table.add_column("roof", justify="right", no_wrap=True)
        return table

    #: how wide the operator table's number columns run (their headers or their widest figures)
    _NUMBER_WIDTHS = {"calls": 6, "time": 5, "FLOPs": 6, "bytes": 7, "FLOP/B": 6, "level": 5, "bound": 7,
                      "roof": 5, "projected": 9, "speed-up": 8, "dtype": 5, "shapes": 30}
    _names: dict[str, int] | None = None
    _max_width = 120

    def _fit_names(self, rows: tuple[Row, ...], cells: list[list[Any]], first: list[str], headers: list[str]) -> None:
        """Give the op and module columns of the operator table what the other columns leave,
        measured on the cells drawn: names are cut to it (_middle, _tail) rather than wrapped or
        squeezing the figures."""
        widths = [max([len(h)] + [Text(c).cell_len if isinstance(c, str) else c.cell_len for c in column])
                  for h, column in zip(headers, zip(*cells, strict=True) if cells else [()] * len(headers),
                                       strict=True)]
        phase = max([5] + [len(self._phase(r.phase)) for r in rows])
        extra = sum(min(w, 30) for w in widths[: len(first) - 3])  # dtype, shapes when shown
        used = sum(widths[len(first) - 3:]) + extra + phase + 3 * (len(headers) + 2)
        room = max(self._max_width - used, 16)
        op_natural = max([2] + [len(r.op.removeprefix("aten.")) for r in rows])
        module_natural = max([6] + [len(r.module or "(top)") for r in rows])
        if first[0] == "op / shapes":  # shapes beneath the op's name: that column takes what modules leave
            module = max(min(module_natural, room // 3, 28), 8)
            self._names = {"op": min(op_natural, 24 if self._wide else 18), "module": module,
                           "op / shapes": max(room - module, 12)}
            return
        op = min(op_natural, 24 if self._wide else 18, max(room * 9 // 20, 10))
        self._names = {"op": op, "module": max(min(module_natural, room - op, 28), 8)}

    def _name_width(self, column: str) -> int:
        """How wide a name column is: an op's or a module's (cut from the left), by layout."""
        if column == "op / shapes":
            column = "op"  # the op's name in it; the column itself is as wide as _fit_names says
        if self._names is not None and column in self._names:
            return self._names[column]
        if column == "module":
            return 28 if self._wide else 12 if self._narrow else 20
        return 24 if self._wide else 14 if self._narrow else 18

    @property
    def _group_width(self) -> int:
        """How wide the name of a group table (modules, phases) is: the only name column."""
        return 30 if self._narrow else 44

    def _name(self, column: str, name: str) -> Text:
        width = self._name_width(column)
        return _text(_tail(name, width) if column == "module" else _middle(name, width))

    def _speedups(self, levels: bool | None) -> bool:
        """Whether a what-if's table has room for a speed-up column: the operator table (levels
        not None) from the wide layout on, without a level column; the others but when narrow."""
        return self._wide and not levels if levels is not None else not self._narrow

    def _last(self, point: Row | Group, levels: bool | None = None) -> list[str]:
        """The last cells: the roof reached, or in a what-if the projected time and speed-up."""
        if not self._projected:
            return [_pct(point.efficiency)]
        projected = point.projected_time_s
        cells = [_dur(projected) if projected is not None else "-"]
        if self._speedups(levels):
            measured = point.counted_time_s if isinstance(point, Group) else point.time_s
            cells.append(_times(speedup(measured, projected)))
        return cells

    def _cells(self, calls: int, share: float | None, flops: int | None, nbytes: int,
               intensity: float | None) -> list[str]:
        if self._narrow:
            return [_pct(share), si(flops), _num(intensity)]
        if not self._wide:
            return [_pct(share), si(flops), si(nbytes, "B"), _num(intensity)]
        return [f"{calls:,}", _pct(share), si(flops), si(nbytes, "B"), _num(intensity)]

    def _phase(self, phase: str) -> str:
        return phase if self._wide else _SHORT_PHASE.get(phase, phase)

    def main_table(self) -> Table:
        rep, opts = self.report, self.options
        total = rep.total_time_s
        if opts.by in ("op", "shape"):
            if opts.by == "shape":
                rows, what = rep.rows, "operator signatures (op, module, phase, input shapes)"
            else:
                folded = rep.folded()
                rows, what = tuple(f.row for f in folded), "operators by time"
                if len(folded) < len(rep.rows):
                    what += " (shapes folded: --by shape)"
            shown = rows[: opts.top]
            # the level each op's data came from, where any came from a cache
            levels = any(r.in_cache for r in shown) and not self._narrow  # narrow: the header's cache line says it
            # dtype and shapes: columns of their own when wide enough, else beneath the op's name
            columns = self._full
            beneath = opts.by == "shape" and not columns
            first = ["op / shapes" if beneath else "op", "module", "phase"] + (["dtype", "shapes"] if columns else [])
            cells: list[list[Any]] = []  # every column but op, module and phase: measured before names are cut
            for r in shown:
                share = r.time_s / total if total else None
                level = [Text(r.memory_level, style="" if r.in_cache else "dim")] if levels else []
                described = [_text(_short_dtype(r.dtype)), _text(r.shapes, style="dim")] if columns else []
                cells.append([*described, *self._cells(r.calls, share, r.flops, r.bytes, r.intensity),
                              *level, _bound(r.bound), *self._last(r, levels)])
            table = self._table(f"Top {min(opts.top, len(rows))} of {len(rows)} {what}", first, levels)
            self._fit_names(shown, cells, first, [str(c.header) for c in table.columns[3:]])
            table.columns[1].max_width = self._name_width("module")
            if beneath:  # the op and its shapes: as wide as _fit_names allows, up to 40
                wide = (self._names or {}).get("op / shapes", 40)
                table.columns[0].max_width, table.columns[0].min_width = wide, min(wide, 40)
            else:
                table.columns[0].max_width = self._name_width("op")
            for r, rest in zip(shown, cells, strict=True):
                name = self._name("op", r.op.removeprefix("aten."))
                if beneath:
                    name.append("\n")
                    name.append_text(_text(f"{_short_dtype(r.dtype)} {r.shapes}", style="dim"))
                table.add_row(name, self._name("module", r.module or "(top)"), _text(self._phase(r.phase)), *rest)
            self._names = None
            return table
        groups = rep.group_by(opts.by)
        table = self._table(f"Top {min(opts.top, len(groups))} of {len(groups)} by {opts.by}", [opts.by])
        for g in groups[: opts.top]:
            self._group_row(table, g.key or "(top)", g, total)
        return table

    def _group_row(self, table: Table, label: str, g: Group, total: float) -> None:
        share = g.time_s / total if total else None
        table.add_row(_text(_tail(label, self._group_width)),
                      *self._cells(g.calls, share, g.flops, g.bytes, g.intensity),
                      _bound(g.bound), *self._last(g))

    def phase_table(self) -> Table:
        rep = self.report
        total = rep.total_time_s
        groups = {g.key: g for g in rep.group_by("phase")}
        order = ordered_phases(groups)
        table = self._table("Phases", ["phase"])
        for key in order:
            self._group_row(table, key, groups[key], total)
        return table

    def module_tree(self) -> Tree | None:
        rep, opts = self.report, self.options
        modules = [r for r in rep.rows if r.module]
        if not modules:
            return None
        total = rep.total_time_s
        groups, fwd, bwd = module_tree(rep.rows)
        opt = optimizer_time_s(rep.rows)
        children: dict[str, list[str]] = {}
        for key in groups:
            if key:
                parent = key.rpartition(".")[0]
                children.setdefault(parent, []).append(key)

        def label(key: str, parent: str | None = None) -> Text:
            g = groups[key]
            # a chain of wrappers folded into one node (PEFT's base_model.model.model) reads whole
            name = (key[len(parent) + 1:] if parent else key) if parent is not None else key.rpartition(".")[2]
            name = name or "(model)"
            text = _text(name, style="bold" if not key else "")
            text.append(f"  {_pct(g.time_s / total if total else None)}", style="dim")
            split = f"fwd {_dur(fwd.get(key, 0.0))}"
            if bwd.get(key, 0.0) > 0:
                split += f" bwd {_dur(bwd[key])}"
            stepped = opt.get(key, 0.0)
            if stepped > 0.005 * g.time_s:
                split += f" opt {_dur(stepped)}"
            rest = other_time_s(g, fwd, bwd) - stepped
            if rest > 0.005 * g.time_s:
                split += f" other {_dur(rest)}"
            text.append(f"  {split}  {si(g.flops, 'FLOP')}  {_num(g.intensity)} FLOP/B  ")
            text.append_text(_bound(g.bound))
            return text

        wrapped = 1 - 1e-9  # a child's time against its parent's: the same sum in another order

        def grow(node: Tree, key: str, depth: int) -> None:
            kids = sorted(children.get(key, []), key=lambda k: -groups[k].time_s)
            if depth >= opts.module_depth or not kids:
                return
            shown, rest = kids[: opts.module_children], kids[opts.module_children :]
            for kid in shown:
                end = kid
                # a module whose only child holds all its time (a wrapper, no ops of its own) is
                # one node with that child, and a list of numbered blocks (`layers`) takes no
                # level of its own: the depth shown goes to the layers, not the wrappers
                while len(only := children.get(end, [])) == 1 and (
                        groups[only[0]].time_s >= wrapped * groups[end].time_s):
                    end = only[0]
                blocks = all(k.rpartition(".")[2].isdigit() for k in children.get(end, ["x"]))
                grow(node.add(label(end, key)), end, depth + (0 if blocks else 1))
            if rest:
                share = sum(groups[k].time_s for k in rest) / total if total else 0.0
                node.add(Text(f"... {len(rest)} more ({_pct(share)} time)", style="dim"))

        root = Tree(Text("Modules (rolled up)", style="bold"))
        grow(root.add(label("")), "", 1)
        return root


    # -- torch.distributed -----------------------------------------------------------------------
    def distributed_parts(self) -> list[RichGroup | Table | Text]:
        """The link and the collectives on its roof, and the ranks of the job side by side (none
        for a single-process run)."""
        rep = self.report
        parts: list[RichGroup | Table | Text] = []
        if rep.distributed:
            parts.append(self.communication_header(headline(rep)))
            if rep.collectives:
                parts.append(self.collectives_table())
                projected = self.comm_projection_text()
                if projected is not None:
                    parts.append(projected)
        ranks = self.ranks
        if ranks and len(ranks) > 1 and self.rank_spread() is None:  # else shown after the header
            parts.append(self.ranks_table(headlines(rank_heads(ranks))))
            missing = [r for r in range(rep.world_size) if r not in ranks]
            if missing:
                parts.append(Text(f"no report (yet) from rank(s) {', '.join(map(str, missing))}", style="dim"))
        return parts

    def communication_header(self, head: Headline) -> RichGroup:
        rep = self.report
        link = rep.link
        assert link is not None
        title = Text("Communication", style="bold")
        title.append_text(_text(f"  rank {rep.rank} of {rep.world_size}{', ' + rep.backend if rep.backend else ''}"))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, min_width=8)
        grid.add_column()
        def roof(of: Any) -> str:
            return (f"{si(of.bytes_per_s, 'B/s')} per direction ({of.bandwidth.source})" if of.bandwidth
                    else "unknown")

        inter = rep.inter_link
        if inter is None:
            grid.add_row("link", _text(f"{link.name}, {roof(link)}"))
            if link.note:
                grid.add_row("", _text(link.note, style="dim"))
        else:
            grid.add_row("nodes", _text(f"{rep.nodes} of {rep.ranks_per_node} ranks"
                                        + (f" (projected: {rep.what_if_world_size:,} ranks)"
                                           if rep.what_if_world_size else "")))
            for name, level in (("intra", link), ("inter", inter)):
                grid.add_row(name, _text(f"{level.name}, {roof(level)}"
                                         + (f" · {level.note}" if level.note else "")))
        calls = sum(r.calls for r in rep.collectives)
        grid.add_row("moved", _text(f"{calls:,} collective calls, {si(head.message_bytes, 'B')} in messages, "
                                    f"{si(head.bytes_moved, 'B')} sent by this rank"))
        if inter is not None and rep.intra_bytes is not None and rep.inter_bytes is not None:
            grid.add_row("", _text(f"{si(rep.intra_bytes, 'B')} inside its node, {si(rep.inter_bytes, 'B')} between "
                                   "nodes (hierarchical algorithm)"))
        if head.comm_time_s is not None:
            share = head.comm_share
            grid.add_row("time", _text(f"{_dur(head.comm_time_s)} with a collective in flight, {_pct(share)} of wall",
                                       style=_BOUND_STYLE[COMMUNICATION] if share is not None and share >= 0.3 else ""))
            if head.overlap_fraction is not None:
                grid.add_row("overlap", _text(f"{_pct(head.overlap_fraction)} of it overlapped by other work on this "
                                              f"rank, {_dur(head.exposed_s or 0.0)} exposed"))
        else:
            grid.add_row("time", _text("not measured on the host: the collectives completed on a device", style="dim"))
        if head.untimed_calls:
            grid.add_row("", _text(f"{head.untimed_calls:,} call(s) not timed (in flight at a step's end, failed, "
                                   "or on a device)", style="dim"))
        return RichGroup(title, grid)

    def collectives_table(self) -> Table:
        rows = self.report.collectives
        top = self.options.top
        table = Table(title=f"Top {min(top, len(rows))} of {len(rows)} collectives by time", title_justify="left",
                      title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
        names = ["collective", "phase", "calls", "message", "sent", "time", "bus B/s", "bound", "roof"]
        if not self._wide:
            names.remove("calls")
        if self._narrow:
            names.remove("sent")
        projection = self.report.comm_projection
        if self.report.inter_link is not None:  # several nodes: each level's bytes
            names[names.index("time"):names.index("time")] = ["intra", "inter"]
        if projection is not None:  # a communication what-if: its time there, and whether exposed
            names[names.index("bus B/s"):] = ["projected", "exposed"]
        exposed_at = {p.index: p for p in projection.collectives} if projection is not None else {}
        for name in names:
            left = name in ("collective", "phase", "bound")
            table.add_column(name, no_wrap=True, justify="left" if left else "right")
        for r in rows[:top]:
            c = r.collective
            assert c is not None
            cells: dict[str, Text | str] = {
                "collective": _text(c.kind), "phase": _text(self._phase(r.phase)), "calls": f"{r.calls:,}",
                "message": si(c.message_bytes // r.calls if r.calls else 0, "B"), "sent": si(c.bytes_moved, "B"),
                "time": _dur(r.time_s) if c.timed_calls else "-", "bus B/s": si(r.bus_bandwidth_bytes_per_s),
                "bound": _bound(r.bound), "roof": _pct(r.efficiency),
                "intra": "-" if c.intra_bytes is None else si(c.intra_bytes, "B"),
                "inter": "-" if c.inter_bytes is None else si(c.inter_bytes, "B"),
                "projected": "?" if r.projected_time_s is None else _dur(r.projected_time_s),
            }
            shown = exposed_at.get(rows.index(r))
            if shown is not None:
                cells["exposed"] = Text("EXPOSED", style="bold red") if shown.exposed else _text("hidden", style="dim")
            table.add_row(*(cells[n] for n in names))
        return table

    def comm_projection_text(self) -> Text | None:
        """A communication what-if's lines: the scale, the links, the projected comm and step
        time, and the collectives that become exposed."""
        p = self.report.comm_projection
        if p is None:
            return None
        out = Text(f"Projected at {p.world_size:,} ranks ({p.nodes:,} node(s) of {p.ranks_per_node}): ", style="bold")
        step, comm, exposed = p.step_time_s, p.comm_time_s, p.exposed_s
        if step is None or comm is None or exposed is None:
            out.append("a link's bandwidth is unknown: give it with rescore(link={'intra': ..., 'inter': ...})",
                       style="")
            return out
        out.append(f"{_dur(comm)} of collectives per step (algorithmic bus time), {_dur(exposed)} exposed; "
                   f"step {_dur(p.measured_step_s)} -> {_dur(step)}", style="")
        names = [f"{rows.collective.kind if (rows := self.report.collectives[c.index]).collective else ''} "
                 f"({self._phase(c.phase)}, +{_dur(c.exposed_s or 0.0)})" for c in p.exposed_collectives[:5]]
        out.append("\nexposed (longer than the compute they overlapped): " + (", ".join(names) if names else "none"),
                   style="")
        more = len(p.exposed_collectives) - len(names)
        if more > 0:
            out.append(f", ... {more} more", style="")
        return out

    def ranks_table(self, heads: list[Headline]) -> Table:
        slowest = slowest_rank(heads)
        table = Table(title="Ranks side by side", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                      show_edge=False, pad_edge=False, expand=False)
        names = ["rank", "wall", "in ops", "FLOPs", "bytes", "sent", "comm", "exposed"]
        if self._narrow:
            names.remove("bytes")
            names.remove("exposed")
        for name in names:
            table.add_column(name, justify="left" if name == "rank" else "right", no_wrap=True)
        table.add_column("", no_wrap=True)
        for h in heads:
            cells = {"rank": str(h.rank), "wall": _dur(h.wall_time_s), "in ops": _dur(h.time_s),
                     "FLOPs": si(h.flops), "bytes": si(h.bytes, "B"), "sent": si(h.bytes_moved, "B"),
                     "comm": _pct(h.comm_share), "exposed": "-" if h.exposed_s is None else _dur(h.exposed_s)}
            mark = Text("slowest", style="bold red") if slowest is not None and h.rank == slowest.rank else Text("")
            if h.incomplete:
                mark.append(" incomplete", style="red")
            table.add_row(*(cells[n] for n in names), mark)
        return table


    def ranks_section(self, spread: RankSpread) -> RichGroup:
        """A job of many ranks: the spread of their figures, the outlying ranks and why, the nodes."""
        parts: list[Text | Table] = []
        title = Text(f"Ranks: {spread.ranks:,} on {len(spread.nodes):,} node(s)", style="bold")
        parts.append(title)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
        for name in ("", "min", "median", "p90", "max"):
            table.add_column(name, justify="left" if not name else "right", no_wrap=True)
        figures = [("in ops", spread.op_time_s, _dur), ("wall", spread.wall_time_s, _dur),
                   ("memory-bound", spread.memory_bound, _pct),
                   ("in collectives", spread.comm_time_s, _dur), ("comm share", spread.comm_share, _pct),
                   ("sent", spread.sent_bytes, lambda v: si(v, "B"))]
        for label, s, show in figures:
            if s is not None:
                table.add_row(label, show(s.min), show(s.median), show(s.p90), show(s.max))
        parts.append(table)
        for side, outliers, note in (
                ("Slowest", spread.slowest, "most time in ops; the others wait for them"),
                ("Fastest", spread.fastest, "least time in ops")):
            if not outliers:
                parts.append(Text(f"{side} ranks: none more than {OUTLIER_SHARE:.0%} from the median in ops",
                                  style="dim"))
                continue
            parts.append(Text(""))
            out = Table(title=f"{side} ranks ({note})", title_justify="left", title_style="bold",
                        box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
            for name in ("rank", "node", "in ops", "vs median", "why"):
                out.add_column(name, justify="right" if name in ("in ops", "vs median") else "left",
                               no_wrap=name != "why")
            for o in outliers:
                why = _text(f"{o.because} ({'+' if o.reason_delta_s >= 0 else '-'}{_dur(abs(o.reason_delta_s))})")
                out.add_row(Text(str(o.rank), style="bold red" if side == "Slowest" else ""), _text(o.node),
                            _dur(o.op_time_s), _signed_pct(o.share), why)
            parts.append(out)
        if len(spread.nodes) > 1:
            parts.append(Text(""))
            nodes = Table(title=f"Nodes ({len(spread.nodes):,}, slowest first: median time in ops)",
                          title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False,
                          pad_edge=False, expand=False)
            for name in ("node", "ranks", "median in ops", "max in ops", "slowest rank", "comm share"):
                nodes.add_column(name, justify="left" if name == "node" else "right", no_wrap=True)
            for n in spread.nodes[:TOP_NODES]:
                nodes.add_row(_text(n.name), str(len(n.ranks)), _dur(n.op_time_s.median), _dur(n.op_time_s.max),
                              str(n.slowest_rank), _pct(None if n.comm_share is None else n.comm_share.median))
            parts.append(nodes)
            if len(spread.nodes) > TOP_NODES:
                parts.append(Text(f"... {len(spread.nodes) - TOP_NODES:,} more nodes", style="dim"))
        missing = [r for r in range(self.report.world_size) if self.ranks is not None and r not in self.ranks]
        if missing:
            shown = ", ".join(map(str, missing[:20]))
            if len(missing) > 20:
                shown += f" and {len(missing) - 20:,} more"
            parts.append(Text(f"no report (yet) from rank(s) {shown}", style="dim"))
        return RichGroup(*parts)


def _signed_pct(share: float) -> str:
    return f"{'+' if share >= 0 else '-'}{_pct(abs(share))}"


_CATEGORY_LABEL = {"parameters": "parameters", "gradients": "gradients", "optimizer_state": "optimizer state",
                   "activations": "activations", "kv_cache": "KV cache", "other": "other"}


def _where(peak_at: tuple[str, str, str]) -> str:
    phase, op, module = peak_at
    return f"{phase} {op} ({module or 'top level'})" if op else (phase or "the step's start")


def _shard_line(mem: MemoryReport) -> str:
    """What this rank holds of a sharded model, and what the sharding leaves in `other`."""
    share = (f"{si(mem.rank_parameter_bytes, 'B')} of the model's {si(mem.model_parameter_bytes, 'B')} of parameters"
             if mem.model_parameter_bytes and mem.rank_parameter_bytes else "parameters")
    state = ", with their gradients and optimizer state," if mem.trained() else ","
    if mem.sharded_by == "tensor parallel":
        return (f"this rank's shard: {share}{state} tensor parallel over {mem.sharded_over} ranks (replicated "
                "ones whole on each rank)")
    by = " by FSDP2" if mem.sharded_by == "FSDP2" else ""
    return (f"this rank's shard: {share}{state} sharded{by} over {mem.sharded_over} ranks; the copies it gathers "
            "for forward and backward are in other")


_LABELLED = re.compile(r"[a-z][a-z -]{0,7} ")  # "peaks    ", "what-if  ": a header line's label


def _hanging(line: Text | Table) -> Text | Table:
    """A header line ("peaks    fp32 67 TFLOP/s ...") whose continued lines start under its text,
    not at the label's column; anything else as it is."""
    if not isinstance(line, Text) or not _LABELLED.match(line.plain[:9]) or len(line.plain) <= 9:
        return line
    label, text = line.divide([9])
    label.rstrip()
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, min_width=8)
    grid.add_column()
    grid.add_row(label, text)
    return grid


def _indented(part: Text | Table) -> Padding:
    """A line or table of a section, two columns in: its continued lines keep the indent."""
    return Padding(part, (0, 0, 0, 2))


def memory_section(mem: MemoryReport, narrow: bool = False,
                   what_ifs: list[tuple[str, MemoryWhatIf]] | None = None, width: int = 100) -> RichGroup:
    """The capacity wall: the peak against capacity, what held it, the modules holding the most,
    and the paper's remedies projected from this run (`width`: the columns it is printed in)."""
    title = Text("Memory", style="bold")
    title.append(f"  peak {si(mem.peak_bytes, 'B')}")
    if mem.capacity_bytes:
        title.append(f" of {si(mem.capacity_bytes, 'B')} ({_pct(mem.peak_fraction)}; capacity: {mem.capacity_source})")
    title.append(f" after {_where(mem.peak_at)}, step {mem.peak_step}")
    parts: list[Any] = [title]
    breakdown = Text()
    shown = [(cat, b) for cat, b in mem.peak_by_category.items() if b]
    for i, (cat, b) in enumerate(shown):
        breakdown.append(("" if i == 0 else " · ") + f"{_CATEGORY_LABEL.get(cat, cat)} {si(b, 'B')} "
                         f"({_pct(b / mem.peak_bytes if mem.peak_bytes else None)})")
    parts.append(_indented(breakdown))
    every = mem.peak_elements.get("parameters") or 0
    if mem.trainable_elements is not None and every and mem.trainable_elements < every and mem.trained():
        # a LoRA's base, an RL loop's reference model, a teacher: no gradients, no optimizer state
        frozen = every - mem.trainable_elements
        parts.append(_indented(Text(f"{frozen:,} of the {every:,} parameters ({_pct(frozen / every)}) are frozen "
                                    "(requires_grad=False): they hold no gradients and no optimizer state",
                                    style="dim")))
    for note in mem.notes:  # how far the figures go (tracking stopped, compiled regions' temporaries)
        parts.append(_indented(Text(note, style="dim")))
    if mem.sharded_over > 1:
        parts.append(_indented(Text(_shard_line(mem), style="dim")))
    if mem.state_sharded_over > 1:
        of = (f" ({si(mem.state_rank_bytes, 'B')} of the {si(mem.state_model_bytes, 'B')} of parameters it updates)"
              if mem.state_rank_bytes and mem.state_model_bytes else "")
        parts.append(_indented(Text(f"this rank's optimizer state: its partition's{of}, ZeroRedundancyOptimizer over "
                                    f"{mem.state_sharded_over} ranks; parameters and gradients whole on each rank",
                                    style="dim")))
    if mem.allocator_peak_bytes is not None:
        diff = mem.allocator_peak_bytes - mem.peak_bytes
        parts.append(_indented(Text(f"CUDA caching allocator peak {si(mem.allocator_peak_bytes, 'B')} "
                                    f"({si(diff, 'B')} more: allocator rounding, workspaces, tensors made outside "
                                    "the ops seen)", style="dim")))
    # what fills memory most, module by module: a recommender's embedding tables (parameters,
    # gradients and optimizer state) as a transformer's saved activations
    top = mem.top_modules("total_bytes", 5)
    if top:
        table = Table(title=None, box=None, pad_edge=False, show_edge=False, header_style="bold")
        table.add_column("module (own bytes)", no_wrap=True)
        # the byte columns and their gaps take ~25 columns (narrow) or ~47; a path longer than
        # what is left is shortened as the operator tables shorten it
        path_width = max(18, width - (25 if narrow else 47))
        table.add_column("activations", justify="right")
        table.add_column("parameters", justify="right")
        if not narrow:
            table.add_column("gradients", justify="right")
            table.add_column("optimizer", justify="right")
        for m in top:
            cells: list[Text | str] = [_text(_tail(m.module, path_width) if m.module else "(top level)"),
                                       si(m.activation_bytes, "B"),
                                       si(m.parameter_bytes, "B")]
            if not narrow:
                cells += [si(m.gradient_bytes, "B"), si(m.optimizer_state_bytes, "B")]
            table.add_row(*cells)
        parts.append(table)
    rows = what_ifs if what_ifs is not None else mem.suggestions()
    if rows:
        parts.append(Text("What-ifs, projected from this run (report.memory.what_if)", style="dim"))
        # each against the run itself projected (as the tab's): a first step's optimizer made its
        # state during the step, so that step measured less than every later step holds; against
        # its measured peak a what-if that lowers the later steps' could read as a rise
        base = mem.what_if()
        against = base.peak_bytes or mem.peak_bytes
        if base.peak_bytes != mem.peak_bytes:
            why = "; ".join(base.notes) or "projected from the recorded moments"
            parts.append(_indented(Text(f"changes are against {si(base.peak_bytes, 'B')}, this run's peak "
                                        f"projected with none of them ({why})", style="dim")))
        table = Table(box=None, pad_edge=False, show_edge=False, show_header=False)
        table.add_column(ratio=3)
        table.add_column(justify="right", no_wrap=True)
        table.add_column(ratio=2)
        for label, w in rows:
            change = (w.peak_bytes - against) / against if against else 0.0
            cost = []
            if w.fits is not None:
                cost.append("fits" if w.fits else "does not fit")
            if w.extra_flops:
                cost.append(f"+{si(w.extra_flops, 'FLOP')} recomputed per step (+{_ms(w.extra_time_s)})")
            if w.comm_bytes:
                cost.append(f"sends {si(w.comm_bytes, 'B')} per rank per step")
            table.add_row(_text(label), f"{si(w.peak_bytes, 'B')} {change:+.0%}", _text(", ".join(cost)))
        parts.append(_indented(table))
    scale = mem.max_batch_scale()
    if scale is not None and math.isfinite(scale):
        times = f"{scale:,.0f}" if scale >= 100 else f"{scale:.3g}"
        parts.append(_indented(Text(f"the largest batch that fits here: {times}x the recorded one "
                                    "(activations, KV cache and inputs scale with it)", style="dim")))
    return RichGroup(*parts)


def _plain(renderable: Any, width: int) -> str:
    """A renderable as plain text (no color), `width` columns wide."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False,
                      force_jupyter=False, legacy_windows=False, record=False, soft_wrap=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"


def render_text(report: Report, width: int = 100, options: SummaryOptions | None = None) -> str:
    """The summary as plain text (no color), `width` columns wide."""
    return _plain(Summary(report, options), width)


def format_summary(report: Report, top: int = 15, width: int = 100) -> str:
    return render_text(report, width, SummaryOptions(top=top))


def print_summary(report: Report, options: SummaryOptions | None = None,
                  console: Console | None = None, ranks: Mapping[int, Report] | None = None) -> None:
    """Print to the terminal: fits its width, no color when output is not a terminal."""
    (console or Console()).print(Summary(report, options, ranks))


def notebook_html(renderable: Any) -> str:
    """A renderable as a Jupyter notebook shows it, the way the summary printed at a profile's end
    there is shown: rich's own notebook path (a console that finds itself in Jupyter: 115 columns
    or $JUPYTER_COLUMNS, full color; rich.jupyter's `<pre>`, which scrolls rather than wraps). An
    HTML fragment: no page, no style for the notebook's other cells."""
    console = Console(force_jupyter=True, file=io.StringIO())  # rendered, never printed
    try:
        from rich.jupyter import _render_segments  # what rich displays a notebook console's print with
    except ImportError:  # a rich that moved it: its exported HTML, as a fragment in the same <pre>
        recorder = Console(record=True, width=console.width, file=io.StringIO(), force_jupyter=False)
        recorder.print(renderable)
        return recorder.export_html(inline_styles=True, code_format=(
            '<pre style="white-space:pre;overflow-x:auto;line-height:normal;'
            'font-family:Menlo,\'DejaVu Sans Mono\',consolas,\'Courier New\',monospace">{code}</pre>\n'))
    return _render_segments(console.render(renderable, console.options))


def report_repr(report: Report) -> str:
    """A report in one line (its repr: a notebook's text/plain, the Python prompt): what it holds and
    where it ran, not every row."""
    steps = len(report.steps)
    parts = [f"{steps} step{'s' if steps != 1 else ''}", f"{len(report.rows):,} rows"]
    if report.collectives:
        parts.append(f"{len(report.collectives):,} collectives")
    parts += [si(report.total_flops, "FLOP"), f"{si(report.total_bytes, 'B')} moved",
              f"{_dur(report.total_time_s)} in ops"]
    if report.device is not None:
        parts.append(f"on {report.device.name}")
    if report.memory is not None:
        parts.append(f"memory peak {si(report.memory.peak_bytes, 'B')}")
    if report.world_size > 1:
        parts.append(f"rank {report.rank} of {report.world_size}")
    if (report.bytes_per_element is not None or report.compute_dtype is not None or report.measured_elsewhere
            or report.what_if_world_size is not None):
        parts.append("a what-if")
    if report.incomplete:
        parts.append("INCOMPLETE")
    return f"<memwall Report: {', '.join(parts)}>"
