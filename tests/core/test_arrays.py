"""Job arrays in the pure core: the running limit (Slurm's ``%``), cancelling a whole array, and
elements with a limit never handed to another region."""

from __future__ import annotations

from federation.core.events import (
    CancelRequested,
    ClaimWritten,
    JobReported,
    OfferSeen,
    Submitted,
    Tick,
    WriteLedger,
)
from federation.core.spill import may_go
from federation.core.state import RegionCore
from federation.schemas import JobEvent, Submit
from tests.core.test_region_core import offer, settle


def element(array: str, index: int, limit: int = 0) -> Submitted:
    spec = Submit(id=f"{array}-{index}", command=["true"], array=array, array_index=index, array_limit=limit)
    return Submitted(spec=spec, at=10.0 + index / 1000)


def holding(core: RegionCore, array: str) -> list[str]:
    return sorted(j for j, v in core.jobs.items() if v.record.spec.array == array and j in core.holders)


def test_an_array_with_a_limit_holds_at_most_that_many_nodes_slots_at_once() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=16)))
    for i in range(10):
        core.handle(element("a1", i, limit=3))
    settle(core)
    assert len(holding(core, "a1")) == 3  # room for 16, but the array may hold 3
    waiting = core.jobs["a1-5"].record
    assert waiting.state == "pending"
    assert "array a1 runs at most 3 at once" in waiting.reason
    done = holding(core, "a1")[0]
    core.handle(
        JobReported(event=JobEvent(node="n1", job=done, attempt=1, kind="exited", exit_code=0, at=12.0))
    )
    settle(core, now=12.0)
    assert core.jobs[done].record.state == "succeeded"
    assert len(holding(core, "a1")) == 3  # one ended and was released: the next one took its place
    ran = [j for j, v in core.jobs.items() if v.record.attempt]
    assert len(ran) == 4


def test_the_limit_counts_claims_in_flight_and_another_array_is_not_held_back() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=16)))
    for i in range(4):
        core.handle(element("a1", i, limit=2))
        core.handle(element("b2", i))
    first = core.handle(Tick(now=11.0))  # claims proposed, none stored yet
    claimed = [a.job for c in first if isinstance(c, WriteLedger) for a in c.ledger.allocations]
    assert sorted(j for j in claimed if j.startswith("a1")) == ["a1-0", "a1-1"]
    assert len([j for j in claimed if j.startswith("b2")]) == 4  # no limit
    assert not [c for c in core.handle(Tick(now=11.5)) if isinstance(c, WriteLedger)]  # still in flight
    core.handle(ClaimWritten(node="n1", revision=7))
    assert len(holding(core, "a1")) == 2


def test_cancelling_an_array_id_cancels_every_element_and_nothing_else() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=4)))
    for i in range(6):
        core.handle(element("a1", i))
    core.handle(Submitted(spec=Submit(id="other", command=["true"]), at=10.0))
    settle(core)
    core.handle(CancelRequested(job="a1", reason="user", at=15.0))
    settle(core, now=15.0)
    states = {j: v.record.state for j, v in core.jobs.items()}
    assert {states[f"a1-{i}"] for i in range(6)} == {"cancelled"}
    assert states["other"] in ("placed", "pending")
    assert not holding(core, "a1")


def test_an_element_with_a_limit_stays_home() -> None:
    limited = Submit(id="a-1", command=["true"], array="a", array_index=1, array_limit=5)
    free = Submit(id="b-1", command=["true"], array="b", array_index=1)
    assert not may_go(limited, "eu", "us")
    assert may_go(free, "eu", "us")
