"""The link to a NATS server: connecting, reconnects, closing, and what the server refused us.

This module owns connecting (reconnect forever: nats-py gives up after its default reconnect
attempts, and a daemon must outlive any outage). Every reconnect bumps :attr:`Link.generation`, so
followers know to recreate their consumers, and forgets the permission violations the server
reported (a reload may have changed them). A publish the server refuses is never acknowledged:
the violations it reported are kept in :attr:`Link.refused`, so an operation that times out on a
refused subject says why instead (:class:`~federation.errors.NotPermitted`).

The helpers every layer of the bus shares live here too: :func:`_delivery` turns a nats-py message
into a :class:`~federation.bus.delivery.Delivery`, and :func:`_translate` maps nats-py's exceptions
onto :mod:`federation.errors` (callers never see nats types).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, Self

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from federation.bus.delivery import Delivery
from federation.errors import FederationUnavailable, InvalidRequest, NoResponders, NotPermitted
from federation.identity import Credentials, TlsFiles, process_credentials, process_tls, tls_context

# seconds a clustered region may take to elect new leaders after losing a server (the meta layer,
# then each stream: a Raft election timeout of 4-9 s each, measured up to ~20 s on 2 cores)
FAILOVER = 30.0


def _delivery(msg: Msg) -> Delivery:
    sequence, delivered, pending, stamp = 0, 1, 0, 0.0
    if msg.reply and msg.reply.startswith("$JS.ACK."):
        sequence, delivered, pending, stamp = _acked(msg.reply)
    return Delivery(msg.subject, msg.data, dict(msg.headers or {}), sequence, delivered, pending, msg, stamp)


def _acked(reply: str) -> tuple[int, int, int, float]:
    """Stream sequence, deliveries, pending count and storage time from a JetStream delivery's
    reply subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``, or
    with ``<domain>.<account hash>`` after ``ACK`` (and a random token at the end). Read here
    because nats-py's ``Msg.metadata`` builds a datetime and two objects for every message,
    which the leader pays for every heartbeat and offer of the region."""
    tokens = reply.split(".")
    at = 4 if len(tokens) == 9 else 6  # where <delivered> is
    return int(tokens[at + 1]), int(tokens[at]), int(tokens[at + 4]), int(tokens[at + 3]) / 1e9


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


class Link:
    """A connection to one NATS server (a region's, or the hub) and its JetStream, as connected:
    the layer every other part of the bus is built on."""

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
    ) -> Self:
        """Connect to ``url`` (a cluster: its members' URLs, comma-separated); daemons reconnect
        forever, CLI commands fail fast. ``tls`` and ``credentials`` default to the process's own
        (:mod:`federation.ops.auth`); replies come to the identity's private inbox."""
        tls = tls or process_tls()
        credentials = credentials or process_credentials()
        identity: dict[str, Any] = {}
        if credentials is not None:
            identity = {"nkeys_seed_str": credentials.seed, "inbox_prefix": credentials.inbox}

        links: list[Link] = []
        failures: list[str] = []  # while connecting: why the server turned us away

        async def noted(exc: Exception) -> None:
            text = str(exc)
            if "permissions violation" in text.lower():
                for link in links:
                    link.refused.append(text.lower())
            elif not links:
                failures.append(text)

        async def reconnected() -> None:
            for link in links:
                link.generation += 1
                link.refused.clear()  # permissions may have changed (a reload)

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
            async with asyncio.timeout(None if retry_forever else 4 * timeout):
                nc = await connecting
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
        link = cls(nc, name)
        if credentials is not None:
            link.identity = credentials.identity.label
            link.direct_reads = credentials.kind == "auditor"
        links.append(link)
        return link

    async def close(self) -> None:
        """Flush and close the connection."""
        with contextlib.suppress(Exception):  # bounded: draining a dead link would wait for it forever
            async with asyncio.timeout(5.0):
                await self.nc.drain()
        if not self.nc.is_closed:
            await self.nc.close()

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its ``max_payload``)."""
        return int(self.nc.max_payload)
