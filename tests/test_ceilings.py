"""ceilings.py: the roofs rows are placed under, resolved in one place: a device's peak for the
row's dtype (TF32 for the matmul and conv families on CUDA when torch allows it), its memory
bandwidth, and the link collectives travel over."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import memwall_plugin as memwall
from memwall_plugin.ceilings import ceilings_of, parse_link, place_rows, resolve_link, tf32_families
from memwall_plugin.devices import ESTIMATED, Figure, cpu_spec, lookup_device

H100 = lookup_device("H100 SXM")


def _row(op: str, dtype: str = "float32") -> memwall.Row:
    return memwall.Row(op=op, overload="default", module="", phase="forward", calls=1, dtype=dtype, shapes="",
                       flops=100, bytes_read=10, bytes_written=10, elements_read=5, elements_written=5, time_s=1.0)


def test_rows_go_under_their_dtypes_peak_and_the_memory_bandwidth():
    mm, add, half = place_rows([_row("aten.mm"), _row("aten.add"), _row("aten.mm", "bfloat16")], H100)
    # the H100 SXM datasheet: 67 TFLOP/s fp32 (non-tensor), 989.4 TFLOP/s bf16 dense, 3.35 TB/s HBM3
    assert mm.peak_flops_per_s == add.peak_flops_per_s == H100.peak("fp32").value
    assert half.peak_flops_per_s == H100.peak("bf16").value
    assert mm.bandwidth_bytes_per_s == add.bandwidth_bytes_per_s == H100.bandwidth.value
    assert place_rows([_row("aten.mm")], None)[0].peak_flops_per_s is None  # no device, no roof


def test_tf32_lifts_the_matmul_and_conv_families_only():
    ceilings = ceilings_of(H100, ("matmul",))
    tf32, fp32 = H100.peak("tf32").value, H100.peak("fp32").value
    assert ceilings("aten.mm", "float32")[0] == tf32
    assert ceilings("aten.linear", "float32")[0] == tf32  # a matmul by family, not by a list
    assert ceilings("aten.convolution", "float32")[0] == fp32  # conv not enabled
    assert ceilings("aten.add", "float32")[0] == fp32
    assert ceilings("aten.mm", "bfloat16")[0] == H100.peak("bf16").value  # TF32 is an fp32 matter
    assert ceilings_of(H100, ("matmul", "conv"))("aten.convolution", "float32")[0] == tf32


def test_tf32_follows_torchs_settings_on_cuda_devices_only():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, False
        assert tf32_families(H100) == ("matmul",)
        assert tf32_families(cpu_spec()) == () and tf32_families(None) == ()
        torch.backends.cuda.matmul.allow_tf32 = False
        assert tf32_families(H100) == ()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


# --- the link ----------------------------------------------------------------------------------


def test_gpu_link_is_the_tables_interconnect_per_direction():
    link = resolve_link(lookup_device("H100 SXM"), 8, 8, environ={})
    # NVLink 4.0: 18 links x 25 GB/s each way = 450 GB/s per direction (datasheet: 900 both ways)
    assert (link.name, link.bytes_per_s, link.bandwidth.source) == ("NVLink 4.0", 450e9, "datasheet")
    pcie = resolve_link(lookup_device("A100 PCIe 80GB"), 2, 2, environ={})
    assert (pcie.name, pcie.bytes_per_s) == ("PCIe Gen4 x16", 32e9)


def test_cpu_link_is_loopback_estimated_from_memory_bandwidth():
    device = dataclasses.replace(cpu_spec(), bandwidth=Figure(20e9, ESTIMATED))
    link = resolve_link(device, 2, 2, environ={})
    assert link.name.startswith("loopback TCP")
    assert link.bytes_per_s == 20e9 / 4 and link.bandwidth.source == "estimated"


def test_several_hosts_need_a_configured_link_and_the_user_wins():
    device = lookup_device("H100 SXM")
    network = resolve_link(device, 16, 8, environ={})
    assert network.bandwidth is None and "MEMWALL_LINK" in network.note
    user = resolve_link(device, 16, 8, override={"bandwidth": 50e9, "name": "InfiniBand NDR"}, environ={})
    assert (user.name, user.bytes_per_s, user.bandwidth.source) == ("InfiniBand NDR", 50e9, "user")
    env = resolve_link(device, 16, 8, environ={"MEMWALL_LINK": "bandwidth=25e9,name=RoCE"})
    assert (env.name, env.bytes_per_s, env.bandwidth.source) == ("RoCE", 25e9, "user")
    assert parse_link(12.5e9) == (12.5e9, "") and parse_link("3e9") == (3e9, "")


@pytest.mark.parametrize(("value", "message"), [
    ("fast", "not a number"),
    ("speed=5e9", "is not bandwidth=... or name=..."),
    (-1.0, "positive"),
    ({"name": "ib"}, "bandwidth per direction"),
])
def test_bad_links_say_how_to_write_one(value, message):
    with pytest.raises(ValueError, match=message):
        parse_link(value)
    with pytest.raises(ValueError, match=message):
        memwall.profile(link=value)  # before the run, not after


