"""Reading a stream without a consumer: batched direct gets (what an auditor's credentials allow).

A consumer's deliver subject is not checked against its creator's permissions, so an identity
that may create consumers can have a stream replayed into any subject, a bucket's included. An
auditor therefore creates none: it reads with direct gets of up to ``BATCH`` messages at a time
(``{"seq": N, "batch": B, "next_by_subj": filter}``), each answer closed by a status message
that says how many remain, through its account's imports (whose reply subjects cannot be
steered). The next batch is asked for while the current one is read. :func:`scan` yields what
``Bus.follow(..., until_caught_up=True)`` yields; :func:`latest` reads only each subject's last
message (``multi_last``), :func:`lasts` the last message of each subject of a list,
:func:`recent` reads each subject's last message backwards from the newest, a page at a time,
and :func:`newer` asks whether anything was stored since a sequence.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator, Callable

from federation.bus.delivery import Delivery
from federation.bus.messaging import Messaging
from federation.errors import FederationUnavailable, InvalidRequest

BATCH = 1000
MULTI_LAST = 10_000  # subjects one multi_last answer may hold (a region's nodes, say)
NAMED = 1000  # subjects named in one multi_last request (each up to ~90 bytes: well under a payload)


async def scan(
    messaging: Messaging,
    stream: str,
    filter_subject: str,
    last_per_subject: bool = False,
    start_sequence: int = 0,
    start_time: float = 0.0,
    *,
    end_sequence: int = 0,
    batch: int = BATCH,
    domain: str = "",
) -> AsyncIterator[Delivery]:
    """Every message of ``stream`` on ``filter_subject`` stored now, from ``start_sequence`` (or
    the first stored at ``start_time``) to ``end_sequence`` (0: the last); with
    ``last_per_subject`` only each subject's latest. Each batch of up to ``batch`` messages is one
    :meth:`~federation.bus.messaging.Messaging.gather` of ``messaging`` (an answer the server cut
    short is followed by the next batch from where it stopped); ``domain`` reads another
    region's stream (through the hub)."""

    def sized(first: int) -> int:  # a batch never asks past end_sequence
        return min(batch, end_sequence - first + 1) if end_sequence else batch

    request: dict[str, object] = {"batch": sized(max(1, start_sequence)), "next_by_subj": filter_subject}
    if start_time and not start_sequence:
        when = datetime.datetime.fromtimestamp(start_time, datetime.UTC)
        request["start_time"] = when.isoformat().replace("+00:00", "Z")
    else:
        request["seq"] = max(1, start_sequence)
    latest: dict[str, Delivery] = {}
    subject = f"$JS.{domain}.API.DIRECT.GET.{stream}" if domain else f"$JS.API.DIRECT.GET.{stream}"
    answer = await messaging.gather(subject, json.dumps(request).encode())
    ahead: asyncio.Task[tuple[list[Delivery], dict[str, str]]] | None = None
    try:
        while True:
            items, status = answer
            _answered(stream, status)  # 404: nothing (more) to read
            if end_sequence:
                items = [item for item in items if item.sequence <= end_sequence]
            code = status.get("Status", "")
            more = bool(items) and code == "204" and int(status.get("Nats-Num-Pending", 0)) > 0
            following = items[-1].sequence + 1 if items else 0
            if more and (not end_sequence or following <= end_sequence):  # the next batch, read ahead
                request = {"batch": sized(following), "next_by_subj": filter_subject, "seq": following}
                ahead = asyncio.create_task(messaging.gather(subject, json.dumps(request).encode()))
            for item in items:
                if last_per_subject:
                    latest[item.subject] = item
                else:
                    yield item
            if ahead is None:
                break
            answer, ahead = await ahead, None
    finally:
        if ahead is not None:  # the reader stopped early
            ahead.cancel()
    for item in sorted(latest.values(), key=lambda d: d.sequence):
        yield item


async def newer(messaging: Messaging, stream: str, filter_subject: str, sequence: int) -> bool:
    """Whether ``stream`` holds a message on ``filter_subject`` at ``sequence`` or later (one
    direct get of at most one message: the cheap question before a :func:`latest`)."""
    request = {"seq": max(1, sequence), "batch": 1, "next_by_subj": filter_subject}
    items, status = await messaging.gather(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode())
    _answered(stream, status)
    return bool(items)


async def latest(messaging: Messaging, stream: str, filter_subject: str) -> tuple[list[Delivery], int]:
    """The last message of every subject matching ``filter_subject`` stored now, oldest first, and
    the stream's last sequence they were read at: one direct get (``multi_last``) that sends each
    subject once, however often it was written (a bucket's history, a node's beats). More
    subjects than one answer holds are read whole instead (:func:`scan` of each one's latest)."""
    request = {"multi_last": [filter_subject], "batch": MULTI_LAST}
    items, status = await messaging.gather(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode())
    _answered(stream, status)
    upto = int(status.get("Nats-UpTo-Sequence", 0) or max((i.sequence for i in items), default=0))
    if int(status.get("Nats-Num-Pending", 0) or 0) > 0:  # more than one answer: the long way
        items = [item async for item in scan(messaging, stream, filter_subject, last_per_subject=True)]
        upto = max([upto, *(i.sequence for i in items)])
    return sorted(items, key=lambda item: item.sequence), upto


async def recent(
    messaging: Messaging,
    stream: str,
    filter_subject: str,
    *,
    top: int,
    limit: int,
    below: int = 0,
    keep: Callable[[Delivery], bool] = lambda _: True,
    window: int = BATCH,
) -> tuple[list[Delivery], int]:
    """Up to ``limit`` subjects' last messages that ``keep`` accepts, the most recently written
    first, among the subjects of ``filter_subject`` whose last message lies below sequence ``below``
    (0: anywhere up to ``top``, the stream's last sequence); and the ``below`` of the next page
    (0: nothing further back).

    The stream is read backwards, ``window`` messages per direct get, so a page costs what the
    newest writes cost to read, whatever the number of subjects. Going back, a subject already
    met is an older version and skipped. On a later page (``below``) a subject may have been
    written again above it: each window's candidates are checked against their subjects' last
    messages now (one ``multi_last``), and only those still last are kept. A removed subject's
    marker hides it (never returned).

    Meant for a stream whose every message matches ``filter_subject`` (a bucket's, with
    ``$KV.<bucket>.>``): a window asks for its messages from its lowest sequence up, so with a
    filter that few messages match each window would read on past its end."""
    if limit < 1:
        raise InvalidRequest(f"a page holds at least one message, not {limit}")
    hi = (below - 1) if below else top
    seen: set[str] = set()
    out: list[Delivery] = []
    while hi >= 1 and len(out) < limit:
        lo = max(1, hi - window + 1)
        reading = scan(messaging, stream, filter_subject, start_sequence=lo, end_sequence=hi, batch=window)
        items = [item async for item in reading]
        candidates: list[Delivery] = []
        for item in sorted(items, key=lambda i: -i.sequence):
            if item.subject not in seen:
                seen.add(item.subject)
                candidates.append(item)
        if below and candidates:
            last = await _last_sequences(messaging, stream, [c.subject for c in candidates])
            candidates = [c for c in candidates if last.get(c.subject) == c.sequence]
        out += [c for c in candidates if not c.removed and keep(c)]
        hi = lo - 1
    if len(out) > limit:
        out = out[:limit]
    return out, (out[-1].sequence if len(out) == limit and out[-1].sequence > 1 else 0)


async def _last_sequences(messaging: Messaging, stream: str, subjects: list[str]) -> dict[str, int]:
    """Each of ``subjects``' last sequence in ``stream`` now."""
    return {subject: item.sequence for subject, item in (await lasts(messaging, stream, subjects)).items()}


async def lasts(messaging: Messaging, stream: str, subjects: list[str]) -> dict[str, Delivery]:
    """The last message of each of ``subjects`` stored in ``stream`` now (those with none are left
    out): ``multi_last`` direct gets naming up to :data:`NAMED` subjects each, asked again for
    those an answer cut short left out. Costs what those subjects cost, whatever the stream holds."""
    last: dict[str, Delivery] = {}
    for at in range(0, len(subjects), NAMED):
        wanted = subjects[at : at + NAMED]
        while wanted:
            request = {"multi_last": wanted, "batch": len(wanted)}
            items, status = await messaging.gather(
                f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode()
            )
            _answered(stream, status)
            last.update((item.subject, item) for item in items)
            if not items or int(status.get("Nats-Num-Pending", 0) or 0) == 0:
                break
            wanted = [subject for subject in wanted if subject not in last]
    return last


def _answered(stream: str, status: dict[str, str]) -> None:
    """Raise unless a direct get's closing status says it answered (``204``) or found nothing (``404``)."""
    code = status.get("Status", "")
    if code not in ("204", "404"):
        raise FederationUnavailable(stream, f"direct get refused: {code} {status.get('Description', '')}")
