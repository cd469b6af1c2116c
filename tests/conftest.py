"""Shared helpers: run a function under memwall and pick rows out of its report."""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import shutil
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import memwall_plugin as memwall

warnings.filterwarnings("ignore", message=".*loss_type=None.*")

# Inductor's compile cache lives in a directory of this test run, removed at its end (subprocesses
# inherit it): left at its default, /tmp/torchinductor_<user>, repeated runs piled up gigabytes
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="memwall-tests-inductor-")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _INDUCTOR_CACHE)
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, True)


@contextlib.contextmanager
def no_deprecations(inside: tuple[str, ...] = ()) -> Iterator[None]:
    """Fail on any DeprecationWarning or FutureWarning the block triggers: memwall's code, its
    samples and the library calls they make (transformers' renamed arguments) are changed when
    the warning appears, before the rename lands, not printed to users. `inside`: packages whose
    own code warns about torch APIs it calls itself (Lightning on torch's pytree): theirs to act
    on, not ours; a warning about a call memwall or a sample makes is still caught."""
    # transformers says some deprecations through its logger, once per process (warning_once):
    # forget what it has said, and listen
    logged = _LoggedDeprecations()
    library = logging.getLogger("transformers")
    once = getattr(logging.Logger, "warning_once", None)
    if once is not None and hasattr(once, "cache_clear"):
        once.cache_clear()
    library.addHandler(logged)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        library.removeHandler(logged)
    found = sorted({f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                    if issubclass(w.category, (DeprecationWarning, FutureWarning))
                    and not any(f"site-packages{os.sep}{package}{os.sep}" in w.filename for package in inside)})
    found += sorted(set(logged.messages))
    assert not found, "deprecations to act on:\n" + "\n".join(found)


class _LoggedDeprecations(logging.Handler):
    """A library logger's deprecation messages ("... are deprecated. Use `cache` instead.") that
    our code caused: those where no model implementation of the library's own sits between the
    innermost frame of ours and the warning (Whisper's own generate() passes a generation_config
    together with the arguments it deprecates: theirs to act on; so does assisted decoding's
    candidate generator, calling the assistant model's generate())."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "deprecat" not in text.lower():
            return
        frames = traceback.extract_stack()[:-1]  # not this handler
        ours = [i for i, f in enumerate(frames) if _ours(f.filename)]
        inside = frames[ours[-1] + 1:] if ours else frames
        if any(f"{os.sep}transformers{os.sep}models{os.sep}" in f.filename
               or f.filename.endswith(_ASSISTANT_CALLER) for f in inside):
            return
        where = frames[ours[-1]] if ours else None
        self.messages.append(f"{record.name}: {text}" + (f" (from {where.filename}:{where.lineno})" if where else ""))


_STDLIB = os.path.dirname(os.__file__)
_ASSISTANT_CALLER = os.path.join("transformers", "generation", "candidate_generator.py")


def _ours(filename: str) -> bool:
    """A frame of memwall's code, its tests, samples or benchmarks: not a library's, not Python's."""
    return "site-packages" not in filename and not filename.startswith(_STDLIB) and not filename.startswith("<")


@pytest.fixture
def fail_on_deprecations() -> Iterator[None]:
    """`no_deprecations()` around the whole test (pytest records warnings around all of it)."""
    with no_deprecations():
        yield


def profiled(fn: Callable[[], Any], model: torch.nn.Module | None = None) -> memwall.Report:
    with memwall.profile(model=model, summary=False) as prof:
        fn()
    return prof.report()


def region_handle(call: Any) -> Any:
    """What an `inductor_compiled_code` call passes for a region running `call`."""
    try:
        from torch._higher_order_ops.wrap import InductorCompiledCallable
    except ImportError:  # torch 2.11: the compiled callable itself
        return call
    return InductorCompiledCallable(call)


def flops_apart(op: str, *calls: Callable[[], Any]) -> list[int | None]:
    """The FLOPs of `op`'s rows when each of `calls` is profiled on its own, sorted: calls of one
    op, shapes and dtype that differ in an argument are one row of a profile (summed), so a test of
    each form's count profiles each form apart."""
    return sorted((r.flops for fn in calls for r in rows_of(profiled(fn), op)), key=lambda f: (f is None, f or 0))


def rows_of(rep: memwall.Report, op: str, phase: str | None = None) -> list[memwall.Row]:
    return [r for r in rep.rows if r.op == op and (phase is None or r.phase == phase)]


def decode(model: Any, ids: torch.Tensor, cache: Any = None) -> tuple[torch.Tensor, Any]:
    """One forward of a transformers causal LM over `ids` with its KV cache `cache` (None: the
    prefill): (the greedy next token, the cache). transformers 5.25 renamed the argument and the
    output field `past_key_values` to `cache` (the old name warns, and goes in 5.40)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(ids, use_cache=True, **({name: cache} if cache is not None else {}))
    new = getattr(out, "cache", None)
    return out.logits[:, -1:].argmax(-1), new if new is not None else out.past_key_values


def transformers_moe_or_none() -> Any:
    """transformers' MoE integration, which registers its expert matmul custom op
    (`transformers.grouped_mm_fallback`, transformers >= 5) on import; None where this
    transformers has no such op."""
    try:
        from transformers.integrations import moe
    except ImportError:
        return None
    return moe if hasattr(moe, "_grouped_mm_fallback") else None


def transformers_moe() -> Any:
    """As `transformers_moe_or_none`, the test skipped where there is none."""
    moe = transformers_moe_or_none()
    if moe is None:
        pytest.skip("this transformers has no grouped_mm_fallback custom op")
    return moe


def one_row(rep: memwall.Report, op: str, phase: str | None = None) -> memwall.Row:
    rows = rows_of(rep, op, phase)
    assert len(rows) == 1, f"expected one {op} row, got {[(r.module, r.phase, r.shapes) for r in rows]}"
    return rows[0]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv("MEMWALL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "empty-cache"))
    monkeypatch.setenv("MEMWALL_CALIBRATE", "0")
    monkeypatch.delenv("MEMWALL_DEVICE", raising=False)
    monkeypatch.delenv("MEMWALL_PEAKS", raising=False)
    monkeypatch.delenv("MEMWALL_LINK", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _hermetic_session(tmp_path_factory) -> Iterator[None]:
    """The same for module- and session-scoped fixtures (a TensorBoard logdir made once for a
    module's tests), which are made before any test's own fixtures: a calibration the developer
    ran must not turn the tab's estimated roofs into calibrated ones."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _hermetic(monkeypatch, tmp_path_factory)
        yield


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch, tmp_path_factory) -> None:
    """Tests never read the developer's calibration cache or device overrides, and do not
    measure the machine on their first profile (tests of that turn it back on)."""
    _hermetic(monkeypatch, tmp_path_factory)
