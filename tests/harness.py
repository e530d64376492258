"""Fault injection for tests against real processes: a controllable link, signals, process checks.

The link is :class:`federation.ops.proxy.LinkProxy` (the same proxy ``fed up --chaos`` uses): a daemon
connects through it instead of straight to its server, and the test cuts, blackholes, stalls,
delays or flaps it. Processes are paused and killed with real signals, by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import psutil

from federation.ops.proxy import LinkProxy


@contextlib.asynccontextmanager
async def proxied(url: str, name: str = "link") -> AsyncIterator[LinkProxy]:
    """A :class:`LinkProxy` in front of the server at ``url``, closed on exit."""
    target = urlsplit(url)
    if target.port is None:
        raise ValueError(f"{url!r} names no port: tests only use server-chosen ports")
    proxy = LinkProxy(target.hostname or "127.0.0.1", target.port, name=name)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def pause(pid: int) -> None:
    """SIGSTOP: the process keeps its sockets and state but does nothing until :func:`resume`."""
    os.kill(pid, signal.SIGSTOP)


def resume(pid: int) -> None:
    """SIGCONT a paused process."""
    os.kill(pid, signal.SIGCONT)


def attempts_running(job: str) -> set[int]:
    """Attempt numbers of ``job`` that have a live process on this machine (by ``FED_JOB_ID``)."""
    found: set[int] = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
            if env.get("FED_JOB_ID") == job and proc.status() != psutil.STATUS_ZOMBIE:
                found.add(int(env.get("FED_ATTEMPT", "0")))
        except (psutil.Error, ValueError):
            continue
    return found
