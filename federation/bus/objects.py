"""Files in a region's object store: the chunks of jobs' input and output files.

The store is a stream laid out as a JetStream Object Store bucket (``OBJ_fed-objects-<region>``;
an object's chunks are the messages on ``$O.fed-objects-<region>.C.<object>``, in order). What
describes an object (its file name, size and SHA-256 digest, as an
:class:`~federation.schemas.ObjectRef`) travels in the job's submission and record instead of the
bucket's ``$O.<bucket>.M.>`` meta subjects: the submitter (a tenant may write only chunks under
its own name) and the agent (only under its node's) cannot be allowed to write descriptions that
others would trust, and the job is what says whose a file is.

Chunks are written one at a time, each acknowledged before the next (the order of the messages is
the order of the bytes; a retried chunk carries its index as ``Nats-Msg-Id``, so a lost
acknowledgement never stores it twice), and read by batched direct gets (no consumer: an agent's
credentials can create none), from another region's store through the hub
(``$JS.<region>.API.DIRECT.GET...``). Whoever reads an object checks its size and digest.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import AsyncIterable, AsyncIterator

from federation import subjects
from federation.bus.delivery import Delivery
from federation.bus.messaging import Messaging
from federation.bus.scan import scan
from federation.bus.streams import Streams
from federation.errors import FederationError
from federation.schemas import ObjectRef

CHUNK = 128 * 1024  # bytes of a file per message
BATCH = 8  # chunks per direct get (1 MiB)


class ObjectError(FederationError):
    """An object that is missing, incomplete or not what its description says."""


def digest(hasher: hashlib._Hash) -> str:
    """A SHA-256 digest as the JetStream Object Store writes it."""
    return "SHA-256=" + base64.urlsafe_b64encode(hasher.digest()).decode()


async def store(
    streams: Streams, region: str, obj: str, chunks: AsyncIterable[bytes], *, limit: int | None = None
) -> tuple[int, str]:
    """Store ``chunks`` (each at most :data:`CHUNK` bytes) as object ``obj`` of ``region``'s store,
    in order; its size and digest. More than ``limit`` bytes (None: no limit) is an
    :class:`ObjectError`, raised before the chunk that would pass it is stored."""
    subject = subjects.object_chunks(region, obj)
    hasher, size, index = hashlib.sha256(), 0, 0
    async for chunk in chunks:
        if limit is not None and size + len(chunk) > limit:
            raise ObjectError(f"more than {limit} bytes")
        await streams.store(subject, chunk, msg_id=f"{obj}.{index}", timeout=30.0)
        hasher.update(chunk)
        size += len(chunk)
        index += 1
    return size, digest(hasher)


def chunks(
    messaging: Messaging, region: str, obj: str, *, start: int = 1, domain: str = ""
) -> AsyncIterator[Delivery]:
    """The chunks of ``obj`` stored at stream sequence ``start`` or later, read :data:`BATCH` at a
    time (:func:`~federation.bus.scan.scan`), from ``domain``'s server (another region's, through
    the hub) when given."""
    return scan(
        messaging,
        subjects.objects_stream(region),
        subjects.object_chunks(region, obj),
        start_sequence=start,
        batch=BATCH,
        domain=domain,
    )


async def fetch(
    messaging: Messaging, region: str, ref: ObjectRef, *, domain: str = ""
) -> AsyncIterator[bytes]:
    """The bytes of ``ref`` from ``region``'s store, chunk by chunk, checked (:func:`verified`)."""

    async def data() -> AsyncIterator[bytes]:
        size = 0
        found = chunks(messaging, region, ref.object, domain=domain)
        async with contextlib.aclosing(found):  # type: ignore[type-var]
            async for item in found:
                yield item.data
                size += len(item.data)
                if size >= ref.size:
                    return

    async for chunk in verified(data(), ref, region):
        yield chunk


async def verified(chunks: AsyncIterator[bytes], ref: ObjectRef, region: str) -> AsyncIterator[bytes]:
    """``chunks`` of ``ref`` (from ``region``'s store) as they come. Raises :class:`ObjectError`
    when there are none, or (after the last) when their size or digest differ from ``ref``'s: a
    reader keeps nothing of them then."""
    hasher, size = hashlib.sha256(), 0
    async for chunk in chunks:
        size += len(chunk)
        if size > ref.size:
            raise ObjectError(f"{ref.name}: the stored object is larger than its {ref.size} bytes")
        hasher.update(chunk)
        yield chunk
    if size == 0 and ref.size:
        raise ObjectError(f"{ref.name}: not in {region}'s object store (removed after its retention?)")
    if size != ref.size:
        raise ObjectError(f"{ref.name}: {size} of {ref.size} bytes stored")
    if digest(hasher) != ref.digest:
        raise ObjectError(f"{ref.name}: its content does not match its digest")


__all__ = ["BATCH", "CHUNK", "ObjectError", "chunks", "digest", "fetch", "store", "verified"]
