"""memwall in the frameworks' own profiler slots, against the real packages: Lightning's
`Trainer(profiler=MemwallProfiler(...))` and Hugging Face's `Trainer(callbacks=[MemwallCallback()])`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch
from memwall_plugin.tb_plugin.plugin import MemwallPlugin
from tensorboard.plugins import base_plugin

import memwall_plugin as memwall
from memwall_plugin.console import findings

lightning = pytest.importorskip("lightning")  # a dev dependency: installed wherever the tests run


def _phase_flops(rows, under: str | None = None) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if under is None or r.module == under or r.module.startswith(under + "."):
            out[r.phase] = out.get(r.phase, 0) + (r.flops or 0)
    return out


def _tab_flops(logdir: Path) -> int:
    plugin = MemwallPlugin(base_plugin.TBContext(logdir=str(logdir)))
    (run,) = plugin.runs_impl()["runs"]
    return plugin.report_impl({"run": run["run"]})["headline"]["flops"]


# --- Lightning -------------------------------------------------------------------------------------


class _Lit(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _batches() -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(8, 16) for _ in range(3)]


def _fit(profiler) -> _Lit:  # type: ignore[no-untyped-def]
    logging.getLogger("lightning").setLevel(logging.ERROR)
    data = torch.utils.data.TensorDataset(torch.cat(_batches()))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    model = _Lit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's own notices (no workers, no logger)
        trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, profiler=profiler)
        trainer.fit(model, loader)
    return model


def test_lightning_fit_is_recorded_with_its_modules_and_phases(tmp_path):
    from memwall_plugin.integrations.lightning import MemwallProfiler

    profiler = MemwallProfiler(logdir=tmp_path / "lit", summary=False)
    trained = _fit(profiler)
    bare = _fit(None)
    for a, b in zip(trained.parameters(), bare.parameters(), strict=True):
        assert torch.equal(a, b)  # the fit memwall watched trained the same weights, bit for bit
    rep = profiler.report()
    forward = {(r.op, r.module) for r in rep.rows if r.phase == "forward"}
    assert {("aten.addmm", "net.0"), ("aten.gelu", "net.1"), ("aten.addmm", "net.2")} <= forward
    assert not {r.op for r in rep.rows if r.phase == "optimizer"} & {"aten.addmm", "aten.gelu", "aten.mm"}

    # the same model and batches in an explicit loop: the model's work per phase, and AdamW's
    model = _Lit()
    opt = model.configure_optimizers()
    with memwall.profile(model=model, summary=False) as prof:
        for batch in _batches():
            opt.zero_grad()
            model.training_step((batch,), 0).backward()
            opt.step()
            prof.step()
    loop = prof.report()
    assert _phase_flops(rep.rows, "net") == _phase_flops(loop.rows, "net")
    assert _phase_flops(rep.rows)["optimizer"] == _phase_flops(loop.rows)["optimizer"]
    assert _phase_flops(rep.rows, "net")["forward"] == 3 * (2 * 8 * 16 * 32 + 8 * 32 + 2 * 8 * 32 * 4 + 8 * 4) + (
        _phase_flops(loop.rows, "net.1")["forward"])  # the two Linear layers by hand, GELU as counted
    assert _tab_flops(tmp_path / "lit") == rep.total_flops  # the tab reads the report it wrote


def test_lightning_profiler_arguments_are_checked_before_the_fit():
    from memwall_plugin.integrations.lightning import MemwallProfiler

    with pytest.raises(ValueError, match="bandwidth"):
        MemwallProfiler(link="fast")
    with pytest.raises(TypeError, match="sets model= itself"):
        MemwallProfiler(model=torch.nn.Linear(2, 2))


# --- Hugging Face Trainer ------------------------------------------------------------------------


class _TokenizedOnTheFly(torch.utils.data.Dataset):
    """Examples tokenized in the main process as they are read (a word-level tokenizer in Python
    over a long document, then truncated): the Python data pipeline of many fine-tuning scripts,
    which on a tiny model takes longer than the model's ops."""

    def __init__(self, examples: int, length: int) -> None:
        rng = __import__("random").Random(0)
        words = [f"w{i}" for i in range(128)]
        self.vocab = {w: i for i, w in enumerate(words)}
        self.document = " ".join(rng.choice(words) for _ in range(200_000))
        self.examples, self.length = examples, length

    def __len__(self) -> int:
        return self.examples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = [self.vocab[w] for w in self.document.split()]
        window = torch.tensor(ids[index * self.length:(index + 1) * self.length])
        return {"input_ids": window, "labels": window}


def test_hf_trainer_with_gradient_accumulation(tmp_path):
    transformers = pytest.importorskip("transformers")
    from memwall_plugin.integrations.transformers import MemwallCallback

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=128,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    data = _TokenizedOnTheFly(24, 16)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, gradient_accumulation_steps=2,
        per_device_train_batch_size=2, report_to=[], save_strategy="no", disable_tqdm=True, use_cpu=True,
        logging_steps=1, dataloader_num_workers=0,
    )
    callback = MemwallCallback(logdir=tmp_path / "memwall", summary=False)
    transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    rep = callback.report()
    assert rep.steps == (1, 2, 3, 4, 5, 6)  # six optimizer steps, numbered as the Trainer's global step
    # each step holds two micro-batches: two forwards and two backwards of the token embedding
    (lookup,) = [r for r in rep.rows if r.op == "aten.embedding" and r.module == "transformer.wte"]
    assert lookup.calls == 12 and lookup.phase == "forward"
    grads = [r for r in rep.rows if r.op == "aten.embedding_dense_backward" and r.module == "transformer.wte"]
    assert sum(r.calls for r in grads) == 12 and {r.phase for r in grads} == {"backward"}
    optimizer_ops = {r.op for r in rep.rows if r.phase == "optimizer"}
    assert optimizer_ops and not optimizer_ops & {"aten.mm", "aten.addmm", "aten.embedding", "aten.bmm"}
    # a tiny model on a CPU: the Trainer's Python, collation and logging bound the step
    assert any("outside any op" in f for f in findings(rep)), (rep.wall_time_s, rep.total_time_s, findings(rep))
    assert _tab_flops(tmp_path / "memwall") == rep.total_flops
