"""Quota admission and reclaim, for one pass: may this tenant's job start now, and at whose cost.

Theory of operation
-------------------
Admission comes before fitting (:mod:`federation.core.planning` asks :meth:`Quotas.admit` first,
and fits only an admitted job). The accounting is :class:`~federation.core.quota.Accounts`
(usage, quotas, cohorts, dominant shares), built on first use from every ledger of the region:
a pass without quotas and with one tenant never walks them. A job is admitted

- *unlimited*: its tenant has no quota;
- *within* its tenant's quota: it may also **reclaim**, i.e. preempt allocations of cohort members
  that are over their own quota (borrowers), whatever their priority, when borrowers hold the
  cohort's room: the victims' removal is written first, and the job is admitted in a later pass;
- by **borrowing** from its cohort: unless a lender of the cohort is reclaiming now;
- or not (*over*): it waits, and its reason says which resource is short.

Usage counts conservatively: an allocation counts until its removal is written, and a claim in
flight counts already, so a quota holds in every stored state. When quotas shrink below usage
(capacity shrank, a policy reload) and the policy says ``on_shrink = "preempt"``, :meth:`shrink`
preempts the excess, cohort by cohort; with ``drain`` the cohort waits for work to finish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federation.core import feasibility, ranking
from federation.core.capacity import Free
from federation.core.plan import Plan
from federation.core.quota import Accounts, Admission, Vector, held, request
from federation.schemas import Allocation, Offer, Submit

if TYPE_CHECKING:
    from federation.core.views import Region
    from federation.core.workspace import Workspace

UNLIMITED = Admission("unlimited")


def movable(core: Region, allocation: Allocation) -> bool:
    """Whether an allocation may be preempted: not a member of a gang still being claimed."""
    view = core.jobs.get(allocation.job)
    return not allocation.held and (view is None or view.gang is None)


class Quotas:
    """The quota side of one pass over ``core``: admission, accounting, reclaim."""

    def __init__(self, core: Region, now: float, space: Workspace) -> None:
        self.core = core
        self.now = now
        self.space = space
        self.enabled = bool(core.policy.tenants)
        self.leaving: dict[str, Vector] = {}  # usage whose removal is decided but not yet written
        self._accounts: Accounts | None = None
        self.placed_here: list[Submit] = []
        self.custom_used: dict[str, dict[str, float]] = {}

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
            live = feasibility.live(node, self.now)
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

    # --- admission -------------------------------------------------------------------------------

    def admit(self, spec: Submit, plan: Plan, seen: set[str]) -> tuple[Admission, str]:
        """How ``spec`` is admitted, and why it waits instead ("" when it may be fitted now).
        ``seen`` are the jobs this pass has considered so far (their reclaims are this pass's)."""
        if not self.enabled:
            return UNLIMITED, ""
        admission = self.accounts.admit(spec)
        if admission.kind == "borrow":
            waiting = self._reclaiming(spec.tenant, plan, seen)
            if waiting:  # lenders are taking their quota back: no new borrowing in this cohort
                return admission, (
                    f"pending: quota: cohort is reclaiming for {waiting}; no borrowing until it is placed"
                )
        if admission.kind == "over":
            return admission, admission.reason
        if admission.kind == "within":
            return admission, self._within(spec, plan)
        return admission, ""

    def _within(self, spec: Submit, plan: Plan) -> str:
        """Why a job within its own quota waits ("" when it may be fitted now): borrowers hold the
        cohort's room, so it reclaims first (the victims' removal is written before it is admitted,
        in a later pass), or waits for removals already decided, or for the cohort to drain."""
        excess = self.accounts.cohort_excess(spec)
        if any(amount > 0 for amount in excess):
            plan.reclaims.add(spec.id)  # holds back new borrowing in the cohort until resolved
            if self._leaving_covers(spec, excess):
                return "pending: waiting for released quota to be written"
            if self.core.policy.on_shrink == "drain":
                before = self.accounts.cohort_excess(spec, with_job=False)
                if any(amount > 0 for amount in before):  # over before this job: quotas shrank
                    return "pending: quota: the cohort uses more than its quotas now allow; draining"
            return self._reclaim_quota(spec, excess, plan)
        custom_excess = self.accounts.custom_excess(spec)
        if custom_excess:  # the same, for a custom resource the cohort lent out
            plan.reclaims.add(spec.id)
            return self._reclaim_custom(spec, custom_excess, plan)
        return ""

    def charge(self, spec: Submit) -> None:
        """Count a job this pass placed."""
        if self._accounts is not None:
            self._accounts.charge(spec.tenant, request(spec))
            self._accounts.charge_custom(spec.tenant, _times(spec.custom, spec.gang))
        else:
            self.placed_here.append(spec)

    def leave(self, allocation: Allocation) -> None:
        """A victim chosen by this pass: still counted until its removal is written (no same-pass reuse)."""
        _charge(self.leaving, allocation)

    def share(self, tenant: str) -> float:
        """The tenant's dominant share now (the fair order within a priority level)."""
        return self.accounts.share(tenant)

    def borrowing(self) -> bool:
        """Whether some tenant is borrowing, so that a reclaim could still make room."""
        return self.enabled and self.accounts.borrowing()

    def borrowers(self, tenant: str) -> set[str]:
        """The members of the tenant's cohort that are over their own quota."""
        members = set(self.accounts.cohort(tenant)) - {tenant}
        return {m for m in members if self.accounts.over(m)}

    # --- reclaim ---------------------------------------------------------------------------------

    def reclaim_victims(
        self, spec: Submit, offer: Offer, allocations: tuple[Allocation, ...], borrowers: set[str]
    ) -> list[Allocation] | None:
        """Borrowed allocations on one node whose removal lets ``spec`` fit: a borrower gives back
        only while it stays over its own quota (never what its quota covers)."""
        after = dict(self.accounts.usage)
        remaining = list(allocations)
        chosen: list[Allocation] = []
        for victim in sorted(
            (a for a in allocations if a.tenant in borrowers and movable(self.core, a)),
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

    def shrink(self, plan: Plan) -> None:
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
            if node.proposal is not None or name in self.space.touched:
                continue
            for allocation in node.current().allocations:
                if (
                    allocation.tenant in tenants
                    and not node.released(allocation)
                    and movable(self.core, allocation)
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
            self.space.seal(name)

    def _reclaiming(self, tenant: str, plan: Plan, seen: set[str]) -> str:
        """A job of another cohort member that waits on a reclaim ("" when none): this pass's
        verdict for jobs it already considered, the last pass's for the others."""
        members = set(self.accounts.cohort(tenant)) - {tenant}
        for job in sorted((self.core.reclaims - seen) | plan.reclaims):
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


def _times(amounts: dict[str, float], factor: int) -> dict[str, float]:
    return {name: amount * factor for name, amount in amounts.items()}


def _charge(usage: dict[str, Vector], allocation: Allocation) -> None:
    amount = held(allocation)
    use = usage.get(allocation.tenant, (0, 0, 0))
    usage[allocation.tenant] = (use[0] + amount[0], use[1] + amount[1], use[2] + amount[2])
