"""Cross-region peering: the summary a region's leader publishes and its views of the other regions.

The leader publishes :func:`~federation.core.summary.summarize` of its view every
``summary_interval``. Each region's ``fed-<region>-views`` stream sources its peers' summaries
through the hub (:func:`federation.ops.provision.provision_views`). A view that stops moving is stale, and a
link watchdog re-adds its source once the peer answers again, so views catch up within seconds of
a heal instead of after the server's retry backoff. The region's audit stream gets the same
watchdog for its sources: after a source stream's leader moves, its copy resumes within seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from federation import subjects
from federation.bus import Bus
from federation.config import SchedulerConfig
from federation.core.events import Event, ViewsSeen
from federation.errors import FederationError
from federation.schemas import Summary, decode_summaries, encode
from federation.tasks import idle

AUDIT_STALL = 10.0  # seconds a source of the audit stream may go unheard before it is re-added


class Peering:
    """The leader's side of cross-region views (started by the scheduler daemon)."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        config: SchedulerConfig,
        *,
        clock: Callable[[], float],
        log: structlog.typing.FilteringBoundLogger,
        deliver: Callable[[Event], None],
        summary: Callable[[], Summary],
    ) -> None:
        """``deliver`` hands the views to the scheduling loop; ``summary`` is this region's
        capacity summary now (:func:`~federation.core.summary.summarize` of the core's view)."""
        self.bus, self.region, self.config = bus, region, config
        self.clock, self.log, self.deliver, self.summary = clock, log, deliver, summary

    async def publish_summaries(self) -> None:
        """Publish the summary every ``summary_interval`` (latest per region, read by other regions)."""
        while True:
            try:
                await self.bus.store(subjects.summary(self.region), encode(self.summary()), timeout=5.0)
            except FederationError as exc:  # the loop outlives a server outage
                self.log.warning("summary not stored", error=str(exc))
            await idle(self.config.summary_interval)

    async def views(self) -> dict[str, Summary]:
        """The peers' latest summaries as sourced into this region (its view of the federation)."""
        latest = await self.bus.latest(subjects.views_stream(self.region), subjects.summary("*"))
        return decode_summaries(item.data for item in latest.values())

    async def feed_views(self) -> None:
        """Hand the views to the core every ``summary_interval`` (spillover chooses regions by them)."""
        while True:
            try:
                self.deliver(ViewsSeen(views=await self.views()))
            except FederationError as exc:
                self.log.warning("views not read", error=str(exc))
            await idle(self.config.summary_interval)

    async def watch_views(self) -> None:
        """The link watchdog: a peer's view older than three summaries gets its source re-added.

        After a partition heals the server's own retry of a source can take minutes; a source added
        afresh catches up at once. A stale peer is probed every second (one request through the
        hub, failing fast while the link is cut); the source is re-added once the peer answers.
        """
        stale_after = 3 * self.config.summary_interval
        last_try: dict[str, float] = {}
        while True:
            await idle(min(1.0, self.config.summary_interval))
            try:
                views = await self.views()
                now = self.clock()
                for peer in self.config.peers:
                    view = views.get(peer)
                    age = now - view.at if view is not None else float("inf")
                    if age <= stale_after or now - last_try.get(peer, 0.0) < 2.0:
                        continue
                    # only once the peer answers again: re-adding while the link is cut would cost
                    # stream updates every second and gain nothing
                    if await self.bus.domain_reachable(peer):
                        last_try[peer] = now
                        self.log.info("view stale and peer reachable; re-adding its source", peer=peer)
                        stream = subjects.views_stream(self.region)
                        await self.bus.readd_source(stream, subjects.summary_stream(peer))
            except FederationError as exc:
                self.log.warning("views not checked", error=str(exc))

    async def watch_audit(self, stall: float = AUDIT_STALL) -> None:
        """The audit stream's watchdog: a source not heard from for ``stall`` seconds is re-added
        (at most once per ``stall`` each), so the trail keeps up through a server failover."""
        stream = subjects.audit_stream(self.region)
        last_try: dict[str, float] = {}
        while True:
            await idle(stall / 2)
            try:
                for source in await self.bus.stalled_sources(stream, stall):
                    now = self.clock()
                    if now - last_try.get(source, 0.0) < stall:
                        continue
                    last_try[source] = now
                    self.log.info("audit source stalled; re-adding it", source=source)
                    await self.bus.readd_source(stream, source)
            except Exception as exc:  # a watchdog outlives any server error (a failover is its job)
                self.log.warning("audit sources not checked", error=str(exc) or type(exc).__name__)


__all__ = ["Peering"]
