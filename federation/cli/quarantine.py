"""``fed quarantine``: the messages a region's scheduler refused (too large, not the schema, or not
what their subject allows), each with its reason, from the region's quarantine stream."""

from __future__ import annotations

import argparse
import time
from typing import Any

from federation.cli.common import print_json, state_dir


async def cmd_quarantine(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        records = await fed.quarantined(region=args.region)
    if args.json:
        return print_json(records)
    if not records:
        print("no quarantined messages")
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.at))
        print(f"{when}  {record.subject}  ({record.size} bytes, seq {record.sequence})\n    {record.reason}")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``quarantine`` to the ``fed`` subcommands."""
    p = sub.add_parser("quarantine", parents=[common], help="refused messages and why they were refused")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="JSON array of quarantine records")
    p.set_defaults(func=cmd_quarantine)
