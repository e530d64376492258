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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from federation.core.views import JobView

Order = tuple[int, float, int]
Entry = tuple[Order, str]


class Queue(list[Entry]):
    """A sorted list of ``(order, job)`` entries (read it as a list; change it only through
    :meth:`add` and :meth:`remove`, which keep the per-level tenant counts)."""

    def __init__(self) -> None:
        super().__init__()
        self._tenants: dict[int, dict[str, int]] = {}  # priority rank -> tenant -> jobs queued

    def add(self, view: JobView) -> None:
        """Queue ``view``'s job in its place by priority and age."""
        bisect.insort(self, (view.order, view.record.id))
        counts = self._tenants.setdefault(view.order[0], {})
        tenant = view.record.spec.tenant
        counts[tenant] = counts.get(tenant, 0) + 1

    def remove(self, view: JobView) -> bool:  # type: ignore[override]
        """Take ``view``'s job out of the queue, found under its order; False if it is not there."""
        job = view.record.id
        index = bisect.bisect_left(self, (view.order, job))
        if index < len(self) and self[index][1] == job:
            del self[index]
            self._uncount(view.order[0], view.record.spec.tenant)
            return True
        return False

    def remove_any(self, view: JobView) -> None:
        """Take ``view``'s job out wherever it is queued (a walk of the queue: for a job queued
        under another order than its view's, which :meth:`remove` does not find)."""
        for index, (order, queued) in enumerate(self):
            if queued == view.record.id:
                del self[index]
                self._uncount(order[0], view.record.spec.tenant)
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
