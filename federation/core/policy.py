"""A region's scheduling policy: scoring, preemption rules, retries.

The policy is data: the scheduler loads it from the ``[policy]`` table of its TOML config and hands
it to the core in a :class:`~federation.core.events.PolicyChanged` event, so a reload is an event like
any other and a replay of the same events reaches the same decisions. Unknown keys are an error.

Defaults: binpack scoring; only ``urgent`` jobs preempt, and only strictly lower priorities; a job
gets 3 attempts with exponential backoff (1 s, 2 s, 4 s, ... capped at 60 s) between them; a job
whose node is lost ends ``lost`` (``on_node_lost = "fail"``: at most once unless a job or the
region asks for ``replace`` or ``wait=DURATION``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from federation.resources import parse_duration, parse_memory
from federation.schemas import PRIORITY_RANK, OnNodeLost, Priority, Submit

Scoring = Literal["binpack", "spread"]
LostAction = Literal["replace", "fail"]
UNLIMITED = 2**62


class Quota(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """A tenant's nominal quota in this region (``[policy.tenants.<name>]``).

    ``cpu`` in cores, ``memory`` in bytes or a quantity string (``"64GiB"``), ``gpu`` in devices; a
    resource left out is not limited. With ``share`` > 0 the quota is instead that fraction of what
    the region's nodes offer right now, so it follows capacity both ways. Tenants in the same
    ``cohort`` lend each other their unused quota; a lender that needs it back reclaims it by
    preemption. With ``spill_on_quota`` a job of the tenant that waits here only because of its
    quota is offered to other regions (each admits it under its own quotas), as a job that fits
    nowhere here is.
    """

    cpu: Annotated[int, msgspec.Meta(ge=0)] | None = None
    memory: int | str | None = None
    gpu: Annotated[int, msgspec.Meta(ge=0)] | None = None
    share: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    cohort: str = ""
    custom: dict[str, Annotated[float, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=dict)
    spill_on_quota: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.memory, str):
            parse_memory(self.memory)  # a bad quantity fails at load time, naming the value

    def vector(self, capacity: tuple[int, int, int]) -> tuple[int, int, int]:
        """The quota as (cpu, memory bytes, gpu) given the region's offered ``capacity``."""
        if self.share > 0:
            return (
                int(capacity[0] * self.share),
                int(capacity[1] * self.share),
                int(capacity[2] * self.share),
            )
        memory = parse_memory(self.memory) if isinstance(self.memory, str) else self.memory
        return (
            UNLIMITED if self.cpu is None else self.cpu,
            UNLIMITED if memory is None else memory,
            UNLIMITED if self.gpu is None else self.gpu,
        )


class Policy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Scheduling policy of one region (the ``[policy]`` table of ``fed scheduler --config``).

    ``tenants`` is empty by default: no quotas, every tenant competes by priority and fair share.
    A tenant absent from a non-empty table is not limited. When quotas shrink below what is in use
    (a ``share`` quota as offers shrink, or a reload), ``on_shrink = "drain"`` stops admissions and
    lets running work finish; ``"preempt"`` preempts the over-quota work (youngest, lowest first).

    Node loss: no decision is taken until ``node_settle`` seconds after a loss, so that losing
    every node at once (a sick broker or a cut network, whose heartbeat markers arrive spread
    over a beat) is seen as that and freezes decisions; a freeze lasts at most ``freeze_limit``
    seconds, and when heartbeats resume the nodes still silent get ``node_grace`` more seconds.
    A region of one node never freezes (it cannot tell the two apart). Heartbeats and offer
    refreshes of all the region's nodes together stay within ``node_messages_per_second``: the
    nodes of a large region beat less often (:mod:`federation.core.cadence`), and losses are
    decided at least one heartbeat interval after them.

    Cross-region (:mod:`federation.core.spill`): a job that fits nowhere here for ``spill_after``
    seconds is offered to another region whose view (younger than ``view_stale``) shows room; a
    hand-off unanswered after ``handoff_timeout`` is unknown, asked again every ``handoff_retry``.
    ``clock_skew`` bounds how far regions' clocks may disagree (a hand-off request carries a deadline).

    Data (:mod:`federation.bus.objects`): a job's input files may total ``max_input_bytes`` and its
    stored outputs ``max_output_bytes`` (0: no limit); the region's object store keeps what is
    written to it for ``object_retention`` seconds (the files of jobs older than that are removed by
    the server).
    """

    scoring: Scoring = "binpack"
    preempt: dict[Priority, bool] = msgspec.field(default_factory=lambda: {"urgent": True})
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    backoff: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    backoff_max: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 60.0
    tenants: dict[str, Quota] = msgspec.field(default_factory=dict)
    on_shrink: Literal["drain", "preempt"] = "drain"
    on_node_lost: OnNodeLost = "fail"
    node_grace: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 10.0
    node_settle: Annotated[float, msgspec.Meta(ge=0, le=600)] = 2.0
    node_messages_per_second: Annotated[float, msgspec.Meta(gt=0, le=1_000_000)] = 1000.0
    freeze_limit: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 300.0
    spill_after: Annotated[float, msgspec.Meta(ge=0, le=86400)] = 0.0
    handoff_timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 3.0
    handoff_retry: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    view_stale: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    clock_skew: Annotated[float, msgspec.Meta(ge=0, le=600)] = 1.0
    max_input_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024**3
    max_output_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024**3
    object_retention: Annotated[float, msgspec.Meta(gt=0, le=3650 * 86400)] = 7 * 86400.0

    def __post_init__(self) -> None:
        if not self.on_node_lost:
            raise msgspec.ValidationError("on_node_lost must be replace, fail or wait=DURATION")

    def node_lost(self, spec: Submit) -> tuple[LostAction, float]:
        """What to do with ``spec``'s job when its node is lost, and how long to wait first.

        ``wait=D`` keeps the allocation ``D`` seconds, then replaces it.
        """
        text = spec.on_node_lost or self.on_node_lost
        if text.startswith("wait="):
            return "replace", parse_duration(text[5:])
        return ("fail" if text == "fail" else "replace"), 0.0

    def may_preempt(self, priority: str) -> bool:
        """Whether a job of ``priority`` may preempt strictly lower-priority allocations."""
        return bool(self.preempt.get(priority, False))  # type: ignore[call-overload]

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` ended."""
        return float(min(self.backoff_max, self.backoff * 2 ** max(0, attempt - 1)))


def lower(victim: str, than: str) -> bool:
    """Whether priority ``victim`` is strictly lower than ``than``."""
    return PRIORITY_RANK[victim] > PRIORITY_RANK[than]
