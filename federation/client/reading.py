"""Reading jobs: a record (from its home, or the region it was forwarded to), why it is where
it is, waiting for it to end, a job array's elements, listings, and output. With a tenant's
credentials every read is a question to the region's leading scheduler (it answers only about the
tenant's own jobs); otherwise the client reads the region's buckets and streams itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from federation import subjects
from federation.bus import FAILOVER, Delivery
from federation.client.connections import Connections
from federation.client.records import Explanation, _readable, _record
from federation.errors import FederationUnavailable, InvalidRequest, NotFound, RemoteProtocolError
from federation.schemas import (
    PRIORITY_RANK,
    JobRecord,
    TenantQuery,
    TenantReply,
    decode,
    decode_tenant_reply,
    encode,
)

TENANT_POLL = 0.25  # seconds between a tenant's questions while it waits for a job
ARRAY_POLL = 1.0  # seconds between reads of an array's elements while waiting for them all


@dataclass(frozen=True)
class JobsPage:
    """A page of job records (oldest first) and where the next page starts, per region (empty:
    this was the last page)."""

    records: list[JobRecord]
    cursor: dict[str, int]


Page = tuple[list[tuple[int, JobRecord]], int]  # (sequence, record) newest first, next page's below


def _newest(pages: dict[str, Page], limit: int) -> tuple[list[JobRecord], dict[str, int]]:
    """Up to ``limit`` records taken from the fronts of the regions' pages (each newest first in its
    own stream's order), the most recently updated front first, and each region's cursor: where
    what was taken of it stops. Only a front is ever taken, so no record is shown twice or skipped
    across pages, even where ``updated_at`` does not follow a region's stream order."""
    taken: list[JobRecord] = []
    fronts = dict.fromkeys(pages, 0)
    while len(taken) < limit:
        ready = [name for name, (read, _) in pages.items() if fronts[name] < len(read)]
        if not ready:
            break
        name = max(ready, key=lambda n: pages[n][0][fronts[n]][1].updated_at)
        taken.append(pages[name][0][fronts[name]][1])
        fronts[name] += 1
    cursor: dict[str, int] = {}
    for name, (read, further) in pages.items():
        if fronts[name] < len(read):  # read but not taken: the next page starts with it
            cursor[name] = read[fronts[name]][0] + 1
        elif further:
            cursor[name] = further
    return taken, cursor


def _listed(records: list[JobRecord], *, across: bool) -> list[JobRecord]:
    """Records as a listing shows them: oldest first; ``across`` regions, a job handed to another
    region only once, by the region it lives in."""
    if across:
        elsewhere = {r.id for r in records if r.spec.origin}
        records = [r for r in records if not (r.state == "forwarded" and r.id in elsewhere)]
    return sorted(records, key=lambda r: (r.submitted_at, r.id))


class Reading(Connections):
    """Reading jobs, their explanations and their output."""

    # --- read -------------------------------------------------------------------------------------

    async def job(self, job_id: str, *, region: str | None = None) -> JobRecord:
        """A job's record, from its region (searching every region when none is given)."""
        subjects.check_token(job_id, "job id")
        names = [self._region(region)] if region else self.regions
        unavailable: list[FederationUnavailable] = []
        for name in names:
            try:
                if self.tenant:
                    with contextlib.suppress(NotFound):
                        return (await self._ask(name, "job", TenantQuery(job=job_id))).records[0]
                    continue
                bus = await self.bus(name)
                value, _ = await bus.kv_get(subjects.jobs_bucket(name), job_id)
            except FederationUnavailable as exc:
                if region:
                    raise
                unavailable.append(exc)
                continue
            if value is not None:
                return decode(JobRecord, value)
        if len(unavailable) == len(names):  # no region answered: say why, not "not found"
            raise unavailable[0]
        raise NotFound("job", job_id)

    async def _ask(self, region: str, verb: str, query: TenantQuery, *, tenant: str = "") -> TenantReply:
        """A tenant's question to ``region``'s leading scheduler (as ``tenant``: an operator's
        credentials may ask on any tenant's subject)."""
        bus = await self.bus(region)
        data = await bus.request(
            subjects.tenant_api(region, tenant or self.tenant, verb), encode(query), timeout=FAILOVER
        )
        reply = decode_tenant_reply(data)
        if reply.error.endswith("not found"):
            raise NotFound("job", query.job)
        if reply.error:
            raise InvalidRequest(reply.error)
        return reply

    async def where(self, job_id: str, *, region: str | None = None) -> JobRecord:
        """The record of the region the job lives in: its home's, or the region it was forwarded to
        (the home's while that region has not written its record yet, or cannot be reached)."""
        record = await self.job(job_id, region=region)
        if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
            with contextlib.suppress(NotFound, FederationUnavailable):
                return await self.job(job_id, region=record.forwarded_to)
        return record

    async def explain(self, job_id: str, *, region: str | None = None) -> Explanation:
        """Why a job is pending (filters, queue position now) or why it went where it did.

        A job handed to another region is explained from that region's record; ``via`` is then
        the home region's record (why it left).
        """
        home = await self.job(job_id, region=region)
        record = await self.where(job_id, region=home.region)
        via = home if record.region != home.region else None  # (where() reads the record again)
        position = 0
        if record.state == "pending":
            waiting = await self.jobs(region=record.region, state="pending")
            ordered = sorted(waiting, key=lambda r: (PRIORITY_RANK[r.spec.priority], r.submitted_at, r.id))
            position = next((i + 1 for i, r in enumerate(ordered) if r.id == job_id), 0)
        return Explanation(record=record, decision=record.decision, queue_position=position, via=via)

    async def wait(
        self,
        job_id: str,
        *,
        region: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[JobRecord], None] | None = None,
    ) -> JobRecord:
        """Follow the job's record until it is terminal (into the region it was forwarded to);
        ``on_change`` sees each record on the way."""
        name = self._region(region)
        if self.tenant:  # no bucket access: ask until the record is terminal
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                # not recorded yet, or the leader is changing: ask again
                with contextlib.suppress(NotFound, FederationUnavailable):
                    record = await self.job(job_id, region=name)
                    if record.terminal:
                        return record
                    if on_change is not None:
                        on_change(record)
                    if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
                        name = record.forwarded_to
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} not finished after {timeout}s")
                await asyncio.sleep(TENANT_POLL)
        bus = await self.bus(name)
        bucket = subjects.jobs_bucket(name)
        tail = await bus.tail(f"KV_{bucket}", f"$KV.{bucket}.{job_id}", last_per_subject=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                item = await tail.next(timeout=left)
                if item is None:
                    raise TimeoutError(f"job {job_id} not finished after {timeout}s")
                if item.removed:
                    continue
                try:
                    record = decode(JobRecord, item.data)
                except RemoteProtocolError:
                    continue  # an unreadable value: the scheduler quarantines and replaces it
                if record.terminal:
                    return record
                if on_change is not None:
                    on_change(record)
                if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    return await self.wait(
                        job_id, region=record.forwarded_to, timeout=left, on_change=on_change
                    )
        finally:
            await tail.stop()

    async def records(self, job_ids: Sequence[str], *, region: str | None = None) -> list[JobRecord]:
        """The records of ``job_ids`` submitted to ``region``, each where it lives (the region it
        was handed to, once that region has a record of it), in the order asked; a job no region
        knows is left out, and one asked twice is listed once. Reads those jobs' keys only, however
        many records the buckets hold."""
        name = self._region(region)
        job_ids = list(dict.fromkeys(job_ids))
        if self.tenant:  # (no bucket access: one question per job)
            asked: list[JobRecord] = []
            for job_id in job_ids:
                with contextlib.suppress(NotFound):
                    asked.append(await self.where(job_id, region=name))
            return asked
        found = await self._keys(name, job_ids)
        moved: dict[str, list[str]] = {}
        for record in found.values():
            if record.state == "forwarded" and record.forwarded_to in self.connection.regions:
                moved.setdefault(record.forwarded_to, []).append(record.id)
        for other, ids in moved.items():
            with contextlib.suppress(FederationUnavailable):  # (the home's record stands meanwhile)
                found.update(await self._keys(other, ids))
        return [found[job_id] for job_id in job_ids if job_id in found]

    async def _keys(self, region: str, job_ids: Sequence[str]) -> dict[str, JobRecord]:
        for job_id in job_ids:
            subjects.check_token(job_id, "job id")
        bus = await self.bus(region)
        values = await bus.kv_get_many(subjects.jobs_bucket(region), job_ids)
        return {record.id: record for record in _readable(values)}

    async def array(
        self, array_id: str, *, region: str | None = None, indices: Sequence[int] | None = None
    ) -> list[JobRecord]:
        """The records of a job array's elements (where each lives), by index; empty when no
        region knows that array. With the array's ``indices`` (a :class:`JobArray` has them) only
        its elements are read, from ``region``, its home (default: the default region), and from
        the regions they were handed to; without them every record of ``region`` (default: every
        region) is read to find them. A tenant asks every region for all its jobs either way (one
        question per region, where a question per element would be one per job)."""
        subjects.check_token(array_id, "array id")
        if indices is not None and not self.tenant:
            records = await self.records([f"{array_id}-{index}" for index in indices], region=region)
        else:  # (a tenant's elements may live in another region than their home: every region)
            where = region if indices is None else None
            records = [r for r in await self.jobs(region=where) if r.spec.array == array_id]
        return sorted(records, key=lambda r: r.spec.array_index)

    async def wait_array(
        self,
        array_id: str,
        count: int,
        *,
        region: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[list[JobRecord]], None] | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[JobRecord]:
        """Wait until ``count`` elements of the array are known and every one is terminal (read
        every :data:`ARRAY_POLL` seconds, only its elements' records when its ``indices`` are
        given: :meth:`array`; ``on_change`` sees each read whose states moved)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            records = await self.array(array_id, region=region, indices=indices)
            states: dict[str, str] = {r.id: r.state for r in records}
            if states != seen:
                seen = states
                if on_change is not None:
                    on_change(records)
            if len(records) >= count and all(r.terminal for r in records):
                return records
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"array {array_id} not finished after {timeout} s")
            await asyncio.sleep(ARRAY_POLL)  # sleep-ok: the poll interval of a read of every element

    async def jobs(
        self, *, region: str | None = None, state: str | None = None, limit: int = 0
    ) -> list[JobRecord]:
        """Job records of one region (or all), oldest first, optionally of one state; with
        ``limit``, only the ``limit`` most recently changed (:meth:`jobs_page`: fast in a bucket of
        any size). Across all regions a job handed to another region is listed once, by the
        region it lives in."""
        if limit:
            return (await self.jobs_page(region=region, state=state, limit=limit)).records
        out: list[JobRecord] = []
        for name in [self._region(region)] if region else self.regions:
            if self.tenant:
                out += (await self._ask(name, "jobs", TenantQuery(state=state or ""))).records
                continue
            bus = await self.bus(name)
            for record in _readable(await bus.kv_load(subjects.jobs_bucket(name))):
                if state is None or record.state == state:
                    out.append(record)
        return _listed(out, across=not region)

    async def jobs_page(
        self,
        *,
        region: str | None = None,
        state: str | None = None,
        limit: int = 100,
        cursor: Mapping[str, int] | None = None,
    ) -> JobsPage:
        """One page of job records: the ``limit`` most recently changed (of ``state`` if given) of
        one region or all, listed oldest first, and the ``cursor`` of the next page (empty: none).
        Each region's bucket is read backwards from its newest writes, so a page costs the same
        with a hundred jobs or a hundred thousand (:meth:`~federation.bus.Bus.kv_recent`). Pass a
        page's ``cursor`` back for the next one: it says, per region, where that page stopped.
        With a tenant's credentials the region's scheduler answers (the tenant's own jobs, at
        most :data:`federation.scheduler.tenants.MAX_RECORDS`): one page."""
        if limit < 1:
            raise InvalidRequest(f"a page holds at least one job, not {limit}")
        names = [self._region(region)] if region else self.regions
        if cursor is not None:
            names = [name for name in names if name in cursor]
        if self.tenant:
            records = await self.jobs(region=region, state=state)
            return JobsPage(records=records[-limit:], cursor={})
        pages: dict[str, Page] = {}
        for name in names:
            bus = await self.bus(name)
            found: dict[int, JobRecord] = {}

            def keep(item: Delivery, found: dict[int, JobRecord] = found) -> bool:
                record = _record(subjects.last_token(item.subject), item.data)
                if record is None or (state is not None and record.state != state):
                    return False
                found[item.sequence] = record
                return True

            below = cursor.get(name, 0) if cursor is not None else 0
            latest, further = await bus.kv_recent(
                subjects.jobs_bucket(name), limit=limit, below=below, keep=keep
            )
            pages[name] = ([(item.sequence, found[item.sequence]) for item in latest], further)
        newest, next_cursor = _newest(pages, limit)
        records = _listed(newest, across=not region)
        return JobsPage(records=records, cursor=next_cursor)

    async def logs(
        self, job_id: str, *, region: str | None = None, follow: bool = False
    ) -> AsyncIterator[bytes]:
        """The job's output chunks (from the region that runs it); ``follow`` keeps reading until
        the job is terminal."""
        record = await self.where(job_id, region=region)
        if self.tenant:
            async for chunk in self._tenant_logs(record, follow):
                yield chunk
            return
        bus = await self.bus(record.region)
        tail = await bus.tail(
            subjects.logs_stream(record.region), subjects.job_log_filter(record.region, job_id)
        )
        try:
            while True:
                if await tail.caught_up():
                    if not follow:
                        return
                    record = await self.job(job_id, region=record.region)
                    if record.terminal and await tail.caught_up():
                        return  # the agent stores output before the exit report: nothing more comes
                item = await tail.next(timeout=0.5 if follow else 5.0)
                if item is not None:
                    yield item.data
        finally:
            await tail.stop()

    async def _tenant_logs(self, record: JobRecord, follow: bool) -> AsyncIterator[bytes]:
        after = 0
        while True:
            reply = await self._ask(record.region, "logs", TenantQuery(job=record.id, after=after))
            for chunk in reply.chunks:
                yield chunk
            if reply.next > after:
                after = reply.next
                continue
            if not follow or record.terminal:
                return
            record = await self.job(record.id, region=record.region)  # terminal: one more read, then done
            if not record.terminal:
                await asyncio.sleep(TENANT_POLL)
