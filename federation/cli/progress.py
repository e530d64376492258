"""A one-line progress display on stderr, for long operations, only when stderr is a terminal.

Piped or redirected, nothing is written (a log or a script reading stderr sees only what it saw
before). On a terminal the line is rewritten in place at most ten times a second and cleared when
the operation ends, so what follows starts on a clean line.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import TextIO

INTERVAL = 0.1  # seconds between two redraws


class Progress:
    """``show(text)`` while an operation runs, ``clear()`` when it is over."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.started = time.monotonic()
        self._shown = 0.0
        self._dirty = False
        self.text = ""

    def show(self, text: str, *, force: bool = False) -> None:
        """Draw ``text`` (with the time elapsed) in place of the last line drawn; without
        ``force``, at most every ``INTERVAL`` seconds (a fast stream of updates costs nothing)."""
        self.text = text
        now = time.monotonic()
        if not self.enabled or (not force and now - self._shown < INTERVAL):
            return
        self._shown, self._dirty = now, True
        self.stream.write(f"\r\x1b[K{text} ({now - self.started:.0f} s)")
        self.stream.flush()

    @contextlib.asynccontextmanager
    async def ticking(self, every: float = 1.0) -> AsyncIterator[Progress]:
        """Redraw the last text every ``every`` seconds while the block runs (the time elapsed
        moves on a wait with no news), and clear the line at the end."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(every)  # sleep-ok: a redraw cadence, nothing waits on it
                if self.text:
                    self.show(self.text, force=True)

        ticker = asyncio.create_task(tick()) if self.enabled else None
        try:
            yield self
        finally:
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            self.clear()

    def clear(self) -> None:
        """Erase the line drawn (nothing when none was)."""
        if self._dirty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._dirty = False
