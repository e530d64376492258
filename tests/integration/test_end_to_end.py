"""Workloads end to end on real servers, schedulers and agents running real commands."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import msgspec
import nats
import pytest

from federation import subjects
from federation.client import Client
from federation.errors import InvalidRequest
from federation.schemas import Allocation, Ledger, Quarantined, decode
from tests.conftest import GiB, eventually, process_alive, run_fed

pytestmark = pytest.mark.timeout(300)


def mixed_job(i: int) -> tuple[list[str], str, int, str]:
    """(command, expected state, expected exit code, expected output) for job number ``i``."""
    match i % 4:
        case 0:
            return ["true"], "succeeded", 0, ""
        case 1:
            return ["echo", f"hello {i}"], "succeeded", 0, f"hello {i}\n"
        case 2:
            return [sys.executable, "-c", f"print({i} * 2)"], "succeeded", 0, f"{i * 2}\n"
        case _:
            return (
                ["sh", "-c", f"echo failing {i} >&2; exit {i % 7 + 1}"],
                "failed",
                i % 7 + 1,
                f"failing {i}\n",
            )


async def test_two_hundred_mixed_jobs_in_three_regions_end_right(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu-west", "us-east", "ap-south"), agents=2)
    regions = list(cluster.connection.regions)
    async with Client.connect(connection=cluster.connection) as fed:
        expected = {}
        submissions = []
        for i in range(200):
            command, state, code, output = mixed_job(i)
            region = regions[i % 3]
            expected[f"mixed-{i}"] = (region, state, code, output)
            submissions.append(fed.submit(command, region=region, job_id=f"mixed-{i}"))
        await asyncio.gather(*submissions)

        async def all_terminal() -> bool:
            records = await fed.jobs()
            return len(records) == 200 and all(r.terminal for r in records)

        await eventually(all_terminal, timeout=180, interval=0.5)
        records = {r.id: r for r in await fed.jobs()}
        for job, (region, state, code, output) in expected.items():
            record = records[job]  # where it ran: its home, or the region it was handed to
            home = record.spec.origin or record.region
            assert (home, record.state, record.exit_code) == (region, state, code), record
            chunks = [chunk async for chunk in fed.logs(job)]
            assert b"".join(chunks).decode() == output, job
    # the servers fed up started share the host with everything else: Go runs on a quarter of it
    cores = len(os.sched_getaffinity(0))
    for server in cluster.federation.servers.values():
        environ = (await asyncio.to_thread(Path(f"/proc/{server.pid}/environ").read_bytes)).split(b"\0")
        wanted = os.environ.get("GOMAXPROCS", str(max(1, cores // 4)))
        assert f"GOMAXPROCS={wanted}".encode() in environ


async def test_output_reads_back_through_fed_logs_cli(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        job = await fed.submit(["sh", "-c", "for i in 1 2 3; do echo line $i; done"])
        await job.wait(timeout=60)
    out = await asyncio.to_thread(run_fed, cluster.tmp, "logs", job.id)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "line 1\nline 2\nline 3\n"


def check_ledger(ledger: Ledger, cores: set[int], memory: int, slots: int) -> None:
    """I1 for one stored ledger value."""
    claimed = [c for a in ledger.allocations for c in a.cores]
    assert len(claimed) == len(set(claimed)), f"a core is claimed twice: {ledger}"
    assert set(claimed) <= cores, f"a claimed core is not offered: {ledger}"
    assert sum(a.memory for a in ledger.allocations) <= memory, f"memory overcommitted: {ledger}"
    assert len(ledger.allocations) <= slots, f"too many allocations: {ledger}"
    jobs = [a.job for a in ledger.allocations]
    assert len(jobs) == len(set(jobs)), f"a job is allocated twice: {ledger}"


def _suite_under_the_default_policy() -> bool:
    """Whether this suite runs under Linux's default policy, without FED_CPU_POLICY=normal (else
    the daemons keep what they inherit, as they should)."""
    if sys.platform != "linux" or os.environ.get("FED_CPU_POLICY", "").strip().lower() == "normal":
        return False
    return os.sched_getscheduler(0) == os.SCHED_OTHER


@pytest.mark.skipif(
    not _suite_under_the_default_policy(), reason="not Linux, or the suite runs under another policy"
)
async def test_daemons_and_servers_run_as_batch_work_and_a_workload_under_the_default_policy(
    make_cluster,
) -> None:
    """The federation's own processes run under SCHED_BATCH (federation.cpupolicy); the jobs they
    start do not inherit it."""
    cluster = await make_cluster(agents=1)
    daemons = [c for c in cluster.federation.daemons if c.name.startswith(("scheduler", "agent"))]
    servers = list(cluster.federation.servers.values())
    assert daemons
    assert servers
    for child in daemons + servers:
        assert os.sched_getscheduler(child.pid) == os.SCHED_BATCH, child.name
    async with Client.connect(connection=cluster.connection) as fed:
        probe = "import os; print(os.sched_getscheduler(0))"
        job = await fed.submit([sys.executable, "-c", probe])
        assert (await job.wait(timeout=60)).state == "succeeded"
        output = b"".join([chunk async for chunk in fed.logs(job.id)])
    assert int(output) == os.SCHED_OTHER


async def test_four_racing_submitters_never_overallocate_a_small_node(make_cluster) -> None:
    cluster = await make_cluster(agents=0)
    await cluster.start_agent("eu", "small", "--cpu", "2", "--memory", "1GiB", "--max-allocations", "3")
    history: list[Ledger] = []
    nc = await cluster.raw("eu")

    async def record(msg: nats.aio.msg.Msg) -> None:
        history.append(decode(Ledger, msg.data))

    await nc.subscribe(subjects.ledger_changes("eu", "*"), cb=record)
    clients = [Client.connect(connection=cluster.connection) for _ in range(4)]
    try:

        async def submitter(n: int, fed: Client) -> list[str]:
            ids = []
            for i in range(15):
                job = await fed.submit(
                    ["sleep", "0.05"], cpu=1, memory=(300 + 100 * (i % 3)) * 1024**2, job_id=f"race-{n}-{i}"
                )
                ids.append(job.id)
            return ids

        batches = await asyncio.gather(*(submitter(n, fed) for n, fed in enumerate(clients)))
        ids = [job for batch in batches for job in batch]

        async def done() -> bool:
            records = await clients[0].jobs()
            return len(records) == len(ids) and all(r.terminal for r in records)

        await eventually(done, timeout=120, interval=0.5)
        assert all(r.state == "succeeded" for r in await clients[0].jobs())
    finally:
        for fed in clients:
            await fed.close()
        await nc.drain()
    offered_cores = (
        set(range(2)) if len(os.sched_getaffinity(0)) < 2 else set(sorted(os.sched_getaffinity(0))[:2])
    )
    assert len(history) >= len(ids)  # every claim and every release went through the ledger
    peak = 0
    for ledger in history:
        check_ledger(ledger, offered_cores | {0, 1}, 1 * GiB, 3)
        peak = max(peak, len(ledger.allocations))
    assert peak == 2, "the node was never full: the race was not exercised"


async def test_job_bigger_than_any_offer_waits_with_reason_then_runs_when_node_joins(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        job = await fed.submit(["echo", "got a gpu"], gpu=1)

        async def explained() -> str:
            try:
                record = await job.record()
            except Exception:
                return ""
            # before the first offer arrives the reason is "no node has offered capacity yet"
            return record.reason if record.state == "pending" and "gpu" in record.reason else ""

        reason = await eventually(explained)
        assert "too little gpu on 1 node" in reason
        assert "larger than any node here (the largest: cpu=4 memory=8GiB gpu=0)" in reason
        out = await asyncio.to_thread(run_fed, cluster.tmp, "job", job.id)
        assert "pending" in out.stdout
        assert "too little gpu" in out.stdout
        await cluster.start_agent("eu", "gpu-node", "--gpu-id", "0")
        record = await job.wait(timeout=60)
        assert (record.state, record.node) == ("succeeded", "gpu-node")


async def test_workload_sees_exactly_the_claimed_gpus_and_cores(make_cluster) -> None:
    cluster = await make_cluster(agents=0)
    host_cores = sorted(os.sched_getaffinity(0))
    await cluster.start_agent(
        "eu",
        "pinned",
        "--cpu",
        str(len(host_cores)),
        "--gpu-id",
        "GPU-7",
        "--gpu-id",
        "GPU-9",
        "--gpu-id",
        "GPU-11",
    )
    claims: list[Allocation] = []
    nc = await cluster.raw("eu")

    async def record(msg: nats.aio.msg.Msg) -> None:
        claims.extend(decode(Ledger, msg.data).allocations)

    await nc.subscribe(subjects.ledger_changes("eu", "pinned"), cb=record)
    script = "import os; print(os.environ['CUDA_VISIBLE_DEVICES']); print(sorted(os.sched_getaffinity(0)))"
    try:
        async with Client.connect(connection=cluster.connection) as fed:
            job = await fed.submit([sys.executable, "-c", script], gpu=2, cpu=1)
            record_ = await job.wait(timeout=60)
            output = b"".join([c async for c in fed.logs(job.id)]).decode().splitlines()
    finally:
        await nc.drain()
    assert record_.state == "succeeded"
    claim = next(a for a in claims if a.job == job.id)
    assert claim.pinned
    assert len(claim.cores) == 1
    assert len(claim.gpus) == 2
    assert output[0] == ",".join(claim.gpus)
    assert output[1] == str(list(claim.cores))


async def test_cancel_kills_the_whole_process_tree(make_cluster, tmp_path) -> None:
    cluster = await make_cluster(agents=1)
    pids_file = tmp_path / "pids"
    script = (
        f"sleep 300 & echo $! >> {pids_file}; (sleep 300 & echo $! >> {pids_file}; wait) & "
        f"echo $$ >> {pids_file}; wait"
    )
    async with Client.connect(connection=cluster.connection) as fed:
        job = await fed.submit(["sh", "-c", script])
        await eventually(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3)
        pids = [int(p) for p in pids_file.read_text().split()]
        assert all(process_alive(p) for p in pids)
        await job.cancel()
        record = await job.wait(timeout=60)
        assert record.state == "cancelled"
        await eventually(lambda: not any(process_alive(p) for p in pids), timeout=15)


async def test_bad_submissions_are_refused_and_change_nothing(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        with pytest.raises(InvalidRequest, match="cpu"):
            await fed.submit(["true"], cpu=-1)
        with pytest.raises(InvalidRequest, match="limit"):
            await fed.submit(["echo", "x" * 8000] * 10)
        with pytest.raises(InvalidRequest):
            await fed.submit(["true"], job_id="has.dots")
        nc = await cluster.raw("eu")
        js = nc.jetstream()
        try:
            # straight over NATS: garbage, a wrong type, an id that disagrees with the subject
            await js.publish(subjects.submit("eu", "garbage"), b"{not json")
            await js.publish(
                subjects.submit("eu", "negative"),
                b'{"type":"submit","id":"negative","command":["true"],"cpu":-4}',
            )
            await js.publish(
                subjects.submit("eu", "other"), b'{"type":"submit","id":"mismatch","command":["true"]}'
            )
            with pytest.raises(nats.js.errors.APIError):  # the stream refuses oversized payloads outright
                await js.publish(subjects.submit("eu", "huge"), b"x" * (70 * 1024))
            # a newer client's extra field is accepted
            await js.publish(
                subjects.submit("eu", "newer"),
                b'{"type":"submit","id":"newer","command":["echo","ok"],"from_the_future":{"x":1}}',
                headers={"Nats-Msg-Id": "newer"},
            )
            quarantined: list[Quarantined] = []
            sub = await js.subscribe(subjects.quarantine("eu", "*"), ordered_consumer=True)
            while len(quarantined) < 3:
                msg = await sub.next_msg(timeout=30)
                quarantined.append(msgspec.json.decode(msg.data, type=Quarantined))
        finally:
            await nc.drain()
        assert sorted(q.subject for q in quarantined) == sorted(
            subjects.submit("eu", j) for j in ("garbage", "negative", "other")
        )
        assert all(q.reason for q in quarantined)
        listed = await fed.quarantined(region="eu")
        assert sorted(q.subject for q in listed) == sorted(q.subject for q in quarantined)
        out = await asyncio.to_thread(run_fed, cluster.tmp, "quarantine")
        assert out.returncode == 0, out.stderr
        assert "fed.eu.wl.submit.garbage" in out.stdout
        assert "job id in payload does not match subject" in out.stdout
        newest = sorted(listed, key=lambda q: q.sequence)[-2:]  # from the end of the stream
        assert [q.subject for q in await fed.quarantined(region="eu", limit=2)] == [q.subject for q in newest]
        out = await asyncio.to_thread(run_fed, cluster.tmp, "quarantine", "--limit", "1")
        assert out.stdout.count("fed.eu.wl.submit.") == 1
        assert "(the 1 newest; --limit 0 lists every one)" in out.stderr
        record = await fed.wait("newer", timeout=60)
        assert record.state == "succeeded"
        ids = {r.id for r in await fed.jobs()}
        assert ids == {"newer"}, "refused messages must not create jobs"


async def test_plain_nats_publish_of_documented_json_runs_a_job(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    nc = await cluster.raw("eu")
    try:
        payload = b'{"type":"submit","id":"raw-1","command":["echo","from a plain client"]}'
        await nc.jetstream().publish("fed.eu.wl.submit.raw-1", payload, headers={"Nats-Msg-Id": "raw-1"})
    finally:
        await nc.drain()
    async with Client.connect(connection=cluster.connection) as fed:
        record = await fed.wait("raw-1", timeout=60)
        assert record.state == "succeeded"
        assert b"".join([c async for c in fed.logs("raw-1")]) == b"from a plain client\n"


async def test_cancel_right_after_submit_never_leaves_the_process_running(make_cluster) -> None:
    import psutil

    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        jobs = []
        for i in range(20):
            job = await fed.submit(["sleep", "120"], job_id=f"quick-cancel-{i}")
            await eventually(lambda j=job: _known(fed, j.id))
            await job.cancel()
            jobs.append(job)
        records = [await job.wait(timeout=60) for job in jobs]
    assert {r.state for r in records} == {"cancelled"}

    def leftovers() -> list[int]:
        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("FED_JOB_ID", "").startswith("quick-cancel-"):
                    found.append(proc.pid)
            except psutil.Error:
                continue
        return found

    await eventually(lambda: not leftovers(), timeout=20)


async def _known(fed: Client, job: str) -> bool:
    try:
        await fed.job(job)
    except Exception:
        return False
    return True
