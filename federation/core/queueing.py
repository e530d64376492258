"""The queue of a region: the jobs waiting for placement, in the order a pass takes them.

Entries are ``(order, job)``, ``order`` being (priority rank, submission time, arrival), kept sorted
so that a job is found by bisection. The queue also counts each priority level's jobs per tenant:
a pass asks how many tenants a level holds before it shares the level out by dominant share
(:meth:`~federation.core.planning.Pass._fair`), and with one tenant it takes the jobs in order as
far as it gets, instead of sorting the whole level into tenants' lines first; a burst of thousands
of queued jobs then costs a pass the jobs it looks at, not the queue's length.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import overload

Order = tuple[int, float, int]
Entry = tuple[Order, str]
Queued = tuple[Order, str, str]  # a job as the queue takes it: its order, its id, its tenant


class Queue:
    """A sorted sequence of ``(order, job)`` entries: read like a list (index, slice, iterate,
    ``len``), changed only through :meth:`add` and :meth:`remove`, which keep the per-level
    tenant counts."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._tenants: dict[int, dict[str, int]] = {}  # priority rank -> tenant -> jobs queued

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    @overload
    def __getitem__(self, index: int) -> Entry: ...
    @overload
    def __getitem__(self, index: slice) -> list[Entry]: ...
    def __getitem__(self, index: int | slice) -> Entry | list[Entry]:
        return self._entries[index]

    def level_end(self, rank: int, start: int) -> int:
        """The index after the last entry of priority ``rank``, looked for from ``start``."""
        return bisect.bisect_left(self._entries, ((rank + 1, -math.inf, -1), ""), start)

    def add(self, job: Queued) -> None:
        """Queue ``job`` (:attr:`JobView.queued <federation.core.views.JobView.queued>`) in its
        place by priority and age."""
        order, name, tenant = job
        bisect.insort(self._entries, (order, name))
        counts = self._tenants.setdefault(order[0], {})
        counts[tenant] = counts.get(tenant, 0) + 1

    def remove(self, job: Queued) -> bool:
        """Take ``job`` out of the queue, found under its order; False if it is not there."""
        order, name, tenant = job
        entries = self._entries
        index = bisect.bisect_left(entries, (order, name))
        if index < len(entries) and entries[index][1] == name:
            del entries[index]
            self._uncount(order[0], tenant)
            return True
        return False

    def remove_any(self, job: Queued) -> None:
        """Take ``job`` out wherever it is queued (a walk of the queue: for a job queued under
        another order than its own, which :meth:`remove` does not find)."""
        _, name, tenant = job
        for index, (order, queued) in enumerate(self._entries):
            if queued == name:
                del self._entries[index]
                self._uncount(order[0], tenant)
                return

    def tenants(self, rank: int) -> int:
        """How many tenants have jobs queued at priority ``rank``."""
        return len(self._tenants.get(rank, ()))

    def _uncount(self, rank: int, tenant: str) -> None:
        counts = self._tenants.get(rank)
        if counts is None or tenant not in counts:
            return
        counts[tenant] -= 1
        if not counts[tenant]:
            del counts[tenant]
            if not counts:
                del self._tenants[rank]
