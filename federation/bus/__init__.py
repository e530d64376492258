"""The only module that talks NATS (:mod:`federation.ops.provision` lays the streams out through it).

Everything else sees :class:`Delivery` (subject, bytes, headers, ack) and the typed messages of
:mod:`federation.schemas`, never a ``nats.aio.msg.Msg``. This module owns:

* connecting (reconnect forever: nats-py gives up after its default reconnect attempts, and a
  daemon must outlive any outage);
* durable publishing, with W3C trace context injected into the headers (:mod:`federation.tracing`);
* compare-and-set writes to KV keys as raw JetStream publishes carrying
  ``Nats-Expected-Last-Subject-Sequence`` (pipelinable, domain-independent), and reads that treat a
  TTL marker as absent;
* consuming: durable push consumers delivering to a subject of the consumer and the leader's
  epoch (a new leader recreates them from their acknowledgement floor), and ordered followers
  ("latest per subject" for offers, heartbeats and ledgers) recreated after every reconnect.

Throughput notes (2-core machine, measured): an awaited JetStream publish costs a round trip
(~3.5k/s); issuing many with :func:`asyncio.gather` pipelines them (~25k/s). The scheduler relies
on that: it never awaits writes one by one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from federation import tracing
from federation.bus.delivery import KV_OPERATION, Delivery
from federation.bus.layout import StreamFacts, StreamSpec
from federation.errors import ConflictError, FederationUnavailable, InvalidRequest, NoResponders, NotPermitted
from federation.identity import Credentials, TlsFiles, process_credentials, process_tls, tls_context
from federation.tasks import cancelled, idle

EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
MSG_ID = "Nats-Msg-Id"
MSG_TTL = "Nats-TTL"
WRONG_LAST_SEQUENCE = (10071, 10164)
# seconds a clustered region may take to elect new leaders after losing a server (the meta layer,
# then each stream: a Raft election timeout of 4-9 s each, measured up to ~20 s on 2 cores)
FAILOVER = 30.0
# seconds one stream-info request may take before it is asked again (a refusal shows by then)
STREAM_INFO_ATTEMPT = 3.0


def _delivery(msg: Msg) -> Delivery:
    sequence, delivered, pending, stamp = 0, 1, 0, 0.0
    if msg.reply and msg.reply.startswith("$JS.ACK."):
        meta = msg.metadata
        sequence, delivered, pending = meta.sequence.stream, meta.num_delivered, meta.num_pending
        stamp = meta.timestamp.timestamp() if meta.timestamp else 0.0
    return Delivery(msg.subject, msg.data, dict(msg.headers or {}), sequence, delivered, pending, msg, stamp)


class Tail:
    """Messages of an ordered consumer, taken one at a time with an optional timeout."""

    def __init__(self, stream: str = "") -> None:
        self.stream = stream
        self._queue: asyncio.Queue[Msg] = asyncio.Queue()
        self._sub: Any = None
        self.last_pending = -1
        self.taken = 0

    async def _on_msg(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    async def next(self, timeout: float | None = None) -> Delivery | None:
        """The next message, or None when ``timeout`` passes first."""
        if self._queue.empty():
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can turn a cancellation that meets
                # its own timeout into a TimeoutError, and a follower loop would then never stop
                async with asyncio.timeout(timeout):
                    msg = await self._queue.get()
            except TimeoutError:
                return None
        else:  # a backlog (a replay) is taken without a timer per message
            msg = self._queue.get_nowait()
        item = _delivery(msg)
        self.last_pending = item.pending
        self.taken += 1
        return item

    async def caught_up(self) -> bool:
        """True when everything stored so far has been taken."""
        if not self._queue.empty():
            return False
        if self.last_pending == 0:
            return True
        info = await self._sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        return bool(info.num_pending == 0 and self._queue.empty() and delivered == self.taken)

    async def stop(self) -> None:
        """Delete the consumer."""
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()


def _translate(subject: str, exc: Exception) -> BaseException:
    """Map nats-py's exceptions onto :mod:`federation.errors` (callers never see nats types).

    A task being cancelled gets its cancellation back: nats-py waits with ``asyncio.wait_for``,
    which on Python 3.11 can turn a cancellation into a timeout, and a loop that retries timeouts
    would then never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        return asyncio.CancelledError()
    if isinstance(exc, nats.js.errors.APIError) and exc.code != 503:
        return InvalidRequest(f"the server refused the message on {subject}: {exc.description or exc}")
    if isinstance(exc, nats.errors.NoRespondersError):
        return NoResponders(subject, "nobody answers (is the region up and reachable?)")
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return FederationUnavailable(subject, "no stream answers (is the region up and provisioned?)")
    if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
        return FederationUnavailable(subject, "the stream did not acknowledge in time")
    if isinstance(exc, nats.errors.Error | OSError):
        return FederationUnavailable(subject, str(exc) or type(exc).__name__)
    return exc


def _stream_config(spec: StreamSpec) -> api.StreamConfig:
    """The nats-py form of ``spec``."""
    sources = [
        api.StreamSource(
            name=stream,
            external=api.ExternalStream(api=f"$JS.{domain}.API", deliver="") if domain else None,
        )
        for stream, domain in spec.sources
    ]
    return api.StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects) or None,
        storage=api.StorageType.FILE,
        num_replicas=spec.replicas,
        max_age=spec.max_age or None,
        duplicate_window=spec.duplicate_window,
        max_msg_size=spec.max_msg_size or -1,
        max_msgs_per_subject=spec.max_msgs_per_subject or -1,
        max_bytes=spec.max_bytes or None,
        allow_msg_ttl=spec.allow_msg_ttl or None,
        subject_delete_marker_ttl=spec.subject_delete_marker_ttl or None,
        allow_direct=spec.allow_direct or None,
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
        discard=api.DiscardPolicy.NEW if spec.discard_new else api.DiscardPolicy.OLD,
        sources=sources or None,
        metadata=dict(spec.metadata) or None,
        allow_rollup_hdrs=spec.allow_rollup,
        republish=api.RePublish(src=spec.subjects[0], dest=spec.republish) if spec.republish else None,
    )


class Bus:
    """A connection to one NATS server (a region's, or the hub) and its JetStream."""

    def __init__(self, nc: NatsClient, name: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10.0)
        self.name = name
        self.generation = 0  # bumped on every reconnect: followers recreate their consumers
        self.identity = "this client"  # who the server knows us as (for errors)
        self.direct_reads = False  # read streams by batched direct gets (an auditor creates no consumer)
        self.refused: collections.deque[str] = collections.deque(maxlen=64)  # permission violations

    def _check_permitted(self, subject: str, *, prefix: bool = False) -> None:
        """NotPermitted if the server lately refused us ``subject`` (or, with ``prefix``, a subject
        starting with it): a refused publish is never acknowledged, so say why instead of timing out."""
        quoted = f'"{subject.lower()}' + ("" if prefix else '"')
        if any(quoted in refusal for refusal in self.refused):
            raise NotPermitted(subject, self.identity)

    @classmethod
    async def connect(
        cls,
        url: str,
        name: str,
        *,
        retry_forever: bool = True,
        timeout: float = 5.0,
        tls: TlsFiles | None = None,
        credentials: Credentials | None = None,
    ) -> Bus:
        """Connect to ``url`` (a cluster: its members' URLs, comma-separated); daemons reconnect
        forever, CLI commands fail fast. ``tls`` and ``credentials`` default to the process's own
        (:mod:`federation.ops.auth`); replies come to the identity's private inbox."""
        tls = tls or process_tls()
        credentials = credentials or process_credentials()
        identity: dict[str, Any] = {}
        if credentials is not None:
            identity = {"nkeys_seed_str": credentials.seed, "inbox_prefix": credentials.inbox}

        links: list[Bus] = []
        failures: list[str] = []  # while connecting: why the server turned us away

        async def noted(exc: Exception) -> None:
            text = str(exc)
            if "permissions violation" in text.lower():
                for bus in links:
                    bus.refused.append(text.lower())
            elif not links:
                failures.append(text)

        async def reconnected() -> None:
            for bus in links:
                bus.generation += 1
                bus.refused.clear()  # permissions may have changed (a reload)

        connecting = nats.connect(
            [part.strip() for part in url.split(",") if part.strip()],  # a cluster: every member
            name=name,
            connect_timeout=timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1 if retry_forever else 3,
            reconnect_time_wait=0.5,
            error_cb=noted,
            max_outstanding_pings=3,
            ping_interval=5,
            reconnected_cb=reconnected,
            tls=tls_context(tls) if tls else None,
            **identity,
        )
        try:
            # a client that fails fast is bounded as a whole: nats-py can retry a failing TLS
            # handshake (a plaintext client of a TLS server) for much longer than its timeout
            nc = await (connecting if retry_forever else asyncio.wait_for(connecting, 4 * timeout))
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            refused = next((f for f in reversed(failures) if "authorization" in f.lower()), "")
            if refused:  # an unknown or revoked key, or none given
                who = f"{credentials.identity.label} (unknown or revoked key)" if credentials else ""
                who = who or "a client without credentials (see --creds)"
                raise FederationUnavailable(
                    url, f"authorization violation: the server refuses {who}"
                ) from None
            hint = "" if tls else " (does the server require TLS? see --tls-ca)"
            raise FederationUnavailable(url, (str(exc) or type(exc).__name__) + hint) from None
        bus = cls(nc, name)
        if credentials is not None:
            bus.identity = credentials.identity.label
            bus.direct_reads = credentials.kind == "auditor"
        links.append(bus)
        return bus

    async def close(self) -> None:
        """Flush and close the connection."""
        with contextlib.suppress(Exception):  # bounded: draining a dead link would wait for it forever
            await asyncio.wait_for(self.nc.drain(), 5.0)
        if not self.nc.is_closed:
            await self.nc.close()

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its ``max_payload``)."""
        return int(self.nc.max_payload)

    # --- publishing --------------------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Core publish: fire and forget, nothing stored unless a stream captures it."""
        await self.nc.publish(subject, data, headers=tracing.inject(headers))

    async def request(self, subject: str, data: bytes, timeout: float = 5.0) -> bytes:
        """Core request/reply: the responder's answer (FederationUnavailable when nobody answers)."""
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except Exception as exc:
            self._check_permitted(subject)
            raise _translate(subject, exc) from None
        return bytes(msg.data)

    async def domain_reachable(self, domain: str, timeout: float = 0.5) -> bool:
        """Whether the JetStream of another domain answers through the hub right now (cheap: one
        request for the account info; a cut link fails fast with no responders)."""
        try:
            await self.nc.request(f"$JS.{domain}.API.INFO", b"", timeout=timeout)
        except Exception as exc:
            error = _translate(domain, exc)
            if not isinstance(error, Exception):
                raise error from None  # being cancelled
            return False
        return True

    async def serve(
        self,
        subject: str,
        handler: Callable[[str, bytes], Awaitable[bytes | None]],
        queue: str = "",
        concurrent: bool = False,
    ) -> Any:
        """Answer requests on ``subject`` (a wildcard) with ``handler(subject, data)``.

        A ``None`` answer sends nothing (the requester times out). With ``queue`` each request goes
        to one member of the queue group only; ``concurrent`` answers each in a task of its own.
        """
        running: set[asyncio.Task[None]] = set()

        async def answer(msg: Msg) -> None:
            # answers go only to inboxes: a forged reply subject (a bucket's, a stream's, the JS API)
            # would have us publish there with our own rights
            if not msg.reply.startswith(("_INBOX.", "_R_.")):
                return
            if (data := await handler(msg.subject, msg.data)) is not None:
                with contextlib.suppress(Exception):  # the connection went: the requester times out
                    await self.nc.publish(msg.reply, data)

        async def on_msg(msg: Msg) -> None:
            if not concurrent:
                await answer(msg)
                return
            task = asyncio.create_task(answer(msg))
            running.add(task)
            task.add_done_callback(running.discard)

        return await self.nc.subscribe(subject, queue=queue, cb=on_msg)

    async def store(
        self,
        subject: str,
        data: bytes,
        *,
        msg_id: str | None = None,
        ttl: int | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Publish to a stream and wait for the server's acknowledgement; returns the sequence.

        Rides through a stream leader election (a clustered region losing a server): while no
        leader answers, nothing was stored, so the publish is retried within ``timeout``. An
        unacknowledged publish is retried only with a ``msg_id`` (the stream drops the duplicate).
        """
        hdrs = tracing.inject(headers)
        if msg_id:
            hdrs[MSG_ID] = msg_id
        if ttl:
            hdrs[MSG_TTL] = f"{int(ttl)}s"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        error: Exception
        while True:
            left = deadline - loop.time()
            try:
                ack = await self.js.publish(
                    subject, data, headers=hdrs, timeout=max(0.1, min(left, 2.0) if msg_id else left)
                )
                return int(ack.seq)
            except (nats.js.errors.NoStreamResponseError, nats.js.errors.ServiceUnavailableError) as exc:
                retry, error = True, exc  # no leader now: nothing stored
            except (nats.errors.TimeoutError, TimeoutError) as exc:
                self._check_permitted(subject)
                retry, error = bool(msg_id), exc
            except Exception as exc:
                raise _translate(subject, exc) from None
            if not retry or loop.time() + 0.2 >= deadline:
                raise _translate(subject, error) from None
            await asyncio.sleep(0.2)

    # --- KV: compare-and-set ------------------------------------------------------------------------

    async def cas(
        self,
        bucket: str,
        key: str,
        value: bytes,
        expected: int,
        *,
        msg_id: str = "",
        ttl: int = 0,
        delete: bool = False,
    ) -> int:
        """Write ``value`` iff the key's last revision is ``expected`` (0: key absent); new revision.

        Raises :class:`ConflictError` when the key moved. With ``msg_id``, re-sending the same write
        after a lost answer is idempotent: the server recognises the duplicate and returns the
        revision of the first copy instead of storing it twice or reporting a conflict. ``ttl``
        (whole seconds, buckets that allow it) makes the value expire, leaving a delete marker;
        ``delete`` writes a delete marker instead of a value.
        """
        subject = f"$KV.{bucket}.{key}"
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        if msg_id:
            headers[MSG_ID] = msg_id
        if ttl:
            headers[MSG_TTL] = f"{int(ttl)}s"
        if delete:  # a KV delete marker, written by compare-and-set like any value
            headers[KV_OPERATION] = "DEL"
        try:
            ack = await self.js.publish(subject, value, headers=headers, timeout=10.0)
        except nats.js.errors.APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise ConflictError(key, expected) from None
            raise _translate(subject, exc) from None
        except Exception as exc:
            raise _translate(subject, exc) from None
        return int(ack.seq)

    async def kv_get(self, bucket: str, key: str) -> tuple[bytes | None, int]:
        """The key's value and revision; ``(None, rev)`` when deleted or TTL-expired, ``(None, 0)`` absent."""
        item = await self.last(f"KV_{bucket}", f"$KV.{bucket}.{key}")
        if item is None:
            return None, 0
        return (None if item.removed else item.data), item.sequence

    async def latest(self, stream: str, filter_subject: str) -> dict[str, Delivery]:
        """The latest message of every subject matching ``filter_subject`` stored in ``stream`` now."""
        out: dict[str, Delivery] = {}
        async for item in self.follow(stream, filter_subject, last_per_subject=True, until_caught_up=True):
            out[item.subject] = item
        return out

    async def _stream_info(self, stream: str) -> api.StreamInfo:
        """The stream's info; waits out a leader election (a clustered region losing a server)."""
        deadline = asyncio.get_running_loop().time() + FAILOVER
        while True:
            try:  # attempts short enough to notice soon that the server refuses us the request
                return await asyncio.wait_for(self.js.stream_info(stream), STREAM_INFO_ATTEMPT)
            except (nats.errors.TimeoutError, TimeoutError, nats.js.errors.ServiceUnavailableError):
                self._check_permitted(f"$JS.API.STREAM.INFO.{stream}")
                if asyncio.get_running_loop().time() > deadline:
                    raise FederationUnavailable(stream, "no stream leader answers") from None
                await idle(0.2)

    async def kv_load(self, bucket: str) -> dict[str, tuple[bytes, int]]:
        """Every live key's latest value and revision (one ordered pass over the bucket)."""
        out: dict[str, tuple[bytes, int]] = {}
        stream = f"KV_{bucket}"
        try:
            info = await self._stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise FederationUnavailable(bucket, "bucket does not exist (run provisioning)") from None
        if info.state.messages == 0:
            return out
        prefix = f"$KV.{bucket}."
        async for item in self.follow(stream, f"{prefix}>", last_per_subject=True, until_caught_up=True):
            if item.removed:
                out.pop(item.subject[len(prefix) :], None)
            else:
                out[item.subject[len(prefix) :]] = (item.data, item.sequence)
        return out

    # --- consuming ---------------------------------------------------------------------------------

    async def durable(
        self,
        stream: str,
        consumer: str,
        filter_subject: str,
        handler: Callable[[Delivery], Awaitable[None]],
        *,
        epoch: int = 0,
        ack_wait: float = 30.0,
        max_ack_pending: int = 8192,
        max_deliver: int = -1,
    ) -> Callable[[], Awaitable[None]]:
        """Bind ``handler`` to a durable push consumer; returns an async ``stop``.

        The consumer delivers to a subject named after it and ``epoch`` (a scheduler's lease
        epoch). A process of the same epoch binds to it again and resumes where the last
        acknowledgement left off. A new epoch recreates it, starting after its acknowledgement
        floor and delivering to the new epoch's subject. Messages a dead predecessor held come
        again at once, not after ``ack_wait``, and a paused predecessor's subscription receives
        nothing more. Messages acknowledged above the floor come again too: the handler must
        treat a repeat as harmless (I7).
        """
        deliver = f"_fed.deliver.{stream}.{consumer}" + (f".{epoch}" if epoch else "")
        start = 0
        try:
            info = await self.js.consumer_info(stream, consumer)
            if info.config.deliver_subject != deliver:
                start = (info.ack_floor.stream_seq if info.ack_floor else 0) + 1
                await self.js.delete_consumer(stream, consumer)
        except nats.js.errors.NotFoundError:
            pass

        async def on_msg(msg: Msg) -> None:
            await handler(_delivery(msg))

        sub = await self.nc.subscribe(deliver, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        config = api.ConsumerConfig(
            durable_name=consumer,
            deliver_subject=deliver,
            filter_subject=filter_subject,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending,
            max_deliver=max_deliver,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE if start else api.DeliverPolicy.ALL,
            opt_start_seq=start or None,
        )
        with contextlib.suppress(nats.js.errors.BadRequestError):
            # exists (same epoch) with an older config: binding to it is what a restart wants
            await self.js.add_consumer(stream, config=config)
        return sub.unsubscribe

    async def tail(
        self,
        stream: str,
        filter_subject: str,
        *,
        last_per_subject: bool = False,
        start_sequence: int = 0,
        start_time: float = 0.0,
        idle: float = 5.0,
    ) -> Tail:
        """An ordered consumer on ``stream`` (no acks; nats-py recreates it on gaps).

        ``last_per_subject`` starts at the latest message of each subject (offers, heartbeats, KV
        keys); ``start_sequence`` starts at that stream sequence; ``start_time`` (Unix seconds) at
        the first message stored then or later, found by the server; else from the beginning.
        """
        tail = Tail(stream)
        since = datetime.datetime.fromtimestamp(start_time, datetime.UTC) if start_time else None
        if start_sequence:
            policy = api.DeliverPolicy.BY_START_SEQUENCE
        elif since is not None:
            policy = api.DeliverPolicy.BY_START_TIME
        else:
            policy = api.DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else api.DeliverPolicy.ALL
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAILOVER
        while True:
            try:
                tail._sub = await self.js.subscribe(
                    filter_subject,
                    stream=stream,
                    cb=tail._on_msg,
                    ordered_consumer=True,
                    deliver_policy=policy,
                    config=api.ConsumerConfig(
                        opt_start_seq=start_sequence or None,
                        opt_start_time=since if not start_sequence else None,
                    ),
                    idle_heartbeat=idle,
                    pending_msgs_limit=-1,
                    pending_bytes_limit=-1,
                )
                break
            except (nats.errors.TimeoutError, TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                if loop.time() + 0.25 >= deadline:
                    raise _translate(stream, exc) from None
                await asyncio.sleep(0.25)
        return tail

    async def follow(
        self,
        stream: str,
        filter_subject: str,
        *,
        last_per_subject: bool = False,
        start_sequence: int = 0,
        start_time: float = 0.0,
        until_caught_up: bool = False,
        check_every: float = 5.0,
    ) -> AsyncIterator[Delivery]:
        """Iterate a :meth:`tail`; ``until_caught_up`` stops after the last message present now.

        A long-lived follow has a watchdog (nats-py brings an ordered consumer back from a server
        restart only after missed heartbeats, 5-17 s): after a reconnect, or when the consumer is
        found gone during ``check_every`` seconds of silence, it is recreated, resuming after the
        last message seen (``last_per_subject`` followers get each subject's latest again, so their
        readers must treat a repeat as harmless).
        """
        if until_caught_up and self.direct_reads:  # an auditor: batched direct gets, no consumer
            from federation.bus.scan import scan  # it reads through this bus

            async for found in scan(
                self, stream, filter_subject, last_per_subject, start_sequence, start_time
            ):
                yield found
            return
        if until_caught_up:
            tail = await self.tail(
                stream,
                filter_subject,
                last_per_subject=last_per_subject,
                start_sequence=start_sequence,
                start_time=start_time,
            )
            try:
                if await tail.caught_up():
                    return
                while True:
                    item = await tail.next()
                    assert item is not None
                    yield item
                    if item.pending == 0:
                        return
            finally:
                await tail.stop()
        resume = start_sequence
        while True:
            cancelled()
            generation = self.generation
            tail = await self._open_tail(stream, filter_subject, last_per_subject, resume)
            try:
                async for item in self._watched(tail, generation, check_every):
                    if not last_per_subject:
                        resume = item.sequence + 1
                    yield item
            finally:
                await tail.stop()

    async def _open_tail(self, stream: str, filter_subject: str, last_per_subject: bool, resume: int) -> Tail:
        """Create a tail, retrying while the server is away (a follower outlives outages)."""
        delay = 0.1
        while True:
            try:
                return await self.tail(
                    stream, filter_subject, last_per_subject=last_per_subject, start_sequence=resume
                )
            except Exception as exc:
                # a stream not found (a server restarted before anyone provisioned again) or away:
                # both pass, so a follower waits rather than dies
                error = _translate(stream, exc)
                if not isinstance(error, Exception):
                    raise error from None  # being cancelled
                self._check_permitted(f"$JS.API.CONSUMER.CREATE.{stream}", prefix=True)
                if isinstance(error, InvalidRequest) and not isinstance(exc, nats.js.errors.NotFoundError):
                    raise
                await idle(delay)
                delay = min(2 * delay, 2.0)

    async def _watched(self, tail: Tail, generation: int, check_every: float) -> AsyncIterator[Delivery]:
        """Messages of ``tail`` until a reconnect or a lost consumer says it must be recreated."""
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while self.generation == generation:
            cancelled()
            item = await tail.next(timeout=0.5)
            if item is not None:
                quiet_since = loop.time()
                yield item
                continue
            if loop.time() - quiet_since < check_every:
                continue
            quiet_since = loop.time()
            try:
                await tail._sub.consumer_info()
            except Exception as exc:
                error = _translate(tail.stream, exc)
                if not isinstance(error, Exception):
                    raise error from None  # being cancelled
                return  # gone (a server restart, an expired ephemeral consumer): recreate it

    async def gather(
        self, subject: str, data: bytes, timeout: float = 10.0
    ) -> tuple[list[Delivery], dict[str, str]]:
        """A request answered by several messages and a closing status (a batched direct get):
        the messages, and the status's headers."""
        items: list[Delivery] = []
        done: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg) -> None:
            headers = {str(k): v for k, v in (msg.headers or {}).items()}
            if "Status" in headers:
                if not done.done():
                    done.set_result(headers)
                return
            items.append(Delivery.direct(headers, msg.data))

        sub = await self.nc.subscribe(self.nc.new_inbox(), cb=on_msg)
        try:
            await self.nc.publish(subject, data, reply=sub.subject)
            async with asyncio.timeout(timeout):
                return items, await done
        except TimeoutError:
            self._check_permitted(subject)
            raise FederationUnavailable(subject, "no answer") from None
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def subscribe(self, subject: str, handler: Callable[[Delivery], Awaitable[None]]) -> Any:
        """A plain core subscription (republished KV writes, inboxes)."""

        async def on_msg(msg: Msg) -> None:
            await handler(_delivery(msg))

        return await self.nc.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def last(self, stream: str, subject: str, *, direct: bool = True) -> Delivery | None:
        """The latest message on ``subject`` (a direct get, or through the stream's leader for a
        stream without ``allow_direct``), or None."""
        try:
            msg = await self.js.get_msg(stream, subject=subject, direct=direct)
        except nats.js.errors.NotFoundError:
            return None
        except Exception as exc:
            self._check_permitted(
                f"$JS.API.{'DIRECT.GET' if direct else 'STREAM.MSG.GET'}.{stream}", prefix=True
            )
            raise _translate(subject, exc) from None
        return Delivery(
            msg.subject or subject, msg.data or b"", dict(msg.headers or {}), int(msg.seq or 0), 1
        )

    async def consumer_bound(self, stream: str, consumer: str) -> bool:
        """Whether a durable push consumer exists and a subscriber is bound to it (a daemon is up)."""
        try:
            info = await self.js.consumer_info(stream, consumer)
        except nats.js.errors.NotFoundError:
            return False
        return bool(info.push_bound)

    async def consumer_exists(self, stream: str, consumer: str) -> bool:
        """Whether the durable consumer exists (False when it or its stream is gone)."""
        return await self.ack_floor(stream, consumer) is not None

    async def ack_floor(self, stream: str, consumer: str) -> int | None:
        """The stream sequence up to which the durable consumer has acknowledged everything, or
        None when it (or its stream) does not exist."""
        try:
            info = await self.js.consumer_info(stream, consumer)
        except nats.js.errors.NotFoundError:
            return None
        except Exception as exc:
            raise _translate(stream, exc) from None
        return int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0

    async def last_sequence(self, stream: str) -> int | None:
        """The stream's last sequence (0 when empty), or None when it does not exist."""
        try:
            return int((await self._stream_info(stream)).state.last_seq)
        except nats.js.errors.NotFoundError:
            return None

    # --- stream layout (what federation.ops.provision creates) -----------------------------------------

    async def stream_facts(self, stream: str) -> StreamFacts | None:
        """The facts of ``stream``, or None when it does not exist."""
        try:
            config = (await self._stream_info(stream)).config
        except nats.js.errors.NotFoundError:
            return None
        except Exception as exc:
            raise _translate(stream, exc) from None
        return StreamFacts(
            replicas=int(config.num_replicas or 1),
            file=config.storage in (None, api.StorageType.FILE),
            sources=tuple(source.name for source in config.sources or [] if source.name),
            metadata=dict(config.metadata or {}),
        )

    async def ensure_stream(self, spec: StreamSpec, *, recreate_if_not_file: bool = False) -> None:
        """Create the stream, or update it to ``spec``. With ``recreate_if_not_file`` a stream the
        server cannot update because it is kept in memory (an older layout) is deleted and made
        again: only for streams whose content is transient."""
        config = _stream_config(spec)
        try:
            await self.js.add_stream(config)
            return
        except nats.js.errors.BadRequestError:
            pass  # exists
        try:
            await self.js.update_stream(config)
        except nats.js.errors.BadRequestError as exc:
            facts = await self.stream_facts(spec.name)
            if not recreate_if_not_file or facts is None or facts.file:
                raise _translate(spec.name, exc) from None
            await self.js.delete_stream(spec.name)
            await self.js.add_stream(config)

    async def readd_source(self, stream: str, source: str) -> None:
        """Drop ``source`` from ``stream``'s sources and add it again, as it was.

        The server retries a source that lost its origin (a cut link, a moved stream leader) with
        a backoff of up to minutes; a source added afresh connects at once and resumes after the
        last message it copied (the server finds it in the stream), so nothing is copied twice.
        """
        config = (await self.js.stream_info(stream)).config
        sources = list(config.sources or [])
        config.sources = [s for s in sources if s.name != source]
        await self.js.update_stream(config)
        config.sources = sources
        await self.js.update_stream(config)

    async def stalled_sources(self, stream: str, after: float) -> list[str]:
        """The sources of ``stream`` not heard from for ``after`` seconds."""
        info = await self.js.stream_info(stream)
        stalled = []
        for source in info.sources or []:
            idle_ns = source.active if source.active is not None else -1
            if source.name and (idle_ns < 0 or idle_ns > after * 1e9):
                stalled.append(source.name)
        return stalled

    async def jetstream_ready(self) -> None:
        """Raise unless the server answers JetStream requests."""
        try:
            await self.js.account_info()
        except Exception as exc:
            raise _translate("JetStream", exc) from None
