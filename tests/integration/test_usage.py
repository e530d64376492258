"""``fed usage`` against real servers, schedulers and agents (issue 18, part 4): after a job spills
from its home region to another, the exchange shows the home region borrowing from the region
that ran it, with the figures its agent measured, from every region's own trail and from the
hub's; the Python API and ``fed usage --json`` agree; a tenant is refused at once."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from federation.audit.usage import Cell, Totals, UsageReport
from federation.client import Client
from federation.errors import NotPermitted
from federation.identity import load_credentials
from federation.schemas import JobRecord
from tests.conftest import eventually, run_fed

pytestmark = pytest.mark.timeout(240)

MiB = 1024**2
HOUR = 3600.0
GiB = 1024**3
SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"


async def gpu_seen(fed: Client, region: str, peer: str) -> bool:
    """Whether ``region`` has a recent view of ``peer`` with a free GPU (so a GPU job spills there)."""
    view = (await fed.views(region)).get(peer)
    return view is not None and time.time() - view.at < 4.0 and view.gpu_free >= 1


def cells(report: UsageReport) -> dict[tuple[str, str], Cell]:
    return {(cell.home, cell.ran_in): cell for cell in report.exchange}


def assert_measured(totals: Totals, record: JobRecord) -> None:
    """``totals`` hold exactly the one run of ``record``, in hours, as its agent measured it."""
    usage = record.usage
    assert usage is not None, record
    assert (totals.jobs, totals.runs, totals.unmeasured) == (1, 1, 0)
    assert totals.wall_hours == pytest.approx(usage.wall_seconds / HOUR)
    assert totals.wall_hours > 0
    assert totals.cpu_hours == pytest.approx(usage.cpu_seconds / HOUR)
    assert totals.gpu_hours == pytest.approx(usage.gpu_seconds / HOUR)
    assert totals.memory_gib_hours == pytest.approx(usage.peak_memory_bytes / GiB * usage.wall_seconds / HOUR)
    if usage.measured_by == "cgroup":
        assert totals.cpu_hours > 0
    else:  # a node without a writable cgroup hierarchy measures the wall time only, and says so
        assert totals.wall_clock_only == 1


async def test_fed_usage_shows_the_home_region_borrowing_from_the_region_a_job_spilled_to(
    make_cluster,
) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    await cluster.start_agent("bb", "bb-gpu", "--gpu-id", "GPU-7")
    async with Client.connect(connection=cluster.connection) as fed:
        local = await fed.submit(
            ["python3", "-c", SPIN], region="aa", memory=256 * MiB, tenant="locals", job_id="at-home"
        )
        await eventually(lambda: gpu_seen(fed, "aa", "bb"), timeout=30)
        spilled = await fed.submit(
            ["python3", "-c", SPIN], region="aa", gpu=1, memory=256 * MiB, tenant="acme", job_id="spilled"
        )
        ran = await spilled.wait(timeout=60)  # followed into the region that ran it
        assert (ran.state, ran.region, ran.node, ran.spec.origin) == ("succeeded", "bb", "bb-gpu", "aa")
        assert (await fed.job("spilled", region="aa")).state == "forwarded"
        home = await local.wait(timeout=60)
        assert (home.state, home.region) == ("succeeded", "aa"), home

        async def both_counted(**scope: bool) -> UsageReport | None:
            report = await fed.usage(by=("tenant", "region", "origin", "node"), **scope)
            return report if {("aa", "aa"), ("aa", "bb")} <= set(cells(report)) else None

        report = await eventually(both_counted, timeout=30)  # the trail copies what was written
        assert report.read == ["fed-aa-audit", "fed-bb-audit"]
        assert report.unread == []
        exchange = cells(report)
        assert set(exchange) == {("aa", "aa"), ("aa", "bb")}
        assert_measured(exchange[("aa", "bb")], ran)  # aa borrowed from bb what the job used there
        assert_measured(exchange[("aa", "aa")], home)  # the forwarded record added nothing at home
        balance = {entry.region: entry for entry in report.balance}
        assert_measured(balance["aa"].borrowed, ran)
        assert_measured(balance["bb"].lent, ran)
        assert (balance["aa"].lent.runs, balance["bb"].borrowed.runs) == (0, 0)
        by = {dimension: {row.key: row for row in rows} for dimension, rows in report.by.items()}
        assert_measured(by["tenant"]["acme"], ran)
        assert_measured(by["tenant"]["locals"], home)
        assert set(by["region"]) == {"aa", "bb"}
        assert_measured(by["region"]["bb"], ran)
        assert set(by["origin"]) == {"aa"}
        assert (by["origin"]["aa"].jobs, by["origin"]["aa"].runs) == (2, 2)
        assert set(by["node"]) == {"aa/aa-n1", "bb/bb-gpu"}
        assert (report.totals.jobs, report.totals.runs) == (2, 2)

        # one region's trail holds what ran there: bb lent, and nothing of aa's own
        mine = await fed.usage(region="bb")
        assert set(cells(mine)) == {("aa", "bb")}
        assert_measured(cells(mine)[("aa", "bb")], ran)
        # the hub's AUDIT_ALL, once it has copied both trails, says the same
        everywhere = await eventually(lambda: both_counted(everywhere=True), timeout=60, interval=0.5)
        assert everywhere.read == ["AUDIT_ALL"]
        assert cells(everywhere) == exchange

        # the CLI: the same report as JSON, and as tables
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "usage", "--since", "1h", "--json")
        assert shown.returncode == 0, shown.stderr
        as_json = json.loads(shown.stdout)
        assert as_json["read"] == ["fed-aa-audit", "fed-bb-audit"]
        assert list(as_json["by"]) == ["tenant", "region"]
        assert 0 < time.time() - as_json["since"] - HOUR < 120
        listed = {(c["home"], c["ran_in"]): c for c in as_json["exchange"]}
        assert listed[("aa", "bb")]["cpu_hours"] == pytest.approx(exchange[("aa", "bb")].cpu_hours)
        assert listed[("aa", "bb")]["wall_hours"] == pytest.approx(exchange[("aa", "bb")].wall_hours)
        assert listed[("aa", "bb")]["jobs"] == 1
        borrowed = {b["region"]: b["borrowed"]["gpu_hours"] for b in as_json["balance"]}
        assert ran.usage is not None
        assert borrowed["aa"] == pytest.approx(ran.usage.gpu_seconds / HOUR)
        assert borrowed["aa"] > 0  # one GPU claimed for the run's wall time
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "usage", "--by", "origin")
        assert shown.returncode == 0, shown.stderr
        lines = shown.stdout.splitlines()
        assert lines[0].startswith("compute used since ")
        assert any(line.split()[:4] == ["aa", "bb", "1", "1"] for line in lines), shown.stdout
        assert any(line.split()[:3] == ["aa", "2", "2"] for line in lines), shown.stdout  # HOME REGION

    # a tenant: refused at once, by the API and by the CLI
    creds = await cluster.federation.add_identity("tenant", "acme")
    assert creds is not None
    async with Client.connect(connection=cluster.connection, credentials=load_credentials(creds)) as tenant:
        with pytest.raises(NotPermitted, match="not permitted for a tenant"):
            await tenant.usage()
    shown = await asyncio.to_thread(run_fed, cluster.tmp, "usage", "--creds", str(creds))
    assert shown.returncode == 2
    assert "not permitted for a tenant" in shown.stderr
    shown = await asyncio.to_thread(run_fed, cluster.tmp, "usage", "--since", "soon")
    assert shown.returncode == 2
    assert "'soon' is not a duration" in shown.stderr
