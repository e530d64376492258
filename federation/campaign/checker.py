"""Judge a campaign from the documented formats alone, independently of ``federation.audit``.

The inputs are what anyone outside the federation can have: the client history
(:mod:`federation.campaign.history`), the run markers the jobs wrote, each node's declared
capacity, and the audit trail as ``fed audit replay --format jsonl`` exports it (subjects.md,
"Audit events"). Of each exported event only what subjects.md documents as stored is used: the
audit stream it was read from (``region``, ``seq``), the ``subject`` it was written on and the
stored ``value`` (or ``value_invalid`` when the stored bytes are not JSON). A job record is a value
on ``$KV.fed-jobs-<region>.<job>`` (its ``state`` and ``attempt``), a ledger a value on
``$KV.fed-ledger-<region>.<node>`` (its ``allocations``), a refused message one on
``fed.<region>.quarantine.<source>``. The export's own interpretation (``kind``, ``job``,
``state``...), which the federation's parser computes, is not read: a defect in the federation's
schemas or parser cannot hide a defect in the run.

What is checked (each finding names its rule):

* ``lost``: every acknowledged submission has a record in some region and, after the run settled,
  a terminal state; the state the client read is the state the trail ends with;
* ``ran-twice``: a job submitted at most once (no ``--retry-anywhere``, ``--on-node-lost fail``)
  left at most one run marker, whether or not its submission was acknowledged and whether or not
  it finished;
* ``no-run``: a job that succeeded left a run marker;
* ``capacity``: no ledger version held more cores, memory or GPUs than its node declared, nor one
  core or GPU twice, and every ledger belongs to a declared node;
* ``terminal``: within a region a job reaches at most one terminal state and never leaves it; an
  at-most-once job ends terminal in at most one region;
* ``backwards``: within a region a job's records move forward only: the attempt never decreases,
  and within an attempt the state follows pending -> placed -> running -> an end; a state the
  documentation does not name is a finding too;
* ``unreadable``: a job record or ledger whose stored bytes are not JSON;
* ``gap``: each region's audit sequence numbers are consecutive (the stream refuses deletes).
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
JOBS, LEDGERS = "$KV.fed-jobs-", "$KV.fed-ledger-"


@dataclass(frozen=True)
class Declared:
    """A node's declared capacity: cores, bytes of memory, GPUs."""

    cpu: int
    memory: int
    gpu: int


@dataclass(frozen=True)
class Step:
    """One stored version of a job record: where the trail has it, and its state."""

    region: str  # the audit stream it was read from
    seq: int
    state: str
    attempt: int


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


def histories(trail: list[dict[str, Any]]) -> dict[str, dict[str, list[Step]]]:
    """Every job's stored record versions: job -> the region whose bucket holds them -> in order."""
    out: dict[str, dict[str, list[Step]]] = {}
    for event in sorted(trail, key=lambda e: (e["region"], e["seq"])):
        subject, value = event.get("subject", ""), event.get("value")
        if subject.startswith(JOBS) and isinstance(value, dict):
            region, _, job = subject[len(JOBS) :].partition(".")
            step = Step(
                event["region"], event["seq"], str(value.get("state", "")), int(value.get("attempt", 0))
            )
            out.setdefault(job, {}).setdefault(region, []).append(step)
    return out


def settled(operations: list[Operation], trail: list[dict[str, Any]]) -> list[str]:
    """Acknowledged jobs whose outcome, as the client read it, the trail does not show yet (the
    audit stream copies asynchronously: export again until this is empty)."""
    ends = {job: {steps[-1].state for steps in regions.values()} for job, regions in histories(trail).items()}
    return sorted(
        {o.job for o in operations if o.kind == "submit" and o.ack == "ok" and o.outcome}
        - {o.job for o in operations if o.kind == "submit" and o.outcome in ends.get(o.job, set())}
    )


def check(
    operations: list[Operation],
    markers: Mapping[str, list[Run]],
    trail: list[dict[str, Any]],
    declared: Mapping[str, Declared],
) -> Verdict:
    """Judge the run (see the module docstring for the rules)."""
    verdict = Verdict()
    verdict.violations += _gaps(trail)
    for event in trail:
        subject, value = event.get("subject", ""), event.get("value")
        where = f"{event['region']} audit seq {event['seq']}"
        if subject.startswith((JOBS, LEDGERS)) and value is None:
            why = event.get("value_invalid", "")
            if why != "empty":  # an empty value is a delete
                verdict.violations.append(f"unreadable: {subject} at {where}: {why}")
            continue
        if subject.startswith(JOBS):
            verdict.records += 1
        elif subject.startswith(LEDGERS):
            verdict.ledgers += 1
            verdict.violations += _capacity(subject[len(LEDGERS) :].partition(".")[2], value, where, declared)
        elif ".quarantine." in subject:
            verdict.quarantined += 1
    steps = histories(trail)
    for job, regions in steps.items():
        verdict.violations += _forward(job, regions)
    _outcomes(verdict, operations, markers, steps)
    return verdict


def _gaps(trail: list[dict[str, Any]]) -> list[str]:
    found = []
    streams: dict[str, list[int]] = {}
    for event in trail:
        streams.setdefault(event["region"], []).append(int(event["seq"]))
    for region, seqs in sorted(streams.items()):
        for before, after in itertools.pairwise(sorted(seqs)):
            if after != before + 1:
                found.append(f"gap: {region}'s audit stream has no sequences {before + 1}-{after - 1}")
    return found


def _capacity(node: str, value: Any, where: str, declared: Mapping[str, Declared]) -> list[str]:
    if not isinstance(value, dict):
        return [f"unreadable: the ledger of {node} at {where} is not an object"]
    allocations = value.get("allocations") or []
    found = []
    cores = [c for a in allocations for c in a.get("cores") or []]
    gpus = [g for a in allocations for g in a.get("gpus") or []]
    if len(set(cores)) < len(cores):
        found.append(f"capacity: {node} holds a core twice ({sorted(cores)}) at {where}")
    if len(set(gpus)) < len(gpus):
        found.append(f"capacity: {node} holds a GPU twice ({sorted(gpus)}) at {where}")
    limit = declared.get(node)
    if limit is None:
        return [*found, f"capacity: a ledger for {node}, which no one declared, at {where}"]
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


def _forward(job: str, regions: dict[str, list[Step]]) -> list[str]:
    found = []
    for region, steps in regions.items():
        for step in steps:
            if step.state not in RANK:
                found.append(f"backwards: {job} in {region} has the unknown state {step.state!r}")
        for before, after in itertools.pairwise(steps):
            a, b = before.state, after.state
            where = f"{job} in {region} (audit seq {before.seq} -> {after.seq})"
            if a in TERMINAL and b != a:
                found.append(f"terminal: {where} left {a} for {b}")
            if (after.attempt, RANK.get(b, 0)) < (before.attempt, RANK.get(a, 0)):
                found.append(f"backwards: {where} {a}#{before.attempt} -> {b}#{after.attempt}")
        ends = {s.state for s in steps if s.state in TERMINAL}
        if len(ends) > 1:
            found.append(f"terminal: {job} in {region} reached {sorted(ends)}")
    return found


def _outcomes(
    verdict: Verdict,
    operations: list[Operation],
    markers: Mapping[str, list[Run]],
    steps: dict[str, dict[str, list[Step]]],
) -> None:
    acknowledged: dict[str, Operation] = {}
    once: set[str] = set()  # jobs submitted at most once, acknowledged or not
    for operation in operations:
        if operation.kind != "submit":
            continue
        verdict.submitted += 1
        if operation.at_most_once:
            once.add(operation.job)
        if operation.ack == "ok":
            acknowledged.setdefault(operation.job, operation)
    verdict.acknowledged = len(acknowledged)
    for job in sorted(once):
        runs = markers.get(job, [])
        if len(runs) > 1:
            verdict.ran_twice += 1
            starts = ", ".join(f"#{r.attempt} on {r.node}" for r in runs)
            verdict.violations.append(f"ran-twice: at-most-once {job} started {len(runs)} times ({starts})")
    for job, operation in acknowledged.items():
        final = {region: s[-1].state for region, s in steps.get(job, {}).items() if s}
        ends = {region: state for region, state in final.items() if state in TERMINAL}
        if not final:
            verdict.lost += 1
            verdict.violations.append(f"lost: {job}, acknowledged by {operation.region}, never recorded")
            continue
        if not ends:
            verdict.unfinished += 1
            continue
        verdict.finished += 1
        if operation.at_most_once and len(ends) > 1:
            verdict.violations.append(f"terminal: at-most-once {job} ended in {len(ends)} regions: {ends}")
        if operation.outcome and operation.outcome not in ends.values():
            verdict.violations.append(f"lost: client read {job} {operation.outcome}, the trail ends {ends}")
        if "succeeded" in ends.values() and not markers.get(job):
            verdict.violations.append(f"no-run: {job} succeeded without leaving a run marker")
