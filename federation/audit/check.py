"""``fed audit check``: rebuild the state from the audit trail, one pass, and check the invariants.

Theory of operation
-------------------
Each message of a region's (or the hub's) audit stream is read as an
:class:`~federation.audit.trail.AuditEvent` (:mod:`federation.audit.trail`), with the origin
stream and origin sequence its ``Nats-Stream-Source`` header names. The origin sequences of each
origin are consecutive, so a missing message is seen as a gap, and reported with Jepsen's
taxonomy: a **lost prefix** (the first message seen is not the origin's first), a **lost
middle** (a hole between two messages seen) or a **lost postfix** (the origin holds messages
after the last one seen). A gap is never skipped silently; only history from before the audit
stream existed (its ``baseline`` metadata, on a region upgraded to it) is not one. :func:`read`
reads each origin's last sequence *before* the pass and then reads until the audit has copied up
to it, so a busy region does not show a postfix that is only copying lag.

:class:`Checker` rebuilds the state from the events, one pass, and checks the invariants (README,
"Concepts"): I1 (a ledger write that adds an allocation gives only devices the node offered, no
core or GPU twice, and stays within the node's capacity and the memory offered), I2 (a running
attempt is in at most one node's ledger of its region, and an at-most-once job never runs in two
regions at once, by the writers' clocks), I3 (every submission the scheduler has acknowledged has
a record or a quarantine entry; refused input is evidence, not a violation), I4 (one terminal
state), I5 (states only move forward), I6 (no write carries an older epoch than one already
written to the same key), I7 (a repeated submission leaves one job: a duplicate that changed
anything would show as a record moving back or ending twice, I5/I4; ``duplicates`` counts them).
I8 (replay equals live state) compares the rebuilt last values with the live buckets, read after
the pass (:meth:`Checker.finish`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from federation import subjects
from federation.audit.trail import AuditEvent, Parsed, events
from federation.bus import Bus
from federation.core.views import ALLOWED
from federation.schemas import TERMINAL_STATES, Allocation, JobRecord, Ledger, Quarantined, Submit

Attempt = tuple[str, int, int]  # (job, attempt, gang member)
SETTLE = 60.0  # seconds: without the consumer's ack floor, a younger submission may be unhandled (I3)
CLOCK_SKEW = 1.0  # seconds two regions' clocks may disagree (cross-region I2)


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
    refused: int = 0  # inputs the scheduler quarantined (bad messages: evidence, not violations)
    unprocessed: int = 0  # inputs the scheduler has not acknowledged yet (not judged)

    @property
    def ok(self) -> bool:
        return not (self.violations or self.gaps or self.unreadable)


class Checker:
    """Rebuilds ledgers and records from audit events and checks the invariants (one pass).

    ``baseline`` is each origin's last sequence when the audit stream was created (a region
    upgraded from a layout without one): history below it was never audited and is not a gap.
    """

    def __init__(self, baseline: dict[str, int] | None = None, clock_skew: float = CLOCK_SKEW) -> None:
        self.report = Report()
        self.baseline = dict(baseline or {})
        self.clock_skew = clock_skew
        self.next_seq: dict[str, tuple[int, int]] = {}  # origin -> (next origin seq expected, audit seq)
        self.last_seq = 0  # the last audit sequence fed
        # only plain values are kept (no Structs): the garbage collector then has nothing to scan
        # as the history grows, and a check runs at a steady rate over millions of events
        self.ledgers: dict[tuple[str, str], tuple[frozenset[Attempt], frozenset[Attempt], int, int]] = {}
        self.records: dict[tuple[str, str], tuple[str, int, int]] = {}  # (region, job) -> (state, epoch, seq)
        self.versions: dict[tuple[str, str], tuple[int, bytes]] = {}  # (bucket, key) -> (origin seq, value)
        self.running: dict[tuple[str, Attempt], tuple[str, int]] = {}  # (region, attempt) -> (node, seq)
        # (region, job) -> (at, seq, origin, origin seq, subject) of its first submission
        self.submitted: dict[tuple[str, str], tuple[float, int, str, int, str]] = {}
        self.unread: list[tuple[str, float, int, str, int, str]] = []  # unreadable inputs, as above
        # what the scheduler refused: exactly (input stream, sequence) where the trail names the
        # input stream (a region's own), else by subject (the hub's copy names the region's trail)
        self.quarantined: set[tuple[str, int]] = set()
        self.refused_on: dict[str, int] = {}  # subject -> refused messages on it
        self.written: dict[str, float] = {}  # region -> when its scheduler last wrote (I3 fallback)
        self.once: dict[str, bool] = {}  # job -> at most once across regions
        self.members: dict[tuple[str, str], int] = {}  # (job, region) -> running members there
        self.spans: dict[str, list[tuple[str, float, float, int]]] = {}  # job -> (region, from, to, seq)
        self.opened: dict[tuple[str, str], tuple[float, int]] = {}  # (job, region) -> (from, seq)

    def violate(self, invariant: str, message: str, *events: int) -> None:
        self.report.violations.append(Violation(invariant, message, sorted(set(events))))

    def feed(self, event: AuditEvent, value: Parsed) -> None:
        """Apply one event."""
        self.report.events += 1
        self.last_seq = max(self.last_seq, event.seq)
        self._sequence(event)
        match value:
            case None if event.kind != "inputs":
                if event.subject.startswith("fed."):  # an input: judged at the end (quarantined?)
                    self.unread.append(
                        (event.region, event.at, event.seq, event.origin, event.origin_seq, event.subject)
                    )
                else:  # a value the scheduler wrote
                    self.report.unreadable.append(event.seq)
            case Ledger():
                self.written[event.region] = event.at
                self._ledger(event, value)
                key = (subjects.ledger_bucket(event.region), event.node)
                self.versions[key] = (event.origin_seq, bytes(event.value))
            case JobRecord():
                self.written[event.region] = event.at
                self.once.setdefault(value.id, value.spec.semantics == "at_most_once")
                self._record(event, value)
                self.versions[(subjects.jobs_bucket(event.region), event.job)] = (
                    event.origin_seq,
                    bytes(event.value),
                )
            case Submit():
                self.once.setdefault(value.id, value.semantics == "at_most_once")
                if (event.region, value.id) in self.submitted:
                    self.report.duplicates += 1
                self.submitted.setdefault(
                    (event.region, value.id),
                    (event.at, event.seq, event.origin, event.origin_seq, event.subject),
                )
            case Quarantined():
                stream = {"workloads": subjects.workloads_stream, "status": subjects.status_stream}.get(
                    subjects.last_token(event.subject)
                )
                if stream is not None:
                    self.quarantined.add((stream(event.region), value.sequence))
                self.refused_on[value.subject] = self.refused_on.get(value.subject, 0) + 1

    def caught_up(self, origins_last: dict[str, int]) -> bool:
        """Whether every origin's messages up to ``origins_last`` have been fed."""
        return all(self.next_seq.get(origin, (1, 0))[0] > last for origin, last in origins_last.items())

    def _gap(
        self, origin: str, kind: Literal["prefix", "middle", "postfix"], first: int, last: int, after: int
    ) -> None:
        first = max(first, self.baseline.get(origin, 0) + 1)  # before the audit existed: not a gap
        if first <= last:
            self.report.gaps.append(Gap(origin, kind, first, last, after=after))

    def _sequence(self, event: AuditEvent) -> None:
        if not event.origin:
            return
        expected = self.next_seq.get(event.origin)
        if expected is None:
            self._gap(event.origin, "prefix", 1, event.origin_seq - 1, 0)
        elif event.origin_seq > expected[0]:
            self._gap(event.origin, "middle", expected[0], event.origin_seq - 1, expected[1])
        if expected is None or event.origin_seq >= expected[0]:
            self.next_seq[event.origin] = (event.origin_seq + 1, event.seq)

    def _ledger(self, event: AuditEvent, ledger: Ledger) -> None:
        key = (event.region, event.node)
        had, was_running, epoch, seq = self.ledgers.get(key, (frozenset(), frozenset(), 0, 0))
        if seq and ledger.epoch < epoch:
            self.violate(
                "I6", f"{event.node}: ledger written with epoch {ledger.epoch} after {epoch}", seq, event.seq
            )
        now = frozenset((a.job, a.attempt, a.member) for a in ledger.allocations)
        running = frozenset((a.job, a.attempt, a.member) for a in ledger.allocations if not a.held)
        added = [a for a in ledger.allocations if (a.job, a.attempt, a.member) not in had]
        if not seq and event.origin_seq <= self.baseline.get(event.origin, 0):
            added = []  # first seen from before the audit existed: held already, not added here
        self._capacity(event, ledger, added)
        for gone in was_running - running:
            if self.running.get((event.region, gone), ("", 0))[0] == event.node:
                del self.running[(event.region, gone)]
            self._members(gone[0], event.region, -1, ledger.updated_at or event.at, event.seq)
        started = running - was_running
        for attempt in sorted(started) if len(started) > 1 else started:
            other = self.running.get((event.region, attempt))
            if other is not None and other[0] != event.node:
                self.violate(
                    "I2",
                    f"{attempt[0]} attempt {attempt[1]} is in the ledgers of {other[0]} and {event.node} "
                    f"of {event.region} at once",
                    other[1],
                    event.seq,
                )
            self.running[(event.region, attempt)] = (event.node, event.seq)
            self._members(attempt[0], event.region, +1, ledger.updated_at or event.at, event.seq)
        self.ledgers[key] = (now, running, ledger.epoch, event.seq)

    def _capacity(self, event: AuditEvent, ledger: Ledger, added: list[Allocation]) -> None:
        """I1: no device given twice; what a write adds was offered and fits the node."""
        cores = [c for a in ledger.allocations for c in a.cores]
        gpus = [g for a in ledger.allocations for g in a.gpus]
        if len(cores) != len(set(cores)) or len(gpus) != len(set(gpus)):
            self.violate("I1", f"{event.node}: a core or GPU is allocated twice", event.seq)
            return
        capacity = ledger.capacity
        if not added or capacity is None:
            return
        names = ", ".join(a.job for a in added)
        cpu = sum(a.cpu for a in ledger.allocations)
        memory = sum(a.memory for a in ledger.allocations)
        if cpu > capacity.cpu or memory > capacity.memory or len(gpus) > capacity.gpu:
            self.violate(
                "I1",
                f"{event.node}: allocations cpu={cpu} memory={memory} gpu={len(gpus)} exceed the node's "
                f"capacity (cpu={capacity.cpu} memory={capacity.memory} gpu={capacity.gpu}) when {names} "
                "was added",
                event.seq,
            )
            return
        outside = []
        if capacity.cores is not None:  # absent on ledgers written before offers were recorded
            offered_cores = set(capacity.cores)
            outside += [str(c) for a in added for c in a.cores if c not in offered_cores]
        if capacity.gpus is not None:
            offered_gpus = set(capacity.gpus)
            outside += [g for a in added for g in a.gpus if g not in offered_gpus]
        if outside:
            self.violate(
                "I1", f"{event.node}: {names} was given devices not offered: {' '.join(outside)}", event.seq
            )
        elif capacity.offered_memory is not None and memory > capacity.offered_memory:
            self.violate(
                "I1",
                f"{event.node}: allocations hold memory={memory}, more than the {capacity.offered_memory} "
                f"offered, when {names} was added",
                event.seq,
            )

    def _members(self, job: str, region: str, change: int, at: float, seq: int) -> None:
        """Count a job's running members per region; a region's span opens at its first and closes
        at its last (cross-region I2 compares the spans at the end)."""
        key = (job, region)
        count = self.members.get(key, 0) + change
        if count > 0:
            self.members[key] = count
            if change > 0 and count == 1:
                self.opened[key] = (at, seq)
            return
        self.members.pop(key, None)
        began, first = self.opened.pop(key, (at, seq))
        self.spans.setdefault(job, []).append((region, began, at, first))

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
        processed: dict[str, int] | None = None,
    ) -> Report:
        """Close the pass and return the report.

        ``origins_last`` (each origin's last sequence, read before the pass) gives postfix gaps;
        ``processed`` (each input stream's acknowledged floor, read before that) says which
        submissions and reports the scheduler has handled: one without a record or a quarantine
        entry is a lost job (I3); an input stream not listed falls back to a settle time.
        ``live`` ((bucket, key) -> (value, revision), read after the pass) checks I8: each key's
        last audited value is the live one, unless the live one is newer than the pass.
        """
        for origin, last in sorted((origins_last or {}).items()):
            expected = self.next_seq.get(origin)
            self._gap(origin, "postfix", expected[0] if expected else 1, last, expected[1] if expected else 0)
        self._lost(processed or {})
        runs = {job: list(spans) for job, spans in self.spans.items()}
        for (job, region), (at, seq) in self.opened.items():  # still running at the end of the trail
            runs.setdefault(job, []).append((region, at, float("inf"), seq))
        for job, spans in sorted(runs.items()):
            self._regions(job, spans)
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

    def _handled(
        self, region: str, at: float, origin: str, origin_seq: int, processed: dict[str, int]
    ) -> bool:
        """Whether the scheduler has handled an input: by its consumer's acknowledged floor when
        known, else when the region's scheduler has written for ``SETTLE`` seconds since."""
        if origin in processed:
            return origin_seq <= processed[origin]
        return at < self.written.get(region, 0.0) - SETTLE

    def _refused(self, region: str, subject: str, origin: str, origin_seq: int) -> bool:
        """Whether this input was quarantined: by its stream sequence when the trail has it, else
        by subject (each quarantine entry on a subject excuses one message on it)."""
        if origin in (subjects.workloads_stream(region), subjects.status_stream(region)):
            refused = (origin, origin_seq) in self.quarantined
        else:
            left = self.refused_on.get(subject, 0)
            refused = left > 0
            if refused:
                self.refused_on[subject] = left - 1
        self.report.refused += refused
        return refused

    def _lost(self, processed: dict[str, int]) -> None:
        """I3 and unreadable inputs: each handled input has a record or was quarantined."""
        for (region, job), (at, seq, origin, origin_seq, subject) in sorted(self.submitted.items()):
            if (region, job) in self.records or self._refused(region, subject, origin, origin_seq):
                continue
            if self._handled(region, at, origin, origin_seq, processed):
                self.violate("I3", f"{job}: submitted to {region} but never recorded", seq)
            else:
                self.report.unprocessed += 1
        for region, at, seq, origin, origin_seq, subject in self.unread:
            if self._refused(region, subject, origin, origin_seq):
                continue
            if self._handled(region, at, origin, origin_seq, processed):
                self.report.unreadable.append(seq)
            else:
                self.report.unprocessed += 1

    def _regions(self, job: str, spans: list[tuple[str, float, float, int]]) -> None:
        """Cross-region I2: an at-most-once job never runs in two regions at the same time (the
        spans are compared by the writers' clocks, allowing ``clock_skew``)."""
        if not self.once.get(job, True) or len({span[0] for span in spans}) < 2:
            return
        for i, (region, began, ended, seq) in enumerate(spans):
            for other, began2, ended2, seq2 in spans[i + 1 :]:
                overlap = min(ended, ended2) - max(began, began2)
                if other != region and overlap > self.clock_skew:
                    lasted = "until the end of the trail" if math.isinf(overlap) else f"for {overlap:.2f} s"
                    self.violate(
                        "I2",
                        f"{job} (at most once) ran in {region} and {other} at once, {lasted} by their "
                        f"clocks (allowed skew {self.clock_skew:g} s)",
                        seq,
                        seq2,
                    )
                    return


PROGRESS_EVERY = 1000  # events between two calls of a reader's progress callback


async def read(
    bus: Bus,
    stream: str,
    checker: Checker,
    origins: dict[str, int],
    *,
    wait: float = 10.0,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Feed ``checker`` the whole stream, then keep reading (for up to ``wait`` seconds) until it
    has copied every origin up to ``origins`` (their last sequences, read before): what is still
    missing then is a postfix gap, not copying lag. ``progress(fed, last)`` is told how far the
    pass is (events fed, the stream's last sequence when it began) every ``PROGRESS_EVERY`` events."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    last = (await bus.last_sequence(stream) or 0) if progress is not None else 0
    while True:
        async for event, value in events(bus, stream, from_seq=checker.last_seq + 1):
            checker.feed(event, value)
            if progress is not None and checker.report.events % PROGRESS_EVERY == 0:
                progress(checker.report.events, last)
        if checker.caught_up(origins) or loop.time() >= deadline:
            if progress is not None:
                progress(checker.report.events, last)
            return
        await asyncio.sleep(0.2)  # the server copies on its own schedule


__all__ = ["Checker", "Gap", "Report", "Violation", "read"]
