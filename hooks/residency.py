"""Where an op's data lives when it runs: how much else was touched since each of its tensors was
last touched, a reuse distance in bytes, folded into the op's entry as a histogram.

A cache holds the data touched most recently: a tensor read (or written) again after fewer bytes
than a cache level holds were touched by other work is still in that level. The histogram keys
are powers of two, `reuse_bucket`: bucket k holds tensors whose reuse footprint (the bytes touched
since, plus their own) is at most 2**k bytes; `COLD` holds those not touched within `HORIZON`
bytes, or never (fresh memory, the first step). A device's levels are applied to the histogram
later (memwall_plugin/ceilings.py), so one recording serves any device's caches, what-ifs too.

Addresses, not tensors, are what a cache holds: a buffer freed and handed out again by the
allocator is warm, and a view at the same address is the same data. The distance counts every
byte touched since (re-touched bytes twice): never nearer than the truth, so an op is never put
under a faster level than the one it ran from.

While the model runs memwall only notes each tensor's address and size (two integers); the
distances are worked out in bulk when the step's table is handed over (numpy: a stable sort by
address finds each touch's previous one), exactly: no table of addresses that forgets some.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import torch

from memwall_plugin.records import COLD, REUSE_HORIZON, reuse_bucket

_Tensor = torch.Tensor
#: beyond this many bytes, nothing is still cached on any device memwall knows (the largest
#: last-level caches hold a few hundred MB)
HORIZON = REUSE_HORIZON
#: tensors noted before the distances are worked out without waiting for the step's end (two
#: int64 arrays of this length: 1 MiB)
FLUSH_AT = 1 << 16
#: addresses whose last touch is remembered from one flush to the next (the most recently
#: touched; one that is dropped reads as cold when touched again: never under a faster level)
CARRIED = 1 << 16


class Residency:
    """The reuse distance of every tensor an op touches, by address, across the whole run.

    `observe` only notes each call's addresses and sizes (the hot path: two integers per tensor);
    `flush` works the distances out for everything noted since, in bulk, and adds them to each
    call's histogram. The capture flushes when it hands a step's table over, and on its own every
    `FLUSH_AT` tensors (a long step stays bounded)."""

    __slots__ = ("clock", "_addresses", "_sizes", "_counts", "_targets", "_target_of", "_histograms",
                 "_last_addresses", "_last_stamps")

    def __init__(self) -> None:
        self.clock = 0  # bytes touched so far, in the order ops touched them
        # each address's last touch before the noted calls (sorted by address): those within
        # HORIZON of the clock (older ones are cold whenever touched again), at most CARRIED
        self._last_addresses = np.empty(0, np.int64)
        self._last_stamps = np.empty(0, np.int64)
        self._start()

    def _start(self) -> None:
        self._addresses = array("q")  # every tensor touched, in order: its address
        self._sizes = array("q")  # and its bytes
        self._counts = array("q")  # per call: how many of those are its
        self._targets = array("q")  # per call: the histogram it adds to (an index into _histograms)
        self._target_of: dict[int, int] = {}
        self._histograms: list[dict[int, int]] = []

    def observe(self, args: tuple[Any, ...], out: Any, into: dict[int, int]) -> None:
        """Note this call's tensors for `into` (bucket -> bytes touched, filled by `flush`): its
        inputs in order (a list's tensors one by one: foreach ops walk them), then its outputs;
        an output at an input's address (an in-place op) is where that input was. Runs for
        every op: inlined."""
        found = []
        for a in args:
            if isinstance(a, _Tensor):
                found.append(a)
            elif type(a) is list or type(a) is tuple:
                found.extend([t for t in a if isinstance(t, _Tensor)])
        if isinstance(out, _Tensor):
            found.append(out)
        elif type(out) is list or type(out) is tuple:
            found.extend([t for t in out if isinstance(t, _Tensor)])
        addresses, sizes = self._addresses, self._sizes
        before = len(addresses)
        for t in found:
            try:
                address, size = t.data_ptr(), t.nbytes
            except (RuntimeError, NotImplementedError):  # no storage (meta, sparse, a wrapper)
                continue
            if size and address:
                addresses.append(address)
                sizes.append(size)
        noted = len(addresses) - before
        if not noted:
            return
        target = self._target_of.get(id(into))
        if target is None:
            target = self._target_of[id(into)] = len(self._histograms)
            self._histograms.append(into)  # kept alive until flushed: its id stays its own
        self._counts.append(noted)
        self._targets.append(target)
        if len(addresses) >= FLUSH_AT:
            self.flush()

    def settle(self) -> None:
        """Drop a call noted only in part: a SIGTERM ends the profile wherever it lands
        (terminate.py), also between a call's tensors and its count."""
        calls = min(len(self._counts), len(self._targets))
        del self._counts[calls:]
        del self._targets[calls:]
        noted = sum(self._counts)
        del self._addresses[noted:]
        del self._sizes[noted:]

    def flush(self) -> None:
        """Work out the reuse footprint of every tensor noted since the last flush and add its
        bytes to its call's histogram."""
        n = len(self._addresses)
        if not n:
            return
        address = np.array(self._addresses, dtype=np.int64)
        size = np.array(self._sizes, dtype=np.int64)
        counts = np.array(self._counts, dtype=np.int64)
        call = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        target = np.repeat(np.array(self._targets, dtype=np.int64), counts)
        histograms = self._histograms
        last_addresses, last_stamps = self._last_addresses, self._last_stamps
        m = len(last_addresses)
        # the earlier touches first, each its own "call"; a stable sort by address keeps each
        # address's touches in order, and a call's repeats of one address side by side
        every = np.concatenate((last_addresses, address))
        calls = np.concatenate((-1 - np.arange(m, dtype=np.int64), call))
        order = np.argsort(every, kind="stable")
        s_address, s_call = every[order], calls[order]
        total = m + n
        same_address = np.zeros(total, dtype=bool)
        same_address[1:] = s_address[1:] == s_address[:-1]
        repeat = np.zeros(total, dtype=bool)  # the same address again within one call
        repeat[1:] = same_address[1:] & (s_call[1:] == s_call[:-1])
        first = np.maximum.accumulate(np.where(repeat, 0, np.arange(total, dtype=np.int64)))
        repeat_in_order = np.empty(total, dtype=bool)
        repeat_in_order[order] = repeat
        advance = np.where(repeat_in_order[m:], 0, size)  # a repeat moves the clock no further
        after = self.clock + np.cumsum(advance)
        stamp = np.concatenate((last_stamps, after))[order]  # the clock after each touch
        before = np.concatenate((np.zeros(m, np.int64), after - advance))[order]
        own = np.concatenate((np.zeros(m, np.int64), size))[order]
        previous = np.zeros(total, dtype=np.int64)
        previous[1:] = first[:-1]  # the previous call's touch of the same address (where same_address)
        footprint = before - stamp[previous] + own  # reuse_bucket's footprint: bytes since, plus its own
        warm = same_address & (footprint <= HORIZON)
        exponent = np.frexp(np.where(warm, footprint - 1, 0).astype(np.float64))[1]  # (f - 1).bit_length()
        bucket = np.where(warm, exponent, COLD)[first]  # a repeat is where its call's first touch was
        in_order = np.empty(total, dtype=np.int64)
        in_order[order] = bucket
        keys = target * (COLD + 1) + in_order[m:]
        sums = np.bincount(keys, weights=size.astype(np.float64))
        for key in np.flatnonzero(sums).tolist():
            into = histograms[key // (COLD + 1)]
            b = key % (COLD + 1)
            into[b] = into.get(b, 0) + int(sums[key])
        self.clock = int(after[-1])
        # each address's last touch, for the next flush: the first touch of its last call
        last = np.ones(total, dtype=bool)
        last[:-1] = s_address[1:] != s_address[:-1]
        kept_addresses, kept_stamps = s_address[last], stamp[first[last]]
        recent = kept_stamps > self.clock - HORIZON
        kept_addresses, kept_stamps = kept_addresses[recent], kept_stamps[recent]
        if len(kept_addresses) > CARRIED:  # the most recently touched: the others read cold
            newest = np.sort(np.argpartition(kept_stamps, -CARRIED)[-CARRIED:])
            kept_addresses, kept_stamps = kept_addresses[newest], kept_stamps[newest]
        self._last_addresses, self._last_stamps = kept_addresses, kept_stamps
        self._start()


__all__ = ["CARRIED", "COLD", "FLUSH_AT", "HORIZON", "Residency", "reuse_bucket"]
