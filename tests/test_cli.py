"""The `memwall` command, run as a user would run it (a subprocess, an unmodified script)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tb_logdir import BATCH_MATMULS, make_batch_runs

import memwall_plugin as memwall

TRAIN = textwrap.dedent('''
    import argparse
    import sys

    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--exit-code", type=int, default=0)
    parser.add_argument("--crash-at", type=int, default=-1)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(args.steps):
        if step == args.crash_at:
            raise ValueError(f"bad batch at step {step}")
        loss = torch.nn.functional.cross_entropy(model(torch.randn(16, 32)), torch.randint(0, 4, (16,)))
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"SCRIPT step={step} loss={loss.item():.3f} main={__name__ == '__main__'} argv={sys.argv[1:]}")
    sys.exit(args.exit_code)
''')


def memwall_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memwall_plugin.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train.py"
    path.write_text(TRAIN)
    return path


def test_run_prints_script_output_then_summary_and_keeps_exit_code(script, tmp_path):
    result = memwall_cli("run", "--logdir", "runs/ok", "train.py", "--steps", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "SCRIPT step=2" in out and "main=True" in out and "argv=['--steps', '3']" in out
    assert out.index("SCRIPT step=2") < out.index("memwall  ")  # the summary comes after
    assert "Phases" in out and "optimizer" in out
    rep = memwall.load_report(next((tmp_path / "runs/ok/plugins/memwall").glob("*.json")))
    assert rep.steps == (0, 1, 2)  # a step per optimizer step; what follows the last is no step
    # ... but its ops are kept: the script prints loss.item() after each optimizer step, the last
    # time in the tail
    assert sum(r.calls for r in rep.filter(phase="forward", op="aten._local_scalar_dense")) == 3
    assert rep.tail_op_time_s is not None and rep.tail_op_time_s > 0
    assert not rep.incomplete
    assert {"forward", "backward", "optimizer"} <= {r.phase for r in rep.rows}


def test_run_passes_a_non_zero_exit_code_through(script, tmp_path):
    result = memwall_cli("run", "--logdir", "runs/three", "train.py", "--exit-code", "3", cwd=tmp_path)
    assert result.returncode == 3
    assert "SCRIPT step=2" in result.stdout


def test_a_non_zero_exit_is_the_scripts_own_end_not_a_crash(script, tmp_path):
    result = memwall_cli("run", "--logdir", "runs/two", "train.py", "--exit-code", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "INCOMPLETE" not in result.stdout and "the script exited with status 2" in result.stdout
    rep = memwall.load_report(next((tmp_path / "runs/two/plugins/memwall").glob("*.json")))
    assert not rep.incomplete  # it ran to its own end: nothing it would have done is missing


def test_a_script_that_cannot_start_is_reported_as_python_would(tmp_path):
    (tmp_path / "broken.py").write_text("import torch\nx = (\n")
    result = memwall_cli("run", "--logdir", "runs/broken", "broken.py", cwd=tmp_path)
    bare = subprocess.run([sys.executable, "broken.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == bare.returncode == 1
    assert result.stderr == bare.stderr and f'File "{tmp_path / "broken.py"}", line 2' in result.stderr
    assert "memwall_plugin" not in result.stderr and "runpy" not in result.stderr  # no frames of ours
    assert "recorded nothing" not in result.stdout and not (tmp_path / "runs/broken").exists()
    missing = memwall_cli("run", "-m", "no_such_module_here", cwd=tmp_path)
    assert missing.returncode == 2 and "no module named 'no_such_module_here'" in missing.stderr
    assert "recorded nothing" not in missing.stdout


def test_run_gives_the_script_the_file_argv_and_tracebacks_python_gives_it(tmp_path):
    """`python script.py` gives the script its absolute path as `__file__` (since Python 3.9) and
    `sys.argv[0]` as typed. Under `memwall run`, `__file__` was relative: a script that changed
    directory and then read a file beside it died (FileNotFoundError), and its tracebacks named
    "script.py". Bare Python's output, traceback included, is the truth."""
    (tmp_path / "data.txt").write_text("beside the script")
    (tmp_path / "where.py").write_text(
        "import argparse, os, sys, torch\n"
        "print(__file__, sys.argv, sys.path[0] == os.path.dirname(os.path.realpath(__file__)), __name__)\n"
        "torch.ones(2).sum()\n"
        "os.chdir(os.path.dirname(os.path.dirname(__file__)))\n"
        "print(open(os.path.join(os.path.dirname(__file__), 'data.txt')).read())\n"
        "print(argparse.ArgumentParser().prog)\n"
        "raise ValueError('after the reads')\n")
    bare = subprocess.run([sys.executable, "where.py", "--flag"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    seen = memwall_cli("run", "--no-summary", "--logdir", "runs/where", "where.py", "--flag", cwd=tmp_path)
    assert bare.returncode == seen.returncode == 1
    assert f"{tmp_path / 'where.py'} ['where.py', '--flag'] True __main__" in bare.stdout
    assert seen.stdout.startswith(bare.stdout)  # then memwall's own lines
    assert all(line.startswith("memwall") for line in seen.stdout[len(bare.stdout):].splitlines())
    assert seen.stderr == bare.stderr  # the same traceback, naming the same file
    assert (tmp_path / "runs/where/plugins/memwall").is_dir()  # and the report of what ran


def test_bad_run_options_are_said_before_the_script_runs(script, tmp_path):
    result = memwall_cli("run", "--bogus", "train.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: memwall run [options] script.py")
    assert "unrecognized option '--bogus'" in result.stderr and "SCRIPT" not in result.stdout
    typo = memwall_cli("run", "--device", "h1000", "train.py", cwd=tmp_path)
    assert typo.returncode == 2 and "--peaks fp32=80e9,bandwidth=23e9" in typo.stderr
    # a logdir that is a file: said before the script runs (it ran to its end, then nothing was saved)
    (tmp_path / "notes.txt").write_text("")
    for logdir in ("notes.txt", "notes.txt/run1"):
        blocked = memwall_cli("run", "--logdir", logdir, "train.py", cwd=tmp_path)
        assert blocked.returncode == 2 and "SCRIPT" not in blocked.stdout
        assert f"--logdir {logdir}:" in blocked.stderr and "is a file, not a directory" in blocked.stderr


def test_a_script_that_raises_leaves_a_report(script, tmp_path):
    result = memwall_cli("run", "--logdir", "runs/crash", "train.py", "--crash-at", "2", cwd=tmp_path)
    assert result.returncode == 1
    assert "ValueError: bad batch at step 2" in result.stderr
    assert 'File "train.py"' in result.stderr or "train.py" in result.stderr
    assert "memwall/cli.py" not in result.stderr  # the traceback is the script's, not ours
    files = list((tmp_path / "runs/crash/plugins/memwall").glob("*.json"))
    rep = memwall.load_report(files[0])
    assert rep.incomplete and rep.steps == (0, 1)  # step 2 raised before its optimizer step: no step
    assert "(incomplete)" in result.stdout


def test_run_module_with_dash_m(tmp_path):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "train.py").write_text(TRAIN)
    result = memwall_cli("run", "--logdir", "runs/m", "-m", "mypkg.train", "--steps", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SCRIPT step=1" in result.stdout and "main=True" in result.stdout


def test_report_json_and_csv(script, tmp_path):
    assert memwall_cli("run", "--logdir", "runs/x", "--no-summary", "train.py", cwd=tmp_path).returncode == 0
    as_json = memwall_cli("report", "runs/x", "--json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["totals"]["flops"] == sum(r["flops"] or 0 for r in data["rows"])
    assert data["totals"]["bytes"] == sum(r["bytes"] for r in data["rows"])
    assert data["rows"][0]["bound"] in ("memory", "compute", "none", "unknown")
    as_csv = memwall_cli("report", "runs/x", "--csv", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == len(data["rows"])
    assert {"op", "module", "phase", "flops", "bytes", "intensity", "bound"} <= set(rows[0])
    by_phase = json.loads(memwall_cli("report", "runs/x", "--json", "--by", "phase", cwd=tmp_path).stdout)
    assert {g["key"] for g in by_phase["groups"]} >= {"forward", "backward", "optimizer"}
    text = memwall_cli("report", "runs/x", "--by", "module", "--top", "3", cwd=tmp_path)
    assert text.returncode == 0 and "by module" in text.stdout


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_quoted(tmp_path, capsys):
    """A module named like a formula stays text in a spreadsheet; numbers stay numbers."""
    import torch

    from memwall_plugin import cli

    model = torch.nn.Module()
    model.add_module("=HYPERLINK(1)", torch.nn.Linear(3, 2))
    model.add_module("-plain", torch.nn.Linear(2, 2))
    with memwall.profile(model=model, logdir=tmp_path, summary=False, scalars=False):
        getattr(model, "-plain")(getattr(model, "=HYPERLINK(1)")(torch.randn(4, 3)) - 1.0)
    assert cli.main(["report", str(tmp_path), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    modules = {r["module"] for r in rows}
    assert {"'=HYPERLINK(1)", "'-plain"} <= modules
    assert not any(m.startswith(("=", "+", "-", "@")) for m in modules)
    addmm = next(r for r in rows if r["module"] == "'=HYPERLINK(1)" and r["op"] == "aten.addmm")
    assert int(addmm["flops"]) == 2 * 4 * 3 * 2 + 4 * 2  # numbers are not quoted


@pytest.mark.parametrize("args,message", [
    (("run", "missing.py"), "no such file"),
    (("report", "nowhere"), "no such file or directory"),
    (("report", "not_a_report.json"), "not a memwall report"),
    (("report", "--bogus", "x"), "unrecognized arguments"),
    (("devices", "--device", "Voodoo 2"), "no device in memwall's table"),
    (("run", "--schedule", "wait=x", "train.py"), "not a whole number"),
])
def test_errors_say_what_is_wrong_without_a_traceback(tmp_path, script, args, message):
    (tmp_path / "not_a_report.json").write_text('{"hello": "world"}')
    result = memwall_cli(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_has_examples(tmp_path):
    for command in ("run", "report", "diff", "devices", "calibrate"):
        result = memwall_cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0 and "examples:" in result.stdout, command


def test_devices_prints_peaks_with_their_sources(tmp_path):
    result = memwall_cli("devices", cwd=tmp_path)
    assert result.returncode == 0
    assert "peak fp32" in result.stdout and "memory bandwidth" in result.stdout
    # a known GPU's figures come from its datasheet; a CPU's are estimated until calibrated
    assert any(source in result.stdout for source in ("estimated", "calibrated", "datasheet"))


def test_run_over_a_script_that_opens_its_own_profile_runs_it_to_its_end(tmp_path):
    (tmp_path / "own.py").write_text(textwrap.dedent('''
        import sys
        import torch
        import memwall_plugin as memwall

        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(8, 16)
        with memwall.profile(model=model, logdir="runs/own", summary=False) as prof:
            for _ in range(3):
                model(x).sum().backward(); opt.step(); opt.zero_grad()
                prof.step()
        model(x).abs().sum().backward(); opt.step(); opt.zero_grad()  # after its profile
        print("SCRIPT done")
        sys.exit(3)
    '''))
    result = memwall_cli("run", "--logdir", "runs/outer", "own.py", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "SCRIPT done" in result.stdout and "Traceback" not in result.stderr
    assert "opened its own memwall.profile" in result.stdout
    own = memwall.load_report(next((tmp_path / "runs/own/plugins/memwall").glob("*.json")))
    outer = memwall.load_report(next((tmp_path / "runs/outer/plugins/memwall").glob("*.json")))
    assert own.steps == (0, 1, 2) and {"forward", "backward", "optimizer"} <= {r.phase for r in own.rows}
    assert "aten.abs" in {r.op for r in outer.rows}  # the outer one recorded what came after
    assert outer.extra["nested_profiles"] == ["runs/own"]
    assert "aten.abs" not in {r.op for r in own.rows}


INFER = textwrap.dedent('''
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    for layer in (model[0], model[2]):
        torch.nn.init.normal_(layer.weight, std=0.02)
        torch.nn.init.zeros_(layer.bias)
    batches = [torch.randn(4, 256) for _ in range(3)]
    with torch.no_grad():
        for x in batches:
            y = model(x)
    print("SCRIPT done")
''')


def test_run_over_inference_keeps_weight_init_out_of_the_shares(tmp_path):
    (tmp_path / "infer.py").write_text(INFER)
    result = memwall_cli("run", "--logdir", "runs/infer", "infer.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rep = memwall.load_report(next((tmp_path / "runs/infer/plugins/memwall").glob("*.json")))
    assert rep.steps == (0,)
    # made before the first forward: the parameters and the Linears' default init, the script's own, the batches
    assert {r.op for r in rep.filter(phase="setup")} == {"aten.empty", "aten.uniform_", "aten.normal_", "aten.zero_",
                                                         "aten.randn"}
    assert {r.phase for r in rep.rows if r.op in ("aten.addmm", "aten.gelu")} == {"forward"}
    assert "setup" in result.stdout.split("Phases")[1]  # a row of the phase table
    words = " ".join(result.stdout.split())  # the summary wraps at the terminal's width
    assert re.search(r"of it before the first forward \(weight init, data; [\d.,]+ [mu]?s of the wall time\): "
                     "not counted in the shares", words)
    assert "outside-the-model" not in words and "move it into DataLoader workers" not in words
    totals = json.loads(memwall_cli("report", "runs/infer", "--json", cwd=tmp_path).stdout)["totals"]
    setup_s = sum(r.time_s for r in rep.filter(phase="setup"))
    assert totals["setup_time_s"] == pytest.approx(setup_s) and totals["time_s"] > setup_s > 0


def test_a_schedule_over_inference_says_the_script_is_one_step(tmp_path):
    """memwall run ends steps at optimizer steps: an inference script is one step, so a schedule
    that waits first records nothing. The summary spoke only of a compiled optimizer step."""
    (tmp_path / "infer.py").write_text(INFER)
    result = memwall_cli("run", "--logdir", "runs/sched", "--schedule", "wait=1,active=1", "infer.py", cwd=tmp_path)
    assert result.returncode == 0 and "SCRIPT done" in result.stdout
    words = " ".join(result.stdout.split())
    assert "memwall recorded nothing: 1 step ran and the schedule did not record it" in words
    assert "a script that takes none (inference) is one step" in words and "run without --schedule" in words


def test_run_with_no_memory_measures_none(tmp_path):
    """`memory=False` had no command-line twin: `memwall run --no-memory` is it."""
    (tmp_path / "infer.py").write_text(INFER)
    result = memwall_cli("run", "--no-memory", "--logdir", "runs/lean", "infer.py", cwd=tmp_path)
    assert result.returncode == 0 and "SCRIPT done" in result.stdout and "\nMemory" not in result.stdout
    rep = memwall.load_report(next((tmp_path / "runs/lean/plugins/memwall").glob("*.json")))
    assert rep.memory is None and {r.op for r in rep.rows} >= {"aten.addmm", "aten.gelu"}


def test_run_over_five_training_steps_reports_five_steps(script, tmp_path):
    result = memwall_cli("run", "--logdir", "runs/five", "train.py", "--steps", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "memwall  5 steps recorded" in result.stdout
    rep = memwall.load_report(next((tmp_path / "runs/five/plugins/memwall").glob("*.json")))
    assert rep.steps == (0, 1, 2, 3, 4)


# -- memwall diff ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_runs(tmp_path_factory) -> Path:
    """runs/b1 and runs/b8: the MLP of tb_logdir.BATCH_MLP at batch 1 and 8, run as scripts."""
    root = tmp_path_factory.mktemp("diff")
    make_batch_runs(root / "runs")
    return root


def test_diff_of_batch_1_and_batch_8_lists_the_matmuls_that_crossed_the_ridge(batch_runs):
    result = memwall_cli("diff", "runs/b1", "runs/b8", "--json", cwd=batch_runs)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    changed = {(c["op"], c["module"], c["phase"]) for c in data["bound_changes"]}
    assert changed == BATCH_MATMULS
    assert all(c["a"]["bound"] == "memory" and c["b"]["bound"] == "compute" for c in data["bound_changes"])
    # each phase's speed-up is its time in A over its time in B, as `memwall report` measured them
    phase_time = {}
    for run in ("b1", "b8"):
        groups = json.loads(memwall_cli("report", f"runs/{run}", "--json", "--by", "phase", cwd=batch_runs).stdout)
        phase_time[run] = {g["key"]: g["time_s"] for g in groups["groups"]}
    speedups = {p["phase"]: p["speedup"] for p in data["phases"]}
    assert set(speedups) == set(phase_time["b1"]) >= {"forward", "backward", "optimizer"}
    for phase, speedup in speedups.items():
        assert speedup == pytest.approx(phase_time["b1"][phase] / phase_time["b8"][phase])
    assert data["same_roofs"] and data["notes"] == []
    assert (data["a"]["path"], data["b"]["path"]) == ("runs/b1", "runs/b8")

    text = memwall_cli("diff", "runs/b1", "runs/b8", cwd=batch_runs)
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "Bound changes: 4 ops crossed the ridge" in out
    changes = out[out.index("Bound changes"):].splitlines()[3:7]
    assert {tuple(line.split()[:3]) for line in changes} == {("addmm", "0", "fwd"), ("addmm", "2", "fwd"),
                                                              ("mm", "0", "bwd"), ("mm", "2", "bwd")}
    assert all(line.split()[-3:] == ["MEMORY", "->", "compute"] for line in changes)
    phases = out[out.index("Phases"):out.index("Top ")]
    for short, phase in (("fwd", "forward"), ("bwd", "backward"), ("opt", "optimizer")):
        line = next(row for row in phases.splitlines() if row.startswith(short + " "))
        assert f"{speedups[phase]:.3g}x" in line


def test_diff_by_module_and_its_errors(batch_runs):
    by_module = json.loads(memwall_cli("diff", "runs/b1", "runs/b8", "--json", "--by", "module", cwd=batch_runs).stdout)
    assert {e["module"] for e in by_module["entries"]} == {"", "0", "1", "2"}
    missing = memwall_cli("diff", "runs/b1", "runs/nowhere", cwd=batch_runs)
    assert missing.returncode == 2 and "run B: runs/nowhere: no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    same = memwall_cli("diff", "runs/b1", "runs/b1", cwd=batch_runs)
    assert same.returncode == 2 and "same run" in same.stderr
    rank = memwall_cli("diff", "runs/b1", "runs/b8", "--rank", "3", cwd=batch_runs)
    assert rank.returncode == 2 and "run A:" in rank.stderr and "rank 3" in rank.stderr


def test_diff_of_runs_on_different_devices_says_the_roofs_differ(batch_runs, tmp_path):
    (b8,) = (batch_runs / "runs/b8/plugins/memwall").glob("*.json")
    on_h100 = memwall.load_report(b8).rescore(device="h100-sxm").save(tmp_path / "b8_h100.json")
    (b1,) = (batch_runs / "runs/b1/plugins/memwall").glob("*.json")
    result = memwall_cli("diff", str(b1), str(on_h100), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "roofs    DIFFERENT" in result.stdout and "the roofs differ" in result.stdout
    assert "time     " in result.stdout and "x  (wall" in result.stdout  # times still compare
    # placed on one device, the roofs are the same again
    data = json.loads(memwall_cli("diff", str(b1), str(on_h100), "--device", "h100-sxm", "--json", cwd=tmp_path).stdout)
    assert data["same_roofs"] and data["a"]["device"] == data["b"]["device"]


def test_diff_of_one_logdir_written_twice_compares_its_two_newest_jobs(tmp_path, capsys):
    import torch

    from memwall_plugin import cli

    a = torch.randn(16, 16)
    for steps in (1, 3):
        with memwall.profile(logdir=tmp_path / "twice", summary=False, scalars=False) as prof:
            for _ in range(steps):
                a @ a
                prof.step()
    assert cli.main(["diff", str(tmp_path / "twice"), str(tmp_path / "twice"), "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert (data["a"]["steps"], data["b"]["steps"]) == (1, 3)  # the older job is A
    assert data["a"]["job"] != data["b"]["job"]
    assert "the one before the newest" in captured.err
    assert any("A recorded 1 step(s), B 3" in note for note in data["notes"])
