"""The description of the streams a region keeps, as :mod:`federation.ops.provision` lays them out and
:class:`federation.bus.Bus` creates them (pure: no NATS types).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StreamSpec:
    """A file stream as :mod:`federation.ops.provision` lays it out (0/False: the server's default).

    ``sources`` are (stream, domain) pairs, domain "" for this one; ``discard_new`` refuses new
    messages at a limit instead of dropping old ones. A KV bucket is such a stream too, named
    ``KV_<bucket>`` on ``$KV.<bucket>.>`` (see :func:`federation.ops.provision.bucket`).
    """

    name: str
    subjects: tuple[str, ...] = ()
    replicas: int = 1
    max_age: float = 0.0
    duplicate_window: float = 0.0
    max_msg_size: int = 0
    max_msgs_per_subject: int = 0
    max_bytes: int = 0
    allow_msg_ttl: bool = False
    subject_delete_marker_ttl: float = 0.0
    allow_direct: bool = False
    deny_delete: bool = False
    deny_purge: bool = False
    discard_new: bool = False
    allow_rollup: bool = False
    republish: str = ""  # where every stored message is republished (core NATS), e.g. fed.eu.ledger.>
    sources: tuple[tuple[str, str], ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamFacts:
    """What provisioning needs to know of an existing stream."""

    replicas: int
    file: bool  # file storage (an older layout kept some streams in memory)
    sources: tuple[str, ...]
    metadata: dict[str, str]


__all__ = ["StreamFacts", "StreamSpec"]
