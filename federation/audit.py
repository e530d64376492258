"""The audit trail: read a region's (or the hub's) audit stream, print it, check the invariants.

Theory of operation
-------------------
Each region's ``fed-<region>-audit`` stream *sources* what the region already writes: the
workloads stream (submissions, cancels), the status stream (agents' reports), and the ledger and
job-record buckets (every claim, release and record change: each record carries its decision,
the "why here / why pending" data). The buckets keep 64 versions per key so the source never
misses a superseded one. The stream refuses delete and purge, and the hub's ``AUDIT_ALL`` sources
every region's audit stream. Nothing is added to the placement path: the server copies.

Every message in it carries ``Nats-Stream-Source: <origin stream> <origin sequence> ...``. The
origin sequences of each origin are consecutive, so a missing message is seen as a gap, and
reported with Jepsen's taxonomy: a **lost prefix** (the first message seen is not the origin's
first), a **lost middle** (a hole between two messages seen) or a **lost postfix** (the origin
holds messages after the last one seen). A gap is never skipped silently.

:class:`Checker` rebuilds the state from the events, one pass, and checks the invariants of
DESIGN.md: I1 (a ledger write that adds an allocation stays within the capacity it was made
against, and no core or GPU is given twice), I2 (an attempt is in at most one node's ledger, and a
job runs in at most one region), I3 (every submission has a record), I4 (one terminal state), I5
(states only move forward), I6 (no write carries an older epoch than one already written to the
same key), I7 (a repeated submission leaves one job: a duplicate that changed anything would show
as a record moving back or ending twice, I5/I4; ``duplicates`` counts them). I8 (replay equals
live state) compares the rebuilt last values with the live buckets when the caller passes them
(:meth:`Checker.finish`).

The JSON-lines form of :class:`AuditEvent` is stable (documented in ``subjects.md``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from federation import subjects
from federation.bus import Bus, Delivery
from federation.core.views import ALLOWED
from federation.errors import RemoteProtocolError
from federation.schemas import (
    TERMINAL_STATES,
    Cancel,
    JobEvent,
    JobRecord,
    Ledger,
    Submit,
    decode_ledger,
    decode_message,
    decode_record,
)

Kind = Literal["submit", "cancel", "report", "ledger", "record", "inputs", "unreadable"]
SOURCE_HEADER = "Nats-Stream-Source"
Attempt = tuple[str, int, int]  # (job, attempt, gang member)
SETTLE = 60.0  # seconds: a submission younger than this may simply not be processed yet (I3)


class AuditEvent(msgspec.Struct, kw_only=True):
    """One audited fact (``fed audit replay --format jsonl`` prints one per line).

    ``seq`` is the audit stream's sequence, ``origin``/``origin_seq`` where the fact was first
    written; ``at`` is when the audit stream stored it. ``value`` is the message or stored value,
    as written.
    """

    seq: int
    at: float
    region: str
    kind: Kind
    origin: str = ""
    origin_seq: int = 0
    job: str = ""
    node: str = ""
    tenant: str = ""
    state: str = ""
    attempt: int = 0
    epoch: int = 0
    detail: str = ""
    value: msgspec.Raw = msgspec.Raw(b"null")


Parsed = Submit | Cancel | JobEvent | Ledger | JobRecord | None


def parse(delivery: Delivery) -> tuple[AuditEvent, Parsed]:
    """The event of one audit stream message and the decoded value (None when unreadable)."""
    origin, _, rest = delivery.headers.get(SOURCE_HEADER, "").partition(" ")
    origin = origin.partition(":")[0]  # a source in another domain is named "<stream>:<hash>"
    origin_seq = int(rest.split(" ", 1)[0]) if rest[:1].isdigit() else 0
    subject, data = delivery.subject, delivery.data
    base = AuditEvent(
        seq=delivery.sequence,
        at=delivery.timestamp,
        region="",
        kind="unreadable",
        origin=origin,
        origin_seq=origin_seq,
        value=msgspec.Raw(data or b"null"),
    )
    fill = msgspec.structs.replace
    try:
        if subject.startswith("$KV."):
            _, bucket, key = subject.split(".", 2)
            region = bucket.split("-", 2)[2]
            if bucket.startswith("fed-ledger-"):
                ledger = decode_ledger(data)
                jobs = sorted({f"{a.job}#{a.attempt}" for a in ledger.allocations})
                detail = f"{len(ledger.allocations)} allocations: {' '.join(jobs)}" if jobs else "empty"
                event = fill(base, region=region, kind="ledger", node=key, epoch=ledger.epoch, detail=detail)
                return event, ledger
            record = decode_record(data)
            event = fill(
                base,
                region=region,
                kind="record",
                job=key,
                node=record.node,
                tenant=record.spec.tenant,
                state=record.state,
                attempt=record.attempt,
                epoch=record.epoch,
                detail=record.reason,
            )
            return event, record
        region = subject.split(".")[1]
        if subject == subjects.inputs(region):  # the core's journal (fed audit verify reads it)
            return fill(base, region=region, kind="inputs", detail=f"{len(data)} bytes of core inputs"), None
        message = decode_message(data)
        match message:
            case Submit():
                detail = " ".join(message.command)[:200]
                kind: Kind = "submit"
                event = fill(
                    base, region=region, kind=kind, job=message.id, tenant=message.tenant, detail=detail
                )
            case Cancel():
                event = fill(base, region=region, kind="cancel", job=message.id, detail=message.reason)
            case JobEvent():
                code = f" exit {message.exit_code}" if message.exit_code is not None else ""
                event = fill(
                    base,
                    region=region,
                    kind="report",
                    job=message.job,
                    node=message.node,
                    state=message.kind,
                    attempt=message.attempt,
                    epoch=message.epoch,
                    detail=(message.reason or "") + code,
                )
            case _:
                raise RemoteProtocolError(f"unexpected {type(message).__name__}")
        return event, message
    except (RemoteProtocolError, ValueError, IndexError) as exc:
        region = subject.split(".")[1] if subject.startswith("fed.") else ""
        return fill(base, region=region, detail=f"{subject}: {exc}"), None


# --- checking -----------------------------------------------------------------------------------


@dataclass
class Violation:
    """A broken invariant and the audit sequences that prove it."""

    invariant: str
    message: str
    events: list[int]


@dataclass
class Gap:
    """Missing origin messages: ``kind`` is ``prefix``, ``middle`` or ``postfix``."""

    origin: str
    kind: Literal["prefix", "middle", "postfix"]
    first: int  # first missing origin sequence
    last: int  # last missing origin sequence
    after: int = 0  # the audit sequence after which they are missing (0: before the first)


@dataclass
class Report:
    """What :meth:`Checker.finish` found."""

    events: int = 0
    violations: list[Violation] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    open_jobs: int = 0
    duplicates: int = 0  # submissions of a job id already submitted (harmless by I7)

    @property
    def ok(self) -> bool:
        return not (self.violations or self.gaps or self.unreadable)


class Checker:
    """Rebuilds ledgers and records from audit events and checks the invariants (one pass)."""

    def __init__(self) -> None:
        self.report = Report()
        self.next_seq: dict[str, tuple[int, int]] = {}  # origin -> (next origin seq expected, audit seq)
        self.first_seq: dict[str, int] = {}
        # only plain values are kept (no Structs): the garbage collector then has nothing to scan
        # as the history grows, and a check runs at a steady rate over millions of events
        self.ledgers: dict[tuple[str, str], tuple[frozenset[Attempt], int, int]] = {}  # -> (held, epoch, seq)
        self.records: dict[tuple[str, str], tuple[str, int, int]] = {}  # (region, job) -> (state, epoch, seq)
        self.versions: dict[tuple[str, str], tuple[int, bytes]] = {}  # (bucket, key) -> (origin seq, value)
        self.held: dict[tuple[str, int, int], tuple[str, str, int]] = {}  # attempt -> (region, node, seq)
        self.submitted: dict[tuple[str, str], tuple[float, int]] = {}  # (region, job) -> (at, seq)
        self.running_in: dict[str, dict[str, int]] = {}  # job -> region -> seq of a placement there
        self.last_at = 0.0

    def violate(self, invariant: str, message: str, *events: int) -> None:
        self.report.violations.append(Violation(invariant, message, sorted(set(events))))

    def feed(self, event: AuditEvent, value: Parsed) -> None:
        """Apply one event."""
        self.report.events += 1
        self.last_at = max(self.last_at, event.at)
        self._sequence(event)
        match value:
            case None if event.kind != "inputs":
                self.report.unreadable.append(event.seq)
            case Ledger():
                self._ledger(event, value)
                key = (subjects.ledger_bucket(event.region), event.node)
                self.versions[key] = (event.origin_seq, bytes(event.value))
            case JobRecord():
                self._record(event, value)
                self.versions[(subjects.jobs_bucket(event.region), event.job)] = (
                    event.origin_seq,
                    bytes(event.value),
                )
            case Submit():
                if (event.region, value.id) in self.submitted:
                    self.report.duplicates += 1
                self.submitted.setdefault((event.region, value.id), (event.at, event.seq))

    def _sequence(self, event: AuditEvent) -> None:
        if not event.origin:
            return
        expected = self.next_seq.get(event.origin)
        if expected is None:
            self.first_seq[event.origin] = event.origin_seq
            if event.origin_seq > 1:
                self.report.gaps.append(Gap(event.origin, "prefix", 1, event.origin_seq - 1))
        elif event.origin_seq > expected[0]:
            self.report.gaps.append(
                Gap(event.origin, "middle", expected[0], event.origin_seq - 1, after=expected[1])
            )
        if expected is None or event.origin_seq >= expected[0]:
            self.next_seq[event.origin] = (event.origin_seq + 1, event.seq)

    def _ledger(self, event: AuditEvent, ledger: Ledger) -> None:
        key = (event.region, event.node)
        had, epoch, seq = self.ledgers.get(key, (frozenset(), 0, 0))
        if seq and ledger.epoch < epoch:
            self.violate(
                "I6", f"{event.node}: ledger written with epoch {ledger.epoch} after {epoch}", seq, event.seq
            )
        added = [a for a in ledger.allocations if (a.job, a.attempt, a.member) not in had]
        cores = [c for a in ledger.allocations for c in a.cores]
        gpus = [g for a in ledger.allocations for g in a.gpus]
        if len(cores) != len(set(cores)) or len(gpus) != len(set(gpus)):
            self.violate("I1", f"{event.node}: a core or GPU is allocated twice", event.seq)
        capacity = ledger.capacity
        if added and capacity is not None:
            cpu = sum(a.cpu for a in ledger.allocations)
            memory = sum(a.memory for a in ledger.allocations)
            if cpu > capacity.cpu or memory > capacity.memory or len(gpus) > capacity.gpu:
                self.violate(
                    "I1",
                    f"{event.node}: allocations cpu={cpu} memory={memory} gpu={len(gpus)} exceed the "
                    f"capacity offered (cpu={capacity.cpu} memory={capacity.memory} gpu={capacity.gpu}) "
                    f"when {', '.join(a.job for a in added)} was added",
                    event.seq,
                )
        now = frozenset((a.job, a.attempt, a.member) for a in ledger.allocations)
        for gone in had - now:
            if self.held.get(gone, ("", "", 0))[:2] == (event.region, event.node):
                del self.held[gone]
        for allocation in added:
            attempt = (allocation.job, allocation.attempt, allocation.member)
            other = self.held.get(attempt)
            if other is not None and other[:2] != (event.region, event.node):
                self.violate(
                    "I2",
                    f"{allocation.job} attempt {allocation.attempt} is in the ledgers of "
                    f"{other[0]}/{other[1]} and {event.region}/{event.node} at once",
                    other[2],
                    event.seq,
                )
            self.held[attempt] = (event.region, event.node, event.seq)
            regions = self.running_in.setdefault(allocation.job, {})
            regions.setdefault(event.region, event.seq)
        self.ledgers[key] = (now, ledger.epoch, event.seq)

    def _record(self, event: AuditEvent, record: JobRecord) -> None:
        key = (event.region, record.id)
        before = self.records.get(key)
        if before is not None:
            state, epoch, seq = before
            if record.epoch < epoch:
                self.violate(
                    "I6",
                    f"{record.id}: record written with epoch {record.epoch} after {epoch}",
                    seq,
                    event.seq,
                )
            if state in TERMINAL_STATES and record.state != state:
                self.violate("I4", f"{record.id}: {state}, then {record.state}", seq, event.seq)
            elif record.state != state and record.state not in ALLOWED.get(state, ()):
                self.violate("I5", f"{record.id}: moved back from {state} to {record.state}", seq, event.seq)
        self.records[key] = (record.state, record.epoch, event.seq)

    def finish(
        self,
        origins_last: dict[str, int] | None = None,
        live: dict[tuple[str, str], tuple[bytes, int]] | None = None,
    ) -> Report:
        """Close the pass: postfix gaps (``origins_last``: each origin's last sequence now), I3,
        cross-region I2, and I8 against ``live`` ((bucket, key) -> (value, revision)) when given:
        each key's last value in the audit must be the live one, unless the live one is newer
        than everything read."""
        for origin, last in sorted((origins_last or {}).items()):
            expected = self.next_seq.get(origin)
            first_missing = expected[0] if expected else 1
            if last >= first_missing:
                self.report.gaps.append(
                    Gap(origin, "postfix", first_missing, last, after=expected[1] if expected else 0)
                )
        for (region, job), (at, seq) in sorted(self.submitted.items()):
            if (region, job) not in self.records and at < self.last_at - SETTLE:
                self.violate("I3", f"{job}: submitted to {region} but never recorded", seq)
        for job, regions in sorted(self.running_in.items()):
            if len(regions) > 1:
                self.violate(
                    "I2", f"{job} was placed in {len(regions)} regions: {sorted(regions)}", *regions.values()
                )
        self.report.open_jobs = sum(
            1
            for state, _, _ in self.records.values()
            if state not in TERMINAL_STATES and state != "forwarded"
        )
        for (bucket, key), (value, revision) in sorted((live or {}).items()):
            if revision >= self.next_seq.get(f"KV_{bucket}", (1, 0))[0]:
                continue  # written after the audit was read
            seen, audited = self.versions.get((bucket, key), (0, b""))
            if seen != revision or audited != value:
                self.violate("I8", f"{bucket}/{key}: live revision {revision}, the audit's last {seen}")
        return self.report


# --- reading ------------------------------------------------------------------------------------


async def events(
    bus: Bus, stream: str, *, from_seq: int = 0, since: float = 0.0
) -> AsyncIterator[tuple[AuditEvent, Parsed]]:
    """The audit stream's events from ``from_seq`` (or stored after ``since``), as it is now."""
    async for delivery in bus.follow(stream, ">", start_sequence=from_seq, until_caught_up=True):
        if since and delivery.timestamp < since:
            continue
        yield parse(delivery)


def matches(event: AuditEvent, *, job: str = "", node: str = "", tenant: str = "") -> bool:
    """Whether ``event`` concerns the given job, node and tenant (empty: any). A ledger event
    concerns every job it holds."""
    held = event.detail.partition(": ")[2].split() if event.kind == "ledger" else []
    if job and event.job != job and not any(part.partition("#")[0] == job for part in held):
        return False
    return (not node or event.node == node) and (not tenant or event.tenant == tenant)


async def origins_last(bus: Bus, names: Iterable[str]) -> dict[str, int]:
    """The last sequence of each origin stream now (for postfix gaps); unreachable ones are left out."""
    out: dict[str, int] = {}
    for name in names:
        last = await bus.last_sequence(name)
        if last is not None:
            out[name] = last
    return out


__all__ = ["AuditEvent", "Checker", "Gap", "Report", "Violation", "events", "matches", "parse"]
