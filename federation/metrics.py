"""Prometheus metrics: each daemon's registry, its ``/metrics`` server, and state published as snapshots.

Theory of operation
-------------------
Every daemon (a scheduler, an agent, ``fed up``'s supervisor) owns one
:class:`prometheus_client.CollectorRegistry` (never the library's global default: tests and
benchmarks run several daemons in one process) and serves it as Prometheus text on ``--metrics
HOST:PORT`` (:class:`MetricsServer`; port 0 takes a free port). The server answers in its own
thread, so two rules keep it from racing the event loop:

* **Counters and histograms** are incremented where the event happens, on the loop; the library's
  children are lock-protected, and a labelled child is looked up once and kept (no per-event
  allocation on the hot path).
* **State** (queue depth, capacity, a view's age) is never read from the daemon's dicts by the
  server's thread. The loop computes it (say once a second) into finished metric families and
  hands them to a :class:`Snapshot` in one assignment; a scrape yields the last snapshot whole.
  Label sets that come and go (nodes, tenants) then disappear with the next snapshot, no stale
  series left behind.

Why prometheus-client rather than the OpenTelemetry metrics SDK with its Prometheus exporter:
prometheus-client is the reference implementation of the exposition format (and of its parser,
which the tests use), its counters are plain lock-protected floats with no per-measurement
pipeline (the SDK routes each measurement through views, aggregations and a periodic reader),
and it brings its own text exposition and HTTP server. Traces stay on OpenTelemetry
(:mod:`federation.tracing`); metrics need none of its machinery.

Naming follows Prometheus conventions: a ``fed_`` prefix, base units (seconds, bytes), ``_total``
on counters, and bounded label sets: a node, a tenant, a peer region, a state or a reason
*category*, never a job id or free text.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from federation.errors import ConfigError

# seconds: from a few milliseconds (a placement in a quiet region) to minutes (a queue's wait)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
POLL = 0.05  # seconds between the metrics server's looks for a stop (its exit waits for one)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) as a host and a port; port 0 asks for a free one."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--metrics wants HOST:PORT (port 0: a free one), not {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def registry() -> CollectorRegistry:
    """A daemon's own registry (no process or platform collectors: several daemons share a process
    in tests, and the process's own figures are the operating system's to report)."""
    return CollectorRegistry(auto_describe=True)


class Snapshot(Collector):
    """State metrics computed on the event loop, served whole: :meth:`publish` replaces them at once."""

    def __init__(self) -> None:
        self._families: tuple[Metric, ...] = ()

    def publish(self, families: Iterable[Metric]) -> None:
        """Replace what scrapes see (one assignment: a scrape sees the old set or the new one)."""
        self._families = tuple(families)

    def collect(self) -> Iterable[Metric]:
        """What the last :meth:`publish` gave (called by a scrape, in the server's thread)."""
        return self._families

    def describe(self) -> Sequence[Metric]:
        """Nothing up front: the families change with the state (no name clash is checked for them)."""
        return ()


class _Quiet(WSGIRequestHandler):
    """A request handler that logs nothing (a scrape is not news)."""

    def log_message(self, format: str, *args: object) -> None:
        pass


class MetricsServer:
    """A registry served as Prometheus text over HTTP, in a thread of its own (the library's WSGI
    application and threading server, run here so that the server's loop looks for a stop every
    :data:`POLL` seconds, not the library's half second: a daemon's exit waits for it)."""

    def __init__(self, registry: CollectorRegistry, address: str) -> None:
        """Bind ``address`` (``HOST:PORT``) and start answering; :attr:`url` is where."""
        host, port = parse_address(address)
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, bind = found[0][0], str(found[0][4][0])  # (an IPv6 host needs an IPv6 socket)
            server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {"address_family": family})
            app = prometheus_client.make_wsgi_app(registry)
            self._server: WSGIServer = make_server(bind, port, app, server_class, handler_class=_Quiet)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc}") from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL}, name="metrics", daemon=True
        )
        self._thread.start()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self._server.server_port}/metrics"

    async def close(self) -> None:
        """Stop answering (the server's loop notices within :data:`POLL` seconds: off the event loop)."""
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.asynccontextmanager
async def serving(
    registry: CollectorRegistry, address: str, log: structlog.typing.FilteringBoundLogger
) -> AsyncIterator[str]:
    """Serve ``registry`` on ``address`` while the block runs, and yield its URL (a daemon's
    ``--metrics``); without an address nothing is served and the URL is ""."""
    if not address:
        yield ""
        return
    server = MetricsServer(registry, address)
    log.info("serving metrics", url=server.url)
    try:
        yield server.url
    finally:
        await server.close()


__all__ = ["LATENCY_BUCKETS", "MetricsServer", "Snapshot", "parse_address", "registry", "serving"]
