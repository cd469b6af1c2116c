"""The run store (memwall_plugin/rundir.py): names, publishing, jobs; and two runs written into one
logdir shown apart by `memwall report` and by the tab, never summed."""

from __future__ import annotations

import dataclasses
import json
import shutil
from typing import Any

import pytest
import torch
from memwall_plugin.tb_plugin.plugin import MemwallPlugin
from tensorboard.plugins import base_plugin

import memwall_plugin as memwall
from memwall_plugin.cli import main
from memwall_plugin.rundir import RunDir, find_runs, group_jobs, pick_job, window_name

# a @ b with a 8x16 and b 16x4: 2*8*16*4 FLOPs per call, by hand
MATMUL_FLOPS = 2 * 8 * 16 * 4


def _run(logdir, steps: int) -> memwall.Report:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with memwall.profile(logdir=logdir, summary=False, scalars=False) as prof:
        for _ in range(steps):
            a @ b
            prof.step()
    return prof.report()


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory):
    """One script's loop run twice into one hard-coded logdir: 2 steps, then 3."""
    logdir = tmp_path_factory.mktemp("shared")
    first = _run(logdir, 2)
    second = _run(logdir, 3)
    return logdir, first, second


def test_each_profile_is_its_own_job(two_jobs):
    logdir, first, second = two_jobs
    assert first.job and second.job and first.job != second.job
    jobs = RunDir(logdir).jobs()
    assert [j.id for j in jobs] == [second.job, first.job]  # newest first
    assert [len(j.windows) for j in jobs] == [1, 1]


def test_memwall_report_shows_the_newest_job_and_picks_another(two_jobs, capsys):
    logdir, first, second = two_jobs
    assert main(["report", str(logdir), "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    # the newest job alone: 3 steps of one matmul, not 5 steps of both runs summed
    assert data["job"] == second.job and data["totals"]["steps"] == [0, 1, 2]
    assert data["totals"]["flops"] == 3 * MATMUL_FLOPS
    assert [j["job"] for j in data["jobs"]] == [second.job, first.job]
    assert "holds 2 jobs" in err and first.job in err and "--job" in err
    assert main(["report", str(logdir), "--json", "--job", first.job[:-2]]) == 0  # a prefix is enough
    older = json.loads(capsys.readouterr().out)
    assert older["job"] == first.job and older["totals"]["flops"] == 2 * MATMUL_FLOPS
    assert older["totals"]["steps"] == [0, 1]
    assert main(["report", str(logdir), "--job", "nope"]) == 2
    assert "not a job here" in capsys.readouterr().err
    assert main(["report", str(logdir)]) == 0
    assert "3 steps recorded" in capsys.readouterr().out


def test_the_tab_shows_each_job_apart(two_jobs):
    logdir, first, second = two_jobs
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(logdir)))
    (run,) = plugin.runs_impl()["runs"]
    assert [j["job"] for j in run["jobs"]] == [second.job, first.job]
    newest = plugin.report_impl({"run": "."})
    assert newest["job"] == second.job and newest["headline"]["flops"] == 3 * MATMUL_FLOPS
    older = plugin.report_impl({"run": ".", "job": first.job})
    assert older["headline"]["flops"] == 2 * MATMUL_FLOPS and older["headline"]["steps"] == [0, 1]
    ranks = plugin.ranks_impl({"run": ".", "job": first.job})
    assert ranks["job"] == first.job and [r["flops"] for r in ranks["ranks"]] == [2 * MATMUL_FLOPS]


# --- the store's rules -----------------------------------------------------------------------------


def _report(job: str, steps: tuple[int, ...] = (0,), rank: int = 0, created: float = 0.0) -> memwall.Report:
    row = memwall.Row(op="aten.mm", overload="default", module="", phase="forward", calls=1, dtype="float32",
                      shapes="[8, 16] x [16, 4]", flops=MATMUL_FLOPS, bytes_read=640, bytes_written=128,
                      elements_read=160, elements_written=32, time_s=0.001)
    return memwall.Report(rows=(row,), steps=steps, rank=rank, world_size=2, job=job, created_unix_s=created)


def test_publish_never_overwrites_and_leaves_nothing_staged(tmp_path):
    store = RunDir(tmp_path)
    paths = [store.publish(_report(job)) for job in ("a", "b", "c")]
    assert [p.name for p in paths] == ["rank0_steps000000-000000.json", "rank0_steps000000-000000.1.json",
                                       "rank0_steps000000-000000.2.json"]
    assert sorted(p.name for p in store.reports.iterdir()) == sorted([".heads", *(p.name for p in paths)])
    assert sorted(p.name for p in (store.reports / ".heads").iterdir()) == sorted(p.name for p in paths)
    assert [memwall.load_report(p).job for p in paths] == ["a", "b", "c"]
    assert window_name(3, (5, 6, 9)) == "rank3_steps000005-000009.json"
    with pytest.raises(ValueError, match="without recorded steps"):
        store.publish(_report("d", steps=()))


def test_windows_skip_directories_and_staged_files(tmp_path):
    store = RunDir(tmp_path)
    store.publish(_report("a"))
    (store.reports / "rank0_steps000001-000001.json").mkdir()
    (store.reports / ".rank0_steps000002-000002.json.7.staged").write_text("{}")
    assert [w.id for w in store.windows()] == ["rank0_steps000000-000000"]
    assert list(find_runs(tmp_path)) == ["."] and RunDir(tmp_path / "elsewhere").windows() == ()


def test_jobs_group_windows_per_rank_and_newest_first(tmp_path):
    store = RunDir(tmp_path)
    store.publish(_report("old", (0,), created=1.0))
    store.publish(_report("old", (1,), created=2.0))
    store.publish(_report("old", (0,), rank=1, created=2.0))
    store.publish(_report("new", (0,), created=3.0))
    jobs = store.jobs()
    assert [(j.id, sorted(j.ranks)) for j in jobs] == [("new", [0]), ("old", [0, 1])]
    old = jobs[1]
    assert old.ranks[0].steps == (0, 1) and old.ranks[0].rows[0].calls == 2  # its two windows merged
    assert old.ranks[1].steps == (0,) and old.created_unix_s == 2.0
    assert pick_job(jobs, None) is jobs[0] and pick_job(jobs, "ol") is old
    legacy = dataclasses.replace(old, id="")  # reports written before memwall recorded jobs
    assert pick_job([jobs[0], legacy], "(unnamed)") is legacy
    with pytest.raises(LookupError, match="not a job here"):
        pick_job(jobs, "x")
    with pytest.raises(LookupError, match="several jobs"):
        pick_job([*jobs, dataclasses.replace(old, id="older")], "ol")


def test_a_window_whose_name_disagrees_with_its_rank_is_refused(tmp_path):
    store = RunDir(tmp_path)
    path = store.publish(_report("a"))
    path.rename(path.with_name("rank1_steps000000-000000.json"))
    with pytest.raises(ValueError, match="name says rank 1"):
        group_jobs(store.load())


def _many_ranks(tmp_path, ranks: int = 20) -> tuple[RunDir, memwall.Report]:
    """A job of `ranks` ranks (more than the 16 a heads cache is kept for) from one real report;
    rank 3 with a second window (twice the time), rank 5 three times as slow."""
    base = _run(tmp_path / "one", 2)
    store = RunDir(tmp_path / "job")
    for rank in range(ranks):
        rows = tuple(dataclasses.replace(r, time_s=r.time_s * 3) for r in base.rows) if rank == 5 else base.rows
        store.publish(dataclasses.replace(base, rank=rank, world_size=ranks, job="big", rows=rows))
    store.publish(dataclasses.replace(base, rank=3, world_size=ranks, job="big", steps=(2, 3)))
    return store, base


def _counting_loader() -> tuple[list[str], Any]:
    """A report loader for `RunDir.jobs(load=...)` that notes each file it reads in full."""
    read: list[str] = []

    def counting(window):
        read.append(window.path.name)
        return memwall.load_report(window.path)

    return read, counting


def test_a_large_jobs_heads_are_cached_and_equal_the_reports_read_in_full(tmp_path, monkeypatch):
    from memwall_plugin import rankheads, rundir

    store, _ = _many_ranks(tmp_path)
    (full,) = group_jobs(store.load())  # every file read and merged: the ground truth
    truth = [rankheads.head_of(full.ranks[r]) for r in sorted(full.ranks)]
    shutil.rmtree(store.reports / rankheads.HEADS_DIR)  # files copied without the heads their ranks left
    read, counting = _counting_loader()
    (job,) = store.jobs(load=counting)
    assert job.heads == truth and len(read) == 21
    assert (store.reports / rankheads.SIDECAR).is_file()
    read.clear()
    (job,) = store.jobs(load=counting)
    assert job.heads == truth and read == []  # every head from the cache
    assert job.ranks[3] == full.ranks[3] and len(read) == 2  # a rank asked for: its windows read in full
    # a damaged cache, or one another memwall wrote: every file read again, the heads the same
    sidecar = store.reports / rankheads.SIDECAR
    sidecar.write_bytes(sidecar.read_bytes()[:-100])
    read.clear()
    assert store.jobs(load=counting)[0].heads == truth and len(read) == 21
    monkeypatch.setattr(rankheads, "code_digest", lambda: "another memwall")
    read.clear()
    assert rundir.RunDir(store.root).jobs(load=counting)[0].heads == truth and len(read) == 21


def test_each_rank_leaves_its_head_and_a_first_read_uses_it(tmp_path):
    """The heads a job's ranks left when they saved: a first read (no sidecar yet) reads only
    what no head covers (rank 3's two windows, merged); a file changed since is read in full."""
    from memwall_plugin import rankheads

    store, base = _many_ranks(tmp_path)
    heads_dir = store.reports / rankheads.HEADS_DIR
    assert sorted(p.name for p in heads_dir.iterdir()) == sorted(w.path.name for w in store.windows())
    (full,) = group_jobs(store.load())
    truth = [rankheads.head_of(full.ranks[r]) for r in sorted(full.ranks)]
    read, counting = _counting_loader()
    (job,) = store.jobs(load=counting)
    assert job.heads == truth
    assert sorted(read) == sorted(w.path.name for w in store.windows() if w.rank == 3)
    # rank 9 rewritten four times as slow by other means: its head no longer matches its file
    (path,) = store.reports.glob("rank9_*.json")
    slow = tuple(dataclasses.replace(r, time_s=r.time_s * 4) for r in base.rows)
    dataclasses.replace(base, rank=9, world_size=20, job="big", rows=slow).save(path)
    (store.reports / rankheads.SIDECAR).unlink()
    read.clear()
    (job,) = store.jobs(load=counting)
    assert path.name in read and len(read) == 3
    heads = {h.rank: h.headline for h in job.heads}
    assert heads[9].time_s == pytest.approx(4 * heads[0].time_s)
    # a process that is no rank of a job leaves no head
    single = RunDir(tmp_path / "single")
    single.publish(dataclasses.replace(base, world_size=1))
    assert not (single.reports / rankheads.HEADS_DIR).exists()


def test_a_changed_report_is_read_again_and_its_head_changes(tmp_path):
    store, base = _many_ranks(tmp_path)
    (job,) = store.jobs()
    assert max(job.heads, key=lambda h: h.headline.time_s).rank == 5
    # rank 9 rewritten four times as slow, same name: the cached head must not be used
    (path,) = store.reports.glob("rank9_*.json")
    slow = tuple(dataclasses.replace(r, time_s=r.time_s * 4) for r in base.rows)
    dataclasses.replace(base, rank=9, world_size=20, job="big", rows=slow).save(path)
    (job,) = store.jobs()
    heads = {h.rank: h.headline for h in job.heads}
    assert heads[9].time_s == pytest.approx(4 * heads[0].time_s)
    assert max(job.heads, key=lambda h: h.headline.time_s).rank == 9


def test_a_logdir_that_cannot_be_written_reads_every_report_and_keeps_no_cache(tmp_path, monkeypatch):
    from memwall_plugin import rankheads

    store, _ = _many_ranks(tmp_path)

    def refuse(path, data):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(rankheads, "write_bytes_atomically", refuse)
    for _ in range(2):
        (job,) = store.jobs()
        assert len(job.heads) == 20 and max(job.heads, key=lambda h: h.headline.time_s).rank == 5
    assert not (store.reports / rankheads.SIDECAR).exists()


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_saved_files_get_the_mode_any_new_file_gets(tmp_path, umask):
    """A report TensorBoard serves, or a teammate reads in a shared run directory: its mode is
    the one any file the process makes gets (the umask's). Written through mkstemp, which makes
    files private, reports and traces were 0600 whatever the umask."""
    import os
    import stat

    previous = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what the process's new files get: the ground truth
        with memwall.profile(logdir=tmp_path / "run", summary=False, kineto=True):
            torch.randn(8, 16) @ torch.randn(16, 4)
    finally:
        os.umask(previous)
    written = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".json"} and any("trace" in p.name for p in written), written
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~umask
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {p.name: oct(expected) for p in written}
