"""Every private torch API memwall uses, in one place, so a torch upgrade breaks one file."""

from __future__ import annotations

import contextlib
import functools
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterator
from types import FrameType
from typing import Any

import torch
from torch._ops import OpOverload, OpOverloadPacket
from torch.utils._python_dispatch import (  # private: no public dispatch-mode API exists
    TorchDispatchMode,
    _get_current_dispatch_mode_stack,
    is_traceable_wrapper_subclass,
)

#: The autograd Node executing on this thread (None outside backward).
current_autograd_node = torch._C._current_autograd_node


def in_backward() -> bool:
    """Inside a backward pass on this thread, its final callbacks included (where no Node runs)."""
    return int(torch._C._current_graph_task_id()) != -1
#: The sequence number the next autograd Node created on this thread will get.
peek_sequence_nr = torch._C._autograd._get_sequence_nr
#: Forward-mode AD on this thread: off inside an autograd.Function's forward and in inference
#: mode, on under torch.no_grad.
fwd_grad_enabled = torch._C._is_fwd_grad_enabled

#: AccumulateGrad nodes carry the largest uint64 as their sequence number.
ACCUMULATE_GRAD_SEQUENCE_NR = 2**64 - 1


def node_sequence_nr(node: Any) -> int:
    return int(node._sequence_nr())


def is_accumulate_grad(node: Any) -> bool:
    """Whether an autograd node accumulates a leaf's gradient (its hooks: DDP's buckets)."""
    try:
        return node_sequence_nr(node) == ACCUMULATE_GRAD_SEQUENCE_NR
    except (AttributeError, RuntimeError):
        return True


def node_variable(node: Any) -> Any:
    """The leaf tensor of an AccumulateGrad node, or None for any other node."""
    return getattr(node, "variable", None)


def find_frame(name: str, skip: int, limit: int, accept: Callable[[FrameType], bool] | None = None
               ) -> FrameType | None:
    """The nearest frame of a function called `name` (and `accept`ed) among the `limit` frames
    above the caller's, the first `skip` of them passed over; None if there is none."""
    frame: FrameType | None = sys._getframe(2 + skip)
    for _ in range(limit):
        if frame is None:
            return None
        if frame.f_code.co_name == name and (accept is None or accept(frame)):
            return frame
        frame = frame.f_back
    return None


def forward_kwargs() -> dict[str, Any]:
    """The keyword arguments of the module call whose global forward pre-hook is running.

    Global pre-hooks receive only positional arguments; generation passes everything by
    keyword. Read them from torch's Module._call_impl frame; {} if torch changed its shape."""
    frame = find_frame("_call_impl", skip=1, limit=4)
    kwargs = frame.f_locals.get("kwargs") if frame is not None else None
    return kwargs if isinstance(kwargs, dict) else {}


def in_backward_seed() -> bool:
    """Inside torch.autograd's Python making the gradient seed of `loss.backward()`
    (`ones_like(loss)` in `_make_grads`, before the engine runs a Node): backward work."""
    return find_frame("_make_grads", skip=0, limit=12,
                      accept=lambda frame: "autograd" in frame.f_code.co_filename) is not None


_warm = False


def warm_up_dispatch() -> None:
    """Enter a dispatch mode once: the first entry in a process imports torch._dynamo (~1 s),
    which must not be timed as part of the user's first step."""
    global _warm
    if _warm:
        return

    class _Nothing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            return func(*args, **(kwargs or {}))

    with unrecorded(), _Nothing():  # memwall's own ops: not in a torch.profiler trace around it
        torch.empty(1).add_(1)
    _warm = True


def dispatch_mode_stack() -> list[Any]:
    return list(_get_current_dispatch_mode_stack())


def in_compiled_call() -> bool:
    """Whether a call of a torch.compile'd function is running on this thread, below the caller
    (an eager part of it: what a graph break left, or a frame Dynamo fell back on). From torch
    2.13 that call puts the thread's dispatch keys back as they were when it began, as it returns:
    a dispatch mode left inside it leaves the Python key on with no mode to take it (every op
    after fails in torch's Python fallback), and one entered inside it is passed by. Read from the
    stack (torch's wrapper is a frame of its own there; nothing else tells): a step boundary's
    question, never an op's. False before Dynamo is loaded."""
    return next(_compile_wrapper_frames(), None) is not None


def _compile_wrapper_frames() -> Iterator[FrameType]:
    """The frames of torch's `compile_wrapper` on this thread's stack, innermost first (none
    before Dynamo is loaded)."""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    if dynamo is None:
        return
    where = dynamo.__file__
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "compile_wrapper" and code.co_filename == where:
            yield frame
        frame = frame.f_back


def dispatch_keys() -> tuple[Any, Any]:
    """This thread's local dispatch keys: those included and those excluded."""
    return torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set()


def keep_keys_past_compiled_calls(before: Any) -> bool:
    """Make the running torch.compile'd calls keep, as they return, the change a dispatch mode
    entered or exited inside them just made to this thread's included dispatch keys (`before`:
    those keys before it). Each call puts back the keys it began with as it returns: a mode
    entered inside it would be off after it (every op passing it by), and one exited inside it
    would leave the Python key on with no mode to take it (every op after failing in torch's
    Python fallback). From torch 2.14 each call keeps those keys on a stack of torch's
    (`_dynamo_save_local_dispatch_key_set`); this takes the snapshots off and puts them back
    changed the same way, and leaves this thread's keys as they are. False where there is no
    such stack (torch 2.13 keeps the keys in a guard object of the call's frame) or no call has
    a snapshot open: nothing changed."""
    save = getattr(torch._C, "_dynamo_save_local_dispatch_key_set", None)
    restore = getattr(torch._C, "_dynamo_restore_local_dispatch_key_set", None)
    if save is None or restore is None:
        return False
    open_calls = 0
    for frame in _compile_wrapper_frames():
        window = _snapshot_lines(frame.f_code)
        if window is None:
            return False
        open_calls += window[0] < frame.f_lineno < window[1]
    if not open_calls:
        return False
    current = dispatch_keys()
    added, removed = current[0] - before, before - current[0]
    if added == removed:  # nothing changed (another mode keeps the keys on)
        return True
    snapshots = []
    for _ in range(open_calls):  # innermost call's first
        restore()
        snapshots.append(dispatch_keys())
    for included, excluded in reversed(snapshots):
        with torch._C._ForceDispatchKeyGuard((included | added) - removed, excluded):
            save()
    with torch._C._ForceDispatchKeyGuard(*current):
        save()
    restore()  # this thread's keys as they were
    return True


@functools.cache
def _snapshot_lines(code: Any) -> tuple[int, int] | None:
    """The lines of compile_wrapper's `_dynamo_save_local_dispatch_key_set()` and
    `_dynamo_restore_local_dispatch_key_set()` calls: a call whose frame is between them has its
    snapshot on torch's stack. None where either is missing."""
    import dis

    lines: dict[str, int] = {}
    line = None
    try:
        for instruction in dis.get_instructions(code):
            positions = getattr(instruction, "positions", None)  # Python 3.11 on
            if positions is not None and positions.lineno is not None:
                line = positions.lineno
            elif isinstance(instruction.starts_line, int) and not isinstance(instruction.starts_line, bool):
                line = instruction.starts_line  # Python 3.10: set on a line's first instruction
            if instruction.argval in ("_dynamo_save_local_dispatch_key_set",
                                      "_dynamo_restore_local_dispatch_key_set") and line is not None:
                lines.setdefault(instruction.argval, line)
    except Exception:  # a Python whose instructions read otherwise: the keys are left alone
        return None
    if len(lines) != 2:
        return None
    return lines["_dynamo_save_local_dispatch_key_set"], lines["_dynamo_restore_local_dispatch_key_set"]


def python_key_on() -> bool:
    """Whether this thread's dispatch keys send ops to the dispatch modes (the Python key)."""
    return bool(torch._C._dispatch_tls_is_dispatch_key_included(torch._C.DispatchKey.Python))


class UncompiledDispatchMode(TorchDispatchMode):
    """A dispatch mode whose `__torch_dispatch__` torch calls as written, not wrapped to keep
    Dynamo out of it: for a mode that never compiles anything itself."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in torch._disable_dynamo (~4 us per op here) so
        # that a torch.compile call made inside the mode does not compile the mode's own frames.
        # This mode never compiles, and Dynamo compiles with it off: the wrapper is pure cost.
        return False


# -- running the op a mode was handed, invisibly to torch.profiler: `func(*args)` inside a mode
# -- enters the dispatcher anew, which records a second profiler event (aten::mm inside
# -- PythonDispatchMode inside aten::mm). Calling the kernel the dispatcher was taking the op to
# -- (below the Python key) runs the same code and records nothing of its own: the dispatcher
# -- records a call, never a call for a given key; the ops that kernel calls are recorded as they
# -- are without memwall.

#: whether a profiler records this thread (torch.profiler, the autograd profiler); a torch without
#: the query is taken to be profiling
_profiling: Callable[[], bool] = getattr(torch._C._autograd, "_profiler_enabled", lambda: True)
_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_Key = torch._C.DispatchKey
_dispatch_keys: Any = getattr(torch._C, "_dispatch_keys", None)
_tls_included: Any = getattr(torch._C, "_dispatch_tls_local_include_set", None)
_tls_excluded: Any = getattr(torch._C, "_dispatch_tls_local_exclude_set", None)
_has_kernel: Any = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
_in_alias: Any = getattr(torch._C, "_dispatch_is_included_in_alias", None)
_is_fallthrough: Any = getattr(torch._C, "_dispatch_kernel_for_dispatch_key_is_fallthrough", None)
#: whether to look the kernel up: a profiler records this thread, and this torch has every query
#: the lookup needs (a torch without one calls the op as the mode was given it)
_look_up: Callable[[], bool] = _profiling if None not in (
    _dispatch_keys, _tls_included, _tls_excluded, _has_kernel, _in_alias, _is_fallthrough) else bool
#: (id(overload), the call's key set as an int) -> (the overload's per-key call, the key whose
#: kernel runs, the overload), or None where memwall calls the overload as before
_BELOW_MODE: dict[tuple[int, int], tuple[Any, Any, Any] | None] = {}


def kernel_key(name: str, key: Any) -> Any:
    """The key whose registered kernel the dispatcher runs for runtime key `key` (torch's
    OperatorEntry::computeDispatchTableEntry, in its order: the key's own kernel, then
    CompositeExplicitAutogradNonFunctional, CompositeExplicitAutograd, the nested-tensor and
    plain CompositeImplicitAutograd); None for a fallthrough, a backend fallback or no kernel."""
    if _has_kernel(name, key):
        return None if _is_fallthrough(name, key) else key
    undefined = key == _Key.Undefined  # no tensor argument: every composite kernel serves it
    for alias in (_Key.CompositeExplicitAutogradNonFunctional, _Key.CompositeExplicitAutograd):
        if (undefined or _in_alias(key, alias)) and _has_kernel(name, alias):
            return alias
    nested = _Key.CompositeImplicitAutogradNestedTensor
    if not undefined and _in_alias(key, nested) and _has_kernel(name, nested):
        return nested
    implicit = _Key.CompositeImplicitAutograd
    if (undefined or _in_alias(key, implicit)) and _has_kernel(name, implicit):
        return implicit
    return None


def _below_mode(func: Any, keys: Any) -> tuple[Any, Any, Any] | None:
    try:
        name = func.name()
        backend_select = _Key.BackendSelect
        if keys.has(backend_select) and not _has_kernel(name, backend_select):
            keys = keys.remove(backend_select)  # a fallthrough for every op but the factories
        runs = kernel_key(name, keys.highestPriorityTypeId())
        return None if runs is None else (func._op_dk, runs, func)
    except (RuntimeError, AttributeError, TypeError):
        return None


def _call_keys(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The key set the dispatcher computes for a call: its tensors' keys with this thread's
    included keys, less its excluded ones."""
    keys = _tls_included()
    for a in (*args, *kwargs.values()):
        if isinstance(a, _Tensor):
            keys = keys | _dispatch_keys(a)
        elif type(a) is list or type(a) is tuple:
            for b in a:
                if isinstance(b, _Tensor):
                    keys = keys | _dispatch_keys(b)
    return keys - _tls_excluded()


_strided = torch.strided
#: (id(overload), 1 for CPU / 2 for CUDA) -> as _BELOW_MODE, for calls on plain dense tensors
_BELOW_MODE_DENSE: dict[tuple[int, int], tuple[Any, Any, Any] | None] = {}
_UNKNOWN = object()


def _dense_backend(values: Any, backend: int = 0) -> int:
    """1 when the tensors among `values` (and in their lists) are plain dense strided CPU
    tensors, 2 when some are on CUDA and the rest on the CPU (CUDA's key ranks higher), -1 for
    any other tensor, `backend` when there is no tensor. Read from the tensors' flags: much
    cheaper than their key sets, and this runs for every op."""
    for a in values:
        kind = type(a)
        if kind is _Tensor or kind is _Parameter:
            if a.layout is not _strided or a.is_quantized or a.is_nested:
                return -1
            if a.is_cuda:
                backend = 2
            elif not a.is_cpu:
                return -1
            elif not backend:
                backend = 1
        elif kind is list or kind is tuple:  # sizes, or a tensor list (cat's, index's with its Nones)
            for t in a:
                kind = type(t)
                if kind is _Tensor or kind is _Parameter:
                    if t.layout is not _strided or t.is_quantized or t.is_nested:
                        return -1
                    if t.is_cuda:
                        backend = 2
                    elif not t.is_cpu:
                        return -1
                    elif not backend:
                        backend = 1
                elif isinstance(t, _Tensor):
                    return -1
        elif isinstance(a, _Tensor):  # a tensor subclass: its keys say what it is
            return -1
    return backend


def call_below_mode(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run an aten overload that reached a dispatch mode exactly as `func(*args, **kwargs)` runs it
    there (the kernel below the Python key, its arguments converted as that call converts them,
    Python numbers included), without a second profiler event for it. The kernel is the one the
    dispatcher picks for the call's key set; ops with nothing but a backend fallback there run as
    before.

    Calls whose tensors are all plain, dense and strided, on the CPU or CUDA, are looked up by
    device: below the Python key a thread's included and excluded keys are torch's defaults
    (BackendSelect), which nothing in torch changes. With no profiler recording this thread there
    is no second event to spare, and the op is called as the mode was given it."""
    __tracebackhide__ = True  # noqa: F841 - the user's op's error, shown without this frame (IPython, pytest)
    if not _look_up():
        return func(*args, **kwargs)
    backend = _dense_backend(args)
    if kwargs and backend >= 0:
        backend = _dense_backend(kwargs.values(), backend)
    if backend > 0:
        target = _BELOW_MODE_DENSE.get((id(func), backend), _UNKNOWN)
        if target is _UNKNOWN:
            target = _BELOW_MODE_DENSE[(id(func), backend)] = _below_mode(func, _call_keys(args, kwargs))
    else:
        keys = _call_keys(args, kwargs)
        target = _BELOW_MODE.get((id(func), keys.raw_repr()), _UNKNOWN)
        if target is _UNKNOWN:
            target = _BELOW_MODE[(id(func), keys.raw_repr())] = _below_mode(func, keys)
    if target is None:
        return func(*args, **kwargs)
    return target[0](target[1], *args, **kwargs)  # type: ignore[index]


_enable_record_function = getattr(torch._C._autograd, "_enable_record_function", None)


@contextlib.contextmanager
def unrecorded() -> Iterator[None]:
    """The block's ops are not recorded by a profiler running on this thread (torch.profiler):
    memwall's own work, or an op torch turns into a call only because a mode is active. Recording
    is switched back on after the block (torch has no reader of the switch: a thread that had it
    off on purpose while profiling gets it back on)."""
    if _enable_record_function is None or not _profiling():
        yield
        return
    _enable_record_function(False)
    try:
        yield
    finally:
        _enable_record_function(True)


def call_unrecorded(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`func(*args, **kwargs)`, unrecorded by torch.profiler. For aten.detach, which torch hands a
    dispatch mode outside the dispatcher too: with a mode active every shallow copy of a tensor
    (`.data`, a tensor saved for backward) becomes a detach call to the mode, which in a bare run
    is no op at all; when it is an op, the dispatcher recorded it before the mode saw it, and its
    kernel calls no other op."""
    if not _profiling():
        return func(*args, **kwargs)
    with unrecorded():
        return func(*args, **kwargs)


# -- operator overloads: torch gives no public accessor for an overload's schema; memwall reads
# -- each overload's once (its callers cache what they take from it).


def numbers_as_tensors(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
                       ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The call's arguments with each Python number given where the op's schema takes a Tensor
    made the 0-dim tensor the caller held; None when there is none. The TorchScript interpreter
    keeps a graph's scalar constants as wrapped-number tensors, which reach a Python dispatch mode
    as Python numbers, and the op called with them again fails ("Expected a value of type
    'Tensor' ... found type 'float'"; pytorch/pytorch#130726). The tensor's dtype keeps the
    call's type promotion and values: a wrapped number is a double (an int64, a complex128), and a
    0-dim tensor does not widen a dimensioned one of its kind (a float32 activation times a
    float64 0-dim tensor stays float32, the double rounded as a wrapped number's is); a float
    beside integer tensors takes the default dtype, as a wrapped number's result does."""
    schema = getattr(func, "_schema", None)
    if schema is None:
        return None
    slots = schema.arguments
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]

    def wrapped(value: Any) -> Any:
        if isinstance(value, bool):
            return torch.tensor(value)
        if isinstance(value, int):
            return torch.tensor(value, dtype=torch.int64)
        if isinstance(value, float):  # a wrapped number's own dtype: double
            integral = tensors and not any(t.is_floating_point() or t.is_complex() for t in tensors)
            return torch.tensor(value, dtype=torch.get_default_dtype() if integral else torch.float64)
        if isinstance(value, complex):
            integral = tensors and not any(t.is_complex() or t.is_floating_point() for t in tensors)
            return torch.tensor(value, dtype=None if integral else torch.complex128)
        return None

    def takes_tensor(slot: Any) -> bool:
        return isinstance(slot.type, torch._C.TensorType)

    new_args, changed = list(args), False
    for i, value in enumerate(args):
        if i < len(slots) and not isinstance(value, torch.Tensor) and takes_tensor(slots[i]):
            made = wrapped(value)
            if made is not None:
                new_args[i], changed = made, True
    by_name = {slot.name: slot for slot in slots}
    new_kwargs = dict(kwargs)
    for name, value in kwargs.items():
        slot = by_name.get(name)
        if slot is not None and not isinstance(value, torch.Tensor) and takes_tensor(slot):
            made = wrapped(value)
            if made is not None:
                new_kwargs[name], changed = made, True
    return (tuple(new_args), new_kwargs) if changed else None


#: whether torch.jit.trace is tracing on this thread (torch.jit.is_tracing without its Python
#: frame). Module hooks run while it traces a model; the ops inside a dispatch mode do not
#: (the tracer steps aside below its own dispatch key)
jit_tracing: Callable[[], bool] = torch._C._is_tracing


@contextlib.contextmanager
def jit_untraced() -> Iterator[None]:
    """torch.jit.trace's recording paused on this thread for the block: memwall's hooks read
    tensors (sizes, storages) that the tracer would otherwise record into the user's graph."""
    state = torch._C._get_tracing_state()
    set_state = getattr(torch._C, "_set_tracing_state")  # noqa: B009 - in torch's bindings, not its stubs
    set_state(None)
    try:
        yield
    finally:
        set_state(state)


def op_schema(func: Any) -> Any:
    """An operator overload's FunctionSchema (its arguments' names, defaults and alias
    annotations, its returns); None for a callable without one (a higher-order operator)."""
    return getattr(func, "_schema", None)


def storage_key(storage: Any) -> int:
    """A storage's identity while it lives (its StorageImpl's address): views and aliases of one
    tensor share it, on every device, meta included (where data pointers are all 0)."""
    return int(storage._cdata)


def data_alias(t: torch.Tensor) -> torch.Tensor:
    """`t.data` (its storage, no grad_fn, a version counter of its own) made without an op: with a
    dispatch mode on (memwall's) `.data` runs `aten.detach` through it, which the mode, and the
    user's torch.profiler, would record as the user's; with Python dispatch off it runs none."""
    with torch._C._DisableTorchDispatch():
        return t.data


def version_of(t: torch.Tensor) -> int:
    """The version counter of a tensor's data (bumped by every in-place op on it or its views):
    what autograd compares to tell a saved tensor was modified before backward used it."""
    return int(t._version)


def is_zero_tensor(t: Any) -> bool:
    """An efficient zero tensor (`aten._efficientzerotensor`: forward-mode AD's zero tangents): its
    storage reports its size but no memory backs it."""
    try:
        return bool(t._is_zerotensor())
    except (AttributeError, RuntimeError):
        return False


def overload_name(func: Any) -> str:
    """An operator overload's name within its packet ("default", "Tensor", "out")."""
    return str(func._overloadname)


def is_op_overload(obj: Any) -> bool:
    """An operator overload (`torch.ops.aten.mm.default`), as a compiled graph's nodes call them."""
    return isinstance(obj, OpOverload)


def compiled_module_original(module: Any) -> Any:
    """The module a `torch.compile(module)` wrapper (OptimizedModule) runs; None for any other."""
    return getattr(module, "_orig_mod", None)


def is_compiled_module(module: Any) -> bool:
    """A `torch.compile(module)` wrapper or a module compiled in place (`module.compile()`), read
    from its own attributes only (no `nn.Module.__getattr__` miss: it runs at every module call)."""
    return "_orig_mod" in module._modules or module.__dict__.get("_compiled_call_impl") is not None


def never_compiled(fn: Any) -> Any:
    """Dynamo never compiles `fn`'s frames, nor those it calls, when it meets them as frames of
    their own (a module compiled in place, `torch.nn.Sequential(...).compile()`, runs torch's
    own frames with Dynamo's frame hook on, and memwall's dispatch mode and module hooks inside
    them); tracing through `fn` into a graph is unchanged. Costs nothing per call: Dynamo reads
    the decision from the code object. Nothing to do before Dynamo is loaded (importing it would
    load Inductor's config, which memwall's import leaves to torch): call it again later."""
    if "torch._dynamo" not in sys.modules:
        _NOT_YET_MARKED.add(fn.__code__)  # marked once Dynamo is imported (_WrapOnImport)
        return fn
    _mark_never_compiled(fn.__code__)
    return fn


def never_traced(fn: Any, reason: str) -> Any:
    """A call of `fn` written inside a compiled function is not traced into its graph: Dynamo
    breaks the graph there and calls `fn` as Python, as for a `torch.compiler.disable`d function
    (which reads the same attribute), and `fn`'s own frame is never compiled (`never_compiled`).
    Unlike `torch.compiler.disable` it adds no wrapper, so a call outside compiled code costs
    nothing more, and importing Dynamo is left to torch."""
    fn._torchdynamo_disable = True
    fn._torchdynamo_disable_msg = reason
    return never_compiled(fn)


#: code objects `never_compiled` was given before Dynamo was loaded (a closure's is shared by
#: every closure made from its `def`)
_NOT_YET_MARKED: set[Any] = set()


def _mark_never_compiled(code: Any) -> None:
    try:
        from torch._dynamo.eval_frame import set_code_exec_strategy
        from torch._dynamo.types import FrameAction, FrameExecStrategy
    except ImportError:  # a torch without per-code decisions
        return
    set_code_exec_strategy(code, FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP))


def compiles_its_call_impl(module: Any) -> bool:
    """Whether `module.compile()` made Dynamo compile the module's own `_call_impl`, hook calls
    and all: torch 2.15 does so for a module whose `forward` its trace rules skip (torch's own
    modules: `nn.Sequential(...).compile()`), and any torch does under Dynamo's `wrap_top_frame`.
    Such a frame reads the global module hooks, and Dynamo guards on them being as they were
    when it compiled: memwall's, there only while it records, would make it compile again."""
    if getattr(module, "_compiled_call_impl", None) is None or "torch._dynamo" not in sys.modules:
        return False
    try:
        from torch._dynamo import config
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:
        return False
    if getattr(config, "wrap_top_frame", False):
        return True
    wraps = getattr(OptimizedModule, "_should_wrap_module_call_impl", None)  # torch 2.15
    try:
        return bool(wraps is not None and wraps(module._call_impl))
    except Exception:
        return False


#: modules compiled in place (`module.compile()`) since memwall was imported: a profile opened
#: without `model=` finds among them those whose own `_call_impl` Dynamo compiled
_COMPILED_IN_PLACE: Any = None
#: called with each module compiled in place from now on (a profile recording at that moment)
_COMPILED_IN_PLACE_LISTENERS: list[Callable[[Any], None]] = []


def note_modules_compiled_in_place() -> None:
    """From now on, `torch.nn.Module.compile` also notes (weakly) the module it compiled. It runs
    as before; nothing else changes. Needed because a module compiled in place is called
    through its compiled `_call_impl` before any global hook could see it (`compiles_its_call_impl`)."""
    global _COMPILED_IN_PLACE
    if _COMPILED_IN_PLACE is not None:
        return
    noted: weakref.WeakSet[Any] = weakref.WeakSet()
    original = torch.nn.Module.compile

    @functools.wraps(original)
    def compile(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            noted.add(self)
        except TypeError:  # a module that cannot be weakly referenced: not noted, as before
            pass
        for listener in list(_COMPILED_IN_PLACE_LISTENERS):
            listener(self)

    torch.nn.Module.compile = compile  # type: ignore[method-assign]
    _COMPILED_IN_PLACE = noted


#: torch.compile(module) wrappers (OptimizedModule) made since memwall was imported, weakly
_COMPILED_WRAPPERS: weakref.WeakSet[Any] = weakref.WeakSet()
_NOTING_WRAPPERS = False


def note_compiled_wrappers() -> None:
    """From now on, torch.compile(module)'s wrapper (OptimizedModule) also notes (weakly) each
    wrapper it makes; it runs as before. Needed because memwall must step around the compiled
    forward of some before their first recorded call (`ModuleTracker._around_compiled_forward`),
    and a profile given the uncompiled model (or none) has no other way to the wrapper. Nothing
    to do before Dynamo is loaded: `_WrapOnImport` calls this again once it is."""
    global _NOTING_WRAPPERS
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    if _NOTING_WRAPPERS or eval_frame is None:
        return
    wrapper_class = getattr(eval_frame, "OptimizedModule", None)
    if wrapper_class is None:
        return
    original = wrapper_class.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - the class's own
        original(self, *args, **kwargs)
        try:
            _COMPILED_WRAPPERS.add(self)
        except TypeError:  # not weakly referenced: not noted, as before
            pass

    wrapper_class.__init__ = __init__
    _NOTING_WRAPPERS = True


def compiled_wrappers() -> list[Any]:
    """The torch.compile(module) wrappers `note_compiled_wrappers` has seen made, still alive."""
    return list(_COMPILED_WRAPPERS)


def listen_for_modules_compiled_in_place(listener: Callable[[Any], None], listening: bool) -> None:
    """Call `listener` with each module compiled in place from now on (`listening`), or no more."""
    if listening and listener not in _COMPILED_IN_PLACE_LISTENERS:
        _COMPILED_IN_PLACE_LISTENERS.append(listener)
    elif not listening and listener in _COMPILED_IN_PLACE_LISTENERS:
        _COMPILED_IN_PLACE_LISTENERS.remove(listener)


def modules_compiled_in_place() -> list[Any]:
    """The modules `note_modules_compiled_in_place` has seen compiled, still alive."""
    return [] if _COMPILED_IN_PLACE is None else list(_COMPILED_IN_PLACE)


@contextlib.contextmanager
def global_module_hooks_hidden(ids: Collection[int]) -> Iterator[None]:
    """The global module hooks with these handle ids left out of torch's tables for the block,
    then put back where they were (hooks registered meanwhile are kept, after them)."""
    from torch.nn.modules import module as nn_module

    tables = [table for name, table in vars(nn_module).items()
              if name.startswith("_global_") and name.endswith(("hooks", "always_called", "with_kwargs"))
              and isinstance(table, dict) and any(i in table for i in ids)]
    before = [list(table.items()) for table in tables]
    for table in tables:
        for i in ids:
            table.pop(i, None)
    try:
        yield
    finally:
        for table, items in zip(tables, before):
            added = dict(table)
            table.clear()
            for key, value in items:
                if key in ids:
                    table[key] = value
                elif key in added:
                    table[key] = added.pop(key)
            table.update(added)


#: memwall's global module hooks by the thread whose ops they record, while installed: a Dynamo
#: compile on that thread runs with them out of torch's tables (`hide_from_dynamo`)
_HIDDEN_FROM_DYNAMO: dict[int, list[int]] = {}
#: the hidings of the compile in progress, undone when it ends
_HIDING: list[Any] = []
_DYNAMO = "torch._dynamo"


def hide_from_dynamo(thread: int, ids: list[int] | None) -> None:
    """While `ids` are set for `thread`, each Dynamo compile that thread starts sees the global
    module hooks without them, as without memwall. A model first compiled inside a profile
    would otherwise be traced with memwall's hooks in torch's tables, and Dynamo guards a graph
    traced with global hooks on their number: every call after the profile, whose hooks are gone,
    would compile it again. memwall's hooks trace to nothing (they return at once while Dynamo
    compiles), so the graph is the one compiled without memwall. None: no longer hidden."""
    if ids:
        _HIDDEN_FROM_DYNAMO[thread] = list(ids)
        _register_compile_callbacks()
    else:
        _HIDDEN_FROM_DYNAMO.pop(thread, None)


def _register_compile_callbacks() -> None:
    """Dynamo's compile start and end callbacks, once per callback table (`torch._dynamo.reset()`
    empties it); when Dynamo is not loaded yet, the import hook calls this once it is."""
    dynamo = sys.modules.get(_DYNAMO)
    handler = getattr(dynamo, "callback_handler", None)
    if handler is None:
        return
    try:
        if _on_compile_start not in handler.start_callbacks:
            handler.register_start_callback(_on_compile_start)
        if _on_compile_end not in handler.end_callbacks:
            handler.register_end_callback(_on_compile_end)
    except AttributeError:  # a torch whose callback table has another shape: hooks stay visible
        pass


#: by thread: nanoseconds Dynamo and Inductor compiled (while memwall listened: `compile_time_ns`),
#: and when the compile in progress began
_COMPILED_NS: dict[int, int] = {}
_COMPILE_BEGAN: dict[int, int] = {}


def compile_time_ns(thread: int) -> int:
    """Nanoseconds `thread` has spent compiling (torch.compile's Dynamo and Inductor, a lazily
    compiled backward) while memwall's compile callbacks were registered (from a profile's first
    recorded step on), the compile in progress up to now."""
    began = _COMPILE_BEGAN.get(thread)
    return _COMPILED_NS.get(thread, 0) + (time.perf_counter_ns() - began if began is not None else 0)


def _on_compile_start(args: Any) -> None:
    _COMPILE_BEGAN.setdefault(threading.get_ident(), time.perf_counter_ns())
    if getattr(getattr(args, "callback_trigger", None), "name", None) != "DYNAMO":
        return  # a lazily compiled backward, a CUDA graph recording: no module hook is read
    for hidden in _hidings():
        hidden.__enter__()
        _HIDING.append(hidden)


def _hidings() -> list[Any]:
    """What a Dynamo trace on this thread must not see of memwall while it records: its global
    module hooks out of torch's tables, its saved-tensors hook off the stack (blocks to enter)."""
    ids = _HIDDEN_FROM_DYNAMO.get(threading.get_ident())
    found = (global_module_hooks_hidden(ids) if ids else None, _saved_tensors_hook_aside())
    return [hidden for hidden in found if hidden is not None]


def _on_compile_end(args: Any) -> None:
    thread = threading.get_ident()
    began = _COMPILE_BEGAN.pop(thread, None)
    if began is not None:
        _COMPILED_NS[thread] = _COMPILED_NS.get(thread, 0) + time.perf_counter_ns() - began
    while _HIDING:
        _HIDING.pop().__exit__(None, None, None)


_EXPORT_TRACE = "torch.export._trace"


def _hide_from_strict_export(module: Any) -> None:
    """Strict `torch.export.export` traces with Dynamo, whose compile callbacks it does not run:
    its capture (`_export_to_torch_ir`, looked up in its module at each call) is wrapped to hide
    what a compile start hides (memwall's global module hooks, its saved-tensors hook) for the
    call. Without it, Dynamo traced `nn.Module._call_impl` down its hooked path and refused
    export's own wrapper module ("Attempted to inline function marked as skipped"): a strict
    export failed inside a profile and ran without one."""
    capture = getattr(module, "_export_to_torch_ir", None)
    if capture is None or getattr(capture, "_memwall_hides", False):
        return

    @functools.wraps(capture)
    def hidden_capture(*args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as hiding:
            for hidden in _hidings():
                hiding.enter_context(hidden)
            return capture(*args, **kwargs)

    hidden_capture._memwall_hides = True  # type: ignore[attr-defined]
    module._export_to_torch_ir = hidden_capture


_streams: dict[Any, Any] = {}


def current_cuda_stream() -> Any:
    """torch.cuda.current_stream() without its Python layers (device lookup through the
    environment, a new Stream object): this runs for every op on a GPU."""
    try:
        data = torch._C._cuda_getCurrentStream(torch._C._cuda_getDevice())
    except AttributeError:  # a torch without these bindings
        return torch.cuda.current_stream()
    stream = _streams.get(data)
    if stream is None:
        if len(_streams) > 256:  # many short-lived user streams: forget the old wrappers
            _streams.clear()
        stream = _streams[data] = torch.cuda.Stream(stream_id=data[0], device_index=data[1], device_type=data[2])
    return stream


# -- torch.distributed: collectives reach the dispatcher as c10d ops whose process group and
# -- Work are TorchScript custom-class objects; these turn them back into their Python classes.


def unbox_work(obj: Any) -> Any:
    """The c10d Work behind a `__torch__.torch.classes.c10d.Work` script object (None if not one)."""
    from torch._C import _distributed_c10d as c10d

    try:
        return c10d.Work.unbox(obj)
    except (RuntimeError, TypeError):
        return None


def unbox_process_group(obj: Any) -> Any:
    """The c10d ProcessGroup behind a `c10d.ProcessGroup` script object (None if not one)."""
    from torch._C import _distributed_c10d as c10d

    try:
        return c10d.ProcessGroup.unbox(obj)
    except (RuntimeError, TypeError):
        return None


def group_size_by_name(name: Any) -> int | None:
    """The size of a registered process group, by the name functional collectives pass."""
    from torch.distributed import distributed_c10d

    try:
        return int(distributed_c10d._resolve_process_group(name).size())
    except (RuntimeError, ValueError, TypeError, KeyError):
        return None


def default_store() -> Any:
    """The key-value store of the default process group (None when there is none)."""
    from torch.distributed import distributed_c10d

    try:
        return distributed_c10d._get_default_store()
    except (RuntimeError, ValueError, AttributeError):
        return None


def has_composite_kernel(func: Any) -> bool:
    """Whether an aten overload is CompositeImplicitAutograd (linear, matmul, conv2d): a
    decomposition into other ops, normally applied above autograd, which inference mode and
    tensor subclasses skip, so the whole op reaches a dispatch mode."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), torch._C.DispatchKey.CompositeImplicitAutograd))
    except RuntimeError:  # ops the C++ dispatcher does not know (prim.device, a FakeTensor query)
        return False


_EXPLICIT_KEYS = ("CompositeExplicitAutograd", "CompositeExplicitAutogradNonFunctional")


def has_backend_kernel(func: Any, device_type: str) -> bool | None:
    """Whether an overload has a kernel of its own for tensors on `device_type` ("cpu", "cuda",
    "meta", ...): registered for that backend or for every backend (CompositeExplicitAutograd).
    Such an op runs that kernel even when it also has a CompositeImplicitAutograd decomposition
    (silu_backward, mish_backward: the decomposition rounds differently). None when the
    dispatcher cannot tell (an unknown device type or op)."""
    try:
        backend = torch._C._dispatch_key_for_device(device_type)
        keys = [getattr(torch._C.DispatchKey, name) for name in (backend, *_EXPLICIT_KEYS)]
        name = func.name()
        return any(torch._C._dispatch_has_kernel_for_dispatch_key(name, key) for key in keys)
    except (RuntimeError, AttributeError, TypeError):
        return None


def is_higher_order_op(func: Any) -> bool:
    """A higher-order operator (torch._ops.HigherOrderOperator: flex_attention, cond, ...)."""
    from torch._ops import HigherOrderOperator

    return isinstance(func, HigherOrderOperator)


#: Higher-order operators whose eager kernel only calls the Python functions it was given (the
#: branches of cond, the body of while_loop, scan's combine_fn, a wrapped subgraph): memwall runs
#: them as torch does and records those functions' ops as they execute.
SUBGRAPH_HOPS = frozenset({
    "cond", "while_loop", "while_loop_stack_output", "scan", "map_impl", "associative_scan",
    "invoke_subgraph", "wrap", "wrap_with_set_grad_enabled", "wrap_with_autocast", "hints_wrapper",
    "tag_activation_checkpoint", "wrap_activation_checkpoint",
})


def hop_name(func: Any) -> str:
    """A higher-order operator's name ("cond", "flex_attention")."""
    return str(func.name())


#: where the BlockMask tuple sits among flex_attention's and flex_attention_backward's arguments
_FLEX_BLOCK_MASK_ARG = {"flex_attention": 4, "flex_attention_backward": 9}


def flex_block_mask(func_name: str, args: tuple[Any, ...]) -> tuple[Any, Any, Any, Any, int, int] | None:
    """(kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices, Q_BLOCK_SIZE, KV_BLOCK_SIZE)
    of the BlockMask a flex_attention HOP call was given, as BlockMask.as_tuple() lays it out
    (torch 2.5+: seq lengths, then these four, ..., the two block sizes, the mask_mod); None if
    the layout is not recognised."""
    index = _FLEX_BLOCK_MASK_ARG.get(func_name)
    if index is None or len(args) <= index:
        return None
    mask = args[index]
    if not isinstance(mask, tuple) or len(mask) < 7:
        return None
    q_block, kv_block = mask[-3], mask[-2]
    kv_num, kv_idx, full_num, full_idx = mask[2], mask[3], mask[4], mask[5]
    if not (type(q_block) is int and type(kv_block) is int):
        return None
    return kv_num, kv_idx, full_num, full_idx, q_block, kv_block


def nested_component_shapes(t: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    """The shape of each component of a strided nested tensor (torch.nested's own sizes
    table; () when it has none to give)."""
    try:
        return tuple(tuple(row) for row in t._nested_tensor_size().tolist())
    except (RuntimeError, AttributeError):
        return ()


#: a compressed sparse layout's index accessors: (compressed, plain)
_COMPRESSED_INDICES = {
    torch.sparse_csr: ("crow_indices", "col_indices"), torch.sparse_bsr: ("crow_indices", "col_indices"),
    torch.sparse_csc: ("ccol_indices", "row_indices"), torch.sparse_bsc: ("ccol_indices", "row_indices"),
}


def _sparse_parts(t: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None:
    """(values, indices) of a sparse tensor (COO, CSR, CSC, BSR, BSC); None for any other layout
    (strided, jagged nested). Read outside torch.profiler's record."""
    try:
        layout = t.layout
        if layout is torch.sparse_coo:
            with unrecorded():
                return t._values(), (t._indices(),)
        names = _COMPRESSED_INDICES.get(layout)
        if names is None:
            return None
        with unrecorded():
            return t.values(), tuple(getattr(t, name)() for name in names)
    except (RuntimeError, NotImplementedError, AttributeError):
        return None


def sparse_stored(t: torch.Tensor) -> tuple[int, int] | None:
    """(elements of its values, bytes of its indices) of a sparse tensor; None for any other."""
    parts = _sparse_parts(t)
    if parts is None:
        return None
    values, indices = parts
    return values.numel(), sum(i.numel() * i.element_size() for i in indices)


def wrapper_inner_tensors(t: Any) -> list[Any] | None:
    """The tensors a traceable wrapper subclass holds its data in (`__tensor_flatten__`'s: torchao's
    int8 and float8 weights' data and scales, an 8-bit optimizer's state, a DTensor's shard, a
    jagged tensor's values and offsets); None for any other tensor. The wrapper's own storage backs
    nothing: it reports the bytes of its nominal dtype (fp32 for an int8 weight)."""
    if not is_traceable_wrapper_subclass(t):
        return None
    try:
        names = t.__tensor_flatten__()[0]
        return [x for x in (getattr(t, name, None) for name in names) if isinstance(x, torch.Tensor)]
    except Exception:  # a subclass whose flatten needs what it does not have here
        return None


def sparse_values_storage(t: Any) -> Any:
    """The storage of a sparse tensor's values (what most of its memory is); None for any other."""
    parts = _sparse_parts(t)
    return None if parts is None else parts[0].untyped_storage()


def compiled_region_graph(region: Any) -> tuple[int, Any] | None:
    """(its id, the FX graph Inductor compiled) of the region an `inductor_compiled_code` call
    runs (its first argument: the compiled callable or its index in torch's side table)."""
    resolve = _region_resolver()
    if resolve is None:  # torch 2.11: the region is its compiled callable, the graph memwall's copy
        return _kept_graph(region)
    try:
        resolved = resolve(region)
    except (AssertionError, KeyError, AttributeError):
        return None
    gm = getattr(resolved, "original_gm", None)
    return None if gm is None else (int(resolved.idx), gm)


@functools.cache
def _region_resolver() -> Callable[[Any], Any] | None:
    """torch's resolver from an `inductor_compiled_code` call's first argument to the compiled
    callable and its graph (2.13); None where this torch passes the callable itself (2.11)."""
    try:
        from torch._higher_order_ops.wrap import _resolve_inductor_callable
    except ImportError:
        return None
    return _resolve_inductor_callable  # type: ignore[no-any-return]


def _region_callable(region: Any) -> Any:
    """The compiled callable an `inductor_compiled_code` call runs (torch 2.11 passes it itself;
    2.13 a handle holding it); None where the handle cannot be resolved."""
    resolve = _region_resolver()
    if resolve is None:
        return region
    try:
        return resolve(region).compiled_callable
    except (AssertionError, KeyError, AttributeError):
        return None


def region_graph_kept() -> bool:
    """Whether this torch keeps each compiled region's graph itself (2.13 does); where it does
    not (2.11), memwall keeps a copy of the regions it sees Inductor compile in this process."""
    return _region_resolver() is not None


#: torch 2.11 (no handle from a compiled region to its graph): by the region's compiled callable,
#: (an id, a copy of the graph Inductor compiled), for each region compiled in this process since
#: memwall's origins pass first ran; a region loaded from Inductor's cache is not among them
_KEPT_GRAPHS: Any = None
_KEPT_IDS = iter(range(1 << 62))
#: id(CompiledFxGraph) (a dataclass: not hashable) -> its graph's copy, between its construction
#: and its post_compile
_BEING_BUILT: dict[int, Any] = {}
#: by the key of its generated code, the graph of each region built in this process: a region
#: Inductor loads again from its cache in this process (the same code) has it too
_BY_CODE: dict[str, Any] = {}


def _kept_graph(region: Any) -> tuple[int, Any] | None:
    if _KEPT_GRAPHS is None:
        return None
    try:
        found: tuple[int, Any] | None = _KEPT_GRAPHS.get(region)
    except TypeError:  # not weakly referenceable: never kept
        return None
    return found


def _keep_region_graphs() -> None:
    """On a torch whose compiled regions carry no graph (2.11), keep a copy of the graph of each
    region Inductor builds from now on, by the callable its `inductor_compiled_code` calls pass:
    CompiledFxGraph's construction (which has the graph) and post_compile (which wraps the
    callable) are wrapped; nothing they do changes. Called from memwall's origins pass, so only
    while Inductor compiles."""
    global _KEPT_GRAPHS
    if _KEPT_GRAPHS is not None or region_graph_kept():
        return
    import copy
    import weakref

    from torch._inductor import output_code

    _KEPT_GRAPHS = weakref.WeakKeyDictionary()
    cls = output_code.CompiledFxGraph
    built, post = cls.__init__, cls.post_compile

    @functools.wraps(built)
    def __init__(self: Any, current_callable: Any, graph: Any, gm: Any, *args: Any, **kwargs: Any) -> None:
        built(self, current_callable, graph, gm, *args, **kwargs)
        try:
            if getattr(self, "_wrap_compiled_regions", False):
                kept = copy.deepcopy(gm)  # the module's meta (memwall's origins) comes along
                for node in kept.graph.nodes:
                    node.meta.clear()  # shapes are worked out again for each run's inputs
                if len(_BEING_BUILT) > 256:  # built and never post-compiled: forget them
                    _BEING_BUILT.clear()
                _BEING_BUILT[id(self)] = kept
                code = getattr(self, "cache_key", None)
                if isinstance(code, str):
                    if len(_BY_CODE) > 4096:
                        _BY_CODE.clear()
                    _BY_CODE[code] = kept
        except Exception:  # memwall's own failure: the region is uncounted, the compile goes on
            pass

    @functools.wraps(post)
    def post_compile(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = post(self, *args, **kwargs)
        try:
            kept = _BEING_BUILT.pop(id(self), None) or _BY_CODE.get(str(getattr(self, "cache_key", "")))
            wrapper = self.current_callable
            code = getattr(wrapper, "__code__", None)
            if kept is not None and code is not None and "original_callable" in code.co_freevars:
                region = wrapper.__closure__[code.co_freevars.index("original_callable")].cell_contents
                _KEPT_GRAPHS[region] = (next(_KEPT_IDS), kept)
        except Exception:
            pass
        return out

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.post_compile = post_compile  # type: ignore[method-assign]


def propagate_shapes(gm: Any, inputs: list[Any]) -> None:
    """Give every node of a compiled region's graph its `meta["val"]` (a fake tensor with the
    shape, strides and dtype it has for these inputs): Inductor keeps the graph without them.
    A graph gets those memwall's post-grad pass noted as Inductor compiled it (`_node_shapes`:
    a fake tensor made per node, ~100x cheaper than propagating them through each op), a graph
    compiled for dynamic shapes with its symbolic sizes evaluated at these inputs; any other
    (compiled without the pass, a value not notable) has them propagated."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    if _restore_shapes(gm, inputs):
        return
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in inputs]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fake)


_INDUCTOR_CONFIG = "torch._inductor.config"
_CODECACHE = "torch._inductor.codecache"
#: where torch keeps AOTInductor's loaded-package model class (it moved between releases)
_AOTI_HOMES = ("torch.export.pt2_archive._package", "torch._inductor.package.package")


class _WrapOnImport:
    """A meta-path finder that sets Inductor's region wrapping once torch imports its config,
    keys its caches by module paths too once torch imports its cache's module, and observes
    AOTInductor models once torch imports their class while a profile records (importing them
    ourselves costs ~1.5 s, which a `memwall report` should not pay)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in (_INDUCTOR_CONFIG, _CODECACHE, _DYNAMO, _EXPORT_TRACE, *_AOTI_HOMES):
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            if name in _AOTI_HOMES:  # an AOTInductor package loaded while a profile records
                _sync_aoti_wrap()
                return
            if name == _DYNAMO:  # first imported while memwall records (torch.compile in the step)
                while _NOT_YET_MARKED:
                    _mark_never_compiled(_NOT_YET_MARKED.pop())
                note_compiled_wrappers()
                if _HIDDEN_FROM_DYNAMO or _stepping_aside:
                    _register_compile_callbacks()
                return
            if name == _CODECACHE:
                _key_by_module_names(module)
                return
            if name == _EXPORT_TRACE:
                _hide_from_strict_export(module)
                return
            if getattr(module, "wrap_inductor_compiled_regions", None) is False:
                module.wrap_inductor_compiled_regions = True
            _keep_eager_origins(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def wrap_compiled_regions_from_now_on() -> None:
    """Inductor wraps every region it compiles from here on (`wrap_compiled_regions(True)`), set
    now if torch has loaded Inductor's config, else the moment it does."""
    import sys

    if _CODECACHE in sys.modules:
        _key_by_module_names(sys.modules[_CODECACHE])
    if _INDUCTOR_CONFIG in sys.modules:
        wrap_compiled_regions(True)
        _keep_eager_origins(sys.modules[_INDUCTOR_CONFIG])
    if _EXPORT_TRACE in sys.modules:
        _hide_from_strict_export(sys.modules[_EXPORT_TRACE])
    watched = (_INDUCTOR_CONFIG, _CODECACHE, _DYNAMO, _EXPORT_TRACE, *_AOTI_HOMES)
    if any(name not in sys.modules for name in watched) and not any(
            isinstance(f, _WrapOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())


#: where a compiled region's graph keeps, by node name, the eager op each node came from
_ORIGINS_KEY = "memwall_eager_origins"


class _EagerOrigins:
    """An Inductor post-grad pass that changes nothing: it notes, for each node of the graph
    Inductor is about to compile, the aten op an eager run would have dispatched (the op
    before decomposition, `meta["original_aten"]`) and that op's autograd sequence number (one
    forward op and its backward share it), in the graph module's `meta`. Inductor strips node
    metadata from the copy a wrapped region keeps, but keeps the module's `meta`, through its
    cache too. A pass with a `uuid` keeps Inductor's caches working (torch's
    custom_graph_pass.CustomGraphPass contract); it is built lazily, its base class being
    Inductor's."""

    _instance: Any = None

    @classmethod
    def instance(cls) -> Any:
        if cls._instance is None:
            from torch._inductor.custom_graph_pass import CustomGraphPass

            class EagerOriginsPass(CustomGraphPass):
                def __call__(self, graph: Any) -> None:
                    owner = graph.owning_module
                    if owner is None:
                        return
                    _keep_region_graphs()  # torch 2.11: regions carry no graph of their own
                    # a backward graph (AOTAutograd names its inputs tangents_1, ...; a forward
                    # graph's are primals_1, ...): its nodes traced in forward are recomputed
                    backward = any(n.op == "placeholder" and n.name.startswith("tangents") for n in graph.nodes)
                    origins: dict[str, tuple[str, str, int | None, bool]] = {}
                    for node in graph.nodes:
                        original = node.meta.get("original_aten")
                        if isinstance(original, OpOverload):
                            seq = node.meta.get("seq_nr")
                            origins[node.name] = (original._schema.name.replace("::", "."),
                                                  str(original._overloadname),
                                                  seq if isinstance(seq, int) and seq >= 0 else None,
                                                  backward and node.meta.get("partitioner_tag") == "is_forward")
                    owner.meta[_ORIGINS_KEY] = origins
                    owner.meta[_MODULES_KEY] = _node_modules(graph)
                    owner.meta[_OPTIMIZER_KEY] = _traced_in_optimizer(graph)
                    owner.meta[_SHAPES_KEY] = _node_shapes(graph)

                def uuid(self) -> Any:
                    return "memwall-eager-origins-10"

            cls._instance = EagerOriginsPass()
        return cls._instance


def _node_modules(graph: Any) -> dict[str, str]:
    """By node name, the module each node of a graph was traced in (a backward node: its
    forward's), from its nn_module_stack."""
    modules: dict[str, str] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or node.meta.get("fwd_nn_module_stack")
        if isinstance(stack, dict) and stack:
            path = _stack_path(list(stack.values()))
            if path is not None:
                modules[node.name] = path
    return modules


# -- a graph module's generated forward run without calling the module (Dynamo's backends without
# -- code generation, `eager` and `aot_eager`, run `gm.forward` itself): no module hook fires, and
# -- each line of that code computes one node, which names the module it was traced in

#: a graph module's forward code -> its lines that compute a node of some module's: line -> that
#: module's path below the compiled module ({} when its graph names none)
_GRAPH_LINES: dict[Any, dict[int, str]] = {}
#: how far up from memwall's per-op record a graph module's generated forward that called the op
#: may be (the dispatch mode's frames, torch's OpOverload call, a composite op's Python kernel)
GRAPH_FRAMES = 12


def graph_code_lines(gm: Any, names: dict[str, str]) -> dict[int, str]:
    """Each line of a graph module's generated code that computes one of the nodes `names` maps
    (node name -> module path), with that path."""
    lines: dict[int, str] = {}
    if names:
        for number, line in enumerate(gm.code.splitlines(), 1):
            target = line.lstrip().split(" = ", 1)[0] if " = " in line else ""
            if target in names:
                lines[number] = names[target]
    return lines


def graph_forward_path(frame: FrameType | None) -> str | None:
    """The module a graph node was traced in (its nn_module_stack; a backward graph's node: its
    forward's), for the node whose line of a graph module's generated forward runs in `frame` or
    a caller up to GRAPH_FRAMES above it: a path below the compiled module. None where no graph
    module's forward runs there, or its line names no module."""
    for _ in range(GRAPH_FRAMES):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_filename.startswith("<eval_with_key>"):
            lines = _GRAPH_LINES.get(code)
            if lines is None:
                gm = frame.f_locals.get("self")
                lines = graph_code_lines(gm, _node_modules(gm.graph)) if isinstance(gm, torch.fx.GraphModule) else {}
                if len(_GRAPH_LINES) >= 1024:  # graphs recompiled many times: forget the old ones
                    _GRAPH_LINES.clear()
                _GRAPH_LINES[code] = lines
            return lines.get(frame.f_lineno)
        frame = frame.f_back
    return None


def is_compiled_function_node(node: Any) -> bool:
    """An AOTAutograd graph's autograd node (its backward runs the backward graph's forward)."""
    return type(node).__name__ == "CompiledFunctionBackward"


_KEYED = False


def _key_by_module_names(codecache: Any) -> None:
    """Make the module paths of a graph's nodes part of the keys of Inductor's caches (the FX
    graph cache's and AOTAutograd's both build theirs from `FxGraphHashDetails`, in
    `codecache`, torch's module). Inductor keys a graph by its code, not by the modules it was
    traced in, and memwall's origins pass keeps those paths in the graph it compiles: without
    this, a region loaded from the cache is named after whichever model first compiled the same
    code (`Sequential(Linear, ReLU)` and a model calling its Linear `proj` share one). Nothing
    else of the key, nor anything compiled, changes; a failure of memwall's leaves the key as
    torch makes it."""
    global _KEYED
    cls = getattr(codecache, "FxGraphHashDetails", None)
    if _KEYED or cls is None:
        return
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, gm: Any, *args: Any, **kwargs: Any) -> None:
        init(self, gm, *args, **kwargs)
        try:
            self.memwall_node_modules = tuple(sorted(_node_modules(gm.graph).items()))
        except Exception:
            pass

    cls.__init__ = __init__
    _KEYED = True


def _keep_eager_origins(config: Any) -> None:
    """Add memwall's origins pass to Inductor's post-grad custom passes (after any of the
    user's: it reads the graph they leave); a single pass of the user's is left alone."""
    current = getattr(config, "post_grad_custom_post_pass", "absent")
    ours = _EagerOrigins.instance()
    if current is None:
        config.post_grad_custom_post_pass = ours
    elif isinstance(current, (list, tuple)) and ours not in current:
        config.post_grad_custom_post_pass = type(current)((*current, ours))


#: where a compiled region's graph keeps, by node name, the module path the node was traced in
_MODULES_KEY = "memwall_node_modules"
#: where a compiled region's graph keeps whether it is an optimizer's step (`_traced_in_optimizer`)
_OPTIMIZER_KEY = "memwall_optimizer_step"
#: where a compiled region's graph keeps, by node name, what each node computes (`_node_shapes`)
_SHAPES_KEY = "memwall_node_shapes"


class _NotNotable(Exception):
    pass


class _Sym(tuple):  # type: ignore[type-arg]
    """A symbolic size as noted: (its sympy expression,), in the graph's size symbols."""


def _noted_int(d: Any, symbolic: list[bool]) -> Any:
    """A size or int value as noted: the int, or a `_Sym` of a SymInt's expression (a graph
    compiled for dynamic shapes, evaluated at each call's sizes; `symbolic` is set)."""
    if type(d) is int:
        return d
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        if expr.is_number:
            return int(expr)
        symbolic[0] = True
        return _Sym((expr,))
    raise _NotNotable


def _described(value: Any, symbolic: list[bool]) -> Any:
    """A node's value as plain data: ("tensor", shape, stride, dtype, device) per tensor, in its
    lists and tuples; numbers and None as they are; a symbolic size or int a `_Sym`. Raises
    _NotNotable for a value of another kind (the graph's shapes are then propagated at its
    calls)."""
    if isinstance(value, torch.Tensor):
        if value.layout is not torch.strided or value.is_nested:
            raise _NotNotable
        shape = tuple(_noted_int(d, symbolic) for d in value.shape)
        stride = tuple(_noted_int(d, symbolic) for d in value.stride())
        return ("tensor", shape, stride, value.dtype, str(value.device))
    if isinstance(value, torch.SymInt):
        return _noted_int(value, symbolic)
    if isinstance(value, (list, tuple)):
        return type(value)(_described(v, symbolic) for v in value)
    if value is None or type(value) in (int, float, bool):
        return value
    raise _NotNotable


def _node_shapes(graph: Any) -> tuple[bool, dict[str, Any]] | None:
    """By node name, what each node of a graph computes (`_described`), and whether a size is
    symbolic (a graph compiled for dynamic shapes); None where a node has no value noted or a
    value is of another kind."""
    shapes: dict[str, Any] = {}
    symbolic = [False]
    try:
        for node in graph.nodes:
            if node.op == "output":
                continue
            if "val" not in node.meta:
                return None
            shapes[node.name] = _described(node.meta["val"], symbolic)
    except _NotNotable:
        return None
    return symbolic[0], shapes


def _size_bindings(nodes: list[Any], noted: dict[str, Any], inputs: list[Any]) -> dict[Any, int]:
    """The value of each size symbol of a dynamic graph at this call: from the int inputs it
    takes its sizes as, and the sizes of its tensor inputs where a size is a bare symbol."""
    bound: dict[Any, int] = {}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, inputs, strict=False):
        d = noted[node.name]
        if type(d) is _Sym and d[0].is_Symbol and type(value) is int:
            bound[d[0]] = value
        elif isinstance(d, tuple) and len(d) == 5 and d[0] == "tensor" and isinstance(value, torch.Tensor):
            for size, actual in zip(d[1], value.shape, strict=False):
                if type(size) is _Sym and size[0].is_Symbol:
                    bound.setdefault(size[0], int(actual))
    return bound


def _restore_shapes(gm: Any, inputs: list[Any]) -> bool:
    """Give each node of a region's graph the value its noted shapes describe at this call's
    sizes (`inputs`), as a fake tensor (no memory). A node a pass after memwall's added (torch
    2.11 adds a `slice_scatter` to some backward graphs) is run on its inputs' fake values. False
    where shapes were not noted (or for too few of the nodes), a symbolic size has no value from
    the inputs, or an added node cannot run on fake values: the graph is then propagated whole."""
    found = getattr(gm, "meta", {}).get(_SHAPES_KEY)
    if not (isinstance(found, tuple) and len(found) == 2 and isinstance(found[1], dict)):
        return False
    symbolic, noted = found
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    added = [n for n in nodes if n.name not in noted]
    if len(added) * 4 > len(nodes) or any(n.op != "call_function" for n in added):
        return False
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    values_of: dict[Any, int] = {}
    if symbolic:
        bound = _size_bindings(nodes, noted, inputs)

        def size(d: Any) -> Any:
            if type(d) is not _Sym:
                return d
            value = values_of.get(d[0])
            if value is None:
                evaluated = d[0].xreplace(bound)  # a bare symbol becomes the int bound to it
                if type(evaluated) is not int and not getattr(evaluated, "is_number", False):
                    raise _NotNotable  # a symbol no input gives
                value = values_of[d[0]] = int(evaluated)
            return value
    else:
        def size(d: Any) -> Any:
            return d

    def rebuilt(d: Any) -> Any:
        if type(d) is _Sym:
            return size(d)
        if isinstance(d, tuple) and len(d) == 5 and d[0] == "tensor":
            shape, stride = d[1], d[2]
            if symbolic:
                shape, stride = tuple(size(v) for v in shape), tuple(size(v) for v in stride)
            # a meta tensor made outside the fake mode, wrapped as a fake tensor on its device:
            # ~5x cheaper than making it through the fake mode's dispatch
            device = devices.get(d[4])
            if device is None:
                device = devices[d[4]] = torch.device(d[4])
            return FakeTensor(mode, torch.empty_strided(shape, stride, dtype=d[3], device="meta"), device)
        if isinstance(d, (list, tuple)):
            return type(d)(rebuilt(v) for v in d)
        return d

    def value_of(arg: Any) -> Any:
        return arg.meta["val"]

    mode = FakeTensorMode()
    devices: dict[str, torch.device] = {}
    try:
        for node in nodes:
            d = noted.get(node.name, _ADDED)
            if d is not _ADDED:
                node.meta["val"] = rebuilt(d)
            else:
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), value_of)
                with mode:
                    node.meta["val"] = node.target(*args, **kwargs)
    except Exception:
        return False
    return True


#: a node of the graph whose shapes were not noted
_ADDED = object()
#: a frame of torch.optim's in a node's stack trace: every optimizer's step() runs through its
#: Optimizer's wrapper in optimizer.py (torch's optimizers, torchao's, a user's own subclass);
#: where the wrapper's graph break made Dynamo compile the step's own frame (a whole training
#: step compiled, a subclass that breaks the graph), torch's optimizer's file (sgd.py, adamw.py)
#: is the graph's outermost. Its LR schedulers and SWA helpers take no optimizer step
_OPTIMIZER_FRAME = re.compile(r'[/\\]torch[/\\]optim[/\\](?!lr_scheduler\.py|swa_utils\.py)\w+\.py"')


def _traced_in_optimizer(graph: Any) -> bool:
    """Whether most of a graph's computing nodes were traced inside an optimizer's step() (a
    `torch.compile`d `optimizer.step()`: Dynamo traces its step hooks to nothing, so the region's
    own graph is what says it is the optimizer's step). A user's code in a folder named `optim`
    is not taken for one."""
    traces = [n.meta.get("stack_trace") for n in graph.nodes if n.op == "call_function"]
    traces = [t for t in traces if isinstance(t, str)]
    return bool(traces) and 2 * sum(1 for t in traces if _OPTIMIZER_FRAME.search(t)) > len(traces)


def region_is_optimizer_step(gm: Any) -> bool:
    """Whether a compiled region's graph is an optimizer's step (`_traced_in_optimizer`, noted by
    memwall's pass when Inductor compiled it in this process)."""
    return getattr(gm, "meta", {}).get(_OPTIMIZER_KEY) is True


def unheld_module_label(kind: type) -> str:
    """The last part of the path of a module of class `kind` held by no model: the class's name,
    or, for a function run as a module by Hugging Face's `kernels` (transformers 5's RoPE, a
    class named `Func`), the name it is known by there (`kernel_layer_name`: "rotary_pos_emb")."""
    label = getattr(kind, "kernel_layer_name", None)
    return label if isinstance(label, str) and label.isidentifier() else kind.__name__


def _stack_path(stack: list[Any]) -> str | None:
    """The module path of a node from its nn_module_stack's entries, outermost first, each
    (Dynamo's path, the module's class): the innermost entry's path below the compiled module;
    a module reached through a global (`G['...modeling_llama'].apply_rotary_pos_emb`, a function
    transformers made a module) is named as an eager run names a module run inside another
    without being its child: the enclosing path and its label (`unheld_module_label`)."""
    path: str | None = None
    outer = ""  # the enclosing entry's Dynamo path
    for entry in stack:
        if not (isinstance(entry, tuple) and entry and isinstance(entry[0], str)):
            continue
        where = entry[0]
        if where.startswith("G[") and path is not None and not where.startswith((outer + ".", outer + "[")):
            kind = entry[1] if len(entry) > 1 else None
            name = unheld_module_label(kind) if isinstance(kind, type) else str(kind or "").rsplit(".", 1)[-1]
            path = f"{path}.{name}" if path else name
        else:
            # a child of the enclosing entry, a model a compiled function reaches through a global
            # (`G['model'].0` inside `G['model']`) too: named by its path below the root
            path = _module_path(where)
        outer = where
    return path


def _module_path(dynamo_path: str) -> str:
    """A module's path as `named_modules` spells it, from Dynamo's (`L['self'].h[0].attn`,
    `L['self']._modules['h']._modules['0']`, `L['args'][0].model` where a decorator's
    `wrapper(*args)` was the frame compiled, or `L['fn'].__self__.0` where torch 2.15 compiles a
    module's `_call_impl`, a bound method, for `module.compile()`): the root's own name left out."""
    path = re.sub(r"^[A-Za-z_]+\[['\"][^'\"]*['\"]\](\[\d+\])*(\.__self__(?![\w]))?", "", dynamo_path)
    path = re.sub(r"\._modules\[['\"]([^'\"]*)['\"]\]", r".\1", path)
    path = re.sub(r"\[['\"]?([^\]'\"]*)['\"]?\]", r".\1", path)
    return path.strip(".")


def region_node_modules(gm: Any) -> dict[str, str]:
    """By node name, the module path (below the compiled module) each node of a compiled
    region's graph was traced in, as the origins pass noted it; {} where it did not."""
    found = getattr(gm, "meta", {}).get(_MODULES_KEY)
    return found if isinstance(found, dict) else {}


#: the kernels of a generated wrapper module, by module name: kernel -> (each argument's role:
#: "in", "out", "inout", or "" for a size or scratch, from the kernel's signature; whether it is
#: launched with `.run(...)`, a Triton kernel, rather than called, a C++ kernel)
_KERNEL_ROLES: dict[str, dict[str, tuple[tuple[str, ...], bool]]] = {}
_CPP_KERNEL = re.compile(r"^(\w+) = async_compile\.cpp_pybinding\(\[[^\]]*\], r'''.*?\bkernel\(([^)]*)\)",
                         re.S | re.M)
#: a Triton kernel's definition: its name, then the source Inductor hands async_compile
_TRITON_KERNEL = re.compile(r"^(\w+) = async_compile\.triton\(\s*'[^']*',\s*'''(.*?)'''", re.S | re.M)
_TRITON_DEF = re.compile(r"^def \w+\(([^)]*)\)", re.M)


def _role(name: str) -> str:
    """A kernel parameter's role from the name Inductor gives it: `in_ptr0` read, `out_ptr0`
    written, `in_out_ptr0` both; a Triton template's inputs are `arg_A`, `arg_B`, ...; sizes,
    workspaces and anything else move none of the region's data."""
    if name.startswith("in_out_ptr"):
        return "inout"
    if name.startswith(("in_ptr", "arg_")):
        return "in"
    return "out" if name.startswith("out_ptr") else ""


#: a C++ kernel's load through a pointer at an offset computed from a loaded value (`tmp3`): an
#: embedding's row, `in_ptr1 + static_cast<int64_t>(x0 + 64L*tmp0)` or `in_ptr1[... tmp0 ...]`
_INDIRECT_LOAD = re.compile(r"\b(in_ptr\d+)\s*(?:\[|\+)[^;\],]*?\btmp\d+")


def kernel_roles_of_source(text: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    """The kernels a generated wrapper module's source defines (see `_KERNEL_ROLES`). A C++
    kernel's input it loads at offsets computed from loaded values (a gather: an embedding's
    table, fused with what follows it) is "gather": it reads the rows it is indexed at, not the
    whole buffer."""
    roles: dict[str, tuple[tuple[str, ...], bool]] = {}
    for match in _CPP_KERNEL.finditer(text):
        params = [p.strip().split()[-1] if p.strip() else "" for p in match.group(2).split(",")]
        end = text.find("'''", match.end())
        indirect = set(_INDIRECT_LOAD.findall(text[match.end():end if end >= 0 else len(text)]))
        roles[match.group(1)] = (tuple("gather" if p in indirect else _role(p) for p in params), False)
    for match in _TRITON_KERNEL.finditer(text):
        found = _TRITON_DEF.search(match.group(2))
        if found is None:
            continue
        # the arguments a launch passes: the parameters before the compile-time constants
        params = [p.split(":")[0].strip() for p in found.group(1).split(",")
                  if p.strip() and "constexpr" not in p]
        roles[match.group(1)] = (tuple(_role(p) for p in params), True)
    return roles


def _kernel_roles(module_name: str, source_file: str | None) -> dict[str, tuple[tuple[str, ...], bool]]:
    roles = _KERNEL_ROLES.get(module_name)
    if roles is None:
        try:
            with open(source_file or "", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            text = ""
        roles = kernel_roles_of_source(text)
        if len(_KERNEL_ROLES) > 4096:
            _KERNEL_ROLES.clear()
        _KERNEL_ROLES[module_name] = roles
    return roles


class _Launcher:
    """Stands for a Triton kernel of a wrapper module while a region runs: each launch
    (`kernel.run(*args, stream=...)`) goes through `run`; anything else is the kernel's own."""

    def __init__(self, run: Callable[..., Any], name: str, kinds: tuple[str, ...], kernel: Any) -> None:
        self._observe, self._name, self._kinds, self._kernel = run, name, kinds, kernel

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self._observe(self._name, self._kinds, self._kernel.run, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kernel, name)


class _Externs:
    """Stands for a wrapper module's `extern_kernels` while a region runs: each library call
    (extern_kernels.mm, addmm, bmm, ...) goes through `run`."""

    def __init__(self, real: Any, run: Callable[..., Any]) -> None:
        self._real, self._run = real, run

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._real, name)
        return _library_call(self._run, f"extern_kernels.{name}", fn) if callable(fn) else fn


def _library_call(run: Callable[..., Any], name: str, fn: Any) -> Callable[..., Any]:
    """`fn` called through `run` as the library call `name` (no argument roles: its `out=`, else
    its result, is written, the rest read)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return run(name, None, fn, args, kwargs)

    return call


#: namespaces of torch's own plumbing that a wrapper calls (its allocator pool, profiler ranges,
#: collectives, which hooks/collectives.py observes): not library calls
_PLUMBING = frozenset({"inductor", "profiler", "c10d", "_c10d_functional", "_c10d_functional_autograd",
                       "higher_order", "fsdp", "streams", "symm_mem", "_dtensor"})


class _ObservedTorch:
    """Stands for a wrapper module's `torch` while a region runs: the ops the wrapper calls
    itself (`torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(...)`, Inductor's
    fallbacks: attention, ops it has no lowering for; custom ops, which Inductor never lowers:
    `torch.ops.transformers.grouped_mm_fallback.default(...)`) go through `run` as library calls
    named `<namespace>.<op>`; everything else is torch's own."""

    def __init__(self, real: Any, run: Callable[..., Any]) -> None:
        self._real, self._ops = real, _ObservedOps(real.ops, run)

    def __getattr__(self, name: str) -> Any:
        return self._ops if name == "ops" else getattr(self._real, name)


class _ObservedOps:
    def __init__(self, real: Any, run: Callable[..., Any]) -> None:
        self._real, self._run = real, run

    def __getattr__(self, namespace: str) -> Any:
        found = getattr(self._real, namespace)
        return found if namespace in _PLUMBING else _ObservedNamespace(found, namespace, self._run)


class _ObservedNamespace:
    def __init__(self, real: Any, namespace: str, run: Callable[..., Any]) -> None:
        self._real, self._namespace, self._run = real, namespace, run

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._real, name)
        if not isinstance(found, OpOverloadPacket):
            return found
        return _ObservedPacket(found, f"{self._namespace}.{name}", self._run)


class _ObservedPacket:
    def __init__(self, real: Any, name: str, run: Callable[..., Any]) -> None:
        self._real, self._name, self._run = real, name, run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self._name, None, self._real, args, kwargs)

    def __getattr__(self, overload: str) -> Any:
        op = getattr(self._real, overload)
        return _library_call(self._run, self._name, op) if isinstance(op, OpOverload) else op


@contextlib.contextmanager
def kernels_observed(region: Any, run: Callable[..., Any]) -> Iterator[bool]:
    """While open, each kernel call of the compiled region an `inductor_compiled_code` call runs
    (its generated C++ kernels, `cpp_fused_*`, its Triton kernels' launches, `triton_*.run`, and
    its library calls, `extern_kernels.*`, and the ops it calls itself, `torch.ops.<namespace>.*`)
    goes through `run(name, roles, kernel, args, kwargs)`,
    which must call `kernel(*args, **kwargs)` and return its result: the same calls, in the same
    order, on the same tensors (numerics unchanged, nothing recompiled). `roles`: each positional
    argument's role for a generated kernel, None for a library call (its `out=` is written, the
    rest read). Yields whether the region's generated module was found (without one, nothing is
    observed)."""
    fn = _region_callable(region)
    glb = getattr(getattr(fn, "__func__", fn), "__globals__", None)
    if not isinstance(glb, dict) or "call" not in glb:
        yield False
        return
    saved: dict[str, Any] = {}
    try:
        roles = _kernel_roles(str(glb.get("__name__")), glb.get("__file__"))
        for name, (kinds, launched) in roles.items():
            kernel = glb.get(name)
            if launched and callable(getattr(kernel, "run", None)):
                saved[name] = kernel
                glb[name] = _Launcher(run, name, kinds, kernel)
            elif not launched and callable(kernel):
                saved[name] = kernel
                glb[name] = functools.partial(_call_kernel, run, name, kinds, kernel)
        if "extern_kernels" in glb:
            saved["extern_kernels"] = glb["extern_kernels"]
            glb["extern_kernels"] = _Externs(saved["extern_kernels"], run)
        if glb.get("torch") is torch:
            saved["torch"] = torch
            glb["torch"] = _ObservedTorch(torch, run)
    except Exception:  # memwall's own error: the region runs as generated, observed whole
        glb.update(saved)
        saved = {}
    if not saved:
        yield False
        return
    try:
        yield True
    finally:
        glb.update(saved)


def replays_cuda_graph(region: Any) -> bool:
    """Whether an `inductor_compiled_code` call's region runs as a CUDA graph (torch.compile's
    mode="reduce-overhead", cudagraph trees): Inductor wraps it (or each of its graph
    partitions) in its cudagraphify wrapper, which warms up, records and then replays the graph;
    a replay launches no kernel from Python, so the region cannot be split into its kernels
    (it is one row, timed as a whole)."""
    fn = _region_callable(region)
    if _is_cudagraphify(fn):
        return True
    # graph partitions (Inductor's default since 2.11): the region is the generated module's
    # `runner.call`, and each partition the runner calls is wrapped by cudagraphify instead
    partitions = getattr(getattr(fn, "__self__", None), "partitions", None)
    return isinstance(partitions, (list, tuple)) and any(_is_cudagraphify(p) for p in partitions)


def _is_cudagraphify(fn: Any) -> bool:
    """Inductor's cudagraphify wrapper (`compile_fx.cudagraphify`'s closure)."""
    func = getattr(fn, "__func__", fn)
    return (str(getattr(func, "__module__", "")).startswith("torch._inductor")
            and str(getattr(func, "__qualname__", "")).startswith("cudagraphify"))


def _call_kernel(run: Callable[..., Any], name: str, kinds: tuple[str, ...], kernel: Any, *args: Any) -> Any:
    return run(name, kinds, kernel, args, {})


def region_eager_origins(gm: Any) -> dict[str, tuple[str, str, int | None, bool]] | None:
    """By node name, (eager op, its overload, autograd sequence number or None, whether it is a
    forward op recomputed in backward) of a compiled region's graph, as the origins pass noted
    them; None for a graph compiled without it."""
    found = getattr(gm, "meta", {}).get(_ORIGINS_KEY)
    return found if isinstance(found, dict) else None


def wrap_compiled_regions(enabled: bool) -> bool | None:
    """Make Inductor wrap each region it compiles from now on in its `inductor_compiled_code`
    higher-order operator (a dispatch mode then sees a region run as one call); returns the
    previous setting, None where this torch has no such setting."""
    try:
        import torch._inductor.config as inductor_config
    except ImportError:
        return None
    previous = getattr(inductor_config, "wrap_inductor_compiled_regions", None)
    if previous is None:
        return None
    inductor_config.wrap_inductor_compiled_regions = enabled
    return bool(previous)


#: the FakeTensorMode active on this thread, or None (it runs below user modes like memwall's):
#: a C call, no Python frame (the capture asks it for every op)
active_fake_mode: Callable[[], Any] = functools.partial(torch._C._get_dispatch_mode,
                                                        torch._C._TorchDispatchModeKey.FAKE)


def fake_mode_active() -> bool:
    """A FakeTensorMode is active on this thread."""
    return active_fake_mode() is not None


_fake_tensor_type: type | None = None


def is_fake_tensor_type(cls: type) -> bool:
    """FakeTensor (FakeTensorMode's tensors, DTensor's sharding propagation): metadata only."""
    global _fake_tensor_type
    if _fake_tensor_type is None:
        from torch._subclasses.fake_tensor import FakeTensor

        _fake_tensor_type = FakeTensor
    return issubclass(cls, _fake_tensor_type)


_functional_tensor_type: type | None = None


def is_traced_tensor_type(cls: type) -> bool:
    """A tensor of a trace, not of a run: a FakeTensor, or a FunctionalTensor (the
    functionalization of AOTAutograd's and torch.export's traces, such as
    `ExportedProgram.run_decompositions()` and `torch.onnx.export`, which its FunctionalTensorMode
    handles after user modes like memwall's)."""
    global _functional_tensor_type
    if _functional_tensor_type is None:
        from torch._subclasses.functional_tensor import FunctionalTensor

        _functional_tensor_type = FunctionalTensor
    return issubclass(cls, _functional_tensor_type) or is_fake_tensor_type(cls)


__all__ = [
    "ACCUMULATE_GRAD_SEQUENCE_NR",
    "checkpoint_saving_inputs",
    "SUBGRAPH_HOPS",
    "TorchDispatchMode",
    "storage_key",
    "UncompiledDispatchMode",
    "compiled_module_original",
    "current_autograd_node",
    "call_below_mode",
    "call_unrecorded",
    "unrecorded",
    "current_cuda_stream",
    "compiled_region_graph",
    "default_store",
    "dispatch_mode_stack",
    "fake_mode_active",
    "flex_block_mask",
    "find_frame",
    "forward_kwargs",
    "in_backward",
    "in_backward_seed",
    "group_size_by_name",
    "fwd_grad_enabled",
    "has_backend_kernel",
    "has_composite_kernel",
    "hop_name",
    "is_fake_tensor_type",
    "is_higher_order_op",
    "is_op_overload",
    "kernel_key",
    "nested_component_shapes",
    "node_sequence_nr",
    "node_variable",
    "op_schema",
    "overload_name",
    "peek_sequence_nr",
    "graph_forward_path",
    "graph_code_lines",
    "GRAPH_FRAMES",
    "is_compiled_module",
    "is_compiled_function_node",
    "unbox_process_group",
    "propagate_shapes",
    "never_compiled",
    "never_traced",
    "keep_keys_past_compiled_calls",
    "dispatch_keys",
    "compiles_its_call_impl",
    "global_module_hooks_hidden",
    "compile_time_ns",
    "hide_from_dynamo",
    "listen_for_modules_compiled_in_place",
    "modules_compiled_in_place",
    "note_modules_compiled_in_place",
    "note_compiled_wrappers",
    "unheld_module_label",
    "compiled_wrappers",
    "kernels_observed",
    "region_eager_origins",
    "region_is_optimizer_step",
    "region_node_modules",
    "unbox_work",
    "wrap_compiled_regions",
    "wrap_compiled_regions_from_now_on",
    "warm_up_dispatch",
]


# --- the profiler's device activity (hooks/kernel_clock.py) -------------------------------------

#: A user-scope range of torch's profiler: (name) -> handle, and its end. With only user scopes
#: observed, the profiler records these ranges and nothing else on the host (no aten op events),
#: and on a GPU it records each range's kernels under a device-side annotation of the same name.
marker_enter = torch._C._autograd._record_function_with_args_enter
marker_exit = torch._C._autograd._record_function_with_args_exit


def profiler_running() -> bool:
    """A torch.profiler (the user's, or memwall's kineto=True one) is recording on this thread."""
    return bool(torch._C._autograd._profiler_enabled())


def device_activity_supported() -> bool:
    """Kineto was built in and can record CUDA activity (CUPTI) in this torch."""
    try:
        from torch._C._profiler import ProfilerActivity

        return bool(torch._C._autograd.kineto_available()) and (
            ProfilerActivity.CUDA in torch._C._autograd._supported_activities())
    except Exception:
        return False


def start_device_activity() -> None:
    """Start torch's profiler recording device activity (kernels, copies, sets) and user-scope
    ranges only: no shapes, stacks or aten op events."""
    from torch._C._profiler import ProfilerActivity, ProfilerConfig, ProfilerState, RecordScope, _ExperimentalConfig

    config = ProfilerConfig(ProfilerState.KINETO, False, False, False, False, False, _ExperimentalConfig())
    activities = {ProfilerActivity.CPU, ProfilerActivity.CUDA}
    torch._C._autograd._prepare_profiler(config, activities)
    # its stub omits the scopes argument the binding takes
    torch._C._autograd._enable_profiler(config, activities, {RecordScope.USER_SCOPE})  # type: ignore[call-arg]


def stop_device_activity() -> list[tuple[str, bool, int, int, int]]:
    """Stop the profiler started by `start_device_activity`; its events as (name, on the device,
    stream, start ns, end ns)."""
    events = torch._C._autograd._disable_profiler().events()
    cpu = torch._C._autograd.DeviceType.CPU
    return [(e.name(), e.device_type() != cpu, e.device_resource_id(), e.start_ns(), e.end_ns()) for e in events]


#: callbacks run when a torch.profiler (the user's, or `kineto=True`'s) prepares or starts a trace
#: on this process: memwall's kernel clock hands the profiler over (hooks/kernel_clock.py)
_ON_OTHER_PROFILER: list[Callable[[], None]] = []
_OTHER_PROFILERS = [0]  # torch.profiler sessions prepared and not yet exited


def other_profiler_open() -> bool:
    """A torch.profiler has prepared or started a trace and not ended it (warm-up included)."""
    return _OTHER_PROFILERS[0] > 0


def watch_other_profilers(callback: Callable[[], None]) -> None:
    """Run `callback` before any torch.profiler prepares or starts a trace (`unwatch_` to stop).
    torch.profiler and torch.autograd.profiler both go through `torch.autograd.profiler.profile`'s
    `_prepare_trace` and `_start_trace`; one profiler records at a time, so memwall's must stop
    before theirs starts, or theirs would silently replace it."""
    cls = torch.autograd.profiler.profile
    if not getattr(cls, "_memwall_watched", False):
        prepare, start, leave = cls._prepare_trace, cls._start_trace, cls.__exit__

        def _announce() -> None:
            for fn in list(_ON_OTHER_PROFILER):
                fn()

        @functools.wraps(prepare)
        def _prepare_trace(self: Any, *args: Any, **kwargs: Any) -> Any:
            _announce()
            if not getattr(self, "_memwall_open", False):
                self._memwall_open = True
                _OTHER_PROFILERS[0] += 1
            return prepare(self, *args, **kwargs)

        @functools.wraps(start)
        def _start_trace(self: Any, *args: Any, **kwargs: Any) -> Any:
            _announce()
            return start(self, *args, **kwargs)

        @functools.wraps(leave)
        def __exit__(self: Any, *args: Any) -> Any:  # noqa: N807 - the method it wraps
            try:
                return leave(self, *args)
            finally:
                if getattr(self, "_memwall_open", False):
                    self._memwall_open = False
                    _OTHER_PROFILERS[0] -= 1

        for name, method in (("_prepare_trace", _prepare_trace), ("_start_trace", _start_trace),
                             ("__exit__", __exit__), ("_memwall_watched", True)):
            setattr(cls, name, method)
    if callback not in _ON_OTHER_PROFILER:
        _ON_OTHER_PROFILER.append(callback)


def unwatch_other_profilers(callback: Callable[[], None]) -> None:
    with contextlib.suppress(ValueError):
        _ON_OTHER_PROFILER.remove(callback)


# --- AOTInductor models ------------------------------------------------------------------------

#: the op an AOTInductor model's call is recorded as: declared (never run) so the call is a row
#: like any op's, its tensors read and written, with no formula (its kernels run inside the
#: package, where no dispatcher sees them)
_AOTI_LIBRARY = torch.library.Library("memwall", "FRAGMENT")  # kept alive: the op's home
try:
    _AOTI_LIBRARY.define("aoti_model(Tensor[] inputs) -> Tensor[]")
except RuntimeError:  # this module imported again (a reload): the op stands
    pass
AOTI_MODEL: Any = torch.ops.memwall.aoti_model.default

#: thread id -> its observer of AOTInductor model calls, `observer(call, model, args, kwargs)`
_AOTI_OBSERVERS: dict[int, Callable[..., Any]] = {}
_AOTI_ORIGINAL: list[tuple[type, Any]] = []  # the class and its own __call__, while memwall's stands in


def _aoti_class() -> type | None:
    """AOTInductor's loaded-package model (`torch._inductor.aoti_load_package`), where this torch
    has it and the program imported it (memwall never imports it itself)."""
    for home in _AOTI_HOMES:
        found = getattr(sys.modules.get(home), "AOTICompiledModel", None)
        if isinstance(found, type) and "__call__" in vars(found):
            return found
    return None


def _sync_aoti_wrap() -> None:
    """The model class's `__call__` wrapped while any thread observes AOTInductor calls, torch's
    own otherwise; called when observers change and when torch imports the class (a package
    loaded while a profile records, as under `memwall run`)."""
    cls = _aoti_class()
    if cls is None:
        return
    if _AOTI_OBSERVERS and not _AOTI_ORIGINAL:
        original = cls.__call__

        @functools.wraps(original)
        def observed_call(model: Any, *args: Any, **kwargs: Any) -> Any:
            seen = _AOTI_OBSERVERS.get(threading.get_ident())
            if seen is None:
                return original(model, *args, **kwargs)
            return seen(original, model, args, kwargs)

        _AOTI_ORIGINAL.append((cls, original))
        cls.__call__ = observed_call  # type: ignore[method-assign]
    elif not _AOTI_OBSERVERS and _AOTI_ORIGINAL:
        wrapped, original = _AOTI_ORIGINAL.pop()
        wrapped.__call__ = original  # type: ignore[method-assign]


def tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors among a call's arguments or results, nested in tuples, lists and dicts as
    torch's pytree flattens them (an AOTInductor model's inputs and outputs)."""
    from torch.utils import _pytree

    return [t for t in _pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]


def observe_aoti_calls(observer: Callable[..., Any] | None) -> None:
    """From now on, calls of AOTInductor models on this thread go to `observer(call, model, args,
    kwargs)`, which must return `call(model, *args, **kwargs)` (None: no longer observed)."""
    me = threading.get_ident()
    if observer is None:
        _AOTI_OBSERVERS.pop(me, None)
    else:
        _AOTI_OBSERVERS[me] = observer
    _sync_aoti_wrap()


# -- saved-tensors hooks: torch.func's grad and vjp (so jacrev and hessian) refuse to start while
# -- any default hooks are on the thread's stack (they enter `disable_saved_tensors_hooks`, which
# -- raises then). memwall's pack hook (hooks/memory.py) steps aside for such a block and returns
# -- after it; a hook of the user's on top still makes the block raise, as in a bare run.

_graph = torch.autograd.graph
_original_disable = _graph.disable_saved_tensors_hooks
_stepping_aside: list[Callable[[Any], Any]] = []  # the pack hooks that step aside
_aside_lock = threading.Lock()


@contextlib.contextmanager
def _disable_stepping_aside(error_message: str) -> Iterator[None]:
    aside = _saved_tensors_hook_aside()
    with aside if aside is not None else contextlib.nullcontext(), _original_disable(error_message):
        yield


@contextlib.contextmanager
def _off_the_stack(top: tuple[Any, Any]) -> Iterator[None]:
    """memwall's pack hook `top` off this thread's stack, and torch's own
    `disable_saved_tensors_hooks` in place, for the block."""
    torch._C._autograd._pop_saved_tensors_default_hooks()
    patched = _graph.disable_saved_tensors_hooks is _disable_stepping_aside
    if patched:
        _graph.disable_saved_tensors_hooks = _original_disable  # type: ignore[assignment]
    try:
        yield
    finally:
        if patched and _stepping_aside:
            _graph.disable_saved_tensors_hooks = _disable_stepping_aside  # type: ignore[assignment]
        torch._C._autograd._push_saved_tensors_default_hooks(*top)


def _saved_tensors_hook_aside() -> Any:
    """While memwall's pack hook is on top of this thread's stack: a block with it off the stack
    and torch's function back. For a `disable_saved_tensors_hooks` block, and for a Dynamo compile,
    so Dynamo traces what it would without memwall (it inlines torch.func's
    `disable_saved_tensors_hooks` and would refuse memwall's stand-in). None when memwall's hook is
    not on top."""
    if not _stepping_aside:
        return None
    top = torch._C._autograd._top_saved_tensors_default_hooks(True)
    if top is None or not any(top[0] is pack for pack in _stepping_aside):
        return None
    return _off_the_stack(top)


def without_own_saved_tensors_hook() -> Any:
    """A block in which this thread's saved-tensors stack holds none of memwall's pack hooks: a
    do-nothing block when none is pushed, memwall's off the stack for the block while it is on
    top; None when one is pushed below another hook (a checkpoint's) and cannot step aside.
    A c10d collective issued in such a block keeps no object of memwall's in the thread-local
    state its Work captures (so the Work is destroyed without the GIL, as in a bare run)."""
    if not _stepping_aside:
        return contextlib.nullcontext()
    return _saved_tensors_hook_aside()


def step_aside_for_disablers(pack: Callable[[Any], Any], on: bool) -> None:
    """While `on`, the saved-tensors pack hook `pack` (the very object pushed) leaves the stack for
    each `torch.autograd.graph.disable_saved_tensors_hooks` block entered while it is on top, and
    is pushed back after it: torch.func's transforms run as in a bare run, their saved tensors
    unseen by the hook."""
    with _aside_lock:
        if on:
            _stepping_aside.append(pack)
        else:
            _stepping_aside[:] = [p for p in _stepping_aside if p is not pack]
        if _stepping_aside:
            _graph.disable_saved_tensors_hooks = _disable_stepping_aside  # type: ignore[assignment]
            _register_compile_callbacks()  # a compile steps it aside too (`_saved_tensors_hook_aside`)
        elif _graph.disable_saved_tensors_hooks is _disable_stepping_aside:
            _graph.disable_saved_tensors_hooks = _original_disable  # type: ignore[assignment]


# -- selective activation checkpointing (`checkpoint(..., context_fn=create_selective_checkpoint_
# -- contexts(policy))`): the op outputs its policy saves are kept in its own cache, one
# -- `_VersionWrapper` each, not through autograd's saved-tensors hooks. Two consequences:
# -- - memwall's pack hook never sees them: an observer of the wrapper's construction does;
# -- - it looks for a user's saved-tensors hooks around it (torch >= 2.15 warns when it finds one,
# --   and a later torch routes its cache through them), and would take memwall's for one:
# --   memwall's hook is marked as checkpoint's own hooks are, so it is passed over.

def checkpoint_saving_inputs(frame: Any) -> bool:
    """Whether a saved-tensors pack hook called from `frame` (its caller's) is
    torch.utils.checkpoint saving the inputs of a call it checkpoints (non-reentrant, torch 2.15:
    `_CheckpointFrame.save_inputs` makes the saved tensors itself, outside any op), not an op's
    autograd saving what the op needs. torch 2.11 saves them through a Function of its own."""
    code = frame.f_code
    return (code.co_name in ("save_inputs", "<listcomp>")
            and code.co_filename == getattr(sys.modules.get("torch.utils.checkpoint"), "__file__", None))


def _user_saved_tensors_hooks() -> tuple[Any, Any] | None:
    """The (pack, unpack) pair a tensor saved now would go through, passing over checkpoint's
    own hooks (and memwall's) as torch.utils.checkpoint does."""
    hooks: Any = torch._C._autograd._top_saved_tensors_default_hooks(False)
    while hooks is not None and getattr(hooks[0], "_checkpoint_internal", False):
        hooks = getattr(hooks[0], "_user_hooks", None)
    return hooks


def pack_hook_passed_over(pack: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`pack`, as a hook object that selective checkpointing passes over when it looks for a
    user's saved-tensors hooks: the hooks below it (on the stack now) stand for the user's. To be
    pushed at once; `forget_hooks_below` after it is popped (the autograd graph keeps the hook
    object, which must not keep the user's hooks alive)."""
    hook = functools.partial(pack)  # a partial takes attributes; a bound method does not
    hook._checkpoint_internal = True  # type: ignore[attr-defined]
    hook._user_hooks = _user_saved_tensors_hooks()  # type: ignore[attr-defined]
    return hook


def forget_hooks_below(hook: Callable[[Any], Any]) -> None:
    if getattr(hook, "_checkpoint_internal", False):
        hook._user_hooks = None  # type: ignore[attr-defined]


#: observers of storages resized in place (any thread: FSDP2 resizes in autograd's hooks too)
_RESIZE_OBSERVERS: list[Callable[[Any], None]] = []
_RESIZE_ORIGINAL: list[Any] = []  # UntypedStorage's own resize_ (its class's), while observed


def observe_storage_resizes(observer: Callable[[Any], None], on: bool) -> None:
    """While `on`, each `UntypedStorage.resize_` called from Python goes to `observer(storage)`
    after it ran: FSDP2 frees each gathered parameter's storage after its forward with
    `resize_(0)` and allocates it again with `resize_(size)` before its backward, on the same
    storage, which no op sees. The call itself, its arguments and its result are unchanged."""
    if on:
        _RESIZE_OBSERVERS.append(observer)
    else:
        _RESIZE_OBSERVERS[:] = [o for o in _RESIZE_OBSERVERS if o != observer]
    cls = torch.UntypedStorage
    if _RESIZE_OBSERVERS and not _RESIZE_ORIGINAL:
        original = cls.resize_

        @functools.wraps(original)
        def observed_resize(storage: Any, size: Any) -> Any:
            out = original(storage, size)
            for seen in tuple(_RESIZE_OBSERVERS):
                seen(storage)
            return out

        _RESIZE_ORIGINAL.append(original)
        cls.resize_ = never_compiled(observed_resize)  # type: ignore[method-assign]
    elif not _RESIZE_OBSERVERS and _RESIZE_ORIGINAL:
        _RESIZE_ORIGINAL.pop()
        del cls.resize_  # the inherited C method again


#: thread id -> its observers of the tensors selective checkpointing caches (nested profiles: the
#: innermost, last, is called)
_SAC_OBSERVERS: dict[int, list[Callable[[torch.Tensor], None]]] = {}
_SAC_ORIGINAL: list[tuple[type, Any]] = []  # the wrapper class and its own __init__, while observed


def _sac_wrapper_class() -> type | None:
    found = getattr(sys.modules.get("torch.utils.checkpoint"), "_VersionWrapper", None)
    return found if isinstance(found, type) and "__init__" in vars(found) else None


def _traced(t: torch.Tensor) -> bool:
    """A tensor of a compile's tracing (fake or functional), not one a run keeps."""
    return (torch.compiler.is_compiling() or fake_mode_active() or is_traced_tensor_type(type(t))
            or torch._is_functional_tensor(t))


def observe_selective_checkpoint_saves(observer: Callable[[torch.Tensor], None], on: bool) -> None:
    """While `on`, each tensor selective activation checkpointing caches for backward on this
    thread goes to `observer(tensor)`. Not those it caches under a compile (fake tensors), nor
    those a user's pack hook has packed (torch >= 2.15 with `respect_saved_tensors_hooks=True`):
    what is kept then is the hook's, not the tensor."""
    me = threading.get_ident()
    mine = _SAC_OBSERVERS.setdefault(me, [])
    if on:
        mine.append(observer)
    else:
        mine[:] = [o for o in mine if o != observer]  # bound methods: equal, not the same object
        if not mine:
            del _SAC_OBSERVERS[me]
    cls = _sac_wrapper_class()
    if cls is None:
        return
    if _SAC_OBSERVERS and not _SAC_ORIGINAL:
        original = vars(cls)["__init__"]

        @functools.wraps(original)
        def observed_init(wrapper: Any, val: Any, *args: Any, **kwargs: Any) -> None:
            original(wrapper, val, *args, **kwargs)
            seen = _SAC_OBSERVERS.get(threading.get_ident())
            if (seen and isinstance(val, torch.Tensor) and getattr(wrapper, "unpack_hook", None) is None
                    and not _traced(val)):
                seen[-1](val)

        _SAC_ORIGINAL.append((cls, original))
        cls.__init__ = never_compiled(observed_init)  # type: ignore[misc]
    elif not _SAC_OBSERVERS and _SAC_ORIGINAL:
        wrapped, original = _SAC_ORIGINAL.pop()
        wrapped.__init__ = original  # type: ignore[misc]
