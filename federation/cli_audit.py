"""``fed audit replay|check|verify`` (the rest of the CLI is :mod:`federation.cli`)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import msgspec

from federation.resources import parse_duration


async def cmd_audit(args: argparse.Namespace) -> int:
    from federation.cli import _state_dir  # the entry point is loaded by then
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        if args.audit_command == "check":
            report = await fed.audit_check(region=args.region, everywhere=args.all)
            where = (
                "every region (the hub's AUDIT_ALL)"
                if args.all
                else f"region {args.region or fed.regions[0]}"
            )
            print(
                f"checked {report.events} events of {where}; {report.open_jobs} jobs not finished yet, "
                f"{report.duplicates} duplicate submissions (harmless), {report.refused} refused messages "
                f"(quarantined), {report.unprocessed} inputs not handled yet"
            )
            for gap in report.gaps:
                after = f" after audit sequence {gap.after}" if gap.after else ""
                lag = (
                    " (the hub's copy may still be catching up: after a link returns, a source resumes "
                    "within about two minutes; check again)"
                    if args.all and gap.kind == "postfix"
                    else ""
                )
                print(f"GAP  lost {gap.kind}: {gap.origin} sequences {gap.first}-{gap.last}{after}{lag}")
            for violation in report.violations:
                print(f"FAIL {violation.invariant}: {violation.message} (audit events {violation.events})")
            if report.unreadable:
                print(f"FAIL unreadable events at audit sequences {report.unreadable[:20]}")
            print("ok: every invariant holds" if report.ok else "the audit trail shows problems (above)")
            return 0 if report.ok else 1
        if args.audit_command == "verify":
            result = await fed.audit_verify(region=args.region, everywhere=args.all)
            print(f"re-ran {result.steps} core steps in {result.lives} core lives")
            for why in result.unverifiable:
                print(f"GAP  {why}: that life cannot be verified past it")
            for divergence in result.divergences:
                print(f"FAIL {divergence.life} step {divergence.step}: the core now decides differently")
                print(f"  event      {divergence.event}")
                print(f"  recorded   {divergence.recorded or '(no commands)'}")
                print(f"  re-derived {divergence.rederived or '(no commands)'}: {divergence.commands}")
            print("ok: the core makes the same decisions" if result.ok else "verification failed (above)")
            return 0 if result.ok else 1
        since = time.time() - parse_duration(args.since) if args.since else 0.0
        found = fed.audit(
            region=args.region,
            everywhere=args.all,
            from_seq=args.from_seq,
            since=since,
            job=args.job or "",
            node=args.node or "",
            tenant=args.tenant or "",
        )
        out = sys.stdout
        async for event in found:
            if args.format == "jsonl":
                out.write(msgspec.json.encode(event).decode() + "\n")
                continue
            when = time.strftime("%H:%M:%S", time.localtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}"
            who, what = event.job or event.node, event.state or ""
            line = f"{event.seq:>8} {when} {event.region:<10} {event.kind:<7} {who:<24} {what:<10}"
            out.write(f"{line} {event.detail}\n")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``audit`` and its actions to the ``fed`` subcommands."""
    p = sub.add_parser(
        "audit",
        parents=[common],
        help="the audit trail: replay it, check the invariants",
        description="Every claim, release, job record (with its decision), submission, cancel and agent "
        "report, from the region's audit stream (it refuses delete and purge) or, with --all, from the "
        "hub's AUDIT_ALL. A region cut off from the hub reads its own.",
    )
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    for name, text in (
        ("replay", "print the timeline, with sequence numbers"),
        ("check", "rebuild the state from the log and check the invariants; exit 1 on any violation or gap"),
        (
            "verify",
            "re-run the placement core on its recorded inputs; exit 1 at the first different decision",
        ),
    ):
        q = audit.add_parser(name, parents=[common], help=text)
        scope = q.add_mutually_exclusive_group()
        scope.add_argument("--region", help="one region's own audit stream (default: the first region)")
        scope.add_argument("--all", action="store_true", help="every region, from the hub's AUDIT_ALL")
        if name == "replay":
            q.add_argument("--since", help="only events stored in the last DURATION (e.g. 2h, 30m)")
            q.add_argument("--from-seq", type=int, default=0, help="start at this audit sequence")
            q.add_argument("--job", help="only events about this job (ledgers holding it included)")
            q.add_argument("--node", help="only events about this node")
            q.add_argument("--tenant", help="only this tenant's submissions and records")
            q.add_argument(
                "--format",
                choices=["table", "jsonl"],
                default="table",
                help="jsonl: one event per line (subjects.md)",
            )
        q.set_defaults(func=cmd_audit)
