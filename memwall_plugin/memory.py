"""The capacity wall: what held the device's memory during the recorded steps, and what-ifs.

`MemoryReport` is part of a `Report` (its `memory` field), measured by `hooks/memory.py`: the
live bytes of tensor storages over a step, each storage counted once (views and aliases share
it) and put in one category:

- `parameters`: storages of the model's parameters, owned by the module that holds each one
  directly (`named_parameters(recurse=False)`);
- `gradients`: the parameters' `.grad`, owned by the parameter's module;
- `optimizer_state`: the tensors in an optimizer's `state` (AdamW's moments, step counters),
  owned by the module of the parameter they belong to;
- `activations`: tensors saved for backward (seen by a saved-tensors pack hook), owned by the
  module whose forward saved them;
- `kv_cache`: the tensors of a generation cache passed to the model;
- `other`: everything else (inputs, temporaries, buffers).

The what-ifs (`MemoryReport.what_if`) answer the paper's remedies from the measured run, without
re-running it: activation checkpointing, ZeRO / FSDP sharding, lower precision, a larger batch.
Their model is stated with each figure (`MemoryWhatIf.notes`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from memwall_plugin.records import SETUP

#: the categories, in the order views stack them
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "kv_cache", "other")
#: what a larger batch or a longer sequence scales
BATCH_SCALED = ("activations", "kv_cache", "other")
#: the model's state: what ZeRO and FSDP shard
STATE = ("parameters", "gradients", "optimizer_state")
SHARDING = ("zero1", "zero2", "zero3", "fsdp")
#: sharded by each scheme (ZeRO stages 1-3; FSDP's full sharding is ZeRO-3)
SHARDED = {"zero1": ("optimizer_state",), "zero2": ("optimizer_state", "gradients"), "zero3": STATE, "fsdp": STATE}


def _cats(values: dict[str, int] | None = None) -> dict[str, int]:
    out = dict.fromkeys(CATEGORIES, 0)
    out.update(values or {})
    return out


@dataclass(frozen=True)
class MemoryModule:
    """One module's OWN bytes (not its children's: a roll-up is a view) and the cost of its own
    forward, for the checkpointing what-if."""

    module: str
    parameter_bytes: int = 0
    gradient_bytes: int = 0  # as an optimizer step read them (else the most held at once)
    optimizer_state_bytes: int = 0
    activation_bytes: int = 0  # saved for backward by its own forward ops, per step
    output_bytes: int = 0  # its forward's outputs, per step (what a checkpoint of it keeps)
    forward_flops: int = 0  # its own forward ops, per step
    forward_time_s: float = 0.0  # measured, per step
    #: of its whole forward (its submodules' ops too), the FLOPs after the last op that saved a
    #: tensor for backward: a checkpoint of it stops its recompute before them
    trailing_flops: int = 0

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_state_bytes + self.activation_bytes


@dataclass(frozen=True)
class MemoryWhatIf:
    """The projected peak of the run under a what-if, and what it costs."""

    peak_bytes: int
    by_category: dict[str, int]
    extra_flops: int  # recomputation (checkpointing), per step
    extra_time_s: float  # recomputation time plus the added communication's time on the link
    comm_bytes: int  # bytes this rank sends per step for the sharding (0 without)
    fits: bool | None  # None: no capacity known
    capacity_bytes: int | None
    notes: tuple[str, ...] = ()
    #: what each rank keeps of the model's state (parameters, gradients, optimizer state: the
    #: modules' figures, sharded as asked, at the element sizes asked), transients left out
    per_rank_state: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MemoryReport:
    """The memory of the recorded steps of one rank: the peak, what it was made of, per module."""

    peak_bytes: int
    peak_by_category: dict[str, int]
    #: (phase, op, module) of the op after which the peak was reached
    peak_at: tuple[str, str, str]
    peak_step: int = 0
    capacity_bytes: int | None = None
    capacity_source: str = ""
    #: element counts at the peak per category (for the precision what-if: bytes / elements) of
    #: its floating-point tensors
    peak_elements: dict[str, int] = field(default_factory=dict)
    #: bytes at the peak per category of integer and bool tensors (indices saved for backward,
    #: masks, token ids), which a precision what-if leaves at their width (a report of
    #: 2026-12-07 or before: none, every element taken as floating)
    peak_kept_bytes: dict[str, int] = field(default_factory=dict)
    modules: tuple[MemoryModule, ...] = ()
    #: the peak step's live bytes over its ops: (op index, phase, bytes per category in
    #: CATEGORIES order, the op's module), thinned to a bounded number of points, the peak kept
    timeline: tuple[tuple[int, str, tuple[int, ...], str], ...] = ()
    #: per timeline point, the bytes per category (CATEGORIES order) that do not grow with the
    #: batch: the model's buffers, and tensors a module made in the shape of one of its parameters
    #: (autocast's bf16 copy of a weight saved for backward, a dequantized weight, a weight's
    #: gradient not yet summed into its .grad); reports from before it: empty
    timeline_batch_fixed: tuple[tuple[int, ...], ...] = ()
    #: CUDA: torch.cuda.max_memory_allocated over the recorded steps (None elsewhere)
    allocator_peak_bytes: int | None = None
    #: communication time per byte on the run's link (for the sharding what-if; None: unknown)
    link_bytes_per_s: float | None = None
    notes: tuple[str, ...] = ()
    #: elements of the parameters that require grad (what fp32 master weights copy; a LoRA's
    #: adapters, not its frozen base); None: not known (a file written before memwall kept it)
    trainable_elements: int | None = None
    #: how many ranks the run already shards its parameters over (DTensors: FSDP2's fully_shard,
    #: tensor parallelism): this rank's parameters, gradients and optimizer state are 1/n of the
    #: model's, and its gathered copies of them are in `other`; 1: not sharded (DDP: replicated)
    sharded_over: int = 1
    #: what shards them: "FSDP2", "tensor parallel" (DTensor parameters outside FSDP2), "" (none)
    sharded_by: str = ""
    #: a sharded run's parameter bytes at the whole model's shapes, and this rank's of them (a
    #: model partly sharded, as tensor parallelism leaves norms and biases replicated, holds more
    #: than 1/sharded_over of it on each rank); None: not sharded, or a file from before them
    model_parameter_bytes: int | None = None
    rank_parameter_bytes: int | None = None
    #: the parameter bytes of modules no backward ran through (a frozen reference model or teacher
    #: called under no_grad), which ZeRO-3 gathers for their forward only; None: not known (no
    #: backward in the run, a compiled backward, or a file written before memwall kept it)
    forward_only_parameter_bytes: int | None = None
    #: how many ranks the optimizer state alone is sharded over (ZeroRedundancyOptimizer: ZeRO-1,
    #: each rank the state of its partition of the parameters, which it keeps whole), and the
    #: bytes of the parameters the optimizer updates on all ranks and on this one (the whole
    #: model's state is this rank's times their ratio); 1 and None: not sharded
    state_sharded_over: int = 1
    state_model_bytes: int | None = None
    state_rank_bytes: int | None = None

    # -- figures ---------------------------------------------------------------------------------
    def _shard_ratio(self) -> tuple[int, int]:
        """The whole model's parameter bytes and this rank's (their gradients and optimizer state
        scale alike); `sharded_over` to 1 for a file that kept no byte counts."""
        if self.model_parameter_bytes and self.rank_parameter_bytes:
            return self.model_parameter_bytes, self.rank_parameter_bytes
        return max(1, self.sharded_over), 1

    def _state_ratio(self) -> float:
        """The whole model's optimizer state over this rank's where only the state is sharded
        (ZeRO-1); 1 otherwise."""
        if self.state_model_bytes and self.state_rank_bytes:
            return self.state_model_bytes / self.state_rank_bytes
        return 1.0

    def __repr__(self) -> str:
        """One line (a notebook's text/plain, the Python prompt), not its every timeline point."""
        phase, op, module = self.peak_at
        where = ", ".join(p for p in (phase, op.removeprefix("aten."), module) if p)
        return (f"<memwall MemoryReport: peak {self.peak_bytes:,} B at step {self.peak_step}"
                f"{f' ({where})' if where else ''}, {len(self.modules)} modules, {len(self.timeline)} timeline points>")

    @property
    def peak_fraction(self) -> float | None:
        return self.peak_bytes / self.capacity_bytes if self.capacity_bytes else None

    @property
    def activation_bytes(self) -> int:
        return self.peak_by_category.get("activations", 0)

    def top_modules(self, category: str = "activation_bytes", n: int = 5) -> list[MemoryModule]:
        return sorted((m for m in self.modules if getattr(m, category)), key=lambda m: -getattr(m, category))[:n]

    def module(self, path: str) -> MemoryModule | None:
        return next((m for m in self.modules if m.module == path), None)

    def checkpoint_targets(self, paths: list[str] | tuple[str, ...]) -> list[str]:
        """The modules `checkpoint=paths` checkpoints: a path whose module ran ops of its own (a
        block: `model.layers.0`, as transformers checkpoints it) whole; a container's (a
        ModuleList or Sequential of blocks: `transformer.h`) each module directly under it, as
        torch.utils.checkpoint is applied per block (and a block's whose output is not known: see
        `_called`)."""
        known = {m.module for m in self.modules}
        out: list[str] = []
        for path in paths:
            prefix = f"{path}." if path else ""
            children = sorted({prefix + m.module[len(prefix):].split(".")[0] for m in self.modules
                               if m.module.startswith(prefix) and m.module != path},
                              key=_natural)
            if children and path not in _called(self.modules, path):
                out.extend(children)
            elif path in known or children:
                out.append(path)
            else:
                named = sorted(k for k in known if k)
                raise ValueError(f"checkpoint={path!r}: no module of that path ran in the recorded steps; "
                                 f"modules: {', '.join(named[:8])}{', ...' if len(named) > 8 else ''}")
        return out

    def checkpointed(self, path: str) -> bool:
        """Whether the run itself checkpoints the module at `path` (or one around it): its
        forward ran again in a backward (phase "recompute" in the timeline)."""
        for _, phase, _, module in self.timeline:
            if phase == "recompute" and (module == path or module.startswith(f"{path}.")
                                         or path.startswith(f"{module}.")):
                return True
        return False

    def _under(self, path: str) -> list[MemoryModule]:
        return [m for m in self.modules if m.module == path or m.module.startswith(f"{path}.")]

    # -- what-ifs --------------------------------------------------------------------------------
    def what_if(
        self,
        checkpoint: list[str] | tuple[str, ...] | None = None,
        shard: str | None = None,
        world_size: int = 1,
        bytes_per_element: dict[str, float] | None = None,
        batch_scale: float = 1.0,
        master_weights: bool = False,
        capacity_bytes: int | None = None,
        *,
        _totals: list[int] | None = None,
    ) -> MemoryWhatIf:
        """The peak and its cost if the run were changed as given (see the module's doc):

        - `checkpoint`: module paths checkpointed (`checkpoint_targets`): their saved activations
          are freed except each one's outputs, and recomputed in backward (one module's worth
          live at a time); the recompute adds their forward FLOPs and measured time;
        - `shard` ("zero1", "zero2", "zero3" / "fsdp") over `world_size` ranks: optimizer state,
          then gradients, then parameters divided by the ranks (ZeRO-3 also keeps one gathered
          module's parameters at a time); `comm_bytes` what this rank sends per step. A run
          already sharded (`sharded_over` > 1) is projected from the whole model's state: the
          sharding asked for replaces the run's (`world_size=sharded_over`: the run as it is);
          so is one whose optimizer state alone is sharded (`state_sharded_over` > 1);
        - `bytes_per_element`: a category's element size ({"parameters": 2, "activations": 1});
          `master_weights`: an fp32 copy of the parameters kept in the optimizer state;
        - `batch_scale`: activations, KV cache and other (inputs, temporaries) scale with the batch
          (or the sequence), parameters, gradients and optimizer state do not.
        """
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if batch_scale <= 0:
            raise ValueError(f"batch_scale must be > 0, got {batch_scale}")
        if shard is not None and shard not in SHARDING:
            raise ValueError(f"shard={shard!r}: choose one of {', '.join(SHARDING)}")
        bpe = dict(bytes_per_element or {})
        for cat, size in bpe.items():
            if cat not in CATEGORIES:
                raise ValueError(f"bytes_per_element: unknown category {cat!r}; categories: {', '.join(CATEGORIES)}")
            if not size > 0:
                raise ValueError(f"bytes_per_element[{cat!r}] must be > 0, got {size}")
        notes: list[str] = []
        measured = _cats(self.peak_by_category)
        # precision: each category's bytes scale as its element size does (elements x new size)
        scale = dict.fromkeys(CATEGORIES, 1.0)
        for cat, size in bpe.items():
            kept = min(self.peak_kept_bytes.get(cat, 0), measured[cat])  # integer tensors keep their width
            elements = self.peak_elements.get(cat) or (measured[cat] - kept) / 4
            scale[cat] = (elements * size + kept) / measured[cat] if measured[cat] else 1.0
        master = 0
        if master_weights:
            every = self.peak_elements.get("parameters") or measured["parameters"] // 4
            trainable = every if self.trainable_elements is None else min(every, self.trainable_elements)
            master = 4 * trainable
            if trainable < every:  # frozen parameters (a LoRA's base) have no master copy
                notes.append(f"fp32 master weights of the {trainable:,} trainable parameters (of {every:,}): "
                             "4 bytes each added to the optimizer state")
            else:
                notes.append("fp32 master weights: 4 bytes per parameter added to the optimizer state")
        # checkpointing: each checkpointed module's saved activations (less its outputs, which the
        # next one keeps) are not held from the end of its forward to the start of its backward;
        # in its backward they are recomputed, live as they were
        freeable: list[tuple[int, int, float]] = []  # (end of forward, start of backward, bytes)
        extra_flops, extra_time = 0, 0.0
        if checkpoint:
            targets = self.checkpoint_targets(checkpoint)
            already = [t for t in targets if self.checkpointed(t)]
            if already:
                # its saved activations are already freed and its recompute already measured:
                # checkpointing it again changes nothing
                notes.append(f"{_listed(already)} already checkpointed in this run: "
                             "their recompute is measured, nothing is added")
                targets = [t for t in targets if t not in already]
            for target in targets:
                under = self._under(target)
                me = self.module(target)
                acts = sum(m.activation_bytes for m in under)
                # each forward pass's share (the step's micro-batches under gradient accumulation,
                # taken as alike) is free from its end to its own backward
                spans = self._spans(target)
                share = max(0, acts - (me.output_bytes if me is not None else 0)) / len(spans)
                freeable.extend((fwd_end, bwd_start, share) for fwd_end, bwd_start in spans)
                whole = sum(m.forward_flops for m in under)
                recomputed = max(0, whole - (me.trailing_flops if me is not None else 0))
                extra_flops += recomputed
                extra_time += sum(m.forward_time_s for m in under) * (recomputed / whole if whole else 1.0)
            total_acts = sum(m.activation_bytes for m in self.modules)
            if targets:
                notes.append(f"checkpointing {len(targets)} module(s) frees "
                             f"{sum(f[2] for f in freeable) / total_acts if total_acts else 0:.0%} of the saved "
                             "activations between their forward and their backward, which recomputes them")
        extra_flops = int(extra_flops * batch_scale)
        extra_time *= batch_scale
        # sharding
        world = world_size if shard is not None else 1
        sharded = SHARDED[shard] if shard is not None and world > 1 else ()
        # a run already sharded: its state per rank is 1/have of the model's, which the sharding
        # asked for divides anew (its gathered copies are measured, in `other`)
        # (a ratio of two integers, applied as one: the whole model's bytes come out exact)
        whole, rank = self._shard_ratio() if shard is not None else (1, 1)
        have = whole / rank
        # ZeRO-1 run (ZeroRedundancyOptimizer): its optimizer state is this rank's partition's
        state_have = self._state_ratio() if shard is not None else 1.0
        if state_have > 1:
            notes.append(f"this run already shards its optimizer state over {self.state_sharded_over} ranks "
                         f"(ZeroRedundancyOptimizer): projected from the whole model's ({state_have:.3g}x this rank's)")
        if have > 1:
            notes.append(f"this run already shards its parameters, gradients and optimizer state over "
                         f"{self.sharded_over} ranks: projected from the whole model's ({have:.3g}x this rank's)")
            if self.sharded_by == "tensor parallel":
                notes.append("tensor parallelism also shards the activations of its parallel layers: sharding the "
                             "state instead would hold them whole, projected here as this rank's (a lower bound)")
        gathered, comm = 0, 0
        if sharded:
            param_bytes = sum(m.parameter_bytes for m in self.modules) * scale["parameters"] * whole / rank
            grads = sum(m.gradient_bytes for m in self.modules) * whole / rank
            grad_bytes = (grads or param_bytes) * scale["gradients"]
            ring = (world - 1) / world
            if shard in ("zero3", "fsdp"):
                # all-gather the parameters in forward and again in backward, reduce-scatter the
                # gradients; a module no backward runs through is gathered for its forward only
                forward_only = min(param_bytes, (self.forward_only_parameter_bytes or 0) * scale["parameters"]
                                   * whole / rank)
                comm = int(ring * (2 * param_bytes - forward_only + grad_bytes))
                if forward_only:
                    notes.append(f"{forward_only / param_bytes:.0%} of the parameter bytes are of modules no "
                                 "backward runs through (a frozen reference model, a teacher): gathered for their "
                                 "forward only")
                if whole == rank:
                    gathered = int(max((m.parameter_bytes for m in self.modules), default=0) * scale["parameters"])
                notes.append("ZeRO-3 keeps one module's gathered parameters at a time and moves 1.5x the "
                             "bytes of data parallelism (all-gather twice, reduce-scatter once)")
                if self.link_bytes_per_s:
                    extra_time += comm / self.link_bytes_per_s
            else:
                # reduce-scatter the gradients, all-gather the updated parameters (those the optimizer
                # steps: a LoRA's adapters, not its frozen base): an all-reduce's bytes
                param_elements = self.peak_elements.get("parameters")
                updated = (param_bytes * min(1.0, self.trainable_elements / param_elements)
                           if param_elements and self.trainable_elements is not None else param_bytes)
                comm = int(ring * (grad_bytes + updated))
                notes.append(f"{str(shard).upper()} moves what data parallelism's all-reduce moves")
        elif shard is not None:
            notes.append("one rank: nothing to shard" if whole == rank else "one rank: the whole model's state on it")

        def project(index: int, values: dict[str, int], unscaled: dict[str, int]) -> dict[str, int]:
            out = {cat: values[cat] * scale[cat] for cat in CATEGORIES}
            out["optimizer_state"] *= state_have
            out["optimizer_state"] += master
            held = sum(b for fwd_end, bwd_start, b in freeable if fwd_end < index < bwd_start)
            out["activations"] = max(0.0, values["activations"] - held) * scale["activations"]
            for cat in BATCH_SCALED:
                fixed = min(unscaled.get(cat, 0) * scale[cat], out[cat])
                out[cat] = fixed + (out[cat] - fixed) * batch_scale
            for cat in STATE:
                out[cat] = out[cat] * whole / rank
            for cat in sharded:
                out[cat] /= world
            if "parameters" in sharded:
                out["parameters"] += gathered
            return {cat: math.ceil(v) for cat, v in out.items()}

        # the projected peak: the largest of the measured moments, each projected (the peak
        # can move: checkpointing makes the end of backward, with the gradients, the highest;
        # a larger batch, the backward's activations rather than the optimizer's step).
        # - The optimizer's state, once made, lives through every later step: a first step's
        #   moments before its optimizer made it are projected as the steps after it run.
        # - An optimizer's temporaries (other storages made during its step) are as large as the
        #   parameters, whatever the batch: at its moments only the other storages alive before
        #   it began (the batch, the loss) scale with the batch. Nor do tensors sized by a
        #   parameter (`timeline_batch_fixed`: autocast's weight copies, gradients not yet summed).
        kept = self.timeline[-1][2][CATEGORIES.index("optimizer_state")] if self.timeline else 0
        raised: set[int] = set()  # the moments it was added to
        points: list[tuple[int, dict[str, int], dict[str, int]]] = []
        before: tuple[int, int] | None = None  # `other` (all, fixed) at the last moment before an optimizer's step
        fixed = self.timeline_batch_fixed if len(self.timeline_batch_fixed) == len(self.timeline) else None
        for n, (index, phase, values, _) in enumerate(self.timeline):
            at = dict(zip(CATEGORIES, values))
            if at["optimizer_state"] < kept:
                at["optimizer_state"] = kept
                raised.add(len(points))
            unscaled = dict(zip(CATEGORIES, fixed[n])) if fixed is not None else {}
            if phase != "optimizer":
                before = (at["other"], unscaled.get("other", 0))
            if phase == "optimizer" and before is not None:
                # what the step made, and what was fixed before it (an EMA's copy of the weights)
                unscaled["other"] = min(at["other"], max(unscaled.get("other", 0), at["other"] - before[0] + before[1]))
            elif phase == SETUP:  # before any work: a checkpoint being loaded, weights made, no batch yet
                unscaled["other"] = at["other"]
            points.append((index, at, unscaled))
        if not points:
            points = [(-1, measured, {})]
        projections = [project(index, v, unscaled) for index, v, unscaled in points]
        totals = [sum(v.values()) for v in projections]
        if _totals is not None:  # each measured moment's projected total (max_batch_scale's)
            _totals[:] = totals
        total = max(totals)
        at_peak = totals.index(total)
        projected = projections[at_peak]
        if at_peak in raised:
            notes.append("the optimizer state this step made is held from its start, as it is in every later step")
        capacity = capacity_bytes if capacity_bytes is not None else self.capacity_bytes
        state: dict[str, float] = {"parameters": sum(m.parameter_bytes for m in self.modules),
                 "gradients": sum(m.gradient_bytes for m in self.modules),
                 "optimizer_state": sum(m.optimizer_state_bytes for m in self.modules)}
        state["optimizer_state"] = state["optimizer_state"] * state_have
        per_rank = {cat: math.ceil(b * scale[cat] * whole / rank / (world if cat in sharded else 1))
                    for cat, b in state.items()}
        if master_weights:
            per_rank["optimizer_state"] += math.ceil(master / (world if "optimizer_state" in sharded else 1))
        return MemoryWhatIf(
            peak_bytes=total,
            per_rank_state=per_rank,
            by_category=projected,
            extra_flops=extra_flops,
            extra_time_s=extra_time,
            comm_bytes=comm,
            fits=None if not capacity else total <= capacity,
            capacity_bytes=capacity,
            notes=tuple(notes),
        )

    def _spans(self, path: str) -> list[tuple[int, int]]:
        """(last forward op, first backward op after it) of the module at `path` in the timeline,
        for each of its forward passes that a backward of it follows (gradient accumulation runs
        several a step); with none, one span: with no forward point (-1, ...), with no backward
        point (..., a past-the-end index)."""
        prefix = f"{path}."
        spans: list[tuple[int, int]] = []
        fwd_end, bwd_start = -1, 1 << 62
        for index, phase, _, module in self.timeline:
            if module == path or module.startswith(prefix):
                if phase == "backward":
                    if fwd_end >= 0 and bwd_start == 1 << 62:
                        bwd_start = index
                        spans.append((fwd_end, bwd_start))
                elif phase != "recompute":
                    if bwd_start != 1 << 62:  # a new forward pass after a backward
                        fwd_end, bwd_start = -1, 1 << 62
                    fwd_end = max(fwd_end, index)
        if not spans:
            spans.append((fwd_end, bwd_start))
        return spans

    def max_batch_scale(self, capacity_bytes: int | None = None, **what_if: Any) -> float | None:
        """The largest `batch_scale` whose projected peak fits `capacity_bytes` (the device's
        by default), with the other what-ifs given; None without a capacity, 0 if nothing fits."""
        capacity = capacity_bytes if capacity_bytes is not None else self.capacity_bytes
        if not capacity:
            return None
        # each measured moment grows linearly with the batch (its activations, KV cache and
        # inputs), from its own base: the first to reach the capacity decides, which need not be
        # the moment of the measured peak (an optimizer step's peak holds few activations)
        one: list[int] = []
        two: list[int] = []
        self.what_if(batch_scale=1.0, capacity_bytes=capacity, _totals=one, **what_if)
        self.what_if(batch_scale=2.0, capacity_bytes=capacity, _totals=two, **what_if)
        scale = math.inf
        for at_one, at_two in zip(one, two):
            per_unit = at_two - at_one  # the part that scales
            fixed = at_one - per_unit
            if fixed > capacity:
                return 0.0
            if per_unit > 0:
                scale = min(scale, (capacity - fixed) / per_unit)
        if scale == math.inf:
            return math.inf
        scale = max(0.0, scale)
        for _ in range(64):  # whole bytes round up: step below the line until it fits
            if scale == 0.0 or self.what_if(batch_scale=scale, capacity_bytes=capacity, **what_if).fits:
                break
            scale *= 1 - 1e-6
        return scale

    def block_containers(self) -> list[str]:
        """Module paths whose children are numbered blocks (`transformer.h`, `layers`), largest
        saved activations first: where `checkpoint=` is usually applied."""
        found: dict[str, int] = {}
        for m in self.modules:
            parts = m.module.split(".")
            for k in range(1, len(parts)):
                if parts[k].isdigit():
                    container = ".".join(parts[:k])
                    found[container] = found.get(container, 0) + m.activation_bytes
                    break
        return sorted((c for c, b in found.items() if b > 0), key=lambda c: -found[c])

    def suggestions(self) -> list[tuple[str, MemoryWhatIf]]:
        """The paper's remedies, each projected from this run: checkpointing the block container
        that lowers the peak most, ZeRO-3 over 8 ranks, bf16 parameters and gradients with fp32 master weights (bf16
        parameters, activations and KV cache alone where the steps did not train)."""
        out: list[tuple[str, MemoryWhatIf]] = []
        as_run = self.what_if().peak_bytes  # the run itself projected: what each remedy must lower
        # of the block containers holding the most activations, the one whose checkpointing lowers
        # the peak most (a UNet's up blocks hold more, but its peak is in them as backward begins,
        # where their recompute runs: its down blocks lower it 5x as much for a third of the FLOPs)
        best: tuple[int, int, str, MemoryWhatIf] | None = None
        for container in self.block_containers()[:_CONTAINERS_TRIED]:
            done = [self.checkpointed(t) for t in self.checkpoint_targets([container])]
            if all(done):  # not where the run already does
                continue
            label = (f"checkpoint the other {container}.* blocks" if any(done)
                     else f"checkpoint every {container}.* block")
            checkpointed = self.what_if(checkpoint=[container])
            if best is None or (checkpointed.peak_bytes, checkpointed.extra_flops) < best[:2]:
                best = (checkpointed.peak_bytes, checkpointed.extra_flops, label, checkpointed)
        # a remedy only where it lowers the peak (a peak in the optimizer's step, or in no block's
        # activations, is not lowered by recomputing them: FLOPs for nothing)
        if best is not None and best[0] < _WORTH * as_run:
            out.append((best[2], best[3]))
        if self.peak_by_category.get("optimizer_state") or self.peak_by_category.get("gradients"):
            # a run already sharded over 8 ranks or more: twice its ranks
            ranks = 8 if self.sharded_over < 8 else 2 * self.sharded_over
            sharded = self.what_if(shard="zero3", world_size=ranks)
            if sharded.peak_bytes < _WORTH * as_run:  # as the others: where it lowers the peak
                out.append((f"ZeRO-3 / FSDP over {ranks} ranks", sharded))
        if self.peak_by_category.get("parameters"):
            # bf16 for what is stored wider than 2 bytes an element: a model already in bf16 gets
            # no suggestion that changes nothing, and weights quantized to int8 or 4 bits (torchao,
            # NF4) are not widened back to bf16 by it
            names = {"kv_cache": "KV cache", "other": "intermediate tensors"}
            if self.trained():
                # gradients are kept in their parameters' dtype (also where none is alive at the peak)
                held = ["parameters", "gradients"] if self._wider_than("parameters", 2) else []
                held += ["activations"] if self._wider_than("activations", 2) else []
                if held:
                    # an optimizer keeps fp32 master weights of the parameters it updates in bf16
                    master = "parameters" in held
                    label = ", ".join(held) + (" (fp32 master weights)" if master else "")
                    half = self.what_if(bytes_per_element=dict.fromkeys(held, 2), master_weights=master)
                    if half.peak_bytes < _WORTH * self.peak_bytes:  # a remedy only where it lowers the peak
                        out.append((f"bf16 {label}", half))
            else:
                # inference keeps no master weights (an optimizer would hold them); under no_grad
                # its feature maps are saved for no backward: intermediate tensors (`other`), which
                # a bf16 model's layers make in bf16 too
                held = [c for c in ("parameters", "activations", "kv_cache", "other") if self._wider_than(c, 2)]
                half = self.what_if(bytes_per_element=dict.fromkeys(held, 2))
                if held and half.peak_bytes < _WORTH * self.peak_bytes:
                    listed = [names.get(c, c) for c in held]
                    label = ", ".join(listed[:-1]) + f" and {listed[-1]}" if len(listed) > 1 else listed[0]
                    out.append((f"bf16 {label} (inference: no master weights)", half))
        return out

    def _wider_than(self, cat: str, size: float) -> bool:
        """Whether a category held bytes at the peak mostly in floating-point tensors stored wider
        than `size` bytes an element on average (a report without element counts: taken as fp32).
        Integer tensors are not narrowed: an int8 model's fp32 scales and biases do not make its
        parameters a bf16 candidate."""
        held = self.peak_by_category.get(cat, 0)
        floating = held - self.peak_kept_bytes.get(cat, 0)
        elements = self.peak_elements.get(cat)
        return floating > 0 and 2 * floating >= held and (not elements or floating / elements > size)

    def trained(self) -> bool:
        """Whether the recorded steps trained: gradients or optimizer state held at some point, or
        a backward or optimizer phase at the peak step."""
        if self.peak_by_category.get("gradients") or self.peak_by_category.get("optimizer_state"):
            return True
        if any(m.gradient_bytes or m.optimizer_state_bytes for m in self.modules):
            return True
        return any(phase in ("backward", "optimizer") for _, phase, _, _ in self.timeline)

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars per recorded step."""
        out = {"memwall/peak_bytes": float(self.peak_bytes)}
        for cat in CATEGORIES:
            out[f"memwall/peak_{cat}_bytes"] = float(self.peak_by_category.get(cat, 0))
        if self.capacity_bytes:
            out["memwall/peak_capacity_fraction"] = self.peak_bytes / self.capacity_bytes
        return out

    # -- file ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # field by field: dataclasses.asdict deep-copies every value recursively, which took
        # ~20 ms of a BERT forward's report (thousands of timeline points and module records)
        out = {name: getattr(self, name) for name in _REPORT_FIELDS}
        out["peak_by_category"] = dict(self.peak_by_category)
        out["peak_elements"] = dict(self.peak_elements)
        out["peak_kept_bytes"] = dict(self.peak_kept_bytes)
        out["modules"] = [{name: getattr(m, name) for name in _MODULE_FIELDS} for m in self.modules]
        out["peak_at"] = list(self.peak_at)
        out["timeline"] = [[i, phase, list(values), module] for i, phase, values, module in self.timeline]
        out["notes"] = list(self.notes)
        out["timeline_batch_fixed"] = [list(point) for point in self.timeline_batch_fixed]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MemoryReport:
        data = dict(data)
        data["peak_at"] = tuple(data.get("peak_at", ("", "", "")))
        data["modules"] = tuple(MemoryModule(**m) for m in data.get("modules", ()))
        data["timeline"] = tuple((int(i), str(p), tuple(int(v) for v in values), str(m))
                                 for i, p, values, m in data.get("timeline", ()))
        data["notes"] = tuple(data.get("notes", ()))
        data["timeline_batch_fixed"] = tuple(tuple(int(b) for b in point)
                                             for point in data.get("timeline_batch_fixed", ()))
        return cls(**data)


_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(MemoryReport))
_MODULE_FIELDS = tuple(f.name for f in dataclasses.fields(MemoryModule))


def parse_bytes_per_element(text: str | None) -> dict[str, float]:
    """"parameters=2,activations=1" -> {"parameters": 2.0, "activations": 1.0}: element sizes per
    category for `MemoryReport.what_if` (the CLI's --precision, the tab's bytes_per_element)."""
    out: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        category, sep, size = item.partition("=")
        category, size = category.strip(), size.strip()
        if not sep or category not in CATEGORIES:
            raise ValueError(f"bytes_per_element: unknown category {category[:40]!r} in {item.strip()[:40]!r}: it "
                             f"is not CATEGORY=BYTES with a category of {', '.join(CATEGORIES)} "
                             "(e.g. parameters=2,activations=1)")
        if category in out:
            raise ValueError(f"bytes_per_element: {category} is given more than once")
        try:
            value = float(size)
        except ValueError:
            value = math.nan
        if not 0 < value <= 16:
            raise ValueError(f"bytes_per_element: {category}={size[:40]!r} must be a size in bytes above 0 and at "
                             "most 16 (4 for fp32, 2 for bf16/fp16, 1 for fp8/int8, 0.5 for int4)")
        out[category] = value
    return out


def _natural(path: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def _listed(paths: list[str]) -> str:
    """Module paths for a note: all of them up to three, else the first two and how many more."""
    if len(paths) <= 3:
        return ", ".join(paths)
    return f"{paths[0]}, {paths[1]} and {len(paths) - 2} more"


#: a precision remedy is suggested where it lowers the projected peak by more than this (2%): an
#: fp32 master copy can take back what halving the rest saves (an MLP whose peak is its optimizer
#: step: -0.1%), and mixed precision already in place leaves little (-0% to +9% measured)
_WORTH = 0.98
#: the block containers (most saved activations first) the checkpointing suggestion projects
_CONTAINERS_TRIED = 4


def _called(modules: tuple[MemoryModule, ...], path: str) -> set[str]:
    """`{path}` when the module at `path` ran ops of its own (it is a block, a residual add or a
    layer of its own in its forward, not a container: a ModuleList runs none, a Sequential only
    its children's) and, where it has modules under it, its output is known (the one tensor a
    checkpointed block keeps; not known for a block inside a region compiled whole, whose hooks
    do not run)."""
    m = next((m for m in modules if m.module == path), None)
    if m is None or not (m.forward_flops or m.activation_bytes):
        return set()
    parent = any(x.module.startswith(f"{path}.") for x in modules)
    return {path} if m.output_bytes or not parent else set()


def merge_memory(reports: list[MemoryReport | None]) -> MemoryReport | None:
    """Several windows of one rank: the window with the highest peak."""
    present = [m for m in reports if m is not None]
    return max(present, key=lambda m: m.peak_bytes) if present else None


__all__ = ["BATCH_SCALED", "CATEGORIES", "SHARDING", "MemoryModule", "MemoryReport", "MemoryWhatIf", "merge_memory",
           "parse_bytes_per_element"]
