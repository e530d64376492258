"""Faults the campaign injects into a running local federation, one at a time, each measured.

Every fault is a coroutine ``fault(stage, region) -> Outcome`` in :data:`FAULTS`: it breaks
something real (a signal to a process, a cut or blackholed leafnode link, a flood of bad or
duplicate messages, a probe with real credentials, a poison workload), undoes it, and measures the
recovery the way an operator would see it (a new leader's epoch, a fresh offer, JetStream
answering, every region's view of the others fresh again). It writes into the campaign's history
what it submits, so the checker judges those jobs with the rest. A fault never decides whether the
run passed: it reports ``problems`` (an expectation about the fault itself that failed, such as a
probe that was let through), and the checker judges the invariants.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
import psutil

from federation import subjects
from federation.bus import Bus
from federation.campaign.history import History, Operation
from federation.client import Client
from federation.errors import ConfigError, FederationError, FederationUnavailable, NotFound
from federation.identity import Credentials, load_credentials
from federation.ops.keyring import Keyring
from federation.ops.launcher import Child, Federation
from federation.ops.provision import wait_for_jetstream
from federation.schemas import (
    Cancel,
    ChaosCommand,
    Lease,
    Ledger,
    Offer,
    decode,
    decode_message,
    encode,
)

LEASE_PAST = 8.0  # seconds a paused leader stays paused: past the 5 s lease
NODE_PAST = 6.0  # seconds a paused agent stays paused: past the 3 s heartbeat TTL
FRESH_VIEW = 5.0  # seconds: a region's view of another younger than this is fresh


@dataclass
class Outcome:
    """What one fault did and how the federation came back."""

    fault: str
    target: str
    started: float = 0.0  # seconds since the campaign began
    lasted: float = 0.0  # how long the fault was in force
    recovery: float | None = None  # seconds until the federation was whole again (None: not measured)
    measure: str = ""  # what recovery means for this fault
    figures: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class Stage:
    """What a fault acts on: the federation, the history, the campaign's identities and clock."""

    federation: Federation
    history: History
    rng: random.Random
    tenant: Credentials  # the campaign's own tenant (its load submits as it too)
    intruder: Credentials  # another tenant, for cross-tenant probes
    begun: float  # time.monotonic() when the campaign began
    poison_processes: int = 2000
    poison_output: int = 200 * 1024 * 1024
    hub_pause: float = 45.0
    partition: float = 15.0

    @property
    def regions(self) -> list[str]:
        """The federation's regions."""
        return list(self.federation.options.regions)

    def client(self, credentials: Credentials | None = None) -> Client:
        """A client of the federation as ``credentials`` (default: its operator)."""
        if self.federation.connection is None:
            raise FederationUnavailable("campaign", "the federation has not started")
        return Client(self.federation.connection, credentials or self.federation.credentials)

    def keyring(self) -> Keyring:
        """The federation's keyring (the campaign runs with authentication on)."""
        if self.federation.keyring is None:
            raise ConfigError("the campaign needs authentication on")
        return self.federation.keyring

    async def bus(self, name: str) -> Bus:
        """A connection to server ``name`` as the operator."""
        return await Bus.connect(
            self.federation.urls[name],
            "campaign",
            retry_forever=False,
            credentials=self.federation.credentials,
        )

    def daemon(self, name: str) -> Child:
        """The daemon ``fed up`` runs under ``name`` (e.g. ``agent-eu-n1``)."""
        for child in self.federation.daemons:
            if child.name == name:
                return child
        raise FederationUnavailable(name, "no such daemon in this federation")


Fault = Callable[[Stage, str], Awaitable[Outcome]]


async def _until(
    predicate: Callable[[], Awaitable[bool]], deadline: float, every: float = 0.1
) -> float | None:
    """Seconds until ``predicate`` holds (None if it did not within ``deadline``)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        with contextlib.suppress(FederationError, OSError, TimeoutError):
            if await predicate():
                return time.monotonic() - start
        await asyncio.sleep(every)  # sleep-ok: the poll interval of a condition wait
    return None


async def _lease(stage: Stage, region: str) -> Lease | None:
    bus = await stage.bus(region)
    try:
        value, _ = await bus.kv_get(subjects.lease_bucket(region), subjects.LEADER_KEY)
    finally:
        await bus.close()
    return decode(Lease, value) if value else None


async def _leader(stage: Stage, region: str) -> tuple[Child, int]:
    lease = None
    for _ in range(100):
        with contextlib.suppress(FederationError, OSError):
            lease = await _lease(stage, region)
        if lease is not None:
            break
        await asyncio.sleep(0.1)  # sleep-ok: waiting for a leader to be elected
    if lease is None:
        raise FederationUnavailable(region, "no scheduler holds the lease")
    pid = int(lease.holder.rpartition(":")[2])
    for child in stage.federation.daemons:
        if child.pid == pid:
            return child, lease.epoch
    raise FederationUnavailable(
        region, f"the lease holder {lease.holder} is none of this federation's daemons"
    )


async def _new_leader(stage: Stage, region: str, epoch: int) -> bool:
    lease = await _lease(stage, region)
    return lease is not None and lease.epoch > epoch


async def _offered_since(stage: Stage, region: str, node: str, since: float) -> bool:
    bus = await stage.bus(region)
    try:
        item = await bus.last(subjects.offers_stream(region), subjects.offer(region, node))
    finally:
        await bus.close()
    if item is None:
        return False
    message = decode_message(item.data)
    return isinstance(message, Offer) and message.sent_at > since


async def _views_fresh(stage: Stage) -> bool:
    """Every region sees every other region with a view younger than FRESH_VIEW."""
    async with stage.client() as fed:
        now = time.time()
        for region in stage.regions:
            views = await fed.views(region)
            for peer in stage.regions:
                if peer != region and (peer not in views or now - views[peer].at > FRESH_VIEW):
                    return False
    return True


def _started_between(stage: Stage, start: float, end: float, region: str = "") -> int:
    """Jobs whose run marker was last written (their last start) in [start, end] (wall clock), on
    ``region``'s nodes."""
    count = 0
    for path in stage.history.runs.iterdir():
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            if start <= stat.st_mtime <= end and (not region or f"/agents/{region}-" in path.read_text()):
                count += 1
    return count


async def admission(servers: dict[str, str], credentials: Credentials) -> dict[str, str]:
    """What each server (name -> URL) does with a connection presenting ``credentials``:
    ``accepted``, ``refused`` (the server's authorization violation, nothing else), or
    ``error: ...`` (anything else, e.g. a timeout on a busy machine: neither, so a probe that
    wants a refusal does not pass on it)."""
    out = {}
    for name, url in servers.items():
        try:
            bus = await Bus.connect(url, "probe", retry_forever=False, timeout=5.0, credentials=credentials)
        except FederationUnavailable as exc:
            out[name] = "refused" if "authorization violation" in str(exc).lower() else f"error: {exc}"
            continue
        out[name] = "accepted"
        await bus.close()
    return out


# --- processes ---------------------------------------------------------------------------------------


async def kill_leader(stage: Stage, region: str) -> Outcome:
    """SIGKILL the region's leading scheduler; recovery: a standby holds the lease."""
    leader, epoch = await _leader(stage, region)
    out = Outcome("leader SIGKILL", f"{region} {leader.name}", measure="failover")
    os.kill(leader.pid, signal.SIGKILL)
    out.recovery = await _until(lambda: _new_leader(stage, region, epoch), 30)
    if out.recovery is None:
        out.problems.append(f"no new leader in {region} within 30 s")
    return out


async def pause_leader(stage: Stage, region: str) -> Outcome:
    """SIGSTOP the leader past its lease, then SIGCONT; recovery: a standby leads meanwhile."""
    leader, epoch = await _leader(stage, region)
    out = Outcome("leader SIGSTOP past the lease", f"{region} {leader.name}", measure="failover")
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        out.recovery = await _until(lambda: _new_leader(stage, region, epoch), 30)
        await asyncio.sleep(max(0.0, LEASE_PAST - (out.recovery or 0)))  # sleep-ok: the pause is the fault
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    out.lasted = max(LEASE_PAST, out.recovery or 0)
    if out.recovery is None:
        out.problems.append(f"no new leader in {region} within 30 s")
    return out


async def kill_agent(stage: Stage, region: str) -> Outcome:
    """SIGKILL an agent while the load's jobs run on it (``fed up`` restarts it; the restarted
    agent reports the attempts it lost); recovery: restarted and offering again."""
    node = f"{region}-n{stage.rng.randint(1, stage.federation.options.agents)}"
    out = Outcome("agent SIGKILL", node, measure="restarted and offering")
    out.figures["allocations on it"] = await _allocations(stage, region, node)
    old = stage.daemon(f"agent-{node}").pid
    start = time.monotonic()
    os.kill(old, signal.SIGKILL)

    async def restarted() -> bool:
        agent = stage.daemon(f"agent-{node}")
        return agent.pid != old and agent.alive()

    if await _until(restarted, 60) is None:
        out.problems.append(f"{node} was not restarted within 60 s")
        return out
    since = time.time()  # an offer from the new process, not one the old sent before it died
    if await _until(lambda: _offered_since(stage, region, node, since), 60) is None:
        out.problems.append(f"{node} did not offer again within 60 s of its restart")
        return out
    out.recovery = time.monotonic() - start
    return out


async def _allocations(stage: Stage, region: str, node: str) -> int:
    """How many allocations ``node``'s stored ledger holds now."""
    bus = await stage.bus(region)
    try:
        value, _ = await bus.kv_get(subjects.ledger_bucket(region), node)
    finally:
        await bus.close()
    return len(decode(Ledger, value).allocations) if value else 0


async def pause_agent(stage: Stage, region: str) -> Outcome:
    """SIGSTOP an agent past its heartbeat TTL, then SIGCONT: ``fed status`` must show it LOST
    while paused (figure: after how long); recovery: live again."""
    node = f"{region}-n{stage.rng.randint(1, stage.federation.options.agents)}"
    out = Outcome("agent SIGSTOP past the heartbeat TTL", node, measure="live again", lasted=NODE_PAST)
    agent = stage.daemon(f"agent-{node}")
    start = time.monotonic()
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        lost = await _until(lambda: _node_is(stage, region, node, live=False), NODE_PAST, every=0.25)
        await asyncio.sleep(max(0.0, NODE_PAST - (time.monotonic() - start)))  # sleep-ok: the pause
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    if lost is None:
        out.problems.append(f"{node} was not seen lost within {NODE_PAST:g} s of its pause")
    else:
        out.figures["seen lost after (s)"] = round(lost, 1)
    out.recovery = await _until(lambda: _node_is(stage, region, node, live=True), 60, every=0.25)
    if out.recovery is None:
        out.problems.append(f"{node} was not live again within 60 s of its resume")
    return out


async def _node_is(stage: Stage, region: str, node: str, *, live: bool) -> bool:
    """Whether ``fed status`` shows ``node`` live (or, with ``live=False``, LOST)."""
    async with stage.client() as fed:
        status = await fed.region_status(region)
    shown = next((n for n in status.nodes if n.node == node), None)
    if shown is None:
        return False
    return shown.live if live else shown.heartbeat == "lost"


async def kill_server(stage: Stage, region: str) -> Outcome:
    """SIGKILL the region's nats-server under submissions; recovery: restarted, JetStream answers."""
    out = Outcome("region nats-server SIGKILL", f"{region} server", measure="restarted, JetStream answers")
    start = time.monotonic()
    old = stage.federation.servers[region].pid
    os.kill(old, signal.SIGKILL)
    out.recovery = await _until(lambda: _restarted(stage, region, old), 60, every=0.2)
    if out.recovery is None:
        out.problems.append(f"{region}'s server did not answer within 60 s")
    out.lasted = time.monotonic() - start
    return out


async def _restarted(stage: Stage, name: str, old: int) -> bool:
    """Server ``name`` runs again under a new pid (fed up restarted it) and its JetStream answers."""
    server = stage.federation.servers[name]
    if server.pid == old or not server.alive():
        return False
    credentials = stage.federation.credentials
    await wait_for_jetstream(stage.federation.urls[name], deadline=2.0, credentials=credentials)
    return True


async def pause_hub(stage: Stage, region: str) -> Outcome:
    """SIGSTOP the hub while every region submits; local work must go on; recovery: views fresh."""
    out = Outcome("hub SIGSTOP", "hub", lasted=stage.hub_pause, measure="views fresh again")
    hub = stage.federation.servers["hub"]
    start = time.time()
    os.kill(hub.pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(stage.hub_pause)  # sleep-ok: the pause is the fault; local work goes on
    finally:
        os.kill(hub.pid, signal.SIGCONT)
    for name in stage.regions:
        out.figures[f"jobs started in {name} while paused"] = _started_between(
            stage, start, time.time(), name
        )
        if not out.figures[f"jobs started in {name} while paused"]:
            out.problems.append(f"{name} started no job while the hub was paused")
    out.recovery = await _until(lambda: _views_fresh(stage), 180, every=0.5)
    if out.recovery is None:
        out.problems.append("views not fresh within 180 s of the hub's resume")
    return out


async def _partition(stage: Stage, region: str, mode: Literal["cut", "blackhole"]) -> Outcome:
    out = Outcome(f"link {mode}", f"{region} <-> hub", lasted=stage.partition, measure="views fresh again")
    start = time.time()
    done = stage.federation.chaos("partition", msgspec.json.encode(ChaosCommand(region=region, mode=mode)))
    if done.error:
        out.problems.append(f"the partition was refused: {done.error}")
        return out
    try:
        await asyncio.sleep(stage.partition)  # sleep-ok: the partition is the fault
        others = [r for r in stage.regions if r != region]
        if others:  # the others' view of the cut-off region must have stopped moving
            async with stage.client() as fed:
                seen = (await fed.views(others[0])).get(region)
            age = time.time() - seen.at if seen is not None else float("inf")
            out.figures[f"{others[0]}'s view of it at the heal (s old)"] = round(age, 1)
            if age < stage.partition / 2:
                out.problems.append(f"{others[0]} still saw {region} fresh ({age:.1f} s old): no partition?")
    finally:
        stage.federation.chaos("heal", msgspec.json.encode(ChaosCommand(region=region)))
    out.figures["jobs started in the cut-off region"] = _started_between(stage, start, time.time(), region)
    if not out.figures["jobs started in the cut-off region"]:
        out.problems.append(f"{region} started no job while cut off")
    out.recovery = await _until(lambda: _views_fresh(stage), 180, every=0.5)
    if out.recovery is None:
        out.problems.append("views not fresh within 180 s of the heal")
    return out


async def cut_link(stage: Stage, region: str) -> Outcome:
    """Close the region's leafnode link for a while; recovery: views fresh again."""
    return await _partition(stage, region, "cut")


async def blackhole_link(stage: Stage, region: str) -> Outcome:
    """Drop the region's leafnode link's bytes for a while; recovery: views fresh again."""
    return await _partition(stage, region, "blackhole")


# --- messages ---------------------------------------------------------------------------------------


async def duplicate_flood(stage: Stage, region: str, copies: int = 20) -> Outcome:
    """One job id submitted ``copies`` times at once: one job, run once."""
    job = f"dup-{stage.rng.getrandbits(40):010x}"
    out = Outcome("duplicate flood", f"{region} x{copies}", measure="all acknowledged")
    start = time.monotonic()
    async with stage.client() as fed:

        async def one() -> None:
            operation = stage.history.add(Operation("submit", job, region, time.time()))
            try:
                await fed.submit(stage.history.command(), region=region, job_id=job)
                operation.acknowledged()
            except FederationError as exc:
                operation.error = str(exc)

        await asyncio.gather(*(one() for _ in range(copies)))
    out.recovery = time.monotonic() - start
    acknowledged = sum(1 for o in stage.history.operations if o.job == job and o.ack == "ok")
    out.figures["acknowledged"] = acknowledged
    if acknowledged < copies:
        out.problems.append(f"only {acknowledged} of {copies} copies were acknowledged")
    return out


async def malformed_flood(stage: Stage, region: str, count: int = 100) -> Outcome:
    """Garbage, wrong types and system-owned fields on submit subjects: each quarantined, nothing
    else changes."""
    out = Outcome("malformed flood", f"{region} x{count}", measure="all quarantined")
    payloads = [
        b"\x80\x81\xfe\xff",
        b"{not json",
        b'{"type": "cancel", "id": "x", "reason": "on a submit subject"}',
        b'{"type": "submit", "id": "ID", "command": ["true"], "origin": "elsewhere"}',
        b'{"type": "submit", "id": "ID", "command": []}',
    ]
    async with stage.client() as fed:
        bus = await fed.bus(region)
        sent = set()
        for i in range(count):
            job = f"bad-{stage.rng.getrandbits(40):010x}"
            data = payloads[i % len(payloads)].replace(b"ID", job.encode())
            await bus.store(subjects.submit(region, job), data, msg_id=job)
            sent.add(subjects.submit(region, job))

        async def ours() -> int:
            return sum(1 for q in await fed.quarantined(region=region) if q.subject in sent)

        async def all_quarantined() -> bool:
            return await ours() >= count

        out.recovery = await _until(all_quarantined, 60, every=0.5)
        out.figures["quarantined"] = await ours()
    if out.recovery is None:
        out.problems.append(
            f"only {out.figures['quarantined']:.0f} of {count} bad messages quarantined in 60 s"
        )
    return out


async def probes(stage: Stage, region: str) -> Outcome:
    """Real credentials reaching for what is not theirs: a second tenant asks for the first
    tenant's job and publishes a cancel of it on its own cancel subject; an agent stores an offer
    for another node. Each must change nothing: the job is not shown, runs to its end, and the
    other node's offer is not the agent's."""
    out = Outcome("cross-tenant and cross-node probes", region, measure="all answered")
    start = time.monotonic()
    job = f"own-{stage.rng.getrandbits(40):010x}"
    operation = stage.history.add(Operation("submit", job, region, time.time(), tenant=stage.tenant.name))
    async with stage.client(stage.tenant) as owner:
        await owner.submit(stage.history.command(2.0), region=region, job_id=job)
        operation.acknowledged()
        async with stage.client(stage.intruder) as intruder:
            try:
                await intruder.job(job, region=region)
                out.problems.append(f"tenant {stage.intruder.name} could read {job}")
            except NotFound:
                pass  # as if it did not exist: the right answer
            bus = await intruder.bus(region)
            cancel = Cancel(id=job, reason="probe", requested_at=time.time())
            with contextlib.suppress(FederationError, TimeoutError):  # quarantined, or refused outright
                await bus.store(subjects.tenant_cancel(region, job, stage.intruder.name), encode(cancel))
        record = await owner.wait(job, region=region, timeout=120)
        if record.state != "succeeded":
            out.problems.append(f"{job} ended {record.state} after another tenant's cancel: {record.reason}")
    node, other = f"{region}-n1", f"{region}-n2"
    agent = load_credentials(stage.keyring().path("agent", node, region))
    forged = b'{"type": "offer", "node": "' + other.encode() + b'", "region": "' + region.encode() + b'"}'
    bus = await Bus.connect(stage.federation.urls[region], "probe", retry_forever=False, credentials=agent)
    try:
        with contextlib.suppress(FederationError, TimeoutError):  # refused by the server: a timeout
            await bus.store(subjects.offer(region, other), forged, timeout=2.0)
    finally:
        await bus.close()
    admin = await stage.bus(region)
    try:
        last = await admin.last(subjects.offers_stream(region), subjects.offer(region, other))
    finally:
        await admin.close()
    if last is not None and last.data == forged:
        out.problems.append(f"agent {node} stored an offer for {other}")
    out.recovery = time.monotonic() - start
    out.figures["probes"] = 3
    out.figures["let through"] = len(out.problems)
    return out


async def revoke_after_restart(stage: Stage, region: str) -> Outcome:
    """A tenant added, the region's server killed and restarted, the tenant revoked: its copied
    credentials must be refused by every region."""
    keyring = stage.keyring()
    name = f"leaver{stage.rng.getrandbits(20):05x}"
    await stage.federation.add_identity("tenant", name)
    kept = load_credentials(keyring.path("tenant", name))
    out = Outcome(
        "revoke after a server restart", f"{region} server, tenant {name}", measure="refused everywhere"
    )
    servers = {peer: stage.federation.urls[peer] for peer in stage.regions}
    before = await admission(servers, kept)
    if set(before.values()) != {"accepted"}:
        out.problems.append(f"the new tenant was not accepted everywhere before the revoke: {before}")
    old = stage.federation.servers[region].pid
    os.kill(old, signal.SIGKILL)
    if await _until(lambda: _restarted(stage, region, old), 60, every=0.2) is None:
        out.problems.append(f"{region}'s server did not come back within 60 s")
        return out
    start = time.monotonic()
    keyring.revoke("tenant", name)
    report = await stage.federation.reload()  # what fed up does on fed creds' SIGHUP
    if report.failed:
        out.problems.append(f"reload failed on {report.failed}")
    servers = {peer: stage.federation.urls[peer] for peer in stage.regions}  # a restart may move one
    after = await admission(servers, kept)
    out.recovery = time.monotonic() - start
    out.problems += [
        f"revoked tenant {name}: {peer} {said}" for peer, said in after.items() if said != "refused"
    ]
    return out


async def poison(stage: Stage, region: str) -> Outcome:
    """A missing command, a flood of output and thousands of processes: each ends with a reason,
    the agents live on, nothing is left running."""
    out = Outcome("poison workloads", region, measure="all ended")
    runs = stage.history.command(0)
    commands = {
        "missing": ["/nonexistent/campaign-command"],
        "output": [*runs[:2], f"{runs[2]}; head -c {stage.poison_output} /dev/zero"],
        "processes": [
            *runs[:2],
            f"{runs[2]}; for i in $(seq {stage.poison_processes}); do sleep 3 & done; wait",
        ],
    }
    agents = {c.name: c.pid for c in stage.federation.daemons if c.name.startswith(f"agent-{region}-")}
    start = time.monotonic()
    async with stage.client() as fed:
        jobs = {}
        for kind, command in commands.items():
            job = f"poison-{kind}-{stage.rng.getrandbits(30):08x}"
            operation = stage.history.add(Operation("submit", job, region, time.time(), regions=[region]))
            await fed.submit(command, region=region, job_id=job, regions=[region])
            operation.acknowledged()
            jobs[kind] = job

        async def ended() -> bool:
            records = [await fed.job(job, region=region) for job in jobs.values()]
            return all(record.terminal for record in records)

        out.recovery = await _until(ended, 180, every=0.5)
        for kind, job in jobs.items():
            record = await fed.job(job, region=region)
            out.figures[f"{kind}: {record.state}"] = 1
    restarted = [name for name, pid in agents.items() if stage.daemon(name).pid != pid]
    if out.recovery is None:
        out.problems.append("a poison job did not end within 180 s")
    left = await _until(lambda: _none_left(set(jobs.values())), 30, every=0.5)
    if left is None:
        out.problems.append("processes of the poison jobs still run 30 s after they ended")
    out.problems += [f"{name} was restarted during the poison jobs" for name in restarted]
    out.lasted = time.monotonic() - start
    return out


async def _none_left(jobs: set[str]) -> bool:
    """No process on this machine carries one of ``jobs`` in its ``FED_JOB_ID``."""

    def scan() -> bool:
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("FED_JOB_ID") in jobs and process.status() != psutil.STATUS_ZOMBIE:
                    return False
        return True

    return await asyncio.to_thread(scan)


FAULTS: dict[str, Fault] = {
    "kill-leader": kill_leader,
    "pause-leader": pause_leader,
    "kill-agent": kill_agent,
    "pause-agent": pause_agent,
    "kill-server": kill_server,
    "pause-hub": pause_hub,
    "cut-link": cut_link,
    "blackhole-link": blackhole_link,
    "duplicate-flood": duplicate_flood,
    "malformed-flood": malformed_flood,
    "probes": probes,
    "revoke-after-restart": revoke_after_restart,
    "poison": poison,
}
