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
#: addresses remembered: a two-way table of this many slots (two int64 arrays, 256 KiB in all,
#: allocated once: a long run never grows it). An address lives in its slot or the next one; a
#: third address for the pair evicts the one touched longer ago, which reads as cold when touched
#: again: never under a faster level. (One slot per address lost one of 100 tensors in four.)
SLOTS = 1 << 14
_PRIME = 16381  # the first slots: the largest prime below SLOTS - 1 (each pair's second is +1)


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
        input's address (an in-place op) is where that input was. Runs for every op: inlined."""
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
        addresses, stamps, clock = self.addresses, self.stamps, self.clock
        here: list[int] = []  # this call's addresses and buckets: an in-place output is where its input was
        for t in found:
            try:
                address, size = t.data_ptr(), t.nbytes
            except (RuntimeError, NotImplementedError):  # no storage (meta, sparse, a wrapper)
                continue
            if not size or not address:
                continue
            if address in here:
                bucket = here[here.index(address) + 1]
            else:
                slot = address % _PRIME  # a prime: aligned addresses a power of two apart spread out
                if addresses[slot] != address and addresses[slot + 1] == address:
                    slot += 1
                if addresses[slot] == address:
                    footprint = clock - stamps[slot] + size  # reuse_bucket, inlined
                    bucket = (footprint - 1).bit_length() if footprint <= HORIZON else COLD
                else:
                    bucket = COLD
                    if stamps[slot + 1] < stamps[slot]:  # the pair's older entry makes way
                        slot += 1
                    addresses[slot] = address
                clock += size
                stamps[slot] = clock
                here += (address, bucket)
            into[bucket] = into.get(bucket, 0) + size
        self.clock = clock


__all__ = ["COLD", "HORIZON", "SLOTS", "Residency", "reuse_bucket"]
