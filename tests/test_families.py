"""Op families: every op with a formula has one, hand-picked ops have the expected one, and the
TF32 policy and the console's findings read them (they replaced a regex and hand-kept op sets)."""

from __future__ import annotations

import pytest

from memwall_plugin.ceilings import tf32_ops
from memwall_plugin.comm import COLLECTIVE_OPS, WAIT_OP
from memwall_plugin.console import category
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.registry import FAMILIES, TF32_FAMILIES, Family, Registry, RegistryError
from memwall_plugin.rows import Row


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
    # "other" only where it was chosen: a fused region and torch's fused encoder layer (many
    # families), comparison sorts and searches, Fourier transforms, dense linear algebra
    deliberate = REGISTRY.ops_of("other")
    assert sorted(name for name in REGISTRY.names() if family_of(name) == "other" and name not in deliberate) == []
    linalg = {"aten.linalg_cholesky_ex", "aten.linalg_lu_factor_ex", "aten.linalg_lu", "aten._linalg_det",
              "aten._linalg_slogdet", "aten.linalg_inv_ex", "aten._linalg_solve_ex", "aten.linalg_solve_triangular",
              "aten.triangular_solve", "aten.cholesky_solve", "aten.linalg_qr", "aten._linalg_eigh", "aten.linalg_eig",
              "aten._linalg_eigvals", "aten._linalg_svd"}
    assert REGISTRY.ops_of("other") == {
        "higher_order.inductor_compiled_code", "aten._transformer_encoder_layer_fwd", "aten.sort", "aten.mode",
        "aten.searchsorted", "aten.bucketize", "aten._fft_c2c", "aten._fft_r2c", "aten._fft_c2r", *linalg}


def test_every_foreach_kernel_is_optimizer():
    foreach = {name for name in assigned() if "._foreach_" in name}
    assert {"aten._foreach_add_", "aten._foreach_copy_", "aten._foreach_zero_", "aten._foreach_sqrt"} <= foreach
    assert {family_of(name) for name in foreach} == {"optimizer"}


def test_collectives_are_communication():
    assert set(COLLECTIVE_OPS) | {WAIT_OP} <= REGISTRY.ops_of("communication")


def test_tf32_runs_the_matmuls_and_convolutions():
    """The ops that were listed by hand for the TF32 roof before families existed are all still
    placed there (and matmul's composites with them); nothing elementwise is."""
    assert set(TF32_FAMILIES) == {"matmul", "conv"}
    ops = tf32_ops(("matmul", "conv"))
    assert {"aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten._addmm_activation", "aten.mv",
            "aten.addmv", "aten.convolution", "aten._convolution", "aten.convolution_backward"} <= ops
    assert {"aten.matmul", "aten.linear", "aten.addbmm"} <= ops
    assert not ops & {"aten.add", "aten.mul", "aten.gelu", "aten._softmax", "aten.layer_norm"}
    assert tf32_ops(("matmul",)) <= ops and "aten.convolution" not in tf32_ops(("matmul",))


def _row(op: str, flops: int = 10, phase: str = "forward") -> Row:
    return Row(op=op, overload="default", module="m", phase=phase, calls=1, dtype="float32", shapes="",
               flops=flops, bytes_read=100, bytes_written=100, elements_read=25, elements_written=25, time_s=1.0)


@pytest.mark.parametrize(("op", "expected"), [
    ("aten.mm", "matmul"), ("aten.linear", "matmul"), ("aten.convolution", "convolution"),
    ("aten._scaled_dot_product_flash_attention", "attention"), ("higher_order.flex_attention", "attention"),
    ("aten._softmax", "norm/softmax"), ("aten.softmax", "norm/softmax"), ("aten.native_layer_norm", "norm/softmax"),
    ("aten.sum", "reduction"), ("aten.linalg_vector_norm", "reduction"),
    # "normal" has "norm" in its name; it draws random numbers: elementwise (the old regex said norm)
    ("aten.normal_", "elementwise"), ("aten.gelu", "elementwise"), ("mylib.unknown", "elementwise"),
])
def test_findings_name_memory_bound_work_by_family(op, expected):
    assert category(_row(op)) == expected


def test_findings_categories_by_phase_and_zero_flop_copies():
    assert category(_row("aten.mm", phase="optimizer")) == "optimizer"
    assert category(_row("aten.mm", phase="other")) == "outside-the-model"
    assert category(_row("aten.copy_", flops=0)) == "data movement"
    # lookups and scatters by index (a recommender's EmbeddingBag, a GNN's message passing) were
    # "elementwise" where they count adds, and told to fuse with torch.compile or to avoid copies
    for op in ("aten._embedding_bag", "aten._embedding_bag_backward", "aten.index_add_", "aten.scatter_reduce_",
               "aten.embedding", "aten.index_select"):
        assert category(_row(op, flops=7)) == category(_row(op, flops=0)) == "gather/scatter", op
    assert category(_row("aten.mm", flops=0)) == "matmul"  # an empty matmul is still a matmul


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
