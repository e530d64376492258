"""Every error nats-federation raises on purpose.

The hierarchy keeps "we did wrong" apart from "the peer did wrong" (the h11 split)::

    FederationError
    ├── ConfigError              bad TOML, unknown key, bad flag value        (the operator)
    ├── RemoteProtocolError      a message from the wire we refuse            (the peer)
    │   ├── MessageTooLarge(size, limit)
    │   └── MalformedMessage(reason)
    ├── InvalidRequest(reason)   a request built locally that we refuse to send (the caller)
    ├── NotPermitted(subject, identity)  this identity's role does not allow it (server or client says)
    ├── NotFound(kind, name)     a job, node or region that does not exist
    ├── ConflictError(key, expected, actual)  a compare-and-set lost the race
    ├── FederationUnavailable(target, reason) no server / no responders / no federation running
    ├── LeaseLost(region, why)   this scheduler is no longer its region's leader: stop writing
    └── LocalProtocolError       our own bug: a state machine asked to do something impossible

Errors carry structured fields so callers and log lines can use them without parsing text.
"""

from __future__ import annotations


class FederationError(Exception):
    """Base of every error raised on purpose by nats-federation."""


class ConfigError(FederationError):
    """A configuration file, flag or environment value is invalid."""

    def __init__(self, message: str, *, source: str = "") -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class RemoteProtocolError(FederationError):
    """A message received from the wire is refused; it changes no state."""


class MessageTooLarge(RemoteProtocolError):
    """The payload is larger than the bound for its subject, checked before decoding."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class MalformedMessage(RemoteProtocolError):
    """The payload does not decode or does not satisfy the schema."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed message: {reason}")


class InvalidRequest(FederationError):
    """A request built by the caller (CLI flags, API arguments) is invalid; nothing was sent."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NotPermitted(FederationError):
    """The server refused this identity the subject (its role's permissions do not include it)."""

    def __init__(self, subject: str, identity: str, why: str = "refused by the server's permissions") -> None:
        super().__init__(f"{identity} may not use {subject} ({why})")
        self.subject = subject


class NotFound(FederationError):
    """A named object does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found")


class ConflictError(FederationError):
    """A compare-and-set write lost the race: the key moved past the expected revision."""

    def __init__(self, key: str, expected: int, actual: int | None = None) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(f"conflict on {key!r}: expected revision {expected}, found {actual}")


class FederationUnavailable(FederationError):
    """A server, region or the local federation cannot be reached."""

    def __init__(self, target: str, reason: str) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"{target} unavailable: {reason}")


class NoResponders(FederationUnavailable):
    """Nobody listens on the subject right now: the request was delivered to no one (it is
    definite, unlike a timeout, where the request may have arrived and only the answer was lost)."""


class LocalProtocolError(FederationError):
    """A state machine was asked to do something impossible: a bug on our side."""


class LeaseLost(FederationError):
    """This scheduler no longer holds its region's lease (or met a newer epoch): it must stop writing."""

    def __init__(self, region: str, why: str) -> None:
        super().__init__(f"lost the {region} scheduler lease: {why}")
        self.region = region
        self.why = why
