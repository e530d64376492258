"""What a scheduling pass decided, for the region state to carry out.

:class:`~federation.core.planning.Pass` (and the quota admission it asks,
:mod:`federation.core.admission`) fills a :class:`Plan`; :class:`~federation.core.state.RegionCore`
turns it into one proposed ledger per node and the record changes that follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from federation.schemas import Allocation, Decision


@dataclass
class Plan:
    """What a pass decided; the region state turns it into proposals and record changes."""

    placed: dict[str, list[Allocation]] = field(default_factory=dict)
    victims: dict[str, list[Allocation]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    reclaims: set[str] = field(default_factory=set)
    decisions: dict[str, Decision] = field(default_factory=dict)
    waiting: dict[str, tuple[str, Decision]] = field(default_factory=dict)
    dequeued: set[str] = field(default_factory=set)  # placed: out of the queue when carried out
    expired: set[str] = field(default_factory=set)  # nodes whose offers expired: out of the index
