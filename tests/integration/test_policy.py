"""Scheduling policy against real schedulers and agents: preemption, reload, explain."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from federation.client import Client
from tests.conftest import eventually, run_fed

pytestmark = pytest.mark.timeout(180)


async def test_urgent_job_preempts_the_youngest_low_job_and_the_victim_runs_again_later(make_cluster) -> None:
    cluster = await make_cluster(agents=0)
    await cluster.start_agent("eu", "only", "--cpu", "2", "--memory", "2GiB")
    async with Client.connect(connection=cluster.connection) as fed:
        old = await fed.submit(["sleep", "3"], priority="low", job_id="low-old")
        await eventually(lambda: _state(fed, "low-old", "running"))
        young = await fed.submit(["sleep", "3"], priority="low", job_id="low-young")
        await eventually(lambda: _state(fed, "low-young", "running"))
        submitted = time.time()
        urgent = await fed.submit(["sleep", "1"], priority="urgent", job_id="urgent")
        running = await eventually(lambda: _state(fed, "urgent", "running"), timeout=10)
        started = next(t.at for t in running.history if t.state == "running")
        assert started - submitted < 2.0, f"urgent job started {started - submitted:.2f}s after submission"
        explanation = await urgent.explain()
        assert explanation.decision is not None
        assert explanation.decision.victims == ("low-young",)
        finals = [await job.wait(timeout=60) for job in (old, young, urgent)]
    assert [r.state for r in finals] == ["succeeded", "succeeded", "succeeded"]
    old_record, young_record, _ = finals
    assert old_record.attempt == 1, "the older low job must not be touched"
    assert young_record.attempt == 2
    states = [t.state for t in young_record.history]
    assert states[:5] == ["pending", "placed", "running", "preempted", "pending"]
    assert any("preempted on only by urgent" in t.reason for t in young_record.history)
    assert young_record.history[-1].at > finals[2].history[-1].at, "the victim finished after the urgent job"


async def _state(fed: Client, job: str, state: str):  # type: ignore[no-untyped-def]
    try:
        record = await fed.job(job)
    except Exception:
        return None
    return record if record.state == state else None


async def test_policy_reload_takes_effect_and_a_bad_file_is_refused(make_cluster) -> None:
    cluster = await make_cluster(agents=2, capacity={"cpu": 4, "memory": 4 * 1024**3, "gpu": 0})
    config = cluster.tmp / "config" / "scheduler-eu.toml"
    async with Client.connect(connection=cluster.connection) as fed:
        first = [await fed.submit(["sleep", "20"], job_id=f"bin-{i}") for i in range(2)]
        records = [await eventually(lambda j=j: _state(fed, j.id, "running")) for j in first]
        assert records[0].node == records[1].node, "binpack puts both on one node"
        packed = records[0].node
        # a typo is refused and the old policy stays
        config.write_text(config.read_text().replace('scoring = "binpack"', 'scoring = "spreed"'))
        log = cluster.tmp / "logs" / "scheduler-eu.log"
        await eventually(lambda: "config refused" in log.read_text(), timeout=15)
        config.write_text(config.read_text().replace('scoring = "spreed"', 'scoring = "spread"'))
        await eventually(lambda: "policy reloaded" in log.read_text(), timeout=15)
        spread = await fed.submit(["sleep", "20"], job_id="spread-1")
        record = await eventually(lambda: _state(fed, spread.id, "running"))
        assert record.node != packed, "spread picks the emptier node"
        for job in [*first, spread]:
            await job.cancel()


async def test_explain_names_the_blocking_reason_and_why_a_node_won(make_cluster) -> None:
    cluster = await make_cluster(agents=0)
    await cluster.start_agent("eu", "small", "--cpu", "1", "--label", "city=AMS")
    await cluster.start_agent("eu", "big", "--cpu", "2", "--label", "city=BER")
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: _offers(fed, 2))
        stuck = await fed.submit(["true"], cpu=1, require={"city": "PAR"})
        explanation = await eventually(lambda: _explained(fed, stuck.id))
        assert explanation.decision.filtered == {"label mismatch": 2}
        out = await asyncio.to_thread(_fed, cluster.tmp, "explain", stuck.id)
        assert "label mismatch" in out
        assert "filtered" in out
        placed = await fed.submit(["sleep", "5"], cpu=1, require={"city": "AMS,BER"})
        record = await eventually(lambda: _state(fed, placed.id, "running"))
        assert record.node == "small", "binpack: the node left with the least room wins"
        decision = (await placed.explain()).decision
        assert decision is not None
        assert decision.chosen is not None
        assert decision.chosen.node == "small"
        assert [c.node for c in decision.runners_up] == ["big"]
        out = await asyncio.to_thread(_fed, cluster.tmp, "explain", placed.id)
        assert "chosen    small" in out
        assert "runner-up big" in out
        await placed.cancel()


async def _offers(fed: Client, count: int) -> bool:
    status = await fed.region_status("eu")
    return len([n for n in status.nodes if n.live]) == count


async def _explained(fed: Client, job: str):  # type: ignore[no-untyped-def]
    try:
        explanation = await fed.explain(job)
    except Exception:
        return None
    return explanation if explanation.decision is not None else None


async def test_a_flooding_tenant_cannot_starve_another_with_an_equal_quota(make_cluster) -> None:
    cluster = await make_cluster(agents=0)
    await cluster.start_agent("eu", "shared", "--cpu", "4", "--memory", "4GiB")
    config = cluster.tmp / "config" / "scheduler-eu.toml"
    log = cluster.tmp / "logs" / "scheduler-eu.log"
    await eventually(lambda: "scheduler started" in log.read_text(), timeout=15)
    config.write_text(
        config.read_text()
        + '\n[policy.tenants.a]\ncpu = 2\ncohort = "lab"\n\n[policy.tenants.b]\ncpu = 2\ncohort = "lab"\n'
    )
    await eventually(lambda: "policy reloaded" in log.read_text(), timeout=15)
    async with Client.connect(connection=cluster.connection) as fed:
        flood = [await fed.submit(["sleep", "4"], tenant="a", job_id=f"a-{i}") for i in range(10)]

        async def a_running() -> int:
            return len([r for r in await fed.jobs(state="running") if r.spec.tenant == "a"])

        assert await eventually(lambda: _equals(a_running(), 4))  # its 2 plus the 2 it borrows from b
        submitted = time.time()
        mine = [await fed.submit(["sleep", "1"], tenant="b", job_id=f"b-{i}") for i in range(2)]
        records = [await eventually(lambda j=j: _state(fed, j.id, "running"), timeout=10) for j in mine]
        started = max(next(t.at for t in r.history if t.state == "running") for r in records)
        assert started - submitted < 3.0, f"tenant b waited {started - submitted:.1f}s for its own quota"
        reclaimed = [
            r for r in await fed.jobs() if any("quota reclaimed by tenant b" in t.reason for t in r.history)
        ]
        assert len(reclaimed) == 2
        assert {r.spec.tenant for r in reclaimed} == {"a"}
        for job in mine:
            assert (await job.wait(timeout=60)).state == "succeeded"
        for job in flood:
            await job.cancel()


async def _equals(value, expected: int) -> bool:  # type: ignore[no-untyped-def]
    return (await value) == expected


async def test_gang_of_three_with_room_for_two_waits_then_starts_together(make_cluster, tmp_path) -> None:
    cluster = await make_cluster(agents=0)
    for name in ("g1", "g2"):
        await cluster.start_agent("eu", name, "--cpu", "1", "--memory", "1GiB")
    marks = tmp_path / "marks"
    script = f"echo $FED_GANG_MEMBER $(date +%s.%N) >> {marks}; sleep 1"
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: _offers(fed, 2))
        job = await fed.submit(["sh", "-c", script], cpu=1, gang=3)
        explained = await eventually(lambda: _explained(fed, job.id))
        assert "gang of 3 starts all together; room for 2 now" in explained.record.reason
        assert not marks.exists(), "a member started although the gang did not fit"
        await cluster.start_agent("eu", "g3", "--cpu", "1", "--memory", "1GiB")
        record = await job.wait(timeout=60)
    assert record.state == "succeeded"
    assert sorted(record.members) == ["g1", "g2", "g3"]
    lines = [line.split() for line in marks.read_text().splitlines()]
    assert sorted(member for member, _ in lines) == ["0", "1", "2"]
    starts = [float(t) for _, t in lines]
    assert max(starts) - min(starts) < 1.0, f"members started {max(starts) - min(starts):.2f}s apart"


async def test_custom_resource_routes_the_job_to_the_node_that_offers_it(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    await cluster.start_agent("eu", "licensed", "--resource", "licence=1")
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: _offers(fed, 2))
        first = await fed.submit(["sleep", "2"], custom={"licence": 1})
        second = await fed.submit(["true"], custom={"licence": 1})
        record = await eventually(lambda: _state(fed, first.id, "running"))
        assert record.node == "licensed"
        waiting = await eventually(lambda: _explained(fed, second.id))
        assert "waiting for capacity" in waiting.record.reason  # the only licence is in use
        assert (await second.wait(timeout=60)).node == "licensed"


def _fed(state_dir: Path, *args: str) -> str:
    out = run_fed(state_dir, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout
