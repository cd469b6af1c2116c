"""Shared helpers: run a function under memwall and pick rows out of its report."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import memwall_plugin as memwall

warnings.filterwarnings("ignore", message=".*loss_type=None.*")


@contextlib.contextmanager
def no_deprecations(inside: tuple[str, ...] = ()) -> Iterator[None]:
    """Fail on any DeprecationWarning or FutureWarning the block triggers: memwall's code, its
    samples and the library calls they make (transformers' renamed arguments) are changed when
    the warning appears, before the rename lands, not printed to users. `inside`: packages whose
    own code warns about torch APIs it calls itself (Lightning on torch's pytree): theirs to act
    on, not ours; a warning about a call memwall or a sample makes is still caught."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    found = sorted({f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))
                    and not any(f"site-packages{os.sep}{package}{os.sep}" in w.filename for package in inside)})
    assert not found, "deprecations to act on:\n" + "\n".join(found)


@pytest.fixture
def fail_on_deprecations() -> Iterator[None]:
    """`no_deprecations()` around the whole test (pytest records warnings around all of it)."""
    with no_deprecations():
        yield


def profiled(fn: Callable[[], Any], model: torch.nn.Module | None = None) -> memwall.Report:
    with memwall.profile(model=model, summary=False) as prof:
        fn()
    return prof.report()


def rows_of(rep: memwall.Report, op: str, phase: str | None = None) -> list[memwall.Row]:
    return [r for r in rep.rows if r.op == op and (phase is None or r.phase == phase)]


def one_row(rep: memwall.Report, op: str, phase: str | None = None) -> memwall.Row:
    rows = rows_of(rep, op, phase)
    assert len(rows) == 1, f"expected one {op} row, got {[(r.module, r.phase, r.shapes) for r in rows]}"
    return rows[0]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch, tmp_path_factory) -> None:
    """Tests never read the developer's calibration cache or device overrides, and do not
    measure the machine on their first profile (tests of that turn it back on)."""
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "empty-cache"))
    monkeypatch.setenv("MEMWALL_CALIBRATE", "0")
    monkeypatch.delenv("MEMWALL_DEVICE", raising=False)
    monkeypatch.delenv("MEMWALL_PEAKS", raising=False)
    monkeypatch.delenv("MEMWALL_LINK", raising=False)
