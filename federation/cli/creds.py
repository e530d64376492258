"""``fed creds``: the identities a federation's servers accept (see :mod:`federation.ops.auth`).

``add-agent``, ``add-tenant`` and ``add-auditor`` create a key and its credentials file in the
keyring (``<state-dir>/creds``); ``revoke`` removes one. With a federation running from the same
state directory (``fed up``), the servers reload their configuration before the command returns: a
new identity can connect at once, a revoked one is disconnected at once. ``fed up`` does the reload
(it knows every server's current address, also after a restart) and reports each server's outcome;
the command fails, naming the servers, unless every running server took the change (a server that
is down starts with it). ``reload`` asks again. For servers run
elsewhere, ``render`` prints the ``accounts`` block to put in their configuration (then
``nats-server --signal reload``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from federation.cli.common import print_json, state_dir
from federation.config import Connection, load_connection, load_reload_report
from federation.errors import FederationUnavailable
from federation.ops import auth
from federation.ops.keyring import Keyring
from federation.ops.launcher import server_pids


def _keyring(args: argparse.Namespace) -> Keyring:
    return Keyring.of(state_dir(args))


async def reload_servers(state_dir: Path, deadline: float = 60.0) -> tuple[bool, str]:
    """Have the federation running from ``state_dir`` reload its servers' configuration (``fed up``
    renders it from the keyring on SIGHUP, restarted servers included) and wait for its report.
    Returns whether every server has the change (a server that is down starts with it), and what
    happened, server by server where one does not have it."""
    try:
        connection: Connection | None = load_connection(state_dir)
    except FederationUnavailable:
        connection = None
    if connection is None or not _is_fed_up(connection.pid):  # a stale file's pid may be anyone's now
        running = [pid for pid in server_pids(state_dir) if _is_nats_server(pid)]
        if running:  # a fed up still starting (no connection file yet), or one that was killed
            return False, (
                f"nats-servers of this state directory run (pids {', '.join(map(str, running))}) but no "
                "fed up answers for them: the change is NOT applied there; run fed creds reload once "
                "fed up is up, or stop them"
            )
        return True, "no federation runs from this state directory: servers started later accept the change"
    asked = time.time()
    os.kill(connection.pid, signal.SIGHUP)
    end = time.monotonic() + deadline
    report = load_reload_report(state_dir)
    while report is None or report.requested_at < asked:
        if time.monotonic() > end or not _is_fed_up(connection.pid):
            return False, (
                f"fed up (pid {connection.pid}) did not confirm the reload within {deadline:.0f}s: "
                "the servers may still run with the old identities; see its output"
            )
        await asyncio.sleep(0.05)
        report = load_reload_report(state_dir)
    lines = [
        f"  nats-server {name}: {outcome}"
        for name, outcome in report.servers.items()
        if outcome != "reloaded"
    ]
    if report.failed:
        head = (
            f"NOT applied on {len(report.failed)} of {len(report.servers)} servers "
            "(they still run with the old identities):"
        )
        return False, "\n".join([head, *lines])
    return True, "\n".join([f"{len(report.servers)} servers have the change", *lines])


def _region_url(args: argparse.Namespace, region: str) -> str:
    """The region's client URL from the running federation's connection file (else a placeholder)."""
    try:
        connection = load_connection(state_dir(args))
    except FederationUnavailable:
        return "URL"
    endpoint = connection.regions.get(region)
    return endpoint.url if endpoint else "URL"


def _is_nats_server(pid: int) -> bool:
    try:
        process = psutil.Process(pid)
        return "nats-server" in process.name() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_fed_up(pid: int) -> bool:
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, ValueError):
        return False
    return "up" in argv and any("federation" in part or part.endswith("fed") for part in argv)


async def cmd_add(args: argparse.Namespace) -> int:
    kind = args.creds_command.removeprefix("add-")
    region = getattr(args, "region", None) or ""
    path = _keyring(args).add(kind, args.name, region)
    print(f"{kind} {args.name}: credentials in {path} (mode 0600: hand it over securely)")
    applied, outcome = await reload_servers(state_dir(args))
    print(outcome, file=sys.stdout if applied else sys.stderr)
    if not applied:
        print(
            f"error: {kind} {args.name} is in the keyring but not every server accepts it yet",
            file=sys.stderr,
        )
        return 1
    if kind == "agent":
        url = _region_url(args, region)
        print(f"run it: fed agent --region {region} --node {args.name} --creds {path} --url {url}")
    elif kind == "tenant":
        print(f"use it: FED_CREDS={path} fed submit -- COMMAND   (then fed jobs, fed logs ID: its own only)")
    else:
        print(f"use it: FED_CREDS={path} fed audit check")
    return 0


async def cmd_revoke(args: argparse.Namespace) -> int:
    region = getattr(args, "region", None) or ""
    found = _keyring(args).revoke(args.kind, args.name, region)
    applied, outcome = await reload_servers(state_dir(args))
    if not applied:
        print(outcome, file=sys.stderr)
        print(
            f"error: {found.label} ({found.public_key}) is removed from the keyring, but the servers "
            "named above still accept it; `fed creds reload` retries once they answer",
            file=sys.stderr,
        )
        return 1
    print(f"revoked {found.label} ({found.public_key})")
    print(outcome)
    return 0


async def cmd_reload(args: argparse.Namespace) -> int:
    applied, outcome = await reload_servers(state_dir(args))
    print(outcome, file=sys.stdout if applied else sys.stderr)
    return 0 if applied else 1


async def cmd_list(args: argparse.Namespace) -> int:
    keyring = _keyring(args)
    rows = keyring.identities()
    if args.json:
        listed = []
        for i in rows:
            path = keyring.path(i.kind, i.name, i.region)
            held = str(path) if path.exists() else ""
            listed.append(
                {
                    "kind": i.kind,
                    "region": i.region,
                    "name": i.name,
                    "public_key": i.public_key,
                    "key_file": held,
                }
            )
        return print_json(listed)
    if not rows:
        print(f"no identities in {keyring.directory} (authentication is off, or no federation ran here)")
        return 0
    print(f"{'KIND':<10} {'REGION':<12} {'NAME':<24} {'CREDENTIALS':<12} PUBLIC KEY")
    for i in rows:
        held = "here" if keyring.path(i.kind, i.name, i.region).exists() else "-"
        print(f"{i.kind:<10} {i.region or '-':<12} {i.name:<24} {held:<12} {i.public_key}")
    return 0


async def cmd_render(args: argparse.Namespace) -> int:
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    print(auth.accounts(_keyring(args).identities(), regions, args.domain))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``creds`` to the ``fed`` subcommands."""
    p = sub.add_parser(
        "creds",
        parents=[common],
        help="add, list and revoke the identities the servers accept",
        description="Every process connects with its own nkey and only the permissions of its role: an "
        "agent speaks for its node only, a tenant sees only its jobs, an auditor only reads. Changes "
        "reach a running fed up's servers before the command returns (a revoked key is cut off).",
    )
    creds = p.add_subparsers(dest="creds_command", required=True, metavar="ACTION")
    q = creds.add_parser("add-agent", parents=[common], help="a node's agent: its own subjects only")
    q.add_argument("name", metavar="NODE")
    q.add_argument("--region", required=True)
    q.set_defaults(func=cmd_add)
    q = creds.add_parser("add-tenant", parents=[common], help="a submitter: its own jobs and logs only")
    q.add_argument("name", metavar="TENANT")
    q.set_defaults(func=cmd_add)
    q = creds.add_parser("add-auditor", parents=[common], help="read-only access to the audit trail")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=cmd_add)
    q = creds.add_parser("revoke", parents=[common], help="remove an identity; its connections are closed")
    q.add_argument("kind", choices=auth.KINDS)
    q.add_argument("name")
    q.add_argument("--region", help="an agent's region")
    q.set_defaults(func=cmd_revoke)
    q = creds.add_parser(
        "reload", parents=[common], help="have a running fed up's servers take the keyring again"
    )
    q.set_defaults(func=cmd_reload)
    q = creds.add_parser("list", parents=[common], help="every identity the servers accept")
    q.add_argument("--json", action="store_true", help="JSON array: kind, region, name, public key, key file")
    q.set_defaults(func=cmd_list)
    q = creds.add_parser(
        "render", parents=[common], help="print a server's accounts block (for servers run elsewhere)"
    )
    q.add_argument("--regions", required=True, help="the federation's regions, comma-separated")
    q.add_argument("--domain", required=True, help="the server's domain: hub, or its region")
    q.set_defaults(func=cmd_render)
