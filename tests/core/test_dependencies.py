"""Dependencies in the pure core: a job waits for others to end the way it asks, is cancelled when
one ends the other way, and learns about jobs in other regions from their answers."""

from __future__ import annotations

from federation.core.events import DependencyState, JobReported, OfferSeen, Submitted, Tick
from federation.core.state import RegionCore
from federation.schemas import Dependency, JobEvent, Submit
from tests.core.test_region_core import offer, settle


def submit(job: str, *after: Dependency, at: float = 10.0, **kw: object) -> Submitted:
    return Submitted(spec=Submit(id=job, command=["true"], after=list(after), **kw), at=at)  # type: ignore[arg-type]


def finish(core: RegionCore, job: str, code: int, at: float = 12.0) -> None:
    node = core.jobs[job].record.node
    core.handle(
        JobReported(event=JobEvent(node=node, job=job, attempt=1, kind="exited", exit_code=code, at=at))
    )
    settle(core, now=at)


def state(core: RegionCore, job: str) -> str:
    return core.jobs[job].record.state


def test_a_job_waits_for_its_dependency_to_succeed_then_runs() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    core.handle(submit("a"))
    core.handle(submit("b", Dependency(job="a")))
    settle(core)
    assert (state(core, "a"), state(core, "b")) == ("placed", "pending")
    assert core.jobs["b"].record.reason == "pending: waiting for a (placed) to end successfully"
    finish(core, "a", 0)
    assert state(core, "b") == "placed"


def test_a_dependency_that_ends_the_other_way_cancels_the_dependent_with_the_reason() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    core.handle(submit("a"))
    core.handle(submit("ok", Dependency(job="a")))
    core.handle(submit("cleanup", Dependency(job="a", when="failed")))
    core.handle(submit("always", Dependency(job="a", when="any")))
    settle(core)
    finish(core, "a", 3)
    assert state(core, "ok") == "cancelled"
    assert core.jobs["ok"].record.reason == "dependency a ended failed, not successfully"
    assert state(core, "cleanup") == "placed"
    assert state(core, "always") == "placed"


def test_an_array_counts_as_a_whole() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    for i in range(3):
        core.handle(Submitted(spec=Submit(id=f"x-{i}", command=["true"], array="x", array_index=i), at=10.0))
    core.handle(submit("after-x", Dependency(job="x")))
    settle(core)
    finish(core, "x-0", 0)
    finish(core, "x-1", 0)
    assert state(core, "after-x") == "pending"
    assert "waiting for x (running)" in core.jobs["after-x"].record.reason
    finish(core, "x-2", 0)
    assert state(core, "after-x") == "placed"


def test_a_dependency_in_another_region_is_asked_about_and_its_answer_decides() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    core.handle(submit("b", Dependency(job="a", region="us")))
    settle(core)
    assert core.dependencies.lookups(core) == [("a", "us")]
    assert "waiting for a in us (not known yet)" in core.jobs["b"].record.reason
    core.handle(DependencyState(job="a", region="us", state="forwarded", forwarded_to="ap", at=11.0))
    assert core.dependencies.lookups(core) == [("a", "ap")]  # it moved on: ask where it went
    core.handle(DependencyState(job="a", region="ap", state="running", at=11.5))
    settle(core, now=12.0)
    assert state(core, "b") == "pending"
    core.handle(DependencyState(job="a", region="ap", state="succeeded", at=13.0))
    settle(core, now=13.0)
    assert state(core, "b") == "placed"
    assert core.dependencies.lookups(core) == []


def test_the_answer_for_another_region_says_what_is_known_here() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    core.handle(submit("a"))
    settle(core)
    assert core.dependencies.state_of(core, "a") == ("placed", "")
    assert core.dependencies.state_of(core, "nope") == ("", "")
    core.handle(Tick(now=20.0))
