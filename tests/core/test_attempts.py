"""Attempts, driven through the pure core: a retry is a new attempt from the moment the job goes
back to ``pending``, so within one attempt a job record only moves forward (I5), and the reason
says what ended the old attempt and what happens next."""

from __future__ import annotations

from federation.core.events import (
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
from federation.schemas import JobEvent, JobRecord, Ledger, Submit
from tests.core.test_region_core import offer, running_on, settle, submit, two_nodes_one_job

AGENT_RESTARTED = "the agent restarted while this attempt ran; not re-run"


def written(commands: list[object]) -> list[tuple[str, int, str]]:
    """(state, attempt, node) of every job record written, in order."""
    return [(c.record.state, c.record.attempt, c.record.node) for c in commands if isinstance(c, WriteJob)]


def test_a_replaced_attempt_goes_back_to_pending_already_as_the_next_attempt() -> None:
    core = two_nodes_one_job()
    core.handle(submit("j1", nodes=["n1"], on_node_lost="replace"))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    requeued = core.handle(Tick(now=22.0))
    # attempt 1's release is in flight: the record written meanwhile is the requeued one
    assert written(requeued) == [("pending", 2, "")]
    requeue = core.jobs["j1"].record.history[-1]  # (the reason field now says why attempt 2 waits)
    assert requeue.state == "pending"
    assert requeue.reason == "node n1 lost (no heartbeat); replaced: retry 2 of 3"
    (release,) = [c for c in requeued if isinstance(c, WriteLedger)]
    core.handle(ClaimWritten(node=release.node, revision=150))
    out = settle(core, now=22.0)
    assert written(out)[-1] == ("placed", 2, "n2")
    assert [t.state for t in core.jobs["j1"].record.history] == [
        "pending",
        "placed",
        "running",
        "pending",
        "placed",
    ]


def test_an_attempt_the_agent_lost_is_replaced_with_a_reason_that_reads_in_order() -> None:
    core = two_nodes_one_job(on_node_lost="replace")
    core.handle(submit("j1", nodes=["n1"]))
    settle(core)
    running_on(core, "j1", "n1")
    lost = JobEvent(node="n1", job="j1", attempt=1, kind="lost", reason=AGENT_RESTARTED, at=20.0)
    core.handle(JobReported(event=lost))
    record = core.jobs["j1"].record
    assert (record.state, record.attempt, record.node) == ("pending", 2, "")
    assert record.reason == f"attempt 1 lost on n1 ({AGENT_RESTARTED}); replaced: retry 2 of 3"


def test_an_attempt_lost_with_no_attempts_left_ends_lost_and_says_it_was_not_replaced() -> None:
    core = two_nodes_one_job(on_node_lost="replace")
    core.handle(submit("j1", nodes=["n1"], max_attempts=1))
    settle(core)
    running_on(core, "j1", "n1")
    lost = JobEvent(node="n1", job="j1", attempt=1, kind="lost", reason=AGENT_RESTARTED, at=20.0)
    core.handle(JobReported(event=lost))
    record = core.jobs["j1"].record
    assert (record.state, record.attempt) == ("lost", 1)
    assert record.reason == (
        f"attempt 1 lost on n1 ({AGENT_RESTARTED}); not replaced: no attempts left (1 of 1)"
    )


def test_a_refused_attempt_is_requeued_as_the_next_attempt_and_placed_as_that_attempt() -> None:
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    refused = JobEvent(node="n1", job="j1", attempt=1, kind="refused", reason="busy", at=20.0)
    core.handle(JobReported(event=refused))
    commands = core.handle(Tick(now=20.0))
    assert written(commands) == [("pending", 2, "")]
    assert core.jobs["j1"].record.history[-1].reason == "refused by n1: busy; retry 2 of 3"
    core.handle(ClaimWritten(node="n1", revision=200))  # the release
    claims = [c for c in core.handle(Tick(now=21.5)) if isinstance(c, WriteLedger)]
    assert [(a.job, a.attempt) for a in claims[0].ledger.allocations] == [("j1", 2)]
    core.handle(ClaimWritten(node="n1", revision=201))
    assert written(core.handle(Tick(now=21.5))) == [("placed", 2, "n1")]


def test_a_preempted_victim_is_recorded_preempted_then_pending_as_its_next_attempt() -> None:
    core = RegionCore("eu", policy=Policy(backoff=0.0))
    core.handle(OfferSeen(offer=offer("n1", cpu=1)))
    core.handle(submit("low", cpu=1, priority="low"))
    settle(core)
    core.handle(Submitted(spec=Submit(id="urgent", command=["x"], cpu=1, priority="urgent"), at=20.0))
    claim = next(c for c in core.handle(Tick(now=21.0)) if isinstance(c, WriteLedger))
    core.handle(ClaimWritten(node=claim.node, revision=300))
    records = {c.record.id: c.record for c in core.handle(Tick(now=21.0)) if isinstance(c, WriteJob)}
    victim = records["low"]
    assert (victim.state, victim.attempt, victim.node) == ("pending", 2, "")
    assert [t.state for t in victim.history][-3:] == ["placed", "preempted", "pending"]
    assert victim.history[-1].reason == "preempted on n1 by urgent; retry 2 of 3"


def test_a_report_of_the_replaced_attempt_changes_nothing_while_the_job_waits() -> None:
    core = RegionCore("eu", policy=Policy(on_node_lost="replace"))
    core.handle(OfferSeen(offer=offer("n1")))
    core.handle(submit("j1"))
    settle(core)
    running_on(core, "j1", "n1")
    core.handle(NodeDown(node="n1", at=20.0))
    core.handle(Tick(now=22.0))  # replaced; the only node is down, so attempt 2 waits
    before = core.jobs["j1"].record
    assert (before.state, before.attempt) == ("pending", 2)
    for attempt in (1, 2):  # the old attempt's exit, or a report naming the waiting attempt
        event = JobEvent(node="n1", job="j1", attempt=attempt, kind="exited", exit_code=0, at=23.0)
        core.handle(JobReported(event=event))
    assert core.jobs["j1"].record == before


def test_recovery_adopts_a_claim_of_the_waiting_attempt_and_releases_one_of_the_old() -> None:
    """A scheduler that died with a requeued record (pending, attempt 2) stored: a claim of
    attempt 2 found in a ledger is adopted; a leftover allocation of attempt 1 is released."""
    source = RegionCore("eu", policy=Policy(backoff=0.0))
    source.handle(OfferSeen(offer=offer("n1")))
    source.handle(submit("j1"))
    settle(source)
    refused = JobEvent(node="n1", job="j1", attempt=1, kind="refused", reason="busy", at=20.0)
    source.handle(JobReported(event=refused))
    release = next(c for c in source.handle(Tick(now=20.0)) if isinstance(c, WriteLedger))
    old_ledger = source.nodes["n1"].current()  # still holding attempt 1
    record: JobRecord = source.jobs["j1"].record
    assert (record.state, record.attempt) == ("pending", 2)
    source.handle(ClaimWritten(node="n1", revision=7))
    claim = next(c for c in source.handle(Tick(now=21.0)) if isinstance(c, WriteLedger))
    assert [(a.job, a.attempt) for a in claim.ledger.allocations] == [("j1", 2)]
    assert release.ledger.allocations == ()

    adopting = RegionCore("eu")
    adopting.handle(Recovered(ledgers={"n1": (claim.ledger, 8)}, records=(record,), at=30.0))
    adopted = adopting.jobs["j1"].record
    assert (adopted.state, adopted.attempt, adopted.node) == ("placed", 2, "n1")

    releasing = RegionCore("eu")
    releasing.handle(Recovered(ledgers={"n1": (old_ledger, 6)}, records=(record,), at=30.0))
    assert releasing.jobs["j1"].record.state == "pending"
    freed = [c for c in releasing.handle(Tick(now=30.0)) if isinstance(c, WriteLedger)]
    assert [c.ledger.allocations for c in freed] == [()]


def test_a_retry_stored_by_an_earlier_version_is_placed_as_the_attempt_after_it() -> None:
    """Before retries carried their own number, a requeued record kept the old attempt's number
    and node (``pending, 1, n1``): after an upgrade it is placed as attempt 2, never 1 again."""
    core = RegionCore("eu")
    core.handle(OfferSeen(offer=offer("n1")))
    older = JobRecord(
        id="j1",
        region="eu",
        spec=Submit(id="j1", command=["true"]),
        state="pending",
        attempt=1,
        node="n1",
        reason="refused by n1: busy; retry 2 of 3",
    )
    core.handle(Recovered(ledgers={"n1": (Ledger(node="n1"), 3)}, records=(older,), at=30.0))
    core.handle(NodeUp(node="n1", at=30.0))
    claims = [c for c in core.handle(Tick(now=31.0)) if isinstance(c, WriteLedger)]
    assert [(a.job, a.attempt) for a in claims[0].ledger.allocations] == [("j1", 2)]
    core.handle(ClaimWritten(node="n1", revision=4))
    assert written(core.handle(Tick(now=31.0))) == [("placed", 2, "n1")]
