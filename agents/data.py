"""Jobs' files: inputs staged into an attempt's directory before it starts, outputs stored after
it exits (:mod:`federation.bus.objects` holds them in a region's object store).

Staging reads each input from the store of the job's home region (through the hub when the job
was handed to this one), writes it under its name in a directory made for the attempt, and checks
its size and digest; the attempt then starts in that directory. Anything wrong (an object removed,
a region out of reach, a digest that differs, a full disk) is a :class:`StagingError` naming the
input, and nothing of the attempt runs. The file work runs on the agent's worker thread
(:class:`~agents.offloop.OffLoop`), never on its event loop; jobs without inputs or outputs do none
of this.

Outputs are the regular files of the attempt's directory matching the job's ``outputs`` globs
(never a symbolic link, never anything outside the directory), stored in order up to the region's
``max_output_bytes``; what could not be stored is said in the job's output.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import BinaryIO

from agents.offloop import OffLoop
from federation import subjects
from federation.bus import Bus, objects
from federation.errors import FederationError
from federation.schemas import Allocation, ObjectRef

STAGE_SECONDS = 60.0  # a stage's time limit, plus a second per STAGE_RATE bytes
STAGE_RATE = 20 * 1024**2
MAX_OUTPUTS = 256  # files one attempt may store


class StagingError(Exception):
    """An input that could not be put into the attempt's directory."""


async def stage(bus: Bus, disk: OffLoop, region: str, allocation: Allocation, workdir: Path) -> None:
    """Put every input of ``allocation`` into ``workdir``, each checked; :class:`StagingError`
    naming the first that could not be (within a time limit that grows with their size)."""
    home = allocation.store or region
    domain = home if home != region else ""  # another region's store: through the hub
    total = sum(ref.size for ref in allocation.inputs)
    for ref in allocation.inputs:
        try:
            async with asyncio.timeout(STAGE_SECONDS + total / STAGE_RATE):
                await _fetch(bus, disk, home, domain, ref, workdir / ref.name)
        except TimeoutError:
            raise StagingError(f"input {ref.name!r} could not be staged in time from {home}") from None
        except (FederationError, OSError) as exc:
            raise StagingError(f"input {ref.name!r} could not be staged from {home}: {exc}") from None


async def _fetch(bus: Bus, disk: OffLoop, home: str, domain: str, ref: ObjectRef, path: Path) -> None:
    handle = await disk.call(partial(_create, path))
    try:
        async for chunk in objects.fetch(bus, home, ref, domain=domain):
            await disk.call(partial(handle.write, chunk))
    finally:
        await disk.call(handle.close)


def find_outputs(workdir: Path, patterns: Sequence[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """The regular files of ``workdir`` (its top level) matching ``patterns``, as (name, size), in
    name order; and the patterns that matched none (blocking: the worker thread runs it)."""
    found: dict[str, int] = {}
    unmatched = []
    for pattern in patterns:
        matched = False
        for path in workdir.glob(pattern):
            info = path.lstat()
            if path.parent == workdir and stat.S_ISREG(info.st_mode):  # no link, no directory
                found[path.name] = info.st_size
                matched = True
        if not matched:
            unmatched.append(pattern)
    return sorted(found.items())[:MAX_OUTPUTS], unmatched


async def store_outputs(
    bus: Bus, disk: OffLoop, region: str, node: str, allocation: Allocation, workdir: Path
) -> tuple[list[ObjectRef], list[str]]:
    """Store the attempt's output files in ``region``'s object store: what was stored, and what
    could not be (one line each, for the job's output)."""
    found, unmatched = await disk.call(partial(find_outputs, workdir, allocation.outputs))
    notes = [f"no file matches output {pattern!r}" for pattern in unmatched]
    stored: list[ObjectRef] = []
    left = allocation.output_bytes or None  # 0: the region sets no limit
    for name, size in found:
        if left is not None and size > left:
            notes.append(f"output {name!r} not stored: {size} bytes; {left} of the region's limit left")
            continue
        obj = subjects.output_object(node, secrets.token_hex(8))
        try:
            size, digest = await objects.store(bus, region, obj, _chunks(disk, workdir / name), limit=left)
        except (FederationError, OSError) as exc:
            notes.append(f"output {name!r} not stored: {exc}")
            continue
        if left is not None:
            left -= size
        stored.append(ObjectRef(name=name, object=obj, size=size, digest=digest))
    return stored, notes


async def _chunks(disk: OffLoop, path: Path) -> AsyncIterator[bytes]:
    """The file at ``path`` (never through a symbolic link) in chunks, read on the worker thread."""
    handle: BinaryIO = await disk.call(partial(_open_plain, path))
    try:
        while chunk := await disk.call(partial(handle.read, objects.CHUNK)):
            yield chunk
    finally:
        await disk.call(handle.close)


def _create(path: Path) -> BinaryIO:
    return open(path, "xb")


def _open_plain(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by a pipe or a device since it was found
        os.close(fd)
        raise OSError(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")


__all__ = ["StagingError", "find_outputs", "stage", "store_outputs"]
