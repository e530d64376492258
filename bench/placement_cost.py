"""Cost of one placement in the pure core as the node count grows (no NATS: the core alone).

    python bench/placement_cost.py                 # 100, 1,000, 10,000 nodes; 20,000 jobs each

For each node count, simulated nodes offer 16 cores; one-core jobs arrive in batches of 512, as
the daemon feeds them; every proposed ledger is acknowledged at once (as if each compare-and-set
succeeded); the jobs of a batch report their exit with the next batch, so their releases ride on
the same ledger writes as the next claims (the steady state of a busy region). Reported:
microseconds of core CPU per placement, for the default policy (binpack) and with every optional
policy on (spread scoring, required labels, preferred nodes, an urgent job every 50th). The cost
must grow far slower than the node count: nodes are indexed by free capacity, not scanned.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from federation.core.events import (
    ClaimWritten,
    JobReported,
    OfferSeen,
    Submitted,
    Tick,
    WriteLedger,
)
from federation.core.state import RegionCore
from federation.schemas import JobEvent, Offer, Submit


def run(nodes: int, jobs: int, policies: bool) -> float:
    core = RegionCore("bench")
    for i in range(nodes):
        labels = {"city": "AMS" if i % 2 else "BER"}
        offer = Offer(
            node=f"n{i}",
            region="bench",
            cores=list(range(16)),
            memory=64 * 1024**3,
            max_allocations=64,
            labels=labels,
            expires_at=1e12,
        )
        core.handle(OfferSeen(offer=offer))
    revision = 0
    elapsed = 0.0
    now = 1000.0
    batch = 512
    running: list[tuple[str, str, int]] = []
    for start in range(0, jobs, batch):
        events: list[object] = [
            JobReported(
                event=JobEvent(node=node, job=job, attempt=attempt, kind="exited", exit_code=0, at=now)
            )
            for node, job, attempt in running
        ]
        running = []
        for i in range(start, min(jobs, start + batch)):
            if policies:
                urgent = i % 50 == 49
                spec = Submit(
                    id=f"j{i}",
                    command=["true"],
                    cpu=1,
                    priority="urgent" if urgent else "low",
                    require={"city": "AMS,BER"},
                    nodes=[f"n{(i * 7) % nodes}"],
                    scoring="spread",
                )
            else:
                spec = Submit(id=f"j{i}", command=["true"], cpu=1)
            events.append(Submitted(spec=spec, at=now))
        t0 = time.perf_counter()
        for event in events:
            core.handle(event)  # type: ignore[arg-type]
        commands = core.handle(Tick(now=now))
        while commands:
            more = []
            for command in commands:
                if isinstance(command, WriteLedger):
                    revision += 1
                    running.extend((command.node, a.job, a.attempt) for a in command.ledger.allocations)
                    more.extend(core.handle(ClaimWritten(node=command.node, revision=revision)))
            more.extend(core.handle(Tick(now=now)))
            commands = [c for c in more if isinstance(c, WriteLedger)]
        elapsed += time.perf_counter() - t0
        now += 0.01
    done = sum(1 for v in core.jobs.values() if v.record.state in ("placed", "succeeded"))
    assert done >= jobs * 0.9, f"only {done} of {jobs} placed"
    return elapsed / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="100,1000,10000")
    parser.add_argument("--jobs", type=int, default=20000)
    args = parser.parse_args()
    print(f"machine: {platform.system()} {platform.release()}, Python {platform.python_version()}")
    print(f"command: python bench/placement_cost.py {' '.join(sys.argv[1:])}".rstrip())
    for count in (int(n) for n in args.nodes.split(",")):
        plain = run(count, args.jobs, policies=False)
        full = run(count, args.jobs, policies=True)
        print(
            f"{count:>6} nodes: {plain:7.1f} us/placement (binpack), "
            f"{full:7.1f} us/placement (all policies on)"
        )


if __name__ == "__main__":
    main()
