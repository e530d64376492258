"""A message as the rest of the code sees it: from a stream or a subscription, never a nats-py type."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.msg import Msg

MARKER_REASON = "Nats-Marker-Reason"
KV_OPERATION = "KV-Operation"


@dataclass(slots=True)
class Delivery:
    """One message from a stream or a subscription, without the nats-py type."""

    subject: str
    data: bytes
    headers: dict[str, str]
    sequence: int
    delivered: int
    pending: int = 0
    _msg: Msg | None = None  # the nats-py message, for acknowledgements (None: nothing to acknowledge)
    timestamp: float = 0.0  # when the server stored it (0 when unknown)

    @classmethod
    def direct(cls, headers: dict[str, str], data: bytes) -> Delivery:
        """A message of a direct get's answer (where it came from is in its headers)."""
        sequence, pending = int(headers.get("Nats-Sequence", 0)), int(headers.get("Nats-Num-Pending", 0))
        stamp = _seconds(headers.get("Nats-Time-Stamp", ""))
        return cls(headers.get("Nats-Subject", ""), data, headers, sequence, 1, pending, None, stamp)

    @property
    def removed(self) -> bool:
        """True for a server-placed delete marker (TTL expiry) or a KV delete/purge."""
        return MARKER_REASON in self.headers or self.headers.get(KV_OPERATION) in ("DEL", "PURGE")

    async def ack(self) -> None:
        """Acknowledge (no-op for messages from ordered followers)."""
        if self._msg is not None and self._msg.reply:
            await self._msg.ack()

    async def nak(self, delay: float = 0.0) -> None:
        """Hand the message back for redelivery, after ``delay`` seconds."""
        if self._msg is not None and self._msg.reply:
            await self._msg.nak(delay=delay or None)

    async def term(self) -> None:
        """Tell the server never to redeliver this message."""
        if self._msg is not None and self._msg.reply:
            await self._msg.term()


def _seconds(stamp: str) -> float:
    """Unix seconds of an RFC 3339 time with nanoseconds (``Nats-Time-Stamp``), 0.0 if unreadable."""
    whole, _, rest = stamp.rstrip("Z").partition(".")
    try:
        when = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.UTC)
    except ValueError:
        return 0.0
    return when.timestamp() + (float(f"0.{rest}") if rest.isdigit() else 0.0)
