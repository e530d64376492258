"""Tenant accounting for one pass: usage, quotas, cohorts, borrowing, dominant shares.

Theory of operation. A tenant's usage is the sum of (cpu, memory, gpu) of its allocations in the
region's ledgers, plus what the current pass adds. A job is *within quota* when usage plus its
request stays under the tenant's quota; otherwise it may *borrow* when the tenant's cohort as a
whole stays under the cohort's summed quotas (Kueue's cohort rule); otherwise it waits, and its
pending reason says which resource is short. A tenant that is within quota but finds no room may
*reclaim*: preempt allocations of cohort members that are over their own quota (borrowers),
whatever their priority. Tenants without a quota entry are not limited.

Fair share: within one priority level the pass serves tenants in order of their dominant share,
the largest fraction of any resource of the region's offered capacity that the tenant uses
(dominant-resource fairness), so a flood from one tenant cannot starve another.
"""

from __future__ import annotations

from dataclasses import dataclass

from federation.core.policy import Policy
from federation.resources import format_memory
from federation.schemas import Allocation, Submit

Vector = tuple[int, int, int]
NAMES = ("cpu", "memory", "gpu")


def request(spec: Submit) -> Vector:
    """What a job asks for in all (every member of a gang), as a vector."""
    return (spec.cpu * spec.gang, spec.memory * spec.gang, spec.gpu * spec.gang)


def held(allocation: Allocation) -> Vector:
    """What an allocation holds, as a vector."""
    return (allocation.cpu, allocation.memory, len(allocation.gpus))


def _add(a: Vector, b: Vector, sign: int = 1) -> Vector:
    return (a[0] + sign * b[0], a[1] + sign * b[1], a[2] + sign * b[2])


def _fits(use: Vector, limit: Vector) -> bool:
    return use[0] <= limit[0] and use[1] <= limit[1] and use[2] <= limit[2]


def _show(index: int, value: int) -> str:
    return format_memory(value) if NAMES[index] == "memory" else str(value)


@dataclass(frozen=True)
class Admission:
    """Whether a job may be admitted under quota, and how."""

    kind: str  # "unlimited", "within", "borrow" or "over"
    reason: str = ""


class Accounts:
    """Usage and quotas of every tenant during one pass."""

    def __init__(
        self,
        policy: Policy,
        capacity: Vector,
        usage: dict[str, Vector],
        custom_used: dict[str, dict[str, float]] | None = None,
    ) -> None:
        self.policy = policy
        self.capacity = capacity
        self.usage = dict(usage)
        self.custom_used = {t: dict(v) for t, v in (custom_used or {}).items()}

    @property
    def enabled(self) -> bool:
        """Whether any quota is configured."""
        return bool(self.policy.tenants)

    def quota(self, tenant: str) -> Vector | None:
        """The tenant's quota now (None: not limited)."""
        entry = self.policy.tenants.get(tenant)
        return entry.vector(self.capacity) if entry is not None else None

    def used(self, tenant: str) -> Vector:
        """The tenant's usage, including this pass's placements."""
        return self.usage.get(tenant, (0, 0, 0))

    def cohort(self, tenant: str) -> list[str]:
        """The tenant's cohort members (itself included); just itself without a cohort."""
        entry = self.policy.tenants.get(tenant)
        if entry is None or not entry.cohort:
            return [tenant]
        return sorted(name for name, quota in self.policy.tenants.items() if quota.cohort == entry.cohort)

    def over(self, tenant: str) -> bool:
        """Whether the tenant uses more than its own quota (it is borrowing)."""
        quota = self.quota(tenant)
        return quota is not None and not _fits(self.used(tenant), quota)

    def borrowing(self) -> bool:
        """Whether any tenant is borrowing (so a reclaim could free room)."""
        return any(self.over(tenant) for tenant in self.policy.tenants)

    def admit(self, spec: Submit) -> Admission:
        """Within quota, borrowing from the cohort, or over (with the reason)."""
        quota = self.quota(spec.tenant)
        if quota is None:
            return Admission("unlimited")
        wanted = _add(self.used(spec.tenant), request(spec))
        custom_short = self._custom_short(spec)
        if _fits(wanted, quota) and not custom_short:
            return Admission("within")
        members = self.cohort(spec.tenant)
        if len(members) > 1:
            room = all(amount <= 0 for amount in self.cohort_excess(spec))
            if room and not self.custom_excess(spec):
                return Admission("borrow")
        if custom_short and _fits(wanted, quota):
            return Admission("over", f"pending: quota: tenant {spec.tenant} {custom_short}")
        short = next(i for i in range(3) if wanted[i] > quota[i])
        where = (
            f"; cohort {self.policy.tenants[spec.tenant].cohort} has none to lend" if len(members) > 1 else ""
        )
        reason = (
            f"pending: quota: tenant {spec.tenant} would use {_show(short, wanted[short])} {NAMES[short]} "
            f"of its {_show(short, quota[short])}{where}"
        )
        return Admission("over", reason)

    def cohort_excess(self, spec: Submit, *, with_job: bool = True) -> Vector:
        """How far the cohort would exceed its summed quotas with this job (positive: too far)."""
        members = self.cohort(spec.tenant)
        if len(members) == 1:
            return (0, 0, 0)
        use = request(spec) if with_job else (0, 0, 0)
        limit: Vector = (0, 0, 0)
        for member in members:
            use = _add(use, self.used(member))
            quota = self.quota(member)
            if quota is not None:
                limit = _add(limit, quota)
        return (use[0] - limit[0], use[1] - limit[1], use[2] - limit[2])

    def _custom_short(self, spec: Submit) -> str:
        """Which of its own custom resource quotas ``spec``'s tenant would exceed ("" when none)."""
        limits = self.policy.tenants[spec.tenant].custom
        for name, amount in sorted(spec.custom.items()):
            if name in limits:
                used = self.custom_used.get(spec.tenant, {}).get(name, 0.0)
                if used + amount > limits[name]:
                    return f"would use {used + amount:g} {name} of {limits[name]:g}"
        return ""

    def custom_excess(self, spec: Submit) -> dict[str, float]:
        """Custom resources the cohort would hold beyond its summed custom quotas with this job."""
        members = self.cohort(spec.tenant)
        if len(members) == 1:
            return {}
        out = {}
        for name, amount in sorted(spec.custom.items()):
            limits = [self.policy.tenants[m].custom.get(name) for m in members if m in self.policy.tenants]
            if all(limit is None for limit in limits):
                continue
            total = sum(self.custom_used.get(m, {}).get(name, 0.0) for m in members) + amount * spec.gang
            excess = total - sum(limit for limit in limits if limit is not None)
            if excess > 0:
                out[name] = excess
        return out

    def charge_custom(self, tenant: str, amounts: dict[str, float], sign: int = 1) -> None:
        """Add (or remove) custom resource usage."""
        mine = self.custom_used.setdefault(tenant, {})
        for name, amount in amounts.items():
            mine[name] = mine.get(name, 0.0) + sign * amount

    def charge(self, tenant: str, amount: Vector, sign: int = 1) -> None:
        """Add (or with ``sign=-1`` remove) usage."""
        self.usage[tenant] = _add(self.used(tenant), amount, sign)

    def share(self, tenant: str) -> float:
        """The tenant's dominant share of the region's offered capacity."""
        use = self.used(tenant)
        return max((use[i] / self.capacity[i] for i in range(3) if self.capacity[i] > 0), default=0.0)
