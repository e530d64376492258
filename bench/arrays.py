"""Job arrays: how fast ``Client.submit_array`` gets ten thousand elements accepted, and whether
they are placed at the placement rate (issue 20: "accepted in about a second and placed at the
placement rate").

    python bench/arrays.py                      # --jobs 10000 --nodes 50 --rounds 3

Each round runs, back to back and in alternating order, bench/throughput.py's placements run
(``--jobs`` one-core jobs submitted one by one, pipelined, on simulated nodes) and the same number
of jobs as one array (``Client.submit_array``, the way ``fed submit --array`` sends them), each in
a fresh region. Printed per round: the array's acceptance time (first element sent to the last
one stored) and its placements per second against the single jobs' in the same round; then how
long reading a second array's 100 elements takes among the first one's records, by key (what
``JobArray.wait`` and ``JobArray.records`` read) and by reading the whole bucket (``fed jobs
--array ID``, which knows no indices).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/throughput.py, imported as a module

import throughput

from agents.sim import SimulatedNodes
from federation import subjects
from federation.bus import Bus
from federation.client import Client
from federation.config import Connection, RegionEndpoint

SMALL = 100  # elements of the second array, read among the first one's


async def array_run(n: int, nodes: int) -> dict[str, float]:
    """``n`` one-core jobs as one array on ``nodes`` simulated nodes: seconds to accept, placements/s."""
    base = Path(tempfile.mkdtemp(prefix="fed-bench-array-"))
    region = throughput.Region(base)
    try:
        await region.start()
        bus = await Bus.connect(region.url, "bench")
        sim = SimulatedNodes(
            bus, throughput.REGION, nodes, cores=(n + 400) // nodes + 1, max_allocations=n + 400
        )
        await sim.start()
        observer = throughput.Observer()
        await bus.subscribe(f"$KV.{subjects.jobs_bucket(throughput.REGION)}.>", observer.on_record)
        await asyncio.sleep(1.0)  # sleep-ok: let the scheduler see the offers before the clock starts
        connection = Connection(
            hub_url=region.url, regions={throughput.REGION: RegionEndpoint(url=region.url)}
        )
        client = Client(connection)
        try:
            await client.bus(throughput.REGION)  # connected before the clock starts
            t0 = time.time()
            await client.submit_array(["true"], range(n), array_id="a")
            accepted = time.time()
            await observer.wait(observer.placed, n, timeout=600)
            placed = max(observer.placed.values())
            # a small array's elements read among the big one's records: by key (what its wait
            # reads) and by reading the whole bucket (what finding an array by its id alone takes)
            small = await client.submit_array(["true"], range(SMALL), array_id="b")
            await observer.wait(observer.placed, n + SMALL, timeout=60)
            began = time.perf_counter()
            keyed = await small.records()
            read_keyed = time.perf_counter() - began
            began = time.perf_counter()
            whole = await client.array("b", region=throughput.REGION)
            read_whole = time.perf_counter() - began
            assert [r.id for r in keyed] == [r.id for r in whole]
            assert len(keyed) == SMALL
        finally:
            await client.close()
        await sim.stop()
        await bus.close()
        return {
            "accept_s": accepted - t0,
            "placements_per_s": n / (placed - t0),
            "read_keyed_s": read_keyed,
            "read_whole_s": read_whole,
        }
    finally:
        region.stop()
        shutil.rmtree(base, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    throughput.announce()
    accepts, ratios = [], []
    for i in range(args.rounds):
        result: dict[str, dict[str, float]] = {}
        for kind in ("array", "single") if i % 2 == 0 else ("single", "array"):
            with contextlib.redirect_stdout(io.StringIO()):
                if kind == "array":
                    result[kind] = await array_run(args.jobs, args.nodes)
                else:
                    result[kind] = await throughput.placements(args.jobs, args.nodes, idle=0)
        array, single = result["array"], result["single"]
        ratio = array["placements_per_s"] / single["placements_per_s"]
        accepts.append(array["accept_s"])
        ratios.append(ratio)
        print(
            f"  round {i + 1}: array of {args.jobs} accepted in {array['accept_s']:.2f} s "
            f"({args.jobs / array['accept_s']:.0f} jobs/s), placed at {array['placements_per_s']:.0f}/s; "
            f"single jobs placed at {single['placements_per_s']:.0f}/s (submitted at "
            f"{single['submit_per_s']:.0f}/s): ratio {ratio:.3f}; the {SMALL} elements of a second "
            f"array read by key in {1000 * array['read_keyed_s']:.0f} ms, by reading the whole bucket "
            f"in {1000 * array['read_whole_s']:.0f} ms",
            flush=True,
        )
    print(
        f"array accepted in median {statistics.median(accepts):.2f} s; placements/s array/single: "
        f"median {statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
