"""How the federation scales: many nodes in one region, a long queue, many regions (issue 21).

    python bench/scale.py                        # all parts: --nodes 50,10000 --jobs 10000 --rounds 2
    python bench/scale.py --part nodes --nodes 50,1000,5000,10000 --rounds 1
    python bench/scale.py --part queue --queue 100000
    python bench/scale.py --part regions --regions 5,10,20 --window 60

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
pending, the scheduler's resident memory before and after (bytes per pending job), how long
``fed jobs`` takes to read its page of the 100 newest records (and, to compare, every record), then a new
leader (the first stopped, a new process started) until it logs ``recovered`` (it has read and
restamped every record), then 100 simulated nodes x 64 cores offer room and the first 10,000
placements are timed while the rest of the queue waits.

**Regions.** A local federation of N regions as ``fed up`` runs it (a hub; per region a nats-server,
a scheduler and one agent of 2 cores; authentication on). Once every region's views of all the
others are fresh, they are read every second for ``--window`` seconds: the oldest view seen (and
views missing), the CPU of the hub's server, the region servers, schedulers and agents, the hub's
messages and bytes, and how many stream sources the regions' views streams hold. Then the first
region's node is filled and a one-core job submitted there: where it ran and how long it took.

Prints the machine and the command. Heavy: not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from federation.audit.verify import verify
from federation.bus import Bus, Delivery
from federation.client import Client
from federation.errors import NotFound
from federation.ops.launcher import Federation, Options
from federation.ops.monitor import monitoring
from federation.schemas import Lease, decode

FRESH = 5.0  # seconds: a view older than this is stale (the bound for twenty regions)


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


async def queue_run(jobs: int, nodes: int, cores: int, placed: int) -> dict[str, float | str]:
    """A region with ``jobs`` pending jobs and no capacity: the scheduler's memory, a new leader's
    recovery and the verification of its journal, then the placement rate once ``nodes`` simulated
    nodes offer room."""
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
        # what fed jobs reads: a page of the newest records, against every record
        t_page = time.perf_counter()
        page, _ = await bus.kv_recent(subjects.jobs_bucket(REGION), limit=100)
        page_s = time.perf_counter() - t_page
        t_all = time.perf_counter()
        every = await bus.kv_load(subjects.jobs_bucket(REGION))
        all_s = time.perf_counter() - t_all
        assert len(page) == 100, len(page)
        assert len(every) >= jobs, len(every)
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
        # fed audit verify: both leaders' lives re-run, the recovery snapshot joined from its parts
        t_verify = time.perf_counter()
        verified = await verify(bus, subjects.audit_stream(REGION), [REGION])
        verify_s = time.perf_counter() - t_verify
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
            "page_ms": page_s * 1000,
            "all_s": all_s,
            "recovery_s": t_recovered - t_start,
            "recovered_rss_mib": rss2 / 1024**2,
            "verified": "ok" if verified.ok else f"NOT ok: {verified.unverifiable[:1]}",
            "verify_s": verify_s,
            "verify_steps": verified.steps,
            "placed": placed,
            "placements_per_s": placed / (t_placed - t_room),
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


def _region_names(n: int) -> list[str]:
    return [f"r{i:02d}" for i in range(1, n + 1)]


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes used so far (a vanished one counts 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += sum(psutil.Process(pid).cpu_times()[:2])
    return total


async def _ages(fed: Client, regions: list[str]) -> list[float]:
    """Every region's view of every other: how old each is now (inf: missing)."""
    ages = []
    for region in regions:
        views = await fed.views(region)
        now = time.time()
        ages += [now - views[p].at if p in views else float("inf") for p in regions if p != region]
    return ages


async def _spill(fed: Client, home: str, cpu: int) -> tuple[str, float]:
    """Fill ``home``'s only node, then submit a one-core job there: where it ran and how long
    from its submission to its end."""
    blocker = await fed.submit(["sleep", "120"], region=home, cpu=cpu, job_id=f"fill-{home}")
    end = time.monotonic() + 60
    while (await _record(fed, blocker.id, home)) != "running":
        if time.monotonic() > end:
            raise TimeoutError(f"{home}'s blocker never ran")
        await asyncio.sleep(0.2)  # sleep-ok: polling a record
    t0 = time.monotonic()
    job = await fed.submit(["true"], region=home, cpu=1, job_id=f"spill-{home}")
    final = await job.wait(timeout=120)
    took = time.monotonic() - t0
    await blocker.cancel()
    if final.state != "succeeded":
        raise RuntimeError(f"the spilled job ended {final.state}: {final.reason}")
    return final.region, took


async def _record(fed: Client, job_id: str, region: str) -> str:
    with contextlib.suppress(NotFound):
        return (await fed.job(job_id, region=region)).state
    return ""


async def regions_run(n: int, window: float) -> dict[str, float | str]:
    """A local federation of ``n`` regions (``fed up``'s: a hub, a nats-server, a scheduler and
    one agent of 2 cores per region, authentication on): how fresh every region's views of the
    others stay over ``window`` seconds, what sourcing the summaries costs, and a spillover."""
    regions = _region_names(n)
    base = Path(tempfile.mkdtemp(prefix="fed-regions-"))
    federation = Federation(
        Options(
            state_dir=base, regions=regions, agents=1, capacity={"cpu": 2, "memory": 4 * 1024**3, "gpu": 0}
        )
    )
    try:
        t_start = time.monotonic()
        connection = await federation.start()
        started = time.monotonic() - t_start
        fed = Client(connection, federation.credentials)
        try:
            end = time.monotonic() + 300  # the first views: each source's first summary
            while max(await _ages(fed, regions)) > FRESH:
                if time.monotonic() > end:
                    raise TimeoutError("views not fresh 300 s after the start")
                await asyncio.sleep(0.5)  # sleep-ok: polling the views
            fresh = time.monotonic() - t_start
            hub = [federation.servers["hub"].pid]
            servers = [federation.servers[r].pid for r in regions]
            schedulers = [c.pid for c in federation.daemons if c.name.startswith("scheduler-")]
            agents = [c.pid for c in federation.daemons if c.name.startswith("agent-")]
            groups = {"hub": hub, "servers": servers, "schedulers": schedulers, "agents": agents}
            cpu0 = {k: _cpu(v) for k, v in groups.items()}
            varz0 = await monitoring(federation.monitors["hub"])
            t0 = time.monotonic()
            worst: list[float] = []
            missing = 0
            while time.monotonic() - t0 < window:
                ages = await _ages(fed, regions)
                missing += sum(1 for age in ages if age == float("inf"))
                worst.append(max((age for age in ages if age != float("inf")), default=0.0))
                await asyncio.sleep(1.0)  # sleep-ok: one sample a second
            elapsed = time.monotonic() - t0
            cpu1 = {k: _cpu(v) for k, v in groups.items()}
            varz1 = await monitoring(federation.monitors["hub"])
            sources = 0
            for region in regions:  # what each region's views stream copies from elsewhere
                facts = await (await fed.bus(region)).stream_facts(subjects.views_stream(region))
                sources += len(facts.sources) if facts is not None else 0
            rss = sum(psutil.Process(pid).memory_info().rss for pid in servers) / len(servers)
            spilled, spill_s = await _spill(fed, regions[0], cpu=2)
        finally:
            await fed.close()
        share = {k: (cpu1[k] - cpu0[k]) / elapsed * 100 for k in groups}
        return {
            "regions": n,
            "started_s": started,
            "fresh_s": fresh,
            "max_age_s": max(worst),
            "p50_age_s": sorted(worst)[len(worst) // 2],
            "hub_cpu_pct": share["hub"],
            "server_cpu_pct": share["servers"] / n,
            "scheduler_cpu_pct": share["schedulers"] / n,
            "agent_cpu_pct": share["agents"] / n,
            "missing": missing,
            "hub_in_per_s": (varz1["in_msgs"] - varz0["in_msgs"]) / elapsed,
            "hub_out_per_s": (varz1["out_msgs"] - varz0["out_msgs"]) / elapsed,
            "hub_out_kib_per_s": (varz1["out_bytes"] - varz0["out_bytes"]) / elapsed / 1024,
            "sources": sources,
            "server_rss_mib": rss / 1024**2,
            "spilled_to": spilled,
            "spill_s": spill_s,
        }
    finally:
        await federation.stop()
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


def _regions_line(r: dict[str, float | str]) -> str:
    return (
        f"  {r['regions']:>3} regions: views max age {r['max_age_s']:.1f} s (median of the per-second "
        f"worst {r['p50_age_s']:.1f} s, {r['missing']} views missing in all samples); hub nats-server "
        f"{r['hub_cpu_pct']:.1f}% CPU, {r['hub_in_per_s']:,.0f} msgs in/s, {r['hub_out_per_s']:,.0f} "
        f"out/s ({r['hub_out_kib_per_s']:,.0f} KiB/s); {r['sources']} stream sources; per region: "
        f"nats-server {r['server_cpu_pct']:.2f}% CPU, {r['server_rss_mib']:.0f} MiB, scheduler "
        f"{r['scheduler_cpu_pct']:.2f}%, agent {r['agent_cpu_pct']:.2f}%; spillover from r01 ran in "
        f"{r['spilled_to']} after {r['spill_s'] * 1000:.0f} ms; up in {r['started_s']:.0f} s, views "
        f"fresh after {r['fresh_s']:.0f} s"
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
    parser.add_argument("--part", choices=("nodes", "queue", "regions", "all"), default="all")
    parser.add_argument(
        "--regions", default="5,10,20", help="region counts for the regions part, comma-separated"
    )
    parser.add_argument("--window", type=float, default=60.0, help="seconds the views are watched")
    parser.add_argument("--queue", type=int, default=100_000, help="pending jobs for the queue part")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    throughput.announce()
    if args.part in ("queue", "all"):
        q = await queue_run(args.queue, nodes=100, cores=64, placed=min(args.queue, 10_000))
        print(
            f"queue: {q['jobs']:,} pending jobs submitted at {q['submit_per_s']:,.0f}/s, all recorded "
            f"after {q['queued_s']:.0f} s; scheduler RSS {q['rss_before_mib']:.0f} -> "
            f"{q['rss_after_mib']:.0f} MiB ({q['bytes_per_job']:,.0f} bytes per pending job); fed jobs' "
            f"page of the 100 newest read in {q['page_ms']:.0f} ms (every record: {q['all_s']:.1f} s); a new "
            f"leader recovered every record in {q['recovery_s']:.1f} s (from its process start; RSS "
            f"{q['recovered_rss_mib']:.0f} MiB); fed audit verify {q['verified']} ({q['verify_steps']:,} "
            f"steps re-run in {q['verify_s']:.1f} s); then {q['placed']:,} placed at "
            f"{q['placements_per_s']:,.0f}/s once 100 nodes x 64 cores offered room",
            flush=True,
        )
    if args.part in ("regions", "all"):
        for n in (int(n) for n in args.regions.split(",")):
            print(_regions_line(await regions_run(n, args.window)), flush=True)
    if args.part in ("queue", "regions"):
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
