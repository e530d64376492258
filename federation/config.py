"""Configuration: daemon options, the agent's sharing policy, and the connection file.

Config files are TOML, converted into Structs with ``forbid_unknown_fields=True``: a typo in a
config must fail loudly, naming the key, not be ignored. Flags override file values.

The state directory (``--state-dir``, else ``$FED_STATE_DIR``, else a per-user data directory)
holds the connection file ``federation.json`` that ``fed up`` writes and every other ``fed``
command reads, so nothing needs flags once a federation runs.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from federation.core.policy import Policy
from federation.errors import ConfigError, FederationUnavailable
from federation.identity import Credentials, TlsFiles

T = TypeVar("T")

Positive = Annotated[float, msgspec.Meta(gt=0)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class SharingPolicy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What an agent is willing to share, re-evaluated every ``check_interval`` seconds.

    A resource is offered only while the host's own load (excluding federation workloads) stays
    under its ``*_max`` utilisation and leaves at least its ``*_min`` free; otherwise that resource
    is offered as zero until the host calms down. ``offer_expiry`` bounds how long a scheduler may
    trust an offer; ``max_offers_per_node`` caps concurrent allocations on the node.
    """

    enabled: bool = True
    check_interval: Positive = 2.0
    offer_expiry: Positive = 10.0
    max_offers_per_node: Annotated[int, msgspec.Meta(ge=0)] = 32
    cpu_percent_max: Percent = 100.0
    cpu_min_cores: NonNegative = 0.0
    memory_percent_max: Percent = 100.0
    memory_min_gb: NonNegative = 0.0
    gpu_utilization_max: Percent = 100.0
    gpu_memory_min_mb: NonNegative = 0.0


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Resource limits of every workload process (``setrlimit``; 0: no limit, the default).

    ``address_space`` is the floor of each process's virtual memory limit: a job that asks for
    more memory gets what it asked for. ``processes`` counts every process of the user jobs run
    as (only meaningful with ``run_as``: root is not bound by it). The agent applies them through
    util-linux's ``setpriv``/``prlimit`` (cheap); without those, through a full fork per start
    (about a third of the agent's start rate here, bench/README.md).
    """

    address_space: Annotated[int, msgspec.Meta(ge=0)] = 0  # bytes, e.g. 2 GiB
    cpu_time: Annotated[int, msgspec.Meta(ge=0)] = 0  # seconds of CPU per process
    processes: Annotated[int, msgspec.Meta(ge=0)] = 0  # e.g. 512
    file_size: Annotated[int, msgspec.Meta(ge=0)] = 0  # bytes of any one file written, e.g. 1 GiB
    open_files: Annotated[int, msgspec.Meta(ge=0)] = 0  # e.g. 1024


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Everything ``fed agent`` needs; ``cpu``/``memory`` of 0 mean "what the host has".

    ``run_as`` is the unprivileged user workloads run as (the agent must start as root to switch);
    empty runs them as the agent's own user. ``limits`` bound every workload process.
    ``confine_writes`` lets a workload create, change or remove files only beneath its own working
    directory (Landlock; it costs a full fork per start, bench/spawn.py). ``isolation`` is how an
    attempt's processes are contained: ``auto`` (a cgroup per attempt where the agent may write a
    cgroup hierarchy, else its process group), ``cgroups`` (required: the agent refuses to start
    without), ``none`` (process groups only).
    """

    region: str
    node: str
    nats_url: str = "nats://127.0.0.1:4222"
    cpu: Annotated[int, msgspec.Meta(ge=0)] = 0
    memory: Annotated[int, msgspec.Meta(ge=0)] = 0
    gpu_ids: list[str] = []
    labels: dict[str, str] = {}
    custom: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = {}
    attributes: dict[str, float | str | list[str]] = {}
    runtimes: list[str] = msgspec.field(default_factory=lambda: ["process"])
    heartbeat_interval: Positive = 1.0
    work_dir: str = ""
    state_dir: str = ""
    max_output_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024 * 1024
    kill_grace: NonNegative = 5.0
    run_as: str = ""
    confine_writes: bool = False  # Landlock: workloads change files only in their working directory
    limits: Limits = Limits()
    isolation: Literal["auto", "cgroups", "none"] = "auto"
    sharing: SharingPolicy = SharingPolicy()


class SchedulerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Everything ``fed scheduler`` needs; ``[policy]`` is reloaded while it runs.

    Several schedulers may run per region: one leads (it holds the lease, renewed within
    ``lease_ttl`` seconds), the others stand by. ``name`` (default: the host name) and the pid
    identify this one in the lease.
    """

    region: str
    nats_url: str = "nats://127.0.0.1:4222"
    monitor_url: str = ""  # the server's monitoring endpoint: lets the scheduler check durability
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 512
    tick_interval: Positive = 0.5
    lease_ttl: Annotated[float, msgspec.Meta(ge=1, le=300)] = 5.0
    max_deliver: Annotated[int, msgspec.Meta(ge=1, le=100)] = 5
    summary_interval: Positive = 2.0
    # ignored: every region's view reaches every region (fed.<region>.view); older configs name them
    peers: list[str] = []
    # each stream's copies (3 on a 3-server region); None keeps what the streams have (1 when new)
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] | None = None
    name: str = ""
    policy: Policy = msgspec.field(default_factory=Policy)


class RegionEndpoint(msgspec.Struct, kw_only=True):
    """How to reach one region of a running federation."""

    url: str
    monitor: str = ""
    nodes: list[str] = []


class Connection(msgspec.Struct, kw_only=True):
    """The connection file ``fed up`` writes (``<state-dir>/federation.json``)."""

    hub_url: str
    hub_monitor: str = ""
    regions: dict[str, RegionEndpoint] = {}
    default_region: str = ""
    pid: int = 0
    started_at: float = 0.0
    tls_ca: str = ""  # with TLS on: the CA, and the client certificate and key clients present
    tls_cert: str = ""
    tls_key: str = ""
    creds: str = ""  # with authentication on (the default): the credentials file clients present
    console: str = ""  # the web console's URL (fed up serves one unless --no-console)


CONNECTION_FILE = "federation.json"
RELOAD_FILE = "reload.json"


class ReloadReport(msgspec.Struct, kw_only=True):
    """What ``fed up`` did when asked (SIGHUP, from ``fed creds``) to make its servers take the
    keyring again (``<state-dir>/reload.json``). A server is ``reloaded`` once it reports the new
    configuration loaded, ``down`` while it is not running (``fed up`` renders the keyring into its
    configuration before restarting it, so it starts with the change) or ``failed`` with the error:
    a failed server still runs with its old configuration."""

    requested_at: float  # wall clock when fed up took the request: the CLI waits for one after its own
    finished_at: float
    servers: dict[str, str] = {}  # server name -> "reloaded" | "down: ..." | "failed: ..."

    @property
    def failed(self) -> list[str]:
        """The servers that still run with their old configuration."""
        return [name for name, outcome in self.servers.items() if outcome.startswith("failed")]


def default_state_dir() -> Path:
    """``$FED_STATE_DIR``, else ``$XDG_DATA_HOME/nats-federation``, else ``~/.local/share/...``."""
    env = os.environ.get("FED_STATE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nats-federation"


def load_connection(state_dir: Path) -> Connection:
    """Read the connection file of the federation running from ``state_dir`` (or the connection
    file ``state_dir`` names: a deployment's own, such as ``compose/federation.json``)."""
    path = state_dir if state_dir.is_file() else state_dir / CONNECTION_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=Connection)
    except FileNotFoundError:
        raise FederationUnavailable(
            str(state_dir), f"no {CONNECTION_FILE} here; start a federation with `fed up` or pass --state-dir"
        ) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(str(exc), source=str(path)) from None


def write_connection(state_dir: Path, connection: Connection) -> Path:
    """Atomically write the connection file (readers never see half of it)."""
    path = state_dir / CONNECTION_FILE
    _replace(path, msgspec.json.format(msgspec.json.encode(connection)))
    return path


def _replace(path: Path, data: bytes) -> None:
    """Write ``path`` whole, through a temporary file renamed over it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_reload_report(state_dir: Path, report: ReloadReport) -> None:
    """Atomically write ``fed up``'s latest reload report."""
    _replace(state_dir / RELOAD_FILE, msgspec.json.encode(report))


def load_reload_report(state_dir: Path) -> ReloadReport | None:
    """``fed up``'s latest reload report (None before its first reload, or if unreadable)."""
    try:
        return msgspec.json.decode((state_dir / RELOAD_FILE).read_bytes(), type=ReloadReport)
    except (FileNotFoundError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def load_toml(path: Path, kind: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Load a TOML file into ``kind``; ``overrides`` (flags) win over file values."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text()) if path else {}
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=str(path)) from None
    merged = dict(data)
    for key, value in (overrides or {}).items():  # a flag overrides one key of a table, not the table
        base = merged.get(key)
        merged[key] = {**base, **value} if isinstance(value, dict) and isinstance(base, dict) else value
    return convert(merged, kind, source=str(path))


def convert(data: dict[str, Any], kind: type[T], source: str = "config") -> T:
    """Turn a plain mapping into a config Struct, with an error that names the bad key."""
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc), source=source) from None


def connection_tls(connection: Connection) -> TlsFiles | None:
    """The TLS files a client of ``connection`` presents (None: the federation runs without TLS)."""
    if not connection.tls_ca:
        return None
    return TlsFiles(ca=connection.tls_ca, cert=connection.tls_cert, key=connection.tls_key)


def connection_credentials(connection: Connection) -> Credentials | None:
    """Who a client of ``connection`` is: ``$FED_CREDS`` (``fed --creds``), else the connection
    file's credentials (the operator's, written by ``fed up``), else nobody."""
    from federation.identity import load_credentials

    path = os.environ.get("FED_CREDS") or connection.creds
    return load_credentials(path) if path else None
