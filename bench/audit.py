"""Audit replay and check speed: events per second over a region's audit stream.

    python bench/audit.py                      # 1,000,000 events
    python bench/audit.py --events 200000

One nats-server, provisioned for region ``bench`` exactly as a scheduler would (so the audit
stream sources the workloads, status, ledger and job-record streams). The benchmark writes the
facts a real region writes for each job, 8 per job: the submission, the claim (the node's ledger),
the records ``placed``, ``running`` and ``succeeded``, the agent's ``started`` and ``exited``
reports, and the release; over 100 nodes. It waits until the server has sourced all of them
into the audit stream, then times:

1. **replay**: read the audit stream and turn every message into an ``AuditEvent``
   (what ``fed audit replay --format jsonl`` does before printing);
2. **check**: the same plus rebuilding ledgers and records and checking the invariants
   (``fed audit check``).

Issue #6 asks for at least 50,000 events/s over 1,000,000 events.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

import throughput  # noqa: E402 - after the sys.path lines above

from federation import subjects  # noqa: E402 - after the sys.path lines above
from federation.audit import trail  # noqa: E402 - after the sys.path lines above
from federation.audit.check import Checker  # noqa: E402 - after the sys.path lines above
from federation.bus import Bus  # noqa: E402 - after the sys.path lines above
from federation.ops.deploy import Server, server_config  # noqa: E402
from federation.ops.launcher import Child, nats_server_binary, read_ports  # noqa: E402
from federation.ops.provision import provision, wait_for_jetstream  # noqa: E402
from federation.schemas import (  # noqa: E402 - after the sys.path lines above
    Allocation,
    Capacity,
    JobEvent,
    JobRecord,
    Ledger,
    Submit,
    Transition,
    encode,
)

REGION = "bench"
NODES = 100
PER_JOB = 8


def job_facts(i: int, now: float) -> list[tuple[str, bytes]]:
    """The eight (subject, value) pairs a region writes for job ``i``."""
    job, node = f"j{i}", f"n{i % NODES}"
    spec = Submit(id=job, command=["python", "train.py", f"--seed={i}"], cpu=1, memory=1 << 30)
    allocation = Allocation(
        job=job, attempt=1, epoch=1, cpu=1, memory=1 << 30, cores=(i % 8,), command=tuple(spec.command)
    )
    capacity = Capacity(cpu=8, memory=64 << 30, gpu=0, cores=tuple(range(8)), offered_memory=64 << 30)
    ledger_key = f"$KV.{subjects.ledger_bucket(REGION)}.{node}"
    record_key = f"$KV.{subjects.jobs_bucket(REGION)}.{job}"
    history: list[Transition] = [Transition(state="pending", at=now)]
    facts = [(subjects.submit(REGION, job), encode(spec))]
    facts.append(
        (ledger_key, encode(Ledger(node=node, allocations=(allocation,), epoch=1, capacity=capacity)))
    )
    for state, reason in (("placed", f"placed on {node}"), ("running", f"running on {node}")):
        history.append(Transition(state=state, at=now, reason=reason))  # type: ignore[arg-type]
        record = JobRecord(
            id=job,
            region=REGION,
            spec=spec,
            state=state,
            attempt=1,
            node=node,
            epoch=1,  # type: ignore[arg-type]
            reason=reason,
            history=tuple(history),
            submitted_at=now,
            updated_at=now,
        )
        facts.append((record_key, encode(record)))
        if state == "placed":
            started = JobEvent(node=node, job=job, attempt=1, epoch=1, kind="started", at=now)
            facts.append((subjects.job_event(REGION, node, job), encode(started)))
    exited = JobEvent(node=node, job=job, attempt=1, epoch=1, kind="exited", exit_code=0, at=now)
    facts.append((subjects.job_event(REGION, node, job), encode(exited)))
    history.append(Transition(state="succeeded", at=now, reason="exited 0"))
    done = JobRecord(
        id=job,
        region=REGION,
        spec=spec,
        state="succeeded",
        attempt=1,
        node=node,
        epoch=1,
        exit_code=0,
        reason="exited 0",
        history=tuple(history),
        submitted_at=now,
        updated_at=now,
    )
    facts.append((record_key, encode(done)))
    facts.append((ledger_key, encode(Ledger(node=node, epoch=1, capacity=capacity))))
    return facts


async def write(bus: Bus, events: int) -> float:
    """Write ``events`` facts, pipelined; returns the rate."""
    start = time.perf_counter()
    now = time.time()
    pending: list[asyncio.Future[int]] = []
    for i in range(events // PER_JOB):
        for subject, data in job_facts(i, now):
            pending.append(asyncio.ensure_future(bus.store(subject, data, timeout=60.0)))
        if len(pending) >= 2048:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return events / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    events = args.events // PER_JOB * PER_JOB
    throughput.announce()
    with tempfile.TemporaryDirectory(prefix="fed-bench-audit-") as tmp:
        base = Path(tmp)
        ports = base / "ports"
        ports.mkdir()
        conf = base / "nats.conf"
        server = Server(name=REGION, domain=REGION, store_dir=str(base / "store"), ports_dir=str(ports))
        conf.write_text(server_config(server))
        argv = [nats_server_binary(), "-c", str(conf)]
        server = Child("nats", argv, base / "nats.log", restart=False, server=True)
        server.start()
        try:
            url = (await read_ports(ports, server))["nats"][0]
            await wait_for_jetstream(url)
            bus = await Bus.connect(url, "bench-audit")
            await provision(bus, REGION)
            stream = subjects.audit_stream(REGION)
            rate = await write(bus, events)
            print(f"wrote {events} facts at {rate:,.0f}/s; waiting for the audit stream to source them")
            while (await bus.last_sequence(stream) or 0) < events:  # noqa: ASYNC110 - the server sources; nothing to wait on but its state
                await asyncio.sleep(0.5)
            start = time.perf_counter()
            count = 0
            async for _ in trail.events(bus, stream):
                count += 1
            replay = count / (time.perf_counter() - start)
            bus.direct_reads = True  # an auditor's way: batched direct gets, no consumer
            start = time.perf_counter()
            direct = 0
            async for _ in trail.events(bus, stream):
                direct += 1
            direct_rate = direct / (time.perf_counter() - start)
            bus.direct_reads = False
            start = time.perf_counter()
            checker = Checker()
            async for event, value in trail.events(bus, stream):
                checker.feed(event, value)
            report = checker.finish(
                origins_last=await trail.origins_last(bus, subjects.audit_sources(REGION))
            )
            check = report.events / (time.perf_counter() - start)
            await bus.close()
        finally:
            if server.process is not None:
                server.process.terminate()
                server.process.wait(timeout=15)
    verdict = "ok" if report.ok else f"NOT OK: {len(report.violations)} violations, {len(report.gaps)} gaps"
    print(f"replay: {count:,} events at {replay:,.0f} events/s")
    print(f"replay by batched direct gets (an auditor): {direct:,} events at {direct_rate:,.0f} events/s")
    print(f"check:  {report.events:,} events at {check:,.0f} events/s ({verdict})")


if __name__ == "__main__":
    asyncio.run(main())
