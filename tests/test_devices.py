"""Device peaks: the datasheet traps, detection from driver names and memory, CPU estimates, overrides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import memwall_plugin as memwall
from memwall_plugin.console import render_text
from memwall_plugin.devices import cpu_spec, gpu_spec, parse_peaks, resolve_device

T = 1e12
GIB = 2**30


def peak(key: str, dtype: str) -> float:
    return memwall.lookup_device(key).peak_flops_per_s(dtype)


def test_table_covers_the_issue_list_with_a_source_per_row():
    keys = {d.key for d in memwall.device_table()}
    wanted = {
        "v100-sxm2", "v100-pcie", "a100-sxm4-40gb", "a100-sxm4-80gb", "a100-pcie-40gb", "a100-pcie-80gb",
        "h100-sxm", "h100-pcie", "h100-nvl", "h200-sxm", "b200", "l4", "l40s", "t4", "a10",
        "rtx-3090", "rtx-4090", "mi250x-gcd", "mi300x", "apple-m1", "apple-m2", "apple-m3", "apple-m4",
    }
    assert wanted <= keys
    for spec in memwall.device_table():
        assert spec.source, spec.key
        assert spec.bandwidth is not None and spec.bandwidth.source == "datasheet", spec.key


def test_sparse_numbers_are_not_dense_ones():
    # vendor tables print "with sparsity" figures; the dense rate is half
    assert peak("h100-sxm", "bfloat16") == pytest.approx(989.4 * T)
    assert peak("a100-sxm4-80gb", "float16") == pytest.approx(312 * T)
    assert peak("l4", "bfloat16") == pytest.approx(121 * T)
    assert peak("h100-pcie", "bfloat16") == pytest.approx(756 * T)


@pytest.mark.parametrize("key", ["h100-sxm", "h100-pcie", "h100-nvl", "h200-sxm", "h200-nvl"])
def test_tf32_on_hopper_is_half_of_bf16(key):
    spec = memwall.lookup_device(key)
    assert spec.peak_flops_per_s("tf32") == pytest.approx(spec.peak_flops_per_s("bf16") / 2, rel=1e-3)


def test_mi250x_shows_up_as_two_devices():
    gcd, package = memwall.lookup_device("mi250x-gcd"), memwall.lookup_device("mi250x")
    assert gcd.peak_flops_per_s("fp16") * 2 == pytest.approx(package.peak_flops_per_s("fp16"))
    assert gcd.bandwidth_bytes_per_s * 2 == pytest.approx(package.bandwidth_bytes_per_s)


# (name the driver reports, total_memory in bytes) -> the row; written from nvidia-smi / rocm-smi
# outputs, not from memwall's table
DRIVER_NAMES = [
    ("Tesla V100-SXM2-16GB", 16 * GIB, "v100-sxm2"),
    ("Tesla V100-SXM2-32GB", 32 * GIB, "v100-sxm2"),
    ("Tesla V100-PCIE-32GB", 32 * GIB, "v100-pcie"),
    ("Tesla V100S-PCIE-32GB", 32 * GIB, "v100s-pcie"),
    ("NVIDIA A100-SXM4-40GB", 40536 * 2**20, "a100-sxm4-40gb"),
    ("NVIDIA A100-SXM4-80GB", 81251 * 2**20, "a100-sxm4-80gb"),
    ("NVIDIA A100-PCIE-40GB", 40536 * 2**20, "a100-pcie-40gb"),
    ("NVIDIA A100 80GB PCIe", 81251 * 2**20, "a100-pcie-80gb"),
    ("NVIDIA H100 80GB HBM3", 81559 * 2**20, "h100-sxm"),
    ("NVIDIA H100 PCIe", 81559 * 2**20, "h100-pcie"),
    ("NVIDIA H100 NVL", 95830 * 2**20, "h100-nvl"),
    ("NVIDIA H200", 143771 * 2**20, "h200-sxm"),
    ("NVIDIA H200 NVL", 143771 * 2**20, "h200-nvl"),
    ("NVIDIA B200", 183359 * 2**20, "b200"),
    ("NVIDIA L4", 23034 * 2**20, "l4"),
    ("NVIDIA L40S", 46068 * 2**20, "l40s"),
    ("Tesla T4", 15360 * 2**20, "t4"),
    ("NVIDIA A10", 23028 * 2**20, "a10"),
    ("NVIDIA GeForce RTX 3090", 24576 * 2**20, "rtx-3090"),
    ("NVIDIA GeForce RTX 4090", 24564 * 2**20, "rtx-4090"),
    ("AMD Instinct MI250X", 65520 * 2**20, "mi250x-gcd"),
    ("AMD Instinct MI300X", 196592 * 2**20, "mi300x"),
]


@pytest.mark.parametrize("name,memory,key", DRIVER_NAMES)
def test_mocked_cuda_properties_resolve_to_the_right_row(name, memory, key):
    props = SimpleNamespace(name=name, total_memory=memory, major=9, minor=0, multi_processor_count=132)
    spec = gpu_spec(props)
    assert spec.key == key
    assert spec.memory_bytes == memory
    assert all(f.source == "datasheet" for _, f in spec.peaks)


def test_h100_variants_are_told_apart_by_memory_and_name():
    sxm = gpu_spec(SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=81559 * 2**20))
    nvl = gpu_spec(SimpleNamespace(name="NVIDIA H100 NVL", total_memory=95830 * 2**20))
    pcie = gpu_spec(SimpleNamespace(name="NVIDIA H100 PCIe", total_memory=81559 * 2**20))
    assert len({sxm.bandwidth_bytes_per_s, nvl.bandwidth_bytes_per_s, pcie.bandwidth_bytes_per_s}) == 3
    # an H100 whose name says nothing of its form factor: memory picks the row
    odd = gpu_spec(SimpleNamespace(name="NVIDIA H100", total_memory=95830 * 2**20))
    assert odd.key == "h100-nvl"


def test_unknown_gpu_is_estimated_and_marked():
    props = SimpleNamespace(
        name="NVIDIA Imaginary X9000", total_memory=48 * GIB, major=9, minor=0,
        multi_processor_count=100, clock_rate=1_800_000, memory_clock_rate=2_600_000, memory_bus_width=5120,
    )
    spec = gpu_spec(props)
    assert spec.key == "gpu-estimated" and "estimated" in spec.name
    assert {f.source for _, f in spec.peaks} == {"estimated"}
    # 100 SMs x 1.8 GHz x 128 FP32 lanes x 2 (FMA); tensor: 4096 FLOPs per SM per clock (Hopper)
    assert spec.peak_flops_per_s("float32") == pytest.approx(100 * 1.8e9 * 128 * 2)
    assert spec.peak_flops_per_s("bfloat16") == pytest.approx(100 * 1.8e9 * 4096)
    # double data rate x 5120-bit bus at 2.6 GHz
    assert spec.bandwidth_bytes_per_s == pytest.approx(2 * 2.6e9 * 5120 / 8)


@pytest.mark.parametrize("name,key", [
    ("h100", "h100-sxm"), ("H100 SXM", "h100-sxm"), ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("h100 pcie", "h100-pcie"), ("H100-NVL", "h100-nvl"), ("a100 80gb", "a100-sxm4-80gb"),
    ("A100 PCIe 80GB", "a100-pcie-80gb"), ("Apple M1 Pro", "apple-m1-pro"), ("apple m1", "apple-m1"),
    ("rtx 4090", "rtx-4090"), ("MI300X", "mi300x"), ("l40s", "l40s"), ("A10", "a10"),
])
def test_lookup_device_is_forgiving(name, key):
    assert memwall.lookup_device(name).key == key


def test_lookup_unknown_name_lists_known_devices():
    with pytest.raises(LookupError, match="h100-sxm"):
        memwall.lookup_device("Voodoo 2")


def test_cpu_estimate_from_isa_flags():
    cpuinfo = ("model name\t: Intel Xeon Imaginary\n"
               "flags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_int8\n")
    spec = cpu_spec(threads=4, cpuinfo=cpuinfo, max_khz="3000000")
    # 4 threads x 3 GHz x 2 FMA pipes x 16 fp32 lanes (AVX-512) x 2
    assert spec.peak_flops_per_s("float32") == pytest.approx(4 * 3e9 * 2 * 16 * 2)
    assert spec.peak_flops_per_s("float64") == pytest.approx(4 * 3e9 * 2 * 8 * 2)
    assert spec.peak_flops_per_s("bfloat16") == pytest.approx(4 * 3e9 * 1024)  # AMX tiles
    assert spec.peak_flops_per_s("int8") == pytest.approx(4 * 3e9 * 2048)
    assert {f.source for _, f in spec.peaks} == {"estimated"}
    avx2 = cpu_spec(threads=2, cpuinfo="flags\t: avx avx2 fma\n", max_khz="2500000")
    assert avx2.peak_flops_per_s("float32") == pytest.approx(2 * 2.5e9 * 2 * 8 * 2)
    assert "AVX2+FMA" in avx2.name


def test_this_machine_is_detected():
    spec = memwall.detect_device("cpu")
    assert spec.kind == "cpu"
    assert spec.peak_flops_per_s("float32") > 1e9
    assert spec.bandwidth_bytes_per_s > 1e8


def test_user_overrides_by_argument_and_environment(monkeypatch):
    spec = resolve_device("h100-sxm", {"bf16": 800e12, "bandwidth": 3e12})
    assert spec.peak("bfloat16").source == "user" and spec.peak_flops_per_s("bfloat16") == 800e12
    assert spec.bandwidth.source == "user"
    assert spec.peak("fp64").source == "datasheet"
    env = {"MEMWALL_DEVICE": "a100-sxm4-80gb", "MEMWALL_PEAKS": "fp32=10e12,bandwidth=1e12"}
    spec = resolve_device(environ=env)
    assert spec.key == "a100-sxm4-80gb" and spec.peak_flops_per_s("float32") == 10e12
    assert spec.bandwidth_bytes_per_s == 1e12
    x = torch.randn(64, 64)
    with memwall.profile(peaks={"fp32": 1e9, "bandwidth": 1e9}, summary=False) as prof:
        x @ x
    assert prof.report().device.peak("float32").source == "user"


@pytest.mark.parametrize("bad,message", [
    ("fp32", "should look like"), ("fp32=fast", "not a number"), ("fp99=1", "unknown peak"),
])
def test_bad_peak_strings_say_what_to_write(bad, message):
    with pytest.raises(ValueError, match=message):
        parse_peaks(bad)


def test_bad_device_argument_fails_before_the_run():
    with pytest.raises(LookupError, match="no device"):
        memwall.profile(device="Voodoo 2")
    with pytest.raises(ValueError, match="positive"):
        memwall.profile(peaks={"fp32": -1})


def test_device_round_trips_through_the_report(tmp_path):
    x = torch.randn(32, 32)
    with memwall.profile(device="H100 PCIe", summary=False) as prof:
        x @ x
    rep = prof.report()
    assert memwall.load_report(rep.save(tmp_path / "r.json")) == rep
    assert rep.device.key == "h100-pcie"


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_a_gpu_chosen_for_a_cpu_run_is_a_what_if_measured_on_this_cpu(how, monkeypatch):
    """`memwall run --device "H100 SXM"` (or device=, or $MEMWALL_DEVICE) on a CPU script recorded
    the H100 as the device the times were measured on: no projection, CPU times judged against
    HBM and the H100's L2, findings asking to calibrate the H100. The run is the truth: its
    times were measured on this CPU (the device a profile without the option detects), and the
    report is the what-if `rescore(device=...)` makes of that run, as `memwall report --device`."""
    torch.manual_seed(0)
    model, x = torch.nn.Linear(128, 128), torch.randn(64, 128)

    def run(device: str | None) -> memwall.Report:
        model.zero_grad(set_to_none=True)  # each run the same step
        with memwall.profile(model=model, device=device, summary=False) as prof:
            model(x).sum().backward()
        return prof.report()

    here = run(None)
    if how == "environment":
        monkeypatch.setenv("MEMWALL_DEVICE", "H100 SXM")
        chosen = run(None)
    else:
        chosen = run("H100 SXM")
    assert chosen.device.key == "h100-sxm" and chosen.measured_on == here.device.name == here.measured_on
    projected = here.rescore(device="H100 SXM")
    assert chosen.projected_time_s is not None and chosen.speedup is not None
    def placed(rep: memwall.Report) -> set[tuple]:  # what does not depend on the measured times
        return {(r.op, r.module, r.phase, r.shapes, r.flops, r.bytes, r.bound) for r in rep.rows}

    assert placed(chosen) == placed(projected)
    assert "what-if  times measured on" in render_text(chosen) and "projected on" in render_text(chosen)


@pytest.mark.parametrize("family,model,lanes", [
    (0x19, 0x11, 8),  # Zen 4 (Genoa): AVX-512 on 256-bit pipes
    (0x19, 0x01, 8),  # Zen 3
    (0x17, 0x31, 8),  # Zen 2
    (0x17, 0x01, 4),  # Zen: 128-bit pipes
])
def test_amd_cpus_are_estimated_at_the_width_of_their_fma_pipes(family, model, lanes):
    # AMD's optimisation guides for families 17h and 19h; this machine (family 19h model 11h,
    # 2 threads at 2.6 GHz) measures ~158 GFLOP/s on a 2048^2 fp32 GEMM against 166 so estimated
    cpuinfo = (f"vendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
               "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma avx512f avx512_bf16\n")
    spec = cpu_spec(threads=2, cpuinfo=cpuinfo, max_khz="2600000")
    assert spec.peak_flops_per_s("float32") == pytest.approx(2 * 2.6e9 * 2 * lanes * 2)
    assert f"{lanes * 32}-bit FMA pipes" in spec.source
    intel = cpu_spec(threads=2, cpuinfo=cpuinfo.replace("AuthenticAMD", "GenuineIntel"), max_khz="2600000")
    assert intel.peak_flops_per_s("float32") == pytest.approx(2 * 2.6e9 * 2 * 16 * 2)  # 512-bit pipes
