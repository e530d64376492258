"""A TCP proxy for one link that can be cut, blackholed, stalled, delayed or flapped.

Used by the fault-injection tests (an agent or a leafnode connects through it instead of straight
to its server) and meant for ``fed up --chaos``. It runs inside an asyncio loop: every accepted
connection gets two pumps (client to server, server to client) that obey the link's current mode:

* ``open``: bytes flow (after ``delay`` seconds each way, when set);
* ``cut``: every connection is closed at once and new ones are closed on accept (the peer sees a
  reset link and reconnects as soon as the link is open again);
* ``blackhole``: connections stay up but every byte is dropped, and new connections hang: the peer
  notices only through its own timeouts. On healing, the connections that lost bytes are closed
  (their byte streams are corrupt), so peers reconnect cleanly;
* ``stall``: bytes are held, not dropped, and flow again when the link is healed;
* ``mute``: bytes the dialling side sends are dropped, bytes towards it still flow: a request
  through the link arrives, and its answer is lost (closed on healing, like ``blackhole``).

``flap(period)`` alternates ``cut`` and ``open`` until the next :meth:`heal`.
No NATS knowledge here: the proxy moves bytes and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["open", "cut", "blackhole", "stall", "mute"]
CHUNK = 64 * 1024


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    lossy: bool = False  # bytes were dropped: the stream is corrupt and must be closed on heal

    def close(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for pump in self.pumps:
            pump.cancel()


class LinkProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` under a controllable mode."""

    def __init__(self, target_host: str, target_port: int, *, name: str = "link") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.mode: Mode = "open"
        self.delay = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._hanging: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._flapper: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``: what a client connects to instead of the target."""
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> int:
        """Listen on a free loopback port; returns it."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening and close every connection."""
        self._stop_flapping()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        self._drop_hanging()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    # --- faults ----------------------------------------------------------------------------------

    def cut(self) -> None:
        """Close every connection now and refuse new ones until :meth:`heal`."""
        self._stop_flapping()
        self._set("cut")

    def blackhole(self) -> None:
        """Drop every byte, keep connections up, let new connections hang."""
        self._stop_flapping()
        self._set("blackhole")

    def stall(self) -> None:
        """Hold every byte until :meth:`heal`, then deliver it."""
        self._stop_flapping()
        self._set("stall")

    def mute(self) -> None:
        """Drop what the dialling side sends, deliver what it receives, until :meth:`heal`."""
        self._stop_flapping()
        self._set("mute")

    def set_delay(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (0 removes the delay)."""
        self.delay = max(0.0, seconds)

    def flap(self, period: float) -> None:
        """Alternate cut and open every ``period`` seconds until :meth:`heal`."""
        self._stop_flapping()
        self._flapper = asyncio.get_running_loop().create_task(self._flap(period))

    def heal(self) -> None:
        """Back to ``open``: stop flapping, release held bytes, close connections that lost bytes."""
        self._stop_flapping()
        self._set("open")

    def _set(self, mode: Mode) -> None:
        self.mode = mode
        if mode == "cut":
            for connection in list(self._connections):
                connection.close()
            self._drop_hanging()
        if mode == "open":
            for connection in [c for c in self._connections if c.lossy]:
                connection.close()
            self._drop_hanging()
        if mode in ("open", "blackhole", "mute"):
            self._flowing.set()  # blackhole and mute pumps run, to read and drop
        else:
            self._flowing.clear()

    async def _flap(self, period: float) -> None:
        while True:
            self._set("cut")
            await asyncio.sleep(period)
            self._set("open")
            await asyncio.sleep(period)

    def _stop_flapping(self) -> None:
        if self._flapper is not None:
            self._flapper.cancel()
            self._flapper = None

    def _drop_hanging(self) -> None:
        for writer in self._hanging:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._hanging.clear()

    # --- forwarding ------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "cut":
            writer.transport.abort()
            return
        if self.mode == "blackhole":
            self._hanging.add(writer)  # accepted, never answered: the client's connect times out
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        connection = _Connection(client=writer, server=up_writer)
        self._connections.add(connection)
        connection.pumps = [
            asyncio.create_task(self._pump(reader, up_writer, connection, dialling=True)),
            asyncio.create_task(self._pump(up_reader, writer, connection)),
        ]

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        dialling: bool = False,
    ) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                if self.mode == "blackhole" or (self.mode == "mute" and dialling):
                    connection.lossy = True
                    continue
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._connections.discard(connection)
            connection.close()


__all__ = ["LinkProxy", "Mode"]
