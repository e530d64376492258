"""Nodes indexed by free capacity, so a placement does not scan every node.

Theory of operation. Every usable node (live, offering, no claim in flight) has one key
``(free_gpus, free_cores, free_memory, name)`` in a sorted list. For a request ``(g, c, m)`` a
binary search finds the first key that could fit; scanning forward from there, the first node that
really fits (cores and memory too, a free slot, the required labels) is the binpack choice, the
lexicographically smallest fitting free capacity. Spread scans from the largest key down. For a
homogeneous pool the scan stops at the first entry, so the cost of a placement grows with
``log(nodes)``, not with the node count. Rare label requirements can still make a scan long; the
scan is bounded by the number of nodes.

A pass places several jobs before anything is written, and each must see what the ones before it
took: it re-keys the nodes it gives capacity away on in an :class:`Overlay` of the region's index
(:meth:`FreeIndex.overlay`), which keeps only the keys the pass changed and merges them with the
region's on every scan. Copying 10,000 keys for every pass cost more than the pass's placements.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from federation.core.capacity import Free

Key = tuple[int, int, int, str]


def key_of(name: str, free: Free) -> Key:
    """The index key of a node's free capacity."""
    return (len(free.gpus), len(free.cores), free.memory, name)


class FreeIndex:
    """A sorted list of free-capacity keys with O(log n) search and in-place updates."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.key: dict[str, Key] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, name: object) -> bool:
        return name in self.key

    def overlay(self) -> Overlay:
        """A view of this index that a pass changes without changing it (see :class:`Overlay`)."""
        return Overlay(self)

    def put(self, name: str, free: Free) -> None:
        """Insert or move ``name`` to the key of ``free``."""
        self.discard(name)
        key = key_of(name, free)
        bisect.insort(self.keys, key)
        self.key[name] = key

    def discard(self, name: str) -> None:
        """Remove ``name`` if present."""
        key = self.key.pop(name, None)
        if key is not None:
            index = bisect.bisect_left(self.keys, key)
            del self.keys[index]

    def ascending(self, gpus: int, cores: int, memory: int) -> Iterator[str]:
        """Node names from the smallest key that could hold the request upwards."""
        start = bisect.bisect_left(self.keys, (gpus, cores, memory, ""))
        for index in range(start, len(self.keys)):
            yield self.keys[index][3]

    def descending(self, gpus: int) -> Iterator[str]:
        """Node names from the largest key down to the first key with fewer than ``gpus`` GPUs."""
        for index in range(len(self.keys) - 1, -1, -1):
            key = self.keys[index]
            if key[0] < gpus:
                return
            yield key[3]


class Overlay:
    """A :class:`FreeIndex` as one pass changes it, without copying or changing the region's.

    ``moved`` maps every name the pass re-keyed or dropped to its key now (None: out of the index),
    and ``keys`` holds those keys sorted. A scan walks the base index, skipping the moved names,
    and the pass's own keys, in one merged order: what a copy of the base with the same changes
    would yield, at the cost of the changes only.
    """

    def __init__(self, base: FreeIndex) -> None:
        self.base = base
        self.keys: list[Key] = []
        self.moved: dict[str, Key | None] = {}
        self.hidden = 0  # names of the base this overlay moved or dropped

    def __len__(self) -> int:
        return len(self.base) - self.hidden + len(self.keys)

    def __contains__(self, name: object) -> bool:
        if name in self.moved:
            return self.moved[name] is not None
        return name in self.base

    def put(self, name: str, free: Free) -> None:
        """Insert or move ``name`` to the key of ``free`` (in this overlay only)."""
        self.discard(name)
        key = key_of(name, free)
        bisect.insort(self.keys, key)
        self.moved[name] = key

    def discard(self, name: str) -> None:
        """Remove ``name`` if present (in this overlay only)."""
        if name in self.moved:
            key = self.moved[name]
            if key is not None:
                del self.keys[bisect.bisect_left(self.keys, key)]
                self.moved[name] = None
            return
        if name in self.base:
            self.moved[name] = None
            self.hidden += 1

    def ascending(self, gpus: int, cores: int, memory: int) -> Iterator[str]:
        """As :meth:`FreeIndex.ascending`, over the base and this overlay's changes."""
        start = (gpus, cores, memory, "")
        base, own = self.base.keys, self.keys
        i, j = bisect.bisect_left(base, start), bisect.bisect_left(own, start)
        while True:
            while i < len(base) and base[i][3] in self.moved:
                i += 1
            if i < len(base) and (j >= len(own) or base[i] < own[j]):
                yield base[i][3]
                i += 1
            elif j < len(own):
                yield own[j][3]
                j += 1
            else:
                return

    def descending(self, gpus: int) -> Iterator[str]:
        """As :meth:`FreeIndex.descending`, over the base and this overlay's changes."""
        base, own = self.base.keys, self.keys
        i, j = len(base) - 1, len(own) - 1
        while True:
            while i >= 0 and base[i][3] in self.moved:
                i -= 1
            if i >= 0 and (j < 0 or base[i] > own[j]):
                key = base[i]
                i -= 1
            elif j >= 0:
                key = own[j]
                j -= 1
            else:
                return
            if key[0] < gpus:
                return
            yield key[3]
