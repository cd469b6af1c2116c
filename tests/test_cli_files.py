"""`memwall report` over a run with broken files among good ones: each broken file is named on
stderr and left out, the rest are summarized; only a run with nothing readable is an error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import memwall_plugin as memwall
from memwall_plugin.cli import main


@pytest.fixture
def run(tmp_path) -> Path:
    """A run with three windows (steps 0, 1, 2), one per file."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    logdir = tmp_path / "run"
    with memwall.profile(model=model, logdir=logdir, schedule=memwall.schedule(active=1), summary=False) as prof:
        for _ in range(3):
            model(torch.randn(8, 16)).sum().backward()
            prof.step()
    assert len(prof.saved) == 3
    return logdir


def windows(run: Path) -> list[Path]:
    return sorted((run / "plugins" / "memwall").glob("*.json"))


def test_one_truncated_window_is_named_and_the_others_summarized(run, capsys):
    broken = windows(run)[1]
    broken.write_bytes(broken.read_bytes()[:200])
    assert main(["report", str(run), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["totals"]["steps"] == [0, 2]
    assert f"left out: {broken} is not valid JSON" in err and "truncated" in err
    assert "covers 2 of 3 report files" in err


def test_hostile_window_among_good_ones(run, capsys):
    hostile = windows(run)[0]
    data = json.loads(hostile.read_text())
    data["rows"][0]["calls"] = 10**35
    hostile.write_text(json.dumps(data))
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert "2 steps recorded" in out
    assert "rows[0].calls" in err and "1e30" in err


def test_a_good_window_with_a_markup_like_module_name_prints(run, capsys):
    path = windows(run)[0]
    rep = memwall.load_report(path)
    rows = tuple(dataclasses.replace(r, module="[/x]" + r.module) for r in rep.rows)
    dataclasses.replace(rep, rows=rows).save(path)
    assert main(["report", str(run), "--by", "module"]) == 0
    assert "[/x]" in capsys.readouterr().out


def test_nothing_readable_is_an_error(run, capsys):
    for path in windows(run):
        path.write_text("{")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert "none of the 3 report files could be read" in err and err.count("not valid JSON") == 3
    one = windows(run)[0]
    assert main(["report", str(one)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
