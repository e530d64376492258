"""``fed creds``: the identities a federation's servers accept (see :mod:`federation.auth`).

``add-agent``, ``add-tenant`` and ``add-auditor`` create a key and its credentials file in the
keyring (``<state-dir>/creds``); ``revoke`` removes one. With a federation running from the same
state directory (``fed up``), the servers reload their configuration before the command returns: a
new identity can connect at once, a revoked one is disconnected at once. For servers run
elsewhere, ``render`` prints the ``accounts`` block to put in their configuration (then
``nats-server --signal reload``).
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

from federation import auth
from federation.config import load_connection
from federation.errors import FederationUnavailable
from federation.keyring import Keyring
from federation.monitor import config_load_time, reloaded


def _state_dir(args: argparse.Namespace) -> Path:
    from federation.cli import _state_dir  # the entry point is loaded by then

    return _state_dir(args)


def _keyring(args: argparse.Namespace) -> Keyring:
    return Keyring.of(_state_dir(args))


async def reload_servers(state_dir: Path) -> str:
    """Have the federation running from ``state_dir`` reload its servers' configuration (``fed up``
    renders it from the keyring on SIGHUP); wait until every server did. Returns what happened."""
    try:
        connection = load_connection(state_dir)
    except FederationUnavailable:
        return "no federation runs from this state directory: servers started later accept the change"
    monitors = [connection.hub_monitor] + [r.monitor for r in connection.regions.values()]
    monitors = [m for m in monitors if m]
    if not _is_fed_up(connection.pid):  # a stale file's pid may be anyone's now: never signal it
        return f"fed up (pid {connection.pid}) is not running: servers started later accept the change"
    before = {m: await config_load_time(m) for m in monitors}
    os.kill(connection.pid, signal.SIGHUP)
    await reloaded(before)
    return f"{len(monitors)} servers reloaded"


def _is_fed_up(pid: int) -> bool:
    import psutil

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
    print(await reload_servers(_state_dir(args)))
    if kind == "agent":
        print(f"run it: fed agent --region {region} --node {args.name} --creds {path} --url ...")
    elif kind == "tenant":
        print(f"use it: FED_CREDS={path} fed submit -- COMMAND   (then fed jobs, fed logs ID: its own only)")
    else:
        print(f"use it: FED_CREDS={path} fed audit check")
    return 0


async def cmd_revoke(args: argparse.Namespace) -> int:
    region = getattr(args, "region", None) or ""
    found = _keyring(args).revoke(args.kind, args.name, region)
    print(f"revoked {found.label} ({found.public_key})")
    print(await reload_servers(_state_dir(args)))
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    keyring = _keyring(args)
    rows = keyring.identities()
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
    q = creds.add_parser("list", parents=[common], help="every identity the servers accept")
    q.set_defaults(func=cmd_list)
    q = creds.add_parser(
        "render", parents=[common], help="print a server's accounts block (for servers run elsewhere)"
    )
    q.add_argument("--regions", required=True, help="the federation's regions, comma-separated")
    q.add_argument("--domain", required=True, help="the server's domain: hub, or its region")
    q.set_defaults(func=cmd_render)
