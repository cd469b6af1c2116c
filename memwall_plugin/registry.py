"""The formula registry: maps an aten op to a FLOP formula and, where the default lies, a bytes formula.

The table of formulas lives in `formulas.py`; this module is the engine that looks them up and
applies the default bytes model (DESIGN.md, "Bytes moved"):

* every op reads each input tensor once and writes each output once (compulsory traffic);
* a tensor counts the elements it spans (a stride-0 broadcast dim counts once);
* an in-place or `out=` result is written once (the returned alias is not a second write);
* views and metadata ops move nothing.

A formula registered twice is an error: there is one source of truth per op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memwall_plugin.records import OpCall, Traffic, extent

FlopFormula = Callable[[OpCall], "int | None"]
TrafficFormula = Callable[[OpCall], Traffic]


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
    """Op name -> formulas. Names are "aten.mm" (every overload) or "aten.add.Tensor" (one)."""

    def __init__(self) -> None:
        self._flops: dict[str, FlopFormula] = {}
        self._traffic: dict[str, TrafficFormula] = {}
        self._frozen = False

    # -- registration ---------------------------------------------------------------------
    def _check(self, table: dict[str, object], names: tuple[str, ...]) -> None:
        if self._frozen:
            raise RegistryError(
                "the default registry is read-only; use memwall.default_registry().copy() "
                "and pass registry= to memwall.profile"
            )
        if not names:
            raise RegistryError("name at least one op, e.g. 'aten.mm'")
        for name in names:
            if name.count(".") not in (1, 2):
                raise RegistryError(f"op name {name!r} should look like 'aten.mm' or 'aten.add.Tensor'")
            if name in table:
                raise RegistryError(f"{name} is already registered; one formula per op")

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
        return other

    # -- lookup -----------------------------------------------------------------------------
    def flop_formula(self, op: str, overload: str) -> FlopFormula | None:
        return self._flops.get(f"{op}.{overload}") or self._flops.get(op)

    def traffic_formula(self, op: str, overload: str) -> TrafficFormula | None:
        return self._traffic.get(f"{op}.{overload}") or self._traffic.get(op)

    def names(self) -> frozenset[str]:
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
