"""Crashes and whole-process lifecycles, with real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from federation.client import Client
from federation.launcher import fed_command
from federation.tracing import trace_id
from tests.conftest import eventually, process_alive, run_fed

pytestmark = pytest.mark.timeout(300)


async def test_scheduler_sigkill_mid_stream_loses_no_job_and_runs_none_twice(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(agents=2)
    runs = tmp_path / "runs"
    runs.mkdir()
    total = 300
    async with Client.connect(connection=cluster.connection) as fed:

        async def stream() -> None:
            for i in range(total):
                await fed.submit(["sh", "-c", f"echo $FED_ATTEMPT >> {runs}/$FED_JOB_ID"], job_id=f"k-{i}")
                await asyncio.sleep(0.01)  # sleep-ok: paces a steady stream so the kill lands mid-stream

        producer = asyncio.create_task(stream())
        scheduler = cluster.scheduler("eu")
        first_pid = scheduler.pid

        async def some_placed() -> bool:
            return len(list(runs.iterdir())) >= 40

        await eventually(some_placed, timeout=60)
        assert not producer.done(), "the stream ended before the kill: not a mid-stream crash"
        os.kill(first_pid, signal.SIGKILL)
        # fed up's supervisor restarts the scheduler; the new one recovers from JetStream
        await eventually(lambda: scheduler.pid != first_pid and scheduler.alive(), timeout=30)
        await producer

        async def all_done() -> bool:
            records = await fed.jobs()
            return len(records) == total and all(r.terminal for r in records)

        await eventually(all_done, timeout=180, interval=0.5)
        records = await fed.jobs()
    assert {r.state for r in records} == {"succeeded"}, [r for r in records if r.state != "succeeded"][:3]
    ran = {path.name: path.read_text().split() for path in runs.iterdir()}
    assert len(ran) == total
    twice = {job: attempts for job, attempts in ran.items() if len(attempts) != 1}
    assert not twice, f"jobs ran more than once: {twice}"


async def test_one_job_is_one_trace_from_submit_to_the_process(make_cluster, tmp_path, monkeypatch) -> None:
    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("FED_TRACE_FILE", str(spans_file))  # inherited by the daemons
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        job = await fed.submit(["sh", "-c", "echo $TRACEPARENT"])
        record = await job.wait(timeout=60)
        seen = b"".join([c async for c in fed.logs(job.id)]).decode().strip()
    trace = trace_id(record.traceparent)
    assert trace, "the submission carried no trace context"
    assert trace_id(seen) == trace, "the workload did not get the job's trace context"

    def spans() -> dict[str, dict[str, str]]:
        if not spans_file.exists():
            return {}
        lines = [json.loads(line) for line in spans_file.read_text().splitlines()]
        return {s["name"]: s for s in lines if s["trace_id"] == trace}

    found = await eventually(lambda: (s := spans()) and {"fed.place", "fed.run"} <= set(s) and s)
    assert found["fed.place"]["service"] == "fed-scheduler-eu"
    assert found["fed.run"]["service"] == "fed-agent-eu-n1"
    assert found["fed.run"]["attributes"]["job"] == job.id


async def test_fed_up_starts_runs_a_job_and_stops_leaving_no_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "FED_STATE_DIR": str(state)}
    up = subprocess.Popen(  # noqa: ASYNC220 - started once, stopped by its pid below
        fed_command(
            "up", "--regions", "north,south", "--agents", "1", "--node-capacity", "cpu=2,memory=1GiB"
        ),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    children: list[psutil.Process] = []
    try:
        await eventually(lambda: (state / "federation.json").exists() or up.poll() is not None, timeout=60)
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        connection = json.loads((state / "federation.json").read_text())
        assert sorted(connection["regions"]) == ["north", "south"]
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3 + 2 + 2  # hub + 2 region servers, 2 schedulers, 2 agents
        done = await asyncio.to_thread(
            run_fed, state, "submit", "--region", "south", "--wait", "--", "echo", "hi"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hi\n"
        failed = await asyncio.to_thread(run_fed, state, "submit", "--wait", "--", "sh", "-c", "exit 4")
        assert failed.returncode == 4
        status = await asyncio.to_thread(run_fed, state, "status", "--json")
        regions = json.loads(status.stdout)
        assert [r["region"] for r in regions] == ["north", "south"]
        assert all(len(r["nodes"]) == 1 for r in regions)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, _ = await asyncio.to_thread(up.communicate, timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, out
    assert "stopped." in out
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, f"{child} survived"
    assert not (state / "federation.json").exists()


async def test_restart_with_the_same_state_dir_resumes_jobs(tmp_path: Path) -> None:
    from federation.launcher import Federation, Options

    options = Options(state_dir=tmp_path / "state", regions=("eu",), agents=1)
    first = Federation(options)
    connection = await first.start()
    try:
        async with Client.connect(connection=connection) as fed:
            done = await fed.submit(["echo", "before"], job_id="before-restart")
            assert (await done.wait(timeout=60)).state == "succeeded"
            # a job no node can take stays queued across the restart
            waiting = await fed.submit(["echo", "after"], job_id="waits", require={"node": "later"})
            await eventually(lambda: _pending(fed, waiting.id))
    finally:
        await first.stop()
    second = Federation(options)
    connection = await second.start()
    agent = None
    try:
        async with Client.connect(connection=connection) as fed:
            assert (await fed.job("before-restart")).state == "succeeded"
            assert (await fed.job("waits")).state == "pending"
            from federation.launcher import Child, agent_command

            agent = Child(
                "agent-later",
                agent_command("eu", "later", connection.regions["eu"].url, tmp_path / "later"),
                tmp_path / "later.log",
                restart=False,
            )
            agent.start()
            record = await fed.wait("waits", timeout=60)
            assert record.state == "succeeded"
            assert b"".join([c async for c in fed.logs("before-restart")]) == b"before\n"
    finally:
        if agent is not None and agent.process is not None:
            agent.process.terminate()
            agent.process.wait(timeout=15)
        await second.stop()


async def _pending(fed: Client, job: str) -> bool:
    try:
        return (await fed.job(job)).state == "pending"
    except Exception:
        return False


async def test_restarted_agent_does_not_rerun_an_attempt_it_had_started(make_cluster, tmp_path: Path) -> None:
    cluster = await make_cluster(agents=0)
    agent = cluster.start_agent("eu", "solo")
    marker = tmp_path / "ran"
    async with Client.connect(connection=cluster.connection) as fed:
        job = await fed.submit(["sh", "-c", f"echo $$ >> {marker}; exec sleep 300"])
        await eventually(lambda: marker.exists())
        pid = int(marker.read_text())
        assert agent.process is not None
        agent.process.kill()  # SIGKILL: the agent's process group dies, the workload was its own session
        agent.process.wait(timeout=10)
        cluster.start_agent("eu", "solo")
        record = await job.wait(timeout=60)
    assert record.state == "failed"
    assert "not re-run" in record.reason
    assert marker.read_text() == f"{pid}\n", "the attempt ran twice"
    await eventually(lambda: not process_alive(pid), timeout=10)


async def test_a_second_scheduler_for_a_region_refuses_to_start(make_cluster) -> None:
    cluster = await make_cluster(agents=0)
    log = cluster.tmp / "logs" / "scheduler-eu.log"
    await eventually(lambda: "scheduler started" in log.read_text(), timeout=30)
    out = await asyncio.to_thread(
        subprocess.run,
        fed_command("scheduler", "--region", "eu", "--url", cluster.url("eu")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "second scheduler" in out.stderr
