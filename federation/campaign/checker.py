"""Judge a campaign from the documented formats alone, independently of ``federation.audit``.

The inputs are what anyone outside the federation can have: the client history
(:mod:`federation.campaign.history`), the run markers the jobs wrote, each node's declared
capacity, and the audit trail as ``fed audit replay --format jsonl`` exports it (subjects.md,
"Audit events": one JSON object per line with ``region``, ``seq``, ``kind``, ``job``, ``state``,
``attempt`` and the stored ``value``). Nothing here imports the federation's schemas or its own
checker: a defect in those cannot hide a defect in the run.

What is checked (each finding names its rule):

* ``lost``: every acknowledged submission has a record in some region's trail and, after the run
  settled, a terminal state; the state the client read is the state the trail ends with;
* ``ran-twice``: a job submitted at most once (no ``--retry-anywhere``, ``--on-node-lost fail``)
  left at most one run marker; a job that succeeded left at least one;
* ``capacity``: no ledger version ever held more cores, memory or GPUs than its node declared, nor
  one core or GPU twice;
* ``terminal``: within a region a job reaches at most one terminal state and never leaves it; an
  at-most-once job ends terminal in at most one region;
* ``backwards``: within a region a job's records move forward only: the attempt never decreases,
  and within an attempt the state follows pending -> placed -> running -> an end.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from federation.campaign.history import Operation, Run

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "lost"})
# A record's place within its attempt. An attempt ends terminal, preempted (retried as the next
# attempt) or forwarded (its life goes on in another region's record).
RANK = {"pending": 0, "placed": 1, "running": 2, "preempted": 3, "forwarded": 3, **dict.fromkeys(TERMINAL, 3)}


@dataclass(frozen=True)
class Declared:
    """A node's declared capacity: cores, bytes of memory, GPUs."""

    cpu: int
    memory: int
    gpu: int


@dataclass
class Verdict:
    """What the checker found: counts for the table, and every violation with its rule."""

    submitted: int = 0
    acknowledged: int = 0
    finished: int = 0
    unfinished: int = 0
    lost: int = 0
    ran_twice: int = 0
    records: int = 0
    ledgers: int = 0
    quarantined: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no rule was broken and every acknowledged job finished."""
        return not self.violations and not self.unfinished


def parse_trail(lines: Iterable[str | bytes]) -> list[dict[str, Any]]:
    """The events of a ``--format jsonl`` export (blank lines skipped; a line that is not JSON is
    itself a finding of the export, so it raises)."""
    return [json.loads(line) for line in lines if line.strip()]


def check(
    operations: list[Operation],
    markers: Mapping[str, list[Run]],
    trail: list[dict[str, Any]],
    declared: Mapping[str, Declared],
) -> Verdict:
    """Judge the run (see the module docstring for the rules)."""
    verdict = Verdict()
    records: dict[str, dict[str, list[dict[str, Any]]]] = {}  # job -> region -> its records, in order
    for event in sorted(trail, key=lambda e: (e["region"], e["seq"])):
        match event["kind"]:
            case "record":
                verdict.records += 1
                records.setdefault(event["job"], {}).setdefault(event["region"], []).append(event)
            case "ledger":
                verdict.ledgers += 1
                verdict.violations += _capacity(event, declared)
            case "quarantine":
                verdict.quarantined += 1
    for job, regions in records.items():
        verdict.violations += _forward(job, regions)
    _outcomes(verdict, operations, markers, records)
    return verdict


def _capacity(event: dict[str, Any], declared: Mapping[str, Declared]) -> list[str]:
    value = event.get("value")
    if not isinstance(value, dict):
        return []
    node = value.get("node", "")
    allocations = value.get("allocations") or []
    where = f"{event['region']} audit seq {event['seq']}"
    found = []
    cores = [c for a in allocations for c in a.get("cores") or []]
    gpus = [g for a in allocations for g in a.get("gpus") or []]
    if len(set(cores)) < len(cores):
        found.append(f"capacity: {node} holds a core twice ({sorted(cores)}) at {where}")
    if len(set(gpus)) < len(gpus):
        found.append(f"capacity: {node} holds a GPU twice ({sorted(gpus)}) at {where}")
    limit = declared.get(node)
    if limit is None:
        return found
    used = Declared(
        cpu=sum(int(a.get("cpu", 0)) for a in allocations),
        memory=sum(int(a.get("memory", 0)) for a in allocations),
        gpu=len(gpus),
    )
    for resource in ("cpu", "memory", "gpu"):
        if getattr(used, resource) > getattr(limit, resource):
            found.append(
                f"capacity: {node} holds {resource} {getattr(used, resource)} of a declared "
                f"{getattr(limit, resource)} at {where}"
            )
    return found


def _forward(job: str, regions: dict[str, list[dict[str, Any]]]) -> list[str]:
    found = []
    for region, steps in regions.items():
        for before, after in itertools.pairwise(steps):
            a, b = before["state"], after["state"]
            where = f"{job} in {region} (audit seq {before['seq']} -> {after['seq']})"
            if a in TERMINAL and b != a:
                found.append(f"terminal: {where} left {a} for {b}")
            if (after["attempt"], RANK.get(b, 0)) < (before["attempt"], RANK.get(a, 0)):
                found.append(f"backwards: {where} {a}#{before['attempt']} -> {b}#{after['attempt']}")
        ends = {s["state"] for s in steps if s["state"] in TERMINAL}
        if len(ends) > 1:
            found.append(f"terminal: {job} in {region} reached {sorted(ends)}")
    return found


def _final(regions: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Each region's last recorded state of a job."""
    return {region: steps[-1]["state"] for region, steps in regions.items() if steps}


def _outcomes(
    verdict: Verdict,
    operations: list[Operation],
    markers: Mapping[str, list[Run]],
    records: dict[str, dict[str, list[dict[str, Any]]]],
) -> None:
    submitted: dict[str, Operation] = {}
    for operation in operations:
        if operation.kind != "submit":
            continue
        verdict.submitted += 1
        if operation.ack == "ok":
            submitted.setdefault(operation.job, operation)
    verdict.acknowledged = len(submitted)
    for job, operation in submitted.items():
        final = _final(records.get(job, {}))
        ends = {region: state for region, state in final.items() if state in TERMINAL}
        if not final:
            verdict.lost += 1
            verdict.violations.append(
                f"lost: {job} was acknowledged by {operation.region} and never recorded"
            )
            continue
        if not ends:
            verdict.unfinished += 1
            continue
        verdict.finished += 1
        if operation.at_most_once and len(ends) > 1:
            verdict.violations.append(f"terminal: at-most-once {job} ended in {len(ends)} regions: {ends}")
        if operation.outcome and operation.outcome not in ends.values():
            verdict.violations.append(
                f"lost: the client read {job} {operation.outcome}, the trail ends {ends}"
            )
        runs = markers.get(job, [])
        if operation.at_most_once and len(runs) > 1:
            verdict.ran_twice += 1
            starts = ", ".join(f"#{r.attempt} on {r.node}" for r in runs)
            verdict.violations.append(f"ran-twice: at-most-once {job} started {len(runs)} times ({starts})")
        if "succeeded" in ends.values() and not runs:
            verdict.violations.append(f"ran-twice: {job} succeeded without leaving a run marker")
