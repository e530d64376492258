"""Crashes and whole-process lifecycles, with real signals."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from federation import subjects
from federation.bus import Bus
from federation.client import Client
from federation.errors import FederationError, NotFound
from federation.ops.launcher import fed_command
from federation.schemas import Quarantined
from federation.tracing import trace_id
from tests.conftest import eventually, run_fed
from tests.harness import attempts_running

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
    from federation.ops.launcher import Federation, Options

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
            from federation.ops.launcher import Child, agent_command

            await second.add_identity("agent", "later", "eu")
            creds = second.creds_args("agent", "later", "eu")
            agent = Child(
                "agent-later",
                agent_command("eu", "later", connection.regions["eu"].url, tmp_path / "later", *creds),
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


async def test_agent_sigkill_with_three_jobs_leaves_no_orphan_and_each_job_ends_once_per_policy(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(agents=0)
    agent = await cluster.start_agent("eu", "solo", "--cpu", "4")
    runs = tmp_path / "runs"
    runs.mkdir()
    body = f"echo $FED_ATTEMPT >> {runs}/$FED_JOB_ID; sleep 300 & sleep 300 & wait"  # a process tree
    policies = {"keep": "replace", "drop": "fail", "plain": ""}
    async with Client.connect(connection=cluster.connection) as fed:
        for job, policy in policies.items():
            await fed.submit(["sh", "-c", body], job_id=job, on_node_lost=policy)

        async def all_started() -> bool:  # reported started: past the cgroup gate, not only spawned
            try:
                states = {(await fed.job(job)).state for job in policies}
            except NotFound:  # submitted, not yet recorded
                return False
            return states == {"running"} and all(attempts_running(job) == {1} for job in policies)

        await eventually(all_started, timeout=30)
        assert agent.process is not None
        agent.process.kill()  # SIGKILL: the workloads, in their own sessions, outlive it
        agent.process.wait(timeout=10)
        assert all(attempts_running(job) == {1} for job in policies)
        await cluster.start_agent("eu", "solo", "--cpu", "4")
        # the new agent finds its previous life's process groups in its journal and kills them
        await eventually(lambda: not any(1 in attempts_running(job) for job in policies), timeout=30)
        drop = await fed.wait("drop", timeout=30)
        plain = await fed.wait("plain", timeout=30)
        for record in (drop, plain):  # at most once: never run again
            assert record.state == "lost"
            assert "not re-run" in record.reason
        # replace: a second attempt, exactly one
        await eventually(lambda: attempts_running("keep") == {2}, timeout=30)

        async def keep_running() -> bool:  # the process exists before its start is reported
            keep = await fed.job("keep")
            return (keep.state, keep.attempt) == ("running", 2)

        await eventually(keep_running, timeout=30)
        assert attempts_running("keep") == {2}
        await fed.cancel("keep")
    ran = {path.name: path.read_text().split() for path in runs.iterdir()}
    assert ran == {"keep": ["1", "2"], "drop": ["1"], "plain": ["1"]}


async def test_an_agent_killed_between_journal_and_start_never_starts_that_attempt(
    make_cluster, tmp_path: Path, monkeypatch
) -> None:
    cluster = await make_cluster(agents=0)
    fired = tmp_path / "failpoint-fired"
    monkeypatch.setenv("FED_FAILPOINT", f"agent-after-journal:{fired}")  # the agents' environment
    runs = tmp_path / "runs"
    runs.mkdir()
    body = f"echo $FED_ATTEMPT >> {runs}/$FED_JOB_ID"
    first = await cluster.start_agent("eu", "solo", "--cpu", "2")
    async with Client.connect(connection=cluster.connection) as fed:
        await fed.submit(["sh", "-c", body], job_id="once", on_node_lost="replace")
        await fed.submit(["sh", "-c", body], job_id="never", on_node_lost="fail")
        # the first attempt to reach the point is journalled, then its agent dies before starting it
        assert first.process is not None
        await eventually(lambda: fired.exists() and first.process.poll() is not None, timeout=30)
        await cluster.start_agent("eu", "solo", "--cpu", "2")  # same state directory, same journal
        records = {job: await fed.wait(job, timeout=60) for job in ("once", "never")}
    ran = {path.name: path.read_text().split() for path in runs.iterdir()}
    for job, record in records.items():
        if record.state == "succeeded":  # ran exactly once, as the attempt that succeeded
            assert ran[job] == [str(record.attempt)]
        else:  # journalled by the dead agent: reported lost by the new one and never run
            assert (job, record.state) == ("never", "lost")
            assert "not re-run" in record.reason
            assert job not in ran
    # the point fired after a journal line, so at least one attempt was journalled and not run
    assert records["never"].state == "lost" or records["once"].attempt == 2


async def test_a_message_that_always_fails_is_quarantined_after_max_deliver_and_others_flow(
    make_cluster, monkeypatch
) -> None:
    # a handler bug that never goes away, for one message: the failure point raises on every try
    monkeypatch.setenv("FED_FAILPOINT", "handle-submit:poison")
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        await fed.submit(["true"], job_id="poison")
        for i in range(5):
            await fed.submit(["true"], job_id=f"fine-{i}")

        async def fine_done() -> bool:
            records = {r.id: r.state for r in await fed.jobs() if r.id.startswith("fine-")}
            return records == {f"fine-{i}": "succeeded" for i in range(5)}

        await eventually(fine_done, timeout=30)

        async def poison_quarantined() -> list[Quarantined]:
            return [q for q in await fed.quarantined() if q.subject == subjects.submit("eu", "poison")]

        (record,) = await eventually(poison_quarantined, timeout=60)
        assert record.deliveries == 5, record  # SchedulerConfig.max_deliver
        assert "failpoint handle-submit armed for poison" in record.reason
        assert [r.id for r in await fed.jobs()].count("poison") == 0, "a poison message changed state"
        # the region keeps scheduling after it
        await fed.submit(["true"], job_id="after-poison")
        assert (await fed.wait("after-poison", timeout=30)).state == "succeeded"
    out = await asyncio.to_thread(run_fed, cluster.tmp, "quarantine")
    assert "poison" in out.stdout


async def test_a_corrupt_job_record_is_kept_as_evidence_and_its_job_still_runs(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    bus = await Bus.connect(cluster.url("eu"), "test-corruptor", retry_forever=False)
    try:  # another tool, or a disk fault, leaves garbage under a job's key
        await bus.cas(subjects.jobs_bucket("eu"), "mangled", b"{not a record", 0)
    finally:
        await bus.close()
    async with Client.connect(connection=cluster.connection) as fed:
        await fed.submit(["true"], job_id="mangled")
        await fed.submit(["true"], job_id="neighbour")
        assert (await fed.wait("mangled", timeout=30)).state == "succeeded"
        assert (await fed.wait("neighbour", timeout=30)).state == "succeeded"
        evidence = [q for q in await fed.quarantined() if q.subject == "$KV.fed-jobs-eu.mangled"]
        assert evidence, "the unreadable bytes were not kept"
        assert base64.b64decode(evidence[0].payload) == b"{not a record"


async def test_region_server_sigkill_under_load_loses_no_acknowledged_submission(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(agents=2)
    runs = tmp_path / "runs"
    runs.mkdir()
    acknowledged: list[str] = []
    stop = asyncio.Event()

    async def producer() -> None:
        """Submit steadily; only a submission the stream acknowledged counts."""
        i = 0
        while not stop.is_set():
            try:
                async with Client.connect(connection=cluster.connection) as fed:
                    while not stop.is_set():
                        job = f"s-{i}"
                        await fed.submit(["sh", "-c", f"echo $FED_ATTEMPT >> {runs}/$FED_JOB_ID"], job_id=job)
                        acknowledged.append(job)
                        i += 1
                        await asyncio.sleep(0.02)  # sleep-ok: paces the load
            except FederationError:
                i += 1  # unacknowledged: it may or may not have been stored; not counted
                await asyncio.sleep(0.2)  # sleep-ok: back off while the server is away

    load = asyncio.create_task(producer())
    await eventually(lambda: len(acknowledged) >= 50, timeout=30)
    server = cluster.federation.servers["eu"]
    os.kill(server.pid, signal.SIGKILL)
    # fed up's supervisor starts it again on the same ports, with the same JetStream store
    servers = cluster.federation.servers
    await eventually(lambda: servers["eu"] is not server and servers["eu"].alive(), timeout=30)
    back = time.monotonic()
    async with Client.connect(connection=cluster.connection) as fed:
        # every loop resumed: a fresh job is consumed, placed, run and reported within 10 s
        probe = await fed.submit(["true"], job_id="probe")
        assert (await probe.wait(timeout=30)).state == "succeeded"
        resumed = time.monotonic() - back
        assert resumed < 10, f"the loops took {resumed:.1f}s to resume"
        count = len(acknowledged)
        await eventually(lambda: len(acknowledged) >= count + 20, timeout=30)
        stop.set()
        await load

        async def all_done() -> bool:
            states = {r.id: r.state for r in await fed.jobs()}
            return all(states.get(job) == "succeeded" for job in acknowledged)

        await eventually(all_done, timeout=120, interval=0.5)
    ran = {path.name: path.read_text().split() for path in runs.iterdir()}
    missing = [job for job in acknowledged if job not in ran]
    assert not missing, f"acknowledged but never ran: {missing[:5]}"
    twice = {job: attempts for job, attempts in ran.items() if len(attempts) != 1}
    assert not twice, f"ran more than once: {twice}"


async def test_the_scheduler_warns_unless_jetstream_fsyncs_every_write(make_cluster) -> None:
    warning = "acknowledges writes before fsync"
    default = await make_cluster(agents=0)
    durable = await make_cluster(agents=0, durable=True)
    for cluster in (default, durable):
        log = cluster.tmp / "logs" / "scheduler-eu.log"
        await eventually(lambda log=log: "scheduler started" in log.read_text(), timeout=30)
    assert warning in (default.tmp / "logs" / "scheduler-eu.log").read_text()
    assert warning not in (durable.tmp / "logs" / "scheduler-eu.log").read_text()


async def test_a_vanished_consumer_is_recreated_by_the_watchdog(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        assert (
            await fed.wait((await fed.submit(["true"], job_id="before")).id, timeout=30)
        ).state == "succeeded"
        bus = await Bus.connect(cluster.url("eu"), "test-vandal", retry_forever=False)
        try:  # an operator's mistake, or a server that lost its consumer state
            await bus.js.delete_consumer(
                subjects.workloads_stream("eu"), subjects.SCHEDULER_WORKLOADS_CONSUMER
            )
        finally:
            await bus.close()
        await fed.submit(["true"], job_id="after")
        assert (await fed.wait("after", timeout=30)).state == "succeeded"
        assert (await fed.job("before")).attempt == 1  # the replay from the start changed nothing
