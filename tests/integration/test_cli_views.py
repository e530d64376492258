"""What the CLI shows an operator and a tenant, against a real federation (issue 16, defects 5, 7, 8).

Node states in ``fed status`` follow the heartbeat first (a paused agent is ``LOST``, whatever its
offer did), a tenant gets its own view or a clear refusal at once (not a timeout dressed up as an
unreachable region), and following a job ends with the job's own status.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from federation import subjects
from federation.client import Client
from federation.ops.launcher import fed_command, server_pids
from federation.schemas import Heartbeat, encode
from tests.conftest import eventually, process_alive, run_fed
from tests.harness import pause, resume

pytestmark = pytest.mark.timeout(180)


def _node_line(out: str, node: str) -> str:
    return next((line for line in out.splitlines() if line.split()[:1] == [node]), "")


async def test_status_shows_a_paused_agent_lost_and_a_beating_node_without_an_offer(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=2)
    async with Client.connect(connection=cluster.connection) as fed:  # a node that beats, never offers
        beat = Heartbeat(node="ghost", seq=1, sent_at=time.time(), interval=10.0)
        await (await fed.bus("eu")).store(subjects.heartbeat("eu", "ghost"), encode(beat), ttl=30)
    (agent,) = [c for c in cluster.federation.daemons if c.name == "agent-eu-n2"]
    pause(agent.pid)
    try:

        async def shown() -> tuple[str, str]:
            out = (await asyncio.to_thread(run_fed, cluster.tmp, "status")).stdout
            return _node_line(out, "eu-n2"), _node_line(out, "ghost")

        async def paused_is_lost() -> bool:
            paused, _ = await shown()
            return "LOST" in paused

        await eventually(paused_is_lost, timeout=30, interval=0.5)
        paused, ghost = await shown()
        assert "no offer" not in paused.lower(), paused
        assert "NO OFFER" in ghost, ghost
        assert "live" in _node_line((await asyncio.to_thread(run_fed, cluster.tmp, "status")).stdout, "eu-n1")
    finally:
        resume(agent.pid)
    await eventually(lambda: _status_has(cluster.tmp, "eu-n2", "live"), timeout=30)  # back once resumed


async def _status_has(state: Path, node: str, word: str) -> bool:
    out = (await asyncio.to_thread(run_fed, state, "status")).stdout
    return word in _node_line(out, node).split()


async def test_a_tenant_gets_its_own_status_and_a_clear_refusal_at_once(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu", "us"), agents=1)
    creds = await cluster.federation.add_identity("tenant", "acme")
    assert creds is not None
    as_tenant = ("--creds", str(creds))
    submitted = await asyncio.to_thread(run_fed, cluster.tmp, *as_tenant, "submit", "--wait", "--", "true")
    assert submitted.returncode == 0, submitted.stderr

    started = time.monotonic()
    status = await asyncio.to_thread(run_fed, cluster.tmp, *as_tenant, "status")
    assert status.returncode == 0, status.stderr
    assert "tenant acme's jobs: succeeded=1" in status.stdout, status.stdout
    assert "UNREACHABLE" not in status.stdout
    for command in (("quarantine",), ("audit", "replay"), ("audit", "check")):
        refused = await asyncio.to_thread(run_fed, cluster.tmp, *as_tenant, *command)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "tenant acme may not use" in refused.stderr, refused.stderr
        assert "unavailable" not in refused.stderr.lower(), refused.stderr
    # four commands, each a fresh interpreter; the old answer was a 20 s wait per region and
    # command (over 100 s in all): the bound leaves room for a loaded machine
    assert time.monotonic() - started < 75


async def test_following_a_failed_job_ends_with_its_status(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        job = await fed.submit(["sh", "-c", "echo out; exit 7"])
        followed = await asyncio.to_thread(run_fed, cluster.tmp, "logs", "-f", job.id)
        assert followed.returncode == 7, followed.stderr
        assert followed.stdout == "out\n"
        assert f"{job.id}: failed" in followed.stderr
        ok = await fed.submit(["true"])
        assert (await asyncio.to_thread(run_fed, cluster.tmp, "logs", "-f", ok.id)).returncode == 0


async def test_submit_and_cancel_print_json_when_asked(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    shown = await asyncio.to_thread(run_fed, cluster.tmp, "submit", "--json", "--id", "js-1", "--", "true")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "id": "js-1",
        "region": "eu",
        "subject": subjects.submit("eu", "js-1"),
    }
    waited = await asyncio.to_thread(
        run_fed,
        cluster.tmp,
        "submit",
        "--json",
        "--wait",
        "--id",
        "js-2",
        "--",
        "sh",
        "-c",
        "echo hi; exit 3",
    )
    assert waited.returncode == 3, waited.stderr
    document = json.loads(waited.stdout)  # the record instead of the output: stdout is JSON alone
    assert (document["id"], document["record"]["state"], document["record"]["exit_code"]) == (
        "js-2",
        "failed",
        3,
    )
    cancelled = await asyncio.to_thread(run_fed, cluster.tmp, "cancel", "--json", "js-1")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancel_requested"] is True


def _with_terminal_stderr(state: Path, *args: str) -> tuple[int, str]:
    """Run ``fed ARGS`` with stderr on a pseudo-terminal; its exit status and what it drew there."""
    import pty

    master, slave = pty.openpty()
    env = {**os.environ, "FED_STATE_DIR": str(state)}
    env.pop("FED_CREDS", None)
    child = subprocess.Popen(fed_command(*args), env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    drawn = b""
    try:
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(master)
        code = child.wait(timeout=60)
    return code, drawn.decode(errors="replace")


async def test_long_operations_show_progress_on_a_terminal_only(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    code, drawn = await asyncio.to_thread(
        _with_terminal_stderr, cluster.tmp, "submit", "--wait", "--", "sh", "-c", "sleep 1.5"
    )
    assert code == 0, drawn
    assert "\r\x1b[K" in drawn
    assert ": running (" in drawn, drawn  # the job's state as it goes, redrawn in place
    code, drawn = await asyncio.to_thread(
        _with_terminal_stderr, cluster.tmp, "audit", "check", "--region", "eu"
    )
    assert code == 0, drawn
    assert "checking region eu: " in drawn, drawn
    piped = await asyncio.to_thread(run_fed, cluster.tmp, "submit", "--wait", "--", "sh", "-c", "sleep 1.5")
    assert piped.returncode == 0, piped.stderr
    assert "\x1b[K" not in piped.stderr  # not a terminal: nothing drawn


async def test_ctrl_c_on_submit_wait_says_the_job_goes_on(make_cluster, tmp_path: Path) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    errors = tmp_path / "submit.err"
    with errors.open("w") as sink:
        waiting = await asyncio.create_subprocess_exec(
            *fed_command("submit", "--wait", "--id", "interrupted", "--", "sleep", "60"),
            env={**os.environ, "FED_STATE_DIR": str(cluster.tmp)},
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        async with Client.connect(connection=cluster.connection) as fed:

            async def running() -> bool:
                try:
                    return (await fed.job("interrupted")).state == "running"
                except Exception:
                    return False

            await eventually(running, timeout=60)
            await eventually(lambda: "waiting" in errors.read_text(), timeout=10)
            waiting.send_signal(signal.SIGINT)
            async with asyncio.timeout(30):
                assert await waiting.wait() == 130
            assert "the job goes on" in errors.read_text(), errors.read_text()
            assert (await fed.job("interrupted")).state == "running"
            await fed.cancel("interrupted")
    finally:
        if waiting.returncode is None:
            waiting.kill()
            await waiting.wait()


async def test_fed_up_draws_what_start_up_waits_for_on_a_terminal(tmp_path: Path) -> None:
    """``fed up`` with stderr on a terminal redraws one line with the stage it waits on; its
    stdout (what it started, then "ready") is unchanged."""
    import pty

    state = tmp_path / "fed"
    master, slave = pty.openpty()
    up = await asyncio.create_subprocess_exec(
        *fed_command("up", "--state-dir", str(state), "--regions", "eu", "--agents", "1", "--no-console"),
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    drawn = b""
    try:
        while not (state / "federation.json").exists():
            ready, _, _ = await asyncio.to_thread(select.select, [master], [], [], 1.0)
            if ready:
                drawn += os.read(master, 4096)
            assert up.returncode is None, drawn.decode(errors="replace")
    finally:
        up.terminate()
        async with asyncio.timeout(30):
            await up.wait()
        os.close(master)
    assert not [pid for pid in server_pids(state) if process_alive(pid)]
    text = drawn.decode(errors="replace")
    assert "\r\x1b[Kwaiting for JetStream on 2 servers" in text, text
    assert "waiting for eu (1 of 1): its scheduler to lead and its 1 agents to offer" in text, text
