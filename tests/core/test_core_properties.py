"""Property tests: random interleavings of submissions, offers, claim outcomes, reports, cancels
and a foreign writer, against a compare-and-set store; the invariants are checked after every step."""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from federation.core import feasibility
from federation.core.events import (
    CancelRequested,
    ClaimConflict,
    ClaimWritten,
    Command,
    Event,
    JobReported,
    NodeDown,
    NodeUp,
    OfferSeen,
    Submitted,
    Tick,
    WriteJob,
    WriteLedger,
)
from federation.core.planning import Pass
from federation.core.policy import Policy, Quota, lower
from federation.core.state import ALLOWED, RegionCore
from federation.schemas import TERMINAL_STATES, Allocation, JobEvent, Ledger, Offer, Submit, Transition

NODES = ("n1", "n2", "n3")


def _forward() -> dict[str, frozenset[str]]:
    """States reachable from each state within one attempt: the state machine without its edges
    back to ``pending`` (those start a new attempt), closed over several steps (writes coalesce)."""
    edges = {state: nexts - {"pending"} for state, nexts in ALLOWED.items()}
    reach: dict[str, frozenset[str]] = {}
    for state in edges:
        seen: set[str] = set()
        todo = list(edges[state])
        while todo:
            step = todo.pop()
            if step not in seen:
                seen.add(step)
                todo.extend(edges.get(step, ()))
        reach[state] = frozenset(seen)
    return reach


WITHIN_ATTEMPT = _forward()
COHORT = ("a", "b")
QUOTA = 2  # cores each for tenants a and b, who lend each other; "free" has no quota
POLICY = Policy(
    tenants={t: Quota(cpu=QUOTA, cohort="x", custom={"lic": 1.0}) for t in COHORT},
    backoff=0.0,
    node_grace=1.0,
)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = RegionCore("eu", policy=POLICY)
        self.now = 1000.0
        self.store: dict[str, tuple[Ledger, int]] = {}
        self.revision = 0
        self.in_flight: list[tuple[WriteLedger, Offer | None]] = []
        self.offers: dict[str, Offer] = {}
        self.states: dict[str, tuple[Transition, ...]] = {}
        self.attempts: dict[str, tuple[int, str]] = {}  # job -> (attempt, state) last written
        self.jobs = 0
        self.events: list[Event] = []
        self.tampered: set[str] = set()  # jobs a foreign writer took an allocation of
        self.outputs: list[list[Command]] = []

    def feed(self, event: Event) -> list[Command]:
        """Hand an event to the core, remembering both for the determinism check."""
        self.events.append(event)
        commands = self.core.handle(event)
        self.outputs.append(commands)
        return commands

    def teardown(self) -> None:
        # determinism: the same events, fed to a fresh core, give exactly the same commands
        replica = RegionCore("eu", policy=POLICY)
        assert [replica.handle(event) for event in self.events] == self.outputs

    # --- helpers ---------------------------------------------------------------------------

    def apply(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, WriteLedger):
                self.in_flight.append((command, self.offers.get(command.node)))  # the offer it was based on
            elif isinstance(command, WriteJob):
                record = command.record
                before = self.states.get(record.id)
                if before is not None:
                    # one write may cover several steps (writes coalesce), never rewrite one
                    assert record.history[: len(before)] == before, f"{record.id}: history rewritten"
                    if before[-1].state in TERMINAL_STATES:
                        assert record.state == before[-1].state, f"{record.id} left a terminal state"
                steps = [t.state for t in record.history]
                for a, b in itertools.pairwise(steps):
                    assert b in ALLOWED[a], f"I5: {record.id}: {a} -> {b}"
                assert steps[-1] == record.state
                self.states[record.id] = record.history
                self.check_attempt(record.id, record.attempt, record.state)

    def check_attempt(self, job: str, attempt: int, state: str) -> None:
        """I5 per attempt: the attempt number never falls, and within one attempt the state only
        moves forward (a retry goes back to ``pending`` as a higher attempt, never the same one)."""
        before = self.attempts.get(job)
        if before is not None:
            was_attempt, was_state = before
            assert attempt >= was_attempt, f"{job}: attempt {was_attempt}, then {attempt}"
            if attempt == was_attempt and state != was_state:
                assert state in WITHIN_ATTEMPT[was_state], (
                    f"I5: {job} moved back within attempt {attempt}: {was_state} -> {state}"
                )
        self.attempts[job] = (attempt, state)

    def check_proposal(self, command: WriteLedger, offer: Offer | None) -> None:
        stored = self.store.get(command.node, (Ledger(node=command.node), 0))[0]
        kept = {a.job for a in stored.allocations}
        additions = [a for a in command.ledger.allocations if a.job not in kept]
        proposed = {a.job for a in command.ledger.allocations}
        for removed in (a for a in stored.allocations if a.job not in proposed):
            record = self.core.jobs[removed.job].record if removed.job in self.core.jobs else None
            if record is not None and record.state in ("placed", "running") and record.node == command.node:
                # a live attempt removed: only a strictly higher-priority addition, or a cohort
                # member reclaiming the quota the victim's tenant borrowed, may do that
                reclaim = removed.tenant in COHORT and (
                    not additions or any(a.tenant in COHORT and a.tenant != removed.tenant for a in additions)
                )
                assert reclaim or any(lower(removed.priority, a.priority) for a in additions), (
                    f"{removed.job} ({removed.priority}) preempted without a higher-priority job"
                )
        if not additions:
            return
        assert offer is not None, "a claim without an offer"
        cores = [c for a in command.ledger.allocations for c in a.cores]
        gpus = [g for a in command.ledger.allocations for g in a.gpus]
        assert len(cores) == len(set(cores)), "I1: a core claimed twice"
        assert len(gpus) == len(set(gpus)), "I1: a gpu claimed twice"
        for allocation in additions:
            assert set(allocation.cores) <= set(offer.cores), "I1: claimed core not offered"
            assert set(allocation.gpus) <= set(offer.gpus), "I1: claimed gpu not offered"
        assert sum(a.memory for a in command.ledger.allocations) <= offer.memory, "I1: memory"
        assert len(command.ledger.allocations) <= offer.max_allocations, "I1: slots"
        if any(a.custom.get("lic") for a in additions):  # a claim that uses the resource must fit it
            used = sum(a.custom.get("lic", 0.0) for a in command.ledger.allocations)
            assert used <= offer.custom.get("lic", 0.0), "I1: custom resource"

    # --- rules -------------------------------------------------------------------------------

    @rule(
        node=st.sampled_from(NODES),
        cores=st.integers(0, 4),
        gpus=st.integers(0, 2),
        memory=st.integers(0, 4),
        slots=st.integers(1, 4),
        licences=st.integers(0, 2),
    )
    def offer(self, node: str, cores: int, gpus: int, memory: int, slots: int, licences: int) -> None:
        offer = Offer(
            node=node,
            region="eu",
            cores=list(range(cores)),
            gpus=[f"g{i}" for i in range(gpus)],
            memory=memory * 1024,
            max_allocations=slots,
            expires_at=self.now + 30,
            custom={"lic": float(licences)} if licences else {},
        )
        self.offers[node] = offer
        self.feed(OfferSeen(offer=offer))

    @rule(
        cpu=st.integers(0, 3),
        gpu=st.integers(0, 2),
        memory=st.integers(0, 3),
        only=st.sampled_from([(), ("n1",), ("n2", "n3")]),
        priority=st.sampled_from(["urgent", "low", "medium"]),
        tenant=st.sampled_from(["a", "b", "free"]),
        gang=st.sampled_from([1, 1, 1, 2, 3]),
        lic=st.sampled_from([0, 0, 1]),
        lost=st.sampled_from(["", "replace", "wait=2s"]),
    )
    def submit(
        self,
        cpu: int,
        gpu: int,
        memory: int,
        only: tuple[str, ...],
        priority: str,
        tenant: str,
        gang: int,
        lic: int,
        lost: str,
    ) -> None:
        self.jobs += 1
        spec = Submit(
            id=f"j{self.jobs}",
            command=["x"],
            cpu=cpu,
            gpu=gpu,
            memory=memory * 1024,
            nodes=list(only),
            priority=priority,
            tenant=tenant,
            gang=gang,
            custom={"lic": float(lic)} if lic else {},
            on_node_lost=lost,
        )  # type: ignore[arg-type]
        self.feed(Submitted(spec=spec, at=self.now))

    @rule(job=st.integers(1, 40))
    def duplicate(self, job: int) -> None:
        if job <= self.jobs:
            self.feed(Submitted(spec=Submit(id=f"j{job}", command=["x"]), at=self.now))

    @rule()
    def tick(self) -> None:
        self.now += 1
        down, frozen = set(self.core.down), self.core.frozen(self.now)
        before = {job: len(view.record.history) for job, view in self.core.jobs.items()}
        self.apply(self.feed(Tick(now=self.now)))
        for job, view in self.core.jobs.items():
            for step in view.record.history[before.get(job, 0) :]:
                if step.reason.startswith("node "):  # a node-loss decision made by this tick
                    lost = step.reason.split()[1]
                    assert lost in down, f"{job} moved for the loss of {lost}, which was alive"
                    assert not frozen, f"{job} moved for a node loss while every node was silent"

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 10), lose_answer=st.booleans())
    def resolve(self, index: int, lose_answer: bool) -> None:
        command, offer = self.in_flight.pop(index % len(self.in_flight))
        current, revision = self.store.get(command.node, (None, 0))
        if revision == command.expected_revision:
            self.check_proposal(command, offer)  # only a write the store accepts must keep I1
            self.revision += 1
            self.store[command.node] = (command.ledger, self.revision)
            if lose_answer:  # the write landed but its answer was lost: the daemon reads back
                event = ClaimConflict(node=command.node, ledger=command.ledger, revision=self.revision)
                self.apply(self.feed(event))
            else:
                self.apply(self.feed(ClaimWritten(node=command.node, revision=self.revision)))
        else:
            self.apply(self.feed(ClaimConflict(node=command.node, ledger=current, revision=revision)))

    @precondition(lambda self: self.store)
    @rule(node=st.sampled_from(NODES))
    def foreign_writer_drops_first_allocation(self, node: str) -> None:
        if node in self.store and self.store[node][0].allocations:
            ledger, _ = self.store[node]
            self.revision += 1
            self.store[node] = (Ledger(node=node, allocations=ledger.allocations[1:]), self.revision)
            self.tampered.add(ledger.allocations[0].job)

    @precondition(lambda self: self.store)
    @rule(
        node=st.sampled_from(NODES),
        kind=st.sampled_from(["started", "exited", "failed", "refused"]),
        code=st.integers(0, 2),
        stale=st.booleans(),
    )
    def report(self, node: str, kind: str, code: int, stale: bool) -> None:
        ledger = self.store.get(node, (Ledger(node=node), 0))[0]
        if not ledger.allocations:
            return
        allocation = ledger.allocations[0]
        event = JobEvent(
            node=node,
            job=allocation.job,
            attempt=allocation.attempt + (1 if stale else 0),
            kind=kind,
            exit_code=code,
            at=self.now,
            member=allocation.member,
        )  # type: ignore[arg-type]
        self.feed(JobReported(event=event))

    @rule(job=st.integers(1, 40))
    def cancel(self, job: int) -> None:
        self.feed(CancelRequested(job=f"j{job}", reason="test", at=self.now))

    @rule(node=st.sampled_from(NODES))
    def node_down(self, node: str) -> None:
        self.feed(NodeDown(node=node, at=self.now))

    @rule(node=st.sampled_from(NODES))
    def node_up(self, node: str) -> None:
        self.feed(NodeUp(node=node, at=self.now))

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def no_eligible_job_is_left_behind_where_it_fits(self) -> None:
        if not self.outputs or not self.events or not isinstance(self.events[-1], Tick):
            return
        for name, node in self.core.nodes.items():
            if node.proposal is not None or not node.alive or node.offer is None or node.free is None:
                continue
            if node.offer.expires_at <= self.now:
                continue
            for job in self.core.pending():
                view = self.core.jobs[job]
                if view.record.spec.gang > 1:
                    continue  # a gang needs room for every member at once, not just this node's
                if view.record.not_before > self.now or view.claiming or job in self.core.allocated:
                    continue  # backing off, being claimed, or its last attempt not yet released
                accounts = Pass(self.core, self.now).quotas.accounts
                spec = view.record.spec
                if accounts.admit(spec).kind == "over" or any(x > 0 for x in accounts.cohort_excess(spec)):
                    continue  # held back by its tenant's quota, or waiting for a reclaim
                if any(n.proposal_victims for n in self.core.nodes.values()) or self.core.reclaims:
                    continue  # a reclaim under way holds back borrowing: judged once it resolves
                assert feasibility.room(node.free, view.record.spec) is not None, (
                    f"{job} fits {name} but was left pending"
                )

    @invariant()
    def a_tenant_exceeds_its_quota_only_by_borrowing_from_its_cohort(self) -> None:
        use = dict.fromkeys(COHORT, 0)
        for ledger, _ in self.store.values():
            for allocation in ledger.allocations:
                if allocation.tenant in use:
                    use[allocation.tenant] += allocation.cpu
        assert sum(use.values()) <= QUOTA * len(COHORT), f"cohort over its summed quota: {use}"
        licences = sum(
            a.custom.get("lic", 0.0)
            for ledger, _ in self.store.values()
            for a in ledger.allocations
            if a.tenant in COHORT
        )
        assert licences <= 1.0 * len(COHORT), f"cohort holds {licences} licences, more than its quotas"

    @invariant()
    def a_job_is_in_at_most_one_ledger(self) -> None:
        seen: dict[tuple[str, int], str] = {}
        attempts: dict[str, int] = {}
        for node, (ledger, _) in self.store.items():
            for allocation in ledger.allocations:
                key = (allocation.job, allocation.member)
                assert key not in seen, f"I2: {key} on {seen[key]} and {node}"
                seen[key] = node
                # every stored member of a job belongs to one attempt
                assert attempts.setdefault(allocation.job, allocation.attempt) == allocation.attempt

    @invariant()
    def a_gang_runs_whole_or_not_at_all(self) -> None:
        members: dict[str, list[Allocation]] = {}
        for ledger, _ in self.store.values():
            for allocation in ledger.allocations:
                if allocation.members > 1:
                    members.setdefault(allocation.job, []).append(allocation)
        for job, stored in members.items():
            if job in self.tampered:
                continue  # a foreign writer removed a member: the core only learns at its next write
            if any(not a.held for a in stored):  # started (holds lifted) somewhere ...
                state = self.core.jobs[job].record.state
                # ... only once all members were stored, or while a failed gang is being released
                complete = len(stored) == stored[0].members
                assert complete or state not in ("placed", "running"), f"{job}: a partial gang runs"

    @invariant()
    def stored_ledgers_never_share_a_device(self) -> None:
        for ledger, _ in self.store.values():
            cores = [c for a in ledger.allocations for c in a.cores]
            gpus = [g for a in ledger.allocations for g in a.gpus]
            assert len(cores) == len(set(cores))
            assert len(gpus) == len(set(gpus))

    @invariant()
    def placed_jobs_are_where_the_store_says(self) -> None:
        for job, view in self.core.jobs.items():
            if view.record.state in ("placed", "running") and view.record.node in self.store:
                ledger = self.store[view.record.node][0]
                found = ledger.find(job)
                assert found is None or found.attempt == view.record.attempt


SchedulerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestScheduler = SchedulerMachine.TestCase
