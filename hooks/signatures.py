"""What one op call looked like, as capture keys it and formulas read it: the hashable
signature of its arguments and results, and the `OpCall` built from a signature and the op's
schema the first time a report asks for it.

Python float arguments enter a signature as a `FloatArg` (zero, one or other): their values
(learning rates, bias corrections) change every step and would make capture's table grow without
bound, while the formulas only ask whether a term is present or a scale multiplies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import is_higher_order_op, nested_component_shapes, op_schema, overload_name

from memwall_plugin.records import FACTS_KEY, FloatArg, NestedMeta, OpCall, TensorMeta, float_arg

_Tensor = torch.Tensor


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, running = [], 1
    for n in reversed(shape):
        strides.append(running)
        running *= max(n, 1)
    return tuple(reversed(strides))


_DTYPE_NAMES: dict[torch.dtype, tuple[str, int]] = {}
_NESTED = "<nested>"  # marks a nested tensor's signature: (packed size, (_NESTED, shapes), dtype)


def is_tensor_key(value: Any) -> bool:
    """Whether a signature is a tensor's: (shape, stride, dtype)."""
    return type(value) is tuple and len(value) == 3 and type(value[0]) is torch.Size


def meta_of_key(key: Any) -> TensorMeta:
    """The TensorMeta formulas read for a tensor's signature."""
    shape, stride, dtype = key
    named = _DTYPE_NAMES.get(dtype)
    if named is None:
        named = _DTYPE_NAMES[dtype] = (_dtype_name(dtype), dtype.itemsize)
    if stride and stride[0] == _NESTED:  # a nested tensor: its packed elements, and its components
        return NestedMeta(tuple(shape), (1,), named[0], named[1], stride[1])
    return TensorMeta(tuple(shape), tuple(stride), named[0], named[1])


def _meta_value(value: Any) -> Any:
    """An argument's signature as formulas see it: tensors become TensorMeta, lists tuples."""
    if is_tensor_key(value):
        return meta_of_key(value)
    if isinstance(value, (list, tuple)):
        return tuple(_meta_value(v) for v in value)
    if type(value) is float:  # a schema default (captured floats are FloatArgs already)
        return float_arg(value)
    if isinstance(value, (bool, int, str, FloatArg)) or value is None:
        return value
    return str(value)  # dtype, device, layout, memory_format: their names


_NO_DEFAULT = object()


@dataclass(frozen=True, slots=True)
class Schema:
    """What build_call needs from an overload's schema, read once (pybind calls are slow)."""

    op: str
    overload: str
    arguments: tuple[tuple[str, Any], ...]  # (name, default or _NO_DEFAULT)
    mutated: tuple[str, ...]
    out_args: tuple[str, ...]
    returns_alias: tuple[bool, ...]


_SCHEMAS: dict[Any, Schema] = {}  # overload -> facts; bounded by the number of aten overloads


def schema_of(func: Any) -> Schema:
    """What build_call needs from an overload's schema, read once per overload."""
    facts = _SCHEMAS.get(func)
    if facts is None and is_higher_order_op(func):
        # no schema: arguments are named by position (build_call), nothing is declared mutated
        facts = _SCHEMAS[func] = Schema(f"higher_order.{func.name()}", "default", (), (), (), ())
    elif facts is None:
        schema = op_schema(func)
        arguments, mutated, out_args = [], [], []
        for argument in schema.arguments:
            default = argument.default_value if argument.has_default_value() else _NO_DEFAULT
            arguments.append((argument.name, default))
            alias = argument.alias_info
            if alias is not None and alias.is_write:
                mutated.append(argument.name)
                if argument.is_out:
                    out_args.append(argument.name)
        namespace, _, name = schema.name.partition("::")
        facts = Schema(f"{namespace}.{name}", overload_name(func), tuple(arguments), tuple(mutated),
                        tuple(out_args), tuple(r.alias_info is not None for r in schema.returns))
        _SCHEMAS[func] = facts
    return facts


def build_call(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any, device: str = "cpu"
) -> OpCall:
    """The OpCall of one aten call from its signature (`signature()` of its arguments and
    outputs) and its schema: arguments by name, aliasing, mutation. Float arguments arrive as
    the `FloatArg` their signature holds (zero, one, other), which is all formulas ask of them."""
    schema = schema_of(func)
    values: list[tuple[str, Any]] = []
    n_args = len(args)
    facts = kwargs.pop(FACTS_KEY, None) if FACTS_KEY in kwargs else None
    arguments = schema.arguments
    if not arguments:  # a higher-order operator: by position, then by keyword
        arguments = tuple((f"arg{i}", _NO_DEFAULT) for i in range(n_args)) + tuple(
            (name, _NO_DEFAULT) for name in kwargs)
    for index, (name, default) in enumerate(arguments):
        if index < n_args:
            value = args[index]
        elif name in kwargs:
            value = kwargs[name]
        elif default is not _NO_DEFAULT:
            value = default
        else:
            continue
        values.append((name, _meta_value(value)))

    outputs: list[TensorMeta | None] = []
    aliased: list[bool] = []
    returns = schema.returns_alias
    results = out if len(returns) != 1 else (out,)
    if isinstance(results, (list, tuple)) and not is_tensor_key(results) and len(returns) == len(results):
        for ret_alias, result in zip(returns, results, strict=True):
            for item in _flatten_keys(result):
                outputs.append(meta_of_key(item) if is_tensor_key(item) else None)
                aliased.append(ret_alias)
    else:
        for item in _flatten_keys(out):
            outputs.append(meta_of_key(item) if is_tensor_key(item) else None)
            aliased.append(False)
    return OpCall(
        op=schema.op,
        overload=schema.overload,
        args=tuple(values),
        outputs=tuple(outputs),
        mutated=schema.mutated,
        out_args=schema.out_args,
        aliased_outputs=tuple(aliased),
        device=device,
        facts=facts,
    )


def _flatten_keys(out: Any) -> list[Any]:
    if is_tensor_key(out):
        return [out]
    if isinstance(out, (list, tuple)):
        flat: list[Any] = []
        for item in out:
            flat.extend(_flatten_keys(item))
        return flat
    return [out]


#: argument types kept by value in a signature; any other object (a RecordFunction handle,
#: a ScriptObject, a user's object) is kept by its type name only, so a fresh object per call
#: neither makes a new signature every step nor stays alive in the table
PLAIN = frozenset({int, bool, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format,
                    torch.Size})


def opaque(value: Any) -> tuple[str, str]:
    """The signature of an object that is not kept by value (see PLAIN): its type's name."""
    return ("<object>", type(value).__name__)


def signature(value: Any) -> Any:
    """The hashable signature of an argument or result: (shape, stride, dtype) per tensor."""
    if isinstance(value, _Tensor):
        if value.is_nested:
            # a (strided) nested tensor has no single shape and raises on .shape: its packed
            # elements as one flat tensor, with the shape of each component in the stride's
            # place (formulas that multiply components, matmul, read them)
            return (torch.Size([value.numel()]), (_NESTED, nested_component_shapes(value)), value.dtype)
        try:
            return (value.shape, value.stride(), value.dtype)
        except (RuntimeError, NotImplementedError):  # layouts without strides
            return (value.shape, _contiguous_strides(tuple(value.shape)), value.dtype)
    if isinstance(value, (list, tuple)):
        for v in value:
            if type(v) is not int:
                return tuple([signature(v) for v in value])
        return tuple(value)  # sizes and dims, the common case: ints are their own signature
    if isinstance(value, float):
        return float_arg(value)
    if type(value) in PLAIN or isinstance(value, (int, str)):  # an IntEnum is still its value
        return value
    return opaque(value)


def device_of(args: tuple[Any, ...], out: Any) -> str:
    """The device type of the first tensor among the arguments (and one level into their lists)
    or the result; "cpu" when there is none."""
    for value in (*args, out):
        if isinstance(value, _Tensor):
            return value.device.type
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, _Tensor):
                    return item.device.type
    return "cpu"


__all__ = ["PLAIN", "Schema", "build_call", "device_of", "is_tensor_key", "meta_of_key", "opaque", "schema_of",
           "signature"]
