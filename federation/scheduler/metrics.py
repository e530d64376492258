"""A scheduler's metrics: what its leader does (counters, latencies) and what its region holds (state).

Theory of operation
-------------------
One :class:`SchedulerMetrics` per scheduler process, with its own registry, served by
:class:`federation.metrics.MetricsServer` on ``--metrics``. Events are counted where they happen,
on the event loop: a job record written (:meth:`SchedulerMetrics.written` observes each new step
of its history once: placements, the submit-to-placed and placed-to-started latencies, jobs
finished by final state), a claim conflict, a hand-off answered or refused, a message quarantined.
Labelled children are made once and kept in dicts keyed by their (bounded) label values.

The region's state (queue depth by priority and tenant, pending jobs by reason *category*, each
node's offered and allocated capacity and its utilisation, each peer region's view age) is
computed by the leader's loop once a second (less often where that would take more than 2% of
its time: ``leader.METRICS_SHARE``) from the core (:meth:`SchedulerMetrics.refresh`) and
published whole as a :class:`federation.metrics.Snapshot`; the metrics server's thread never reads
the core. A pending job's reason is free text naming tenants and counts, so it is mapped onto a
small fixed set (:func:`reason_category`) before it becomes a label.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from federation.core.state import RegionCore
from federation.metrics import LATENCY_BUCKETS, Snapshot, registry
from federation.schemas import TERMINAL_STATES, JobRecord

# pending reasons, as categories (the label values of fed_pending_jobs), checked in this order
REASON_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("quota", ("quota",)),
    ("gang", ("gang of",)),
    ("other_region", ("offering it to", "may run only in", "fits nowhere here")),
    ("releasing", ("being released",)),
    ("capacity", ("waiting for capacity", "in use now")),
    ("no_fit", ("no node fits", "no node in this region")),
)
HANDOFF_OUTCOMES = frozenset({"accepted", "refused", "found", "absent", "unknown", "unreachable"})


def reason_category(record: JobRecord, now: float) -> str:
    """The category of a pending job's reason: one of a fixed few (a label never carries free text)."""
    return "backoff" if record.not_before > now else _category(record.reason)


def _category(reason: str) -> str:
    if not reason:
        return "queued"
    for category, needles in REASON_CATEGORIES:
        if any(needle in reason for needle in needles):
            return category
    return "other"


class SchedulerMetrics:
    """The metrics of one scheduler process (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = r = registry()
        self.leader = Gauge("fed_scheduler_leader", "1 while this scheduler leads its region", registry=r)
        self.epoch = Gauge("fed_scheduler_epoch", "the epoch this scheduler leads (fences) with", registry=r)
        self.placements = Counter("fed_placements", "jobs placed on a node (attempts)", registry=r)
        self.to_placed = Histogram(
            "fed_placement_latency_seconds",
            "from a job's submission (or its return to the queue) to its placement",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.to_started = Histogram(
            "fed_start_latency_seconds",
            "from a job's placement to its agent's report that it runs",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.conflicts = Counter(
            "fed_claim_conflicts", "ledger compare-and-sets that found the revision moved", registry=r
        )
        self._finished = Counter(
            "fed_jobs_finished", "jobs that reached a final state", ["state"], registry=r
        )
        self.finished = {state: self._finished.labels(state) for state in sorted(TERMINAL_STATES)}
        self._handoffs = Counter(
            "fed_handoffs",
            "hand-offs to (out) and from (in) other regions, by outcome",
            ["direction", "peer", "outcome"],
            registry=r,
        )
        self.handoff_children: dict[tuple[str, str, str], Counter] = {}
        self._quarantined = Counter(
            "fed_quarantined_messages", "messages refused and kept in quarantine", ["source"], registry=r
        )
        self.quarantine_children: dict[str, Counter] = {}
        self.state = Snapshot()
        r.register(self.state)

    # --- events, counted where they happen --------------------------------------------------------

    def written(self, record: JobRecord, seen: int, since: float) -> int:
        """A job record was stored: observe the steps of its history after the first ``seen``
        (those before ``since``, the start of this term as leader, were its predecessor's).
        Returns how many steps are now observed."""
        history = record.history
        for i in range(seen, len(history)):
            step = history[i]
            if step.at < since:
                continue
            if step.state == "placed":
                self.placements.inc()
                queued = next(
                    (h.at for h in reversed(history[:i]) if h.state == "pending"), record.submitted_at
                )
                self.to_placed.observe(max(0.0, step.at - queued))
            elif step.state == "running":
                placed = next((h.at for h in reversed(history[:i]) if h.state == "placed"), None)
                if placed is not None:
                    self.to_started.observe(max(0.0, step.at - placed))
            elif step.state in TERMINAL_STATES:
                self.finished[step.state].inc()
        return len(history)

    def handoff(self, direction: str, peer: str, outcome: str) -> None:
        """A hand-off's outcome (``direction``: ``out`` asked, ``in`` answered)."""
        key = (direction, peer, outcome if outcome in HANDOFF_OUTCOMES else "other")
        child = self.handoff_children.get(key)
        if child is None:
            child = self.handoff_children[key] = self._handoffs.labels(*key)
        child.inc()

    def quarantined(self, source: str) -> None:
        """A message of ``source`` (``workloads``, ``status``, ``offers``, ...) was quarantined."""
        child = self.quarantine_children.get(source)
        if child is None:
            child = self.quarantine_children[source] = self._quarantined.labels(source)
        child.inc()

    # --- state, computed on the loop ------------------------------------------------------------

    def refresh(self, core: RegionCore, now: float) -> None:
        """Compute the region's state from the core (on the event loop) and publish it whole."""
        self.epoch.set(core.epoch)
        self.state.publish([*_queue(core, now), *_nodes(core), _views(core, now)])


def _queue(core: RegionCore, now: float) -> Iterable[Metric]:
    # one cheap pass over the queue grouping by the labels' sources (jobs share a few reasons),
    # then each distinct reason categorised once: a few milliseconds for 10,000 pending jobs
    jobs = core.jobs
    groups: dict[tuple[str, str, str, bool], int] = {}
    for _, job in core.queue:
        view = jobs.get(job)
        if view is None:
            continue
        record = view.record
        if record.state != "pending":
            continue
        spec = record.spec
        key = (spec.priority, spec.tenant, record.reason, record.not_before > now)
        groups[key] = groups.get(key, 0) + 1
    depth: Tally[tuple[str, str]] = Tally()
    reasons: Tally[str] = Tally()
    for (priority, tenant, reason, waiting), count in groups.items():
        depth[(priority, tenant)] += count
        reasons["backoff" if waiting else _category(reason)] += count
    queue = GaugeMetricFamily(
        "fed_queue_depth", "pending jobs in the region's queue", labels=["priority", "tenant"]
    )
    for (priority, tenant), count in sorted(depth.items()):
        queue.add_metric([priority, tenant], count)
    pending = GaugeMetricFamily("fed_pending_jobs", "pending jobs by why they wait", labels=["reason"])
    for category, count in sorted(reasons.items()):
        pending.add_metric([category], count)
    return (queue, pending)


def _nodes(core: RegionCore) -> Iterable[Metric]:
    def family(name: str, text: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=["node"])

    offered = {
        "cpu": family("fed_node_offered_cpu_cores", "cores a node offers now"),
        "memory": family("fed_node_offered_memory_bytes", "memory a node offers now"),
        "gpu": family("fed_node_offered_gpus", "GPUs a node offers now"),
    }
    allocated = {
        "cpu": family("fed_node_allocated_cpu_cores", "cores allocated on a node"),
        "memory": family("fed_node_allocated_memory_bytes", "memory allocated on a node"),
        "gpu": family("fed_node_allocated_gpus", "GPUs allocated on a node"),
    }
    used = GaugeMetricFamily(
        "fed_node_utilisation_ratio",
        "a node's utilisation by other than the federation's jobs, as it last offered (0-1)",
        labels=["node", "resource"],
    )
    up = family("fed_node_up", "1 while a node's heartbeat is alive")
    for name, view in sorted(core.nodes.items()):
        up.add_metric([name], 1.0 if view.alive else 0.0)
        offer = view.offer
        if offer is not None:
            offered["cpu"].add_metric([name], len(offer.cores))
            offered["memory"].add_metric([name], offer.memory)
            offered["gpu"].add_metric([name], len(offer.gpus))
            used.add_metric([name, "cpu"], offer.cpu_percent / 100)
            used.add_metric([name, "memory"], offer.memory_percent / 100)
            used.add_metric([name, "gpu"], offer.gpu_percent / 100)
        cpu = memory = gpu = 0
        for allocation in view.current().allocations:
            cpu += allocation.cpu
            memory += allocation.memory
            gpu += len(allocation.gpus)
        allocated["cpu"].add_metric([name], cpu)
        allocated["memory"].add_metric([name], memory)
        allocated["gpu"].add_metric([name], gpu)
    return (up, *offered.values(), *allocated.values(), used)


def _views(core: RegionCore, now: float) -> Metric:
    ages = GaugeMetricFamily(
        "fed_peer_view_age_seconds", "age of this region's view of another region", labels=["peer"]
    )
    for peer, summary in sorted(core.spill.views.items()):
        ages.add_metric([peer], max(0.0, now - summary.at))
    return ages


__all__ = ["SchedulerMetrics", "reason_category"]
