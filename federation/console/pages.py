"""The console's pages as HTML: plain server-rendered markup, one small script for live updates.

Each page is a frame (:func:`page`: header, navigation, style, script) around a live part: a
function of the board that the server renders again whenever the board changes and sends over
server-sent events (``/live?path=...``), and the script swaps in. Everything a message's author
chose (commands, reasons, names) is escaped. Pure: time is an argument.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from urllib.parse import urlencode

from federation import tracing
from federation.audit.check import Report
from federation.audit.trail import AuditEvent
from federation.client import Explanation, request_text
from federation.console.model import STALE_AFTER, Board, JobQuery, Link, NodeRow, RegionState
from federation.resources import format_memory
from federation.schemas import JobRecord

QUEUE_SHOWN = 100  # the head of a region's queue its page lists
STATES = (
    "pending",
    "placed",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "lost",
    "preempted",
    "forwarded",
)


def e(value: object) -> str:
    """``value`` as HTML text (quotes included)."""
    return html.escape(str(value), quote=True)


def clock(at: float) -> str:
    """A wall-clock time of day with milliseconds, or a dash."""
    if not at:
        return "-"
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "none yet"
    return f"{max(0.0, seconds):.0f} s"


def badge(state: str) -> str:
    return f'<span class="state s-{e(state.lower().replace(" ", "-"))}">{e(state)}</span>'


def job_link(job: str) -> str:
    return f'<a href="/jobs/{e(job)}" class="mono">{e(job)}</a>'


# --- the frame ---------------------------------------------------------------------------------------


def page(title: str, path: str, live: str, regions: Sequence[str], extra: str = "", head: str = "") -> str:
    """A whole page: ``live`` is the part that updates (rendered again for ``/live?path=path``)."""
    nav = "".join(f'<a href="/regions/{e(r)}">{e(r)}</a>' for r in regions)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{e(title)} · nats-federation</title><link rel="stylesheet" href="/static/console.css"></head>
<body><header><a class="brand" href="/">nats-federation</a>
<nav><a href="/">federation</a>{nav}<a href="/jobs">jobs</a><a href="/audit">audit</a></nav>
<span id="conn" class="dot" title="live updates">live</span></header>
<main><h1>{e(title)}</h1>{head}
<div id="live" data-path="{e(path)}">{live}</div>{extra}</main>
<script src="/static/console.js"></script></body></html>"""


# --- the federation ----------------------------------------------------------------------------------


def federation_live(board: Board, now: float) -> str:
    links = board.links(now)
    rows = []
    for link in links:
        region = board.regions[link.region]
        counts = region.counts()
        s = region.summary
        capacity = (
            f"cpu {s.cpu_free}/{s.cpu} free · memory {format_memory(s.memory_free)}/{format_memory(s.memory)}"
            f" · gpu {s.gpu_free}/{s.gpu}"
            if s
            else "-"
        )
        epoch = f" (epoch {region.lease.epoch})" if region.lease else ""
        rows.append(
            f'<tr data-region="{e(link.region)}"><td>'
            f'<a href="/regions/{e(link.region)}">{e(link.region)}</a></td>'
            f'<td class="link">{badge(link.state)}<div class="why">{e(link.why)}</div></td>'
            f"<td>{e(region.leader(now))}{e(epoch)}</td>"
            f"<td>{s.live if s else 0}/{s.nodes if s else len(region.nodes(now))}</td>"
            f"<td>{counts.get('pending', 0)}</td>"
            f"<td>{counts.get('running', 0) + counts.get('placed', 0)}</td>"
            f"<td>{e(capacity)}</td><td>{age(now - s.at) if s else 'none yet'}</td></tr>"
        )
    matrix = _matrix(board, links)
    return (
        f'<div class="map">{_map(links)}</div>'
        '<table class="grid"><thead><tr><th>region</th><th>link to the hub</th><th>leader</th>'
        "<th>nodes live</th><th>pending</th><th>running</th><th>capacity</th><th>summary age</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<h2>Views: how old each region's view of the others is</h2>{matrix}"
    )


def _map(links: list[Link]) -> str:
    """The hub in the middle, each region around it, each link drawn by its state."""
    size, middle, radius = 360, 180, 130
    parts = [
        f'<svg viewBox="0 0 {size} {size}" width="{size}" height="{size}" role="img" '
        'aria-label="federation map">'
    ]
    spots = []
    for i, link in enumerate(links):
        angle = -math.pi / 2 + 2 * math.pi * i / max(1, len(links))
        x, y = middle + radius * math.cos(angle), middle + radius * math.sin(angle)
        spots.append((link, x, y))
        kind = link.state.replace(" ", "-")
        parts.append(
            f'<line class="edge e-{kind}" data-region="{e(link.region)}" x1="{middle}" y1="{middle}" '
            f'x2="{x:.0f}" y2="{y:.0f}"/>'
        )
    parts.append(f'<circle class="hub" cx="{middle}" cy="{middle}" r="26"/>')
    parts.append(f'<text x="{middle}" y="{middle + 5}" class="label">hub</text>')
    for link, x, y in spots:
        kind = link.state.replace(" ", "-")
        parts.append(
            f'<a href="/regions/{e(link.region)}">'
            f'<circle class="region r-{kind}" cx="{x:.0f}" cy="{y:.0f}" r="30"/>'
            f'<text x="{x:.0f}" y="{y + 5:.0f}" class="label">{e(link.region)}</text></a>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _matrix(board: Board, links: list[Link]) -> str:
    names = list(board.regions)
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    rows = []
    for link in links:
        cells = []
        for peer in names:
            if peer == link.region:
                cells.append('<td class="self">-</td>')
                continue
            value = link.ages.get(peer)
            stale = value is None or value > STALE_AFTER
            cells.append(f'<td class="{"stale" if stale else "fresh"}">{age(value)}</td>')
        rows.append(f"<tr><th>{e(link.region)} sees</th>{''.join(cells)}</tr>")
    return (
        f'<table class="grid matrix"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --- a region ----------------------------------------------------------------------------------------


def region_live(region: RegionState, now: float) -> str:
    if not region.read_at:
        return f'<p class="warn">not read yet{": " + e(region.error) if region.error else ""}</p>'
    out = []
    if region.error:
        out.append(
            f'<p class="warn">cannot be read now ({e(region.error)}); '
            f"showing what was read {age(now - region.read_at)} ago</p>"
        )
    epoch = f", epoch {region.lease.epoch}" if region.lease else ""
    counts = " · ".join(f"{k} {v}" for k, v in sorted(region.counts().items())) or "no jobs"
    out.append(
        f'<p class="facts">server <span class="mono">{e(region.url)}</span>'
        f" · leader <b>{e(region.leader(now))}</b>{e(epoch)}"
        f" · jobs: {e(counts)}</p>"
    )
    out.append(
        '<table class="grid nodes"><thead><tr><th>node</th><th>state</th><th>CPU cores (by id)</th>'
        "<th>memory allocated / offered</th><th>GPUs (by id)</th><th>host use</th><th>isolation</th>"
        "<th>offer age</th></tr></thead><tbody>"
    )
    for node in region.nodes(now):
        out.append(_node(node))
    out.append("</tbody></table>")
    queue, waiting = region.queue(QUEUE_SHOWN)
    out.append(f"<h2>Queue ({waiting} pending)</h2>")
    if queue:
        out.append(
            '<table class="grid"><thead><tr><th>#</th><th>job</th><th>priority</th><th>tenant</th>'
            "<th>request</th><th>waiting</th><th>why</th></tr></thead><tbody>"
        )
        for i, record in enumerate(queue, 1):
            out.append(
                f"<tr><td>{i}</td><td>{job_link(record.id)}</td><td>{e(record.spec.priority)}</td>"
                f"<td>{e(record.spec.tenant)}</td><td class='mono'>{e(request_text(record.spec))}</td>"
                f"<td>{age(now - record.submitted_at)}</td><td>{e(record.reason)}</td></tr>"
            )
        out.append("</tbody></table>")
    return "".join(out)


def _node(node: NodeRow) -> str:
    cores = "".join(
        f'<a class="core held" href="/jobs/{e(job)}" title="core {core}: {e(job)}">{core}</a>'
        if job
        else f'<span class="core" title="core {core}: free">{core}</span>'
        for core, job in node.cores
    )
    gpus = (
        "".join(
            f'<a class="core gpu held" href="/jobs/{e(job)}" title="GPU {e(gpu)}: {e(job)}">{e(gpu)}</a>'
            if job
            else f'<span class="core gpu" title="GPU {e(gpu)}: free">{e(gpu)}</span>'
            for gpu, job in node.gpus
        )
        or "-"
    )
    share = node.memory_allocated / node.memory if node.memory else 0.0
    memory = (
        f'<div class="bar"><div style="width:{min(100.0, 100 * share):.0f}%"></div></div>'
        f"{format_memory(node.memory_allocated)} / {format_memory(node.memory)}"
    )
    marked = "" if node.state == "live" else " marked"
    return (
        f'<tr class="node{marked}" data-node="{e(node.node)}"><td>{e(node.node)}</td>'
        f"<td>{badge(node.state)}</td>"
        f'<td class="cores">{cores or "-"}<div class="why">{node.free_cpu} free</div></td><td>{memory}</td>'
        f'<td class="cores">{gpus}</td>'
        f"<td>cpu {node.cpu_percent:.0f}% · memory {node.memory_percent:.0f}%</td>"
        f"<td>{e(node.isolation or '-')}</td><td>{age(node.offer_age)}</td></tr>"
    )


# --- jobs --------------------------------------------------------------------------------------------


def jobs_form(board: Board, query: JobQuery) -> str:
    """The filter and search form (outside the live part: typing is never interrupted)."""
    tenants = sorted({r.spec.tenant for region in board.regions.values() for r in region.jobs.values()})

    def select(name: str, choices: Sequence[str], chosen: str) -> str:
        options = "".join(
            f'<option value="{e(c)}"{" selected" if c == chosen else ""}>{e(c or "any " + name)}</option>'
            for c in ("", *choices)
        )
        return f'<select name="{name}" aria-label="{name}">{options}</select>'

    return (
        '<form id="filters" class="filters" method="get" action="/jobs">'
        f'<input type="search" name="q" value="{e(query.q)}" placeholder="job id" aria-label="search by id">'
        f"{select('state', STATES, query.state)}{select('tenant', tenants, query.tenant)}"
        f"{select('region', list(board.regions), query.region)}"
        f'<input type="hidden" name="sort" value="{e(query.sort)}">'
        f'<input type="hidden" name="order" value="{"desc" if query.descending else "asc"}">'
        "<button>filter</button></form>"
    )


def jobs_live(board: Board, query: JobQuery, now: float) -> str:
    rows, matched = query.select(board.all_jobs())
    head = []
    for column in JobQuery.COLUMNS:
        descending = not (query.sort == column and query.descending)
        params = {k: v for k, v in _params(query).items() if k not in ("sort", "order")}
        href = "/jobs?" + urlencode({**params, "sort": column, "order": "desc" if descending else "asc"})
        arrow = (" ▼" if query.descending else " ▲") if query.sort == column else ""
        head.append(f'<th><a href="{e(href)}">{column}{arrow}</a></th>')
    body = []
    for r in rows:
        code = "" if r.exit_code is None else str(r.exit_code)
        body.append(
            f'<tr data-job="{e(r.id)}" data-state="{e(r.state)}"><td>{job_link(r.id)}</td>'
            f"<td>{e(r.region)}</td>"
            f"<td>{badge(r.state)}</td><td>{e(r.spec.tenant)}</td><td>{e(r.spec.priority)}</td>"
            f"<td>{e(r.node or '-')}</td><td>{clock(r.submitted_at)}</td><td>{clock(r.updated_at)}</td>"
            f"<td>{e(code)}</td><td class='mono cmd'>{e(' '.join(r.spec.command))}</td></tr>"
        )
    shown = f"{matched} jobs" + (f", the first {len(rows)} shown" if matched > len(rows) else "")
    return (
        f'<p class="facts" id="count">{e(shown)}</p><table class="grid jobs"><thead><tr>{"".join(head)}'
        f"<th>exit</th><th>command</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _params(query: JobQuery) -> dict[str, str]:
    out = {"state": query.state, "tenant": query.tenant, "region": query.region, "q": query.q}
    out = {k: v for k, v in out.items() if v}
    return {**out, "sort": query.sort, "order": "desc" if query.descending else "asc"}


# --- a job -------------------------------------------------------------------------------------------


def job_live(board: Board, job: str, now: float, can_cancel: bool, token: str) -> str:
    record, home = board.find(job)
    if record is None:
        elements = [r for r in board.all_jobs() if r.spec.array == job]
        if elements:  # a job array's id: its jobs counted by state
            counts: dict[str, int] = {}
            for element in elements:
                counts[element.state] = counts.get(element.state, 0) + 1
            rows = "".join(f"<tr><td>{badge(k)}</td><td>{v}</td></tr>" for k, v in sorted(counts.items()))
            most = elements[0].spec.array_limit
            return (
                f'<p class="facts">job array of {len(elements)} jobs'
                + (f", at most {most} at once" if most else "")
                + f' · <a href="/jobs?q={e(job)}-">its jobs</a></p>'
                + f'<table class="grid narrow"><tbody>{rows}</tbody></table>'
            )
        return f'<p class="warn">no job {e(job)} in any region read so far</p>'
    spec = record.spec
    trace = "-"
    if record.traceparent:
        trace = f'<span class="mono">{e(tracing.trace_id(record.traceparent))}</span>'
    facts = [
        (
            "state",
            badge(record.state)
            + (f" exit code {e(record.exit_code)}" if record.exit_code is not None else ""),
        ),
        ("why", e(record.reason or "-")),
        ("region", e(record.region) + (f" (handed over by {e(spec.origin)})" if spec.origin else "")),
        ("node", f"{e(record.node or '-')} (attempt {record.attempt})"),
        ("tenant", e(spec.tenant)),
        ("priority", e(spec.priority)),
        ("request", f'<span class="mono">{e(request_text(spec))}</span>'),
        ("command", f'<span class="mono">{e(" ".join(spec.command))}</span>'),
        ("submitted", clock(record.submitted_at)),
        ("trace", trace),
    ]
    if home is not None:
        facts.insert(3, ("home", f"{e(home.region)}: {e(home.reason)}"))
    if spec.array:
        limit = f", at most {spec.array_limit} at once" if spec.array_limit else ""
        every = f'<a href="/jobs?q={e(spec.array)}-" class="mono">{e(spec.array)}</a>'  # its jobs listed
        facts.append(("array", f"{every} index {spec.array_index}{e(limit)}"))
    if spec.after:
        waits = ", ".join(
            f"{job_link(d.job)} ({e(d.when)}{', in ' + e(d.region) if d.region else ''})" for d in spec.after
        )
        facts.append(("after", waits))
    if spec.inputs:
        where = e(spec.origin or record.region)
        files = ", ".join(
            f'<span class="mono">{e(r.name)}</span> ({e(format_memory(r.size))})' for r in spec.inputs
        )
        facts.append(("inputs", f"{files} from {where}'s object store"))
    if spec.outputs:
        kept = ", ".join(
            f'<span class="mono">{e(r.name)}</span> ({e(format_memory(r.size))})' for r in record.stored
        )
        asked = e(" ".join(spec.outputs))
        facts.append(
            (
                "outputs",
                f'<span class="mono">{asked}</span>: ' + (f"stored {kept}" if kept else "none stored"),
            )
        )
    if record.usage is not None:
        u = record.usage
        facts.append(
            (
                "usage",
                f"cpu {u.cpu_seconds:g} s · peak memory {e(format_memory(u.peak_memory_bytes))} · wall "
                f"{u.wall_seconds:g} s · gpu {u.gpu_seconds:g} s (measured by {e(u.measured_by)})",
            )
        )
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    cancel = ""
    if can_cancel and not record.terminal:
        cancel = (
            f'<form method="post" action="/jobs/{e(job)}/cancel" class="cancel">'
            f'<input type="hidden" name="token" value="{e(token)}">'
            '<button id="cancel">cancel this job</button></form>'
        )
    history = "".join(
        f"<tr><td>{clock(step.at)}</td><td>{badge(step.state)}</td><td>{e(step.reason)}</td></tr>"
        for step in record.history
    )
    explanation = Explanation(
        record=record, decision=record.decision, queue_position=_position(board, record), via=home
    )
    return (
        f'<table class="facts-table">{rows}</table>{cancel}'
        f'<h2>Decision (fed explain)</h2><pre class="explain">{e(chr(10).join(explanation.lines()))}</pre>'
        f'<h2>History</h2><table class="grid narrow"><tbody>{history}</tbody></table>'
    )


def _position(board: Board, record: JobRecord) -> int:
    if record.state != "pending" or record.region not in board.regions:
        return 0
    queue, _ = board.regions[record.region].queue()
    return next((i + 1 for i, r in enumerate(queue) if r.id == record.id), 0)


def job_logs(job: str) -> str:
    """The log panel (outside the live part: it is appended to, never redrawn)."""
    return (
        f'<h2>Output</h2><pre id="log" class="log" data-src="/jobs/{e(job)}/log" data-state="streaming">'
        "</pre>"
        '<p class="why" id="log-state">streaming…</p>'
    )


# --- the audit ---------------------------------------------------------------------------------------


def audit_live(
    checks: dict[str, tuple[float, Report | None, str]], events: list[AuditEvent], now: float
) -> str:
    out = [
        '<table class="grid"><thead><tr><th>region</th><th>invariant check</th><th>when</th>'
        "<th>details</th></tr></thead><tbody>"
    ]
    for region, (at, report, error) in sorted(checks.items()):
        if report is None:
            verdict = badge("checking" if not error else "unreadable")
            details = e(error or "reading the trail…")
        else:
            good = not report.violations and not report.gaps and not report.unreadable
            verdict = badge("ok" if good else "problems")
            problems = [f"{v.invariant}: {v.message}" for v in report.violations]
            problems += [f"gap: {g.origin} {g.first}-{g.last}" for g in report.gaps]
            details = e(
                f"{report.events} events, {report.open_jobs} jobs not finished, "
                f"{report.refused} refused messages" + ("; " + "; ".join(problems[:10]) if problems else "")
            )
        out.append(
            f'<tr data-region="{e(region)}"><td>{e(region)}</td><td>{verdict}</td><td>{clock(at)}</td>'
            f"<td>{details}</td></tr>"
        )
    out.append("</tbody></table><h2>Timeline (latest first)</h2>")
    out.append(
        '<table class="grid"><thead><tr><th>seq</th><th>time</th><th>region</th><th>kind</th>'
        "<th>job or node</th><th>state</th><th>detail</th></tr></thead><tbody>"
    )
    for event in sorted(events, key=lambda ev: ev.at, reverse=True):
        who = event.job or event.node
        out.append(
            f"<tr><td>{event.seq}</td><td>{clock(event.at)}</td><td>{e(event.region)}</td>"
            f"<td>{e(event.kind)}</td>"
            f"<td>{job_link(who) if event.job else e(who)}</td><td>{e(event.state or '')}</td>"
            f"<td>{e(event.detail)}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def audit_form(token: str) -> str:
    return (
        '<form method="post" action="/audit/check" class="filters">'
        f'<input type="hidden" name="token" value="{e(token)}">'
        '<button id="check">check the invariants now</button></form>'
    )
