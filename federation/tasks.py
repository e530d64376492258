"""Waiting in daemon loops without losing a cancellation.

nats-py waits with ``asyncio.wait_for``, which on Python 3.11 can swallow a cancellation that meets
its answer or its timeout: the task stays marked as cancelling but carries on. Every daemon loop
waits through :func:`idle` (or checks :func:`cancelled`), so such a task stops at its next turn
instead of running forever.
"""

from __future__ import annotations

import asyncio


async def idle(seconds: float) -> None:
    """``asyncio.sleep`` for daemon loops, raising a cancellation that something swallowed."""
    cancelled()
    await asyncio.sleep(seconds)


def cancelled() -> None:
    """Raise ``CancelledError`` if the current task was asked to stop and something swallowed it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
