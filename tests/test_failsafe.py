"""memwall's own errors never reach the user's run: one warning, recording stops, the run goes on
with identical numbers, and what was recorded before stays in an incomplete report."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from memwall_plugin.hooks import capture as capture_module
from memwall_plugin.hooks.modules import ModuleTracker

import memwall_plugin as memwall


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _train(steps: int, prof: Any = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Losses and final parameters of a few SGD steps (marking steps when `prof` is given)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(4, 8, generator=gen)
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach().clone())
        if prof is not None:
            prof.step()
    return losses, [p.detach().clone() for p in model.parameters()]


def _memwall_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "memwall" in str(w.message)]


def _assert_identical(a: tuple[list[torch.Tensor], list[torch.Tensor]],
                      b: tuple[list[torch.Tensor], list[torch.Tensor]]) -> None:
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert torch.equal(x, y)


def _fail_after(n: int, original: Callable[..., Any]) -> Callable[..., Any]:
    calls = {"n": 0}

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > n:
            raise ValueError("simulated memwall bug")
        return original(*args, **kwargs)

    return broken


def test_an_error_while_recording_disables_memwall_once_and_the_run_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = _train(6)
    monkeypatch.setattr(capture_module.Capture, "record", _fail_after(40, capture_module.Capture.record))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=False) as prof:
            profiled = _train(6, prof)
    _assert_identical(bare, profiled)
    messages = _memwall_warnings(caught)
    assert len(messages) == 1, messages
    assert "simulated memwall bug" in messages[0] and "stopped recording" in messages[0]
    rep = prof.report()
    assert rep.incomplete
    assert sum(r.calls for r in rep.rows) == 40  # exactly what was recorded before the error


def test_an_error_in_a_module_hook_never_reaches_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = _train(3)
    monkeypatch.setattr(ModuleTracker, "_name_of", _fail_after(2, ModuleTracker._name_of))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=False) as prof:
            profiled = _train(3, prof)
    _assert_identical(bare, profiled)
    messages = _memwall_warnings(caught)
    assert len(messages) == 1 and "_pre_forward" in messages[0], messages
    assert prof.report().incomplete


def test_an_error_at_a_step_boundary_does_not_stop_the_loop() -> None:
    from memwall_plugin.sinks import Sink

    class FailingSink(Sink):
        """A sink that breaks at the second step it is handed (after building its report)."""

        wants_steps = True
        calls = 0

        def step(self, prof: Any, step: int, report: Any) -> None:
            report()
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("injected")

    bare = _train(5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=False, logdir=None) as prof:
            prof.sinks.append(FailingSink())
            profiled = _train(5, prof)
    _assert_identical(bare, profiled)
    messages = _memwall_warnings(caught)
    assert len(messages) == 1 and "marking a step" in messages[0], messages
    assert prof.step_num == 5
    rep = prof.report()
    # the step whose sink failed was recorded whole before it (nothing is lost); later ones are not
    assert rep.incomplete and rep.steps == (0, 1)


def test_an_error_building_the_report_at_exit_is_a_warning_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    recorder_module = importlib.import_module("memwall_plugin.recorder")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("simulated report bug")

    monkeypatch.setattr(recorder_module, "rows_from_entries", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=True) as prof:
            result = _model()(torch.ones(2, 8))
    assert result.shape == (2, 4)
    assert any("simulated report bug" in m for m in _memwall_warnings(caught))
    assert prof.step_num == 0


class _Strideless(torch.Tensor):
    """A tensor subclass memwall cannot read: its stride() raises an unexpected error type."""

    def stride(self, *args: Any) -> Any:  # type: ignore[override]
        raise TypeError("this subclass hides its strides")


def test_a_tensor_subclass_memwall_does_not_understand_leaves_results_identical() -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 8)
    x = torch.randn(4, 8)
    bare = (torch.relu(x @ weight) + 1).sum()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(summary=False) as prof:
            y = torch.randn(4, 8)  # recorded before the subclass appears
            del y
            odd = x.as_subclass(_Strideless)
            profiled = (torch.relu(odd @ weight) + 1).sum()
    assert torch.equal(profiled.as_subclass(torch.Tensor), bare)
    messages = _memwall_warnings(caught)
    assert len(messages) == 1 and "hides its strides" in messages[0], messages
    rep = prof.report()
    assert rep.incomplete and any(r.op == "aten.randn" for r in rep.rows)




def test_a_formula_that_raises_leaves_its_op_uncounted_with_one_warning() -> None:
    registry = memwall.default_registry().copy()

    def broken(call: Any) -> int:
        raise ZeroDivisionError("simulated formula bug")

    registry._flops["aten.mm"] = broken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with memwall.profile(registry=registry, summary=False) as prof:
            for n in range(2, 12):  # ten signatures of the broken op
                a = torch.ones(n, n)
                b = (a @ a) + 1
    assert torch.equal(b, torch.full((11, 11), 12.0))
    messages = [m for m in _memwall_warnings(caught) if "aten.mm" in m]
    assert len(messages) == 1 and "simulated formula bug" in messages[0]
    rep = prof.report()
    mm = [r for r in rep.rows if r.op == "aten.mm"]
    assert len(mm) == 10 and all(r.flops is None and r.bytes > 0 for r in mm)
    adds = [r for r in rep.rows if r.op == "aten.add"]
    assert sum(r.flops or 0 for r in adds) == sum(n * n for n in range(2, 12))  # the rest is counted


def test_a_users_op_error_reaches_them_through_frames_ipython_and_pytest_hide() -> None:
    """An error of the user's own op (a shape mismatch in their forward) propagates through
    memwall's dispatch mode: in a notebook the traceback ended in memwall's frames (capture.py,
    _torch_private.py), as if memwall had failed. Each such frame now asks to be hidden
    (`__tracebackhide__`, which IPython and pytest honour); the error itself is the bare run's."""
    import os
    import traceback

    import memwall_plugin

    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(9, 4))  # 8 outputs into 9 inputs
    x = torch.randn(3, 16)
    with pytest.raises(RuntimeError) as bare:
        model(x)
    with pytest.raises(RuntimeError) as seen, memwall.profile(model=model, summary=False):
        model(x)
    assert type(seen.value) is type(bare.value) and str(seen.value) == str(bare.value)
    import memwall_plugin.hooks

    packages = tuple(os.path.abspath(p) + os.sep for p in (os.path.dirname(memwall_plugin.__file__),
                                                             *memwall_plugin.hooks.__path__))
    frames = [frame for frame, _ in traceback.walk_tb(seen.value.__traceback__)]
    mine = [f for f in frames if os.path.abspath(f.f_code.co_filename).startswith(packages)]
    assert mine, "the op's error passed through memwall's dispatch mode"
    assert [f.f_code.co_name for f in mine if not f.f_locals.get("__tracebackhide__")] == []
