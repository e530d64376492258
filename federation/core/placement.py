"""Fitting one job onto one node: free capacity, device choice, filter reasons, score.

Theory of operation. A node's free capacity is its offer minus the allocations in its ledger,
per resource and per device: a core id or GPU id that an allocation holds is not free, memory is
summed, and the offer's ``max_allocations`` caps the number of allocations. A job fits when every
requested amount is available; it then takes the lowest free core ids and GPU ids, so the choice is
deterministic. Nothing here reads a clock: offer expiry is judged against the ``now`` passed in.

Invariant I1 (no node's allocations exceed its offered capacity) holds for every ledger this
module builds, because :func:`allocate` only hands out devices from :class:`Free`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from federation.resources import format_memory
from federation.schemas import PRIORITY_RANK, Allocation, Offer, Submit

# Reasons a node is filtered out, in the order they are checked (also the order `explain` prints).
NO_OFFER = "no offer"
DOWN = "node down"
EXPIRED = "offer expired"
SLOTS = "no free allocation slot"
CPU = "too little cpu"
MEMORY = "too little memory"
GPU = "too little gpu"


LABELS = "label mismatch"
BUSY = "claim in flight"
FULL = "in use now (fits once allocations finish)"


@dataclass(slots=True)
class Free:
    """What is left of an offer after the allocations in the ledger (and tentative ones)."""

    cores: list[int]
    gpus: list[str]
    memory: int
    slots: int
    pinned: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    custom: dict[str, float] = field(default_factory=dict)

    def copy(self) -> Free:
        """An independent copy (a pass works on copies until its claims are written)."""
        return Free(
            list(self.cores),
            list(self.gpus),
            self.memory,
            self.slots,
            self.pinned,
            self.labels,
            dict(self.custom),
        )

    @classmethod
    def of(cls, offer: Offer, allocations: tuple[Allocation, ...] | list[Allocation]) -> Free:
        """Free capacity of ``offer`` once ``allocations`` are taken out."""
        used_cores = {c for a in allocations for c in a.cores}
        used_gpus = {g for a in allocations for g in a.gpus}
        return cls(  # dict.fromkeys: a device listed twice in an offer is still one device
            cores=[c for c in dict.fromkeys(offer.cores) if c not in used_cores],
            gpus=[g for g in dict.fromkeys(offer.gpus) if g not in used_gpus],
            memory=offer.memory - sum(a.memory for a in allocations),
            slots=offer.max_allocations - len(allocations),
            pinned=offer.pinned,
            labels=dict(offer.labels),
            custom={
                name: amount - sum(a.custom.get(name, 0.0) for a in allocations)
                for name, amount in offer.custom.items()
            },
        )

    def misfit(self, spec: Submit) -> str | None:
        """The first reason ``spec`` does not fit, or None when it fits."""
        if self.slots < 1:
            return SLOTS
        if len(self.cores) < spec.cpu:
            return CPU
        if self.memory < spec.memory:
            return MEMORY
        if len(self.gpus) < spec.gpu:
            return GPU
        for name, amount in sorted(spec.custom.items()):
            if self.custom.get(name, 0.0) < amount:
                return f"too little {name}"
        return None

    def take(self, spec: Submit) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Remove the lowest free devices ``spec`` needs and return them (call after a fit)."""
        cores, self.cores = tuple(self.cores[: spec.cpu]), self.cores[spec.cpu :]
        gpus, self.gpus = tuple(self.gpus[: spec.gpu]), self.gpus[spec.gpu :]
        self.memory -= spec.memory
        self.slots -= 1
        for name, amount in spec.custom.items():
            self.custom[name] = self.custom.get(name, 0.0) - amount
        return cores, gpus

    def score(self, spec: Submit) -> tuple[int, int, int]:
        """What would be left (GPUs, cores, memory): binpack prefers the least, spread the most."""
        return (len(self.gpus) - spec.gpu, len(self.cores) - spec.cpu, self.memory - spec.memory)


def labels_match(name: str, region: str, labels: dict[str, str], require: dict[str, str]) -> bool:
    """Whether a node carries every required label (a value may list alternatives: ``A100,H100``)."""
    for key, wanted in require.items():
        have = name if key == "node" else region if key == "region" else labels.get(key)
        if have is None or have not in {v.strip() for v in wanted.split(",")}:
            return False
    return True


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
        if Free.of(offer, remaining).misfit(spec) is None:
            break
    else:
        return None
    for victim in list(chosen):
        trial = [*remaining, victim]
        if Free.of(offer, trial).misfit(spec) is None:
            chosen.remove(victim)
            remaining = trial
    return chosen


def shape(spec: Submit) -> tuple[object, ...]:
    """Jobs with the same shape fit the same nodes; a pass caches misfits by shape."""
    return (
        spec.cpu,
        spec.memory,
        spec.gpu,
        tuple(sorted(spec.require.items())),
        tuple(sorted(spec.custom.items())),
    )


def describe_request(spec: Submit) -> str:
    """``cpu=1 memory=512MiB gpu=0`` for explanations."""
    return f"cpu={spec.cpu} memory={format_memory(spec.memory)} gpu={spec.gpu}"


def explain_misfit(spec: Submit, reasons: dict[str, list[str]], considered: int) -> str:
    """A one-line "why pending": which filter rejected how many nodes, with examples."""
    if considered == 0:
        return "pending: no node in this region has offered capacity yet"
    order = [NO_OFFER, DOWN, EXPIRED, LABELS, BUSY, FULL, SLOTS, CPU, MEMORY, GPU]
    order += sorted(set(reasons) - set(order))  # custom resources: "too little <name>"
    parts = []
    for reason in order:
        nodes = reasons.get(reason)
        if nodes:
            sample = ", ".join(sorted(nodes)[:3]) + (", ..." if len(nodes) > 3 else "")
            parts.append(f"{reason} on {len(nodes)} node{'s' if len(nodes) != 1 else ''} ({sample})")
    return f"pending: no node fits {describe_request(spec)}: " + "; ".join(parts)
