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
