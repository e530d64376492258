"""The scheduler's input journal, and ``fed audit verify``: re-run the core on what it was fed.

Theory of operation
-------------------
The core is deterministic: same events, same commands. So the scheduler keeps a journal of
every event it hands to :meth:`RegionCore.handle <federation.core.state.RegionCore.handle>`,
each with a digest of the commands that came back. After each batch the entries go out in one
:class:`Inputs` message on ``fed.<region>.inputs``: a core publish (no round trip on the
placement path), captured by the region's audit stream and copied to the hub with the rest.

A core's *life* starts empty (a new leader, or a rebuild after a failed batch); its first message
is marked ``fresh`` and carries the epoch and policy it was created with. :func:`verify` feeds
each life's events, in order, to a new core and compares the digests step by step: the first
step whose commands differ is printed in full. A life whose messages are not consecutive (a
message lost, or a life that began before the audit stream existed) is reported, not skipped.

Digests are over the commands' encodings, sorted: the order in which a round's writes are
issued does not matter (they run concurrently), what is written does.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field

import msgspec

from federation import subjects
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.core.events import Command, Event
from federation.core.policy import Policy
from federation.core.state import RegionCore

MAX_INPUTS = 4 * 1024**2  # bytes per message (the audit stream takes 5 MiB; the server's max_payload caps it)
HEADROOM = 4096  # bytes left under max_payload for the protocol and headers


class Inputs(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one batch fed to the core (on ``fed.<region>.inputs``)."""

    region: str
    life: str
    step: int  # the number, within its life, of this message's first event
    epoch: int
    events: list[Event] = []
    digests: list[str] = []
    fresh: bool = False
    policy: Policy | None = None
    skipped: int = 0  # events too large to journal: verification of this life stops there


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Inputs)


def digest(commands: list[Command]) -> str:
    """A short digest of a set of commands ("" for none)."""
    if not commands:
        return ""
    parts = sorted(_encoder.encode(command) for command in commands)
    return hashlib.blake2b(b"\0".join(parts), digest_size=8).hexdigest()


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
                await bus.publish(subjects.inputs(self.region), _encoder.encode(message))
        except Exception:  # a server away: the life's next message shows the gap
            pass
        finally:
            self.step += len(self.events)
            self.events.clear()
            self.digests.clear()
            self.fresh = False

    def _messages(self, epoch: int, limit: int) -> list[Inputs]:
        out: list[Inputs] = []
        start = 0
        while start < len(self.events):
            end = len(self.events)
            while True:
                message = Inputs(
                    region=self.region,
                    life=self.life,
                    step=self.step + start,
                    epoch=epoch,
                    events=self.events[start:end],
                    digests=self.digests[start:end],
                    fresh=self.fresh and start == 0,
                    policy=self.policy if self.fresh and start == 0 else None,
                )
                if len(_encoder.encode(message)) <= limit:
                    break
                if end - start == 1:  # one event alone is too large (a huge recovery snapshot)
                    message = msgspec.structs.replace(message, events=[], digests=[], skipped=1)
                    break
                end = start + (end - start) // 2
            out.append(message)
            start = end
        return out


# --- verification ---------------------------------------------------------------------------------


@dataclass
class Divergence:
    """The first step whose re-derived commands differ from the recorded ones."""

    life: str
    step: int
    event: str
    recorded: str
    rederived: str
    commands: str


@dataclass
class Verification:
    """What :func:`verify` found, per region."""

    steps: int = 0
    lives: int = 0
    divergences: list[Divergence] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)  # lives with a gap or a skipped snapshot

    @property
    def ok(self) -> bool:
        return not self.divergences and not self.unverifiable


class Verifier:
    """Re-runs journalled core lives, one audit message of ``fed.<region>.inputs`` at a time."""

    def __init__(self) -> None:
        self.result = Verification()
        self.cores: dict[str, tuple[RegionCore, int]] = {}  # life -> (core, next step)
        self.broken: set[str] = set()

    def feed(self, region: str, delivery: Delivery) -> None:
        """Re-run one inputs message of ``region`` and compare its recorded decisions."""
        result = self.result
        try:
            inputs = _decoder.decode(delivery.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            result.unverifiable.append(f"{region}: audit sequence {delivery.sequence} is unreadable: {exc}")
            return  # the life it belonged to shows a gap at its next message
        life = f"{inputs.region}/{inputs.life}"
        if inputs.fresh:  # a life starts here (even under a name seen before)
            self.broken.discard(life)
            self.cores[life] = (RegionCore(inputs.region, epoch=inputs.epoch, policy=inputs.policy), 0)
            result.lives += 1
        if life in self.broken:
            return
        if life not in self.cores or self.cores[life][1] != inputs.step or inputs.skipped:
            why = "a snapshot too large to journal" if inputs.skipped else f"a gap before step {inputs.step}"
            result.unverifiable.append(f"{life}: {why}")
            self.broken.add(life)
            self.cores.pop(life, None)
            return
        core, step = self.cores[life]
        if len(inputs.events) != len(inputs.digests):
            result.unverifiable.append(f"{life}: step {step} has events and digests of unequal number")
            self.broken.add(life)
            return
        if _replay(result, life, core, step, inputs):
            self.broken.add(life)
        self.cores[life] = (core, step + len(inputs.events))


async def verify(bus: Bus, stream: str, regions: list[str]) -> Verification:
    """Re-run every journalled core life of ``regions`` found in ``stream``."""
    verifier = Verifier()
    for region in regions:
        async for delivery in bus.follow(stream, subjects.inputs(region), until_caught_up=True):
            verifier.feed(region, delivery)
    return verifier.result


def _replay(result: Verification, life: str, core: RegionCore, step: int, inputs: Inputs) -> bool:
    """Feed one message's events to ``core``; True at the first divergence (recorded in ``result``)."""
    for offset, (event, recorded) in enumerate(zip(inputs.events, inputs.digests, strict=True)):
        try:
            commands = core.handle(event)
            rederived, shown = digest(commands), _encoder.encode(commands).decode()
        except Exception as exc:  # a forged or corrupt event: the core refuses what it never made
            rederived, shown = "(raised)", f"{type(exc).__name__}: {exc}"
        result.steps += 1
        if rederived != recorded:
            result.divergences.append(
                Divergence(
                    life=life,
                    step=step + offset,
                    event=_encoder.encode(event).decode(),
                    recorded=recorded,
                    rederived=rederived,
                    commands=shown,
                )
            )
            return True
    return False


__all__ = ["Inputs", "Journal", "Verification", "Verifier", "digest", "verify"]
