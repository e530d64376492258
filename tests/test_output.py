"""An attempt's output read from a real pipe (agents.output): in order, bounded, ended."""

from __future__ import annotations

import asyncio
import os

import pytest

from agents import output
from agents.output import Output

pytestmark = pytest.mark.timeout(30)


class Collected:
    """A sink that keeps what it was handed (optionally slowly, or failing)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, chunk: bytes) -> None:
        if self.fail:
            raise RuntimeError("the log cannot be stored")
        self.chunks.append(chunk)
        if self.delay:
            await asyncio.sleep(self.delay)  # sleep-ok: a slow store

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to a non-blocking pipe end as fast as the reader lets it."""
    os.set_blocking(fd, False)
    view = memoryview(data)
    loop = asyncio.get_running_loop()
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            ready = loop.create_future()
            loop.add_writer(fd, ready.set_result, None)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


async def test_output_is_handed_on_in_order_in_bounded_chunks() -> None:
    read, write = os.pipe()
    sink = Collected()
    out = Output(read, sink, 1 << 20, asyncio.get_running_loop())
    data = bytes(range(256)) * 1200  # 300 KiB
    await _write_all(write, data)
    os.close(write)
    await out.finish(10)
    assert sink.data == data
    assert all(len(chunk) <= output.CHUNK for chunk in sink.chunks)
    assert out.dropped == 0


async def test_output_past_the_bound_is_dropped_and_said() -> None:
    read, write = os.pipe()
    sink = Collected()
    out = Output(read, sink, 1000, asyncio.get_running_loop())
    await _write_all(write, b"x" * 5000)
    os.close(write)
    await out.finish(10)
    assert sink.data.startswith(b"x" * 1000)
    assert sink.data[1000:] == b"\n[fed: output truncated, 4000 bytes dropped after 1000]\n"


async def test_a_bound_of_zero_still_says_what_was_dropped() -> None:
    read, write = os.pipe()
    sink = Collected()
    out = Output(read, sink, 0, asyncio.get_running_loop())
    os.write(write, b"hello")
    os.close(write)
    await out.finish(10)
    assert sink.data == b"\n[fed: output truncated, 5 bytes dropped after 0]\n"


async def test_no_output_makes_no_task_and_ends_at_once() -> None:
    read, write = os.pipe()
    sink = Collected()
    out = Output(read, sink, 1 << 20, asyncio.get_running_loop())
    os.close(write)
    await out.finish(10)
    assert sink.chunks == []
    assert out._forwarding is None
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(read)  # the read end is closed


async def test_a_slow_sink_holds_the_writer_back_instead_of_growing_the_buffer() -> None:
    read, write = os.pipe()
    sink = Collected(delay=0.01)
    out = Output(read, sink, 1 << 30, asyncio.get_running_loop())
    data = os.urandom(2 << 20)  # 2 MiB, much more than the backlog and the pipe
    writer = asyncio.create_task(_write_all(write, data))
    held: list[int] = []
    while not writer.done():
        held.append(len(out._waiting))
        await asyncio.sleep(0.005)  # sleep-ok: sampling the buffer while the writer runs
    os.close(write)
    await out.finish(60)
    assert sink.data == data
    assert max(held) < output.BACKLOG + output.READ  # never more than one read past the backlog


async def test_a_holder_of_the_pipe_does_not_keep_the_attempt_open() -> None:
    read, write = os.pipe()  # the write end stays open: an escaped process holding it
    sink = Collected()
    out = Output(read, sink, 1 << 20, asyncio.get_running_loop())
    os.write(write, b"before\n")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await out.finish(0.3)
    assert 0.25 <= loop.time() - began < 5
    assert sink.data == b"before\n"
    with pytest.raises(BrokenPipeError):
        os.write(write, b"after\n")  # nobody reads any more: the pipe is broken
    os.close(write)


async def test_a_failing_sink_fails_the_wait() -> None:
    read, write = os.pipe()
    out = Output(read, Collected(fail=True), 1 << 20, asyncio.get_running_loop())
    os.write(write, b"output")
    os.close(write)
    with pytest.raises(RuntimeError, match="cannot be stored"):
        await out.finish(10)
