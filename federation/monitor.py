"""Reading a nats-server's monitoring endpoint (HTTP JSON: ``/varz``, ``/leafz``, ``/jsz``)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from federation.errors import FederationUnavailable


def _http_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=2) as response:
        return dict(json.loads(response.read()))


async def monitoring(monitor_url: str, endpoint: str = "varz") -> dict[str, Any]:
    """One JSON page of a server's monitoring endpoint (``/varz``, ``/leafz``, ``/jsz``...)."""
    try:
        return await asyncio.to_thread(_http_json, f"{monitor_url.rstrip('/')}/{endpoint}")
    except (OSError, ValueError) as exc:
        raise FederationUnavailable(monitor_url, f"monitoring endpoint /{endpoint}: {exc}") from None


__all__ = ["monitoring"]
