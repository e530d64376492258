"""The input journal without a server: lives are named uniquely, messages fit the server's limit."""

from __future__ import annotations

from federation.audit.verify import Verifier
from federation.bus.delivery import Delivery
from federation.core.events import Recovered, Tick
from federation.core.state import RegionCore
from federation.inputs import Inputs, decode_inputs
from federation.scheduler.journal import Journal, _encoder
from federation.schemas import JobRecord, Submit


def test_two_schedulers_with_the_same_host_and_pid_get_different_life_names() -> None:
    """pid 1 in every container: a name that repeats would splice two lives together in verify."""
    first, second = Journal("eu", "host:1"), Journal("eu", "host:1")
    core = RegionCore("eu")
    first.begin(core)
    second.begin(core)
    assert first.life != second.life


def _sent(journal: Journal, limit: int) -> list[Inputs]:
    """The messages a flush would send (each at most ``limit`` bytes), as read back."""
    encoded = journal._messages(epoch=1, limit=limit)
    assert all(len(message) <= limit for message in encoded)
    return [decode_inputs(message) for message in encoded]


def test_a_batch_is_split_into_messages_under_the_limit_and_keeps_its_steps() -> None:
    journal = Journal("eu", "host:1")
    core = RegionCore("eu")
    journal.begin(core)
    for i in range(200):
        journal.handle(core, Tick(now=float(i)))
    messages = _sent(journal, 2000)
    assert len(messages) > 1
    assert all(len(_encoder.encode(m)) <= 2000 for m in messages)
    steps = [m.step for m in messages]
    counts = [len(m.events) for m in messages]
    assert steps == [sum(counts[:i]) for i in range(len(counts))]
    assert sum(counts) == 200
    assert [m.fresh for m in messages] == [True] + [False] * (len(messages) - 1)
    assert decode_inputs(_encoder.encode(messages[-1])).events == messages[-1].events


def _recovered_life(jobs: int) -> Journal:
    """A journal whose life starts with a recovery of ``jobs`` pending jobs, then ticks."""
    journal = Journal("eu", "host:1")
    core = RegionCore("eu")
    journal.begin(core)
    records = tuple(
        JobRecord(
            id=f"job-{i}", region="eu", spec=Submit(id=f"job-{i}", command=["true"]), submitted_at=float(i)
        )
        for i in range(jobs)
    )
    journal.handle(core, Recovered(ledgers={}, records=records, at=float(jobs)))
    for i in range(3):
        journal.handle(core, Tick(now=float(jobs + i)))
    return journal


def _deliveries(messages: list[Inputs]) -> list[Delivery]:
    return [Delivery("fed.eu.inputs", _encoder.encode(m), {}, n, 1) for n, m in enumerate(messages, 1)]


def test_an_event_too_large_for_one_message_goes_in_parts_and_verifies_whole() -> None:
    journal = _recovered_life(200)  # a recovery snapshot of 200 jobs: ~20 KB
    messages = _sent(journal, 3000)
    assert all(len(_encoder.encode(m)) <= 3000 for m in messages)
    parts = [m for m in messages if m.parts]
    assert len(parts) > 5
    assert [m.part for m in parts] == list(range(1, len(parts) + 1))
    assert {m.step for m in parts} == {0}
    assert [bool(m.digests) for m in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[0].fresh
    assert parts[0].policy is not None
    assert not any(m.fresh for m in parts[1:])
    assert not any(m.skipped for m in messages)
    verifier = Verifier()
    for delivery in _deliveries(messages):
        verifier.feed("eu", delivery)
    assert verifier.finish().ok, verifier.result
    assert (verifier.result.lives, verifier.result.steps) == (1, 4)  # the recovery, then three ticks


def test_a_missing_part_makes_the_life_unverifiable_and_says_which() -> None:
    messages = _sent(_recovered_life(200), 3000)
    lost = next(i for i, m in enumerate(messages) if m.part == 3)
    verifier = Verifier()
    for delivery in _deliveries(messages[:lost] + messages[lost + 1 :]):
        verifier.feed("eu", delivery)
    assert not verifier.result.ok
    (why,) = verifier.result.unverifiable
    assert why.endswith(f"part 4 of {messages[lost].parts} after 2")
    assert verifier.result.steps == 0


def test_parts_that_stop_before_their_last_leave_the_life_unverifiable() -> None:
    """A leader killed while it sent its recovery's parts: the life cannot be re-run whole."""
    messages = _sent(_recovered_life(200), 3000)
    last = max(i for i, m in enumerate(messages) if m.parts)
    verifier = Verifier()
    for delivery in _deliveries(messages[:last]):
        verifier.feed("eu", delivery)
    assert verifier.result.ok  # nothing wrong seen yet: the last part may still come
    result = verifier.finish()
    assert not result.ok
    (why,) = result.unverifiable
    assert why.endswith(f"the trail ends after part {last} of an event in parts")
