"""Strict reading of report files: bounded JSON parsing and field checks derived from the
report's dataclasses, so that a truncated, corrupt, wrong-schema or hostile file becomes one
`ReportError` that says what is wrong, never a raw exception, a hang or a later crash."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memwall_plugin.devices import PEAK_KEYS, SOURCES

#: Environment variable that raises (or lowers) the size limit of a report file, in MB.
MAX_REPORT_MB_ENV = "MEMWALL_MAX_REPORT_MB"
DEFAULT_MAX_REPORT_MB = 128
#: Counts (calls, FLOPs, bytes, steps) above this are not real: 1e30 FLOPs is a zettascale
#: machine running for 30 years. The bound keeps every sum and ratio far from float overflow.
MAX_COUNT = 10**30
#: Times, rates and timestamps above this are not real either (seconds, FLOP/s, bytes/s).
MAX_FLOAT = 1e30
#: Nesting allowed inside the free-form `meta.extra` object.
MAX_EXTRA_DEPTH = 32
#: An integer literal longer than this is rejected while parsing (Python's int() would raise
#: a bare ValueError above 4300 digits, and spend quadratic time below that).
_MAX_INT_DIGITS = 40

Stamp = tuple[int, int, int, int, int]


class ReportError(ValueError):
    """A report file that cannot be read: the message says what is wrong and what to do."""


class FieldError(ValueError):
    """A bad value found while parsing or checking; the message names where it is."""


# --- reading -------------------------------------------------------------------------------------


def max_report_bytes() -> int:
    """The largest report file memwall reads ($MEMWALL_MAX_REPORT_MB, default 128 MB)."""
    text = os.environ.get(MAX_REPORT_MB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_REPORT_MB << 20
    try:
        mb = float(text)
    except ValueError:
        mb = math.nan
    if not 0 < mb < 1 << 20:
        raise ReportError(f"${MAX_REPORT_MB_ENV}={text!r} is not a size in MB; set it to e.g. 512, or unset it")
    return int(mb * (1 << 20))


class ReportFile:
    """One open report file. Its `stamp` (device, inode, size, mtime, ctime) and its bytes come
    from the same open file, so a file replaced between a stat and a read cannot be cached under
    the other version's stamp. Only regular files are read: a pipe would block, a device is
    endless, a directory is not a report."""

    def __init__(self, path: str | os.PathLike[str], source: str | None = None) -> None:
        self.source = str(path) if source is None else source
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(path, flags)
        except FileNotFoundError:
            raise ReportError(f"{self.source}: no such file; pass the path of a memwall .json report") from None
        except IsADirectoryError:
            raise self._directory() from None
        except OSError as exc:
            raise ReportError(f"{self.source} cannot be opened ({exc.strerror or exc})") from None
        try:
            st = os.fstat(self._fd)
            if stat.S_ISDIR(st.st_mode):
                raise self._directory()
            if not stat.S_ISREG(st.st_mode):
                raise ReportError(f"{self.source} is not a regular file (a pipe, socket or device); "
                                  "a memwall report is a .json file")
            self.limit = max_report_bytes()
            if st.st_size > self.limit:
                raise self._too_large(st.st_size)
        except BaseException:
            os.close(self._fd)
            raise
        self.stamp: Stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _directory(self) -> ReportError:
        return ReportError(f"{self.source} is a directory; pass a report file (<logdir>/plugins/memwall/*.json)")

    def _too_large(self, size: int) -> ReportError:
        return ReportError(
            f"{self.source} is {size / (1 << 20):,.0f} MB, over the {self.limit / (1 << 20):,.0f} MB memwall "
            f"reads; if it is a real report, set ${MAX_REPORT_MB_ENV} higher"
        )

    def read(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = os.read(self._fd, 1 << 20)
            except OSError as exc:
                raise ReportError(f"{self.source} cannot be read ({exc.strerror or exc})") from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.limit:  # it grew since the stat
                raise self._too_large(size)
            chunks.append(chunk)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ReportFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_report_bytes(path: str | os.PathLike[str], source: str | None = None) -> bytes:
    with ReportFile(path, source) as f:
        return f.read()


# --- parsing -------------------------------------------------------------------------------------


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise FieldError(f"the key {_show(key)} appears twice in one object")
            seen.add(key)
    return obj


def _constant(name: str) -> Any:
    raise FieldError(f"{name} is not a number memwall writes (reports hold finite numbers only)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise FieldError(f"the number {text[:40]} is too large for a float")
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise FieldError(f"an integer of {len(text.lstrip('-')):,} digits is not a real count")
    return int(text)


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_float,
                            parse_int=_int)
#: The quick pass: numbers parsed by json's C scanner (ints of up to 4,300 digits, floats that may
#: overflow to inf); every number a report holds is range-checked afterwards by its field's check
#: (`_check_json` for `meta.extra`), so only the parser's own error messages are lost, and a file
#: that fails is parsed again strictly to name them (`parse_json(..., strict=True)`).
_QUICK_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant)


def parse_json(raw: bytes, source: str, strict: bool = False) -> Any:
    """Strict JSON: UTF-8 only; no duplicate keys, NaN or infinities. `strict` also rejects, while
    parsing, integers longer than 40 digits and floats too large for a float; without it the C
    scanner reads numbers (several times faster) and the field checks bound them instead."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{source} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}); "
                          "is it a memwall report?") from None
    if not strict:
        try:
            data, end = _QUICK_DECODER.raw_decode(text, _skip_space(text, 0))
            if _skip_space(text, end) == len(text):
                return data
        except (ValueError, RecursionError):  # a bad file: the strict pass says what is wrong
            pass
    try:
        data, end = _DECODER.raw_decode(text, _skip_space(text, 0))
        if _skip_space(text, end) != len(text):
            raise json.JSONDecodeError("extra data after the report", text, end)
        return data
    except FieldError as exc:
        raise ReportError(f"{source} is not a report memwall wrote: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{source} is not valid JSON ({exc}); it may be truncated") from None
    except RecursionError:
        raise ReportError(f"{source} is nested too deeply to be a memwall report") from None


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r":
        at += 1
    return at


# --- checking ------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _check_int(path: str, value: Any, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"{path} must be a whole number, got {_kind(value)} ({_show(value)})")
    if not low <= value <= MAX_COUNT:
        raise FieldError(f"{path} must be a non-negative integer from {low} to 1e30, got {_show(value)}")
    return value


def _check_float(path: str, value: Any, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(f"{path} must be a number, got {_kind(value)} ({_show(value)})")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > MAX_FLOAT:
        what = "a positive" if positive else "a finite non-negative"
        raise FieldError(f"{path} must be {what} number up to 1e30, got {_show(value)}")
    return value


def _check_str(path: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError(f"{path} must be a string, got {_kind(value)} ({_show(value)})")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError(f"{path} holds text that is not valid Unicode (a lone surrogate)") from None
    return value


#: the checks, for records that are not dataclasses of their own (memory's timeline, mappings)
check_int, check_float, check_str = _check_int, _check_float, _check_str


def _check_bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"{path} must be true or false, got {_kind(value)} ({_show(value)})")
    return value


def _check_json(path: str, value: Any, depth: int = 0) -> Any:
    """Free-form JSON (`meta.extra`): bounded depth, valid text, finite numbers of real size."""
    if depth > MAX_EXTRA_DEPTH:
        raise FieldError(f"{path} is nested deeper than {MAX_EXTRA_DEPTH} levels")
    if isinstance(value, dict):
        return {_check_str(f"{path} key", k): _check_json(f"{path}.{k}", v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_check_json(f"{path}[{i}]", v, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, str):
        return _check_str(path, value)
    if isinstance(value, float) and not math.isfinite(value):  # parsed by the quick pass
        raise FieldError(f"{path} is a number too large for a float")
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > _MAX_INT_DIGITS:
        raise FieldError(f"{path} is an integer of {len(str(abs(value))):,} digits, not a real count")
    return value


Check = Callable[[str, Any], Any]
#: integer fields that are at least 1
_AT_LEAST_ONE = ("world_size", "bytes_per_element", "local_world_size", "group_size")


def _positive(name: str) -> bool:
    """A float field that must be above zero: a rate, or a Figure's value (a peak)."""
    return name.endswith("_per_s") or name == "value"


def _checker(name: str, hint: Any) -> Check:
    """The check of one dataclass field, from its type annotation (and, for ranges, its name)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _checker(name, rest[0])
            return lambda path, v: None if v is None else inner(path, v)
    if hint is bool:
        return _check_bool
    if hint is int:
        low = 1 if name in _AT_LEAST_ONE else 0
        return lambda path, v: v if type(v) is int and low <= v <= MAX_COUNT else _check_int(path, v, low)
    if hint is float:
        positive = _positive(name)
        return lambda path, v: _check_float(path, v, positive)
    if hint is str:
        return _check_str
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _checker(name, args[0])
        int_pairs = args[0] == tuple[int, int]  # a row's reuse: hundreds per report, checked inline

        def check_tuple(path: str, value: Any) -> tuple[Any, ...]:
            if not isinstance(value, list):
                raise FieldError(f"{path} must be a list, got {_kind(value)} ({_show(value)})")
            if int_pairs and all(type(v) is list and len(v) == 2 and type(v[0]) is int and type(v[1]) is int
                                 and 0 <= v[0] <= MAX_COUNT and 0 <= v[1] <= MAX_COUNT for v in value):
                return tuple((v[0], v[1]) for v in value)
            return tuple(item(f"{path}[{i}]", v) for i, v in enumerate(value))

        return check_tuple
    if origin is tuple and args and Ellipsis not in args:  # a fixed-length record: [a, b]
        items = [_checker(name, a) for a in args]

        def check_pair(path: str, value: Any) -> tuple[Any, ...]:
            if not isinstance(value, list) or len(value) != len(items):
                raise FieldError(f"{path} must be a list of {len(items)}, got {_kind(value)} ({_show(value)})")
            return tuple(check(f"{path}[{i}]", v) for i, (check, v) in enumerate(zip(items, value, strict=True)))

        return check_pair
    if origin is dict and args and args[0] is str:
        def check_dict(path: str, value: Any) -> dict[str, Any]:
            if not isinstance(value, dict):
                raise FieldError(f"{path} must be an object, got {_kind(value)} ({_show(value)})")
            return typing.cast(dict[str, Any], _check_json(path, value))

        return check_dict
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        fields = _fields(hint, ())
        return lambda path, v: hint(**check_object(path, v, fields))
    raise TypeError(f"memwall cannot check a report field {name!r} of type {hint!r}: add a check for it "
                    "in memwall_plugin/validation.py")


@dataclasses.dataclass(frozen=True)
class Fields:
    """The checks of one JSON object: each known field's check, and which must be present.
    `ints`, `floats`, `texts` and `nullable` name the scalar fields whose common, valid values
    `check_object` accepts inline (a report has thousands of them); anything else goes through
    the field's check, which names what is wrong."""

    checks: dict[str, Check]
    required: frozenset[str]
    ints: dict[str, int] = dataclasses.field(default_factory=dict)  # name: the least value
    floats: dict[str, bool] = dataclasses.field(default_factory=dict)  # name: must be positive
    texts: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()


def _fields(cls: type, skip: tuple[str, ...]) -> Fields:
    hints = typing.get_type_hints(cls)
    checks, required = {}, set()
    ints: dict[str, int] = {}
    floats: dict[str, bool] = {}
    texts, nullable = set(), set()
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        checks[f.name] = _checker(f.name, hint)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
            nullable.add(f.name)
            hint = next(a for a in args if a is not type(None))
        if hint is int:
            ints[f.name] = 1 if f.name in _AT_LEAST_ONE else 0
        elif hint is float:
            floats[f.name] = _positive(f.name)
        elif hint is str:
            texts.add(f.name)
    return Fields(checks, frozenset(required), ints, floats, frozenset(texts), frozenset(nullable))


_FIELDS: dict[tuple[type, tuple[str, ...]], Fields] = {}


def dataclass_fields(cls: type, skip: tuple[str, ...] = ()) -> Fields:
    """The checks of the JSON object of dataclass `cls` (fields in `skip` are handled apart)."""
    found = _FIELDS.get((cls, skip))
    if found is None:
        found = _FIELDS[(cls, skip)] = _fields(cls, skip)
    return found


def check_object(path: str, data: Any, fields: Fields) -> dict[str, Any]:
    """A JSON object checked against `fields`: unknown and missing keys are named; returns the
    checked values (lists as tuples, numbers as the field's type)."""
    if not isinstance(data, dict):
        raise FieldError(f"{path} must be an object, got {_kind(data)} ({_show(data)})")
    unknown = [k for k in data if k not in fields.checks]
    if unknown:
        raise FieldError(f"{path} has an unknown field {_show(unknown[0])}"
                       + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                       + "; was it written by a newer memwall?")
    missing = sorted(fields.required - data.keys())
    if missing:
        raise FieldError(f"{path} lacks {', '.join(missing)}")
    checks, ints, floats, texts, nullable = fields.checks, fields.ints, fields.floats, fields.texts, fields.nullable
    out = dict(data)
    for k, v in data.items():  # valid scalars inline; everything else through its field's check
        kind = type(v)
        if kind is str:
            if k in texts and v.isascii():
                continue
        elif kind is int:
            low = ints.get(k)
            if low is not None and low <= v <= MAX_COUNT:
                continue
        elif kind is float:
            positive = floats.get(k)
            if positive is not None and (v > 0.0 if positive else v >= 0.0) and v <= MAX_FLOAT:
                continue
        elif v is None and k in nullable:
            continue
        out[k] = checks[k](f"{path}.{k}", v)
    return out


# --- devices -------------------------------------------------------------------------------------

_DEVICE_TEXT = ("key", "name", "kind", "interconnect", "source", "notes", "memory_type")
_DEVICE_FIGURES = ("bandwidth", "interconnect_bandwidth")


def _check_figure(path: str, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise FieldError(f"{path} must be an object or null, got {_kind(value)} ({_show(value)})")
    unknown = [k for k in value if k not in ("value", "source")]
    if unknown:
        raise FieldError(f"{path} has an unknown field {_show(unknown[0])}")
    if "value" not in value or "source" not in value:
        raise FieldError(f"{path} lacks its value or source")
    source = _check_str(f"{path}.source", value["source"])
    if source not in SOURCES:
        raise FieldError(f"{path}.source must be one of {', '.join(SOURCES)}, got {_show(source)}")
    return {"value": _check_float(f"{path}.value", value["value"], positive=True), "source": source}


def check_device(path: str, data: Any) -> dict[str, Any]:
    """A device object as DeviceSpec.to_dict writes it, checked field by field."""
    if not isinstance(data, dict):
        raise FieldError(f"{path} must be an object or null, got {_kind(data)} ({_show(data)})")
    known = (*_DEVICE_TEXT, *_DEVICE_FIGURES, "peaks", "memory_bytes", "caches")
    unknown = [k for k in data if k not in known]
    if unknown:
        raise FieldError(f"{path} has an unknown field {_show(unknown[0])}")
    missing = [k for k in ("key", "name", "kind", "peaks") if k not in data]
    if missing:
        raise FieldError(f"{path} lacks {', '.join(missing)}")
    out: dict[str, Any] = {k: _check_str(f"{path}.{k}", data[k]) for k in _DEVICE_TEXT if k in data}
    out.update({k: _check_figure(f"{path}.{k}", data.get(k)) for k in _DEVICE_FIGURES})
    peaks = data["peaks"]
    if not isinstance(peaks, dict):
        raise FieldError(f"{path}.peaks must be an object, got {_kind(peaks)} ({_show(peaks)})")
    for key in peaks:
        if key not in PEAK_KEYS:
            raise FieldError(f"{path}.peaks has an unknown dtype {_show(key)}; known: {', '.join(PEAK_KEYS)}")
    out["peaks"] = {k: _check_figure(f"{path}.peaks.{k}", v) for k, v in peaks.items()}
    memory = data.get("memory_bytes")
    out["memory_bytes"] = None if memory is None else _check_int(f"{path}.memory_bytes", memory)
    caches = data.get("caches", [])
    if not isinstance(caches, list):
        raise FieldError(f"{path}.caches must be a list, got {_kind(caches)} ({_show(caches)})")
    out["caches"] = [_check_cache(f"{path}.caches[{i}]", c) for i, c in enumerate(caches)]
    return out


def _check_cache(path: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise FieldError(f"{path} must be an object, got {_kind(data)} ({_show(data)})")
    unknown = [k for k in data if k not in ("name", "capacity_bytes", "capacity_source", "bandwidth")]
    if unknown:
        raise FieldError(f"{path} has an unknown field {_show(unknown[0])}")
    if "name" not in data:
        raise FieldError(f"{path} lacks its name")
    capacity = data.get("capacity_bytes")
    return {"name": _check_str(f"{path}.name", data["name"]),
            "capacity_bytes": None if capacity is None else _check_int(f"{path}.capacity_bytes", capacity),
            "capacity_source": _check_str(f"{path}.capacity_source", data.get("capacity_source", "")),
            "bandwidth": _check_figure(f"{path}.bandwidth", data.get("bandwidth"))}


def invalid(source: str, exc: ValueError) -> ReportError:
    """A check's failure as the ReportError a reader sees."""
    return ReportError(f"{source} has a bad field: {exc}")


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every link resolved, lies under `root` (itself resolved)."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(root)
    except (OSError, ValueError):
        return False
