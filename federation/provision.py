"""The region's stream and bucket layout on the server, created idempotently (the other half of the
NATS layer, with :mod:`federation.bus`; ``subjects.md`` documents every name).

:func:`provision` makes a region's streams, buckets and its audit stream; :func:`provision_views`
the views stream sourcing the peers' summaries; :func:`provision_audit_all` the hub's
``AUDIT_ALL``. An existing layout is updated in place where the server allows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import nats.js.errors
from nats.js import api

from federation import subjects
from federation.bus import Bus
from federation.deploy import TlsFiles
from federation.errors import FederationUnavailable

DAY = 24 * 3600.0
AUDIT_HISTORY = 64  # versions kept per ledger and job record: the audit stream's sources read them
BASELINE = "fed_baseline"  # the audit stream's metadata key (read by federation.audit)


def _stream_configs(region: str) -> list[api.StreamConfig]:
    file = api.StorageType.FILE
    configs = [
        api.StreamConfig(
            name=subjects.workloads_stream(region),
            subjects=[subjects.workloads_filter(region)],
            storage=file,
            max_age=7 * DAY,
            duplicate_window=120.0,
            max_msg_size=64 * 1024,
        ),
        api.StreamConfig(
            name=subjects.heartbeats_stream(region),
            subjects=[subjects.heartbeat(region, "*")],
            storage=file,  # the TTL markers must survive a server restart: they are the death events
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            subject_delete_marker_ttl=60.0,
            allow_direct=True,
        ),
        api.StreamConfig(
            name=subjects.offers_stream(region),
            subjects=[subjects.offer(region, "*")],
            storage=file,  # survives a server restart: followers and agents find their stream
            max_msgs_per_subject=1,
            allow_msg_ttl=True,
            allow_direct=True,
            max_msg_size=64 * 1024,
        ),
        api.StreamConfig(
            name=subjects.status_stream(region),
            subjects=[subjects.job_event(region, "*", "*")],
            storage=file,
            max_age=7 * DAY,
            max_msg_size=64 * 1024,
        ),
        api.StreamConfig(
            name=subjects.logs_stream(region),
            subjects=[subjects.job_log(region, "*", "*")],
            storage=file,
            max_age=7 * DAY,
            max_bytes=1024**3,
            max_msg_size=64 * 1024,
            allow_direct=True,
        ),
        api.StreamConfig(
            name=subjects.summary_stream(region),
            subjects=[subjects.summary(region)],
            storage=file,
            max_msgs_per_subject=1,
            max_msg_size=256 * 1024,
            allow_direct=True,
        ),
        api.StreamConfig(
            name=subjects.quarantine_stream(region),
            subjects=[subjects.quarantine(region, "*")],
            storage=file,
            max_age=30 * DAY,
            max_msg_size=256 * 1024,
        ),
    ]
    return configs


async def _replicas(bus: Bus, stream: str, wanted: int | None) -> int:
    """``wanted``, else what ``stream`` has now (1 for a new one): a scheduler started without
    ``--replicas`` never scales a clustered region's streams down."""
    if wanted is not None:
        return wanted
    try:
        return int((await bus.js.stream_info(stream)).config.num_replicas or 1)
    except nats.js.errors.NotFoundError:
        return 1


async def provision(bus: Bus, region: str, replicas: int | None = None) -> None:
    """Create (or update) every stream and bucket of ``region`` on the connected server.

    ``replicas`` is each stream's replica count: 1 on a single server, 3 on a region's 3-server
    cluster (it then survives the loss of one server). Given, existing streams are changed to it;
    None keeps what each stream has (1 for a new one).
    """
    for config in _stream_configs(region):
        assert config.name is not None
        config.num_replicas = await _replicas(bus, config.name, replicas)
        try:
            await bus.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            try:
                await bus.js.update_stream(config)
            except nats.js.errors.BadRequestError:
                transient = (subjects.heartbeats_stream(region), subjects.offers_stream(region))
                stored = (await bus.js.stream_info(config.name)).config.storage
                if config.name not in transient or stored == config.storage:
                    raise
                # an older layout (memory storage) cannot be updated in place; beats and offers are
                # transient (each node sends its next one within seconds)
                await bus.js.delete_stream(config.name)
                await bus.js.add_stream(config)
    # the buckets keep a value's last versions (history) so that the audit stream, which sources
    # them, never misses a superseded one: the audit costs the scheduler nothing
    ledger, jobs = subjects.ledger_bucket(region), subjects.jobs_bucket(region)
    republish = api.RePublish(src=f"$KV.{ledger}.>", dest=subjects.ledger_changes(region, ">"))
    for bucket, tap in ((ledger, republish), (jobs, None)):
        kv = api.KeyValueConfig(
            bucket=bucket,
            history=AUDIT_HISTORY,
            direct=True,
            storage=api.StorageType.FILE,
            max_value_size=4 * 1024**2,
            republish=tap,
            replicas=await _replicas(bus, f"KV_{bucket}", replicas),
        )
        try:
            await bus.js.create_key_value(kv)
        except nats.js.errors.BadRequestError:  # exists: an older layout kept one version only
            info = await bus.js.stream_info(f"KV_{bucket}")
            if (
                info.config.max_msgs_per_subject or 0
            ) < AUDIT_HISTORY or info.config.num_replicas != kv.replicas:
                info.config.max_msgs_per_subject = max(AUDIT_HISTORY, info.config.max_msgs_per_subject or 0)
                info.config.num_replicas = kv.replicas
                await bus.js.update_stream(info.config)
    await _provision_audit(bus, region, replicas)
    # the lease is a KV key whose value expires (per-message TTL, marker on expiry): nats-py's
    # KeyValueConfig cannot ask for that, so the bucket's stream is made by hand
    lease = subjects.lease_bucket(region)
    config = api.StreamConfig(
        name=f"KV_{lease}",
        subjects=[f"$KV.{lease}.>"],
        storage=api.StorageType.FILE,
        max_msgs_per_subject=1,
        allow_msg_ttl=True,
        subject_delete_marker_ttl=60.0,
        allow_direct=True,
        deny_delete=True,
        discard=api.DiscardPolicy.NEW,
        num_replicas=await _replicas(bus, f"KV_{lease}", replicas),
    )
    try:
        await bus.js.add_stream(config)
    except nats.js.errors.BadRequestError:  # exists: only its replica count may change
        with contextlib.suppress(nats.js.errors.BadRequestError):
            await bus.js.update_stream(config)


async def _provision_audit(bus: Bus, region: str, replicas: int | None) -> None:
    """The region's audit stream. Created on a region that already has history (an upgrade), it
    records each origin's last sequence then as its ``fed_baseline`` metadata: what came before was
    never audited, and ``fed audit check`` does not call it a gap. A source added to an existing
    audit stream gets its baseline the same way."""
    name, sources = subjects.audit_stream(region), subjects.audit_sources(region)
    try:
        existing = (await bus.js.stream_info(name)).config
        metadata, known = dict(existing.metadata or {}), {source.name for source in existing.sources or []}
    except nats.js.errors.NotFoundError:
        metadata, known = {}, set()
    baseline: dict[str, int] = json.loads(metadata.get(BASELINE, "{}"))
    for source in sources:
        if source not in known and (last := await bus.last_sequence(source) or 0):
            baseline[source] = last
    if baseline:
        metadata[BASELINE] = json.dumps(baseline, sort_keys=True)
    audit = _sourcing(
        name,
        [(source, "") for source in sources],
        subjects=[subjects.inputs(region)],
        deny_delete=True,
        deny_purge=True,
        max_msg_size=5 * 1024**2,
        metadata=metadata,
        num_replicas=await _replicas(bus, name, replicas),
    )
    try:
        await bus.js.add_stream(audit)
    except nats.js.errors.BadRequestError:
        await bus.js.update_stream(audit)


def _sourcing(name: str, streams: Sequence[tuple[str, str]], **options: Any) -> api.StreamConfig:
    """A file stream that sources ``streams``, each (name, domain); domain "" is this one."""
    sources = [
        api.StreamSource(
            name=stream, external=api.ExternalStream(api=f"$JS.{domain}.API", deliver="") if domain else None
        )
        for stream, domain in streams
    ]
    return api.StreamConfig(name=name, storage=api.StorageType.FILE, sources=sources, **options)


def _views_config(region: str, peers: Sequence[str], replicas: int) -> api.StreamConfig:
    streams = [(subjects.summary_stream(peer), peer) for peer in sorted(peers) if peer != region]
    return _sourcing(
        subjects.views_stream(region),
        streams,
        max_msgs_per_subject=1,
        allow_direct=True,
        num_replicas=replicas,
    )


async def provision_audit_all(bus: Bus, regions: Sequence[str]) -> None:
    """On the hub: ``AUDIT_ALL`` sources every region's audit stream (no delete, no purge)."""
    streams = [(subjects.audit_stream(region), region) for region in sorted(regions)]
    config = _sourcing(
        subjects.AUDIT_ALL, streams, deny_delete=True, deny_purge=True, max_msg_size=5 * 1024**2
    )
    try:
        await bus.js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await bus.js.update_stream(config)


async def provision_views(bus: Bus, region: str, peers: Sequence[str], replicas: int | None = None) -> None:
    """Create or update the region's views stream: it sources every peer's summary stream.

    Sources cross JetStream domains through the hub (``$JS.<peer>.API``): while a link is cut the
    view of that peer simply ages, and it catches up when the link returns.
    """
    config = _views_config(region, peers, await _replicas(bus, subjects.views_stream(region), replicas))
    try:
        await bus.js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await bus.js.update_stream(config)


async def readd_source(
    bus: Bus, region: str, peers: Sequence[str], peer: str, replicas: int | None = None
) -> None:
    """Drop the source of ``peer`` from the views stream and add it again (the link watchdog).

    The server retries a source that lost its peer with a backoff of up to minutes; a source added
    afresh connects at once, so a view catches up within seconds of a heal.
    """
    count = await _replicas(bus, subjects.views_stream(region), replicas)
    await bus.js.update_stream(_views_config(region, [p for p in peers if p != peer], count))
    await bus.js.update_stream(_views_config(region, peers, count))


async def stalled_sources(bus: Bus, stream: str, after: float) -> list[str]:
    """The sources of ``stream`` that have not been heard from for ``after`` seconds."""
    info = await bus.js.stream_info(stream)
    stalled = []
    for source in info.sources or []:
        idle_ns = source.active if source.active is not None else -1
        if source.name and (idle_ns < 0 or idle_ns > after * 1e9):
            stalled.append(source.name)
    return stalled


async def readd_audit_source(bus: Bus, stream: str, source: str) -> None:
    """Drop ``source`` from the audit stream ``stream`` and add it again, as it was.

    After the source stream's leader moves (a server of a clustered region lost), the server's
    own retry of a source can take minutes; a source added afresh resumes at once, after the last
    message it copied (the server finds it in the stream), so nothing is copied twice.
    """
    config = (await bus.js.stream_info(stream)).config
    sources = list(config.sources or [])
    config.sources = [s for s in sources if s.name != source]
    await bus.js.update_stream(config)
    config.sources = sources
    await bus.js.update_stream(config)


async def wait_for_jetstream(url: str, deadline: float = 20.0, tls: TlsFiles | None = None) -> None:
    """Block until the server at ``url`` answers JetStream requests (or raise)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: Exception | None = None
    while loop.time() < end:
        try:
            bus = await Bus.connect(url, "fed-probe", retry_forever=False, timeout=1.0, tls=tls)
        except FederationUnavailable as exc:
            last = exc
            await asyncio.sleep(0.1)
            continue
        try:
            await bus.js.account_info()
            return
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.1)
        finally:
            await bus.close()
    raise FederationUnavailable(url, f"JetStream not ready: {last}")
