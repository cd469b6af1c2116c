"""What a notebook (and the Python prompt) shows of memwall's objects: a report's one-line repr, the
summary rendered as the one printed at a profile's end, a saved path on one line, a report taken
inside its profile's block.

IPython is not a dependency: rich's notebook path is driven with a stand-in for IPython.display,
which receives exactly what a kernel would be given.
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import types
import warnings

import pytest
import torch
from rich.console import Console
from test_console import handmade_report

import memwall_plugin as memwall
from memwall_plugin.console import print_summary, render_text

FRAGMENT = '<pre style="white-space:pre;overflow-x:auto;'  # rich's own notebook <pre>


@pytest.fixture
def notebook_display(monkeypatch):
    """What rich hands to IPython's display() when a console in a notebook prints: (html, text)."""
    shown: list[tuple[str, str]] = []

    def display(obj):
        bundle = obj._repr_mimebundle_(include=[], exclude=[])
        shown.append((bundle["text/html"], bundle["text/plain"]))

    ipython = types.ModuleType("IPython")
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display  # type: ignore[attr-defined]
    ipython.display = ipython_display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.delenv("JUPYTER_COLUMNS", raising=False)
    return shown


# --- the summary: a notebook shows it as the profile's exit prints it ----------------------------


def test_report_html_is_the_summary_a_profile_prints_in_a_notebook(notebook_display):
    """A report as a cell's value rendered as a whole HTML page (a `body` style for the whole
    notebook), 120 columns with the wide table's columns, while the summary printed at the
    profile's end in the same notebook was 115 columns with the shorter ones."""
    rep = handmade_report()
    print_summary(rep, console=Console(force_jupyter=True, file=io.StringIO()))  # the exit summary's path
    (exit_html, exit_text), = notebook_display
    html = rep._repr_html_()
    assert html == exit_html
    assert html.startswith(FRAGMENT) and html.rstrip().endswith("</pre>")
    for page in ("<!DOCTYPE", "<html", "<head", "<style", "<body", "body {"):
        assert page not in html
    plain = re.sub(r"\x1b\[[0-9;]*m", "", exit_text)  # rich's text/plain for a notebook keeps its colors
    assert max(len(line) for line in plain.splitlines()) == 115  # rich's notebook width
    assert "addmm" in html and "MEMORY" in html


def test_summary_object_renders_in_a_notebook(notebook_display):
    """`memwall.Summary(rep, ...)` as a cell's value showed `<memwall_plugin.console.Summary at 0x...>`."""
    rep = handmade_report()
    options = memwall.SummaryOptions(top=5, by="module")
    summary = memwall.Summary(rep, options)
    Console(force_jupyter=True, file=io.StringIO()).print(summary)
    (exit_html, _), = notebook_display
    assert summary._repr_html_() == exit_html
    assert summary._repr_html_().startswith(FRAGMENT)
    assert "transformer.h.0.mlp.c_fc" in summary._repr_html_()
    # its text (print(), and a notebook's text/plain) is the summary's, not the object's address
    assert str(summary) == repr(summary) == render_text(rep, width=100, options=options)
    assert " at 0x" not in repr(summary) and repr(summary).startswith("memwall  2 steps recorded")


# --- the report's repr: one line, not every row --------------------------------------------------


def test_report_repr_is_one_line_of_what_it_holds():
    """The dataclass repr listed every row: 300 KB for a 2-layer GPT-2 (1.1 MB for 12 layers) as a
    notebook's text/plain, saved in the notebook, and echoed at the prompt."""
    rep = handmade_report()
    many = dataclasses.replace(rep, rows=rep.rows * 1000)
    for report in (rep, many):
        text = repr(report)
        assert "\n" not in text and len(text) < 300, text
        assert text.startswith("<memwall Report: 2 steps, ") and "Row(" not in text
    # by hand: 9 rows; 13.51 GFLOP counted (the custom op has no formula); 3.578 GB moved
    assert repr(rep) == ("<memwall Report: 2 steps, 9 rows, 13.5 GFLOP, 3.58 GB moved, 100 ms in ops, "
                         "on NVIDIA A100 SXM4 80GB>")
    assert "9,000 rows" in repr(many)
    assert "INCOMPLETE" in repr(dataclasses.replace(rep, incomplete=True))
    # still a dataclass: equality by value, replace
    assert dataclasses.replace(rep) == rep and rep != dataclasses.replace(rep, incomplete=True)


def test_profiled_report_repr_names_its_memory_peak():
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with memwall.profile(model=model, summary=False, device="a100-sxm4-80gb") as prof:
        model(torch.randn(8, 16)).sum().backward()
    rep = prof.report()
    assert rep.memory is not None
    text = repr(rep)
    assert f"{len(rep.rows)} rows" in text and "memory peak " in text and len(text) < 300, text
    # and its memory report's (its timeline's every point, 87-160 kB before)
    text = repr(rep.memory)
    assert "\n" not in text and len(text) < 300 and f"peak {rep.memory.peak_bytes:,} B" in text, text


# --- the saved path: one unbroken line -----------------------------------------------------------


def test_report_saved_path_is_one_line_at_80_columns(tmp_path, monkeypatch, capsys):
    """Printed through a pipe (80 columns), "report saved: <path>" was broken mid-path."""
    monkeypatch.setenv("COLUMNS", "80")
    logdir = tmp_path / "some_experiment_name" / "with_a_realistic_subdir" / "and_one_more_level_of_nesting"
    model = torch.nn.Linear(4, 4)
    with memwall.profile(model=model, logdir=logdir, device="a100-sxm4-80gb") as prof:
        model(torch.randn(2, 4))
    out = capsys.readouterr().out
    line = f"report saved: {prof.saved[-1]}"
    assert len(line) > 80
    assert line in out.splitlines()


# --- prof.report() inside the block --------------------------------------------------------------


def test_report_inside_the_block_says_the_step_in_progress_is_not_in_it():
    """Inside the block, before any prof.step(), prof.report() gave 0 rows and said nothing."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    with memwall.profile(model=model, summary=False, device="a100-sxm4-80gb") as prof:
        model(torch.randn(8, 16))
        with pytest.warns(RuntimeWarning, match=r"steps ended so far \(0\), not the one in progress.*after the block"):
            inside = prof.report()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once
            prof.report()
        assert inside.rows == ()  # no step has ended: the run goes on as it was
        prof.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a step just ended: nothing left out
            after_step = prof.report()
        assert after_step.steps == (0,) and after_step.rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prof.report().steps == (0,)
