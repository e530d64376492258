"""Durable publishing against a real server (federation.bus.streams): each acknowledged publish
gets its own answer, and each kind of refusal its own error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from federation.bus import Bus
from federation.errors import ConflictError, FederationUnavailable
from federation.ops.provision import bucket

pytestmark = pytest.mark.timeout(120)

NAME = "publishing"


@pytest.fixture
async def bus(make_cluster) -> AsyncIterator[Bus]:
    cluster = await make_cluster(regions=("aa",), agents=0)
    connected = await Bus.connect(cluster.url("aa"), "test-publishing", retry_forever=False)
    await connected.ensure_stream(bucket(NAME, 8))
    try:
        yield connected
    finally:
        await connected.close()


async def test_pipelined_publishes_each_get_their_own_sequence_and_a_repeat_its_first(bus: Bus) -> None:
    subjects = [f"$KV.{NAME}.k{i % 50}" for i in range(500)]
    sequences = await asyncio.gather(*(bus.store(s, str(i).encode()) for i, s in enumerate(subjects)))
    assert sorted(sequences) == list(range(1, 501))  # every answer reached its own publish
    for subject, sequence in zip(subjects[-50:], sequences[-50:], strict=True):
        assert (await bus.last(f"KV_{NAME}", subject)).sequence == sequence  # type: ignore[union-attr]
    first = await bus.store(f"$KV.{NAME}.once", b"x", msg_id="same-write")
    assert await bus.store(f"$KV.{NAME}.once", b"x", msg_id="same-write") == first  # not stored twice


async def test_compare_and_set_refusals_and_a_subject_no_stream_takes(bus: Bus) -> None:
    revision = await bus.cas(NAME, "key", b"one", 0)
    assert await bus.cas(NAME, "key", b"two", revision) > revision
    with pytest.raises(ConflictError):
        await bus.cas(NAME, "key", b"three", revision)  # the key moved on
    with pytest.raises(ConflictError):
        await bus.cas(NAME, "other", b"one", 5)  # expected a revision of a key never written
    with pytest.raises(FederationUnavailable, match="no stream answers"):
        await bus.store("nobody.stores.this", b"x", timeout=2.0)


async def test_compare_and_set_writes_sent_together_each_get_their_own_outcome(bus: Bus) -> None:
    first = await bus.cas(NAME, "moved", b"one", 0)
    await bus.cas(NAME, "moved", b"two", first)
    writes = [(f"new{i}", f"value {i}".encode(), 0) for i in range(200)]
    writes.insert(100, ("moved", b"three", first))  # stale: the key moved on since
    outcomes = await bus.cas_all(NAME, writes)
    assert len(outcomes) == len(writes)
    stale = outcomes.pop(100)
    assert isinstance(stale, ConflictError)
    assert all(isinstance(o, int) for o in outcomes)
    assert len(set(outcomes)) == 200  # every answer reached its own write
    for (key, value, _), revision in zip(writes[:100] + writes[101:], outcomes, strict=True):
        assert await bus.kv_get(NAME, key) == (value, revision)
    assert (await bus.kv_get(NAME, "moved"))[0] == b"two"  # the stale write changed nothing
    again = await bus.cas_all(NAME, [("new0", b"again", 0)])  # expected absent: it is not
    assert isinstance(again[0], ConflictError)
    assert await bus.cas_all(NAME, []) == []
    nowhere = await bus.cas_all("no-such-bucket", [("k", b"x", 0)])
    assert isinstance(nowhere[0], FederationUnavailable)
    assert "no stream answers" in str(nowhere[0])


async def test_a_publish_nobody_acknowledges_times_out(bus: Bus) -> None:
    heard: list[bytes] = []

    async def silent(delivery) -> None:  # takes the message, never answers it
        heard.append(delivery.data)

    await bus.subscribe("silent.listener", silent)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(FederationUnavailable, match="did not acknowledge in time"):
        await bus.store("silent.listener", b"x", timeout=0.5)
    assert 0.4 <= loop.time() - began < 5
    assert heard == [b"x"]
    assert bus._acks is not None
    assert not bus._acks._waiting  # nothing left waiting for an answer
