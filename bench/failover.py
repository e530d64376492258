"""Failure handling: node-loss detection and re-placement, scheduler failover, the cost of --durable.

    python bench/failover.py                      # every part, default sizes
    python bench/failover.py --rounds 5 --jobs 16 --durable-jobs 5000

Part 1 (node loss): a one-region federation (``fed up``'s launcher: a hub, a region server, two
schedulers, two agents with 1 s heartbeats). ``--jobs`` jobs with ``--on-node-lost replace`` run on
one node; that agent is frozen with SIGSTOP (a hung machine: no heartbeat, no goodbye). Reported:
time from the freeze to the heartbeat's TTL marker (detection: the TTL is three beats), and to
every job running again on the other node (re-placement). Repeated ``--rounds`` times.

Part 2 (scheduler failover): the leader is SIGKILLed; reported: time until a standby holds the
lease (a higher epoch) and until a job submitted right after the kill is placed. ``--rounds`` times.

Part 3 (durability): ``bench/throughput.py``'s placement run with JetStream's default (acknowledge
before fsync) and with ``sync_interval: always`` (``fed up --durable``); reported as the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import throughput  # noqa: E402 - after the sys.path lines above

from federation import subjects  # noqa: E402 - after the sys.path lines above
from federation.bus import Bus  # noqa: E402 - after the sys.path lines above
from federation.client import Client  # noqa: E402 - after the sys.path lines above
from federation.ops.launcher import Federation, Options  # noqa: E402 - after the sys.path lines above
from federation.schemas import Lease, decode  # noqa: E402 - after the sys.path lines above

REGION = "bench"


def quiet(_: str) -> None:
    return None


async def until(predicate, timeout: float = 60.0, interval: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    """Poll an async predicate; returns the monotonic time it first held."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await predicate():
            return time.monotonic()
        await asyncio.sleep(interval)
    raise TimeoutError("condition not met")


async def node_loss(rounds: int, jobs: int) -> tuple[list[float], list[float]]:
    detect, replace = [], []
    for r in range(rounds):
        found, again = await node_loss_round(r, jobs)
        detect.append(found)
        replace.append(again)
        print(f"  node loss round {r + 1}: detected {found:.2f} s, re-placed {again:.2f} s")
    return detect, replace


async def node_loss_round(r: int, jobs: int) -> tuple[float, float]:
    """Freeze the agent running ``jobs`` jobs; seconds to the TTL marker and to all running elsewhere."""
    with tempfile.TemporaryDirectory(prefix="fed-bench-") as tmp:
        fed_up = Federation(Options(Path(tmp), regions=(REGION,), agents=2, schedulers=2), quiet)
        connection = await fed_up.start()
        bus = await Bus.connect(connection.regions[REGION].url, "bench-tap")
        frozen = next(c for c in fed_up.daemons if c.name == f"agent-{REGION}-n1")
        markers: dict[str, float] = {}

        async def heartbeats() -> None:
            stream, subject = subjects.heartbeats_stream(REGION), subjects.heartbeat(REGION, "*")
            async for item in bus.follow(stream, subject, last_per_subject=True):
                if item.removed:
                    markers.setdefault(subjects.last_token(item.subject), time.monotonic())

        tap = asyncio.create_task(heartbeats())
        try:
            async with Client.connect(connection=connection) as fed:
                ids = [f"r{r}-{i}" for i in range(jobs)]
                for job in ids:
                    await fed.submit(
                        ["sleep", "600"], cpu=0, nodes=[f"{REGION}-n1"], on_node_lost="replace", job_id=job
                    )

                async def running_on(node: str, attempt: int) -> bool:
                    records = {r.id: r for r in await fed.jobs()}
                    return all(
                        j in records
                        and (records[j].state, records[j].node, records[j].attempt)
                        == ("running", node, attempt)
                        for j in ids
                    )

                await until(lambda: running_on(f"{REGION}-n1", 1))
                frozen.restart = False
                t0 = time.monotonic()
                os.kill(frozen.pid, signal.SIGSTOP)
                t_replaced = await until(lambda: running_on(f"{REGION}-n2", 2))
                os.kill(frozen.pid, signal.SIGCONT)  # it returns, stops its stale copies, and exits with us
                return markers[f"{REGION}-n1"] - t0, t_replaced - t0
        finally:
            tap.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tap
            await bus.close()
            await fed_up.stop()


async def failover(rounds: int) -> tuple[list[float], list[float]]:
    lead, place = [], []
    with tempfile.TemporaryDirectory(prefix="fed-bench-") as tmp:
        fed_up = Federation(Options(Path(tmp), regions=(REGION,), agents=1, schedulers=2), quiet)
        connection = await fed_up.start()
        bus = await Bus.connect(connection.regions[REGION].url, "bench-lease")
        try:
            async with Client.connect(connection=connection) as fed:
                for r in range(rounds):
                    value, _ = await bus.kv_get(subjects.lease_bucket(REGION), subjects.LEADER_KEY)
                    while value is None or decode(Lease, value).epoch == 0:
                        await asyncio.sleep(0.05)
                        value, _ = await bus.kv_get(subjects.lease_bucket(REGION), subjects.LEADER_KEY)
                    lease = decode(Lease, value)
                    pid = int(lease.holder.rpartition(":")[2])
                    t0 = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    job = await fed.submit(["true"], job_id=f"probe-{r}")

                    async def new_leader(epoch: int = lease.epoch) -> bool:
                        value, _ = await bus.kv_get(subjects.lease_bucket(REGION), subjects.LEADER_KEY)
                        return value is not None and decode(Lease, value).epoch > epoch

                    async def placed(job_id: str = job.id) -> bool:
                        with contextlib.suppress(Exception):
                            return (await fed.job(job_id)).state in ("placed", "running", "succeeded")
                        return False

                    lead.append(await until(new_leader) - t0)
                    place.append(await until(placed) - t0)
                    print(
                        f"  failover round {r + 1}: leading after {lead[-1]:.2f} s, "
                        f"placed after {place[-1]:.2f} s"
                    )
                    await asyncio.sleep(3.0)  # let the supervisor restart the killed one as a standby
        finally:
            await bus.close()
            await fed_up.stop()
    return lead, place


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=8, help="jobs on the node that is lost")
    parser.add_argument(
        "--durable-jobs", type=int, default=5000, help="placements per durability run (0 skips)"
    )
    parser.add_argument(
        "--parts", default="node,failover,durable", help="which parts to run (comma-separated)"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    throughput.announce()
    if "node" in parts:
        detect, replace = await node_loss(args.rounds, args.jobs)
        print(f"node loss ({args.jobs} jobs, heartbeat 1 s, TTL 3 s): detect {summary(detect)}")
        print(f"  re-placed on the other node: {summary(replace)}")
    if "failover" in parts:
        lead, place = await failover(args.rounds)
        print(
            f"scheduler failover (lease TTL 5 s): new leader {summary(lead)}; "
            f"first placement {summary(place)}"
        )
    if "durable" in parts and args.durable_jobs:
        fast = await throughput.placements(args.durable_jobs, 50, durable=False, idle=0)
        safe = await throughput.placements(args.durable_jobs, 50, durable=True, idle=0)
        print(
            f"durability: {fast['placements_per_s']:.0f} placements/s by default, "
            f"{safe['placements_per_s']:.0f} with sync_interval: always "
            f"({safe['placements_per_s'] / fast['placements_per_s']:.2f}x)"
        )


if __name__ == "__main__":
    asyncio.run(main())
