"""Device peaks: the datasheet table, lookup by a forgiving name, and detection of this machine.

Every figure carries where it came from: "datasheet", "estimated", "calibrated" or "user".
Precedence when several exist: user > calibrated > datasheet / estimated.

A device's memory is a hierarchy: its caches (`DeviceSpec.caches`: a CPU's L1, L2 and L3 from
the OS, a GPU's L2 from its properties), nearest first, then its main memory (`bandwidth`,
`memory_bytes`). `memory_levels` lists them all; memwall_plugin/ceilings.py places each op under
the level its data was served from.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from memwall_plugin.calibration_cache import calibration_stamp, load_calibration

DATASHEET = "datasheet"
ESTIMATED = "estimated"
CALIBRATED = "calibrated"
USER = "user"
SOURCES = (DATASHEET, ESTIMATED, CALIBRATED, USER)

#: Peak columns of the table, in order.
PEAK_KEYS = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")

#: torch dtype names -> the peak that bounds them. Integer and bool ops run on the vector units;
#: complex arithmetic on the real units of its component width.
_DTYPE_TO_PEAK = {
    "float64": "fp64", "complex128": "fp64",
    "float32": "fp32", "complex64": "fp32",
    "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
    "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "float8_e4m3fnuz": "fp8", "float8_e5m2fnuz": "fp8",
    "int8": "int8", "uint8": "int8",
}

ENV_DEVICE = "MEMWALL_DEVICE"
ENV_PEAKS = "MEMWALL_PEAKS"


@dataclass(frozen=True, slots=True)
class Figure:
    """One number with its provenance."""

    value: float
    source: str  # datasheet | estimated | calibrated | user

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"figure source must be one of {SOURCES}, got {self.source!r}")


@dataclass(frozen=True, slots=True)
class MemoryLevel:
    """One level of a device's memory: its name, the bytes it holds for the work (a CPU's private
    caches summed over the threads in use) and its bandwidth, each with where it came from."""

    name: str  # "L1", "L2", "L3"; the main memory: "DRAM", "HBM", "GDDR"
    capacity_bytes: int | None  # None: unknown (a main memory of unknown size)
    bandwidth: Figure | None  # bytes/s; None = unknown (run `memwall calibrate`)
    capacity_source: str = ""  # "sysfs (...)", "device properties (L2_cache_size)", ...

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        return self.bandwidth.value if self.bandwidth is not None else None

    def to_dict(self) -> dict[str, Any]:
        bw = self.bandwidth
        return {"name": self.name, "capacity_bytes": self.capacity_bytes, "capacity_source": self.capacity_source,
                "bandwidth": None if bw is None else {"value": bw.value, "source": bw.source}}


#: the names a device's cache levels may have, nearest first
CACHE_LEVELS = ("L1", "L2", "L3", "L4")


def main_memory_name(kind: str, memory_type: str = "") -> str:
    """What a device's main memory is called on the roofline: HBM or GDDR for GPUs where the
    table says so, else DRAM."""
    kind_of = memory_type.lower()
    if kind_of.startswith("hbm"):
        return "HBM"
    if kind_of.startswith("gddr"):
        return "GDDR"
    return "DRAM"


@dataclass(frozen=True)
class DeviceSpec:
    """A device's ceilings: peak FLOP/s per dtype, memory bandwidth, capacity, interconnect."""

    key: str  # "h100-sxm", "cpu"
    name: str  # "H100 SXM5 80GB", "AMD EPYC (2 threads, AVX2+FMA)"
    kind: str  # cuda | rocm | mps | cpu
    peaks: tuple[tuple[str, Figure], ...]  # (peak key, FLOP/s) for the dtypes it supports
    bandwidth: Figure | None  # memory bandwidth, bytes/s
    memory_bytes: int | None = None
    interconnect: str = ""
    interconnect_bandwidth: Figure | None = None  # bytes/s
    source: str = ""  # the document the datasheet figures come from, or how they were estimated
    notes: str = ""
    #: the caches between the cores and main memory, nearest first (`memory_levels` adds the main memory)
    caches: tuple[MemoryLevel, ...] = ()
    memory_type: str = ""  # "hbm3", "gddr6x", "lpddr5" (the table's), "" = DRAM

    @property
    def memory_levels(self) -> tuple[MemoryLevel, ...]:
        """Every level of the device's memory, nearest first: its caches, then main memory."""
        main = MemoryLevel(main_memory_name(self.kind, self.memory_type), self.memory_bytes, self.bandwidth,
                           "the device table" if self.memory_bytes and self.kind != "cpu" else "")
        return (*self.caches, main)

    def peak(self, dtype: str) -> Figure | None:
        """The peak that bounds an op in `dtype` ("float32", "bf16", ...). Integer and bool ops
        use the fp32 (vector) rate; a dtype the device lacks falls back to fp32."""
        key = peak_key(dtype)
        table = dict(self.peaks)
        return table.get(key) or table.get("fp32")

    def peak_flops_per_s(self, dtype: str) -> float | None:
        figure = self.peak(dtype)
        return figure.value if figure else None

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        return self.bandwidth.value if self.bandwidth else None

    def ridge_point(self, dtype: str = "float32") -> float | None:
        """FLOPs per byte where the bandwidth slope meets the roof for `dtype`."""
        peak, bw = self.peak_flops_per_s(dtype), self.bandwidth_bytes_per_s
        return peak / bw if peak and bw else None

    @property
    def sources(self) -> frozenset[str]:
        figures = [f for _, f in self.peaks]
        if self.bandwidth is not None:
            figures.append(self.bandwidth)
        return frozenset(f.source for f in figures)

    def with_figures(
        self, peaks: dict[str, float] | None = None, bandwidth: float | None = None, source: str = USER,
        caches: dict[str, float] | None = None,
    ) -> DeviceSpec:
        """A copy with some figures replaced (peak keys or dtype names; FLOP/s and bytes/s;
        `caches`: a cache level's bandwidth by its name, "L2")."""
        levels = list(self.caches)
        for name, value in (caches or {}).items():
            _check_positive(name, value)
            found = [i for i, level in enumerate(levels) if level.name.lower() == name.lower()]
            if not found:
                have = ", ".join(level.name for level in levels) or "none"
                raise ValueError(f"{self.name} has no cache level {name!r} (its levels: {have})")
            levels[found[0]] = dataclasses.replace(levels[found[0]], bandwidth=Figure(float(value), source))
        table = dict(self.peaks)
        for name, value in (peaks or {}).items():
            _check_positive(name, value)
            table[peak_key(name)] = Figure(float(value), source)
        bw = self.bandwidth
        if bandwidth is not None:
            _check_positive("bandwidth", bandwidth)
            bw = Figure(float(bandwidth), source)
        ordered = tuple((k, table[k]) for k in PEAK_KEYS if k in table)
        return dataclasses.replace(self, peaks=ordered, bandwidth=bw, caches=tuple(levels))

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def fig(f: Figure | None) -> dict[str, Any] | None:
            return None if f is None else {"value": f.value, "source": f.source}

        return {
            "key": self.key, "name": self.name, "kind": self.kind,
            "peaks": {k: fig(f) for k, f in self.peaks},
            "bandwidth": fig(self.bandwidth),
            "memory_bytes": self.memory_bytes,
            "interconnect": self.interconnect,
            "interconnect_bandwidth": fig(self.interconnect_bandwidth),
            "source": self.source, "notes": self.notes,
            "caches": [level.to_dict() for level in self.caches],
            "memory_type": self.memory_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceSpec:
        def fig(d: Any) -> Figure | None:
            if d is None:
                return None
            value = float(d["value"])
            _check_positive("figure", value)
            return Figure(value, str(d["source"]))

        peaks = data["peaks"]
        if not isinstance(peaks, dict) or any(k not in PEAK_KEYS for k in peaks):
            raise ValueError(f"device peaks must be an object keyed by {', '.join(PEAK_KEYS)}")
        return cls(
            key=str(data["key"]), name=str(data["name"]), kind=str(data["kind"]),
            peaks=tuple((k, f) for k in PEAK_KEYS if (f := fig(peaks.get(k))) is not None),
            bandwidth=fig(data.get("bandwidth")),
            memory_bytes=None if data.get("memory_bytes") is None else int(data["memory_bytes"]),
            interconnect=str(data.get("interconnect", "")),
            interconnect_bandwidth=fig(data.get("interconnect_bandwidth")),
            source=str(data.get("source", "")), notes=str(data.get("notes", "")),
            caches=tuple(
                MemoryLevel(str(c["name"]), None if c.get("capacity_bytes") is None else int(c["capacity_bytes"]),
                            fig(c.get("bandwidth")), str(c.get("capacity_source", "")))
                for c in data.get("caches", ())
            ),
            memory_type=str(data.get("memory_type", "")),
        )


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive finite number (FLOP/s or bytes/s), got {value!r}")


def peak_key(dtype: Any) -> str:
    """"float32" / torch.float32 / "fp32" -> "fp32"."""
    name = str(dtype).removeprefix("torch.").lower()
    if name in PEAK_KEYS:
        return name
    if name in _DTYPE_TO_PEAK:
        return _DTYPE_TO_PEAK[name]
    if name in ("float", "single"):
        return "fp32"
    if name in ("double",):
        return "fp64"
    return "fp32"  # integers, bool: vector units


# --- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableRow:
    spec: DeviceSpec
    match: tuple[str, ...]
    form: str
    mem_type: str
    mem_gb: float


def _num(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


@functools.cache
def _table() -> tuple[_TableRow, ...]:
    text = resources.files("memwall_plugin").joinpath("data/devices.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = []
    for rec in csv.DictReader(io.StringIO("\n".join(lines))):
        peaks = tuple(
            (k, Figure(v * 1e12, DATASHEET)) for k in PEAK_KEYS if (v := _num(rec[k])) is not None
        )
        bw = _num(rec["mem_bw_GBps"])
        link = _num(rec["interconnect_GBps"])
        mem_gb = _num(rec["mem_GB"]) or 0.0
        spec = DeviceSpec(
            key=rec["key"], name=f"{rec['vendor']} {rec['name']}".replace("Apple Apple", "Apple"),
            kind=rec["kind"], peaks=peaks,
            bandwidth=Figure(bw * 1e9, DATASHEET) if bw else None,
            memory_bytes=int(mem_gb * 1e9) if mem_gb else None,
            interconnect=rec["interconnect"],
            interconnect_bandwidth=Figure(link * 1e9, DATASHEET) if link else None,
            source=rec["source"], notes=rec["notes"],
        )
        spec = dataclasses.replace(spec, memory_type=rec["mem_type"], caches=_table_caches(spec))
        rows.append(_TableRow(spec, tuple(rec["match"].split()), rec["form"], rec["mem_type"], mem_gb))
    return tuple(rows)


@functools.cache
def _cache_rows() -> dict[str, tuple[tuple[str, int, float | None, str], ...]]:
    text = resources.files("memwall_plugin").joinpath("data/caches.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    found: dict[str, list[tuple[str, int, float | None, str]]] = {}
    for rec in csv.DictReader(io.StringIO("\n".join(lines))):
        bandwidth = _num(rec["bandwidth_GBps"])
        found.setdefault(rec["key"], []).append(
            (rec["level"], int(float(rec["capacity_MB"]) * 2**20), None if bandwidth is None else bandwidth * 1e9,
             rec["source"]))
    return {k: tuple(v) for k, v in found.items()}


#: Where no vendor publishes a GPU's L2 bandwidth: a multiple of its main memory's, below the one
#: published ratio (A100: 5120 bytes/clk at 1410 MHz = 7.2 TB/s against 1.56 TB/s of HBM2, 4.6x).
GPU_L2_OVER_MAIN = 3.0


def gpu_l2(capacity_bytes: int, main: Figure | None, source: str, bandwidth: float | None = None) -> MemoryLevel:
    """A GPU's L2: its published bandwidth where there is one, else estimated from main memory's."""
    if bandwidth is not None:
        figure: Figure | None = Figure(bandwidth, DATASHEET)
    elif main is not None:
        figure = Figure(main.value * GPU_L2_OVER_MAIN, ESTIMATED)
    else:
        figure = None
    return MemoryLevel("L2", capacity_bytes, figure, source)


def _table_caches(spec: DeviceSpec) -> tuple[MemoryLevel, ...]:
    return tuple(gpu_l2(capacity, spec.bandwidth, source, bandwidth) if spec.kind != "cpu"
                 else MemoryLevel(level, capacity, None if bandwidth is None else Figure(bandwidth, DATASHEET), source)
                 for level, capacity, bandwidth, source in _cache_rows().get(spec.key, ()))


def device_table() -> tuple[DeviceSpec, ...]:
    """Every device memwall knows, as datasheet figures."""
    return tuple(r.spec for r in _table())


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]


_FORMS = ("sxm", "pcie", "nvl")


def _match(name: str, memory_gib: float | None = None) -> _TableRow | None:
    tokens = _tokens(name)
    token_set = set(tokens)
    name_forms = {f for f in _FORMS if any(t.startswith(f) for t in tokens)}
    best: tuple[float, int, _TableRow] | None = None
    for order, row in enumerate(_table()):
        if not set(row.match) <= token_set:
            continue
        score = 100.0 * len(row.match)  # "m1 pro" beats "m1" for "Apple M1 Pro"
        if name_forms:
            same = bool(row.form) and any(
                row.form.startswith(f) or f.startswith(row.form) for f in name_forms
            )
            score += 10 if same else -10
        if row.mem_type and row.mem_type in token_set:
            score += 3
        if memory_gib is not None and row.mem_gb:
            score -= 5 * abs(memory_gib - row.mem_gb) / row.mem_gb
        sized = [t for t in tokens if re.fullmatch(r"\d+gb", t)]
        if sized and row.mem_gb and memory_gib is None:
            score -= 5 * abs(float(sized[0][:-2]) - row.mem_gb) / row.mem_gb
        candidate = (score, -order, row)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return best[2] if best else None


def lookup_device(name: str) -> DeviceSpec:
    """A table row by a forgiving name: "h100", "H100 SXM", "NVIDIA H100 80GB HBM3", "h100-pcie"."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("device name must be a non-empty string, e.g. 'H100 SXM'")
    for row in _table():
        if row.spec.key == name.strip().lower():
            return row.spec
    match = _match(name)
    if match is None:
        known = ", ".join(r.spec.key for r in _table())
        raise LookupError(f"no device in memwall's table matches {name!r}; known: {known}. "
                          "To describe another device, give its peaks instead (memwall's --peaks "
                          "fp32=80e9,bandwidth=23e9; profile(peaks={...}) in Python; $MEMWALL_PEAKS).")
    return match.spec


# --- detection ----------------------------------------------------------------------------------

# FP32 lanes x FMA pipes per SM per clock, and dense fp16 tensor FLOPs per SM per clock,
# by compute capability (from the architecture whitepapers); used only for unknown GPUs.
_FP32_FLOPS_PER_SM_CLOCK = {7: 128, 8: 256, 9: 256, 10: 256, 12: 256}
_TENSOR_FLOPS_PER_SM_CLOCK = {7: 1024, 8: 2048, 9: 4096, 10: 8192, 12: 2048}


def estimate_gpu(props: Any) -> DeviceSpec:
    """Estimate an unknown GPU from its SM count, clock and compute capability."""
    major = int(getattr(props, "major", 8))
    minor = int(getattr(props, "minor", 0))
    sms = int(props.multi_processor_count)
    clock_hz = float(getattr(props, "clock_rate", 0) or 1_500_000) * 1e3  # kHz
    fp32_per_sm = _FP32_FLOPS_PER_SM_CLOCK.get(major, 256)
    if (major, minor) == (8, 0):
        fp32_per_sm = 128  # GA100 has 64 FP32 lanes per SM
    tensor_per_sm = _TENSOR_FLOPS_PER_SM_CLOCK.get(major, 1024)
    if major == 8 and minor >= 6:
        tensor_per_sm = 1024  # GA10x / AD10x: half of GA100 per SM
    fp32 = sms * clock_hz * fp32_per_sm
    tensor = sms * clock_hz * tensor_per_sm
    peaks = [("fp64", fp32 / (2 if (major, minor) in ((6, 0), (7, 0), (8, 0), (9, 0)) else 64)),
             ("fp32", fp32), ("fp16", tensor)]
    if major >= 8:
        peaks += [("tf32", tensor / 2), ("bf16", tensor)]
    if major >= 9 or (major, minor) == (8, 9):
        peaks.append(("fp8", tensor * 2))
    peaks.append(("int8", tensor * 2))
    mem_clock = float(getattr(props, "memory_clock_rate", 0) or 0) * 1e3  # kHz -> Hz
    bus_bits = float(getattr(props, "memory_bus_width", 0) or 0)
    bandwidth = 2 * mem_clock * bus_bits / 8 if mem_clock and bus_bits else None  # double data rate
    ordered = sorted(peaks, key=lambda kv: PEAK_KEYS.index(kv[0]))
    return DeviceSpec(
        key="gpu-estimated", name=f"{props.name} (estimated)",
        kind="rocm" if getattr(props, "gcnArchName", "") else "cuda",
        peaks=tuple((k, Figure(v, ESTIMATED)) for k, v in ordered),
        bandwidth=Figure(bandwidth, ESTIMATED) if bandwidth else None,
        memory_bytes=int(props.total_memory),
        source=f"estimated from {sms} SMs at {clock_hz / 1e9:.2f} GHz, compute capability {major}.{minor}",
        notes="not in memwall's table: run `memwall calibrate` for measured ceilings",
    )


def gpu_spec(props: Any) -> DeviceSpec:
    """The table row for a GPU's reported name and memory, else an estimate."""
    memory_gib = int(props.total_memory) / 2**30
    row = _match(str(props.name), memory_gib)
    spec = estimate_gpu(props) if row is None else dataclasses.replace(row.spec, memory_bytes=int(props.total_memory))
    l2 = int(getattr(props, "L2_cache_size", 0) or 0)
    if l2 > 0:  # the device's own figure, over the table's
        published = next((c.bandwidth for c in spec.caches if c.name == "L2" and c.bandwidth is not None
                          and c.bandwidth.source == DATASHEET), None)
        level = gpu_l2(l2, spec.bandwidth, f"device properties (L2_cache_size of {props.name})",
                       None if published is None else published.value)
        spec = dataclasses.replace(spec, caches=(level,))
    return spec


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


@functools.cache
def _host_file(path: str) -> str:
    """A file of the host's that does not change while memwall runs (/proc/cpuinfo, the clock's
    maximum): read once per process, not at every profile's start (~1 ms each time)."""
    return _read(path)


@functools.cache
def _host_caches() -> tuple[tuple[int, int, int], ...]:
    """This host's CPU caches (`read_cpu_caches`), read once per process."""
    return tuple(read_cpu_caches())


def _cpuinfo_field(cpuinfo: str, field: str) -> str:
    match = re.search(rf"^{field}\s*:\s*(.*)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else ""


#: Estimated bytes per clock per core each CPU cache level delivers, until `memwall calibrate`
#: measures them: two 32-byte loads a clock from L1 and half of that from each level further out
#: (the load widths of AVX2-class cores in the vendors' optimisation manuals).
_CACHE_BYTES_PER_CLOCK = {1: 64, 2: 32, 3: 16, 4: 8}


def read_cpu_caches(root: str = "/sys/devices/system/cpu/cpu0/cache") -> list[tuple[int, int, int]]:
    """(level, bytes, CPUs sharing one instance) of cpu0's data and unified caches, from sysfs;
    empty where the OS does not say."""
    found = []
    base = Path(root)
    try:
        indexes = sorted(base.glob("index*"))
    except OSError:
        return []
    for index in indexes:
        kind = _read(str(index / "type")).strip()
        level, size = _read(str(index / "level")).strip(), _read(str(index / "size")).strip().upper()
        if kind == "Instruction" or not level.isdigit() or not size:
            continue
        match = re.fullmatch(r"(\d+)([KMG]?)", size)
        if match is None:
            continue
        nbytes = int(match.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2)]
        found.append((int(level), nbytes, _count_cpus(_read(str(index / "shared_cpu_list")))))
    return found


def _count_cpus(cpu_list: str) -> int:
    """"0-1,4" -> 3."""
    total = 0
    for part in filter(None, (p.strip() for p in cpu_list.split(","))):
        low, _, high = part.partition("-")
        try:
            total += int(high or low) - int(low) + 1
        except ValueError:
            return 1
    return max(total, 1)


def cpu_cache_levels(
    caches: list[tuple[int, int, int]], threads: int, clock_hz: float, cpus: int | None = None
) -> tuple[MemoryLevel, ...]:
    """A CPU's cache levels for the work of `threads` threads: each level's capacity is one
    instance's size times the instances those threads spread over (private L1 and L2 add up,
    a shared L3 counts once), bandwidth estimated per core and clock (`_CACHE_BYTES_PER_CLOCK`)."""
    cpus = cpus or os.cpu_count() or threads
    levels = []
    for level, size, sharing in sorted(caches):
        instances = max(1, min(threads, -(-cpus // sharing)))
        per_clock = _CACHE_BYTES_PER_CLOCK.get(level, 8)
        cores = min(threads, cpus)
        bandwidth = Figure(cores * clock_hz * per_clock, ESTIMATED)
        where = f"sysfs: {size // 2**10} KiB" + (f" x {instances} (one per core in use)" if instances > 1 else "")
        if sharing > 1:
            where += f", shared by {sharing} CPUs"
        levels.append(MemoryLevel(f"L{level}", size * instances, bandwidth, where))
    return tuple(levels)


#: the tags `cpu_spec` writes into a CPU's name for units that run bf16 natively, by its flags:
#: amx_bf16; avx512_bf16 (x86) or bf16 (Arm). `native_bf16` reads them back from a report's
#: device, where the flags of the machine that ran it are gone.
_AMX_TAG, _BF16_TAG = "+AMX", "+BF16"


def native_bf16(spec: DeviceSpec) -> str | None:
    """The unit a CPU runs bf16 matrix work on natively ("AMX", "AVX512-BF16"), None when it
    converts bf16 to fp32 on the fly, or the device is no CPU."""
    if spec.kind != "cpu":
        return None
    if _AMX_TAG in spec.name:
        return "AMX"
    if _BF16_TAG in spec.name:
        return "AVX512-BF16" if "AVX" in spec.name else "its BF16 instructions"
    return None


def cpu_spec(
    threads: int | None = None, cpuinfo: str | None = None, max_khz: str | None = None,
    caches: list[tuple[int, int, int]] | None = None,
) -> DeviceSpec:
    """Estimate this CPU's peaks from its ISA flags, FMA pipes, threads in use and clock.

    fp32 = threads x clock x FMA pipes x vector lanes x 2. Bandwidth cannot be read from the
    ISA: it is a rough 10 GB/s per thread in use (run `memwall calibrate` to measure it)."""
    import torch

    threads = threads or torch.get_num_threads()
    cpuinfo = _host_file("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    flags = set((_cpuinfo_field(cpuinfo, "flags") or _cpuinfo_field(cpuinfo, "Features")).split())
    model = _cpuinfo_field(cpuinfo, "model name") or _cpuinfo_field(cpuinfo, "Model") or "CPU"
    max_khz = _host_file("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") if max_khz is None else max_khz
    if max_khz.strip():
        clock = float(max_khz) * 1e3
    elif mhz := _cpuinfo_field(cpuinfo, "cpu MHz"):
        clock = float(mhz) * 1e6
    elif bogo := _cpuinfo_field(cpuinfo, "bogomips") or _cpuinfo_field(cpuinfo, "BogoMIPS"):
        clock = float(bogo) / 2 * 1e6
    else:
        clock = 2.5e9

    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or "avx" in flags:
        lanes, isa = 8, "AVX2" if "avx2" in flags else "AVX"
    elif "asimd" in flags or "neon" in flags:
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    fma_pipes = 2 if ("fma" in flags or "asimd" in flags) else 1
    if "fma" in flags:
        isa += "+FMA"
    datapath_lanes, why = _fp_datapath_lanes(cpuinfo)
    if datapath_lanes is not None and datapath_lanes < lanes:
        lanes = datapath_lanes  # wide instructions run in halves on narrower pipes
    else:
        why = ""
    fp32 = threads * clock * fma_pipes * lanes * 2
    peaks = {"fp64": fp32 / 2, "fp32": fp32}
    if "amx_bf16" in flags:
        peaks["bf16"] = threads * clock * 1024
        isa += _AMX_TAG
    elif "avx512_bf16" in flags or "bf16" in flags:
        peaks["bf16"] = 2 * fp32
        isa += _BF16_TAG
    else:
        peaks["bf16"] = fp32  # converted to fp32 on the fly: an upper bound, often far above
    peaks["fp16"] = 2 * fp32 if "avx512_fp16" in flags else fp32
    if "amx_int8" in flags:
        peaks["int8"] = threads * clock * 2048
    elif {"avx512_vnni", "avx_vnni"} & flags:
        peaks["int8"] = 4 * fp32
    else:
        peaks["int8"] = 2 * fp32
    bandwidth = min(10e9 * threads, 200e9)
    levels = cpu_cache_levels(list(_host_caches()) if caches is None else caches, threads, clock)
    threads_text = f"{threads} thread{'s' if threads != 1 else ''}"
    return DeviceSpec(
        key="cpu", name=f"{model} ({threads_text}, {isa})", kind="cpu",
        peaks=tuple((k, Figure(peaks[k], ESTIMATED)) for k in PEAK_KEYS if k in peaks),
        bandwidth=Figure(bandwidth, ESTIMATED),
        source=f"estimated: {threads_text} x {clock / 1e9:.2f} GHz x {fma_pipes} FMA pipes x "
               f"{lanes} fp32 lanes x 2{why}; bandwidth 10 GB/s per thread",
        notes="run `memwall calibrate` to measure this machine's ceilings",
        caches=levels,
    )


def _fp_datapath_lanes(cpuinfo: str) -> tuple[int | None, str]:
    """fp32 lanes per FMA pipe where the microarchitecture is narrower than its widest ISA
    (AMD's optimisation guides for families 17h and 19h): Zen and Zen+ execute AVX on 128-bit
    pipes, Zen 2 to Zen 4 on 256-bit pipes (Zen 4's AVX-512 runs each 512-bit FMA as two
    halves). A 2048^2 fp32 GEMM on a 2-thread Zen 4 VM measured 158 GFLOP/s against 166 so
    estimated (332 counted as 512-bit pipes). None where the ISA width is the datapath."""
    vendor = _cpuinfo_field(cpuinfo, "vendor_id")
    if vendor not in ("AuthenticAMD", "HygonGenuine"):
        return None, ""
    try:
        family = int(_cpuinfo_field(cpuinfo, "cpu family"))
        model = int(_cpuinfo_field(cpuinfo, "model"))
    except ValueError:
        return None, ""
    if family == 0x17:
        lanes = 4 if model < 0x30 else 8  # Zen, Zen+: 128-bit; Zen 2: 256-bit
    elif family == 0x19:
        lanes = 8  # Zen 3, Zen 4: 256-bit
    else:
        return None, ""
    return lanes, f" (AMD family {family:X}h: {lanes * 32}-bit FMA pipes)"


def mps_spec(brand: str) -> DeviceSpec:
    row = _match(brand)
    if row is None:
        return DeviceSpec(key="mps-unknown", name=f"{brand} (unknown Apple GPU)", kind="mps", peaks=(),
                          bandwidth=None, notes="run `memwall calibrate` for measured ceilings")
    return row.spec


def parse_peaks(text: str) -> tuple[dict[str, float], float | None]:
    """"fp32=80e9,bf16=1e9,bandwidth=23e9,l2=300e9" -> ({"fp32": 8e10, "bf16": 1e9, "L2": 3e11}, 2.3e10):
    a cache level's bandwidth is keyed by its name (L1, L2, L3)."""
    peaks: dict[str, float] = {}
    bandwidth = None
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"peak {part!r} should look like fp32=80e9 or bandwidth=23e9")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"peak {part!r}: {value!r} is not a number (FLOP/s or bytes/s)") from None
        name = name.strip().lower()
        if name in ("bandwidth", "bw", "mem_bw"):
            bandwidth = number
        elif name in PEAK_KEYS or name in _DTYPE_TO_PEAK:
            peaks[name] = number
        elif name.upper() in CACHE_LEVELS:
            peaks[name.upper()] = number
        else:
            raise ValueError(f"unknown peak {name!r}: use one of {', '.join(PEAK_KEYS)}, bandwidth, "
                             f"or a cache level ({', '.join(CACHE_LEVELS[:3])})")
    return peaks, bandwidth


def detect_device(kind: str | None = None, index: int | None = None) -> DeviceSpec:
    """The device work runs on: "cuda" (NVIDIA or ROCm), "mps" or "cpu" (default: CUDA when
    available, else MPS, else CPU), with calibrated figures applied when cached. Remembered per
    process (a new calibration or thread count is noticed)."""
    import torch

    return _detect(kind, index, torch.get_num_threads(), calibration_stamp())


@functools.lru_cache(maxsize=16)
def _detect(kind: str | None, index: int | None, threads: int, stamp: Any) -> DeviceSpec:
    import torch

    if kind is None:
        kind = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if kind in ("cuda", "rocm"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
        spec = gpu_spec(props)
    elif kind == "mps":
        import platform

        spec = mps_spec(platform.processor() or "Apple")
    else:
        spec = cpu_spec()
    return apply_calibration(spec)


def apply_calibration(spec: DeviceSpec) -> DeviceSpec:
    """The spec with cached measured ceilings (if any) in place of datasheet or estimated ones."""
    calibration = load_calibration(spec)
    if calibration is None:
        return spec
    have = {level.name for level in spec.caches}
    measured = spec.with_figures(
        calibration.peaks_flops_per_s, calibration.bandwidth_bytes_per_s, source=CALIBRATED,
        caches={name: bw for name, bw in calibration.levels_bytes_per_s.items() if name in have},
    )
    when = time.strftime("%Y-%m-%d", time.localtime(calibration.measured_unix_s))
    caches = " and each cache level" if calibration.levels_bytes_per_s else ""
    if calibration.details.get("automatic"):
        how = f"measured automatically at the first profile: fp32 GEMM, memory bandwidth{caches}"
        notes = "other peaks are estimated: run `memwall calibrate` to measure every dtype"
    else:
        how, notes = f"GEMM per dtype, memory bandwidth{caches}", ""
    return dataclasses.replace(
        measured, source=f"calibrated {when} ({how}); other figures: {spec.source}", notes=notes,
    )


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(
    device: str | DeviceSpec | None = None,
    peaks: dict[str, float] | None = None,
    *,
    kind: str | None = None,
    environ: dict[str, str] | None = None,
) -> DeviceSpec:
    """The device a report is placed on: an explicit `device` (name or spec), else
    $MEMWALL_DEVICE, else the detected one; then `peaks` / $MEMWALL_PEAKS override figures."""
    env = os.environ if environ is None else environ
    if device is None and env.get(ENV_DEVICE):
        device = env[ENV_DEVICE]
    if isinstance(device, DeviceSpec):
        spec = device
    elif isinstance(device, str):
        spec = lookup_device(device)
    elif device is None:
        spec = detect_device(kind)
    else:
        raise TypeError(f"device must be a name like 'H100 SXM' or a DeviceSpec, got {device!r}")
    if env.get(ENV_PEAKS):
        try:
            env_peaks, env_bw = parse_peaks(env[ENV_PEAKS])
        except ValueError as exc:
            raise ValueError(f"${ENV_PEAKS}: {exc}") from None
        spec = _with(spec, env_peaks, env_bw)
    if peaks:
        if not isinstance(peaks, dict):
            raise TypeError("peaks must be a dict like {'fp32': 80e9, 'bandwidth': 23e9, 'L2': 300e9}")
        spec = _with(spec, {k: v for k, v in peaks.items() if k != "bandwidth"}, peaks.get("bandwidth"))
    return spec


def _with(spec: DeviceSpec, figures: dict[str, float], bandwidth: float | None) -> DeviceSpec:
    """The user's figures on `spec`: peaks by dtype, main memory's bandwidth, caches' by level name."""
    caches = {k: v for k, v in figures.items() if str(k).upper() in CACHE_LEVELS}
    flops = {k: v for k, v in figures.items() if k not in caches}
    return spec.with_figures(flops, bandwidth, caches=caches)
