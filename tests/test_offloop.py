"""The agent's batched worker thread (agents/offloop.py): one hop per batch, in order, errors
to whoever asked."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agents.offloop import OffLoop


async def test_calls_asked_for_together_run_in_one_hop_off_the_loop_in_order() -> None:
    disk, ran = OffLoop(), []
    loop_thread = threading.get_ident()

    def work(i: int) -> int:
        ran.append((i, threading.get_ident()))
        return i * i

    results = await asyncio.gather(*(disk.call(lambda i=i: work(i)) for i in range(20)))
    assert results == [i * i for i in range(20)]
    assert [i for i, _ in ran] == list(range(20))
    assert len({thread for _, thread in ran}) == 1  # one batch: one hop to one worker
    assert ran[0][1] != loop_thread


async def test_an_error_reaches_its_caller_only_and_the_rest_of_the_batch_runs() -> None:
    disk = OffLoop()

    def broken() -> None:
        raise OSError("disk on fire")

    first, second = disk.call(broken), disk.call(lambda: "fine")
    with pytest.raises(OSError, match="disk on fire"):
        await first
    assert await second == "fine"


async def test_work_nobody_waits_for_runs_and_drain_waits_for_it() -> None:
    disk, done = OffLoop(), threading.Event()

    def broken() -> None:
        raise OSError("logged, not raised")

    disk.later(broken)
    disk.later(done.set)
    await disk.drain()
    assert done.is_set()
