"""One scheduling pass: which queued job goes where, what is preempted, why the rest waits.

Theory of operation
-------------------
A pass walks the queue in order (priority, then submission time) and, for each job whose backoff
has expired, asks three questions:

1. **Does it fit somewhere now?** Preferred nodes (``spec.nodes``) are tried first; otherwise the
   :class:`~federation.core.index.FreeIndex` yields candidates in score order (binpack: least free
   capacity that fits; spread: most), skipping nodes whose offer expired or whose labels do not
   match ``spec.require``. The first fit wins; the next two are kept as runners-up for ``explain``.
   Devices are taken from a per-pass working copy of the node's free capacity, and the node is
   re-keyed in the index, so later jobs of the same pass see what is left.
2. **If not, may it preempt?** When the policy lets its priority preempt, every usable node is
   examined for the fewest strictly-lower-priority allocations whose removal makes room
   (:func:`~federation.core.placement.preemption_victims`); the node needing the fewest, lowest-
   priority victims wins. The victims and the new allocation go into the node's one proposed
   ledger: a single compare-and-set removes them and adds it.
3. **Otherwise, why not?** Every node is classified by the first filter that rejects it (no offer,
   down, expired, label mismatch, claim in flight, no slot, cpu, memory, gpu) and the counts become
   the job's pending reason and :class:`~federation.schemas.Decision`. Results are cached per job
   shape for the pass.

The pass stops early once no node has room and no later job may preempt, so its cost is the jobs it
places plus the misfits it explains, not the queue length or the node count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from federation.core import placement
from federation.core.placement import Free
from federation.core.policy import lower
from federation.schemas import PRIORITY_RANK, Allocation, Candidate, Decision, Submit

if TYPE_CHECKING:
    from federation.core.state import JobView, NodeView, RegionCore


@dataclass
class Plan:
    """What a pass decided; :class:`RegionCore` turns it into proposals and record changes."""

    placed: dict[str, list[Allocation]] = field(default_factory=dict)
    victims: dict[str, list[Allocation]] = field(default_factory=dict)
    decisions: dict[str, Decision] = field(default_factory=dict)
    waiting: dict[str, tuple[str, Decision]] = field(default_factory=dict)
    queue: list[tuple[tuple[int, float, int], str]] = field(default_factory=list)


class Pass:
    """One scheduling pass over a :class:`RegionCore` at time ``now`` (reads the core, returns a plan)."""

    def __init__(self, core: RegionCore, now: float) -> None:
        self.core = core
        self.now = now
        self.work: dict[str, Free] = {}
        self.touched: set[str] = set()
        self.misfits: dict[tuple[object, ...], tuple[str, Decision]] = {}
        self.busy = bool(core.in_flight)
        preempting = [PRIORITY_RANK[p] for p in PRIORITY_RANK if core.policy.may_preempt(p)]
        self.last_preemptor = max(preempting, default=-1)

    def run(self) -> Plan:
        """Walk the queue and return the plan."""
        core, plan = self.core, Plan()
        position = 0
        queue = core.queue
        for index, entry in enumerate(queue):
            view = core.jobs[entry[1]]
            spec = view.record.spec
            if not core.index and PRIORITY_RANK[spec.priority] > self.last_preemptor:
                plan.queue.extend(queue[index:])  # no room anywhere and nobody left who may preempt
                break
            position += 1
            if view.record.not_before > self.now:
                plan.queue.append(entry)
                continue
            if not self._place(view, plan, position) and not self._preempt(view, plan, position):
                plan.waiting[view.record.id] = self._why(spec, position)
                plan.queue.append(entry)
        return plan

    # --- fit -------------------------------------------------------------------------------------

    def _free(self, name: str) -> Free | None:
        if name in self.work:
            return self.work[name]
        node = self.core.nodes.get(name)
        return node.free if node is not None else None

    def _usable(self, node: NodeView) -> bool:
        return bool(
            node.offer is not None
            and node.alive
            and node.offer.expires_at > self.now
            and node.proposal is None
            and node.free is not None
        )

    def _fits(self, name: str, spec: Submit) -> Free | None:
        node = self.core.nodes.get(name)
        if node is None or not self._usable(node):
            return None
        free = self._free(name)
        if free is None or free.misfit(spec) is not None:
            return None
        if spec.require and not placement.labels_match(name, self.core.region, free.labels, spec.require):
            return None
        return free

    def _candidates(self, spec: Submit, spread: bool) -> list[Candidate]:
        """Up to three fitting nodes in score order: preferred ones first, then the index."""
        found: list[Candidate] = []
        for name in spec.nodes:
            free = self._fits(name, spec)
            if free is not None and all(c.node != name for c in found):
                found.append(Candidate(node=name, score=free.score(spec)))
        if found:
            found.sort(key=lambda c: _order(c, spread))
            return found[:3]
        index = self.core.index
        names = index.descending(spec.gpu) if spread else index.ascending(spec.gpu, spec.cpu, spec.memory)
        expired = []
        for name in names:
            node = self.core.nodes[name]
            if node.offer is None or node.offer.expires_at <= self.now:
                expired.append(name)
                continue
            free = self._fits(name, spec)
            if free is not None:
                found.append(Candidate(node=name, score=free.score(spec)))
                if len(found) == 3:
                    break
        for name in expired:
            index.discard(name)
        return found

    def _place(self, view: JobView, plan: Plan, position: int) -> bool:
        spec = view.record.spec
        spread = (spec.scoring or self.core.policy.scoring) == "spread"
        candidates = self._candidates(spec, spread)
        if not candidates:
            return False
        chosen = candidates[0]
        free = self._take(chosen.node)
        plan.placed.setdefault(chosen.node, []).append(self.core.allocation(view, free, self.now))
        plan.decisions[spec.id] = Decision(
            kind="placed",
            at=self.now,
            considered=len(self.core.index),
            chosen=chosen,
            runners_up=tuple(candidates[1:]),
            queue_position=position,
            note="preferred node" if chosen.node in spec.nodes else "",
        )
        if free.slots > 0:
            self.core.index.put(chosen.node, free)
        else:
            self.core.index.discard(chosen.node)
        return True

    def _take(self, name: str) -> Free:
        if name not in self.work:
            free = self._free(name)
            assert free is not None
            self.work[name] = free.copy()
        self.touched.add(name)
        return self.work[name]

    # --- preempt ---------------------------------------------------------------------------------

    def _preempt(self, view: JobView, plan: Plan, position: int) -> bool:
        spec = view.record.spec
        if not self.core.policy.may_preempt(spec.priority):
            return False
        best: tuple[tuple[int, int, str], str, list[Allocation]] | None = None
        for name in sorted(self.core.nodes):
            node = self.core.nodes[name]
            if name in self.touched or not self._usable(node) or node.offer is None:
                continue
            labels = node.offer.labels
            if spec.require and not placement.labels_match(name, self.core.region, labels, spec.require):
                continue
            allocations = tuple(a for a in node.current().allocations if a.job not in node.releases)
            victims = placement.preemption_victims(spec, node.offer, allocations, lower)
            if not victims:
                continue
            key = (len(victims), sum(-PRIORITY_RANK[v.priority] for v in victims), name)
            if best is None or key < best[0]:
                best = (key, name, victims)
        if best is None:
            return False
        _, name, victims = best
        node = self.core.nodes[name]
        assert node.offer is not None
        gone = {v.job for v in victims}
        keep = [a for a in node.current().allocations if a.job not in node.releases and a.job not in gone]
        free = Free.of(node.offer, keep)
        self.work[name] = free
        self.touched.add(name)
        plan.placed.setdefault(name, []).append(self.core.allocation(view, free, self.now))
        plan.victims[name] = victims
        plan.decisions[spec.id] = Decision(
            kind="preempting",
            at=self.now,
            considered=len(self.core.nodes),
            chosen=Candidate(node=name, score=free.score(spec)),
            victims=tuple(sorted(gone)),
            queue_position=position,
            note=f"preempts {len(victims)} lower-priority allocation{'s' if len(victims) != 1 else ''}",
        )
        self.core.index.discard(name)  # its one proposal for this pass is made
        return True

    # --- explain ---------------------------------------------------------------------------------

    def _why(self, spec: Submit, position: int) -> tuple[str, Decision]:
        key = placement.shape(spec)
        cached = self.misfits.get(key)
        if cached is not None:
            reason, decision = cached
            return reason, Decision(
                kind="pending",
                at=self.now,
                considered=decision.considered,
                filtered=decision.filtered,
                queue_position=position,
            )
        reasons: dict[str, list[str]] = {}
        for name in sorted(self.core.nodes):
            reasons.setdefault(self._reject(name, spec), []).append(name)
        fitting = reasons.pop("", []) + reasons.get(placement.FULL, [])
        considered = len(self.core.nodes)
        if fitting:
            plural = "s" if len(fitting) != 1 else ""
            sample = ", ".join(fitting[:3]) + (", ..." if len(fitting) > 3 else "")
            reason = f"pending: waiting for capacity: {len(fitting)} node{plural} can run it once room frees"
            reason += f" ({sample})"
        else:
            reason = placement.explain_misfit(spec, reasons, considered)
        decision = Decision(
            kind="pending",
            at=self.now,
            considered=considered,
            filtered={k: len(v) for k, v in reasons.items()},
            queue_position=position,
        )
        self.misfits[key] = (reason, decision)
        return reason, decision

    def _reject(self, name: str, spec: Submit) -> str:
        """The first filter that rejects ``name`` for ``spec`` ("" when it fits)."""
        node = self.core.nodes[name]
        if node.offer is None:
            return placement.NO_OFFER
        if not node.alive:
            return placement.DOWN
        if node.offer.expires_at <= self.now:
            return placement.EXPIRED
        if spec.require and not placement.labels_match(
            name, self.core.region, node.offer.labels, spec.require
        ):
            return placement.LABELS
        if node.proposal is not None:
            return placement.BUSY
        free = self._free(name)
        if free is None:
            return placement.NO_OFFER
        misfit = free.misfit(spec)
        if misfit is not None and Free.of(node.offer, ()).misfit(spec) is None:
            return placement.FULL
        return misfit or ""


def _order(candidate: Candidate, spread: bool) -> tuple[object, ...]:
    return (tuple(-s for s in candidate.score) if spread else candidate.score, candidate.node)
