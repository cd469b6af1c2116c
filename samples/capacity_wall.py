"""The paper's Figures 2 and 4: models outgrew accelerator memory, measured with memwall.

    python samples/capacity_wall.py --out runs/capacity
    python samples/capacity_wall.py --models bert-large gpt2-xl --out runs/capacity

Figure 4 of "AI and Memory Wall" (Gholami et al., 2024) gives the memory needed to train eight
models (parameters, optimizer state, activations; samples/data/training_memory_fig4.csv, the
authors' table). Here each model is built by hand or from a transformers config (random weights,
no download) on the meta device, where tensors carry shapes and dtypes but no data: nothing is
computed and every size is exact. memwall records two training steps at the published input
size and batch (forward, backward, optimizer step: SGD with momentum for the CNNs, Adam for the
Transformers; the second step has the optimizer state from the first) and `report().memory`
says what held memory:

* parameters, gradients and optimizer state: per module, summed (`MemoryReport.modules`);
* activations: every tensor saved for backward in a step, each storage once, summed over the
  modules that saved them (what stays live from the forward to the backward; the peak holds most
  of it at once);
* the peak: the most memory live at once, and what it was made of at that moment.

The published bars are parameters + optimizer state + activations: the authors' totals have no
gradients (with SGD-momentum the gradients are as large as the momentum they fold into, with Adam
they are left out), so the comparison does the same and shows the gradients beside it. Their
"GB" are GiB: AlexNet's, VGG19's and ResNet-152's parameter bytes (4 x their parameter counts)
match the table in GiB, not in 10^9 bytes, so every figure here is in GiB.

Figure 2: a log-linear least-squares fit of the Transformer models' parameter counts and of
single-accelerator memory against the date (samples/data/model_size_fig2.csv, the figure's
points): the paper's "410x" and "2x" per two years.

Writes figure4.png, figure2.png and results.json under --out, and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn

import memwall_plugin as memwall

DATA = Path(__file__).parent / "data"
FIG4 = DATA / "training_memory_fig4.csv"
FIG2 = DATA / "model_size_fig2.csv"
GIB = 1024**3
#: the paper's growth per two years (the figure's labels): Transformer parameters, accelerator memory
PAPER_GROWTH = {"model": 410.0, "memory": 2.0}
#: Figure 2's labels that would overlap a neighbour or a fit line: (dx, dy, alignment) in points
LABEL_OFFSETS = {"Inception V4": (0, 8, "center"), "Transformer": (-6, -3, "right"), "GPT-1": (6, -4, "left"),
                 "P100 (12GB)": (5, -11, "left"), "A100 (40GB)": (5, -11, "left"), "TPUv2 (16GB)": (5, -11, "left"),
                 "Microsoft T-NLG": (-5, 6, "right"), "V100 (32GB)": (-5, 6, "right")}
#: accelerators newer than the figure, from memwall's device table, with their release year
NEWER_DEVICES = {"h200-sxm": 2024.0, "b200": 2024.9}


# --- the models -----------------------------------------------------------------------------------


class AlexNet(nn.Module):
    """The one-GPU AlexNet (Krizhevsky 2014, torchvision's layout): 61.1M parameters."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class VGG19(nn.Module):
    """VGG19 (configuration E, no batch norm): 143.7M parameters."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                  512, 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(4096, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * base_width / 64) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """Bottleneck ResNet / ResNeXt as torchvision lays them out (ResNet-152: 60.2M parameters,
    ResNeXt-101 64x4d: 83.5M)."""

    def __init__(self, blocks: tuple[int, ...], groups: int = 1, width_per_group: int = 64,
                 classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes, stages = 64, []
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            layer = []
            for j in range(n):
                layer.append(Bottleneck(inplanes, planes, 2 if i > 0 and j == 0 else 1, groups, width_per_group))
                inplanes = planes * 4
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    def __init__(self, channels: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1, self.relu1 = nn.BatchNorm2d(channels), nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(channels, bn_size * growth, 1, bias=False)
        self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)  # each layer concatenates every earlier feature map (no sharing)
        return self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))


class DenseNet(nn.Module):
    """DenseNet-201 (growth 32, blocks 6/12/48/32) as torchvision lays it out, without its
    memory-efficient (checkpointed) option: 20.0M parameters."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 48, 32), growth: int = 32, classes: int = 1000) -> None:
        super().__init__()
        channels = 64
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for i, n in enumerate(blocks):
            self.blocks.append(nn.ModuleList(DenseLayer(channels + j * growth, growth) for j in range(n)))
            channels += n * growth
            if i != len(blocks) - 1:
                self.transitions.append(nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                                      nn.Conv2d(channels, channels // 2, 1, bias=False),
                                                      nn.AvgPool2d(2, 2)))
                channels //= 2
        self.norm = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            features = [x]
            for layer in block:
                features.append(layer(features))
            x = torch.cat(features, 1)
            if i < len(self.transitions):
                x = self.transitions[i](x)
        x = F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1)
        return self.fc(torch.flatten(x, 1))


class TransformerBig(nn.Module):
    """Transformer Big (Vaswani et al. 2017): d 1024, FFN 4096, 16 heads, 6 + 6 layers, dropout
    0.3 as the paper trained it on WMT EN-DE; separate source and target embeddings and output
    projection over a 32,000-token vocabulary: 274.6M parameters (the table's 1.02 GiB)."""

    def __init__(self, vocab: int = 32000, d: int = 1024, heads: int = 16, layers: int = 6, ffn: int = 4096,
                 max_len: int = 1024, dropout: float = 0.3) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(vocab, d)
        self.tgt_embed = nn.Embedding(vocab, d)
        self.transformer = nn.Transformer(d, heads, layers, layers, ffn, dropout, batch_first=True)
        self.generator = nn.Linear(d, vocab)
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2) * (-math.log(10000.0) / d))
        pe = torch.zeros(max_len, d)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
        self.register_buffer("pe", pe, persistent=False)
        self.scale = math.sqrt(d)

    def embed(self, table: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(table(tokens) * self.scale + self.pe[: tokens.shape[1]])

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        n = tgt.shape[1]
        causal = torch.triu(torch.full((n, n), float("-inf"), device=tgt.device), diagonal=1)
        out = self.transformer(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt),
                               tgt_mask=causal, tgt_is_causal=True)
        return self.generator(out)


@dataclass(frozen=True)
class Spec:
    key: str
    published: str  # the model's name in the table
    settings: str
    optimizer: str  # "sgd" (momentum 0.9) or "adam"
    build: Callable[[], nn.Module]
    #: the model and the device -> the step's loss
    loss: Callable[[nn.Module, torch.device], torch.Tensor]
    note: str  # where the numbers may differ for this model


def _image_loss(batch: int, size: int) -> Callable[[nn.Module, torch.device], torch.Tensor]:
    def loss(model: nn.Module, device: torch.device) -> torch.Tensor:
        x = torch.randn(batch, 3, size, size, device=device)
        y = torch.randint(0, 1000, (batch,), device=device)
        return F.cross_entropy(model(x), y)

    return loss


def _hf_loss(batch: int, seq: int) -> Callable[[nn.Module, torch.device], torch.Tensor]:
    def loss(model: nn.Module, device: torch.device) -> torch.Tensor:
        # no attention_mask: every position is real, and an all-ones mask is checked with .all(),
        # which needs values (the meta device has none)
        ids = torch.randint(0, 1000, (batch, seq), device=device)
        return model(input_ids=ids, labels=ids).loss

    return loss


def _translation_loss(batch: int, seq: int) -> Callable[[nn.Module, torch.device], torch.Tensor]:
    def loss(model: nn.Module, device: torch.device) -> torch.Tensor:
        src = torch.randint(0, 32000, (batch, seq), device=device)
        tgt = torch.randint(0, 32000, (batch, seq), device=device)
        logits = model(src, tgt)
        return F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), label_smoothing=0.1)

    return loss


def _bert_large() -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        attn_implementation="eager")
    return BertForMaskedLM(config)


def _gpt2_xl() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=48, n_embd=1600, n_head=25, attn_implementation="eager"))
    model.loss_type = "ForCausalLM"  # what it picks anyway, without a warning that it picked it
    return model


SPECS = {s.key: s for s in (
    Spec("alexnet", "AlexNet", "227x227, batch 128", "sgd", AlexNet, _image_loss(128, 227),
         "the table's AlexNet parts sum to 1.17 GB, not its printed 1.71 total (the plotted bar is ~1.2)"),
    Spec("vgg19", "VGG19", "224x224, batch 64", "sgd", VGG19, _image_loss(64, 224),
         "no batch norm: each conv saves its input and each in-place ReLU its output, both the size of a "
         "feature map"),
    Spec("resnet152", "ResNet152", "224x224, batch 32", "sgd", lambda: ResNet((3, 8, 36, 3)), _image_loss(32, 224),
         "each conv saves its input, each batch norm its input (plus statistics), each ReLU its output: "
         "about three tensors per feature map"),
    Spec("densenet201", "DenseNet201", "224x224, batch 32", "sgd", DenseNet, _image_loss(32, 224),
         "the naive layout: every layer's concatenation of the earlier maps is a new tensor saved for "
         "backward (torchvision's memory-efficient option recomputes them instead)"),
    Spec("resnext101", "ResNeXt101 (64x4d)", "224x224, batch 32", "sgd",
         lambda: ResNet((3, 4, 23, 3), groups=64, width_per_group=4), _image_loss(32, 224),
         "grouped 3x3 convs 64 groups x 4 channels wide: the inner maps of each bottleneck are 4x as wide as "
         "ResNet-101's (256 channels vs 64 at the first stage)"),
    Spec("transformer-big", "Transformer Big (WMT)", "512 + 512 tokens, batch 6", "adam", TransformerBig,
         _translation_loss(6, 512),
         "the vocabulary (32,000, separate source, target and output tables) is assumed from the table's "
         "1.02 GB of parameters; torch's scaled_dot_product_attention takes its math path here and keeps the "
         "6x16x512x512 scores, probabilities and dropout mask of each of the 18 attentions"),
    Spec("bert-large", "BERT Large", "512 tokens, batch 16", "adam", _bert_large, _hf_loss(16, 512),
         "masked-LM head included (its 16x512x30522 logits are saved); eager attention keeps the 16x16x512x512 "
         "scores, probabilities, dropout mask and dropped probabilities per layer"),
    Spec("gpt2-xl", "GPT-2", "1024 tokens, batch 1", "adam", _gpt2_xl, _hf_loss(1, 1024),
         "the table's sequence length '2014' is taken as 1024 (GPT-2's context); its parts sum to 26.11, "
         "not the printed 26.21"),
)}


# --- the published figures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    year: int
    model: str
    input: str
    batch_size: int
    params_gb: float
    optimizer_gb: float
    activations_gb: float
    total_gb: float

    @property
    def parts_gb(self) -> float:
        return self.params_gb + self.optimizer_gb + self.activations_gb


def _rows(path: Path) -> list[dict[str, str]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines))


def published(path: Path = FIG4) -> dict[str, Published]:
    out = {}
    for r in _rows(path):
        out[r["model"]] = Published(int(r["year"]), r["model"], r["input"], int(r["batch_size"]),
                                    float(r["params_gb"]), float(r["optimizer_gb"]), float(r["activations_gb"]),
                                    float(r["total_gb"]))
    return out


# --- measuring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    key: str
    model: str
    year: int
    settings: str
    optimizer: str
    device: str
    parameter_count: int  # from the model itself
    parameter_tensors: int
    parameter_bytes: int  # memwall's, summed over the modules
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int  # saved for backward in a step, each storage once
    feature_map_bytes: int  # the outputs of the conv and linear layers only (a narrower accounting)
    attention_bytes: int  # saved by attention modules (the s^2 terms live there)
    peak_bytes: int
    peak_by_category: dict[str, int]
    peak_at: list[str]
    seconds: float
    published: dict[str, float] = field(default_factory=dict)

    @property
    def comparable_bytes(self) -> int:
        """What the paper's bars add up: parameters + optimizer state + activations."""
        return self.parameter_bytes + self.optimizer_bytes + self.activation_bytes

    def ratios(self) -> dict[str, float]:
        mine = {"params_gb": self.parameter_bytes, "optimizer_gb": self.optimizer_bytes,
                "activations_gb": self.activation_bytes, "total_gb": self.comparable_bytes}
        return {k: mine[k] / GIB / v for k, v in self.published.items() if k in mine and v}


def measure(spec: Spec, device: str = "meta", steps: int = 2) -> Measured:
    """Two recorded training steps of the model at the published size on `device`."""
    start = time.perf_counter()
    dev = torch.device(device)
    with dev:
        model = spec.build()
    model.train()
    params = list(model.parameters())
    if spec.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    else:
        opt = torch.optim.Adam(params, lr=1e-4)
    with memwall.profile(model=model, summary=False) as prof:
        for _ in range(steps):
            loss = spec.loss(model, dev)
            loss.backward()
            opt.step()
            # the gradients go before the step ends: memwall's per-module gradient bytes count
            # every gradient storage a step saw, the last step's kept ones too
            opt.zero_grad(set_to_none=True)
            del loss
            prof.step()
    mem = prof.report().memory
    assert mem is not None, "memwall measured no memory"
    kinds = {name: type(m) for name, m in model.named_modules()}
    # GPT-2's projections are transformers' Conv1D: a linear layer by another name
    layers = {name for name, kind in kinds.items()
              if issubclass(kind, (nn.Conv2d, nn.Linear)) or kind.__name__ == "Conv1D"}
    maps = sum(m.output_bytes for m in mem.modules if m.module in layers)
    attention = sum(m.activation_bytes for m in mem.modules
                    if kinds.get(m.module) is not None and "attention" in kinds[m.module].__name__.lower())
    pub = published()[spec.published]
    return Measured(
        key=spec.key, model=spec.published, year=pub.year, settings=spec.settings,
        optimizer="SGD, momentum 0.9" if spec.optimizer == "sgd" else "Adam", device=device,
        parameter_count=sum(p.numel() for p in params), parameter_tensors=len(params),
        parameter_bytes=sum(m.parameter_bytes for m in mem.modules),
        gradient_bytes=sum(m.gradient_bytes for m in mem.modules),
        optimizer_bytes=sum(m.optimizer_state_bytes for m in mem.modules),
        activation_bytes=sum(m.activation_bytes for m in mem.modules),
        feature_map_bytes=maps, attention_bytes=attention,
        peak_bytes=mem.peak_bytes, peak_by_category=dict(mem.peak_by_category), peak_at=list(mem.peak_at),
        seconds=time.perf_counter() - start,
        published={"params_gb": pub.params_gb, "optimizer_gb": pub.optimizer_gb,
                   "activations_gb": pub.activations_gb, "total_gb": pub.total_gb},
    )


def explain(m: Measured) -> str:
    """Where and why the measurement and the table differ, for one model."""
    r = m.ratios()
    gib = m.activation_bytes / GIB
    parts = [f"parameters {r['params_gb']:.2f}x and optimizer state {r['optimizer_gb']:.2f}x the table's "
             f"({'momentum = 1x' if m.optimizer.startswith('SGD') else 'Adam moments = 2x'} the parameters, "
             "fp32, exact here)."]
    act = r["activations_gb"]
    parts.append(f"Activations {act:.2f}x: {gib:.2f} GiB saved for backward in fp32")
    if m.attention_bytes:
        parts[-1] += f" ({m.attention_bytes / m.activation_bytes:.0%} of it in attention)"
    parts[-1] += (f"; at 2 bytes per element (mixed precision) ~{gib / 2:.2f} GiB, and counting only "
                  f"the conv/linear outputs as feature maps {m.feature_map_bytes / GIB:.2f} GiB: the "
                  "authors' accounting is not published.")
    parts.append(SPECS[m.key].note[0].upper() + SPECS[m.key].note[1:] + ".")
    return " ".join(parts)


# --- Figure 2 -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    series: str
    points: int
    slope_per_year: float  # in log10 units
    intercept: float
    first_year: float
    last_year: float

    @property
    def growth_per_two_years(self) -> float:
        return 10 ** (2 * self.slope_per_year)

    def value(self, year: float) -> float:
        return 10 ** (self.intercept + self.slope_per_year * year)


def fit(series: str, points: list[tuple[float, float]]) -> Fit:
    """Least squares of log10(value) on year."""
    n = len(points)
    xs = [x for x, _ in points]
    ys = [math.log10(y) for _, y in points]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return Fit(series, n, slope, my - slope * mx, min(xs), max(xs))


def figure2_points(path: Path = FIG2, days_per_year: float | None = None) -> list[dict[str, Any]]:
    """The figure's points; the date as the CSV's decimal year, or with `days_per_year` as
    1970 + days since 1970 / days_per_year."""
    out = []
    for r in _rows(path):
        year = float(r["year_decimal"]) if days_per_year is None else 1970 + int(r["days_since_1970"]) / days_per_year
        out.append({"series": r["series"], "name": r["name"], "year": year,
                    "value": float(r["plotted_value"]), "marker": r["marker"],
                    "memory_gb": float(r["memory_gb"]) if r["memory_gb"] else None,
                    "in_fit": r["in_figure_fit"] == "true"})
    return out


def figure2_fits(path: Path = FIG2, days_per_year: float | None = None) -> dict[str, Fit]:
    """The figure's own fits: Transformer parameters (billions) and accelerator memory (the
    plotted value, capacity / 6 bytes per parameter: the slope is the capacity's). Over decimal
    years the parameters grow 413x per two years; over 365-day years (the CSV header's fit) 411x:
    the year's length alone moves the figure by 0.5%."""
    points = figure2_points(path, days_per_year)
    return {series: fit(series, [(p["year"], p["value"]) for p in points if p["series"] == series and p["in_fit"]])
            for series in ("model", "memory")}


# --- plots ----------------------------------------------------------------------------------------


def plot_figure4(results: list[Measured], pub: dict[str, Published], fits: dict[str, Fit], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"parameters": "#1e88e5", "optimizer": "#43a047", "activations": "#ef6c00", "gradients": "#8e24aa"}
    results = sorted(results, key=lambda m: (m.year, m.key))
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6.2), gridspec_kw={"width_ratios": [1.6, 1]})
    width = 0.38
    for i, m in enumerate(results):
        p = pub[m.model]
        bottom = 0.0
        for part, value in (("parameters", p.params_gb), ("optimizer", p.optimizer_gb),
                            ("activations", p.activations_gb)):
            left.bar(i - width / 2, value, width, bottom=bottom, color=colors[part], alpha=0.45, edgecolor="#424242",
                     linewidth=0.5)
            bottom += value
        left.text(i - width / 2, bottom, f"{bottom:.1f}", ha="center", va="bottom", fontsize=7.5)
        bottom = 0.0
        for part, value in (("parameters", m.parameter_bytes), ("optimizer", m.optimizer_bytes),
                            ("activations", m.activation_bytes), ("gradients", m.gradient_bytes)):
            left.bar(i + width / 2, value / GIB, width, bottom=bottom, color=colors[part], edgecolor="#424242",
                     linewidth=0.5, hatch="//" if part == "gradients" else None)
            bottom += value / GIB
        left.text(i + width / 2, bottom, f"{m.comparable_bytes / GIB:.1f}", ha="center", va="bottom", fontsize=7.5)
    for gb, label in ((32e9, "V100: 32 GB"), (80e9, "A100 / H100: 80 GB")):
        left.axhline(gb / GIB, color="#9e9e9e", linestyle="--", linewidth=0.9)
        left.text(-0.55, gb / GIB, f"{label} = {gb / GIB:.1f} GiB", ha="left", va="bottom", fontsize=8,
                  color="#616161")
    left.set_xticks(range(len(results)))
    left.set_xticklabels([f"{m.model.replace(' (WMT)', '').replace(' (64x4d)', '')}\n{m.year}" for m in results],
                         fontsize=8.5)
    left.set_xlim(-0.6, len(results) - 0.4)
    left.set_ylabel("memory to train (GiB)")
    left.set_title("Memory to train each model: published (faded, left) vs measured by memwall (right)\n"
                   "fp32, published input size and batch; number on a bar = params + optimizer + activations",
                   fontsize=10.5)
    handles = [Patch(color=colors[k], label=k if k != "optimizer" else "optimizer state") for k in
               ("parameters", "optimizer", "activations")]
    handles.append(Patch(facecolor=colors["gradients"], hatch="//", edgecolor="#424242",
                         label="gradients (measured; not in the published totals)"))
    handles.append(Patch(facecolor="#bdbdbd", alpha=0.45, edgecolor="#424242", label="faded: the published bar"))
    left.set_ylim(0, max(85.0, max((m.comparable_bytes + m.gradient_bytes) / GIB for m in results) * 1.08))
    left.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 0.86), fontsize=8.5)
    left.grid(alpha=0.3, axis="y")

    # right: the totals over the years against single-accelerator memory
    mem_points = [pt for pt in figure2_points() if pt["series"] == "memory"]
    right.scatter([pt["year"] for pt in mem_points], [pt["memory_gb"] * 1e9 / GIB for pt in mem_points],
                  color="#2e7d32", marker="s", s=28, zorder=3, label="accelerator memory (Figure 2's points)")
    for key, year in NEWER_DEVICES.items():
        spec = memwall.lookup_device(key)
        right.scatter([year], [(spec.memory_bytes or 0) / GIB], color="#2e7d32", marker="s", s=28, facecolor="none",
                      zorder=3, label="newer accelerators (memwall's device table)" if key == "h200-sxm" else None)
        right.annotate(spec.name.replace("NVIDIA ", "").split(" ")[0], (year, (spec.memory_bytes or 0) / GIB),
                       textcoords="offset points", xytext=(-8, 6), fontsize=7.5)
    for pt in mem_points:
        if pt["name"].startswith(("P100", "V100", "A100", "H100")):
            right.annotate(pt["name"].split(" ")[0], (pt["year"], pt["memory_gb"] * 1e9 / GIB),
                           textcoords="offset points", xytext=(-10, 6), fontsize=7.5)
    memory = fits["memory"]
    span = [memory.first_year, 2025.0]
    # the figure fits capacity / 6 bytes per parameter: x 6e9 / GiB gives GiB
    right.plot(span, [memory.value(y) * 6e9 / GIB for y in span], color="#2e7d32", linewidth=1, linestyle=":",
               label=f"memory trend (Figure 2's fit, {memory.growth_per_two_years:.2f}x / 2 years)")
    right.scatter([m.year - 0.12 for m in results], [pub[m.model].parts_gb for m in results], color="#757575",
                  marker="o", s=30, alpha=0.7, label="published: params + optimizer + activations")
    right.scatter([m.year + 0.12 for m in results], [m.comparable_bytes / GIB for m in results], color="#d84315",
                  marker="D", s=30, label="memwall: params + optimizer + activations")
    right.scatter([m.year + 0.12 for m in results], [(m.comparable_bytes + m.gradient_bytes) / GIB for m in results],
                  color="#d84315", marker="_", s=120, label="memwall: + gradients")
    right.set_yscale("log")
    right.set_xlim(2011.3, 2025.9)
    right.set_xlabel("year")
    right.set_ylabel("GiB (log scale)")
    right.set_title("Training memory vs a single accelerator's memory", fontsize=10.5)
    right.grid(alpha=0.3, which="major")
    right.legend(loc="upper left", fontsize=7.5)
    fig.tight_layout()
    path = out / "figure4.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_figure2(fits: dict[str, Fit], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = figure2_points()
    colors = {"red": "#d32f2f", "blue": "#1e88e5", "black": "#212121", "green": "#2e7d32"}
    labels = {"red": "Transformer models (fitted)", "blue": "vision models (not fitted)",
              "black": "recommendation model (not fitted)", "green": "accelerator memory / 6 B per parameter (fitted)"}
    fig, ax = plt.subplots(figsize=(9.5, 6))
    for marker in ("red", "blue", "black", "green"):
        group = [p for p in points if p["marker"] == marker]
        ax.scatter([p["year"] for p in group], [p["value"] for p in group], color=colors[marker],
                   marker="s" if marker == "green" else "o", s=30, zorder=3, label=labels[marker])
    for p in points:
        if p["marker"] == "blue" and p["name"].startswith("("):
            continue  # unlabelled in the figure
        dx, dy, ha = LABEL_OFFSETS.get(p["name"], (5, 6, "left"))
        ax.annotate(p["name"], (p["year"], p["value"]), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7)
    for key, year in NEWER_DEVICES.items():
        spec = memwall.lookup_device(key)
        v = (spec.memory_bytes or 0) / 6e9
        ax.scatter([year], [v], color=colors["green"], facecolor="none", marker="s", s=30, zorder=3,
                   label="newer accelerators (memwall's device table, not fitted)" if key == "h200-sxm" else None)
        ax.annotate(f"{spec.name.replace('NVIDIA ', '').split(' ')[0]} ({(spec.memory_bytes or 0) / 1e9:.0f}GB)",
                    (year, v), textcoords="offset points", xytext=(5, -11), fontsize=7)
    for series, color, what in (("model", colors["red"], "parameters"), ("memory", colors["green"], "memory")):
        f = fits[series]
        span = [f.first_year, f.last_year]
        ax.plot(span, [f.value(y) for y in span], color=color, linewidth=1.3,
                label=f"fit of {what}: {f.growth_per_two_years:.0f}x / 2 years" if series == "model"
                else f"fit of {what}: {f.growth_per_two_years:.2f}x / 2 years")
        if series == "memory":  # the trend carried on past the fitted points (dotted)
            ax.plot([f.last_year, 2025.0], [f.value(f.last_year), f.value(2025.0)], color=color, linewidth=1,
                    linestyle=":")
    ax.set_yscale("log")
    ax.set_xlim(right=2026.0)  # room for the last label
    ax.set_xlabel("year")
    ax.set_ylabel("parameters (billions)")
    right = ax.secondary_yaxis("right", functions=(lambda v: v * 6, lambda gb: gb / 6))
    right.set_ylabel("accelerator memory (GB) = 6 B x parameters")
    ax.set_title("Model size vs accelerator memory (data of Gholami et al. 2024, Fig. 2)\n"
                 "log-linear least squares over the figure's fitted points", fontsize=10.5)
    ax.grid(alpha=0.3, which="major")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path = out / "figure2.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- main -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    results: list[Measured]
    fits: dict[str, Fit]
    figures: list[Path]
    seconds: float


def main(argv: list[str] | None = None) -> Outcome:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/capacity", help="where the PNGs and results.json go")
    parser.add_argument("--models", nargs="+", choices=list(SPECS), default=list(SPECS),
                        help="the models of Figure 4 to measure (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="the smallest models only (AlexNet, ResNet-152, Transformer Big): a test in seconds")
    parser.add_argument("--device", default="meta",
                        help="where the models run: meta (default: exact sizes, nothing computed) or cpu")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = ["alexnet", "resnet152", "transformer-big"] if args.quick else args.models
    console = Console()
    pub = published()
    results = []
    for key in keys:
        with console.status(f"measuring {SPECS[key].published} ({SPECS[key].settings}) on {args.device}"):
            results.append(measure(SPECS[key], args.device))
    results.sort(key=lambda m: (m.year, m.key))

    table = Table(title="Memory to train, GiB: measured by memwall (fp32) vs the paper's Figure 4",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("model", "", "params", "optim.", "activ.", "total*", "grads", "peak"):
        table.add_column(name, justify="left" if name in ("model", "") else "right", no_wrap=True)
    for m in results:
        p, r = m.published, m.ratios()
        name = m.model.replace(" (WMT)", "").replace(" (64x4d)", "")
        table.add_row(name, "memwall", *(f"{b / GIB:.2f}" for b in (
            m.parameter_bytes, m.optimizer_bytes, m.activation_bytes, m.comparable_bytes, m.gradient_bytes,
            m.peak_bytes)))
        table.add_row(str(m.year), "paper", *(f"{p[k]:.2f}" for k in ("params_gb", "optimizer_gb", "activations_gb",
                                                                       "total_gb")), "-", "-")
        table.add_row("", "ratio", *(f"{r[k]:.2f}x" for k in ("params_gb", "optimizer_gb", "activations_gb",
                                                               "total_gb")), "", "", end_section=True)
    console.print(table)
    console.print("* parameters + optimizer state + activations, "
                  "as the paper adds them (no gradients); peak: the most memwall saw live at once. Settings: "
                  + "; ".join(f"{m.model.replace(' (WMT)', '')} {m.settings}" for m in results) + ".",
                  highlight=False)
    for m in results:
        console.print(f"[bold]{m.model}[/bold]: {explain(m)}", highlight=False)

    fits = figure2_fits()
    days365 = figure2_fits(days_per_year=365)
    growth = Table(title="Figure 2: growth per two years (log-linear fit)", title_justify="left")
    for name in ("series", "points", "fitted (decimal years)", "fitted (365-day years)", "the paper"):
        growth.add_column(name, justify="left" if name == "series" else "right")
    growth.add_row("Transformer parameters", str(fits["model"].points), f"{fits['model'].growth_per_two_years:.0f}x",
                   f"{days365['model'].growth_per_two_years:.0f}x", "410x")
    growth.add_row("accelerator memory", str(fits["memory"].points), f"{fits['memory'].growth_per_two_years:.2f}x",
                   f"{days365['memory'].growth_per_two_years:.2f}x", "2x")
    console.print(growth)

    figures = [plot_figure4(results, pub, fits, out), plot_figure2(fits, out)]
    seconds = time.perf_counter() - start
    payload = {
        "units": "bytes for measured figures; GiB (the table's 'GB') for published ones",
        "device": args.device,
        "models": [dict(asdict(m), comparable_bytes=m.comparable_bytes, ratios=m.ratios(), explanation=explain(m))
                   for m in results],
        "figure2": {k: dict(asdict(f), growth_per_two_years=f.growth_per_two_years,
                            growth_per_two_years_365_day_years=days365[k].growth_per_two_years, paper=PAPER_GROWTH[k])
                    for k, f in fits.items()},
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    console.print(f"figures: {', '.join(str(f) for f in figures)}; numbers: {out / 'results.json'} "
                  f"({seconds:.0f} s)", highlight=False)
    return Outcome(results, fits, figures, seconds)


if __name__ == "__main__":
    main()
