"""``fed``: the command line. Thin: parse flags -> config/options -> one coroutine.

Every command takes ``--state-dir`` (else ``$FED_STATE_DIR``, else a per-user data directory);
``fed up`` writes the connection file there and the other commands read it. Errors print one line
on stderr and exit with status 2; ``fed submit --wait`` exits with the job's own exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from federation import cli_audit, cli_creds, cli_ops, cli_usage, logs, subjects, tracing
from federation.config import (
    AgentConfig,
    SchedulerConfig,
    convert,
    default_state_dir,
    load_toml,
)
from federation.errors import ConfigError, FederationError, FederationUnavailable, InvalidRequest
from federation.resources import format_memory, parse_capacity, parse_duration, parse_memory
from federation.schemas import ChaosCommand, ChaosState, JobRecord, Submit

EXIT_ERROR = 2


def _state_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "state_dir", None)
    return Path(value).expanduser() if value else default_state_dir()


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _amounts(values: Sequence[str], what: str) -> dict[str, float]:
    out = {}
    for key, value in _pairs(values, what).items():
        try:
            out[key] = float(value)
        except ValueError:
            raise InvalidRequest(f"{what} {key} needs a number, got {value!r}") from None
    return out


STALE_AFTER = 10.0  # seconds: a region's view of another older than this is shown stale


def _print_json(value: object) -> int:
    """The ``--json`` output: one JSON document and a newline (documented in subjects.md)."""
    sys.stdout.buffer.write(msgspec.json.encode(value) + b"\n")
    return 0


def _request(spec: Submit) -> str:
    """``cpu=1 memory=0B gpu=0`` plus whatever else the job asked for."""
    text = f"cpu={spec.cpu} memory={format_memory(spec.memory)} gpu={spec.gpu}"
    text += f" gang={spec.gang}" if spec.gang > 1 else ""
    text += f" require={spec.require}" if spec.require else ""
    text += f" prefer={','.join(spec.nodes)}" if spec.nodes else ""
    text += "".join(f" {name}={amount:g}" for name, amount in sorted(spec.custom.items()))
    text += f" on_node_lost={spec.on_node_lost}" if spec.on_node_lost else ""
    text += f" regions={','.join(spec.regions)}" if spec.regions else ""
    text += " retry-anywhere" if spec.semantics == "at_least_once" else ""
    return text


def exit_status(record: JobRecord) -> int:
    """The shell status ``fed submit --wait`` exits with for a terminal job."""
    if record.state == "succeeded":
        return 0
    if record.exit_code is not None and record.exit_code != 0:
        return 128 - record.exit_code if record.exit_code < 0 else min(record.exit_code, 255)
    return 130 if record.state == "cancelled" else 1


# --- commands ------------------------------------------------------------------------------------------


async def cmd_up(args: argparse.Namespace) -> int:
    from federation.launcher import Options, up

    capacity = {"cpu": 4, "memory": 8 * 1024**3, "gpu": 0}
    capacity.update(parse_capacity(args.node_capacity))
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    options = Options(
        state_dir=_state_dir(args),
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
    )
    await up(options)
    return 0


async def cmd_chaos(args: argparse.Namespace) -> int:
    from federation.bus import Bus
    from federation.config import connection_credentials, connection_tls, load_connection

    connection = load_connection(_state_dir(args))
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
        return _print_json(state)
    for region, mode in sorted(state.links.items()):
        print(f"{region:<16} {'linked' if mode == 'open' else 'PARTITIONED (' + mode + ')'}")
    return 0


def _use_credentials(path: str | None) -> None:
    """``--creds`` (else ``$FED_CREDS``): the identity every connection of this process presents."""
    from federation.auth import use_credentials
    from federation.keyring import load_credentials

    if path:
        os.environ["FED_CREDS"] = path  # the client path reads it (config.connection_credentials)
    path = path or os.environ.get("FED_CREDS")
    if path:
        use_credentials(load_credentials(path))


def _use_tls(args: argparse.Namespace) -> None:
    """A daemon's ``--tls-ca/--tls-cert/--tls-key``: every connection it opens uses them."""
    from federation.auth import use_tls
    from federation.deploy import TlsFiles

    given = [args.tls_ca, args.tls_cert, args.tls_key]
    if any(given) and not all(given):
        raise ConfigError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    if all(given):
        use_tls(TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key))


async def cmd_scheduler(args: argparse.Namespace) -> int:
    from federation.scheduler import serve

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
    await serve(config, Path(args.config) if args.config else None, overrides)
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
        overrides["labels"] = _pairs(args.label, "--label")
    if args.resource:
        overrides["custom"] = _amounts(args.resource, "--resource")
    if args.max_allocations is not None:
        overrides["sharing"] = {"max_offers_per_node": args.max_allocations}
    if args.run_as:
        overrides["run_as"] = args.run_as
    if args.confine_writes:
        overrides["confine_writes"] = True
    if args.isolation:
        overrides["isolation"] = args.isolation
    overrides["state_dir"] = str(_state_dir(args))
    config = (
        load_toml(Path(args.config), AgentConfig, overrides)
        if args.config
        else convert(overrides, AgentConfig, "flags")
    )
    tracing.configure(f"fed-agent-{config.node}")
    await serve(config)
    return 0


async def cmd_submit(args: argparse.Namespace) -> int:
    from federation.client import Client

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidRequest("nothing to run: give the command after --, e.g. fed submit -- echo hi")
    async with Client.connect(_state_dir(args)) as fed:
        job = await fed.submit(
            command,
            region=args.region,
            cpu=args.cpu,
            memory=parse_memory(args.memory),
            gpu=args.gpu,
            priority=args.priority,
            nodes=args.node or (),
            tenant=args.tenant,
            env=_pairs(args.env or [], "--env"),
            job_id=args.id,
            require=_pairs(args.require or [], "--require"),
            scoring=args.scoring or "",
            max_attempts=args.max_attempts,
            gang=args.gang,
            custom=_amounts(args.resource or [], "--resource"),
            on_node_lost=args.on_node_lost or "",
            regions=[r.strip() for r in (args.regions or "").split(",") if r.strip()],
            semantics="at_least_once" if args.retry_anywhere else "at_most_once",
            timeout=parse_duration(args.timeout) if args.timeout else 0.0,
        )
        if not args.wait:
            print(job.id)
            return 0
        print(f"submitted {job.id} to {job.region}; waiting", file=sys.stderr)
        with _following(job.id):
            record = await job.wait()
            async for chunk in fed.logs(job.id, region=job.region):
                sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return _ended(record)


def _ended(record: JobRecord) -> int:
    """Say how a followed job ended (on stderr); the status to exit with."""
    print(f"{record.id}: {record.state} ({record.reason})", file=sys.stderr)
    return exit_status(record)


@contextlib.contextmanager
def _following(job: str) -> Iterator[None]:
    """Ctrl-C while following a job stops the following, not the job: say so on the way out."""
    try:
        yield
    except (asyncio.CancelledError, KeyboardInterrupt):
        print(
            f"\nfed: stopped following {job}; the job goes on "
            f"(fed logs -f {job} follows it again, fed cancel {job} stops it)",
            file=sys.stderr,
        )
        raise


async def cmd_status(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        regions = await fed.status()
    if args.json:
        return _print_json(regions)
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


def _job_line(record: JobRecord) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(record.submitted_at))
    code = "" if record.exit_code is None else str(record.exit_code)
    return (
        f"{record.id:<26} {record.region:<10} {record.state:<10} {code:>4} {record.node or '-':<16} {when}  "
        f"{' '.join(record.spec.command)[:50]}"
    )


async def cmd_jobs(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        records = await fed.jobs(region=args.region, state=args.state)
    records = records[-args.limit :] if args.limit else records
    if args.json:
        return _print_json(records)
    print(f"{'JOB':<26} {'REGION':<10} {'STATE':<10} {'EXIT':>4} {'NODE':<16} SUBMITTED COMMAND")
    for record in records:
        print(_job_line(record))
    return 0


async def cmd_job(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        home = await fed.job(args.job, region=args.region)
        record = home if args.json else await fed.where(args.job, region=home.region)
    if args.json:
        return _print_json(record)
    spec = record.spec
    print(f"job       {record.id}")
    print(f"region    {record.region}" + (f" (handed over by {spec.origin})" if spec.origin else ""))
    if record is not home:
        print(f"home      {home.region}: {home.reason}")
    print(
        f"state     {record.state}"
        + (f" (exit code {record.exit_code})" if record.exit_code is not None else "")
    )
    print(f"why       {record.reason or '-'}")
    print(f"node      {record.node or '-'} (attempt {record.attempt})")
    print(f"command   {' '.join(spec.command)}")
    print(f"request   {_request(spec)} priority={spec.priority} tenant={spec.tenant}")
    if record.usage is not None:
        u = record.usage
        print(
            f"usage     cpu {u.cpu_seconds:g} s  peak memory {format_memory(u.peak_memory_bytes)}  "
            f"wall {u.wall_seconds:g} s  gpu {u.gpu_seconds:g} s  (measured by {u.measured_by})"
        )
    if record.traceparent:
        print(f"trace     {tracing.trace_id(record.traceparent)}")
    print("history")
    for step in record.history:
        when = time.strftime("%H:%M:%S", time.localtime(step.at)) + f".{int(step.at * 1000) % 1000:03d}"
        print(f"  {when}  {step.state:<10} {step.reason}")
    return 0


def _score(score: tuple[int, ...]) -> str:
    gpus, cores, memory = (*score, 0, 0, 0)[:3]
    return f"leaves gpu={gpus} cpu={cores} memory={format_memory(max(0, memory))}"


async def cmd_explain(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        explanation = await fed.explain(args.job, region=args.region)
    if args.json:
        return _print_json(explanation)
    record, decision = explanation.record, explanation.decision
    spec = record.spec
    print(f"job       {record.id} ({record.state}, priority {spec.priority}, tenant {spec.tenant})")
    print(f"request   {_request(spec)}")
    if spec.origin:
        print(f"region    {record.region}, handed over by {spec.origin}")
    via = explanation.via
    if via is not None:
        print(f"home      {via.region}: {via.reason}")
        print(f"region    {record.region} (forwarded; its record follows)")
    if (via or record).handoffs:
        tried = ", ".join(f"{r}={state}" for r, state in sorted((via or record).handoffs.items()))
        print(f"hand-offs {tried}")
    if record.duplicates:
        print(f"duplicate also ran in {', '.join(record.duplicates)} (at-least-once)")
    print(f"why       {record.reason or '-'}")
    if explanation.queue_position:
        print(f"queue     position {explanation.queue_position} among pending jobs of {record.region}")
    if decision is None:
        return 0
    when = time.strftime("%H:%M:%S", time.localtime(decision.at))
    then = f", queue position then {decision.queue_position}" if decision.queue_position else ""
    print(f"decision  {decision.kind} at {when}, {decision.considered} nodes considered{then}")
    for reason, count in sorted(decision.filtered.items(), key=lambda kv: -kv[1]):
        print(f"  filtered  {count:>4} node{'s' if count != 1 else ' '}: {reason}")
    if decision.chosen is not None:
        note = f"  ({decision.note})" if decision.note else ""
        print(f"  chosen    {decision.chosen.node:<16} {_score(decision.chosen.score)}{note}")
    for runner in decision.runners_up:
        print(f"  runner-up {runner.node:<16} {_score(runner.score)}")
    if decision.victims:
        print(f"  preempted {', '.join(decision.victims)}")
    return 0


async def cmd_logs(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        if not args.follow:
            async for chunk in fed.logs(args.job, region=args.region):
                sys.stdout.buffer.write(chunk)
            return 0
        with _following(args.job):
            async for chunk in fed.logs(args.job, region=args.region, follow=True):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            record = await fed.where(args.job, region=args.region)
    return _ended(record)  # followed to the end: the job's own status, as fed submit --wait


async def cmd_quarantine(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        records = await fed.quarantined(region=args.region)
    if args.json:
        return _print_json(records)
    if not records:
        print("no quarantined messages")
    for record in records:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.at))
        print(f"{when}  {record.subject}  ({record.size} bytes, seq {record.sequence})\n    {record.reason}")
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    from federation.client import Client

    async with Client.connect(_state_dir(args)) as fed:
        await fed.cancel(args.job, region=args.region, reason=args.reason)
    print(f"cancel requested for {args.job}")
    return 0


# --- parser ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``fed`` argument parser (every subcommand, with its help text)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=argparse.SUPPRESS,
        help="state directory (default: $FED_STATE_DIR or ~/.local/share/nats-federation)",
    )
    common.add_argument(
        "--creds",
        default=argparse.SUPPRESS,
        help="credentials file to connect with (default: $FED_CREDS, else the one fed up wrote)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )

    parser = argparse.ArgumentParser(
        prog="fed", description="Share CPU cores, memory and GPUs across regions over NATS.", parents=[common]
    )
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "up",
        parents=[common],
        help="run a local multi-region federation (Ctrl-C stops it)",
        description="Start a hub and one NATS server per region (each its own JetStream domain, "
        "leaf-linked to the hub), schedulers (one leader, optional standbys) and N agents per region.",
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

    tls = argparse.ArgumentParser(add_help=False)
    tls.add_argument("--tls-ca", help="CA bundle (PEM) the server's certificate must chain to")
    tls.add_argument("--tls-cert", help="this daemon's client certificate (PEM)")
    tls.add_argument("--tls-key", help="the key of --tls-cert (PEM)")

    p = sub.add_parser("scheduler", parents=[common, tls], help="run a region's scheduler daemon")
    p.add_argument("--region")
    p.add_argument("--url", help="the region's NATS server URL (a cluster: its URLs, comma-separated)")
    p.add_argument("--config", help="TOML file with scheduler options")
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--peers", help="the other regions (comma-separated): their summaries are sourced into views"
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
    p.set_defaults(func=cmd_scheduler)

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
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser(
        "submit", parents=[common], help="submit a workload: fed submit [options] -- CMD ARGS..."
    )
    p.add_argument("--region", help="home region (default: the federation's first)")
    p.add_argument("--cpu", type=int, default=1, help="whole cores (default 1)")
    p.add_argument("--memory", default="0", help="memory, e.g. 512MiB (default 0)")
    p.add_argument("--gpu", type=int, default=0, help="whole GPUs (default 0)")
    p.add_argument("--priority", default="medium", choices=["urgent", "high", "medium", "low"])
    p.add_argument("--node", action="append", help="preferred node: used first when it fits (repeat)")
    p.add_argument(
        "--require",
        action="append",
        help="required node label KEY=VALUE (repeat; VALUE may list alternatives a,b; node=NAME pins a node)",
    )
    p.add_argument("--scoring", choices=["binpack", "spread"], help="override the region's scoring")
    p.add_argument(
        "--gang", type=int, default=1, help="N allocations of the request, started all together or none"
    )
    p.add_argument("--resource", action="append", help="custom resource NAME=AMOUNT the job needs (repeat)")
    p.add_argument(
        "--max-attempts", type=int, default=0, help="attempts before failing (default: region policy)"
    )
    p.add_argument(
        "--timeout", help="wall-clock limit of each attempt, e.g. 30s or 2h: its processes are then stopped"
    )
    p.add_argument(
        "--on-node-lost",
        metavar="POLICY",
        help="when the job's node stops heartbeating: replace (run again elsewhere, at least once), "
        "wait=DURATION (keep it that long, e.g. wait=5m, then replace) or fail (end it lost); "
        "default: the region's policy (fail)",
    )
    p.add_argument(
        "--regions",
        metavar="any|R1,R2",
        help="where the job may run: 'any' (the default: home region first, then any other) or a "
        "list of regions (home first if listed); a job that fits nowhere at home is offered to the "
        "best allowed region by its capacity summary",
    )
    semantics = p.add_mutually_exclusive_group()
    semantics.add_argument(
        "--once",
        action="store_true",
        help="at most once (the default): a hand-off to another region whose answer is lost holds "
        "the job until that region answers; it never runs twice",
    )
    semantics.add_argument(
        "--retry-anywhere",
        action="store_true",
        help="at least once: after an unanswered hand-off the job may run elsewhere; a duplicate "
        "run is recorded on the job",
    )
    p.add_argument("--tenant", default="default")
    p.add_argument("--env", action="append", help="environment variable KEY=VALUE for the job (repeat)")
    p.add_argument("--id", help="job id (default: generated); resubmitting an id is a no-op")
    p.add_argument("--wait", action="store_true", help="wait, print the output, exit with the job's status")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- the command and its arguments")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", parents=[common], help="regions, nodes, offers, allocations, queue")
    p.add_argument("--json", action="store_true", help="machine-readable (documented in subjects.md)")
    p.add_argument(
        "--all",
        action="store_true",
        help="also each region's view of the others, with its age (stale past 10 s)",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("jobs", parents=[common], help="list jobs")
    p.add_argument("--region")
    p.add_argument("--state", help="only jobs in this state (pending, placed, running, succeeded, ...)")
    p.add_argument("--limit", type=int, default=0, help="only the newest N")
    p.add_argument("--json", action="store_true", help="JSON array of job records")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", parents=[common], help="one job: state, why, history")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="the job record as JSON")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("explain", parents=[common], help="why a job is pending, or why it went where it did")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="record, decision and queue position as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("logs", parents=[common], help="a job's output")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep reading until the job ends, then exit with its status (as fed submit --wait)",
    )
    p.set_defaults(func=cmd_logs)

    cli_audit.add_parsers(sub, common)
    cli_usage.add_parsers(sub, common)

    p = sub.add_parser("quarantine", parents=[common], help="refused messages and why they were refused")
    p.add_argument("--region")
    p.add_argument("--json", action="store_true", help="JSON array of quarantine records")
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser("cancel", parents=[common], help="cancel a job (kills its whole process tree)")
    p.add_argument("job")
    p.add_argument("--region")
    p.add_argument("--reason", default="cancelled by user")
    p.set_defaults(func=cmd_cancel)
    cli_ops.add_parsers(sub, common)
    cli_creds.add_parsers(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fed`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.log_level = getattr(args, "log_level", "info")
    logs.configure(args.log_level)
    try:
        _use_credentials(getattr(args, "creds", None))
        code: int = asyncio.run(args.func(args))
    except FederationError as exc:
        print(f"fed: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fed jobs | head`: the reader left; not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
