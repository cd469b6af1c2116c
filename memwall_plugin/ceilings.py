"""The roofs rows are placed under, resolved in one place: a device's peak per dtype, the bandwidth
of the memory level an op's data came from (datasheet, calibrated, estimated or the user's, as
`devices.py` resolved them), the TF32 policy, and the link collectives travel over. Placement sets
a row's ceilings (and the level's name) and nothing else.

The memory level: an op's calls recorded how recently each tensor they touched had been touched
before (its reuse histogram, hooks/residency.py). Data whose reuse footprint fits a cache level
came from that level; the rest from main memory. A row's bandwidth is the rate its bytes flow at
under those levels' roofs together (all from one level: that level's bandwidth), and its level
the one that takes most of that time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from memwall_plugin.devices import ESTIMATED, USER, DeviceSpec, Figure
from memwall_plugin.formulas import REGISTRY
from memwall_plugin.records import COLD
from memwall_plugin.registry import TF32_FAMILIES
from memwall_plugin.rows import Row

Ceilings = Callable[[str, str], tuple[float | None, float | None]]
#: a row's reuse histogram -> (memory level, its bandwidth, main memory's bandwidth)
MemoryRoof = Callable[[tuple[tuple[int, int], ...]], tuple[str, float | None, float | None]]


def tf32_families(device: DeviceSpec | None) -> tuple[str, ...]:
    """The op families that run fp32 on TF32 tensor cores now: on a CUDA device, as torch's
    settings allow (matmuls: `torch.backends.cuda.matmul.allow_tf32`, convolutions: cuDNN's)."""
    if device is None or device.kind != "cuda":
        return ()
    import torch

    families = []
    if torch.backends.cuda.matmul.allow_tf32:
        families.append("matmul")
    if torch.backends.cudnn.allow_tf32:
        families.append("conv")
    return tuple(families)


def tf32_ops(families: Iterable[str]) -> frozenset[str]:
    """The ops of the op families (registry metadata) that ran on TF32 tensor cores."""
    return frozenset().union(*(REGISTRY.ops_of(f) for f in families if f in TF32_FAMILIES))


def ceilings_of(device: DeviceSpec | None, tf32: tuple[str, ...] = ()) -> Ceilings:
    """(op, dtype) -> (peak FLOP/s, bandwidth) on `device`; TF32 for fp32 matmul/conv where enabled."""
    ops = tf32_ops(tf32)
    use_tf32 = device is not None and device.peak("tf32") is not None and bool(ops)
    cache: dict[tuple[str, str], tuple[float | None, float | None]] = {}

    def ceilings(op: str, dtype: str) -> tuple[float | None, float | None]:
        if device is None:
            return None, None
        key = (op, dtype) if use_tf32 else ("", dtype)
        found = cache.get(key)
        if found is None:
            roof = "tf32" if use_tf32 and dtype == "float32" and op in ops else dtype
            found = cache[key] = (device.peak_flops_per_s(roof), device.bandwidth_bytes_per_s)
        return found

    return ceilings


def level_of(device: DeviceSpec, bucket: int) -> tuple[str, float | None]:
    """The memory level of `device` that holds data of a reuse bucket, and its bandwidth: the
    nearest cache at least 2**bucket bytes large (with a bandwidth), else main memory."""
    levels = device.memory_levels
    if bucket != COLD:
        span = 1 << bucket
        for level in levels[:-1]:
            if level.capacity_bytes and level.bandwidth is not None and span <= level.capacity_bytes:
                return level.name, level.bandwidth.value
    return levels[-1].name, levels[-1].bandwidth_bytes_per_s


def memory_roof_of(device: DeviceSpec | None) -> MemoryRoof:
    """reuse histogram -> (level, bandwidth, main memory's bandwidth) on `device`, memoised."""
    if device is None:
        return lambda reuse: ("", None, None)
    main = device.memory_levels[-1]
    main_bw = main.bandwidth_bytes_per_s
    cached = any(level.capacity_bytes and level.bandwidth is not None for level in device.caches)
    memo: dict[tuple[tuple[int, int], ...], tuple[str, float | None, float | None]] = {}

    def place(reuse: tuple[tuple[int, int], ...]) -> tuple[str, float | None, float | None]:
        found = memo.get(reuse)
        if found is not None:
            return found
        if not reuse or not main_bw or not cached:
            found = (main.name, main_bw, main_bw)
        else:
            seconds: dict[str, float] = {}
            speed: dict[str, float] = {}
            total, spent = 0, 0.0
            for bucket, nbytes in reuse:
                name, bw = level_of(device, bucket)
                speed[name] = bw = bw or main_bw
                took = nbytes / bw
                seconds[name] = seconds.get(name, 0.0) + took
                total, spent = total + nbytes, spent + took
            level = max(seconds, key=lambda n: seconds[n])
            # one level: its bandwidth exactly; several: the rate their bytes flow at together
            found = (level, speed[level] if len(speed) == 1 else total / spent, main_bw)
        if len(memo) > 50_000:
            memo.clear()
        memo[reuse] = found
        return found

    return place


def place_rows(rows: Iterable[Row], device: DeviceSpec | None, tf32: tuple[str, ...] = ()) -> tuple[Row, ...]:
    """Put each op row under its dtype's roof on `device` (TF32 for fp32 matmul/conv where enabled)
    and under the memory level its data came from (`memory_roof_of`)."""
    ceilings = ceilings_of(device, tf32)
    memory = memory_roof_of(device)
    out = []
    for r in rows:
        peak, _ = ceilings(r.op, r.dtype)
        level, bw, main = memory(r.reuse)
        out.append(dataclasses.replace(r, peak_flops_per_s=peak, bandwidth_bytes_per_s=bw, memory_level=level,
                                       dram_bandwidth_bytes_per_s=main))
    return tuple(out)


# --- the link ------------------------------------------------------------------------------------

ENV_LINK = "MEMWALL_LINK"
#: A loopback TCP transfer copies every byte twice (into the kernel's socket buffer and out of
#: it), each copy reading and writing it: four bytes of memory traffic per byte delivered.
LOOPBACK_TRAFFIC_PER_BYTE = 4


@dataclass(frozen=True, slots=True)
class Link:
    """The interconnect a rank's collectives travel over, and its bandwidth per direction."""

    name: str  # "NVLink 4.0", "PCIe Gen5 x16", "loopback TCP (gloo)", "network"
    bandwidth: Figure | None  # bytes/s per direction; None = unknown (configure it)
    note: str = ""  # how the figure was arrived at

    @property
    def bytes_per_s(self) -> float | None:
        return self.bandwidth.value if self.bandwidth is not None else None


def link_record(link: Link) -> dict[str, Any]:
    """A link as JSON-ready data (`memwall report --json`, the tab)."""
    bw = link.bandwidth
    return {"name": link.name, "bytes_per_s": None if bw is None else bw.value,
            "source": None if bw is None else bw.source, "note": link.note}


def place_collectives(rows: Iterable[Row], link: Link | None, inter_link: Link | None = None) -> tuple[Row, ...]:
    """Put collective rows under the links' roofs: the link inside a node, and the network
    between nodes for the bytes that cross it (`comm.roof_bytes_per_s`)."""
    from memwall_plugin.comm import roof_bytes_per_s

    bw = link.bytes_per_s if link is not None else None
    inter = inter_link.bytes_per_s if inter_link is not None else None
    return tuple(dataclasses.replace(r, peak_flops_per_s=None, bandwidth_bytes_per_s=bw if r.collective is None
                                     else roof_bytes_per_s(r.collective, bw, inter)) for r in rows)


def parse_link(value: Any) -> tuple[float, str]:
    """A link override -> (bytes/s per direction, name). Takes 50e9, "50e9",
    "bandwidth=50e9,name=InfiniBand NDR" or {"bandwidth": 50e9, "name": "InfiniBand NDR"}."""
    usage = ("a link is its bandwidth per direction in bytes/s: 50e9, or 'bandwidth=50e9,name=InfiniBand NDR' "
             "(profile(link=...), memwall run --link, $MEMWALL_LINK)")
    name = ""
    if isinstance(value, str):
        text = value.strip()
        if "=" not in text:
            value = text
        else:
            fields: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                key, sep, item = part.partition("=")
                if not sep or key.strip() not in ("bandwidth", "name"):
                    raise ValueError(f"{part!r} is not bandwidth=... or name=...; {usage}")
                fields[key.strip()] = item.strip()
            value = fields
    if isinstance(value, dict):
        unknown = set(value) - {"bandwidth", "name"}
        if unknown or "bandwidth" not in value:
            raise ValueError(f"link {value!r}: {usage}")
        name = str(value.get("name", ""))
        value = value["bandwidth"]
    try:
        bandwidth = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        raise ValueError(f"link bandwidth {value!r} is not a number; {usage}") from None
    if not 0 < bandwidth < math.inf:
        raise ValueError(f"link bandwidth must be a positive number of bytes/s, got {value!r}")
    return bandwidth, name


INTRA, INTER = "intra", "inter"
#: the levels a link setting names: inside a node, between nodes
LEVELS = (INTRA, INTER)
_LEVEL_KEYS = (INTRA, INTER, f"{INTRA}_name", f"{INTER}_name")
LINKS_USAGE = ("links per level: intra=900e9,inter=50e9 (bytes/s per direction; names with "
               "intra_name=...,inter_name=...), or {'intra': 900e9, 'inter': 50e9}; one value sets both")


def parse_links(value: Any) -> dict[str, tuple[float, str]]:
    """A link setting -> {level: (bytes/s per direction, name)} for the levels it sets. The
    single-link forms (`parse_link`: 50e9, "bandwidth=50e9,name=IB", {"bandwidth": ...}) set
    both levels, one roof for all traffic as before levels; "intra=900e9,inter=50e9" (names:
    "inter_name=InfiniBand NDR") or {"intra": 900e9, "inter": {"bandwidth": 50e9, "name": "IB"}}
    set each level (either may be left out: it is then detected)."""
    if isinstance(value, Mapping) and set(value) & set(LEVELS):
        unknown = [k for k in value if k not in LEVELS]
        if unknown:
            raise ValueError(f"link {dict(value)!r}: unknown level {unknown[0]!r}; {LINKS_USAGE}")
        return {level: parse_link(v) for level, v in value.items() if v is not None}
    if isinstance(value, str) and "=" in value:
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, _, item = part.partition("=")
            fields[key.strip()] = item.strip()
        if set(fields) & set(_LEVEL_KEYS):
            unknown = [k for k in fields if k not in _LEVEL_KEYS]
            if unknown:
                raise ValueError(f"{unknown[0]!r} is not intra=..., inter=..., intra_name=... or inter_name=...; "
                                 f"{LINKS_USAGE}")
            out = {}
            for level in LEVELS:
                if level in fields:
                    bandwidth, _ = parse_link(fields[level])
                    out[level] = (bandwidth, fields.get(f"{level}_name", ""))
                elif f"{level}_name" in fields:
                    raise ValueError(f"{level}_name without {level}=<bytes/s>; {LINKS_USAGE}")
            return out
    single = parse_link(value)
    return {INTRA: single, INTER: single}


def resolve_links(
    device: DeviceSpec | None,
    world_size: int,
    local_world_size: int | None,
    override: Any = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Link, Link | None]:
    """(the link inside a node, the network between nodes: None when every rank is on one node),
    each from the user's setting for its level (`profile(link=...)`, else $MEMWALL_LINK:
    `parse_links`), else detected: inside a node as `resolve_link` finds it for one host, the
    network between nodes unknown until configured. Each link's figure says its source (user,
    datasheet, estimated; no figure: unknown)."""
    env = os.environ if environ is None else environ
    given: dict[str, tuple[float, str]] = {}
    where = ""
    if override is not None:
        given, where = parse_links(override), "from profile(link=...)"
    elif env.get(ENV_LINK):
        try:
            given = parse_links(env[ENV_LINK])
        except ValueError as exc:
            raise ValueError(f"${ENV_LINK}: {exc}") from None
        where = f"from ${ENV_LINK}"
    several = local_world_size is not None and local_world_size < world_size
    per_node = local_world_size if several and local_world_size else world_size

    def configured(level: str, default_name: str) -> Link:
        bandwidth, name = given[level]
        return Link(name or default_name, Figure(bandwidth, USER), where)

    if INTRA in given:
        intra = configured(INTRA, "configured link" if not several else "configured link within a node")
    else:
        intra = resolve_link(device, per_node, per_node, environ={})
    if not several:
        return intra, None
    if INTER in given:
        return intra, configured(INTER, "configured network between nodes")
    return intra, Link("network between nodes", None,
                       f"not detected: set its bandwidth per direction with --link inter=..., "
                       f"profile(link={{'inter': ...}}) or ${ENV_LINK}")


def resolve_link(
    device: DeviceSpec | None,
    world_size: int,
    local_world_size: int | None,
    override: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Link:
    """The link a rank's collectives are placed under, and where its figure came from:

    1. the user's: `profile(link=...)`, else $MEMWALL_LINK;
    2. ranks on several hosts: the network between them, unknown until configured;
    3. a GPU: its interconnect from the device table (NVLink generation or PCIe), per direction:
       datasheets give both directions together;
    4. a CPU (gloo over loopback TCP on one host): estimated from the memory bandwidth, since a
       loopback transfer moves every byte through memory four times (`LOOPBACK_TRAFFIC_PER_BYTE`).
    """
    env = os.environ if environ is None else environ
    if override is None and env.get(ENV_LINK):
        try:
            bandwidth, name = parse_link(env[ENV_LINK])
        except ValueError as exc:
            raise ValueError(f"${ENV_LINK}: {exc}") from None
        return Link(name or "configured link", Figure(bandwidth, USER), f"from ${ENV_LINK}")
    if override is not None:
        bandwidth, name = parse_link(override)
        return Link(name or "configured link", Figure(bandwidth, USER), "from profile(link=...)")
    if local_world_size is not None and local_world_size < world_size:
        return Link("network between hosts", None,
                    f"not detected: set its bandwidth per direction with profile(link=...) or ${ENV_LINK}")
    if device is not None and device.kind != "cpu":
        figure = device.interconnect_bandwidth
        if figure is not None:
            return Link(device.interconnect or "interconnect", Figure(figure.value / 2, figure.source),
                        f"{device.name}: half of the datasheet's {figure.value / 1e9:g} GB/s, which counts "
                        "both directions")
        return Link(device.interconnect or "unknown link", None,
                    f"{device.name} has no interconnect figure: set one with profile(link=...) or ${ENV_LINK}")
    memory = device.bandwidth if device is not None else None
    if memory is None:
        return Link("loopback TCP", None, f"no memory bandwidth to estimate it from: set ${ENV_LINK}")
    return Link("loopback TCP (one host)", Figure(memory.value / LOOPBACK_TRAFFIC_PER_BYTE, ESTIMATED),
                f"memory bandwidth ({memory.source}) / {LOOPBACK_TRAFFIC_PER_BYTE}: each byte is copied into "
                "and out of the kernel")


def relink(link: Link, device: DeviceSpec, world_size: int, local_world_size: int | None) -> Link:
    """A what-if device's link: ranks on one host move to the new device's interconnect; a
    network between hosts, or a configured link, stays."""
    if link.bandwidth is not None and link.bandwidth.source == USER:
        return link
    if local_world_size is not None and local_world_size < world_size:
        return link
    return resolve_link(device, world_size, local_world_size, environ={})
