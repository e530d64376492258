"""Prometheus metrics of real daemons: scraped over HTTP while real jobs run."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from federation.client import Client
from federation.ops.launcher import read_metrics
from federation.scheduler.metrics import reason_category
from federation.schemas import JobRecord, Submit
from tests.conftest import eventually, fed_up, run_fed

pytestmark = pytest.mark.timeout(240)


async def scrape(url: str) -> list[Sample]:
    """Every sample ``url`` serves (the exposition must parse)."""

    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


async def test_scheduler_and_agent_metrics_follow_real_jobs(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=2)
    urls = cluster.federation.metrics_urls
    assert read_metrics(cluster.tmp) == urls  # what fed up recorded
    assert set(urls) == {"fed-up", "scheduler-eu", "agent-eu-n1", "agent-eu-n2"}
    scheduler, agents = urls["scheduler-eu"], [urls["agent-eu-n1"], urls["agent-eu-n2"]]
    job_ids = [f"metrics-job-{i}" for i in range(20)]

    async with Client.connect(connection=cluster.connection) as fed:
        # a job that fits nowhere waits, counted by priority, tenant and reason category
        await fed.submit(["true"], cpu=64, priority="high", tenant="team-a", job_id="metrics-too-big")

        async def waiting() -> list[Sample] | None:
            samples = await scrape(scheduler)
            queued = total(samples, "fed_queue_depth", priority="high", tenant="team-a")
            return (
                samples if queued == 1 and total(samples, "fed_pending_jobs", reason="no_fit") == 1 else None
            )

        samples = await eventually(waiting, timeout=30, interval=0.2)
        assert total(samples, "fed_scheduler_leader") == 1
        assert total(samples, "fed_scheduler_epoch") > 0
        for node in ("eu-n1", "eu-n2"):
            assert total(samples, "fed_node_offered_cpu_cores", node=node) == 4
            assert total(samples, "fed_node_up", node=node) == 1
            assert total(samples, "fed_node_offered_memory_bytes", node=node) > 0
        await fed.cancel("metrics-too-big")

        for i, job in enumerate(job_ids):
            command = ["true"] if i % 4 else ["sh", "-c", "sleep 0.05; exit 3"]
            await fed.submit(command, job_id=job)

        async def all_terminal() -> bool:
            records = {r.id: r for r in await fed.jobs()}
            return all(job in records and records[job].terminal for job in job_ids)

        await eventually(all_terminal, timeout=120, interval=0.5)

    async def settled() -> list[Sample] | None:
        samples = await scrape(scheduler)
        done = (
            total(samples, "fed_jobs_finished_total", state="succeeded") == 15
            and total(samples, "fed_jobs_finished_total", state="failed") == 5
            and total(samples, "fed_jobs_finished_total", state="cancelled") == 1
            and total(samples, "fed_queue_depth") == 0
            and total(samples, "fed_node_allocated_cpu_cores") == 0
        )
        return samples if done else None

    samples = await eventually(settled, timeout=30, interval=0.2)
    assert total(samples, "fed_placements_total") == 20
    assert total(samples, "fed_placement_latency_seconds_count") == 20
    assert total(samples, "fed_start_latency_seconds_count") >= 5  # the jobs reported running
    assert total(samples, "fed_pending_jobs") == 0

    async def agents_settled() -> list[list[Sample]] | None:
        scraped = [await scrape(url) for url in agents]
        started = sum(total(s, "fed_agent_start_latency_seconds_count") for s in scraped)
        finished = sum(total(s, "fed_agent_attempts_finished_total") for s in scraped)
        return scraped if started == 20 and finished == 20 else None

    scraped = await eventually(agents_settled, timeout=30, interval=0.2)
    assert sum(total(s, "fed_agent_attempts_finished_total", outcome="succeeded") for s in scraped) == 15
    assert sum(total(s, "fed_agent_attempts_finished_total", outcome="failed") for s in scraped) == 5
    assert sum(total(s, "fed_agent_journal_commit_latency_seconds_count") for s in scraped) == 20
    assert sum(total(s, "fed_agent_running_attempts") for s in scraped) == 0
    assert sum(total(s, "fed_workload_wall_seconds_total") for s in scraped) > 0

    supervisor = await scrape(urls["fed-up"])
    assert total(supervisor, "fed_supervisor_child_up", child="scheduler-eu") == 1
    assert total(supervisor, "fed_supervisor_restarts_total") == 0

    # bounded labels: no job id anywhere
    for sample in [*samples, *supervisor, *(s for each in scraped for s in each)]:
        assert not any("metrics-" in value for value in sample.labels.values()), sample


async def test_fed_up_records_and_prints_every_daemons_metrics_url(tmp_path: Path) -> None:
    state = tmp_path / "fed"
    async with fed_up(state, "--regions", "eu", "--agents", "1", "--plain") as (up, _):
        urls = json.loads((state / "metrics.json").read_text())
        assert set(urls) == {"fed-up", "scheduler-eu", "agent-eu-n1"}
        for name, url in urls.items():
            assert url.startswith("http://127.0.0.1:")
            metric = {"fed-up": "fed_supervisor_child_up", "scheduler-eu": "fed_scheduler_leader"}.get(
                name, "fed_agent_running_attempts"
            )
            samples = await eventually(lambda url=url: scrape(url), timeout=20)
            assert any(s.name == metric for s in samples), (name, url)
        shown = await asyncio.to_thread(run_fed, state, "status", "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)[0]["metrics"] == urls  # the region's daemons, and fed up's
    assert not (state / "metrics.json").exists()
    assert f"metrics of every daemon: {state / 'metrics.json'}" in up.log_path.read_text()


def test_a_pending_reason_becomes_one_of_a_few_categories() -> None:
    spec = Submit(id="j", command=("true",))
    cases = {
        "": "queued",
        "pending: no node fits 64 cpu: too little cpu on 2 nodes (eu-n1, eu-n2)": "no_fit",
        "pending: waiting for capacity: 2 nodes can run it once room frees": "capacity",
        "pending: quota: tenant team-a would use 9 cpu of 8": "quota",
        "pending: gang of 4 starts all together; room for 2 now": "gang",
        "pending: fits nowhere here; offering it to us-east": "other_region",
        "pending: its previous attempt is being released": "releasing",
        "pending: something new": "other",
    }
    for reason, category in cases.items():
        record = JobRecord(id="j", region="eu", spec=spec, reason=reason)
        assert reason_category(record, now=10.0) == category, reason
    later = JobRecord(id="j", region="eu", spec=spec, reason="pending: quota", not_before=20.0)
    assert reason_category(later, now=10.0) == "backoff"
