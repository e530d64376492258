"""The fault campaign (issue 16): a three-region federation under steady load, every fault in turn.

    python bench/faults.py                         # the full campaign: 3 rounds (about 10 minutes)
    python bench/faults.py --out /tmp/campaign     # keep the history, trail and report there
    python bench/faults.py --faults kill-leader,poison --regions eu,us

Faults, each against the next region in turn, three rounds over: leader SIGKILL, leader SIGSTOP
past its lease, agent SIGKILL and SIGSTOP (with jobs of every --on-node-lost policy running), a region's
nats-server SIGKILL under submissions, the hub SIGSTOPped for 45 s while every region keeps
submitting, a link cut and a link blackholed, duplicate and malformed floods, cross-tenant and
cross-node probes with real credentials, a revoke after a server restart, and poison workloads (a
missing command, 200 MB of output, 2,000 processes). Then the load stops, the run settles, and the
independent checker (federation/campaign/checker.py) judges the client history, the jobs' run
markers and the exported audit trail; the federation's own `fed audit check` runs too.

Prints the machine, the command and the table (kept in bench/faults.md); exits 1 unless the
campaign is clean.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from federation.campaign.faults import FAULTS  # noqa: E402 - after the sys.path line above
from federation.campaign.runner import FULL, CampaignOptions, run  # noqa: E402 - as above


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regions", default="eu,us,ap")
    parser.add_argument("--faults", default=",".join(FULL), help=f"in order; any of {', '.join(FAULTS)}")
    parser.add_argument(
        "--out", help="directory for the state, history, trail and report (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="times through the faults (default 3)")
    args = parser.parse_args()
    schedule = tuple(f for f in args.faults.split(",") if f)
    unknown = [f for f in schedule if f not in FAULTS]
    if unknown:
        parser.error(f"unknown faults {unknown}; known: {', '.join(FAULTS)}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fed-campaign-"))
    options = CampaignOptions(
        state_dir=out,
        regions=tuple(args.regions.split(",")),
        schedule=schedule,
        rounds=args.rounds,
        seed=args.seed,
    )
    report = asyncio.run(run(options))
    print(
        f"\nmachine: {platform.system()} {platform.release()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 1024**3:.0f} GiB, Python {platform.python_version()}"
    )
    print(f"command: python bench/faults.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"campaign: {report.seconds / 60:.1f} minutes, files in {out}\n")
    print(report.table())
    for violation in report.verdict.violations[:50]:
        print(f"VIOLATION {violation}")
    if not report.own_check_ok:
        print(f"own audit check:\n{report.own_check}")
    print("\nclean" if report.ok else "\nNOT CLEAN")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
