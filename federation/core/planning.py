"""One scheduling pass: which queued job goes where, what is preempted, why the rest waits.

Theory of operation
-------------------
Placement is a pipeline, as in Nomad's scheduler: admission, feasibility, ranking, the plan. A pass
walks the queue in order (priority, then submission time; within a priority level, tenants by
dominant share) and, for each job whose backoff has expired:

0. **May it start at all?** Its previous attempt must be out of every ledger (I2), and its tenant's
   quota must admit it (:mod:`federation.core.admission`: within quota, borrowing from the cohort,
   reclaiming from borrowers first, or over).
1. **Does it fit somewhere now?** Preferred nodes (``spec.nodes``) are tried first; otherwise the
   :class:`~federation.core.index.FreeIndex` yields candidates in score order (binpack: least free
   capacity that fits; spread: most: :mod:`federation.core.ranking`), each asked the feasibility
   table (:mod:`federation.core.feasibility`). The first fit wins; the next two are kept as
   runners-up for ``explain``. Devices are taken from the pass's working copy of the node's free
   capacity, and the node is re-keyed in the pass's copy of the index
   (:mod:`federation.core.workspace`), so later jobs of the same pass see what is left.
2. **If not, may it preempt?** A job within its quota may reclaim borrowed allocations; a job whose
   priority the policy lets preempt looks for the fewest strictly-lower-priority allocations whose
   removal makes room (:func:`~federation.core.ranking.preemption_victims`) on every node that
   passes the table's live, match and claim checks; the node needing the fewest, lowest-priority
   victims wins. The victims and the new allocation go into the node's one proposed ledger: a
   single compare-and-set removes them and adds it.
3. **Otherwise, why not?** Every node is classified by the first check that rejects it, and the
   counts become the job's pending reason and :class:`~federation.schemas.Decision`. Results are
   cached per job shape for the pass. Every reason a job waits is recorded by :meth:`Pass._wait`
   or :meth:`Pass.why`.

The pass reads the region state and returns a :class:`Plan`; it changes nothing itself. It stops
early once no node has room and no later job may preempt or reclaim, so its cost is the jobs it
places plus the misfits it explains, not the queue length or the node count.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from federation.core import feasibility, ranking
from federation.core.admission import UNLIMITED, Quotas, movable
from federation.core.capacity import Free
from federation.core.plan import Plan
from federation.core.policy import lower
from federation.core.queueing import Queue
from federation.core.workspace import Workspace
from federation.resources import format_memory
from federation.schemas import PRIORITY_RANK, Allocation, Candidate, Decision, Offer, Submit

if TYPE_CHECKING:
    from federation.core.views import JobView, Region


# what preemption asks of a node: room is what its victims make
OPEN = (feasibility.LIVE, feasibility.MATCH, feasibility.CLAIM)


class Pass:
    """One scheduling pass over a :class:`Region` at time ``now``: reads the core and returns a
    plan; what it gives away as it goes is kept in its own working copies (free capacity, index)."""

    def __init__(self, core: Region, now: float) -> None:
        self.core = core
        self.now = now
        self.space = Workspace(core)
        self.quotas = Quotas(core, now, self.space)
        self.misfits: dict[tuple[object, ...], tuple[str, Decision]] = {}
        preempting = [PRIORITY_RANK[p] for p in PRIORITY_RANK if core.policy.may_preempt(p)]
        self.last_preemptor = max(preempting, default=-1)
        self.seen: set[str] = set()
        self.array_holding: dict[str, int] | None = None  # see _arrays

    def run(self) -> Plan:
        """Walk the queue, one priority level at a time, tenants by fair share; return the plan."""
        core, plan = self.core, Plan()
        if self.quotas.enabled and core.policy.on_shrink == "preempt":
            self.quotas.shrink(plan)
        placed: set[str] = set()
        position = 0
        queue = core.queue
        start = 0
        while start < len(queue):
            rank = queue[start][0][0]
            end = queue.level_end(rank, start)
            if self._full(rank):
                break  # no room anywhere and nobody left who may preempt or reclaim
            for view in self._fair(queue, start, end, rank):
                if self._full(rank):
                    break  # the same, reached within this level: the rest is explained by shape
                position += 1
                if self._consider(view, plan, position):
                    placed.add(view.record.id)
            start = end
        plan.dequeued = placed
        plan.expired = self.space.expired
        return plan

    def _full(self, rank: int) -> bool:
        """Whether no job of ``rank`` or below can be placed in this pass: no usable node has a
        proposal left to make (each makes one per pass), and none of them may preempt or reclaim."""
        return not self.space.index and rank > self.last_preemptor and not self.quotas.borrowing()

    def _fair(self, queue: Queue, start: int, end: int, rank: int) -> Iterator[JobView]:
        """One priority level's jobs (``queue[start:end]``): each tenant in submission order, the
        lowest dominant share next; a level of one tenant is taken in order, as far as the pass
        gets (not sorted into lines first: its length is the burst's)."""
        jobs = self.core.jobs
        if queue.tenants(rank) <= 1:
            for index in range(start, end):
                yield jobs[queue[index][1]]
            return
        lines: dict[str, deque[JobView]] = {}
        for index in range(start, end):
            view = jobs[queue[index][1]]
            lines.setdefault(view.record.spec.tenant, deque()).append(view)
        heap = [(self.quotas.share(tenant), line[0].order, tenant) for tenant, line in lines.items()]
        heapq.heapify(heap)
        while heap:
            _, _, tenant = heapq.heappop(heap)
            line = lines[tenant]
            yield line.popleft()
            if line:
                heapq.heappush(heap, (self.quotas.share(tenant), line[0].order, tenant))

    def _consider(self, view: JobView, plan: Plan, position: int) -> bool:
        """Place one job, or record why it waits: admission first (its backoff, its previous
        attempt, its quota), then a fit, then preemption, then the reason nothing worked."""
        spec = view.record.spec
        self.seen.add(spec.id)
        if view.record.not_before > self.now:
            return False  # backing off (its reason says until when)
        if spec.id in self.core.allocated:  # its previous attempt is still in a ledger (I2)
            return self._wait(plan, spec.id, position, "pending: its previous attempt is being released")
        admission, wait = self.quotas.admit(spec, plan, self.seen) if self.quotas.enabled else (UNLIMITED, "")
        if wait:
            return self._wait(plan, spec.id, position, wait)
        if spec.after and (waiting := self.core.waits_for(spec)):
            return self._wait(plan, spec.id, position, waiting)
        if spec.array_limit and (holding := self._arrays().get(spec.array, 0)) >= spec.array_limit:
            why = (
                f"pending: array {spec.array} runs at most {spec.array_limit} at once ({holding} hold nodes)"
            )
            return self._wait(plan, spec.id, position, why)
        if spec.gang > 1:
            fitted = self._place_gang(view, plan, position)
            if fitted < spec.gang:
                reason = f"pending: gang of {spec.gang} starts all together; room for {fitted} now"
                return self._wait(plan, spec.id, position, reason, considered=len(self.core.nodes))
        elif not (
            self._place(view, plan, position)
            or (admission.kind == "within" and self._preempt(view, plan, position, reclaim=True))
            or (self.core.policy.may_preempt(spec.priority) and self._preempt(view, plan, position))
        ):
            plan.waiting[spec.id] = self.why(spec, position)
            return False
        self.quotas.charge(spec)
        if spec.array_limit:  # (an unlimited array is never counted)
            counts = self._arrays()
            counts[spec.array] = counts.get(spec.array, 0) + 1
        return True

    def _arrays(self) -> dict[str, int]:
        """Elements of each job array holding an allocation, this pass's placements included
        (counted once per pass, when a job with an array limit first asks)."""
        if self.array_holding is None:
            self.array_holding = self.core.array_holding()
        return self.array_holding

    def _wait(self, plan: Plan, job: str, position: int, reason: str, considered: int = 0) -> bool:
        """Record why ``job`` waits (the one place a pass does): False, it was not placed."""
        decision = Decision(
            kind="pending", at=self.now, considered=considered, queue_position=position, note=reason
        )
        plan.waiting[job] = (reason, decision)
        return False

    # --- fit -------------------------------------------------------------------------------------

    def _fits(self, name: str, spec: Submit) -> Free | None:
        """The free capacity of ``name`` as this pass counts it, when the job may go there now."""
        node = self.core.nodes.get(name)
        if node is None or name in self.space.sealed:
            return None
        free = self.space.free(name)
        return free if feasibility.rejection(node, free, spec, self.core.region, self.now) is None else None

    def _candidates(self, spec: Submit, spread: bool, prune: bool = True) -> list[Candidate]:
        """Up to three fitting nodes in score order: preferred ones first, then the index (whose
        expired offers are dropped on the way, unless ``prune`` is false: a look from outside
        :meth:`RegionCore.handle` must change nothing, or a replay of the core would differ)."""
        found: list[Candidate] = []
        for name in spec.nodes:
            free = self._fits(name, spec)
            if free is not None and all(c.node != name for c in found):
                found.append(Candidate(node=name, score=ranking.score(free, spec)))
        if found:
            found.sort(key=lambda c: ranking.order(c, spread))
            return found[:3]
        index = self.space.index
        names = index.descending(spec.gpu) if spread else index.ascending(spec.gpu, spec.cpu, spec.memory)
        expired = []
        for name in names:
            node = self.core.nodes[name]
            if node.offer is None or node.offer.expires_at <= self.now:
                expired.append(name)
                continue
            free = self._fits(name, spec)
            if free is not None:
                found.append(Candidate(node=name, score=ranking.score(free, spec)))
                if len(found) == 3:
                    break
        for name in expired if prune else ():
            self.space.drop(name)
            self.space.expired.add(name)
        return found

    def _place(self, view: JobView, plan: Plan, position: int) -> bool:
        spec = view.record.spec
        spread = (spec.scoring or self.core.policy.scoring) == "spread"
        candidates = self._candidates(spec, spread)
        if not candidates:
            return False
        chosen = candidates[0]
        free = self.space.take(chosen.node)
        plan.placed.setdefault(chosen.node, []).append(self.core.allocation(view, free, self.now))
        plan.decisions[spec.id] = Decision(
            kind="placed",
            at=self.now,
            considered=len(self.space.index),
            chosen=chosen,
            runners_up=tuple(candidates[1:]),
            queue_position=position,
            note="preferred node" if chosen.node in spec.nodes else "",
        )
        self.space.rekey(chosen.node)
        return True

    def _place_gang(self, view: JobView, plan: Plan, position: int) -> int:
        """Place every member of a gang, or none: returns how many fit (== gang size when placed)."""
        spec = view.record.spec
        spread = (spec.scoring or self.core.policy.scoring) == "spread"
        saved: dict[str, Free | None] = {}
        touched = set(self.space.touched)
        members: list[tuple[str, Allocation, Candidate]] = []
        for member in range(spec.gang):
            candidates = self._candidates(spec, spread)
            if not candidates:
                break
            chosen = candidates[0]
            if chosen.node not in saved:
                work = self.space.work.get(chosen.node)
                saved[chosen.node] = work.copy() if work is not None else None
            free = self.space.take(chosen.node)
            allocation = self.core.allocation(view, free, self.now, member=member, members=spec.gang)
            members.append((chosen.node, allocation, chosen))
            self.space.rekey(chosen.node)
        if len(members) < spec.gang:  # all or nothing: give back what this attempt took
            for name, copy in saved.items():
                if copy is None:
                    self.space.forget(name)
                else:
                    self.space.replace(name, copy)
                self.space.rekey(name)
            self.space.touched = touched
            return len(members)
        for name, allocation, _ in members:
            plan.placed.setdefault(name, []).append(allocation)
        nodes = sorted({name for name, _, _ in members})
        plan.decisions[spec.id] = Decision(
            kind="placed",
            at=self.now,
            considered=len(self.space.index),
            chosen=members[0][2],
            runners_up=tuple(c for _, _, c in members[1:3]),
            queue_position=position,
            note=f"gang of {spec.gang} on {', '.join(nodes)}",
        )
        return spec.gang

    # --- preempt ---------------------------------------------------------------------------------

    def _victim_chooser(
        self, spec: Submit, reclaim: bool
    ) -> Callable[[Offer, tuple[Allocation, ...]], list[Allocation] | None] | None:
        """How victims are chosen on one node for ``spec``: borrowed allocations of its cohort
        (``reclaim``), or allocations of strictly lower priority when the policy lets its priority
        preempt; None when neither applies."""
        if reclaim:
            borrowers = self.quotas.borrowers(spec.tenant)
            if not borrowers:
                return None
            return lambda offer, allocations: self.quotas.reclaim_victims(spec, offer, allocations, borrowers)
        if not self.core.policy.may_preempt(spec.priority):
            return None

        def eligible(victim: Allocation) -> bool:
            return lower(victim.priority, spec.priority) and movable(self.core, victim)

        return lambda offer, allocations: ranking.preemption_victims(spec, offer, allocations, eligible)

    def _preempt(self, view: JobView, plan: Plan, position: int, *, reclaim: bool = False) -> bool:
        """Make room by preemption: of strictly lower priorities, or (``reclaim``) of cohort
        borrowers. The node needing the fewest, lowest-priority victims is chosen."""
        spec = view.record.spec
        choose = self._victim_chooser(spec, reclaim)
        if choose is None:
            return False
        best: tuple[tuple[int, int, str], str, list[Allocation]] | None = None
        for name in sorted(self.core.nodes):
            node = self.core.nodes[name]
            if name in self.space.touched or node.offer is None:
                continue
            if feasibility.rejection(node, node.free, spec, self.core.region, self.now, OPEN) is not None:
                continue
            victims = choose(node.offer, tuple(a for a in node.current().allocations if not node.released(a)))
            if not victims:
                continue
            key = (len(victims), sum(-PRIORITY_RANK[v.priority] for v in victims), name)
            if best is None or key < best[0]:
                best = (key, name, victims)
        if best is None:
            return False
        _, name, victims = best
        node = self.core.nodes[name]
        assert node.offer is not None
        gone = {v.job for v in victims}
        keep = [a for a in node.current().allocations if not node.released(a) and a.job not in gone]
        free = Free.of(node.offer, keep)
        self.space.replace(name, free)
        self.space.seal(name)  # its one proposal for this pass is made
        score = ranking.score(free, spec)  # before the job takes its devices
        plan.placed.setdefault(name, []).append(self.core.allocation(view, free, self.now))
        plan.victims[name] = victims
        for victim in victims:
            self.quotas.leave(victim)
        plan.decisions[spec.id] = Decision(
            kind="preempting",
            at=self.now,
            considered=len(self.core.nodes),
            chosen=Candidate(node=name, score=score),
            victims=tuple(sorted(gone)),
            queue_position=position,
            note=(
                f"reclaims quota from {len(victims)} borrowed allocation{'s' if len(victims) != 1 else ''}"
                if reclaim
                else f"preempts {len(victims)} lower-priority allocation{'s' if len(victims) != 1 else ''}"
            ),
        )
        return True

    # --- explain ---------------------------------------------------------------------------------

    def room_for(self, spec: Submit) -> bool:
        """Whether some node has room for ``spec`` now (a hand-off's admission check)."""
        spread = (spec.scoring or self.core.policy.scoring) == "spread"
        return bool(self._candidates(spec, spread, prune=False))

    def why(self, spec: Submit, position: int) -> tuple[str, Decision]:
        """Why ``spec`` waits: each node classified by the first filter that rejects it."""
        key = feasibility.shape(spec)
        cached = self.misfits.get(key)
        if cached is not None:
            reason, decision = cached
            return reason, Decision(
                kind="pending",
                at=self.now,
                considered=decision.considered,
                filtered=decision.filtered,
                queue_position=position,
            )
        reasons: dict[str, list[str]] = {}
        for name in sorted(self.core.nodes):
            reasons.setdefault(self._reject(name, spec), []).append(name)
        fitting = reasons.pop("", []) + reasons.get(feasibility.FULL, [])
        considered = len(self.core.nodes)
        if fitting:
            plural = "s" if len(fitting) != 1 else ""
            sample = ", ".join(fitting[:3]) + (", ..." if len(fitting) > 3 else "")
            reason = f"pending: waiting for capacity: {len(fitting)} node{plural} can run it once room frees"
            reason += f" ({sample})"
        else:
            reason = feasibility.explain_misfit(spec, reasons, considered) + self._never(spec)
        decision = Decision(
            kind="pending",
            at=self.now,
            considered=considered,
            filtered={k: len(v) for k, v in reasons.items()},
            queue_position=position,
        )
        self.misfits[key] = (reason, decision)
        return reason, decision

    def _never(self, spec: Submit) -> str:
        """ "; larger than any node here ..." when no node of the region could hold ``spec`` even
        empty and at its registered maximum ("" when one could, or none has offered)."""
        sizes = [
            (
                max(o.capacity_cpu, len(o.cores)),
                max(o.capacity_memory, o.memory),
                max(o.capacity_gpu, len(o.gpus)),
            )
            for o in (node.offer for node in self.core.nodes.values())
            if o is not None
        ]
        if not sizes or any(spec.cpu <= c and spec.memory <= m and spec.gpu <= g for c, m, g in sizes):
            return ""
        cpu, memory, gpu = (max(size[i] for size in sizes) for i in range(3))
        return (
            f"; larger than any node here (the largest: cpu={cpu} memory={format_memory(memory)} "
            f"gpu={gpu}): it runs here only if a larger node joins"
        )

    def _reject(self, name: str, spec: Submit) -> str:
        """The first check that rejects ``name`` for ``spec`` ("" when it fits)."""
        return feasibility.explain(
            self.core.nodes[name], self.space.free(name), spec, self.core.region, self.now
        )
