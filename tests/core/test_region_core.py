"""The pure core, driven directly: no event loop, no server, no clock."""

from __future__ import annotations

import pytest

from federation.core.events import (
    CancelRequested,
    ClaimConflict,
    ClaimWritten,
    JobReported,
    NodeDown,
    NodeUp,
    OfferSeen,
    Recovered,
    Submitted,
    Tick,
    WriteJob,
    WriteLedger,
)
from federation.core.policy import Policy
from federation.core.state import RegionCore
from federation.schemas import JobEvent, Ledger, Offer, Submit, Usage

GiB = 1024**3


def offer(
    node: str, cpu: int = 4, memory: int = 8 * GiB, gpus: tuple[str, ...] = (), slots: int = 32
) -> Offer:
    return Offer(
        node=node,
        region="eu",
        cores=list(range(cpu)),
        memory=memory,
        gpus=list(gpus),
        max_allocations=slots,
        expires_at=1e9,
    )


def submit(job: str, **kw: object) -> Submitted:
    return Submitted(spec=Submit(id=job, command=["true"], **kw), at=10.0)  # type: ignore[arg-type]


def settle(core: RegionCore, now: float = 11.0) -> list[object]:
    """Tick, write every proposed ledger successfully, tick again; return all commands."""
    out: list[object] = []
    revision = 100
    commands = core.handle(Tick(now=now))
    while commands:
        out.extend(commands)
        more = []
        for command in commands:
            if isinstance(command, WriteLedger):
                revision += 1
                more.extend(core.handle(ClaimWritten(node=command.node, revision=revision)))
        more.extend(core.handle(Tick(now=now)))
        commands = [c for c in more if not isinstance(c, WriteJob) or c not in out]
        out.extend(c for c in more if isinstance(c, WriteJob))
        commands = [c for c in more if isinstance(c, WriteLedger)]
    return out


def test_job_is_placed_by_one_claim_then_one_record_write() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1", cpu=2))
    first = core.handle(Tick(now=11.0))
    assert [type(c) for c in first] == [WriteLedger]
    claim = first[0]
    assert isinstance(claim, WriteLedger)
    assert claim.expected_revision == 0
    assert claim.ledger.allocations[0].cores == (0, 1)
    assert core.handle(ClaimWritten(node="n1", revision=5)) == []
    second = core.handle(Tick(now=11.0))
    assert len(second) == 1
    assert isinstance(second[0], WriteJob)
    assert second[0].record.state == "placed"
    assert second[0].record.node == "n1"
    assert second[0].record.attempt == 1


def test_jobs_on_one_node_in_one_pass_share_one_claim() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    for i in range(4):
        core.handle(submit(f"j{i}", cpu=2))
    commands = core.handle(Tick(now=11.0))
    claims = [c for c in commands if isinstance(c, WriteLedger)]
    assert len(claims) == 1
    cores = [a.cores for a in claims[0].ledger.allocations]
    assert sorted(c for cs in cores for c in cs) == list(range(8))


def test_job_needing_more_than_any_offer_stays_pending_with_reason() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=2)))
    core.handle(OfferSeen(offer=offer("n2", cpu=2)))
    core.handle(submit("big", gpu=1))
    commands = core.handle(Tick(now=11.0))
    assert len(commands) == 1
    assert isinstance(commands[0], WriteJob)
    record = commands[0].record
    assert record.state == "pending"
    assert "too little gpu on 2 nodes" in record.reason
    # a node that fits joins: the job is claimed there
    core.handle(OfferSeen(offer=offer("gpu1", gpus=("0",))))
    claims = core.handle(Tick(now=12.0))
    assert [c.node for c in claims if isinstance(c, WriteLedger)] == ["gpu1"]


def test_conflict_returns_jobs_to_queue_and_adopts_stored_ledger() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=2)))
    core.handle(submit("mine", cpu=2))
    core.handle(Tick(now=11.0))
    theirs = Ledger(node="n1", allocations=(offer_alloc("theirs"),))
    assert core.handle(ClaimConflict(node="n1", ledger=theirs, revision=9)) == []
    commands = core.handle(Tick(now=12.0))
    # the node is full with the other writer's allocation: no claim, the job waits with a reason
    assert not [c for c in commands if isinstance(c, WriteLedger)]
    assert core.pending() == ["mine"]


def offer_alloc(job: str):  # type: ignore[no-untyped-def]
    from federation.schemas import Allocation

    return Allocation(job=job, attempt=1, cpu=2, cores=(0, 1))


def test_queue_order_is_priority_then_submission_time() -> None:
    core = RegionCore("eu")
    core.handle(Submitted(spec=Submit(id="low", command=["x"], priority="low"), at=1.0))
    core.handle(Submitted(spec=Submit(id="urgent", command=["x"], priority="urgent"), at=3.0))
    core.handle(Submitted(spec=Submit(id="medium-old", command=["x"]), at=1.5))
    core.handle(Submitted(spec=Submit(id="medium-new", command=["x"]), at=2.0))
    assert core.pending() == ["urgent", "medium-old", "medium-new", "low"]


def test_exit_report_finishes_job_and_releases_allocation() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    core.handle(JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="started", at=12.0)))
    core.handle(
        JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=3, at=13.0))
    )
    commands = core.handle(Tick(now=13.0))
    release = [c for c in commands if isinstance(c, WriteLedger)]
    assert release
    assert release[0].ledger.allocations == ()
    record = next(c for c in commands if isinstance(c, WriteJob)).record
    assert (record.state, record.exit_code) == ("failed", 3)
    assert [t.state for t in record.history] == ["pending", "placed", "running", "failed"]


def test_a_short_jobs_one_exit_report_with_its_start_records_it_running_then_ended() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    exited = JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=0, at=12.5, started_at=12.0)
    core.handle(JobReported(event=exited))
    commands = core.handle(Tick(now=13.0))
    records = [c.record for c in commands if isinstance(c, WriteJob)]
    assert len(records) == 1  # one write: the record carries the whole history
    assert [(t.state, t.at) for t in records[0].history][-2:] == [("running", 12.0), ("succeeded", 12.5)]
    assert records[0].history[-2].reason == "running on n1"
    assert any(isinstance(c, WriteLedger) and c.ledger.allocations == () for c in commands)


def test_the_usage_an_exit_report_carries_is_kept_on_the_record() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    used = Usage(cpu_seconds=1.25, peak_memory_bytes=4096, wall_seconds=2.0, measured_by="cgroup")
    exited = JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=0, at=13.0, usage=used)
    core.handle(JobReported(event=exited))
    record = core.jobs["j1"].record
    assert (record.state, record.usage) == ("succeeded", used)
    assert Usage(cpu_seconds=1.0, wall_seconds=3.0).plus(used) == Usage(
        cpu_seconds=2.25, peak_memory_bytes=4096, wall_seconds=3.0, measured_by="wall clock"
    )


def test_stale_report_from_another_node_or_attempt_changes_nothing() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    core.handle(JobReported(event=JobEvent(node="n2", job="j1", attempt=1, kind="exited", exit_code=0)))
    core.handle(JobReported(event=JobEvent(node="n1", job="j1", attempt=7, kind="exited", exit_code=0)))
    assert core.handle(Tick(now=20.0)) == []
    assert core.jobs["j1"].record.state == "placed"


def test_duplicate_submission_changes_nothing() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    core.handle(submit("j1"))
    assert core.handle(Tick(now=20.0)) == []


def test_cancel_of_running_job_releases_and_terminal_state_is_final() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    core.handle(CancelRequested(job="j1", reason="user", at=15.0))
    commands = core.handle(Tick(now=15.0))
    assert any(isinstance(c, WriteLedger) and c.ledger.allocations == () for c in commands)
    assert core.jobs["j1"].record.state == "cancelled"
    # the agent's report of the killed process must not move the job out of cancelled
    core.handle(JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=-15)))
    assert core.jobs["j1"].record.state == "cancelled"


def test_down_node_gets_no_placements() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(NodeDown(node="n1", at=10.0))
    core.handle(submit("j1"))
    commands = core.handle(Tick(now=11.0))
    assert not [c for c in commands if isinstance(c, WriteLedger)]
    assert "node down on 1 node" in core.jobs["j1"].record.reason


def test_redelivered_submission_adopts_claim_written_before_a_crash() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    claim = core.handle(Tick(now=11.0))[0]
    assert isinstance(claim, WriteLedger)
    # the scheduler dies here; a new one recovers the ledger but finds no job record
    fresh = RegionCore("eu")
    fresh.handle(Recovered(ledgers={"n1": (claim.ledger, 7)}, records=(), at=11.5))
    fresh.handle(OfferSeen(offer=offer("n1")))
    fresh.handle(submit("j1"))
    commands = fresh.handle(Tick(now=12.0))
    assert not [c for c in commands if isinstance(c, WriteLedger)]
    record = next(c for c in commands if isinstance(c, WriteJob)).record
    assert (record.state, record.node, record.attempt) == ("placed", "n1", 1)


def test_recovery_rebuilds_the_record_of_an_allocation_whose_record_was_never_written() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1", cpu=2))
    claim = core.handle(Tick(now=11.0))[0]
    assert isinstance(claim, WriteLedger)
    fresh = RegionCore("eu")
    fresh.handle(Recovered(ledgers={"n1": (claim.ledger, 7)}, records=(), at=11.5))
    written = [c.record for c in fresh.handle(Tick(now=12.0)) if isinstance(c, WriteJob)]
    assert [(r.id, r.state, r.node, r.spec.cpu) for r in written] == [("j1", "placed", "n1", 2)]
    # the agent's reports now find the job, and the late redelivery of the submission is a duplicate
    fresh.handle(JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=0)))
    fresh.handle(submit("j1", cpu=2))
    commands = fresh.handle(Tick(now=13.0))
    assert [c.record.state for c in commands if isinstance(c, WriteJob)] == ["succeeded"]
    assert [c.ledger.allocations for c in commands if isinstance(c, WriteLedger)] == [()]


def test_refused_allocation_goes_back_to_the_queue_and_is_released() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    core.handle(
        JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="refused", reason="busy", at=20.0))
    )
    commands = core.handle(Tick(now=20.0))
    release = [c for c in commands if isinstance(c, WriteLedger)]
    assert [c.ledger.allocations for c in release] == [()]
    record = core.jobs["j1"].record
    assert record.state == "pending"
    assert "refused by n1: busy; retry 2 of 3" in record.reason
    assert record.not_before == 21.0  # the policy's first backoff: 1 s
    core.handle(ClaimWritten(node="n1", revision=200))
    assert not [c for c in core.handle(Tick(now=20.5)) if isinstance(c, WriteLedger)], "backing off"
    claims = [c for c in core.handle(Tick(now=21.5)) if isinstance(c, WriteLedger)]
    assert [(a.job, a.attempt) for a in claims[0].ledger.allocations] == [("j1", 2)]


def test_offers_do_not_revive_a_down_node_only_a_heartbeat_does() -> None:
    core = RegionCore("eu")
    core.handle(NodeDown(node="n1", at=50.0))
    core.handle(OfferSeen(offer=Offer(node="n1", region="eu", cores=[0], memory=1, expires_at=1e9)))
    assert not core.nodes["n1"].alive
    core.handle(NodeUp(node="n1", at=51.0))
    assert core.nodes["n1"].alive


def running_on(core: RegionCore, job: str, node: str, at: float = 12.0) -> None:
    core.handle(JobReported(event=JobEvent(node=node, job=job, attempt=1, kind="started", at=at)))
    core.handle(Tick(now=at))


def two_nodes_one_job(**kw: object) -> RegionCore:
    """n1 runs j1 (placed by preference); n2 is alive and idle."""
    core = RegionCore("eu", policy=Policy(**kw))  # type: ignore[arg-type]
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(OfferSeen(offer=offer("n2")))
    return core


def test_lost_node_fails_its_job_by_default_and_releases_the_allocation() -> None:
    core = two_nodes_one_job()
    core.handle(submit("j1", nodes=["n1"]))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    assert not core.handle(Tick(now=21.0)), "decided before node_settle (2 s) passed"
    commands = core.handle(Tick(now=22.0))
    assert [c.ledger.allocations for c in commands if isinstance(c, WriteLedger)] == [()]
    record = core.jobs["j1"].record
    assert (record.state, record.reason) == ("lost", "node n1 lost (no heartbeat); on_node_lost=fail")
    # the node comes back and reports the attempt it kept running: one terminal state (I4)
    core.handle(NodeUp(node="n1", at=30.0))
    core.handle(JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=0)))
    assert core.jobs["j1"].record.state == "lost"


def test_replace_runs_a_new_attempt_elsewhere_and_the_stale_report_changes_nothing() -> None:
    core = two_nodes_one_job()
    core.handle(submit("j1", nodes=["n1"], on_node_lost="replace"))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    out = settle(core, now=22.0)
    claims = [c for c in out if isinstance(c, WriteLedger)]
    assert [(c.node, [(a.job, a.attempt) for a in c.ledger.allocations]) for c in claims] == [
        ("n1", []),
        ("n2", [("j1", 2)]),
    ]
    record = core.jobs["j1"].record
    assert (record.state, record.node, record.attempt) == ("placed", "n2", 2)
    assert [t.state for t in record.history] == ["pending", "placed", "running", "pending", "placed"]
    core.handle(NodeUp(node="n1", at=30.0))
    core.handle(JobReported(event=JobEvent(node="n1", job="j1", attempt=1, kind="exited", exit_code=0)))
    assert core.jobs["j1"].record.state == "placed"


def test_wait_keeps_the_job_when_the_node_returns_in_time_and_replaces_it_after() -> None:
    core = two_nodes_one_job()
    core.handle(submit("j1", nodes=["n1"], on_node_lost="wait=30s"))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    assert not [c for c in core.handle(Tick(now=49.0)) if isinstance(c, WriteLedger)]
    assert "keeping the allocation until 50" in core.jobs["j1"].record.reason
    core.handle(NodeUp(node="n1", at=49.5))
    assert not [c for c in core.handle(Tick(now=60.0)) if isinstance(c, WriteLedger)]
    assert core.jobs["j1"].record.state == "running"
    core.handle(NodeDown(node="n1", at=70.0))
    settle(core, now=100.0)
    record = core.jobs["j1"].record
    assert (record.state, record.node, record.attempt) == ("placed", "n2", 2)


def test_every_node_silent_at_once_freezes_decisions_then_grants_a_grace() -> None:
    core = two_nodes_one_job(on_node_lost="replace", node_grace=10.0)
    core.handle(submit("j1", nodes=["n1"]))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    assert not core.handle(Tick(now=20.5))  # settling: is it one node, or all of them?
    core.handle(NodeDown(node="n2", at=21.0))  # the other marker comes a beat later
    assert core.frozen(23.0)
    assert not [c for c in core.handle(Tick(now=40.0)) if isinstance(c, WriteLedger)]
    core.handle(NodeUp(node="n2", at=41.0))  # the broker is back; n1 gets until 51 (+ settle) to beat
    assert not [c for c in core.handle(Tick(now=52.0)) if isinstance(c, WriteLedger)]
    assert core.jobs["j1"].record.state == "running"
    settle(core, now=53.0)
    assert (core.jobs["j1"].record.node, core.jobs["j1"].record.attempt) == ("n2", 2)


def test_a_freeze_ends_after_its_limit_and_a_lone_node_never_freezes() -> None:
    core = two_nodes_one_job(on_node_lost="replace", freeze_limit=60.0)
    core.handle(submit("j1", nodes=["n1"]))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    core.handle(NodeDown(node="n2", at=20.0))
    assert not [c for c in core.handle(Tick(now=79.0)) if isinstance(c, WriteLedger)]
    assert [c.ledger.allocations for c in core.handle(Tick(now=80.0)) if isinstance(c, WriteLedger)] == [()]
    lone = RegionCore("eu", policy=Policy(on_node_lost="fail"))
    lone.handle(OfferSeen(offer=offer("n1")))
    lone.handle(submit("j1"))
    settle(lone)
    running_on(lone, "j1", "n1")
    lone.handle(NodeDown(node="n1", at=20.0))
    assert not lone.frozen(22.0)
    lone.handle(Tick(now=22.0))
    assert lone.jobs["j1"].record.state == "lost"


def test_a_node_known_only_from_its_ledger_at_recovery_gets_a_grace() -> None:
    core = two_nodes_one_job(on_node_lost="replace", node_grace=10.0)
    core.handle(submit("j1", nodes=["n1"]))
    claim = core.handle(Tick(now=11.0))[0]
    assert isinstance(claim, WriteLedger)
    core.handle(ClaimWritten(node="n1", revision=3))
    placed = [c.record for c in core.handle(Tick(now=11.0)) if isinstance(c, WriteJob)]
    fresh = RegionCore("eu", policy=core.policy)
    fresh.handle(Recovered(ledgers={"n1": (claim.ledger, 3)}, records=tuple(placed), at=100.0))
    fresh.handle(NodeUp(node="n2", at=100.1))
    fresh.handle(OfferSeen(offer=offer("n2")))
    assert not [c for c in fresh.handle(Tick(now=111.0)) if isinstance(c, WriteLedger)]
    settle(fresh, now=112.0)
    assert (fresh.jobs["j1"].record.node, fresh.jobs["j1"].record.attempt) == ("n2", 2)


def test_a_device_listed_twice_in_an_offer_is_handed_out_once() -> None:
    core = RegionCore("eu")
    doubled = Offer(node="n1", region="eu", cores=[0, 0], gpus=["g", "g"], memory=GiB, expires_at=1e9)
    core.handle(OfferSeen(offer=doubled))
    core.handle(submit("a", cpu=1, gpu=1))
    core.handle(submit("b", cpu=1, gpu=1))
    claims = [c for c in core.handle(Tick(now=11.0)) if isinstance(c, WriteLedger)]
    assert [a.job for a in claims[0].ledger.allocations] == ["a"]


def test_pending_reason_names_what_blocks_even_on_an_empty_node() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=1)))
    core.handle(submit("busy", cpu=1))
    settle(core)
    core.handle(submit("needs-gpu", cpu=1, gpu=1))
    core.handle(submit("needs-cpu", cpu=1))
    core.handle(Tick(now=12.0))
    assert "too little gpu on 1 node" in core.jobs["needs-gpu"].record.reason  # not "too little cpu"
    waiting = core.jobs["needs-cpu"].record
    assert waiting.reason.startswith("pending: waiting for capacity: 1 node can run it")
    assert waiting.decision is not None
    assert waiting.decision.filtered == {"in use now (fits once allocations finish)": 1}


def test_preemption_decision_scores_the_node_before_the_job_takes_it() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=2)))
    core.handle(submit("low-1", cpu=1, priority="low"))
    settle(core, now=11.0)
    core.handle(submit("low-2", cpu=1, priority="low"))
    settle(core, now=12.0)
    core.handle(Submitted(spec=Submit(id="urgent", command=["x"], cpu=1, priority="urgent"), at=20.0))
    claim = next(c for c in core.handle(Tick(now=21.0)) if isinstance(c, WriteLedger))
    assert sorted(a.job for a in claim.ledger.allocations) == ["low-1", "urgent"]  # the youngest low went
    decision = core.jobs["urgent"].decision
    assert decision is not None
    assert decision.victims == ("low-2",)
    assert decision.chosen is not None
    assert decision.chosen.score[1] == 0


def _share_core(on_shrink: str) -> RegionCore:
    from federation.core.policy import Policy, Quota

    policy = Policy(tenants={"t": Quota(share=0.5)}, on_shrink=on_shrink)  # type: ignore[arg-type]
    core = RegionCore("eu", policy=policy)
    core.handle(OfferSeen(offer=offer("n1", cpu=8)))
    for i in range(4):  # half of 8 cores
        core.handle(Submitted(spec=Submit(id=f"t{i}", command=["x"], tenant="t"), at=10.0 + i))
    settle(core, now=20.0)
    assert sum(1 for v in core.jobs.values() if v.record.state == "placed") == 4
    return core


def test_share_quota_follows_capacity_and_drains_by_default() -> None:
    core = _share_core("drain")
    core.handle(OfferSeen(offer=offer("n1", cpu=4)))  # capacity halves: the quota is now 2 cores
    core.handle(Submitted(spec=Submit(id="more", command=["x"], tenant="t"), at=30.0))
    commands = core.handle(Tick(now=31.0))
    assert not [c for c in commands if isinstance(c, WriteLedger)], "running work drains, nothing is killed"
    assert "quota: tenant t would use 5 cpu of its 2" in core.jobs["more"].record.reason


def test_share_quota_shrink_preempts_the_youngest_when_the_policy_says_so() -> None:
    core = _share_core("preempt")
    core.handle(OfferSeen(offer=offer("n1", cpu=4)))
    claims = [c for c in core.handle(Tick(now=31.0)) if isinstance(c, WriteLedger)]
    assert sorted(a.job for a in claims[0].ledger.allocations) == ["t0", "t1"]  # t2, t3 were youngest
    core.handle(ClaimWritten(node="n1", revision=500))
    assert [core.jobs[j].record.state for j in ("t2", "t3")] == ["pending", "pending"]
    assert "shrank below use" in core.jobs["t3"].record.history[-2].reason


def test_gang_starts_all_together_or_not_at_all() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=1)))
    core.handle(OfferSeen(offer=offer("n2", cpu=1)))
    core.handle(Submitted(spec=Submit(id="g", command=["x"], cpu=1, gang=3), at=10.0))
    commands = core.handle(Tick(now=11.0))
    assert not [c for c in commands if isinstance(c, WriteLedger)], "room for 2 of 3: nothing is claimed"
    assert "gang of 3 starts all together; room for 2 now" in core.jobs["g"].record.reason
    core.handle(OfferSeen(offer=offer("n3", cpu=1)))
    held = [c for c in core.handle(Tick(now=12.0)) if isinstance(c, WriteLedger)]
    assert sorted(c.node for c in held) == ["n1", "n2", "n3"]
    assert all(a.held and a.members == 3 for c in held for a in c.ledger.allocations)
    revision = 10
    for claim in held:  # phase 1 stored everywhere ...
        revision += 1
        assert core.handle(ClaimWritten(node=claim.node, revision=revision)) == []
    release_holds = [c for c in core.handle(Tick(now=13.0)) if isinstance(c, WriteLedger)]
    assert sorted(c.node for c in release_holds) == ["n1", "n2", "n3"]  # ... then phase 2 lifts the holds
    assert not any(a.held for c in release_holds for a in c.ledger.allocations)
    for claim in release_holds:
        revision += 1
        core.handle(ClaimWritten(node=claim.node, revision=revision))
    record = next(c.record for c in core.handle(Tick(now=14.0)) if isinstance(c, WriteJob))
    assert record.state == "placed"
    assert sorted(record.members) == ["n1", "n2", "n3"]
    for member, node in enumerate(record.members):
        event = JobEvent(node=node, job="g", attempt=1, kind="exited", exit_code=0, member=member, at=15.0)
        core.handle(JobReported(event=event))
        if member < 2:
            assert core.jobs["g"].record.state == "placed"
    assert core.jobs["g"].record.state == "succeeded"


def test_gang_member_claim_conflict_releases_the_others_and_requeues() -> None:
    core = RegionCore("eu")
    for name in ("n1", "n2"):
        core.handle(OfferSeen(offer=offer(name, cpu=1)))
    core.handle(Submitted(spec=Submit(id="g", command=["x"], cpu=1, gang=2), at=10.0))
    held = {c.node: c for c in core.handle(Tick(now=11.0)) if isinstance(c, WriteLedger)}
    core.handle(ClaimWritten(node="n1", revision=5))
    core.handle(
        ClaimConflict(node="n2", ledger=Ledger(node="n2", allocations=(offer_alloc("other"),)), revision=9)
    )
    release = [c for c in core.handle(Tick(now=12.0)) if isinstance(c, WriteLedger)]
    assert [(c.node, c.ledger.allocations) for c in release] == [("n1", ())]
    assert core.pending() == ["g"]
    assert held["n1"].ledger.allocations[0].held


def test_custom_resources_are_offered_claimed_and_explained() -> None:
    core = RegionCore("eu")
    licensed = Offer(
        node="lic", region="eu", cores=[0, 1, 2], memory=GiB, custom={"licence": 2.0}, expires_at=1e9
    )
    core.handle(OfferSeen(offer=licensed))
    for i in range(3):
        core.handle(submit(f"l{i}", custom={"licence": 1.0}))
    core.handle(submit("fpga", custom={"fpga": 1.0}))
    claims = [c for c in core.handle(Tick(now=11.0)) if isinstance(c, WriteLedger)]
    assert sorted(a.job for a in claims[0].ledger.allocations) == ["l0", "l1"]  # two licences, two jobs
    assert all(a.custom == {"licence": 1.0} for a in claims[0].ledger.allocations)
    assert "too little fpga on 1 node" in core.jobs["fpga"].record.reason
    core.handle(ClaimWritten(node="lic", revision=3))
    core.handle(Tick(now=12.0))
    assert core.jobs["l2"].record.reason.startswith("pending: waiting for capacity")


def test_custom_resource_quota_holds_a_tenant_back() -> None:
    from federation.core.policy import Policy, Quota

    policy = Policy(tenants={"t": Quota(custom={"licence": 1.0})})
    core = RegionCore("eu", policy=policy)
    licensed = Offer(
        node="lic", region="eu", cores=[0, 1], memory=GiB, custom={"licence": 4.0}, expires_at=1e9
    )
    core.handle(OfferSeen(offer=licensed))
    core.handle(submit("a", tenant="t", custom={"licence": 1.0}))
    core.handle(submit("b", tenant="t", custom={"licence": 1.0}))
    claims = [c for c in core.handle(Tick(now=11.0)) if isinstance(c, WriteLedger)]
    assert [a.job for a in claims[0].ledger.allocations] == ["a"]
    assert core.jobs["b"].record.reason == "pending: quota: tenant t would use 2 licence of 1"


def test_a_lender_reclaims_its_custom_resource_quota_from_a_borrower() -> None:
    from federation.core.policy import Policy, Quota

    policy = Policy(
        tenants={t: Quota(cohort="lab", custom={"licence": 1.0}) for t in ("a", "b")}, backoff=0.0
    )
    core = RegionCore("eu", policy=policy)
    licensed = Offer(
        node="lic", region="eu", cores=[0, 1, 2], memory=GiB, custom={"licence": 2.0}, expires_at=1e9
    )
    core.handle(OfferSeen(offer=licensed))
    core.handle(Submitted(spec=Submit(id="a1", command=["x"], tenant="a", custom={"licence": 1.0}), at=10.0))
    settle(core, now=11.0)
    core.handle(Submitted(spec=Submit(id="a2", command=["x"], tenant="a", custom={"licence": 1.0}), at=12.0))
    settle(core, now=13.0)  # a borrows b's licence
    assert core.jobs["a2"].record.state == "placed"
    core.handle(Submitted(spec=Submit(id="b1", command=["x"], tenant="b", custom={"licence": 1.0}), at=14.0))
    claims = [c for c in core.handle(Tick(now=15.0)) if isinstance(c, WriteLedger)]
    assert [a.job for a in claims[0].ledger.allocations] == ["a1"]  # the borrowed one (a2) goes
    assert "reclaiming quota for tenant b" in core.jobs["b1"].record.reason
    core.handle(ClaimWritten(node="lic", revision=50))
    claims = [c for c in core.handle(Tick(now=16.0)) if isinstance(c, WriteLedger)]
    assert sorted(a.job for a in claims[0].ledger.allocations) == ["a1", "b1"]


def test_a_victim_cancelled_while_its_preemption_is_written_stays_cancelled() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1", cpu=1)))
    core.handle(submit("low", cpu=1, priority="low"))
    settle(core, now=11.0)
    core.handle(Submitted(spec=Submit(id="urgent", command=["x"], cpu=1, priority="urgent"), at=20.0))
    claim = next(c for c in core.handle(Tick(now=21.0)) if isinstance(c, WriteLedger))
    assert core.jobs["urgent"].decision is not None
    assert core.jobs["urgent"].decision.victims == ("low",)
    core.handle(CancelRequested(job="low", reason="cancelled by user", at=21.5))
    core.handle(ClaimWritten(node=claim.node, revision=200))
    assert core.jobs["low"].record.state == "cancelled"  # not preempted, not queued again
    assert core.jobs["urgent"].record.state == "placed"


def test_an_illegal_move_is_our_bug_and_raises() -> None:
    from federation.errors import LocalProtocolError

    core = RegionCore("eu")
    core.handle(submit("j"))
    core.handle(CancelRequested(job="j", reason="cancelled by user", at=11.0))
    with pytest.raises(LocalProtocolError, match="no move from cancelled to running"):
        core.move("j", "running", 12.0, "running on n1")
