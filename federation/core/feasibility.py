"""Can this node take this job: one ordered table of feasibility checks.

Theory of operation
-------------------
Placement is three steps, as in Nomad's scheduler: feasibility (which nodes could take the job at
all), ranking (which of those is best: :mod:`federation.core.ranking`), and the plan
(:mod:`federation.core.planning`). This module is the first step, and the only place that says
what makes a node unfit. :data:`CHECKS` lists every check in the order they are asked; each names
the reason it reports, the stage it belongs to, and how it judges a node (and, where a region's
capacity summary carries the facts, how it judges a region). A new filter is one entry.

The stages are what callers choose between:

- ``LIVE``: the node offers capacity now (an offer, a heartbeat, an unexpired offer);
- ``MATCH``: the job's constraints (required labels, node and region names);
- ``CLAIM``: no claim of this region is in flight on the node (each node takes one at a time);
- ``ROOM``: capacity left: an allocation slot, cores, memory, GPUs, custom resources.

Who asks what:

- a pass places a job on a node that passes every stage (:func:`rejection` with :data:`ALL`);
- preemption looks at nodes that pass ``LIVE``, ``MATCH`` and ``CLAIM``: room is what its victims
  make (:func:`room` judges the node with them removed);
- a region offered a job by another (a hand-off) asks ``LIVE``, ``MATCH`` and ``ROOM`` of its
  stored ledgers, claims in flight aside;
- a region's capacity summary counts the nodes that pass ``LIVE`` (:func:`live`);
- the spillover choice asks the same questions of other regions' summaries
  (:func:`region_rejection`): liveness, then room, then labels;
- ``fed explain`` counts every node under the first check that rejects it (:func:`explain`,
  in table order; a node with no room now but enough once its allocations finish is "in use now").

Nothing here reads a clock: offer expiry is judged against the ``now`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal, Protocol

from federation.core.capacity import Free
from federation.resources import format_memory
from federation.schemas import Ledger, Offer, Submit, Summary

Stage = Literal["live", "match", "claim", "room"]
LIVE: Stage = "live"
MATCH: Stage = "match"
CLAIM: Stage = "claim"
ROOM: Stage = "room"
ALL: tuple[Stage, ...] = (LIVE, MATCH, CLAIM, ROOM)
REGION_STAGES: tuple[Stage, ...] = (LIVE, ROOM, MATCH)  # what a region's summary answers, in order

# The reasons a node is filtered out (the order is the table's, below).
NO_OFFER = "no offer"
DOWN = "node down"
EXPIRED = "offer expired"
LABELS = "label mismatch"
BUSY = "claim in flight"
FULL = "in use now (fits once allocations finish)"  # room once the node's allocations finish
SLOTS = "no free allocation slot"
CPU = "too little cpu"
MEMORY = "too little memory"
GPU = "too little gpu"
CUSTOM = "too little <resource>"  # the table's name for the custom check: it reports the resource


class NodeFacts(Protocol):
    """What a check reads of a node (the core's :class:`~federation.core.views.NodeView`)."""

    @property
    def name(self) -> str: ...

    @property
    def offer(self) -> Offer | None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def proposal(self) -> Ledger | None: ...


Reserved = tuple[int, int, int]  # cores, memory, GPUs that hand-offs in flight to a region count on
NodeTest = Callable[[NodeFacts, Free | None, Submit, str, float], str | None]
RegionTest = Callable[[Summary, Submit, Reserved], str]


@dataclass(frozen=True, slots=True)
class Check:
    """One question: ``node(node, free, spec, region, now)`` gives the reason it rejects the node
    (None: passes); ``region(summary, spec, reserved)`` asks it of a region's summary ("" passes)."""

    reason: str
    stage: Stage
    node: NodeTest
    region: RegionTest | None = None


def labels_match(name: str, region: str, labels: dict[str, str], require: dict[str, str]) -> bool:
    """Whether a node carries every required label (a value may list alternatives: ``A100,H100``)."""
    for key, wanted in require.items():
        have = name if key == "node" else region if key == "region" else labels.get(key)
        if have is None or have not in {v.strip() for v in wanted.split(",")}:
            return False
    return True


# --- the checks ------------------------------------------------------------------------------------
# Each node test may assume the checks before it in the table passed (an offer exists after NO_OFFER).


def _no_offer(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return NO_OFFER if node.offer is None else None


def _down(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return DOWN if not node.alive else None


def _expired(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return EXPIRED if node.offer is not None and node.offer.expires_at <= now else None


def _labels(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    if not spec.require or node.offer is None:
        return None
    return None if labels_match(node.name, region, node.offer.labels, spec.require) else LABELS


def _busy(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return BUSY if node.proposal is not None else None


def _slots(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return SLOTS if free is not None and free.slots < 1 else None


def _cpu(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return CPU if free is not None and len(free.cores) < spec.cpu else None


def _memory(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return MEMORY if free is not None and free.memory < spec.memory else None


def _gpu(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    return GPU if free is not None and len(free.gpus) < spec.gpu else None


def _custom(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str | None:
    if free is None:
        return None
    for name, amount in sorted(spec.custom.items()):
        if free.custom.get(name, 0.0) < amount:
            return f"too little {name}"
    return None


def _region_live(view: Summary, spec: Submit, reserved: Reserved) -> str:
    return "no live node" if view.live == 0 else ""


def _region_labels(view: Summary, spec: Submit, reserved: Reserved) -> str:
    for key, wanted in spec.require.items():
        if key == "node":
            continue  # node names are not in summaries; the remote region checks
        options = {v.strip() for v in wanted.split(",")}
        values = {view.region} if key == "region" else set(view.labels.get(key, ()))
        if not options & values:
            return f"no node labelled {key}={wanted}"
    return ""


def _region_cpu(view: Summary, spec: Submit, reserved: Reserved) -> str:
    left = view.cpu_free - reserved[0]
    return f"{max(0, left)} cores free" if left < spec.cpu else ""


def _region_memory(view: Summary, spec: Submit, reserved: Reserved) -> str:
    return "not enough memory free" if view.memory_free - reserved[1] < spec.memory else ""


def _region_gpu(view: Summary, spec: Submit, reserved: Reserved) -> str:
    left = view.gpu_free - reserved[2]
    return f"{max(0, left)} GPUs free" if left < spec.gpu else ""


def _region_custom(view: Summary, spec: Submit, reserved: Reserved) -> str:
    for name, amount in spec.custom.items():
        have = view.custom.get(name)
        if not isinstance(have, float | int) or have < amount:
            return f"not enough {name}"
    return ""


CHECKS: tuple[Check, ...] = (
    Check(NO_OFFER, LIVE, _no_offer, _region_live),  # a region: no live node is all three at once
    Check(DOWN, LIVE, _down),
    Check(EXPIRED, LIVE, _expired),
    Check(LABELS, MATCH, _labels, _region_labels),
    Check(BUSY, CLAIM, _busy),
    Check(SLOTS, ROOM, _slots),  # summaries carry no slot counts: the remote region checks
    Check(CPU, ROOM, _cpu, _region_cpu),
    Check(MEMORY, ROOM, _memory, _region_memory),
    Check(GPU, ROOM, _gpu, _region_gpu),
    Check(CUSTOM, ROOM, _custom, _region_custom),
)
"""Every feasibility check, in the order they are asked (and ``fed explain`` lists them)."""

_ROOM = tuple(check for check in CHECKS if check.stage == ROOM)
_BY_STAGES: dict[tuple[Stage, ...], tuple[Check, ...]] = {}


# --- asking ----------------------------------------------------------------------------------------


def rejection(
    node: NodeFacts,
    free: Free | None,
    spec: Submit,
    region: str,
    now: float,
    stages: Collection[Stage] = ALL,
) -> str | None:
    """The reason of the first check of ``stages`` that rejects ``node`` for ``spec`` (None: it
    passes them all). ``free`` is the node's free capacity as the caller counts it (a pass counts
    what it already gave away); a node without one has no offer."""
    for check in _asked(stages):
        if free is None and check.stage == ROOM:
            return NO_OFFER
        reason = check.node(node, free, spec, region, now)
        if reason is not None:
            return reason
    return None


def _asked(stages: Collection[Stage]) -> tuple[Check, ...]:
    """The checks of ``stages``, in table order (kept per choice of stages: a pass asks often)."""
    key = tuple(stages)
    checks = _BY_STAGES.get(key)
    if checks is None:
        checks = _BY_STAGES[key] = tuple(check for check in CHECKS if check.stage in stages)
    return checks


def room(free: Free, spec: Submit) -> str | None:
    """The first ``ROOM`` check ``free`` fails for ``spec`` (None: the job fits in it)."""
    for check in _ROOM:
        reason = check.node(_NOWHERE, free, spec, "", 0.0)
        if reason is not None:
            return reason
    return None


def live(node: NodeFacts, now: float) -> bool:
    """Whether ``node`` offers capacity now (passes the ``LIVE`` checks)."""
    return rejection(node, None, _ANY, "", now, (LIVE,)) is None


def explain(node: NodeFacts, free: Free | None, spec: Submit, region: str, now: float) -> str:
    """Why ``node`` cannot take ``spec`` now, for ``fed explain`` ("" when it can): the first
    check that rejects it, except that a node short of room only because of what runs on it now
    is :data:`FULL` (the reason that holds even when the node is empty is the one that matters)."""
    reason = rejection(node, free, spec, region, now)
    if reason is None:
        return ""
    if reason in _ROOM_REASONS or reason.startswith("too little "):
        assert node.offer is not None  # ROOM checks run only after NO_OFFER passed
        return room(Free.of(node.offer, ()), spec) or FULL
    return reason


def region_rejection(view: Summary, spec: Submit, reserved: Reserved = (0, 0, 0)) -> str:
    """Why a region's summary cannot hold ``spec`` ("" when it can, as far as the summary tells):
    the same table, asked in :data:`REGION_STAGES` order of the checks a summary can answer.
    ``reserved`` is what hand-offs in flight to that region already count on."""
    for stage in REGION_STAGES:
        for check in CHECKS:
            if check.stage == stage and check.region is not None:
                reason = check.region(view, spec, reserved)
                if reason:
                    return reason
    return ""


def explain_order(reasons: Collection[str]) -> list[str]:
    """The order ``fed explain`` lists filter reasons in: the table's, with :data:`FULL` before the
    room checks and each custom resource ("too little <name>", sorted) in the custom check's place."""
    order: list[str] = []
    for check in CHECKS:
        if check.stage == ROOM and FULL not in order:
            order.append(FULL)
        if check.reason == CUSTOM:
            order += sorted(r for r in reasons if r.startswith("too little ") and r not in order)
        else:
            order.append(check.reason)
    return order


def describe_request(spec: Submit) -> str:
    """``cpu=1 memory=512MiB gpu=0`` for explanations."""
    return f"cpu={spec.cpu} memory={format_memory(spec.memory)} gpu={spec.gpu}"


def explain_misfit(spec: Submit, reasons: dict[str, list[str]], considered: int) -> str:
    """A one-line "why pending": which check rejected how many nodes, with examples."""
    if considered == 0:
        return "pending: no node in this region has offered capacity yet"
    parts = []
    for reason in explain_order(reasons):
        nodes = reasons.get(reason)
        if nodes:
            sample = ", ".join(sorted(nodes)[:3]) + (", ..." if len(nodes) > 3 else "")
            parts.append(f"{reason} on {len(nodes)} node{'s' if len(nodes) != 1 else ''} ({sample})")
    return f"pending: no node fits {describe_request(spec)}: " + "; ".join(parts)


def shape(spec: Submit) -> tuple[object, ...]:
    """Jobs with the same shape pass and fail the same checks on the same nodes (a pass caches
    its explanations by shape)."""
    return (
        spec.cpu,
        spec.memory,
        spec.gpu,
        tuple(sorted(spec.require.items())),
        tuple(sorted(spec.custom.items())),
    )


class _Nowhere:
    """The node :func:`room` asks about: room checks read only the free capacity."""

    name = ""
    offer = None
    alive = True
    proposal = None


_NOWHERE = _Nowhere()
_ANY = Submit(id="any", command=["true"], cpu=0)  # liveness does not depend on the job
_ROOM_REASONS = frozenset(check.reason for check in _ROOM)
