"""Which tensor storages are alive during the recorded steps, of which category, whose.

A `MemoryTracker` lives with a capture (hooks/capture.py) and sees every op it records: the
op's tensor outputs (new storages) and inputs (storages made before the step: the batch). Each
storage is keyed by its identity (views and aliases share one), held by a weak reference whose
callback takes it off the books when torch frees it: memwall keeps nothing alive.

Categories (memwall_plugin/memory.py) are given by what a storage turns out to be:
parameters when a root module is first seen; gradients by a post-accumulate-grad hook on each
parameter; optimizer state after each optimizer step (and at a step's start, for state made
earlier); activations by a saved-tensors pack hook, active while a step is recorded, that
returns the tensor it is given untouched; the KV cache after a generation call of the model.
Everything else is `other`. A storage only moves to a category of higher rank (parameters first).

The peak is taken after each op: the live bytes then, by category, and where (phase, op,
module). A storage classified later (the pack hook runs after the op returned; optimizer state
is known once the optimizer's step ends) that is still alive and was seen before the peak was
alive at the peak: the peak's breakdown moves it to its category too.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    checkpoint_saving_inputs,
    data_alias,
    forget_hooks_below,
    is_zero_tensor,
    never_compiled,
    node_sequence_nr,
    observe_selective_checkpoint_saves,
    observe_storage_resizes,
    op_schema,
    pack_hook_passed_over,
    peek_sequence_nr,
    sparse_values_storage,
    step_aside_for_disablers,
    storage_key,
    version_of,
    wrapper_inner_tensors,
)

from memwall_plugin.memory import CATEGORIES

PARAMETERS, GRADIENTS, OPTIMIZER_STATE, ACTIVATIONS, KV_CACHE, OTHER = range(6)
_N = len(CATEGORIES)
#: the points kept per step's timeline (the peak is always kept)
TIMELINE_POINTS = 600
_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_grad_enabled = torch.is_grad_enabled


class _Storage:
    __slots__ = ("nbytes", "elements", "itemsize", "cat", "module", "ref", "step", "index", "freed", "fixed",
                 "fixed_at", "weight", "kept", "floating")

    def __init__(self, nbytes: int, itemsize: int, cat: int, module: str, step: int, index: int,
                 floating: bool = True) -> None:
        self.nbytes, self.itemsize, self.cat, self.module, self.step = nbytes, itemsize, cat, module, step
        #: the elements a precision what-if resizes: a floating storage's; an integer or bool one
        #: (indices, masks, token ids) keeps its width in bf16, its bytes `kept`
        self.floating = floating
        self.elements = nbytes // itemsize if floating else 0
        self.kept = 0 if floating else nbytes
        self.index = index  # the step's op count when it was first seen
        self.ref: Any = None
        self.freed: tuple[int, int] | None = None  # (step, op count) when torch freed it
        #: sized by a parameter, not the batch: made by an op of a module in the shape of one
        #: of its parameters (a weight cast to bf16 by autocast and saved for backward, a
        #: dequantized int8 weight, a weight's gradient not yet summed into its .grad)
        self.fixed = False
        #: (step, op count) when it was found to be fixed (None: from its first sighting)
        self.fixed_at: tuple[int, int] | None = None
        #: a parameter's storage that no model registers (FSDP2's gathered copy of a module's
        #: sharded parameters, made for its forward and its backward): a weight saved for
        #: backward from it is not an activation
        self.weight = False


class _StorageRef(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to a storage that knows its key: one object per storage whose death the
    tracker hears of (a closure per storage was two more for the garbage collector to scan; a
    decode's thousands of new storages a step then set off full collections)."""

    __slots__ = ("key",)
    key: int


class StepMemory:
    """One recorded step: its peak, where, its breakdown, its timeline, per-module activations."""

    __slots__ = ("step", "peak", "peak_by_cat", "peak_elems", "peak_kept", "peak_at", "peak_index", "timeline",
                 "activations",
                 "outputs", "owned", "stride", "index", "allocator_peak", "forward_ops", "saving_ops",
                 "input_saving_ops", "save_pending", "moves", "found", "grads_read", "forward_starts",
                 "backward_since", "param_grads")

    def __init__(self, step: int, live: list[int], elems: list[int], kept: list[int]) -> None:
        self.step = step
        self.peak = sum(live)
        self.peak_by_cat, self.peak_elems, self.peak_kept = list(live), list(elems), list(kept)
        self.peak_at: tuple[str, Any, str] = ("", "", "")
        self.peak_index = 0
        self.owned: dict[str, list[int]] = {}  # module -> [parameters, gradients, optimizer state] bytes
        #: (op count, phase, bytes per category, module, bytes per category that are fixed)
        self.timeline: list[tuple[int, str, tuple[int, ...], str, tuple[int, ...]]] = []
        self.activations: dict[str, int] = {}  # module -> bytes saved for backward this step
        self.outputs: dict[str, int] = {}  # module -> bytes of its forward's outputs this step
        self.stride = 1
        self.index = 0
        self.allocator_peak: int | None = None
        #: the forward's ops in order, (module, capture entry), and the positions of those that
        #: saved a tensor for backward: what a checkpointed module's recompute re-runs (it stops
        #: after the last op that saves one: torch.utils.checkpoint's early stop). Ops run with
        #: grad mode on only: an evaluation's forward under no_grad has no backward to recompute for
        self.forward_ops: list[tuple[str, Any]] = []
        self.saving_ops: set[int] = set()  # saved their outputs (after they ran)
        self.input_saving_ops: set[int] = set()  # saved their inputs only (before they ran)
        #: where in forward_ops each forward pass after the first begins (a backward ran since the
        #: forward op before it): gradient accumulation's micro-batches, each checkpointed apart
        self.forward_starts: list[int] = []
        self.backward_since = False
        self.save_pending = False
        #: reclassified storages (entry, old category, new one, op count then, the op count from
        #: which the points hold it as fixed or None): the points taken before are corrected at
        #: the step's end
        self.moves: list[tuple[_Storage, int, int, int, int | None]] = []
        #: storages made before the step, first found during it (entry, op count then, category
        #: then): the timeline points taken before are corrected at the step's end
        self.found: list[tuple[_Storage, int, int]] = []
        #: module -> bytes of the gradients an optimizer step read (its own parameters')
        self.grads_read: dict[str, int] = {}
        #: id(parameter) -> (module, bytes of its gradient when an optimizer stepped): what
        #: `grads_read` sums, per parameter (optimizers over parts of a module, stepping twice)
        self.param_grads: dict[int, tuple[str, int]] = {}


class MemoryTotals:
    """Recorded steps folded together (a window's, the run's): the step with the highest peak,
    kept whole, and per module the most any step held. Bounded by modules, not by steps."""

    __slots__ = ("best", "activations", "outputs", "owned", "grads_read", "allocator_peak", "steps")

    def __init__(self) -> None:
        self.best: StepMemory | None = None
        self.activations: dict[str, int] = {}
        self.outputs: dict[str, int] = {}
        self.owned: dict[str, list[int]] = {}
        self.grads_read: dict[str, int] = {}
        self.allocator_peak: int | None = None
        self.steps = 0

    def add(self, s: StepMemory) -> MemoryTotals:
        self.steps += 1
        if self.best is None or s.peak > self.best.peak:
            self.best = s
        elif s is not self.best:
            s.forward_ops, s.timeline, s.forward_starts = [], [], []  # only the best step's are read
        self._fold(s)
        return self

    def merged(self, other: MemoryTotals) -> MemoryTotals:
        out = MemoryTotals()
        for part in (self, other):
            if part.best is not None and (out.best is None or part.best.peak > out.best.peak):
                out.best = part.best
            out.steps += part.steps
            out._fold(part)
        return out

    def _fold(self, part: StepMemory | MemoryTotals) -> None:
        """Per module, the most of `part` (a step, or other totals) and of these."""
        for mine, theirs in ((self.activations, part.activations), (self.outputs, part.outputs),
                             (self.grads_read, part.grads_read)):
            for module, b in theirs.items():
                if b > mine.get(module, 0):
                    mine[module] = b
        for module, figures in part.owned.items():
            held = self.owned.setdefault(module, [0, 0, 0])
            for i in range(3):
                held[i] = max(held[i], figures[i])
        if part.allocator_peak is not None:
            self.allocator_peak = max(self.allocator_peak or 0, part.allocator_peak)


def _local(t: Any) -> Any:
    """What this rank holds of a tensor: a DTensor's shard, any other tensor itself."""
    return t.to_local() if type(t) is not _Tensor and hasattr(t, "to_local") else t


def _shards(t: Any) -> int:
    """How many ranks share a DTensor's data: the sizes of the mesh dimensions it is sharded over
    (FSDP2, tensor parallelism); 1 for any other tensor, and for a replicated DTensor."""
    if type(t) is _Tensor or type(t) is _Parameter:
        return 1
    placements, mesh = getattr(t, "placements", None), getattr(t, "device_mesh", None)
    n = 1
    for dim, placement in enumerate(placements or ()):
        if mesh is not None and placement.is_shard():
            n *= mesh.size(dim)
    return n


def _leaves(t: Any) -> tuple[Any, ...] | list[Any]:
    """The tensors whose storages hold `t`'s data: `t` itself, or a wrapper subclass's inner
    tensors, recursively (torchao's int8 weight: its int8 data and its scales; an 8-bit
    optimizer's state: its codes and scales). The wrapper's own storage backs nothing and reports
    its nominal dtype's bytes: an int8 weight counted so read as fp32, 4x its size."""
    if type(t) is _Tensor or type(t) is _Parameter:
        return (t,)
    inner = wrapper_inner_tensors(t)
    if inner is None:
        return (t,)
    out: list[Any] = []
    for x in inner:
        out.extend(_leaves(x))
    return out


def _storage_of(t: Any) -> Any:
    """The storage holding a plain tensor's data (`_leaves` takes a DTensor or another wrapper
    subclass apart first)."""
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError, AttributeError):  # sparse, nested without storage, subclasses
        return sparse_values_storage(t)  # a sparse tensor: its values' (its indices are left out)


def _held_bytes(t: Any, st: Any) -> int:
    """The bytes a storage holds in memory: all of it where torch allocated it; where it did not
    (a file mapped into memory: safetensors' and `torch.load(mmap=True)`'s weights; another
    library's buffer), the bytes `t` spans. transformers' tensor-parallel loader keeps each rank's
    row shard of a weight as a view of the whole weight's mapping, of which the rank touches only
    its shard's pages: counted whole, a rank's parameters read 77% more than it holds."""
    nbytes = st.nbytes()
    try:
        if not nbytes or st.resizable() or not t.numel():
            return nbytes
        span = 1 + sum((n - 1) * abs(k) for n, k in zip(t.shape, t.stride()))  # from its first element
        return min(nbytes, span * t.element_size())
    except (RuntimeError, AttributeError, NotImplementedError):
        return nbytes


class MemoryTracker:
    """Live storages by category while a capture records (see the module's doc)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker  # hooks/modules.py's ModuleTracker: module paths, phases
        self.live: dict[int, _Storage] = {}
        self.bytes = [0] * _N
        self.total = 0  # sum(self.bytes), kept as they change: read after every op
        self.elems = [0] * _N
        self.kept = [0] * _N  # bytes of integer and bool storages (_Storage.kept)
        self.step: StepMemory | None = None
        self.last: StepMemory | None = None  # the last recorded step
        self.window = MemoryTotals()  # the open window's recorded steps
        self.run = MemoryTotals()  # the closed windows' recorded steps
        # frees may come from autograd's or the allocator's threads; re-entered by a SIGTERM's
        # handler landing inside it (terminate.py) on the same thread
        self._lock = threading.RLock()
        self._on_free = self._freed  # one bound method, shared by every storage's weak reference
        #: module -> [parameters, gradients, optimizer state] bytes alive now (steps keep the most)
        self.module_live: dict[str, list[int]] = {}
        self._param_modules: dict[int, str] = {}  # id(param) -> module
        self._module_params: dict[str, list[Any]] = {}  # module -> its parameters (until close)
        self._roots: set[int] = set()
        self._handles: list[Any] = []
        self.unarmed: list[Any] = []  # parameters whose gradient hook waits for `arm`
        #: elements of the parameters that require grad (this rank's shard of a DTensor's): what
        #: an optimizer would keep fp32 master weights of (a LoRA's adapters, not the frozen base)
        self.trainable_elements = 0
        #: how many ranks the parameters seen are sharded over (DTensors: FSDP2, tensor
        #: parallelism): this rank holds 1/n of them, of their gradients and optimizer state
        self.sharded_over = 1
        #: the parameters' bytes at their whole (global) shapes, and this rank's of them: equal
        #: unless DTensors shard them; a model partly sharded (tensor parallelism's replicated
        #: norms, biases and heads) holds more than 1/sharded_over of the model on each rank
        self.model_parameter_bytes = 0
        self.rank_parameter_bytes = 0
        #: what shards them: "FSDP2" (a module fully_shard made an FSDPModule), "tensor parallel"
        #: (DTensor parameters no FSDPModule holds), "" (none)
        self.sharded_by = ""
        #: how many ranks the optimizer state alone is sharded over (ZeroRedundancyOptimizer,
        #: ZeRO-1: parameters and gradients whole on each rank), and the bytes of the parameters
        #: it updates on all of them and on this rank (what its state scales with)
        self.state_sharded_over = 1
        self.state_model_bytes = 0
        self.state_rank_bytes = 0
        self._fsdp = False
        #: module path -> shapes of the parameters it holds (tied ones in each holder): an op of
        #: that module making a tensor of such a shape makes one sized by the parameter
        self._param_shapes: dict[str, set[tuple[int, ...]]] = {}
        self.fixed = [0] * _N  # bytes of the live storages that are fixed (_Storage.fixed)
        self._optimizers: weakref.WeakSet[Any] = weakref.WeakSet()
        self._hooks: Any = None
        self._counted: set[_Storage] = set()  # activations already added to a module this step
        self.closed = False
        self.failed: str | None = None
        self._resizes = False  # observing storages resized in place (from the first recording on)
        self._weights = False  # a storage of a parameter no model registers was seen (_Storage.weight)

    # -- storages ------------------------------------------------------------------------------
    def _add(self, t: Any, cat: int, module: str = "", older: bool = False) -> list[_Storage]:
        """`t`'s storages (one; a wrapper subclass's inner tensors' several) as `cat` at least.
        `older`: one not seen before was made before the running step began (`_new`)."""
        entries = []
        for leaf in _leaves(t):
            st = _storage_of(leaf)
            if st is None:
                continue
            key = storage_key(st)
            entry = self.live.get(key)
            if entry is None:
                entry = self._new(leaf, st, key, cat, module)
                if older:
                    self._alive_from_start(entry)
            elif cat < entry.cat or (cat == entry.cat <= OPTIMIZER_STATE and module and not entry.module):
                if cat == ACTIVATIONS and module and entry.module.startswith(f"{module}."):
                    module = entry.module  # made below the module saving it, in a compiled region (made_in)
                self._move(entry, cat, module)  # or its owner found (a compiled step's state)
            entries.append(entry)
        return entries

    def _new(self, t: Any, st: Any, key: int, cat: int, module: str) -> _Storage:
        """A storage not seen before (`st`, keyed `key`, holding `t`'s data)."""
        nbytes = 0 if is_zero_tensor(t) else _held_bytes(t, st)
        try:
            size = t.element_size() or 1
            dtype = t.dtype
            floating = dtype.is_floating_point or dtype.is_complex
        except (RuntimeError, AttributeError):
            size, floating = 1, True
        s = self.step
        entry = _Storage(nbytes, size, cat, module, s.step if s is not None else -1, s.index if s is not None else 0,
                         floating)
        ref = entry.ref = _StorageRef(st, self._on_free)
        ref.key = key
        with self._lock:
            self.live[key] = entry
            self.bytes[cat] += nbytes
            self.elems[cat] += entry.elements
            self.kept[cat] += entry.kept
            self.total += nbytes
        if cat <= OPTIMIZER_STATE:
            self._own(module, cat, nbytes)
        return entry

    def _alive_from_start(self, entry: _Storage) -> None:
        """`entry`, just found by what holds it, not by an op, was made before the running step
        began (an optimizer's state made before the profile, first found as the optimizer
        steps): alive at every moment of the step, the peak too, not only from now on."""
        s = self.step
        if s is None or not s.index:
            return
        with self._lock:
            entry.index = 0
            s.found.append((entry, s.index, entry.cat))
            s.peak += entry.nbytes
            s.peak_by_cat[entry.cat] += entry.nbytes
            s.peak_elems[entry.cat] += entry.elements
            s.peak_kept[entry.cat] += entry.kept

    def _freed(self, ref: _StorageRef) -> None:
        """A storage was freed (its weak reference's callback, on whichever thread freed it)."""
        with self._lock:
            entry = self.live.pop(ref.key, None)
            if entry is not None:
                step = self.step
                if step is not None:
                    entry.freed = (step.step, step.index)
                if entry.cat <= OPTIMIZER_STATE:
                    live = self.module_live.get(entry.module)
                    if live is not None:
                        live[entry.cat] -= entry.nbytes
                self.bytes[entry.cat] -= entry.nbytes
                self.elems[entry.cat] -= entry.elements
                self.kept[entry.cat] -= entry.kept
                self.total -= entry.nbytes
                if entry.fixed:
                    self.fixed[entry.cat] -= entry.nbytes

    def resized(self, st: Any) -> None:
        """A storage grown or shrunk in place (`UntypedStorage.resize_`, which no op sees: FSDP2
        frees each gathered parameter's storage after its forward and allocates it again before
        its backward): its bytes from now on."""
        if self.closed or self.failed is not None:
            return
        try:
            entry = self.live.get(storage_key(st))
            if entry is None:
                return
            nbytes = st.nbytes()
            delta = nbytes - entry.nbytes
            if not delta:
                return
            elements = nbytes // entry.itemsize if entry.floating else 0
            kept = 0 if entry.floating else nbytes
            with self._lock:
                cat = entry.cat
                self.bytes[cat] += delta
                self.elems[cat] += elements - entry.elements
                self.kept[cat] += kept - entry.kept
                self.total += delta
                if entry.fixed:
                    self.fixed[cat] += delta
                entry.nbytes, entry.elements, entry.kept = nbytes, elements, kept
            if cat <= OPTIMIZER_STATE:
                self._own(entry.module, cat, delta)
        except Exception as err:  # never into the user's code
            self.fail(err)

    def _move(self, entry: _Storage, cat: int, module: str) -> None:
        s = self.step
        if entry.cat <= OPTIMIZER_STATE:
            self._own(entry.module, entry.cat, -entry.nbytes)
            if s is not None and module and not entry.module:
                # held by no module only until its owner was known (gradients and optimizer state
                # made before the first recorded step, found before the model's names): never
                # the top level's, whose most held at once the step began counting them in
                held = s.owned.get("")
                if held is not None:
                    live = self.module_live.get("", [0, 0, 0])[entry.cat]
                    held[entry.cat] = max(live, held[entry.cat] - entry.nbytes)
        with self._lock:
            self.bytes[entry.cat] -= entry.nbytes
            self.elems[entry.cat] -= entry.elements
            self.kept[entry.cat] -= entry.kept
            # alive now and seen before the peak: it was alive at the peak, as what it turns out to be
            if s is not None:
                # from which op count the timeline's points hold it as fixed (None: not fixed)
                fixed_from = None
                if entry.fixed:
                    fixed_from = entry.fixed_at[1] if entry.fixed_at is not None and entry.fixed_at[0] == s.step else 0
                s.moves.append((entry, entry.cat, cat, s.index, fixed_from))
            if entry.fixed:
                self.fixed[entry.cat] -= entry.nbytes
                self.fixed[cat] += entry.nbytes
            if s is not None and (entry.step != s.step or entry.index <= s.peak_index):
                s.peak_by_cat[entry.cat] -= entry.nbytes
                s.peak_by_cat[cat] += entry.nbytes
                s.peak_elems[entry.cat] -= entry.elements
                s.peak_elems[cat] += entry.elements
                s.peak_kept[entry.cat] -= entry.kept
                s.peak_kept[cat] += entry.kept
            entry.cat = cat
            if module:
                entry.module = module
            self.bytes[cat] += entry.nbytes
            self.elems[cat] += entry.elements
            self.kept[cat] += entry.kept
        if cat <= OPTIMIZER_STATE:
            self._own(entry.module, cat, entry.nbytes)

    def _own(self, module: str, cat: int, nbytes: int) -> None:
        live = self.module_live.setdefault(module, [0, 0, 0])
        live[cat] += nbytes
        s = self.step
        if s is not None:
            held = s.owned.setdefault(module, [0, 0, 0])
            if live[cat] > held[cat]:
                held[cat] = live[cat]

    # -- what each storage is -------------------------------------------------------------------
    def add_root(self, root: torch.nn.Module, names: Mapping[Any, str] | None = None) -> None:
        """A model (or a module first seen outside any other): its parameters, buffers, hooks.
        Those no op has made or read yet were made before the running step began (ops of the
        step can run before its model is first called: the batch's preparation, FSDP2's
        all-gather of the first layer): alive from the step's start."""
        if id(root) in self._roots:
            return
        self._roots.add(id(root))
        for name, module in root.named_modules(remove_duplicate=False):
            path = names.get(module, name) if names else name
            self._fsdp = self._fsdp or any(c.__name__ == "FSDPModule" for c in type(module).__mro__)
            for p in module.parameters(recurse=False):
                local = _local(p)
                self._param_shapes.setdefault(path, set()).add(tuple(local.shape))
                if id(p) in self._param_modules:
                    continue
                self._param_modules[id(p)] = path
                self._module_params.setdefault(path, []).append(p)
                self._add(p, PARAMETERS, path, older=True)  # a DTensor's: its shard on this rank
                shards = _shards(p)
                if shards > 1:
                    self.sharded_over = max(self.sharded_over, shards)
                    self.sharded_by = "FSDP2" if self._fsdp else "tensor parallel"
                # a DTensor's numel is its whole shape's; a wrapper subclass's elements are
                # sized by its own leaves, counted alike in both sums
                size = local.numel() * local.element_size()
                self.rank_parameter_bytes += size
                self.model_parameter_bytes += (p.numel() * size // local.numel() if local.numel() and local is not p
                                               else size)
                if p.grad is not None:
                    self._add(p.grad, GRADIENTS, path, older=True)
                if p.requires_grad:
                    self.unarmed.append(p)
                    self.trainable_elements += _local(p).numel()
            for b in module.buffers(recurse=False):
                # sized by the model, not the batch, also when saved for backward (GPT-2's causal
                # mask buffer, sliced per call, in transformers 4)
                for entry in self._add(b, OTHER, path, older=True):
                    self._fix(entry)

    def arm(self) -> None:
        """Hook the parameters' gradients (each noted as a gradient when accumulated). Done when
        gradients can first come: a forward with grad enabled, or a backward pass (the capture
        calls this at its first op); a profile of inference (a BERT-Base's 199 parameters: ~1 ms)
        never pays for it. An earlier gradient is read from `.grad` (add_root, the optimizer)."""
        params, self.unarmed = self.unarmed, []
        for p in params:
            try:
                self._handles.append(p.register_post_accumulate_grad_hook(self._grad_ready))
            except RuntimeError:  # not a leaf (a tied view): its gradient is someone else's
                pass

    def _grad_ready(self, p: Any) -> None:
        if self.closed or self.failed is not None:
            return
        try:
            if p.grad is not None:
                self._add(p.grad, GRADIENTS, self._param_modules.get(id(p), ""))
        except Exception as err:  # never into the user's backward
            self.fail(err)

    def optimizer_stepping(self, optimizer: Any) -> None:
        """Before a step: the gradients it reads (assigned ones too: FSDP2's sharded gradients),
        per module: what a module's gradients are, however many buffers lived during backward."""
        read: dict[int, tuple[str, int]] = {}
        seen: set[int] = set()

        def held(p: Any, module: str) -> None:
            nbytes = 0
            for entry in self._add(p.grad, GRADIENTS, module, older=True):
                if id(entry) not in seen:
                    seen.add(id(entry))
                    nbytes += entry.nbytes
            read[id(p)] = (module, nbytes)

        recording = self.step is not None
        for group in getattr(optimizer, "param_groups", ()):
            for p in group.get("params", ()):
                if p.grad is not None and id(p) not in read:
                    module = self._param_modules.get(id(p))
                    # an unrecorded step's gradients of parameters no model has named yet (before a
                    # schedule's first recorded step): left to be found when read, as they would
                    # be the top level's until freed, beside the modules' own at the next step
                    if module is not None or recording:
                        held(p, module or "")
        # the gradients of the same modules' other parameters, which this optimizer does not
        # update (Muon's matrices beside their biases; another optimizer's, or none's): held too
        for module in {module for module, _ in read.values() if module}:
            for p in self._module_params.get(module, ()):
                if id(p) not in read and p.grad is not None:
                    held(p, module)
        s = self.step
        if s is not None:
            grads = s.param_grads
            for key, (module, b) in read.items():
                if b > grads.get(key, (module, 0))[1]:
                    grads[key] = (module, b)
            totals: dict[str, int] = {}
            for module, b in grads.values():
                totals[module] = totals.get(module, 0) + b
            s.grads_read.update(totals)
        if optimizer not in self._optimizers:
            # an optimizer first seen: its state, before its ops, was made before this step (by
            # steps before the profile), and held all through it (known ones' is read at each
            # step's start: `begin_step`)
            self._scan_optimizer(optimizer, older=True)
            self._master_weights(optimizer)
            self._zero_partition(optimizer)

    def _master_weights(self, optimizer: Any) -> None:
        """Tensors `optimizer` updates that no model registers, shaped as model parameters it does
        not update: fp32 master copies of a bf16 model's weights (mixed precision by hand, the
        bf16 remedy the what-ifs project), which are optimizer state, sized by the model. A
        tensor shaped as no such parameter (an image optimized through a frozen network) stays
        what it is."""
        params = [p for g in getattr(optimizer, "param_groups", ()) for p in g.get("params", ())]
        strangers = [p for p in params if isinstance(p, _Tensor) and id(p) not in self._param_modules]
        if not strangers:
            return
        updated = {id(p) for p in params}
        shapes = {tuple(_local(q).shape) for held in self._module_params.values() for q in held
                  if id(q) not in updated}
        for p in strangers:
            if tuple(p.shape) in shapes:
                for entry in self._add(p, OPTIMIZER_STATE, "", older=True):
                    self._fix(entry)

    def _zero_partition(self, optimizer: Any) -> None:
        """A ZeroRedundancyOptimizer keeps the state of its rank's partition of the parameters
        (in the local optimizer it wraps, whose step runs inside its own): the state of the whole
        model is that of all the partitions, as their parameters' bytes are to this rank's."""
        if not any(c.__name__ == "ZeroRedundancyOptimizer" for c in type(optimizer).__mro__):
            return
        local, world = getattr(optimizer, "optim", None), getattr(optimizer, "world_size", 1)
        if local is None or not isinstance(world, int) or world < 2:
            return

        def size(optim: Any) -> int:
            params = {id(p): p for g in getattr(optim, "param_groups", ()) for p in g.get("params", ())}
            return sum(p.numel() * p.element_size() for p in params.values() if isinstance(p, _Tensor))

        whole, rank = size(optimizer), size(local)
        if whole and rank:
            self.state_sharded_over, self.state_model_bytes, self.state_rank_bytes = world, whole, rank

    def optimizer_stepped(self, optimizer: Any) -> None:
        self._optimizers.add(optimizer)
        self._scan_optimizer(optimizer)

    def compiled_step_inputs(self, inputs: list[Any]) -> None:
        """The inputs of a compiled optimizer step's region: what is not a parameter or a gradient
        is its state (moments, step counters), owned by no module (the optimizer object is not
        seen: its step hooks did not run; where its post-step hook runs after all, the state goes
        to its parameters' modules then)."""
        if self.closed or self.failed is not None:
            return
        try:
            for t in inputs:
                if isinstance(t, _Tensor):
                    self._add(t, OPTIMIZER_STATE, "")
        except Exception as err:
            self.fail(err)

    def _scan_optimizer(self, optimizer: Any, older: bool = False) -> None:
        for p, state in list(getattr(optimizer, "state", {}).items()):
            module = self._param_modules.get(id(p), "")
            if not isinstance(state, dict):
                continue
            size = p.numel() if isinstance(p, _Tensor) else 0
            for value in state.values():
                # LBFGS keeps its history in lists of tensors, flattened over all the parameters
                # (its state is keyed on the first one): such state is the optimizer's, not that
                # parameter's module's
                for t in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(t, _Tensor):
                        self._add(t, OPTIMIZER_STATE, module if t.numel() <= size else "", older)

    def made_in(self, out: Sequence[Any], paths: Sequence[str]) -> None:
        """The outputs of a compiled region (`out`) with the module path each was computed in
        ("" where unknown): an output still unclaimed keeps its maker's path, so an activation
        the compiled function saves for backward, under the compiled module's own path, is the
        module's that made it (as eager names it: by the module that saved it)."""
        live = self.live
        for t, path in zip(out, paths, strict=False):
            if path and type(t) is _Tensor:
                entry = live.get(storage_key(t.untyped_storage()))
                if entry is not None and entry.cat == OTHER and not entry.module:
                    entry.module = path

    def saved(self, t: Any) -> Any:
        """The pack hook: note the storage as an activation of the module saving it; return the
        tensor (what autograd would keep without the hook) with its version, as `.data` where it
        has a grad_fn. An op's output saved as itself would hold its own grad_fn, which holds what
        it saved: a cycle through C++ that no garbage collection breaks, so a graph never run
        backward (a GAN's `G(z).detach()`, an evaluation without no_grad) would keep its
        activations alive for good (autograd keeps an output's data without its grad_fn for this
        reason, and sets the grad_fn back when it unpacks it, as it does for any pack hook's
        tensor). `.data` makes that alias without an op (`detach()` would be one, in the user's
        own torch.profiler trace too), with a version counter of its own: the tensor's own is read
        through a weak reference. Autograd does not check a hook's tensors for in-place changes:
        `_unpack` does."""
        try:
            if not self.closed and self.failed is None and isinstance(t, _Tensor):
                entries = self._activation(t)
                step = self.step
                if step is not None and entries and not checkpoint_saving_inputs(sys._getframe(1)):
                    # autograd saves an op's inputs before the op runs and its outputs after it:
                    # an output (made by the newest autograd node) marks the op just recorded,
                    # an input the op about to run (a checkpoint saving its call's inputs is
                    # neither: the op that made one does not stop a recompute of its own module)
                    node = t.grad_fn
                    if node is not None and step.forward_ops and node_sequence_nr(node) == peek_sequence_nr() - 1:
                        step.saving_ops.add(len(step.forward_ops) - 1)
                    else:
                        step.save_pending = True
        except Exception as err:
            self.fail(err)
        kind = type(t)
        if kind is _Tensor or kind is _Parameter:
            if t.grad_fn is not None:
                return data_alias(t), version_of(t), weakref.ref(t)
            return t, version_of(t), None
        return t

    def cached_for_backward(self, t: Any) -> None:
        """A tensor selective activation checkpointing keeps for backward in its own cache, past
        autograd's saved tensors (and so past the pack hook): an activation of the module running."""
        try:
            if not self.closed and self.failed is None:
                self._activation(t)
        except Exception as err:
            self.fail(err)

    def _activation(self, t: Any) -> list[Any]:
        if type(t) is _Parameter and id(t) not in self._param_modules:
            # a parameter no model registers (FSDP2's gathered one, saved by a convolution
            # before it ran): the weight, not an activation
            entries = self._add(t, OTHER)
            for e in entries:
                self._mark_weight(e)
            return entries
        if self._weights and type(t) is _Tensor:
            st = _storage_of(t)
            entry = self.live.get(storage_key(st)) if st is not None else None
            if entry is not None and entry.weight:  # a view of one (a linear's transposed weight)
                return [entry]
        tracker = self.tracker
        if tracker.flat:
            # autograd saves an op's inputs before the op reaches memwall's mode: the module its
            # line of a flat graph names is read here
            module = tracker.in_flat_graph(True)
        elif tracker.stack and not tracker.compiled:
            module = tracker.stack[-1]
        else:  # a compiled model's graph run op by op (Dynamo's eager backends), or the top level
            module = tracker.in_graph_forward(True) or (tracker.stack[-1] if tracker.stack else "")
        entries = self._add(t, ACTIVATIONS, module)
        for entry in entries:
            if entry.cat == ACTIVATIONS and self.step is not None and entry not in self._counted:
                self._counted.add(entry)
                acts = self.step.activations
                acts[entry.module] = acts.get(entry.module, 0) + entry.nbytes
        return entries

    def cache_seen(self, cache: Any) -> None:
        """A generation cache handed to the model: its tensors are the KV cache (an
        encoder-decoder's: its self-attention and cross-attention caches' layers' tensors)."""
        for t in _tensors_in(cache, depth=5):
            self._add(t, KV_CACHE, "")

    def module_output(self, path: str, output: Any) -> None:
        if self.step is None:
            return
        seen: set[int] = set()
        total = 0
        for t in _tensors_in(output, depth=2):
            for leaf in _leaves(t):
                st = _storage_of(leaf)
                if st is not None and storage_key(st) not in seen:
                    seen.add(storage_key(st))
                    total += st.nbytes()
        if total:
            self.step.outputs[path] = self.step.outputs.get(path, 0) + total

    # -- each op --------------------------------------------------------------------------------
    def after_op(self, args: tuple[Any, ...], out: Any, phase: str, entry: Any, module: str) -> None:
        live = self.live
        known = len(live)
        tensors = [a for a in args if isinstance(a, _Tensor)]
        if isinstance(out, _Tensor):
            tensors.append(out)
        elif isinstance(out, (tuple, list)):
            tensors += [o for o in out if isinstance(o, _Tensor)]
        for t in tensors:
            if type(t) is _Tensor or type(t) is _Parameter:  # the common case, without _leaves
                try:
                    st = t.untyped_storage()
                except (RuntimeError, NotImplementedError):  # sparse (its values'), nested without storage
                    st = sparse_values_storage(t)
                    if st is None:
                        continue
            else:  # a DTensor, a wrapper subclass (its inner tensors)
                for leaf in _leaves(t):
                    st = _storage_of(leaf)
                    if st is not None and storage_key(st) not in live:
                        self._new(leaf, st, storage_key(st), OTHER, "")
                continue
            key = storage_key(st)
            found = live.get(key)
            if found is None:
                found = self._new(t, st, key, OTHER, "")
            if type(t) is _Parameter and id(t) not in self._param_modules:
                self._mark_weight(found)  # made after its model was seen (FSDP2's gathered ones)
        s = self.step
        if s is None:
            return
        if len(live) != known and module in self._param_shapes:  # a new storage: sized by a parameter?
            self._parameter_sized(out, module, s)
        if phase == "forward" and _grad_enabled():
            if s.backward_since:
                s.forward_starts.append(len(s.forward_ops))
                s.backward_since = False
            if s.save_pending:
                s.input_saving_ops.add(len(s.forward_ops))
                s.save_pending = False
            s.forward_ops.append((module, entry))
        elif phase == "backward" and s.forward_ops:
            s.backward_since = True
        values = self.bytes
        total = self.total
        if total > s.peak:
            s.peak = total
            s.peak_by_cat, s.peak_elems, s.peak_kept = list(values), list(self.elems), list(self.kept)
            s.peak_at = (phase, entry.func, module)
            s.peak_index = s.index
            s.timeline.append((s.index, phase, tuple(values), module, tuple(self.fixed)))  # the peak: always a point
        elif s.index % s.stride == 0:
            s.timeline.append((s.index, phase, tuple(values), module, tuple(self.fixed)))
        if len(s.timeline) > 2 * TIMELINE_POINTS:
            peak_point = max(s.timeline, key=lambda p: sum(p[2]))
            s.timeline = s.timeline[::2]
            if peak_point not in s.timeline:
                s.timeline.append(peak_point)
                s.timeline.sort()
            s.stride *= 2
        s.index += 1

    def _parameter_sized(self, out: Any, module: str, s: StepMemory) -> None:
        """An op of `module` made tensors shaped as one of its parameters: sized by it, whatever
        the batch (autocast's bf16 copy of a weight, saved for backward; a dequantized weight; a
        weight's gradient before it is accumulated, as a tied weight's first one waits for the
        second). The batch what-if leaves them unscaled."""
        shapes = self._param_shapes[module]
        for t in (out,) if isinstance(out, _Tensor) else out if isinstance(out, (tuple, list)) else ():
            # a strided nested tensor (SDPA's math path on jagged inputs) has no single shape
            if type(t) is not _Tensor or t.is_nested or tuple(t.shape) not in shapes:
                continue
            try:
                entry = self.live.get(storage_key(t.untyped_storage()))
            except (RuntimeError, NotImplementedError):
                continue
            # made by this op (a view of an older storage, a transposed weight, is not new)
            if entry is not None and entry.step == s.step and entry.index == s.index:
                self._fix(entry)

    def _mark_weight(self, entry: _Storage) -> None:
        """`entry` is a parameter no model registers (FSDP2's gathered one, an EMA's copy of the
        weights): sized by the model, not the batch."""
        entry.weight = self._weights = True
        self._fix(entry)

    def _fix(self, entry: _Storage) -> None:
        """`entry` is sized by the model (a parameter's shape, a buffer), not by the batch."""
        with self._lock:
            if not entry.fixed:
                entry.fixed = True
                s = self.step
                if s is not None and (entry.step != s.step or entry.index != s.index):
                    entry.fixed_at = (s.step, s.index)  # found later than it was made
                self.fixed[entry.cat] += entry.nbytes

    # -- steps ----------------------------------------------------------------------------------
    def begin_step(self, step: int) -> None:
        for optimizer in list(self._optimizers):  # state made by steps that were not recorded
            self._scan_optimizer(optimizer)
        self.step = s = StepMemory(step, self.bytes, self.elems, self.kept)
        self._counted = set()
        for module, live in self.module_live.items():  # what the step starts with
            s.owned[module] = list(live)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def rename_phase(self, old: str, new: str) -> None:
        """The running step's ops of phase `old` are of phase `new` (set-up that no work followed)."""
        s = self.step
        if s is None:
            return
        if s.peak_at[0] == old:
            s.peak_at = (new, *s.peak_at[1:])
        s.timeline = [(i, new if phase == old else phase, values, module, fixed)
                      for i, phase, values, module, fixed in s.timeline]

    def end_step(self, kept: bool) -> StepMemory | None:
        """The step ends: a kept one (recorded, with ops) joins the open window."""
        s, self.step = self.step, None
        if s is None or not kept:
            return None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            s.allocator_peak = int(torch.cuda.max_memory_allocated())
        phase, op, module = s.peak_at
        s.peak_at = (phase, op_name(op) if op else "", module)
        _correct_timeline(s)
        self.last = s
        self.window.add(s)
        return s

    def close_window(self) -> None:
        self.run = self.run.merged(self.window)
        self.window = MemoryTotals()

    def totals(self, window_only: bool, step_only: bool) -> MemoryTotals:
        if step_only:
            return MemoryTotals().add(self.last) if self.last is not None else MemoryTotals()
        return self.window if window_only else self.run.merged(self.window)

    def start(self) -> None:
        """Recording: the pack hook on (entered on the recording thread)."""
        if self._hooks is None and self.failed is None:
            # one object: the one on the stack, found by identity; selective checkpointing passes
            # over it when it looks for the user's saved-tensors hooks, as in a bare run
            pack = pack_hook_passed_over(self.saved)
            hooks = torch.autograd.graph.saved_tensors_hooks(pack, _unpack)
            try:
                hooks.__enter__()
            except RuntimeError as err:  # saved-tensors hooks disabled here: no activations seen
                self.fail(err)
                return
            self._hooks = (hooks, pack)
            observe_selective_checkpoint_saves(self.cached_for_backward, True)
            if not self._resizes:
                self._resizes = True
                observe_storage_resizes(self.resized, True)
            # torch.func's grad and vjp refuse to run under any saved-tensors hook: the hook steps
            # aside for them (their activations are not seen; their ops and storages are)
            step_aside_for_disablers(pack, True)

    def stop(self) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            observe_selective_checkpoint_saves(self.cached_for_backward, False)
            step_aside_for_disablers(hooks[1], False)
            hooks[0].__exit__(None, None, None)
            forget_hooks_below(hooks[1])

    def close(self) -> None:
        self.stop()
        self.closed = True
        if self._resizes:
            self._resizes = False
            observe_storage_resizes(self.resized, False)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.unarmed = []
        self._module_params = {}

    def fail(self, err: BaseException) -> None:
        if self.failed is None:
            self.failed = f"{type(err).__name__}: {err}"

def _correct_timeline(s: StepMemory) -> None:
    """Move, in every timeline point at which it was alive, each storage reclassified during the
    step to its final category (the points were taken before it was known)."""
    if not (s.moves or s.found) or not s.timeline:
        s.moves, s.found = [], []
        return
    events: list[tuple[int, int, int]] = []  # (op count, slot, +/- bytes): categories, then fixed ones
    for entry, found_at, cat in s.found:
        # alive from the step's start; the points from its finding on hold it already (as what
        # it was found to be: a later move corrects them from the start as from its sighting)
        events += [(0, cat, entry.nbytes), (found_at, cat, -entry.nbytes)]
        if entry.fixed:  # sized by the model (a buffer)
            events += [(0, _N + cat, entry.nbytes), (found_at, _N + cat, -entry.nbytes)]
    for entry, old, new, moved_at, fixed in s.moves:
        # the points from its first sighting to the move (or its end, if sooner) held it as `old`
        start = entry.index if entry.step == s.step else 0
        end = moved_at
        if entry.freed is not None and entry.freed[0] == s.step:
            end = min(end, entry.freed[1])
        if end <= start:
            continue
        events += [(start, old, -entry.nbytes), (start, new, entry.nbytes),
                   (end, old, entry.nbytes), (end, new, -entry.nbytes)]
        if fixed is not None and max(start, fixed) < end:  # only the points that held it as fixed
            begin = max(start, fixed)
            events += [(begin, _N + old, -entry.nbytes), (begin, _N + new, entry.nbytes),
                       (end, _N + old, entry.nbytes), (end, _N + new, -entry.nbytes)]
    events.sort()
    delta = [0] * (2 * _N)
    i = 0
    corrected = []
    for index, phase, values, module, fixed_bytes in s.timeline:
        while i < len(events) and events[i][0] <= index:
            delta[events[i][1]] += events[i][2]
            i += 1
        corrected.append((index, phase, tuple(v + d for v, d in zip(values, delta)), module,
                          tuple(f + d for f, d in zip(fixed_bytes, delta[_N:]))))
    s.timeline = corrected
    s.moves, s.found = [], []


def forward_flops(s: StepMemory, flops_of: Any) -> dict[str, int]:
    """Per module path, the FLOPs of its own forward ops with grad mode on in step `s` (all of
    its forward passes): what a checkpoint of it recomputes at most."""
    out: dict[str, int] = {}
    for module, entry in s.forward_ops:
        out[module] = out.get(module, 0) + (flops_of(entry) or 0)
    return out


def trailing_flops(s: StepMemory, flops_of: Any) -> dict[str, int]:
    """Per module path: the FLOPs of its forward's ops that a checkpoint of it does not re-run.
    torch.utils.checkpoint stops recomputing once every tensor the forward saved is saved again:
    at the last op that saves one, which itself runs when it saves its output (saved after it
    ran) and does not when it saves only its inputs (saved before it would run). One pass from
    the end of each forward pass (gradient accumulation's micro-batches: each is recomputed in
    its own backward), summed."""
    out: dict[str, int] = {}
    ops, saving, input_saving = s.forward_ops, s.saving_ops, s.input_saving_ops
    prefixes_of: dict[str, list[str]] = {}  # a module's path and its parents' (ops repeat modules)
    bounds = [0, *s.forward_starts, len(ops)]
    for lo, hi in zip(bounds, bounds[1:]):
        closed: set[str] = set()
        for i in range(hi - 1, lo - 1, -1):
            module, entry = ops[i]
            prefixes = prefixes_of.get(module)
            if prefixes is None:
                parts = module.split(".") if module else []
                prefixes = prefixes_of[module] = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
            open_ = [p for p in prefixes if p not in closed]
            if not open_:
                continue
            if i in saving:
                closed.update(open_)
                continue
            flops = flops_of(entry) or 0
            for p in open_:
                out[p] = out.get(p, 0) + flops
            if i in input_saving:
                closed.update(open_)
    return out


def op_name(func: Any) -> str:
    """"aten.mm" for torch.ops.aten.mm.default (the rows' `op`)."""
    schema = op_schema(func)
    if schema is None:
        return str(func)
    return str(schema.name).replace("::", ".")


def _unpack(packed: Any) -> Any:
    """The unpack hook: the tensor packed, if it has not been modified in place since it was
    saved; else the error autograd raises without a hook (which it does not check with one), in
    its words, so a script that fails bare fails the same way under memwall, not with wrong
    gradients."""
    if type(packed) is not tuple:
        return packed
    t, saved, ref = packed
    source = t if ref is None else ref()  # gone: nothing holds it to change it (a view might: unchecked)
    now = saved if source is None else version_of(source)
    if now != saved:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{t.type()} {list(t.shape)}] is at version {now}; expected version {saved} instead. Hint: the "
            "tensor was saved for backward and then changed in place (memwall's memory tracking checks this as "
            "autograd does; torch.autograd.set_detect_anomaly(True) finds the operation)")
    return t


# the pack hook runs inside the user's frames, which Dynamo's frame hook may be watching (eager
# code between a compiled model's graphs): its frames run as written, never compiled (Dynamo
# compiled memwall's own bookkeeping there, again for each module path, until its recompile limit)
never_compiled(MemoryTracker.saved)
never_compiled(_unpack)
never_compiled(MemoryTracker._freed)  # a storage's weak reference dying: called wherever it dies
never_compiled(MemoryTracker._grad_ready)


def _tensors_in(value: Any, depth: int = 3) -> list[Any]:
    """Tensors in a cache object or a module's output (tuples, lists, dicts, objects' fields)."""
    out: list[Any] = []
    stack = [(value, 0)]
    seen: set[int] = set()
    while stack:
        v, d = stack.pop()
        if isinstance(v, _Tensor):
            out.append(v)
            continue
        if d >= depth or id(v) in seen:
            continue
        seen.add(id(v))
        if isinstance(v, (list, tuple)):
            stack.extend((x, d + 1) for x in v)
        elif isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif hasattr(v, "__dict__") and not isinstance(v, (torch.nn.Module, type)):
            stack.extend((x, d + 1) for x in vars(v).values())
    return out


__all__ = ["MemoryTotals", "MemoryTracker", "StepMemory", "forward_flops", "op_name", "trailing_flops"]
