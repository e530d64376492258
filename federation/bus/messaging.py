"""Core NATS messaging: publish, request/reply, answering requests, subscriptions, gathered answers.

Nothing here is stored unless a stream captures it. A publish carries the current W3C trace
context in its headers (:mod:`federation.tracing`). A subscription comes back as a
:class:`Subscription`, a handle of ours that can only end it, never as nats-py's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from federation import tracing
from federation.bus.delivery import Delivery
from federation.bus.link import Link, _delivery, _translate
from federation.errors import FederationUnavailable


class Subscription:
    """A subscription made by :meth:`Messaging.serve` or :meth:`Messaging.subscribe`: what its
    holder can do with it is end it."""

    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub

    async def unsubscribe(self) -> None:
        """Remove the interest in the subject: messages not yet handled are discarded."""
        await self._sub.unsubscribe()


class Messaging(Link):
    """The link's core messaging (no stream involved)."""

    # --- publishing and asking ---------------------------------------------------------------------

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        """Core publish: fire and forget, nothing stored unless a stream captures it
        (FederationUnavailable when the connection is closed or its buffer is full)."""
        try:
            await self.nc.publish(subject, data, headers=tracing.inject(headers))
        except Exception as exc:
            raise _translate(subject, exc) from None

    async def request(self, subject: str, data: bytes, timeout: float = 5.0) -> bytes:
        """Core request/reply: the responder's answer (FederationUnavailable when nobody answers)."""
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except Exception as exc:
            self._check_permitted(subject)
            raise _translate(subject, exc) from None
        return bytes(msg.data)

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

    # --- receiving ---------------------------------------------------------------------------------

    async def serve(
        self,
        subject: str,
        handler: Callable[[str, bytes], Awaitable[bytes | None]],
        queue: str = "",
        concurrent: bool = False,
    ) -> Subscription:
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

        return Subscription(await self.nc.subscribe(subject, queue=queue, cb=on_msg))

    async def subscribe(self, subject: str, handler: Callable[[Delivery], Awaitable[None]]) -> Subscription:
        """A plain core subscription (republished KV writes, inboxes)."""

        async def on_msg(msg: Msg) -> None:
            await handler(_delivery(msg))

        sub = await self.nc.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        return Subscription(sub)
