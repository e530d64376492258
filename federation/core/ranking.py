"""Which feasible node is best, and which allocations give way: the ranking step of placement.

A pass asks :mod:`federation.core.feasibility` which nodes could take a job; this module orders
them. Binpack prefers the node with the least left after the job (GPUs, then cores, then memory),
spread the most; :class:`~federation.core.index.FreeIndex` keeps usable nodes sorted by the same
key, so the first fitting node it yields is the choice. For preemption, allocations give way
lowest priority first, youngest first, and only as many as the job needs.
"""

from __future__ import annotations

from collections.abc import Callable

from federation.core.capacity import Free
from federation.core.feasibility import room
from federation.schemas import PRIORITY_RANK, Allocation, Candidate, Offer, Submit


def score(free: Free, spec: Submit) -> tuple[int, int, int]:
    """What would be left (GPUs, cores, memory): binpack prefers the least, spread the most."""
    return (len(free.gpus) - spec.gpu, len(free.cores) - spec.cpu, free.memory - spec.memory)


def order(candidate: Candidate, spread: bool) -> tuple[object, ...]:
    """The sort key of a candidate: best first (ties by node name, so the choice is deterministic)."""
    return (tuple(-s for s in candidate.score) if spread else candidate.score, candidate.node)


def victim_order(allocation: Allocation) -> tuple[int, float, str, int]:
    """Sorted with ``reverse=True``: lowest priority first, then youngest (latest placed, then the
    latest job id: client ids are time-ordered) first."""
    return (PRIORITY_RANK[allocation.priority], allocation.placed_at, allocation.job, allocation.member)


def preemption_victims(
    spec: Submit, offer: Offer, allocations: tuple[Allocation, ...], eligible: Callable[[Allocation], bool]
) -> list[Allocation] | None:
    """The fewest ``eligible`` allocations whose removal lets ``spec`` fit, or None.

    Candidates are taken lowest priority first, youngest first, until the job fits; then any
    chosen victim that is not needed after all is given back. Deterministic for equal inputs.
    """
    candidates = sorted(
        (a for a in allocations if eligible(a)),
        key=victim_order,
        reverse=True,
    )
    chosen: list[Allocation] = []
    remaining = list(allocations)
    for victim in candidates:
        chosen.append(victim)
        remaining.remove(victim)
        if room(Free.of(offer, remaining), spec) is None:
            break
    else:
        return None
    for victim in list(chosen):
        trial = [*remaining, victim]
        if room(Free.of(offer, trial), spec) is None:
            chosen.remove(victim)
            remaining = trial
    return chosen
