"""``fed console``: serve the web console of a federation (``fed up`` runs one by itself)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from federation.cli.common import state_dir
from federation.errors import InvalidRequest


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidRequest(f"--listen wants HOST:PORT (e.g. 127.0.0.1:7480), not {value!r}")
    return host, int(port)


def _default_identity(directory: Path) -> str:
    """The auditor's key file of the federation run from ``directory``, when there is one: the
    console reads as an auditor unless given other credentials."""
    from federation.ops.keyring import Keyring

    if not (directory / "creds").is_dir():
        return ""
    keyring = Keyring.of(directory)
    return str(keyring.path("auditor", "auditor")) if keyring.find("auditor", "auditor") else ""


async def cmd_console(args: argparse.Namespace) -> int:
    from federation.client import Client
    from federation.config import connection_credentials, load_connection
    from federation.console.server import Console
    from federation.identity import load_credentials, use_credentials

    host, port = _listen(args.listen)
    source = Path(args.connection) if args.connection else state_dir(args)
    connection = load_connection(source)
    home = source.parent if args.connection else source  # where the federation's keys are kept
    auditor = "" if os.environ.get("FED_CREDS") else _default_identity(home)
    if auditor:  # the auditor's key of the state directory's federation: read-only by default
        use_credentials(load_credentials(auditor))
        os.environ["FED_CREDS"] = auditor
    credentials = connection_credentials(connection)
    if credentials is not None and credentials.kind == "tenant":
        raise InvalidRequest(
            "the console reads the federation's streams, which a tenant's credentials cannot: "
            "use an auditor's (read-only) or an operator's (to cancel jobs)"
        )
    can_cancel = credentials is not None and credentials.kind == "admin"
    client = Client(connection, credentials)
    console = Console(client, can_cancel=can_cancel)
    url = await console.start(host, port)
    who = f"{credentials.kind} {credentials.name}" if credentials else "no credentials"
    print(f"console: {url} (as {who}: {'may cancel jobs' if can_cancel else 'read-only'})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await console.stop()
        await client.close()
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``console`` to the ``fed`` subcommands."""
    p = sub.add_parser(
        "console",
        parents=[common],
        help="serve the web console (fed up runs one)",
        description="A live web view of a federation: the regions and their links, each region's "
        "nodes (cores and GPUs by id, who holds them) and queue, the jobs table, each job's "
        "history, decision and output as it is written, and the audit. It reads what the "
        "federation publishes (no scheduler is asked anything). Read-only with an auditor's "
        "credentials (the default where the state directory has them); with an operator's "
        "(--creds <state-dir>/creds/admin.admin.nk) it also offers to cancel jobs.",
    )
    p.add_argument(
        "--listen", default="127.0.0.1:7480", help="HOST:PORT to serve on (default 127.0.0.1:7480)"
    )
    p.add_argument(
        "--connection",
        help="a federation's connection file (default: <state-dir>/federation.json), e.g. "
        "compose/federation.json",
    )
    p.set_defaults(func=cmd_console)
