"""Reading a nats-server's monitoring endpoint (HTTP JSON: ``/varz``, ``/leafz``, ``/jsz``)."""

from __future__ import annotations

import asyncio
import json
import time
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


async def config_load_time(monitor_url: str) -> object:
    """When the server last loaded its configuration (changes on every reload)."""
    return (await monitoring(monitor_url)).get("config_load_time")


async def reloaded(before: dict[str, object], deadline: float = 15.0) -> None:
    """Wait until every server of ``before`` (monitoring URL -> its :func:`config_load_time` when
    a reload was asked for) reports a newer configuration; FederationUnavailable after ``deadline``."""
    end = time.monotonic() + deadline
    for monitor_url, loaded in before.items():
        while await config_load_time(monitor_url) == loaded:
            if time.monotonic() > end:
                raise FederationUnavailable(monitor_url, "the server did not reload its configuration")
            await asyncio.sleep(0.05)


async def check_durability(monitor_url: str, log: Any) -> None:
    """Warn (on ``log``) when JetStream acknowledges writes before they reach the disk (its default)."""
    if not monitor_url:
        log.info("durability not checked: no monitor_url for the region's server")
        return
    try:
        varz = await monitoring(monitor_url)
    except FederationUnavailable as exc:
        log.warning("durability not checked", error=str(exc))
        return
    if not varz.get("jetstream", {}).get("config", {}).get("sync_always", False):
        log.warning(
            "JetStream acknowledges writes before fsync: a power loss can lose acknowledged "
            "submissions and claims; run the server with sync_interval: always (fed up --durable)"
        )


__all__ = ["check_durability", "config_load_time", "monitoring", "reloaded"]
