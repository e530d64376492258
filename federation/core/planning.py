"""One scheduling pass: which queued job goes where, what is preempted, why the rest waits.

Theory of operation
-------------------
A pass walks the queue in order (priority, then submission time) and, for each job whose backoff
has expired, asks three questions:

1. **Does it fit somewhere now?** Preferred nodes (``spec.nodes``) are tried first; otherwise the
   :class:`~federation.core.index.FreeIndex` yields candidates in score order (binpack: least free
   capacity that fits; spread: most), skipping nodes whose offer expired or whose labels do not
   match ``spec.require``. The first fit wins; the next two are kept as runners-up for ``explain``.
   Devices are taken from a per-pass working copy of the node's free capacity, and the node is
   re-keyed in the index, so later jobs of the same pass see what is left.
2. **If not, may it preempt?** When the policy lets its priority preempt, every usable node is
   examined for the fewest strictly-lower-priority allocations whose removal makes room
   (:func:`~federation.core.ranking.preemption_victims`); the node needing the fewest, lowest-
   priority victims wins. The victims and the new allocation go into the node's one proposed
   ledger: a single compare-and-set removes them and adds it.
3. **Otherwise, why not?** Every node is classified by the first filter that rejects it (no offer,
   down, expired, label mismatch, claim in flight, no slot, cpu, memory, gpu) and the counts become
   the job's pending reason and :class:`~federation.schemas.Decision`. Results are cached per job
   shape for the pass.

The pass stops early once no node has room and no later job may preempt, so its cost is the jobs it
places plus the misfits it explains, not the queue length or the node count.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from federation.core import feasibility, ranking
from federation.core.capacity import Free
from federation.core.policy import lower
from federation.core.quota import Accounts, Admission, Vector, held, request
from federation.resources import format_memory
from federation.schemas import PRIORITY_RANK, Allocation, Candidate, Decision, Offer, Submit

if TYPE_CHECKING:
    from federation.core.index import FreeIndex
    from federation.core.views import JobView, Region


UNLIMITED = Admission("unlimited")
# what preemption asks of a node: room is what its victims make
OPEN = (feasibility.LIVE, feasibility.MATCH, feasibility.CLAIM)


@dataclass
class Plan:
    """What a pass decided; the region state turns it into proposals and record changes."""

    placed: dict[str, list[Allocation]] = field(default_factory=dict)
    victims: dict[str, list[Allocation]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    reclaims: set[str] = field(default_factory=set)
    decisions: dict[str, Decision] = field(default_factory=dict)
    waiting: dict[str, tuple[str, Decision]] = field(default_factory=dict)
    queue: list[tuple[tuple[int, float, int], str]] = field(default_factory=list)
    expired: set[str] = field(default_factory=set)  # nodes whose offers expired: out of the index


class Pass:
    """One scheduling pass over a :class:`Region` at time ``now``: reads the core and returns a
    plan; what it gives away as it goes is kept in its own working copies (free capacity, index)."""

    def __init__(self, core: Region, now: float) -> None:
        self.core = core
        self.now = now
        self.work: dict[str, Free] = {}
        self.touched: set[str] = set()
        self.sealed: set[str] = set()  # nodes whose one proposal this pass preempts: nothing else goes there
        self.misfits: dict[tuple[object, ...], tuple[str, Decision]] = {}
        preempting = [PRIORITY_RANK[p] for p in PRIORITY_RANK if core.policy.may_preempt(p)]
        self.last_preemptor = max(preempting, default=-1)
        self.leaving: dict[str, Vector] = {}  # usage whose removal is decided but not yet written
        self._accounts: Accounts | None = None
        self.placed_here: list[Submit] = []
        self.custom_used: dict[str, dict[str, float]] = {}
        self.seen: set[str] = set()
        self.quotas = bool(core.policy.tenants)
        self.index = core.index  # the region's, until this pass changes a node's key: then a copy
        self._own_index = False
        self.expired: set[str] = set()  # nodes found with an expired offer (the core drops them)

    @property
    def accounts(self) -> Accounts:
        """Tenant accounting, built on first use: a pass without quotas or competing tenants
        never walks the ledgers."""
        if self._accounts is None:
            self._accounts = Accounts(self.core.policy, self._capacity(), self._usage(), self.custom_used)
            for spec in self.placed_here:  # what this pass placed before accounts existed
                self._accounts.charge(spec.tenant, request(spec))
                self._accounts.charge_custom(spec.tenant, _times(spec.custom, spec.gang))
        return self._accounts

    def _capacity(self) -> Vector:
        cpu = memory = gpu = 0
        for node in self.core.nodes.values():
            offer = node.offer
            live = node.alive and offer is not None and offer.expires_at > self.now
            # a node that still holds allocations counts with its last offer: usage is counted on
            # every ledger, so capacity must be too, or a dead node would look like over-use
            if offer is not None and (live or node.current().allocations):
                cpu, memory, gpu = cpu + len(offer.cores), memory + offer.memory, gpu + len(offer.gpus)
        return (cpu, memory, gpu)

    def _usage(self) -> dict[str, Vector]:
        """Usage per tenant, counted conservatively: an allocation counts until its removal is
        written, and a claim in flight counts already (so quota holds for every stored state)."""
        usage: dict[str, Vector] = {}
        for node in self.core.nodes.values():
            stored = node.current().allocations
            counted = list(stored)
            leaving = {(a.job, a.attempt, a.member): a for a in stored if node.released(a)}
            if node.proposal is not None:
                present = {(a.job, a.attempt) for a in stored}
                proposed = {(a.job, a.attempt) for a in node.proposal.allocations}
                counted += [a for a in node.proposal.allocations if (a.job, a.attempt) not in present]
                leaving.update(
                    {(a.job, a.attempt, a.member): a for a in stored if (a.job, a.attempt) not in proposed}
                )
            for allocation in counted:
                _charge(usage, allocation)
                if allocation.custom:
                    mine = self.custom_used.setdefault(allocation.tenant, {})
                    for name, amount in allocation.custom.items():
                        mine[name] = mine.get(name, 0.0) + amount
            for allocation in leaving.values():
                _charge(self.leaving, allocation)
        return usage

    def run(self) -> Plan:
        """Walk the queue, one priority level at a time, tenants by fair share; return the plan."""
        core, plan = self.core, Plan()
        if self.quotas and core.policy.on_shrink == "preempt":
            self._shrink(plan)
        placed: set[str] = set()
        position = 0
        queue = core.queue
        start = 0
        while start < len(queue):
            rank = queue[start][0][0]
            end = bisect.bisect_left(queue, ((rank + 1, -math.inf, -1), ""), start)  # the level's end
            if self._full(rank):
                break  # no room anywhere and nobody left who may preempt or reclaim
            for view in self._fair(queue[start:end]):
                if self._full(rank):
                    break  # the same, reached within this level: the rest is explained by shape
                position += 1
                if self._consider(view, plan, position):
                    placed.add(view.record.id)
            start = end
        plan.queue = list(queue)
        plan.expired = self.expired
        for job in placed:  # a few per pass: found by bisection, not by a walk of the queue
            entry = (core.jobs[job].order, job)
            index = bisect.bisect_left(plan.queue, entry)
            if index < len(plan.queue) and plan.queue[index] == entry:
                del plan.queue[index]
            else:  # queued under another order than its view's: by its id
                plan.queue = [e for e in plan.queue if e[1] != job]
        return plan

    def _full(self, rank: int) -> bool:
        """Whether no job of ``rank`` or below can be placed in this pass: no usable node has a
        proposal left to make (each makes one per pass), and none of them may preempt or reclaim."""
        return (
            not self.index and rank > self.last_preemptor and not (self.quotas and self.accounts.borrowing())
        )

    def _fair(self, entries: list[tuple[tuple[int, float, int], str]]) -> Iterator[JobView]:
        """One priority level's jobs: each tenant in submission order, the lowest dominant share next."""
        lines: dict[str, deque[JobView]] = {}
        for entry in entries:
            view = self.core.jobs[entry[1]]
            lines.setdefault(view.record.spec.tenant, deque()).append(view)
        if len(lines) == 1:
            yield from next(iter(lines.values()))
            return
        heap = [(self.accounts.share(tenant), line[0].order, tenant) for tenant, line in lines.items()]
        heapq.heapify(heap)
        while heap:
            _, _, tenant = heapq.heappop(heap)
            line = lines[tenant]
            yield line.popleft()
            if line:
                heapq.heappush(heap, (self.accounts.share(tenant), line[0].order, tenant))

    def _consider(self, view: JobView, plan: Plan, position: int) -> bool:
        spec = view.record.spec
        self.seen.add(spec.id)
        if view.record.not_before > self.now:
            return False  # backing off (its reason says until when)
        if spec.id in self.core.allocated:  # its previous attempt is still in a ledger (I2)
            reason = "pending: its previous attempt is being released"
            plan.waiting[spec.id] = (
                reason,
                Decision(kind="pending", at=self.now, queue_position=position, note=reason),
            )
            return False
        admission = self.accounts.admit(spec) if self.quotas else UNLIMITED
        if admission.kind == "borrow":
            waiting = self._reclaiming(spec.tenant, plan)
            if waiting:  # lenders are taking their quota back: no new borrowing in this cohort
                reason = (
                    f"pending: quota: cohort is reclaiming for {waiting}; no borrowing until it is placed"
                )
                plan.waiting[spec.id] = (
                    reason,
                    Decision(kind="pending", at=self.now, queue_position=position, note=reason),
                )
                return False
        if admission.kind == "over":
            reason = admission.reason
            plan.waiting[spec.id] = (
                reason,
                Decision(kind="pending", at=self.now, queue_position=position, note=reason),
            )
            return False
        if admission.kind == "within":
            excess = self.accounts.cohort_excess(spec)
            if any(amount > 0 for amount in excess):
                plan.reclaims.add(spec.id)  # holds back new borrowing in the cohort until resolved
            if any(amount > 0 for amount in excess) and self._leaving_covers(spec, excess):
                reason = "pending: waiting for released quota to be written"
                plan.waiting[spec.id] = (
                    reason,
                    Decision(kind="pending", at=self.now, queue_position=position, note=reason),
                )
                return False
            if any(amount > 0 for amount in excess) and self.core.policy.on_shrink == "drain":
                before = self.accounts.cohort_excess(spec, with_job=False)
                if any(amount > 0 for amount in before):  # over before this job: quotas shrank
                    reason = "pending: quota: the cohort uses more than its quotas now allow; draining"
                    decision = Decision(kind="pending", at=self.now, queue_position=position, note=reason)
                    plan.waiting[spec.id] = (reason, decision)
                    return False
            if any(amount > 0 for amount in excess):
                # within its own quota, but borrowers hold the cohort's room: reclaim first (the
                # victims' removal is written before this job is admitted, in a later pass)
                reason = self._reclaim_quota(spec, excess, plan)
                plan.waiting[spec.id] = (
                    reason,
                    Decision(kind="pending", at=self.now, queue_position=position, note=reason),
                )
                return False
            custom_excess = self.accounts.custom_excess(spec)
            if custom_excess:  # the same, for a custom resource the cohort lent out
                plan.reclaims.add(spec.id)
                reason = self._reclaim_custom(spec, custom_excess, plan)
                plan.waiting[spec.id] = (
                    reason,
                    Decision(kind="pending", at=self.now, queue_position=position, note=reason),
                )
                return False
        if spec.gang > 1:
            fitted = self._place_gang(view, plan, position)
            if fitted < spec.gang:
                reason = f"pending: gang of {spec.gang} starts all together; room for {fitted} now"
                decision = Decision(
                    kind="pending",
                    at=self.now,
                    considered=len(self.core.nodes),
                    queue_position=position,
                    note=reason,
                )
                plan.waiting[spec.id] = (reason, decision)
                return False
            done = True
        else:
            done = self._place(view, plan, position)
        if not done and admission.kind == "within":
            done = self._preempt(view, plan, position, reclaim=True)
        if not done:
            done = self._preempt(view, plan, position)
        if not done:
            plan.waiting[spec.id] = self.why(spec, position)
            return False
        if self._accounts is not None:
            self._accounts.charge(spec.tenant, request(spec))
            self._accounts.charge_custom(spec.tenant, _times(spec.custom, spec.gang))
        else:
            self.placed_here.append(spec)
        return True

    # --- fit -------------------------------------------------------------------------------------

    def _free(self, name: str) -> Free | None:
        if name in self.work:
            return self.work[name]
        node = self.core.nodes.get(name)
        return node.free if node is not None else None

    def _fits(self, name: str, spec: Submit) -> Free | None:
        """The free capacity of ``name`` as this pass counts it, when the job may go there now."""
        node = self.core.nodes.get(name)
        if node is None or name in self.sealed:
            return None
        free = self._free(name)
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
        index = self.index
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
            self._drop(name)
            self.expired.add(name)
        return found

    def _place(self, view: JobView, plan: Plan, position: int) -> bool:
        spec = view.record.spec
        spread = (spec.scoring or self.core.policy.scoring) == "spread"
        candidates = self._candidates(spec, spread)
        if not candidates:
            return False
        chosen = candidates[0]
        free = self._take(chosen.node)
        plan.placed.setdefault(chosen.node, []).append(self.core.allocation(view, free, self.now))
        plan.decisions[spec.id] = Decision(
            kind="placed",
            at=self.now,
            considered=len(self.index),
            chosen=chosen,
            runners_up=tuple(candidates[1:]),
            queue_position=position,
            note="preferred node" if chosen.node in spec.nodes else "",
        )
        if free.slots > 0:
            self._put(chosen.node, free)
        else:
            self._drop(chosen.node)
        return True

    def _place_gang(self, view: JobView, plan: Plan, position: int) -> int:
        """Place every member of a gang, or none: returns how many fit (== gang size when placed)."""
        spec = view.record.spec
        spread = (spec.scoring or self.core.policy.scoring) == "spread"
        saved: dict[str, Free | None] = {}
        touched = set(self.touched)
        members: list[tuple[str, Allocation, Candidate]] = []
        for member in range(spec.gang):
            candidates = self._candidates(spec, spread)
            if not candidates:
                break
            chosen = candidates[0]
            if chosen.node not in saved:
                saved[chosen.node] = self.work[chosen.node].copy() if chosen.node in self.work else None
            free = self._take(chosen.node)
            allocation = self.core.allocation(view, free, self.now, member=member, members=spec.gang)
            members.append((chosen.node, allocation, chosen))
            if free.slots > 0:
                self._put(chosen.node, free)
            else:
                self._drop(chosen.node)
        if len(members) < spec.gang:  # all or nothing: give back what this attempt took
            for name, copy in saved.items():
                if copy is None:
                    del self.work[name]
                else:
                    self.work[name] = copy
                restored = self._free(name)
                if restored is not None and restored.slots > 0:
                    self._put(name, restored)
                else:
                    self._drop(name)
            self.touched = touched
            return len(members)
        for name, allocation, _ in members:
            plan.placed.setdefault(name, []).append(allocation)
        nodes = sorted({name for name, _, _ in members})
        plan.decisions[spec.id] = Decision(
            kind="placed",
            at=self.now,
            considered=len(self.index),
            chosen=members[0][2],
            runners_up=tuple(c for _, _, c in members[1:3]),
            queue_position=position,
            note=f"gang of {spec.gang} on {', '.join(nodes)}",
        )
        return spec.gang

    def _take(self, name: str) -> Free:
        if name not in self.work:
            free = self._free(name)
            assert free is not None
            self.work[name] = free.copy()
        self.touched.add(name)
        return self.work[name]

    def _put(self, name: str, free: Free) -> None:
        """Re-key ``name`` in this pass's index (later jobs of the pass see what is left)."""
        self._writable().put(name, free)

    def _drop(self, name: str) -> None:
        """Take ``name`` out of this pass's index (no room left, or its one proposal is made)."""
        if name in self.index:
            self._writable().discard(name)

    def _writable(self) -> FreeIndex:
        if not self._own_index:
            self.index, self._own_index = self.index.copy(), True
        return self.index

    # --- preempt ---------------------------------------------------------------------------------

    def _movable(self, allocation: Allocation) -> bool:
        """Whether an allocation may be preempted: not a member of a gang still being claimed."""
        view = self.core.jobs.get(allocation.job)
        return not allocation.held and (view is None or view.gang is None)

    def _reclaim_victims(
        self, spec: Submit, offer: Offer, allocations: tuple[Allocation, ...], borrowers: set[str]
    ) -> list[Allocation] | None:
        """Borrowed allocations on one node whose removal lets ``spec`` fit: a borrower gives back
        only while it stays over its own quota (never what its quota covers)."""
        after = dict(self.accounts.usage)
        remaining = list(allocations)
        chosen: list[Allocation] = []
        for victim in sorted(
            (a for a in allocations if a.tenant in borrowers and self._movable(a)),
            key=ranking.victim_order,
            reverse=True,
        ):
            quota = self.accounts.quota(victim.tenant)
            use = after.get(victim.tenant, (0, 0, 0))
            amount = held(victim)
            left = (use[0] - amount[0], use[1] - amount[1], use[2] - amount[2])
            if quota is None or not any(left[i] >= quota[i] and amount[i] > 0 for i in range(3)):
                continue  # taking it would dig into what its own quota covers
            chosen.append(victim)
            remaining.remove(victim)
            after[victim.tenant] = left
            if feasibility.room(Free.of(offer, remaining), spec) is None:
                return chosen
        return None

    def _preempt(self, view: JobView, plan: Plan, position: int, *, reclaim: bool = False) -> bool:
        """Make room by preemption: of strictly lower priorities, or (``reclaim``) of cohort borrowers."""
        spec = view.record.spec
        if reclaim:
            members = set(self.accounts.cohort(spec.tenant)) - {spec.tenant}
            borrowers = {m for m in members if self.accounts.over(m)}
            if not borrowers:
                return False

            def eligible(victim: Allocation) -> bool:
                return victim.tenant in borrowers

        elif self.core.policy.may_preempt(spec.priority):

            def eligible(victim: Allocation) -> bool:
                return lower(victim.priority, spec.priority)

        else:
            return False
        best: tuple[tuple[int, int, str], str, list[Allocation]] | None = None
        for name in sorted(self.core.nodes):
            node = self.core.nodes[name]
            if name in self.touched or node.offer is None:
                continue
            if feasibility.rejection(node, node.free, spec, self.core.region, self.now, OPEN) is not None:
                continue
            allocations = tuple(a for a in node.current().allocations if not node.released(a))
            if reclaim:
                victims = self._reclaim_victims(spec, node.offer, allocations, borrowers)
            else:
                victims = ranking.preemption_victims(
                    spec, node.offer, allocations, lambda a: eligible(a) and self._movable(a)
                )
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
        self.work[name] = free
        self.touched.add(name)
        self.sealed.add(name)
        score = ranking.score(free, spec)  # before the job takes its devices
        plan.placed.setdefault(name, []).append(self.core.allocation(view, free, self.now))
        plan.victims[name] = victims
        for victim in victims:  # still counted until the removal is written (no same-pass reuse)
            _charge(self.leaving, victim)
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
        self._drop(name)  # its one proposal for this pass is made
        return True

    def _shrink(self, plan: Plan) -> None:
        """Quotas below usage (capacity shrank, or a reload): preempt the excess, cohort by cohort."""
        done: set[str] = set()
        for tenant in sorted(self.core.policy.tenants):
            members = self.accounts.cohort(tenant)
            if tenant in done:
                continue
            done.update(members)
            use: Vector = (0, 0, 0)
            limit: Vector = (0, 0, 0)
            for member in members:
                quota = self.accounts.quota(member)
                assert quota is not None
                used = self.accounts.used(member)
                use = (use[0] + used[0], use[1] + used[1], use[2] + used[2])
                limit = (limit[0] + quota[0], limit[1] + quota[1], limit[2] + quota[2])
            excess = (use[0] - limit[0], use[1] - limit[1], use[2] - limit[2])
            if not any(amount > 0 for amount in excess):
                continue
            freed = [0, 0, 0]
            for member in members:
                amount = self.leaving.get(member, (0, 0, 0))
                freed = [freed[i] + amount[i] for i in range(3)]
            needed = (excess[0] - freed[0], excess[1] - freed[1], excess[2] - freed[2])
            if any(amount > 0 for amount in needed):
                self._take_back(
                    members, needed, plan, f"quota of cohort {','.join(members)} shrank below use"
                )

    def _take_back(self, members: list[str], needed: Vector, plan: Plan, why: str) -> bool:
        """Preempt over-quota allocations of ``members`` (lowest priority, youngest first) for ``needed``."""
        candidates = self._victim_candidates(set(members))
        left = list(needed)
        after = dict(self.accounts.usage)
        chosen: list[tuple[str, Allocation]] = []
        for _, name, allocation in candidates:
            if all(amount <= 0 for amount in left):
                break
            quota = self.accounts.quota(allocation.tenant)
            use = after.get(allocation.tenant, (0, 0, 0))
            if quota is None or all(use[i] <= quota[i] for i in range(3)):
                continue  # within its own quota: not the one to give back
            amount = held(allocation)
            if not any(left[i] > 0 and amount[i] > 0 for i in range(3)):
                continue
            chosen.append((name, allocation))
            after[allocation.tenant] = (use[0] - amount[0], use[1] - amount[1], use[2] - amount[2])
            left = [left[i] - amount[i] for i in range(3)]
        if any(amount > 0 for amount in left):
            return False
        self._seal(chosen, plan, why)
        return True

    def _victim_candidates(
        self, tenants: set[str]
    ) -> list[tuple[tuple[int, float, str, int], str, Allocation]]:
        """Allocations of ``tenants`` that may be preempted this pass, lowest priority and youngest first."""
        candidates = []
        for name, node in self.core.nodes.items():
            if node.proposal is not None or name in self.touched:
                continue
            for allocation in node.current().allocations:
                if (
                    allocation.tenant in tenants
                    and not node.released(allocation)
                    and self._movable(allocation)
                ):
                    candidates.append((ranking.victim_order(allocation), name, allocation))
        candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
        return candidates

    def _seal(self, chosen: list[tuple[str, Allocation]], plan: Plan, why: str) -> None:
        """Make ``chosen`` this pass's victims: their nodes take no other change this pass."""
        for name, allocation in chosen:
            _charge(self.leaving, allocation)  # still counted until the removal is written
            plan.victims.setdefault(name, []).append(allocation)
            plan.reasons[name] = why
            self.touched.add(name)
            self.sealed.add(name)
            self._drop(name)

    def _reclaiming(self, tenant: str, plan: Plan) -> str:
        """A job of another cohort member that waits on a reclaim ("" when none): this pass's
        verdict for jobs it already considered, the last pass's for the others."""
        members = set(self.accounts.cohort(tenant)) - {tenant}
        for job in sorted((self.core.reclaims - self.seen) | plan.reclaims):
            view = self.core.jobs.get(job)
            if view is not None and view.record.state == "pending" and view.record.spec.tenant in members:
                return f"tenant {view.record.spec.tenant} (job {job})"
        return ""

    def _reclaim_custom(self, spec: Submit, excess: dict[str, float], plan: Plan) -> str:
        """Preempt borrowed holdings of custom resources (members over their own custom quota)."""
        others = [m for m in self.accounts.cohort(spec.tenant) if m != spec.tenant]
        used = {m: dict(self.accounts.custom_used.get(m, {})) for m in others}
        candidates = [c for c in self._victim_candidates(set(others)) if c[2].custom]
        needed = dict(excess)
        chosen: list[tuple[str, Allocation]] = []
        for _, name, allocation in candidates:
            if all(amount <= 0 for amount in needed.values()):
                break
            limits = self.core.policy.tenants[allocation.tenant].custom
            helps = [
                resource
                for resource, amount in allocation.custom.items()
                if needed.get(resource, 0) > 0
                and resource in limits
                and used[allocation.tenant].get(resource, 0.0) - amount >= limits[resource]
            ]
            if not helps:
                continue  # it holds nothing borrowed that we need
            chosen.append((name, allocation))
            for resource, amount in allocation.custom.items():
                used[allocation.tenant][resource] = used[allocation.tenant].get(resource, 0.0) - amount
                if resource in needed:
                    needed[resource] -= amount
        if any(amount > 0 for amount in needed.values()):
            return f"pending: reclaiming quota for tenant {spec.tenant}: borrowed allocations are busy"
        self._seal(chosen, plan, f"quota reclaimed by tenant {spec.tenant} (job {spec.id})")
        return f"pending: reclaiming quota for tenant {spec.tenant} from borrowers; admitted after"

    def _leaving_covers(self, spec: Submit, excess: Vector) -> bool:
        """Whether removals already decided in the cohort free enough: then wait, do not preempt."""
        freed = [0, 0, 0]
        for member in self.accounts.cohort(spec.tenant):
            amount = self.leaving.get(member, (0, 0, 0))
            freed = [freed[i] + amount[i] for i in range(3)]
        return all(excess[i] <= freed[i] for i in range(3))

    def _reclaim_quota(self, spec: Submit, excess: Vector, plan: Plan) -> str:
        """Preempt borrowers' allocations (lowest priority, youngest first) until ``excess`` is covered."""
        lenders_back = [m for m in self.accounts.cohort(spec.tenant) if m != spec.tenant]
        why = f"quota reclaimed by tenant {spec.tenant} (job {spec.id})"
        if not self._take_back(lenders_back, excess, plan, why):
            return f"pending: reclaiming quota for tenant {spec.tenant}: borrowed allocations are busy"
        return f"pending: reclaiming quota for tenant {spec.tenant} from borrowers; admitted after"

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
        return feasibility.explain(self.core.nodes[name], self._free(name), spec, self.core.region, self.now)


def _times(amounts: dict[str, float], factor: int) -> dict[str, float]:
    return {name: amount * factor for name, amount in amounts.items()}


def _charge(usage: dict[str, Vector], allocation: Allocation) -> None:
    amount = held(allocation)
    use = usage.get(allocation.tenant, (0, 0, 0))
    usage[allocation.tenant] = (use[0] + amount[0], use[1] + amount[1], use[2] + amount[2])
