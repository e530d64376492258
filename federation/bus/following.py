"""Consuming: durable push consumers, ordered tails, and followers that outlive outages.

This module owns consuming: durable push consumers delivering to a subject of the consumer and
the leader's epoch (a new leader recreates them from their acknowledgement floor), and ordered
followers ("latest per subject" for offers, heartbeats and ledgers) recreated after every
reconnect. A follower of a process that may create no consumer (an auditor) reads by batched
direct gets instead (:mod:`federation.bus.scan`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from federation.bus.delivery import Delivery
from federation.bus.link import FAILOVER, _delivery, _translate
from federation.bus.scan import lasts, recent, scan
from federation.bus.streams import Streams
from federation.errors import FederationUnavailable, InvalidRequest
from federation.tasks import cancelled, idle


class Tail:
    """Messages of an ordered consumer, taken one at a time with an optional timeout."""

    def __init__(
        self, stream: str, sub: JetStreamContext.PushSubscription, queue: asyncio.Queue[Msg]
    ) -> None:
        self.stream = stream
        self._sub = sub  # the ordered consumer's subscription
        self._queue = queue  # what its subscription received, not yet taken
        self.last_pending = -1
        self.taken = 0

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


class Following(Streams):
    """The link's consumers: durable ones bound to a handler, ordered ones followed."""

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
        treat a repeat as harmless (I7). Rides through a stream leader election (a clustered region
        losing a server) for up to ``FAILOVER`` seconds, as the other stream calls do.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAILOVER
        while True:
            try:
                return await self._bind_durable(
                    stream, consumer, filter_subject, handler, epoch, ack_wait, max_ack_pending, max_deliver
                )
            except (nats.errors.TimeoutError, TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                # a stream leader election (a clustered region losing a server): nothing is bound yet
                if loop.time() + 0.25 >= deadline:
                    raise _translate(stream, exc) from None
                await idle(0.25)

    async def _bind_durable(
        self,
        stream: str,
        consumer: str,
        filter_subject: str,
        handler: Callable[[Delivery], Awaitable[None]],
        epoch: int,
        ack_wait: float,
        max_ack_pending: int,
        max_deliver: int,
    ) -> Callable[[], Awaitable[None]]:
        """One attempt of :meth:`durable` (the subscription is dropped again if it fails)."""
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
        try:
            with contextlib.suppress(nats.js.errors.BadRequestError):
                # exists (same epoch) with an older config: binding to it is what a restart wants
                await self.js.add_consumer(stream, config=config)
        except BaseException:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            raise
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
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

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
                sub = await self.js.subscribe(
                    filter_subject,
                    stream=stream,
                    cb=on_msg,
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
        return Tail(stream, sub, queue)

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

    # --- reading a stream or a bucket whole ----------------------------------------------------

    async def latest(self, stream: str, filter_subject: str) -> dict[str, Delivery]:
        """The latest message of every subject matching ``filter_subject`` stored in ``stream`` now."""
        out: dict[str, Delivery] = {}
        async for item in self.follow(stream, filter_subject, last_per_subject=True, until_caught_up=True):
            out[item.subject] = item
        return out

    async def kv_recent(
        self,
        bucket: str,
        *,
        limit: int,
        below: int = 0,
        keep: Callable[[Delivery], bool] = lambda _: True,
    ) -> tuple[list[Delivery], int]:
        """A page of ``bucket``'s live keys, the most recently written first: up to ``limit`` latest
        values that ``keep`` accepts among keys last written below revision ``below`` (0: all), and
        the ``below`` of the next page (0: none). Costs what the newest writes cost to read, not the
        bucket's size (:func:`~federation.bus.scan.recent`); a missing bucket raises
        FederationUnavailable."""
        stream = f"KV_{bucket}"
        top = await self.last_sequence(stream)
        if top is None:
            raise FederationUnavailable(bucket, "bucket does not exist (run provisioning)")
        return await recent(self, stream, f"$KV.{bucket}.>", top=top, limit=limit, below=below, keep=keep)

    async def kv_get_many(self, bucket: str, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        """The live ones of ``keys``: each one's latest value and revision (absent, deleted and
        expired keys left out). Costs what those keys cost to read, not the bucket's size
        (:func:`~federation.bus.scan.lasts`)."""
        prefix = f"$KV.{bucket}."
        found = await lasts(self, f"KV_{bucket}", [prefix + key for key in dict.fromkeys(keys)])
        return {s[len(prefix) :]: (d.data, d.sequence) for s, d in found.items() if not d.removed}

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
