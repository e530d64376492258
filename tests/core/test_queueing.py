"""The region's queue: its order, its per-level tenant counts, and the fair order a pass takes."""

from __future__ import annotations

from federation.core.events import OfferSeen, Submitted, Tick
from federation.core.planning import Pass
from federation.core.state import RegionCore
from federation.schemas import Offer, Submit


def core_with(jobs: list[tuple[str, str, str]], slots: int = 8) -> RegionCore:
    """A core with one node of ``slots`` one-core slots and ``(id, tenant, priority)`` submitted
    one second apart, in that order."""
    core = RegionCore("eu")
    offer = Offer(
        node="n1",
        region="eu",
        cores=list(range(slots)),
        memory=64 << 30,
        max_allocations=slots,
        expires_at=1e9,
    )
    core.handle(OfferSeen(offer=offer))
    for i, (job, tenant, priority) in enumerate(jobs):
        spec = Submit(id=job, command=["true"], tenant=tenant, priority=priority)  # type: ignore[arg-type]
        core.handle(Submitted(spec=spec, at=10.0 + i))
    return core


def placed_order(core: RegionCore) -> list[str]:
    plan = Pass(core, 100.0).run()
    return [allocation.job for allocation in plan.placed.get("n1", [])]


def test_the_queue_counts_each_levels_tenants_through_adds_and_removes() -> None:
    core = core_with(
        [("a1", "a", "medium"), ("a2", "a", "medium"), ("b1", "b", "medium"), ("h1", "a", "high")]
    )
    queue = core.queue
    normal, high = core.jobs["a1"].order[0], core.jobs["h1"].order[0]
    assert [job for _, job in queue] == ["h1", "a1", "a2", "b1"]
    assert (queue.tenants(normal), queue.tenants(high)) == (2, 1)
    assert queue.remove(core.jobs["b1"].queued)
    assert not queue.remove(core.jobs["b1"].queued)  # not queued any more: nothing changes
    assert queue.tenants(normal) == 1
    queue.add(core.jobs["b1"].queued)
    core.unqueue("a1")
    core.unqueue("a2")
    assert queue.tenants(normal) == 1
    assert [job for _, job in queue] == ["h1", "b1"]
    core.requeue_now("a1")
    assert queue.tenants(normal) == 2
    assert [job for _, job in queue] == ["h1", "a1", "b1"]


def test_one_tenant_is_taken_in_submission_order_and_two_by_dominant_share() -> None:
    alone = core_with([(f"a{i}", "a", "medium") for i in range(5)], slots=3)
    assert placed_order(alone) == ["a0", "a1", "a2"]
    # b's one job arrives after a's four: with a's first placed, b's share is the lower one
    shared = core_with([(f"a{i}", "a", "medium") for i in range(4)] + [("b0", "b", "medium")], slots=3)
    assert placed_order(shared) == ["a0", "b0", "a1"]
    # each priority level is shared out on its own: the high one first
    levels = core_with([("a0", "a", "medium"), ("b0", "b", "medium"), ("h0", "a", "high")], slots=2)
    assert placed_order(levels) == ["h0", "b0"]


def test_a_pass_changes_nothing_and_its_plan_taken_leaves_the_counts_as_placements_left_them() -> None:
    core = core_with([("a0", "a", "medium"), ("b0", "b", "medium"), ("b1", "b", "medium")], slots=2)
    rank = core.jobs["a0"].order[0]
    plan = Pass(core, 100.0).run()
    assert plan.dequeued == {"a0", "b0"}
    assert [job for _, job in core.queue] == ["a0", "b0", "b1"]  # a pass only reads the core
    core.handle(Tick(now=100.0))
    assert [job for _, job in core.queue] == ["b1"]
    assert core.queue.tenants(rank) == 1


def test_the_counts_always_match_the_entries_through_a_random_mix_of_changes() -> None:
    import random

    rng = random.Random(18)
    tenants, priorities = ("a", "b", "c"), ("urgent", "medium", "low")
    jobs = [(f"j{i}", rng.choice(tenants), rng.choice(priorities)) for i in range(60)]
    core = core_with(jobs, slots=4)
    for now in range(40):
        job = rng.choice(jobs)[0]
        if rng.random() < 0.4:
            core.unqueue(job)
        elif rng.random() < 0.5 and core.jobs[job].record.state == "pending":
            if all(queued != job for _, queued in core.queue):
                core.requeue_now(job)
        else:
            core.handle(Tick(now=100.0 + now))  # a pass, its plan taken (placements leave the queue)
        for rank in range(4):
            expected = {core.jobs[j].record.spec.tenant for (r, _, _), j in core.queue if r == rank}
            assert core.queue.tenants(rank) == len(expected)
        assert list(core.queue) == sorted(core.queue)
