"""The agent's and the lease's clocks are injectable (issue 17), and they are what time is read from:
wall time for what is stored or sent, a monotonic clock for what is measured. Against a real
server, a real scheduler and a real command; only the clocks are the tests'."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agents.agent import Agent
from federation import subjects
from federation.bus import Bus
from federation.client import Client
from federation.config import AgentConfig
from federation.errors import LeaseLost, NotFound
from federation.ops.provision import provision
from federation.scheduler.lease import Lease
from federation.schemas import Lease as LeaseValue
from federation.schemas import decode
from tests.conftest import GiB, eventually

pytestmark = pytest.mark.timeout(120)

SPARE = "clocks"  # a region whose lease no scheduler contends for, provisioned on the test's hub
# (a region's own server would refuse it: its views stream captures every region's view already)


class ManualClock:
    """A clock that moves only when the test moves it (trio's ``MockClock``, without the sleeping)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingClock:
    """A real clock that keeps every reading it gave (so a stamp can be traced to this clock)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.readings: set[float] = set()

    def __call__(self) -> float:
        now = self.clock()
        self.readings.add(now)
        return now


class JumpingClock:
    """A real clock, read from an origin of its own (so a reading of another clock mixed in shows),
    that the test can jump forward (as a host suspended for a while would be)."""

    def __init__(self, clock: Callable[[], float], offset: float) -> None:
        self.clock = clock
        self.offset = offset

    def __call__(self) -> float:
        return self.clock() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@contextlib.asynccontextmanager
async def spare_region(url: str) -> AsyncIterator[Bus]:
    """A connection to the server at ``url``, on which region ``SPARE``'s streams and buckets exist."""
    bus = await Bus.connect(url, "test-clocks", retry_forever=False)
    try:
        await provision(bus, SPARE)
        yield bus
    finally:
        await bus.close()


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    """``agent`` running in this process while the block runs (the umask it sets is undone after)."""
    umask = os.umask(0o077)
    os.umask(umask)
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop()
        await task
        os.umask(umask)


async def test_a_lease_is_stamped_by_its_wall_clock_and_lapses_only_when_its_monotonic_clock_says(
    make_cluster,
) -> None:
    cluster = await make_cluster(agents=0)
    async with spare_region(cluster.connection.hub_url) as bus:
        wall, monotonic = ManualClock(1_700_000_000.0), ManualClock(100.0)
        first = Lease(bus, SPARE, "first:1", ttl=1, clock=wall, monotonic=monotonic)
        epoch = await first.acquire()
        value, _ = await bus.kv_get(subjects.lease_bucket(SPARE), subjects.LEADER_KEY)
        assert value is not None
        stored = decode(LeaseValue, value)
        assert (stored.holder, stored.epoch, stored.renewed_at) == ("first:1", epoch, 1_700_000_000.0)

        # never renewed, the lease expires on the server, and another scheduler wins it
        second = Lease(bus, SPARE, "second:1", ttl=1, poll=0.05)
        assert await second.acquire() > epoch

        # the first still counts itself the leader: its own clock has not moved
        assert first.valid()
        monotonic.advance(0.8)  # the TTL less its margin, by that clock
        assert not first.valid()
        with pytest.raises(LeaseLost, match="another scheduler took it over"):
            await first.ensure()


async def test_an_agent_stamps_reports_by_its_wall_clock_and_times_attempts_on_its_monotonic_clock(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(agents=0)
    # real time underneath: the scheduler judges the agent's offers by its own wall clock
    wall, monotonic = RecordingClock(time.time), JumpingClock(time.monotonic, offset=1e6)
    config = AgentConfig(
        region="eu",
        node="clocked",
        nats_url=cluster.url("eu"),
        cpu=1,
        memory=GiB,
        state_dir=str(tmp_path / "clocked"),
        isolation="none",
    )
    go = tmp_path / "go"
    async with (
        running(Agent(config, clock=wall, monotonic=monotonic)),
        Client.connect(connection=cluster.connection) as fed,
    ):
        job = await fed.submit(["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.05; done', str(go)])

        async def started() -> bool:
            with contextlib.suppress(NotFound):
                return (await job.record()).state == "running"
            return False

        await eventually(started, timeout=60)
        monotonic.jump(3600)  # an hour passes for the agent while the attempt runs
        go.touch()
        record = await job.wait(timeout=60)

    assert (record.state, record.node) == ("succeeded", "clocked"), record
    reported = {t.state: t.at for t in record.history if t.state in ("running", "succeeded")}
    assert set(reported) == {"running", "succeeded"}, record.history
    assert set(reported.values()) <= wall.readings, "a report was not stamped by the agent's clock"
    assert record.usage is not None
    assert 3600 <= record.usage.wall_seconds < 3660, record.usage
