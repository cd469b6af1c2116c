"""The GPU's own record of each op's kernels (hooks/kernel_clock.py), read without a GPU.

The profiler's events are given as it reports them on a GPU (checked there by tests/test_cuda.py):
on the device, each range memwall opened around an op becomes an annotation spanning that op's
kernels on each stream it used. The figures here are worked out by hand from the intervals."""

from __future__ import annotations

import pytest
import torch
from memwall_plugin.hooks.kernel_clock import attribute, busy_time

import memwall_plugin as memwall


def test_each_kernel_goes_to_the_op_whose_annotation_holds_it_on_its_stream():
    events = [
        ("memwall#0", False, 1, 0, 50),  # host-side ranges: not the device's record
        ("memwall#0", True, 7, 100, 180),  # op 0: two kernels on stream 7, a 20 ns gap between them
        ("gemm_a", True, 7, 100, 130),
        ("gemm_b", True, 7, 150, 180),
        ("memwall#1", True, 7, 200, 260),  # op 1: one kernel on stream 7 ...
        ("elementwise", True, 7, 200, 260),
        ("memwall#1", True, 9, 210, 300),  # ... and a copy on stream 9 overlapping it
        ("Memcpy DtoD (Device -> Device)", True, 9, 210, 300),
        ("nccl_kernel", True, 9, 400, 450),  # no op of memwall's launched it (another thread's library)
    ]
    ops, busy = attribute(events)
    assert sorted(ops) == [0, 1]
    assert ops[0].ns == 30 + 30 and ops[0].names == ["gemm_a", "gemm_b"]  # the gap is not the op's
    assert ops[1].ns == 60 + 90 and ops[1].names == ["elementwise", "Memcpy DtoD (Device -> Device)"]
    # busy: [100,130] [150,180] [200,300] (two streams overlapping, counted once) [400,450]
    assert busy_time(busy) == 30 + 30 + 100 + 50


def test_a_kernel_inside_nested_ranges_belongs_to_the_innermost():
    events = [("memwall#3", True, 7, 0, 100), ("memwall#4", True, 7, 10, 40), ("k_inner", True, 7, 10, 40),
              ("k_outer", True, 7, 60, 100)]
    ops, _ = attribute(events)
    assert (ops[4].ns, ops[4].names) == (30, ["k_inner"])
    assert (ops[3].ns, ops[3].names) == (40, ["k_outer"])


def test_a_misspelt_cuda_clock_choice_fails_before_the_run(monkeypatch):
    monkeypatch.setenv("MEMWALL_CUDA_TIME", "kernel")
    with pytest.raises(ValueError, match="MEMWALL_CUDA_TIME='kernel'.*'kernels'.*'events'"):
        memwall.profile(summary=False)
    monkeypatch.setenv("MEMWALL_CUDA_TIME", "events")
    with memwall.profile(summary=False):
        pass


@pytest.fixture
def cpu_clock(monkeypatch):
    """memwall's kernel clock with the host's activity standing in for the GPU's (this machine
    has none): the same torch profiler session, started and stopped the same way."""
    import memwall_plugin.hooks.kernel_clock as kc
    from torch._C._profiler import ProfilerActivity, ProfilerConfig, ProfilerState, RecordScope, _ExperimentalConfig

    def start() -> None:
        config = ProfilerConfig(ProfilerState.KINETO, False, False, False, False, False, _ExperimentalConfig())
        torch._C._autograd._prepare_profiler(config, {ProfilerActivity.CPU})
        torch._C._autograd._enable_profiler(config, {ProfilerActivity.CPU}, {RecordScope.USER_SCOPE})

    monkeypatch.setattr(kc, "device_activity_supported", lambda: True)
    monkeypatch.setattr(kc, "start_device_activity", start)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    handed: list[bool] = []
    clock = kc.KernelClock(on_handover=lambda: handed.append(clock.running))
    yield clock, handed
    if clock.running:
        clock.stop()


def test_a_torch_profiler_started_while_the_clock_runs_takes_over_and_records_in_full(cpu_clock, capfd):
    from memwall_plugin.hooks.kernel_clock import HANDED_OVER

    clock, handed = cpu_clock
    assert clock.start() and clock.running
    with torch.profiler.profile() as user:
        assert handed == [True] and not clock.running  # read while it still held the ops so far
        assert clock.unavailable == HANDED_OVER
        assert not clock.start()  # theirs records: memwall's waits
        torch.ones(8).add(1)
    assert any(e.name == "aten::add" for e in user.events())  # the user's profiler kept its record
    assert "no active profiling session" not in capfd.readouterr().err  # nobody stopped the other's
    assert clock.start()  # theirs has ended: memwall's clock runs again
    clock.stop()


def test_a_scheduled_profiler_in_its_warm_up_keeps_the_clock_off(cpu_clock):
    clock, handed = cpu_clock
    sched = torch.profiler.schedule(wait=0, warmup=1, active=1, repeat=1)
    with torch.profiler.profile(schedule=sched) as user:
        assert not clock.start()  # prepared (warming up), not yet recording: still theirs
        user.step()
        assert not clock.start()
        torch.ones(8).add(1)
        user.step()
    assert clock.start()
    clock.stop()
    assert handed == []  # the clock never ran while theirs did


def test_a_live_steps_timeline_leaves_memwalls_own_time_out_of_the_gpus_idle_share():
    import dataclasses

    from memwall_plugin.console import findings
    from memwall_plugin.recorder import timeline_extra

    # two steps of (step, wall s, GPU busy s, memwall's own s, op calls)
    timeline = timeline_extra([(0, 0.010, 0.0005, 0.002, 400), (1, 0.012, 0.0015, 0.002, 600)])
    # by hand: 2 ms busy of 22 ms wall less 4 ms of memwall's own work, 18 ms
    assert timeline["idle_fraction"] == pytest.approx(1 - 2 / 18)
    assert timeline["steps"][0]["idle_fraction"] == pytest.approx(1 - 0.5 / 8)
    assert timeline["host_s_per_op"] == pytest.approx(0.018 / 1000)
    assert timeline["steps"][1]["host_s_per_op"] == pytest.approx(0.010 / 600)
    with memwall.profile(summary=False) as prof:
        torch.randn(256, 256) @ torch.randn(256, 256)
    rep = dataclasses.replace(prof.report(), extra={**prof.report().extra, "timeline": timeline})
    (said,) = [f for f in findings(rep) if "launch-bound" in f]
    assert said.startswith("the GPU was idle 89% of the recorded steps waiting for the host (busy 2 ms of 18 ms, "
                           "memwall's own 4 ms left out; the host took 18 us per op over 1,000 ops)")


def test_a_launch_bound_run_that_uses_cuda_graphs_is_not_told_to_use_them():
    """The remedy for a launch-bound run names CUDA graphs; a run that already runs some of its
    work as CUDA graphs (reduce-overhead regions, graphs of its own) is told to capture more."""
    import dataclasses

    from memwall_plugin.console import findings
    from memwall_plugin.recorder import timeline_extra
    from memwall_plugin.records import CUDA_GRAPHS_KEY

    timeline = timeline_extra([(0, 0.010, 0.0005, 0.0, 400)])
    with memwall.profile(summary=False) as prof:
        torch.randn(256, 256) @ torch.randn(256, 256)
    plain = dataclasses.replace(prof.report(), extra={"timeline": timeline})
    (said,) = [f for f in findings(plain) if "launch-bound" in f]
    assert said.endswith("CUDA graphs, larger batches or torch.compile's reduce-overhead mode help.")
    for graphs in ({"region_calls": 12}, {"captured_calls": {"aten.mm": 3}}):
        rep = dataclasses.replace(plain, extra={"timeline": timeline, CUDA_GRAPHS_KEY: graphs})
        (said,) = [f for f in findings(rep) if "launch-bound" in f]
        assert "uses CUDA graphs already: capturing more of the step into them" in said
        assert "reduce-overhead mode help" not in said
