"""The region's stream and bucket layout, created idempotently through :class:`~federation.bus.Bus`
(which alone talks NATS); ``subjects.md`` documents every name.

:func:`provision` makes a region's streams, buckets and its audit stream (its views stream
captures every region's summary broadcast, which the hub passes to every region);
:func:`provision_audit_all` the hub's ``AUDIT_ALL``. An existing layout is updated in place where
the server allows it. Every stream is on file: heartbeat TTL markers are node-death events and
must survive a server restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Sequence

from federation import subjects
from federation.bus import Bus, objects
from federation.bus.layout import StreamSpec
from federation.errors import FederationUnavailable
from federation.identity import Credentials, TlsFiles

DAY = 24 * 3600.0
AUDIT_HISTORY = 64  # versions kept per ledger and job record: the audit stream's sources read them
RECORD_BYTES = 4 * 1024**2  # the largest ledger or job record
AUDIT_BYTES = 5 * 1024**2  # the largest audited message (a journal batch, a ledger)
OBJECT_RETENTION = 7 * DAY  # how long a new object store keeps jobs' files


def _stream_specs(region: str) -> list[StreamSpec]:
    return [
        StreamSpec(
            name=subjects.workloads_stream(region),
            subjects=(subjects.workloads_filter(region),),
            max_age=7 * DAY,
            duplicate_window=120.0,
            max_msg_size=64 * 1024,
        ),
        StreamSpec(
            name=subjects.heartbeats_stream(region),
            subjects=(subjects.heartbeat(region, "*"),),
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            subject_delete_marker_ttl=60.0,
            allow_direct=True,
        ),
        StreamSpec(
            name=subjects.offers_stream(region),
            subjects=(subjects.offer(region, "*"),),
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            allow_direct=True,
            max_msg_size=64 * 1024,
        ),
        StreamSpec(
            name=subjects.status_stream(region),
            subjects=(subjects.job_event(region, "*", "*"),),
            max_age=7 * DAY,
            max_msg_size=64 * 1024,
        ),
        StreamSpec(
            name=subjects.logs_stream(region),
            subjects=(subjects.job_log(region, "*", "*"),),
            max_age=7 * DAY,
            max_bytes=1024**3,
            max_msg_size=64 * 1024,
            allow_direct=True,
        ),
        StreamSpec(
            name=subjects.summary_stream(region),
            subjects=(subjects.summary(region),),
            max_msgs_per_subject=1,
            max_msg_size=256 * 1024,
            allow_direct=True,
        ),
        # every region's latest summary as broadcast (``fed.*.view``), its own included. An older
        # layout sourced each peer's summary stream instead: the update drops those sources
        StreamSpec(
            name=subjects.views_stream(region),
            subjects=(subjects.view("*"),),
            max_msgs_per_subject=1,
            max_msg_size=256 * 1024,
            allow_direct=True,
        ),
        StreamSpec(
            name=subjects.quarantine_stream(region),
            subjects=(subjects.quarantine(region, "*"),),
            max_age=30 * DAY,
            max_msg_size=256 * 1024,
        ),
    ]


async def _replicas(bus: Bus, stream: str, wanted: int | None) -> int:
    """``wanted``, else what ``stream`` has now (1 for a new one): a scheduler started without
    ``--replicas`` never scales a clustered region's streams down."""
    if wanted is not None:
        return wanted
    facts = await bus.stream_facts(stream)
    return facts.replicas if facts is not None else 1


async def provision(
    bus: Bus, region: str, replicas: int | None = None, retention: float | None = None
) -> None:
    """Create (or update) every stream and bucket of ``region`` on the connected server.

    ``replicas`` is each stream's replica count: 1 on a single server, 3 on a region's 3-server
    cluster (it then survives the loss of one server). Given, existing streams are changed to it;
    None keeps what each stream has (1 for a new one). ``retention`` is how long the object store
    keeps jobs' files (the region policy's ``object_retention``); None leaves an existing store
    as it is (:data:`OBJECT_RETENTION` for a new one).
    """
    # an older layout kept beats and offers in memory, which cannot be updated in place; they are
    # transient (each node sends its next one within seconds), so those two are made again
    transient = (subjects.heartbeats_stream(region), subjects.offers_stream(region))
    for spec in _stream_specs(region):
        spec = dataclasses.replace(spec, replicas=await _replicas(bus, spec.name, replicas))
        await bus.ensure_stream(spec, recreate_if_not_file=spec.name in transient)
    # the buckets keep a value's last versions (history) so that the audit stream, which sources
    # them, never misses a superseded one: the audit costs the scheduler nothing
    ledger, jobs = subjects.ledger_bucket(region), subjects.jobs_bucket(region)
    for name, tap in ((ledger, subjects.ledger_changes(region, ">")), (jobs, "")):
        spec = bucket(name, AUDIT_HISTORY, republish=tap)
        await bus.ensure_stream(dataclasses.replace(spec, replicas=await _replicas(bus, spec.name, replicas)))
    await _provision_audit(bus, region, replicas)
    if retention is not None or await bus.stream_facts(subjects.objects_stream(region)) is None:
        await retain_objects(bus, region, retention or OBJECT_RETENTION, replicas)
    # the lease: one key whose value expires (per-message TTL, a delete marker on expiry)
    spec = bucket(subjects.lease_bucket(region), 1, marker_ttl=60.0, rollup=False)
    await bus.ensure_stream(dataclasses.replace(spec, replicas=await _replicas(bus, spec.name, replicas)))


async def retain_objects(bus: Bus, region: str, retention: float, replicas: int | None = None) -> None:
    """Create ``region``'s object store, or change how long it keeps files (``replicas`` as for
    :func:`provision`: None keeps what it has)."""
    store = objects_store(region, retention)
    await bus.ensure_stream(dataclasses.replace(store, replicas=await _replicas(bus, store.name, replicas)))


def objects_store(region: str, retention: float) -> StreamSpec:
    """The region's object store (jobs' input and output files): a JetStream Object Store bucket's
    stream, whose messages the server removes ``retention`` seconds after they were stored."""
    name = subjects.objects_bucket(region)
    return StreamSpec(
        name=subjects.objects_stream(region),
        subjects=(f"$O.{name}.C.>", f"$O.{name}.M.>"),
        max_age=retention,
        duplicate_window=120.0,
        max_msg_size=objects.CHUNK + 4096,
        allow_direct=True,
        allow_rollup=True,
    )


def bucket(
    name: str, history: int, *, republish: str = "", marker_ttl: float = 0.0, rollup: bool = True
) -> StreamSpec:
    """The stream of KV bucket ``name``, keeping ``history`` values per key (what nats-py's
    ``create_key_value`` makes, plus what it cannot ask for: a delete marker on TTL expiry)."""
    return StreamSpec(
        name=f"KV_{name}",
        subjects=(f"$KV.{name}.>",),
        max_msgs_per_subject=history,
        max_msg_size=RECORD_BYTES,
        duplicate_window=120.0,
        allow_msg_ttl=True,
        subject_delete_marker_ttl=marker_ttl,
        allow_direct=True,
        allow_rollup=rollup,
        deny_delete=True,
        discard_new=True,
        republish=republish,
    )


async def _provision_audit(bus: Bus, region: str, replicas: int | None) -> None:
    """The region's audit stream. Created on a region that already has history (an upgrade), it
    records each origin's last sequence then as its ``fed_baseline`` metadata: what came before was
    never audited, and ``fed audit check`` does not call it a gap. A source added to an existing
    audit stream gets its baseline the same way."""
    name, sources = subjects.audit_stream(region), subjects.audit_sources(region)
    facts = await bus.stream_facts(name)
    metadata, known = (dict(facts.metadata), set(facts.sources)) if facts else ({}, set())
    baseline: dict[str, int] = json.loads(metadata.get(subjects.BASELINE, "{}"))
    for source in sources:
        if source not in known and (last := await bus.last_sequence(source) or 0):
            baseline[source] = last
    if baseline:
        metadata[subjects.BASELINE] = json.dumps(baseline, sort_keys=True)
    spec = StreamSpec(
        name=name,
        subjects=(subjects.inputs(region),),
        replicas=await _replicas(bus, name, replicas),
        sources=tuple((source, "") for source in sources),
        deny_delete=True,
        deny_purge=True,
        max_msg_size=AUDIT_BYTES,
        metadata=metadata,
        allow_direct=True,  # auditors read by batched direct gets (federation.bus.scan)
    )
    await bus.ensure_stream(spec)


async def provision_audit_all(bus: Bus, regions: Sequence[str]) -> None:
    """On the hub: ``AUDIT_ALL`` sources every region's audit stream (no delete, no purge)."""
    spec = StreamSpec(
        name=subjects.AUDIT_ALL,
        sources=tuple((subjects.audit_stream(region), region) for region in sorted(regions)),
        deny_delete=True,
        deny_purge=True,
        max_msg_size=AUDIT_BYTES,
        allow_direct=True,
    )
    await bus.ensure_stream(spec)


async def wait_for_jetstream(
    url: str, deadline: float = 20.0, tls: TlsFiles | None = None, credentials: Credentials | None = None
) -> None:
    """Block until the server at ``url`` answers JetStream requests (or raise)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: Exception | None = None
    while loop.time() < end:
        try:
            bus = await Bus.connect(
                url, "fed-probe", retry_forever=False, timeout=1.0, tls=tls, credentials=credentials
            )
        except FederationUnavailable as exc:
            last = exc
            await asyncio.sleep(0.1)
            continue
        try:
            await bus.jetstream_ready()
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.1)
        finally:
            await bus.close()
    raise FederationUnavailable(url, f"JetStream not ready: {last}")
