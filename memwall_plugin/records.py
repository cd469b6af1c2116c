"""Plain records that flow from capture to counting: tensor metadata and one op call's signature.

Nothing here holds a tensor: capture turns tensors into `TensorMeta` at once.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: In the profile's first step, the ops that would be `other` and ran before its first work (any
#: module's forward, a backward pass, an optimizer step): weight init, data made up front. Kept in
#: the rows, left out of the report's shares and findings (`Report.work_rows`).
SETUP = "setup"
FORWARD = "forward"
BACKWARD = "backward"
#: A module's forward run again inside backward (activation checkpointing): backward-pass work
RECOMPUTE = "recompute"
OPTIMIZER = "optimizer"
#: AMP's GradScaler outside the optimizer's own update: unscaling gradients, the inf checks, the
#: scale's update (memwall_plugin/hooks/modules.py)
GRAD_SCALER = "grad_scaler"
PREFILL = "prefill"  # a generation call that fills the KV cache with the prompt
DECODE = "decode"  # generation calls that add one token (or a few) to the cache
OTHER = "other"
#: Built-in phases, in display order; prof.phase("...") may add labels of its own.
PHASES = (SETUP, FORWARD, BACKWARD, RECOMPUTE, OPTIMIZER, GRAD_SCALER, PREFILL, DECODE, OTHER)

#: the op a call of an AOTInductor model is a row of (hooks/_torch_private.py declares it): its
#: kernels run inside the package, unseen, so it has no formula
AOTI_MODEL_OP = "memwall.aoti_model"
#: a trace's device work launched outside any op memwall counts (memwall analyze: a CUDA graph's
#: replay, an extension's own launches): an uncounted row with the kernels' time and names
OUTSIDE_OPS = "memwall.kernels_outside_ops"

#: `Report.extra` key of a run whose device activity was recorded (a GPU trace read by `memwall
#: analyze`, a live run on a GPU timed by its kernels): per step its wall time, the device's busy
#: time and the share it sat idle waiting for the host to launch work (memwall_plugin/trace_analysis.py
#: `_timeline`, memwall_plugin/recorder.py `timeline_extra`)
TIMELINE_KEY = "timeline"
#: how a live run's op times were taken (`report.extra`), by device type of the ops
TIME_SOURCE_KEY = "time_source"
#: `Report.extra` key: seconds of memwall's own work inside the recorded steps' wall time that it
#: measured (recording each op after it ran, its module hooks, sizing compiled regions); the
#: dispatch into its mode before each op is not measured, so the true figure is somewhat higher
OWN_TIME_KEY = "memwall_own_time_s"
#: `Report.extra` key of a live GPU run that met CUDA graphs: {"captured_calls": {op: calls}}, the
#: calls captured into a graph of the user's while recording (they run at its replays, which
#: memwall does not see: neither counted nor timed), and {"region_calls": n}, the calls of
#: compiled regions run as a CUDA graph (mode="reduce-overhead": each one row, timed whole)
CUDA_GRAPHS_KEY = "cuda_graphs"
#: `Report.extra` key: seconds of wall time in the recorded steps before the first work began
#: (a script's start-up under `memwall run`: imports, building the model and the trainer, starting
#: DataLoader workers): in the wall time, out of the host-time share
SETUP_WALL_KEY = "setup_wall_time_s"
#: `Report.extra` key: seconds of wall time in the recorded steps that torch.compile spent
#: compiling (Dynamo, Inductor, a lazily compiled backward: the first steps of a compiled run):
#: in the wall time, out of the host-time share and the GPU's idle share
COMPILE_WALL_KEY = "compile_wall_time_s"
#: `Report.extra` key: {thread name: calls} of modules and optimizer steps that ran on threads
#: other than the one that opened the profile (dispatch modes are per thread: their ops are not in
#: the report)
OTHER_THREADS_KEY = "other_threads"
#: `Report.extra` key: the optimizers whose steps ran, by class: [{"class": "AdamW", "fused": False,
#: "fusable": True}] ("fusable": torch has a fused form of it, `fused=True`), for the findings' advice
OPTIMIZERS_KEY = "optimizers"
#: `Report.extra` key: the steps whose optimizer step a GradScaler skipped (inf or NaN gradients,
#: fp16's first steps while the scale settles): their forward and backward ran, no update did
SCALER_SKIPPED_KEY = "scaler_skipped_steps"
#: `Report.extra` key: runs of generate()'s model calls given no KV cache (use_cache=False), each
#: call over the whole sequence so far: [{"calls": 32, "first_tokens": 16, "last_tokens": 47,
#: "token_passes": 1008}] (a cache computes first_tokens + calls - 1 of those passes)
UNCACHED_KEY = "generation_without_cache"


def uncached_runs(runs: list[list[int]]) -> list[dict[str, int]]:
    """`UNCACHED_KEY`'s value for runs of generation calls without a cache (each the tokens of its
    calls, the prefill's first)."""
    return [{"calls": len(run), "first_tokens": run[0], "last_tokens": run[-1], "token_passes": sum(run)}
            for run in runs]


#: `Report.extra` key: the share of the convolutions' time whose images were channels_last (NHWC,
#: NDHWC), for the convolution advice (a run already channels_last is not told to be)
CHANNELS_LAST_KEY = "channels_last_share"
TIME_SOURCES = {
    "cpu": "the host clock around each op (its kernel, on this thread and the threads it uses)",
    "cuda": ("CUDA events recorded on the op's stream before and after it: from its launch to its end, so the time "
             "the GPU waited for the host's next launch is in it"),
    "mps": ("the host clock around each op's call: MPS runs it asynchronously, so this is the launch's time, not "
            "the kernel's"),
}
#: how a live run's GPU ops are timed where torch's profiler can record the device's activity
#: (hooks/kernel_clock.py)
CUDA_KERNEL_TIME = ("the durations of the kernels (and copies, sets) each op ran, from the GPU's own record (torch's "
                    "profiler, user-scope ranges around each op): the GPU's time on the op, not the host's")
#: why some calls of a trace's report rest on an assumption (`report.extra["trace"]["float32_assumed_calls"]`)
FLOAT32_ASSUMED = ("a trace records the shapes of a tensor list (cat's, stack's inputs) but not their dtype; their "
                   "bytes are right if those tensors are float32 (memwall.profile, or memwall run, sees the dtypes)")


#: Reuse buckets (hooks/residency.py): bucket k holds data whose reuse footprint, the bytes touched
#: since it was last touched plus its own, is at most 2**k bytes; COLD holds data not touched within
#: REUSE_HORIZON bytes, or never: what main memory serves.
COLD = 64
REUSE_HORIZON = 2**32


def seconds_in(extra: dict[str, Any], key: str) -> float:
    """A report's `extra[key]` as seconds (setup, compile, memwall's own time): 0 where it is
    missing, not a finite positive number (a bool, a string, NaN from a hand-edited file)."""
    value = extra.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return 0.0
    return float(value)


def reuse_bucket(footprint: int) -> int:
    """The bucket of a reuse footprint in bytes: the least k with footprint <= 2**k."""
    return (footprint - 1).bit_length() if footprint > 1 else 0


def ordered_phases(names: Iterable[str]) -> list[str]:
    """Built-in phases in display order, then the user's own labels alphabetically."""
    present = set(names)
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


class FloatArg(enum.Enum):
    """A Python float argument as capture keys and formulas see it: what its value is for
    counting, not the value. Learning rates and bias corrections change every step; keyed by
    value they would make the signature table grow without bound. Formulas ask only whether a
    term is present (`weight_decay`: zero or not) or whether a scale is a multiply
    (`alpha`: one or not), and this keeps exactly that. Truthy unless ZERO, like the float."""

    ZERO = "0"
    ONE = "1"
    OTHER = "other"

    def __bool__(self) -> bool:
        return self is not FloatArg.ZERO


def float_arg(value: float) -> FloatArg:
    """The FloatArg of a float: the one function capture keys and formula inputs come from."""
    if value == 0.0:
        return FloatArg.ZERO
    if value == 1.0:
        return FloatArg.ONE
    return FloatArg.OTHER


class Place(enum.Enum):
    """Where in a tensor a view starts (select's `index`, slice's `start` and `end`, a view's
    storage offset) as capture keys and formulas see it: a place, not a size. A data loader's
    `dataset[i]` selects a new index for every sample and a hand-written batch `x[i:i + 32]` slices
    a new range for every batch; keyed by value each would be a signature of its own, without
    bound, for ops whose cost (none for a view; its tensors' sizes for a view's backward) the
    place never changes."""

    SOME = "some"


def is_unit_scale(value: Any) -> bool:
    """A scale argument (`alpha`, `value`) that multiplies by one, or is absent: no FLOP."""
    return value is None or value is FloatArg.ONE or (type(value) is int and value == 1)


@dataclass(frozen=True, slots=True)
class ScoreFacts:
    """How many attention scores a call computes, read from its arguments' values when the op
    ran (not from shapes): the blocks a flex_attention BlockMask visits, the lengths of packed
    (variable-length) sequences. `scores` sums query-key pairs over batch and heads; `exact`
    is False for an upper bound (offsets that could not be read: meta or fake tensors, where
    `max_seqlen` bounds every sequence); `text` says what was read, for the shapes column."""

    scores: int
    exact: bool
    text: str


class RegionFacts:
    """A region torch.compile (Inductor) compiled, run as one call: the aten ops it fused, as
    formulas see them (shapes from the compiled graph; value-dependent facts, a flex_attention
    BlockMask, read from the run's inputs); `ops` None when they could not be sized. `eager`:
    the ops an eager run would dispatch instead (EagerOp), None where the region's graph does
    not say which ops Inductor decomposed (then its own ops stand for them). `optimizer`: the
    region is a compiled `optimizer.step()` (its graph was traced in an optimizer's code). Two
    calls compare equal by `key` (the region and those facts), not by the op lists, which can be
    long."""

    __slots__ = ("eager", "key", "ops", "optimizer", "text")

    def __init__(self, key: tuple[Any, ...], ops: tuple[OpCall, ...] | None, text: str,
                 eager: tuple[EagerOp, ...] | None = None, optimizer: bool = False) -> None:
        self.key, self.ops, self.text, self.eager, self.optimizer = key, ops, text, eager, optimizer

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RegionFacts) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"RegionFacts({self.text!r})"


@dataclass(frozen=True, slots=True)
class EagerOp:
    """One aten call an eager run of a compiled region would make, where the region has
    `parts` instead: the op itself (one part, `traffic` None: counted as that call), or the
    ops Inductor decomposed it into (layer norm into var_mean, sub, mul, ...), whose FLOPs are
    those of the parts and whose `traffic` is what the eager op reads and writes: the parts'
    inputs from outside them and their results used outside them."""

    op: str  # "aten.native_layer_norm"
    parts: tuple[OpCall, ...]
    traffic: Traffic | None = None


#: the key under which a call's ScoreFacts travel with its keyword arguments in a capture key
FACTS_KEY = "<memwall facts>"


@dataclass(frozen=True, slots=True)
class TensorMeta:
    """Shape, strides and element type of one tensor argument or result."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str  # "float32", "int64", ...
    itemsize: int  # bytes per element

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def span(self) -> int:
        """Elements the tensor actually spans in memory: a stride-0 (broadcast) dim counts once."""
        if self.numel == 0:
            return 0
        return math.prod(n for n, s in zip(self.shape, self.stride, strict=True) if s != 0)

    @property
    def nbytes(self) -> int:
        return self.span * self.itemsize


@dataclass(frozen=True, slots=True)
class NestedMeta(TensorMeta):
    """A strided nested tensor (torch.nested): `shape` is its packed elements, flat, and
    `components` the shape of each tensor it holds (its own rows, lengths, heads)."""

    components: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class SparseMeta(TensorMeta):
    """A sparse tensor (COO, CSR, CSC, BSR, BSC): `shape` is its dense shape, `stored` the elements
    of its values and `index_bytes` the bytes of its indices. Its numel, what formulas compute
    with, is the elements it stores; its span, what it moves, its values and its indices (counted
    in its values' elements, rounded up)."""

    stored: int = 0
    index_bytes: int = 0

    @property
    def numel(self) -> int:
        return self.stored

    @property
    def span(self) -> int:
        return self.stored + -(-self.index_bytes // max(self.itemsize, 1))


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of memory traffic: `elements` of `itemsize` bytes each."""

    elements: int
    itemsize: int

    @property
    def nbytes(self) -> int:
        return self.elements * self.itemsize


@dataclass(frozen=True, slots=True)
class Traffic:
    """What an op reads and writes, as extents (kept per element size so it can be re-sized)."""

    read: tuple[Extent, ...] = ()
    written: tuple[Extent, ...] = ()

    @property
    def elements_read(self) -> int:
        return sum(e.elements for e in self.read)

    @property
    def elements_written(self) -> int:
        return sum(e.elements for e in self.written)

    @property
    def bytes_read(self) -> int:
        return sum(e.nbytes for e in self.read)

    @property
    def bytes_written(self) -> int:
        return sum(e.nbytes for e in self.written)


#: distinct shapes of a list argument written out before the rest is summarised
LIST_SHAPES_SHOWN = 3


def list_shapes_text(shapes: list[str]) -> str:
    """The shapes of a list argument: "3 x [8, 64]" when all agree, "([0], [1, 12, 63, 64])"
    when they differ, "148 tensors: [768, 768], [768], [3072, 768], ..." for long mixed lists."""
    distinct = list(dict.fromkeys(shapes))
    if len(distinct) == 1:
        return f"{len(shapes)} x {distinct[0]}"
    if len(shapes) <= LIST_SHAPES_SHOWN + 1:
        return "(" + ", ".join(shapes) + ")"
    shown = ", ".join(distinct[:LIST_SHAPES_SHOWN]) + (", ..." if len(distinct) > LIST_SHAPES_SHOWN else "")
    return f"{len(shapes)} tensors: {shown}"


def nested_text(components: tuple[tuple[int, ...], ...]) -> str:
    """A nested tensor's shape: "nested 3 x [8, 32..96, 64]" (a dim that differs as its range)."""
    if len({len(c) for c in components}) != 1:
        return f"nested {len(components)} tensors"
    dims = []
    for sizes in zip(*components, strict=True):
        low, high = min(sizes), max(sizes)
        dims.append(str(low) if low == high else f"{low}..{high}")
    return f"nested {len(components)} x [{', '.join(dims)}]"


def extent(t: TensorMeta, elements: int | None = None) -> Extent:
    """The extent of a tensor (its span), or of `elements` of its element type."""
    return Extent(t.span if elements is None else elements, t.itemsize)


@dataclass(frozen=True, slots=True)
class OpCall:
    """One aten call as formulas see it: arguments by schema name, with tensors as metadata.

    `args` pairs every schema argument name with its value: a `TensorMeta`, a tuple (for
    lists, possibly of `TensorMeta`), or a plain scalar. `mutated` names the arguments the
    schema marks as written (`Tensor(a!)`); `out_args` the subset that are `out=` buffers.
    `aliased_outputs` flags results that alias an input (views, in-place returns).
    """

    op: str  # "aten.addmm"
    overload: str  # "default"
    args: tuple[tuple[str, Any], ...]
    outputs: tuple[TensorMeta | None, ...]
    mutated: tuple[str, ...] = ()
    out_args: tuple[str, ...] = ()
    aliased_outputs: tuple[bool, ...] = ()
    device: str = "cpu"  # device type of its first tensor: cpu | cuda | mps | meta ...
    #: what the count needs from argument values (flex_attention's blocks, packed lengths)
    facts: ScoreFacts | RegionFacts | None = None

    def __getitem__(self, name: str) -> Any:
        for key, value in self.args:
            if key == name:
                return value
        raise KeyError(f"{self.op}.{self.overload} has no argument {name!r}")

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return self[name]
        except KeyError:
            return default

    def arg(self, index: int) -> Any:
        """The value of the index-th schema argument."""
        return self.args[index][1]

    def tensors(self) -> Iterator[tuple[str, TensorMeta]]:
        """Every tensor argument (list elements too), with its argument name."""
        for name, value in self.args:
            if isinstance(value, TensorMeta):
                yield name, value
            elif isinstance(value, tuple):
                for item in value:
                    if isinstance(item, TensorMeta):
                        yield name, item

    def tensors_of(self, name: str) -> tuple[TensorMeta, ...]:
        value = self.get(name)
        if isinstance(value, TensorMeta):
            return (value,)
        if isinstance(value, tuple):
            return tuple(v for v in value if isinstance(v, TensorMeta))
        return ()

    def written(self) -> tuple[TensorMeta, ...]:
        """Tensors the call produces: fresh outputs plus arguments it writes in place."""
        fresh = tuple(
            o
            for o, aliased in zip(self.outputs, self.aliased_outputs or (False,) * len(self.outputs))
            if o is not None and not aliased
        )
        inplace = tuple(t for name in self.mutated for t in self.tensors_of(name))
        return fresh + inplace

    @property
    def first_tensor(self) -> TensorMeta | None:
        for _, t in self.tensors():
            return t
        for o in self.outputs:
            if o is not None:
                return o
        return None

    def shapes(self) -> str:
        """A short text of the input shapes, for tables: "[64, 1024] x [1024, 4096]"; a list
        argument as "2 x [8, 64]" when its tensors agree, else "([0], [1, 12, 63, 64])"."""
        parts = []
        for _, value in self.args:
            if isinstance(value, NestedMeta) and value.components:
                parts.append(nested_text(value.components))
            elif isinstance(value, SparseMeta):
                parts.append(f"{list(value.shape)} sparse, {value.stored:,} stored")
            elif isinstance(value, TensorMeta):
                parts.append(str(list(value.shape)))
            elif isinstance(value, tuple) and value and isinstance(value[0], TensorMeta):
                parts.append(list_shapes_text([str(list(t.shape)) for t in value if isinstance(t, TensorMeta)]))
        text = " x ".join(parts)
        if self.facts is not None:
            text += f" ({self.facts.text})"
        return text


#: the signature of a packed linear weight: (PACKED_LINEAR, weight's key, bias's key or None), and
#: of a recurrent layer-direction's: (CELL_PARAMS, w_ih's, w_hh's, b_ih's or None, b_hh's or None)
PACKED_LINEAR = "<packed linear>"
CELL_PARAMS = "<cell params>"
