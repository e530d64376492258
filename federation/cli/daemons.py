"""``fed scheduler`` and ``fed agent``: the daemons, as ``fed up`` and a deployment's units start
them. Thin: flags (or a TOML file) -> config Struct -> the daemon's ``serve``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from federation import tracing
from federation.cli.common import amounts, pairs, state_dir
from federation.config import AgentConfig, SchedulerConfig, convert, load_toml
from federation.errors import ConfigError
from federation.resources import parse_memory


def _use_tls(args: argparse.Namespace) -> None:
    """A daemon's ``--tls-ca/--tls-cert/--tls-key``: every connection it opens uses them."""
    from federation.identity import TlsFiles, use_tls

    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given) and not all(given):
        raise ConfigError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    if all(given):
        use_tls(TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key))


async def cmd_scheduler(args: argparse.Namespace) -> int:
    from federation.scheduler.daemon import serve

    _use_tls(args)

    overrides: dict[str, Any] = {"region": args.region} if args.region else {}
    if args.url:
        overrides["nats_url"] = args.url
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.name:
        overrides["name"] = args.name
    if args.lease_ttl:
        overrides["lease_ttl"] = args.lease_ttl
    if args.monitor_url:
        overrides["monitor_url"] = args.monitor_url
    if args.peers:
        overrides["peers"] = [p.strip() for p in args.peers.split(",") if p.strip()]
    if args.replicas:
        overrides["replicas"] = args.replicas
    config = (
        load_toml(Path(args.config), SchedulerConfig, overrides)
        if args.config
        else convert(overrides, SchedulerConfig, "flags")
    )
    tracing.configure(f"fed-scheduler-{config.region}")
    await serve(config, Path(args.config) if args.config else None, overrides, metrics=args.metrics or "")
    return 0


async def cmd_agent(args: argparse.Namespace) -> int:
    from agents.agent import serve

    _use_tls(args)

    overrides: dict[str, Any] = {}
    for key in ("region", "node"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.url:
        overrides["nats_url"] = args.url
    if args.cpu is not None:
        overrides["cpu"] = args.cpu
    if args.memory is not None:
        overrides["memory"] = parse_memory(args.memory)
    if args.gpu_id:
        overrides["gpu_ids"] = args.gpu_id
    if args.label:
        overrides["labels"] = pairs(args.label, "--label")
    if args.resource:
        overrides["custom"] = amounts(args.resource, "--resource")
    if args.max_allocations is not None:
        overrides["sharing"] = {"max_offers_per_node": args.max_allocations}
    if args.run_as:
        overrides["run_as"] = args.run_as
    if args.confine_writes:
        overrides["confine_writes"] = True
    if args.isolation:
        overrides["isolation"] = args.isolation
    overrides["state_dir"] = str(state_dir(args))
    config = (
        load_toml(Path(args.config), AgentConfig, overrides)
        if args.config
        else convert(overrides, AgentConfig, "flags")
    )
    tracing.configure(f"fed-agent-{config.node}")
    await serve(config, metrics=args.metrics or "")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``scheduler`` and ``agent`` to the ``fed`` subcommands."""
    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--tls-ca", help="CA bundle (PEM) the server's certificate must chain to")
    tls.add_argument("--tls-cert", help="this daemon's client certificate (PEM)")
    tls.add_argument("--tls-key", help="the key of --tls-cert (PEM)")
    tls.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: a free port, logged at "
        "start; default: off)",
    )

    p = sub.add_parser("scheduler", parents=[common, tls], help="run a region's scheduler daemon")
    p.add_argument("--region")
    p.add_argument("--url", help="the region's NATS server URL (a cluster: its URLs, comma-separated)")
    p.add_argument("--config", help="TOML file with scheduler options")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--peers",
        help="ignored (older versions sourced these regions' summaries): every region's view now "
        "reaches every region by itself",
    )
    p.add_argument(
        "--replicas",
        type=int,
        help="copies of each stream (default 1; 3 on a region's 3-server cluster, which then survives a "
        "server loss)",
    )
    p.add_argument(
        "--monitor-url", help="the server's monitoring URL (http://host:8222): checks sync_interval at start"
    )
    p.add_argument(
        "--name", help="this scheduler's name in the region's lease, with its pid (default: the host name)"
    )
    p.add_argument(
        "--lease-ttl",
        type=float,
        help="seconds a leader's lease lasts unrenewed (default 5); a standby takes over after it",
    )
    p.set_defaults(func=cmd_scheduler, daemon=True)

    p = sub.add_parser("agent", parents=[common, tls], help="run a node's agent daemon")
    p.add_argument("--region")
    p.add_argument("--node")
    p.add_argument("--url", help="the region's NATS server URL (a cluster: its URLs, comma-separated)")
    p.add_argument(
        "--config", help="TOML file: agent options, a [sharing] policy table and [limits] for workloads"
    )
    p.add_argument(
        "--run-as", help="run workloads as this unprivileged user (the agent must start as root to switch)"
    )
    p.add_argument(
        "--confine-writes",
        action="store_true",
        help="workloads may change files only in their own working directory (Linux Landlock)",
    )
    p.add_argument(
        "--isolation",
        choices=["auto", "cgroups", "none"],
        help="a cgroup per attempt: where writable (auto, the default), required (cgroups), or off (none)",
    )
    p.add_argument("--cpu", type=int, help="cores to declare (default: the host's)")
    p.add_argument("--memory", help="memory to declare, e.g. 8GiB (default: the host's)")
    p.add_argument("--gpu-id", action="append", help="declare a GPU id (repeat); default: NVML's GPUs")
    p.add_argument("--label", action="append", help="node label KEY=VALUE (repeat), e.g. city=AMS")
    p.add_argument("--max-allocations", type=int, help="max concurrent allocations (max_offers_per_node)")
    p.add_argument(
        "--resource", action="append", help="custom resource NAME=AMOUNT this node offers (repeat)"
    )
    p.set_defaults(func=cmd_agent, daemon=True)
