"""One leader per region: a TTL'd lease in KV, won and renewed by compare-and-set.

Theory of operation
-------------------
The lease is the key ``scheduler`` of the bucket ``fed-lease-<region>``, written with a
per-message TTL of ``ttl`` seconds. When it expires the server leaves a delete marker.

* **Winning.** A scheduler reads the key. While a live lease is there it is a standby and reads
  again every ``poll`` seconds. When the key is absent, or its last message is a marker, it writes
  its own lease by compare-and-set on that last revision; of several standbys only one write can
  land. The revision of the winning write is the **epoch**. Revisions only grow, so a later
  leader always holds a higher epoch, and that epoch fences every write the leader makes (I6).
* **Holding.** The leader renews every ``ttl / 3`` by compare-and-set on its last revision. A
  conflict means someone else holds the lease: the leader has lost it. A renewal that goes
  unanswered is retried, and the leader counts as valid only until ``ttl`` (minus a margin) after
  the last renewal that landed, measured on the boot-time clock (it counts suspended time).
  :meth:`Lease.ensure` is that check, and the scheduler makes it before each write; a lease that
  lapsed locally is renewed once first, which can only land if nobody took it over. A process
  paused past its lease (SIGSTOP, a long GC, a frozen VM) therefore finds, the moment it runs
  again and before it writes anything, either that it still leads or that it must stop.
* **The cadence.** Every renewal also carries how often the region's nodes should beat and
  refresh their offers (:mod:`federation.core.cadence`), as the leader last set it; agents read it
  from the lease key.
* **Losing** is final: the scheduler stops, and its supervisor starts it again as a standby.

The residual risk is a pause between :meth:`valid` and the write it guards. That write is still
fenced, because the new leader rewrites every ledger with its epoch when it takes over, so a stale
compare-and-set finds the revision moved. See :mod:`federation.scheduler.daemon`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import msgspec
import structlog

from federation import subjects
from federation.bus import Bus
from federation.core.cadence import Cadence
from federation.errors import ConflictError, FederationUnavailable, LeaseLost, MalformedMessage
from federation.schemas import Lease as LeaseValue
from federation.schemas import decode, encode
from federation.tasks import idle

log = structlog.get_logger()


def boot_time() -> float:
    """The boot-time clock: monotonic, and counting time suspended (a paused host's lease lapses)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class Lease:
    """The scheduler lease of one region, as seen by one scheduler process (``holder``).

    ``clock`` is the wall time stamped into the lease value (``renewed_at``); ``monotonic`` is what
    the lease's validity is measured on (:func:`boot_time`). Both are injectable, as the
    scheduler's clock is.
    """

    def __init__(
        self,
        bus: Bus,
        region: str,
        holder: str,
        *,
        ttl: float = 5.0,
        poll: float = 0.25,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = boot_time,
    ) -> None:
        self.bus = bus
        self.region = region
        self.holder = holder
        self.ttl = max(1, math.ceil(ttl))  # per-message TTLs are whole seconds
        self.poll = poll
        self.clock = clock
        self.monotonic = monotonic
        self.bucket = subjects.lease_bucket(region)
        self.epoch = 0
        self.revision = 0
        self.valid_until = 0.0
        self.cadence: Cadence | None = None  # set by the leader: written with the next renewal
        self.log = log.bind(region=region, holder=holder)

    def valid(self) -> bool:
        """Whether this process may still write as the leader (by its monotonic clock, counting suspend)."""
        return self.epoch > 0 and self.monotonic() < self.valid_until

    async def ensure(self) -> None:
        """Return only while this process holds the lease; raise :class:`LeaseLost` otherwise.

        When the lease lapsed by the local clock (a long stall, a pause), one renewal is tried: it
        lands only if nobody took the lease over, which proves the stall cost nothing.
        """
        if self.valid():
            return
        if self.epoch == 0:
            raise LeaseLost(self.region, "not the leader")
        try:
            await self.renew()
        except FederationUnavailable as exc:
            raise LeaseLost(self.region, f"lease lapsed and could not be renewed: {exc}") from None

    def _value(self) -> bytes:
        value = LeaseValue(holder=self.holder, epoch=self.epoch, renewed_at=self.clock(), ttl=self.ttl)
        if self.cadence is not None:  # the leader's word to its agents, carried by every renewal
            c = self.cadence
            value = msgspec.structs.replace(
                value,
                heartbeat=c.heartbeat,
                offer_refresh=c.offer_refresh,
                nodes=c.nodes,
                node_budget=c.budget,
            )
        return encode(value)

    async def acquire(self) -> int:
        """Wait as a standby until this process wins the lease; returns the epoch."""
        announced = ""
        while True:
            try:
                value, revision = await self.bus.kv_get(self.bucket, subjects.LEADER_KEY)
                try:
                    current = decode(LeaseValue, value) if value is not None else None
                except MalformedMessage:
                    self.log.warning("unreadable lease value; taking it over")
                    current = None  # garbage (without a TTL it would never expire): treat as free
                if current is None:
                    started = self.monotonic()
                    won = await self.bus.cas(
                        self.bucket, subjects.LEADER_KEY, self._value(), revision, ttl=self.ttl
                    )
                    # the epoch is the winning revision; stamp it into the value at the first renewal
                    self.epoch, self.revision = won, won
                    self.valid_until = started + self.ttl * 0.8
                    await self.renew()
                    self.log.info("lease won: leading", epoch=self.epoch)
                    return self.epoch
                if current.holder != announced:
                    announced = current.holder
                    self.log.info(
                        "standby: another scheduler leads", leader=current.holder, epoch=current.epoch
                    )
            except ConflictError:
                pass  # another standby won the race: keep watching
            except FederationUnavailable as exc:
                self.log.warning("lease unreadable; retrying", error=str(exc))
            await idle(self.poll)

    async def renew(self) -> None:
        """Extend the lease once; raises :class:`LeaseLost` when someone else holds it."""
        started = self.monotonic()
        try:
            # the id makes a renewal whose answer was lost, sent again, count once (not a conflict)
            self.revision = await self.bus.cas(
                self.bucket,
                subjects.LEADER_KEY,
                self._value(),
                self.revision,
                ttl=self.ttl,
                msg_id=f"{self.holder}:{self.revision}",
            )
        except ConflictError:
            self.valid_until = 0.0
            raise LeaseLost(self.region, "another scheduler took it over") from None
        # valid for the TTL from when the renewal was *sent*, less a margin for clock rates
        self.valid_until = started + self.ttl * 0.8

    async def hold(self) -> None:
        """Renew every ``ttl / 3`` until the lease is lost (raises :class:`LeaseLost`)."""
        while True:
            await idle(self.ttl / 3)
            try:
                await self.renew()  # even after a local lapse: it lands only if nobody took over
            except FederationUnavailable as exc:
                if not self.valid():
                    raise LeaseLost(self.region, f"lease lapsed while the server was away: {exc}") from None
                self.log.warning("lease renewal unanswered; retrying", error=str(exc))

    async def release(self) -> None:
        """Give the lease up at a clean stop so a standby takes over at once, not after the TTL."""
        if not self.valid():
            return
        try:
            await self.bus.cas(self.bucket, subjects.LEADER_KEY, b"", self.revision, delete=True)
        except (ConflictError, FederationUnavailable):
            return
        self.valid_until = 0.0


__all__ = ["Lease", "boot_time"]
