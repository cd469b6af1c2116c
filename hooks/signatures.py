"""What one op call looked like, as capture keys it and formulas read it: the hashable
signature of its arguments and results, and the `OpCall` built from a signature and the op's
schema the first time a report asks for it.

Python float arguments enter a signature as a `FloatArg` (zero, one or other): their values
(learning rates, bias corrections) change every step and would make capture's table grow without
bound, while the formulas only ask whether a term is present or a scale multiplies. Integers where
the schema takes a number (`x * step`, a Scalar or a number in a Tensor's place) do the same, and
integers that are a place in a tensor (`dataset[i]`'s index, `x[i:i + 32]`'s range) enter as a
`Place` (`value_blind`); every other integer (a dim, a size, a count) is kept by value.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import (
    is_higher_order_op,
    nested_component_shapes,
    op_schema,
    overload_name,
    sparse_stored,
    unrecorded,
)

from memwall_plugin.records import (
    CELL_PARAMS,
    FACTS_KEY,
    PACKED_LINEAR,
    FloatArg,
    NestedMeta,
    OpCall,
    Place,
    SparseMeta,
    TensorMeta,
    float_arg,
)

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
_SPARSE = "<sparse>"  # a sparse tensor's: (dense shape, (_SPARSE, stored elements, index bytes), dtype)


def is_tensor_key(value: Any) -> bool:
    """Whether a signature is a tensor's: (shape, stride, dtype)."""
    return type(value) is tuple and len(value) == 3 and type(value[0]) is torch.Size


def contiguous_meta(shape: tuple[int, ...], dtype: torch.dtype) -> TensorMeta:
    """The TensorMeta of a contiguous tensor of this shape and dtype (one a trace recorded)."""
    return meta_of_key((torch.Size(shape), _contiguous_strides(tuple(shape)), dtype))


def meta_of_key(key: Any) -> TensorMeta:
    """The TensorMeta formulas read for a tensor's signature."""
    shape, stride, dtype = key
    named = _DTYPE_NAMES.get(dtype)
    if named is None:
        named = _DTYPE_NAMES[dtype] = (_dtype_name(dtype), dtype.itemsize)
    if stride and stride[0] == _NESTED:  # a nested tensor: its packed elements, and its components
        return NestedMeta(tuple(shape), (1,), named[0], named[1], stride[1])
    if stride and stride[0] == _SPARSE:  # a sparse tensor: its dense shape, what it stores
        return SparseMeta(tuple(shape), _contiguous_strides(tuple(shape)), named[0], named[1], stride[1], stride[2])
    return TensorMeta(tuple(shape), tuple(stride), named[0], named[1])


def _meta_value(value: Any) -> Any:
    """An argument's signature as formulas see it: tensors become TensorMeta, lists tuples."""
    if is_tensor_key(value):
        return meta_of_key(value)
    if isinstance(value, (list, tuple)):
        return tuple(_meta_value(v) for v in value)
    if type(value) is float:  # a schema default (captured floats are FloatArgs already)
        return float_arg(value)
    if isinstance(value, (bool, int, str, FloatArg, Place)) or value is None:
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
            stride = value.stride()
        except (RuntimeError, NotImplementedError):  # layouts without strides (sparse CSR, ...)
            stride = None
        # sparse COO's strides are zeros, and so are an MKLDNN tensor's past its first dim (opaque
        # storage, its elements contiguous: (1, 0, 0, 0) is no broadcast there)
        if stride is not None and (0 not in stride or not (value.is_sparse or value.is_mkldnn)):
            return (value.shape, stride, value.dtype)
        stored = sparse_stored(value)
        if stored is not None:
            return (value.shape, (_SPARSE, *stored), value.dtype)
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
    if type(value) is _ScriptObject:
        return _script_object_key(value)
    return opaque(value)


_ScriptObject = torch.ScriptObject
_LINEAR_CLASS = "__torch__.torch.classes.quantized.LinearPackedParamsBase"
_CELL_CLASS = "__torch__.torch.classes.rnn.CellParamsBase"
#: id(ScriptObject) -> (a weak reference to it, its signature): each packed object is read once
_SCRIPT_OBJECTS: dict[int, tuple[Any, Any]] = {}


def _script_object_key(value: Any) -> Any:
    """The signature of a TorchScript object: for the weights torch.ao's dynamic quantization packs
    (`quantized.linear_dynamic`'s LinearPackedParamsBase, `aten.quantized_lstm`'s CellParamsBase)
    the keys of the tensors it holds, as a tensor's (what the op reads; formulas count its shape);
    for any other, its type's name (`opaque`). Read once per object (cached by a weak reference),
    by the pickling state its class defines (int8: the quantized weight it keeps; fp16: a float copy
    unpacked once), unrecorded by torch.profiler, and never failing: what cannot be read is opaque."""
    ident = id(value)
    found = _SCRIPT_OBJECTS.get(ident)
    if found is not None and found[0]() is value:
        return found[1]
    try:
        ref = weakref.ref(value, lambda _: _SCRIPT_OBJECTS.pop(ident, None))
    except TypeError:
        return opaque(value)
    try:
        with unrecorded(), torch.no_grad():
            key = _packed_key(value.__getstate__())
    except Exception:  # a class with no pickling state, or one that cannot give it here
        key = None
    if key is None:
        key = opaque(value)
    _SCRIPT_OBJECTS[ident] = (ref, key)
    return key


def _weight_key(t: Any, packed_half: bool = False) -> Any:
    """A packed weight's or bias's key, contiguous (packing lays it out anew); a float weight of an
    fp16 packing (`linear_prepack_fp16`, the only float one) is stored as half and unpacks widened."""
    if not isinstance(t, _Tensor):
        return None
    dtype = torch.float16 if packed_half and t.dtype == torch.float32 else t.dtype
    return (t.shape, _contiguous_strides(tuple(t.shape)), dtype)


def _packed_key(state: Any) -> Any:
    """The key of a packed object from its `__getstate__()`: (its state, its class's name)."""
    if not (isinstance(state, tuple) and len(state) == 2):
        return None
    inner, name = state
    if name == _LINEAR_CLASS and isinstance(inner, tuple) and len(inner) == 2:  # (weight, bias)
        weight = _weight_key(inner[0], packed_half=True)
        return None if weight is None else (PACKED_LINEAR, weight, _weight_key(inner[1]))
    if name == _CELL_CLASS and isinstance(inner, tuple) and len(inner) == 5:
        # (kind, tensors, doubles, longs, packed linear weights): dynamic int8 packs w_ih and w_hh
        # and keeps the float biases beside them; fp16 packs each weight with its bias
        kind, tensors, _, _, packed = inner
        if kind not in ("quantized_dynamic", "quantized_fp16") or len(packed) != 2:
            return None
        linear = []
        for p in packed:
            key = _packed_key(p.__getstate__()) if type(p) is _ScriptObject else None
            if key is None:
                return None
            linear.append(key)
        biases = [_weight_key(t) for t in tensors] if len(tensors) == 2 else [k[2] for k in linear]
        return (CELL_PARAMS, linear[0][1], linear[1][1], biases[0], biases[1])
    return None


#: Arguments that are a place in a tensor, not a size, by op: their values change with each
#: sample or batch a loop picks, never what the op costs (nothing for a view; the sizes of its
#: tensors for a view's backward, a scatter into a view)
_PLACES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("aten.select", "aten.select_backward", "aten.select_scatter", "aten.select_copy"),
                    ("index",)),
    **dict.fromkeys(("aten.slice", "aten.slice_backward", "aten.slice_scatter", "aten.slice_copy"),
                    ("start", "end")),
    **dict.fromkeys(("aten.narrow", "aten.narrow_copy"), ("start",)),
    **dict.fromkeys(("aten.as_strided", "aten.as_strided_", "aten.as_strided_copy", "aten.as_strided_scatter"),
                    ("storage_offset",)),
}
#: schema types whose integer values are numbers an op computes with, not sizes: a Scalar, or a
#: Python number passed where a Tensor goes (`x * 3`, which torch hands over as the int)
_NUMBER_TYPES = frozenset({"number", "Optional[number]", "Tensor", "Optional[Tensor]"})


@dataclass(frozen=True)
class Blind:
    """Where an overload's integer arguments are values, not sizes: by position and by name, True
    for a place in a tensor (keyed as `Place.SOME`), False for a number (keyed as its FloatArg)."""

    positions: tuple[tuple[int, bool], ...]
    names: dict[str, bool]


_BLIND: dict[Any, Blind | None] = {}  # overload -> its Blind, None where every integer is a size


def value_blind(func: Any) -> Blind | None:
    """Where `func`'s integer arguments are values (`Blind`), read once per overload. None for
    higher-order operators and factories (arange's numbers are its length)."""
    if func in _BLIND:
        return _BLIND[func]
    blind = None
    if not is_higher_order_op(func):
        schema = op_schema(func)
        types = [str(a.type) for a in schema.arguments]
        if any("Tensor" in t for t in types):
            namespace, _, name = schema.name.partition("::")
            places = _PLACES.get(f"{namespace}.{name}", ())
            found = [(i, a.name, a.name in places) for i, (a, t) in enumerate(zip(schema.arguments, types, strict=True))
                     if a.name in places or (t in _NUMBER_TYPES and not (i == 0 and "Tensor" in t))]
            if found:
                blind = Blind(tuple((i, place) for i, _, place in found), {n: place for _, n, place in found})
    _BLIND[func] = blind
    return blind


def fold_values(blind: Blind, parts: list[Any]) -> None:
    """`parts` (an argument signature being built) with the integers `blind` names as values
    folded in place; keyword arguments' are folded where their signature is made (`fold_kwarg`)."""
    n = len(parts)
    for index, place in blind.positions:
        if index < n and type(parts[index]) is int:
            parts[index] = Place.SOME if place else float_arg(parts[index])


def fold_kwarg(blind: Blind | None, name: str, value: Any) -> Any:
    """A keyword argument's signature, its integer folded where `blind` names it a value."""
    if blind is not None and type(value) is int and name in blind.names:
        return Place.SOME if blind.names[name] else float_arg(value)
    return signature(value)


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


__all__ = ["PLAIN", "Blind", "Schema", "build_call", "contiguous_meta", "device_of", "fold_kwarg", "fold_values",
           "is_tensor_key",
           "meta_of_key", "opaque", "schema_of", "signature", "value_blind"]
