"""Listing a bucket a page at a time, newest first (issue 21, part 3), against a real server: what
``fed jobs`` and ``Client.jobs_page`` are built on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from federation.bus import Bus, Delivery
from federation.bus.scan import recent
from federation.client import Client
from federation.ops.provision import bucket
from tests.conftest import fed

pytestmark = pytest.mark.timeout(120)

NAME = "listing"


@pytest.fixture
async def bus(make_cluster) -> AsyncIterator[Bus]:
    """A connection to a region server holding a bucket ``NAME`` of 30 keys, each written one to
    three times (interleaved), one of them deleted at the end."""
    cluster = await make_cluster(regions=("aa",), agents=0)
    connected = await Bus.connect(cluster.url("aa"), "test-listing", retry_forever=False)
    await connected.ensure_stream(bucket(NAME, 8))
    for round_ in range(3):
        for i in range(30):
            if round_ == 0 or (i + round_) % 2 == 0:
                await connected.store(f"$KV.{NAME}.k{i:02d}", f"k{i:02d}-{round_}".encode())
    await connected.store(f"$KV.{NAME}.k07", b"", headers={"KV-Operation": "DEL"})
    try:
        yield connected
    finally:
        await connected.close()


def _key(item: Delivery) -> str:
    return item.subject.rsplit(".", 1)[-1]


async def _pages(bus: Bus, limit: int, below: int = 0) -> list[list[Delivery]]:
    pages = []
    while True:
        items, below = await bus.kv_recent(NAME, limit=limit, below=below)
        pages.append(items)
        if not below:
            return pages


async def test_pages_list_every_live_key_once_at_its_latest_value_newest_first(bus: Bus) -> None:
    live = await bus.kv_load(NAME)
    assert len(live) == 29  # k07 was deleted
    pages = await _pages(bus, limit=7)
    listed = [item for page in pages for item in page]
    assert [len(page) for page in pages[:-1]] == [7] * (len(pages) - 1)
    assert sorted(_key(item) for item in listed) == sorted(live)  # each live key once, k07 never
    assert {_key(item): (item.data, item.sequence) for item in listed} == live  # at its latest value
    sequences = [item.sequence for item in listed]
    assert sequences == sorted(sequences, reverse=True)  # the most recently written first


async def test_small_windows_read_further_back_and_give_the_same_pages(bus: Bus) -> None:
    top = await bus.last_sequence(f"KV_{NAME}")
    assert top is not None
    wide = await _pages(bus, limit=7)
    narrow: list[list[Delivery]] = []
    below = 0
    while True:  # four messages per direct get: a page needs several, some all older versions
        items, below = await recent(
            bus, f"KV_{NAME}", f"$KV.{NAME}.>", top=top, limit=7, below=below, window=4
        )
        narrow.append(items)
        if not below:
            break
    assert [[i.sequence for i in page] for page in narrow] == [[i.sequence for i in page] for page in wide]


async def test_a_key_written_again_after_a_page_is_not_shown_again_in_its_old_version(bus: Bus) -> None:
    first, below = await bus.kv_recent(NAME, limit=5)
    everything = [item for page in await _pages(bus, limit=5) for item in page]
    oldest = _key(everything[-1])  # on the last page, far below the cursor
    await bus.store(f"$KV.{NAME}.{oldest}", b"rewritten")
    rest = [item for page in await _pages(bus, limit=5, below=below) for item in page]
    assert oldest not in {_key(item) for item in rest}  # it is newer than the cursor now
    assert {_key(i) for i in first} | {_key(i) for i in rest} == {_key(i) for i in everything} - {oldest}
    newest, _ = await bus.kv_recent(NAME, limit=1)
    assert [(_key(newest[0]), newest[0].data)] == [(oldest, b"rewritten")]


async def test_keep_chooses_which_latest_values_count_toward_the_page(bus: Bus) -> None:
    items, below = await bus.kv_recent(NAME, limit=100, keep=lambda item: item.data.endswith(b"-0"))
    assert below == 0  # fewer than 100 kept: the whole bucket was read
    live = await bus.kv_load(NAME)
    assert sorted(_key(i) for i in items) == sorted(k for k, (v, _) in live.items() if v.endswith(b"-0"))
    assert all(item.data.endswith(b"-0") for item in items)


async def test_fed_jobs_pages_through_every_region_with_the_cursor_it_prints(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    async with Client.connect(connection=cluster.connection) as client:
        for i in range(5):
            job = await client.submit(["true"], region=("aa", "bb")[i % 2], job_id=f"listed-{i}")
            assert (await job.wait(timeout=60)).state == "succeeded"
    seen: list[str] = []
    args = ["jobs", "--limit", "2", "--json"]
    for _ in range(5):
        out = await fed(cluster.tmp, *args)
        assert out.returncode == 0, out.stderr
        page = [record["id"] for record in json.loads(out.stdout)]
        seen += page
        if "--before" not in out.stderr:
            break
        assert len(page) == 2
        cursor = out.stderr.split("--before ", 1)[1].split(")", 1)[0]
        args = ["jobs", "--limit", "2", "--json", "--before", cursor]
    assert sorted(seen) == [f"listed-{i}" for i in range(5)]  # every job once, over three pages
    every = json.loads((await fed(cluster.tmp, "jobs", "--limit", "0", "--json")).stdout)
    assert sorted(record["id"] for record in every) == sorted(seen)
    newest = json.loads((await fed(cluster.tmp, "jobs", "--limit", "1", "--json")).stdout)
    assert [record["id"] for record in newest] == ["listed-4"]  # the last one to change
    bad = await fed(cluster.tmp, "jobs", "--before", "aa")
    assert bad.returncode != 0
    assert "expected what a page printed" in bad.stderr


async def test_a_later_page_checks_a_whole_window_of_keys_at_once(make_cluster) -> None:
    """A page below a cursor, over more keys than one window: up to a window's worth of subjects
    are asked for their last versions in one ``multi_last``, which the server must answer whole."""
    cluster = await make_cluster(regions=("aa",), agents=0)
    bus = await Bus.connect(cluster.url("aa"), "test-listing-wide", retry_forever=False)
    try:
        await bus.ensure_stream(bucket("wide", 2))
        for start in range(0, 2500, 250):
            await asyncio.gather(*(bus.store(f"$KV.wide.k{i:04d}", b"v") for i in range(start, start + 250)))
        first, below = await bus.kv_recent("wide", limit=10)
        rest, further = await bus.kv_recent("wide", limit=2490, below=below)
        assert further == 0
        keys = [_key(i) for i in first + rest]
        assert sorted(keys) == [f"k{i:04d}" for i in range(2500)]
        assert len(set(keys)) == 2500
    finally:
        await bus.close()


async def test_named_keys_are_read_at_their_latest_value_in_requests_of_a_bounded_size(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``kv_get_many`` (what a job array's wait reads): only the keys asked for, each at its latest
    value, whatever the bucket holds; a deleted or absent key left out; several requests when the
    list is longer than one names."""
    from federation.bus import scan

    monkeypatch.setattr(scan, "NAMED", 4)  # 11 keys: three requests
    live = await bus.kv_load(NAME)
    wanted = ["k01", "k02", "k03", "k07", "k10", "k11", "k12", "k20", "k21", "k29", "nope", "k01"]
    asked: list[int] = []
    gather = bus.gather

    async def counted(subject: str, payload: bytes) -> Any:
        asked.append(len(json.loads(payload)["multi_last"]))
        return await gather(subject, payload)

    monkeypatch.setattr(bus, "gather", counted)
    got = await bus.kv_get_many(NAME, wanted)
    assert asked == [4, 4, 3]
    assert sorted(got) == ["k01", "k02", "k03", "k10", "k11", "k12", "k20", "k21", "k29"]
    assert got == {key: live[key] for key in got}  # at the value (and revision) a full read shows
