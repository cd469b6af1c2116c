"""Work memwall does not record is said, never left silent: dispatch modes are per thread, so a
model run on another thread (generate() in a streamer's thread, a server's workers) is named in the
report and the summary, and a profile that recorded nothing says so and why."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import torch

import memwall_plugin as memwall
from memwall_plugin.console import findings
from memwall_plugin.records import OTHER_THREADS_KEY


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


def _on_a_thread(fn, name: str) -> None:
    worker = threading.Thread(target=fn, name=name)
    worker.start()
    worker.join(60)
    assert not worker.is_alive()


def test_a_model_run_on_another_thread_is_named_and_the_summary_says_nothing_was_recorded(capsys):
    model, x = _mlp(), torch.randn(2, 8)
    with torch.no_grad(), memwall.profile(model=model) as prof:
        _on_a_thread(lambda: [model(x) for _ in range(3)], "streamer")
    rep = prof.report()
    assert rep.rows == ()
    assert rep.extra[OTHER_THREADS_KEY] == {"streamer": 3 * 4}  # 3 calls of the model and its 3 layers
    printed = capsys.readouterr().out
    assert printed.startswith("memwall recorded nothing: 12 module calls ran on other threads (`streamer`)")
    assert "open `memwall.profile` inside the function that thread runs" in " ".join(printed.split())


def test_work_on_both_threads_keeps_this_threads_rows_and_names_the_other(tmp_path):
    model, x = _mlp(), torch.randn(2, 8)
    with memwall.profile(model=model, summary=False, logdir=tmp_path) as prof:
        model(x).sum().backward()
        _on_a_thread(lambda: model(x), "worker-0")
    rep = prof.report()
    assert sum(r.calls for r in rep.filter(op="aten.addmm")) == 2  # this thread's forward only
    assert rep.extra[OTHER_THREADS_KEY] == {"worker-0": 4}
    assert findings(rep)[0].startswith("4 module calls ran on other threads (`worker-0`)")
    assert memwall.load_report(next(tmp_path.rglob("*.json"))).extra[OTHER_THREADS_KEY] == {"worker-0": 4}


def test_a_profile_with_no_op_says_so(capsys):
    with memwall.profile():
        pass
    printed = " ".join(capsys.readouterr().out.split())
    assert printed.startswith("memwall recorded nothing: no PyTorch op ran on this thread inside the profile.")
    assert "torchrun -m memwall_plugin.cli run" in printed  # work in spawned processes: how to record it
    with memwall.profile(schedule=memwall.schedule(wait=2, active=1)) as prof:
        torch.ones(2) + 1
        prof.step()
    printed = " ".join(capsys.readouterr().out.split())
    assert printed == ("memwall recorded nothing: 2 steps ran and the schedule recorded none of them "
                       "(its wait and warm-up steps come first).")


def test_a_run_on_one_thread_has_no_other_threads_entry():
    model = _mlp()
    with memwall.profile(model=model, summary=False) as prof:
        model(torch.randn(2, 8))
    assert OTHER_THREADS_KEY not in prof.report().extra


def test_memwall_run_of_a_script_whose_work_runs_in_spawned_processes_says_how_to_record_it(tmp_path):
    """`mp.spawn(train)` under `memwall run`: the parent runs no op. It used to read "no step was
    recorded (the schedule's active steps never ran)" with no schedule given."""
    (tmp_path / "spawned.py").write_text(
        "import torch, torch.multiprocessing as mp\n"
        "def work(rank):\n"
        "    torch.nn.Linear(4, 4)(torch.randn(2, 4)).sum().backward()\n"
        "if __name__ == '__main__':\n"
        "    mp.spawn(work, nprocs=2)\n")
    result = subprocess.run([sys.executable, "-m", "memwall_plugin.cli", "run", "--logdir", "runs/s", "spawned.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "memwall recorded nothing: no PyTorch op ran on this thread inside the profile" in out
    assert "torchrun -m memwall_plugin.cli run" in out and "schedule" not in out
