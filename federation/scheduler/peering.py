"""Cross-region peering: the summary a region's leader publishes and its views of the other regions.

The leader stores :func:`~federation.core.summary.summarize` of its view every
``summary_interval`` in its own summary stream, and broadcasts the same bytes as its view
(``fed.<region>.view``, a plain publish). Every region's ``fed-<region>-views`` stream captures
every view, which the hub passes on to each region's server as core NATS messages: no JetStream
consumer or source per pair of regions, so N regions cost the hub N publishes and N x (N - 1)
deliveries per interval and nothing else (``bench/scale.py --part regions`` measures it). A view
sent while a link is cut is lost, and the view ages; the first one after the heal refreshes it.

The region's audit stream has a watchdog for its sources: after a source stream's leader moves, or
a link heals, its copy resumes within seconds instead of after the server's retry backoff.
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
        """Every ``summary_interval``: store the summary (``fed status`` reads it) and broadcast it
        to every region (their views)."""
        while True:
            data = encode(self.summary())
            try:
                await self.bus.store(subjects.summary(self.region), data, timeout=5.0)
            except FederationError as exc:  # the loop outlives a server outage
                self.log.warning("summary not stored", error=str(exc))
            try:
                await self.bus.publish(subjects.view(self.region), data)
            except FederationError as exc:
                self.log.warning("view not broadcast", error=str(exc))
            await idle(self.config.summary_interval)

    async def views(self) -> dict[str, Summary]:
        """The other regions' latest views as captured in this region (its view of the federation)."""
        latest = await self.bus.latest(subjects.views_stream(self.region), subjects.view("*"))
        return decode_summaries(((item.subject, item.data) for item in latest.values()), without=self.region)

    async def feed_views(self) -> None:
        """Hand the views to the core every ``summary_interval`` (spillover chooses regions by them)."""
        while True:
            try:
                self.deliver(ViewsSeen(views=await self.views()))
            except FederationError as exc:
                self.log.warning("views not read", error=str(exc))
            await idle(self.config.summary_interval)

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
