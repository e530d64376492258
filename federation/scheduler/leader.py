"""A region's leader: the scheduling loop, bus -> core -> bus, from recovery to stepping down.

Theory of operation
-------------------
A :class:`Leader` is built by the scheduler daemon (:mod:`federation.scheduler.daemon`) once it
holds the region's lease, ready to use: connected, with the lease's epoch. It loads every ledger
and job record into :class:`~federation.core.state.RegionCore` (recovery), rewriting every ledger
with its epoch first (the **fencing sweep**: a paused predecessor's compare-and-set then finds the
revision moved, and a stored ledger or record carrying a newer epoch than ours makes us step
down), then consumes:

* the workloads stream (submissions, cancels) and the status stream (agents' reports) through
  durable consumers, acknowledged only after everything they caused is durable;
* offers and heartbeats through ordered "latest per subject" followers.

Every message is decoded and checked by :class:`~federation.scheduler.intake.Intake`; a refused
message is quarantined with its reason, changing no state. Accepted messages become core events
on one queue. The loop drains the queue in batches, feeds the events and a :class:`Tick` to the
core, and executes the commands the core returns
*concurrently* (claims and record writes are pipelined compare-and-set publishes), feeding each
result back, until the core has nothing left to write. Before every round of writes the lease is
checked on the local monotonic clock: a scheduler paused past its lease writes nothing more and
exits (its supervisor restarts it as a standby). Only then are the batch's messages
acknowledged: a crash at any point leaves them unacknowledged, and the redelivery meets a state
in which the core either already holds the job (duplicate, nothing changes) or finds the claim it
had written and adopts it.

Everything the core is fed goes through :meth:`Leader._feed`, which journals it
(:mod:`federation.scheduler.journal`), so ``fed audit verify`` re-runs the core over the same
inputs; that includes the verdict on another region's hand-off (:meth:`Leader.judge`). The
leader's parts take only what they use: :class:`~federation.scheduler.handoff.HandOffs` and
:class:`~federation.scheduler.peering.Peering` get the bus, the clock, a way to deliver events
to the loop and narrow reads of the state, never the leader itself.

Metrics (:mod:`federation.scheduler.metrics`) are counted where things happen (a record stored,
a claim conflict, a hand-off's outcome, a quarantined message); the region's state is computed
from the core once a second by a loop of the leader, never by the metrics server's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable

import structlog

from federation import failpoints, subjects, tracing
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.config import SchedulerConfig
from federation.core.events import (
    ClaimConflict,
    ClaimWritten,
    Command,
    Event,
    HandOffOffered,
    HandOffVerdict,
    PolicyChanged,
    Recovered,
    SendCancel,
    SendHandOff,
    Submitted,
    Tick,
    WriteJob,
    WriteLedger,
)
from federation.core.state import ALLOWED, RegionCore
from federation.core.summary import NodeState, summarize
from federation.errors import (
    ConflictError,
    FederationError,
    FederationUnavailable,
    LeaseLost,
    LocalProtocolError,
    RemoteProtocolError,
)
from federation.scheduler import recovery
from federation.scheduler.handoff import HandOffs
from federation.scheduler.intake import Intake, Item
from federation.scheduler.journal import Journal
from federation.scheduler.lease import Lease
from federation.scheduler.metrics import SchedulerMetrics
from federation.scheduler.peering import Peering
from federation.scheduler.tenants import Tenants
from federation.schemas import (
    JobRecord,
    Ledger,
    Summary,
    decode,
    encode,
)
from federation.tasks import idle

METRICS_EVERY = 1.0  # seconds between two computations of the region's state metrics, at least
METRICS_SHARE = 0.02  # ... and at most this share of the event loop's time spent computing them


class Leader:
    """The region's scheduling while this process holds the lease (see the module docstring)."""

    def __init__(
        self,
        config: SchedulerConfig,
        bus: Bus,
        lease: Lease,
        *,
        name: str,
        clock: Callable[[], float],
        queue: asyncio.Queue[Item],
        stop: asyncio.Event,
        log: structlog.typing.FilteringBoundLogger,
        metrics: SchedulerMetrics | None = None,
    ) -> None:
        self.config, self.region = config, config.region
        self.metrics = metrics or SchedulerMetrics()
        self.since = clock()  # history before this term is its predecessor's to count
        self.observed: dict[str, int] = {}  # job -> steps of its history counted (until it ends)
        self.bus, self.lease = bus, lease
        self.clock, self.queue, self._stop, self.log = clock, queue, stop, log
        self.core = RegionCore(config.region, epoch=lease.epoch, policy=config.policy)
        self.journal = Journal(config.region, name)  # what the core is fed: fed audit verify
        self.revisions: dict[str, int] = {}
        self.counts = {"placed": 0, "conflicts": 0, "batches": 0}
        self.suspects: dict[tuple[str, int], int] = {}  # (stream, sequence) -> failed batches
        self.failure: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._followers: list[asyncio.Task[None]] = []
        self._unbind: list[Callable[[], Awaitable[None]]] = []
        self.handoffs = HandOffs(
            bus,
            self.region,
            clock=clock,
            log=log,
            check_lease=self.check_lease,
            deliver=self.deliver,
            held=lambda job: view.record if (view := self.core.jobs.get(job)) is not None else None,
            judge=self.judge,
            lookup=lambda job: self.core.dependencies.state_of(self.core, job),
            count=self.metrics.handoff,
        )
        self.peering = Peering(
            bus, self.region, config, clock=clock, log=log, deliver=self.deliver, summary=self.summary
        )
        self.intake = Intake(
            bus,
            self.region,
            clock=clock,
            log=log,
            accept=self.queue.put_nowait,
            alive=lambda node: view.alive if (view := self.core.nodes.get(node)) is not None else None,
            counted=self.metrics.quarantined,
            max_input_bytes=lambda: self.core.policy.max_input_bytes,
        )
        self.tenants = Tenants(
            bus,
            self.region,
            lambda: [v.record for v in self.core.jobs.values()],
            lambda: self.core.policy,
        )

    @property
    def stats(self) -> dict[str, int]:
        """What this term as leader did (logged when the scheduler stops)."""
        return {**self.counts, "quarantined": self.intake.quarantined}

    async def lead(self) -> None:
        """Recover, start consuming, and schedule until asked to stop or the lease is lost."""
        self.journal.begin(self.core)
        await self.recover()
        await self._start()
        self.log.info(
            "scheduler started", nodes=len(self.core.nodes), jobs=len(self.core.jobs), epoch=self.core.epoch
        )
        self._tasks.append(asyncio.create_task(self._wake_when_stopped()))
        await self._loop()
        if self.failure is not None:
            raise self.failure

    async def stop(self) -> None:
        """Stop the hand-offs in flight and every loop of the leader (bounded)."""
        await self.handoffs.stop()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task that swallowed its cancellation must not hang the exit
            _, stuck = await asyncio.wait(self._tasks, timeout=10.0)
            for task in stuck:
                self.log.error("task did not stop", task=task.get_name(), stack=tracing.task_stack(task))

    async def _wake_when_stopped(self) -> None:
        """Wake the loop as soon as it is asked to stop (it waits for a message up to a tick)."""
        await self._stop.wait()
        self.deliver(Tick(now=self.clock()))

    async def check_lease(self) -> None:
        """Refuse to write once the lease may have passed to another scheduler."""
        await self.lease.ensure()

    def deliver(self, event: Event) -> None:
        """Queue an event that is not a message (an answer, a view) for the loop."""
        self.queue.put_nowait((event, None))

    def judge(self, offered: HandOffOffered) -> str:
        """The core's verdict on another region's hand-off: why it is refused ("" accepts).
        Fed like any event, so the journal keeps it and ``fed audit verify`` re-derives it."""
        for command in self._feed(offered):
            if isinstance(command, HandOffVerdict):
                return command.refusal
        raise LocalProtocolError(f"the core gave no verdict on the hand-off of {offered.spec.id}")

    def summary(self) -> Summary:
        """The region's capacity summary from the core's view (see :mod:`federation.core.summary`)."""
        nodes = (
            NodeState(view.offer, view.current().allocations, view.alive, view.down_at, view.free)
            for view in self.core.nodes.values()
        )
        return summarize(self.region, nodes, self.clock(), pending=len(self.core.queue))

    # --- recovery ----------------------------------------------------------------------------------

    async def recover(self, *, fence: bool = True) -> None:
        """Rebuild the core's view from the ledger and jobs buckets (fencing them first, as a new
        leader; see :mod:`federation.scheduler.recovery`)."""
        ledgers, records = await recovery.load(self.bus, self.region, self.revisions, self._unreadable_record)
        if fence:
            epoch = recovery.raised_epoch(self.core.epoch, ledgers, records, self.log)
            self.core.epoch = self.lease.epoch = epoch
            await self.check_lease()
            ledgers, records = await recovery.fence(
                self.bus, self.region, epoch, ledgers, records, self.revisions, self.log
            )
        else:
            self._check_epoch([ledger.epoch for ledger, _ in ledgers.values()], "a ledger")
            self._check_epoch([r.epoch for r in records.values()], "a job record")
        self._feed(Recovered(ledgers=ledgers, records=tuple(records.values()), at=self.clock()))
        await self._execute(self._feed(Tick(now=self.clock())))
        await self.journal.flush(self.bus, self.core.epoch)
        self.log.info("recovered", ledgers=len(ledgers), jobs=len(records), pending=len(self.core.queue))

    async def _unreadable_record(self, key: str, value: bytes, revision: int, exc: Exception) -> None:
        """A stored record that does not decode: keep it in quarantine, then let our write replace it.

        One corrupt key must neither stop the region nor block its job; the quarantine record keeps
        the bytes as evidence, and the next write of that job overwrites them by compare-and-set.
        """
        subject = f"$KV.{subjects.jobs_bucket(self.region)}.{key}"
        await self.intake.quarantine(
            "jobs", Delivery(subject, value, {}, revision, 1), f"unreadable job record: {exc}"
        )
        self.revisions[key] = revision

    def _check_epoch(self, epochs: list[int], what: str) -> None:
        """Step down when the store holds a write from a newer leader than this one."""
        recovery.check_epoch(self.region, self.core.epoch, epochs, what)

    # --- consumers and followers --------------------------------------------------------------

    async def _start(self) -> None:
        """Bind the consumers, start the followers, and the leader's loops: peering, hand-offs,
        tenants, the consumers' watchdog."""
        await self._bind_consumers()
        self._start_followers()
        loops = [self._watch_consumers(), self.peering.publish_summaries(), self.peering.watch_audit()]
        loops += [self.handoffs.serve(), self.tenants.serve(), self._measure()]
        loops += [self.handoffs.follow_dependencies(lambda: self.core.dependencies.lookups(self.core))]
        loops += [self.peering.feed_views()]
        for loop in loops:
            task = asyncio.create_task(loop)
            task.add_done_callback(self._task_ended)
            self._tasks.append(task)

    async def _measure(self) -> None:
        """Publish the region's state as metrics, computed here on the event loop (the metrics
        server's thread never reads the core): once a second, or less often where computing them
        takes longer (a gauge per node of 10,000 nodes, a queue of 100,000 jobs), so that it never
        takes more than :data:`METRICS_SHARE` of the loop's time."""
        while True:
            started = time.perf_counter()
            try:
                self.metrics.refresh(self.core, self.clock())
            except Exception as exc:  # a figure gone wrong must not stop the scheduling
                self.log.error("metrics not computed", error=repr(exc))
            await idle(max(METRICS_EVERY, (time.perf_counter() - started) / METRICS_SHARE))

    async def _bind_consumers(self) -> None:
        """Bind (or create) the workloads and status consumers for this leader's epoch."""
        r = self.region
        for stop in self._unbind:
            with contextlib.suppress(Exception):
                await stop()
        self._unbind = [
            await self.bus.durable(
                stream,
                consumer,
                filter_subject,
                handler,
                epoch=self.core.epoch,
                # backstops only: _failed naks and quarantines at max_deliver, and a new leader
                # recreates the consumer, so ack_wait never paces a failover and a long queue is
                # not redelivered
                ack_wait=300.0,
                max_deliver=self.config.max_deliver + 2,
            )
            for stream, consumer, filter_subject, handler in (
                (
                    subjects.workloads_stream(r),
                    subjects.SCHEDULER_WORKLOADS_CONSUMER,
                    subjects.workloads_filter(r),
                    self.intake.on_workload,
                ),
                (
                    subjects.status_stream(r),
                    subjects.SCHEDULER_STATUS_CONSUMER,
                    subjects.job_event(r, "*", "*"),
                    self.intake.on_status,
                ),
            )
        ]

    async def _watch_consumers(self) -> None:
        """The durable consumers' watchdog: recreate them if the server lost them (every 5 s)."""
        r = self.region
        while True:
            await idle(5.0)
            try:
                present = [
                    await self.bus.consumer_exists(
                        subjects.workloads_stream(r), subjects.SCHEDULER_WORKLOADS_CONSUMER
                    ),
                    await self.bus.consumer_exists(
                        subjects.status_stream(r), subjects.SCHEDULER_STATUS_CONSUMER
                    ),
                ]
            except FederationUnavailable:
                continue  # the server is away; the client reconnects by itself
            if not all(present):
                self.log.warning("a durable consumer vanished; recreating it")
                await self._bind_consumers()

    def _start_followers(self) -> None:
        """Follow offers and heartbeats (from each node's latest: a restart replays the current view)."""
        self._followers = [
            asyncio.create_task(self.intake.follow_offers()),
            asyncio.create_task(self.intake.follow_heartbeats()),
        ]
        for task in self._followers:
            task.add_done_callback(self._task_ended)
        self._tasks.extend(self._followers)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A loop of the leader must never end while it leads: crash loudly (the supervisor restarts)."""
        if task.cancelled() or self._stop.is_set():
            return
        self.failure = task.exception() or FederationError("a follower loop ended")
        self.log.error("background loop died; stopping", error=repr(self.failure))
        self._stop.set()

    # --- the loop ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stop.is_set():
            items: list[Item] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.tick_interval):  # not wait_for: see Tail.next
                    items.append(await self.queue.get())
            while len(items) < self.config.batch_size and not self.queue.empty():
                items.append(self.queue.get_nowait())
            # a message that failed a batch before goes alone, in its place in the order, so a
            # poison message fails only itself and is found out
            batch: list[Item] = []
            for item in items:
                if item[1] is not None and self._key(item[1]) in self.suspects:
                    if batch:
                        await self._guarded(batch)
                        batch = []
                    await self._guarded([item])
                else:
                    batch.append(item)
            if batch or not items:
                await self._guarded(batch)

    @staticmethod
    def _key(delivery: Delivery) -> tuple[str, int]:
        stream = "status" if subjects.parse_status(delivery.subject) is not None else "workloads"
        return (stream, delivery.sequence)

    async def _guarded(self, items: list[Item]) -> None:
        """Handle a batch; on an unexpected failure, hand its messages back and start over clean."""
        try:
            await self.handle_batch(items)
        except LeaseLost:
            raise
        except Exception as exc:
            await self._failed(items, exc)
        else:
            for _, delivery in items:
                if delivery is not None:
                    self.suspects.pop(self._key(delivery), None)

    async def _failed(self, items: list[Item], exc: Exception) -> None:
        """A batch failed half-way: the core may be ahead of the store, so it is rebuilt from it.

        Its messages are handed back (negative acknowledgement, delayed more at each failure) and
        become suspects, handled alone from then on. Only a message that fails alone, with an error
        of its own (not the store being unavailable, not a lost race), counts toward poison: on its
        ``max_deliver``-th delivery it is quarantined with the error and terminated, and the
        messages behind it flow on. Events that are not messages (a policy reload) are queued again.
        """
        deliveries = [d for _, d in items if d is not None]
        infrastructure = isinstance(exc, FederationUnavailable | ConflictError | TimeoutError)
        self.log.error(
            "batch failed; rebuilding state from JetStream",
            error=repr(exc),
            messages=len(deliveries),
            subjects=[d.subject for d in deliveries[:5]],
        )
        for delivery in deliveries:
            key = self._key(delivery)
            failures = self.suspects[key] = self.suspects.get(key, 0) + 1
            if len(deliveries) == 1 and not infrastructure and delivery.delivered >= self.config.max_deliver:
                why = f"failed on each of {delivery.delivered} deliveries; last error: {exc!r}"
                await self.intake.quarantine(self._source(delivery), delivery, why)
                self.suspects.pop(key, None)
                continue
            with contextlib.suppress(Exception):  # unacknowledged, it comes back after ack_wait anyway
                await delivery.nak(delay=min(30.0, 0.25 * 2**failures))
        for event, source in items:
            if source is None and isinstance(event, PolicyChanged):
                self.queue.put_nowait((event, None))
        await self._reset()

    def _source(self, delivery: Delivery) -> str:
        return self._key(delivery)[0]

    async def _reset(self) -> None:
        """Forget the in-memory view and rebuild it: recovery, then the followers replay the rest."""
        for task in self._followers:
            task.cancel()
        await asyncio.gather(*self._followers, return_exceptions=True)
        self._tasks = [t for t in self._tasks if t not in self._followers]
        epoch = self.core.epoch
        self.core = RegionCore(self.region, epoch=epoch, policy=self.core.policy)
        self.journal.begin(self.core)
        self.revisions.clear()
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self.recover(fence=False)
                break
            except (FederationUnavailable, TimeoutError) as exc:
                self.log.warning("recovery failed; retrying", error=str(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop.wait()
                delay = min(2 * delay, 5.0)
        self._start_followers()

    def _feed(self, event: Event) -> list[Command]:
        return self.journal.handle(self.core, event)  # journalled: fed audit verify re-runs it

    async def handle_batch(self, items: list[Item]) -> None:
        """Feed a batch to the core, write everything it asks for, then acknowledge the batch."""
        commands: list[Command] = []
        for event, _ in items:
            if isinstance(event, Submitted):
                failpoints.fail("handle-submit", event.spec.id)
            commands.extend(self._feed(event))
        commands.extend(self._feed(Tick(now=self.clock())))
        self.lease.cadence = self.core.cadence  # (written with the lease's next renewal)
        await self._execute(commands)
        await self.journal.flush(self.bus, self.core.epoch)
        await self.check_lease()  # a stale leader acknowledges nothing either
        failure: Exception | None = None
        for _, delivery in items:  # one by one: an acknowledgement is only queued for the next flush
            if delivery is not None:  # (no task each, as gathering them would make); all are sent
                try:
                    await delivery.ack()
                except Exception as exc:  # the first failure is raised once every one was tried
                    failure = failure or exc
        if failure is not None:
            raise failure
        self.counts["batches"] += 1

    async def _execute(self, commands: list[Command]) -> None:
        """Run the commands concurrently, feed every result back, repeat until nothing is left.

        Every write of a round finishes before a failure is raised: a write still retrying in the
        background while the state is rebuilt could land after the rebuild read the store.
        """
        while commands:
            commands = _latest_records(commands)
            records = [c.record for c in commands if isinstance(c, WriteJob)]
            runs = [self._run(c) for c in commands if not isinstance(c, WriteJob)]
            if records:  # the round's job records written together (one wait for their answers)
                runs.append(self._write_records(records))
            outcomes = await asyncio.gather(*runs, return_exceptions=True)
            commands = []
            failure: BaseException | None = None
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    failure = failure or outcome
                elif outcome is not None:
                    commands.extend(self._feed(outcome))
            if failure is not None:
                raise failure
            commands.extend(self._feed(Tick(now=self.clock())))

    async def _run(self, command: Command) -> Event | None:
        """Carry out one command other than a job record's write (those go together,
        :meth:`_write_records`); the event its outcome is, if any."""
        match command:
            case WriteLedger(node=node, ledger=ledger, expected_revision=expected):
                bucket = subjects.ledger_bucket(self.region)
                data = encode(ledger)
                # the same write, re-sent after a lost answer, is recognised by its id: the server
                # answers with the first copy's revision instead of a false conflict
                msg_id = f"{node}:{expected}:{hashlib.blake2b(data, digest_size=12).hexdigest()}"
                failpoints.crash("before-claim")
                for attempt in range(4):
                    try:
                        await self.check_lease()
                        revision = await self.bus.cas(bucket, node, data, expected, msg_id=msg_id)
                        failpoints.crash("after-claim")
                        return ClaimWritten(node=node, revision=revision)
                    except ConflictError:
                        self.counts["conflicts"] += 1
                        self.metrics.conflicts.inc()
                        break
                    except FederationUnavailable as exc:  # outcome unknown: send the same write again
                        self.log.warning("ledger write unanswered; retrying", node=node, error=str(exc))
                        await idle(0.2 * 2**attempt)
                value, revision = await self.bus.kv_get(bucket, node)
                stored = decode(Ledger, value) if value else None
                self._check_epoch([stored.epoch if stored else 0], f"the ledger of {node}")
                return ClaimConflict(node=node, ledger=stored, revision=revision)
            case SendHandOff() | SendCancel():
                self.handoffs.send(command)  # the outcome comes back as an event
        return None

    async def _write_records(self, records: list[JobRecord]) -> None:
        """Write job records by compare-and-set, all sent at once and their answers waited for
        together; a record whose key moved meanwhile is read and written again on its own
        (:meth:`_write_record`). Every write is settled before the first failure is raised."""
        bucket = subjects.jobs_bucket(self.region)
        await self.check_lease()
        writes = [(r.id, encode(r), self.revisions.get(r.id, 0)) for r in records]
        outcomes = await self.bus.cas_all(bucket, writes)
        conflicted: list[JobRecord] = []
        failure: Exception | None = None
        for record, outcome in zip(records, outcomes, strict=True):
            if isinstance(outcome, ConflictError):
                conflicted.append(record)
            elif isinstance(outcome, Exception):
                failure = failure or outcome
            else:
                self.revisions[record.id] = outcome
                self._recorded(record)
        again = await asyncio.gather(
            *(self._write_record(r, conflicted=True) for r in conflicted), return_exceptions=True
        )
        for written in again:
            if isinstance(written, Exception):
                failure = failure or written
            elif isinstance(written, BaseException):  # (a cancellation)
                raise written
        if failure is not None:
            raise failure

    async def _write_record(self, record: JobRecord, *, conflicted: bool = False) -> None:
        """Write one job record by compare-and-set; after a conflict (``conflicted``: one met
        already), read what is stored first, and write over it only when that is no move backwards."""
        bucket = subjects.jobs_bucket(self.region)
        data = encode(record)
        for _ in range(5):
            if conflicted:
                value, revision = await self.bus.kv_get(bucket, record.id)
                try:
                    stored = decode(JobRecord, value) if value else None
                except RemoteProtocolError as exc:
                    await self._unreadable_record(record.id, value or b"", revision, exc)
                    stored = None
                self._check_epoch([stored.epoch if stored else 0], f"the record of {record.id}")
                if (
                    stored is not None
                    and stored.state != record.state
                    and (record.state not in ALLOWED.get(stored.state, frozenset()))
                ):
                    self.log.error(
                        "refused backwards job move", job=record.id, stored=stored.state, ours=record.state
                    )
                    return
                self.revisions[record.id] = revision
            expected = self.revisions.get(record.id, 0)
            try:
                await self.check_lease()
                self.revisions[record.id] = await self.bus.cas(bucket, record.id, data, expected)
            except ConflictError:
                conflicted = True
                continue
            self._recorded(record)
            return
        raise ConflictError(record.id, self.revisions.get(record.id, 0))

    def _recorded(self, record: JobRecord) -> None:
        """A job record was stored: its metrics, its placement's trace span, its log line."""
        seen = self.metrics.written(record, self.observed.get(record.id, 0), self.since)
        if record.terminal or record.state == "forwarded":
            self.observed.pop(record.id, None)
        else:
            self.observed[record.id] = seen
        where: dict[str, str | int] = {"job": record.id, "node": record.node, "attempt": record.attempt}
        if record.state == "placed":
            failpoints.crash("after-record")
            self.counts["placed"] += 1
            if tracing.recording() and record.traceparent:
                with tracing.span("fed.place", parent=record.traceparent, region=self.region, **where):
                    pass
        self.log.info("job", state=record.state, reason=record.reason, **where)


def _latest_records(commands: list[Command]) -> list[Command]:
    """The commands with only the last write of each job record: a record carries its whole
    history, so an earlier state of the same round needs no write of its own (two writes of one
    record at once would also race each other's compare-and-set)."""
    last = {c.record.id: i for i, c in enumerate(commands) if isinstance(c, WriteJob)}
    return [c for i, c in enumerate(commands) if not isinstance(c, WriteJob) or last[c.record.id] == i]


__all__ = ["Item", "Leader"]
