"""A compiled `optimizer.step()` (PyTorch's "compiling the optimizer" recipe) under memwall.

Dynamo traces the optimizer's step hooks into its graph as nothing, so memwall's hooks never run
inside a compiled step: the step's region itself says it is the optimizer's (its graph was traced
in torch.optim's code). Before, its time read as "other" at the top level, `memwall run` saw one
step where the script ran six, and the hooks memwall added and removed with each profile made
Dynamo compile the step again (inside the profile for a step compiled before it, after the
profile for one compiled inside it)."""

from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
from memwall_plugin.hooks import capture as capture_module
from torch._dynamo.utils import counters

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.records import COMPILE_WALL_KEY

REGION = "higher_order.inductor_compiled_code"
TORCH = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
    # a tensor learning rate, as the recipe has it (a float one recompiles when a scheduler changes it)
    return model, torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3))


@pytest.mark.parametrize("compiled_before", [True, False], ids=["compiled-before", "compiled-inside"])
def test_a_compiled_optimizer_step_is_the_optimizer_phase_and_ends_each_step(fresh_dynamo, compiled_before):
    model, opt = _model()
    twin = copy.deepcopy(model)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=torch.tensor(1e-3))
    step, twin_step = torch.compile(opt.step), torch.compile(twin_opt.step)
    x = torch.randn(8, 256)

    def train(m: torch.nn.Module, o: torch.optim.Optimizer, s) -> None:  # type: ignore[no-untyped-def]
        m(x).square().mean().backward()
        s()
        o.zero_grad()

    for _ in range(4 if compiled_before else 0):
        train(model, opt, step)
    graphs = counters["stats"]["unique_graphs"]
    with memwall.profile(model=model, summary=False, step_on_optimizer=True) as prof:
        for _ in range(3):
            train(model, opt, step)
    inside = counters["stats"]["unique_graphs"]
    train(model, opt, step)
    assert counters["stats"]["unique_graphs"] == inside, "compiled again after the profile"
    if compiled_before:
        assert inside == graphs, "compiled again inside the profile"
    for _ in range(4 if compiled_before else 0):
        train(twin, twin_opt, twin_step)
    for _ in range(4):
        train(twin, twin_opt, twin_step)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))

    rep = prof.report()
    assert len(rep.steps) == 3  # each compiled step ended one, the last one too
    regions = [r for r in rep.rows if r.op == REGION]
    assert regions and {r.phase for r in regions} == {"optimizer"}
    assert sum(r.flops or 0 for r in regions) > 0
    # the state the region reads: AdamW's two moments and step counter per parameter
    state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                if isinstance(v, torch.Tensor))
    lr = opt.param_groups[0]["lr"]
    assert rep.memory.peak_by_category["optimizer_state"] in (state, state + lr.numel() * lr.element_size())
    if not compiled_before:  # its first step compiled: said so, and left out of the host-time share
        compiled = rep.extra[COMPILE_WALL_KEY]
        assert 0 < compiled < rep.wall_time_s
        if compiled / rep.wall_time_s >= 0.2:
            assert any("torch.compile compiling" in f for f in findings(rep))


@pytest.mark.parametrize("marked", ["by memwall", "by prof.step()"])
def test_compiled_optimizer_steps_under_a_schedule_record_only_the_active_steps(fresh_dynamo, marked):
    """memwall run's step ends where a compiled optimizer step ended, when the next forward
    begins: where the schedule makes that next step idle, the forward runs with nothing of memwall
    in it (its module path left on no stack). Steps marked with prof.step() record the same."""
    model, opt = _model()
    step = torch.compile(opt.step)
    x = torch.randn(8, 256)
    schedule = memwall.schedule(wait=0, warmup=0, active=2, repeat=1)
    by_memwall = marked == "by memwall"
    with memwall.profile(model=model, summary=False, step_on_optimizer=by_memwall, schedule=schedule) as prof:
        for _ in range(5):
            model(x).square().mean().backward()
            step()
            opt.zero_grad()
            if not by_memwall:
                prof.step()
    rep = prof.report()
    assert len(rep.steps) == 2
    forward = {r.module for r in rep.rows if r.phase == "forward" and r.op in ("aten.addmm", "aten.relu")}
    assert forward == {"0", "1", "2"}  # each layer's own ops in its own module: no path left over
    assert {r.phase for r in rep.rows if r.op == REGION} == {"optimizer"}
    addmm = sum(r.calls for r in rep.rows if r.phase == "forward" and r.op == "aten.addmm")
    assert addmm == 2 * 2  # two layers' addmm in each of the two active steps


def test_a_schedule_that_waits_on_a_compiled_optimizer_step_says_why_nothing_was_recorded(fresh_dynamo):
    """memwall run ends steps at optimizer steps; a compiled one runs no step hook, so a wait step
    (nothing recorded, no region seen) never ends: the summary says so and what to do."""
    model, opt = _model()
    step = torch.compile(opt.step)
    x = torch.randn(8, 256)
    with memwall.profile(model=model, summary=False, step_on_optimizer=True,
                         schedule=memwall.schedule(wait=1, warmup=0, active=2, repeat=1)) as prof:
        for _ in range(4):
            model(x).square().mean().backward()
            step()
            opt.zero_grad()
    if prof.report().steps:
        # on Python 3.13 Dynamo cannot resume after the graph break in torch.optim's step wrapper
        # (inside its try block) and runs the wrapper eagerly, memwall's step hook with it: the
        # steps end there (inside the compiled call: Capture.stop), as eager ones
        assert prof.report().steps == (1, 2)
        return
    assert prof.report().steps == ()
    note = prof.nothing_recorded()
    assert "compiled (torch.compile)" in note and "prof.step()" in note


def _step_marked_inside_a_compiled_call(wait: int, mode: str) -> tuple[memwall.Report | None, list[torch.Tensor]]:
    """Five training steps whose step boundary (prof.step()) comes inside a torch.compile'd call
    (mode "compiled"): the optimizer step is compiled, with the marking of the step in a function
    Dynamo leaves to eager code (as on Python 3.13, where Dynamo runs torch.optim's step wrapper
    eagerly, and with it memwall's step hook, which ends memwall run's steps). torch.compile puts the thread's dispatch
    keys back as they were when the call began as it returns (torch 2.13 on). "eager": the same
    without torch.compile; "bare": without memwall."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 32)
    schedule = memwall.schedule(wait=wait, warmup=0, active=2, repeat=1)
    prof = memwall.profile(model=model, summary=False, schedule=schedule)

    @torch.compiler.disable
    def mark() -> None:
        if mode != "bare":
            prof.step()

    def update() -> None:
        opt.step()
        mark()

    if mode != "eager":
        update = torch.compile(update, backend="eager")
    with prof if mode != "bare" else contextlib.nullcontext():
        for _ in range(5):
            model(x).square().mean().backward()
            update()
            opt.zero_grad()
    return (prof.report() if mode != "bare" else None), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("keys", ["kept", "not kept"])
@pytest.mark.parametrize("wait", [0, 1], ids=["recording ends inside the call", "recording begins inside the call"])
def test_a_step_boundary_inside_a_compiled_call_leaves_the_run_and_its_record_whole(fresh_dynamo, monkeypatch,
                                                                                    wait, keys):
    """Before, recording that ended inside the call left torch's Python key on with no mode to
    take it: the user's next op failed ("Hit Python dispatch key but no arguments had
    PyInterpreter"). Recording that began inside it was turned off as the call returned: the
    steps it should record lost their forward and backward. From torch 2.14 memwall changes the
    keys the call puts back ("kept"); where it cannot (torch 2.13, "not kept": the call keeps
    them in an object of its own) its mode stays on torch's stack until memwall next runs
    outside the call."""
    if keys == "not kept":
        monkeypatch.setattr(capture_module, "keep_keys_past_compiled_calls", lambda before: False)
    _, bare = _step_marked_inside_a_compiled_call(wait, "bare")
    eager, _ = _step_marked_inside_a_compiled_call(wait, "eager")
    torch._dynamo.reset()
    rep, params = _step_marked_inside_a_compiled_call(wait, "compiled")
    assert all(torch.equal(a, b) for a, b in zip(bare, params))
    assert torch._C._len_torch_dispatch_stack() == 0  # nothing of memwall's left behind
    assert rep is not None and eager is not None and rep.steps == eager.steps and len(rep.steps) == 2

    def work(report: memwall.Report) -> dict[tuple[str, str, str], int]:
        calls: dict[tuple[str, str, str], int] = {}  # summed over the rows' input shapes
        for r in report.rows:
            if r.phase in ("forward", "backward"):
                calls[(r.op, r.phase, r.module)] = calls.get((r.op, r.phase, r.module), 0) + r.calls
        return calls

    # each recorded step's forward and backward, in their modules, as without torch.compile
    assert work(rep) == work(eager)
    assert {m for op, _, m in work(rep) if op == "aten.addmm"} == {"0", "2"}


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_a_training_step_compiled_whole_ends_memwall_runs_steps_at_its_optimizer_step(fresh_dynamo, optimizer):
    """`@torch.compile` on the whole training step (forward, backward, optimizer.step(),
    zero_grad()): the graph break in torch.optim's step wrapper makes Dynamo compile the
    optimizer's own step() frame (sgd.py, adamw.py), with no frame of the wrapper's in its
    graph. Before, that region was not taken for an optimizer step: it read as "other", and
    memwall run's steps never ended (one step held all five, whatever the schedule)."""

    def run(profiled: bool) -> tuple[memwall.Report | None, list[torch.Tensor]]:
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
        opt = getattr(torch.optim, optimizer)(model.parameters(), lr=0.01)
        x = torch.randn(4, 32)

        @torch.compile
        def train_step() -> None:
            model(x).square().mean().backward()
            opt.step()
            opt.zero_grad()

        schedule = memwall.schedule(wait=0, warmup=0, active=2, repeat=1)
        prof = memwall.profile(model=model, summary=False, step_on_optimizer=True, schedule=schedule)
        with prof if profiled else contextlib.nullcontext():
            for _ in range(5):
                train_step()
        assert torch._C._len_torch_dispatch_stack() == 0
        return (prof.report() if profiled else None), [p.detach().clone() for p in model.parameters()]

    _, bare = run(False)
    rep, params = run(True)
    assert all(torch.equal(a, b) for a, b in zip(bare, params))
    assert rep is not None and rep.steps == (0, 1)
    regions = [r for r in rep.rows if r.op == REGION]
    calls = {phase: sum(r.calls for r in regions if r.phase == phase) for phase in ("forward", "optimizer")}
    assert calls["optimizer"] >= 2 and calls["optimizer"] % 2 == 0  # the same regions in each recorded step
    assert calls["forward"] >= 2 and calls["forward"] % 2 == 0
    assert "other" not in {r.phase for r in regions}
    assert sum(r.flops or 0 for r in regions if r.phase == "optimizer") > 0


def _prof_step_in_a_compiled_training_step(wait: int, where: str) -> tuple[memwall.Report | None, list[torch.Tensor]]:
    """Five steps of a training step compiled whole, `prof.step()` written inside it ("inside"),
    after each call of it ("outside"), or no memwall ("bare")."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    x = torch.randn(4, 32)
    schedule = memwall.schedule(wait=wait, warmup=0, active=2, repeat=1)
    prof = memwall.profile(model=model, summary=False, schedule=schedule)

    @torch.compile
    def train_step() -> torch.Tensor:
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if where == "inside":
            prof.step()
        return loss

    with prof if where != "bare" else contextlib.nullcontext():
        for _ in range(5):
            train_step()
            if where == "outside":
                prof.step()
    assert torch._C._len_torch_dispatch_stack() == 0  # nothing of memwall's left behind
    return (prof.report() if where != "bare" else None), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("wait", [0, 1], ids=["recording from the first step", "recording after a wait step"])
def test_prof_step_written_inside_a_compiled_training_step_records_what_it_records_written_after_it(
        fresh_dynamo, wait):
    """Dynamo breaks the graph at prof.step() and runs it as Python, inside the compiled call, as
    it does torch.profiler's step. Before, Dynamo traced into memwall's step: memwall stopped
    with an internal error and recorded nothing more. With a wait step, the recording began
    inside the call, whose end turned memwall's mode off: each recorded step held only its
    backward."""
    _, bare = _prof_step_in_a_compiled_training_step(wait, "bare")
    outside, _ = _prof_step_in_a_compiled_training_step(wait, "outside")
    if wait and (2, 13) <= TORCH < (2, 14):
        # torch 2.13 keeps the keys a compiled call puts back in an object of the call's own,
        # which memwall cannot change: it says what it missed and how to record it
        with pytest.warns(RuntimeWarning, match="turned memwall's recording off as the call returned"):
            inside, params = _prof_step_in_a_compiled_training_step(wait, "inside")
        assert all(torch.equal(a, b) for a, b in zip(bare, params))
        assert inside is not None and {r.phase for r in inside.rows} == {"backward"}
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="memwall")  # its internal-error warning, or any other of memwall's
        inside, params = _prof_step_in_a_compiled_training_step(wait, "inside")
    assert all(torch.equal(a, b) for a, b in zip(bare, params))
    assert inside is not None and outside is not None
    assert inside.steps == outside.steps == (wait, wait + 1)

    def rows(report: memwall.Report) -> list[tuple[str, str, str, int, float | None]]:
        return sorted((r.op, r.phase, r.module, r.calls, r.flops) for r in report.rows)

    assert rows(inside) == rows(outside)
    regions = {r.phase for r in inside.rows if r.op == REGION}
    assert regions == {"forward", "backward", "optimizer"}
