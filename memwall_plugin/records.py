"""Plain records that flow from capture to counting: tensor metadata and one op call's signature.

Nothing here holds a tensor: capture turns tensors into `TensorMeta` at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

FORWARD = "forward"
BACKWARD = "backward"
#: A module's forward run again inside backward (activation checkpointing): backward-pass work
RECOMPUTE = "recompute"
OPTIMIZER = "optimizer"
PREFILL = "prefill"  # a generation call that fills the KV cache with the prompt
DECODE = "decode"  # generation calls that add one token (or a few) to the cache
OTHER = "other"
#: Built-in phases, in display order; prof.phase("...") may add labels of its own.
PHASES = (FORWARD, BACKWARD, RECOMPUTE, OPTIMIZER, PREFILL, DECODE, OTHER)


def ordered_phases(names: Iterable[str]) -> list[str]:
    """Built-in phases in display order, then the user's own labels alphabetically."""
    present = set(names)
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


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
        """A short text of the input shapes, for tables: "[64, 1024] x [1024, 4096]"."""
        parts = []
        for _, value in self.args:
            if isinstance(value, TensorMeta):
                parts.append(str(list(value.shape)))
            elif isinstance(value, tuple) and value and isinstance(value[0], TensorMeta):
                parts.append(f"{len(value)} x {list(value[0].shape)}")
        return " x ".join(parts)
