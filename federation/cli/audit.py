"""``fed audit replay|check|verify``.

Without ``--region`` or ``--all`` each action covers every region, each from its own audit stream
(the hub is not needed, and its copy may lag): ``replay`` merges them into one timeline by the
time each region stored its events, so a job handed off from one region to another shows both
halves; ``check`` and ``verify`` judge each region's trail in turn. ``--region R`` is one region;
``--all`` is the hub's ``AUDIT_ALL`` (the only place the cross-region I2 check sees every region).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from federation.audit.trail import AuditEvent, line, merged
from federation.cli.common import print_json, state_dir
from federation.cli.progress import Progress
from federation.errors import FederationError, NotPermitted
from federation.resources import parse_duration

if TYPE_CHECKING:
    from federation.audit.check import Report
    from federation.audit.verify import Verification
    from federation.client import Client


async def cmd_audit(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        if args.audit_command == "check":
            return await _check(fed, args)
        if args.audit_command == "verify":
            return await _verify(fed, args)
        return await _replay(fed, args)


def _scopes(fed: Client, args: argparse.Namespace) -> list[tuple[str | None, bool]]:
    """(region, everywhere) pairs to read: the one asked for, else every region in turn."""
    if args.all:
        return [(None, True)]
    if args.region:
        return [(args.region, False)]
    return [(name, False) for name in fed.regions]


def _where(region: str | None, everywhere: bool) -> str:
    return "every region (the hub's AUDIT_ALL)" if everywhere else f"region {region}"


async def _each_scope(
    fed: Client,
    args: argparse.Namespace,
    measure: Callable[[str | None, bool], Awaitable[Any]],
    show: Callable[[Any, str, bool], None],
    verdict: tuple[str, str],
) -> int:
    """Run ``measure(region, everywhere)`` (a report with ``ok``) for each scope of
    :func:`_scopes`, and show each report (``show(report, where, everywhere)``), or with ``--json``
    collect them into one document; a scope that cannot be read fails, and the others go on
    (unless it is the only one, or the identity is refused: every region would refuse it too).
    The last line is ``verdict``'s first text when every scope is well, else its second; exit 1
    when one is not."""
    scopes = _scopes(fed, args)
    found: list[dict[str, Any]] = []
    ok = True
    for region, everywhere in scopes:
        where = _where(region, everywhere)
        try:
            report = await measure(region, everywhere)
        except FederationError as exc:
            if len(scopes) == 1 or isinstance(exc, NotPermitted):
                raise
            found.append({"scope": where, "error": str(exc)})
            if not args.json:
                print(f"FAIL {where} could not be read: {exc}")
            ok = False
            continue
        ok = report.ok and ok
        found.append({"scope": where, "ok": report.ok, "report": report})
        if not args.json:
            show(report, where, everywhere)
    if args.json:  # one document: every scope's report (or why it could not be read), and ``ok``
        print_json({"ok": ok, "scopes": found})
    else:
        print(verdict[0] if ok else verdict[1])
    return 0 if ok else 1


async def _check(fed: Client, args: argparse.Namespace) -> int:
    async def measure(region: str | None, everywhere: bool) -> Report:
        progress = Progress()

        def reading(events: int, last: int) -> None:
            progress.show(f"checking {_where(region, everywhere)}: {events:,} of about {last:,} events")

        try:
            return await fed.audit_check(region=region, everywhere=everywhere, progress=reading)
        finally:
            progress.clear()

    def show(report: Report, where: str, everywhere: bool) -> None:
        print(
            f"checked {report.events} events of {where}; {report.open_jobs} jobs "
            f"not finished yet, {report.duplicates} duplicate submissions (harmless), {report.refused} "
            f"refused messages (quarantined), {report.unprocessed} inputs not handled yet"
        )
        for gap in report.gaps:
            after = f" after audit sequence {gap.after}" if gap.after else ""
            lag = (
                " (the hub's copy may still be catching up: after a link returns, a source resumes "
                "within about two minutes; check again)"
                if everywhere and gap.kind == "postfix"
                else ""
            )
            print(f"GAP  lost {gap.kind}: {gap.origin} sequences {gap.first}-{gap.last}{after}{lag}")
        for violation in report.violations:
            print(f"FAIL {violation.invariant}: {violation.message} (audit events {violation.events})")
        if report.unreadable:
            print(f"FAIL unreadable events at audit sequences {report.unreadable[:20]}")

    verdict = ("ok: every invariant holds", "the audit trail shows problems (above)")
    return await _each_scope(fed, args, measure, show, verdict)


async def _verify(fed: Client, args: argparse.Namespace) -> int:
    async def measure(region: str | None, everywhere: bool) -> Verification:
        return await fed.audit_verify(region=region, everywhere=everywhere)

    def show(result: Verification, where: str, everywhere: bool) -> None:
        print(f"re-ran {result.steps} core steps in {result.lives} core lives of {where}")
        for why in result.unverifiable:
            print(f"GAP  {why}: that life cannot be verified past it")
        for divergence in result.divergences:
            print(f"FAIL {divergence.life} step {divergence.step}: the core now decides differently")
            print(f"  event      {divergence.event}")
            print(f"  recorded   {divergence.recorded or '(no commands)'}")
            print(f"  re-derived {divergence.rederived or '(no commands)'}: {divergence.commands}")

    verdict = ("ok: the core makes the same decisions", "verification failed (above)")
    return await _each_scope(fed, args, measure, show, verdict)


async def _replay(fed: Client, args: argparse.Namespace) -> int:
    scopes = _scopes(fed, args)
    if args.from_seq and len(scopes) > 1:
        print(
            "fed: error: --from-seq needs --region or --all (each audit stream numbers its own events)",
            file=sys.stderr,
        )
        return 2
    since = time.time() - parse_duration(args.since) if args.since else 0.0
    filters: dict[str, Any] = {
        "from_seq": args.from_seq,
        "since": since,
        "job": args.job or "",
        "node": args.node or "",
        "tenant": args.tenant or "",
    }
    unread: list[str] = []
    found: AsyncIterator[AuditEvent]
    if len(scopes) == 1:
        region, everywhere = scopes[0]
        found = fed.audit(region=region, everywhere=everywhere, **filters)
    else:
        found = merged([_region_events(fed, region or "", unread, filters) for region, _ in scopes])
    hidden = 0
    if args.format == "jsonl":  # the export: every event, as bytes (each line is UTF-8 JSON)
        async for event in found:
            sys.stdout.buffer.write(line(event) + b"\n")
        sys.stdout.buffer.flush()
    else:
        out = sys.stdout
        async for event in found:
            if event.kind == "inputs" and not args.inputs:
                hidden += 1
                continue
            out.write(_row(event) + "\n")
        if hidden:
            out.write(f"({hidden} core-input journal messages hidden; --inputs shows them)\n")
        out.flush()
    for why in unread:
        print(f"fed: {why}: its events are missing above", file=sys.stderr)
    return 1 if unread else 0


async def _region_events(
    fed: Client, region: str, unread: list[str], filters: dict[str, Any]
) -> AsyncGenerator[AuditEvent, None]:
    """One region's timeline; a region that cannot be read (or stops being readable) is noted in
    ``unread`` and ends its timeline, so the other regions are still shown."""
    try:
        async for event in fed.audit(region=region, **filters):
            yield event
    except NotPermitted:
        raise  # not this region's doing: every region refuses this identity
    except FederationError as exc:
        unread.append(f"region {region} could not be read ({exc})")


def _row(event: AuditEvent) -> str:
    """One table line. Anything a message's author chose (a command, a reason) has its control
    and line-breaking characters escaped: a tenant cannot forge lines or drive the terminal."""
    when = time.strftime("%H:%M:%S", time.localtime(event.at)) + f".{int(event.at * 1000) % 1000:03d}"
    who, what = event.job or event.node, event.state or ""
    row = f"{event.seq:>8} {when} {event.region:<10} {event.kind:<7} {who:<24} {what:<10} {event.detail}"
    if row.isprintable():
        return row
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in row)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``audit`` and its actions to the ``fed`` subcommands."""
    p = sub.add_parser(
        "audit",
        parents=[common],
        help="the audit trail: replay it, check the invariants",
        description="Every claim, release, job record (with its decision), submission, cancel and agent "
        "report, from each region's audit stream (it refuses delete and purge), one region's with "
        "--region, or the hub's AUDIT_ALL with --all. A region cut off from the hub reads its own.",
    )
    audit = p.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    descriptions = {
        "replay": "Print the timeline, each event with its audit sequence. By default every region's own "
        "audit stream, merged by the time each region stored its events: a job handed off to another "
        "region shows both halves. The table hides the scheduler's core-input journal (counted in a "
        "last line; --inputs shows it). --format jsonl is the export: every event, every line valid "
        "JSON whatever a message held (subjects.md).",
    }
    for name, text, default in (
        (
            "replay",
            "print the timeline, with sequence numbers",
            "every region, each from its own stream, merged by time",
        ),
        (
            "check",
            "rebuild the state from the log and check the invariants; exit 1 on any violation or gap",
            "every region, each from its own stream, in turn",
        ),
        (
            "verify",
            "re-run the placement core on its recorded inputs; exit 1 at the first different decision",
            "every region, each from its own stream, in turn",
        ),
    ):
        description = descriptions.get(name, f"{text[0].upper()}{text[1:]}.")
        q = audit.add_parser(name, parents=[common], help=text, description=description)
        scope = q.add_mutually_exclusive_group()
        scope.add_argument("--region", help=f"one region's own audit stream (default: {default})")
        scope.add_argument(
            "--all", action="store_true", help="every region, from the hub's AUDIT_ALL (one stream)"
        )
        if name == "replay":
            q.add_argument("--since", help="only events stored in the last DURATION (e.g. 2h, 30m)")
            q.add_argument(
                "--from-seq",
                type=int,
                default=0,
                help="start at this audit sequence (with --region or --all: each stream numbers its own)",
            )
            q.add_argument("--job", help="only events about this job (ledgers holding it included)")
            q.add_argument("--node", help="only events about this node")
            q.add_argument("--tenant", help="only this tenant's submissions and records")
            q.add_argument(
                "--inputs",
                action="store_true",
                help="table: also show the scheduler's core-input journal messages ('N bytes of core "
                "inputs', what `fed audit verify` reads); hidden by default and counted in a last line. "
                "jsonl always carries them",
            )
            q.add_argument(
                "--format",
                choices=["table", "jsonl"],
                default="table",
                help="jsonl: one event per line, every line valid JSON whatever was stored (subjects.md)",
            )
        else:
            q.add_argument(
                "--json",
                action="store_true",
                help='one JSON document: "ok", and each scope\'s "report" (or the "error" reading it)',
            )
        q.set_defaults(func=cmd_audit)
