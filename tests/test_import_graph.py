"""memwall's import graph, read from the installed package's sources: no module imports itself
back through others, and private torch APIs are used in hooks/_torch_private.py only.

A cycle works until someone imports the modules in another order; a lazy import inside a
function only hides it, so every import counts but those under `if TYPE_CHECKING:` (never run).
Private torch names change between torch releases without notice: keeping them in one module
makes a torch upgrade break one file, where each use says why no public API serves.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("memwall_plugin", "memwall_plugin.hooks", "memwall_plugin.tb_plugin")
#: the one module allowed to use private torch APIs
PRIVATE_TORCH_HOME = "memwall_plugin.hooks._torch_private"
#: private attributes of torch objects (op overloads, dispatch modes, autograd nodes, compiled
#: modules) that a use reaches by attribute or by getattr's string, on whatever variable holds them
PRIVATE_ATTRS = frozenset({
    "_schema", "_overloadname", "_opname", "_overloadpacket", "_should_skip_dynamo",
    "_get_current_dispatch_mode_stack", "_orig_mod", "_sequence_nr", "_nested_tensor_size", "_op_dk",
})
_ATTR_FUNCTIONS = frozenset({"getattr", "hasattr", "setattr", "delattr"})


@dataclass(frozen=True)
class Module:
    name: str
    source: str
    is_package: bool
    path: str = ""


@dataclass(frozen=True)
class Use:
    """One private torch name a module uses: where, and the name as written."""

    line: int
    name: str


# -- the installed package -------------------------------------------------------------------


def _walk(name: str, path: list[str]) -> Iterator[Module]:
    for info in pkgutil.iter_modules(path, name + "."):
        spec = info.module_finder.find_spec(info.name, None)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue
        yield Module(info.name, Path(spec.origin).read_text(), info.ispkg, spec.origin)
        if info.ispkg and info.name not in PACKAGES and spec.submodule_search_locations:
            yield from _walk(info.name, list(spec.submodule_search_locations))


def installed_modules() -> dict[str, Module]:
    """Every module of the installed memwall, found from its packages' __path__ (so the test
    reads what `import memwall_plugin` runs, wherever the package-dir mapping puts it)."""
    modules: dict[str, Module] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        assert package.__file__ is not None
        modules[name] = Module(name, Path(package.__file__).read_text(), True, package.__file__)
        for module in _walk(name, list(package.__path__)):
            modules[module.name] = module
    return modules


# -- the import graph ------------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at module level, in functions and classes, in
    either branch of an `if`, except the body of `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _known_prefix(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return None


def _targets(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> Iterator[str]:
    """The known modules an import statement imports: `from a.b import c` is module a.b.c when
    that is a module, else a.b (c is a name defined in it)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            found = _known_prefix(alias.name, known)
            if found is not None:
                yield found
        return
    base = node.module or ""
    if node.level:
        package = module.name if module.is_package else module.name.rpartition(".")[0]
        parts = package.split(".")
        package = ".".join(parts[: len(parts) - (node.level - 1)])
        base = f"{package}.{base}" if base else package
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            yield f"{base}.{alias.name}"
        else:
            found = _known_prefix(base, known)
            if found is not None:
                yield found


def import_graph(modules: dict[str, Module]) -> dict[str, dict[str, int]]:
    """module -> {module it imports: the line of the first such import}."""
    known = set(modules)
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for node in _imports(ast.parse(module.source)):
            for target in _targets(module, node, known):
                if target != module.name:
                    edges = graph[module.name]
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module: each is a cycle (or
    several sharing modules), modules sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycles(graph: dict[str, dict[str, int]], components: list[list[str]]) -> str:
    """Each cycle's modules, then every import inside it (`module:line -> module`): cutting
    imports from this list until none closes a loop breaks the cycle."""
    lines = []
    for component in components:
        members = set(component)
        lines.append(" <-> ".join(component))
        for source in component:
            for target, line in sorted(graph[source].items()):
                if target in members:
                    lines.append(f"    {source}:{line} -> {target}")
    return "\n".join(lines)


# -- private torch names ---------------------------------------------------------------------


def _private(component: str) -> bool:
    """A name torch keeps private: one leading underscore (dunders are protocol, public)."""
    return component.startswith("_") and not (component.startswith("__") and component.endswith("__"))


def _private_path(parts: list[str]) -> bool:
    """A torch dotted path with a private component; op names under torch.ops (aten._softmax)
    are the dispatcher's registered operators, not Python APIs."""
    if parts[:1] != ["torch"]:
        return False
    if parts[1:2] == ["ops"]:
        return any(p in PRIVATE_ATTRS for p in parts)
    return any(_private(p) or p in PRIVATE_ATTRS for p in parts[1:])


def _torch_names(tree: ast.AST) -> dict[str, list[str]]:
    """Local names bound to torch modules or objects by imports (`import torch`, `from
    torch.distributed import distributed_c10d`), as the torch path each stands for."""
    names: dict[str, list[str]] = {}
    for node in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "torch":
                    names[alias.asname or "torch"] = parts if alias.asname else ["torch"]
        elif node.level == 0 and node.module is not None and node.module.split(".")[0] == "torch":
            for alias in node.names:
                names[alias.asname or alias.name] = [*node.module.split("."), alias.name]
    return names


def _chain(node: ast.expr) -> tuple[str | None, list[str]]:
    """(root name, attributes) of `a.b.c`; root None when the chain starts at a call or subscript."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return (node.id if isinstance(node, ast.Name) else None), parts


class _PrivateFinder(ast.NodeVisitor):
    def __init__(self, torch_names: dict[str, list[str]]) -> None:
        self.torch_names = torch_names
        self.uses: list[Use] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _private_path(alias.name.split(".")):
                self.uses.append(Use(node.lineno, alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            return
        for alias in node.names:
            if _private_path([*node.module.split("."), alias.name]):
                self.uses.append(Use(node.lineno, f"{node.module}.{alias.name}" if _private(alias.name)
                                     else node.module))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        root, parts = _chain(node)
        if root is not None and root in self.torch_names:
            path = [*self.torch_names[root], *parts]
            if _private_path(path):
                self.uses.append(Use(node.lineno, ".".join(path)))
            return  # the whole chain is judged here, once, not again for each of its prefixes
        if node.attr in PRIVATE_ATTRS:
            self.uses.append(Use(node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in _ATTR_FUNCTIONS and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            name = node.args[1].value
            root, parts = _chain(node.args[0])
            on_torch = root is not None and root in self.torch_names and _private(name)
            if name in PRIVATE_ATTRS or on_torch:
                self.uses.append(Use(node.lineno, f'{node.func.id}({ast.unparse(node.args[0])}, "{name}")'))
        self.generic_visit(node)

    def _define(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name in PRIVATE_ATTRS:  # overriding torch's private hook (a mode's _should_skip_dynamo)
            self.uses.append(Use(node.lineno, f"def {node.name}"))
        self.generic_visit(node)

    visit_FunctionDef = _define
    visit_AsyncFunctionDef = _define


def private_torch_uses(source: str) -> list[Use]:
    tree = ast.parse(source)
    finder = _PrivateFinder(_torch_names(tree))
    finder.visit(tree)
    return sorted(set(finder.uses), key=lambda u: (u.line, u.name))


# -- the checks on memwall -------------------------------------------------------------------


def test_no_import_cycles():
    graph = import_graph(installed_modules())
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles (every import counts, lazy ones too):\n" + describe_cycles(graph, cycles)


def test_only_hooks_import_torch_private():
    """The core (memwall_plugin, the tab) reaches torch's internals through hooks/ only."""
    graph = import_graph(installed_modules())
    outside = sorted(name for name, deps in graph.items()
                     if PRIVATE_TORCH_HOME in deps and not name.startswith("memwall_plugin.hooks."))
    assert not outside, f"modules outside hooks/ importing {PRIVATE_TORCH_HOME}: {outside}"


def test_private_torch_names_only_in_torch_private():
    modules = installed_modules()
    assert PRIVATE_TORCH_HOME in modules
    found = [f"{name}:{use.line}: {use.name}"
             for name, module in sorted(modules.items()) if name != PRIVATE_TORCH_HOME
             for use in private_torch_uses(module.source)]
    assert not found, f"private torch names outside {PRIVATE_TORCH_HOME}:\n" + "\n".join(found)


def test_the_walk_finds_every_package_and_the_mapped_folders():
    modules = installed_modules()
    # hooks/ and tb_plugin/ sit beside memwall_plugin/ in the checkout, mapped in by package-dir
    for name in ("memwall_plugin.report", "memwall_plugin.hooks.capture", "memwall_plugin.tb_plugin.plugin",
                 PRIVATE_TORCH_HOME):
        assert name in modules


# -- the finders, on sources made up to show each rule ----------------------------------------


def _graph(**sources: str) -> dict[str, dict[str, int]]:
    modules = {f"pkg.{name}": Module(f"pkg.{name}", text, False) for name, text in sources.items()}
    modules["pkg"] = Module("pkg", "", True)
    return import_graph(modules)


def test_a_two_module_cycle_is_found():
    graph = _graph(a="import pkg.b\n", b="from pkg import a\n")
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]
    assert "pkg.b:1 -> pkg.a" in describe_cycles(graph, strongly_connected(graph))


def test_a_lazy_import_inside_a_function_still_closes_a_cycle():
    graph = _graph(a="from pkg.b import thing\n", b="def f():\n    from pkg.a import g\n    return g\n")
    assert strongly_connected(graph) == [["pkg.a", "pkg.b"]]


def test_a_three_module_loop_is_one_cycle_and_a_chain_none():
    assert strongly_connected(_graph(a="import pkg.b", b="import pkg.c", c="from . import a")) == [
        ["pkg.a", "pkg.b", "pkg.c"]]
    assert strongly_connected(_graph(a="import pkg.b", b="import pkg.c", c="import os")) == []


def test_an_import_under_type_checking_is_ignored():
    b = ("from typing import TYPE_CHECKING\nimport typing\n"
         "if TYPE_CHECKING:\n    from pkg.a import A\n"
         "if typing.TYPE_CHECKING:\n    import pkg.a\n")
    assert strongly_connected(_graph(a="from pkg.b import B\n", b=b)) == []
    # the else branch does run
    b_else = "if TYPE_CHECKING:\n    pass\nelse:\n    from pkg.a import A\n"
    assert strongly_connected(_graph(a="from pkg.b import B\n", b=b_else)) == [["pkg.a", "pkg.b"]]


def _names(source: str) -> list[str]:
    return [use.name for use in private_torch_uses(source)]


def test_private_torch_attribute_chains_are_flagged():
    assert _names("import torch\nx = torch._C.x\n") == ["torch._C.x"]
    assert _names("import torch\ntorch._C._cuda_getDevice()\n") == ["torch._C._cuda_getDevice"]
    assert _names("import torch\nf = torch._dynamo\n") == ["torch._dynamo"]
    # through a name an import bound to a torch module
    assert _names("from torch.distributed import distributed_c10d\ndistributed_c10d._get_default_store()\n") == [
        "torch.distributed.distributed_c10d._get_default_store"]


def test_private_torch_imports_are_flagged():
    assert _names("from torch.utils._python_dispatch import TorchDispatchMode\n") == [
        "torch.utils._python_dispatch"]
    assert _names("import torch._ops\n") == ["torch._ops"]
    assert _names("from torch import _C\n") == ["torch._C"]
    assert _names("def f():\n    from torch.distributed._tools import x\n") == ["torch.distributed._tools"]


def test_known_private_attributes_are_flagged_on_any_object():
    assert _names("def f(func):\n    return func._schema.arguments\n") == ["func._schema"]
    assert _names("name = getattr(op, '_overloadname', None)\n") == ['getattr(op, "_overloadname")']
    assert _names("class M:\n    @classmethod\n    def _should_skip_dynamo(cls):\n        return False\n") == [
        "def _should_skip_dynamo"]


def test_public_torch_names_are_not_flagged():
    assert _names("import torch\ny = torch.nn.functional.relu(x)\n") == []
    assert _names("import torch.nn.functional as F\nF.relu(x)\n") == []
    assert _names("class M:\n    def __torch_dispatch__(self, func, types, args=(), kwargs=None):\n"
                  "        return torch.Tensor.__torch_dispatch__\n") == []
    # an operator's name is the dispatcher's, not a Python API
    assert _names("import torch\nop = torch.ops.aten._softmax.default\n") == []
    # memwall's own private names are its business
    assert _names("import torch\nclass C:\n    def f(self):\n        return self._capture._mode\n") == []
