"""What scraping every daemon's ``/metrics`` once a second costs (issue 19's target: under 2%).

    python bench/metrics.py                                  # 3 rounds, default sizes
    python bench/metrics.py --placements 5000 --e2e 1000 --rounds 3

Runs bench/throughput.py's two workloads (placements on simulated nodes; end to end on real agents
running `true`) with and without metrics, alternated back to back (the order swaps every round, so
a drift of the machine is not charged to one side), and prints each round's ratio of with to
without. *With*: the scheduler and every agent get ``--metrics 127.0.0.1:PORT``, and a process of
its own fetches each one's ``/metrics`` once a second (as Prometheus would, but on the same two
cores here), for the whole run. *Without*: no ``--metrics`` flag, nothing served, nothing scraped.
The daemons' counters and histograms, and the leader's once-a-second computation of the region's
state, are always on (they are not optional), so both sides pay for them: this measures serving
and scraping.
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
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/throughput.py, imported as a module

import throughput
from alternating import both_workloads, workload_arguments

SCRAPE_EVERY = 1.0  # seconds, as a typical Prometheus scrape interval (15 s) made 15 times harsher


class Scraper:
    """Adds ``--metrics`` to the daemons bench/throughput.py starts, and has them scraped once a
    second by a process of its own (as Prometheus would: not in the process that measures)."""

    def __init__(self) -> None:
        self.targets: Path | None = None  # the scraping process reads the URLs from this file
        self.scrapes = 0
        self.bytes = 0
        self.failures = 0
        self._spawn = throughput.Region.spawn
        scraper = self

        def spawn(region: throughput.Region, name: str, *args: str, identity: tuple[str, ...] = ()) -> Any:
            if scraper.targets is not None and args and args[0] in ("scheduler", "agent"):
                port = free_port()
                with scraper.targets.open("a") as targets:
                    targets.write(f"http://127.0.0.1:{port}/metrics\n")
                args = (*args, "--metrics", f"127.0.0.1:{port}")
            return scraper._spawn(region, name, *args, identity=identity)

        throughput.Region.spawn = spawn  # type: ignore[method-assign]  # the bench's own hook

    async def run(self, scrape: bool, work: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
        """Run one workload with (``scrape``) or without metrics; its own prints are kept quiet."""
        base = Path(tempfile.mkdtemp(prefix="fed-bench-scrape-"))
        process = None
        if scrape:
            self.targets = base / "targets"
            self.targets.touch()
            argv = [sys.executable, __file__, "--scrape", str(self.targets), str(base / "stats")]
            process = await asyncio.create_subprocess_exec(*argv)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return await work()
        finally:
            self.targets = None
            if process is not None:
                process.terminate()
                await process.wait()
                with contextlib.suppress(FileNotFoundError, ValueError):
                    scrapes, size, failures = (base / "stats").read_text().split()
                    self.scrapes += int(scrapes)
                    self.bytes += int(size)
                    self.failures += int(failures)
            shutil.rmtree(base, ignore_errors=True)


def scrape_forever(targets: Path, stats: Path) -> None:
    """The scraping process: every second, fetch each URL listed in ``targets`` (one not answering
    yet is counted and skipped); keep the counts in ``stats``."""
    scrapes = size = failures = 0
    while True:
        due = time.monotonic() + SCRAPE_EVERY
        for url in targets.read_text().split():
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    size += len(response.read())
                scrapes += 1
            except OSError:
                failures += 1
        stats.write_text(f"{scrapes} {size} {failures}\n")
        time.sleep(max(0.0, due - time.monotonic()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    if sys.argv[1:2] == ["--scrape"]:  # the scraping process (see Scraper)
        scrape_forever(Path(sys.argv[2]), Path(sys.argv[3]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    workload_arguments(parser)
    args = parser.parse_args()
    throughput.announce()
    scraper = Scraper()
    summary = await both_workloads(scraper.run, args, "with metrics scraped")
    print("; ".join(summary))
    print(
        f"scrapes: {scraper.scrapes} ({scraper.bytes / max(1, scraper.scrapes):.0f} bytes each on average), "
        f"{scraper.failures} not answered (a daemon still starting)"
    )


if __name__ == "__main__":
    asyncio.run(main())
