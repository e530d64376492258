"""What a workload subject accepts, against a real scheduler (issue 16, defect 4): only the type
its subject names, and only fields a submitter may set. Anything else is quarantined with the
reason and changes nothing; hand-offs, which carry ``origin``, are in test_spillover.py."""

from __future__ import annotations

import contextlib
import json

import pytest

from federation import subjects
from federation.client import Client
from federation.errors import NotFound
from federation.schemas import JobRecord, Quarantined
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(120)


async def test_a_cancel_on_a_submit_subject_and_system_owned_fields_are_quarantined(make_cluster) -> None:
    cluster = await make_cluster(agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        await fed.submit(["sleep", "600"], job_id="keeps-running")
        await eventually(lambda: _state(fed, "keeps-running", "running"), timeout=30)
        refused = {
            # a cancel of a running job, on its submit subject
            "keeps-running": {"type": "cancel", "id": "keeps-running"},
            # a submission claiming to come from another region's hand-off
            "hand-set-origin": {
                "type": "submit",
                "id": "hand-set-origin",
                "command": ["true"],
                "origin": "us",
            },
            # a submission setting what only the scheduler writes
            "hand-set-attempt": {
                "type": "submit",
                "id": "hand-set-attempt",
                "command": ["true"],
                "attempt": 3,
            },
        }
        bus = await fed.bus("eu")
        for job, payload in refused.items():
            await bus.store(subjects.submit("eu", job), json.dumps(payload).encode())
        # the workloads consumer is ordered: once this one ran, everything before it was handled
        done = await (await fed.submit(["true"], job_id="after-the-refused")).wait(timeout=60)
        assert done.state == "succeeded"

        async def quarantined() -> dict[str, Quarantined]:
            found = {q.subject: q for q in await fed.quarantined(region="eu")}
            return found if len(found) >= len(refused) else {}

        found = await eventually(quarantined, timeout=30)
        reasons = {job: found[subjects.submit("eu", job)].reason for job in refused}
        assert reasons["keeps-running"] == "message type 'cancel' does not belong on a submit subject"
        assert "may not set origin ('us')" in reasons["hand-set-origin"]
        assert "may not set attempt" in reasons["hand-set-attempt"]
        assert (await fed.job("keeps-running")).state == "running"  # not cancelled
        jobs = {record.id for record in await fed.jobs()}
        assert jobs == {"keeps-running", "after-the-refused"}, "a refused message created a job"
        assert (await fed.audit_check(region="eu")).ok  # refused input is evidence, not a loss
        await fed.cancel("keeps-running")


async def _state(fed: Client, job: str, state: str) -> JobRecord | None:
    with contextlib.suppress(NotFound):  # the record is written moments after the submission
        record = await fed.job(job)
        return record if record.state == state else None
    return None
