"""Merging the regions' pages of job records (``Client.jobs_page``), without a server: each region's
records come newest first in its own stream's order, and ``updated_at`` need not follow it."""

from __future__ import annotations

from federation.client.reading import Page, _newest
from federation.schemas import JobRecord, Submit


def _record(job: str, updated: float) -> JobRecord:
    return JobRecord(id=job, region="r", spec=Submit(id=job, command=["true"]), updated_at=updated)


def test_pages_across_regions_show_every_record_once_even_when_updated_at_is_out_of_stream_order() -> None:
    # region a's stream order (sequence 10, 9, 8) is not its records' updated_at order (5, 50, 1)
    a = [(10, _record("a10", 5.0)), (9, _record("a9", 50.0)), (8, _record("a8", 1.0))]
    b = [(20, _record("b20", 10.0))]
    shown: list[str] = []
    pages: dict[str, Page] = {"a": (a, 0), "b": (b, 0)}
    while True:
        records, cursor = _newest(pages, limit=2)
        shown += [r.id for r in records]
        if not cursor:
            break
        # the next page: each region's records below its cursor (what kv_recent would read)
        pages = {
            name: ([(s, r) for s, r in (a if name == "a" else b) if s < below], 0)
            for name, below in cursor.items()
        }
    assert sorted(shown) == ["a10", "a8", "a9", "b20"]
    assert len(shown) == len(set(shown))  # none twice: only a region's front is ever taken
    assert shown[0] == "b20"  # the most recently updated front first (b20 at 10 against a10 at 5)


def test_a_region_with_more_to_read_keeps_its_cursor_and_an_exhausted_one_drops_out() -> None:
    a = [(10, _record("a10", 5.0))]
    b = [(20, _record("b20", 10.0))]
    records, cursor = _newest({"a": (a, 7), "b": (b, 0)}, limit=5)
    assert [r.id for r in records] == ["b20", "a10"]
    assert cursor == {"a": 7}  # a said it has more below 7; b read everything
    records, cursor = _newest({"a": (a, 7), "b": (b, 0)}, limit=1)
    assert [r.id for r in records] == ["b20"]
    assert cursor == {"a": 11}  # a10 was read but not shown: the next page starts with it
