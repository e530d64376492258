"""Starting a workload's process at the least cost to the agent: ``posix_spawn`` where nothing has to
run between the fork and the exec, the executable found once per name and ``PATH``.

Theory of operation
-------------------
Measured on the 2-core host of ``bench/README.md`` (an asyncio loop starting ``true`` 8 at a time,
reaped through a pidfd, its output pipe read to the end), the parent's CPU per start:
``subprocess.Popen`` about 170 us; with the executable given as an absolute path about 160 us
(Popen otherwise builds every ``PATH`` candidate in Python, and the child tries to exec each in
turn); ``os.posix_spawn`` about 105 us. ``posix_spawn`` runs no Python in the child, so it is used
whenever the child needs nothing but its descriptors, its session and its environment: every start
whose user switch, limits and affinity the ``setpriv``/``prlimit``/``taskset`` tools apply
(:class:`agents.runner.Sandbox`), and whose writes Landlock does not confine. Otherwise
:func:`start` falls back to ``Popen`` with a ``preexec_fn``.

``posix_spawn`` cannot set the child's working directory in Python 3.11 (no ``chdir`` file
action), so the agent's process enters the attempt's directory for the call and goes back at once
(:func:`_inside`, through a descriptor of where it was). The working directory is the process's,
not the thread's: the agent's other threads (its file worker, the metrics server) use absolute
paths only: the agent makes its own directories absolute at its start (:class:`agents.agent.Agent`).
And ``posix_spawn`` closes no descriptor in the child: the descriptors the agent was started with
are made non-inheritable then (:func:`seal_inherited`), as Python makes its own. The workload
starts under the scheduling policy the agent was started with, not the agent's own ``SCHED_BATCH``
(:mod:`federation.cpupolicy`).

The executable is looked up the way ``execvpe`` would, in the ``PATH`` of the job's own
environment: found once per name and ``PATH``, then checked (still there, still executable) at each
start and looked up again after :data:`FOUND_FOR` seconds, so that a binary installed earlier in the
``PATH`` is taken within that time. A relative ``PATH`` entry, or a command with a slash in it, is
relative to the attempt's directory, as for the exec in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from federation import cpupolicy

FOUND_FOR = 10.0  # seconds a found executable is used before it is looked up again
KEPT = 1024  # found executables kept before the stale ones are dropped
# what Python ignores and a program expects at its default, as Popen restores them
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


class Executables:
    """Where a command's executable is, per name and ``PATH`` (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._found: dict[tuple[str, str], tuple[str, float]] = {}

    def find(self, name: str, path: str | None, cwd: str) -> str | None:
        """The executable ``name`` runs, or None when there is none (absolute: ``cwd`` for
        relative names and ``PATH`` entries)."""
        if "/" in name:
            where = name if os.path.isabs(name) else os.path.join(cwd, name)
            return where if _executable(where) else None
        search = path if path is not None else os.defpath
        key, now = (name, search), self._clock()
        known = self._found.get(key)  # (only a PATH of absolute entries is ever kept)
        if known is not None and known[1] > now and os.access(known[0], os.X_OK):
            return known[0]
        dirs = search.split(os.pathsep)
        if not all(os.path.isabs(d) for d in dirs):  # relative to the attempt's directory: not kept
            return shutil.which(name, path=os.pathsep.join(os.path.join(cwd, d) for d in dirs))
        found = shutil.which(name, path=search)
        if found is None:
            self._found.pop(key, None)
            return None
        if len(self._found) >= KEPT:  # jobs' own PATHs: keep only what is still fresh
            self._found = {k: v for k, v in self._found.items() if v[1] > now}
        self._found[key] = (found, now + FOUND_FOR)
        return found


def _executable(path: str) -> bool:
    return os.access(path, os.X_OK) and not os.path.isdir(path)


def seal_inherited() -> list[int]:
    """Make every descriptor above stderr non-inheritable (those the agent was started with: a
    ``posix_spawn`` closes none, where ``Popen`` closed all); returns those that were. Python
    opens its own descriptors non-inheritable already (PEP 446)."""
    sealed = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):  # (the listing's own descriptor, closed by now)
            if fd > 2 and os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                sealed.append(fd)
    return sealed


@contextlib.contextmanager
def _inside(directory: str) -> Iterator[None]:
    """The process in ``directory`` while the block runs, back where it was after."""
    back = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # (no read right needed)
    try:
        os.chdir(directory)
        try:
            yield
        finally:
            os.fchdir(back)
    finally:
        os.close(back)


class Started:
    """A started process: its pid, and the read end of its output pipe (stdout and stderr)."""

    def __init__(self, pid: int, output: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.output = output
        self.popen = popen  # the fallback's object, told the exit code once reaped (None: posix_spawn)

    def exited(self, code: int) -> None:
        """The process was reaped (elsewhere) with ``code``: the fallback's object must not wait."""
        if self.popen is not None:
            self.popen.returncode = code


def start(
    argv: Sequence[str],
    executable: str,
    *,
    cwd: str,
    env: Mapping[str, str],
    stdin: int | None,
    preexec: Callable[[], None] | None = None,
    popen_options: Mapping[str, Any] | None = None,
) -> Started:
    """Start ``argv`` (``executable`` is what runs) in its own session, in ``cwd``, with ``env``,
    stdin from ``stdin`` (None: ``/dev/null``), stdout and stderr into one new pipe. With
    ``preexec`` or ``popen_options`` (a user to switch to), by ``Popen`` after a full fork;
    otherwise by ``posix_spawn``. Raises OSError (or ValueError, SubprocessError) if it cannot."""
    if preexec is not None or popen_options:
        reset = cpupolicy.WORKLOAD_POLICY is not None

        def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
            cpupolicy.reset_workload()
            if preexec is not None:
                preexec()

        popen = subprocess.Popen(
            list(argv),
            executable=executable,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            preexec_fn=setup if reset or preexec is not None else None,
            **(popen_options or {}),
        )
        assert popen.stdout is not None
        output = os.dup(popen.stdout.fileno())  # ours to close, as posix_spawn's is
        popen.stdout.close()
        return Started(popen.pid, output, popen)
    read, write = os.pipe()
    actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, write, 1), (os.POSIX_SPAWN_DUP2, write, 2)]
    if stdin is None:
        actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
    else:
        actions.append((os.POSIX_SPAWN_DUP2, stdin, 0))
    policy = cpupolicy.workload_scheduler()  # not the agent's SCHED_BATCH
    try:
        with _inside(cwd):
            if policy is None:
                pid = os.posix_spawn(
                    executable, list(argv), env, file_actions=actions, setsid=True, setsigdef=RESTORED
                )
            else:
                pid = os.posix_spawn(
                    executable,
                    list(argv),
                    env,
                    file_actions=actions,
                    setsid=True,
                    setsigdef=RESTORED,
                    scheduler=policy,
                )
    except BaseException:
        os.close(read)
        raise
    finally:
        os.close(write)
    return Started(pid, read)
