"""Many simulated nodes in one process, for scale tests and benchmarks.

A :class:`SimulatedNodes` offers capacity for ``count`` nodes and heartbeats for them over a real
NATS connection, exactly as real agents would (same subjects, same messages). Like real agents it
follows the region's cadence from the scheduler lease (:mod:`federation.core.cadence`): every node
beats once per heartbeat interval (never faster than ``interval``) and refreshes its unchanging
offer once per refresh interval, the nodes spread over the interval a second at a time as
independent agents would be. With ``complete=True`` it also follows every ledger write (the
server's republished ``fed.<region>.ledger.<node>`` subjects) and reports each new allocation as
started and exited 0, so the scheduler sees full job lifecycles without processes being spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass

from federation import subjects
from federation.bus import Bus, Subscription
from federation.bus.delivery import Delivery
from federation.schemas import Heartbeat, JobEvent, JobEventKind, Lease, Ledger, Offer, decode, encode


@dataclass
class SimulatedNodes:
    """``count`` fake nodes named ``<prefix>-<i>`` in ``region``."""

    bus: Bus
    region: str
    count: int
    cores: int = 64
    memory: int = 256 * 1024**3
    gpus: int = 0
    max_allocations: int = 1024
    prefix: str = "sim"
    complete: bool = False
    interval: float = 2.0

    def __post_init__(self) -> None:
        self.nodes = [f"{self.prefix}-{i}" for i in range(self.count)]
        self.reported: set[tuple[str, int]] = set()
        self.beats = 0
        self._task: asyncio.Task[None] | None = None
        self._sub: Subscription | None = None

    async def start(self) -> None:
        """Offer once for every node (awaited), then keep offering and beating in the background."""
        if self.complete:
            self._sub = await self.bus.subscribe(subjects.ledger_changes(self.region, "*"), self._on_ledger)
        await self.offer_all()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop offering (offers then expire by their TTL) and following the ledgers."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):  # (a connection closed meanwhile)
                await self._sub.unsubscribe()

    async def offer_all(self) -> None:
        """One offer and one heartbeat per node, pipelined."""
        await self._write(self.nodes, self.nodes, self.interval, self.interval)

    async def _write(self, beating: list[str], offering: list[str], beat: float, refresh: float) -> None:
        """Heartbeats for ``beating`` and offers for ``offering``, pipelined, each living three
        intervals (and at least five of ``interval``, as before the cadence)."""
        now = time.time()
        beat_ttl = max(1, math.ceil(max(3 * beat, 5 * self.interval)))
        offer_ttl = max(1, math.ceil(max(3 * refresh, 5 * self.interval)))
        writes = []
        for node in offering:
            offer = Offer(
                node=node,
                region=self.region,
                cores=list(range(self.cores)),
                memory=self.memory,
                gpus=[str(i) for i in range(self.gpus)],
                max_allocations=self.max_allocations,
                capacity_cpu=self.cores,
                capacity_memory=self.memory,
                capacity_gpu=self.gpus,
                sent_at=now,
                expires_at=now + offer_ttl,
                note="simulated",
            )
            writes.append(self.bus.store(subjects.offer(self.region, node), encode(offer), ttl=offer_ttl))
        self.beats += 1
        for node in beating:
            message = Heartbeat(node=node, seq=self.beats, sent_at=now, interval=beat)
            subject = subjects.heartbeat(self.region, node)
            writes.append(self.bus.store(subject, encode(message), ttl=beat_ttl))
        await asyncio.gather(*writes)

    async def cadence(self) -> tuple[float, float]:
        """The region's heartbeat interval and offer refresh as its lease says (``interval`` when it
        says none), never below ``interval``."""
        value, _ = await self.bus.kv_get(subjects.lease_bucket(self.region), subjects.LEADER_KEY)
        lease = decode(Lease, value) if value else None
        if lease is None or lease.heartbeat <= 0:
            return self.interval, self.interval
        return max(self.interval, lease.heartbeat), max(self.interval, lease.offer_refresh)

    async def _loop(self) -> None:
        """Every second, the nodes whose turn it is: node ``i`` beats in the seconds ``t`` with
        ``t = i`` modulo the heartbeat interval (whole seconds), and offers likewise."""
        beat = refresh = self.interval
        tick = 0
        while True:
            await asyncio.sleep(1.0)  # sleep-ok: the simulated nodes' clock
            tick += 1
            with contextlib.suppress(Exception):  # no lease readable: the last cadence holds
                beat, refresh = await self.cadence()  # (one read a second for all the nodes)
            every_beat, every_refresh = max(1, round(beat)), max(1, round(refresh))
            beating = [n for i, n in enumerate(self.nodes) if i % every_beat == tick % every_beat]
            offering = [n for i, n in enumerate(self.nodes) if i % every_refresh == tick % every_refresh]
            await self._write(beating, offering, beat, refresh)

    async def _on_ledger(self, delivery: Delivery) -> None:
        ledger = decode(Ledger, delivery.data)
        writes = []
        now = time.time()
        for allocation in ledger.allocations:
            key = (allocation.job, allocation.attempt)
            if key in self.reported:
                continue
            self.reported.add(key)
            subject = subjects.job_event(self.region, ledger.node, allocation.job)
            steps: tuple[tuple[JobEventKind, int | None], ...] = (("started", None), ("exited", 0))
            for kind, code in steps:
                event = JobEvent(
                    node=ledger.node,
                    job=allocation.job,
                    attempt=allocation.attempt,
                    epoch=allocation.epoch,
                    kind=kind,
                    exit_code=code,
                    at=now,
                )
                writes.append(self.bus.store(subject, encode(event)))
        if writes:
            await asyncio.gather(*writes)
