"""A region's capacity summary, aggregated the Oakestra way (pure).

Theory of operation
-------------------
Other regions cannot see this region's nodes; they see its :class:`~federation.schemas.Summary`.
:func:`summarize` folds the nodes the scheduler knows into one:

* **canonical resources** (cores, memory, GPUs) are summed over nodes with a live offer: what is
  offered, and what the node's ledger leaves free (the same arithmetic as placement,
  :class:`~federation.core.capacity.Free`);
* **utilisation percentages** are averaged over those nodes;
* **GPU models, runtimes and label values** are listed (sorted, each value once);
* **non-canonical resources**, by value type (:func:`fold`): numbers are summed (a counted custom
  resource contributes what is free of it), strings collected in a list, lists flattened.

A node whose offer expired, or whose heartbeat stopped, counts in ``nodes`` but adds no capacity,
until it has been down for :data:`GONE_AFTER` with nothing allocated on it: then it is taken for
removed (an agent stopped for good) and no longer counted. Same inputs, same summary: no clock
(``now`` is an argument), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from federation.core import feasibility
from federation.core.capacity import Free
from federation.schemas import Allocation, Attribute, Offer, Summary

Folded = float | list[str]
GONE_AFTER = 600.0  # seconds down, with nothing allocated, after which a node counts as removed


@dataclass(frozen=True, slots=True)
class NodeState:
    """What the summary needs of one node."""

    offer: Offer | None
    allocations: tuple[Allocation, ...] = ()
    alive: bool = True
    down_at: float = 0.0  # when its heartbeat stopped (while not alive)
    free: Free | None = None  # its free capacity, where the caller has it computed already

    @property
    def name(self) -> str:
        return ""  # a summary counts nodes; it names none

    @property
    def proposal(self) -> None:
        return None  # a summary knows no claims in flight


def fold(values: Iterable[Attribute]) -> Folded:
    """Aggregate one attribute's values: numbers summed; otherwise strings and lists flattened.

    A key whose values are all numbers gives their sum. Any string or list among them gives the
    sorted list of every distinct string (numbers written as text), so mixed types lose nothing.
    """
    items = list(values)
    numbers = [float(v) for v in items if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(items):
        return float(sum(numbers))
    flat: set[str] = set()
    for value in items:
        if isinstance(value, list):
            flat.update(value)
        elif isinstance(value, str):
            flat.add(value)
        else:
            flat.add(f"{value:g}")
    return sorted(flat)


def summarize(region: str, nodes: Iterable[NodeState], now: float, pending: int = 0) -> Summary:
    """The summary of ``region``'s nodes as of ``now`` (see the module docstring)."""
    total = live = cpu = cpu_free = memory = memory_free = gpu = gpu_free = 0
    cpu_pct: list[float] = []
    mem_pct: list[float] = []
    gpu_pct: list[float] = []
    models: set[str] = set()
    runtimes: set[str] = set()
    labels: dict[str, set[str]] = {}
    attributes: dict[str, list[Attribute]] = {}
    for node in nodes:
        if not node.alive and not node.allocations and now - node.down_at >= GONE_AFTER:
            continue  # removed: its agent has been gone for long, and nothing of it is left
        total += 1
        offer = node.offer
        if offer is None or not feasibility.live(node, now):
            continue
        live += 1
        free = node.free if node.free is not None else Free.of(offer, node.allocations)
        cpu, cpu_free = cpu + len(offer.cores), cpu_free + len(free.cores)
        memory, memory_free = memory + offer.memory, memory_free + max(0, free.memory)
        gpu, gpu_free = gpu + len(offer.gpus), gpu_free + len(free.gpus)
        cpu_pct.append(offer.cpu_percent)
        mem_pct.append(offer.memory_percent)
        if offer.gpus:
            gpu_pct.append(offer.gpu_percent)
        model = offer.labels.get("gpu_model", "")
        models.update(m for m in model.split(",") if m)
        runtimes.update(offer.runtimes)
        for key, value in offer.labels.items():
            labels.setdefault(key, set()).update(v for v in value.split(",") if v)
        for key in offer.custom:
            attributes.setdefault(key, []).append(max(0.0, free.custom.get(key, 0.0)))
        for key, attribute in offer.attributes.items():
            attributes.setdefault(key, []).append(attribute)
    return Summary(
        region=region,
        at=now,
        nodes=total,
        live=live,
        cpu=cpu,
        cpu_free=cpu_free,
        memory=memory,
        memory_free=memory_free,
        gpu=gpu,
        gpu_free=gpu_free,
        cpu_percent=_mean(cpu_pct),
        memory_percent=_mean(mem_pct),
        gpu_percent=_mean(gpu_pct),
        gpu_models=sorted(models),
        runtimes=sorted(runtimes),
        labels={key: sorted(values) for key, values in sorted(labels.items())},
        custom={key: fold(values) for key, values in sorted(attributes.items())},
        pending=pending,
    )


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2) if values else 0.0


__all__ = ["NodeState", "fold", "summarize"]
