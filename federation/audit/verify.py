"""``fed audit verify``: re-run the core on what it was fed, and compare its decisions.

Theory of operation
-------------------
The core is deterministic: same events, same commands. The scheduler journals every event it
feeds its core, each with a digest of the commands that came back, one
:class:`~federation.inputs.Inputs` message per batch on ``fed.<region>.inputs``
(:mod:`federation.scheduler.journal`); the region's audit stream keeps them.

A core's *life* starts empty (a new leader, or a rebuild after a failed batch); its first message
is marked ``fresh`` and carries the epoch and policy it was created with. :func:`verify` feeds
each life's events, in order, to a new core and compares the digests step by step: the first
step whose commands differ is printed in full. A life whose messages are not consecutive (a
message lost, or a life that began before the audit stream existed) is reported, not skipped.
An event sent in parts (too large for one message) is joined back before it is fed.

Digests are over the commands' encodings, sorted (:func:`~federation.inputs.digest`): the order
in which a round's writes are issued does not matter (they run concurrently), what is written does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from federation import subjects
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.core.state import RegionCore
from federation.inputs import Inputs, decode_event, decode_inputs, digest

_encoder = msgspec.json.Encoder()


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
        self.parts: dict[str, list[bytes]] = {}  # life -> the fragments of an event in parts so far

    def feed(self, region: str, delivery: Delivery) -> None:
        """Re-run one inputs message of ``region`` and compare its recorded decisions."""
        result = self.result
        try:
            inputs = decode_inputs(delivery.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            result.unverifiable.append(f"{region}: audit sequence {delivery.sequence} is unreadable: {exc}")
            return  # the life it belonged to shows a gap at its next message
        life = f"{inputs.region}/{inputs.life}"
        if inputs.fresh:  # a life starts here (even under a name seen before)
            self.broken.discard(life)
            self.parts.pop(life, None)
            self.cores[life] = (RegionCore(inputs.region, epoch=inputs.epoch, policy=inputs.policy), 0)
            result.lives += 1
        if life in self.broken:
            return
        if life not in self.cores or self.cores[life][1] != inputs.step or inputs.skipped:
            why = "a snapshot too large to journal" if inputs.skipped else f"a gap before step {inputs.step}"
            self._unverifiable(life, why)
            return
        if inputs.parts:
            joined = self._joined(life, inputs)
            if joined is None:
                return  # more parts to come, or the life broke
            inputs = joined
        core, step = self.cores[life]
        if len(inputs.events) != len(inputs.digests):
            result.unverifiable.append(f"{life}: step {step} has events and digests of unequal number")
            self.broken.add(life)
            return
        if _replay(result, life, core, step, inputs):
            self.broken.add(life)
        self.cores[life] = (core, step + len(inputs.events))

    def _joined(self, life: str, inputs: Inputs) -> Inputs | None:
        """One part of an event sent in parts: None until its last, then the message as if the
        event had fitted in one (a part out of order or an event that does not decode: the life
        is unverifiable from there)."""
        fragments = self.parts.setdefault(life, [])
        if inputs.part != len(fragments) + 1:
            self._unverifiable(life, f"part {inputs.part} of {inputs.parts} after {len(fragments)}")
            return None
        fragments.append(inputs.fragment)
        if inputs.part < inputs.parts:
            return None
        del self.parts[life]
        try:
            event = decode_event(b"".join(fragments))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._unverifiable(life, f"the event in {inputs.parts} parts is unreadable: {exc}")
            return None
        return msgspec.structs.replace(inputs, events=[event], part=0, parts=0, fragment=b"")

    def finish(self) -> Verification:
        """The result, once every message was fed: an event whose parts stop before their last (a
        leader killed while it sent them) leaves its life unverifiable from there."""
        for life, fragments in list(self.parts.items()):
            self._unverifiable(life, f"the trail ends after part {len(fragments)} of an event in parts")
        return self.result

    def _unverifiable(self, life: str, why: str) -> None:
        self.result.unverifiable.append(f"{life}: {why}")
        self.broken.add(life)
        self.cores.pop(life, None)
        self.parts.pop(life, None)


async def verify(bus: Bus, stream: str, regions: list[str]) -> Verification:
    """Re-run every journalled core life of ``regions`` found in ``stream``."""
    verifier = Verifier()
    for region in regions:
        async for delivery in bus.follow(stream, subjects.inputs(region), until_caught_up=True):
            verifier.feed(region, delivery)
    return verifier.finish()


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


__all__ = ["Divergence", "Verification", "Verifier", "verify"]
