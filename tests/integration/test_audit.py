"""The audit trail against real servers: a mixed workload checks clean on every region and on the
hub, a forged overcommit fails the check by name, a copy with a message missing shows the gap of
the right kind, and a region cut off from the hub replays its own trail (issue #6)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from federation import subjects
from federation.audit import Checker, parse
from federation.bus import Bus
from federation.client import Client
from federation.core.events import Submitted, Tick
from federation.delivery import Delivery
from federation.errors import NotFound
from federation.journal import Divergence, Inputs
from federation.schemas import Allocation, Capacity, Ledger, Submit, encode
from tests.conftest import GiB, eventually, run_fed

pytestmark = pytest.mark.timeout(240)


async def finished(fed: Client, job: str, region: str) -> bool:
    try:
        return (await fed.where(job, region=region)).terminal
    except NotFound:
        return False


async def test_a_mixed_workload_checks_clean_on_every_region_and_on_the_hub(make_cluster) -> None:
    cluster = await make_cluster(
        regions=("aa", "bb"), agents=1, capacity={"cpu": 2, "memory": 8 * GiB, "gpu": 0}
    )
    gpu = await cluster.start_agent("bb", "bb-gpu", "--gpu-id", "GPU-1")
    doomed = await cluster.start_agent("aa", "aa-doomed")
    async with Client.connect(connection=cluster.connection) as fed:
        jobs = {}
        for i in range(6):
            jobs[f"ok-{i}"] = (
                await fed.submit(["true"], region="aa" if i % 2 else "bb", job_id=f"ok-{i}")
            ).region
        jobs["fails"] = (await fed.submit(["sh", "-c", "exit 2"], region="aa", job_id="fails")).region
        slow = await fed.submit(["sleep", "60"], region="aa", job_id="cancelled")
        jobs["cancelled"] = slow.region

        async def running(job: str, region: str) -> bool:
            try:
                return (await fed.job(job, region=region)).state == "running"
            except NotFound:
                return False

        await eventually(lambda: running("cancelled", "aa"), timeout=30)
        await slow.cancel()
        # preemption: an urgent job pushes a low one off a full node
        for i in range(2):
            await fed.submit(
                ["sleep", "60"],
                region="bb",
                cpu=2,
                priority="low",
                job_id=f"low-{i}",
                require={"node": "bb-n1"},
            )
            jobs[f"low-{i}"] = "bb"
        await eventually(lambda: running("low-0", "bb"), timeout=30)
        await fed.submit(
            ["true"], region="bb", cpu=2, priority="urgent", job_id="urgent", require={"node": "bb-n1"}
        )
        jobs["urgent"] = "bb"
        # a hand-off: no GPU in aa
        await eventually(lambda: _gpu_visible(fed), timeout=30)
        jobs["gpu"] = (await fed.submit(["true"], region="aa", gpu=1, job_id="gpu")).region
        # a node loss
        await fed.submit(
            ["sleep", "60"], region="aa", job_id="lost", nodes=["aa-doomed"], require={"node": "aa-doomed"}
        )
        jobs["lost"] = "aa"
        await eventually(lambda: running("lost", "aa"), timeout=30)
        assert doomed.process is not None
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
        for job in ("low-0", "low-1"):
            await fed.cancel(job, region="bb")
        for job, region in jobs.items():
            await eventually(lambda job=job, region=region: finished(fed, job, region), timeout=60)
        assert (await fed.where("gpu", region="aa")).region == "bb"
        assert (await fed.job("lost", region="aa")).state == "lost"
        preempted = await fed.job("low-0", region="bb")
        assert any(step.state == "preempted" for step in preempted.history), preempted.history
        assert gpu.alive()

        # bad input: quarantined by the scheduler, evidence in the audit, not a violation
        bus = await fed.bus("aa")
        await bus.publish(subjects.submit("aa", "garbled"), b"{not json")
        await bus.publish(subjects.submit("aa", "mismatch"), encode(Submit(id="other", command=["true"])))

        async def both_refused() -> bool:
            return len(await fed.quarantined(region="aa")) >= 2

        await eventually(both_refused, timeout=30)
        for region in ("aa", "bb"):
            report = await fed.audit_check(region=region)
            assert report.ok, (region, report)
            assert report.events > 20
        assert (await fed.audit_check(region="aa")).refused == 2

        # the hub's copy catches up with every region's trail
        async def hub_clean() -> bool:
            report = await fed.audit_check(everywhere=True)
            return report.ok and report.events > 40

        await eventually(hub_clean, timeout=30, interval=0.5)
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "check", "--all")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "ok: every invariant holds" in shown.stdout
        # the core, re-run on what it was fed, decides the same, in every region and from the hub
        for region in ("aa", "bb"):
            verified = await fed.audit_verify(region=region)
            assert verified.ok, (region, verified)
            assert verified.steps > 20
            assert verified.lives == 1

        async def hub_verified() -> bool:
            return (await fed.audit_verify(everywhere=True)).ok

        await eventually(hub_verified, timeout=30, interval=0.5)
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "verify", "--all")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "ok: the core makes the same decisions" in shown.stdout
        timeline = await asyncio.to_thread(
            run_fed, cluster.tmp, "audit", "replay", "--region", "aa", "--job", "lost"
        )
        assert " lost " in timeline.stdout, timeline.stdout


async def _gpu_visible(fed: Client) -> bool:
    view = (await fed.views("aa")).get("bb")
    return view is not None and view.gpu_free >= 1


async def test_a_forged_overcommit_fails_the_check_and_is_named(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa",), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        await (await fed.submit(["true"], region="aa", job_id="honest")).wait(timeout=30)
        assert (await fed.audit_check(region="aa")).ok
        # --since: the server starts the replay at the first event stored then
        since = time.time()
        await (await fed.submit(["true"], region="aa", job_id="later")).wait(timeout=30)
        recent = [e async for e in fed.audit(region="aa", since=since)]
        submitted = {e.job for e in recent if e.kind == "submit"}
        assert submitted == {"later"}
        assert all(e.at >= since for e in recent)
        bus = await fed.bus("aa")
        stored = [
            d
            async for d in bus.follow(
                subjects.audit_stream("aa"), ">", start_time=since, until_caught_up=True
            )
        ]
        assert stored
        assert min(d.timestamp for d in stored) >= since  # the server skipped the earlier ones
        forged = Ledger(
            node="forged-n9",
            allocations=tuple(Allocation(job=f"f{i}", attempt=1, cpu=3, cores=(i,)) for i in range(2)),
            capacity=Capacity(cpu=4, memory=GiB, gpu=0),
        )
        await bus.cas(subjects.ledger_bucket("aa"), "forged-n9", encode(forged), 0)

        async def failing() -> list[str]:
            report = await fed.audit_check(region="aa")
            return [v.message for v in report.violations if v.invariant == "I1"]

        messages = await eventually(failing, timeout=20)
        assert "forged-n9" in messages[0]
        assert "cpu=6" in messages[0]
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "check", "--region", "aa")
        assert shown.returncode == 1
        assert "FAIL I1: forged-n9" in shown.stdout

        # a forged journal: the recorded decision is not what the core decides
        assert (await fed.audit_verify(region="aa")).ok
        spec = Submit(id="ghost", command=["true"])
        forged_inputs = Inputs(
            region="aa",
            life="forger#1",
            step=0,
            epoch=1,
            fresh=True,
            events=[Submitted(spec=spec, at=1.0), Tick(now=2.0)],
            digests=["", "0123456789abcdef"],
        )
        await bus.publish(subjects.inputs("aa"), encode(forged_inputs))

        async def diverged() -> list[Divergence]:
            return (await fed.audit_verify(region="aa")).divergences

        (divergence,) = await eventually(diverged, timeout=20)
        assert divergence.life == "aa/forger#1"
        assert divergence.step == 1
        assert divergence.recorded == "0123456789abcdef"
        assert '"type":"Tick"' in divergence.event
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "verify", "--region", "aa")
        assert shown.returncode == 1
        assert "FAIL aa/forger#1 step 1" in shown.stdout


async def test_a_copy_missing_a_message_shows_the_gap_of_the_right_kind(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa",), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        for i in range(3):
            await (await fed.submit(["true"], region="aa", job_id=f"j{i}")).wait(timeout=30)
        bus = await fed.bus("aa")
        original = [d async for d in bus.follow(subjects.audit_stream("aa"), ">", until_caught_up=True)]
        # the copy: every message but one in the middle of the workloads origin, and none after
        # the last status report (a lost postfix of the status origin)
        workloads = [d for d in original if _origin(d) == subjects.workloads_stream("aa")]
        dropped = workloads[1]
        status = [d for d in original if _origin(d) == subjects.status_stream("aa")]
        cut_after = status[-2].sequence
        kept = [
            d
            for d in original
            if d is not dropped and (_origin(d) != subjects.status_stream("aa") or d.sequence <= cut_after)
        ]
        await bus.js.add_stream(name="COPY", subjects=["copy.>"])
        for delivery in kept:
            await bus.js.publish("copy." + delivery.subject, delivery.data, headers=_kept_headers(delivery))
        checker = Checker()
        async for delivery in _copy(bus):
            checker.feed(*parse(delivery))
        last = {subjects.status_stream("aa"): _seq(status[-1])}
        report = checker.finish(origins_last=last)
        gaps = {(g.origin, g.kind, g.first, g.last) for g in report.gaps}
        middle = _seq(dropped)
        assert (subjects.workloads_stream("aa"), "middle", middle, middle) in gaps
        assert (subjects.status_stream("aa"), "postfix", _seq(status[-1]), _seq(status[-1])) in gaps
        assert len(gaps) == 2
        assert not report.ok


def _origin(delivery: Delivery) -> str:
    return delivery.headers.get("Nats-Stream-Source", "").split(" ")[0]


def _seq(delivery: Delivery) -> int:
    return int(delivery.headers["Nats-Stream-Source"].split(" ")[1])


def _kept_headers(delivery: Delivery) -> dict[str, str]:
    # the origin as a header of our own: the server treats Nats-* headers as its own
    return {"X-Source": delivery.headers.get("Nats-Stream-Source", "-")}


async def _copy(bus: Bus) -> AsyncIterator[Delivery]:
    async for delivery in bus.follow("COPY", "copy.>", until_caught_up=True):
        source = delivery.headers["X-Source"]
        headers = {"Nats-Stream-Source": source} if source != "-" else {}
        yield dataclasses.replace(delivery, subject=delivery.subject[5:], headers=headers)


async def test_a_region_cut_off_from_the_hub_replays_and_checks_its_own_trail(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1, chaos=True)
    async with Client.connect(connection=cluster.connection) as fed:
        cluster.federation.links["bb"].cut()
        await (await fed.submit(["true"], region="bb", job_id="alone")).wait(timeout=30)
        events = [e async for e in fed.audit(region="bb", job="alone")]
        assert [e.state for e in events if e.kind == "record"] == ["placed", "running", "succeeded"]
        report = await fed.audit_check(region="bb")
        assert report.ok, report
        shown = await asyncio.to_thread(
            run_fed, cluster.tmp, "audit", "replay", "--region", "bb", "--format", "jsonl"
        )
        assert shown.returncode == 0
        lines = [msgspec.json.decode(line) for line in shown.stdout.splitlines()]
        assert any(line["job"] == "alone" and line["state"] == "succeeded" for line in lines)
