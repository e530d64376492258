"""The vocabulary of the pure core: events in, commands out.

Events are what the daemon observed (a submission, an offer, the result of a compare-and-set);
commands are what the core wants written. Both are plain frozen Structs, tagged by class name:
serialisable, comparable, and free of I/O, so a recorded event sequence can be fed back to the
core and its commands compared (:mod:`federation.scheduler.journal` writes them,
:mod:`federation.audit.verify` re-runs them: ``fed audit verify``).
Time only enters through fields (``at``, ``now``).
"""

from __future__ import annotations

import msgspec

from federation.core.policy import Policy
from federation.schemas import JobEvent, JobRecord, Ledger, Offer, Submit, Summary

# --- events -------------------------------------------------------------------------------------


class Recovered(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Everything the region's JetStream holds at start: ledgers (with revisions) and job records.

    Nodes with a ledger count as silent from ``at`` until their first heartbeat arrives.
    """

    ledgers: dict[str, tuple[Ledger, int]]
    records: tuple[JobRecord, ...]
    at: float = 0.0


class Submitted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A workload request consumed from the workloads stream."""

    spec: Submit
    at: float
    traceparent: str = ""


class CancelRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A cancel request consumed from the workloads stream."""

    job: str
    reason: str
    at: float
    tenant: str = ""  # set when a tenant's credentials sent it: only that tenant's job is cancelled


class OfferSeen(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The latest offer of a node."""

    offer: Offer


class NodeDown(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A node's heartbeat expired (the server's delete marker)."""

    node: str
    at: float


class NodeUp(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A heartbeat from a node the core counts as down (or has never seen)."""

    node: str
    at: float


class ClaimWritten(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The proposed ledger of ``node`` was stored at ``revision``."""

    node: str
    revision: int


class ClaimConflict(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The ledger of ``node`` moved; this is its current value (None: the key does not exist)."""

    node: str
    ledger: Ledger | None
    revision: int


class JobReported(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """An agent's report on one attempt."""

    event: JobEvent


class PolicyChanged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The region's scheduling policy was (re)loaded."""

    policy: Policy


class ViewsSeen(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The other regions' latest summaries as this region sees them (each carries its own ``at``)."""

    views: dict[str, Summary]


class HandOffAnswered(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """What became of a hand-off request (:class:`SendHandOff`).

    ``outcome`` is the remote's answer (``accepted``, ``refused``, ``found``, ``absent``), or
    ``unreachable`` (nobody listened: the request was delivered to no one) or ``unknown`` (no
    answer in time: the request may have arrived).
    """

    job: str
    region: str
    outcome: str
    at: float
    reason: str = ""
    query: bool = False


class CancelPassed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Whether a cancel was stored in the region a job was forwarded to (:class:`SendCancel`)."""

    job: str
    ok: bool
    at: float


class HandOffOffered(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Another region (``origin``) offers this region a job, valid until ``expires_at``: may it run
    here? The core answers with a :class:`HandOffVerdict` and changes nothing; asking the core
    (rather than the daemon deciding by itself) journals the decision, so ``fed audit verify``
    re-derives it."""

    spec: Submit
    origin: str
    expires_at: float
    at: float


class DependencyState(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Another region's answer about a job (or job array) this region's jobs wait for: its state
    there ("" when that region does not know it), and where it went when it was handed on."""

    job: str
    region: str
    state: str
    at: float
    forwarded_to: str = ""


class Tick(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Time passed: run a scheduling pass and emit the writes the state needs."""

    now: float


Event = (
    Recovered
    | Submitted
    | CancelRequested
    | OfferSeen
    | NodeDown
    | NodeUp
    | ClaimWritten
    | ClaimConflict
    | JobReported
    | PolicyChanged
    | ViewsSeen
    | HandOffAnswered
    | CancelPassed
    | HandOffOffered
    | DependencyState
    | Tick
)


# --- commands -------------------------------------------------------------------------------------


class WriteLedger(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Store ``ledger`` as the node's ledger iff its revision is still ``expected_revision``.

    The daemon answers with :class:`ClaimWritten` or :class:`ClaimConflict`.
    """

    node: str
    ledger: Ledger
    expected_revision: int


class WriteJob(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Store the job record (the daemon CASes on the revision it last wrote or read)."""

    record: JobRecord


class SendHandOff(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Offer the job to ``region`` (or, with ``query``, ask whether it holds the job), valid until
    ``expires_at``; the daemon answers with :class:`HandOffAnswered` in a later batch."""

    job: str
    region: str
    spec: Submit
    expires_at: float
    query: bool = False


class SendCancel(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Pass a cancel on to the region a job was forwarded to (answered by :class:`CancelPassed`)."""

    job: str
    region: str
    reason: str


class HandOffVerdict(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The answer to :class:`HandOffOffered`: why this region refuses the job ("" accepts it).
    The daemon stores an accepted job as a submission before it answers the asking region."""

    job: str
    refusal: str = ""


Command = WriteLedger | WriteJob | SendHandOff | SendCancel | HandOffVerdict
