"""Reading the audit trail: its events, a check of the invariants over it, a re-run of the
placement core against it, and the compute used; and the quarantine's refused messages. None of it
is a tenant's to read: a tenant's credentials are refused at once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec

from federation import subjects
from federation.audit.check import Checker, Report, read
from federation.audit.trail import AuditEvent, baseline, events, matches, origins_last, processed
from federation.audit.usage import DEFAULT_BY, Accountant, Dimension, UsageReport, dimensions
from federation.audit.verify import Verification, verify
from federation.bus import Bus
from federation.client.connections import HUB_KEY
from federation.client.submitting import Submitting
from federation.errors import FederationError, FederationUnavailable, NotPermitted
from federation.schemas import Quarantined


class Auditing(Submitting):
    """The audit trail, usage accounting and the quarantine."""

    # --- audit ------------------------------------------------------------------------------------

    def _not_for_tenants(self, what: str) -> None:
        """Refuse at once what a tenant's credentials cannot read (the server would drop the
        requests, and the caller would wait for a timeout that says nothing about permissions)."""
        if self.tenant:
            raise NotPermitted(what, f"tenant {self.tenant}", why="a tenant sees only its own jobs and logs")

    async def _audit_source(self, region: str | None, everywhere: bool) -> tuple[Bus, str]:
        self._not_for_tenants("the audit trail")
        if everywhere:
            return await self._connected(HUB_KEY, self.connection.hub_url), subjects.AUDIT_ALL
        name = self._region(region)
        return await self.bus(name), subjects.audit_stream(name)

    async def audit(
        self,
        *,
        region: str | None = None,
        everywhere: bool = False,
        from_seq: int = 0,
        since: float = 0.0,
        job: str = "",
        node: str = "",
        tenant: str = "",
    ) -> AsyncIterator[AuditEvent]:
        """The audit trail of a region (from its own stream: works while it is cut off) or, with
        ``everywhere``, of every region (the hub's ``AUDIT_ALL``), oldest first, as it is now."""
        bus, stream = await self._audit_source(region, everywhere)
        async for event, _ in events(bus, stream, from_seq=from_seq, since=since):
            if matches(event, job=job, node=node, tenant=tenant):
                yield event

    async def audit_check(
        self,
        *,
        region: str | None = None,
        everywhere: bool = False,
        wait: float = 10.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Report:
        """Rebuild the state from the audit trail and check the invariants (see
        :mod:`federation.audit.check`); ``progress(events, last)`` is told how far it got.

        What the region has handled (its consumers' floors) and each origin's last sequence are
        read first; the pass then reads until the audit has copied that far (up to ``wait``
        seconds), and the live buckets are read last, for I8.
        """
        bus, stream = await self._audit_source(region, everywhere)
        names = self.regions if everywhere else [self._region(region)]
        handled: dict[str, int] = {}
        origins: dict[str, int] = {}
        for name in names:
            if everywhere:
                with contextlib.suppress(FederationUnavailable):
                    origins.update(await origins_last(await self.bus(name), [subjects.audit_stream(name)]))
            else:
                handled.update(await processed(bus, name))
                origins.update(await origins_last(bus, subjects.audit_sources(name)))
        checker = Checker(await baseline(bus, stream))
        await read(bus, stream, checker, origins, wait=wait, progress=progress)
        live: dict[tuple[str, str], tuple[bytes, int]] = {}
        if not everywhere:  # I8 is checked against the region's own buckets
            for bucket in (subjects.ledger_bucket(names[0]), subjects.jobs_bucket(names[0])):
                live.update({(bucket, key): item for key, item in (await bus.kv_load(bucket)).items()})
        return checker.finish(origins_last=origins, live=live, processed=handled)

    async def audit_verify(self, *, region: str | None = None, everywhere: bool = False) -> Verification:
        """Re-run the placement core on the inputs it was fed and compare its decisions step by step
        (see :mod:`federation.audit.verify`)."""
        bus, stream = await self._audit_source(region, everywhere)
        return await verify(bus, stream, self.regions if everywhere else [self._region(region)])

    # --- usage ------------------------------------------------------------------------------------

    async def usage(
        self,
        *,
        since: float = 0.0,
        by: Dimension | Sequence[Dimension] = DEFAULT_BY,
        region: str | None = None,
        everywhere: bool = False,
    ) -> UsageReport:
        """The compute used since ``since`` (Unix seconds; 0: the whole trail), from the audit trail
        (what ``fed usage`` prints; see :mod:`federation.audit.usage` for what is counted and the units).

        Every region's own trail by default (read in turn, the hub not needed): a region that
        cannot be read is listed in ``unread`` and the others are counted. ``region`` reads one
        region's trail, which holds only what ran there (what it lent, not what it borrowed);
        ``everywhere`` the hub's ``AUDIT_ALL``. ``by`` names the breakdowns (``tenant``,
        ``region``, ``origin``, ``node``). A tenant's credentials are refused at once: the audit
        trail holds every tenant's jobs.
        """
        if self.tenant:
            raise NotPermitted(
                "usage accounting (it reads the audit trail)",
                f"tenant {self.tenant}",
                why="not permitted for a tenant, which sees only its own jobs and logs",
            )
        accountant = Accountant(since=since, by=dimensions(by))
        until = time.time()
        scopes: list[tuple[str | None, bool]] = [(name, False) for name in self.regions]
        if everywhere or region:
            scopes = [(None, True)] if everywhere else [(self._region(region), False)]
        read: list[str] = []
        unread: list[str] = []
        for name, hub in scopes:
            stream = subjects.AUDIT_ALL if hub else subjects.audit_stream(name or "")
            try:
                bus, _ = await self._audit_source(name, hub)
                async for event, value in events(bus, stream, since=since):
                    accountant.feed(event.region, event.at, value)
            except FederationError as exc:
                if len(scopes) == 1 or isinstance(exc, NotPermitted):
                    raise
                unread.append(f"{stream}: {exc}")
                continue
            read.append(stream)
        return accountant.report(until=until, read=read, unread=unread)

    async def quarantined(self, *, region: str | None = None, limit: int = 0) -> list[Quarantined]:
        """Refused messages with their reasons, oldest first (one region, or all); with ``limit``
        only the ``limit`` newest, read from the end of each region's stream (however long)."""
        self._not_for_tenants("the quarantine")
        out: list[Quarantined] = []
        for name in [self._region(region)] if region else self.regions:
            bus = await self.bus(name)
            stream = subjects.quarantine_stream(name)
            last = await bus.last_sequence(stream)
            if not last:
                continue
            start = max(1, last - limit + 1) if limit else 1
            refused = subjects.quarantine(name, "*")
            async for item in bus.follow(stream, refused, start_sequence=start, until_caught_up=True):
                out.append(msgspec.json.decode(item.data, type=Quarantined))
        out.sort(key=lambda q: q.at)
        return out[-limit:] if limit else out
