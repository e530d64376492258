"""A tenant's window on a region: its own jobs and logs, answered by the region's leading scheduler.

Tenants' credentials grant no stream, bucket or audit access (``federation.ops.auth``): a job record or
a log chunk read straight from JetStream could be anyone's. Instead a tenant asks on
``fed.<region>.tenant.<tenant>.<verb>``, a subject its permissions pin to its own name, and the
leader answers from the jobs bucket and the logs stream, keeping only what belongs to that tenant
(``spec.tenant``). Another tenant's job is answered exactly like a job that does not exist.

Verbs (request: :class:`~federation.schemas.TenantQuery`, reply:
:class:`~federation.schemas.TenantReply`, JSON):

- ``job``: the record of ``job``;
- ``jobs``: the tenant's records (of ``state`` if given), oldest first, at most ``MAX_RECORDS``
  (from the leader's own view of the jobs, without reading the bucket);
- ``logs``: ``job``'s output chunks stored after stream sequence ``after``, up to ``LOG_BYTES``
  per answer; ``next`` is where to ask from again;
- ``get``: the chunks of ``job``'s output file ``name`` (one its record lists as stored) stored
  after sequence ``after`` in the object store, up to ``LOG_BYTES`` per answer; ``next`` as for
  ``logs`` (the asker checks the size and digest the record gives);
- ``limits``: what the region's policy allows (``max_input_bytes``), asked before an upload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import msgspec
import structlog

from federation import subjects
from federation.bus import Bus, Delivery, objects
from federation.core.policy import Policy
from federation.errors import FederationError, FederationUnavailable, RemoteProtocolError
from federation.schemas import JobRecord, TenantQuery, TenantReply, Transition, decode

QUEUE_GROUP = "schedulers"
MAX_RECORDS = 1000
LOG_BYTES = 512 * 1024
ANSWER_BYTES = 4 * 1024 * 1024  # of records per answer (the servers' max_payload is 8 MB)
QUERY_BYTES = 4096
CONCURRENT = 4  # questions answered at once (each may read the whole jobs bucket)


class Tenants:
    """Answers tenants' questions about ``region`` on ``bus`` (run by the leading scheduler)."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        known: Callable[[], list[JobRecord]],
        policy: Callable[[], Policy] = Policy,
    ) -> None:
        self.bus = bus
        self.region = region
        self.known = known  # the leader's own records (its core's): no bucket read per question
        self.policy = policy
        self.log = structlog.get_logger().bind(region=region)
        self._slots = asyncio.Semaphore(CONCURRENT)  # a flood of questions queues; placement goes on

    async def serve(self) -> None:
        subscription = await self.bus.serve(
            subjects.tenant_api(self.region, "*", "*"), self.answer, queue=QUEUE_GROUP, concurrent=True
        )
        try:
            await asyncio.Event().wait()
        finally:
            await subscription.unsubscribe()

    async def answer(self, subject: str, data: bytes) -> bytes | None:
        parts = subject.split(".")
        tenant, verb = parts[3], parts[4]
        try:
            if len(data) > QUERY_BYTES:
                raise RemoteProtocolError(f"a query is at most {QUERY_BYTES} bytes")
            query = msgspec.json.decode(data or b"{}", type=TenantQuery)
            if query.job:
                subjects.check_token(query.job, "job id")
            async with self._slots:
                reply = await self._answer(tenant, verb, query)
        except FederationUnavailable:
            return None  # the region cannot answer now (a stream leader election): the tenant asks again
        except (msgspec.ValidationError, msgspec.DecodeError, FederationError) as exc:
            reply = TenantReply(error=f"bad query: {exc}")
        except Exception:  # a question must never take the scheduler down
            self.log.exception("tenant question failed", tenant=tenant, verb=verb)
            reply = TenantReply(error="the scheduler could not answer (see its log)")
        return msgspec.json.encode(reply)

    async def _answer(self, tenant: str, verb: str, query: TenantQuery) -> TenantReply:
        if verb == "jobs":
            records = [r for r in self.known() if r.spec.tenant == tenant]
            records = [_own(r) for r in records if not query.state or r.state == query.state]
            records.sort(key=lambda r: (r.submitted_at, r.id))
            kept: list[JobRecord] = []
            size = 0
            for record in records[:MAX_RECORDS]:  # the answer must fit in one message
                size += len(msgspec.json.encode(record))
                if size > ANSWER_BYTES:
                    break
                kept.append(record)
            return TenantReply(records=kept, truncated=len(kept) < len(records))
        if verb == "limits":
            return TenantReply(max_input_bytes=self.policy().max_input_bytes)
        found = await self._record(query.job)
        if found is None or found.spec.tenant != tenant:
            return TenantReply(error=f"job {query.job!r} not found")
        if verb == "job":
            return TenantReply(records=[_own(found)])
        if verb == "logs":
            return await self._logs(found, query.after)
        if verb == "get":
            return await self._file(found, query.name, query.after)
        return TenantReply(error=f"unknown question {verb!r} (job, jobs, logs, get or limits)")

    async def _record(self, job: str) -> JobRecord | None:
        value, _ = await self.bus.kv_get(subjects.jobs_bucket(self.region), job)
        try:
            return decode(JobRecord, value) if value is not None else None
        except RemoteProtocolError:
            return None

    async def _logs(self, record: JobRecord, after: int) -> TenantReply:
        stream, filter_subject = (
            subjects.logs_stream(self.region),
            subjects.job_log_filter(self.region, record.id),
        )
        # only what the nodes the job ran on wrote: any agent may publish a log under any job id
        nodes = {record.node, *record.members}.union(*(_nodes(entry) for entry in record.history))

        def written_by_its_nodes(item: Delivery) -> bool:
            parsed = subjects.parse_status(item.subject)
            return parsed is not None and parsed.node in nodes

        items = self.bus.follow(stream, filter_subject, start_sequence=after + 1, until_caught_up=True)
        return await _page(items, after, written_by_its_nodes)

    async def _file(self, record: JobRecord, name: str, after: int) -> TenantReply:
        ref = next((ref for ref in record.stored if ref.name == name), None)
        if ref is None:
            return TenantReply(error=f"job {record.id} stored no output file {name!r}")
        return await _page(objects.chunks(self.bus, self.region, ref.object, start=after + 1), after)


async def _page(
    items: AsyncIterator[Delivery], after: int, keep: Callable[[Delivery], bool] = lambda item: True
) -> TenantReply:
    """The chunks of ``items`` that ``keep`` accepts, up to ``LOG_BYTES`` in one answer, and the
    stream sequence to ask again after (``after`` when there was nothing)."""
    chunks: list[bytes] = []
    size, last = 0, after
    async with contextlib.aclosing(items):  # type: ignore[type-var]
        async for item in items:
            if keep(item):
                if size + len(item.data) > LOG_BYTES and chunks:
                    break
                chunks.append(item.data)
                size += len(item.data)
            last = item.sequence
    return TenantReply(chunks=chunks, next=last)


def _own(record: JobRecord) -> JobRecord:
    """``record`` as its tenant sees it: without the other jobs a placement decision names."""
    if record.decision is None:
        return record
    decision = msgspec.structs.replace(record.decision, victims=(), runners_up=())
    return msgspec.structs.replace(record, decision=decision)


def _nodes(step: Transition) -> set[str]:
    """The nodes a step of a job's history names: "placed on a,b", "running on a"."""
    for lead in ("placed on ", "running on "):
        if lead in step.reason:
            return {node.strip(" ,;.") for node in step.reason.split(lead, 1)[1].split()[0].split(",")}
    return set()


__all__ = ["Tenants"]
