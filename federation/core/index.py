"""Nodes indexed by free capacity, so a placement does not scan every node.

Theory of operation. Every usable node (live, offering, no claim in flight) has one key
``(free_gpus, free_cores, free_memory, name)`` in a sorted list. For a request ``(g, c, m)`` a
binary search finds the first key that could fit; scanning forward from there, the first node that
really fits (cores and memory too, a free slot, the required labels) is the binpack choice, the
lexicographically smallest fitting free capacity. Spread scans from the largest key down. For a
homogeneous pool the scan stops at the first entry, so the cost of a placement grows with
``log(nodes)``, not with the node count. Rare label requirements can still make a scan long; the
scan is bounded by the number of nodes.
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

    def copy(self) -> FreeIndex:
        """An independent copy (a pass re-keys nodes in its own copy as it gives capacity away)."""
        twin = FreeIndex()
        twin.keys = list(self.keys)
        twin.key = dict(self.key)
        return twin

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
