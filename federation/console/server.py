"""The console's web server: pages, their live updates, job output as it is written, and the one
action it may take (cancel), on aiohttp.

aiohttp serves both plain pages and long-lived server-sent event streams on the event loop the
watcher already runs on; a hand-written HTTP server would have to get keep-alive, chunked
streams, form parsing and client disconnects right by itself.

Routes: ``/`` the federation, ``/regions/{name}``, ``/jobs`` (filtered by the query string),
``/jobs/{id}``, ``/audit``; ``/live?path=P`` sends page P's live part each time it changes
(``event: page``); ``/jobs/{id}/log`` sends the job's output (``event: chunk``) until it is over
(``event: end``); ``POST /jobs/{id}/cancel`` and ``POST /audit/check`` need the page's token (a
form from another site cannot post them); ``/healthz`` answers once every region was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web

from federation import subjects
from federation.audit.check import Report
from federation.audit.trail import AuditEvent
from federation.bus.scan import scan
from federation.client import Client
from federation.console import pages
from federation.console.model import Board, JobQuery
from federation.console.watch import POLL, Watcher
from federation.errors import FederationError

KEEPALIVE = 15.0  # seconds between comments on an idle event stream (proxies close silent ones)
TICK = 1.0  # seconds: a live part is drawn again at least this often (ages move)
TIMELINE = 100  # audit events the audit page shows
STATIC = Path(__file__).parent / "static"  # the style sheet and the script

log = structlog.get_logger()


class Console:
    """The console of one federation, read through ``client``; ``can_cancel`` when its credentials
    may cancel jobs (an operator's), else read-only."""

    def __init__(self, client: Client, *, can_cancel: bool = False, poll: float = POLL) -> None:
        self.client = client
        self.can_cancel = can_cancel
        self.board = Board({name: client.connection.regions[name].url for name in client.regions})
        self.watcher = Watcher(self.board, client.bus, poll=poll)
        self.token = secrets.token_urlsafe(16)
        self.checks: dict[str, tuple[float, Report | None, str]] = {}
        self._checking: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # --- running -----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start watching and serving; returns the console's URL."""
        await self.watcher.start()
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._show),
                web.get("/regions/{name}", self._show),
                web.get("/jobs", self._show),
                web.get("/jobs/{job}", self._show),
                web.get("/jobs/{job}/log", self._log),
                web.post("/jobs/{job}/cancel", self._cancel),
                web.get("/audit", self._show),
                web.post("/audit/check", self._check),
                web.get("/live", self._live),
                web.get("/healthz", self._health),
                web.static("/static", STATIC),
            ]
        )
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking
        await self.watcher.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- pages -------------------------------------------------------------------------------------

    async def render(self, path: str) -> tuple[str, str, str, str] | None:
        """Page ``path`` (with its query) as (title, live part, what goes above it, below it);
        None when there is no such page."""
        parts = urlsplit(path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        now = time.time()
        route = parts.path.rstrip("/") or "/"
        if route == "/":
            return "Federation", pages.federation_live(self.board, now), "", ""
        if route.startswith("/regions/"):
            region = self.board.regions.get(route.removeprefix("/regions/"))
            if region is None:
                return None
            return f"Region {region.name}", pages.region_live(region, now), "", ""
        if route == "/jobs":
            jobs = _query(query)
            return "Jobs", pages.jobs_live(self.board, jobs, now), pages.jobs_form(self.board, jobs), ""
        if route.startswith("/jobs/"):
            job = route.removeprefix("/jobs/")
            live = pages.job_live(self.board, job, now, self.can_cancel, self.token)
            if self.board.find(job)[0] is None and any(r.spec.array == job for r in self.board.all_jobs()):
                return f"Job array {job}", live, "", ""  # its jobs have the output
            return f"Job {job}", live, "", pages.job_logs(job)
        if route == "/audit":
            if not self.checks and self._checking is None:
                self._start_checks()
            events = await self._timeline()
            return "Audit", pages.audit_live(self.checks, events, now), pages.audit_form(self.token), ""
        return None

    async def _show(self, request: web.Request) -> web.Response:
        rendered = await self.render(request.path_qs)
        if rendered is None:
            raise web.HTTPNotFound(text=f"no page {request.path}")
        title, live, head, extra = rendered
        text = pages.page(title, request.path_qs, live, list(self.board.regions), extra=extra, head=head)
        return web.Response(text=text, content_type="text/html")

    async def _health(self, request: web.Request) -> web.Response:
        read = {name: region.read_at > 0 for name, region in self.board.regions.items()}
        return web.json_response(
            {"ready": all(read.values()), "regions": read}, status=200 if all(read.values()) else 503
        )

    # --- live updates ------------------------------------------------------------------------------

    async def _live(self, request: web.Request) -> web.StreamResponse:
        """Page ``?path=``'s live part, sent again whenever it changes (at once, then within a
        poll of every change)."""
        path = request.query.get("path", "/")
        if not path.startswith("/") or await self.render(path) is None:
            raise web.HTTPNotFound(text=f"no page {path}")
        response = await _event_stream(request)
        version, last, quiet = -1, "", time.monotonic()
        while True:
            rendered = await self.render(path)
            live = rendered[1] if rendered else ""
            if live != last:
                await _send(response, "page", live)
                last, quiet = live, time.monotonic()
            elif time.monotonic() - quiet > KEEPALIVE:
                await response.write(b": keep-alive\n\n")
                quiet = time.monotonic()
            version = await self.watcher.wait_changed(version, TICK)

    async def _log(self, request: web.Request) -> web.StreamResponse:
        """The job's output from the region that runs it, as it is stored, until the job is over."""
        job = request.match_info["job"]
        response = await _event_stream(request)
        cursor, region = 1, ""
        while True:
            record, _ = self.board.find(job)
            if record is not None and record.region != region:
                cursor, region = 1, record.region  # handed over: its output is in the new region's stream
            new = False
            if region:
                try:
                    bus = await self.client.bus(region)
                    async for item in scan(
                        bus,
                        subjects.logs_stream(region),
                        subjects.job_log_filter(region, job),
                        start_sequence=cursor,
                    ):
                        cursor = item.sequence + 1
                        new = True
                        await _send(response, "chunk", item.data.decode("utf-8", "replace"))
                except FederationError as exc:
                    log.info("job output unreadable", job=job, error=str(exc))
            if record is not None and record.terminal and not new:
                code = f" (exit code {record.exit_code})" if record.exit_code is not None else ""
                await _send(response, "end", f"{record.state}{code}: the output is complete")
                return response
            await asyncio.sleep(POLL)  # sleep-ok: the poll interval of a job's output

    # --- actions -----------------------------------------------------------------------------------

    async def _cancel(self, request: web.Request) -> web.Response:
        job = request.match_info["job"]
        await self._authorised(request)
        if not self.can_cancel:
            raise web.HTTPForbidden(
                text="this console is read-only: start it with an operator's --creds to cancel"
            )
        record, home = self.board.find(job)
        if record is None:
            raise web.HTTPNotFound(text=f"no job {job}")
        try:
            await self.client.cancel(job, region=(home or record).region, reason="cancelled from the console")
        except FederationError as exc:
            raise web.HTTPBadGateway(text=f"cancel not sent: {exc}") from None
        raise web.HTTPSeeOther(f"/jobs/{job}")

    async def _check(self, request: web.Request) -> web.Response:
        await self._authorised(request)
        self._start_checks()
        raise web.HTTPSeeOther("/audit")

    async def _authorised(self, request: web.Request) -> None:
        form = await request.post()
        if not secrets.compare_digest(str(form.get("token", "")), self.token):
            raise web.HTTPForbidden(text="the form's token is missing or stale: reload the page")

    # --- the audit ---------------------------------------------------------------------------------

    def _start_checks(self) -> None:
        if self._checking is not None and not self._checking.done():
            return
        self._checking = asyncio.create_task(self._run_checks())

    async def _run_checks(self) -> None:
        """Check every region's trail in turn (what ``fed audit check`` does), newest result kept."""
        for name in self.board.regions:
            at, before, _ = self.checks.get(name, (0.0, None, ""))
            self.checks[name] = (at, None, "")
            self.board.changed()
            try:
                report = await self.client.audit_check(region=name, wait=2.0)
                self.checks[name] = (time.time(), report, "")
            except FederationError as exc:
                self.checks[name] = (time.time(), before, str(exc))
            self.board.changed()

    async def _timeline(self) -> list[AuditEvent]:
        """The latest :data:`TIMELINE` events of the regions' trails, without the journalled
        scheduler inputs (each tick's: the audit's own business, many a second)."""
        out: list[AuditEvent] = []
        for name in self.board.regions:
            try:
                bus = await self.client.bus(name)
                last = await bus.last_sequence(subjects.audit_stream(name)) or 0
                start = max(1, last - 8 * TIMELINE)
                async for event in self.client.audit(region=name, from_seq=start):
                    if event.kind != "inputs":
                        out.append(event)
            except FederationError:
                continue
        return sorted(out, key=lambda event: event.at)[-TIMELINE:]


def _query(query: dict[str, str]) -> JobQuery:
    return JobQuery(
        state=query.get("state", ""),
        tenant=query.get("tenant", ""),
        region=query.get("region", ""),
        q=query.get("q", ""),
        sort=query.get("sort", "submitted"),
        descending=query.get("order", "desc") != "asc",
    )


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, event: str, value: str) -> None:
    """One server-sent event whose data is ``value`` as JSON (one line, whatever it holds)."""
    await response.write(f"event: {event}\ndata: {json.dumps(value)}\n\n".encode())
