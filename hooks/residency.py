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
"""

from __future__ import annotations

from array import array
from typing import Any

import torch

from memwall_plugin.records import COLD, REUSE_HORIZON, reuse_bucket

_Tensor = torch.Tensor
#: beyond this many bytes, nothing is still cached on any device memwall knows (the largest
#: last-level caches hold a few hundred MB)
HORIZON = REUSE_HORIZON
#: addresses remembered: a direct-mapped table of this many slots (two int64 arrays, 256 KiB in
#: all, allocated once: a long run never grows it). Two addresses that share a slot evict each
#: other, and the evicted one reads as cold when touched again: never under a faster level.
SLOTS = 1 << 14
_MASK = SLOTS - 1


class Residency:
    """The reuse distance of every tensor an op touches, by address, across the whole run."""

    __slots__ = ("addresses", "clock", "stamps")

    def __init__(self) -> None:
        self.clock = 0  # bytes touched so far, in the order ops touched them
        self.addresses = array("q", bytes(8 * SLOTS))  # the address each slot remembers (0: none)
        self.stamps = array("q", bytes(8 * SLOTS))  # the clock when that address was last touched

    def observe(self, args: tuple[Any, ...], out: Any, into: dict[int, int]) -> None:
        """Add this call's tensors to `into` (bucket -> bytes touched): its inputs in order (a
        list's tensors one by one: foreach ops walk them), then its outputs; an output at an
        input's address (an in-place op) is where that input was."""
        seen: dict[int, int] = {}
        for a in args:
            if type(a) is _Tensor or isinstance(a, _Tensor):
                self._touch(a, into, seen)
            elif type(a) is list or type(a) is tuple:
                for t in a:
                    if isinstance(t, _Tensor):
                        self._touch(t, into, seen)
        if isinstance(out, _Tensor):
            self._touch(out, into, seen)
        elif type(out) is list or type(out) is tuple:
            for t in out:
                if isinstance(t, _Tensor):
                    self._touch(t, into, seen)

    def _touch(self, t: torch.Tensor, into: dict[int, int], seen: dict[int, int]) -> None:
        try:
            address, size = t.data_ptr(), t.nbytes
        except (RuntimeError, NotImplementedError):  # no storage (meta, sparse, a wrapper)
            return
        if not size or not address:
            return
        bucket = seen.get(address)
        if bucket is None:
            # allocations are aligned: the bits above the alignment pick the slot, mixed so that
            # addresses a fixed stride apart spread over the table
            slot = ((address >> 6) * 0x9E3779B1 >> 16) & _MASK
            clock = self.clock
            if self.addresses[slot] == address and clock - self.stamps[slot] + size <= HORIZON:
                bucket = reuse_bucket(clock - self.stamps[slot] + size)
            else:
                bucket = COLD
            seen[address] = bucket
            self.clock = clock = clock + size
            self.addresses[slot] = address
            self.stamps[slot] = clock
        into[bucket] = into.get(bucket, 0) + size


__all__ = ["COLD", "HORIZON", "SLOTS", "Residency", "reuse_bucket"]
