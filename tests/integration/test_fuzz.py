"""Fuzzed submissions and offers against a real scheduler (issue #7): bad JSON, wrong types, huge
numbers, deep nesting, oversized payloads. The scheduler never dies; every message is refused by
the server (too large), quarantined with its reason, or, when the fuzzer happens to write a valid
message, accepted as one; invalid ones change no state; valid traffic keeps flowing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation import subjects
from federation.client import Client
from federation.errors import FederationError
from federation.ops.launcher import Federation, Options
from federation.schemas import MAX_MESSAGE_BYTES, Offer, Submit, decode_message, decode_workload
from tests.conftest import eventually

REGION = "fz"
GiB = 1024**3

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
huge = st.integers(min_value=-(2**70), max_value=2**70)
submit_like = st.fixed_dictionaries(
    {"type": st.just("submit"), "id": st.text(max_size=70), "command": json_values},
    optional={"cpu": huge, "memory": huge, "gpu": huge, "priority": json_values, "env": json_values},
)
offer_like = st.fixed_dictionaries(
    {"type": st.just("offer"), "node": st.text(max_size=70), "region": st.just(REGION)},
    optional={"cores": json_values, "memory": huge, "gpus": json_values, "capacity_cpu": huge},
)
payloads = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    submit_like.map(lambda v: json.dumps(v).encode()),
    offer_like.map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=100, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
    st.just(b'{"type": "submit", "id": "x", "command": ["' + b"a" * (MAX_MESSAGE_BYTES + 10) + b'"]}'),
)


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    submissions=st.lists(payloads, min_size=30, max_size=30),
    offers=st.lists(payloads, min_size=30, max_size=30),
)
def test_fuzzed_submissions_and_offers_are_refused_and_change_nothing(
    tmp_path_factory, submissions: list[bytes], offers: list[bytes]
) -> None:
    asyncio.run(_scenario(tmp_path_factory.mktemp("fuzz"), submissions, offers))


def _valid(data: bytes, kind: type, name: str) -> bool:
    """Whether the scheduler must accept ``data`` published under the token ``name``."""
    try:
        if kind is Submit:  # the scheduler's own rules for its submit subject
            return isinstance(
                decode_workload(data, kind="submit", job=name, tenant="", region=REGION), Submit
            )
        message = decode_message(data)
    except FederationError:
        return False
    return isinstance(message, Offer) and message.node == name and message.region == REGION


async def _scenario(state: Path, submissions: list[bytes], offers: list[bytes]) -> None:
    federation = Federation(
        Options(state_dir=state, regions=(REGION,), agents=1, capacity={"cpu": 2, "memory": GiB, "gpu": 0})
    )
    connection = await federation.start()
    try:
        (scheduler,) = [c for c in federation.daemons if c.name.startswith("scheduler")]
        pid = scheduler.pid
        async with Client.connect(connection=connection) as fed:
            bus = await fed.bus(REGION)
            stored: dict[str, tuple[int, bool]] = {}  # job -> (sequence, valid)
            for i, data in enumerate(submissions):
                job = f"fz{i}"
                try:
                    seq = await bus.store(subjects.submit(REGION, job), data, msg_id=job)
                except FederationError:
                    assert len(data) > MAX_MESSAGE_BYTES, f"a {len(data)}-byte submission was refused"
                    continue  # the server refused it: nothing stored
                stored[job] = (seq, _valid(data, Submit, job))
            invalid_offers = 0
            for i, data in enumerate(offers):
                node = f"fzn{i}"
                try:
                    await bus.store(subjects.offer(REGION, node), data)
                except FederationError:
                    assert len(data) > MAX_MESSAGE_BYTES, f"a {len(data)}-byte offer was refused"
                    continue
                invalid_offers += not _valid(data, Offer, node)
            # valid traffic keeps flowing, after all of that
            done = await (await fed.submit(["true"], region=REGION, job_id="after-fuzz")).wait(timeout=60)
            assert done.state == "succeeded"

            async def offers_refused() -> bool:
                refusals = [q for q in await fed.quarantined(region=REGION) if ".offer." in q.subject]
                return len(refusals) >= invalid_offers

            await eventually(offers_refused, timeout=30)
            refused = {q.sequence for q in await fed.quarantined(region=REGION) if ".wl." in q.subject}
            records = {r.id for r in await fed.jobs(region=REGION)}
            for job, (seq, valid) in stored.items():
                if valid:
                    assert job in records, f"{job}: a valid submission was not accepted"
                else:
                    assert seq in refused, (
                        f"{job}: an invalid submission was neither accepted nor quarantined"
                    )
                    assert job not in records, f"{job}: an invalid submission changed the state"
        assert scheduler.pid == pid, "the scheduler was restarted"
        assert scheduler.alive(), "the scheduler died"
    finally:
        await federation.stop()
