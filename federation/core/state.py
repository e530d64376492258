"""The region's scheduler as a pure state machine: ``RegionCore.handle(event) -> list[Command]``.

Theory of operation
-------------------
The core holds the region's view: every node's latest offer, its ledger and the ledger's KV
revision, and every job's record. Events update the view; a :class:`Tick` runs one scheduling
pass and emits the writes the view needs:

* **Claims.** A pass (:mod:`federation.core.planning`) takes pending jobs in queue order and
  fits them onto nodes, preempting or reclaiming quota where the policy allows. Everything placed
  on one node in one pass, plus any releases, preemptions and lifted gang holds waiting for that
  node, becomes *one* proposed ledger, written by compare-and-set on the revision the core last saw
  (:class:`WriteLedger`). While a proposal is in flight the node takes no other proposal.
  :class:`ClaimWritten` makes the proposal the ledger and moves its jobs to ``placed``;
  :class:`ClaimConflict` adopts the ledger found in the store and returns the jobs to the queue
  (unless the stored ledger *is* the proposal: a write whose answer was lost counts as written).
  So concurrent writers can make a claim *fail*, never overlap.
* **Gangs** are claimed in two phases: every member is stored with ``held`` set (agents do not
  start held allocations), then the holds are lifted on every node; a failed member claim releases
  the members already stored and the gang waits again.
* **Retries.** A preempted or refused attempt goes back to the queue after the policy's backoff
  (``not_before``) until ``max_attempts``; it is placed again only once its old allocation's
  release is stored (so two attempts never sit in ledgers at once). The record that goes back to
  ``pending`` already carries the new attempt's number (``running, 1 -> pending, 2 -> placed,
  2``), so a retry is a new attempt starting over, never an attempt moving backwards.
* **Job records** move forward only (``pending -> placed -> running -> terminal``, and within
  one attempt never back); each change marks the record dirty, and a tick emits one
  :class:`WriteJob` per dirty record. A job being claimed is not written until the claim
  settles, so a placed job costs one record write.
* **Node loss.** Liveness comes from heartbeats only: :class:`NodeDown` (the heartbeat's TTL
  marker) and :class:`NodeUp` (a heartbeat from a node counted down). A lost node's placed and
  running jobs follow ``on_node_lost`` (the job's, else the policy's): ``fail`` ends them ``lost``;
  ``replace`` requeues them as a new attempt; ``wait=D`` keeps the allocation ``D`` seconds from
  the loss (nothing moves if the node returns in time), then replaces. Either way the allocation is
  released from the lost node's ledger, so a node that returns stops its stale copies, and its
  reports, naming an attempt that is no longer current, change nothing. When *every* node is
  down at once the broker, not the nodes, is the likely culprit: decisions freeze (for at most
  ``freeze_limit``), and when a heartbeat returns, the nodes still silent get ``node_grace`` more
  seconds. No decision comes before ``node_settle`` seconds after the loss, so that markers
  arriving spread over a beat still count as "at once". Nodes known only from the ledgers at
  recovery count as silent from recovery, with the same grace.
* **Order of writes** makes crashes harmless: a claim is written before the job record says
  ``placed`` (on recovery, an allocation with no record gets its record rebuilt from the
  allocation; a pending record with an allocation is adopted as placed). A terminal record and the
  release are written in the same round, in either order: recovery releases allocations of
  terminal jobs, and a running record whose release landed first is finished by the agent's
  report, which is acknowledged only after the record is stored.

Invariants kept here: I1 (allocations never exceed the offer, by construction of each proposal
from :class:`~federation.core.capacity.Free`), I2 (a job attempt, or each member of a gang's
attempt, is in at most one ledger: a job is re-placed only once no ledger holds it, and a
submission for a job already allocated adopts that allocation), I4/I5 (records only move
forward; a record's attempt number never falls, and within one attempt the state only moves
forward; a terminal record never changes), I6 (reports carrying another node, attempt or an
older epoch are ignored), I7 (a duplicate submission or report changes nothing). The quota invariant
(a tenant above its quota only by borrowing from its cohort) is kept by
:mod:`federation.core.quota`, which counts usage conservatively.

No I/O, no clock, no randomness, no logging: same events, same commands.
"""

from __future__ import annotations

import msgspec

from federation.core import capacity
from federation.core.cadence import Cadence, region_cadence, settle
from federation.core.dependencies import Dependencies
from federation.core.events import (
    CancelPassed,
    CancelRequested,
    ClaimConflict,
    ClaimWritten,
    Command,
    DependencyState,
    Event,
    HandOffAnswered,
    HandOffOffered,
    JobReported,
    NodeDown,
    NodeUp,
    OfferSeen,
    PolicyChanged,
    Recovered,
    Submitted,
    Tick,
    ViewsSeen,
    WriteJob,
    WriteLedger,
)
from federation.core.index import FreeIndex
from federation.core.plan import Plan
from federation.core.planning import Pass
from federation.core.policy import Policy
from federation.core.queueing import Queue
from federation.core.spill import Spill, judge
from federation.core.views import ALLOWED, GangProgress, JobView, NodeView, holds, next_attempt, rebuilt
from federation.errors import LocalProtocolError
from federation.schemas import (
    PRIORITY_RANK,
    TERMINAL_STATES,
    Allocation,
    Capacity,
    Decision,
    JobEvent,
    JobRecord,
    JobState,
    Ledger,
    Submit,
    Transition,
)


class RegionCore:
    """The deterministic scheduler of one region (see the module docstring)."""

    def __init__(self, region: str, epoch: int = 1, policy: Policy | None = None) -> None:
        self.region = region
        self.epoch = epoch
        self.policy = policy or Policy()
        self.index = FreeIndex()
        self.nodes: dict[str, NodeView] = {}
        self.jobs: dict[str, JobView] = {}
        self.queue = Queue()
        self.dirty: set[str] = set()
        self.holders: dict[str, set[str]] = {}  # job -> nodes whose ledger holds an attempt of it
        self.in_flight: set[str] = set()
        self.releasing: set[str] = set()
        self.activating: set[str] = set()
        self.reclaims: set[str] = set()  # jobs within quota waiting for borrowers to give it back
        self.unexplained: set[str] = set()
        self.down: set[str] = set()  # nodes whose heartbeat expired (or not seen since recovery)
        self.silent_since: float | None = None  # when the last node still heard from went silent
        self.spill = Spill()  # cross-region: views of the other regions, hand-offs under way
        self.arrays: dict[str, list[str]] = {}  # job array id -> its elements here, in arrival order
        self.dependencies = Dependencies()  # jobs waiting for others to end
        self._arrivals = 0

    # --- entry point ----------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; only :class:`Tick` and claim results return commands."""
        match event:
            case Tick(now=now):
                return self._tick(now)
            case Submitted():
                self._submitted(event)
            case CancelRequested():
                self._cancel(event)
            case OfferSeen(offer=offer):
                node = self._node(offer.node)
                previous, node.offer = node.offer, offer
                if previous is None or not capacity.Free.same(previous, offer):
                    self._sync(node)
                else:  # a refresh: the same free capacity, and back in the index if it had expired
                    self._index(node)
            case NodeDown(node=name, at=at):
                self._down(self._node(name), at, at)
            case NodeUp(node=name, at=at):
                self._up(self._node(name), at)
            case PolicyChanged(policy=policy):
                self.policy = policy
            case ViewsSeen(views=views):
                self.spill.seen(views)
            case HandOffAnswered():
                self.spill.answered(self, event)
            case CancelPassed():
                self.spill.cancel_passed(event)
            case HandOffOffered():
                return [judge(self, event)]
            case DependencyState():
                self.dependencies.answered(event)
            case JobReported(event=report):
                self._reported(report)
            case ClaimWritten():
                self._claim_written(event)
            case ClaimConflict():
                self._claim_conflict(event)
            case Recovered():
                self._recovered(event)
        return []

    # --- views for daemons and `fed status` -------------------------------------------------------

    def pending(self) -> list[str]:
        """Job ids waiting for placement, in queue order."""
        return [job for _, job in self.queue]

    def _sync(self, node: NodeView) -> None:
        """Recompute a node's free capacity and its place in the index after any change: the index
        holds the nodes a pass may place on (alive, no claim in flight, a free slot); whether
        their offers are still valid depends on the time, and is judged when a pass looks."""
        node.free = capacity.Free.of(node.offer, node.current().allocations) if node.offer else None
        self._index(node)

    def _index(self, node: NodeView) -> None:
        """Put ``node`` in the index, or take it out, by its free capacity as computed."""
        if node.free is not None and node.alive and node.proposal is None and node.free.slots > 0:
            self.index.put(node.name, node.free)
        else:
            self.index.discard(node.name)

    # --- event handlers -------------------------------------------------------------------------

    @property
    def allocated(self) -> dict[str, set[str]]:
        """Jobs held by some ledger (an attempt not yet released), with the nodes holding them."""
        return self.holders

    def waits_for(self, spec: Submit) -> str:
        """Why a job with dependencies may not start yet ("" when it may)."""
        return self.dependencies.blocked(self, list(spec.after))[0] if spec.after else ""

    def array_holding(self) -> dict[str, int]:
        """Per job array, how many of its elements hold an allocation or have a claim in flight
        (what ``array_limit`` counts: conservatively, an attempt counts until its release is
        stored)."""
        out: dict[str, int] = {}
        claiming = {job for name in self.in_flight for job in self.nodes[name].proposal_jobs}
        for job in self.holders.keys() | claiming:
            view = self.jobs.get(job)
            if view is not None and view.record.spec.array:
                out[view.record.spec.array] = out.get(view.record.spec.array, 0) + 1
        return out

    def _hold(self, job: str, node: str) -> None:
        self.holders.setdefault(job, set()).add(node)

    def _unhold(self, job: str, node: str) -> None:
        nodes = self.holders.get(job)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self.holders[job]

    def _node(self, name: str) -> NodeView:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = NodeView(name)
        return node

    def _down(self, node: NodeView, at: float, lost_from: float) -> None:
        if not node.alive:
            return  # a repeated marker (a follower replaying) does not restart the clock
        node.alive, node.down_at, node.lost_from = False, at, lost_from
        self.down.add(node.name)
        if len(self.down) == len(self.nodes):
            self.silent_since = at
        self._sync(node)
        self.unexplained.update(job for _, job in self.queue)  # their reasons may name it

    def _up(self, node: NodeView, at: float) -> None:
        if node.alive:
            return
        if self.silent_since is not None and len(self.down) == len(self.nodes):
            # the first heartbeat after every node went silent: the broker was the likely culprit,
            # so the others get a grace to be heard from again before they count as lost
            for name in self.down:
                other = self.nodes[name]
                other.lost_from = max(other.lost_from, at + self.policy.node_grace)
        self.silent_since = None
        node.alive = True
        self.down.discard(node.name)
        self._sync(node)
        self.unexplained.update(job for _, job in self.queue)

    @property
    def cadence(self) -> Cadence:
        """How often this region's nodes beat and refresh their offers, for its node count and
        budget (:mod:`federation.core.cadence`)."""
        return region_cadence(len(self.nodes), self.policy.node_messages_per_second)

    def frozen(self, now: float) -> bool:
        """True while every node (of two or more) is silent, for at most ``freeze_limit`` seconds.

        Node-loss decisions wait meanwhile: the broker, not the nodes, is the likely culprit.
        """
        return (
            self.silent_since is not None
            and len(self.nodes) >= 2
            and len(self.down) == len(self.nodes)
            and now - self.silent_since < self.policy.freeze_limit
        )

    def _recovered(self, event: Recovered) -> None:
        for name, (ledger, revision) in sorted(event.ledgers.items()):
            node = self._node(name)
            node.ledger, node.revision = ledger, revision
            self._down(node, event.at, event.at + self.policy.node_grace)
            for allocation in ledger.allocations:
                self._hold(allocation.job, name)
        held_gangs = {a.job for n in self.nodes.values() for a in n.current().allocations if a.held}
        for record in sorted(event.records, key=lambda r: (r.submitted_at, r.id)):
            self._add(record, event.at)
            if record.id in held_gangs:
                self._release(record.id)  # a gang half claimed when the scheduler died: start over
            elif record.terminal and record.id in self.holders:
                self._release(record.id)
            elif record.state == "pending" and record.id in self.holders:
                self._adopt(record.id, record.updated_at)
        for job, names in sorted(self.holders.items()):
            if job in self.jobs:
                continue
            found = [a for name in sorted(names) for a in self._node(name).current().members(job)]
            if len(found) == 1 and found[0].members == 1:
                # claimed, then the scheduler died before the record was written: the ledger
                # allocation holds everything needed to rebuild the record, so the agent's reports
                # find the job (the submission's redelivery is then a harmless duplicate)
                self._rebuild(found[0], next(iter(names)))
            else:
                # a gang without a record: release it; the redelivered submission starts it over
                for name in names:
                    node = self._node(name)
                    node.releases.update((a.job, a.attempt) for a in node.current().members(job))
                    self.releasing.add(name)

    def _rebuild(self, allocation: Allocation, node: str) -> None:
        self._add(rebuilt(allocation, node, self.region))
        self.dirty.add(allocation.job)

    def _add(self, record: JobRecord, at: float = 0.0) -> JobView:
        self._arrivals += 1
        view = JobView(record, (PRIORITY_RANK[record.spec.priority], record.submitted_at, self._arrivals))
        self.jobs[record.id] = view
        if record.spec.array:
            self.arrays.setdefault(record.spec.array, []).append(record.id)
        if record.spec.after and record.state == "pending":
            self.dependencies.admitted(record.id)
        if record.state == "pending":
            self.queue.add(view.queued)
            self.unexplained.add(record.id)
        if record.state in ("pending", "forwarded") or record.handoffs:
            self.spill.admitted(self, view, at)
        return view

    def _submitted(self, event: Submitted) -> None:
        spec = event.spec
        if spec.id in self.jobs:
            return  # I7: the id table is the idempotency table
        record = JobRecord(
            id=spec.id,
            region=self.region,
            spec=spec,
            submitted_at=spec.submitted_at or event.at,
            updated_at=event.at,
            traceparent=event.traceparent,
            history=(Transition(state="pending", at=event.at),),
        )
        self._add(record, event.at)
        self.dirty.add(spec.id)
        if spec.id in self.holders:  # a claim written before a crash: adopt it (I2)
            self._adopt(spec.id, event.at)

    def _adopt(self, job: str, at: float) -> None:
        found = [
            (a.member, name, a)
            for name in sorted(self.holders.get(job, ()))
            for a in self._node(name).current().members(job)
        ]
        expected = next_attempt(self.jobs[job].record)
        complete = bool(found) and not any(a.held for _, _, a in found) and len(found) == found[0][2].members
        if not complete or found[0][2].attempt != expected:
            self._release(job)  # an incomplete gang, or an attempt that already ended: start over
            return
        found.sort()
        self.unqueue(job)
        nodes = tuple(name for _, name, _ in found)
        members = nodes if len(nodes) > 1 else ()
        self.move(
            job,
            "placed",
            at,
            "placed on " + ",".join(sorted(set(nodes))),
            node=nodes[0],
            attempt=found[0][2].attempt,
            members=members,
        )

    def _cancel(self, event: CancelRequested) -> None:
        view = self.jobs.get(event.job)
        if view is None and event.job in self.arrays:  # a job array's id: every element of it
            for element in self.arrays[event.job]:
                self._cancel(msgspec.structs.replace(event, job=element))
            return
        if view is None or view.record.terminal:
            return
        if event.tenant and event.tenant != view.record.spec.tenant:
            return  # another tenant's job: as if it did not exist
        if view.claiming:
            view.cancel_pending = event.reason
            return
        if self.spill.cancel(self, view, event.reason, event.at):
            return
        self.unqueue(event.job)
        self.move(event.job, "cancelled", event.at, event.reason)
        self._release(event.job)

    def _reported(self, report: JobEvent) -> None:
        """An agent's report on an attempt: only the current attempt on its node counts (I6).
        A start moves the job to running; an end (exit, failure, loss, refusal) decides its fate
        and releases its allocation."""
        view = self.jobs.get(report.job)
        if view is None or not self._current(view.record, report):
            return  # I6: a stale node, attempt or a report from the future changes nothing
        record = view.record
        if record.terminal:
            self._release(report.job)
            return
        if record.state not in ("placed", "running"):
            return  # e.g. the report of a preempted attempt: its job is already back in the queue
        if report.kind == "started" or (report.kind == "exited" and report.started_at):
            if record.state == "placed":  # an exit report with its start: running, then ended
                where = ",".join(sorted(set(record.members))) if record.members else report.node
                self.move(report.job, "running", report.started_at or report.at, f"running on {where}")
            if report.kind == "started":
                return
        match report.kind:
            case "lost":
                self._lost_by_agent(view.record, report)
            case "refused":
                # local admission said no before anything ran: back to the queue, devices released
                if record.state == "placed":
                    why = f"refused by {report.node}: {report.reason}"
                    self._requeue(report.job, "placed", report.at, why)
                    self._release(report.job)
            case "exited" if record.members:
                if self._member_exited(view.record, report):
                    self._release(report.job)
            case "exited":
                code = report.exit_code if report.exit_code is not None else -1
                state: JobState = "succeeded" if code == 0 else "failed"
                reason = "exited 0" if code == 0 else (report.reason or f"exited with code {code}")
                self.move(
                    report.job,
                    state,
                    report.at,
                    reason,
                    exit_code=code,
                    usage=report.usage,
                    stored=tuple(report.stored),
                )
                self._release(report.job)
            case _:
                why = report.reason or "failed"
                self.move(report.job, "failed", report.at, why, exit_code=report.exit_code)
                self._release(report.job)

    def _current(self, record: JobRecord, report: JobEvent) -> bool:
        """Whether ``report`` is about the record's current attempt, from the node running it (a
        gang: the node of that member), and not from a later epoch than ours."""
        if record.members:  # a gang: the report must come from that member's node
            where = record.members[report.member] if report.member < len(record.members) else ""
        else:
            where = record.node if report.member == 0 else ""
        return where == report.node and record.attempt == report.attempt and report.epoch <= self.epoch

    def _lost_by_agent(self, record: JobRecord, report: JobEvent) -> None:
        """The agent lost track of the attempt (it restarted): the job's node-loss policy decides."""
        lost = f"attempt {record.attempt} lost on {report.node} ({report.reason or 'the agent lost it'})"
        action, _ = self.policy.node_lost(record.spec)
        if action == "fail":
            self.move(report.job, "lost", report.at, f"{lost}; on_node_lost=fail")
        else:
            self._requeue(report.job, record.state, report.at, lost, "lost", backoff=False, replaced=True)
        self._release(report.job)

    def _member_exited(self, record: JobRecord, report: JobEvent) -> bool:
        """A gang member's exit: the gang fails with the first member that fails, and succeeds
        when every member exited 0; until then the exits are kept. True when the gang ended."""
        code = report.exit_code if report.exit_code is not None else -1
        exits = {**record.member_exits, str(report.member): code}
        used = report.usage.plus(record.usage) if report.usage is not None else record.usage
        stored = record.stored + tuple(report.stored)
        if code != 0:  # one member failed: the gang failed; the others are stopped
            why = report.reason or f"member {report.member} exited with code {code}"
            self.move(
                report.job,
                "failed",
                report.at,
                why,
                exit_code=code,
                member_exits=exits,
                usage=used,
                stored=stored,
            )
            return True
        if len(exits) == len(record.members):
            self.move(
                report.job,
                "succeeded",
                report.at,
                "every member exited 0",
                exit_code=0,
                member_exits=exits,
                usage=used,
                stored=stored,
            )
            return True
        self.amend(report.job, member_exits=exits, usage=used, stored=stored, updated_at=report.at)
        return False

    def _claim_written(self, event: ClaimWritten) -> None:
        """The node's proposed ledger is stored: its new jobs are placed (or their gang moves on),
        its activated gang members may start, and its victims go back to the queue."""
        node = self.nodes[event.node]
        assert node.proposal is not None, "claim result without a proposal"
        before = node.current()
        node.ledger, node.revision = node.proposal, event.revision
        node.releases = {key for key in node.releases if holds(node.ledger, key)}
        self.in_flight.discard(node.name)
        if not node.releases:
            self.releasing.discard(node.name)
        for old in before.allocations:
            if node.ledger.find(old.job) is None:
                self._unhold(old.job, node.name)
        placed_at = node.ledger.updated_at
        for job in dict.fromkeys(node.proposal_jobs):  # a gang may have several members here
            self._claimed(self.jobs[job], node, placed_at)
        for job, _ in node.proposal_activations:
            view = self.jobs[job]
            if view.gang is not None:
                view.gang.activating.discard(node.name)
                if not view.gang.activating:
                    self._gang_started(view, placed_at)
        node.activations -= set(node.proposal_activations)
        if not node.activations:
            self.activating.discard(node.name)
        for victim in node.proposal_victims:
            self._preempted(victim, node, placed_at)
        self._settled(node)

    def _claimed(self, view: JobView, node: NodeView, placed_at: float) -> None:
        """A job's allocation on ``node`` is stored: it is placed (a gang member waits for the
        others), then cancelled at once if a cancel arrived while it was being claimed."""
        job = view.record.id
        self._hold(job, node.name)
        if view.gang is not None:
            self._gang_claimed(view, node.name, placed_at)
            return
        view.claiming = ""
        assert node.ledger is not None
        allocation = node.ledger.find(job)
        assert allocation is not None
        why = f"placed on {node.name}"
        if view.decision is not None and view.decision.victims:
            why += f", preempting {', '.join(view.decision.victims)}"
        self.move(
            job,
            "placed",
            placed_at,
            why,
            node=node.name,
            attempt=allocation.attempt,
            decision=view.decision,
        )
        view.decision = None
        if view.cancel_pending:
            self.move(job, "cancelled", placed_at, view.cancel_pending)
            self._release(job)

    def _preempted(self, victim: str, node: NodeView, at: float) -> None:
        """A victim's removal from ``node`` is stored: back to the queue per its retry policy."""
        if self.jobs[victim].record.state not in ("placed", "running"):
            self._release(victim)  # it ended, or was cancelled, while its removal was written
            return
        why = node.proposal_reason or f"preempted on {node.name} by {', '.join(node.proposal_jobs)}"
        self.move(victim, "preempted", at, why)
        self._requeue(victim, "preempted", at, why)
        self._release(victim)  # a gang's other members go too: a gang runs whole or not at all

    def _claim_conflict(self, event: ClaimConflict) -> None:
        node = self.nodes[event.node]
        if node.proposal is not None and event.ledger == node.proposal:
            # the write landed and only its answer was lost: it is a success in every respect
            self._claim_written(ClaimWritten(node=event.node, revision=event.revision))
            return
        node.ledger, node.revision = event.ledger, event.revision
        node.releases = {key for key in node.releases if holds(node.current(), key)}
        if not node.releases:
            self.releasing.discard(node.name)
        stored_jobs = {a.job for a in node.current().allocations}
        for job in [j for j, names in self.holders.items() if node.name in names and j not in stored_jobs]:
            self._unhold(job, node.name)
        for allocation in node.current().allocations:
            self._hold(allocation.job, node.name)
        at = node.current().updated_at
        for job in dict.fromkeys(node.proposal_jobs):
            view = self.jobs[job]
            if view.gang is not None:
                self._gang_failed(view, node.name, at, f"claim on {node.name} lost a race")
                continue
            view.claiming = ""
            stored = node.current().find(job)
            if stored is not None and stored.attempt == next_attempt(view.record):
                # the write landed although its answer was lost: it is our claim (I2)
                self.move(
                    job,
                    "placed",
                    stored.placed_at,
                    f"placed on {node.name}",
                    node=node.name,
                    attempt=stored.attempt,
                )
                if view.cancel_pending:
                    self.move(job, "cancelled", stored.placed_at, view.cancel_pending)
                    self._release(job)
            elif view.cancel_pending:
                self.move(job, "cancelled", at, view.cancel_pending)
            else:
                self.queue.add(view.queued)
            view.decision = None
        # activations stay in node.activations: the next pass proposes them again on the fresh ledger
        self._settled(node)

    def _settled(self, node: NodeView) -> None:
        node.proposal_reason = ""
        node.proposal, node.proposal_jobs, node.proposal_victims = None, [], []
        node.proposal_activations = []
        self.in_flight.discard(node.name)
        self._sync(node)

    # --- gangs --------------------------------------------------------------------------------------

    def _gang_claimed(self, view: JobView, node: str, at: float) -> None:
        """Phase 1 of a gang: one node's held members are stored."""
        gang = view.gang
        assert gang is not None
        gang.pending.discard(node)
        if gang.failed:
            self._gang_failed(view, node, at, gang.failed)
            return
        if gang.pending:
            return
        # phase 2: every member is stored; clear the holds so the agents start them together
        attempt = next_attempt(view.record)
        gang.activating = set(gang.nodes)
        for name in gang.activating:
            self.nodes[name].activations.add((view.record.id, attempt))
            self.activating.add(name)

    def _gang_started(self, view: JobView, at: float) -> None:
        gang = view.gang
        assert gang is not None
        job = view.record.id
        view.claiming, view.gang = "", None
        nodes = tuple(gang.nodes)
        where = ",".join(sorted(set(nodes)))
        self.move(
            job,
            "placed",
            at,
            f"placed as a gang of {len(nodes)} on {where}",
            node=nodes[0],
            attempt=next_attempt(view.record),
            members=nodes,
            member_exits={},
            decision=view.decision,
        )
        view.decision = None
        if view.cancel_pending:
            self.move(job, "cancelled", at, view.cancel_pending)
            self._release(job)

    def _gang_failed(self, view: JobView, node: str, at: float, why: str) -> None:
        """A member's claim failed: release every stored member; requeue once nothing is in flight."""
        gang = view.gang
        assert gang is not None
        gang.failed = gang.failed or why
        gang.pending.discard(node)
        self._release(view.record.id)
        if gang.pending:
            return  # other claims of this gang are still in flight: their answers release them too
        view.claiming, view.gang, view.decision = "", None, None
        if view.cancel_pending:
            self.move(view.record.id, "cancelled", at, view.cancel_pending)
        else:
            self.queue.add(view.queued)

    # --- record changes ---------------------------------------------------------------------------

    def move(self, job: str, state: JobState, at: float, reason: str, **changes: object) -> None:
        """Move a job along the state machine, recording why (a move to its own state records a
        new transition). A move the machine does not allow is a bug of the core's own making:
        :class:`~federation.errors.LocalProtocolError`, never silently dropped (I5)."""
        view = self.jobs[job]
        record = view.record
        if state != record.state and state not in ALLOWED.get(record.state, frozenset()):
            # I5: never backwards, never out of a terminal state; asking is our own bug
            raise LocalProtocolError(f"job {job}: no move from {record.state} to {state} ({reason})")
        view.record = msgspec.structs.replace(
            record,
            state=state,
            reason=reason,
            updated_at=at,
            history=(*record.history, Transition(state=state, at=at, reason=reason)),
            **changes,
        )
        self.dirty.add(job)

    def _requeue(
        self,
        job: str,
        state: str,
        at: float,
        cause: str,
        exhausted: JobState = "failed",
        *,
        backoff: bool = True,
        replaced: bool = False,
    ) -> None:
        """Back to the queue after a preemption, refusal or node loss, per the retry policy.

        The record that goes back to ``pending`` already carries the new attempt's number and
        names no node (the new attempt has none yet): within one attempt the state only moves
        forward (I5), and reports of the old attempt no longer match. With no attempts left the
        job ends in ``exhausted``; without ``backoff`` it may run again at once. ``cause`` says
        what ended the attempt; ``replaced`` words the outcome as a replacement (a lost attempt).
        """
        view = self.jobs[job]
        record = view.record
        if record.state != state:
            return
        limit = record.spec.max_attempts or self.policy.max_attempts
        if record.attempt >= limit:
            outcome = "not replaced: " if replaced else ""
            why = f"{cause}; {outcome}no attempts left ({record.attempt} of {limit})"
            self.move(job, exhausted, at, why)
            return
        attempt = record.attempt + 1
        not_before = at + self.policy.retry_delay(record.attempt) if backoff else 0.0
        outcome = "replaced: " if replaced else ""
        self.move(
            job,
            "pending",
            at,
            f"{cause}; {outcome}retry {attempt} of {limit}",
            attempt=attempt,
            node="",
            members=(),
            member_exits={},
            not_before=not_before,
        )
        self.queue.add(view.queued)

    def amend(self, job: str, **changes: object) -> None:
        """Change fields of a job's record other than its state; the record is written next tick."""
        view = self.jobs[job]
        view.record = msgspec.structs.replace(view.record, **changes)
        self.dirty.add(job)

    def defer_cancel(self, job: str, reason: str) -> None:
        """Keep a cancel until what is in flight for the job (a claim, a hand-off) is decided."""
        self.jobs[job].cancel_pending = reason

    def take_deferred_cancel(self, job: str) -> str:
        """The cancel kept for the job ("" when none), no longer kept."""
        view = self.jobs[job]
        reason, view.cancel_pending = view.cancel_pending, ""
        return reason

    def unwritten(self, job: str) -> bool:
        """Whether the job's record has changes not yet handed out to be written."""
        return job in self.dirty

    def requeue_now(self, job: str) -> None:
        """Put a pending job back in the queue, in its place by priority and age."""
        self.queue.add(self.jobs[job].queued)

    def unqueue(self, job: str) -> None:
        self.queue.remove(self.jobs[job].queued)

    def _release(self, job: str) -> None:
        """Remove every allocation of ``job`` (each gang member) at the next write of its nodes."""
        for name in sorted(self.holders.get(job, ())):
            node = self._node(name)
            members = node.current().members(job)
            if members:
                node.releases.update((a.job, a.attempt) for a in members)
                self.releasing.add(name)

    # --- the scheduling pass ----------------------------------------------------------------------

    def _node_losses(self, now: float) -> None:
        """Apply ``on_node_lost`` to the jobs of down nodes whose deadline has come."""
        if self.frozen(now):
            return
        settling = settle(self.policy.node_settle, self.cadence)
        for name in sorted(self.down):
            node = self.nodes[name]
            for allocation in node.current().allocations:
                view = self.jobs.get(allocation.job)
                if view is None or node.released(allocation) or view.claiming or view.gang is not None:
                    continue
                record = view.record
                if record.state not in ("placed", "running") or record.attempt != allocation.attempt:
                    continue
                action, wait = self.policy.node_lost(record.spec)
                deadline = node.lost_from + max(wait, settling)
                lost = f"node {name} lost (no heartbeat)"
                if now < deadline:
                    reason = f"{lost}; keeping the allocation until {deadline:.0f} in case it returns"
                    if wait and record.reason != reason:
                        self.amend(record.id, reason=reason, updated_at=now)
                    continue
                if action == "fail":
                    self.move(record.id, "lost", now, f"{lost}; on_node_lost=fail")
                else:
                    self._requeue(record.id, record.state, now, lost, "lost", backoff=False, replaced=True)
                self._release(record.id)  # every member of a gang: it runs whole or not at all

    def _tick(self, now: float) -> list[Command]:
        """The scheduling step: apply node losses, run a pass, take its plan (claims to write,
        reasons to record), then the hand-offs' turn, then every changed record to write."""
        if self.down:
            self._node_losses(now)
        if self.dependencies.dependents:
            for job, why in self.dependencies.settle(self, now):  # it can never run: say why
                self.unqueue(job)
                self.move(job, "cancelled", now, why)
        plan = Pass(self, now).run()
        self._take_plan(plan)
        self._explain_waiting(plan, now)
        commands: list[Command] = []
        for name in sorted(set(plan.placed) | set(plan.victims) | self.releasing | self.activating):
            claim = self._propose(self.nodes[name], plan, now)
            if claim is not None:
                commands.append(claim)
        for name in plan.placed:  # nodes whose working copy changed but made no proposal: re-key
            self._sync(self.nodes[name])
        commands.extend(self.spill.tick(self, now))
        commands.extend(self._record_writes())
        return commands

    def _take_plan(self, plan: Plan) -> None:
        """The queue, index and reclaims as the pass left them; placed jobs are being claimed."""
        for job in plan.dequeued:  # a few per pass: found by bisection, not by a walk of the queue
            if not self.queue.remove(self.jobs[job].queued):
                self.queue.remove_any(self.jobs[job].queued)  # queued under another order than its view's
        for name in plan.expired:
            self.index.discard(name)
        self.reclaims |= plan.reclaims
        self.reclaims = {
            j for j in self.reclaims if self.jobs[j].record.state == "pending" and j not in plan.decisions
        }
        gangs: dict[str, list[tuple[int, str]]] = {}
        for name, additions in plan.placed.items():
            for allocation in additions:
                view = self.jobs[allocation.job]
                view.claiming = name
                view.decision = plan.decisions.get(allocation.job)
                if allocation.members > 1:
                    gangs.setdefault(allocation.job, []).append((allocation.member, name))
        for job, members in gangs.items():
            nodes = [name for _, name in sorted(members)]
            self.jobs[job].gang = GangProgress(nodes=nodes, pending=set(nodes))

    def _explain_waiting(self, plan: Plan, now: float) -> None:
        """Record why each job the pass did not place waits, and explain those that asked for it
        (``unexplained``: jobs whose reason went stale without being considered)."""
        busy = bool(self.in_flight)
        for job, (reason, decision) in plan.waiting.items():
            self._explain(self.jobs[job], reason, decision, busy, now)
        if self.unexplained:
            explainer = Pass(self, now)
            for job in sorted(self.unexplained):
                view = self.jobs[job]
                if view.record.state == "pending" and not view.claiming and job not in plan.waiting:
                    reason, decision = explainer.why(view.record.spec, 0)
                    self._explain(view, reason, decision, False, now)
            self.unexplained.clear()

    def _propose(self, node: NodeView, plan: Plan, now: float) -> WriteLedger | None:
        """The node's one proposed ledger of this tick: what it keeps (releases and victims out,
        gang members activated), plus what the plan adds. None when nothing changes, or a claim
        of the node is still in flight."""
        if node.proposal is not None:
            return None
        name, current = node.name, node.current()
        victims = {v.job for v in plan.victims.get(name, [])}
        keep = tuple(a for a in current.allocations if not node.released(a) and a.job not in victims)
        activated = self._activations(node, now)
        if activated:
            keys = set(activated)
            keep = tuple(
                msgspec.structs.replace(a, held=False) if (a.job, a.attempt) in keys else a for a in keep
            )
        additions = plan.placed.get(name, [])
        if len(keep) == len(current.allocations) and not additions and not activated:
            node.releases.clear()
            self.releasing.discard(name)
            return None
        offer = node.offer
        capacity = Capacity.of(offer) if offer else None
        node.proposal = Ledger(
            node=name,
            allocations=keep + tuple(additions),
            epoch=self.epoch,
            updated_at=now,
            capacity=capacity,
        )
        node.proposal_jobs = [a.job for a in additions]
        node.proposal_activations = activated
        node.proposal_victims = sorted(victims)
        node.proposal_reason = plan.reasons.get(name, "")
        self.index.discard(name)
        self.in_flight.add(name)
        return WriteLedger(node=name, ledger=node.proposal, expected_revision=node.revision)

    def _activations(self, node: NodeView, now: float) -> list[tuple[str, int]]:
        """The gang members held on ``node`` that its next ledger activates. A member that vanished
        from the ledger while held fails its gang."""
        current = node.current()
        activated = [k for k in sorted(node.activations) if any(a.held for a in current.members(k[0]))]
        for key in sorted(node.activations - set(activated)):  # a held member vanished
            node.activations.discard(key)
            view = self.jobs[key[0]]
            if view.gang is not None:
                for other in view.gang.activating:
                    self.nodes[other].activations.discard(key)
                view.gang.activating.clear()
                view.gang.pending.clear()
                self._gang_failed(view, node.name, now, f"a held member vanished from {node.name}")
        if not node.activations:
            self.activating.discard(node.name)
        return activated

    def _record_writes(self) -> list[Command]:
        """Every changed record, stamped with this leader's epoch (I6); a record being claimed is
        written with its claim's outcome."""
        commands: list[Command] = []
        for job in sorted(self.dirty):
            view = self.jobs[job]
            if not view.claiming:
                if view.record.epoch != self.epoch:  # every write carries the writer's epoch (I6)
                    view.record = msgspec.structs.replace(view.record, epoch=self.epoch)
                commands.append(WriteJob(record=view.record))
        self.dirty = {job for job in self.dirty if self.jobs[job].claiming}
        return commands

    def allocation(
        self, view: JobView, free: capacity.Free, now: float, member: int = 0, members: int = 1
    ) -> Allocation:
        """Take the devices ``view``'s job needs from ``free`` and describe the allocation."""
        spec = view.record.spec
        cores, gpus = free.take(spec)
        return Allocation(
            job=spec.id,
            attempt=next_attempt(view.record),
            epoch=self.epoch,
            cpu=spec.cpu,
            memory=spec.memory,
            cores=cores,
            gpus=gpus,
            command=tuple(spec.command),
            env=dict(spec.env),
            priority=spec.priority,
            tenant=spec.tenant,
            pinned=free.pinned,
            traceparent=view.record.traceparent,
            placed_at=now,
            member=member,
            members=members,
            held=members > 1,
            custom=dict(spec.custom),
            on_node_lost=spec.on_node_lost,
            max_attempts=spec.max_attempts,
            timeout=spec.timeout,
            inputs=tuple(spec.inputs),
            store=spec.origin if spec.inputs else "",
            outputs=tuple(spec.outputs),
            output_bytes=self.policy.max_output_bytes if spec.outputs else 0,
        )

    def _explain(self, view: JobView, reason: str, decision: Decision, busy: bool, now: float) -> None:
        """Record why a job is pending, writing the record only when the reason changes."""
        if busy or reason == view.record.reason:
            return
        view.record = msgspec.structs.replace(view.record, reason=reason, decision=decision, updated_at=now)
        self.dirty.add(view.record.id)


__all__ = ["ALLOWED", "TERMINAL_STATES", "JobView", "NodeView", "RegionCore"]
