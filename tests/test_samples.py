"""Each sample at its smallest size, and the case study's claims that hold at any size."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("fail_on_deprecations")  # the samples are what users copy
SAMPLES = Path(__file__).parent.parent / "samples"


def sample(name: str):
    spec = importlib.util.spec_from_file_location(f"memwall_sample_{name}", SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_hardware_trends_fit_gives_the_papers_growth_rates(tmp_path):
    fitted = sample("hardware_trends").main(["--out", str(tmp_path)])
    growth = {k: round(f.growth_per_two_years, 1) for k, f in fitted.items()}
    assert growth == {"HW_FLOPS": 3.0, "DRAM_BW": 1.6, "Interconnect_BW": 1.4}
    assert (tmp_path / "hardware_trends.png").stat().st_size > 20_000


def test_paper_case_study_smallest_size(tmp_path):
    results = sample("paper_case_study").main(
        ["--tiny", "--seq-lens", "16", "--logdir", str(tmp_path / "runs"), "--out", str(tmp_path)])
    by_model = {r.model: r for r in results}
    assert set(by_model) == {"bert-base", "bert-large", "gpt2"}
    # BERT reads every weight once for 16 tokens; GPT-2 once per generated token
    assert by_model["bert-base"].paper_intensity > 5 * by_model["gpt2"].paper_intensity
    assert by_model["gpt2"].paper_intensity < 10
    for r in results:  # tiny widths: the elementwise share is larger than at real sizes
        assert abs(r.block_flops / r.hand_flops - 1) < 0.05, r
    assert (tmp_path / "paper_case_study.png").stat().st_size > 20_000
    assert len(json.loads((tmp_path / "results.json").read_text())) == 3
    assert len(list((tmp_path / "runs").glob("*/plugins/memwall/*.json"))) == 3


def test_case_study_block_flops_match_the_hand_formulas_at_real_size(tmp_path):
    """BERT-Base over 128 tokens and GPT-2 generating 32: within 2% of the docstring's formulas."""
    study = sample("paper_case_study")
    for name, length in (("bert-base", 128), ("gpt2", 32)):
        model, config = study.build(name, length, tiny=False)
        result = study.measure(name, model, config, length, tmp_path)
        assert abs(result.block_flops / result.hand_flops - 1) < 0.02, result
        if name == "bert-base":
            bert = result
        else:
            assert bert.paper_intensity > 10 * result.paper_intensity  # an order of magnitude
            assert result.paper_intensity < 10


def test_train_gpt2_smallest_size(tmp_path):
    rep = sample("train_gpt2").main(["--tiny", "--steps", "4", "--batch", "2", "--seq-len", "16",
                                     "--logdir", str(tmp_path)])
    assert {"forward", "backward", "optimizer"} <= {r.phase for r in rep.rows}
    assert rep.steps == (2, 3)  # wait 1, warm up 1, record the rest
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_decode_batch_sweep_smallest_size(tmp_path):
    points = sample("decode_batch_sweep").main(
        ["--tiny", "--batches", "1", "8", "--tokens", "2", "--context", "4", "--out", str(tmp_path)])
    assert [p.batch for p in points] == [1, 8]
    assert points[1].intensity_fp32 > 4 * points[0].intensity_fp32  # batching raises intensity
    assert points[0].intensity_8bit == pytest.approx(4 * points[0].intensity_fp32, rel=0.01)
    data = json.loads((tmp_path / "decode_sweep.json").read_text())
    assert "H100 SXM 8-bit" in data["crossings"]
    torch.manual_seed(0)


def test_lightning_sample_records_the_fit_with_its_modules(tmp_path):
    pytest.importorskip("lightning")
    from conftest import no_deprecations

    with no_deprecations(inside=("lightning",)):
        rep = sample("train_lightning").main(["--steps", "3", "--logdir", str(tmp_path), "--no-summary"])
    forward = {(r.op, r.module) for r in rep.rows if r.phase == "forward"}
    assert {("aten.addmm", "net.0"), ("aten.addmm", "net.2")} <= forward
    assert {r.module for r in rep.rows if r.phase == "optimizer"} == {""}
    assert list(tmp_path.glob("plugins/memwall/*.json"))


def test_hf_trainer_sample_records_six_steps_of_two_micro_batches(tmp_path):
    rep = sample("train_hf_trainer").main(["--steps", "6", "--accumulate", "2", "--layers", "1",
                                           "--out", str(tmp_path), "--no-summary"])
    assert rep.steps == (1, 2, 3, 4, 5, 6)
    (lookup,) = [r for r in rep.rows if r.op == "aten.embedding" and r.module == "transformer.wte"]
    assert lookup.calls == 12
    assert list(tmp_path.glob("plugins/memwall/*.json"))  # beside the Trainer's own scalars


def test_capacity_wall_quick_measures_exact_training_memory_and_the_papers_trends(tmp_path):
    """Figure 4 (AlexNet, ResNet-152, Transformer Big on the meta device) and Figure 2's fit."""
    wall = sample("capacity_wall")
    outcome = wall.main(["--quick", "--out", str(tmp_path)])
    by_key = {m.key: m for m in outcome.results}
    assert set(by_key) == {"alexnet", "resnet152", "transformer-big"}
    meta = torch.device("meta")
    for key, m in by_key.items():
        spec = wall.SPECS[key]
        # ground truth from a fresh copy of the model: 4 bytes per fp32 parameter
        with meta:
            model = spec.build()
        params = list(model.parameters())
        assert m.parameter_bytes == 4 * sum(p.numel() for p in params), key
        assert m.gradient_bytes == m.parameter_bytes, key
        if spec.optimizer == "sgd":  # one momentum buffer per parameter
            assert m.optimizer_bytes == m.parameter_bytes, key
        else:  # Adam: two moments per parameter and a float32 step counter per parameter tensor
            assert m.optimizer_bytes == 2 * m.parameter_bytes + 4 * len(params), key
        # the activations: every storage autograd saved in one forward, parameters aside, once
        model.train()
        own = {p.untyped_storage()._cdata for p in params}
        saved: dict[int, tuple[int, torch.Tensor]] = {}

        def pack(t: torch.Tensor, saved: dict[int, tuple[int, torch.Tensor]] = saved) -> torch.Tensor:
            saved[t.untyped_storage()._cdata] = (t.untyped_storage().nbytes(), t)  # kept: no address reuse
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            spec.loss(model, meta)
        assert m.activation_bytes == sum(n for k, (n, _) in saved.items() if k not in own), key
    # the hand-built models are the published ones: torchvision's parameter counts
    assert by_key["alexnet"].parameter_count == 61_100_840
    assert by_key["resnet152"].parameter_count == 60_192_808
    # the table's parameter and optimizer GB are GiB of fp32 (printed to 2 decimals: +-0.005)
    for m in by_key.values():
        assert abs(m.parameter_bytes / wall.GIB - m.published["params_gb"]) <= 0.005 + 1e-9, m.key
        assert abs(m.optimizer_bytes / wall.GIB - m.published["optimizer_gb"]) <= 0.01, m.key
    # ResNet-152's activations: memwall's saved-for-backward bytes are the paper's within 5% (3%)
    assert abs(by_key["resnet152"].ratios()["activations_gb"] - 1) < 0.05
    # Figure 2: the paper's labels are "410x" (two significant digits: within 5 of 410, 1.25%) and
    # "2x" (one digit: 1.5 to 2.5); the CSV's own fit (365-day years) says 411x and 1.86x, to 3 digits
    growth = {k: f.growth_per_two_years for k, f in outcome.fits.items()}
    assert abs(growth["model"] / wall.PAPER_GROWTH["model"] - 1) < 0.0125
    assert 1.5 <= growth["memory"] < 2.5
    days365 = {k: f.growth_per_two_years for k, f in wall.figure2_fits(days_per_year=365).items()}
    assert round(days365["model"]) == 411 and round(days365["memory"], 2) == 1.86
    assert round(growth["memory"], 2) == 1.86
    for name in ("figure4.png", "figure2.png"):
        assert (tmp_path / name).stat().st_size > 40_000, name
    data = json.loads((tmp_path / "results.json").read_text())
    assert [m["key"] for m in data["models"]] == ["alexnet", "resnet152", "transformer-big"]
    assert data["models"][1]["parameter_bytes"] == by_key["resnet152"].parameter_bytes
