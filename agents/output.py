"""An attempt's output (its stdout and stderr, merged in one pipe), read on the agent's event loop
and handed to a sink in order, up to a bound.

Theory of operation
-------------------
The pipe's read end is watched by the loop itself (``add_reader``): each time it is readable, one
``read`` takes what is there. What fits under the bound waits in a buffer for the forwarding task,
which hands it to the sink (a durable publish of the job's log) in chunks of at most
:data:`CHUNK` bytes, one at a time and in order; what does not fit is counted and dropped, and
said in a last line once the pipe is closed. The forwarding task is started by the first output
and ends with the pipe: most short jobs write nothing, and then the end of the pipe is one
callback and nothing else (no transport, no stream reader, no task). While the buffer holds :data:`BACKLOG`
bytes the pipe is not read, so a job that writes faster than its log is stored waits on its pipe
rather than growing the agent.

The pipe is closed when every process holding its write end is gone: usually when the attempt's
last process exits. A process that left the attempt may still hold it; :meth:`Output.finish` waits a
bounded time for the end and then closes the read end itself (what such a process writes later is
lost to it, not kept by the agent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

CHUNK = 16 * 1024  # bytes handed to the sink at most at once
READ = 64 * 1024  # bytes taken from the pipe by one read
BACKLOG = 4 * CHUNK  # bytes waiting for the sink before the pipe is left unread

Sink = Callable[[bytes], Awaitable[None]]


class Output:
    """The output pipe of one attempt, read as it comes (see the module docstring)."""

    def __init__(self, fd: int, sink: Sink, bound: int, loop: asyncio.AbstractEventLoop) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._sink = sink
        self._bound = bound
        self._loop = loop
        self._waiting = bytearray()  # kept, not yet handed to the sink
        self.kept = 0  # bytes kept for the sink (handed on, or waiting to be)
        self.dropped = 0  # bytes past the bound
        self._ended = False  # the pipe is closed (or given up on)
        self._reading = True
        self._forwarding: asyncio.Task[None] | None = None
        self._more: asyncio.Event | None = None  # wakes the forwarding task
        self._end: asyncio.Future[None] | None = None  # made for whoever waits for the end
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # the pipe is broken: as ended
        if not data:
            self._close()
            return
        room = self._bound - self.kept
        if room > 0:
            kept = data[:room]
            self._waiting += kept
            self.kept += len(kept)
            self.dropped += len(data) - len(kept)
            self._wake()
        else:
            self.dropped += len(data)
        if len(self._waiting) >= BACKLOG:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _wake(self) -> None:
        """Have the forwarding task hand on what waits (started at the first output)."""
        if self._forwarding is None:
            self._more = asyncio.Event()
            self._forwarding = asyncio.create_task(self._forward())
        assert self._more is not None
        self._more.set()

    async def _forward(self) -> None:
        assert self._more is not None
        while True:
            if self._waiting:
                part = bytes(self._waiting[:CHUNK])
                del self._waiting[:CHUNK]
                self._resume()
                await self._sink(part)
            elif self._ended:
                break
            else:
                self._more.clear()
                await self._more.wait()
        if self.dropped:
            note = f"\n[fed: output truncated, {self.dropped} bytes dropped after {self._bound}]\n"
            await self._sink(note.encode())

    def _resume(self) -> None:
        if not self._reading and self._fd is not None and len(self._waiting) < BACKLOG:
            self._loop.add_reader(self._fd, self._readable)
            self._reading = True

    def _close(self) -> None:
        """The pipe ended (or is given up on): close it, and let the forwarding task finish."""
        if self._fd is not None:
            if self._reading:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        self._ended = True
        if self.dropped and self._forwarding is None:  # (a bound of 0: nothing was ever kept)
            self._wake()
        elif self._more is not None:
            self._more.set()
        if self._end is not None and not self._end.done():
            self._end.set_result(None)

    async def finish(self, within: float) -> None:
        """Wait until the pipe ended and its output was handed on, for ``within`` seconds at most;
        then stop reading it (what is not handed on by then is not). A failure of the sink is
        raised here."""
        if self._ended and self._forwarding is None:
            return  # (most short jobs: no output, and the pipe ended with them)
        try:
            async with asyncio.timeout(within):
                if not self._ended:
                    self._end = self._loop.create_future()
                    await self._end
                if self._forwarding is not None:
                    await asyncio.shield(self._forwarding)
        except TimeoutError:
            self._close()
            if self._forwarding is not None:
                self._forwarding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._forwarding


__all__ = ["CHUNK", "Output", "Sink"]
