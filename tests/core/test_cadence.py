"""The region's node cadence (federation.core.cadence): pure."""

from __future__ import annotations

from federation.core.cadence import region_cadence, settle
from federation.core.events import NodeDown, Tick, WriteLedger
from tests.core.test_region_core import running_on, submit, two_nodes_one_job
from tests.core.test_region_core import settle as place


def test_the_interval_grows_with_the_region_so_beats_and_refreshes_stay_within_the_budget() -> None:
    assert region_cadence(0, 1000).heartbeat == 1.0
    assert region_cadence(500, 1000).heartbeat == 1.0  # 500 beats and 500 refreshes a second
    assert region_cadence(501, 1000).heartbeat == 2.0
    large = region_cadence(10_000, 1000)
    assert (large.heartbeat, large.offer_refresh, large.loss_after) == (20.0, 20.0, 60.0)
    for nodes in (1, 7, 499, 1234, 10_000, 99_999):
        c = region_cadence(nodes, 300)
        assert nodes / c.heartbeat + nodes / c.offer_refresh <= 300
    assert settle(2.0, region_cadence(10_000, 1000)) == 20.0  # at least one interval
    assert settle(30.0, region_cadence(10, 1000)) == 30.0


def test_a_loss_is_decided_no_sooner_than_one_heartbeat_interval_after_it() -> None:
    core = two_nodes_one_job(node_messages_per_second=1.0)  # two nodes: beats every 4 s
    assert core.cadence.heartbeat == 4.0
    core.handle(submit("j1", nodes=["n1"]))
    place(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    assert not core.handle(Tick(now=22.0)), "decided after node_settle (2 s) but within one interval"
    commands = core.handle(Tick(now=24.0))
    assert [c.ledger.allocations for c in commands if isinstance(c, WriteLedger)] == [()]
    assert core.jobs["j1"].record.state == "lost"


def test_a_refreshed_offer_that_changes_nothing_keeps_the_node_and_revives_an_expired_one() -> None:
    import msgspec

    from federation.core.events import OfferSeen
    from federation.core.state import RegionCore
    from tests.core.test_region_core import offer

    core = RegionCore("eu")
    first = msgspec.structs.replace(offer("n1"), expires_at=10.5)
    core.handle(OfferSeen(offer=first))
    free = core.nodes["n1"].free
    core.handle(submit("j1"))
    assert not [c for c in core.handle(Tick(now=11.0)) if isinstance(c, WriteLedger)], "its offer expired"
    assert "n1" not in core.index
    refresh = msgspec.structs.replace(first, expires_at=100.0, sent_at=50.0, cpu_percent=12.0)
    core.handle(OfferSeen(offer=refresh))
    assert core.nodes["n1"].free is free, "the same room: not computed again"
    claims = [c for c in core.handle(Tick(now=12.0)) if isinstance(c, WriteLedger)]
    assert [(c.node, [a.job for a in c.ledger.allocations]) for c in claims] == [("n1", ["j1"])]
