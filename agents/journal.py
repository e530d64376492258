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
a write is in flight, go out in one write and one sync, in the agent's worker thread
(:class:`agents.offloop.OffLoop`, with the other file work of the same moment): the event loop
never blocks on the disk, and a burst of starts costs one sync, not one per start.

The journal is compacted (rewritten with only the attempts whose job is still allocated, and
every attempt recorded since the compaction was asked for) once it has grown past
:data:`COMPACT_AFTER` lines, in the same worker, between two commits.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from agents.offloop import OffLoop

COMPACT_AFTER = 10_000  # lines


class AttemptJournal:
    """The attempt journal at ``path`` (see the module docstring); ``disk`` does its writes."""

    def __init__(self, path: Path, disk: OffLoop | None = None) -> None:
        self.path = path
        self.disk = disk or OffLoop()
        # what the file says: (job slot, attempt) -> (process group, order it was recorded in)
        self._entries: dict[tuple[str, int], tuple[int, int]] = {}
        self._recorded = 0
        self._lines = 0
        self._fd = -1
        self._queued: collections.deque[str] = collections.deque()  # appended on the loop only

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
        self._entries = {key: (pid, 0) for key, pid in entries.items()}
        self._lines = len(entries)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return entries

    async def starting(self, job: str, attempt: int) -> None:
        """Record that an attempt is about to start; returns once that is durable."""
        self._append(job, attempt, 0)
        await self.disk.call(lambda: self._commit(sync=True))

    def running(self, job: str, attempt: int, pid: int) -> None:
        """Record the process group an attempt runs as (written with the next batch, no sync)."""
        self._append(job, attempt, pid)
        self.disk.later(lambda: self._commit(sync=False))

    def compact(self, jobs: Collection[str]) -> None:
        """Once the file is long, rewrite it (off the loop) with only the attempts of ``jobs``
        and those recorded from now on."""
        if self._lines > COMPACT_AFTER:
            keep, since = set(jobs), self._recorded
            self._lines = sum(1 for job, _ in self._entries if job in keep)
            self.disk.later(lambda: self._rewrite(keep, since))

    async def close(self) -> None:
        """Finish the writes asked for, then close the file."""
        await self.disk.drain()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _append(self, job: str, attempt: int, pid: int) -> None:
        key = (job, attempt)
        self._recorded += 1
        self._entries[key] = (max(self._entries.get(key, (0, 0))[0], pid), self._recorded)
        self._queued.append(f"{job} {attempt} {pid}\n")
        self._lines += 1

    def _commit(self, sync: bool) -> None:
        """In the worker thread: write every queued line; sync them if asked (a start waits)."""
        lines = [self._queued.popleft() for _ in range(len(self._queued))]
        if not lines:
            return  # an earlier commit of this batch wrote them
        data = "".join(lines).encode()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            if sync:
                os.fdatasync(self._fd)  # at most once must survive a power loss too
        except OSError as exc:  # a broken disk: the start waiting on it fails, loudly
            raise OSError(f"attempt journal not written: {exc!r}") from exc

    def _rewrite(self, keep: set[str], since: int) -> None:
        """In the worker thread: replace the file with what is still needed. An attempt recorded
        after the compaction was asked for is kept whatever its job: its line may already be in
        the old file, and nothing may lose it."""
        entries = dict(self._entries)  # one copy, taken at once: the loop goes on appending
        text = "".join(
            f"{job} {attempt} {pid}\n"
            for (job, attempt), (pid, order) in entries.items()
            if job in keep or order > since
        )
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        old, self._fd = self._fd, os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(old)
        for key, (pid, order) in entries.items():  # forget what was dropped, not what came since
            if key[0] not in keep and order <= since and self._entries.get(key) == (pid, order):
                self._entries.pop(key, None)
