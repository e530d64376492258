"""Scheduler high availability: a leased leader, a standby, fencing, with real processes and signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from federation import subjects
from federation.bus import Bus
from federation.client import Client
from federation.schemas import Ledger, decode
from tests.conftest import eventually, process_alive, run_fed
from tests.harness import pause, resume

pytestmark = pytest.mark.timeout(240)

LEASE_TTL = 5.0  # the default; the standby must lead within LEASE_TTL + 2 s of the leader's death


async def _all_succeeded(fed: Client, total: int) -> bool:
    records = await fed.jobs()
    return len(records) == total and all(r.state == "succeeded" for r in records)


def _runs(runs: Path) -> dict[str, list[str]]:
    return {path.name: path.read_text().split() for path in runs.iterdir()}


@pytest.mark.parametrize("point", ["before-claim", "after-claim", "after-record"])
async def test_leader_killed_at_each_step_of_a_placement_fails_over_losing_nothing(
    make_cluster, tmp_path: Path, monkeypatch, point: str
) -> None:
    fired = tmp_path / "failpoint-fired"
    monkeypatch.setenv("FED_FAILPOINT", f"{point}:{fired}")
    runs = tmp_path / "runs"
    runs.mkdir()
    # while the marker exists the failpoint is disarmed: removing it arms it for the first comer
    fired.touch()
    cluster = await make_cluster(agents=2, schedulers=2)
    first, epoch = await cluster.leader("eu")
    fired.unlink()
    total = 20
    async with Client.connect(connection=cluster.connection) as fed:
        for i in range(total):
            await fed.submit(["sh", "-c", f"echo $FED_ATTEMPT >> {runs}/$FED_JOB_ID"], job_id=f"f-{i}")
        await eventually(lambda: fired.exists() and not process_alive(first.pid), timeout=30)
        died = time.monotonic()
        await cluster.leader("eu", after=epoch)
        took = time.monotonic() - died
        assert took <= LEASE_TTL + 2.0, f"no scheduler led {took:.1f}s after the leader died"
        await eventually(lambda: _all_succeeded(fed, total), timeout=90, interval=0.5)
    ran = _runs(runs)
    assert sorted(ran) == sorted(f"f-{i}" for i in range(total)), "a job was lost"
    assert all(attempts == ["1"] for attempts in ran.values()), {j: a for j, a in ran.items() if a != ["1"]}


async def test_a_paused_old_leader_writes_nothing_after_the_standby_takes_over(
    make_cluster, tmp_path
) -> None:
    cluster = await make_cluster(agents=1, schedulers=2)
    old, old_epoch = await cluster.leader("eu")
    bus = await Bus.connect(cluster.url("eu"), "test-ledger-tap", retry_forever=False)
    writes: list[int] = []

    async def on_ledger(delivery) -> None:  # every stored ledger write, republished by the server
        writes.append(decode(Ledger, delivery.data).epoch)

    await bus.subscribe(subjects.ledger_changes("eu", "*"), on_ledger)
    async with Client.connect(connection=cluster.connection) as fed:
        pause(old.pid)
        try:
            _, new_epoch = await cluster.leader("eu", after=old_epoch)
            # the new leader schedules while the old one is frozen with its consumers still bound
            await fed.submit(["true"], job_id="during-pause")
            await eventually(lambda: _all_succeeded(fed, 1), timeout=30)
            fenced_from = len(writes)
        finally:
            resume(old.pid)
        # the old leader wakes with messages in its buffers: it must notice and write nothing
        log = cluster.tmp / "logs" / f"{old.name}.log"
        await eventually(lambda: "lost the eu scheduler lease" in log.read_text(), timeout=30)
        await fed.submit(["true"], job_id="after-resume")
        await eventually(lambda: _all_succeeded(fed, 2), timeout=30)
        assert writes[fenced_from:], "no ledger write observed after the takeover"
        assert set(writes[fenced_from:]) == {new_epoch}, f"a write with a stale epoch landed: {writes}"
        records = await fed.jobs()
        assert {r.epoch for r in records} == {new_epoch}
    await bus.close()


async def test_clean_stop_of_the_leader_hands_over_at_once(make_cluster) -> None:
    cluster = await make_cluster(agents=1, schedulers=2)
    leader, epoch = await cluster.leader("eu")
    stopped = time.monotonic()
    os.kill(leader.pid, signal.SIGTERM)
    _, new_epoch = await cluster.leader("eu", after=epoch)
    assert time.monotonic() - stopped < LEASE_TTL, "the lease was not released at a clean stop"
    async with Client.connect(connection=cluster.connection) as fed:
        await fed.submit(["true"], job_id="after-handover")
        await eventually(lambda: _all_succeeded(fed, 1), timeout=30)
        assert (await fed.job("after-handover")).epoch == new_epoch
    status = json.loads((await asyncio.to_thread(run_fed, cluster.tmp, "status", "--json")).stdout)
    assert status[0]["leader"]["epoch"] == new_epoch
