"""The input journal without a server: lives are named uniquely, messages fit the server's limit."""

from __future__ import annotations

from federation.core.events import Tick
from federation.core.state import RegionCore
from federation.inputs import decode_inputs
from federation.scheduler.journal import Journal, _encoder


def test_two_schedulers_with_the_same_host_and_pid_get_different_life_names() -> None:
    """pid 1 in every container: a name that repeats would splice two lives together in verify."""
    first, second = Journal("eu", "host:1"), Journal("eu", "host:1")
    core = RegionCore("eu")
    first.begin(core)
    second.begin(core)
    assert first.life != second.life


def test_a_batch_is_split_into_messages_under_the_limit_and_keeps_its_steps() -> None:
    journal = Journal("eu", "host:1")
    core = RegionCore("eu")
    journal.begin(core)
    for i in range(200):
        journal.handle(core, Tick(now=float(i)))
    messages = journal._messages(epoch=1, limit=2000)
    assert len(messages) > 1
    assert all(len(_encoder.encode(m)) <= 2000 for m in messages)
    steps = [m.step for m in messages]
    counts = [len(m.events) for m in messages]
    assert steps == [sum(counts[:i]) for i in range(len(counts))]
    assert sum(counts) == 200
    assert [m.fresh for m in messages] == [True] + [False] * (len(messages) - 1)
    assert decode_inputs(_encoder.encode(messages[-1])).events == messages[-1].events
