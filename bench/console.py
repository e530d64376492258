"""What a web console watching the region costs the scheduler (issue 19: its live updates at a
thousand job changes a second must not slow the scheduler).

    python bench/console.py                                  # 3 rounds, default sizes
    python bench/console.py --placements 5000 --e2e 1000 --rounds 3
    python bench/console.py --placements 0 --e2e 0 --paced 1000 --seconds 10   # at a steady rate

Runs bench/throughput.py's two workloads (placements on simulated nodes; end to end on real agents
running `true`) with and without a console, alternated back to back (the order swaps every round),
and prints each round's ratio of with to without. *With*: a ``fed console`` process watches the
region (batched direct gets of its buckets and streams every second), and a viewer process
of its own keeps three pages open on live updates (the federation, the region, the jobs table),
reading every update the console sends, for the whole run: a busy console, on the same two cores.
*Without*: neither runs.

``--paced RATE`` runs a third workload: jobs submitted at a steady RATE a second for
``--seconds`` on simulated nodes (the issue's "a thousand jobs a second"), reporting the
scheduler's submit-to-placed latency (p50, p99) and its CPU milliseconds per job, with and without
the console; at a steady rate a slower scheduler shows as latency and CPU, not as a lower rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/throughput.py, imported as a module

import throughput
from alternating import both_workloads, workload_arguments

from federation.config import Connection, RegionEndpoint

PAGES = ("/", f"/regions/{throughput.REGION}", "/jobs")


class Watching:
    """Starts a console (and a viewer of three live pages) beside the region bench/throughput.py
    starts, when ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.updates = 0
        self.bytes = 0
        self.stats: Path | None = None
        self._start = throughput.Region.start
        watching = self

        async def start(region: throughput.Region) -> None:
            await watching._start(region)
            if not watching.on:
                return
            connection = Connection(
                hub_url=region.url, regions={throughput.REGION: RegionEndpoint(url=region.url)}
            )
            path = region.base / "federation.json"
            path.write_bytes(msgspec.json.encode(connection))
            port = free_port()
            region.spawn("console", "console", "--connection", str(path), "--listen", f"127.0.0.1:{port}")
            assert watching.stats is not None
            argv = [sys.executable, __file__, "--view", f"http://127.0.0.1:{port}", str(watching.stats)]
            region.children.append(
                throughput.Child("viewer", argv, region.base / "viewer.log", restart=False)
            )
            region.children[-1].start()
            await ready(f"http://127.0.0.1:{port}", watching.stats)  # watching before the work starts

        throughput.Region.start = start  # type: ignore[method-assign]  # the bench's own hook

    async def run(self, on: bool, work: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
        base = Path(tempfile.mkdtemp(prefix="fed-bench-console-"))
        self.on, self.stats = on, base / "stats"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return await work()
        finally:
            self.on = False
            with contextlib.suppress(FileNotFoundError, ValueError):
                updates, size = self.stats.read_text().split()
                self.updates += int(updates)
                self.bytes += int(size)
            shutil.rmtree(base, ignore_errors=True)


async def ready(console: str, stats: Path, deadline: float = 60.0) -> None:
    """Until the console has read the region whole and the viewer holds every page open."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await asyncio.to_thread(_ready, console, stats):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the console at {console} or its viewer did not start")


def _ready(console: str, stats: Path) -> bool:
    try:
        with urllib.request.urlopen(f"{console}/healthz", timeout=2) as answer:
            return answer.status == 200 and int(stats.read_text().split()[0]) >= len(PAGES)
    except (OSError, ValueError, IndexError):
        return False


def view_forever(console: str, stats: Path) -> None:
    """The viewer: keep each page's live updates open (reconnecting while the console starts) and
    count the updates and bytes read, written to ``stats`` ten times a second."""
    counts = [0, 0]
    lock = threading.Lock()

    def follow(page: str) -> None:
        url = f"{console}/live?path={urllib.request.quote(page)}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    for line in response:
                        with lock:
                            counts[1] += len(line)
                            counts[0] += line.startswith(b"event: page")
            except OSError:
                time.sleep(0.2)

    for page in PAGES:
        threading.Thread(target=follow, args=(page,), daemon=True).start()
    while True:
        time.sleep(0.1)
        with lock:
            stats.write_text(f"{counts[0]} {counts[1]}\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def paced(rate: int, seconds: float, nodes: int) -> dict[str, float]:
    """Jobs submitted at ``rate`` a second for ``seconds``: placement latency and scheduler CPU."""
    n = int(rate * seconds)
    base = Path(tempfile.mkdtemp(prefix="fed-bench-paced-"))
    region = throughput.Region(base)
    try:
        await region.start()
        bus = await throughput.Bus.connect(region.url, "bench")
        sim = throughput.SimulatedNodes(
            bus, throughput.REGION, nodes, cores=(n + 400) // nodes + 1, max_allocations=n + 400
        )
        await sim.start()
        observer = throughput.Observer()
        await bus.subscribe(f"$KV.{throughput.subjects.jobs_bucket(throughput.REGION)}.>", observer.on_record)
        await asyncio.sleep(1.0)  # sleep-ok: let the scheduler see the offers before the clock starts
        before = region.cpu_seconds()
        sent: dict[str, float] = {}
        step = 0.05  # seconds between two bursts of rate * step jobs
        start = time.monotonic()
        for tick in range(int(seconds / step)):
            await asyncio.sleep(max(0.0, start + tick * step - time.monotonic()))  # sleep-ok: the pace
            sent.update(await throughput.submit_all(bus, int(rate * step), ["true"], f"t{tick}"))
        await observer.wait(observer.placed, len(sent), timeout=600)
        after = region.cpu_seconds()
        latencies = [observer.placed[j] - sent[j] for j in sent]
        scheduler = (after["scheduler"][0] - before["scheduler"][0]) * 1000 / len(sent)
        await sim.stop()
        await bus.close()
        return {
            "p50_ms": throughput.pct(latencies, 0.5),
            "p99_ms": throughput.pct(latencies, 0.99),
            "scheduler_cpu_ms": scheduler,
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


async def main() -> None:
    if sys.argv[1:2] == ["--view"]:  # the viewer process (see Watching)
        view_forever(sys.argv[2], Path(sys.argv[3]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    workload_arguments(parser)
    parser.add_argument("--paced", type=int, default=0, help="jobs a second of the paced workload (0 skips)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the paced workload submits")
    args = parser.parse_args()
    throughput.announce()
    watching = Watching()
    summary = await both_workloads(watching.run, args, "with a console watching")
    if args.paced:
        for i in range(args.rounds):
            result = {}
            for on in (False, True) if i % 2 == 0 else (True, False):
                result[on] = await watching.run(on, lambda: paced(args.paced, args.seconds, args.nodes))
            off, with_ = result[False], result[True]
            print(
                f"  paced {args.paced}/s round {i + 1}: submit-to-placed p50/p99 without "
                f"{off['p50_ms']:.0f}/{off['p99_ms']:.0f} ms, with a console {with_['p50_ms']:.0f}/"
                f"{with_['p99_ms']:.0f} ms; scheduler cpu per job without {off['scheduler_cpu_ms']:.2f} ms, "
                f"with {with_['scheduler_cpu_ms']:.2f} ms",
                flush=True,
            )
    print("; ".join(summary))
    print(f"live updates read by the viewer: {watching.updates} ({watching.bytes / 1e6:.1f} MB)")


if __name__ == "__main__":
    asyncio.run(main())
