"""Placement and end-to-end throughput of one region (real nats-server, real scheduler process).

    python bench/throughput.py                       # both parts, default sizes
    python bench/throughput.py --placements 20000 --e2e 2000

Part 1 (placements): simulated nodes (agents/sim.py) offer capacity; N one-core jobs are submitted
pipelined; the scheduler claims each by compare-and-set on a node ledger (a durable JetStream
write) and writes the job record. Reported: placements per second (first submit to last record
seen as placed) and submit-to-placed latency p50/p99.

Part 2 (end to end): 4 real agent processes with 8 slots each run N jobs of `true`. Reported:
jobs per second (first submit to last terminal record) and submit-to-start latency p50/p99 (the
agent's `started` report time minus the submit time).

Every job record write is observed on core NATS (`$KV.fed-jobs-<region>.>`), so the measurement
adds no load to the scheduler's path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import msgspec
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agents.sim import SimulatedNodes  # noqa: E402 - after the sys.path line above
from federation import subjects  # noqa: E402 - after the sys.path line above
from federation.bus import (  # noqa: E402 - after the sys.path line above
    Bus,
    Delivery,
)
from federation.identity import TlsFiles, use_credentials, use_tls  # noqa: E402
from federation.ops.auth import accounts  # noqa: E402
from federation.ops.deploy import Server, server_config  # noqa: E402
from federation.ops.keyring import Keyring  # noqa: E402
from federation.ops.launcher import Child, fed_command, nats_server_binary, read_ports  # noqa: E402
from federation.ops.pki import local_authority  # noqa: E402
from federation.ops.provision import provision, wait_for_jetstream  # noqa: E402
from federation.schemas import TERMINAL_STATES, JobEvent, Submit, decode_message, encode  # noqa: E402 - after the sys.path line above

REGION = "bench"
TLS = False  # --tls
AUTH = False  # --auth
CONFINE = False  # --confine-writes
ISOLATION = "auto"  # --isolation: a cgroup per attempt where the agents may write one


class Region:
    """One nats-server and one scheduler process in a temporary directory."""

    def __init__(self, base: Path, durable: bool = False) -> None:
        self.base = base
        self.durable = durable
        self.server_tls: TlsFiles | None = None
        self.tls: TlsFiles | None = None
        if TLS:  # a local CA; this process and every daemon connect with its client certificate
            self.server_tls, self.tls = local_authority(base / "tls")
            use_tls(self.tls)
        self.keyring: Keyring | None = None
        if AUTH:  # an nkey per process; the scheduler and each agent with only their role's permissions
            self.keyring = Keyring(base / "creds")
            self.keyring.add("admin", "admin")
            self.keyring.add("scheduler", REGION)
            for i in range(64):
                self.keyring.add("agent", f"node-{i}", REGION)
            use_credentials(self.keyring.credentials("admin", "admin"))
        self.children: list[Child] = []
        self.url = ""
        self.monitoring = ""

    async def start(self) -> None:
        ports_dir = self.base / "ports"
        ports_dir.mkdir(parents=True)
        conf = self.base / "nats.conf"
        conf.write_text(
            server_config(
                Server(
                    name=REGION,
                    domain=REGION,
                    store_dir=str(self.base / "store"),
                    ports_dir=str(ports_dir),
                    sync_always=self.durable,
                    tls=self.server_tls,
                    accounts=accounts(self.keyring.identities(), [REGION], REGION) if self.keyring else "",
                )
            )
        )
        server = Child(
            "nats",
            [nats_server_binary(), "-c", str(conf)],
            self.base / "nats.log",
            restart=False,
            server=True,  # as `fed up` starts its servers
        )
        server.start()
        self.children.append(server)
        ports = await read_ports(ports_dir, server)
        self.url, self.monitoring = ports["nats"][0], ports["monitoring"][0]
        await wait_for_jetstream(self.url, tls=self.tls)
        bus = await Bus.connect(self.url, "bench-provision")
        await provision(bus, REGION)
        await bus.close()
        self.spawn(
            "scheduler",
            *("scheduler", "--region", REGION, "--url", self.url, "--log-level", "warning"),
            identity=("scheduler", REGION),
        )

    def spawn(self, name: str, *args: str, identity: tuple[str, ...] = ()) -> Child:
        if self.keyring is not None and identity:
            args = (*args, "--creds", str(self.keyring.path(*identity)))
        if self.tls is not None:
            args = (*args, "--tls-ca", self.tls.ca, "--tls-cert", self.tls.cert, "--tls-key", self.tls.key)
        child = Child(name, fed_command(*args), self.base / f"{name}.log", restart=False)
        child.start()
        self.children.append(child)
        return child

    def cpu_seconds(self) -> dict[str, tuple[float, float]]:
        """CPU time (user+system) used so far by each child process: its own, and its reaped
        children's (an agent's workloads); and this process's own, as ``driver``."""
        mine = psutil.Process().cpu_times()
        out = {DRIVER: (mine.user + mine.system, 0.0)}
        for child in self.children:
            try:
                times = psutil.Process(child.pid).cpu_times()
                out[child.name] = (times.user + times.system, times.children_user + times.children_system)
            except psutil.Error:
                pass
        return out

    def traffic(self) -> dict[str, int]:
        """The server's message counters (in from clients, out to them) and each stream's last
        sequence (every durable write, a KV overwrite included)."""
        varz = json.loads(urllib.request.urlopen(f"{self.monitoring}/varz", timeout=5).read())
        jsz = json.loads(urllib.request.urlopen(f"{self.monitoring}/jsz?streams=true", timeout=5).read())
        out = {"in": int(varz["in_msgs"]), "out": int(varz["out_msgs"])}
        for account in jsz.get("account_details", []):
            for stream in account.get("stream_detail", []):
                out[f"stream {stream['name']}"] = int(stream["state"]["last_seq"])
        return out

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.alive() and child.process is not None:
                child.process.terminate()
                try:
                    child.process.wait(timeout=15)
                except Exception:
                    child.process.kill()


DRIVER = "driver"  # this process (submitting, watching the records), reported apart


def cpu_report(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], n: int) -> str:
    """Milliseconds of CPU per job over the measured run, by process (the federation's own) and,
    apart, its workloads' (the agents' reaped children)."""
    own = {k: (after[k][0] - before.get(k, (0.0, 0.0))[0]) * 1000 / n for k in after}
    kids = sum(after[k][1] - before.get(k, (0.0, 0.0))[1] for k in after) * 1000 / n
    driver = own.pop(DRIVER, 0.0)
    agents = sum(v for k, v in own.items() if k.startswith("agent"))
    parts = [f"{k}={v:.2f}" for k, v in own.items() if not k.startswith("agent")]
    return (
        f"  cpu ms per job: federation {sum(own.values()):.2f} ({', '.join(parts)}, agents={agents:.2f}); "
        f"workloads {kids:.2f}; this driver {driver:.2f}"
    )


def traffic_report(before: dict[str, int], after: dict[str, int], n: int) -> str:
    """Messages through the server and durable writes per job over the measured run."""
    per = {k: (after[k] - before.get(k, 0)) / n for k in after}
    writes = {k.removeprefix("stream "): v for k, v in per.items() if k.startswith("stream ") and v >= 0.01}
    return (
        f"  per job: {per['in']:.1f} messages in, {per['out']:.1f} out; durable writes "
        f"{sum(writes.values()):.1f} ({', '.join(f'{k}={v:.2f}' for k, v in sorted(writes.items()))})"
    )


class _Seen(msgspec.Struct):
    """What the observer reads of a job record: the rest is skipped by the decoder, not built (the
    driver shares the machine with what it measures)."""

    id: str
    state: str


_SEEN = msgspec.json.Decoder(_Seen)


class Observer:
    """Sees every job record write; remembers when each job was first placed / terminal."""

    def __init__(self) -> None:
        self.placed: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_record(self, delivery: Delivery) -> None:
        now = time.time()
        record = _SEEN.decode(delivery.data)
        terminal = record.state in TERMINAL_STATES
        if record.state in ("placed", "running") or terminal:
            self.placed.setdefault(record.id, now)
        if terminal:
            self.done.setdefault(record.id, now)
        self.changed.set()

    async def wait(self, table: dict[str, float], n: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while len(table) < n:
            if time.monotonic() > end:
                raise TimeoutError(f"only {len(table)} of {n} after {timeout}s")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.changed.wait()


async def submit_all(bus: Bus, n: int, command: list[str], prefix: str) -> dict[str, float]:
    """Submit ``n`` jobs pipelined in windows of 256; returns each job's submit time."""
    sent: dict[str, float] = {}
    window = 256
    for start in range(0, n, window):
        batch = []
        for i in range(start, min(n, start + window)):
            job = f"{prefix}-{i}"
            now = time.time()
            spec = Submit(id=job, command=command, cpu=1, submitted_at=now)
            sent[job] = now
            batch.append(bus.store(subjects.submit(REGION, job), encode(spec), msg_id=job))
        await asyncio.gather(*batch)
    return sent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def placements(n: int, nodes: int, durable: bool = False, idle: int = 200) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="fed-bench-"))
    region = Region(base, durable)
    try:
        await region.start()
        bus = await Bus.connect(region.url, "bench")
        sim = SimulatedNodes(bus, REGION, nodes, cores=(n + 400) // nodes + 1, max_allocations=n + 400)
        await sim.start()
        observer = Observer()
        await bus.subscribe(f"$KV.{subjects.jobs_bucket(REGION)}.>", observer.on_record)
        await asyncio.sleep(1.0)  # let the scheduler see the offers before the clock starts
        before = region.cpu_seconds()
        t0 = time.time()
        sent = await submit_all(bus, n, ["true"], "p")
        t_submitted = time.time()
        await observer.wait(observer.placed, n, timeout=600)
        t1 = max(observer.placed.values())
        latencies = [observer.placed[j] - sent[j] for j in sent]
        print(cpu_report(before, region.cpu_seconds(), n))
        # unloaded: one job at a time, each waited for
        single: list[float] = []
        for i in range(idle):
            one = await submit_all(bus, 1, ["true"], f"s{i}")
            await observer.wait(observer.placed, n + i + 1, timeout=60)
            job = next(iter(one))
            single.append(observer.placed[job] - one[job])
        await sim.stop()
        await bus.close()
        return {
            "jobs": n,
            "nodes": nodes,
            "submit_per_s": n / (t_submitted - t0),
            "placements_per_s": n / (t1 - t0),
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "idle_p50_ms": pct(single, 0.5) if single else 0.0,
            "idle_p99_ms": pct(single, 0.99) if single else 0.0,
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


async def end_to_end(
    n: int, agents: int, slots: int, durable: bool = False, idle: int = 100
) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="fed-bench-"))
    region = Region(base, durable)
    try:
        await region.start()
        for i in range(agents):
            region.spawn(
                f"agent-{i}",
                "agent",
                "--region",
                REGION,
                "--node",
                f"node-{i}",
                "--url",
                region.url,
                "--cpu",
                str(slots),
                "--memory",
                "8GiB",
                "--max-allocations",
                str(slots),
                "--state-dir",
                str(base / f"agent-{i}"),
                "--log-level",
                "warning",
                *(["--confine-writes"] if CONFINE else []),
                "--isolation",
                ISOLATION,
                identity=("agent", f"node-{i}", REGION),
            )
        bus = await Bus.connect(region.url, "bench")
        observer = Observer()
        await bus.subscribe(f"$KV.{subjects.jobs_bucket(REGION)}.>", observer.on_record)
        # wait until every agent has offered
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            offers = [
                await bus.last(subjects.offers_stream(REGION), subjects.offer(REGION, f"node-{i}"))
                for i in range(agents)
            ]
            if all(offers):
                break
            await asyncio.sleep(0.2)
        before, counted = region.cpu_seconds(), region.traffic()
        t0 = time.time()
        sent = await submit_all(bus, n, ["true"], "e")
        await observer.wait(observer.done, n, timeout=900)
        t1 = max(observer.done.values())
        report = (
            cpu_report(before, region.cpu_seconds(), n) + "\n" + traffic_report(counted, region.traffic(), n)
        )
        # unloaded: one job at a time, each waited for
        single: dict[str, float] = {}
        for i in range(idle):
            single.update(await submit_all(bus, 1, ["true"], f"i{i}"))
            await observer.wait(observer.done, n + i + 1, timeout=60)
        started: dict[str, float] = {}
        async for item in bus.follow(
            subjects.status_stream(REGION), subjects.job_event(REGION, "*", "*"), until_caught_up=True
        ):
            event = decode_message(item.data)
            if isinstance(event, JobEvent) and event.kind == "started":
                started.setdefault(event.job, event.at)
            elif isinstance(event, JobEvent) and event.kind == "exited" and event.started_at:
                started.setdefault(event.job, event.started_at)  # a short job's one report
        latencies = [started[j] - sent[j] for j in sent if j in started]
        one_at_a_time = [started[j] - single[j] for j in single if j in started]
        await bus.close()
        print(report)
        return {
            "jobs": n,
            "agents": agents,
            "slots": slots,
            "jobs_per_s": n / (t1 - t0),
            "p50_ms": pct(latencies, 0.5),
            "p99_ms": pct(latencies, 0.99),
            "started": len(started),
            "idle_p50_ms": pct(one_at_a_time, 0.5) if one_at_a_time else 0.0,
            "idle_p99_ms": pct(one_at_a_time, 0.99) if one_at_a_time else 0.0,
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


def machine() -> str:
    return (
        f"{platform.system()} {platform.release()}, {psutil.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable), {psutil.virtual_memory().total / 1024**3:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def announce() -> None:
    """Print the machine and the command that ran, as every benchmark's report begins."""
    print(f"machine: {machine()}")
    print(f"command: python bench/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".rstrip(), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--placements", type=int, default=10000, help="jobs for part 1 (0 skips it)")
    parser.add_argument("--nodes", type=int, default=50, help="simulated nodes for part 1")
    parser.add_argument("--e2e", type=int, default=2000, help="jobs for part 2 (0 skips it)")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--tls", action="store_true", help="TLS with client certificates on every connection")
    parser.add_argument(
        "--auth", action="store_true", help="an nkey and role permissions per process (fed up's default)"
    )
    parser.add_argument(
        "--confine-writes", action="store_true", help="agents confine workloads' writes (Landlock)"
    )
    parser.add_argument(
        "--isolation", choices=["auto", "cgroups", "none"], default="auto", help="agents' --isolation"
    )
    args = parser.parse_args()
    global TLS, AUTH, CONFINE, ISOLATION
    TLS, AUTH, CONFINE, ISOLATION = args.tls, args.auth, args.confine_writes, args.isolation
    announce()
    if args.placements:
        r = await placements(args.placements, args.nodes)
        print(
            f"placements: {r['jobs']} jobs on {r['nodes']} simulated nodes: "
            f"{r['placements_per_s']:.0f} placements/s (submitted at {r['submit_per_s']:.0f}/s); "
            f"submit-to-placed p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms (burst); "
            f"one at a time p50 {r['idle_p50_ms']:.1f} ms, p99 {r['idle_p99_ms']:.1f} ms"
        )
    if args.e2e:
        r = await end_to_end(args.e2e, args.agents, args.slots)
        print(
            f"end-to-end: {r['jobs']} jobs of `true` on {r['agents']} agents x {r['slots']} slots: "
            f"{r['jobs_per_s']:.0f} jobs/s; "
            f"submit-to-start p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms (burst); "
            f"one at a time p50 {r['idle_p50_ms']:.1f} ms, p99 {r['idle_p99_ms']:.1f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
