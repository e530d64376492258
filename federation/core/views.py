"""The core's view of its region: nodes, jobs, gangs in flight, and the state machine's edges.

Plain data, mutated only by :class:`~federation.core.state.RegionCore`. ``ALLOWED`` is the
forward-only job state machine (I5). :class:`Region` is what the core's parts (the planning pass,
the spillover) see of the region state: they read it and change it only through its methods, and
import this protocol instead of the state's module, so the core has no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from federation.core import capacity
from federation.schemas import Allocation, Decision, JobRecord, JobState, Ledger, Offer, Submit, Transition

if TYPE_CHECKING:
    from federation.core.index import FreeIndex
    from federation.core.policy import Policy
    from federation.core.queueing import Queue

# The forward-only state machine (I5). "preempted" and "forwarded" arrive with later policies.
ALLOWED: dict[str, frozenset[str]] = {
    # pending -> forwarded: another region accepted the job (its life goes on in that region)
    "pending": frozenset({"placed", "cancelled", "failed", "forwarded"}),
    "placed": frozenset({"running", "succeeded", "failed", "cancelled", "lost", "preempted", "pending"}),
    # running -> pending: the node was lost and the job is replaced by a new attempt
    "running": frozenset({"succeeded", "failed", "cancelled", "lost", "preempted", "pending"}),
    "preempted": frozenset({"pending", "cancelled", "failed"}),
    "forwarded": frozenset({"succeeded", "failed", "cancelled", "lost"}),
}


@dataclass(slots=True)
class NodeView:
    """One node as the core sees it."""

    name: str
    offer: Offer | None = None
    alive: bool = True
    ledger: Ledger | None = None
    revision: int = 0
    proposal: Ledger | None = None
    proposal_jobs: list[str] = field(default_factory=list)
    proposal_victims: list[str] = field(default_factory=list)
    proposal_reason: str = ""
    proposal_activations: list[tuple[str, int]] = field(default_factory=list)
    activations: set[tuple[str, int]] = field(default_factory=set)
    releases: set[tuple[str, int]] = field(default_factory=set)
    down_at: float = 0.0
    lost_from: float = 0.0  # node-loss deadlines count from here (down_at, or later after a grace)
    free: capacity.Free | None = None

    def current(self) -> Ledger:
        """The last ledger known to be stored (an empty one when the key does not exist yet)."""
        return self.ledger if self.ledger is not None else Ledger(node=self.name)

    def released(self, allocation: Allocation) -> bool:
        """Whether this exact attempt waits to be removed from the ledger."""
        return (allocation.job, allocation.attempt) in self.releases


@dataclass(slots=True)
class JobView:
    """One job: its record plus in-memory bookkeeping that is never stored."""

    record: JobRecord
    order: tuple[int, float, int]
    claiming: str = ""
    cancel_pending: str = ""
    decision: Decision | None = None
    gang: GangProgress | None = None

    @property
    def queued(self) -> tuple[tuple[int, float, int], str, str]:
        """The job as the region's queue takes it (:class:`federation.core.queueing.Queue`)."""
        return self.order, self.record.id, self.record.spec.tenant


@dataclass(slots=True)
class GangProgress:
    """A gang being claimed: nodes whose held claims are in flight, then nodes being activated."""

    nodes: list[str]  # the node of each member, in member order
    pending: set[str]
    activating: set[str] = field(default_factory=set)
    failed: str = ""


def next_attempt(record: JobRecord) -> int:
    """The attempt number a placement of the pending ``record`` gives its allocation.

    A retry's record goes back to ``pending`` already carrying its new attempt's number (so within
    one attempt the state only moves forward) and names no node; a fresh submission has made no
    attempt yet (0) and makes attempt 1. A pending record that still names a node was requeued by
    an earlier version, which kept the old attempt's number and node: its next attempt is one more.
    """
    if record.node:
        return record.attempt + 1
    return max(record.attempt, 1)


def holds(ledger: Ledger, key: tuple[str, int]) -> bool:
    """Whether ``ledger`` still holds attempt ``key`` = (job, attempt)."""
    found = ledger.find(key[0])
    return found is not None and found.attempt == key[1]


__all__ = ["ALLOWED", "GangProgress", "JobView", "NodeView", "holds", "next_attempt"]


def rebuilt(allocation: Allocation, node: str, region: str) -> JobRecord:
    """The record of a job found claimed in ``node``'s ledger with no record (the scheduler died
    between the claim and the record): everything needed is in the allocation."""
    at = allocation.placed_at
    spec = Submit(
        id=allocation.job,
        command=list(allocation.command),
        cpu=allocation.cpu,
        memory=allocation.memory,
        gpu=len(allocation.gpus),
        priority=allocation.priority,
        tenant=allocation.tenant,
        env=dict(allocation.env),
        submitted_at=at,
        custom=dict(allocation.custom),
        on_node_lost=allocation.on_node_lost,
        max_attempts=allocation.max_attempts,
    )
    reason = f"placed on {node} (record rebuilt from the node's ledger)"
    return JobRecord(
        id=allocation.job,
        region=region,
        spec=spec,
        state="placed",
        attempt=allocation.attempt,
        node=node,
        reason=reason,
        submitted_at=at,
        updated_at=at,
        traceparent=allocation.traceparent,
        history=(Transition(state="pending", at=at), Transition(state="placed", at=at, reason=reason)),
    )


class Region(Protocol):
    """A region's state as its parts see it (:class:`~federation.core.state.RegionCore`)."""

    region: str
    policy: Policy
    index: FreeIndex  # usable nodes by free capacity (a pass reads it; only the state changes it)
    nodes: dict[str, NodeView]
    jobs: dict[str, JobView]
    queue: Queue  # pending jobs by (priority, age), placeable now
    reclaims: set[str]  # jobs within quota waiting for borrowers to give it back
    arrays: dict[str, list[str]]  # job array id -> its elements here

    @property
    def allocated(self) -> dict[str, set[str]]:
        """Jobs held by some ledger (an attempt not yet released), with the nodes holding them."""
        ...

    def array_holding(self) -> dict[str, int]:
        """Per job array, how many elements hold an allocation or have a claim in flight."""
        ...

    def waits_for(self, spec: Submit) -> str:
        """Why a job with dependencies may not start yet ("" when it may)."""
        ...

    def allocation(
        self, view: JobView, free: capacity.Free, now: float, member: int = 0, members: int = 1
    ) -> Allocation:
        """Take the devices ``view``'s job needs from ``free`` and describe the allocation."""
        ...

    def move(self, job: str, state: JobState, at: float, reason: str, **changes: object) -> None:
        """Move a job along the state machine (raises on an illegal move), recording why."""
        ...

    def amend(self, job: str, **changes: object) -> None:
        """Change fields of a job's record other than its state; the record is written next tick."""
        ...

    def unwritten(self, job: str) -> bool:
        """Whether the job's record has changes not yet handed out to be written."""
        ...

    def defer_cancel(self, job: str, reason: str) -> None:
        """Keep a cancel until what is in flight for the job (a claim, a hand-off) is decided."""
        ...

    def take_deferred_cancel(self, job: str) -> str:
        """The cancel kept for the job ("" when none), no longer kept."""
        ...

    def unqueue(self, job: str) -> None:
        """Take a pending job out of the queue (it is being handed to another region)."""
        ...

    def requeue_now(self, job: str) -> None:
        """Put a pending job back in the queue, in its place by priority and age."""
        ...
