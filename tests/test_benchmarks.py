"""The benchmarks' variants run, each in a fresh interpreter as `python benchmarks/...` runs them
(nothing of memwall imported beforehand by other tests), on a tiny stand-in workload: a variant
that breaks is found here, not half an hour into a benchmark run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

_RUN_EVERY_VARIANT = """
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, {benchmarks!r})
import torch
import {module} as bench

x = torch.randn(64, 64)

def work():
    (x @ x).relu().sum()

ran = []
with tempfile.TemporaryDirectory() as tmp:
    for label, variant in bench.variants(work, Path(tmp)).items():
        variant()
        ran.append(label)
print(json.dumps(ran))
"""


@pytest.mark.parametrize(("module", "expected"), [
    ("overhead", {"memwall active", "memwall memory=False", "torch.profiler", "FlopCounterMode"}),
    ("routes", {"empty mode", "lean recording mode", "profiler recording", "profiler + read events",
                "memwall capture", "memwall active"}),
])
def test_every_variant_of_a_benchmark_runs_in_a_fresh_interpreter(module, expected):
    code = _RUN_EVERY_VARIANT.format(benchmarks=str(BENCHMARKS), module=module)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ran = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert expected <= ran, ran
