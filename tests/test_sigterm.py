"""A SIGTERM (a scheduler's preemption, `timeout`, `kill`) or a SIGHUP (a closed terminal) under a
profile of one process: memwall saves what it recorded, then the signal ends the process exactly as
without memwall (no code of the script runs after it, the same exit), wherever the signal lands."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import memwall_plugin as memwall

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")

PREEMPTED = textwrap.dedent('''
    import os, signal, sys, time, torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        for i in range(1000):
            loss = model(torch.randn(8, 64)).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad()
            print(f"step {i} loss {loss.item():.6f}", flush=True)
            if i == 5:  # the scheduler preempts the job (SIGTERM), or its terminal closes (SIGHUP)
                os.kill(os.getpid(), getattr(signal, sys.argv[-1]))
                time.sleep(2)
    finally:
        print("the script's finally ran", flush=True)
    print("the script ended", flush=True)
''')


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "MEMWALL_CALIBRATE": "0"})


def _report(folder: Path) -> memwall.Report:
    (path,) = (folder / "plugins" / "memwall").glob("rank0_*.json")
    return memwall.load_report(path)


def _ended_by_sigterm(tmp_path: Path, name: str, code: str, arg: int) -> tuple[str, memwall.Report]:
    """Run a script that SIGTERM ends (`code`, given its logdir and `arg`): it ended by the signal,
    memwall said nothing went wrong, and its report is whole. Its stdout and report."""
    script = tmp_path / name
    script.write_text(code)
    result = _run([sys.executable, str(script), str(tmp_path / "run"), str(arg)], tmp_path)
    assert result.returncode == -signal.SIGTERM, result.stdout + result.stderr
    assert "not reached" not in result.stdout and "Warning" not in result.stderr, result.stderr
    assert "could not finish" not in result.stderr, result.stderr
    assert f"memwall: the process got SIGTERM in {script.parent}" in result.stderr  # the script's line, not memwall's
    rep = _report(tmp_path / "run")
    assert rep.incomplete and rep.steps and all(r.calls >= 1 for r in rep.rows)
    return result.stdout, rep


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_memwall_run_saves_a_preempted_scripts_report_and_it_ends_as_without_memwall(tmp_path: Path,
                                                                                     name: str) -> None:
    script = tmp_path / "train.py"
    script.write_text(PREEMPTED)
    signum = getattr(signal, name)
    bare = _run([sys.executable, str(script), name], tmp_path)
    under = _run([sys.executable, "-m", "memwall_plugin.cli", "run", "--logdir", str(tmp_path / "run"), str(script),
                  name], tmp_path)
    # ended by the signal at step 5, as the bare script was: its finally did not run, nothing after it
    assert bare.returncode == -signum, bare.stderr
    assert under.returncode == -signum, under.stderr
    assert bare.stdout.splitlines()[-1].startswith("step 5 loss")
    assert under.stdout.startswith(bare.stdout)  # the script's own output, then memwall run's summary
    assert "6 steps recorded  INCOMPLETE: the profiled block was cut short" in under.stdout[len(bare.stdout):]
    line = PREEMPTED.splitlines().index("            os.kill(os.getpid(), getattr(signal, sys.argv[-1]))") + 1
    assert f"memwall: the process got {name} in {script}:{line} (<module>)" in under.stderr  # where it landed
    assert f"memwall: partial report saved under {tmp_path / 'run' / 'plugins' / 'memwall'}" in under.stderr
    rep = _report(tmp_path / "run")
    assert rep.incomplete and rep.steps == (0, 1, 2, 3, 4, 5)  # steps end at each optimizer step
    assert {r.phase for r in rep.rows} >= {"forward", "backward", "optimizer"}
    assert all(r.calls >= 1 for r in rep.rows)


INSIDE_MEMWALL = textwrap.dedent('''
    import os, signal, sys, torch
    import memwall_plugin as memwall
    from memwall_plugin.hooks import memory

    after_op = memory.MemoryTracker.after_op
    seen = [0]

    def after_op_then_sigterm(self, *args):
        seen[0] += 1
        if seen[0] == int(sys.argv[2]):  # while memwall records an op: the signal lands in its code
            os.kill(os.getpid(), signal.SIGTERM)
        return after_op(self, *args)

    memory.MemoryTracker.after_op = after_op_then_sigterm
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    with memwall.profile(logdir=sys.argv[1], summary=True) as prof:
        for i in range(1000):
            model(torch.randn(8, 64)).sum().backward()
            prof.step()
    print("not reached", flush=True)
''')


@pytest.mark.parametrize("at_op", [3, 40, 41])  # in set-up, in a forward, in a backward
def test_a_sigterm_landing_inside_memwalls_handling_of_an_op_ends_the_profile_from_there(tmp_path: Path,
                                                                                         at_op: int) -> None:
    """With memwall recording, every op runs below its dispatch mode, so that is where a signal
    mostly lands. Ending the profile from there took memwall's mode off torch's stack while torch
    had it off already (`pop from empty mode stack`): the summary and the other files were lost.
    (Sending the signal again until it landed elsewhere never did: it lands there again.)"""
    out, _ = _ended_by_sigterm(tmp_path, "inside.py", INSIDE_MEMWALL, at_op)
    assert "INCOMPLETE" in out and "Top " in out  # the summary, as for an error


ANY_TIME = textwrap.dedent('''
    import os, random, signal, sys, threading, time, torch
    import memwall_plugin as memwall

    random.seed(int(sys.argv[2]))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.LayerNorm(64),
                                torch.nn.Linear(64, 8))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # the scheduler's signal, at a moment the script does not choose
    threading.Timer(random.uniform(0.5, 1.5), os.kill, (os.getpid(), signal.SIGTERM)).start()
    with memwall.profile(logdir=sys.argv[1], summary=False) as prof:
        for i in range(100000):
            model(torch.randn(4, 32)).square().mean().backward()
            opt.step()
            opt.zero_grad()
            prof.step()
    print("not reached", flush=True)
''')


@pytest.mark.parametrize("seed", range(4))
def test_a_sigterm_at_any_moment_of_training_leaves_a_whole_report(tmp_path: Path, seed: int) -> None:
    """Wherever it lands (an op below memwall's mode, a module or optimizer hook, a step boundary,
    the user's own code), the report is whole: every row counted, readable, marked incomplete."""
    _, rep = _ended_by_sigterm(tmp_path, "any_time.py", ANY_TIME, seed)
    assert len(rep.steps) >= 2 and {r.phase for r in rep.rows} >= {"forward", "backward", "optimizer"}


NESTED_AND_FORKED = textwrap.dedent('''
    import os, signal, sys, time, torch
    import memwall_plugin as memwall

    model = torch.nn.Linear(32, 32)
    with memwall.profile(logdir=sys.argv[1], summary=False):
        started, tell = os.pipe()
        pid = os.fork()
        if pid == 0:  # a forked child (a DataLoader worker) stopped by its parent: as without memwall
            os.write(tell, b"x")
            time.sleep(30)
            os._exit(0)
        os.read(started, 1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print("child", os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, flush=True)
        for i in range(1000):
            model(torch.randn(4, 32)).sum().backward()
            if i == 3:
                print("ready", flush=True)
            time.sleep(0.01)
    print("not reached", flush=True)
''')


def test_an_outside_sigterm_saves_every_open_profile_and_a_forked_child_keeps_the_default(tmp_path: Path) -> None:
    """`memwall run` around a script with its own profile: both save (innermost first). A child
    forked inside inherits the handler; there SIGTERM ends it at once, writing nothing."""
    script = tmp_path / "nested.py"
    script.write_text(NESTED_AND_FORKED)
    proc = subprocess.Popen([sys.executable, "-m", "memwall_plugin.cli", "run", "--logdir", str(tmp_path / "outer"),
                             str(script), str(tmp_path / "inner")], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "MEMWALL_CALIBRATE": "0"})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().split() == ["child", "True"]
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGTERM, err
    assert "not reached" not in out
    inner = _report(tmp_path / "inner")
    assert inner.incomplete and {r.op for r in inner.rows} >= {"aten.addmm", "aten.sum"}
    assert len(list((tmp_path / "inner" / "plugins" / "memwall").glob("*.json"))) == 1  # none from the child
    outer = _report(tmp_path / "outer")  # memwall run's: its set-up before the script's profile
    assert outer.incomplete
    assert err.index(str(tmp_path / "inner")) < err.index(str(tmp_path / "outer"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_memwall_handles_the_signal_only_over_the_default_and_only_while_a_profile_is_open(signum: int) -> None:
    assert signal.getsignal(signum) is signal.SIG_DFL
    with memwall.profile(summary=False):
        assert signal.getsignal(signum) is not signal.SIG_DFL
        with memwall.profile(summary=False):  # a nested profile changes nothing
            torch.ones(2) + 1
        assert signal.getsignal(signum) is not signal.SIG_DFL
    assert signal.getsignal(signum) is signal.SIG_DFL

    def own(signum: int, frame: object) -> None:
        pass

    signal.signal(signum, own)  # the script's own handler (a framework's) is left alone
    try:
        with memwall.profile(summary=False):
            assert signal.getsignal(signum) is own
        assert signal.getsignal(signum) is own
    finally:
        signal.signal(signum, signal.SIG_DFL)


def test_an_op_whose_recording_was_cut_short_is_left_out_of_the_report(tmp_path: Path) -> None:
    """The state a SIGTERM can leave when it lands in the middle of memwall's recording of an op:
    an entry made for it but not counted yet, some of its tensors noted for the reuse distances
    but not its call. `settle` leaves that op out; the rest saves whole (without it, the reuse
    distances' arrays disagree in length and the window is not saved)."""
    model = torch.nn.Linear(16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # memwall's own trouble is a warning: none here
        with memwall.profile(logdir=tmp_path / "run", summary=False) as prof:
            model(torch.randn(4, 16)).sum().backward()
            capture = prof._recorder.capture
            assert capture is not None
            made = next(iter(capture.table.values()))
            cut = type(made)(made.func, made.arg_key, made.kw_key, made.out_key, made.device, "cut", made.phase)
            capture.table[("cut",)] = cut  # calls 0: its call was never counted
            capture.residency._addresses.append(4096)  # a tensor of a call never noted
            capture.residency._sizes.append(64)
            capture.settle()
    rep = _report(tmp_path / "run")
    assert rep.rows and all(r.calls >= 1 for r in rep.rows) and "cut" not in {r.module for r in rep.rows}
    assert {r.op for r in rep.rows} >= {"aten.addmm", "aten.sum"}
