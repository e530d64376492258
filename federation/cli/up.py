"""``fed up``: a local multi-region federation on this machine, and ``fed chaos``: cutting and
healing its regions' links to the hub (``fed up --chaos``)."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from federation import subjects
from federation.cli.common import print_json, state_dir
from federation.cli.progress import Progress
from federation.errors import FederationUnavailable, InvalidRequest
from federation.resources import parse_capacity, parse_duration
from federation.schemas import ChaosCommand, ChaosState


async def cmd_up(args: argparse.Namespace) -> int:
    from federation.ops.launcher import Options, up

    capacity = {"cpu": 4, "memory": 8 * 1024**3, "gpu": 0}
    capacity.update(parse_capacity(args.node_capacity))
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    options = Options(
        state_dir=state_dir(args),
        regions=regions,
        agents=args.agents,
        capacity=capacity,
        durable=args.durable,
        log_level=args.log_level,
        schedulers=args.schedulers,
        chaos=args.chaos,
        tls=args.tls,
        auth=args.auth,
        tour=not args.plain,
        console=args.console,
    )
    progress = Progress()

    def echo(line: str) -> None:  # a line printed takes the place of the progress drawn
        progress.clear()
        print(line, flush=True)

    await up(options, echo, lambda text: progress.show(text, force=True))
    return 0


async def cmd_chaos(args: argparse.Namespace) -> int:
    from federation.bus import Bus
    from federation.config import connection_credentials, connection_tls, load_connection

    connection = load_connection(state_dir(args))
    credentials = connection_credentials(connection)
    request = ChaosCommand(
        region=getattr(args, "region", None) or "",
        seconds=parse_duration(args.duration) if getattr(args, "duration", None) else 0.0,
        mode=getattr(args, "mode", None) or "cut",
    )
    bus = await Bus.connect(
        connection.hub_url,
        "fed-chaos",
        retry_forever=False,
        tls=connection_tls(connection),
        credentials=credentials,
    )
    try:
        try:
            data = await bus.request(
                subjects.chaos(subjects.HUB, args.chaos_command), msgspec.json.encode(request)
            )
        except FederationUnavailable:
            raise FederationUnavailable(
                connection.hub_url, "nobody answers chaos requests: is fed up running with --chaos?"
            ) from None
    finally:
        await bus.close()
    state = msgspec.json.decode(data, type=ChaosState)
    if state.error:
        raise InvalidRequest(state.error)
    if args.json:
        return print_json(state)
    for region, mode in sorted(state.links.items()):
        print(f"{region:<16} {'linked' if mode == 'open' else 'PARTITIONED (' + mode + ')'}")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``up`` and ``chaos`` to the ``fed`` subcommands."""
    p = sub.add_parser(
        "up",
        parents=[common],
        help="run a local multi-region federation (Ctrl-C stops it)",
        description="Start a hub and one NATS server per region (each its own JetStream domain, "
        "leaf-linked to the hub), schedulers (one leader, optional standbys) and N agents per region. "
        "Every daemon serves Prometheus metrics on a free loopback port, and so does fed up itself "
        "(children up, restarts): the URLs are in <state-dir>/metrics.json.",
    )
    p.add_argument("--regions", default="eu-west,us-east,ap-south", help="comma-separated region names")
    p.add_argument("--agents", type=int, default=2, help="agents per region (default 2)")
    p.add_argument(
        "--node-capacity",
        default="cpu=4,memory=8GiB,gpu=0",
        help="declared capacity of each agent, e.g. cpu=4,memory=8GiB,gpu=1",
    )
    p.add_argument(
        "--durable", action="store_true", help="JetStream sync_interval: always (fsync every write)"
    )
    p.add_argument(
        "--tls",
        action="store_true",
        help="make a local CA (<state-dir>/tls) and require TLS with client certificates on every "
        "client and leafnode connection",
    )
    p.add_argument(
        "--no-auth",
        dest="auth",
        action="store_false",
        help="accept any client (default: every process presents its own nkey and gets only the "
        "permissions of its role; keys in <state-dir>/creds, see fed creds)",
    )
    p.add_argument(
        "--no-console",
        dest="console",
        action="store_false",
        help="do not serve the web console (default: on a free loopback port, read-only as the auditor; "
        "its URL is printed and in the connection file)",
    )
    p.add_argument(
        "--chaos",
        action="store_true",
        help="put a controllable proxy in every region's link to the hub (see fed chaos)",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="agents with --node-capacity only (default: each node also carries its region's city "
        "label, e.g. city=AMS in eu-west, and the last node of the last region declares 2 GPUs, ids "
        "only, so the README's tour can be followed on one machine)",
    )
    p.add_argument(
        "--schedulers",
        type=int,
        default=1,
        help="schedulers per region (default 1); with 2, one leads and one stands by to take over",
    )
    p.set_defaults(func=cmd_up)

    p = sub.add_parser(
        "chaos",
        parents=[common],
        help="cut or heal regions' links (fed up --chaos)",
        description="Partition a region from the hub (and so from every other region), heal it, or show "
        "the links. Needs a federation started with fed up --chaos.",
    )
    chaos = p.add_subparsers(dest="chaos_command", required=True, metavar="ACTION")
    q = chaos.add_parser("partition", parents=[common], help="cut REGION off")
    q.add_argument("region")
    q.add_argument("--for", dest="duration", help="heal by itself after this long, e.g. 30s")
    q.add_argument(
        "--mode", choices=["cut", "blackhole"], default="cut", help="close the link, or drop its bytes"
    )
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_chaos)
    q = chaos.add_parser("heal", parents=[common], help="restore REGION's link (default: every region's)")
    q.add_argument("region", nargs="?")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_chaos)
    q = chaos.add_parser("status", parents=[common], help="each region's link: linked or partitioned")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_chaos)
