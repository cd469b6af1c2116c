"""Op families: every op with a formula has one, hand-picked ops have the expected one, and the
families agree with the lists they replace (console's finding regexes, report's TF32 op sets)."""

from __future__ import annotations

import re

import pytest

from memwall_plugin.comm import COLLECTIVE_OPS, WAIT_OP
from memwall_plugin.console import _MATMUL, _NORM
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.registry import FAMILIES, TF32_FAMILIES, Family, Registry, RegistryError
from memwall_plugin.report import TF32_FAMILIES as REPORT_TF32_OPS


def family_of(name: str) -> str:
    """The family of a registry name: "aten.add.Tensor" is op aten.add, overload Tensor."""
    parts = name.split(".")
    if len(parts) == 3:
        return REGISTRY.family(f"{parts[0]}.{parts[1]}", parts[2])
    return REGISTRY.family(name, "default")


def assigned() -> frozenset[str]:
    return frozenset().union(*(REGISTRY.ops_of(f) for f in FAMILIES))


@pytest.mark.parametrize(("op", "overload", "family"), [
    ("aten.addmm", "default", "matmul"),
    ("aten.mm", "out", "matmul"),
    ("aten._scaled_mm", "default", "matmul"),
    ("aten.linear", "default", "matmul"),
    ("aten.convolution", "default", "conv"),
    ("aten.convolution_backward", "default", "conv"),
    ("aten.conv2d", "default", "conv"),
    ("aten.scaled_dot_product_attention", "default", "attention"),
    ("aten._scaled_dot_product_flash_attention_for_cpu", "default", "attention"),
    ("aten._efficient_attention_backward", "default", "attention"),
    ("higher_order.flex_attention", "default", "attention"),
    ("aten.add", "Tensor", "elementwise"),
    ("aten.mul_", "Scalar", "elementwise"),
    ("aten.gelu_backward", "default", "elementwise"),
    ("aten.native_dropout", "default", "elementwise"),
    ("aten.normal_", "default", "elementwise"),  # a random draw, not a normalisation
    ("aten.layer_norm", "default", "norm"),
    ("aten.native_layer_norm", "default", "norm"),
    ("aten.native_batch_norm_backward", "default", "norm"),
    ("aten._softmax", "default", "norm"),
    ("aten.softmax", "int", "norm"),
    ("aten.sum", "dim_IntList", "reduction"),
    ("aten.linalg_vector_norm", "default", "reduction"),  # a vector norm sums: a reduction
    ("aten.max_pool2d_with_indices", "default", "reduction"),
    ("aten.cat", "default", "data_movement"),
    ("aten.index", "Tensor", "data_movement"),
    ("aten.embedding", "default", "data_movement"),
    ("aten.scatter_add_", "default", "data_movement"),
    ("aten.view", "default", "data_movement"),
    ("aten.empty", "memory_format", "data_movement"),
    ("fsdp.all_gather_copy_in", "default", "data_movement"),
    ("c10d.allreduce_", "default", "communication"),
    ("_c10d_functional.all_gather_into_tensor", "default", "communication"),
    ("_c10d_functional.wait_tensor", "default", "communication"),
    ("aten._fused_adamw_", "default", "optimizer"),
    ("aten._foreach_add_", "List", "optimizer"),
    ("aten._foreach_norm", "Scalar", "optimizer"),  # clip_grad_norm_
    ("aten._amp_foreach_non_finite_check_and_unscale_", "default", "optimizer"),
    # deliberately other, and ops no table names, in any namespace
    ("higher_order.inductor_compiled_code", "default", "other"),
    ("aten.sort", "stable", "other"),
    ("aten._fft_r2c", "default", "other"),
    ("quantized.linear", "default", "other"),
    ("profiler._record_function_enter_new", "default", "other"),
])
def test_family_of_representative_ops(op, overload, family):
    assert REGISTRY.family(op, overload) == family


def test_every_op_with_a_formula_has_a_family():
    # "other" only where it was chosen: a fused region (many families), a comparison sort
    deliberate = REGISTRY.ops_of("other")
    assert sorted(name for name in REGISTRY.names() if family_of(name) == "other" and name not in deliberate) == []
    assert REGISTRY.ops_of("other") == {"higher_order.inductor_compiled_code", "aten.sort"}


def test_every_foreach_kernel_is_optimizer():
    foreach = {name for name in assigned() if "._foreach_" in name}
    assert {"aten._foreach_add_", "aten._foreach_copy_", "aten._foreach_zero_", "aten._foreach_sqrt"} <= foreach
    assert {family_of(name) for name in foreach} == {"optimizer"}


def test_collectives_are_communication():
    assert set(COLLECTIVE_OPS) | {WAIT_OP} <= REGISTRY.ops_of("communication")


def test_tf32_families_hold_report_tf32_ops():
    assert set(TF32_FAMILIES) == set(REPORT_TF32_OPS) == {"matmul", "conv"}
    for family, ops in REPORT_TF32_OPS.items():
        assert ops <= REGISTRY.ops_of(family), family


# --- agreement with console's finding regexes ------------------------------------------------------
#
# console's "matmul" finding covers matmuls, convolutions and attention (`.*attention.*`,
# `convolution.*`): the registry keeps those three families apart, so the regex agrees with
# `family in CONSOLE_MATMUL`. Where they differ, the regex misses or mislabels an op:

CONSOLE_MATMUL = {"matmul", "conv", "attention"}

#: Matmul, conv or attention, which _MATMUL does not match.
MATMUL_REGEX_MISSES = {
    # matmuls with formulas the regex predates
    "aten.matmul", "aten.matmul_backward", "aten.addbmm", "aten._grouped_mm", "aten._scaled_grouped_mm",
    # composites and backend kernels whose names the regex does not cover (seen in traces)
    "aten.linear", "aten.bilinear", "aten.tensordot", "aten.linalg_matmul", "aten.chain_matmul",
    "aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.conv_transpose1d", "aten.conv_transpose2d",
    "aten.conv_transpose3d", "aten._convolution_mode", "aten.cudnn_convolution", "aten.cudnn_convolution_transpose",
    "aten.mkldnn_convolution",
    # attention outside the aten namespace, which the regex never looks at
    "higher_order.flex_attention", "higher_order.flex_attention_backward", "torch_attn._varlen_attn",
    "torch_attn._varlen_attn_out", "torch_attn._varlen_attn_backward",
}

#: _NORM's `.*norm.*` matches these, which normalise nothing.
NORM_REGEX_MISLABELS = {
    # random draws from a normal distribution: elementwise
    "aten.normal", "aten.normal_", "aten.log_normal", "aten.log_normal_",
    # vector norms sum over a dim: reductions (REDUCTIONS' variants, in-place names included)
    "aten.norm", "aten.norm_", "aten.linalg_vector_norm", "aten.linalg_vector_norm_",
    # foreach norms (clip_grad_norm_): optimizer
    "aten._foreach_norm", "aten._foreach_norm_", "aten._foreach_linalg_vector_norm",
    "aten._foreach_linalg_vector_norm_",
    # renormalising embedding rows in place is a 0-FLOP copy: data movement
    "aten.embedding_renorm_",
}

#: Softmax forms _NORM does not name.
NORM_REGEX_MISSES = {"aten.softmax", "aten.log_softmax", "aten._masked_softmax", "aten._masked_softmax_backward"}


def _regex_literals(regex: re.Pattern[str]) -> set[str]:
    """The plain op names in a `^aten\\.(a|b|.*c.*)$` alternation: "aten.a", "aten.b"."""
    inner = re.fullmatch(r"\^aten\\\.\((.*)\)\$", regex.pattern)
    assert inner is not None, regex.pattern
    return {f"aten.{alt}" for alt in inner.group(1).split("|") if re.fullmatch(r"\w+", alt)}


def _known_names() -> set[str]:
    return set(REGISTRY.names()) | set(assigned()) | _regex_literals(_MATMUL) | _regex_literals(_NORM)


def test_regex_literals_are_read():
    assert {"aten.mm", "aten._scaled_mm", "aten._convolution"} <= _regex_literals(_MATMUL)
    assert {"aten._softmax", "aten._log_softmax_backward_data"} <= _regex_literals(_NORM)


def test_matmul_family_agrees_with_console_regex():
    names = _known_names()
    assert MATMUL_REGEX_MISSES <= names
    regex = {n for n in names if _MATMUL.match(n)}
    family = {n for n in names if family_of(n) in CONSOLE_MATMUL}
    assert regex - family == set()
    assert family - regex == MATMUL_REGEX_MISSES


def test_norm_family_agrees_with_console_regex():
    names = _known_names()
    assert NORM_REGEX_MISLABELS | NORM_REGEX_MISSES <= names
    regex = {n for n in names if _NORM.match(n)}
    family = {n for n in names if family_of(n) == "norm"}
    assert regex - family == NORM_REGEX_MISLABELS
    assert family - regex == NORM_REGEX_MISSES


# --- the registry's rules ----------------------------------------------------------------------------


def test_overload_before_op_before_other():
    registry = Registry()
    registry.set_family(Family.ELEMENTWISE, "mylib.op")
    registry.set_family(Family.MATMUL, "mylib.op.fast")
    assert registry.family("mylib.op", "fast") == "matmul"
    assert registry.family("mylib.op", "default") == "elementwise"
    assert registry.family("mylib.other", "default") == "other"
    assert registry.ops_of("matmul") == {"mylib.op.fast"}
    assert registry.ops_of("other") == frozenset()


def test_second_family_is_an_error():
    registry = REGISTRY.copy()
    with pytest.raises(RegistryError, match="aten.mm is already registered; one family per op"):
        registry.set_family(Family.ELEMENTWISE, "aten.mm")
    with pytest.raises(RegistryError, match="one family per op"):
        registry.set_family(Family.MATMUL, "mylib.op", "mylib.op")
    assert registry.family("mylib.op", "default") == "other"  # a failed call assigns nothing


def test_unknown_family_and_malformed_names():
    registry = Registry()
    with pytest.raises(RegistryError, match="unknown family 'matmuls'"):
        registry.set_family("matmuls", "mylib.op")
    with pytest.raises(RegistryError, match="unknown family"):
        registry.ops_of("gemm")
    with pytest.raises(RegistryError, match="should look like"):
        registry.set_family(Family.MATMUL, "mm")
    with pytest.raises(RegistryError, match="at least one op"):
        registry.set_family(Family.MATMUL)


def test_default_registry_is_frozen_and_copies_carry_families():
    with pytest.raises(RegistryError, match="read-only"):
        REGISTRY.set_family(Family.MATMUL, "mylib.gemm")
    registry = REGISTRY.copy()
    assert registry.family("aten.addmm", "default") == "matmul"
    registry.set_family(Family.MATMUL, "mylib.gemm")
    assert registry.family("mylib.gemm", "default") == "matmul"
    assert REGISTRY.family("mylib.gemm", "default") == "other"
    frozen = registry.freeze()
    with pytest.raises(RegistryError, match="read-only"):
        frozen.set_family(Family.CONV, "mylib.conv")
