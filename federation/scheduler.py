"""The regional scheduler daemon: bus -> core -> bus.

Theory of operation
-------------------
At start the daemon provisions the region's streams and buckets (idempotent), loads every ledger
and job record into :class:`~federation.core.state.RegionCore` (recovery), then consumes:

* the workloads stream (submissions, cancels) and the status stream (agents' reports) through
  durable consumers, acknowledged only after everything they caused is durable;
* offers and heartbeats through ordered "latest per subject" followers.

Every message is decoded (size-bounded, schema-checked) in its subscription callback; a refused
message is written to the quarantine stream with its reason and acknowledged, changing no state.
Accepted messages become core events on one queue. The loop drains the queue in batches, feeds
the events and a :class:`Tick` to the core, and executes the commands the core returns
*concurrently* (claims and record writes are pipelined compare-and-set publishes), feeding each
result back, until the core has nothing left to write. Only then are the batch's messages
acknowledged: a crash at any point leaves them unacknowledged, and the redelivery meets a state in
which the core either already holds the job (duplicate, nothing changes) or finds the claim it had
written and adopts it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from federation import subjects, tracing
from federation.bus import Bus, Delivery, provision
from federation.config import SchedulerConfig, load_toml
from federation.core.events import (
    CancelRequested,
    ClaimConflict,
    ClaimWritten,
    Command,
    Event,
    JobReported,
    NodeDown,
    NodeUp,
    OfferSeen,
    PolicyChanged,
    Recovered,
    Submitted,
    Tick,
    WriteJob,
    WriteLedger,
)
from federation.core.state import ALLOWED, RegionCore
from federation.errors import (
    ConfigError,
    ConflictError,
    FederationError,
    FederationUnavailable,
    RemoteProtocolError,
)
from federation.schemas import (
    Cancel,
    Heartbeat,
    JobEvent,
    JobRecord,
    Offer,
    Quarantined,
    Submit,
    decode_ledger,
    decode_message,
    decode_record,
    encode,
)

log = structlog.get_logger()

Item = tuple[Event, Delivery | None]


class Scheduler:
    """One region's scheduler process (see the module docstring)."""

    def __init__(
        self,
        config: SchedulerConfig,
        clock: Callable[[], float] = time.time,
        *,
        config_path: Path | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.region = config.region
        self.clock = clock
        self.core = RegionCore(config.region, epoch=config.epoch, policy=config.policy)
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self._config_stamp = self._stamp()
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.revisions: dict[str, int] = {}
        self.bus: Bus | None = None
        self.log = log.bind(region=config.region)
        self.stats = {"placed": 0, "conflicts": 0, "quarantined": 0, "batches": 0}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.failure: BaseException | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, provision, recover and schedule until :meth:`stop` or a signal."""
        self.bus = await Bus.connect(self.config.nats_url, f"fed-scheduler-{self.region}")
        try:
            await provision(self.bus, self.region)
            await self.recover()
            await self._start_consumers()
            self.log.info("scheduler started", nodes=len(self.core.nodes), jobs=len(self.core.jobs))
            await self._loop()
            if self.failure is not None:
                raise self.failure
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.bus.close()
            self.log.info("scheduler stopped", **self.stats)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and exit."""
        self._stop.set()

    # --- policy reload -------------------------------------------------------------------------------

    def _stamp(self) -> tuple[float, int] | None:
        if self.config_path is None:
            return None
        try:
            info = self.config_path.stat()
        except OSError:
            return None
        return (info.st_mtime, info.st_size)

    def reload(self) -> None:
        """Re-read the config file; a valid new ``[policy]`` becomes an event, a bad one is refused."""
        if self.config_path is None:
            return
        self._config_stamp = self._stamp()
        try:
            config = load_toml(self.config_path, SchedulerConfig, self.overrides)
        except ConfigError as exc:
            self.log.error("config refused; keeping the current policy", error=str(exc))
            return
        if config.policy != self.core.policy:
            self.queue.put_nowait((PolicyChanged(policy=config.policy), None))
            self.log.info("policy reloaded", policy=msgspec.to_builtins(config.policy))

    async def _watch_config(self) -> None:
        """Reload when the config file changes (editing it is enough; SIGHUP also works)."""
        while True:
            await asyncio.sleep(1.0)
            if self._stamp() != self._config_stamp:
                self.reload()

    async def recover(self) -> None:
        """Rebuild the core's view from the ledger and jobs buckets."""
        assert self.bus is not None
        ledgers = {
            key: (decode_ledger(value), rev)
            for key, (value, rev) in (await self.bus.kv_load(subjects.ledger_bucket(self.region))).items()
        }
        records = []
        for key, (value, rev) in (await self.bus.kv_load(subjects.jobs_bucket(self.region))).items():
            records.append(decode_record(value))
            self.revisions[key] = rev
        self.core.handle(Recovered(ledgers=ledgers, records=tuple(records), at=self.clock()))
        await self._execute(self.core.handle(Tick(now=self.clock())))
        self.log.info("recovered", ledgers=len(ledgers), jobs=len(records), pending=len(self.core.queue))

    async def _start_consumers(self) -> None:
        assert self.bus is not None
        r = self.region
        await self.bus.durable(
            subjects.workloads_stream(r),
            subjects.SCHEDULER_WORKLOADS_CONSUMER,
            subjects.workloads_filter(r),
            self._on_workload,
        )
        await self.bus.durable(
            subjects.status_stream(r),
            subjects.SCHEDULER_STATUS_CONSUMER,
            subjects.job_event(r, "*", "*"),
            self._on_status,
        )
        for loop in (self._follow_offers(), self._follow_heartbeats(), self._watch_config()):
            task = asyncio.create_task(loop)
            task.add_done_callback(self._task_ended)
            self._tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A follower must never end while the scheduler runs: crash loudly (the supervisor restarts)."""
        if task.cancelled() or self._stop.is_set():
            return
        self.failure = task.exception() or FederationError("a follower loop ended")
        self.log.error("background loop died; stopping", error=repr(self.failure))
        self._stop.set()

    # --- inputs ------------------------------------------------------------------------------------

    async def _quarantine(self, source: str, delivery: Delivery, reason: str) -> None:
        """Record a refused message with its reason; never raises (a handler loop must go on)."""
        try:
            await self._store_quarantine(source, delivery, reason)
        except Exception as exc:
            self.log.error("could not quarantine a refused message", subject=delivery.subject, error=str(exc))

    async def _store_quarantine(self, source: str, delivery: Delivery, reason: str) -> None:
        assert self.bus is not None
        self.stats["quarantined"] += 1
        record = Quarantined(
            subject=delivery.subject,
            reason=reason,
            payload=base64.b64encode(delivery.data[:4096]).decode(),
            size=len(delivery.data),
            at=self.clock(),
            sequence=delivery.sequence,
        )
        await self.bus.store(subjects.quarantine(self.region, source), encode(record))
        await delivery.term()
        self.log.warning("message quarantined", subject=delivery.subject, reason=reason)

    async def _on_workload(self, delivery: Delivery) -> None:
        try:
            message = decode_message(delivery.data)
            token = subjects.last_token(delivery.subject)
            match message:
                case Submit(id=job) if job == token:
                    event: Event = Submitted(
                        spec=message, at=self.clock(), traceparent=tracing.traceparent(delivery.headers)
                    )
                case Cancel(id=job) if job == token:
                    event = CancelRequested(job=job, reason=message.reason, at=self.clock())
                case Submit() | Cancel():
                    raise RemoteProtocolError(f"job id in payload does not match subject token {token!r}")
                case _:
                    raise RemoteProtocolError(f"unexpected message type {type(message).__name__}")
        except RemoteProtocolError as exc:
            await self._quarantine("workloads", delivery, str(exc))
            return
        self.queue.put_nowait((event, delivery))

    async def _on_status(self, delivery: Delivery) -> None:
        parsed = subjects.parse_status(delivery.subject)
        try:
            message = decode_message(delivery.data)
            if not isinstance(message, JobEvent):
                raise RemoteProtocolError(f"expected a job event, got {type(message).__name__}")
            if parsed is None or (parsed.node, parsed.job) != (message.node, message.job):
                raise RemoteProtocolError("node or job in payload does not match the subject")
        except RemoteProtocolError as exc:
            await self._quarantine("status", delivery, str(exc))
            return
        self.queue.put_nowait((JobReported(event=message), delivery))

    async def _follow_offers(self) -> None:
        assert self.bus is not None
        r = self.region
        async for delivery in self.bus.follow(
            subjects.offers_stream(r), subjects.offer(r, "*"), last_per_subject=True
        ):
            if delivery.removed:
                continue  # an expired offer: its expires_at already stops placements
            try:
                message = decode_message(delivery.data)
                if not isinstance(message, Offer) or message.node != subjects.last_token(delivery.subject):
                    raise RemoteProtocolError("not an offer for the node named in the subject")
                if len(set(message.cores)) != len(message.cores) or len(set(message.gpus)) != len(
                    message.gpus
                ):
                    raise RemoteProtocolError("the offer lists a device twice")
            except RemoteProtocolError as exc:
                await self._quarantine("offers", delivery, str(exc))
                continue
            self.queue.put_nowait((OfferSeen(offer=message), None))

    async def _follow_heartbeats(self) -> None:
        assert self.bus is not None
        r = self.region
        async for delivery in self.bus.follow(
            subjects.heartbeats_stream(r), subjects.heartbeat(r, "*"), last_per_subject=True
        ):
            node = subjects.last_token(delivery.subject)
            if delivery.removed:
                self.log.warning("node heartbeat expired", node=node)
                self.queue.put_nowait((NodeDown(node=node, at=self.clock()), None))
                continue
            try:
                message = decode_message(delivery.data)
                if not isinstance(message, Heartbeat) or message.node != node:
                    raise RemoteProtocolError("not a heartbeat for the node named in the subject")
            except RemoteProtocolError as exc:
                await self._quarantine("heartbeats", delivery, str(exc))
                continue
            view = self.core.nodes.get(node)
            if view is None or not view.alive:  # only a change of liveness is an event
                if view is not None:
                    self.log.info("node heartbeat resumed", node=node)
                self.queue.put_nowait((NodeUp(node=node, at=self.clock()), None))

    # --- the loop ----------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while not self._stop.is_set():
            items: list[Item] = []
            with contextlib.suppress(TimeoutError):
                items.append(await asyncio.wait_for(self.queue.get(), self.config.tick_interval))
            while len(items) < self.config.batch_size and not self.queue.empty():
                items.append(self.queue.get_nowait())
            await self.handle_batch(items)

    async def handle_batch(self, items: list[Item]) -> None:
        """Feed a batch to the core, write everything it asks for, then acknowledge the batch."""
        commands: list[Command] = []
        for event, _ in items:
            commands.extend(self.core.handle(event))
        commands.extend(self.core.handle(Tick(now=self.clock())))
        await self._execute(commands)
        acks = [delivery.ack() for _, delivery in items if delivery is not None]
        if acks:
            await asyncio.gather(*acks)
        self.stats["batches"] += 1

    async def _execute(self, commands: list[Command]) -> None:
        while commands:
            results = await asyncio.gather(*(self._run(command) for command in commands))
            commands = []
            for result in results:
                if result is not None:
                    commands.extend(self.core.handle(result))
            commands.extend(self.core.handle(Tick(now=self.clock())))

    async def _run(self, command: Command) -> Event | None:
        assert self.bus is not None
        match command:
            case WriteLedger(node=node, ledger=ledger, expected_revision=expected):
                bucket = subjects.ledger_bucket(self.region)
                data = encode(ledger)
                # the same write, re-sent after a lost answer, is recognised by its id: the server
                # answers with the first copy's revision instead of a false conflict
                msg_id = f"{node}:{expected}:{hashlib.blake2b(data, digest_size=12).hexdigest()}"
                for attempt in range(4):
                    try:
                        revision = await self.bus.cas(bucket, node, data, expected, msg_id=msg_id)
                        return ClaimWritten(node=node, revision=revision)
                    except ConflictError:
                        self.stats["conflicts"] += 1
                        break
                    except FederationUnavailable as exc:  # outcome unknown: send the same write again
                        self.log.warning("ledger write unanswered; retrying", node=node, error=str(exc))
                        await asyncio.sleep(0.2 * 2**attempt)
                value, revision = await self.bus.kv_get(bucket, node)
                return ClaimConflict(
                    node=node, ledger=decode_ledger(value) if value else None, revision=revision
                )
            case WriteJob(record=record):
                await self._write_record(record)
        return None

    async def _write_record(self, record: JobRecord) -> None:
        assert self.bus is not None
        bucket = subjects.jobs_bucket(self.region)
        data = encode(record)
        for _ in range(5):
            expected = self.revisions.get(record.id, 0)
            try:
                self.revisions[record.id] = await self.bus.cas(bucket, record.id, data, expected)
            except ConflictError:
                value, revision = await self.bus.kv_get(bucket, record.id)
                stored = decode_record(value) if value else None
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
                continue
            if record.state == "placed":
                self.stats["placed"] += 1
                if tracing.recording() and record.traceparent:
                    with tracing.span(
                        "fed.place",
                        parent=record.traceparent,
                        job=record.id,
                        node=record.node,
                        attempt=record.attempt,
                        region=self.region,
                    ):
                        pass
            self.log.info(
                "job",
                job=record.id,
                state=record.state,
                node=record.node,
                attempt=record.attempt,
                reason=record.reason,
            )
            return
        raise ConflictError(record.id, self.revisions.get(record.id, 0))


async def serve(
    config: SchedulerConfig, config_path: Path | None = None, overrides: dict[str, Any] | None = None
) -> None:
    """Run a scheduler until SIGINT/SIGTERM (the ``fed scheduler`` entry point).

    With ``config_path`` the ``[policy]`` table is reloaded when the file changes or on SIGHUP.
    """
    scheduler = Scheduler(config, config_path=config_path, overrides=overrides)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, scheduler.stop)
    loop.add_signal_handler(signal.SIGHUP, scheduler.reload)
    await scheduler.run()


__all__: list[Any] = ["Scheduler", "serve"]
