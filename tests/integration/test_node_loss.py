"""Node loss: an agent's link blackholed through a real TCP proxy, real servers and processes."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from federation.client import Client
from federation.errors import NotFound
from federation.schemas import JobRecord
from tests.conftest import eventually
from tests.harness import attempts_running, proxied

pytestmark = pytest.mark.timeout(180)


def agent_config(tmp_path: Path, heartbeat: float = 1.0) -> str:
    """The flaky node's config: a heartbeat every ``heartbeat`` s, so the TTL (the grace) is 3 beats."""
    path = tmp_path / "flaky.toml"
    path.write_text(f"heartbeat_interval = {heartbeat}\nkill_grace = 1.0\ncpu = 4\nmemory = 8589934592\n")
    return str(path)


async def test_a_link_blackholed_shorter_than_the_grace_moves_nothing(make_cluster, tmp_path) -> None:
    cluster = await make_cluster(agents=1)
    async with (
        proxied(cluster.url("eu"), "flaky") as link,
        Client.connect(connection=cluster.connection) as fed,
    ):
        await cluster.start_agent(
            "eu", "flaky", "--config", agent_config(tmp_path, heartbeat=2.0), url=link.url
        )
        await eventually(lambda: _offering(fed, "flaky"), timeout=30)
        job = await fed.submit(["sleep", "600"], nodes=["flaky"], on_node_lost="replace", job_id="steady")
        await eventually(lambda: _state(fed, "steady", "running"), timeout=30)
        link.blackhole()
        await asyncio.sleep(2.0)  # sleep-ok: the fault lasts a third of the 6 s heartbeat TTL, on purpose
        link.heal()
        # the agent reconnects and beats again; give the scheduler more than a TTL to (not) react
        await asyncio.sleep(7.0)  # sleep-ok: asserting that nothing happens needs a waiting window
        record = await job.record()
        assert (record.state, record.node, record.attempt) == ("running", "flaky", 1), record.history
        assert attempts_running("steady") == {1}
        await fed.cancel("steady")


async def test_a_lost_node_replaces_waits_and_fails_per_job_and_stops_stale_copies(
    make_cluster, tmp_path
) -> None:
    cluster = await make_cluster(agents=1)
    async with (
        proxied(cluster.url("eu"), "flaky") as link,
        Client.connect(connection=cluster.connection) as fed,
    ):
        await cluster.start_agent("eu", "flaky", "--config", agent_config(tmp_path), url=link.url)
        await eventually(lambda: _offering(fed, "flaky"), timeout=30)
        policies = {"rep": "replace", "wai": "wait=10m", "fai": "fail"}
        for job, policy in policies.items():
            await fed.submit(["sleep", "600"], nodes=["flaky"], on_node_lost=policy, job_id=job)
        for job in policies:
            await eventually(lambda job=job: _on(fed, job, "running", "flaky"), timeout=30)

        link.blackhole()
        # replace: a second attempt runs on the healthy node, once
        await eventually(lambda: _on(fed, "rep", "running", "eu-n1"), timeout=30)
        rep = await fed.job("rep")
        assert rep.attempt == 2
        assert [t.reason for t in rep.history][3] == "node flaky lost (no heartbeat); replaced: retry 2 of 3"
        # fail: the job ends lost, never to run again
        fai = await eventually(lambda: _state(fed, "fai", "lost"), timeout=10)
        assert "on_node_lost=fail" in fai.reason
        # wait: the allocation stays, and the reason says until when
        wai = await fed.job("wai")
        assert (wai.state, wai.node, wai.attempt) == ("running", "flaky", 1)
        assert "keeping the allocation until" in wai.reason
        # behind the blackhole the old copies still run: the agent cannot hear the scheduler
        assert attempts_running("rep") == {1, 2}
        (region,) = await fed.status()
        assert {n.node: n.heartbeat for n in region.nodes}["flaky"] == "lost"

        link.heal()
        # the returning node learns from its ledger that those attempts are gone and stops them
        await eventually(lambda: attempts_running("rep") == {2} and not attempts_running("fai"), timeout=30)
        assert attempts_running("wai") == {1}
        # and its reports of the stale attempts change nothing
        await asyncio.sleep(
            1.0
        )  # sleep-ok: lets the stale reports arrive before checking they changed nothing
        rep, fai, wai = [await fed.job(j) for j in ("rep", "fai", "wai")]
        assert (rep.state, rep.node, rep.attempt) == ("running", "eu-n1", 2)
        assert [t.state for t in rep.history].count("running") == 2
        assert fai.state == "lost"
        assert (wai.state, wai.node, wai.attempt) == ("running", "flaky", 1)
        for job in policies:
            await fed.cancel(job)


async def test_an_attempt_lost_to_an_agent_restart_goes_back_to_pending_as_the_next_attempt(
    make_cluster,
) -> None:
    """Issue 16, defect 3: the stored sequence is ``running, 1 -> pending, 2 -> placed, 2``, never
    back to ``pending`` within attempt 1; the reason reads in order; the audit agrees."""
    cluster = await make_cluster(agents=0)
    agent = await cluster.start_agent("eu", "solo", "--cpu", "2")
    job = "lost-then-next-attempt"  # unique on the machine: attempts_running looks at every process
    async with Client.connect(connection=cluster.connection) as fed:
        await fed.submit(["sleep", "600"], job_id=job, on_node_lost="replace")
        await eventually(lambda: _attempt(fed, job, "running", 1), timeout=30)
        assert agent.process is not None
        agent.process.kill()  # SIGKILL: the new agent finds the attempt in its journal and reports it lost
        agent.process.wait(timeout=10)
        await cluster.start_agent("eu", "solo", "--cpu", "2")
        record = await eventually(lambda: _attempt(fed, job, "running", 2), timeout=60)
        assert attempts_running(job) == {2}
        requeued = next(step for step in record.history if step.state == "pending" and step.reason)
        # the restarted agent reports the attempt lost (or, on a slow start, its heartbeat expired)
        assert requeued.reason in (
            "attempt 1 lost on solo (the agent restarted while this attempt ran; not re-run); "
            "replaced: retry 2 of 3",
            "node solo lost (no heartbeat); replaced: retry 2 of 3",
        )

        async def stored() -> list[tuple[str, int]]:
            """(state, attempt) of each write of the job's record that changed them (audit trail)."""
            steps: list[tuple[str, int]] = []
            async for event in fed.audit(region="eu", job=job):
                if event.kind == "record" and (not steps or steps[-1] != (event.state, event.attempt)):
                    steps.append((event.state, event.attempt))
            return steps if ("running", 2) in steps else []

        steps = await eventually(stored, timeout=30)
        assert ("pending", 1) not in steps, steps  # the bug: back to pending within attempt 1
        first = steps.index(("running", 1))
        assert steps[:first] in ([("placed", 1)], [("pending", 0), ("placed", 1)]), steps
        assert steps[first:] == [("running", 1), ("pending", 2), ("placed", 2), ("running", 2)], steps
        report = await fed.audit_check(region="eu")
        assert report.ok, report
        verified = await fed.audit_verify(region="eu")
        assert verified.ok, verified
        await fed.cancel(job)
        await eventually(lambda: not attempts_running(job), timeout=30)


async def _attempt(fed: Client, job: str, state: str, attempt: int) -> JobRecord | None:
    record = await _state(fed, job, state)
    return record if record is not None and record.attempt == attempt else None


async def _offering(fed: Client, node: str) -> bool:
    (region,) = await fed.status()
    return any(n.node == node and n.live for n in region.nodes)


async def _state(fed: Client, job: str, state: str) -> JobRecord | None:
    with contextlib.suppress(NotFound):  # the record is written moments after the submission
        record = await fed.job(job)
        return record if record.state == state else None
    return None


async def _on(fed: Client, job: str, state: str, node: str) -> bool:
    record = await _state(fed, job, state)
    return record is not None and record.node == node
