"""A rank's headline and where it ran, read without its rows where a cached one is at hand.

A job of a thousand ranks is a thousand report files; reading and checking each in full (its
rows, collectives, memory) takes seconds, while the job views (the ranks' spread, outliers and
nodes) read only each rank's `Headline` and placement. Those are cached in a sidecar beside the
report files, `plugins/memwall/.heads.json` (hidden: no run store reads it as a report), one
entry per rank's set of windows, each under the stamps of its files (device, inode, size, mtime
and ctime, as the tab's cache of parsed reports keys them: any write to a file changes its
ctime) and the whole sidecar under a digest of memwall's own sources. A file that changed, a
sidecar from another memwall, a sidecar that is damaged: the file is read in full and checked
as ever, and the entry written anew. A report shown in full is always read in full.

The sidecar is written only for runs of more than `CACHE_ABOVE` windows (a small run reads in
milliseconds) and never where it cannot be (a read-only logdir just reads in full each time).

A rank of a torch.distributed job also writes its own head when it saves a window,
`plugins/memwall/.heads/<window file>` (`write_file_head`), under the stamp of the file it just
wrote and the same digest: the first read of a job memwall wrote reads a thousand small heads,
not a thousand reports. A head whose file was changed since, or is gone, is not used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memwall_plugin.files import write_bytes_atomically
from memwall_plugin.headline import Headline, headline
from memwall_plugin.validation import FieldError, Stamp, check_object, dataclass_fields

if TYPE_CHECKING:
    from memwall_plugin.report import Report

SIDECAR = ".heads.json"
#: the folder beside the report files where each rank's window leaves its head
HEADS_DIR = ".heads"
FILE_HEAD_FORMAT = "memwall-head"
FORMAT = "memwall-heads"
VERSION = 1
#: above this many windows in a run directory, readers keep the sidecar
CACHE_ABOVE = 16


@dataclass(frozen=True)
class RankHead:
    """One rank's report (its windows merged) as the job views read it: its headline, its job,
    and where it ran (the fields `ranks.node_of` reads, as the report holds them)."""

    job: str
    created_unix_s: float
    hostname: str
    local_rank: int | None
    group_rank: int | None
    local_world_size: int | None
    headline: Headline

    @property
    def rank(self) -> int:
        return self.headline.rank

    @property
    def world_size(self) -> int:
        return self.headline.world_size


def head_of(report: Report) -> RankHead:
    return RankHead(report.job, report.created_unix_s, report.hostname, report.local_rank, report.group_rank,
                    report.local_world_size, headline(report))


def file_stamp(path: Path) -> Stamp | None:
    """The stamp of the report file at `path`; None for a link (always read in full, so the tab's
    refusal of links to files outside its logdir is never bypassed) or a file gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.cache
def code_digest() -> str:
    """A digest of this memwall's sources: a sidecar written by other code (another version, an
    edit) is not trusted, since what a headline holds and how it is computed may differ."""
    package = Path(__file__).parent
    digest = hashlib.blake2b(digest_size=12)
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _record(head: RankHead) -> dict[str, Any]:
    out = {f.name: getattr(head, f.name) for f in dataclasses.fields(head) if f.name != "headline"}
    h = dataclasses.asdict(head.headline)
    h["steps"] = list(head.headline.steps)
    out["headline"] = h
    return out


def _head(data: Any) -> RankHead:
    """An entry's head, every field checked as a report's are (FieldError if anything is off)."""
    if not isinstance(data, dict) or "headline" not in data:
        raise FieldError("head lacks its headline")
    fields = check_object("head", {k: v for k, v in data.items() if k != "headline"},
                          dataclass_fields(RankHead, ("headline",)))
    return RankHead(**fields, headline=Headline(**check_object("head.headline", data["headline"],
                                                               dataclass_fields(Headline))))


def write_file_head(path: Path, report: Report) -> None:
    """Leave `report`'s head beside its file at `path` (just written), under that file's stamp;
    a failure (a full disk, a read-only folder) leaves none: readers then read the file in full."""
    stamp = file_stamp(path)
    if stamp is None:
        return
    try:
        text = json.dumps({"format": FILE_HEAD_FORMAT, "version": VERSION, "code": code_digest(),
                           "stamp": list(stamp), "head": _record(head_of(report))},
                          separators=(",", ":"), allow_nan=False)
        folder = path.parent / HEADS_DIR
        folder.mkdir(exist_ok=True)
        write_bytes_atomically(folder / path.name, text.encode())
    except (OSError, ValueError):
        return


def file_head(path: Path, stamp: Stamp) -> RankHead | None:
    """The head the rank left for the report file at `path` when it wrote it, if that file's
    stamp is still `stamp` and the head is this memwall's and whole; else None."""
    try:
        data = json.loads((path.parent / HEADS_DIR / path.name).read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != FILE_HEAD_FORMAT or data.get("version") != VERSION \
            or data.get("code") != code_digest() or data.get("stamp") != list(stamp):
        return None
    try:
        return _head(data.get("head"))
    except (FieldError, TypeError, ValueError):
        return None


Key = tuple[str, ...]  # the file names of a rank's windows, sorted


class HeadCache:
    """The sidecar of one run directory's report folder: heads by their windows' names and stamps."""

    def __init__(self, folder: Path, keep: bool = True) -> None:
        self.path = folder / SIDECAR
        self.keep = keep  # write it back (only runs of more than CACHE_ABOVE windows)
        self._entries: dict[Key, tuple[tuple[Stamp, ...], RankHead]] = {}
        self._dirty = False
        if keep:
            self._entries = self._read()

    def _read(self) -> dict[Key, tuple[tuple[Stamp, ...], RankHead]]:
        try:
            raw = self.path.read_bytes()
            data = json.loads(raw)
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION \
                or data.get("code") != code_digest() or not isinstance(data.get("entries"), list):
            return {}
        out: dict[Key, tuple[tuple[Stamp, ...], RankHead]] = {}
        try:
            for entry in data["entries"]:
                files = entry["files"]
                names = tuple(str(name) for name, _ in files)
                stamps = tuple(tuple(int(v) for v in stamp) for _, stamp in files)
                if any(len(s) != 5 for s in stamps) or list(names) != sorted(names):
                    return {}
                out[names] = (stamps, _head(entry["head"]))  # type: ignore[assignment]
        except (KeyError, TypeError, ValueError, FieldError):
            return {}  # damaged: every head is read in full again
        return out

    def get(self, names: Key, stamps: tuple[Stamp, ...]) -> RankHead | None:
        found = self._entries.get(names)
        return found[1] if found is not None and found[0] == stamps else None

    def put(self, names: Key, stamps: tuple[Stamp, ...], head: RankHead) -> None:
        if self.keep and self._entries.get(names) != (stamps, head):
            self._entries[names] = (stamps, head)
            self._dirty = True

    def save(self, present: Iterable[str]) -> None:
        """Write the sidecar back, entries of files no longer `present` dropped; a failure (a
        read-only logdir, a full disk) leaves it as it was."""
        if not self._dirty:
            return
        here = set(present)
        entries = []
        for names, (stamps, head) in sorted(self._entries.items()):
            if not here.issuperset(names):
                continue
            entry = {"files": [[n, list(s)] for n, s in zip(names, stamps, strict=True)], "head": _record(head)}
            try:  # a head with a non-finite figure is not kept (its file is read in full each time)
                entries.append(json.dumps(entry, separators=(",", ":"), allow_nan=False))
            except ValueError:
                continue
        meta = json.dumps({"format": FORMAT, "version": VERSION, "code": code_digest()}, separators=(",", ":"))
        text = meta[:-1] + ',"entries":[' + ",".join(entries) + "]}"
        try:
            write_bytes_atomically(self.path, text.encode())
        except (OSError, ValueError):
            return
        self._dirty = False


class LazyRanks(Mapping[int, "Report"]):
    """A job's ranks: each rank's report (its windows merged, every file checked), read when it
    is first asked for, and each rank's head (`heads`), at hand without reading the reports."""

    def __init__(self, heads: Mapping[int, RankHead], load: Callable[[int], Report],
                 loaded: Mapping[int, Report] | None = None) -> None:
        self.heads = dict(sorted(heads.items()))
        self._load = load
        self._loaded: dict[int, Report] = dict(loaded or {})

    def __getitem__(self, rank: int) -> Report:
        if rank not in self.heads:
            raise KeyError(rank)
        found = self._loaded.get(rank)
        if found is None:
            found = self._loaded[rank] = self._load(rank)
        return found

    def __iter__(self) -> Any:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    def __contains__(self, rank: object) -> bool:
        return rank in self.heads

    def __repr__(self) -> str:
        return f"LazyRanks({len(self.heads)} ranks, {len(self._loaded)} read)"


def rank_heads(ranks: Mapping[int, Report]) -> list[RankHead]:
    """The heads of a job's ranks by rank: the cached ones of a `LazyRanks`, else computed."""
    if isinstance(ranks, LazyRanks):
        return list(ranks.heads.values())
    return [head_of(r) for _, r in sorted(ranks.items())]


def headlines(heads: Sequence[RankHead]) -> list[Headline]:
    return [h.headline for h in heads]
