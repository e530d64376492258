"""A region's scheduling policy: scoring, preemption rules, retries.

The policy is data: the scheduler loads it from the ``[policy]`` table of its TOML config and hands
it to the core in a :class:`~federation.core.events.PolicyChanged` event, so a reload is an event like
any other and a replay of the same events reaches the same decisions. Unknown keys are an error.

Defaults: binpack scoring; only ``urgent`` jobs preempt, and only strictly lower priorities; a job
gets 3 attempts with exponential backoff (1 s, 2 s, 4 s, ... capped at 60 s) between them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from federation.schemas import PRIORITY_RANK, Priority

Scoring = Literal["binpack", "spread"]


class Policy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Scheduling policy of one region (the ``[policy]`` table of ``fed scheduler --config``)."""

    scoring: Scoring = "binpack"
    preempt: dict[Priority, bool] = msgspec.field(default_factory=lambda: {"urgent": True})
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    backoff: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    backoff_max: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0

    def may_preempt(self, priority: str) -> bool:
        """Whether a job of ``priority`` may preempt strictly lower-priority allocations."""
        return bool(self.preempt.get(priority, False))  # type: ignore[call-overload]

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` ended."""
        return float(min(self.backoff_max, self.backoff * 2 ** max(0, attempt - 1)))


def lower(victim: str, than: str) -> bool:
    """Whether priority ``victim`` is strictly lower than ``than``."""
    return PRIORITY_RANK[victim] > PRIORITY_RANK[than]
