"""The scheduler's input journal: what it fed its core, published for ``fed audit verify``.

Theory of operation
-------------------
The core is deterministic: same events, same commands. So the scheduler keeps a journal of
every event it hands to :meth:`RegionCore.handle <federation.core.state.RegionCore.handle>`,
each with a digest of the commands that came back. After each batch the entries go out in one
:class:`~federation.inputs.Inputs` message on ``fed.<region>.inputs``: a core publish (no round
trip on the placement path), captured by the region's audit stream and copied to the hub with
the rest.

A core's *life* starts empty (a new leader, or a rebuild after a failed batch); its first message
is marked ``fresh`` and carries the epoch and policy it was created with.
:mod:`federation.audit.verify` re-runs each life from these messages; the message and the digest
are in :mod:`federation.inputs`, which both sides import.
"""

from __future__ import annotations

import secrets

import msgspec
import structlog

from federation import subjects
from federation.bus import Bus
from federation.core.events import Command, Event
from federation.core.policy import Policy
from federation.core.state import RegionCore
from federation.inputs import Inputs, digest, encode_event

MAX_INPUTS = 4 * 1024**2  # bytes per message (the audit stream takes 5 MiB; the server's max_payload caps it)
HEADROOM = 4096  # bytes left under max_payload for the protocol and headers

_encoder = msgspec.json.Encoder()
log = structlog.get_logger()


class Journal:
    """Records what a scheduler feeds its core; :meth:`flush` publishes it."""

    def __init__(self, region: str, name: str) -> None:
        # a random boot id: host and pid repeat (pid 1 in every container), a life's name must not
        self.region, self.name = region, f"{name}.{secrets.token_hex(4)}"
        self.lives = 0
        self.life, self.step, self.fresh = "", 0, False
        self.policy: Policy | None = None
        self.events: list[Event] = []
        self.digests: list[str] = []
        self.failing = False  # the last flush failed (said once)

    def begin(self, core: RegionCore) -> None:
        """A new, empty core: a new life."""
        self.lives += 1
        self.life, self.step, self.fresh = f"{self.name}#{self.lives}", 0, True
        self.policy = core.policy
        self.events.clear()
        self.digests.clear()

    def handle(self, core: RegionCore, event: Event) -> list[Command]:
        """Feed ``event`` to ``core`` and journal it with the digest of what came back."""
        commands = core.handle(event)
        self.events.append(event)
        self.digests.append(digest(commands))
        return commands

    async def flush(self, bus: Bus | None, epoch: int) -> None:
        """Publish what was journalled since the last flush (never raises: the audit reports a gap)."""
        if not self.events or bus is None:
            return
        try:
            for message in self._messages(epoch, min(MAX_INPUTS, bus.max_payload - HEADROOM)):
                await bus.publish(subjects.inputs(self.region), message)
            self.failing = False
        except Exception as exc:  # a server away: the life's next message shows the gap
            if not self.failing:  # once per outage, not once per batch
                log.warning("journal not sent: verify will see a gap", region=self.region, error=str(exc))
            self.failing = True
        finally:
            self.step += len(self.events)
            self.events.clear()
            self.digests.clear()
            self.fresh = False

    def _messages(self, epoch: int, limit: int) -> list[bytes]:
        """The journalled events as messages of at most ``limit`` bytes each, encoded: as many
        events per message as fit, and an event that fits in none alone in parts (:meth:`_parts`)."""
        out: list[bytes] = []
        start = 0
        while start < len(self.events):
            end = len(self.events)
            while True:
                encoded = _encoder.encode(self._message(epoch, start, end))
                if len(encoded) <= limit:
                    out.append(encoded)
                    break
                if end - start == 1:  # one event alone is too large (a recovery snapshot)
                    out += [_encoder.encode(part) for part in self._parts(epoch, start, limit)]
                    break
                end = start + (end - start) // 2
            start = end
        return out

    def _message(self, epoch: int, start: int, end: int) -> Inputs:
        first = self.fresh and start == 0
        return Inputs(
            region=self.region,
            life=self.life,
            step=self.step + start,
            epoch=epoch,
            events=self.events[start:end],
            digests=self.digests[start:end],
            fresh=first,
            policy=self.policy if first else None,
        )

    def _parts(self, epoch: int, index: int, limit: int) -> list[Inputs]:
        """Event ``index`` in parts: its encoding cut into fragments that fit ``limit`` with the
        message around them (a fragment is base64 in JSON: 4 bytes for 3), the digest on the last."""
        data = encode_event(self.events[index])
        empty = msgspec.structs.replace(
            self._message(epoch, index, index), part=1, parts=1, digests=[self.digests[index]]
        )
        room = (limit - len(_encoder.encode(empty)) - 32) * 3 // 4  # 32: the part numbers' digits
        if room < 1:
            raise ValueError(f"a journal message of {limit} bytes cannot hold any part of an event")
        pieces = [data[i : i + room] for i in range(0, len(data), room)]
        first = msgspec.structs.replace(empty, digests=[])
        return [
            msgspec.structs.replace(
                first if n == 1 else msgspec.structs.replace(first, fresh=False, policy=None),
                part=n,
                parts=len(pieces),
                fragment=piece,
                digests=[self.digests[index]] if n == len(pieces) else [],
            )
            for n, piece in enumerate(pieces, 1)
        ]


__all__ = ["Journal"]
