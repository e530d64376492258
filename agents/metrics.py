"""An agent's metrics: how fast it starts attempts, how they end, and what they used.

Every figure is set on the event loop where its event happens (the metrics server's thread only
reads the registry, see :mod:`federation.metrics`), or read when scraped (the attempts running
now: the length of the agent's table, not a gauge set twice per attempt); labelled children are
made once, up front.
Labels are bounded: an attempt's outcome is one of :data:`OUTCOMES`, never a job id or a reason.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from federation.metrics import LATENCY_BUCKETS, registry
from federation.schemas import Usage

# how an attempt ended, as the agent saw it
OUTCOMES = ("succeeded", "failed", "timed_out", "stopped", "not_started", "refused", "lost", "agent_error")
MEMORY_BUCKETS = tuple(float(2**k) for k in range(20, 41, 2))  # 1 MiB .. 1 TiB, bytes


class AgentMetrics:
    """The metrics of one agent process."""

    def __init__(self, running: Callable[[], int] = lambda: 0) -> None:
        """``running``: how many attempts run now (read at each scrape)."""
        self.registry = r = registry()
        self.start_latency = Histogram(
            "fed_agent_start_latency_seconds",
            "from the agent seeing an allocation in its ledger to the attempt's process running",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.journal_latency = Histogram(
            "fed_agent_journal_commit_latency_seconds",
            "from asking for an attempt's journal line to it being on disk (synced, group-committed)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.running = Gauge("fed_agent_running_attempts", "attempts whose process runs now", registry=r)
        self.running.set_function(running)
        finished = Counter(
            "fed_agent_attempts_finished", "attempts the agent closed, by outcome", ["outcome"], registry=r
        )
        self.finished = {outcome: finished.labels(outcome) for outcome in OUTCOMES}
        self.cpu = Counter(
            "fed_workload_cpu_seconds",
            "CPU time the finished attempts used (where measured: a cgroup or rusage)",
            registry=r,
        )
        self.wall = Counter("fed_workload_wall_seconds", "wall time of the finished attempts", registry=r)
        self.peak_memory = Histogram(
            "fed_workload_peak_memory_bytes",
            "each finished attempt's peak memory (where measured)",
            buckets=MEMORY_BUCKETS,
            registry=r,
        )

    def used(self, usage: Usage) -> None:
        """What a finished attempt used: wall time always, CPU and memory where measured."""
        self.wall.inc(usage.wall_seconds)
        if usage.measured_by:
            self.cpu.inc(usage.cpu_seconds)
            self.peak_memory.observe(usage.peak_memory_bytes)


__all__ = ["OUTCOMES", "AgentMetrics"]
