"""Spillover between regions through real leafnode links, real schedulers and real agents (issue #4)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from federation.client import Client
from federation.errors import NotFound
from federation.schemas import JobRecord
from tests.conftest import GiB, eventually, run_fed

pytestmark = pytest.mark.timeout(180)


async def fresh_view(fed: Client, region: str, peer: str, **want: int) -> bool:
    """Whether ``region`` sees ``peer`` with a recent summary whose fields are at least ``want``."""
    view = (await fed.views(region)).get(peer)
    if view is None or time.time() - view.at > 4.0:
        return False
    return all(getattr(view, name) >= amount for name, amount in want.items())


async def record(fed: Client, job: str, region: str) -> JobRecord | None:
    """The job's record in ``region``, or None while there is none."""
    try:
        return await fed.job(job, region=region)
    except NotFound:
        return None


async def test_a_gpu_job_from_a_region_without_gpus_runs_on_another_regions_gpu(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    await cluster.start_agent("bb", "bb-gpu", "--gpu-id", "GPU-7", "--label", "city=AMS")
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: fresh_view(fed, "aa", "bb", gpu_free=1), timeout=30)
        job = await fed.submit(
            ["sh", "-c", 'echo "gpu $CUDA_VISIBLE_DEVICES"'], region="aa", gpu=1, job_id="gpu-job"
        )
        record = await job.wait(timeout=60)  # follows the job into the region that runs it
        assert record.state == "succeeded", cluster.logs()
        assert record.region == "bb"
        assert record.node == "bb-gpu"
        assert record.spec.origin == "aa"
        home = await fed.job("gpu-job", region="aa")
        assert home.state == "forwarded"
        assert home.forwarded_to == "bb"
        assert home.handoffs == {"bb": "accepted"}
        # logs, status and explain from the submitting region
        output = b"".join([chunk async for chunk in fed.logs("gpu-job", region="aa")])
        assert output == b"gpu GPU-7\n"
        explanation = await fed.explain("gpu-job", region="aa")
        assert explanation.record.region == "bb"
        assert explanation.via is not None
        assert explanation.via.reason.startswith("forwarded to bb")
        # and from the region that runs it
        assert (await fed.job("gpu-job", region="bb")).state == "succeeded"
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "explain", "gpu-job", "--region", "aa")
        assert shown.returncode == 0, shown.stderr
        assert "home      aa: forwarded to bb" in shown.stdout
        assert "hand-offs bb=accepted" in shown.stdout
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "job", "gpu-job")
        assert "(handed over by aa)" in shown.stdout

        # city targeting: routed to the region whose nodes carry the label
        await eventually(lambda: fresh_view(fed, "aa", "bb", gpu_free=1), timeout=30)
        routed = await fed.submit(["true"], region="aa", require={"city": "AMS"}, job_id="to-ams")
        done = await routed.wait(timeout=60)
        assert done.state == "succeeded"
        assert done.node == "bb-gpu"


async def test_a_job_that_fits_nowhere_stays_pending_at_home_with_its_reason(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: fresh_view(fed, "aa", "bb", live=1), timeout=30)
        await fed.submit(["true"], region="aa", gpu=1, job_id="nowhere")

        async def explained() -> str:
            found = await record(fed, "nowhere", "aa")
            return found.reason if found and found.state == "pending" and "gpu" in found.reason else ""

        await eventually(explained, timeout=20)
        assert (await fed.job("nowhere", region="aa")).handoffs == {}


async def test_a_dropped_hand_off_answer_never_runs_an_at_most_once_job_twice(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(
        regions=("aa", "bb"), agents=1, chaos=True, capacity={"cpu": 1, "memory": 8 * GiB, "gpu": 0}
    )
    runs = tmp_path / "runs"
    async with Client.connect(connection=cluster.connection) as fed:
        blocker = await fed.submit(["sleep", "300"], region="aa", job_id="blocker")

        async def running(job: str, region: str) -> bool:
            found = await record(fed, job, region)
            return found is not None and found.state == "running"

        await eventually(lambda: running("blocker", "aa"), timeout=30)
        await eventually(lambda: fresh_view(fed, "aa", "bb", cpu_free=1), timeout=30)
        # requests reach bb, but everything bb sends towards the hub is lost: its answers too
        cluster.federation.links["bb"].mute()
        await fed.submit(["sh", "-c", f"echo run >> {runs}"], region="aa", job_id="once")

        async def held() -> bool:
            found = await record(fed, "once", "aa")
            return found is not None and found.reason.startswith("held:")

        await eventually(held, timeout=30)
        # room at home now: a broken hold would run it here while bb runs it too
        await blocker.cancel()

        async def ran_in_bb() -> bool:
            found = await record(fed, "once", "bb")
            return found is not None and found.state == "succeeded"

        await eventually(ran_in_bb, timeout=30)
        assert (await fed.job("once", region="aa")).state == "pending"  # still held, not placed
        cluster.federation.links["bb"].heal()
        done = await fed.wait("once", region="aa", timeout=60)
        assert done.state == "succeeded"
        assert done.region == "bb"
        home = await fed.job("once", region="aa")
        assert home.state == "forwarded"
        assert home.node == ""
        assert home.attempt == 0  # never placed at home
        assert runs.read_text() == "run\n"


async def test_an_at_least_once_job_runs_elsewhere_after_a_lost_answer_and_the_duplicate_is_recorded(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(
        regions=("aa", "bb"), agents=1, chaos=True, capacity={"cpu": 1, "memory": 8 * GiB, "gpu": 0}
    )
    runs = tmp_path / "runs"
    async with Client.connect(connection=cluster.connection) as fed:
        blocker = await fed.submit(["sleep", "300"], region="aa", job_id="blocker")

        async def state(job: str, region: str) -> str:
            found = await record(fed, job, region)
            return found.state if found is not None else ""

        await eventually(lambda: state("blocker", "aa"), timeout=30)
        await eventually(lambda: fresh_view(fed, "aa", "bb", cpu_free=1), timeout=30)
        cluster.federation.links["bb"].mute()
        await fed.submit(
            ["sh", "-c", f"echo run >> {runs}"], region="aa", job_id="twice", semantics="at_least_once"
        )

        async def unknown() -> bool:
            found = await record(fed, "twice", "aa")
            return found is not None and found.handoffs.get("bb") == "unknown"

        await eventually(unknown, timeout=30)
        await blocker.cancel()  # room at home: at least once, so it may run here now
        assert (await fed.wait("twice", region="aa", timeout=60)).state == "succeeded"
        assert (await fed.job("twice", region="aa")).node != ""
        await eventually(lambda: state("twice", "bb"), timeout=30)  # bb had stored it: it runs there too
        cluster.federation.links["bb"].heal()

        async def recorded() -> tuple[str, ...]:
            found = await record(fed, "twice", "aa")
            return found.duplicates if found is not None else ()

        assert await eventually(recorded, timeout=60) == ("bb",)
        home = await fed.job("twice", region="aa")
        assert home.state == "succeeded"
        assert home.handoffs == {"bb": "accepted"}
        assert any(t.reason.startswith("duplicate: bb accepted it too") for t in home.history)
        await eventually(lambda: runs.exists() and runs.read_text() == "run\nrun\n", timeout=30)
