"""``fed quarantine``: the messages a region's scheduler refused (too large, not the schema, or not
what their subject allows), each with its reason, from the region's quarantine stream."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from federation.cli.common import print_json, state_dir
from federation.errors import InvalidRequest


async def cmd_quarantine(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        if args.limit < 0:
            raise InvalidRequest(f"--limit must be 0 (every message) or more, not {args.limit}")
        records = await fed.quarantined(region=args.region, limit=args.limit)
    if args.json:
        print_json(records)
    else:
        if not records:
            print("no quarantined messages")
        for record in records:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.at))
            print(f"{when}  {record.subject}  ({record.size} bytes, seq {record.sequence})")
            print(f"    {record.reason}")
    if args.limit and len(records) == args.limit:  # on stderr: --json's array stays what it was
        print(f"(the {args.limit} newest; --limit 0 lists every one)", file=sys.stderr)
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``quarantine`` to the ``fed`` subcommands."""
    p = sub.add_parser("quarantine", parents=[common], help="refused messages and why they were refused")
    p.add_argument("--region")
    p.add_argument(
        "--limit",
        type=int,
        default=100,
        help="only the N newest (default 100), read from the end of the stream; 0: every one",
    )
    p.add_argument("--json", action="store_true", help="JSON array of quarantine records")
    p.set_defaults(func=cmd_quarantine)
