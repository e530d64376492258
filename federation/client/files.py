"""Jobs' files: input files uploaded to the home region's object store before a submission, and
a finished job's output files read back (:mod:`federation.bus.objects`).

An upload checks every file first (it exists, is a regular file, has a usable name, and all of
them fit the region's ``max_input_bytes``, asked of its scheduler), so that a bad input is an
error before anything is stored or submitted. A file is stored as chunks under the submitting
tenant's name (``in.<tenant>.<key>``); the submission then names it with its size and digest.
An output is read from the region that ran the job, with a tenant's credentials through that
region's scheduler (which answers only about the tenant's own jobs), and checked against the size
and digest its record gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

from federation import subjects
from federation.bus import objects
from federation.client.reading import Reading
from federation.errors import FederationError, InvalidRequest, NotFound
from federation.schemas import JobRecord, ObjectRef, TenantQuery, check_file_name

Progress = Callable[[str, int, int], None]  # (file name, bytes stored, bytes in all)


class NoOutput(NotFound):
    """A job has (yet) no output file of that name."""

    def __init__(self, job: str, name: str, why: str) -> None:
        FederationError.__init__(self, f"job {job} has no output file {name!r}: {why}")
        self.kind, self.name = "output file", name


class InputFile(NamedTuple):
    """A local file to upload as a job's input, under ``name`` in its working directory."""

    path: Path
    name: str
    size: int


def input_files(items: Sequence[str | os.PathLike[str]]) -> list[InputFile]:
    """``PATH[:NAME]`` items as checked input files (:class:`InvalidRequest` naming the first
    that is missing, not a regular file, or badly named, or two with one name)."""
    files = []
    for item in items:
        text = os.fspath(item)
        path, name = Path(text), ""
        if not path.exists() and ":" in text:
            before, _, after = text.rpartition(":")
            path, name = Path(before), after
        if not path.exists():
            raise InvalidRequest(f"input {text}: no such file")
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequest(f"input {text}: not a regular file")
        try:
            name = check_file_name(name or path.name)
        except InvalidRequest as exc:
            raise InvalidRequest(f"input {text}: {exc} (give one as PATH:NAME)") from None
        files.append(InputFile(path, name, info.st_size))
    names = [f.name for f in files]
    for name in names:
        if names.count(name) > 1:
            raise InvalidRequest(f"two inputs would be {name!r} in the job's directory: name one PATH:NAME")
    return files


class Files(Reading):
    """Uploading jobs' input files and reading their output files."""

    async def input_limit(self, region: str | None = None) -> int:
        """The bytes a job's input files may total in ``region`` (its policy's ``max_input_bytes``;
        0: no limit), as its leading scheduler says."""
        name = self._region(region)
        asker = self.tenant or "default"  # an operator asks on the default tenant's subject
        reply = await self._ask(name, "limits", TenantQuery(), tenant=asker)
        return reply.max_input_bytes

    async def upload(
        self,
        items: Sequence[str | os.PathLike[str]],
        *,
        region: str | None = None,
        tenant: str = "default",
        progress: Progress | None = None,
    ) -> list[ObjectRef]:
        """Store the files ``items`` (``PATH[:NAME]``) in ``region``'s object store as ``tenant``'s
        and describe them for a submission's ``inputs``; every file is checked, and their total
        against the region's limit, before anything is stored."""
        files = input_files(items)
        if not files:
            return []
        name = self._region(region)
        total = sum(f.size for f in files)
        limit = await self.input_limit(name)
        if limit and total > limit:
            raise InvalidRequest(f"the inputs are {total} bytes; region {name} allows {limit} per job")
        owner = self.tenant or tenant
        bus = await self.bus(name)
        refs, done = [], 0
        for file in files:
            obj = subjects.input_object(owner, secrets.token_hex(8))

            async def chunks(file: InputFile = file) -> AsyncIterator[bytes]:
                nonlocal done
                with file.path.open("rb") as handle:
                    while chunk := await asyncio.to_thread(handle.read, objects.CHUNK):
                        yield chunk
                        done += len(chunk)
                        if progress is not None:
                            progress(file.name, done, total)

            try:
                size, digest = await objects.store(bus, name, obj, chunks(), limit=limit or None)
            except objects.ObjectError as exc:
                raise InvalidRequest(f"input {file.path}: {exc} (it grew while being stored?)") from None
            refs.append(ObjectRef(name=file.name, object=obj, size=size, digest=digest))
        return refs

    async def outputs(self, job_id: str, *, region: str | None = None) -> tuple[JobRecord, list[ObjectRef]]:
        """A job's record where it ran, and the output files it stored."""
        record = await self.where(job_id, region=region)
        return record, list(record.stored)

    async def get(self, job_id: str, name: str, *, region: str | None = None) -> bytes:
        """The content of output file ``name`` of a job (checked against its size and digest)."""
        return b"".join([chunk async for chunk in self.read_output(job_id, name, region=region)])

    async def get_file(
        self, job_id: str, name: str, path: str | os.PathLike[str], *, region: str | None = None
    ) -> ObjectRef:
        """Write output file ``name`` of a job to ``path`` (only once it is all there and checked:
        a failed read leaves no file)."""
        target = Path(path)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        record, ref = await self._output(job_id, name, region)
        try:
            handle: BinaryIO
            with partial.open("wb") as handle:
                async for chunk in self._read(record, ref):
                    await asyncio.to_thread(handle.write, chunk)
            partial.replace(target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return ref

    async def read_output(self, job_id: str, name: str, *, region: str | None = None) -> AsyncIterator[bytes]:
        """Output file ``name`` of a job, chunk by chunk; :class:`~federation.bus.objects.ObjectError`
        after the last when it is not what the job's record says."""
        record, ref = await self._output(job_id, name, region)
        async for chunk in self._read(record, ref):
            yield chunk

    async def _output(self, job_id: str, name: str, region: str | None) -> tuple[JobRecord, ObjectRef]:
        record, stored = await self.outputs(job_id, region=region)
        ref = next((ref for ref in stored if ref.name == name), None)
        if ref is not None:
            return record, ref
        if not record.terminal:
            raise NoOutput(job_id, name, f"it is {record.state}; outputs are stored when it ends")
        kept = ", ".join(ref.name for ref in stored) or "none"
        raise NoOutput(job_id, name, f"it stored {kept}")

    def _read(self, record: JobRecord, ref: ObjectRef) -> AsyncIterator[bytes]:
        if self.tenant:
            return objects.verified(self._tenant_chunks(record, ref), ref, record.region)
        return self._direct(record.region, ref)

    async def _direct(self, region: str, ref: ObjectRef) -> AsyncIterator[bytes]:
        bus = await self.bus(region)
        async for chunk in objects.fetch(bus, region, ref):
            yield chunk

    async def _tenant_chunks(self, record: JobRecord, ref: ObjectRef) -> AsyncIterator[bytes]:
        after, size = 0, 0
        while size < ref.size:
            query = TenantQuery(job=record.id, name=ref.name, after=after)
            reply = await self._ask(record.region, "get", query)
            if not reply.chunks:
                return  # nothing more stored: verified() says what is missing
            for chunk in reply.chunks:
                size += len(chunk)
                yield chunk
            after = reply.next


__all__ = ["Files", "InputFile", "NoOutput", "Progress", "input_files"]
