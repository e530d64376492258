"""Cross-region spillover as pure logic: where a job that fits nowhere here is offered, and what
the answer does to it.

Theory of operation
-------------------
The region sees the others only through their summaries (:class:`ViewsSeen`). After each
scheduling pass, :meth:`Spill.tick` looks at the head of the queue (and at the jobs that may not
run here at all): a job that is pending, not backing off, fits nowhere here for
``policy.spill_after`` seconds, and whose ``regions`` allow it elsewhere is offered to the best
region by the views (:func:`rank`: a fresh view whose free capacity, labels and custom resources
can hold it; the least loaded first). A gang, and a job that came from another region, stay put.

A hand-off is made durable before it is sent: the job's record first stores
``handoffs[region] = "asked"`` (phase ``recording``); only in the tick after that write landed is
:class:`SendHandOff` emitted (phase ``sent``). So a scheduler that crashes mid-hand-off recovers
the job as *held*, and asks the same region again before doing anything else with it.

The answer (:class:`HandOffAnswered`):

* ``accepted`` (or ``found``): the record moves to ``forwarded`` with ``forwarded_to``;
* ``refused``, or ``unreachable`` (delivered to no one): the region is skipped for
  ``handoff_retry`` seconds and the job goes back to the queue (the next region, or home);
* ``unknown`` (no answer in time: the request may have arrived): an ``at_most_once`` job is
  **held**: it is placed nowhere, here or elsewhere, until that region answers; it is asked again
  every ``handoff_retry``. A refusal only counts once every earlier request to that region is past
  its deadline (the remote refuses a late request unread, so nothing can contradict it later).
  An ``at_least_once`` job goes back to the queue at once; the region is later *queried* about
  it, and if it ran the job too the record lists it in ``duplicates``.

No I/O, no clock: ``now`` and ``at`` come in with the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from federation.core import feasibility
from federation.core.events import (
    CancelPassed,
    Command,
    HandOffAnswered,
    HandOffOffered,
    HandOffVerdict,
    SendCancel,
    SendHandOff,
)
from federation.core.plan import Plan
from federation.core.planning import Pass
from federation.schemas import JobRecord, Submit, Summary, Transition

if TYPE_CHECKING:
    from federation.core.views import JobView, Region

MAX_IN_FLIGHT = 64
"""Hand-offs outstanding at once (requests are cheap, but a flood would swamp a small region)."""

SCAN = 256
"""Queue entries examined per tick for spilling (the head: highest priority, oldest)."""

OFFER_EVERY = 0.25
"""Seconds between looks for jobs to offer, unless something changed (views, a job came back)."""


def admit(core: Region, spec: Submit, now: float) -> str:
    """The receiving side: why this region refuses a job offered by another ("" to accept).

    Accepted only if a node has room for it now (it is then placed on this region's own nodes,
    through this region's own ledgers) and it does not collide with a job of this region.
    """
    if spec.gang > 1:
        return "gangs are not handed between regions"
    if (view := core.jobs.get(spec.id)) is not None and view.record.spec.origin != spec.origin:
        return f"job id {spec.id} is already used in {core.region}"
    check = Pass(core, now)
    if not check.room_for(spec):
        return check.why(spec, 0)[0].removeprefix("pending: ")
    if check.quotas.enabled:  # this region's own quotas hold for a job from elsewhere too
        _, wait = check.quotas.admit(spec, Plan(), set())
        if wait:
            return f"here {wait.removeprefix('pending: ')}"
    return ""


def judge(core: Region, event: HandOffOffered) -> HandOffVerdict:
    """The receiving side's verdict on a job another region offers (:func:`admit`, and the
    request's deadline: one that passed before it arrived is refused)."""
    if event.at > event.expires_at:
        why = "the request expired before it arrived"
    else:
        why = admit(core, event.spec, event.at)
    return HandOffVerdict(job=event.spec.id, refusal=why)


def home_allowed(spec: Submit, home: str) -> bool:
    """Whether ``spec`` may run in its home region."""
    return not spec.regions or "any" in spec.regions or home in spec.regions


def may_go(spec: Submit, home: str, region: str) -> bool:
    """Whether ``spec`` may be handed to ``region`` (never a gang, never a job already handed over,
    never an element of a job array with a running limit: only its home counts the limit; never a
    job with dependencies: its home watches them)."""
    if spec.origin or spec.gang > 1 or spec.array_limit or spec.after or region == home:
        return False
    return not spec.regions or "any" in spec.regions or region in spec.regions


def fits(view: Summary, spec: Submit, reserved: tuple[int, int, int] = (0, 0, 0)) -> str:
    """Why a region's summary cannot hold ``spec`` ("" when it can, as far as the summary tells;
    see :func:`~federation.core.feasibility.region_rejection`). ``reserved`` is what hand-offs in
    flight to that region already count on."""
    return feasibility.region_rejection(view, spec, reserved)


def rank(
    spec: Submit,
    home: str,
    views: dict[str, Summary],
    now: float,
    stale_after: float,
    skip: set[str] | frozenset[str] = frozenset(),
    reserved: dict[str, tuple[int, int, int]] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The regions ``spec`` may be offered to, best first, and why each other region may not.

    Best: fewest pending jobs, then most free cores, then name (deterministic).
    """
    reserved = reserved or {}
    ranked: list[tuple[int, int, str]] = []
    why: dict[str, str] = {}
    for region, view in sorted(views.items()):
        if not may_go(spec, home, region):
            continue
        age = now - view.at
        if region in skip:
            why[region] = "refused or unreachable recently"
        elif age > stale_after:
            why[region] = f"view stale ({age:.0f} s old)"
        elif reason := fits(view, spec, reserved.get(region, (0, 0, 0))):
            why[region] = reason
        else:
            ranked.append((view.pending, -view.cpu_free, region))
    return [region for _, _, region in sorted(ranked)], why


@dataclass(slots=True)
class Handing:
    """A hand-off under way: recording (intent being stored), sent, or held (answer unknown)."""

    region: str
    phase: Literal["recording", "sent", "held"]
    expires_at: float = 0.0
    retry_at: float = 0.0
    unanswered_until: float = 0.0  # an earlier request may still arrive until then
    cause: str = ""  # why it left: the limit that sent it away when it was its quota


class Spill:
    """The core's cross-region state (one per :class:`~federation.core.state.RegionCore`)."""

    def __init__(self) -> None:
        self.views: dict[str, Summary] = {}
        self.handing: dict[str, Handing] = {}
        self.away: set[str] = set()  # pending jobs that may not run here (kept out of the queue)
        self.tried: dict[str, dict[str, float]] = {}  # job -> region -> when it refused / was unreachable
        self.unresolved: dict[str, float] = {}  # at-least-once job with an unknown hand-off -> next query
        # job -> (region, reason, next try): NaN while a try is in flight, inf after a failed one
        self.cancelling: dict[str, tuple[str, str, float]] = {}
        self.next_offer = 0.0
        self.stirred = False  # something changed that may let a job go: look at once

    def seen(self, views: dict[str, Summary]) -> None:
        """New views of the other regions."""
        self.views = views
        self.stirred = True

    # --- jobs arriving ---------------------------------------------------------------------------

    def admitted(self, core: Region, view: JobView, at: float) -> None:
        """A job entered the core (a submission, or recovery at ``at``)."""
        record = view.record
        asked = [region for region, state in sorted(record.handoffs.items()) if state == "asked"]
        if "unknown" in record.handoffs.values():
            self.unresolved[record.id] = 0.0
        if record.state == "forwarded" and record.cancel_requested:
            # passed on before? the region ignores a second copy; a lost one must not stay lost
            self.cancelling[record.id] = (record.forwarded_to, record.cancel_requested, 0.0)
        if record.state != "pending":
            return
        if asked:  # a hand-off whose answer never arrived (the scheduler died): ask it again first
            core.unqueue(record.id)
            # requests of an earlier leader may still arrive until their deadline: every request
            # was sent before this recovery (a leader checks its lease before sending)
            until = max(record.updated_at, at) + core.policy.handoff_timeout + core.policy.clock_skew
            self.handing[record.id] = Handing(asked[0], "held", unanswered_until=until)
            core.defer_cancel(record.id, record.cancel_requested)
        elif not home_allowed(record.spec, core.region):
            core.unqueue(record.id)
            self.away.add(record.id)
            self.stirred = True

    def cancel(self, core: Region, view: JobView, reason: str, at: float) -> bool:
        """A cancel for a job this module holds; True when the core must not cancel it itself."""
        record = view.record
        job = record.id
        if job in self.handing or record.state == "forwarded":
            if job in self.handing:
                core.defer_cancel(job, reason)  # the answer decides: pass the cancel on, or cancel here
            else:
                self.cancelling[job] = (record.forwarded_to, reason, 0.0)
            if record.cancel_requested != reason:  # kept in the record: a restart must not forget it
                core.amend(job, cancel_requested=reason, updated_at=at)
            return True
        self.away.discard(job)
        return False

    def cancel_passed(self, event: CancelPassed) -> None:
        """The region holding a forwarded job stored its cancel (or not: try again later)."""
        entry = self.cancelling.get(event.job)
        if entry is None:
            return
        if event.ok:
            del self.cancelling[event.job]
        else:
            self.cancelling[event.job] = (entry[0], entry[1], float("inf"))  # re-armed by the tick

    # --- answers ---------------------------------------------------------------------------------

    def answered(self, core: Region, event: HandOffAnswered) -> None:
        """Apply a hand-off's answer (see the module docstring)."""
        view = core.jobs.get(event.job)
        if view is None:
            return
        if event.query:
            self._resolved(core, view, event)
            return
        handing = self.handing.get(event.job)
        if handing is None or handing.region != event.region or handing.phase != "sent":
            return
        record, region, policy = view.record, event.region, core.policy
        if event.outcome in ("accepted", "found"):
            del self.handing[event.job]
            self.tried.pop(event.job, None)
            core.move(
                event.job,
                "forwarded",
                event.at,
                f"forwarded to {region}: {event.reason or 'accepted'}"
                + (f"; sent away by its quota here: {handing.cause}" if handing.cause else ""),
                forwarded_to=region,
                handoffs={**record.handoffs, region: "accepted"},
            )
            deferred = core.take_deferred_cancel(event.job)
            if deferred:
                self.cancelling[event.job] = (region, deferred, 0.0)
            return
        definite = event.outcome in ("refused", "absent", "unreachable")
        if definite and event.at >= handing.unanswered_until:
            del self.handing[event.job]
            said = "unreachable" if event.outcome == "unreachable" else "refused"
            self.tried.setdefault(event.job, {})[region] = event.at
            self._back(core, view, event.at, f"{region} {said}: {event.reason}", {region: said})
            return
        if record.spec.semantics == "at_least_once" and event.outcome == "unknown":
            del self.handing[event.job]
            self.tried.setdefault(event.job, {})[region] = event.at
            self.unresolved[event.job] = handing.expires_at + policy.clock_skew
            why = f"the hand-off to {region} was not answered; at-least-once, so it may run elsewhere"
            self._back(core, view, event.at, why, {region: "unknown"})
            return
        if event.outcome == "unknown":
            handing.unanswered_until = max(handing.unanswered_until, handing.expires_at + policy.clock_skew)
        handing.phase = "held"
        handing.retry_at = max(event.at + policy.handoff_retry, handing.unanswered_until)
        reason = (
            f"held: the hand-off to {region} was not answered; at-most-once, so it runs nowhere else "
            f"until {region} answers (asked again every {policy.handoff_retry:g} s)"
        )
        if record.reason != reason:
            core.amend(event.job, reason=reason, updated_at=event.at)

    def _back(self, core: Region, view: JobView, at: float, why: str, handoffs: dict[str, str]) -> None:
        """A hand-off that did not take: the job waits here again (or is cancelled, if asked to)."""
        record = view.record
        job = record.id
        core.amend(job, handoffs={**record.handoffs, **handoffs}, reason=f"pending: {why}", updated_at=at)
        self.stirred = True
        deferred = core.take_deferred_cancel(job)
        if deferred:
            core.move(job, "cancelled", at, deferred)
        elif home_allowed(record.spec, core.region):
            core.requeue_now(job)
        else:
            self.away.add(job)

    def _resolved(self, core: Region, view: JobView, event: HandOffAnswered) -> None:
        """A query's answer about an at-least-once job's unknown hand-off."""
        record, region = view.record, event.region
        if record.handoffs.get(region) != "unknown" or event.outcome not in ("found", "absent"):
            return  # unreachable or unanswered again: asked again later
        changes: dict[str, object] = {"handoffs": {**record.handoffs, region: "accepted"}}
        if event.outcome == "absent":
            changes["handoffs"] = {**record.handoffs, region: "absent"}
        elif record.forwarded_to != region:
            note = f"duplicate: {region} accepted it too ({event.reason or 'found'}); at-least-once"
            changes["duplicates"] = (*record.duplicates, region)
            changes["history"] = (*record.history, Transition(state=record.state, at=event.at, reason=note))
        core.amend(record.id, **changes)
        if "unknown" not in view.record.handoffs.values():
            self.unresolved.pop(record.id, None)

    # --- the tick --------------------------------------------------------------------------------

    def tick(self, core: Region, now: float) -> list[Command]:
        """Send recorded hand-offs, re-ask held ones, queries and cancels; pick new jobs to offer."""
        commands: list[Command] = []
        policy = core.policy
        for job, handing in sorted(self.handing.items()):
            due = handing.phase == "recording" and not core.unwritten(job)
            if due or (handing.phase == "held" and now >= handing.retry_at):
                handing.phase, handing.expires_at = "sent", now + policy.handoff_timeout
                spec = core.jobs[job].record.spec
                commands.append(
                    SendHandOff(job=job, region=handing.region, spec=spec, expires_at=handing.expires_at)
                )
        for job, (region, reason, next_try) in sorted(self.cancelling.items()):
            if next_try == float("inf"):  # the last try failed: again after the retry delay
                self.cancelling[job] = (region, reason, now + policy.handoff_retry)
            elif now >= next_try:
                self.cancelling[job] = (region, reason, float("nan"))  # in flight until answered
                commands.append(SendCancel(job=job, region=region, reason=reason))
        for job, next_at in sorted(self.unresolved.items()):
            if now < next_at:
                continue
            self.unresolved[job] = now + policy.handoff_retry
            record = core.jobs[job].record
            for region, state in sorted(record.handoffs.items()):
                if state == "unknown":
                    commands.append(
                        SendHandOff(
                            job=job,
                            region=region,
                            spec=record.spec,
                            expires_at=now + policy.handoff_timeout,
                            query=True,
                        )
                    )
        if self.views and (self.stirred or now >= self.next_offer):
            self.stirred, self.next_offer = False, now + OFFER_EVERY
            self._offer(core, now)
        return commands

    def _in_flight(self) -> int:
        return sum(1 for handing in self.handing.values() if handing.phase != "held")

    def _offer(self, core: Region, now: float) -> None:
        """Offer jobs that fit nowhere here to the best region their policy allows."""
        policy = core.policy
        if len(self.tried) > 4 * SCAN:  # forget the refusals of jobs that are no longer waiting
            self.tried = {j: t for j, t in self.tried.items() if j in core.jobs and j not in core.allocated}
        reserved: dict[str, tuple[int, int, int]] = {}
        for job, handing in self.handing.items():
            spec = core.jobs[job].record.spec
            cpu, memory, gpu = reserved.get(handing.region, (0, 0, 0))
            reserved[handing.region] = (cpu + spec.cpu, memory + spec.memory, gpu + spec.gpu)
        candidates = sorted(self.away)[:SCAN] + [job for _, job in core.queue[:SCAN]]
        nowhere: set[tuple[object, ...]] = set()  # job shapes no region can take now
        room: dict[tuple[object, ...], bool] = {}  # job shapes some node here has room for
        quotas: Pass | None = None  # this region's quota accounting, made when a job may leave for it
        in_flight = self._in_flight()
        for job in candidates:
            if in_flight >= MAX_IN_FLIGHT:
                break
            view = core.jobs[job]
            record = view.record
            spec = record.spec
            if record.state != "pending" or view.claiming or job in core.allocated:
                continue
            if record.not_before > now:
                continue
            cause = ""  # the quota limit that sends it away (spill_on_quota), if that is why
            if job not in self.away:
                if now - _pending_since(record) < policy.spill_after:
                    continue
                here = _shape(spec, set())
                if here not in room:
                    room[here] = _room_here(core, spec, now)
                tenant = policy.tenants.get(spec.tenant)
                if room[here] and tenant is not None and tenant.spill_on_quota:
                    quotas = quotas or Pass(core, now)
                    _, wait = quotas.quotas.admit(spec, Plan(), set())
                    cause = wait.removeprefix("pending: ") if wait.startswith("pending: quota") else ""
                if room[here] and not cause:
                    continue  # it fits here: it waits for a claim in flight, not for room
            if job in self.away and not record.handoffs:  # never offered anywhere yet: say why
                self._explain_away(core, view, now)
            recent = {r for r, at in self.tried.get(job, {}).items() if now - at < policy.handoff_retry}
            shape = _shape(spec, recent)
            if shape in nowhere:
                continue
            ranked, _ = rank(spec, core.region, self.views, now, policy.view_stale, recent, reserved)
            if not ranked:
                nowhere.add(shape)
                continue
            region = ranked[0]
            cpu, memory, gpu = reserved.get(region, (0, 0, 0))
            reserved[region] = (cpu + spec.cpu, memory + spec.memory, gpu + spec.gpu)
            core.unqueue(job)
            self.away.discard(job)
            why = f"{cause} (spill_on_quota)" if cause else "fits nowhere here"
            core.amend(
                job,
                handoffs={**record.handoffs, region: "asked"},
                reason=f"pending: {why}; offering it to {region}",
                updated_at=now,
            )
            self.handing[job] = Handing(region, "recording", cause=why if cause else "")
            in_flight += 1

    def _explain_away(self, core: Region, view: JobView, now: float) -> None:
        """The reason of a job that may not run here and was never offered anywhere: the regions it
        may run in, and whether any view here shows them (a region no view shows may not exist)."""
        record = view.record
        allowed = [r for r in record.spec.regions if r != core.region]
        where = ", ".join(allowed)
        if not any(r in self.views for r in allowed):
            known = ", ".join(sorted(self.views)) or "none yet"
            reason = f"pending: may run only in {where}, which no view here shows (regions seen: {known})"
        else:
            reason = f"pending: may run only in {where}; offered there once a view shows room for it"
        if record.reason != reason:
            core.amend(record.id, reason=reason, updated_at=now)


def _room_here(core: Region, spec: Submit, now: float) -> bool:
    """Whether a live node here has room for ``spec`` by its stored ledger (claims in flight aside)."""
    stages = (feasibility.LIVE, feasibility.MATCH, feasibility.ROOM)
    return any(
        feasibility.rejection(node, node.free, spec, core.region, now, stages) is None
        for node in core.nodes.values()
    )


def _shape(spec: Submit, skip: set[str]) -> tuple[object, ...]:
    """What :func:`rank` looks at in a job: equal shapes get equal answers within one tick."""
    return (
        spec.cpu,
        spec.memory,
        spec.gpu,
        tuple(sorted(spec.custom.items())),
        tuple(sorted(spec.require.items())),
        tuple(spec.regions),
        bool(spec.origin) or spec.gang > 1,
        tuple(sorted(skip)),
    )


def _pending_since(record: JobRecord) -> float:
    for transition in reversed(record.history):
        if transition.state == "pending":
            return transition.at
    return record.submitted_at


__all__ = ["Handing", "Spill", "admit", "fits", "home_allowed", "may_go", "rank"]
