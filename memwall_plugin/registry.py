"""The formula registry: maps an aten op to a FLOP formula, where the default lies a bytes formula,
and its family (matmul, norm, data movement...).

The table of formulas lives in `formulas.py`; this module is the engine that looks them up and
applies the default bytes model (DESIGN.md, "Bytes moved"):

* every op reads each input tensor once and writes each output once (compulsory traffic);
* a tensor counts the elements it spans (a stride-0 broadcast dim counts once);
* an in-place or `out=` result is written once (the returned alias is not a second write);
* views and metadata ops move nothing.

A formula registered twice is an error: there is one source of truth per op. So is a second
family: an op belongs to one family, assigned in `formulas.py` next to its formulas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from memwall_plugin.records import OpCall, Traffic, extent

FlopFormula = Callable[[OpCall], "int | None"]
TrafficFormula = Callable[[OpCall], Traffic]


class Family:
    """The op families, as plain strings (they travel in rows and JSON). Every op has one; an op
    no table names is OTHER."""

    MATMUL: Final = "matmul"  # matrix products: mm, addmm, bmm, mv, dot, grouped and scaled mm
    CONV: Final = "conv"  # convolutions, forward and backward
    ATTENTION: Final = "attention"  # fused attention kernels (both matmuls and the softmax in one)
    ELEMENTWISE: Final = "elementwise"  # arithmetic, activations, random draws, dropout, losses
    NORM: Final = "norm"  # normalisation layers (layer, group, batch, RMS norm) and softmax
    REDUCTION: Final = "reduction"  # sums, means, extrema, vector norms, pooling
    DATA_MOVEMENT: Final = "data_movement"  # copies, cat, index, gather/scatter, embedding, creation, views
    COMMUNICATION: Final = "communication"  # c10d and functional collectives, their waits
    # fused optimizer kernels and every _foreach_ kernel: a foreach kernel runs over a list of
    # tensors, in training the parameters, gradients or optimizer state (an optimizer's foreach
    # step, clip_grad_norm_, zero_grad, the grad scaler); the remedy is the same for all of them
    OPTIMIZER: Final = "optimizer"
    OTHER: Final = "other"  # none of the above, or not known


FAMILIES: tuple[str, ...] = (
    Family.MATMUL, Family.CONV, Family.ATTENTION, Family.ELEMENTWISE, Family.NORM, Family.REDUCTION,
    Family.DATA_MOVEMENT, Family.COMMUNICATION, Family.OPTIMIZER, Family.OTHER,
)

#: The families whose float32 kernels run on TF32 tensor cores where torch allows it
#: (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32).
TF32_FAMILIES: tuple[str, ...] = (Family.MATMUL, Family.CONV)


class RegistryError(ValueError):
    """Raised for a duplicate or malformed registration."""


@dataclass(frozen=True, slots=True)
class Counted:
    """FLOPs and traffic of one call. `flops` is None when no formula exists (uncounted)."""

    flops: int | None
    traffic: Traffic


def default_traffic(call: OpCall) -> Traffic:
    """Compulsory traffic: read every input once, write every produced tensor once."""
    skip = set(call.out_args)
    read = tuple(extent(t) for name, t in call.tensors() if name not in skip)
    written = tuple(extent(t) for t in call.written())
    return Traffic(read, written)


def is_view(call: OpCall) -> bool:
    """Every result aliases an input and nothing is written: a view or metadata op."""
    return (
        bool(call.aliased_outputs)
        and all(call.aliased_outputs)
        and not call.mutated
    )


_NO_TRAFFIC = Traffic()


class Registry:
    """Op name -> formulas and family. Names are "aten.mm" (every overload) or "aten.add.Tensor" (one)."""

    def __init__(self) -> None:
        self._flops: dict[str, FlopFormula] = {}
        self._traffic: dict[str, TrafficFormula] = {}
        self._families: dict[str, str] = {}
        self._frozen = False

    # -- registration ---------------------------------------------------------------------
    def _check(self, table: dict[str, object], names: tuple[str, ...], one: str = "one formula per op") -> None:
        if self._frozen:
            raise RegistryError(
                "the default registry is read-only; use memwall.default_registry().copy() "
                "and pass registry= to memwall.profile"
            )
        if not names:
            raise RegistryError("name at least one op, e.g. 'aten.mm'")
        seen: set[str] = set()
        for name in names:
            if name.count(".") not in (1, 2):
                raise RegistryError(f"op name {name!r} should look like 'aten.mm' or 'aten.add.Tensor'")
            if name in table or name in seen:
                raise RegistryError(f"{name} is already registered; {one}")
            seen.add(name)

    def add_flops(self, names: tuple[str, ...] | str, formula: FlopFormula) -> None:
        names = (names,) if isinstance(names, str) else names
        self._check(self._flops, names)  # type: ignore[arg-type]
        for name in names:
            self._flops[name] = formula

    def add_traffic(self, names: tuple[str, ...] | str, formula: TrafficFormula) -> None:
        names = (names,) if isinstance(names, str) else names
        self._check(self._traffic, names)  # type: ignore[arg-type]
        for name in names:
            self._traffic[name] = formula

    def flops(self, *names: str) -> Callable[[FlopFormula], FlopFormula]:
        """Decorator: `@registry.flops("aten.mm")` registers a FLOP formula."""

        def register(formula: FlopFormula) -> FlopFormula:
            self.add_flops(names, formula)
            return formula

        return register

    def traffic(self, *names: str) -> Callable[[TrafficFormula], TrafficFormula]:
        """Decorator: `@registry.traffic("aten.embedding")` overrides the default bytes model."""

        def register(formula: TrafficFormula) -> TrafficFormula:
            self.add_traffic(names, formula)
            return formula

        return register

    def zero(self, *names: str) -> None:
        """Views and metadata ops: 0 FLOPs, 0 bytes."""
        self.add_flops(names, _zero_flops)
        self.add_traffic(names, _zero_traffic)

    def set_family(self, family: str, *names: str) -> None:
        """Put ops in `family` (one of FAMILIES); an op already in a family is an error. "other"
        marks an op that belongs to none deliberately (every op no one names is "other" too)."""
        if family not in FAMILIES:
            raise RegistryError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
        self._check(self._families, names, "one family per op")  # type: ignore[arg-type]
        for name in names:
            self._families[name] = family

    def freeze(self) -> Registry:
        self._frozen = True
        return self

    @property
    def frozen(self) -> bool:
        """A frozen registry's formulas can no longer change (its counts may be memoised)."""
        return self._frozen

    def copy(self) -> Registry:
        """A writable copy, to add formulas for your own ops."""
        other = Registry()
        other._flops = dict(self._flops)
        other._traffic = dict(self._traffic)
        other._families = dict(self._families)
        return other

    # -- lookup -----------------------------------------------------------------------------
    def flop_formula(self, op: str, overload: str) -> FlopFormula | None:
        return self._flops.get(f"{op}.{overload}") or self._flops.get(op)

    def traffic_formula(self, op: str, overload: str) -> TrafficFormula | None:
        return self._traffic.get(f"{op}.{overload}") or self._traffic.get(op)

    def family(self, op: str, overload: str) -> str:
        """The op's family: that of its overload, else of the op, else "other" (an op with no
        formula, of any namespace, has an answer). Two dict lookups: cheap enough per row."""
        families = self._families
        return families.get(f"{op}.{overload}") or families.get(op) or Family.OTHER

    def ops_of(self, family: str) -> frozenset[str]:
        """The op names put in `family`, as they were named ("aten.mm", "aten.add.Tensor"); for
        "other", the ops deliberately put there."""
        if family not in FAMILIES:
            raise RegistryError(f"unknown family {family!r}; one of {', '.join(FAMILIES)}")
        return frozenset(name for name, f in self._families.items() if f == family)

    def names(self) -> frozenset[str]:
        """The ops with a formula (FLOPs or bytes)."""
        return frozenset(self._flops) | frozenset(self._traffic)

    def count(self, call: OpCall) -> Counted:
        """FLOPs and traffic of one call; views move nothing; no formula -> flops None."""
        traffic_formula = self.traffic_formula(call.op, call.overload)
        flop_formula = self.flop_formula(call.op, call.overload)
        if flop_formula is None and traffic_formula is None and is_view(call):
            return Counted(0, _NO_TRAFFIC)
        traffic = traffic_formula(call) if traffic_formula else default_traffic(call)
        flops = flop_formula(call) if flop_formula else None
        return Counted(None if flops is None else int(flops), traffic)


def _zero_flops(call: OpCall) -> int:
    return 0


def _zero_traffic(call: OpCall) -> Traffic:
    return _NO_TRAFFIC
