"""A node's free capacity: its offer minus the allocations in its ledger.

Per resource and per device: a core id or GPU id that an allocation holds is not free, memory is
summed, and the offer's ``max_allocations`` caps the number of allocations. Whether a job fits is
asked of :mod:`federation.core.feasibility`; a job that fits takes the lowest free core ids and GPU
ids (:meth:`Free.take`), so the choice is deterministic.

Invariant I1 (no node's allocations exceed its offered capacity) holds for every ledger the core
builds, because devices are only ever handed out of a :class:`Free` that has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from federation.schemas import Allocation, Offer, Submit


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

    @staticmethod
    def same(a: Offer, b: Offer) -> bool:
        """Whether two offers of a node leave the same free capacity (everything :meth:`of` reads
        is equal): a refreshed offer that changes nothing else needs no new computation."""
        return (
            a.cores == b.cores
            and a.gpus == b.gpus
            and a.memory == b.memory
            and a.max_allocations == b.max_allocations
            and a.pinned == b.pinned
            and a.labels == b.labels
            and a.custom == b.custom
        )

    def take(self, spec: Submit) -> tuple[tuple[int, ...], tuple[str, ...]]:
        """Remove the lowest free devices ``spec`` needs and return them (call after a fit)."""
        cores, self.cores = tuple(self.cores[: spec.cpu]), self.cores[spec.cpu :]
        gpus, self.gpus = tuple(self.gpus[: spec.gpu]), self.gpus[spec.gpu :]
        self.memory -= spec.memory
        self.slots -= 1
        for name, amount in spec.custom.items():
            self.custom[name] = self.custom.get(name, 0.0) - amount
        return cores, gpus
