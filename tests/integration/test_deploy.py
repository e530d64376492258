"""Deployment beyond one machine (issue #8): compose/ is what the code renders, every server config
passes ``nats-server -t``, every reference in the compose file resolves, and a region run as a
3-server cluster from the rendered configs keeps scheduling with one server killed, and the
server catches up when it returns."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from federation import subjects
from federation.cli import build_parser, main
from federation.client import Client
from federation.config import Connection, RegionEndpoint
from federation.ops import deploy
from federation.ops.deploy import Server, server_config
from federation.ops.launcher import Child, agent_command, fed_command, nats_server_binary, read_ports
from federation.ops.provision import wait_for_jetstream
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


def _configs(tmp_path: Path) -> list[Path]:
    """Every committed compose config, and the configs `fed up` renders for its hub and a region."""
    local = [
        Server(
            name="hub", domain="hub", store_dir=str(tmp_path / "hub"), ports_dir=str(tmp_path), leaf_listen=-1
        ),
        Server(
            name="eu",
            domain="eu",
            store_dir=str(tmp_path / "eu"),
            ports_dir=str(tmp_path),
            leaf_remotes=(f"nats-leaf://127.0.0.1:{free_ports(1)[0]}",),
            sync_always=True,
        ),
    ]
    paths = sorted((COMPOSE / "nats").glob("*.conf"))
    for server in local:
        path = tmp_path / f"{server.name}.conf"
        path.write_text(server_config(server))
        paths.append(path)
    return paths


def test_every_rendered_server_config_passes_nats_server_t(tmp_path: Path) -> None:
    paths = _configs(tmp_path)
    assert len(paths) == 12
    for path in paths:
        result = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"
    bad = tmp_path / "bad.conf"
    bad.write_text(server_config(Server(name="x", domain="x", store_dir="/tmp/x")) + "cluster { nonsense }\n")
    refused = subprocess.run([nats_server_binary(), "-t", "-c", str(bad)], capture_output=True, timeout=30)
    assert refused.returncode != 0  # -t really checks


def test_every_compose_reference_resolves() -> None:
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    services: dict[str, dict] = compose["services"]  # type: ignore[type-arg]
    named_volumes = set(compose.get("volumes", {}))
    parser = build_parser()
    regions = set(deploy.COMPOSE_REGIONS)
    assert {f"{r}-{i}" for r in regions for i in (1, 2, 3)} <= set(services)
    published = []
    for name, service in services.items():
        image = service["image"]
        assert image in (deploy.FED_IMAGE, deploy.NATS_IMAGE), f"{name}: unknown image {image}"
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE / source).is_file(), f"{name}: {source} does not exist"
            else:
                assert source in named_volumes, f"{name}: volume {source} is not declared"
            mounts[target] = source
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        published += [port.rsplit(":", 1)[0] for port in service.get("ports", [])]
        command = service["command"]
        if image == deploy.NATS_IMAGE:
            assert command[0] == "-c"
            assert command[1] in mounts, f"{name}: {command[1]} is not mounted"
        else:
            build = service["build"]
            assert (COMPOSE / build["context"] / build["dockerfile"]).is_file()
            assert command[0] == "fed"
            args = parser.parse_args(command[1:])  # exits (fails the test) on an unknown option
            assert callable(args.func)
            url = getattr(args, "url", "") or ""
            for host in re.findall(r"nats://([\w-]+):", url):
                assert host in services, f"{name}: {host} is not a service"
    assert len(published) == len(set(published)), "two services publish the same host port"
    connection = json.loads((COMPOSE / "federation.json").read_text())
    assert set(connection["regions"]) == regions


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
