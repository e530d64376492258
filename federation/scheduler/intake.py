"""What reaches a region's leader, turned into core events: decoded, checked, or quarantined.

Every message is decoded (size-bounded, schema-checked, and checked against its subject: a
workload message must be the type its subject names and set no field only the system sets, see
:func:`~federation.schemas.decode_workload`) in its subscription callback; a refused message is
written to the quarantine stream with its reason and acknowledged (terminated), changing no state.
Accepted messages become core events, handed to the leader's loop with the message they came
from (acknowledged once everything they caused is durable); offers and heartbeats come from
ordered "latest per subject" followers and are not acknowledged.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import structlog

from federation import subjects, tracing
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.core.events import (
    CancelRequested,
    Event,
    JobReported,
    NodeDown,
    NodeUp,
    OfferSeen,
    Submitted,
)
from federation.errors import RemoteProtocolError
from federation.schemas import (
    Heartbeat,
    JobEvent,
    Offer,
    Quarantined,
    Submit,
    as_stored,
    clamp_offer,
    decode_message,
    decode_workload,
    encode,
)

Item = tuple[Event, Delivery | None]  # an event, and the message to acknowledge once it is durable
QUARANTINE_PAYLOAD = 64 * 1024  # bytes of a refused message kept as evidence (base64 in the record)


class Intake:
    """Turns the region's messages into events for the leader's loop (``accept``)."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        *,
        clock: Callable[[], float],
        log: structlog.typing.FilteringBoundLogger,
        accept: Callable[[Item], None],
        alive: Callable[[str], bool | None],
        counted: Callable[[str], None] = lambda source: None,
        max_input_bytes: Callable[[], int] = lambda: 0,
    ) -> None:
        """``accept`` queues an event for the loop; ``alive`` says whether the core holds a node
        as alive now (None: it does not know the node); ``counted`` counts a quarantined message
        by its source for the metrics; ``max_input_bytes`` is the policy's bound on a job's input
        files (0: none)."""
        self.bus, self.region, self.clock, self.log = bus, region, clock, log
        self.accept, self.alive, self.counted = accept, alive, counted
        self.max_input_bytes = max_input_bytes
        self.quarantined = 0

    async def quarantine(self, source: str, delivery: Delivery, reason: str) -> None:
        """Record a refused message with its reason; never raises (a handler loop must go on)."""
        try:
            await self._store(source, delivery, reason)
        except Exception as exc:
            self.log.error("could not quarantine a refused message", subject=delivery.subject, error=str(exc))

    async def _store(self, source: str, delivery: Delivery, reason: str) -> None:
        self.quarantined += 1
        self.counted(source)
        record = Quarantined(
            subject=delivery.subject,
            reason=reason,
            payload=base64.b64encode(delivery.data[:QUARANTINE_PAYLOAD]).decode(),
            size=len(delivery.data),
            at=self.clock(),
            sequence=delivery.sequence,
            deliveries=delivery.delivered,
        )
        await self.bus.store(subjects.quarantine(self.region, source), encode(record))
        await delivery.term()
        self.log.warning("message quarantined", subject=delivery.subject, reason=reason)

    async def on_workload(self, delivery: Delivery) -> None:
        """A submission or a cancel from the workloads stream: a ``Submitted`` or ``CancelRequested``."""
        kind, job, tenant = subjects.parse_workload(delivery.subject) or ("", "", "")
        try:
            if not kind:
                raise RemoteProtocolError("not a workload subject (fed.<region>.wl.<kind>.<job>[.<tenant>])")
            message = decode_workload(delivery.data, kind=kind, job=job, tenant=tenant, region=self.region)
            limit = self.max_input_bytes()
            if isinstance(message, Submit) and limit and not message.origin:
                total = sum(ref.size for ref in message.inputs)
                if total > limit:
                    raise RemoteProtocolError(f"its inputs are {total} bytes; the region allows {limit}")
        except RemoteProtocolError as exc:
            await self.quarantine("workloads", delivery, str(exc))
            return
        if isinstance(message, Submit):
            event: Event = Submitted(
                spec=as_stored(message, delivery.timestamp),
                at=self.clock(),
                traceparent=tracing.traceparent(delivery.headers),
            )
        else:
            event = CancelRequested(job=job, reason=message.reason, at=self.clock(), tenant=tenant)
        self.accept((event, delivery))

    async def on_status(self, delivery: Delivery) -> None:
        """An agent's report from the status stream: a ``JobReported``."""
        parsed = subjects.parse_status(delivery.subject)
        try:
            message = decode_message(delivery.data)
            if not isinstance(message, JobEvent):
                raise RemoteProtocolError(f"expected a job event, got {type(message).__name__}")
            if parsed is None or (parsed.node, parsed.job) != (message.node, message.job):
                raise RemoteProtocolError("node or job in payload does not match the subject")
            mine = f"out.{message.node}."
            if any(not ref.object.startswith(mine) for ref in message.stored):
                raise RemoteProtocolError(f"an output stored by {message.node} must be an object {mine}<key>")
        except RemoteProtocolError as exc:
            await self.quarantine("status", delivery, str(exc))
            return
        self.accept((JobReported(event=message), delivery))

    async def follow_offers(self) -> None:
        """Every node's latest offer, checked and clamped to what the node registered: ``OfferSeen``."""
        r = self.region
        async for delivery in self.bus.follow(
            subjects.offers_stream(r), subjects.offer(r, "*"), last_per_subject=True
        ):
            if delivery.removed:
                continue  # an expired offer: its expires_at already stops placements
            try:
                message = decode_message(delivery.data)
                if not isinstance(message, Offer) or message.node != subjects.last_token(delivery.subject):
                    raise RemoteProtocolError("not an offer for the node named in the subject")
                cores, gpus = message.cores, message.gpus
                if len(set(cores)) != len(cores) or len(set(gpus)) != len(gpus):
                    raise RemoteProtocolError("the offer lists a device twice")
            except RemoteProtocolError as exc:
                await self.quarantine("offers", delivery, str(exc))
                continue
            message, cut = clamp_offer(message)  # more than registered: flagged, and clamped
            if cut:
                await self.quarantine("offers", delivery, cut)
            self.accept((OfferSeen(offer=message), None))

    async def follow_heartbeats(self) -> None:
        """Every node's heartbeat: ``NodeUp`` when one comes back, ``NodeDown`` at its TTL's marker."""
        r = self.region
        async for delivery in self.bus.follow(
            subjects.heartbeats_stream(r), subjects.heartbeat(r, "*"), last_per_subject=True
        ):
            node = subjects.last_token(delivery.subject)
            if delivery.removed:
                self.log.warning("node heartbeat expired", node=node)
                # the marker's own time: a replay after a restart does not restart the node's clock
                at = min(delivery.timestamp or self.clock(), self.clock())
                self.accept((NodeDown(node=node, at=at), None))
                continue
            try:
                message = decode_message(delivery.data)
                if not isinstance(message, Heartbeat) or message.node != node:
                    raise RemoteProtocolError("not a heartbeat for the node named in the subject")
            except RemoteProtocolError as exc:
                await self.quarantine("heartbeats", delivery, str(exc))
                continue
            alive = self.alive(node)
            if not alive:  # only a change of liveness is an event
                if alive is not None:
                    self.log.info("node heartbeat resumed", node=node)
                self.accept((NodeUp(node=node, at=self.clock()), None))


__all__ = ["QUARANTINE_PAYLOAD", "Intake", "Item"]
