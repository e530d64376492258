"""A region's node traffic within its budget (issue 21, part 1), against real schedulers and agents.

The policy's ``node_messages_per_second`` sets how often the region's nodes beat and refresh their
offers (federation.core.cadence); the leader says it in its lease, agents read it there, and an
unchanged offer is not sent again before its refresh is due.
"""

from __future__ import annotations

from federation import subjects
from federation.client import Client
from federation.schemas import Heartbeat, Lease, decode, decode_message
from tests.conftest import eventually, fed


async def _lease(bus) -> Lease | None:  # type: ignore[no-untyped-def]
    value, _ = await bus.kv_get(subjects.lease_bucket("eu"), subjects.LEADER_KEY)
    return decode(Lease, value) if value else None


async def _beat_interval(bus, node: str) -> float:  # type: ignore[no-untyped-def]
    item = await bus.last(subjects.heartbeats_stream("eu"), subjects.heartbeat("eu", node))
    return _heartbeat(item.data).interval if item is not None and not item.removed else 0.0


async def test_agents_follow_the_cadence_the_region_sets_from_its_budget(make_cluster) -> None:
    cluster = await make_cluster(agents=2)
    config = cluster.tmp / "config" / "scheduler-eu.toml"
    log = cluster.tmp / "logs" / "scheduler-eu.log"
    async with Client.connect(connection=cluster.connection) as client:
        bus = await client.bus("eu")
        # the default budget: two nodes beat every second, as before there was a budget
        lease = await eventually(lambda: _counted(bus, 2))  # (said from the first renewal on)
        assert (lease.heartbeat, lease.offer_refresh, lease.node_budget) == (1.0, 1.0, 1000.0)

        # one message a second for two nodes: each beats every ceil(2 * 2 / 1) = 4 s
        text = config.read_text()
        config.write_text(text.replace("[policy]\n", "[policy]\nnode_messages_per_second = 1.0\n", 1))
        await eventually(lambda: "policy reloaded" in log.read_text(), timeout=15)
        lease = await eventually(lambda: _said(bus, 4.0), timeout=30)
        assert (lease.offer_refresh, lease.nodes) == (4.0, 2)
        for node in ("eu-n1", "eu-n2"):  # read at the agent's next look at the lease (<= 10 s)
            await eventually(lambda n=node: _at(bus, n, 4.0), timeout=40)

        # an unchanged offer waits for its refresh: over three of eu-n1's heartbeats (12 s), two
        # nodes sampling their host every 2 s send at most one offer each per 4 s (and one more
        # each, as the window starts mid-interval)
        offers = subjects.offers_stream("eu")
        before, first = await bus.last_sequence(offers), await _seq(bus, "eu-n1")
        await eventually(lambda: _seq_at_least(bus, "eu-n1", first + 3), timeout=30)
        after = await bus.last_sequence(offers)
        assert before is not None
        assert after is not None
        assert 2 <= after - before <= 2 * (3 + 1), f"{after - before} offers over three beats"

        shown = await fed(cluster.tmp, "status")
        assert "cadence: heartbeats every 4s (a node is lost after 12s)" in shown.stdout, shown.stdout
        assert "2 nodes within 1 messages/s" in shown.stdout, shown.stdout


async def _said(bus, interval: float) -> Lease | None:  # type: ignore[no-untyped-def]
    lease = await _lease(bus)
    return lease if lease is not None and lease.heartbeat == interval else None


async def _counted(bus, nodes: int) -> Lease | None:  # type: ignore[no-untyped-def]
    lease = await _lease(bus)
    return lease if lease is not None and lease.nodes == nodes else None


async def _at(bus, node: str, interval: float) -> bool:  # type: ignore[no-untyped-def]
    return await _beat_interval(bus, node) == interval


async def _seq(bus, node: str) -> int:  # type: ignore[no-untyped-def]
    item = await bus.last(subjects.heartbeats_stream("eu"), subjects.heartbeat("eu", node))
    return _heartbeat(item.data).seq if item is not None and not item.removed else 0


async def _seq_at_least(bus, node: str, seq: int) -> bool:  # type: ignore[no-untyped-def]
    return await _seq(bus, node) >= seq


def _heartbeat(data: bytes) -> Heartbeat:
    message = decode_message(data)
    assert isinstance(message, Heartbeat)
    return message
