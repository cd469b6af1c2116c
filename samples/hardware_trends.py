"""The paper's Figure 1: peak compute grew faster than memory and interconnect bandwidth.

    python samples/hardware_trends.py --out runs/trends

Data: the scaling points of Figure 1 of "AI and Memory Wall" (Gholami et al., 2024), read off the
figure with the devices identified where possible (samples/data/hardware_scaling_fig1.csv, a copy
of the project's researched reference). A log-linear least-squares fit per series,
log10(value) = a + b·year, gives the growth per two years, 10^(2b) (the paper: FLOPS 3.0x, DRAM
bandwidth 1.6x, interconnect 1.4x).

The second panel is the ridge point (peak FLOP/s over memory bandwidth: the arithmetic intensity an
operator needs to be compute-bound) of the fitted trends against time, with this machine and some
accelerators from memwall's device table placed on it.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import memwall_plugin as memwall

DATA = Path(__file__).parent / "data" / "hardware_scaling_fig1.csv"
SERIES = {"HW_FLOPS": "peak FLOPS", "DRAM_BW": "DRAM bandwidth", "Interconnect_BW": "interconnect bandwidth"}
#: Devices placed on the ridge-point panel, with their release year.
DEVICES = {"v100-sxm2": 2017.5, "a100-sxm4-80gb": 2020.9, "h100-sxm": 2022.7, "h200-sxm": 2024.0,
           "b200": 2024.9}


@dataclass(frozen=True)
class Fit:
    series: str
    points: int
    slope_per_year: float  # in log10 units
    intercept: float

    @property
    def growth_per_two_years(self) -> float:
        return 10 ** (2 * self.slope_per_year)

    def value(self, year: float) -> float:
        return 10 ** (self.intercept + self.slope_per_year * year)


def load(path: Path = DATA) -> dict[str, list[tuple[float, float]]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    out: dict[str, list[tuple[float, float]]] = {}
    for row in csv.DictReader(lines):
        out.setdefault(row["series"], []).append((float(row["year_decimal"]), float(row["normalized_value"])))
    return out


def fit(series: str, points: list[tuple[float, float]]) -> Fit:
    """Least squares of log10(value) on year."""
    n = len(points)
    xs = [x for x, _ in points]
    ys = [math.log10(y) for _, y in points]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return Fit(series, n, slope, my - slope * mx)


def fits(path: Path = DATA) -> dict[str, Fit]:
    return {name: fit(name, points) for name, points in load(path).items()}


def plot(data: dict[str, list[tuple[float, float]]], fitted: dict[str, Fit], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"HW_FLOPS": "#1e88e5", "DRAM_BW": "#ef6c00", "Interconnect_BW": "#43a047"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, points in data.items():
        xs, ys = zip(*points)
        f = fitted[name]
        left.scatter(xs, ys, s=18, color=colors[name], alpha=0.8)
        span = [min(xs), max(xs)]
        left.plot(span, [f.value(x) for x in span], color=colors[name],
                  label=f"{SERIES[name]}: {f.growth_per_two_years:.1f}x / 2 years")
    left.set_yscale("log")
    left.set_xlabel("year")
    left.set_ylabel("scaling, normalised to the first point (×)")
    left.set_title("Compute vs memory and interconnect bandwidth\n(data of Gholami et al. 2024, Fig. 1)",
                   fontsize=11)
    left.grid(alpha=0.3, which="major")
    left.legend(loc="upper left", fontsize=9)

    # ridge point of the trends: FLOPS grew from 339 MFLOP/s (1997) and DRAM from 15.2 GB/s (2003)
    flops, dram = fitted["HW_FLOPS"], fitted["DRAM_BW"]
    base_flops, base_bw = 0.339e9, 15.2e9  # the series' first points, in absolute units (the CSV)
    years = [2004 + i * 0.5 for i in range(43)]
    ridge = [base_flops * flops.value(y) / (base_bw * dram.value(y)) for y in years]
    right.plot(years, ridge, color="#616161", label="trend: fitted FLOPS / fitted DRAM bandwidth")
    for i, (key, year) in enumerate(DEVICES.items()):
        spec = memwall.lookup_device(key)
        r = spec.ridge_point("bf16") or spec.ridge_point("fp16")
        right.scatter([year], [r], color="#1e88e5", zorder=3,
                      label="accelerators (datasheet, dense bf16/fp16 peak)" if i == 0 else None)
        right.annotate(spec.name.replace("NVIDIA ", "").split(" ")[0], (year, r), textcoords="offset points",
                       xytext=(-10, 8 if i % 2 == 0 else -14), fontsize=8)
    here = memwall.detect_device()
    here_ridge = here.ridge_point("float32")
    if here_ridge:
        sources = sorted({f.source for _, f in here.peaks} | ({here.bandwidth.source} if here.bandwidth else set()))
        right.scatter([2026.0], [here_ridge], color="#ef6c00", marker="*", s=160, zorder=4,
                      label=f"this machine (fp32, {'/'.join(sources)})")
    right.set_yscale("log")
    right.set_xlabel("year")
    right.set_ylabel("ridge point (FLOPs / byte)")
    right.set_title("Ridge point: the FLOPs per byte an operator needs\nto be compute-bound", fontsize=11)
    right.grid(alpha=0.3, which="major")
    right.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    path = out / "hardware_trends.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Fit]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/trends", help="where the PNG goes")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load()
    fitted = fits()
    console = Console()
    table = Table(title="Growth per two years (log-linear fit of Figure 1)", title_justify="left")
    for name in ("series", "points", "fitted", "the paper"):
        table.add_column(name, justify="left" if name == "series" else "right")
    paper = {"HW_FLOPS": "3.0x", "DRAM_BW": "1.6x", "Interconnect_BW": "1.4x"}
    for key, f in fitted.items():
        table.add_row(SERIES[key], str(f.points), f"{f.growth_per_two_years:.1f}x", paper[key])
    console.print(table)
    path = plot(data, fitted, out)
    console.print(f"figure: {path}", highlight=False)
    return fitted


if __name__ == "__main__":
    main()
