"""A trail recorded by an earlier version still checks and verifies with this one.

``tests/fixtures/trail-85cf0c3.json`` holds three regions' audit streams as the code of commit
85cf0c3 wrote them (see ``tests/fixtures/record_trail.py`` for the scenario: successes, a
failure retried, cancels, a preemption, a hand-off to another region, a gang, a duplicate and a
quarantined message). Reading it runs the same pure passes as ``fed audit check`` and ``fed
audit verify``, without a server: a change to the core, the schemas or the audit that breaks
old trails fails here.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from federation import subjects
from federation.audit.check import Checker
from federation.audit.trail import parse
from federation.audit.verify import Verifier
from federation.bus.delivery import Delivery

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "trail-85cf0c3.json"
TRAIL: dict[str, Any] = json.loads(FIXTURE.read_text())


def deliveries(region: str) -> list[Delivery]:
    return [
        Delivery(
            m["subject"], base64.b64decode(m["data"]), m["headers"], m["sequence"], 1, 0, None, m["timestamp"]
        )
        for m in TRAIL[region]["messages"]
    ]


@pytest.mark.parametrize("region", sorted(TRAIL))
def test_recorded_trail_checks(region: str) -> None:
    recorded = TRAIL[region]
    checker = Checker(recorded["baseline"])
    for delivery in deliveries(region):
        checker.feed(*parse(delivery))
    live = {
        tuple(key.split("/", 1)): (base64.b64decode(value), revision)
        for key, (value, revision) in recorded["live"].items()
    }
    report = checker.finish(origins_last=recorded["origins_last"], live=live, processed=recorded["processed"])
    assert report.ok, report
    assert report.events == len(recorded["messages"])
    assert report.open_jobs == 0


@pytest.mark.parametrize("region", sorted(TRAIL))
def test_recorded_trail_verifies(region: str) -> None:
    verifier = Verifier()
    for delivery in deliveries(region):
        if delivery.subject == subjects.inputs(region):
            verifier.feed(region, delivery)
    assert verifier.finish().ok, verifier.result
    assert verifier.result.steps > 0
    assert verifier.result.lives == 1


def test_recorded_trail_has_what_it_claims() -> None:
    # the scenario really happened: a preemption, a hand-off, a quarantine in the home region
    home = "eu-west"
    details = [
        base64.b64decode(m["data"]) for m in TRAIL[home]["messages"] if m["subject"].startswith("$KV.")
    ]
    assert any(b"preempted on" in d for d in details)
    assert any(b"forwarded" in d for d in details)
    assert any(m["subject"].endswith(".quarantine.workloads") for m in TRAIL[home]["messages"])
