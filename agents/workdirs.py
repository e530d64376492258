"""The attempts' private working directories: made, handed out, kept for the next attempt, removed.

Theory of operation
-------------------
Every attempt runs in a directory of its own under the agent's work root, ``attempt-XXXXXXXX``,
0700 and owned by whom its workload runs as (the agent, or ``run_as``); the job finds it as
``FED_WORKDIR`` (and ``HOME``, ``TMPDIR``). Making a directory and removing it are journalled
changes of the file system's metadata: on this project's benchmark host (ext4), about 130-170 us of
the agent's CPU per start of a short job, a quarter of what the agent spends on it. So a directory
its attempt left as it found it is kept and handed to the next attempt, as the attempts' cgroups
are (:mod:`agents.cgroups`).

A directory is kept only when nothing of the old attempt can reach the new one:

* the workloads run as the agent's own user (no ``run_as``). Where they run as an unprivileged
  user of their own, every job is that same user, and what keeps one job out of another's
  directory is its name: the work root is 0711 (passable, not listable) and each name random. A
  kept directory would keep its name, which the job that had it knows, so with ``run_as`` every
  attempt gets a new directory, as before. Without ``run_as`` every job runs as the agent's user
  and could reach any directory of the agent's anyway;
* its attempt was contained by a cgroup, and the cgroup was found empty once it was over, so
  every process it started is gone (without one, a process that called ``setsid`` may live on
  and write into it: the directory is removed, as before);
* it is as it was made: a directory (not a link), empty, mode 0700, owned by the agent, with no
  extended attribute (no ACL, default ACLs included: those would pass to the next job's files)
  and no larger than :data:`LARGEST` (a directory that once held many entries does not shrink).
  Anything else is removed and the next attempt gets a new one.

At most :data:`KEPT` directories wait; any more are removed. Every call here is blocking file
work, run on the agent's worker thread (:mod:`agents.offloop`), one at a time, so the pool needs no
lock. A stopping agent removes what waits (:meth:`WorkDirs.close`); what a killed agent left is
removed at its next start.
"""

from __future__ import annotations

import collections
import errno
import os
import shutil
import stat
import tempfile
from functools import partial
from pathlib import Path

from agents.offloop import OffLoop

KEPT = 256  # emptied directories waiting for an attempt, at most
LARGEST = 64 * 1024  # bytes a kept directory's own entry list may take (ext4: 4 KiB when new)
PREFIX = "attempt-"


def new_directory(work_root: Path) -> Path:
    """A fresh 0700 directory under ``work_root`` (made first if it is missing: once)."""
    try:
        return Path(tempfile.mkdtemp(prefix=PREFIX, dir=work_root))
    except FileNotFoundError:
        work_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=PREFIX, dir=work_root))


def remove_directory(workdir: Path) -> None:
    """Remove ``workdir`` and what is in it (one ``rmdir`` when the job left nothing: most do)."""
    try:
        os.rmdir(workdir)
    except OSError:
        shutil.rmtree(workdir, ignore_errors=True)


class WorkDirs:
    """The attempt directories of one agent under ``root`` (see the module docstring); ``disk`` is
    the agent's worker thread, ``owner`` the (uid, gid) its workloads run as (None: the agent's
    own; then, and only with ``keep``, an emptied directory may serve another attempt)."""

    def __init__(
        self, root: Path, disk: OffLoop, owner: tuple[int, int] | None = None, *, keep: bool = True
    ) -> None:
        self.root = root
        self.owner = owner
        self.disk = disk
        self.keep = keep
        self._kept: collections.deque[Path] = collections.deque()

    def take(self) -> Path:
        """An empty 0700 directory for one attempt, owned by :attr:`owner`: a kept one, else a new
        one (blocking: on the worker thread)."""
        if self._kept:
            return self._kept.popleft()
        workdir = new_directory(self.root)
        if self.owner is not None:
            os.chown(workdir, *self.owner)
        return workdir

    def give_back(self, workdir: Path, *, contained: bool) -> None:
        """The attempt that had ``workdir`` is over (``contained``: its processes were in a cgroup
        and are all gone): the directory is removed with its contents, with the worker thread's
        next batch, or kept for another attempt when it is as it was made."""
        self.disk.later(partial(self._settle, workdir, contained))

    def _settle(self, workdir: Path, contained: bool) -> None:
        reusable = self.keep and self.owner is None and contained and len(self._kept) < KEPT
        if reusable and _as_made(workdir):
            self._kept.append(workdir)
        else:
            remove_directory(workdir)

    def close(self) -> None:
        """Remove the kept directories (blocking: on the worker thread, after every give-back)."""
        while self._kept:
            remove_directory(self._kept.popleft())

    def __len__(self) -> int:
        """How many wait for an attempt."""
        return len(self._kept)


def _as_made(workdir: Path) -> bool:
    """Whether ``workdir`` is as :func:`new_directory` made it (see the module docstring)."""
    try:
        found = os.lstat(workdir)
        return (
            stat.S_ISDIR(found.st_mode)
            and stat.S_IMODE(found.st_mode) == 0o700
            and found.st_uid == os.geteuid()
            and found.st_size <= LARGEST
            and not _attributes(workdir)
            and not os.listdir(workdir)
        )
    except OSError:
        return False


def _attributes(workdir: Path) -> list[str]:
    """The extended attributes a job may have set on its directory (ACLs, ``user.*``); those a
    security module sets on every file (``security.*``) are not the job's."""
    try:
        names = os.listxattr(workdir, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []  # (a file system without extended attributes)
        raise
    return [name for name in names if not name.startswith("security.")]


__all__ = ["KEPT", "LARGEST", "PREFIX", "WorkDirs", "new_directory", "remove_directory"]
