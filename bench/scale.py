"""How the federation scales: many nodes in one region, a long queue (issue 21).

    python bench/scale.py                        # both parts: --nodes 50,10000 --jobs 10000 --rounds 2
    python bench/scale.py --part nodes --nodes 50,1000,5000,10000 --rounds 1
    python bench/scale.py --part queue --queue 100000

**Nodes.** One region (a real nats-server and scheduler, as in ``bench/throughput.py``) with N
simulated nodes (``agents/sim.py``: real offers and heartbeats over NATS, at the cadence the
region sets from its budget, ``federation/core/cadence.py``), every node offering the same
capacity whatever N is (``--cores`` each), so that only the number of nodes changes between runs:
binpack puts the same jobs on the same number of nodes, with the same ledger writes. The clock
starts once the leader counts all N nodes (its lease says so). Then ``--jobs`` one-core jobs are
submitted pipelined: placements/s (first submit to last record seen ``placed``), the burst's
submit-to-placed p50/p99, the node messages (heartbeats and offers) the server stored per second
meanwhile, and the scheduler's CPU per placement. Node counts are run in turn, ``--rounds`` times
(alternated), and each round reports every count against the smallest.

**Queue.** ``--queue`` jobs submitted to a region with no capacity: how fast they are recorded
pending, the scheduler's resident memory before and after (bytes per pending job), then a new
leader (the first stopped, a new process started) until it logs ``recovered`` (it has read and
restamped every record), then 100 simulated nodes x 64 cores offer room and the first 10,000
placements are timed while the rest of the queue waits.

Prints the machine and the command. Heavy: not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/throughput.py, imported as a module
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import throughput
from throughput import REGION, Observer, Region, pct, submit_all

from agents.sim import SimulatedNodes
from federation import subjects
from federation.bus import Bus, Delivery
from federation.schemas import Lease, decode


async def _counted(bus: Bus, nodes: int, timeout: float) -> Lease:
    """The lease once the leader counts ``nodes`` nodes (it says so at each renewal)."""
    end = time.monotonic() + timeout
    while True:
        value, _ = await bus.kv_get(subjects.lease_bucket(REGION), subjects.LEADER_KEY)
        lease = decode(Lease, value) if value else None
        if lease is not None and lease.nodes >= nodes:
            return lease
        if time.monotonic() > end:
            raise TimeoutError(f"the leader counts {lease.nodes if lease else 0} of {nodes} nodes")
        await asyncio.sleep(0.2)  # sleep-ok: polling the lease, renewed every couple of seconds


def _node_writes(region: Region) -> int:
    """Heartbeats and offers stored so far (the two streams' last sequences)."""
    traffic = region.traffic()
    return sum(traffic.get(f"stream {s}", 0) for s in (f"fed-{REGION}-heartbeats", f"fed-{REGION}-offers"))


async def nodes_run(nodes: int, jobs: int, cores: int, interval: float = 2.0) -> dict[str, float]:
    """Placements of ``jobs`` one-core jobs in a region of ``nodes`` simulated nodes."""
    base = Path(tempfile.mkdtemp(prefix="fed-scale-"))
    region = Region(base)
    try:
        await region.start()
        bus = await Bus.connect(region.url, "scale")
        sim = SimulatedNodes(bus, REGION, nodes, cores=cores, max_allocations=cores, interval=interval)
        started = time.monotonic()
        await sim.start()
        lease = await _counted(bus, nodes, timeout=300)
        ready = time.monotonic() - started
        observer = Observer()
        await bus.subscribe(f"$KV.{subjects.jobs_bucket(REGION)}.>", observer.on_record)
        scheduler = psutil.Process(next(c.pid for c in region.children if c.name == "scheduler"))
        cpu0, writes0 = sum(scheduler.cpu_times()[:2]), _node_writes(region)
        t0 = time.time()
        sent = await submit_all(bus, jobs, ["true"], "p")
        await observer.wait(observer.placed, jobs, timeout=900)
        t1 = max(observer.placed.values())
        cpu1, writes1 = sum(scheduler.cpu_times()[:2]), _node_writes(region)
        latencies = [observer.placed[j] - sent[j] for j in sent]
        rss = scheduler.memory_info().rss
        await sim.stop()
        await bus.close()
        return {
            "nodes": nodes,
            "ready_s": ready,
            "heartbeat_s": lease.heartbeat,
            "placements_per_s": jobs / (t1 - t0),
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "node_writes_per_s": (writes1 - writes0) / (t1 - t0),
            "scheduler_cpu_us": (cpu1 - cpu0) * 1e6 / jobs,
            "scheduler_rss_mib": rss / 1024**2,
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


class Seen:
    """Counts the jobs whose record was written at least once (any state)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def on_record(self, delivery: Delivery) -> None:
        self.ids.add(delivery.subject.rsplit(".", 1)[-1])

    async def reach(self, n: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while len(self.ids) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"only {len(self.ids)} of {n} records after {timeout}s")
            await asyncio.sleep(0.2)  # sleep-ok: polling a counter the subscription fills


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


async def _log_line(path: Path, text: str, timeout: float) -> float:
    """When (monotonic) ``text`` first appears in the log at ``path``."""
    end = time.monotonic() + timeout
    while text not in await asyncio.to_thread(_text, path):
        if time.monotonic() > end:
            raise TimeoutError(f"{text!r} not in {path} after {timeout}s")
        await asyncio.sleep(0.05)  # sleep-ok: polling a log file
    return time.monotonic()


async def queue_run(jobs: int, nodes: int, cores: int, placed: int) -> dict[str, float]:
    """A region with ``jobs`` pending jobs and no capacity: the scheduler's memory, a new leader's
    recovery, then the placement rate once ``nodes`` simulated nodes offer room."""
    base = Path(tempfile.mkdtemp(prefix="fed-scale-"))
    region = Region(base)
    try:
        await region.start()
        bus = await Bus.connect(region.url, "scale")
        await _counted(bus, 0, timeout=60)  # the leader leads (its memory is read from here on)
        seen = Seen()
        await bus.subscribe(f"$KV.{subjects.jobs_bucket(REGION)}.>", seen.on_record)
        scheduler = psutil.Process(next(c.pid for c in region.children if c.name == "scheduler"))
        rss0 = scheduler.memory_info().rss
        t0 = time.monotonic()
        await submit_all(bus, jobs, ["true"], "q")
        submitted = time.monotonic() - t0
        await seen.reach(jobs, timeout=1800)
        queued = time.monotonic() - t0
        rss1 = scheduler.memory_info().rss
        # a new leader: the old one stops, a new process reads every record (its log says when)
        old = next(c for c in region.children if c.name == "scheduler")
        assert old.process is not None
        old.process.terminate()
        old.process.wait(timeout=60)
        log = base / "scheduler-2.log"
        t_start = time.monotonic()
        region.spawn(
            "scheduler-2",
            *("scheduler", "--region", REGION, "--url", region.url, "--log-level", "info"),
        )
        t_recovered = await _log_line(log, '"recovered"', timeout=600)
        second = psutil.Process(next(c.pid for c in region.children if c.name == "scheduler-2"))
        rss2 = second.memory_info().rss
        # capacity frees: placements while the queue is long
        observer = Observer()
        await bus.subscribe(f"$KV.{subjects.jobs_bucket(REGION)}.>", observer.on_record)
        sim = SimulatedNodes(bus, REGION, nodes, cores=cores, max_allocations=cores, complete=True)
        t_room = time.time()
        await sim.start()
        await observer.wait(observer.placed, placed, timeout=900)
        t_placed = sorted(observer.placed.values())[placed - 1]
        await sim.stop()
        await bus.close()
        return {
            "jobs": jobs,
            "submit_per_s": jobs / submitted,
            "queued_s": queued,
            "rss_before_mib": rss0 / 1024**2,
            "rss_after_mib": rss1 / 1024**2,
            "bytes_per_job": (rss1 - rss0) / jobs,
            "recovery_s": t_recovered - t_start,
            "recovered_rss_mib": rss2 / 1024**2,
            "placed": placed,
            "placements_per_s": placed / (t_placed - t_room),
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


def _line(r: dict[str, float], base: dict[str, float]) -> str:
    return (
        f"  {int(r['nodes']):>6} nodes: {r['placements_per_s']:,.0f} placements/s "
        f"({r['placements_per_s'] / base['placements_per_s']:.2f}x of {int(base['nodes'])}), "
        f"burst p50 {r['p50_ms']:.0f} ms p99 {r['p99_ms']:.0f} ms "
        f"({r['p99_ms'] / base['p99_ms']:.2f}x); heartbeat every {r['heartbeat_s']:g} s, "
        f"{r['node_writes_per_s']:,.0f} node writes/s; scheduler {r['scheduler_cpu_us']:.0f} us CPU per "
        f"placement, {r['scheduler_rss_mib']:.0f} MiB; all nodes counted after {r['ready_s']:.1f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nodes", default="50,10000", help="node counts, comma-separated (the first is the base)"
    )
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--cores", type=int, default=256, help="cores each simulated node offers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--node-interval",
        type=float,
        default=2.0,
        help="the simulated nodes beat and offer at most this often (600: quiet nodes, to tell the "
        "cost of node traffic from that of the node count)",
    )
    parser.add_argument("--part", choices=("nodes", "queue", "all"), default="all")
    parser.add_argument("--queue", type=int, default=100_000, help="pending jobs for the queue part")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    print(f"machine: {throughput.machine()}")
    print(f"command: python bench/scale.py {' '.join(sys.argv[1:])}".rstrip())
    if args.part in ("queue", "all"):
        q = await queue_run(args.queue, nodes=100, cores=64, placed=min(args.queue, 10_000))
        print(
            f"queue: {q['jobs']:,} pending jobs submitted at {q['submit_per_s']:,.0f}/s, all recorded "
            f"after {q['queued_s']:.0f} s; scheduler RSS {q['rss_before_mib']:.0f} -> "
            f"{q['rss_after_mib']:.0f} MiB ({q['bytes_per_job']:,.0f} bytes per pending job); a new "
            f"leader recovered every record in {q['recovery_s']:.1f} s (from its process start; RSS "
            f"{q['recovered_rss_mib']:.0f} MiB); then {q['placed']:,} placed at "
            f"{q['placements_per_s']:,.0f}/s once 100 nodes x 64 cores offered room",
            flush=True,
        )
    if args.part == "queue":
        return
    for round_ in range(1, args.rounds + 1):
        print(f"round {round_}: {args.jobs} one-core jobs, {args.cores} cores per node")
        results = []
        for n in counts:
            results.append(await nodes_run(n, args.jobs, args.cores, args.node_interval))
            print(_line(results[-1], results[0]), flush=True)


if __name__ == "__main__":
    throughput.AUTH = False
    asyncio.run(main())
