"""Deployment beyond one machine (issue #8): compose/ is what the code renders, every server config
passes ``nats-server -t`` (compose's with the accounts ``fed config keys`` renders), every reference
in the compose file resolves, and a region run as a 3-server cluster from the rendered configs
keeps scheduling with one server killed, and the server catches up when it returns.

Compose as an operator runs it (issue #19): one key per daemon, made by ``fed config keys`` and
never committed, the servers' accounts from them (a region links to the hub as its leaf identity);
Prometheus scrapes every daemon and server; Grafana's dashboard uses only metrics the code exports."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from agents.metrics import AgentMetrics
from federation import subjects
from federation.bus import Bus
from federation.cli import build_parser, main
from federation.client import Client
from federation.config import Connection, RegionEndpoint
from federation.core.state import RegionCore
from federation.errors import FederationError
from federation.identity import load_credentials
from federation.ops import auth, deploy
from federation.ops.deploy import Server, server_config
from federation.ops.keyring import Keyring
from federation.ops.launcher import (
    Child,
    SupervisorMetrics,
    agent_command,
    fed_command,
    nats_server_binary,
    read_ports,
)
from federation.ops.monitor import monitoring
from federation.ops.provision import wait_for_jetstream
from federation.scheduler.metrics import SchedulerMetrics
from tests.conftest import eventually, free_ports

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"

pytestmark = pytest.mark.timeout(240)


def test_the_committed_compose_files_are_what_the_code_renders(capsys: pytest.CaptureFixture[str]) -> None:
    files = deploy.compose_files()
    for name, text in files.items():
        assert (COMPOSE / name).read_text() == text, f"compose/{name} is stale: run fed config render"
    assert main(["config", "render", "--check", "--out", str(COMPOSE)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_render_check_fails_on_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "render", "--out", str(tmp_path)]) == 0
    conf = tmp_path / "nats" / "hub.conf"
    conf.write_text(conf.read_text().replace("8MB", "1MB"))
    assert main(["config", "render", "--check", "--out", str(tmp_path)]) == 1
    assert "nats/hub.conf" in capsys.readouterr().out


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the committed compose/ with its keys made as a user makes them (``fed config
    keys``): the committed tree holds none."""
    out = tmp_path_factory.mktemp("compose")
    shutil.copytree(COMPOSE, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(deploy.CREDS_DIR))
    assert main(["config", "keys", "--out", str(out)]) == 0
    return out


def _mounted(out: Path, service: dict, target: str) -> Path:  # type: ignore[type-arg]
    """The file of ``out`` that ``service`` mounts at ``target``."""
    for volume in service.get("volumes", []):
        source, mounted = volume.split(":")[:2]
        if mounted == target:
            return out / source
    raise AssertionError(f"nothing is mounted at {target}")


def _as_mounted(out: Path, tmp_path: Path) -> list[Path]:
    """Every server config of ``out`` laid out as its container sees it: beside the auth.conf that
    compose mounts there."""
    services = yaml.safe_load((out / "compose.yaml").read_text())["services"]
    paths = []
    for name, service in services.items():
        if service["image"] != deploy.NATS_IMAGE:
            continue
        etc = tmp_path / name
        etc.mkdir()
        conf = service["command"][1]
        for target in (conf, f"/etc/nats/{deploy.AUTH_FILE}"):
            shutil.copy(_mounted(out, service, target), etc / Path(target).name)
        paths.append(etc / Path(conf).name)
    return paths


def _nats_t(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30
    )


def test_every_rendered_server_config_passes_nats_server_t(keyed: Path, tmp_path: Path) -> None:
    """The compose configs with the accounts ``fed config keys`` rendered, and the configs ``fed
    up`` renders for its hub and a region (open, and with accounts)."""
    identities = Keyring(keyed / deploy.CREDS_DIR).identities()
    leaf = f"nats-leaf://127.0.0.1:{free_ports(1)[0]}"
    local = []
    for users in ("", "with accounts"):
        hub_accounts = auth.accounts(identities, deploy.COMPOSE_REGIONS, "hub") if users else ""
        region_accounts = auth.accounts(identities, deploy.COMPOSE_REGIONS, "eu-west") if users else ""
        seed = load_credentials(keyed / deploy.CREDS_DIR / "leaf.eu-west.nk").seed if users else ""
        local += [
            Server(
                name=f"hub{len(local)}",
                domain="hub",
                store_dir=str(tmp_path / "hub"),
                ports_dir=str(tmp_path),
                leaf_listen=-1,
                accounts=hub_accounts,
            ),
            Server(
                name=f"eu-west{len(local)}",
                domain="eu-west",
                store_dir=str(tmp_path / "eu"),
                ports_dir=str(tmp_path),
                leaf_remotes=(leaf,),
                sync_always=True,
                accounts=region_accounts,
                leaf_seed=seed,
            ),
        ]
    paths = _as_mounted(keyed, tmp_path)
    assert len(paths) == 1 + 3 * len(deploy.COMPOSE_REGIONS)
    for server in local:
        path = tmp_path / f"{server.name}.conf"
        path.write_text(server_config(server))
        paths.append(path)
    for path in paths:
        result = _nats_t(path)
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"
    bad = tmp_path / "bad.conf"
    bad.write_text(server_config(Server(name="x", domain="x", store_dir="/tmp/x")) + "cluster { nonsense }\n")
    assert _nats_t(bad).returncode != 0  # -t really checks
    # a committed config alone (no keys made) is refused: compose never runs without credentials
    alone = _nats_t(COMPOSE / "nats" / "eu-west-1.conf")
    assert alone.returncode != 0
    assert deploy.AUTH_FILE in alone.stdout + alone.stderr


def test_the_keys_command_makes_one_key_per_daemon_and_keeps_them(
    keyed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = keyed / deploy.CREDS_DIR
    keyring = Keyring(creds)
    services = yaml.safe_load((keyed / "compose.yaml").read_text())["services"]
    parser = build_parser()
    connecting = 0
    for name, service in services.items():
        if service["image"] != deploy.FED_IMAGE:
            continue
        args = parser.parse_args(service["command"][1:])
        key = _mounted(keyed, service, args.creds)
        assert key.parent == creds, f"{name}: {key}"
        assert key.stat().st_mode & 0o777 == 0o644, f"{name}: the container's user cannot read {key}"
        who = load_credentials(key)
        # each daemon connects as its own identity (a region's schedulers as the region's)
        if args.cmd == "scheduler":
            expected = ("scheduler", args.region, "")
        elif args.cmd == "agent":
            expected = ("agent", args.node, args.region)
        else:
            expected = ("admin", "admin", "")
        assert (who.kind, who.name, who.region) == expected, name
        assert keyring.find(who.kind, who.name, who.region) is not None
        connecting += 1
    daemons = deploy.compose_daemons()
    assert connecting == len(daemons) + 1  # and hub-provision
    made = {(i.kind, i.name, i.region) for i in keyring.identities()}
    assert made == set(deploy.compose_identities())
    assert {d.identity for d in daemons} <= made
    assert creds.stat().st_mode & 0o777 == 0o700  # the key files are readable by the containers only
    assert (creds / "identities.json").stat().st_mode & 0o777 == 0o600
    hub = (creds / "nats" / "hub.conf").read_text()
    for region in deploy.COMPOSE_REGIONS:
        seed = load_credentials(creds / f"leaf.{region}.nk").seed
        assert f'{deploy.LEAF_SEED_VARIABLE}: "{seed}"' in (creds / "nats" / f"{region}.conf").read_text()
        assert seed not in hub  # the hub knows the links' public keys only
    before = {p.name: p.read_text() for p in creds.rglob("*.nk")}
    capsys.readouterr()
    assert main(["config", "keys", "--out", str(keyed)]) == 0  # again: nothing replaced
    assert "0 new keys" in capsys.readouterr().out
    assert {p.name: p.read_text() for p in creds.rglob("*.nk")} == before


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_committed_tree_holds_no_keys() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"compose/{deploy.CREDS_DIR}/admin.admin.nk"], cwd=ROOT, timeout=30
    )
    assert ignored.returncode == 0, "compose/creds/ is not in .gitignore"
    tracked = subprocess.run(
        ["git", "ls-files", "compose"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert not [p for p in tracked.stdout.split() if p.startswith(f"compose/{deploy.CREDS_DIR}/")]


async def test_a_region_joins_the_hub_and_daemons_connect_with_the_rendered_accounts(
    keyed: Path, tmp_path: Path
) -> None:
    """The mechanism compose relies on, run: servers whose config includes the rendered auth.conf
    (the region's leafnode seed a variable of it) link as the leaf identity, a daemon's key
    connects, and no key, no connection."""
    creds = keyed / deploy.CREDS_DIR
    (leaf,) = free_ports(1)
    servers = [
        Server(name="hub", domain="hub", store_dir=str(tmp_path / "hub" / "store"), leaf_listen=leaf),
        Server(
            name="eu-west",
            domain="eu-west",
            store_dir=str(tmp_path / "eu-west" / "store"),
            leaf_remotes=(f"nats-leaf://127.0.0.1:{leaf}",),
        ),
    ]
    children: list[Child] = []
    monitors: dict[str, str] = {}
    urls: dict[str, str] = {}
    try:
        for server in servers:
            base = tmp_path / server.name
            (base / "ports").mkdir(parents=True)
            shutil.copy(creds / "nats" / f"{server.domain}.conf", base / deploy.AUTH_FILE)
            configured = dataclasses.replace(
                server, ports_dir=str(base / "ports"), auth_file=deploy.AUTH_FILE
            )
            (base / "nats.conf").write_text(server_config(configured))
            child = Child(server.name, [nats_server_binary(), "-c", str(base / "nats.conf")], base / "log")
            child.start()
            children.append(child)
            ports = await read_ports(base / "ports", child)
            urls[server.name], monitors[server.name] = ports["nats"][0], ports["monitoring"][0]

        async def linked() -> bool:
            leafs = (await monitoring(monitors["hub"], "leafz")).get("leafs") or []
            return any(link.get("account") == auth.FED for link in leafs)

        await eventually(linked, timeout=15)
        scheduler = load_credentials(creds / "scheduler.eu-west.nk")
        bus = await Bus.connect(urls["eu-west"], "test", retry_forever=False, credentials=scheduler)
        await bus.close()
        with pytest.raises(FederationError):
            await Bus.connect(urls["eu-west"], "anyone", retry_forever=False, timeout=2)
    finally:
        for child in children:
            if child.alive():
                child.process.terminate()  # type: ignore[union-attr]
                child.process.wait(timeout=10)  # type: ignore[union-attr]


def test_prometheus_scrapes_every_daemon_and_server() -> None:
    services = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    listed = {
        (job["job_name"], target): group.get("labels", {})
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    parser = build_parser()
    expected = set()
    for name, service in services.items():
        if service["image"] == deploy.FED_IMAGE and service["command"][1] in deploy.METRICS_PORTS:
            args = parser.parse_args(service["command"][1:])
            assert args.metrics, f"{name} serves no metrics"
            host, port = args.metrics.rsplit(":", 1)
            assert host == "0.0.0.0", f"{name}: other containers cannot reach {host}"
            target = (args.cmd, f"{name}:{port}")
            assert target in listed, f"Prometheus does not scrape {name}"
            assert listed[target]["region"] == args.region
            expected.add(target)
        elif service["image"] == deploy.NATS_IMAGE:
            exporter = services[f"{name}-exporter"]
            assert exporter["command"][-1] == f"{name},http://{name}:{deploy.HTTP_PORT}"
            target = ("nats", f"{name}-exporter:{deploy.EXPORTER_PORT}")
            assert target in listed, f"Prometheus does not scrape {name}'s exporter"
            expected.add(target)
    assert len(expected) == len(deploy.compose_daemons()) + 1 + 3 * len(deploy.COMPOSE_REGIONS)
    assert set(listed) == expected  # and nothing that is not there


def _exported_names() -> set[str]:
    """Every series name the daemons' registries expose (a counter's ``_total``, a histogram's
    ``_bucket``...), the scheduler's state families included."""
    scheduler = SchedulerMetrics()
    scheduler.refresh(RegionCore("eu"), 0.0)
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for metrics in (scheduler.registry, AgentMetrics().registry, SupervisorMetrics().registry):
        for family in metrics.collect():
            names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def test_grafana_is_provisioned_with_a_dashboard_of_metrics_the_code_exports() -> None:
    provisioning = COMPOSE / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == f"http://prometheus:{deploy.PROMETHEUS_PORT}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    services = yaml.safe_load((COMPOSE / "compose.yaml").read_text())["services"]
    mounted = _mounted(COMPOSE, services["grafana"], provider["options"]["path"])
    board = json.loads((mounted / "federation.json").read_text())
    exported = _exported_names()
    used = set()
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
            names = set(re.findall(r"\bfed_\w+", target["expr"]))
            # (or Prometheus's own `up`: which targets answer)
            assert names or re.search(r"\bup\b", target["expr"]), f"{panel['title']}: {target['expr']}"
            assert names <= exported, f"{panel['title']}: {sorted(names - exported)} are exported by nothing"
            used |= names
    key = {  # what an operator looks at first: every one of them has a graph
        "fed_queue_depth",
        "fed_pending_jobs",
        "fed_placements_total",
        "fed_placement_latency_seconds_bucket",
        "fed_claim_conflicts_total",
        "fed_handoffs_total",
        "fed_peer_view_age_seconds",
        "fed_scheduler_leader",
        "fed_scheduler_epoch",
        "fed_node_offered_cpu_cores",
        "fed_node_allocated_cpu_cores",
        "fed_node_utilisation_ratio",
        "fed_jobs_finished_total",
        "fed_quarantined_messages_total",
        "fed_agent_start_latency_seconds_bucket",
        "fed_agent_journal_commit_latency_seconds_bucket",
    }
    assert key <= used, sorted(key - used)
    (variable,) = board["templating"]["list"]
    assert all('region=~"$region"' in t["expr"] for p in panels for t in p["targets"] if "fed_" in t["expr"])
    assert variable["name"] == "region"


def test_every_compose_reference_resolves(keyed: Path) -> None:
    """Every file a service mounts exists (its keys once ``fed config keys`` ran), every volume is
    declared, every dependency is a service, every ``fed`` command parses."""
    compose = yaml.safe_load((keyed / "compose.yaml").read_text())
    services: dict[str, dict] = compose["services"]  # type: ignore[type-arg]
    named_volumes = set(compose.get("volumes", {}))
    parser = build_parser()
    regions = set(deploy.COMPOSE_REGIONS)
    assert {f"{r}-{i}" for r in regions for i in (1, 2, 3)} <= set(services)
    images = (
        deploy.FED_IMAGE,
        deploy.NATS_IMAGE,
        deploy.EXPORTER_IMAGE,
        deploy.PROMETHEUS_IMAGE,
        deploy.GRAFANA_IMAGE,
    )
    published = []
    for name, service in services.items():
        image = service["image"]
        assert image in images, f"{name}: unknown image {image}"
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (keyed / source).exists(), f"{name}: {source} does not exist"
                committed = not source.startswith(f"./{deploy.CREDS_DIR}/")
                assert (COMPOSE / source).exists() == committed, f"{name}: {source}"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
            mounts[target] = source
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        published += [port.rsplit(":", 1)[0] for port in service.get("ports", [])]
        command = service.get("command", [])
        if image == deploy.NATS_IMAGE:
            assert command[0] == "-c"
            assert command[1] in mounts, f"{name}: {command[1]} is not mounted"
            assert f"/etc/nats/{deploy.AUTH_FILE}" in mounts, f"{name}: its accounts are not mounted"
        elif image == deploy.FED_IMAGE:
            build = service["build"]
            assert (COMPOSE / build["context"] / build["dockerfile"]).is_file()
            assert command[0] == "fed"
            args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown option
            assert callable(args.func)
            assert args.creds in mounts, f"{name}: its key {args.creds} is not mounted"
            url = getattr(args, "url", "") or ""
            for host in re.findall(r"nats://([\w-]+):", url):
                assert host in services, f"{name}: {host} is not a service"
        elif image == deploy.PROMETHEUS_IMAGE:
            (config,) = [c.split("=", 1)[1] for c in command if c.startswith("--config.file=")]
            assert config in mounts, f"{name}: {config} is not mounted"
        elif image == deploy.EXPORTER_IMAGE:
            assert command[-1].split(",", 1)[0] in services
    assert len(published) == len(set(published)), "two services publish the same host port"
    connection = json.loads((keyed / "federation.json").read_text())
    assert set(connection["regions"]) == regions
    assert (ROOT / connection["creds"]).relative_to(COMPOSE)  # the operator's key, from the root
    assert (keyed / Path(connection["creds"]).relative_to("compose")).is_file()


def test_the_image_is_multi_stage_and_runs_as_an_unprivileged_user() -> None:
    lines = [line.split() for line in (COMPOSE / "Dockerfile").read_text().splitlines() if line.strip()]
    instructions = [line for line in lines if not line[0].startswith("#")]
    assert sum(1 for line in instructions if line[0] == "FROM") >= 2
    users = [line[1] for line in instructions if line[0] == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1] not in ("root", "0")
    for line in instructions:
        if line[0] == "COPY" and not any(part.startswith("--from") for part in line):
            for source in line[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# --- a region as a 3-server cluster ----------------------------------------------------------------


def _replica_last_seq(monitor: str, stream: str) -> int:
    """The last sequence of ``stream`` in this server's own replica (its monitoring endpoint)."""
    with urllib.request.urlopen(f"{monitor}/jsz?accounts=true&streams=true", timeout=5) as reply:
        jsz = json.loads(reply.read())
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                return int(detail["state"]["last_seq"])
    return -1


async def test_a_three_server_region_keeps_scheduling_with_one_server_killed(tmp_path: Path) -> None:
    """The region's servers, joined to a hub as in compose/: each member has a leafnode to it."""
    *routes, leaf = free_ports(4)
    hub = Server(
        name="hub",
        domain="hub",
        store_dir=str(tmp_path / "hub" / "store"),
        ports_dir=str(tmp_path / "hub" / "ports"),
        leaf_listen=leaf,
    )
    servers = [
        dataclasses.replace(server, ports_dir=str(tmp_path / server.name / "ports"))
        for server in deploy.region_cluster(
            "eu",
            hosts=["127.0.0.1"] * 3,
            store_dir=str(tmp_path / "{name}" / "store"),
            hub_leaf=[f"nats-leaf://127.0.0.1:{leaf}"],
            host="127.0.0.1",
            ports=[(-1, route, -1) for route in routes],
            sync_always=False,
        )
    ]
    children: dict[str, Child] = {}
    monitors: dict[str, str] = {}
    urls: dict[str, str] = {}

    for server in [hub, *servers]:
        (tmp_path / server.name / "ports").mkdir(parents=True)

    async def start(server: Server) -> None:
        conf = tmp_path / f"{server.name}.conf"
        conf.write_text(server_config(server))
        child = children[server.name] = Child(
            f"nats-{server.name}", [nats_server_binary(), "-c", str(conf)], tmp_path / f"{server.name}.log"
        )
        child.start()
        ports = await read_ports(tmp_path / server.name / "ports", child)
        urls[server.name], monitors[server.name] = ports["nats"][0], ports["monitoring"][0]

    daemons: list[Child] = []

    async def fed(*args: str) -> None:
        done = await asyncio.to_thread(
            subprocess.run, fed_command(*args), capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        for server in [hub, *servers]:
            await start(server)
        hub_url = urls.pop("hub")
        region_url = ",".join(urls.values())
        await wait_for_jetstream(region_url, deadline=60.0)
        await wait_for_jetstream(hub_url)
        await fed("provision", "--url", region_url, "--region", "eu", "--replicas", "3")
        await fed("provision", "--hub", "--url", hub_url, "--region", "eu")
        for n in (1, 2):  # as in compose/: one leads, one stands by (a leader that cannot renew its
            # lease while the lease stream elects a new leader exits, and the standby takes over)
            scheduler = fed_command(
                "scheduler", "--region", "eu", "--url", region_url, "--replicas", "3", "--name", f"s{n}"
            )
            daemons.append(Child(f"scheduler-{n}", scheduler, tmp_path / f"scheduler-{n}.log"))
        for node in ("eu-n1", "eu-n2"):
            argv = agent_command("eu", node, region_url, tmp_path / node, "--cpu", "2", "--memory", "2GiB")
            daemons.append(Child(node, argv, tmp_path / f"{node}.log"))
        for daemon in daemons:
            daemon.start()
        connection = Connection(hub_url=hub_url, regions={"eu": RegionEndpoint(url=region_url)})
        async with Client.connect(connection=connection) as client:

            async def all_succeed(prefix: str) -> None:
                handles = [
                    await client.submit(["true"], job_id=f"{prefix}-{i}", region="eu") for i in range(4)
                ]
                for handle in handles:
                    assert (await handle.wait(timeout=90)).state == "succeeded"

            await all_succeed("before")
            bus = await client.bus("eu")
            jobs = f"KV_{subjects.jobs_bucket('eu')}"
            info = await bus.js.stream_info(jobs)
            assert info.config.num_replicas == 3
            leader = info.cluster.leader if info.cluster else ""
            assert leader in children, f"no leader among {list(children)}: {leader!r}"
            children[leader].process.kill()  # type: ignore[union-attr]
            children[leader].process.wait()  # type: ignore[union-attr]

            await all_succeed("during")  # two of three servers: a quorum, the region goes on
            await start(next(s for s in servers if s.name == leader))  # the same config, back
            target = (await bus.js.stream_info(jobs)).state.last_seq

            async def caught_up() -> bool:
                return _replica_last_seq(monitors[leader], jobs) >= target

            await eventually(caught_up, timeout=60, interval=0.5)
            await all_succeed("after")

            # the trail went through the failover whole, in the region and in the hub's copy: once
            # the audit stream's copying resumed (its watchdog re-adds a source stalled by the
            # failover after AUDIT_STALL seconds), nothing is missing and nothing is violated
            async def whole() -> bool:
                report = await client.audit_check(region="eu")
                assert not report.violations, report
                return report.ok

            await eventually(whole, timeout=60, interval=1.0)
            report = await client.audit_check(region="eu")
            verified = await client.audit_verify(region="eu")
            assert not verified.divergences, verified.divergences[:1]

            async def hub_clean() -> bool:
                everywhere = await client.audit_check(everywhere=True, wait=2.0)
                return everywhere.ok and everywhere.events >= report.events

            await eventually(hub_clean, timeout=60, interval=1.0)
    finally:
        for child in [*daemons, *children.values()]:
            if child.alive():
                child.process.terminate()  # type: ignore[union-attr]
        for child in [*daemons, *children.values()]:
            if child.process is not None:
                try:
                    child.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()


def test_the_systemd_examples_run_valid_fed_commands() -> None:
    parser = build_parser()
    units = sorted((ROOT / "docs" / "systemd").glob("*.service"))
    assert len(units) == 2
    for unit in units:
        (exec_start,) = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
        argv = exec_start.removeprefix("ExecStart=").replace("%i", "eu-west").split()
        assert Path(argv[0]).name == "fed"
        args = parser.parse_args(argv[1:])
        assert args.cmd in ("scheduler", "agent")
