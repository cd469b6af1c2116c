"""An op call rebuilt from what a torch.profiler trace recorded of its inputs (`record_shapes=True`):
the overload whose schema fits them, meta tensors of their shapes, strides and dtypes, and the
call run once on those, for the output shapes a trace does not record.

The result is the signature capture would have keyed the call by (hooks/signatures.py), so a
trace's op is counted by the same code as a captured one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from memwall_plugin.hooks._torch_private import has_backend_kernel, has_composite_kernel, op_schema
from memwall_plugin.hooks.signatures import fold_kwarg, fold_values, signature, value_blind

#: the dtype names torch.profiler writes ("Input type": the C++ type's name, as the compiler
#: spells it) -> torch dtype
_TRACE_DTYPES: dict[str, torch.dtype] = {
    "float": torch.float32, "double": torch.float64, "c10::Half": torch.float16, "c10::BFloat16": torch.bfloat16,
    "long int": torch.int64, "long": torch.int64, "long long": torch.int64, "int64_t": torch.int64,
    "int": torch.int32, "short int": torch.int16, "short": torch.int16, "signed char": torch.int8,
    "unsigned char": torch.uint8, "bool": torch.bool, "c10::complex<float>": torch.complex64,
    "c10::complex<double>": torch.complex128, "c10::complex<c10::Half>": torch.complex32,
    "unsigned short": torch.uint16, "unsigned int": torch.uint32, "unsigned long": torch.uint64,
}
for _name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"):
    _dtype = getattr(torch, _name, None)
    if _dtype is not None:
        _TRACE_DTYPES[f"c10::{''.join(p.capitalize() for p in _name.split('_'))}"] = _dtype
        _TRACE_DTYPES[f"c10::Float8_{_name.removeprefix('float8_')}"] = _dtype

#: c10::ScalarType's names, as NCCL's record_param_comms writes a collective's dtype ("Float")
_SCALAR_TYPE_NAMES: dict[str, torch.dtype] = {
    "Byte": torch.uint8, "Char": torch.int8, "Short": torch.int16, "Int": torch.int32, "Long": torch.int64,
    "Half": torch.float16, "Float": torch.float32, "Double": torch.float64, "Bool": torch.bool,
    "BFloat16": torch.bfloat16, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128,
}


def trace_dtype(name: Any) -> torch.dtype | None:
    """The dtype a trace names: a tensor argument's recorded type ("float", "c10::BFloat16") or a
    c10::ScalarType's name ("Float", "BFloat16"); None for anything else (a list, a scalar)."""
    if not isinstance(name, str):
        return None
    return _TRACE_DTYPES.get(name) or _SCALAR_TYPE_NAMES.get(name)


#: c10::ScalarType's numbering, which a dtype argument is recorded as ("Concrete Inputs": "6")
_SCALAR_TYPES: tuple[torch.dtype | None, ...] = (
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64,
    torch.complex32, torch.complex64, torch.complex128, torch.bool, torch.qint8, torch.quint8, torch.qint32,
    torch.bfloat16, torch.quint4x2, torch.quint2x4, None, None, None, None, None,
    getattr(torch, "float8_e5m2", None), getattr(torch, "float8_e4m3fn", None),
    getattr(torch, "float8_e5m2fnuz", None), getattr(torch, "float8_e4m3fnuz", None),
    getattr(torch, "uint16", None), getattr(torch, "uint32", None), getattr(torch, "uint64", None),
)
#: c10::Layout's numbering (kStrided, kSparse, kSparseCsr, kMkldnn, kSparseCsc, ...): meta tensors are strided
_LAYOUTS = (torch.strided, torch.sparse_coo, torch.sparse_csr)
_MEMORY_FORMATS = (torch.contiguous_format, torch.preserve_format, torch.channels_last, torch.channels_last_3d)
_INT = re.compile(r"^-?\d+$")


@dataclass(frozen=True, slots=True)
class TracedInputs:
    """One op event's recorded inputs, one entry per schema argument (torch.profiler records them all)."""

    types: tuple[str, ...]
    dims: tuple[Any, ...]
    strides: tuple[Any, ...]
    concrete: tuple[str, ...]


def has_unstrided_tensor(inputs: TracedInputs) -> bool:
    """Whether a traced call passed a tensor of a layout without strides (sparse COO, CSR, ...):
    torch.profiler records its dense shape and no strides, not the elements it stores, so what the
    call computes and moves cannot be known from the trace."""
    for recorded, dims, strides in zip(inputs.types, inputs.dims, inputs.strides, strict=True):
        if recorded in _TRACE_DTYPES and isinstance(dims, tuple) and dims and strides == ():
            return True
    return False


@dataclass(frozen=True, slots=True)
class Replayed:
    """A traced call as capture would have keyed it: the overload and the signatures of its
    arguments and result (hooks/signatures.py)."""

    func: Any
    arg_key: tuple[Any, ...]
    kw_key: tuple[tuple[str, Any], ...] | None
    out_key: Any
    #: its tensor lists' dtype was taken to be float32: a trace records a list's shapes, not its
    #: tensors' dtypes, and no other input of the call had one (cat, stack of int64 indices)
    assumed_list_dtype: bool = False
    #: a 0-dim float64, int64 or complex128 tensor after its first argument was taken for a Python
    #: number torch wrapped (`_wrapped_numbers`): its bytes are not counted
    assumed_number: bool = False


class ReplayError(Exception):
    """The call could not be rebuilt (no overload fits, the op has no meta kernel): uncounted."""


def find_op(name: str) -> Any:
    """The OpOverloadPacket of a trace's op name ("aten::addmm"); None for a name that is not an
    operator (an autograd node, a record_function range)."""
    namespace, sep, op = name.partition("::")
    if not sep or not op or "::" in op or not namespace.isidentifier():
        return None
    try:
        return getattr(getattr(torch.ops, namespace), op)
    except (AttributeError, RuntimeError):
        return None


def decomposes_above_mode(func: Any, device: str) -> bool:
    """Whether the dispatcher runs this overload as its CompositeImplicitAutograd decomposition
    (aten.linear -> t, addmm) before a TorchDispatchMode sees it: capture then records its parts,
    not the op. Ops with a kernel of their own for `device` reach the mode whole."""
    return has_composite_kernel(func) and has_backend_kernel(func, device) is False


def _fits(kind: str, recorded: str) -> bool:
    optional = kind.startswith("Optional[")
    inner = kind.removeprefix("Optional[").removesuffix("]") if optional else kind
    if recorded == "":
        return optional or inner in ("Device", "Generator", "str") or inner.startswith("List[")
    if inner == "Tensor":
        return recorded in _TRACE_DTYPES
    if inner in ("List[Tensor]", "List[Optional[Tensor]]"):
        return recorded in ("TensorList", "GenericList")
    if inner.startswith("List["):
        return recorded in ("ScalarList", "GenericList")
    if inner in ("int", "float", "bool", "number", "complex"):
        return recorded == "Scalar"
    return True  # str, Device, Generator, ...: whatever was recorded of them


def pick_overload(packet: Any, inputs: TracedInputs) -> Any:
    """The overload of `packet` whose schema fits the recorded inputs; None if none does."""
    for name in packet.overloads():
        func = getattr(packet, name)
        schema = op_schema(func)
        if schema is None or len(schema.arguments) != len(inputs.types):
            continue
        if all(_fits(str(a.type), t) for a, t in zip(schema.arguments, inputs.types, strict=True)):
            return func
    return None


def _scalar(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _contiguous(shape: Sequence[int]) -> list[int]:
    strides, running = [], 1
    for n in reversed(shape):
        strides.append(running)
        running *= max(n, 1)
    return strides[::-1]


def _tensor(dims: Any, strides: Any, dtype: torch.dtype) -> torch.Tensor:
    shape = [int(d) for d in dims]
    if not isinstance(strides, (list, tuple)) or len(strides) != len(shape):
        strides = _contiguous(shape)
    return torch.empty_strided(shape, [int(s) for s in strides], dtype=dtype, device="meta")


def _value(argument: Any, recorded: str, dims: Any, strides: Any, concrete: str, list_dtype: torch.dtype) -> Any:
    kind = str(argument.type)
    real = str(getattr(argument, "real_type", kind))
    inner_real = real.removeprefix("Optional[").removesuffix("]")
    if recorded in _TRACE_DTYPES:
        return _tensor(dims, strides, _TRACE_DTYPES[recorded])
    if recorded in ("TensorList", "GenericList") and "Tensor" in kind:
        strides = strides if isinstance(strides, (list, tuple)) and len(strides) == len(dims) else [None] * len(dims)
        return [_tensor(d, s, list_dtype) if isinstance(d, (list, tuple)) else None
                for d, s in zip(dims, strides, strict=True)]
    if inner_real == "Device":
        return torch.device("meta")
    if recorded == "":
        if argument.has_default_value():
            return argument.default_value
        if kind.startswith("Optional["):
            return None
        raise ReplayError(f"argument {argument.name} ({real}) was not recorded")
    if recorded == "ScalarList":
        text = concrete.strip()
        if not (text.startswith("[") and text.endswith("]")):
            raise ReplayError(f"argument {argument.name}: list {concrete!r} not recorded")
        items = [t.strip() for t in text[1:-1].split(",") if t.strip()]
        return [_scalar(t) for t in items]
    value = _scalar(concrete)
    if inner_real == "ScalarType" and type(value) is int:
        dtype = _SCALAR_TYPES[value] if 0 <= value < len(_SCALAR_TYPES) else None
        if dtype is None:
            raise ReplayError(f"argument {argument.name}: unknown ScalarType {value}")
        return dtype
    if inner_real == "Layout" and type(value) is int:
        return _LAYOUTS[value] if 0 <= value < len(_LAYOUTS) else torch.strided
    if inner_real == "MemoryFormat" and type(value) is int:
        return _MEMORY_FORMATS[value] if 0 <= value < len(_MEMORY_FORMATS) else torch.contiguous_format
    if inner_real == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner_real == "str" and not isinstance(value, str):
        return concrete
    if concrete == "" and not argument.type.kind() == "OptionalType":
        raise ReplayError(f"argument {argument.name} ({real}): its value was not recorded")
    return value if concrete != "" else None


#: the dtypes torch wraps a Python number in when it passes one where an op takes a tensor
_WRAPPED = {"double": 2.0, "long int": 2, "long": 2, "c10::complex<double>": 2j}


def _wrapped_numbers(inputs: TracedInputs) -> set[int]:
    """Arguments that are Python numbers torch wrapped in a 0-dim tensor (`x * 0.5` calls
    mul.Tensor, `step += 1` add_.Tensor): a 0-dim float64, int64 or complex128 tensor after the
    first argument. A dispatch mode is handed the number, not a tensor, so capture reads no bytes
    for it; a trace records it as a tensor, without its value (taken as one that is not 0 or 1).
    A real 0-dim float64 or int64 tensor there is taken for a number too (8 bytes short)."""
    return {i for i, (t, d) in enumerate(zip(inputs.types, inputs.dims, strict=True))
            if i > 0 and t in _WRAPPED and isinstance(d, (list, tuple)) and not d}


def _returns_tensor(schema: Any) -> bool:
    return any("Tensor" in str(r.type) for r in schema.returns)


def replay(func: Any, inputs: TracedInputs) -> Replayed:
    """Run `func` once on meta tensors shaped as recorded; the signature capture would key it by."""
    schema = op_schema(func)
    try:
        wrapped = _wrapped_numbers(inputs)
        done = _replay(func, schema, inputs, wrapped)
        return replace(done, assumed_number=True) if wrapped else done
    except ReplayError:
        return _replay(func, schema, inputs, set())  # the op took no number there: tensors after all


def _replay(func: Any, schema: Any, inputs: TracedInputs, wrapped: set[int]) -> Replayed:
    list_dtype = next((_TRACE_DTYPES[t] for t in inputs.types if t in _TRACE_DTYPES), None)
    assumed = list_dtype is None and any(t in ("TensorList", "GenericList") and isinstance(d, (list, tuple)) and
                                         any(isinstance(x, (list, tuple)) for x in d)
                                         for t, d in zip(inputs.types, inputs.dims, strict=True))
    list_dtype = list_dtype or torch.float32
    try:
        args = [_WRAPPED[t] if i in wrapped else _value(a, t, d, s, c, list_dtype) for i, (a, t, d, s, c) in enumerate(
            zip(schema.arguments, inputs.types, inputs.dims, inputs.strides, inputs.concrete, strict=True))]
    except (ReplayError, ValueError, TypeError, IndexError) as exc:
        raise ReplayError(str(exc)) from None
    positional = [v for a, v in zip(schema.arguments, args, strict=True) if not a.kwarg_only]
    keywords = {a.name: v for a, v in zip(schema.arguments, args, strict=True) if a.kwarg_only}
    # keyed as capture keys it: integers that are values (an index, a scalar) folded
    blind = value_blind(func)
    parts = [signature(a) for a in positional]
    if blind is not None:
        fold_values(blind, parts)
    arg_key = tuple(parts)
    kw_key = tuple((k, fold_kwarg(blind, k, v)) for k, v in keywords.items()) or None
    if not _returns_tensor(schema):  # a number (item(), is_nonzero): nothing to size, and meta cannot say
        return Replayed(func, arg_key, kw_key, None, assumed)
    try:
        with torch.no_grad():
            out = func(*positional, **keywords)
    except Exception as exc:  # no meta kernel, or inputs it rejects: the op stays uncounted
        raise ReplayError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return Replayed(func, arg_key, kw_key, signature(out), assumed)


__all__ = ["ReplayError", "Replayed", "TracedInputs", "decomposes_above_mode", "find_op", "has_unstrided_tensor",
           "pick_overload", "replay", "trace_dtype"]
