"""``fed status``: every region's leader, nodes, offers, allocations and queue, and with ``--all``
each region's view of the others."""

from __future__ import annotations

import argparse
import re
import time
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

from federation.cli.common import print_json, state_dir
from federation.ops.launcher import read_metrics
from federation.resources import format_memory

if TYPE_CHECKING:
    from federation.client import RegionStatus

STALE_AFTER = 10.0  # seconds: a region's view of another older than this is shown stale


def _metrics_of(region: RegionStatus, recorded: dict[str, str]) -> dict[str, str]:
    """The metrics URLs of ``region``'s daemons among those ``fed up`` recorded: its schedulers
    (``scheduler-<region>``, standbys ``scheduler-<region>-<n>``), its nodes' agents
    (``agent-<node>``), and the supervisor's (``fed-up``)."""
    standby = re.compile(rf"scheduler-{re.escape(region.region)}-\d+")
    nodes = {f"agent-{node.node}" for node in region.nodes}
    return {
        name: url
        for name, url in sorted(recorded.items())
        if name in ("fed-up", f"scheduler-{region.region}") or standby.fullmatch(name) or name in nodes
    }


async def cmd_status(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(state_dir(args)) as fed:
        regions = await fed.status()
    if args.json:
        recorded = read_metrics(state_dir(args))
        console = fed.connection.console
        return print_json(
            [
                replace(
                    region,
                    metrics=_metrics_of(region, recorded),
                    console=f"{console}/regions/{region.region}" if console else "",
                )
                for region in regions
            ]
        )
    now = time.time()
    for region in regions:
        if not region.reachable:
            print(f"region {region.region}: UNREACHABLE ({region.error})")
            continue
        counts = " ".join(f"{k}={v}" for k, v in sorted(region.jobs.items())) or "no jobs"
        if region.tenant:  # nodes, leaders and views are the operators': a tenant sees its own jobs
            print(f"region {region.region}  {region.url}  tenant {region.tenant}'s jobs: {counts}")
            if region.queue:
                print(f"  queue ({region.jobs.get('pending', 0)} pending): {' '.join(region.queue[:10])}")
            continue
        leader = (
            f"leader {region.leader.holder} (epoch {region.leader.epoch})" if region.leader else "NO LEADER"
        )
        print(f"region {region.region}  {region.url}  {leader}  jobs: {counts}")
        if region.leader is not None and region.leader.heartbeat > 0:
            lease = region.leader
            print(
                f"  cadence: heartbeats every {lease.heartbeat:g}s (a node is lost after "
                f"{3 * lease.heartbeat:g}s), offers refreshed every {lease.offer_refresh:g}s: "
                f"{lease.nodes} nodes within {lease.node_budget:g} messages/s"
            )
        if region.summary is not None:
            s = region.summary
            print(
                f"  summary ({now - s.at:.0f}s old): {s.live}/{s.nodes} nodes live, "
                f"cpu {s.cpu_free}/{s.cpu} free, "
                f"memory {format_memory(s.memory_free)}/{format_memory(s.memory)}, "
                f"gpu {s.gpu_free}/{s.gpu}, load cpu {s.cpu_percent:.0f}% memory {s.memory_percent:.0f}%"
            )
        for node in region.nodes:
            offer = node.offer
            if offer is None:
                print(f"  {node.node:<16} {node.state:<8} allocations={len(node.allocations)}")
                continue
            age = now - offer.sent_at
            print(
                f"  {node.node:<16} {node.state:<8} free cpu {node.free_cpu}/{len(offer.cores)}  "
                f"memory {format_memory(max(0, node.free_memory))}/{format_memory(offer.memory)}  "
                f"gpu {node.free_gpu}/{len(offer.gpus)}  allocations={len(node.allocations)}  "
                f"offer {age:.0f}s old  isolation {offer.labels.get('isolation', '?')}"
                f"{'  (' + offer.note + ')' if offer.note else ''}"
            )
        if region.queue:
            print(f"  queue ({region.jobs.get('pending', 0)} pending): {' '.join(region.queue[:10])}")
        if args.all:
            views = []
            for peer in (r.region for r in regions if r.region != region.region):
                view = region.views.get(peer)
                if view is None:
                    views.append(f"{peer} (none yet)")
                    continue
                age = now - view.at
                stale = "STALE, " if age > STALE_AFTER else ""
                views.append(
                    f"{peer} ({stale}{age:.0f}s old, "
                    f"cpu {view.cpu_free}/{view.cpu}, gpu {view.gpu_free}/{view.gpu})"
                )
            print(f"  sees: {'; '.join(views) or 'no other region'}")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``status`` to the ``fed`` subcommands."""
    p = sub.add_parser("status", parents=[common], help="regions, nodes, offers, allocations, queue")
    p.add_argument("--json", action="store_true", help="machine-readable (documented in subjects.md)")
    p.add_argument(
        "--all",
        action="store_true",
        help="also each region's view of the others, with its age (stale past 10 s)",
    )
    p.set_defaults(func=cmd_status)
