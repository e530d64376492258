"""What :meth:`~federation.client.Client.submit` and
:meth:`~federation.client.Client.submit_array` hand back: a :class:`Job` or a :class:`JobArray`,
ways to follow what was submitted.

A handle holds the client that made it as a :class:`JobControl`, the few client methods it calls,
so that this module imports no client class (the client's modules import this one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from federation import subjects
from federation.client.records import Explanation
from federation.schemas import JobRecord


class JobControl(Protocol):
    """The client's methods a :class:`Job` or :class:`JobArray` calls (a
    :class:`~federation.client.Client` has them all)."""

    async def job(self, job_id: str, *, region: str | None = None) -> JobRecord: ...

    async def wait(
        self,
        job_id: str,
        *,
        region: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[JobRecord], None] | None = None,
    ) -> JobRecord: ...

    async def cancel(
        self, job_id: str, *, region: str | None = None, reason: str = "cancelled by user"
    ) -> None: ...

    async def explain(self, job_id: str, *, region: str | None = None) -> Explanation: ...

    async def array(
        self, array_id: str, *, region: str | None = None, indices: Sequence[int] | None = None
    ) -> list[JobRecord]: ...

    async def wait_array(
        self,
        array_id: str,
        count: int,
        *,
        region: str | None = None,
        timeout: float | None = None,
        on_change: Callable[[list[JobRecord]], None] | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[JobRecord]: ...


class Job:
    """A submitted job: its id, home region and the subject it was submitted on, and ways to
    follow it."""

    def __init__(self, client: JobControl, job_id: str, region: str, subject: str = "") -> None:
        self.client = client
        self.id = job_id
        self.region = region
        self.subject = subject or subjects.submit(region, job_id)

    def __repr__(self) -> str:
        return f"Job({self.id!r}, region={self.region!r})"

    async def record(self) -> JobRecord:
        """The current job record (raises :class:`NotFound` before the scheduler has seen it)."""
        return await self.client.job(self.id, region=self.region)

    async def wait(
        self, timeout: float | None = None, on_change: Callable[[JobRecord], None] | None = None
    ) -> JobRecord:
        """Wait until the job is terminal and return its final record (``on_change`` sees each
        record on the way)."""
        return await self.client.wait(self.id, region=self.region, timeout=timeout, on_change=on_change)

    async def cancel(self, reason: str = "cancelled by user") -> None:
        """Ask the home scheduler to cancel the job."""
        await self.client.cancel(self.id, region=self.region, reason=reason)

    async def explain(self) -> Explanation:
        """Why the job is pending, or why it went where it did."""
        return await self.client.explain(self.id, region=self.region)


class JobArray:
    """A submitted job array: its id, home region and indices (its jobs are ``<id>-<index>``)."""

    def __init__(self, client: JobControl, array_id: str, region: str, indices: list[int]) -> None:
        self.client = client
        self.id = array_id
        self.region = region
        self.indices = indices

    def __repr__(self) -> str:
        return f"JobArray({self.id!r}, region={self.region!r}, jobs={len(self.indices)})"

    def job(self, index: int) -> Job:
        """The element of ``index``."""
        return Job(self.client, f"{self.id}-{index}", self.region)

    async def records(self) -> list[JobRecord]:
        """Every element's current record (where it lives), by index: only the elements' own
        records are read, however many jobs the regions hold."""
        return await self.client.array(self.id, region=self.region, indices=self.indices)

    async def wait(
        self, timeout: float | None = None, on_change: Callable[[list[JobRecord]], None] | None = None
    ) -> list[JobRecord]:
        """Wait until every element is terminal; their final records, by index."""
        return await self.client.wait_array(
            self.id,
            len(self.indices),
            region=self.region,
            timeout=timeout,
            on_change=on_change,
            indices=self.indices,
        )

    async def cancel(self, reason: str = "cancelled by user") -> None:
        """Cancel every element (those already ended stay as they are)."""
        await self.client.cancel(self.id, region=self.region, reason=reason)
