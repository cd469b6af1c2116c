"""The zoo: today's architectures, each held to truths from outside memwall (zoo_models.py).

Per model, one training step (forward, backward, AdamW) and, where it generates, a generate()
call: bit-identical to a bare run, nothing uncounted, matmul-class FLOPs equal to torch's
FlopCounterMode (plus the bias adds memwall counts and it does not), fused attention and grouped
expert GEMMs equal to hand counts, prefill and decode told apart with decode far less intense.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
import torch

import memwall_plugin as memwall

transformers = pytest.importorskip("transformers")

from conftest import no_deprecations  # noqa: E402
from zoo_models import NEW_TOKENS, Arch, figures, zoo  # noqa: E402

ARCHS = {arch.name: arch for arch in zoo()}


@functools.cache
def _calibrated_cache() -> str:
    """A quick `memwall calibrate` of this machine (fp32 GEMM, memory and cache bandwidths), in
    a cache of the session's own: efficiencies mean something under measured roofs only."""
    path = tempfile.mkdtemp(prefix="memwall-zoo-calibration-")
    atexit.register(shutil.rmtree, path, True)  # removed with the test run, as conftest's inductor cache
    with _environ(MEMWALL_CACHE_DIR=path):
        memwall.calibrate(memwall.detect_device("cpu"), quick=True, dtypes=(torch.float32,))
    return path


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.cache
def _figures(name: str) -> dict:
    arch = ARCHS[name]
    if arch.requires and not hasattr(transformers, arch.requires):
        pytest.skip(f"{arch.requires} is not in transformers {transformers.__version__}")
    with no_deprecations(), _environ(MEMWALL_CACHE_DIR=_calibrated_cache()):
        return figures(arch)


@pytest.mark.parametrize("name", ARCHS)
def test_training_step_is_bit_identical_and_fully_counted(name):
    got = _figures(name)
    assert got["differs_from_bare_run"] == []  # outputs, loss, every gradient, weights after AdamW
    assert got["uncounted"] == []
    assert got["above_roof"] == []  # every row at or under the roof of the memory level it ran from


@pytest.mark.parametrize("name", ARCHS)
def test_flops_agree_with_flop_counter_mode_and_hand_counts(name):
    arch: Arch = ARCHS[name]
    got = _figures(name)
    assert got["flop_counter"], "no matmul-class op ran"
    for op, (mine, theirs) in got["flop_counter"].items():
        assert mine == theirs, (op, mine, theirs)
    if arch.grouped_conv:
        mine, hand, flop_counter_mode = got["grouped_conv_backward"]
        assert mine == hand and flop_counter_mode > hand  # FlopCounterMode counts x groups
    if arch.attention:
        if "attention" in got:  # torch's CPU flash kernel, which FlopCounterMode counts as 0
            for mine, hand in got["attention"]:
                assert mine == hand
            # the summary names the backend that ran and what it computes
            assert got["attention_notes"] and "CPU flash kernel computes every score" in got["attention_notes"][0]
        else:  # the math path: its matmuls are FlopCounterMode's bmm above
            assert got["attention_as_matmuls"] > 0
    if arch.grouped_gemm_flops is not None and "grouped_gemm" in got:  # transformers 5.x's experts path
        mine, hand = got["grouped_gemm"]
        assert mine == hand
    if arch.linear_forward_flops is not None:
        mine, hand = got["linear_forward"]
        assert mine == hand


def test_sliding_window_attention_is_counted_as_the_cpu_kernel_computes_it():
    # Mistral's window (16) is shorter than the sequence (32): transformers hands SDPA the
    # banded mask, and torch's CPU kernel computes every score and adds the mask to it, so the
    # computed band is the whole matrix: the hand count is dense, and the note says why
    got = _figures("mistral")
    assert got["attention_masked"] == [True]
    (forward, forward_hand), (backward, backward_hand) = got["attention"]
    assert (forward, backward) == (forward_hand, backward_hand)
    assert "a sliding window" in got["attention_notes"][0]


@pytest.mark.parametrize("name", [n for n, a in ARCHS.items() if a.generate is not None])
def test_generate_splits_prefill_and_decode(name):
    arch = ARCHS[name]
    got = _figures(name)
    assert got["generate_uncounted"] == []
    assert {"prefill", "decode"} <= set(got["phases"])
    # the output projection runs once per model call: the prompt, then each new token
    assert got["lm_head_calls"] == {"prefill": 1, "decode": NEW_TOKENS - 1}
    intensity = got["intensity"]
    assert intensity["decode"] < intensity[arch.prompt_phase] / arch.decode_factor, intensity
