"""What the console knows of the federation: each region as its streams and buckets say, and the
views the pages are drawn from. Pure: the watcher (:mod:`federation.console.watch`) applies what
it reads; nothing here does I/O or reads a clock (``now`` is an argument).

A region's state is built only from what the federation publishes anyway (job records, ledgers,
offers, heartbeats, the lease, summaries and views), so watching costs the schedulers nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from federation import subjects
from federation.client import NodeStatus
from federation.core.capacity import Free
from federation.errors import RemoteProtocolError
from federation.schemas import (
    PRIORITY_RANK,
    JobRecord,
    Lease,
    Ledger,
    Offer,
    Summary,
    decode,
    decode_message,
)

STALE_AFTER = 6.0  # seconds: a view of another region older than this is stale (summaries come every 2 s)
MAX_ROWS = 500  # rows a jobs table shows (after filtering and sorting); the count says how many match


@dataclass
class RegionState:
    """One region as read from its own server (so it is shown while the region is cut off)."""

    name: str
    url: str = ""
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    ledgers: dict[str, Ledger] = field(default_factory=dict)
    offers: dict[str, Offer] = field(default_factory=dict)
    beating: set[str] = field(default_factory=set)  # nodes whose last heartbeat has not expired
    silent: set[str] = field(default_factory=set)  # nodes whose last heartbeat word is the TTL marker
    lease: Lease | None = None
    summary: Summary | None = None
    views: dict[str, Summary] = field(default_factory=dict)  # its view of the others
    error: str = ""  # why its server could not be read last time ("" while it can)
    read_at: float = 0.0  # when it was last read whole
    unreadable: int = 0  # records skipped as unreadable

    # --- applying what was read (each returns whether anything changed) ---------------------------

    def job(self, key: str, data: bytes, removed: bool) -> None:
        """A write of the jobs bucket (key = job id)."""
        if removed:
            self.jobs.pop(key, None)
            return
        try:
            self.jobs[key] = decode(JobRecord, data)
        except RemoteProtocolError:
            self.unreadable += 1

    def ledger(self, key: str, data: bytes, removed: bool) -> None:
        """A write of the ledger bucket (key = node)."""
        if removed:
            self.ledgers.pop(key, None)
            return
        try:
            self.ledgers[key] = decode(Ledger, data)
        except RemoteProtocolError:
            self.unreadable += 1

    def offer(self, node: str, data: bytes, removed: bool) -> None:
        """A node's latest offer (removed: its TTL expired)."""
        message = None if removed else _message(data)
        if isinstance(message, Offer):
            self.offers[node] = message
        elif removed:
            self.offers.pop(node, None)

    def heartbeat(self, node: str, removed: bool) -> None:
        """A node's latest heartbeat, or the marker its expiry left."""
        (self.silent if removed else self.beating).add(node)
        (self.beating if removed else self.silent).discard(node)

    def leased(self, data: bytes, removed: bool) -> None:
        """The region's lease as written (removed: it expired or was given up)."""
        self.lease = None
        if not removed and data:
            try:
                self.lease = decode(Lease, data)
            except RemoteProtocolError:
                self.unreadable += 1

    def summarised(self, data: bytes) -> None:
        """The region's own summary."""
        message = _message(data)
        if isinstance(message, Summary):
            self.summary = message

    def viewed(self, origin: str, data: bytes) -> None:
        """A peer's summary as broadcast to this region by ``origin`` (one that speaks for another
        region than its publisher is ignored)."""
        message = _message(data)
        if isinstance(message, Summary) and message.region == origin and message.region != self.name:
            self.views[message.region] = message

    # --- what the pages show -----------------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        return not self.error and self.read_at > 0

    def leader(self, now: float) -> str:
        """Who leads, or why nobody does."""
        if self.lease is None:
            return "no leader"
        if self.lease.ttl and self.lease.renewed_at + self.lease.ttl < now:
            return f"lease of {self.lease.holder} expired"
        return self.lease.holder

    def nodes(self, now: float) -> list[NodeRow]:
        """Every node known from an offer, a ledger or a heartbeat, by name."""
        rows = []
        for name in sorted(set(self.offers) | set(self.ledgers) | self.beating | self.silent):
            offer = self.offers.get(name)
            allocations = list(self.ledgers[name].allocations) if name in self.ledgers else []
            status = NodeStatus(
                node=name,
                live=bool(offer and offer.expires_at > now) and name in self.beating,
                offer=offer,
                allocations=allocations,
                heartbeat="lost" if name in self.silent else "ok" if name in self.beating else "none",
            )
            held = {core: a.job for a in allocations for core in a.cores}
            held_gpus = {gpu: a.job for a in allocations for gpu in a.gpus}
            cores = [(core, held.get(core, "")) for core in (offer.cores if offer else sorted(held))]
            gpus = [(gpu, held_gpus.get(gpu, "")) for gpu in (offer.gpus if offer else sorted(held_gpus))]
            free = Free.of(offer, allocations) if offer else None
            rows.append(
                NodeRow(
                    node=name,
                    state=status.state,
                    cores=cores,
                    gpus=gpus,
                    memory=offer.memory if offer else 0,
                    memory_allocated=sum(a.memory for a in allocations),
                    free_cpu=len(free.cores) if free else 0,
                    cpu_percent=offer.cpu_percent if offer else 0.0,
                    memory_percent=offer.memory_percent if offer else 0.0,
                    isolation=offer.labels.get("isolation", "") if offer else "",
                    offer_age=now - offer.sent_at if offer else None,
                    jobs=[a.job for a in allocations],
                )
            )
        return rows

    def queue(self, head: int | None = None) -> tuple[list[JobRecord], int]:
        """Pending jobs in the order the scheduler considers them (priority, then age): the first
        ``head`` of them (all by default), and how many there are."""
        pending = [r for r in self.jobs.values() if r.state == "pending"]
        if head is None:
            return sorted(pending, key=_queue_order), len(pending)
        return heapq.nsmallest(head, pending, key=_queue_order), len(pending)

    def counts(self) -> dict[str, int]:
        """Jobs by state."""
        out: dict[str, int] = {}
        for record in self.jobs.values():
            out[record.state] = out.get(record.state, 0) + 1
        return out


@dataclass
class NodeRow:
    """One node on a region's page."""

    node: str
    state: str  # live, LOST, EXPIRED, NO OFFER, SILENT (as fed status says)
    cores: list[tuple[int, str]]  # every offered core id and the job holding it ("" when free)
    gpus: list[tuple[str, str]]
    memory: int
    memory_allocated: int
    free_cpu: int
    cpu_percent: float
    memory_percent: float
    isolation: str
    offer_age: float | None
    jobs: list[str]


@dataclass
class Link:
    """A region's link to the hub as the data shows it: whether its view of the others moves, and
    whether the others' views of it move."""

    region: str
    state: Literal["linked", "cut off", "unknown", "unreachable"]
    why: str
    ages: dict[str, float | None]  # each peer -> the age of this region's view of it (None: none yet)


class Board:
    """Every region the console watches, and a version that moves with every change."""

    def __init__(self, regions: dict[str, str]) -> None:
        self.regions = {name: RegionState(name=name, url=url) for name, url in regions.items()}
        self.version = 0

    def changed(self) -> None:
        self.version += 1

    def links(self, now: float) -> list[Link]:
        """Each region's link to the hub. A region is cut off when its views of every peer are
        stale and every peer's view of it is stale too (one stale pair alone is a slow peer)."""
        out = []
        for name, region in self.regions.items():
            peers = [p for p in self.regions if p != name]
            ages: dict[str, float | None] = {
                p: (now - region.views[p].at) if p in region.views else None for p in peers
            }
            if not region.reachable:
                out.append(Link(name, "unreachable", region.error or "not read yet", ages))
                continue
            if not peers:
                out.append(Link(name, "linked", "the only region", ages))
                continue
            seen_by = [
                now - self.regions[p].views[name].at
                for p in peers
                if self.regions[p].reachable and name in self.regions[p].views
            ]
            stale_in = all(a is None or a > STALE_AFTER for a in ages.values())
            stale_out = bool(seen_by) and all(a > STALE_AFTER for a in seen_by)
            known = [a for a in ages.values() if a is not None]
            if not known and not seen_by:
                out.append(Link(name, "unknown", "no summaries exchanged yet", ages))
            elif stale_in and (stale_out or not seen_by):
                oldest = min(known) if known else 0.0
                out.append(Link(name, "cut off", f"no summary from any region for {oldest:.0f} s", ages))
            else:
                out.append(Link(name, "linked", "summaries flow both ways", ages))
        return out

    def all_jobs(self) -> list[JobRecord]:
        """Every job once: a job handed to another region is shown by the region it lives in."""
        records = [r for region in self.regions.values() for r in region.jobs.values()]
        elsewhere = {r.id for r in records if r.spec.origin}
        return [r for r in records if not (r.state == "forwarded" and r.id in elsewhere)]

    def find(self, job: str) -> tuple[JobRecord | None, JobRecord | None]:
        """A job's record where it lives, and its home's record when it was handed over (else None)."""
        home = next(
            (r.jobs[job] for r in self.regions.values() if job in r.jobs and not r.jobs[job].spec.origin),
            None,
        )
        if home is None:
            home = next((r.jobs[job] for r in self.regions.values() if job in r.jobs), None)
        if home is not None and home.state == "forwarded" and home.forwarded_to in self.regions:
            there = self.regions[home.forwarded_to].jobs.get(job)
            if there is not None:
                return there, home
        return home, None


@dataclass(frozen=True)
class JobQuery:
    """The jobs table's filter, search and order (the page's query string)."""

    state: str = ""
    tenant: str = ""
    region: str = ""
    q: str = ""  # a job id, or its start
    sort: str = "submitted"
    descending: bool = True

    COLUMNS = ("id", "region", "state", "tenant", "priority", "node", "submitted", "updated")

    def select(self, records: list[JobRecord]) -> tuple[list[JobRecord], int]:
        """The rows to show (at most :data:`MAX_ROWS`) and how many matched."""
        q = self.q.strip()
        chosen = [
            r
            for r in records
            if (not self.state or r.state == self.state)
            and (not self.tenant or r.spec.tenant == self.tenant)
            and (not self.region or r.region == self.region)
            and (not q or r.id.startswith(q) or q in r.id)
        ]
        chosen.sort(
            key=_sort_key(self.sort if self.sort in self.COLUMNS else "submitted"), reverse=self.descending
        )
        return chosen[:MAX_ROWS], len(chosen)


def _sort_key(column: str) -> Callable[[JobRecord], Any]:
    keys: dict[str, Callable[[JobRecord], Any]] = {
        "id": lambda r: r.id,
        "region": lambda r: (r.region, r.submitted_at),
        "state": lambda r: (r.state, r.submitted_at),
        "tenant": lambda r: (r.spec.tenant, r.submitted_at),
        "priority": lambda r: (-PRIORITY_RANK[r.spec.priority], r.submitted_at),
        "node": lambda r: (r.node, r.submitted_at),
        "submitted": lambda r: (r.submitted_at, r.id),
        "updated": lambda r: (r.updated_at, r.id),
    }
    return keys[column]


def _queue_order(record: JobRecord) -> tuple[int, float, str]:
    return PRIORITY_RANK[record.spec.priority], record.submitted_at, record.id


def key_of(subject: str, bucket: str) -> str:
    """The key of a KV subject ``$KV.<bucket>.<key>``."""
    return subject.removeprefix(f"$KV.{bucket}.")


def node_of(subject: str) -> str:
    """The node of an offer or heartbeat subject (its last token)."""
    return subjects.last_token(subject)


def _message(data: bytes) -> object:
    try:
        return decode_message(data)
    except RemoteProtocolError:
        return None
