"""The audit trail: read a region's (or the hub's) audit stream as events, print them, merge them.

Theory of operation
-------------------
Each region's ``fed-<region>-audit`` stream *sources* what the region already writes: the
workloads stream (submissions, cancels), the status stream (agents' reports), the quarantine
stream (refused messages), and the ledger and job-record buckets (every claim, release and record
change: each record carries its decision, the "why here / why pending" data). The buckets keep 64
versions per key so the source never misses a superseded one. The stream refuses delete and
purge, and the hub's ``AUDIT_ALL`` sources every region's audit stream. Nothing is added to the
placement path: the server copies.

Every message in it carries ``Nats-Stream-Source: <origin stream> <origin sequence> ...``. Each
event keeps its origin and origin sequence (:func:`parse`): :mod:`federation.audit.check` finds
a missing message by them, and checks the invariants over the events.

The JSON-lines form of :class:`AuditEvent` is stable (documented in ``subjects.md``). Whatever
bytes were stored, an event encodes to one line of valid JSON: a value that is not UTF-8 JSON
(a tenant may publish anything to its submit subject, and the trail keeps it forever) is carried
in base64 with the reason (:func:`stored`), and :func:`line` keeps each event on one line.
:func:`merged` reads several regions' trails as one timeline, by the time each stored its events.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from typing import Literal

import msgspec

from federation import subjects
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.errors import RemoteProtocolError
from federation.schemas import (
    Cancel,
    JobEvent,
    JobRecord,
    Ledger,
    Quarantined,
    Submit,
    decode,
    decode_message,
)
from federation.subjects import BASELINE

Kind = Literal["submit", "cancel", "report", "ledger", "record", "inputs", "quarantine", "unreadable"]
SOURCE_HEADER = "Nats-Stream-Source"


class AuditEvent(msgspec.Struct, kw_only=True):
    """One audited fact (``fed audit replay --format jsonl`` prints one per line).

    ``seq`` is the audit stream's sequence, ``origin``/``origin_seq`` where the fact was first
    written; ``at`` is when the audit stream stored it. ``value`` is the message or stored value,
    as written, when that is UTF-8 JSON; otherwise it is null, ``value_base64`` holds the bytes
    and ``value_invalid`` says why they are not JSON (empty when ``value`` holds them).
    """

    seq: int
    at: float
    region: str
    kind: Kind
    origin: str = ""
    origin_seq: int = 0
    subject: str = ""
    job: str = ""
    node: str = ""
    tenant: str = ""
    state: str = ""
    attempt: int = 0
    epoch: int = 0
    detail: str = ""
    value: msgspec.Raw = msgspec.Raw(b"null")
    value_base64: str = ""
    value_invalid: str = ""


NULL = msgspec.Raw(b"null")
# characters Python's str.splitlines() breaks at that JSON lets stand unescaped inside a string
# (in valid UTF-8 these bytes are only ever these characters, so replacing them keeps the JSON)
LINE_SEPARATORS = ((b"\xc2\x85", b"\\u0085"), (b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


def stored(data: bytes) -> tuple[msgspec.Raw, str, str]:
    """A stored message as an event carries it: ``(value, value_base64, value_invalid)``.

    UTF-8 JSON is embedded as written; anything else (bytes that are not UTF-8, text that is not
    one JSON value, an empty message) goes as base64 with the reason, so a line stays JSON.
    msgspec checks the UTF-8 only of the strings it decodes, so it is checked here first.
    """
    if not data:
        return NULL, "", "empty"
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return NULL, base64.b64encode(data).decode(), f"not UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        msgspec.json.decode(data, type=msgspec.Raw)  # checks the syntax, decodes nothing
    except msgspec.DecodeError as exc:
        return NULL, base64.b64encode(data).decode(), f"not JSON ({exc})"
    return msgspec.Raw(data), "", ""


def line(event: AuditEvent) -> bytes:
    """``event`` as one line of JSON (no newline at the end): a value written across lines is
    joined (whitespace outside strings dropped) and line separators inside strings are escaped,
    so a reader splitting on any line break gets one event per line."""
    out = msgspec.json.encode(event)
    if b"\n" in out or b"\r" in out:  # only whitespace between tokens: strings hold them escaped
        out = msgspec.json.format(out, indent=-1)
    for raw, escaped in LINE_SEPARATORS:
        if raw in out:
            out = out.replace(raw, escaped)
    return out


Parsed = Submit | Cancel | JobEvent | Ledger | JobRecord | Quarantined | None


def parse(delivery: Delivery) -> tuple[AuditEvent, Parsed]:
    """The event of one audit stream message and the decoded value (None when unreadable)."""
    event, value = _parse(delivery)
    if value is None or not delivery.data.isascii():  # else decoded whole, and ASCII is UTF-8
        event.value, event.value_base64, event.value_invalid = stored(delivery.data)
    return event, value


def _parse(delivery: Delivery) -> tuple[AuditEvent, Parsed]:
    origin, _, rest = delivery.headers.get(SOURCE_HEADER, "").partition(" ")
    origin = origin.partition(":")[0]  # a source in another domain is named "<stream>:<hash>"
    origin_seq = int(rest.split(" ", 1)[0]) if rest[:1].isdigit() else 0
    subject, data = delivery.subject, delivery.data
    base = AuditEvent(
        seq=delivery.sequence,
        at=delivery.timestamp,
        region="",
        kind="unreadable",
        origin=origin,
        origin_seq=origin_seq,
        subject=subject,
        value=msgspec.Raw(data),
    )
    fill = msgspec.structs.replace
    try:
        if subject.startswith("$KV."):
            _, bucket, key = subject.split(".", 2)
            region = bucket.split("-", 2)[2]
            if bucket.startswith("fed-ledger-"):
                ledger = decode(Ledger, data)
                jobs = sorted({f"{a.job}#{a.attempt}" for a in ledger.allocations})
                detail = f"{len(ledger.allocations)} allocations: {' '.join(jobs)}" if jobs else "empty"
                event = fill(base, region=region, kind="ledger", node=key, epoch=ledger.epoch, detail=detail)
                return event, ledger
            record = decode(JobRecord, data)
            event = fill(
                base,
                region=region,
                kind="record",
                job=key,
                node=record.node,
                tenant=record.spec.tenant,
                state=record.state,
                attempt=record.attempt,
                epoch=record.epoch,
                detail=record.reason,
            )
            return event, record
        region = subject.split(".")[1]
        if subject == subjects.inputs(region):  # the core's journal (fed audit verify reads it)
            return fill(base, region=region, kind="inputs", detail=f"{len(data)} bytes of core inputs"), None
        if ".quarantine." in subject:  # a message the scheduler refused
            refused = msgspec.json.decode(data, type=Quarantined)
            source = subjects.last_token(subject)
            detail = f"{source}: {refused.subject} #{refused.sequence}: {refused.reason}"
            return fill(base, region=region, kind="quarantine", detail=detail[:500]), refused
        message = decode_message(data)
        match message:
            case Submit():
                detail = " ".join(message.command)[:200]
                kind: Kind = "submit"
                event = fill(
                    base, region=region, kind=kind, job=message.id, tenant=message.tenant, detail=detail
                )
            case Cancel():
                event = fill(base, region=region, kind="cancel", job=message.id, detail=message.reason)
            case JobEvent():
                code = f" exit {message.exit_code}" if message.exit_code is not None else ""
                event = fill(
                    base,
                    region=region,
                    kind="report",
                    job=message.job,
                    node=message.node,
                    state=message.kind,
                    attempt=message.attempt,
                    epoch=message.epoch,
                    detail=(message.reason or "") + code,
                )
            case _:
                raise RemoteProtocolError(f"unexpected {type(message).__name__}")
        return event, message
    except (RemoteProtocolError, msgspec.ValidationError, ValueError, IndexError) as exc:
        region = subject.split(".")[1] if subject.startswith("fed.") else ""
        return fill(base, region=region, detail=f"{subject}: {exc}"), None


# --- reading ------------------------------------------------------------------------------------


async def events(
    bus: Bus, stream: str, *, from_seq: int = 0, since: float = 0.0
) -> AsyncIterator[tuple[AuditEvent, Parsed]]:
    """The audit stream's events from ``from_seq`` (or stored after ``since``: the server finds the
    first one), as it is now."""
    start = since if since and not from_seq else 0.0
    async for delivery in bus.follow(
        stream, ">", start_sequence=from_seq, start_time=start, until_caught_up=True
    ):
        if since and delivery.timestamp < since:
            continue
        yield parse(delivery)


def matches(event: AuditEvent, *, job: str = "", node: str = "", tenant: str = "") -> bool:
    """Whether ``event`` concerns the given job, node and tenant (empty: any). A ledger event
    concerns every job it holds."""
    held = event.detail.partition(": ")[2].split() if event.kind == "ledger" else []
    if job and event.job != job and not any(part.partition("#")[0] == job for part in held):
        return False
    return (not node or event.node == node) and (not tenant or event.tenant == tenant)


async def merged(timelines: Sequence[AsyncGenerator[AuditEvent, None]]) -> AsyncIterator[AuditEvent]:
    """Several audit streams' events as one timeline, by the time each stream stored them (ties:
    the earlier timeline first). Each stream's own order is kept even where its clock stepped
    back; one event per stream is held at a time. The timelines are closed at the end."""
    heads: list[tuple[float, int, AuditEvent]] = []
    try:
        for index, timeline in enumerate(timelines):
            first = await anext(timeline, None)
            if first is not None:
                heads.append((first.at, index, first))
        heapq.heapify(heads)
        while heads:
            _, index, event = heads[0]
            yield event
            following = await anext(timelines[index], None)
            if following is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (following.at, index, following))
    finally:
        for timeline in timelines:
            await timeline.aclose()


async def origins_last(bus: Bus, names: Iterable[str]) -> dict[str, int]:
    """The last sequence of each origin stream now (for postfix gaps); unreachable ones are left out."""
    out: dict[str, int] = {}
    for name in names:
        last = await bus.last_sequence(name)
        if last is not None:
            out[name] = last
    return out


async def baseline(bus: Bus, stream: str) -> dict[str, int]:
    """Each origin's last sequence when the audit stream was created (empty for a fresh region)."""
    facts = await bus.stream_facts(stream)
    metadata = facts.metadata if facts is not None else {}
    try:
        return {k: int(v) for k, v in msgspec.json.decode(metadata.get(BASELINE, "{}")).items()}
    except (msgspec.DecodeError, AttributeError, ValueError):
        return {}


async def processed(bus: Bus, region: str) -> dict[str, int]:
    """The region's input streams' acknowledged floors (what its scheduler has handled)."""
    out: dict[str, int] = {}
    for stream, consumer in (
        (subjects.workloads_stream(region), subjects.SCHEDULER_WORKLOADS_CONSUMER),
        (subjects.status_stream(region), subjects.SCHEDULER_STATUS_CONSUMER),
    ):
        floor = await bus.ack_floor(stream, consumer)
        if floor is not None:
            out[stream] = floor
    return out


__all__ = [
    "AuditEvent",
    "Parsed",
    "baseline",
    "events",
    "line",
    "matches",
    "merged",
    "parse",
    "processed",
    "stored",
]
