"""Many simulated nodes in one process, for scale tests and benchmarks.

A :class:`SimulatedNodes` offers capacity for ``count`` nodes and heartbeats for them over a real
NATS connection, exactly as real agents would (same subjects, same messages). With
``complete=True`` it also follows every ledger write (the server's republished
``fed.<region>.ledger.<node>`` subjects) and reports each new allocation as started and exited 0,
so the scheduler sees full job lifecycles without processes being spawned.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from federation import subjects
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.schemas import Heartbeat, JobEvent, JobEventKind, Ledger, Offer, decode, encode


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
        self._task: asyncio.Task[None] | None = None
        self._sub: object | None = None

    async def start(self) -> None:
        """Offer once for every node (awaited), then keep offering and beating in the background."""
        if self.complete:
            self._sub = await self.bus.subscribe(subjects.ledger_changes(self.region, "*"), self._on_ledger)
        await self.offer_all()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop offering (offers then expire by their TTL)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def offer_all(self) -> None:
        """One offer and one heartbeat per node, pipelined."""
        now = time.time()
        ttl = max(1, math.ceil(self.interval * 5))
        writes = []
        for seq, node in enumerate(self.nodes):
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
                expires_at=now + self.interval * 5,
                note="simulated",
            )
            writes.append(self.bus.store(subjects.offer(self.region, node), encode(offer), ttl=ttl))
            beat = Heartbeat(node=node, seq=seq, sent_at=now, interval=self.interval)
            writes.append(self.bus.store(subjects.heartbeat(self.region, node), encode(beat), ttl=ttl))
        await asyncio.gather(*writes)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.offer_all()

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
