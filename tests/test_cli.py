"""The CLI's own behaviour: help texts, clear one-line errors, exit statuses (no server needed)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from federation.cli import build_parser, exit_status
from federation.config import Connection, RegionEndpoint, write_connection
from federation.ops.launcher import Child, Federation, Options, fed_command, free_port
from federation.schemas import JobRecord, Submit
from tests.conftest import eventually


def fed(command: str, *args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fed_command(command, "--state-dir", str(state), *args),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_command_has_help() -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) >= {"up", "scheduler", "agent", "submit", "status", "jobs", "job", "logs", "cancel"}
    for name, sub in choices.items():
        assert sub.format_help().strip(), name


def test_without_a_federation_commands_say_how_to_start_one(tmp_path: Path) -> None:
    out = fed("status", state=tmp_path)
    assert out.returncode == 2
    assert "fed up" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--cpu", "-1", "--", "true"], "cpu"),
        (["--cpu", "0", "--", "true"], "cpu must be at least 1"),
        (["--regions", "mars", "--", "true"], "unknown region 'mars' in regions: this federation has eu"),
        (["--memory", "lots", "--", "true"], "memory quantity"),
        (["--id", "bad.id", "--", "true"], "id"),
        (["--env", "NOEQUALS", "--", "true"], "KEY=VALUE"),
        ([], "nothing to run"),
    ],
)
def test_bad_submission_is_one_clear_line_and_sends_nothing(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    # a connection file pointing at a port nobody listens on: validation must fail before any I/O
    write_connection(
        tmp_path,
        Connection(
            hub_url="nats://127.0.0.1:9",
            regions={"eu": RegionEndpoint(url="nats://127.0.0.1:9")},
            default_region="eu",
        ),
    )
    out = fed("submit", *args, state=tmp_path)
    assert out.returncode == 2, out
    assert needle in out.stderr
    assert out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_unreachable_region_is_reported_not_a_traceback(tmp_path: Path) -> None:
    write_connection(
        tmp_path,
        Connection(
            hub_url="nats://127.0.0.1:9",
            regions={"eu": RegionEndpoint(url="nats://127.0.0.1:9")},
            default_region="eu",
        ),
    )
    out = fed("submit", "--", "true", state=tmp_path)
    assert out.returncode == 2
    assert "unavailable" in out.stderr
    assert "Traceback" not in out.stderr


def record(state: str, code: int | None) -> JobRecord:
    return JobRecord(id="j", region="eu", spec=Submit(id="j", command=["x"]), state=state, exit_code=code)  # type: ignore[arg-type]


def test_wait_exit_status_follows_the_job() -> None:
    assert exit_status(record("succeeded", 0)) == 0
    assert exit_status(record("failed", 3)) == 3
    assert exit_status(record("failed", -9)) == 137
    assert exit_status(record("cancelled", -15)) == 143
    assert exit_status(record("cancelled", None)) == 130
    assert exit_status(record("failed", None)) == 1


def test_job_record_json_is_stable() -> None:
    data = msgspec.json.decode(msgspec.json.encode(record("pending", None)))
    assert {
        "id",
        "region",
        "spec",
        "state",
        "attempt",
        "node",
        "exit_code",
        "reason",
        "submitted_at",
        "updated_at",
        "traceparent",
        "history",
    } <= set(data)


def test_a_closed_pipe_is_not_a_traceback() -> None:
    # a command printing more than a pipe holds, its reader gone (`fed jobs | head -1`)
    script = (
        "import sys, federation.cli as cli, federation.cli.status as status\n"
        "async def loud(args):\n"
        "    for _ in range(20000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "status.cmd_status = loud\n"
        "sys.exit(cli.main(['status']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 0


def _completions(script: str, *words: str) -> list[str]:
    """What bash completes for ``words`` (the last one being typed), with ``script`` sourced."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    asked = f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _fed_complete"
    program = f'{script}\n{asked}; printf "%s\\n" "${{COMPREPLY[@]}}"'
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return [line for line in done.stdout.splitlines() if line]


def test_shell_completion_is_generated_from_the_parser() -> None:
    made = subprocess.run(fed_command("completion", "bash"), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    bash = made.stdout
    assert _completions(bash, "fed", "su") == ["submit"]
    assert "--priority" in _completions(bash, "fed", "submit", "--pri")
    assert _completions(bash, "fed", "submit", "--priority", "") == ["urgent", "high", "medium", "low"]
    assert _completions(bash, "fed", "--state-dir", "/tmp", "audit", "") == ["check", "replay", "verify"]
    assert "--region" in _completions(bash, "fed", "audit", "check", "--re")
    assert "add-tenant" in _completions(bash, "fed", "creds", "")
    # after --, the job's own command line: file names, not fed's options
    assert "--priority" not in _completions(bash, "fed", "submit", "--", "--pri")
    # every command of the parser is offered at the top
    commands = set(_completions(bash, "fed", ""))
    assert {"up", "submit", "jobs", "audit", "creds", "completion"} <= commands
    zsh = subprocess.run(fed_command("completion", "zsh"), capture_output=True, text=True, timeout=60).stdout
    assert zsh.startswith("#compdef fed\nautoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -F _fed_complete fed" in zsh


def test_status_json_gives_each_region_its_own_daemons_metrics() -> None:
    from federation.cli.status import _metrics_of
    from federation.client import NodeStatus, RegionStatus

    recorded = {
        "fed-up": "u0",
        "scheduler-eu": "u1",
        "scheduler-eu-2": "u2",
        "scheduler-eu-west": "u3",
        "agent-eu-n1": "u4",
        "agent-eu-west-n1": "u5",
    }

    def region(name: str, node: str) -> RegionStatus:
        held = NodeStatus(node=node, live=True, offer=None, allocations=[])
        return RegionStatus(region=name, url="", reachable=True, nodes=[held])

    assert _metrics_of(region("eu", "eu-n1"), recorded) == {
        "fed-up": "u0",
        "scheduler-eu": "u1",
        "scheduler-eu-2": "u2",
        "agent-eu-n1": "u4",
    }
    assert _metrics_of(region("eu-west", "eu-west-n1"), recorded) == {
        "fed-up": "u0",
        "scheduler-eu-west": "u3",
        "agent-eu-west-n1": "u5",
    }


def test_array_specs_read_as_slurm_writes_them() -> None:
    from federation.cli.common import parse_array

    assert parse_array("0-3") == ([0, 1, 2, 3], 0)
    assert parse_array("1,3,5-7") == ([1, 3, 5, 6, 7], 0)
    assert parse_array("0-99:10%2") == ([0, 10, 20, 30, 40, 50, 60, 70, 80, 90], 2)
    assert parse_array("5,5,4-5") == ([4, 5], 0)  # distinct, sorted
    assert parse_array("0-999%50")[1] == 50


def test_commands_run_on_uvloop_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    from federation.cli import entry

    assert entry.loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("FED_EVENT_LOOP", "asyncio")
    assert entry.loop_factory() is None  # asyncio's own loop


def test_a_daemons_port_is_chosen_below_the_ephemeral_range() -> None:
    from federation.ops.launcher import EPHEMERAL

    low = int(EPHEMERAL.read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(low // 2 <= port < low for port in ports), ports  # no outgoing connection takes these
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # and each is free


LISTENER = """
import os, signal, socket, sys
flag = os.environ["LISTENS"]
host, port = sys.argv[sys.argv.index(flag) + 1].rsplit(":", 1)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    sock.bind((host, int(port)))
except OSError as exc:
    sys.exit(f"cannot serve on {host}:{port}: {exc}")
sock.listen()
signal.pause()  # until the test kills it
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "flag"), [("agent-r1-n1", "--metrics"), ("console", "--listen")])
async def test_a_daemon_whose_port_was_taken_restarts_on_another(
    tmp_path: Path, name: str, flag: str
) -> None:
    """A daemon that dies because another process took its port (its metrics, the console's) would
    die again at every restart on that port: the supervisor moves it to a free one and says so
    where its address is read (metrics.json; the console's URL)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    port = taken.getsockname()[1]
    federation = Federation(Options(state_dir=tmp_path, regions=("r1",), auth=False))
    child = Child(
        name,
        [sys.executable, "-c", LISTENER, flag, f"127.0.0.1:{port}"],
        tmp_path / "daemon.log",
        env={"LISTENS": flag},
        listens=flag,
    )
    federation.daemons.append(child)
    if name == "console":
        federation.console_url = f"http://127.0.0.1:{port}"
    else:
        federation.metrics_urls[child.name] = f"http://127.0.0.1:{port}/metrics"
    child.start()
    assert child.process is not None
    assert await asyncio.to_thread(child.process.wait, 30) != 0  # the port is taken: it dies at once
    supervisor = asyncio.create_task(federation._supervise())

    def listening() -> bool:
        if child.address == ("127.0.0.1", port) or child.address is None:
            return False
        try:
            socket.create_connection(child.address, timeout=1).close()
        except OSError:
            return False
        return True

    try:
        await eventually(listening, timeout=40)  # restarted, on another port, and it runs there
        moved = child.address
        assert moved is not None
        if name == "console":
            assert federation.console_url == f"http://127.0.0.1:{moved[1]}"
        else:
            recorded = json.loads((tmp_path / "metrics.json").read_text())
            assert recorded[child.name] == f"http://127.0.0.1:{moved[1]}/metrics"
        assert child.alive()
    finally:
        supervisor.cancel()
        taken.close()
        if child.process is not None:
            child.process.kill()
            child.process.wait()
    assert child.restarts == 1


def test_a_bad_cpu_policy_stops_a_daemon_at_once_with_one_line() -> None:
    out = subprocess.run(
        fed_command("agent", "--region", "r1", "--node", "n1", "--url", "nats://127.0.0.1:1"),
        env={**os.environ, "FED_CPU_POLICY": "fifo"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "FED_CPU_POLICY must be one of batch, normal, not 'fifo'" in out.stderr
    assert "Traceback" not in out.stderr
