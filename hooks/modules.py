"""Which module and phase an op belongs to: module paths in forward and backward, optimizer steps.

Forward: global module pre/post hooks keep a stack of `named_modules()` paths.
Backward: each autograd Node carries the sequence number it got when its forward op ran; the
tracker records, in forward, at which sequence number the innermost module changed, so a
backward op is attributed by looking up the sequence number of the Node that runs it. Gradient
accumulation into a parameter (AccumulateGrad) goes to the module that owns the parameter.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    ACCUMULATE_GRAD_SEQUENCE_NR,
    GRAPH_FRAMES,
    compile_time_ns,
    compiled_module_original,
    compiled_wrappers,
    compiles_its_call_impl,
    current_autograd_node,
    find_frame,
    forward_kwargs,
    global_module_hooks_hidden,
    graph_code_lines,
    graph_forward_path,
    hide_from_dynamo,
    is_compiled_module,
    jit_tracing,
    jit_untraced,
    listen_for_modules_compiled_in_place,
    modules_compiled_in_place,
    never_compiled,
    node_sequence_nr,
    node_variable,
    note_compiled_wrappers,
    note_modules_compiled_in_place,
    peek_sequence_nr,
    unheld_module_label,
)
from torch.compiler import is_compiling as _is_compiling
from torch.nn.modules import module as nn_module
from torch.optim import optimizer as optim_module
from torch.utils.hooks import RemovableHandle

_perf_counter_ns = time.perf_counter_ns

_thread_id = threading.get_ident

# from memwall's import on: a module compiled in place is known before its first call
note_modules_compiled_in_place()
note_compiled_wrappers()  # else once Dynamo is imported

#: the optimizer step hooks (pre, post) of each open tracker. torch's tables hold memwall's two
#: from its import on, for good: Dynamo guards a compiled `optimizer.step()` on the number of
#: global step hooks, so hooks added and removed with each profile made a step compiled before a
#: profile compile again inside it, and one compiled inside it again after it
_STEP_HOOKS: list[tuple[Callable[..., None], Callable[..., None]]] = []


def _pre_step_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
    if _is_compiling() or not _STEP_HOOKS:  # traced into a compiled step as nothing
        return
    for pre, _ in list(_STEP_HOOKS):
        pre(optimizer, args, kwargs)


def _post_step_hook(optimizer: Any, args: Any, kwargs: Any) -> None:
    if _is_compiling() or not _STEP_HOOKS:
        return
    for _, post in list(_STEP_HOOKS):
        post(optimizer, args, kwargs)


optim_module.register_optimizer_step_pre_hook(never_compiled(_pre_step_hook))
optim_module.register_optimizer_step_post_hook(never_compiled(_post_step_hook))


#: a graph module's class (one per graph module) -> (its forward's code, the lines of it that run
#: a node of some module's: line -> module path relative to the graph module; {} when its graph
#: names no module)
_FLAT_LINES: weakref.WeakKeyDictionary[Any, tuple[Any, dict[int, str]]] = weakref.WeakKeyDictionary()


def flat_graph_lines(module: torch.fx.GraphModule) -> dict[int, str]:
    """For a graph module whose nodes say which module of the model they came from
    (`nn_module_stack`: torch.export's graphs and the modules made from them): each line of its
    generated code that computes such a node, with that module's path (relative to the graph
    module, "" for its own). {} for graphs without it (`torch.fx.symbolic_trace` calls its
    submodules, whose hooks name them)."""
    cls, code = type(module), type(module).forward.__code__
    known = _FLAT_LINES.get(cls)
    if known is not None and known[0] is code:  # not recompiled since
        return known[1]
    names: dict[str, str] = {}
    # in reverse, so that a node a pass inserted without a module (PT2E's quantize and
    # dequantize nodes) takes the module of the first of its users that has one: the op it feeds
    for node in reversed(module.graph.nodes):
        if node.op != "call_function":
            continue
        stack = node.meta.get("nn_module_stack")
        if stack:
            path = list(stack.values())[-1][0]
            names[node.name] = path if isinstance(path, str) else ""
        else:
            path = next((names[user.name] for user in node.users if user.name in names), None)
            if path is not None:
                names[node.name] = path
    lines = graph_code_lines(module, names) if any(names.values()) else {}
    _FLAT_LINES[cls] = (code, lines)
    return lines


class ModuleTracker:
    """Tracks the innermost module path and the optimizer phase while installed.

    With `model`, paths are that model's `named_modules()` keys and other modules are not
    tracked (their ops go to the enclosing tracked module), but for a second model: one with
    parameters, called outside every tracked module, that neither holds the model nor is held by
    it (a distillation teacher, a pipeline's VAE, the UNet beside a ControlNet) is named as below,
    by what it is called through, so its ops and parameters are its own, not the top level's
    and `other`. Without it, every module that runs
    is tracked: a module first seen outside any other becomes a root and its descendants take
    their `named_modules()` keys relative to it, unless it is called from a method of a module
    that holds it (a LightningModule's `training_step` calling `self.net`): that module is the
    root, so `net.0` reads `net.0`, as the user wrote it.
    """

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self._names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        #: qualify()'s answers while the names are as they were ((len(_names), answers): a module
        #: named or collected changes the count, and the answers are worked out again)
        self._qualified: tuple[int, dict[tuple[str, str], str]] = (0, {})
        self._roots: list[weakref.ref[torch.nn.Module]] = []
        self._param_modules: dict[int, str] | None = None  # built at the first gradient accumulation
        self._fixed = model is not None
        self.memory: Any = None  # hooks/memory.py's MemoryTracker, when memory is measured
        self.stack: list[str] = []
        self.in_optimizer = 0
        #: inside a compiled optimizer.step()'s region (`compiled_step_began`)
        self.compiled_step = False
        #: a compiled optimizer step ended and no step hook said so: the step ends when the next
        #: work begins (`work_begins`), for on_optimizer_step
        self.step_pending = False
        self.in_scaler = 0  # inside a GradScaler method (unscale_, step, update) on this thread
        self.optimizer_steps = 0  # optimizer steps ended on this thread (post-step hooks)
        self.scaler_skips = 0  # optimizer steps a GradScaler skipped on this thread (inf gradients)
        #: generate()'s calls of a model given no KV cache, each over the sequence so far: the
        #: model's path and the tokens of each call of the current run of them, and those runs
        #: ended (`take_uncached`)
        self._uncached_model = ""
        self._uncached_chain: list[int] = []
        self._uncached_runs: list[list[int]] = []
        self._unpatch_scaler: Callable[[], None] | None = None
        # phase labels: the user's (prof.phase) wins over one detected from a generation call
        self.user_label: str | None = None
        self.generation_label: str | None = None
        #: no work yet in the profile's first step: ops that would be "other" are set-up
        #: (records.SETUP). Work is any module's forward (the model's or another's: with `model`
        #: given, other modules' forwards are recorded as forward work too), a backward pass or an
        #: optimizer step (hooks/capture.py); the first step's end closes it as well.
        self.setup_open = True
        #: when set-up ended (perf_counter_ns): the first work's start, taken by the recorder, which
        #: keeps the wall time before it (a script's start-up) out of the host-time share
        self.setup_ended_ns: int | None = None
        self._label_depth = -1
        #: the lists of tensors the model's last generation step returned (a recurrent state, as
        #: RWKV's `state`, which no cache class holds): id of each list -> ids of its tensors
        self._carried: dict[int, tuple[int, ...]] = {}
        self.on_optimizer_step: Callable[[Any], None] | None = None
        # forward timeline: innermost module path from each sequence number on
        self._seqs: list[int] = []
        self._paths: list[str] = []
        self._kept_from = 0
        self._last_node: Any = None
        #: flat graph modules running (an ExportedProgram's `.module()`, PT2E's converted model):
        #: their generated code calls aten ops directly, each line one node of the graph, which
        #: names the module it came from. Per call: (stack depth, its forward's code, line ->
        #: module path, the graph module's own path)
        self.flat: list[tuple[int, Any, dict[int, str], str]] = []
        #: the stack depths of the compiled modules running (a `torch.compile(module)` wrapper, a
        #: module compiled in place): under Dynamo's eager backends their graph runs op by op
        self.compiled: list[int] = []
        #: the forward timeline's newest path is a graph module's line's (`in_graph_forward`)
        self._graph_marked = False
        #: (forward's code, graph module's path) -> its lines' module paths as this tracker names them
        self._flat_tables: dict[tuple[Any, str], dict[int, str]] = {}
        self._last_path = ""
        #: path -> the class of the module held by no model that `_name_of` named so (nested
        #: calls of its kind keep its path)
        self._unheld: dict[str, type] = {}
        #: the paths of the roots: "" and the names of later models (`_root_prefix`)
        self._root_paths: set[str] = {""}
        self._handles: list[RemovableHandle] = []
        self._hooks: tuple[Callable[..., None], Callable[..., None]] | None = None  # pre, post
        #: id -> (the module, the attribute memwall set on it while installed, what that held,
        #: what memwall set)
        self._stepped_around: dict[int, tuple[weakref.ref[torch.nn.Module], str, Any, Any]] = {}
        #: torch.compile(module) wrappers whose module holds a module with a `__call__` of its own
        #: (`_around_compiled_forward`), met in a call: stepped around at each install
        self._hook_guarded: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
        self._own_call_memo: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()
        self._step_hooks: tuple[Callable[..., None], Callable[..., None]] | None = None  # in _STEP_HOOKS
        # fail-safe: an error inside a hook goes to on_error and turns every hook into a no-op
        # (hooks cannot be removed while torch iterates over them)
        self.disabled = False
        self.on_error: Callable[[BaseException, Any], None] | None = None
        self._thread = _thread_id()  # the thread whose ops are recorded (dispatch modes are per thread)
        self._quiet: Any = None  # the warning filter set while the hooks are installed
        self.own_ns = 0  # nanoseconds spent in memwall's module hooks (Capture.own_ns: the rest)
        #: thread name -> calls of modules (and optimizer steps) seen on threads that are not
        #: recorded: work the report does not hold (generate() in a streamer's thread, a server's
        #: workers), which the summary names
        self.other_threads: dict[str, int] = {}
        #: the optimizers whose steps ran on this thread: (class name, fused, torch has a fused form
        #: of it for these parameters ("fused" among its defaults, and no sparse gradient, which
        #: fused forms refuse), it steps sparse gradients), each kind once
        self.optimizers: dict[tuple[str, bool, bool, bool], None] = {}
        self._optimizers_seen: weakref.WeakSet[Any] = weakref.WeakSet()
        self._hook_began = 0  # when the running hook began (a step boundary inside one moves it)
        #: the capture's, while its dispatch mode waits to be put right outside a torch.compile'd
        #: call (Capture.settle_mode): called by the hooks, which run outside such calls
        self.settle_mode: Callable[[], None] | None = None
        if model is not None:
            self._add_root(model)

    # -- names -------------------------------------------------------------------------------
    def _add_root(self, root: torch.nn.Module, prefix: str = "") -> None:
        for name, module in model_paths(root):
            if prefix and module in self._names:
                # a module an earlier model holds too (a torch.fx GraphModule or an exported
                # program's module made from it, sharing its layers): the path it has kept
                continue
            self._names[module] = f"{prefix}.{name}" if prefix and name else prefix or name
        self._roots.append(weakref.ref(root))
        self._root_paths.add(prefix)
        self._param_modules = None
        if self._handles:
            self._step_around_compiled_call_impls(root.modules())
        if self.memory is not None:
            self.memory.add_root(root, self._names)

    def _root_prefix(self, root: torch.nn.Module) -> str:
        """"" for the first model met, or one holding the models met before it; a later model
        with parameters of its own (a teacher, an EMA copy, generate()'s assistant model, a
        pipeline's VAE) is named by what holds it where it is called (`teacher`,
        `assistant_model`, `vae`; else its class), so its modules do not take the paths of the
        first model's (`layers.0` of both read as one)."""
        if next(root.parameters(), None) is None:  # a loss or another module of no parameters: top level, as before
            return ""
        earlier = [r for r in self.roots() if next(r.parameters(), None) is not None]
        if not earlier:
            return ""
        mine = set(root.modules())
        if any(r in mine for r in earlier):  # it holds them: the model they were parts of
            return ""
        taken = {p.split(".", 1)[0] for p in self._names.values()}
        label = holder_name(root, taken) or type(root).__name__
        found, n = label, 2
        while found in taken:
            found, n = f"{label}_{n}", n + 1
        return found

    @property
    def names(self) -> Mapping[torch.nn.Module, str]:
        """Each module's path, as the rows name it (`model_paths`)."""
        return self._names

    def roots(self) -> list[torch.nn.Module]:
        return [r for r in (ref() for ref in self._roots) if r is not None]

    def _param_module(self, param: Any) -> str:
        """The path of the module that owns `param` ("" when none does). The map is made when
        first needed (a backward pass), not when a root is added: forward-only profiles never
        pay for walking every parameter."""
        if self._param_modules is None:
            owners: dict[int, str] = {}
            for ref in self._roots:
                root = ref()
                if root is None:
                    continue
                for name, module in root.named_modules(remove_duplicate=False):
                    for p in module.parameters(recurse=False):
                        owners[id(p)] = self._names.get(module, name)
            self._param_modules = owners
        return self._param_modules.get(id(param), "")

    def _name_of(self, module: torch.nn.Module) -> str | None:
        name = self._names.get(module)
        if name is None:
            original = compiled_module_original(module)  # torch.compile(module): the module it wraps
            if isinstance(original, torch.nn.Module):
                name = self._names.get(original)
        if name is not None:
            return name
        if self._fixed:
            return self._second_model(module)
        if not self.stack:
            root = calling_owner(module) or module
            host = calling_host(root)
            if host is not None and host not in self._names:  # met first: its generate() calls this one
                self._add_root(host, self._root_prefix(host))
            self._add_root(root, self._root_prefix(root))
            return self._names.get(module, "")
        # a module run inside another but not registered as its child: named under the caller of
        # each call, not kept (one such module can serve every layer: transformers 5 runs RoPE as
        # a `kernels` Func module no layer holds, and all its calls went to the first caller)
        caller = self.stack[-1]
        if self._unheld.get(caller) is type(module):
            return caller  # such a module calling another of its kind (kernels' global Func calls the layer's own)
        label = unheld_module_label(type(module))
        name = f"{caller}.{label}" if caller else label
        self._unheld[name] = type(module)
        return name

    def _second_model(self, module: torch.nn.Module) -> str | None:
        """With `model` given: a module it does not hold, called outside every tracked module, with
        parameters of its own or its children's, is a second model: the module whose method calls
        it (a VAE's decode() calling its decoder), else itself, becomes a root named by what it is
        called through (`_root_prefix`), unless that root holds the given model (a wrapper calling
        it, whose paths would replace the model's). Anything else is not tracked (None); a module
        of no parameters is asked again at each call, a cheap test."""
        if self.stack or next(module.parameters(), None) is None:
            return None
        root = calling_owner(module) or module
        mine = set(root.modules())
        if any(r in mine for r in self.roots()):
            return None
        self._add_root(root, self._root_prefix(root))
        return self._names.get(module)

    # -- hooks -------------------------------------------------------------------------------
    def open(self) -> None:
        """Optimizer hooks, for the whole profile: they fire once per optimizer step, and a step
        boundary marked from one must not remove hooks torch is iterating over."""
        self._thread = _thread_id()
        if self._step_hooks is None:
            self._step_hooks = (self._guarded(self._pre_step), self._guarded(self._post_step))
            _STEP_HOOKS.append(self._step_hooks)
            never_compiled(_pre_step_hook)  # Dynamo may be loaded by now
            never_compiled(_post_step_hook)
        if self._unpatch_scaler is None:
            self._unpatch_scaler = watch_grad_scaler(self)

    def close(self) -> None:
        self.remove()
        if self._step_hooks is not None:
            _STEP_HOOKS.remove(self._step_hooks)
            self._step_hooks = None
        self.in_optimizer = 0
        self.compiled_step = self.step_pending = False
        unpatch, self._unpatch_scaler = self._unpatch_scaler, None
        if unpatch is not None:
            unpatch()
        self.in_scaler = 0

    def install(self) -> None:
        """Module hooks, for recorded steps only."""
        if self._handles:
            return
        self._thread = _thread_id()
        pre, post = self._guarded(self._pre_forward), self._guarded(self._post_forward)
        self._handles = [
            nn_module.register_module_forward_pre_hook(pre),
            nn_module.register_module_forward_hook(post, always_call=True),
        ]
        self._hooks = (pre, post)
        hide_from_dynamo(self._thread, [handle.id for handle in self._handles])
        listen_for_modules_compiled_in_place(self._compiled_in_place, True)
        self._quiet = _quiet_compiled_module_warning()
        for root in self.roots():
            self._step_around_compiled_call_impls(root.modules())
        # and those compiled in place anywhere since memwall was imported: a model profiled
        # without `model=` is called through its compiled `_call_impl` before a hook could see it
        self._step_around_compiled_call_impls(modules_compiled_in_place())
        # and torch.compile(module)'s wrappers: one given the uncompiled model (or none) is
        # called before a hook could see it
        self._step_around_compiled_call_impls(compiled_wrappers())
        self._step_around_compiled_call_impls(list(self._hook_guarded))  # made before memwall's import

    def _compiled_in_place(self, module: torch.nn.Module) -> None:
        """A module compiled in place while the hooks are installed (`model.compile()` inside a
        recorded step, as under `memwall run`): stepped around before its first call compiles it."""
        try:
            self._step_around_compiled_call_impls((module,))
        except Exception as err:  # memwall's own trouble: the user's compile() has returned
            self.disabled = True
            if self.on_error is not None:
                self.on_error(err, "stepping around a module compiled in place")

    def _step_around_compiled_call_impls(self, modules: Iterable[torch.nn.Module]) -> None:
        """A module compiled in place whose own `_call_impl` Dynamo compiled (torch 2.15's
        `nn.Sequential(...).compile()`): its compiled call runs with memwall's global hooks out
        of torch's tables, as it was compiled, so it is not compiled again; memwall's hooks are
        called around it instead (the modules inside it are its compiled region's, named from
        its graph). Put back as it was by `remove`. Nothing to look for in a process that never
        loaded Dynamo."""
        if self._hooks is None or "torch._dynamo" not in sys.modules:
            return
        for module in modules:
            if compiled_module_original(module) is not None:
                self._around_compiled_forward(module)
            compiled = module._compiled_call_impl
            if compiled is None or id(module) in self._stepped_around or not compiles_its_call_impl(module):
                continue
            ours = self._around_compiled_call(module, compiled, self._hooks)
            self._stepped_around[id(module)] = (weakref.ref(module), "_compiled_call_impl", compiled, ours)
            module._compiled_call_impl = ours

    def _around_compiled_forward(self, wrapper: torch.nn.Module) -> None:
        """A `torch.compile(module)` wrapper whose module holds a module with a `__call__` of its
        own (transformers before 5.23 gives every decoder layer one; `super().__call__()` calls
        torch's): Dynamo traces that call through torch's `_call_impl`, which reads the global
        module hooks, and guards the graph on there being none. memwall's, there while it
        records, made every recorded call compile the model again (and, past Dynamo's recompile
        limit, run it uncompiled from then on). Its compiled forward runs with memwall's hooks
        out of torch's tables, as it was compiled; the wrapper's own call is seen as before, and
        the modules inside it are its compiled regions', named from their graphs. Put back by
        `remove`. A wrapper made before memwall's import is met at its first call, which has its
        forward already: stepped around from the next call on."""
        if id(wrapper) in self._stepped_around or "forward" not in wrapper.__dict__:
            return
        original = compiled_module_original(wrapper)
        own = self._own_call_memo.get(wrapper)
        if own is None:
            own = isinstance(original, torch.nn.Module) and any(
                type(m).__call__ is not torch.nn.Module.__call__ for m in original.modules())
            self._own_call_memo[wrapper] = own
        if not own:
            return
        self._hook_guarded.add(wrapper)
        forward = wrapper.__dict__["forward"]
        ids = [handle.id for handle in self._handles]

        def compiled_forward(*args: Any, **kwargs: Any) -> Any:
            with global_module_hooks_hidden(ids):
                return forward(*args, **kwargs)

        self._stepped_around[id(wrapper)] = (weakref.ref(wrapper), "forward", forward, compiled_forward)
        wrapper.forward = compiled_forward

    def _around_compiled_call(self, module: torch.nn.Module, compiled: Callable[..., Any],
                              hooks: tuple[Callable[..., None], Callable[..., None]]) -> Callable[..., Any]:
        ids = [handle.id for handle in self._handles]
        pre, post = hooks
        owner = weakref.ref(module)  # the wrapper is set on the module: no cycle through it

        def compiled_call(*args: Any, **kwargs: Any) -> Any:
            me = owner()
            if me is None:
                return compiled(*args, **kwargs)
            pre(me, args)
            out = None
            try:
                with global_module_hooks_hidden(ids):
                    out = compiled(*args, **kwargs)
            finally:
                post(me, args, out)
            return out

        return compiled_call

    def _guarded(self, hook: Callable[..., None]) -> Callable[..., None]:
        """`hook`, made unable to raise into the user's code: memwall's error goes to on_error."""

        def guarded(*args: Any) -> None:
            if _is_compiling() or self.disabled:
                # Dynamo traces module hooks into the graph it builds: memwall's must trace to
                # nothing, or each would break the user's compiled graph in two
                return
            self._hook_began = _perf_counter_ns()
            try:
                if jit_tracing():  # torch.jit.trace would record what the hook reads into its graph
                    with jit_untraced():
                        hook(*args)
                else:
                    hook(*args)
            except Exception as err:
                self.disabled = True
                if self.on_error is not None:
                    self.on_error(err, f"the hook {hook.__name__}")
            self.own_ns += _perf_counter_ns() - self._hook_began

        return never_compiled(guarded)

    def remove(self) -> None:
        if self._handles:
            hide_from_dynamo(self._thread, None)
            listen_for_modules_compiled_in_place(self._compiled_in_place, False)
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for ref, attribute, before, ours in self._stepped_around.values():
            module = ref()
            if module is not None and module.__dict__.get(attribute) is ours:
                setattr(module, attribute, before)  # not if the user compiled it again meanwhile
        self._stepped_around.clear()
        self._hooks = None
        quiet, self._quiet = self._quiet, None
        if quiet is not None:
            _restore_warning_filters(quiet)
        self.stack.clear()
        self.flat.clear()
        self.compiled.clear()
        self._carried = {}
        self.generation_label, self._label_depth = None, -1

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def _other_thread(self) -> bool:
        """A hook fired on a thread that is not recording: module hooks are global, but the
        stack and the forward timeline are this thread's. Autograd's worker threads (CUDA
        backward, and the forwards checkpointing recomputes in it) run inside a Node: ours."""
        return _thread_id() != self._thread and current_autograd_node() is None

    def end_setup(self) -> None:
        """The first work begins (a forward, a backward, an optimizer step): set-up ends now."""
        self.setup_open = False
        self.setup_ended_ns = _perf_counter_ns()

    def _elsewhere(self) -> None:
        """A module or optimizer step ran on a thread memwall does not record: noted by thread."""
        name = threading.current_thread().name
        self.other_threads[name] = self.other_threads.get(name, 0) + 1

    def _torch_subgraph(self, module: torch.nn.Module) -> bool:
        """A GraphModule torch made for a higher-order operator's subgraph (cond's branches,
        scan's combine_fn and its backward), run inside the user's module or inside backward:
        its ops belong to where it runs, it is no module of the user's."""
        return (isinstance(module, torch.fx.GraphModule) and module not in self._names
                and (bool(self.stack) or current_autograd_node() is not None))

    def _pre_forward(self, module: torch.nn.Module, args: Any) -> None:
        if self._other_thread():
            self._elsewhere()
            return
        if self.settle_mode is not None:
            self.settle_mode()
        if self._torch_subgraph(module):
            return
        if self.step_pending:
            took = self.work_begins()
            self._hook_began += took  # the boundary is in neither step's own time (as at _post_step)
            if not self._handles:  # the step it began records nothing (a schedule's idle step)
                return
        if self.setup_open:
            self.end_setup()
        if ("forward" in module.__dict__ and id(module) not in self._stepped_around and self._handles
                and compiled_module_original(module) is not None):
            self._around_compiled_forward(module)  # a torch.compile(module) wrapper not noted
        memory = self.memory
        if memory is not None and memory.unarmed and torch.is_grad_enabled():  # gradients may come
            memory.arm()
        name = self._name_of(module)
        if name is None:  # not part of the tracked model: stay with the enclosing path
            name = self.stack[-1] if self.stack else ""
        if name in self._root_paths and self.generation_label is None:
            # the model itself is called: is it a step of text generation?
            kwargs = forward_kwargs()
            handed = handed_cache(args, kwargs)
            label = generation_phase(args, kwargs, handed)
            if label == "decode" and self.memory is not None:
                # the cache given is the KV cache, also where generate() rebuilt it between
                # calls (beam search's reorder: index_select, made as `other`)
                self.memory.cache_seen(handed)
            if label != "decode" and self._carried and passes_back(self._carried, args, kwargs):
                label = "decode"  # given back the recurrent state its last step returned (RWKV's)
            if label is None and called_by_generate(module):
                label = "prefill"  # generate()'s first call, given no cache (older Mamba)
            if label is not None:
                self.generation_label, self._label_depth = label, len(self.stack)
                self._uncached_call(name, sequence_length(args, kwargs) if label == "prefill" and handed is None
                                    else None)
        self.stack.append(name)
        self._mark(name)
        if is_compiled_module(module):
            self.compiled.append(len(self.stack))
        if isinstance(module, torch.fx.GraphModule):
            code = type(module).forward.__code__
            table = self._flat_tables.get((code, name))
            if table is None:
                table = {line: self.qualify(path, name) for line, path in flat_graph_lines(module).items()}
                self._flat_tables[(code, name)] = table
            if table:
                self.flat.append((len(self.stack), code, table, name))

    def _post_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._other_thread() or self._torch_subgraph(module):
            return
        if self.stack:
            path = self.stack.pop()
            if self.flat and self.flat[-1][0] == len(self.stack) + 1:
                path = self.flat.pop()[3]  # the graph module's own path, not its last node's
            if self.compiled and self.compiled[-1] == len(self.stack) + 1:
                self.compiled.pop()
                self._graph_marked = False
            step_ends = len(self.stack) == self._label_depth and self.generation_label is not None
            cache = generation_cache(output) if step_ends else None
            if step_ends:
                self._carried, states = carried_states(output) if cache is None else ({}, ())
            if self.memory is not None:
                self.memory.module_output(path, output)
                if cache is not None:
                    self.memory.cache_seen(cache)
                elif step_ends:
                    for state in states:  # a recurrent state carried to the next step: its cache
                        self.memory.cache_seen(state)
        if len(self.stack) == self._label_depth:
            self.generation_label, self._label_depth = None, -1
        self._mark(self.stack[-1] if self.stack else "")

    def _uncached_call(self, model: str, tokens: int | None) -> None:
        """A generation call of the model at path `model`: `tokens` for one given no cache (a
        prefill), None for any other. A prefill of the same model one token longer than its last
        call is generate() calling it again without a cache (use_cache=False), recomputing the
        whole sequence; another model's (an assistant's) leaves the run as it is."""
        chain = self._uncached_chain
        if model != self._uncached_model and tokens is None:
            return
        if tokens is not None and chain and model == self._uncached_model and tokens == chain[-1] + 1:
            chain.append(tokens)
            return
        if len(chain) > 1:
            self._uncached_runs.append(chain)
        self._uncached_model, self._uncached_chain = model, [tokens] if tokens is not None else []

    def take_uncached(self) -> list[list[int]]:
        """The runs of generation calls without a cache since the last take (each the tokens of
        its calls, the first a prefill's), the current one ended."""
        self._uncached_call(self._uncached_model, None)
        runs, self._uncached_runs = self._uncached_runs, []
        return runs

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _thread_id() != self._thread:  # another thread's optimizer: neither phase nor step
            self._elsewhere()
            return
        if self.settle_mode is not None:
            self.settle_mode()
        self.in_optimizer += 1
        if optimizer not in self._optimizers_seen:
            self._optimizer_kind(optimizer)
        if self.memory is not None:
            self.memory.optimizer_stepping(optimizer)

    def _optimizer_kind(self, optimizer: Any) -> None:
        """Note what an optimizer stepping for the first time is, for the advice: two of one class
        (a GAN's generator's Adam and its discriminator's fused one) are told apart."""
        try:
            self._optimizers_seen.add(optimizer)
        except TypeError:  # not weakly referable: noted at each step
            pass
        defaults = getattr(optimizer, "defaults", None) or {}
        groups = [g for g in getattr(optimizer, "param_groups", None) or () if isinstance(g, dict)]
        fused = any(g.get("fused") for g in groups) or bool(defaults.get("fused"))
        sparse = any(isinstance(p, torch.Tensor) and p.grad is not None and p.grad.is_sparse
                     for g in groups for p in g.get("params", ()))
        kind = (type(optimizer).__name__, fused, "fused" in defaults and not sparse, sparse)
        self.optimizers[kind] = None

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if _thread_id() != self._thread:
            return
        self.step_pending = False  # a compiled step whose post-step hook runs (a graph break before it)
        self.in_optimizer = max(0, self.in_optimizer - 1)
        self.optimizer_steps += 1
        if self.memory is not None:
            self.memory.optimizer_stepped(optimizer)
        if self.on_optimizer_step is not None:
            # the step boundary: this hook's time so far is the ending step's; what the boundary
            # does (the recorder closing one step, saving a window, opening the next) lies between
            # the two steps' wall times, so it is in neither's own time
            self.own_ns += _perf_counter_ns() - self._hook_began
            try:
                self.on_optimizer_step(optimizer)
            finally:
                self._hook_began = _perf_counter_ns()

    def skipped_step(self, optimizer: Any) -> None:
        """A GradScaler skipped `optimizer`'s step: for on_optimizer_step, its iteration ends as
        one whose step ran would (never an error into the user's loop)."""
        self.scaler_skips += 1
        if self.on_optimizer_step is None or optimizer is None or self.disabled:
            return
        try:
            self.on_optimizer_step(optimizer)
        except Exception as err:
            self.disabled = True
            if self.on_error is not None:
                self.on_error(err, "the GradScaler's skipped step")

    def compile_ns(self) -> int:
        """Nanoseconds torch.compile has spent compiling on the recorded thread (Dynamo's compile
        callbacks, while a profile records), a compile in progress up to now."""
        return compile_time_ns(self._thread)

    # -- compiled optimizer steps -------------------------------------------------------------
    def compiled_step_began(self, inputs: list[Any]) -> bool:
        """A region of a compiled `optimizer.step()` is about to run (hooks/capture.py). Dynamo
        traces the step hooks into its graph as nothing, so none fired: the region's ops are the
        optimizer's, and its inputs that are neither parameters nor gradients are its state.
        Returns whether this call marked the step (False inside a step a hook already marked)."""
        if self.in_optimizer or self.disabled or _thread_id() != self._thread:
            return False
        self.in_optimizer += 1
        self.compiled_step = True
        if self.setup_open:
            self.end_setup()
        if self.memory is not None:
            self.memory.compiled_step_inputs(inputs)
        return True

    def compiled_step_ended(self) -> None:
        self.in_optimizer = max(0, self.in_optimizer - 1)
        self.compiled_step = False
        if self.on_optimizer_step is not None:
            self.step_pending = True

    def work_begins(self) -> int:
        """Work outside the optimizer begins (a module's forward, a compiled region): a compiled
        optimizer step that ended before it ends the step now, for on_optimizer_step. Returns the
        nanoseconds the boundary took, which the caller leaves out of memwall's own time (it is
        in neither step's)."""
        if not self.step_pending or self.in_optimizer or self.on_optimizer_step is None:
            return 0
        self.step_pending = False
        began = _perf_counter_ns()
        self.on_optimizer_step(None)
        return _perf_counter_ns() - began

    # -- backward attribution ----------------------------------------------------------------
    def in_flat_graph(self, made_node: bool) -> str:
        """The module of the op running, inside a flat graph module's forward (`flat` not empty;
        the graph innermost): the module its graph node names, read from the line of the graph's
        generated code that calls it. It becomes the innermost path (for the op's memory and its
        backward), from this op's autograd node on when it `made_node`."""
        depth, code, lines, own = self.flat[-1]
        stack = self.stack
        if depth != len(stack):  # a module the graph calls is running
            return stack[-1]
        path: str = own
        frame: FrameType | None = sys._getframe(1)
        for _ in range(GRAPH_FRAMES):
            if frame is None:
                break
            if frame.f_code is code:
                path = lines.get(frame.f_lineno, own)
                break
            frame = frame.f_back
        if path != stack[-1]:
            stack[-1] = path
            # the op's autograd node, made above memwall's dispatch mode before it ran, is the
            # newest: the path is this op's from that node on
            self._mark(path, peek_sequence_nr() - 1 if made_node else None)
        return path

    def in_graph_forward(self, made_node: bool) -> str | None:
        """Outside any module's forward, or in a compiled module's (`compiled`): the module of the
        op running if a graph module's generated forward runs it without the module being called
        (Dynamo's `eager` and `aot_eager` backends: memwall's module hooks are hidden from
        Dynamo, which inlines the model's modules into that graph), read from the line that calls
        it, as `in_flat_graph` reads it, below the enclosing module; it names this op's autograd
        node (when it `made_node`) and those after it, until an op outside such a graph. None
        outside one."""
        path = graph_forward_path(sys._getframe(1))
        within = self.stack[-1] if self.stack else ""
        if path is None:
            if self._graph_marked:  # the graph ended: ops are the enclosing module's again
                self._graph_marked = False
                self._mark(within)
            return None
        path = self.qualify(path, within)
        if made_node:  # (an AOTAutograd graph's forward makes none: its one node is the module's)
            self._graph_marked = True
            self._mark(path, peek_sequence_nr() - 1)
        return path

    def in_graph_backward(self, node: Any) -> str:
        """The module of a backward op an AOTAutograd graph's node runs (`aot_eager`): the one its
        line of the backward graph names; else, as for any node, the module that made it."""
        path = graph_forward_path(sys._getframe(1))
        within = self.path_for_node(node)
        return within if path is None else self.qualify(path, within)

    def _mark(self, path: str, seq: int | None = None) -> None:
        self._last_node = None  # never hold an autograd node across forwards
        if seq is None:
            seq = peek_sequence_nr()
        if self._seqs and self._seqs[-1] == seq:
            # no autograd node was created since the last change: only the newest path counts
            self._paths[-1] = path
        else:
            self._seqs.append(seq)
            self._paths.append(path)

    def mark_backward_nodes(self, path: str) -> None:
        """The autograd nodes a backward op just made (under create_graph=True: made before the op
        reached memwall's mode, the newest the one with the last sequence number) are of `path`,
        the module whose forward op it differentiates: a second backward through them (a
        gradient penalty's) names that module, not the top level. Only a node newer than the
        timeline's newest is marked (an op that made none would rename the node before it);
        sequence numbers only grow, so the timeline stays sorted."""
        seq = peek_sequence_nr() - 1
        if not self._seqs or seq > self._seqs[-1]:
            self._mark(path, seq)

    def qualify(self, path: str, within: str) -> str:
        """A module path a compiled region's graph names, relative to the module it was compiled
        for (`h.0.attn`), as this tracker names that module (`_orig_mod.h.0.attn` for a model
        compiled whole): the shortest known name that ends with it, under `within` where given."""
        if not path:
            return within
        count, answers = self._qualified
        if count != len(self._names):  # every region call asks: the names are scanned once, not each time
            answers = {}
            self._qualified = (len(self._names), answers)
        found = answers.get((path, within))
        if found is None:
            found = answers[(path, within)] = self._qualify(path, within)
        return found

    def _qualify(self, path: str, within: str) -> str:
        prefix = f"{within}." if within else ""
        best = None
        for name in self._names.values():
            if (name == path or name.endswith("." + path)) and name.startswith(prefix) and (
                    best is None or len(name) < len(best)):
                best = name
        found = best if best is not None else f"{prefix}{path}"
        # a module compiled whole (torch.compile(module)) is an OptimizedModule holding the
        # module as `_orig_mod`: named as its eager run names it
        return _without_compile_wrapper(found)

    def path_for_node(self, node: Any) -> str:
        """The module path whose forward created `node` ("" when unknown)."""
        if node is self._last_node:
            return self._last_path
        seq = node_sequence_nr(node)
        if seq == ACCUMULATE_GRAD_SEQUENCE_NR:
            variable = node_variable(node)
            path = self._param_module(variable) if variable is not None else ""
        else:
            index = bisect.bisect_right(self._seqs, seq) - 1
            path = self._paths[index] if index >= 0 else ""
        self._last_node, self._last_path = node, path
        return path

    def end_step(self) -> None:
        """Forget forward timelines older than the previous step (its backward is done); set-up
        ends with the first step."""
        self.setup_open = False
        del self._seqs[: self._kept_from]
        del self._paths[: self._kept_from]
        self._kept_from = len(self._seqs)
        self._last_node = None


#: the GradScaler methods whose work is the scaler's: unscaling and inf checks, the optimizer step
#: it guards (whose update stays the optimizer's), the scale's update
_SCALER_METHODS = ("unscale_", "step", "update")


def watch_grad_scaler(tracker: ModuleTracker) -> Callable[[], None]:
    """Count the recording thread's calls into `torch.amp.GradScaler`'s methods on `tracker`
    (`in_scaler`), and return what undoes it. torch has no hook for them; the methods are wrapped
    on the class (instances made before the profile included) and run unchanged."""
    cls = torch.amp.GradScaler
    originals = {name: cls.__dict__[name] for name in _SCALER_METHODS if name in cls.__dict__}

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        guarding = original.__name__ == "step"

        @functools.wraps(original)
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _thread_id() != tracker._thread:
                return original(self, *args, **kwargs)
            tracker.in_scaler += 1
            steps = tracker.optimizer_steps
            try:
                out = original(self, *args, **kwargs)
            finally:
                tracker.in_scaler -= 1
            if guarding and tracker.optimizer_steps == steps and not tracker.in_scaler:
                # the scaler skipped the optimizer's step (inf or NaN gradients: fp16's first
                # steps while the scale settles): the iteration ends here all the same
                tracker.skipped_step(args[0] if args else kwargs.get("optimizer"))
            return out

        return method

    wrapped = {name: wrap(original) for name, original in originals.items()}
    for name, method in wrapped.items():
        setattr(cls, name, method)

    def undo() -> None:
        for name, original in originals.items():
            if cls.__dict__.get(name) is wrapped[name]:  # not re-wrapped by a profile opened since
                setattr(cls, name, original)

    return undo


#: frames above a module call searched for a method of a module that holds it
_OWNER_FRAMES = 32


def calling_owner(module: torch.nn.Module) -> torch.nn.Module | None:
    """The nearest module, among the `self` of the calling frames, that holds `module` as a
    descendant: the LightningModule whose `training_step` (not its `forward`) calls `self.net`, a
    wrapper that calls `self.model` from a method of its own. None when the module is called from
    elsewhere (a script, a Trainer that is no module). Asked once per new root, not per call."""
    return _calling_self(lambda owner: owner is not module and _holds(owner, module))


def calling_host(module: torch.nn.Module) -> torch.nn.Module | None:
    """The nearest model, among the `self` of the calling frames, with parameters of its own and
    not holding `module`, whose method calls it: the model whose `generate()` runs an assistant
    model (assisted decoding calls the assistant before the model itself). None when none is."""
    return _calling_self(lambda owner: owner is not module and next(owner.parameters(), None) is not None
                         # neither holding it nor held by it (the frames of its own submodules' calls)
                         and not _holds(owner, module) and not _holds(module, owner))


def holder_name(module: torch.nn.Module, taken: Collection[str] = ()) -> str | None:
    """The name `module` is called through, from the nearest calling frame outside torch's module
    code and memwall's: an attribute of the frame's `self` that holds it (a pipeline's `vae`,
    generate()'s `assistant_model`), else a local variable bound to it (`teacher`). A name in
    `taken` (another model's, or a part of the first model's: a helper's parameter `model`) is
    passed over for one of an outer frame (the caller's `ref`), where there is one. None when
    none is found. Asked once per new root, not per call."""
    first = None
    for frame in _calling_frames():
        if frame.f_code.co_filename in _OWN_FILES or frame.f_code.co_filename.startswith(_TORCH_DIR):
            # torch's own frames on the way (torch.fx's `obj`, torch.jit's `mod`): not the user's names
            continue
        for name in _names_in(frame, module):
            if name not in taken:
                return name
            first = first or name
    return first


def _names_in(frame: FrameType, module: torch.nn.Module) -> Iterator[str]:
    """The names `module` has in a frame: the attributes of its `self` holding it, then its locals."""
    local = frame.f_locals
    owner = local.get("self")
    if owner is not None and owner is not module:
        held = getattr(owner, "__dict__", None)
        if isinstance(held, dict):
            for name, value in held.items():
                if value is module and name.isidentifier():
                    yield name.lstrip("_") or name
            if isinstance(owner, torch.nn.Module):  # registered submodules live in _modules
                for name, value in owner._modules.items():
                    if value is module:
                        yield name
    for name, value in local.items():
        if value is module and name != "self" and name.isidentifier():
            yield name


def _calling_frames() -> Iterator[FrameType]:
    """The frames calling memwall's module hook, nearest first, at most `_OWNER_FRAMES`."""
    frame = inspect.currentframe()
    for _ in range(_OWNER_FRAMES):
        if frame is None:
            return
        yield frame
        frame = frame.f_back


def _calling_self(wanted: Callable[[torch.nn.Module], bool]) -> torch.nn.Module | None:
    """The nearest calling frame's `self` that is a module `wanted` accepts."""
    for frame in _calling_frames():
        owner = frame.f_locals.get("self")
        if isinstance(owner, torch.nn.Module) and wanted(owner):
            return owner
    return None


def _holds(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


#: frames `holder_name` passes over: torch's module call and memwall's hooks
_OWN_FILES = frozenset({torch.nn.modules.module.__file__, __file__})
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def handed_cache(args: Any, kwargs: dict[str, Any]) -> Any:
    """The generation cache a model call is given (see `generation_phase`), or None."""
    for value in kwargs.values():
        if _is_cache(value) or _is_legacy_cache(value):
            return value
    for value in args if isinstance(args, tuple) else ():
        if _is_cache(value):
            return value
    return None


_UNSET: Any = object()


def generation_phase(args: Any, kwargs: dict[str, Any], cache: Any = _UNSET) -> str | None:
    """"prefill" for a model call that fills a KV cache, "decode" for one that extends it, None
    for a call that keeps no cache (training, plain inference).

    A call is recognised by what it is passed, not by an argument's name (transformers renamed
    `past_key_values` to `cache`; Mamba's was `cache_params`): a cache object under any name or
    position (anything with `get_seq_length`, as transformers' Cache classes have, or a class
    named like one, `MambaCache`), or the legacy tuple of per-layer (key, value) tensors;
    `use_cache=True` with no cache is a model about to make one (prefill). A cache already
    holding tokens (or, for caches of recurrent state such as Mamba's, holding any state)
    makes the call a decode step. `cache`: `handed_cache(args, kwargs)`, where already found."""
    if cache is _UNSET:
        cache = handed_cache(args, kwargs)
    if cache is None:
        return "prefill" if kwargs.get("use_cache") is True else None
    return "decode" if _cache_length(cache) > 0 else "prefill"


def generation_cache(output: Any) -> Any:
    """The KV cache a generation call returns, found by what it is, not by its field's name
    (transformers renamed `past_key_values` to `cache`, and reading the old name from a new
    output warns): a model output's values (a dict-like ModelOutput) or a tuple's items."""
    if isinstance(output, torch.Tensor) or output is None:
        return None
    values = output.values() if callable(getattr(output, "values", None)) else \
        output if isinstance(output, tuple) else ()
    for value in values:
        if _is_cache(value) or _is_legacy_cache(value):
            return value
    return None


def carried_states(output: Any) -> tuple[dict[int, tuple[int, ...]], tuple[Any, ...]]:
    """The non-empty lists (or tuples) of tensors among a generation step's outputs (a model
    output's values or a tuple's items), which a next step may be given back as its recurrent
    state: by id, with their tensors' ids (so that an object made later at a freed one's address
    is not taken for it), and the lists themselves."""
    if isinstance(output, torch.Tensor) or output is None:
        return {}, ()
    values = output.values() if callable(getattr(output, "values", None)) else \
        output if isinstance(output, tuple) else ()
    states = tuple(v for v in values if isinstance(v, (list, tuple)) and v
                   and all(isinstance(t, torch.Tensor) for t in v))
    return {id(v): tuple(map(id, v)) for v in states}, states


def passes_back(carried: dict[int, tuple[int, ...]], args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a model call is given one of the states its last generation step returned."""
    for value in (*kwargs.values(), *(args if isinstance(args, tuple) else ())):
        ids = carried.get(id(value))
        if ids is not None and isinstance(value, (list, tuple)) and tuple(map(id, value)) == ids:
            return True
    return False


def _is_cache(value: Any) -> bool:
    if value is None or isinstance(value, (torch.Tensor, int, float, str, bool)):
        return False
    return callable(getattr(value, "get_seq_length", None)) or type(value).__name__.endswith("Cache")


#: a generation call's token ids or embeddings, by the names transformers gives them (an
#: encoder-decoder's decoder is given the sequence it grows)
_SEQUENCE_ARGUMENTS = ("decoder_input_ids", "input_ids", "decoder_inputs_embeds", "inputs_embeds")


def sequence_length(args: Any, kwargs: dict[str, Any]) -> int | None:
    """The tokens per sequence a model call is given (its ids' or embeddings' second dim), or
    None where no argument says."""
    for name in _SEQUENCE_ARGUMENTS:
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    first = args[0] if isinstance(args, tuple) and args else None
    if isinstance(first, torch.Tensor) and first.dim() >= 2 and not first.is_floating_point():
        return int(first.shape[1])
    return None


def called_by_generate(module: Any) -> bool:
    """Whether the model is being called from its own `generate()` (a few frames up: generate
    calls a decoding loop such as `_sample`, which calls the model)."""
    return find_frame("generate", skip=1, limit=8, accept=lambda frame: frame.f_locals.get("self") is module) \
        is not None


def _is_legacy_cache(value: Any) -> bool:
    """((key, value), ...) per layer, each [batch, heads, seq, head_dim] (transformers 4.x)."""
    if not isinstance(value, (list, tuple)) or not value:
        return False
    first = value[0]
    return (isinstance(first, (list, tuple)) and len(first) >= 2 and isinstance(first[0], torch.Tensor)
            and first[0].dim() == 4)


def _cache_length(cache: Any) -> int:
    """Tokens the cache holds; for a cache that cannot say (recurrent state only), 1 when it
    holds any state and 0 when empty."""
    if _is_legacy_cache(cache):
        return int(cache[0][0].shape[-2])
    try:
        return int(cache.get_seq_length())
    except Exception:  # a cache of recurrent state only (Mamba's): look for what it holds
        return 1 if _holds_state(cache) else 0


def _holds_state(value: Any, depth: int = 0) -> bool:
    """Whether any tensor with elements is reachable from `value` (a few levels deep)."""
    if isinstance(value, torch.Tensor):
        return value.numel() > 0
    if depth >= 4:
        return False
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    elif hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
        items = vars(value).values()
    else:
        return False
    return any(_holds_state(item, depth + 1) for item in items)


#: wrappers that run one module of theirs as their own forward: (the class's module, its name) ->
#: the attributes that hold it. torch.compile's OptimizedModule (`_orig_mod`), DDP, DataParallel and
#: DeepSpeed's engine (`module`), FSDP's first API (`_fsdp_wrapped_module`), torch's activation
#: checkpoint and offload wrappers (`_checkpoint_wrapped_module`) and Lightning Fabric's
#: (`_forward_module`, `_original_module`)
_WRAPPERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("torch._dynamo.eval_frame", "OptimizedModule"): ("_orig_mod",),
    ("torch.nn.parallel.distributed", "DistributedDataParallel"): ("module",),
    ("torch.nn.parallel.data_parallel", "DataParallel"): ("module",),
    ("deepspeed.runtime.engine", "DeepSpeedEngine"): ("module",),
    ("torch.distributed.fsdp.fully_sharded_data_parallel", "FullyShardedDataParallel"): ("_fsdp_wrapped_module",),
    ("torch.distributed.algorithms._checkpoint.checkpoint_wrapper", "CheckpointWrapper"):
        ("_checkpoint_wrapped_module",),
    ("torch.distributed.algorithms._checkpoint.checkpoint_wrapper", "OffloadWrapper"):
        ("_checkpoint_wrapped_module",),
    ("lightning.fabric.wrappers", "_FabricModule"): ("_forward_module", "_original_module"),
    ("lightning_fabric.wrappers", "_FabricModule"): ("_forward_module", "_original_module"),
}


def model_paths(root: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """Every module under `root` with its path, as `named_modules(remove_duplicate=False)` walks
    them, but a module a wrapper runs as its own forward (`_WRAPPERS`) named as the wrapper is:
    a DDP, FSDP, Fabric or compiled model's modules read as the bare model's (`layers.0`, not
    `module.layers.0` or `_forward_module.module.layers.0`), so its report reads, and `memwall
    diff` pairs, as a single-process eager run's."""
    todo: list[tuple[str, torch.nn.Module]] = [("", root)]
    while todo:
        path, module = todo.pop()
        yield path, module
        through = next((found for cls in type(module).__mro__  # a wrapper's subclass too
                        if (found := _WRAPPERS.get((cls.__module__, cls.__name__)))), ())
        children = [(path if name in through else f"{path}.{name}" if path else name, child)
                    for name, child in module._modules.items() if child is not None]
        todo.extend(reversed(children))  # depth first, in registration order, as named_modules


def _without_compile_wrapper(path: str) -> str:
    """`path` without the `_orig_mod` steps of torch.compile's OptimizedModule wrappers."""
    if "_orig_mod" not in path:  # nearly every path: no split and join
        return path
    return ".".join(part for part in path.split(".") if part != "_orig_mod")


#: what torch says when an OptimizedModule (torch.compile(module)) is called while any global
#: module hook is set: memwall's hooks are, while it records, and it names such a module as its
#: eager run names it (the hooks firing for the wrapper and for the module change nothing)
_COMPILED_MODULE_WARNING = r"Using `torch\.compile\(module\)` when there are global hooks on modules"


def _quiet_compiled_module_warning() -> Any:
    """Silence torch's warning about global hooks on compiled modules while memwall's hooks are
    set (the warning is about them, said at the user's call); `_restore_warning_filters` takes
    the filter away again, so a user's own global hooks are warned about outside recording."""
    warnings.filterwarnings("ignore", message=_COMPILED_MODULE_WARNING, category=UserWarning)
    return warnings.filters[0]


def _restore_warning_filters(entry: Any) -> None:
    filters: Any = warnings.filters  # typeshed says Sequence; it is the module's list
    try:
        filters.remove(entry)
    except ValueError:  # the user reset the filters meanwhile (catch_warnings, simplefilter)
        return
    mutated = getattr(warnings, "_filters_mutated", None)  # drop the cached decisions of the filter
    if callable(mutated):
        mutated()
