"""Collectives on the interconnect roof, in one process: bytes moved by hand-derived algorithm
factors, message sizes from real c10d schemas, the link's roof and its sources, the report's comm
field through save and load, collision-free file names, the summary's distributed sections."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from fractions import Fraction

import pytest
import torch
from memwall_plugin.hooks.capture import build_call, signature
from memwall_plugin.hooks.collectives import CollectiveRecorder, _Flight, _union
from memwall_plugin.tb_plugin.loader import scan

import memwall_plugin as memwall
from memwall_plugin.ceilings import Link
from memwall_plugin.comm import bus_factor, bytes_moved, message_of
from memwall_plugin.devices import ESTIMATED, Figure, lookup_device
from memwall_plugin.headline import headline, rank_headlines, slowest_rank
from memwall_plugin.report import ReportError, merge_reports
from memwall_plugin.rows import Collective, Row
from memwall_plugin.rundir import RunDir

GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"

# --- bytes moved -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "n", "factor"), [
    ("all_reduce", 2, Fraction(1)),  # 2(n-1)/n: reduce-scatter then all-gather around a ring
    ("all_reduce", 4, Fraction(3, 2)),
    ("all_reduce", 8, Fraction(7, 4)),
    ("all_gather", 4, Fraction(3, 4)),  # (n-1)/n: every rank receives the n-1 other parts
    ("reduce_scatter", 8, Fraction(7, 8)),
    ("all_to_all", 2, Fraction(1, 2)),
    ("broadcast", 4, Fraction(1)),  # pipelined: each rank forwards the whole message once
    ("send", 2, Fraction(1)),
    ("barrier", 8, Fraction(0)),
    ("all_reduce", 1, Fraction(0)),  # a group of one moves nothing
])
def test_bus_factor_is_the_ring_algorithms(kind, n, factor):
    assert bus_factor(kind, n) == factor


def test_bytes_moved_per_rank():
    # a 1000-byte all-reduce over 4 ranks: 2 * 3/4 * 1000 = 1500 bytes out of each rank
    assert bytes_moved("all_reduce", 1000, 4) == 1500
    assert bytes_moved("all_gather", 1000, 3) == 666  # 2/3 of 1000, whole bytes
    with pytest.raises(ValueError, match="unknown collective kind"):
        bus_factor("allreduce", 2)


def _call(op, *args):
    return build_call(op, tuple(signature(a) for a in args), {}, None)


def test_message_sizes_follow_the_c10d_schemas():
    c10d = torch.ops.c10d
    t4, t8 = torch.empty(4), torch.empty(8)
    # all-reduce: the buffers reduced (two tensors: 48 bytes)
    m = message_of(_call(c10d.allreduce_.default, [t4, t8], None, None, None), 2)
    assert (m.kind, m.nbytes, m.elements, m.dtype) == ("all_reduce", 48, 12, "float32")
    # all-gather into one tensor: the gathered output (8 floats), not this rank's input
    m = message_of(_call(c10d._allgather_base_.default, t8, t4, None), 2)
    assert (m.kind, m.nbytes) == ("all_gather", 32)
    # list all-gather: every output tensor of the list of lists
    m = message_of(_call(c10d.allgather_.default, [[t4, t4]], [t4], None), 2)
    assert (m.kind, m.nbytes) == ("all_gather", 32)
    # reduce-scatter: the input that is scattered (8 floats)
    m = message_of(_call(c10d._reduce_scatter_base_.default, t4, t8, None, None), 2)
    assert (m.kind, m.nbytes) == ("reduce_scatter", 32)
    # functional all-gather names only this rank's input: the message is n times it
    m = message_of(_call(torch.ops._c10d_functional.all_gather_into_tensor.default, t4, 4, "0"), 4)
    assert (m.kind, m.nbytes) == ("all_gather", 64)
    m = message_of(_call(c10d.barrier.default, torch.empty(1), None, [], True, -1), 2)
    assert (m.kind, m.nbytes) == ("barrier", 0)


# --- collectives are rows ---------------------------------------------------------------------


def _row(timed_calls: int = 4, **changes) -> Row:
    collective = Collective(kind="all_reduce", group_size=2, timed_calls=timed_calls, message_bytes=16000,
                            message_elements=4000, bytes_moved=16000)
    base = dict(op="c10d.allreduce_", overload="default", module="", phase="backward", calls=4, dtype="float32",
                shapes="[1000]", flops=None, bytes_read=0, bytes_written=0, elements_read=0, elements_written=0,
                time_s=0.008, bandwidth_bytes_per_s=4e9, collective=collective)
    return Row(**{**base, **changes})


def _report(comm: dict | None, rank: int = 0, **changes) -> memwall.Report:
    row = memwall.Row(op="aten.mm", overload="default", module="0", phase="forward", calls=2, dtype="float32",
                      shapes="[4, 4] x [4, 4]", flops=256, bytes_read=256, bytes_written=128, elements_read=64,
                      elements_written=32, time_s=0.002)
    return memwall.Report(rows=(row,), steps=(0, 1), wall_time_s=0.02, rank=rank, world_size=2,
                          device=lookup_device("H100 SXM"), **{**(comm or {}), **changes})


LINK = Link("loopback TCP (one host)", Figure(4e9, ESTIMATED), "memory bandwidth / 4")
COMM = dict(link=LINK, collectives=(_row(),), backend="gloo", job="job-1", local_world_size=2,
            comm_time_s=0.01, overlapped_s=0.004)


def test_collective_row_on_the_link_roof():
    row = _row()
    # 16 kB sent in 8 ms: 2 MB/s of bus bandwidth against a 4 GB/s link
    assert row.bus_bandwidth_bytes_per_s == pytest.approx(2e6)
    assert row.efficiency == pytest.approx(2e6 / 4e9)
    assert row.roofline_time_s == pytest.approx(16000 / 4e9)
    assert row.bound == "communication" and row.bytes == 16000
    half = _row(timed_calls=2, time_s=0.004)  # two of four calls timed: their bytes over their time
    assert half.bus_bandwidth_bytes_per_s == pytest.approx(8000 / 0.004)
    rep = _report(COMM)
    assert rep.exposed_s == pytest.approx(0.006) and rep.overlap_fraction == pytest.approx(0.4)
    # op totals are the ops': the collective's time and bytes are on the link, not in "time in ops"
    assert (rep.total_time_s, rep.total_bytes, rep.bytes_moved) == (0.002, 384, 16000)


def test_report_with_collectives_round_trips_and_single_process_files_have_none(tmp_path):
    rep = _report(COMM)
    back = memwall.load_report(rep.save(tmp_path / "r.json"))
    assert back == rep and back.collectives[0].bus_bandwidth_bytes_per_s == pytest.approx(2e6)
    plain = _report(None).to_dict()
    assert "collectives" not in plain and "link" not in plain and plain["schema_version"] == 2
    assert "collective" not in plain["rows"][0]  # op rows carry no collective record
    assert not memwall.Report.from_dict(plain).distributed


def test_a_version_1_report_with_collectives_still_loads(tmp_path):
    """A rank's report written by the memwall before rows and collectives were one model (a real
    2-rank gloo run, kept in tests/golden): its comm object becomes collective rows and fields."""
    old = memwall.load_report(GOLDEN / "report_v1_ddp_rank1.json")
    assert (old.rank, old.world_size, old.backend, old.local_world_size) == (1, 2, "gloo", 2)
    assert old.job == "20261203-110820-3d769400" and len(old.rows) == 11
    assert old.link.name == "loopback TCP (one host)" and old.link.bandwidth == Figure(2.5e9, ESTIMATED)
    assert [r.collective.kind for r in old.collectives] == [
        "all_reduce", "barrier", "reduce_scatter", "all_gather", "all_reduce", "broadcast"]
    all_reduce = old.collectives[0]
    # the file says: 1000 floats all-reduced over 2 ranks, 4000 bytes sent by the ring
    assert (all_reduce.calls, all_reduce.collective.message_bytes, all_reduce.bytes) == (1, 4000, 4000)
    assert all_reduce.bandwidth_bytes_per_s == 2.5e9 and all_reduce.bound == "communication"
    assert old.comm_time_s == pytest.approx(0.063981182)
    again = memwall.load_report(old.save(tmp_path / "v2.json"))  # written back as version 2
    assert again == old and json.loads((tmp_path / "v2.json").read_text())["schema_version"] == 2


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["collectives"][0]["collective"].update(timed_calls=9), "timed_calls"),
    (lambda d: d["collectives"][0]["collective"].update(kind="allreduce"), "kind"),
    (lambda d: d["collectives"][0]["collective"].update(bytes_moved=-1), "bytes_moved"),
    (lambda d: d["collectives"][0]["collective"].pop("message_bytes"), "message_bytes"),
    (lambda d: d["collectives"][0].update(time_s=float("nan")), "NaN is not a number"),
    (lambda d: d["collectives"][0].pop("collective"), "not a collective"),
    (lambda d: d["rows"][0].update(collective=d["collectives"][0]["collective"]), "is a collective"),
    (lambda d: d["link"]["bandwidth"].update(source="guessed"), "source"),
    (lambda d: d["link"]["bandwidth"].update(value=0), "value"),
    (lambda d: d["meta"].update(comm_time_s=-1), "comm_time_s"),
    (lambda d: d.update(collectives={}), "collectives"),
])
def test_malformed_collectives_are_a_report_error_naming_the_field(tmp_path, change, message):
    data = _report(COMM).to_dict()
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match=message):
        memwall.load_report(path)


def test_merge_and_rescore_carry_the_collectives():
    later = dataclasses.replace(_report(COMM), steps=(2, 3), created_unix_s=1.0)
    merged = merge_reports([_report(COMM), later])
    row = merged.collectives[0]
    assert (row.calls, row.collective.message_bytes, row.time_s) == (8, 32000, pytest.approx(0.016))
    assert (row.collective.timed_calls, row.bytes) == (8, 32000)
    assert merged.comm_time_s == pytest.approx(0.02) and merged.rows[0].calls == 4
    # the paper's 8-bit what-if: 4000 elements of 1 byte; the all-reduce over 2 sends all of it
    small = _report(COMM).rescore(bytes_per_element=1).collectives[0]
    assert (small.collective.message_bytes, small.bytes) == (4000, 4000)
    # a what-if device on one host: its interconnect becomes the roof
    on_a100 = _report(COMM).rescore(device="A100 SXM4 80GB")
    assert (on_a100.link.name, on_a100.link.bytes_per_s) == ("NVLink 3.0", 300e9)
    assert on_a100.collectives[0].bandwidth_bytes_per_s == 300e9
    configured = {**COMM, "link": Link("InfiniBand", Figure(50e9, "user"))}
    assert _report(configured).rescore(device="A100 SXM4 80GB").link.name == "InfiniBand"


def test_windows_of_two_jobs_are_never_merged():
    with pytest.raises(ValueError, match="several jobs"):
        merge_reports([_report(COMM), _report({**COMM, "job": "job-2"})])


def test_ranks_side_by_side_and_the_slowest():
    fast = _report(COMM, rank=0)
    slow = dataclasses.replace(_report(COMM, rank=1), rows=tuple(
        dataclasses.replace(r, time_s=0.01) for r in fast.rows))
    heads = rank_headlines({1: slow, 0: fast})
    assert [h.time_s for h in heads] == [pytest.approx(0.002), pytest.approx(0.01)]
    assert heads[0].comm_share == pytest.approx(0.5)  # 10 ms in flight of 20 ms wall
    assert slowest_rank(heads).rank == 1
    assert headline(fast).exposed_s == pytest.approx(0.006)


# --- timing ------------------------------------------------------------------------------------


def _flight(start, end, busy_start, busy_end) -> _Flight:
    f = _Flight(None, start, busy_start)  # type: ignore[arg-type]
    f.end_ns, f.busy_end_ns, f.ok = end, busy_end, True
    return f


def test_time_in_flight_is_the_union_and_overlap_the_busy_time_inside():
    # [0, 10] and [5, 20] overlap: one span of 20 in which 8 of busy time accrued; [30, 40] alone
    # with none. In flight 30, overlapped 8.
    timing = _union([_flight(30, 40, 8, 8), _flight(0, 10, 0, 4), _flight(5, 20, 2, 8)])
    assert (timing.comm_ns, timing.overlapped_ns) == (30, 8)


def test_a_steps_time_in_flight_counts_only_what_falls_inside_the_step():
    # the step ran from 12 to 35: of [0, 10] nothing, of [5, 20] the 8 from 12 (a call issued in an
    # earlier step), of [30, 40] the 5 up to 35 (waited for after the step ended). Before, a step
    # counted each call whole, and a DDP rank's time in collectives read more than its wall time
    flights = [_flight(30, 40, 8, 8), _flight(0, 10, 0, 4), _flight(5, 20, 2, 8)]
    timing = _union(flights, (12, 35))
    assert timing.comm_ns == 8 + 5 <= 35 - 12
    assert timing.overlapped_ns == 6  # the busy time of [5, 20] (6 of it), none in [30, 35]


class _WorkWithoutFuture:
    """A Work like gloo's reduce-scatter: no future, so the watcher thread waits for it."""

    def __init__(self, done: threading.Event | None = None) -> None:
        self.done = done

    def wait(self) -> bool:
        if self.done is not None:
            self.done.wait()
        return True


def _watchers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "memwall-collectives"]


def test_close_ends_the_watcher_thread_and_lets_go_of_its_works():
    # a thread left running after the profile drops its last Work during interpreter shutdown: the
    # Work's destructor takes the GIL back then, and Python ends the thread inside it (SIGABRT,
    # "terminate called without an active exception"); so close() joins it, Work already dropped
    recorder = CollectiveRecorder(tracker=None)  # type: ignore[arg-type]
    work = _WorkWithoutFuture()
    gone = weakref.ref(work)
    flight = _Flight(None, time.perf_counter_ns(), 0)  # type: ignore[arg-type]
    flight.work = work
    recorder._fly(flight)
    recorder._watch(work, flight)
    del work
    recorder._drain()  # the run's last take
    assert flight.ok and flight.work is None and recorder.in_flight == 0
    recorder.close()
    assert not _watchers() and gone() is None


def test_close_leaves_a_watcher_blocked_in_a_collective_that_never_ends():
    recorder = CollectiveRecorder(tracker=None)  # type: ignore[arg-type]
    done = threading.Event()
    flight = _Flight(None, time.perf_counter_ns(), 0)  # type: ignore[arg-type]
    flight.work = _WorkWithoutFuture(done)
    recorder._fly(flight)
    recorder._watch(flight.work, flight)
    start = time.perf_counter()
    recorder.close()  # a dead peer: nothing to join, and no wait for it
    assert time.perf_counter() - start < 1 and flight.work is None
    done.set()  # the collective ends after all: the thread stamps it and ends
    for thread in _watchers():
        thread.join(5)
    assert not _watchers() and flight.ok


# --- files -------------------------------------------------------------------------------------


def test_a_second_run_into_the_same_directory_never_overwrites(tmp_path):
    rep = _report(COMM)
    first = RunDir(tmp_path).publish(rep)
    second = RunDir(tmp_path).publish(dataclasses.replace(rep, wall_time_s=0.5, job="job-2"))
    assert (first.name, second.name) == ("rank0_steps000000-000001.json", "rank0_steps000000-000001.1.json")
    assert memwall.load_report(first).wall_time_s == 0.02 and memwall.load_report(second).wall_time_s == 0.5
    # nothing staged left; the ranks' heads beside them (a rank of a job leaves one per file)
    assert {p.name for p in first.parent.iterdir()} == {first.name, second.name, ".heads"}
    assert {p.name for p in (first.parent / ".heads").iterdir()} == {first.name, second.name}
    windows = scan(tmp_path)["."].windows
    assert [(w.rank, w.first_step, w.last_step) for w in windows] == [(0, 0, 1), (0, 0, 1)]


def test_profile_into_a_used_logdir_keeps_both_reports(tmp_path):
    for _ in range(2):
        with memwall.profile(logdir=tmp_path, summary=False, scalars=False):
            torch.randn(8, 8) @ torch.randn(8, 8)
    assert sorted(p.name for p in (tmp_path / "plugins" / "memwall").glob("*.json")) == [
        "rank0_steps000000-000000.1.json", "rank0_steps000000-000000.json"]


# --- the summary ---------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [80, 100, 120])
def test_summary_shows_the_link_collectives_and_ranks(width):
    rank1 = dataclasses.replace(_report(COMM, rank=1), wall_time_s=0.03)
    text = memwall.Summary(_report(COMM), ranks={0: _report(COMM), 1: rank1})
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))
    console.print(text)
    out = console.export_text()
    assert "Communication  rank 0 of 2, gloo" in out
    assert "loopback TCP (one host), 4 GB/s per direction (estimated)" in out
    assert "all_reduce" in out and "COMM" in out
    assert "Ranks side by side" in out and "slowest" in out
    assert max(len(line.rstrip()) for line in out.splitlines()) <= width


def test_names_in_the_distributed_summary_are_text_not_markup():
    """A link, backend or phase named like rich markup is shown as written (console.py draws every
    report text as plain text, collectives as ops)."""
    evil = {**COMM, "link": Link("[blink]EVIL[/blink]", Figure(4e9, ESTIMATED), "[red]note[/red]"),
            "backend": "[bold]gloo[/bold]", "collectives": (_row(phase="[i]bwd[/i]"),)}
    out = memwall.render_text(_report(evil), width=120)
    assert "[blink]EVIL[/blink]" in out and "[red]note[/red]" in out and "[bold]gloo[/bold]" in out
    assert "[i]bwd[/i]" in out


def test_single_process_summary_has_no_distributed_part():
    out = memwall.render_text(_report(None), width=100)
    assert "Communication" not in out and "Ranks side by side" not in out


# --- a rank stopped by torchrun ----------------------------------------------------------------

SURVIVOR = textwrap.dedent('''
    import sys, time, torch
    import memwall_plugin as memwall
    with memwall.profile(logdir=sys.argv[1], scalars=False) as prof:
        for step in range(10_000):
            torch.randn(64, 64) @ torch.randn(64, 64)
            prof.step()
            if step == 2:
                print("ready", flush=True)
            time.sleep(0.01)
''')


def test_sigterm_from_the_launcher_saves_the_partial_report(tmp_path):
    """torchrun stops the other ranks with SIGTERM when one dies; the rank's report survives."""
    script = tmp_path / "survivor.py"
    script.write_text(SURVIVOR)
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "memwall: rank 1 got signal 15 (its launcher stopping it?) in " in err  # where it landed, in its log
    (path,) = (tmp_path / "run" / "plugins" / "memwall").glob("rank1_*.json")
    rep = memwall.load_report(path)
    assert rep.incomplete and rep.rank == 1 and rep.world_size == 2 and len(rep.steps) >= 3
    assert "memwall" not in out  # rank 1 prints no summary


def test_sigterm_while_the_report_is_saved_waits_for_it(tmp_path):
    """A SIGTERM that lands while the profile is saving is held, then ends the process as usual."""
    code = textwrap.dedent('''
        import os, signal
        from memwall_plugin.distributed import TerminationGuard
        guard = TerminationGuard()
        guard.install()
        guard.hold()
        os.kill(os.getpid(), signal.SIGTERM)
        print("saved", flush=True)
        guard.remove()
        guard.deliver_held()
        print("not reached", flush=True)
    ''')
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["saved"] and result.returncode == -signal.SIGTERM


ENDED_UNDER_SIGTERM = textwrap.dedent('''
    import os, signal, sys, torch
    import memwall_plugin as memwall
    from memwall_plugin import sinks

    close_scalars = sinks.Scalars.end

    def end_after_a_sigterm(self, prof):
        # torchrun's SIGTERM lands while the profile's sinks finish (the report is saved; the
        # scalars' event file is being flushed and closed)
        os.kill(os.getpid(), signal.SIGTERM)
        close_scalars(self, prof)
        print("closed", flush=True)

    sinks.Scalars.end = end_after_a_sigterm
    with memwall.profile(logdir=sys.argv[1], summary=False) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    print("not reached", flush=True)
''')


def test_a_sigterm_while_a_profile_ends_waits_until_its_files_are_written(tmp_path):
    """The profile holds SIGTERM from its exit until every sink has finished (the guard used to
    come down before the sinks' own ends: a launcher's SIGTERM then cut the scalars' file, or
    a summary, or a kineto trace, short)."""
    script = tmp_path / "ending.py"
    script.write_text(ENDED_UNDER_SIGTERM)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.stdout.split() == ["closed"], result.stdout + result.stderr
    assert result.returncode == -signal.SIGTERM, result.stderr  # then SIGTERM's own action, as without memwall
    (path,) = (tmp_path / "run" / "plugins" / "memwall").glob("rank0_*.json")
    assert memwall.load_report(path).world_size == 2
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))  # the scalars' file, closed


SIGTERM_THEN_FAILURE = textwrap.dedent('''
    import hashlib, os, signal, sys, threading, torch
    import memwall_plugin as memwall
    data = b"x" * (1 << 28)
    with memwall.profile(logdir=sys.argv[1], summary=False, scalars=False) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
        # torchrun's SIGTERM lands while C code runs (a collective waiting on a peer that died),
        # which then fails: no Python line runs between the two (hashing releases the GIL and
        # checks no signal), so Python runs the handler at the first line of the profile's exit
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGTERM)).start()
        list(map(hashlib.sha256, [data, data, data, data, 0]))
''')


def test_a_sigterm_that_lands_as_the_profile_exit_begins_still_leaves_the_report(tmp_path):
    """The killed-rank test's rare failure at torch 2.11, made to happen: rank 0's SIGTERM came
    while gloo waited on the dead peer, and its handler ran at the first line of the profile's
    exit, before the exit held signals: the raise ended the exit and no report was saved."""
    script = tmp_path / "failing.py"
    script.write_text(SIGTERM_THEN_FAILURE)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == -signal.SIGTERM, result.stderr  # held, then delivered once saved
    (path,) = (tmp_path / "run" / "plugins" / "memwall").glob("rank0_*.json")
    assert memwall.load_report(path).incomplete  # the failure cut the run short


SIGTERM_IN_A_CAUGHT_FAILURE = textwrap.dedent('''
    import hashlib, os, signal, sys, threading, time, torch
    import memwall_plugin as memwall
    data = b"x" * (1 << 28)
    with memwall.profile(logdir=sys.argv[1], summary=False, scalars=False) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGTERM)).start()
        try:  # the failure is caught, and the script goes on
            list(map(hashlib.sha256, [data, data, data, data, 0]))
        except TypeError:
            pass
        for _ in range(200):
            time.sleep(0.05)
        print("went on to the end")
''')


def test_a_sigterm_that_lands_while_a_caught_failure_unwinds_still_stops_the_rank_with_its_report(tmp_path):
    """Python 3.10 runs the handler while a failure unwinds, where an exception it raises can
    pass over the profile's `with` (the test above: no report); the signal is held there. Held
    only, it would wait for the profile's end while a script that caught the failure went on:
    it is sent again, and the rank stops soon after the script's `except`, with its report."""
    script = tmp_path / "caught.py"
    script.write_text(SIGTERM_IN_A_CAUGHT_FAILURE)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert "went on to the end" not in result.stdout
    assert result.returncode in (143, -signal.SIGTERM), result.stderr
    (path,) = (tmp_path / "run" / "plugins" / "memwall").glob("rank0_*.json")
    assert memwall.load_report(path).incomplete


def test_ranks_of_one_launch_pick_one_default_run_directory():
    """`memwall run`'s default directory: the launcher's start time, the same for all its ranks."""
    from memwall_plugin.distributed import launcher_started_unix_s

    code = "from memwall_plugin.distributed import default_run_stamp; print(default_run_stamp())"
    env = {**os.environ, "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    stamps = {p.communicate(timeout=60)[0].strip() for p in procs}
    started = launcher_started_unix_s(os.getpid())  # this process launched both
    assert started is not None and abs(started - time.time()) < 24 * 3600
    assert stamps == {time.strftime("%Y%m%d-%H%M%S", time.localtime(started))}
