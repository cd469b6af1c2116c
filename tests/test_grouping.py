"""Rows as the views show them: one per (op, module, phase), input shapes folded, with each
shape one flag (`--by shape`) or one click (the tab's `variants`) away; names cut to fit 80
columns without becoming ambiguous."""

from __future__ import annotations

import json

import pytest
import torch
from memwall_plugin.tb_plugin import views

import memwall_plugin as memwall
from memwall_plugin.cli import main
from memwall_plugin.console import _middle, _tail, render_text

B, C, H, CLASSES = 4, 8, 16, 10
FEATURES = C * (H // 2) * (H // 2)


class CNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, C, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(FEATURES, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(B, 3, H, H), torch.randint(0, CLASSES, (B,))
    logdir = tmp_path_factory.mktemp("cnn")
    with memwall.profile(model, logdir=logdir, summary=False) as prof:
        for _ in range(2):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            prof.step()
    return prof.report(), logdir


@pytest.fixture(scope="module")
def cnn_report(cnn_run) -> memwall.Report:
    return cnn_run[0]


def _fc_backward_mm(rows):
    return [r for r in rows if r.op == "aten.mm" and r.module == "fc" and r.phase == "backward"]


def test_a_cnn_has_one_row_per_op_module_and_phase(cnn_report):
    folded = cnn_report.folded()
    keys = [(f.row.op, f.row.overload, f.row.module, f.row.phase) for f in folded]
    assert len(keys) == len(set(keys))  # every dtype here is float32: one row per (op, module, phase)
    assert len(folded) < len(cnn_report.rows)  # some op ran with several shapes
    # nothing lost: every signature is in exactly one folded row, and the totals are the rows'
    assert sorted(id(v) for f in folded for v in f.variants) == sorted(id(r) for r in cnn_report.rows)
    for f in folded:
        assert f.row.calls == sum(v.calls for v in f.variants)
        assert f.row.time_s == pytest.approx(sum(v.time_s for v in f.variants))
        assert f.row.bytes == sum(v.bytes for v in f.variants)
    assert sum(f.row.flops or 0 for f in folded) == cnn_report.total_flops


def test_the_two_gradient_matmuls_of_a_linear_are_one_row_folded_and_two_with_shapes(cnn_report):
    (mm,) = [f for f in cnn_report.folded() if f.row in _fc_backward_mm([f.row for f in cnn_report.folded()])]
    assert len(mm.variants) == 2
    shapes = {v.shapes for v in mm.variants}
    # grad_input = grad_out [B, out] @ W [out, in]; grad_weight = grad_out^T [out, B] @ x [B, in]
    assert shapes == {f"[{B}, {CLASSES}] x [{CLASSES}, {FEATURES}]", f"[{CLASSES}, {B}] x [{B}, {FEATURES}]"}
    for v in mm.variants:  # 2 FLOPs per multiply-add, 2 steps
        assert v.flops == 2 * 2 * B * CLASSES * FEATURES
    assert mm.row.flops == 2 * 2 * 2 * B * CLASSES * FEATURES
    assert mm.row.shapes.startswith("2 shapes")


def _table_lines(text: str, op: str, module: str) -> list[str]:
    table = text.split("\nPhases")[0]
    return [line for line in table.splitlines() if line.split()[:2] == [op, module]]


def test_the_summary_folds_shapes_by_default_and_splits_them_by_shape(cnn_report):
    folded = render_text(cnn_report, width=180)
    assert len(_table_lines(folded, "mm", "fc")) == 1
    assert "shapes folded: --by shape" in folded
    split = render_text(cnn_report, width=180, options=memwall.SummaryOptions(by="shape", top=100))
    lines = _table_lines(split, "mm", "fc")
    assert len(lines) == 2
    assert any(f"[{CLASSES}, {B}] x [{B}, {FEATURES}]" in line for line in lines)
    assert all("fp32" in line for line in lines)  # the dtype beside the shapes


def test_memwall_report_by_shape_on_the_command_line(cnn_run, capsys):
    logdir = cnn_run[1]
    assert main(["report", str(logdir), "--by", "shape", "--top", "100"]) == 0
    out = capsys.readouterr().out
    assert "operator signatures" in out
    assert main(["report", str(logdir), "--by", "shape", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len([r for r in rows if r["op"] == "aten.mm" and r["module"] == "fc" and r["phase"] == "backward"]) == 2


def test_the_tabs_rows_are_folded_with_their_variants_and_per_shape_on_request(cnn_report):
    view = views.report_view(cnn_report)
    assert view["by"] == "op"
    (mm,) = [r for r in view["rows"] if r["op"] == "aten.mm" and r["module"] == "fc" and r["phase"] == "backward"]
    assert mm["shapes_count"] == 2 and len(mm["variants"]) == 2
    assert {v["shapes"] for v in mm["variants"]} == {r.shapes for r in _fc_backward_mm(cnn_report.rows)}
    assert [r["id"] for r in view["rows"]] == list(range(len(view["rows"])))
    split = views.report_view(cnn_report, by="shape")
    assert len(_fc_backward_mm([memwall.Row(**{k: r[k] for k in ("op", "overload", "module", "phase", "calls",
                                                                 "dtype", "shapes", "flops", "bytes_read",
                                                                 "bytes_written", "time_s")},
                                            elements_read=0, elements_written=0)
                                for r in split["rows"]])) == 2
    assert all("variants" not in r for r in split["rows"])


def test_a_what_ifs_bound_changes_point_at_the_folded_rows(cnn_report):
    what_if = cnn_report.rescore(device="H100 SXM")
    view = views.report_view(what_if, measured=cnn_report)
    rows = view["rows"]
    for change in view["projection"]["bound_changes"]:
        row = rows[change["id"]]
        assert (row["op"], row["module"], row["phase"]) == (change["op"], change["module"], change["phase"])


@pytest.mark.parametrize(("a", "b"), [
    ("max_pool2d_with_indices", "max_pool2d_with_indices_backward"),
    ("convolution", "convolution_backward"),
    ("native_layer_norm", "native_layer_norm_backward"),
    ("_log_softmax", "_log_softmax_backward_data"),
])
@pytest.mark.parametrize("width", [15, 18, 24])
def test_an_op_and_its_backward_stay_apart_when_cut(a, b, width):
    cut_a, cut_b = _middle(a, width), _middle(b, width)
    assert len(cut_a) <= width and len(cut_b) <= width
    assert cut_a != cut_b


def test_module_paths_shrink_keeping_the_leaf_and_the_layer_numbers():
    path = "model.encoder.layers.11.self_attn.out_proj"
    assert _tail(path, 30) == "m.e.l.11.self_attn.out_proj"  # the outer names shrink first, only as needed
    assert _tail(path, 20) == "…e.l.11.s_a.out_proj"  # the leaf's parent keeps its words' initials
    cut = _tail(path, 16)
    assert len(cut) <= 16 and cut.startswith("…") and cut.endswith("out_proj") and "11" in cut
    assert _tail("transformer.h.3.attn.c_attn", 14) == "t.h.3.a.c_attn"
    assert _tail("transformer.h.3.attn.c_attn", 14) != _tail("transformer.h.4.attn.c_attn", 14)
    assert _tail("fc", 12) == "fc"
    # PEFT's adapters differ in a later word of a name above the leaf: its initials keep them apart
    lora = "base_model.model.model.layers.1.self_attn.v_proj.lora_{}.default"
    assert _tail(lora.format("A"), 31) == "b_m.m.m.l.1.s_a.v_p.l_A.default"
    for width in (20, 24, 28, 31):
        assert _tail(lora.format("A"), width) != _tail(lora.format("B"), width)
        assert len(_tail(lora.format("A"), width)) <= width


def test_at_80_columns_no_operator_row_wraps(cnn_report):
    text = render_text(cnn_report, width=80)
    table = text.split("operators by time")[1].split("\nPhases")[0].splitlines()[3:]
    ops = {f.row.op.removeprefix("aten.") for f in cnn_report.folded()}
    # every line of the table is a row of its own: it starts with an op's (possibly cut) name
    for line in table:
        if line.strip():
            name = line.split()[0]
            assert name in ops or "…" in name, line


def test_by_shape_at_80_columns_puts_dtype_and_shapes_beneath_each_op(cnn_report):
    text = render_text(cnn_report, width=80, options=memwall.SummaryOptions(by="shape", top=100))
    assert max(len(line) for line in text.splitlines()) <= 80
    table = text.split("input shapes)")[1].split("\nPhases")[0].splitlines()
    assert table[1].startswith("op / shapes")  # the header on one line
    lines = [line for line in table[3:] if line.strip()]
    mm_rows = [i for i, line in enumerate(lines) if line.split()[:2] == ["mm", "fc"]]
    assert len(mm_rows) == 2
    beneath = set()
    for i in mm_rows:  # the lines under a row, up to the next row (rows carry a time share)
        below = []
        for line in lines[i + 1:]:
            if "%" in line:
                break
            below.append(line.strip())
        beneath.add(" ".join(below))
    assert beneath == {f"fp32 [{B}, {CLASSES}] x [{CLASSES}, {FEATURES}]", f"fp32 [{CLASSES}, {B}] x [{B}, {FEATURES}]"}
