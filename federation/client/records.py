"""What the client answers with besides the schemas' own records: a region's status
(:class:`RegionStatus`, its :class:`NodeStatus` rows), a job's :class:`Explanation`, a request as
text, and job records decoded from a bucket (one unreadable record hides no others)."""

from __future__ import annotations

import time

import msgspec
import structlog

from federation.errors import RemoteProtocolError
from federation.resources import format_memory
from federation.schemas import Allocation, Decision, JobRecord, Lease, Offer, Submit, Summary, decode

log = structlog.get_logger()


class NodeStatus(msgspec.Struct, kw_only=True):
    """One node in ``fed status --json``."""

    node: str
    live: bool
    offer: Offer | None
    allocations: list[Allocation]
    free_cpu: int = 0
    free_memory: int = 0
    free_gpu: int = 0
    # "ok" while it beats, "lost" once the heartbeat's TTL marker is the node's last word, "none" when
    # the stream holds neither (never beat, or its marker aged out: a node removed for good)
    heartbeat: str = "ok"

    @property
    def state(self) -> str:
        """What ``fed status`` shows: ``live`` (beating, with a current offer), ``LOST`` (its
        heartbeat expired), ``EXPIRED`` (beating, but its offer expired: it shares nothing now),
        ``NO OFFER`` (beating, never offered), ``SILENT`` (no heartbeat at all: gone)."""
        if self.heartbeat == "lost":
            return "LOST"
        if self.heartbeat == "none":
            return "SILENT"
        if self.live:
            return "live"
        return "EXPIRED" if self.offer is not None else "NO OFFER"


class RegionStatus(msgspec.Struct, kw_only=True):
    """One region in ``fed status --json``."""

    region: str
    url: str
    reachable: bool
    error: str = ""
    nodes: list[NodeStatus] = []
    jobs: dict[str, int] = {}
    queue: list[str] = []
    leader: Lease | None = None
    summary: Summary | None = None
    views: dict[str, Summary] = {}  # the other regions' summaries as this region sees them
    tenant: str = ""  # a tenant's view: only its own jobs (no nodes, leader or views: not its business)
    # daemon -> its Prometheus /metrics URL, as the fed up running from the state directory recorded
    # them (its schedulers, its nodes' agents, and "fed-up", the supervisor); filled by fed status
    metrics: dict[str, str] = {}
    console: str = ""  # the web console's page of this region (its URL from the connection file)


class Explanation(msgspec.Struct, kw_only=True):
    """What ``fed explain`` shows: the record, its last decision, and the live queue position."""

    record: JobRecord
    decision: Decision | None
    queue_position: int = 0
    via: JobRecord | None = None  # the home region's record of a job forwarded elsewhere

    def lines(self) -> list[str]:
        """What ``fed explain`` prints (and the web console shows): the request, where the job went
        and why, and the decision's filters, choice and runners-up."""
        record, decision, via = self.record, self.decision, self.via
        spec = record.spec
        out = [
            f"job       {record.id} ({record.state}, priority {spec.priority}, tenant {spec.tenant})",
            f"request   {request_text(spec)}",
        ]
        if spec.origin:
            out.append(f"region    {record.region}, handed over by {spec.origin}")
        if via is not None:
            out.append(f"home      {via.region}: {via.reason}")
            out.append(f"region    {record.region} (forwarded; its record follows)")
        if (via or record).handoffs:
            tried = ", ".join(f"{r}={state}" for r, state in sorted((via or record).handoffs.items()))
            out.append(f"hand-offs {tried}")
        if record.duplicates:
            out.append(f"duplicate also ran in {', '.join(record.duplicates)} (at-least-once)")
        out.append(f"why       {record.reason or '-'}")
        if self.queue_position:
            out.append(f"queue     position {self.queue_position} among pending jobs of {record.region}")
        if decision is None:
            return out
        when = time.strftime("%H:%M:%S", time.localtime(decision.at))
        then = f", queue position then {decision.queue_position}" if decision.queue_position else ""
        out.append(f"decision  {decision.kind} at {when}, {decision.considered} nodes considered{then}")
        for reason, count in sorted(decision.filtered.items(), key=lambda kv: -kv[1]):
            out.append(f"  filtered  {count:>4} node{'s' if count != 1 else ' '}: {reason}")
        if decision.chosen is not None:
            note = f"  ({decision.note})" if decision.note else ""
            out.append(f"  chosen    {decision.chosen.node:<16} {_score(decision.chosen.score)}{note}")
        for runner in decision.runners_up:
            out.append(f"  runner-up {runner.node:<16} {_score(runner.score)}")
        if decision.victims:
            out.append(f"  preempted {', '.join(decision.victims)}")
        return out


def request_text(spec: Submit) -> str:
    """A submission's request as ``fed job`` and ``fed explain`` show it: ``cpu=1 memory=0B gpu=0``
    plus whatever else the job asked for."""
    text = f"cpu={spec.cpu} memory={format_memory(spec.memory)} gpu={spec.gpu}"
    text += f" gang={spec.gang}" if spec.gang > 1 else ""
    text += f" require={spec.require}" if spec.require else ""
    text += f" prefer={','.join(spec.nodes)}" if spec.nodes else ""
    text += "".join(f" {name}={amount:g}" for name, amount in sorted(spec.custom.items()))
    text += f" on_node_lost={spec.on_node_lost}" if spec.on_node_lost else ""
    text += f" regions={','.join(spec.regions)}" if spec.regions else ""
    text += " retry-anywhere" if spec.semantics == "at_least_once" else ""
    return text


def _score(score: tuple[int, ...]) -> str:
    gpus, cores, memory = (*score, 0, 0, 0)[:3]
    return f"leaves gpu={gpus} cpu={cores} memory={format_memory(max(0, memory))}"


def _readable(values: dict[str, tuple[bytes, int]]) -> list[JobRecord]:
    """Decode job records, skipping (and logging) unreadable ones: one corrupt key hides no others."""
    return [record for key, (value, _) in values.items() if (record := _record(key, value)) is not None]


def _record(key: str, value: bytes) -> JobRecord | None:
    """The job record stored under ``key`` (None: unreadable, logged and skipped)."""
    try:
        return decode(JobRecord, value)
    except RemoteProtocolError as exc:
        log.warning("unreadable job record skipped", job=key, error=str(exc))
        return None
