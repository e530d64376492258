"""Blocking file-system work for the agent, done off its event loop in batches.

Theory of operation
-------------------
Syncing the attempt journal, making a job's directory and removing it are disk operations that
can block for milliseconds; the agent's event loop must not. They go to one worker thread,
:class:`OffLoop`: every call asked for in the same event-loop turn, and every call asked for
while a batch runs, goes in the next single hop to the thread (one wake-up of the thread and one
of the loop per batch, however many attempts start or end together).

Why batches and not one hop per call: on a busy 2-core host each hop costs two thread switches
and a contended GIL hand-off (about 0.2 ms of CPU measured here, more than the work it moves), so
under load the hops, not the disk, would dominate the agent's cost. Short in-memory kernel
operations (cgroupfs reads and writes, signals) stay on the loop.

Calls run in the order they were asked for. :meth:`OffLoop.call` returns the result (or raises the
error) to its caller; :meth:`OffLoop.later` is for work nobody waits for (removing a finished
job's directory), whose errors are logged: it joins the next batch, or makes one of its own after
:data:`LATER` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger()
T = TypeVar("T")
LATER = 0.05  # seconds work nobody waits for may wait for a batch to join

_Item = tuple[Callable[[], Any], "asyncio.Future[Any] | None"]


class OffLoop:
    """One worker thread's batches of blocking calls (see the module docstring)."""

    def __init__(self) -> None:
        self._queue: collections.deque[_Item] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``fn`` in the worker thread with the rest of its batch; a future of its result or
        its error (asked for now, so calls made one after another share a batch)."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, done))
        self._kick()
        return done

    def later(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the worker thread with the next batch, at most :data:`LATER` seconds from
        now; nobody waits for it (so it waits for company rather than make a hop of its own)."""
        self._queue.append((fn, None))
        if self._timer is None and (self._worker is None or self._worker.done()):
            self._timer = asyncio.get_running_loop().call_later(LATER, self._kick)

    async def drain(self) -> None:
        """Wait until everything asked for so far has run."""
        if self._queue:
            self._kick()
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._worker is None or self._worker.done():
            # a task: it first runs after every call asked for in this turn is queued
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            ran: asyncio.Future[list[tuple[bool, Any]]] = loop.create_future()
            _WORKER.put((loop, [fn for fn, _ in batch], ran))
            outcomes = await ran
            for (_, done), (ok, value) in zip(batch, outcomes, strict=True):
                if done is None:
                    if not ok:
                        log.warning("background file operation failed", error=repr(value))
                elif not done.done():
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)


class _Worker:
    """The process's thread that runs every :class:`OffLoop`'s batches, in the order they are put
    (started at the first; a daemon thread: the agent drains its batches before it exits).

    Its own thread and a ``SimpleQueue``, not ``asyncio.to_thread``: a hop through the default
    executor costs the loop about 75 us of CPU here against 50 (a context copy, the executor's
    lock and work item, a chained future), and the agent makes a hop for about every other start."""

    def __init__(self) -> None:
        self._batches: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._started = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, batch: _Batch) -> None:
        if self._thread is None:
            with self._started:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="offloop", daemon=True)
                    self._thread.start()
        self._batches.put(batch)

    def _serve(self) -> None:
        while True:
            loop, calls, ran = self._batches.get()
            outcomes = _each(calls)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_deliver, ran, outcomes)


def _deliver(ran: asyncio.Future[list[tuple[bool, Any]]], outcomes: list[tuple[bool, Any]]) -> None:
    if not ran.done():  # (its waiter was cancelled)
        ran.set_result(outcomes)


_Batch = tuple[asyncio.AbstractEventLoop, list[Callable[[], Any]], "asyncio.Future[list[tuple[bool, Any]]]"]
_WORKER = _Worker()


def _each(calls: list[Callable[[], Any]]) -> list[tuple[bool, Any]]:
    """In the worker thread: run every call, keeping each one's result or error."""
    outcomes: list[tuple[bool, Any]] = []
    for fn in calls:
        try:
            outcomes.append((True, fn()))
        except BaseException as exc:  # handed back to whoever asked: the thread serves on
            outcomes.append((False, exc))
    return outcomes
