"""What ``fed status`` shows: each region's nodes (offer, allocations, free capacity, heartbeat),
job counts, queue head, leader, capacity summary and its view of the others. An unreachable region
is reported, not raised; a tenant sees only the counts and queue of its own jobs."""

from __future__ import annotations

import time

from federation import subjects
from federation.client.auditing import Auditing
from federation.client.records import NodeStatus, RegionStatus, _readable
from federation.core.capacity import Free
from federation.errors import FederationUnavailable, RemoteProtocolError
from federation.schemas import (
    JobRecord,
    Lease,
    Ledger,
    Offer,
    Summary,
    TenantQuery,
    decode,
    decode_message,
    decode_summaries,
)


class Status(Auditing):
    """The regions' status, their capacity summaries and their views of each other."""

    async def status(self) -> list[RegionStatus]:
        """Every region: its nodes (offer, allocations, free capacity), job counts and queue head
        (with a tenant's credentials: only the counts and queue of its own jobs)."""
        if self.tenant:
            return [await self._tenant_status(name) for name in self.regions]
        return [await self.region_status(name) for name in self.regions]

    async def _tenant_status(self, name: str) -> RegionStatus:
        endpoint = self.connection.regions[name]
        try:
            records = (await self._ask(name, "jobs", TenantQuery())).records
        except (FederationUnavailable, TimeoutError) as exc:
            return RegionStatus(
                region=name, url=endpoint.url, reachable=False, error=str(exc), tenant=self.tenant
            )
        return _with_jobs(
            RegionStatus(region=name, url=endpoint.url, reachable=True, tenant=self.tenant), records
        )

    async def region_status(self, name: str) -> RegionStatus:
        """One region's status; an unreachable region is reported, not raised."""
        endpoint = self.connection.regions[name]
        try:
            bus = await self.bus(name)
            offers: dict[str, Offer] = {}
            if await bus.last_sequence(subjects.offers_stream(name)) is not None:
                async for item in bus.follow(
                    subjects.offers_stream(name),
                    subjects.offer(name, "*"),
                    last_per_subject=True,
                    until_caught_up=True,
                ):
                    if not item.removed:
                        message = decode_message(item.data)
                        if isinstance(message, Offer):
                            offers[message.node] = message
            ledgers = {
                k: decode(Ledger, v)
                for k, (v, _) in (await bus.kv_load(subjects.ledger_bucket(name))).items()
            }
            records = _readable(await bus.kv_load(subjects.jobs_bucket(name)))
            silent: set[str] = set()  # nodes whose last heartbeat message is the TTL marker
            beating: set[str] = set()  # nodes whose last heartbeat has not expired
            async for item in bus.follow(
                subjects.heartbeats_stream(name),
                subjects.heartbeat(name, "*"),
                last_per_subject=True,
                until_caught_up=True,
            ):
                (silent if item.removed else beating).add(subjects.last_token(item.subject))
            lease_value, _ = await bus.kv_get(subjects.lease_bucket(name), subjects.LEADER_KEY)
            summary = await self.summary(name)
            views = await self.views(name)
        except (FederationUnavailable, TimeoutError) as exc:
            return RegionStatus(region=name, url=endpoint.url, reachable=False, error=str(exc))
        now = time.time()
        nodes = []
        for node in sorted(set(offers) | set(ledgers) | silent | beating):
            offer = offers.get(node)
            allocations = list(ledgers[node].allocations) if node in ledgers else []
            status = NodeStatus(
                node=node,
                live=bool(offer and offer.expires_at > now) and node in beating,
                offer=offer,
                allocations=allocations,
                heartbeat="lost" if node in silent else "ok" if node in beating else "none",
            )
            if offer is not None:
                free = Free.of(offer, allocations)  # the scheduler's own arithmetic
                status.free_cpu, status.free_memory, status.free_gpu = (
                    len(free.cores),
                    free.memory,
                    len(free.gpus),
                )
            nodes.append(status)
        region = RegionStatus(
            region=name,
            url=endpoint.url,
            reachable=True,
            nodes=nodes,
            leader=_leader(lease_value),
            summary=summary,
            views=views,
        )
        return _with_jobs(region, records)

    async def views(self, region: str) -> dict[str, Summary]:
        """``region``'s view of the others: their summaries as broadcast to it (each with its ``at``).

        Read from the region's own stream, so it answers while the region is cut off; a view that
        stopped moving is stale.
        """
        bus = await self.bus(region)
        if await bus.last_sequence(subjects.views_stream(region)) is None:
            return {}
        latest = await bus.latest(subjects.views_stream(region), subjects.view("*"))
        return decode_summaries(((item.subject, item.data) for item in latest.values()), without=region)

    async def summary(self, region: str) -> Summary | None:
        """The region's latest capacity summary as its leader published it (None before the first)."""
        bus = await self.bus(region)
        if not await bus.last_sequence(subjects.summary_stream(region)) is not None:
            return None
        item = await bus.last(subjects.summary_stream(region), subjects.summary(region))
        if item is None:
            return None
        try:
            message = decode_message(item.data)
        except RemoteProtocolError:
            return None
        return message if isinstance(message, Summary) else None


def _with_jobs(status: RegionStatus, records: list[JobRecord]) -> RegionStatus:
    """``status`` with its job counts by state and the head of its queue (oldest first)."""
    for record in records:
        status.jobs[record.state] = status.jobs.get(record.state, 0) + 1
    pending = sorted((r for r in records if r.state == "pending"), key=lambda r: r.submitted_at)
    status.queue = [r.id for r in pending[:20]]
    return status


def _leader(value: bytes | None) -> Lease | None:
    """The region's lease holder, if a readable lease is held."""
    if not value:
        return None
    try:
        return decode(Lease, value)
    except RemoteProtocolError:
        return None
