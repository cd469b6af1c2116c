"""A disk that fails memwall (full, read-only, a logdir that cannot be created) costs the run one
warning: memwall stops writing, training goes on with bit-identical results and no exception,
and the report stays in memory with its summary."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import memwall_plugin as memwall

STEPS = 12


def train(profile: Callable[[], Any] | None) -> tuple[list[float], dict[str, torch.Tensor], Any]:
    """A small deterministic training run, bare or inside `profile()`; a step per iteration."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(STEPS)]
    losses: list[float] = []

    def loop(prof: Any) -> None:
        for x, y in data:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            if prof is not None:
                prof.step()

    prof = None
    if profile is None:
        loop(None)
    else:
        with profile() as prof:
            loop(prof)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, prof


@pytest.fixture(scope="module")
def bare() -> tuple[list[float], dict[str, torch.Tensor]]:
    losses, params, _ = train(None)
    return losses, params


def memwall_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("memwall:")]


def run_with_faults(logdir: Path, **options: Any) -> tuple[list[float], dict[str, torch.Tensor], Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeated warning would show, not be folded into one
        losses, params, prof = train(lambda: memwall.profile(
            logdir=logdir, schedule=memwall.schedule(active=1), summary=False, **options))
    return losses, params, prof, memwall_warnings(caught)


def same_training(bare: Any, losses: list[float], params: dict[str, torch.Tensor]) -> None:
    assert losses == bare[0]
    assert params.keys() == bare[1].keys()
    for name, value in params.items():
        assert torch.equal(value, bare[1][name]), name


def test_a_logdir_that_cannot_be_created(tmp_path, bare):
    (tmp_path / "a-file").write_text("not a directory")
    logdir = tmp_path / "a-file" / "run"
    losses, params, prof, warned = run_with_faults(logdir, kineto=True)
    same_training(bare, losses, params)
    assert len(warned) == 1, warned
    assert str(logdir) in warned[0] and "[ENOTDIR]" in warned[0]
    assert "pass a logdir= whose parents are directories" in warned[0]
    assert "training goes on unchanged" in warned[0]
    assert prof.saved == [] and prof.traces == []
    assert prof.report().steps[:STEPS] == tuple(range(STEPS))  # every step, in memory
    assert prof.report().total_flops > 0


@pytest.mark.parametrize("call,code,advice", [
    ("write", errno.ENOSPC, "free some space"),  # the disk fills while a report is written
    ("replace", errno.EROFS, "read-only"),  # the disk was remounted read-only
    ("replace", errno.EDQUOT, "quota"),
])
def test_a_full_or_read_only_disk_stops_writing_after_one_warning(tmp_path, bare, monkeypatch, call, code, advice):
    calls: list[str] = []

    def failing(*args: Any, **kwargs: Any) -> None:
        calls.append(str(args[0]))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, call, failing)
    losses, params, prof, warned = run_with_faults(tmp_path / "run", scalars=False)
    same_training(bare, losses, params)
    assert len(warned) == 1, warned
    assert f"[{errno.errorcode[code]}]" in warned[0] and advice in warned[0]
    assert "rank0_steps000000-000000.json" in warned[0]  # names the file it could not write
    assert len(calls) == 1  # memwall stopped writing; it did not keep failing quietly
    assert prof.saved == []
    assert prof.report().steps[:STEPS] == tuple(range(STEPS))
    leftovers = list((tmp_path / "run").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []  # no half-written or temporary file


def test_a_disk_that_fills_mid_run(tmp_path, bare, monkeypatch):
    """The first windows are saved, then the disk is full: those files stay whole."""
    real = os.write
    count = [0]

    def fills_up(fd: int, data: Any) -> int:
        count[0] += 1
        if count[0] > 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", fills_up)
    losses, params, prof, warned = run_with_faults(tmp_path / "run", scalars=False)
    same_training(bare, losses, params)
    assert len(warned) == 1 and "steps000003-000003" in warned[0]
    assert [p.name for p in prof.saved] == [f"rank0_steps{i:06d}-{i:06d}.json" for i in range(3)]
    for path in prof.saved:
        assert memwall.load_report(path).steps == (int(path.name[11:17]),)
    assert sorted(p.name for p in prof.saved[0].parent.iterdir()) == [p.name for p in prof.saved]


def test_summary_still_prints_and_warnings_as_errors_do_not_stop_the_run(tmp_path, bare, capsys):
    (tmp_path / "a-file").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under python -W error: the warning must not raise
        losses, params, prof = train(lambda: memwall.profile(logdir=tmp_path / "a-file" / "run"))
    same_training(bare, losses, params)
    out, err = capsys.readouterr()
    assert "memwall" in out and "steps recorded" in out and "stopped writing files" in out
    assert err.count("memwall: could not") == 1


def test_other_write_failures_stop_writing_too(tmp_path, bare, monkeypatch):
    """Not only the disk: a writer that raises anything is one warning, never the user's error."""
    def broken(self: Any, step: int, totals: Any) -> None:
        raise ValueError("scalar writer broke")

    monkeypatch.setattr("memwall_plugin.tensorboard.ScalarWriter.write", broken)
    losses, params, prof, warned = run_with_faults(tmp_path / "run")
    same_training(bare, losses, params)
    assert len(warned) == 1 and "ValueError: scalar writer broke" in warned[0]
    # step 0's report was saved before its scalars; nothing was written after the failure
    assert [p.name for p in prof.saved] == ["rank0_steps000000-000000.json"]
    assert prof.report().steps[:STEPS] == tuple(range(STEPS))  # every step still in memory


SCRIPT = textwrap.dedent('''
    import hashlib

    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(6):
        x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
    print("PARAMS", digest.hexdigest())
''')


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: every write past `limit` bytes fails (EFBIG), as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_memwall_run_on_a_disk_that_takes_nothing(tmp_path):
    """`memwall run` with the kernel refusing every write past a few bytes (RLIMIT_FSIZE): the
    script's results equal a bare run's, its exit status is kept, one warning is printed."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    bare = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert bare.returncode == 0, bare.stderr
    limited = subprocess.run(
        [sys.executable, "-m", "memwall_plugin.cli", "run", "--logdir", str(tmp_path / "run"), str(script)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300, preexec_fn=_file_size_limit(64),
    )
    assert limited.returncode == 0, limited.stderr
    params = [line for line in limited.stdout.splitlines() if line.startswith("PARAMS")]
    assert params == [line for line in bare.stdout.splitlines() if line.startswith("PARAMS")]
    assert limited.stderr.count("memwall: could not") == 1, limited.stderr
    assert "File too large [EFBIG]" in limited.stderr
    assert "steps recorded" in limited.stdout  # the summary, from memory
    assert "Traceback" not in limited.stderr
    for path in (tmp_path / "run").rglob("*.json"):  # whatever exists is whole
        assert path.stat().st_size == 0 or memwall.load_report(path)
