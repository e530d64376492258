"""Keeping the console's :class:`~federation.console.model.Board` current: each region's streams and
buckets read from where the last read stopped, every :data:`POLL` seconds.

Reads are batched direct gets (:func:`federation.bus.scan.scan`), what an auditor's credentials
allow: the console creates no consumer and never asks a scheduler anything, so a thousand job
changes a second cost the leader nothing (the server answers from the streams it keeps anyway).
A region that cannot be read is marked with the reason and read again on the next round; what
was read before stays on the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog

from federation import subjects
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.bus.scan import latest, newer, scan
from federation.console.model import Board, RegionState, key_of, node_of
from federation.errors import FederationError, FederationUnavailable

POLL = 1.0  # seconds between reads of a region (a change shows within about a second and a half)

log = structlog.get_logger()


@dataclass
class Source:
    """One stream the console follows for a region, and what to do with each message."""

    stream: str
    filter: str
    apply: Callable[[RegionState, Delivery], None]
    every: bool = False  # every message matters (job records); else only each subject's latest


def sources(region: str) -> list[Source]:
    """What the console reads of ``region``, in the order it is read."""
    jobs, ledger, lease = (
        subjects.jobs_bucket(region),
        subjects.ledger_bucket(region),
        subjects.lease_bucket(region),
    )
    return [
        Source(
            f"KV_{jobs}",
            f"$KV.{jobs}.>",
            lambda s, d: s.job(key_of(d.subject, jobs), d.data, d.removed),
            every=True,
        ),
        Source(
            f"KV_{ledger}",
            f"$KV.{ledger}.>",
            lambda s, d: s.ledger(key_of(d.subject, ledger), d.data, d.removed),
        ),
        Source(
            subjects.offers_stream(region),
            subjects.offer(region, "*"),
            lambda s, d: s.offer(node_of(d.subject), d.data, d.removed),
        ),
        Source(
            subjects.heartbeats_stream(region),
            subjects.heartbeat(region, "*"),
            lambda s, d: s.heartbeat(node_of(d.subject), d.removed),
        ),
        Source(f"KV_{lease}", f"$KV.{lease}.{subjects.LEADER_KEY}", lambda s, d: s.leased(d.data, d.removed)),
        Source(subjects.summary_stream(region), subjects.summary(region), lambda s, d: s.summarised(d.data)),
        Source(
            subjects.views_stream(region),
            subjects.view("*"),
            lambda s, d: s.viewed(subjects.view_origin(d.subject), d.data),
        ),
    ]


def absent(error: FederationUnavailable) -> bool:
    """Whether a direct get failed because nobody serves the stream: it does not exist (yet: a
    region provisioned by an older version, before its scheduler updated it)."""
    return "refused: 503" in str(error)


class Watcher:
    """Reads every region into ``board`` until stopped; ``bus(region)`` gives a region's connection
    (the client's, which reconnects by itself)."""

    def __init__(
        self,
        board: Board,
        bus: Callable[[str], Awaitable[Bus]],
        poll: float = POLL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.board, self.bus, self.poll, self.clock = board, bus, poll, clock
        self.changed = asyncio.Condition()
        self._cursors: dict[tuple[str, str], int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._watch(name)) for name in self.board.regions]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_changed(self, version: int, timeout: float) -> int:
        """The board's version once it moved past ``version``, or after ``timeout`` seconds."""
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.changed.wait_for(lambda: self.board.version != version)
        return self.board.version

    async def _watch(self, name: str) -> None:
        region = self.board.regions[name]
        while True:
            moved = False
            try:
                bus = await self.bus(name)
                for source in sources(name):
                    latest: dict[str, Delivery] = {}  # a key written again since: only its last value
                    try:
                        async for item in self._new(bus, source):
                            latest.pop(item.subject, None)
                            latest[item.subject] = item
                    except FederationUnavailable as exc:
                        if not absent(exc):
                            raise
                    finally:  # what was read counts even if the read broke off (the cursor moved)
                        for item in latest.values():  # in the order of their last writes
                            source.apply(region, item)
                        moved = moved or bool(latest)
                if region.error:
                    region.error, moved = "", True
                region.read_at = self.clock()
            except FederationError as exc:
                if region.error != str(exc):
                    log.info("region unreadable", region=name, error=str(exc))
                    region.error, moved = str(exc) or type(exc).__name__, True
            except (TimeoutError, OSError) as exc:
                region.error, moved = f"{type(exc).__name__}: {exc}", True
            if moved:
                self.board.changed()
                async with self.changed:
                    self.changed.notify_all()
            await asyncio.sleep(self.poll)  # sleep-ok: the poll interval of a region's reads

    async def _new(self, bus: Bus, source: Source) -> AsyncIterator[Delivery]:
        """What ``source`` stored since the last read (everything, the first time): every message
        of an ``every`` source, else each subject's latest once anything changed (a node's ledger
        rewritten ten times since is read once)."""
        key = (source.stream, source.filter)
        start = self._cursors.get(key, 1)
        if source.every:
            async for item in scan(bus, source.stream, source.filter, start_sequence=start):
                self._cursors[key] = item.sequence + 1
                yield item
            return
        if not await newer(bus, source.stream, source.filter, start):
            return
        items, upto = await latest(bus, source.stream, source.filter)
        self._cursors[key] = upto + 1
        for item in items:
            yield item
