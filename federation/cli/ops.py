"""Operator commands of ``fed`` for deployments beyond one machine: ``fed config render``, ``fed
config keys`` and ``fed provision``."""

from __future__ import annotations

import argparse
import difflib
import os
from pathlib import Path
from typing import Any

from federation import subjects
from federation.errors import ConfigError
from federation.ops import deploy

EXIT_STALE = 1


def _regions(args: argparse.Namespace) -> list[str]:
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    for region in regions:
        subjects.check_region(region)
    return regions


async def cmd_render(args: argparse.Namespace) -> int:
    regions = _regions(args)
    files = deploy.compose_files(regions)
    out = Path(args.out)
    if args.check:  # compare with what is there, write nothing
        stale = []
        for name, text in sorted(files.items()):
            path = out / name
            current = path.read_text() if path.exists() else ""
            if current != text:
                stale.append(name)
                diff = difflib.unified_diff(
                    current.splitlines(True),
                    text.splitlines(True),
                    f"{path} (committed)",
                    f"{path} (rendered)",
                )
                print("".join(diff), end="")
        if stale:
            print(f"{len(stale)} files differ from the rendering: {', '.join(stale)}")
            return EXIT_STALE
        print(f"{len(files)} files up to date in {out}")
        return 0
    for path in deploy.write(files, out):
        print(f"wrote {path}")
    if not (out / deploy.CREDS_DIR / "identities.json").exists():
        print(f"no keys yet: run `fed config keys --out {out}` before starting it (they are not committed)")
    return 0


async def cmd_keys(args: argparse.Namespace) -> int:
    """Make the keys of every identity the compose deployment uses (once: existing ones are kept)
    and render each server's ``auth.conf`` from the keyring, tenants and auditors added with
    ``fed creds --state-dir <out>`` included. The key files the containers mount are made
    readable by their users (0644: the daemons run as another uid than the files' owner) inside
    ``<out>/creds``, which only its owner may open (0700)."""
    from federation.ops.keyring import Keyring, write_private

    regions = _regions(args)
    out = Path(args.out)
    keyring = Keyring.of(out)  # <out>/creds, as `fed creds --state-dir <out>` finds it
    made = []
    for kind, name, region in deploy.compose_identities(regions):
        path = keyring.path(kind, name, region)
        if keyring.find(kind, name, region) is None or not path.exists():
            made.append(path.name)
        keyring.add(kind, name, region, exist_ok=True)
    mounted = [keyring.path("admin", "admin")]  # hub-provision's
    mounted += [keyring.directory / daemon.key_file for daemon in deploy.compose_daemons(regions)]
    seeds = {region: keyring.credentials("leaf", region).seed for region in regions}
    for name, text in sorted(deploy.compose_auth_files(keyring.identities(), seeds, regions).items()):
        path = keyring.directory / name
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(path, text)
        mounted.append(path)
        print(f"wrote {path}")
    for path in mounted:
        os.chmod(path, 0o644)
    kept = len(keyring.identities()) - len(made)
    print(f"{len(made)} new keys, {kept} kept, in {keyring.directory}: secret, never commit it")
    print("running servers take a change with `docker compose kill -s HUP <servers>`, others when started")
    return 0


async def cmd_provision(args: argparse.Namespace) -> int:
    from federation.bus import Bus
    from federation.ops.provision import provision, provision_audit_all

    if not args.region:
        raise ConfigError("name a region (--region R; with --hub, every region: repeat it)")
    if not args.hub and len(args.region) > 1:
        raise ConfigError("a region's server holds that region only: provision one --region per server")
    for region in args.region:
        subjects.check_region(region)
    bus = await Bus.connect(args.url, "fed-provision", retry_forever=False)
    try:
        if args.hub:
            await provision_audit_all(bus, args.region)
            print(f"{subjects.AUDIT_ALL} sources the audit streams of {', '.join(args.region)}")
        else:
            (region,) = args.region
            await provision(bus, region, args.replicas)
            kept = f"{args.replicas} replicas" if args.replicas else "replica counts kept"
            print(f"region {region}: streams and buckets provisioned ({kept})")
    finally:
        await bus.close()
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``config`` and ``provision`` to the ``fed`` subcommands."""
    p = sub.add_parser(
        "config",
        parents=[common],
        help="render deployment files (compose/ and its NATS server configs) and make their keys",
        description="Render the Docker Compose deployment (a hub and regions of three NATS servers, two "
        "schedulers and two agents each, Prometheus and Grafana) and its server configs from the code "
        "`fed up` uses; make the keys it runs with (once per deployment, never committed).",
    )
    config = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    regions = ",".join(deploy.COMPOSE_REGIONS)
    q = config.add_parser(
        "render",
        parents=[common],
        help="write compose.yaml, nats/*.conf, federation.json, prometheus/ and grafana/",
    )
    q.add_argument("--out", default="compose", help="directory to write into (default: compose)")
    q.add_argument("--regions", default=regions, help="comma-separated region names")
    q.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files differ")
    q.set_defaults(func=cmd_render)
    q = config.add_parser(
        "keys",
        parents=[common],
        help="make the deployment's keys (<out>/creds) and its servers' accounts (<out>/creds/nats)",
        description="Create a key for every daemon, the operator (admin), an auditor and each region's "
        "leafnode link in <out>/creds (a keyring: `fed creds --state-dir <out>` adds tenants), and "
        "render each server's auth.conf (its accounts, a region's leafnode seed) from it. Run it once "
        "before the first `docker compose up`, and again after a `fed creds` change; existing keys are "
        "kept. Nothing it writes is committed.",
    )
    q.add_argument("--out", default="compose", help="the deployment's directory (default: compose)")
    q.add_argument("--regions", default=regions, help="comma-separated region names (as rendered)")
    q.set_defaults(func=cmd_keys)

    p = sub.add_parser(
        "provision",
        parents=[common],
        help="create a region's streams and buckets, or the hub's AUDIT_ALL",
        description="Schedulers provision their region when they start; run this ahead of them (e.g. with "
        "--replicas 3 on a clustered region), or with --hub to make the hub's AUDIT_ALL source every "
        "region's audit stream.",
    )
    p.add_argument("--url", required=True, help="the server to provision (comma-separated for a cluster)")
    p.add_argument("--region", action="append", default=[], help="the region (with --hub: repeat for each)")
    p.add_argument(
        "--replicas", type=int, help="copies of each stream (default: keep what exists, 1 for new streams)"
    )
    p.add_argument("--hub", action="store_true", help="provision the hub's AUDIT_ALL for these regions")
    p.set_defaults(func=cmd_provision)
