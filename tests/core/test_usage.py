"""Usage accounting on hand-made audit facts (no server): each run counted once, where it ran, for
its job's tenant and home region; gangs, hand-offs, repeated reports, missing usage and the
window; and the CLI's window parsing and tables."""

from __future__ import annotations

import argparse
import json

import msgspec
import pytest

from federation.audit.usage import UNKNOWN, Accountant, Totals, UsageReport, dimensions
from federation.cli.usage import render, window
from federation.errors import InvalidRequest
from federation.schemas import JobEvent, JobRecord, Submit, Usage

GiB = 1024**3


def record(
    region: str, job: str, state: str = "succeeded", *, tenant: str = "default", origin: str = ""
) -> JobRecord:
    spec = Submit(id=job, command=["true"], tenant=tenant, origin=origin)
    return JobRecord(id=job, region=region, spec=spec, state=state)  # type: ignore[arg-type]


def exited(node: str, job: str, usage: Usage | None, *, attempt: int = 1, member: int = 0) -> JobEvent:
    return JobEvent(
        node=node, job=job, attempt=attempt, kind="exited", exit_code=0, member=member, usage=usage
    )


def used(cpu: float = 0.0, memory: int = 0, wall: float = 0.0, gpu: float = 0.0) -> Usage:
    return Usage(
        cpu_seconds=cpu, peak_memory_bytes=memory, wall_seconds=wall, gpu_seconds=gpu, measured_by="cgroup"
    )


def figures(totals: Totals) -> tuple[int, int, float, float, float, float]:
    return (
        totals.jobs,
        totals.runs,
        round(totals.cpu_hours, 9),
        round(totals.memory_gib_hours, 9),
        round(totals.gpu_hours, 9),
        round(totals.wall_hours, 9),
    )


def rows(report: UsageReport, dimension: str) -> dict[str, Totals]:
    return {row.key: row for row in report.by[dimension]}


def test_a_handed_off_job_counts_once_where_it_ran_for_its_home_region() -> None:
    books = Accountant(by=("tenant", "region", "origin", "node"))
    books.feed("aa", 1.0, record("aa", "j", "pending", tenant="acme"))
    books.feed("aa", 2.0, record("aa", "j", "forwarded", tenant="acme"))  # home: no run here
    books.feed("bb", 3.0, record("bb", "j", "running", tenant="acme", origin="aa"))
    books.feed("bb", 4.0, exited("bb-gpu", "j", used(cpu=1800, memory=2 * GiB, wall=3600, gpu=7200)))
    books.feed("bb", 5.0, record("bb", "j", "succeeded", tenant="acme", origin="aa"))
    report = books.report(until=10.0)

    assert figures(report.totals) == (1, 1, 0.5, 2.0, 2.0, 1.0)
    assert list(rows(report, "tenant")) == ["acme"]
    assert list(rows(report, "region")) == ["bb"]  # where it ran, never at home
    assert list(rows(report, "origin")) == ["aa"]
    assert list(rows(report, "node")) == ["bb/bb-gpu"]
    assert [(c.home, c.ran_in, c.jobs) for c in report.exchange] == [("aa", "bb", 1)]
    balance = {b.region: b for b in report.balance}
    assert figures(balance["aa"].borrowed) == (1, 1, 0.5, 2.0, 2.0, 1.0)
    assert figures(balance["aa"].lent) == (0, 0, 0.0, 0.0, 0.0, 0.0)
    assert figures(balance["bb"].lent) == (1, 1, 0.5, 2.0, 2.0, 1.0)
    assert figures(balance["bb"].borrowed) == (0, 0, 0.0, 0.0, 0.0, 0.0)


def test_a_regions_own_jobs_sit_on_the_diagonal_and_are_neither_lent_nor_borrowed() -> None:
    books = Accountant()
    books.feed("aa", 1.0, record("aa", "local"))
    books.feed("aa", 2.0, exited("aa-n1", "local", used(cpu=360, wall=360)))
    report = books.report(until=3.0)
    assert [(c.home, c.ran_in) for c in report.exchange] == [("aa", "aa")]
    assert [(b.region, b.lent.runs, b.borrowed.runs) for b in report.balance] == [("aa", 0, 0)]
    assert set(report.by) == {"tenant", "region"}  # the default breakdowns


def test_a_gangs_members_are_runs_of_one_job_each_with_its_own_memory_time() -> None:
    books = Accountant(by=("node",))
    books.feed("aa", 1.0, record("aa", "gang", "running"))
    books.feed("aa", 2.0, exited("n1", "gang", used(cpu=3600, memory=GiB, wall=3600), member=0))
    books.feed("aa", 3.0, exited("n2", "gang", used(cpu=1800, memory=4 * GiB, wall=1800), member=1))
    report = books.report(until=4.0)
    # memory GiB-hours per run: 1 GiB x 1 h + 4 GiB x 0.5 h, not the summed peak times the longest wall
    assert figures(report.totals) == (1, 2, 1.5, 3.0, 0.0, 1.5)
    assert {key: row.jobs for key, row in rows(report, "node").items()} == {"aa/n1": 1, "aa/n2": 1}


def test_a_report_stored_twice_counts_once_and_every_attempt_counts() -> None:
    books = Accountant()
    books.feed("aa", 1.0, record("aa", "j", "running"))
    first = exited("n1", "j", used(cpu=36, wall=36), attempt=1)  # preempted: its record went back to pending
    books.feed("aa", 2.0, first)
    books.feed("aa", 2.5, first)  # the agent's retry stored it again
    books.feed("aa", 3.0, exited("n2", "j", used(cpu=72, wall=72), attempt=2))
    report = books.report(until=4.0)
    assert figures(report.totals) == (1, 2, 0.03, 0.0, 0.0, 0.03)


def test_a_cancelled_jobs_run_counts_though_its_record_ended_before_the_report() -> None:
    books = Accountant()
    books.feed("aa", 1.0, record("aa", "c", "running", tenant="acme"))
    books.feed("aa", 2.0, record("aa", "c", "cancelled", tenant="acme"))  # usage None on the record
    books.feed("aa", 3.0, exited("n1", "c", used(cpu=3600, wall=7200)))
    report = books.report(until=4.0)
    assert figures(rows(report, "tenant")["acme"]) == (1, 1, 1.0, 0.0, 0.0, 2.0)


def test_missing_usage_is_counted_as_unmeasured_and_wall_clock_only_as_such() -> None:
    books = Accountant()
    books.feed("aa", 1.0, record("aa", "old"))
    books.feed("aa", 1.0, record("aa", "plain"))
    books.feed("aa", 1.0, record("aa", "never-ran", "failed"))  # no exit report: no run
    books.feed("aa", 2.0, exited("n1", "old", None))  # an agent older than usage reports
    books.feed("aa", 2.0, exited("n1", "plain", Usage(wall_seconds=3600)))  # no cgroup on its node
    books.feed(
        "aa", 2.0, JobEvent(node="n1", job="never-ran", attempt=1, kind="failed", reason="no such file")
    )
    report = books.report(until=3.0)
    assert figures(report.totals) == (2, 2, 0.0, 0.0, 0.0, 1.0)
    assert (report.totals.unmeasured, report.totals.wall_clock_only) == (1, 1)
    text = render(report)
    assert "CPU and memory were not measured for 1 of the runs" in text
    assert "1 of the runs reported no usage" in text


def test_only_runs_that_ended_in_the_window_count_and_older_records_still_say_whose() -> None:
    books = Accountant(since=100.0)
    books.feed("aa", 50.0, record("aa", "long", "running", tenant="acme"))  # before the window
    books.feed("aa", 60.0, exited("n1", "early", used(cpu=3600, wall=3600)))  # ended before it
    books.feed("aa", 150.0, exited("n1", "long", used(cpu=7200, wall=7200)))
    report = books.report(until=200.0)
    assert figures(report.totals) == (1, 1, 2.0, 0.0, 0.0, 2.0)
    assert list(rows(report, "tenant")) == ["acme"]
    assert report.since == 100.0


def test_a_run_whose_job_has_no_record_counts_under_unknown_and_in_no_balance() -> None:
    books = Accountant(by=("tenant", "origin"))
    books.feed("bb", 5.0, exited("n1", "orphan", used(cpu=3600, wall=3600)))
    report = books.report(until=6.0)
    assert list(rows(report, "tenant")) == [UNKNOWN]
    assert list(rows(report, "origin")) == [UNKNOWN]
    assert [(c.home, c.ran_in) for c in report.exchange] == [(UNKNOWN, "bb")]
    assert [(b.region, b.lent.runs, b.borrowed.runs) for b in report.balance] == [("bb", 0, 0)]


def test_an_at_least_once_job_that_ran_in_two_regions_is_one_job_with_a_run_in_each() -> None:
    books = Accountant()
    books.feed("aa", 1.0, record("aa", "twice"))
    books.feed("aa", 2.0, exited("aa-n1", "twice", used(cpu=36, wall=36)))
    books.feed("bb", 1.5, record("bb", "twice", origin="aa"))
    books.feed("bb", 2.5, exited("bb-n1", "twice", used(cpu=36, wall=36)))
    report = books.report(until=3.0)
    assert (report.totals.jobs, report.totals.runs) == (1, 2)
    assert {key: (row.jobs, row.runs) for key, row in rows(report, "region").items()} == {
        "aa": (1, 1),
        "bb": (1, 1),
    }


def test_the_json_shape_is_stable() -> None:
    books = Accountant(since=1.0)
    books.feed("aa", 1.0, record("aa", "j"))
    books.feed("aa", 2.0, exited("n1", "j", used(cpu=1, wall=2)))
    shape = json.loads(msgspec.json.encode(books.report(until=3.0, read=["fed-aa-audit"], unread=[])))
    assert list(shape) == ["since", "until", "read", "unread", "totals", "by", "exchange", "balance"]
    totals = [
        "jobs",
        "runs",
        "cpu_hours",
        "memory_gib_hours",
        "gpu_hours",
        "wall_hours",
        "wall_clock_only",
        "unmeasured",
    ]
    assert list(shape["totals"]) == totals
    assert list(shape["by"]) == ["tenant", "region"]
    assert list(shape["by"]["tenant"][0]) == [*totals, "key"]
    assert list(shape["exchange"][0]) == [*totals, "home", "ran_in"]
    assert list(shape["balance"][0]) == ["region", "lent", "borrowed"]
    assert (
        msgspec.json.decode(msgspec.json.encode(books.report(until=3.0)), type=UsageReport).totals.runs == 1
    )


def test_usage_is_grouped_only_by_known_dimensions() -> None:
    assert dimensions(["node", "tenant", "node"]) == ("node", "tenant")
    assert dimensions("origin") == ("origin",)
    assert dimensions([]) == ("tenant", "region")
    with pytest.raises(InvalidRequest, match="cannot be grouped by 'colour'"):
        dimensions(["colour"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400.0), ("12h", 43200.0), ("90m", 5400.0), ("1.5d", 129600.0), ("45s", 45.0)],
)
def test_the_window_takes_days_hours_and_minutes(text: str, seconds: float) -> None:
    assert window(text) == seconds


@pytest.mark.parametrize("text", ["30x", "d", "-1d", "thirty days", ""])
def test_a_window_that_is_not_a_duration_is_refused_with_examples(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"is not a duration: .*30d, 12h, 90m"):
        window(text)


def test_the_tables_are_aligned_and_name_the_exchange() -> None:
    books = Accountant()
    books.feed("aa", 1.0, record("aa", "j", tenant="a-rather-long-tenant-name"))
    books.feed("aa", 1.0, exited("aa-n1", "j", used(cpu=3600, memory=GiB, wall=3600)))
    books.feed("bb", 1.0, record("bb", "k", origin="aa"))
    books.feed("bb", 1.0, exited("bb-n1", "k", used(cpu=36, wall=36, gpu=36)))
    lines = render(books.report(until=2.0, read=["fed-aa-audit", "fed-bb-audit"])).splitlines()
    assert lines[0].startswith("compute used over the whole trail")
    assert "from fed-aa-audit, fed-bb-audit" in lines[0]
    table = lines[lines.index("") + 1 : lines.index("", lines.index("") + 1)]
    assert table[0].split() == ["TENANT", "JOBS", "RUNS", "CPU-H", "MEM-GiB-H", "GPU-H", "WALL-H"]
    assert len({len(line) for line in table}) == 1  # right-aligned figures: every line as wide
    assert table[-1].split()[:3] == ["total", "2", "2"]
    exchange = lines.index(next(line for line in lines if line.startswith("exchange:")))
    assert lines[exchange + 2].split()[:4] == ["aa", "aa", "1", "1"]
    assert lines[exchange + 3].split()[:5] == ["aa", "bb", "1", "1", "0.0100"]
