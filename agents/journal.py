"""The agent's attempt journal: at most once across agent restarts and power losses, group-committed.

Theory of operation
-------------------
One line per fact, ``<job slot> <attempt> <pid>``, appended to ``attempts.journal`` in the agent's
state directory:

* ``pid 0``, **before an attempt starts**, durable: :meth:`AttemptJournal.starting` returns only
  once the line is on disk (``fdatasync``). An attempt found in the journal after a restart was
  started by a previous life, so it is never started again here.
* ``pid N``, once it runs as process group ``N``: :meth:`AttemptJournal.running` returns at once,
  the line goes out with the next write. It only tells a restarted agent which process group to
  kill, and a power loss kills every process anyway, so it needs no sync of its own; a crash of
  the agent alone keeps it (it is in the kernel's page cache once written).

**Group commit.** Every line asked for in the same event-loop turn, and all those asked for while
a write is in flight, go out in one write and one sync, in a worker thread: the event loop never
blocks on the disk, and a burst of starts costs one sync, not one per start.

The journal is compacted (rewritten with only the attempts whose job is still allocated) once it
has grown past :data:`COMPACT_AFTER` lines, in the same worker, between two commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Collection
from pathlib import Path

COMPACT_AFTER = 10_000  # lines


class AttemptJournal:
    """The attempt journal at ``path`` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[tuple[str, int], int] = {}  # what the file says, as last read or appended
        self._lines = 0
        self._fd = -1
        self._queued: list[str] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None  # one at a time: commits never overlap
        self._rewrite_to: dict[tuple[str, int], int] | None = None  # a compaction asked for

    def read(self) -> dict[tuple[str, int], int]:
        """Read what a previous life wrote: (job slot, attempt) -> its process group (0: unknown),
        and open the file for appending."""
        entries: dict[tuple[str, int], int] = {}
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text().splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    key = (parts[0], int(parts[1]))
                    entries[key] = max(entries.get(key, 0), int(parts[2]))
        self.entries = dict(entries)
        self._lines = len(entries)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return entries

    async def starting(self, job: str, attempt: int) -> None:
        """Record that an attempt is about to start; returns once that is durable."""
        done = asyncio.get_running_loop().create_future()
        self._waiters.append(done)
        self._append(job, attempt, 0)
        await done

    def running(self, job: str, attempt: int, pid: int) -> None:
        """Record the process group an attempt runs as (written with the next commit)."""
        self._append(job, attempt, pid)

    def compact(self, jobs: Collection[str]) -> None:
        """Keep only attempts of ``jobs`` once the file is long (done by the writer, off the loop)."""
        if self._lines > COMPACT_AFTER:
            keep = set(jobs)
            self.entries = {key: pid for key, pid in self.entries.items() if key[0] in keep}
            self._lines = len(self.entries)
            self._rewrite_to = dict(self.entries)  # lines asked for later are appended after it
            self._kick()

    async def close(self) -> None:
        """Finish the writes asked for, then close the file."""
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, job: str, attempt: int, pid: int) -> None:
        key = (job, attempt)
        self.entries[key] = max(self.entries.get(key, 0), pid)
        self._queued.append(f"{job} {attempt} {pid}\n")
        self._lines += 1
        self._kick()

    def _kick(self) -> None:
        if self._writer is None or self._writer.done():
            # started as a task: it first runs after every line asked for in this turn is queued
            self._writer = asyncio.get_running_loop().create_task(self._write_all())

    async def _write_all(self) -> None:
        while self._queued or self._rewrite_to is not None:
            lines, self._queued = self._queued, []
            waiters, self._waiters = self._waiters, []
            rewrite, self._rewrite_to = self._rewrite_to, None
            try:
                await asyncio.to_thread(self._commit, "".join(lines), rewrite)
            except BaseException as exc:  # a broken disk: every start waiting on it fails, loudly
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(OSError(f"attempt journal not written: {exc!r}"))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _commit(self, text: str, rewrite: dict[tuple[str, int], int] | None) -> None:
        """In the worker thread: compact if asked, then append ``text`` and sync it."""
        if rewrite is not None:
            self._rewrite(rewrite)
        if text:
            data = text.encode()
            while data:
                data = data[os.write(self._fd, data) :]
            os.fdatasync(self._fd)  # at most once must survive a power loss too

    def _rewrite(self, entries: dict[tuple[str, int], int]) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as handle:
            handle.write("".join(f"{job} {attempt} {pid}\n" for (job, attempt), pid in entries.items()))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        old, self._fd = self._fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(old)
