"""The client's connections: one to each region's own server, made when first needed and
shared by every call after it, and one to the hub for what only the hub holds (every region's
audit trail). The credentials decide who the client is (a tenant sees only its own jobs)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Self

from federation import tracing
from federation.bus import Bus
from federation.config import (
    Connection,
    connection_credentials,
    connection_tls,
    default_state_dir,
    load_connection,
)
from federation.errors import NotFound
from federation.identity import Credentials

HUB_KEY = ":hub"  # the hub's connection among the region connections (no region has a colon)


class Connections:
    """The connection layer: the federation's regions, and the (cached) connection to each."""

    def __init__(self, connection: Connection, credentials: Credentials | None = None) -> None:
        self.connection = connection
        self.credentials = credentials or connection_credentials(connection)
        # a tenant's credentials: its own jobs only, through the region's scheduler
        # (federation.scheduler.tenants)
        self.tenant = self.credentials.name if self.credentials and self.credentials.kind == "tenant" else ""
        self._buses: dict[str, Bus] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    @classmethod
    def connect(
        cls,
        state_dir: str | Path | None = None,
        connection: Connection | None = None,
        credentials: Credentials | None = None,
    ) -> Self:
        """A client for the federation described by ``connection`` or found in ``state_dir``, as
        the identity of ``credentials`` (default: ``$FED_CREDS``, else the connection file's)."""
        tracing.configure("fed-client")
        if connection is None:
            connection = load_connection(Path(state_dir) if state_dir else default_state_dir())
        return cls(connection, credentials)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close every region connection."""
        for bus in self._buses.values():
            await bus.close()
        self._buses.clear()

    @property
    def regions(self) -> list[str]:
        """The federation's regions, the default one first."""
        names = list(self.connection.regions)
        default = self.connection.default_region
        return sorted(names, key=lambda r: (r != default, names.index(r)))

    def _region(self, region: str | None) -> str:
        name = region or self.connection.default_region or next(iter(self.connection.regions), "")
        if name not in self.connection.regions:
            raise NotFound("region", name)
        return name

    async def bus(self, region: str | None = None) -> Bus:
        """The (cached) connection to a region's server."""
        name = self._region(region)
        return await self._connected(name, self.connection.regions[name].url, timeout=3.0)

    async def _connected(self, key: str, url: str, timeout: float = 5.0) -> Bus:
        """The cached connection ``key``, made once: callers that ask at the same time (200
        submissions gathered at once) share one attempt instead of each opening a connection and
        leaving all but the last open."""
        if key in self._buses:
            return self._buses[key]
        async with self._connecting.setdefault(key, asyncio.Lock()):
            if key not in self._buses:
                self._buses[key] = await Bus.connect(
                    url,
                    "fed-client",
                    retry_forever=False,
                    timeout=timeout,
                    tls=connection_tls(self.connection),
                    credentials=self.credentials,
                )
        return self._buses[key]
