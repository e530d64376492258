"""Dependencies between jobs (``fed submit --after ID[:ok|failed|any]``) as pure logic.

Theory of operation
-------------------
A job whose ``after`` names other jobs stays pending until each of them has ended the way it asks
for: ``ok`` (succeeded), ``failed`` (failed, lost or cancelled: it did not succeed) or ``any``.
When one ends the other way the dependent can never run: it is cancelled, saying which job ended
how. A job array's id stands for the whole array: it has ended once every element here has, ``ok``
when all succeeded.

What a dependency's state is comes from this region's own records when it lives here, and
otherwise from the region that holds it (``Dependency.region``, or where its record here says it
was forwarded): the daemon asks that region (:meth:`Dependencies.lookups`, a hand-off ``lookup``
request answered from :meth:`Dependencies.state_of` of the other region's core) and feeds the
answer back as a :class:`~federation.core.events.DependencyState` event, so the journal keeps it
and ``fed audit verify`` re-derives every decision. A job with dependencies stays in its home
region (it is never handed over).

An array's elements handed to another region count as not ended here (the home's record of such
an element stays ``forwarded``): an array meant as a dependency keeps its jobs home with a running
limit or ``--regions``.

No I/O, no clock: ``now`` comes with the tick.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from federation.core.events import DependencyState
from federation.schemas import TERMINAL_STATES, Dependency

if TYPE_CHECKING:
    from federation.core.views import Region

GOOD = {"ok": frozenset({"succeeded"}), "failed": frozenset({"failed", "lost", "cancelled"})}
UNKNOWN = ("", "")  # a dependency of which nothing is known yet


class Dependencies:
    """The region's jobs with dependencies, and what other regions said of the jobs they wait for."""

    def __init__(self) -> None:
        self.dependents: set[str] = set()  # pending jobs with dependencies
        self.remote: dict[str, tuple[str, str]] = {}  # job -> (state, forwarded to) as its region said

    def admitted(self, job: str) -> None:
        """A job with dependencies joined the region (submitted or recovered) and is pending."""
        self.dependents.add(job)

    def answered(self, event: DependencyState) -> None:
        """Another region's answer about a job this region's dependents wait for."""
        self.remote[event.job] = (event.state, event.forwarded_to)

    def state_of(self, core: Region, job: str) -> tuple[str, str]:
        """What is known here of ``job`` (or of the array of that id) as a dependency: its state
        and, when it was handed to another region, that region; ``("", "")`` when unknown here."""
        view = core.jobs.get(job)
        if view is not None:
            record = view.record
            return record.state, record.forwarded_to if record.state == "forwarded" else ""
        members = core.arrays.get(job)
        if members:
            states = [core.jobs[m].record.state for m in members]
            if not all(s in TERMINAL_STATES for s in states):
                return "running", ""
            return ("succeeded" if all(s == "succeeded" for s in states) else "failed"), ""
        return UNKNOWN

    def _known(self, core: Region, dependency: Dependency) -> tuple[str, str]:
        """The dependency's state from here or from its region's answer, and where it lives."""
        state, away = self.state_of(core, dependency.job)
        if state and state != "forwarded":
            return state, core.region
        region = away or dependency.region
        answer, onward = self.remote.get(dependency.job, UNKNOWN)
        if answer == "forwarded" and onward:
            region = onward
            answer = ""
        return answer, region

    def blocked(self, core: Region, after: list[Dependency]) -> tuple[str, bool]:
        """Why a job with ``after`` may not start yet ("" when it may) and whether it never will
        (a dependency ended the other way)."""
        for dependency in after:
            state, region = self._known(core, dependency)
            where = "" if region == core.region else f" in {region}"
            if state not in TERMINAL_STATES:
                seen = state or ("not known yet" if where else "unknown")
                return (
                    f"pending: waiting for {dependency.job}{where} ({seen}) to end {_wanted(dependency)}",
                    False,
                )
            if dependency.when != "any" and state not in GOOD[dependency.when]:
                return f"dependency {dependency.job}{where} ended {state}, not {_wanted(dependency)}", True
        return "", False

    def lookups(self, core: Region) -> list[tuple[str, str]]:
        """The (job, region) pairs to ask other regions about: dependencies of pending jobs that
        live elsewhere and have not ended as far as this region knows."""
        out: dict[str, str] = {}
        for job in sorted(self.dependents):
            view = core.jobs.get(job)
            if view is None or view.record.state != "pending":
                continue
            for dependency in view.record.spec.after:
                state, region = self._known(core, dependency)
                if region and region != core.region and state not in TERMINAL_STATES:
                    out.setdefault(dependency.job, region)
        return sorted(out.items())

    def settle(self, core: Region, now: float) -> list[tuple[str, str]]:
        """The dependents that can never run now (a dependency ended the other way) with the
        reason, and the ones that no longer wait dropped from the watch."""
        doomed = []
        for job in sorted(self.dependents):
            view = core.jobs.get(job)
            if view is None or view.record.state != "pending":
                self.dependents.discard(job)
                continue
            why, never = self.blocked(core, list(view.record.spec.after))
            if never:
                doomed.append((job, why))
                self.dependents.discard(job)
            elif not why:
                self.dependents.discard(job)  # free to run: nothing more to watch
        return doomed


def _wanted(dependency: Dependency) -> str:
    return {"ok": "successfully", "failed": "unsuccessfully", "any": "at all"}[dependency.when]
