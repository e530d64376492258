"""The console's model and pages, without I/O: what a region's streams say becomes what a page shows."""

from __future__ import annotations

import pytest

from federation.console import pages
from federation.console.model import STALE_AFTER, Board, JobQuery
from federation.schemas import Allocation, JobRecord, Ledger, Offer, Submit, Summary, encode

NOW = 1_800_000_000.0


def record(job: str, region: str = "eu", state: str = "pending", **spec: object) -> JobRecord:
    submit = Submit(id=job, command=spec.pop("command", ["true"]), **spec)  # type: ignore[arg-type]
    return JobRecord(id=job, region=region, spec=submit, state=state, submitted_at=NOW - 10)  # type: ignore[arg-type]


def summary(region: str, at: float) -> bytes:
    return encode(Summary(region=region, at=at))


def test_a_region_is_built_from_what_its_streams_say() -> None:
    board = Board({"eu": "nats://eu"})
    eu = board.regions["eu"]
    eu.job("j1", encode(record("j1")), removed=False)
    eu.job("j2", encode(record("j2", state="running")), removed=False)
    eu.job("j1", b"", removed=True)
    eu.job("bad", b"not json", removed=False)
    assert set(eu.jobs) == {"j2"}
    assert eu.unreadable == 1

    offer = Offer(node="n1", region="eu", cores=[0, 1, 2, 3], memory=8, gpus=["g0"], expires_at=NOW + 30)
    eu.offer("n1", encode(offer), removed=False)
    eu.heartbeat("n1", removed=False)
    held = Allocation(job="j2", attempt=1, cpu=2, memory=4, cores=(1, 2), gpus=("g0",))
    eu.ledger("n1", encode(Ledger(node="n1", allocations=(held,))), removed=False)
    eu.heartbeat("n2", removed=True)  # a node whose heartbeat expired: its marker is its last word

    rows = {row.node: row for row in eu.nodes(NOW)}
    assert rows["n1"].state == "live"
    assert rows["n1"].cores == [(0, ""), (1, "j2"), (2, "j2"), (3, "")]
    assert rows["n1"].gpus == [("g0", "j2")]
    assert (rows["n1"].free_cpu, rows["n1"].memory_allocated) == (2, 4)
    assert rows["n2"].state == "LOST"
    assert eu.nodes(NOW + 60)[0].state == "EXPIRED"  # beating, but its offer ran out


def test_links_show_a_region_cut_off_only_when_summaries_stop_both_ways() -> None:
    board = Board({"eu": "", "us": "", "ap": ""})
    for region in board.regions.values():
        region.read_at = NOW
    fresh, stale = NOW - 1, NOW - STALE_AFTER - 1
    for name, region in board.regions.items():
        for peer in board.regions:
            if peer != name:
                region.viewed(peer, summary(peer, fresh))
    assert {link.state for link in board.links(NOW)} == {"linked"}
    board.regions["us"].viewed("ap", summary("eu", stale))  # ap speaking for eu: ignored
    assert board.regions["us"].views["eu"].at == fresh

    board.regions["us"].viewed("eu", summary("eu", stale))  # us no longer hears from anyone...
    board.regions["us"].viewed("ap", summary("ap", stale))
    board.regions["eu"].viewed("us", summary("us", stale))  # ...and nobody hears from us
    board.regions["ap"].viewed("us", summary("us", stale))
    links = {link.region: link for link in board.links(NOW)}
    assert links["us"].state == "cut off"
    assert links["eu"].state == links["ap"].state == "linked"  # they still hear each other

    board.regions["ap"].error = "connection refused"
    assert {link.region: link.state for link in board.links(NOW)}["ap"] == "unreachable"


def test_the_jobs_table_filters_searches_and_sorts() -> None:
    board = Board({"eu": "", "us": ""})
    jobs = [
        record("ja1", "eu", "running", tenant="acme"),
        record("ja2", "eu", "failed", tenant="acme", priority="high"),
        record("jb1", "us", "running", tenant="bob"),
    ]
    for job in jobs:
        board.regions[job.region].jobs[job.id] = job
    rows, matched = JobQuery(state="running").select(board.all_jobs())
    assert {r.id for r in rows} == {"ja1", "jb1"}
    assert matched == 2
    assert [
        r.id for r in JobQuery(tenant="acme", sort="id", descending=False).select(board.all_jobs())[0]
    ] == [
        "ja1",
        "ja2",
    ]
    assert [r.id for r in JobQuery(q="jb").select(board.all_jobs())[0]] == ["jb1"]
    assert JobQuery(sort="priority").select(board.all_jobs())[0][0].id == "ja2"
    assert JobQuery(sort="nonsense").select(board.all_jobs())[1] == 3  # an unknown column sorts by age


def test_a_job_handed_over_is_listed_once_where_it_lives() -> None:
    board = Board({"eu": "", "us": ""})
    home = record("j1", "eu", "forwarded")
    home = JobRecord(**{**{f: getattr(home, f) for f in home.__struct_fields__}, "forwarded_to": "us"})
    there = record("j1", "us", "running", origin="eu")
    board.regions["eu"].jobs["j1"], board.regions["us"].jobs["j1"] = home, there
    assert [r.region for r in board.all_jobs()] == ["us"]
    found, via = board.find("j1")
    assert found is there
    assert via is home


@pytest.mark.parametrize("hostile", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
def test_what_a_tenant_wrote_is_shown_as_text(hostile: str) -> None:
    board = Board({"eu": ""})
    board.regions["eu"].read_at = NOW
    board.regions["eu"].jobs["j1"] = record("j1", command=["echo", hostile], tenant="acme")
    html = pages.jobs_live(board, JobQuery(), NOW) + pages.job_live(board, "j1", NOW, False, "t")
    assert hostile not in html
    assert "&lt;" in html
    assert pages.job_live(board, "nope", NOW, False, "t").startswith('<p class="warn">')


def test_a_job_page_names_its_array_and_what_it_waits_for() -> None:
    from federation.schemas import Dependency

    board = Board({"eu": ""})
    board.regions["eu"].read_at = NOW
    board.regions["eu"].jobs["a1-3"] = record(
        "a1-3",
        array="a1",
        array_index=3,
        array_limit=10,
        after=[Dependency(job="prep", when="any", region="us")],
    )
    html = pages.job_live(board, "a1-3", NOW, False, "t")
    assert '<a href="/jobs?q=a1-" class="mono">a1</a> index 3, at most 10 at once' in html
    assert '<a href="/jobs/prep" class="mono">prep</a> (any, in us)' in html


def test_an_array_ids_page_counts_its_jobs_by_state() -> None:
    board = Board({"eu": ""})
    board.regions["eu"].read_at = NOW
    for i, state in enumerate(["running", "pending", "pending"]):
        board.regions["eu"].jobs[f"x-{i}"] = record(
            f"x-{i}", state=state, array="x", array_index=i, array_limit=1
        )
    html = pages.job_live(board, "x", NOW, False, "t")
    assert "job array of 3 jobs, at most 1 at once" in html
    assert '<a href="/jobs?q=x-">its jobs</a>' in html
    assert 's-pending">pending</span></td><td>2</td>' in html


def test_a_job_page_lists_its_input_files_and_the_outputs_it_stored() -> None:
    import msgspec

    from federation.schemas import ObjectRef

    digest = "SHA-256=" + "A" * 43 + "="
    board = Board({"eu": ""})
    board.regions["eu"].read_at = NOW
    job = record(
        "d1",
        state="succeeded",
        inputs=[ObjectRef(name="data.csv", object="in.acme.k1", size=2048, digest=digest)],
        outputs=["*.txt"],
        origin="us",
        tenant="acme",
    )
    stored = (ObjectRef(name="result.txt", object="out.n1.k2", size=10, digest=digest),)
    board.regions["eu"].jobs["d1"] = msgspec.structs.replace(job, stored=stored)
    html = pages.job_live(board, "d1", NOW, False, "t")
    assert '<span class="mono">data.csv</span> (2KiB) from us\'s object store' in html
    assert '<span class="mono">*.txt</span>: stored <span class="mono">result.txt</span> (10B)' in html
