"""The core's input journal as it travels on ``fed.<region>.inputs``: the :class:`Inputs` message,
its decoder, and the digest of the commands one step returned.

The scheduler writes it (:mod:`federation.scheduler.journal`) and ``fed audit verify`` re-runs it
(:mod:`federation.audit.verify`); both import it from here, so neither package imports the other.
It sits beside :mod:`federation.schemas` rather than in it: its events and policy are the core's
own types (:data:`~federation.core.events.Event`, :class:`~federation.core.policy.Policy`), and
the core is built on the schemas, so the schemas cannot import the core back.

One event too large for a message (a new leader's recovery snapshot of a long queue: about a
kilobyte per job) travels in parts: its JSON encoding cut into ``fragment`` s, each in a message
of the same ``step`` numbered ``part`` of ``parts``, the last one carrying its digest. The
verifier joins them back into the event (:func:`decode_event`).

Digests are over the commands' encodings, sorted: the order in which a round's writes are
issued does not matter (they run concurrently), what is written does. A field added to the job
record after trails were first recorded is left out of the digest while it holds its default
(:data:`LATER_DEFAULTS`), so that a trail written before it still verifies; any other value is
digested like the rest.
"""

from __future__ import annotations

import hashlib

import msgspec

from federation.core.events import Command, Event
from federation.core.policy import Policy


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
    skipped: int = 0  # events too large to journal (before they were sent in parts): the life stops
    # one event in parts: its encoding's ``part``-th piece of ``parts`` (1-based); digests on the last
    part: int = 0
    parts: int = 0
    fragment: bytes = b""


_encoder = msgspec.json.Encoder()

# the job record's last field, ``stored`` (output files; since 2026-12), at its default: in a
# record's JSON, no other ``,"stored":[]}`` can occur (map keys that could be "stored" hold strings
# or numbers, and quotes inside strings are escaped)
LATER_DEFAULTS = (b',"stored":[]}',)
_decoder = msgspec.json.Decoder(Inputs)
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def decode_inputs(data: bytes) -> Inputs:
    """Decode one journal message. Not bounded here (the server's ``max_payload`` bounds it), and
    its errors are msgspec's own (``DecodeError``, ``ValidationError``): ``fed audit verify``
    reports such a message as unreadable in msgspec's words."""
    return _decoder.decode(data)


def encode_event(event: Event) -> bytes:
    """One event's encoding, as the parts of an event too large for a message carry it."""
    return _encoder.encode(event)


def decode_event(data: bytes) -> Event:
    """An event joined back from its parts (msgspec's errors, as :func:`decode_inputs`)."""
    return _event_decoder.decode(data)


def digest(commands: list[Command]) -> str:
    """A short digest of a set of commands ("" for none)."""
    if not commands:
        return ""
    parts = sorted(_canonical(_encoder.encode(command)) for command in commands)
    return hashlib.blake2b(b"\0".join(parts), digest_size=8).hexdigest()


def _canonical(encoded: bytes) -> bytes:
    for default in LATER_DEFAULTS:
        encoded = encoded.replace(default, b"}")
    return encoded


__all__ = ["LATER_DEFAULTS", "Inputs", "decode_event", "decode_inputs", "digest", "encode_event"]
