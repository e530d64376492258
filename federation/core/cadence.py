"""How often a region's nodes heartbeat and refresh their offers: one budget for the whole region.

Theory of operation
-------------------
Every node's heartbeat is a durable write with a time-to-live of three beats, and every offer a
durable write with a time-to-live too; at a fixed cadence their rate grows with the region (10,000
nodes beating every second are 10,000 writes a second before any job arrives). So the region sets
the cadence from a budget instead, the policy's ``node_messages_per_second`` (B), shared by its N
nodes: each node beats every

    interval = max(1 s, ceil(2 N / B)) seconds

and refreshes its offer as seldom (it still sends one as soon as what it can share changes,
checked locally every ``check_interval``). Beats take at most B/2 a second and refreshes at most
B/2. The heartbeat's time-to-live is three intervals, so a node is counted lost between 2 and 3
intervals after it stopped (2 N / B < 1: 2-3 s; B = 1,000 and N = 10,000: 40-60 s), and the core
waits at least one interval before deciding on a loss (:func:`settle`), so that a broker outage,
whose heartbeat markers arrive spread over an interval, still reads as every node silent at once.

The leader puts the cadence in its lease value at every renewal (:class:`~federation.schemas.Lease`
``heartbeat``, ``offer_refresh``, ``nodes``); agents read it there (a direct get of the lease key)
and follow it, never beating faster than their own ``heartbeat_interval``.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_INTERVAL = 1.0  # seconds: what a small region beats at (the agents' own default)
TTL_BEATS = 3  # a heartbeat lives three intervals


@dataclass(frozen=True)
class Cadence:
    """A region's cadence for ``nodes`` nodes: seconds between beats and between offer refreshes."""

    heartbeat: float
    offer_refresh: float
    nodes: int
    budget: float

    @property
    def loss_after(self) -> float:
        """At most this many seconds after a node's last beat, it counts as lost."""
        return TTL_BEATS * self.heartbeat


def region_cadence(nodes: int, budget: float) -> Cadence:
    """The cadence of a region of ``nodes`` nodes within ``budget`` beats and offers a second."""
    interval = max(MIN_INTERVAL, float(math.ceil(2 * nodes / budget))) if budget > 0 else MIN_INTERVAL
    return Cadence(heartbeat=interval, offer_refresh=interval, nodes=nodes, budget=budget)


def settle(node_settle: float, current: Cadence) -> float:
    """How long after a loss the core waits before deciding on it: the policy's ``node_settle``,
    and at least one heartbeat interval (the markers of a whole region arrive spread over one)."""
    return max(node_settle, current.heartbeat)


__all__ = ["MIN_INTERVAL", "TTL_BEATS", "Cadence", "region_cadence", "settle"]
