"""Cross-region views through real leafnode links and a real link proxy (issue #4, parts 1 and 4)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from federation import subjects
from federation.bus import Bus
from federation.bus.layout import StreamSpec
from federation.client import Client
from federation.ops.provision import provision
from federation.schemas import Summary, decode_summaries, encode
from tests.conftest import eventually, run_fed
from tests.harness import pause, resume

pytestmark = pytest.mark.timeout(180)


async def test_views_go_stale_in_a_partition_and_converge_within_5s_of_the_heal(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1, chaos=True)
    async with Client.connect(connection=cluster.connection) as fed:

        async def fresh(region: str, peer: str, within: float = 4.0) -> bool:
            view = (await fed.views(region)).get(peer)
            return view is not None and time.time() - view.at < within

        async def stale(region: str, peer: str) -> bool:
            return not await fresh(region, peer, within=8.0)

        await eventually(lambda: fresh("aa", "bb"), timeout=30)
        await eventually(lambda: fresh("bb", "aa"), timeout=30)

        cluster.federation.links["bb"].cut()  # bb loses the hub, and with it every other region
        # each side keeps scheduling its own nodes
        for region in ("aa", "bb"):
            job = await fed.submit(["true"], region=region, job_id=f"during-{region}")
            assert (await job.wait(timeout=30)).state == "succeeded"
        # and each side's view of the other ages: stale, with its age
        await eventually(lambda: stale("aa", "bb"), timeout=30)
        await eventually(lambda: stale("bb", "aa"), timeout=30)

        cluster.federation.links["bb"].heal()
        healed = time.monotonic()
        await eventually(lambda: fresh("aa", "bb", within=3.0), timeout=30, interval=0.1)
        await eventually(lambda: fresh("bb", "aa", within=3.0), timeout=30, interval=0.1)
        took = time.monotonic() - healed
        assert took < 5.0, f"views took {took:.1f}s to converge after the heal"


async def test_fed_chaos_partitions_heals_and_reports_the_links(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=0, chaos=True)

    async def fed(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_fed, cluster.tmp, "chaos", *args)

    out = await fed("partition", "bb", "--for", "3s")
    assert out.returncode == 0, out.stderr
    assert "bb               PARTITIONED (cut)" in out.stdout
    assert cluster.federation.links["bb"].mode == "cut"
    status = json.loads((await fed("status", "--json")).stdout)
    assert status["links"] == {"aa": "open", "bb": "cut"}
    await eventually(lambda: cluster.federation.links["bb"].mode == "open", timeout=10)  # --for 3s
    assert (await fed("partition", "aa", "--mode", "blackhole")).returncode == 0
    assert cluster.federation.links["aa"].mode == "blackhole"
    healed = await fed("heal")
    assert "aa               linked" in healed.stdout
    assert cluster.federation.links["aa"].mode == "open"
    bad = await fed("partition", "zz")
    assert bad.returncode != 0
    assert "no such region 'zz'" in bad.stderr


async def test_with_the_hub_frozen_every_region_keeps_scheduling_its_own_nodes(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    hub = cluster.federation.servers["hub"]
    async with Client.connect(connection=cluster.connection) as fed:
        pause(hub.pid)  # the hub hangs: every leafnode link stalls, like every region partitioned
        try:
            for region in ("aa", "bb"):
                job = await fed.submit(["true"], region=region, job_id=f"hubless-{region}")
                assert (await job.wait(timeout=30)).state == "succeeded"
        finally:
            resume(hub.pid)


async def test_a_views_stream_of_the_older_layout_is_changed_to_capture_every_view(make_cluster) -> None:
    """Older versions sourced each peer's summary stream into the views stream; provisioning the
    region again drops the sources and captures the broadcast views instead (on the hub's domain
    here: a region's own server already has a views stream capturing them)."""
    cluster = await make_cluster(regions=("aa",), agents=0)
    bus = await Bus.connect(cluster.connection.hub_url, "test-views", retry_forever=False)
    try:
        views = subjects.views_stream("old")
        older = StreamSpec(
            name=views,
            sources=((subjects.summary_stream("aa"), "aa"),),
            max_msgs_per_subject=1,
            allow_direct=True,
        )
        await bus.ensure_stream(older)
        facts = await bus.stream_facts(views)
        assert facts is not None
        assert facts.sources == (subjects.summary_stream("aa"),)
        await provision(bus, "old")
        facts = await bus.stream_facts(views)
        assert facts is not None
        assert facts.sources == ()
        summary = Summary(region="zz", at=time.time(), nodes=3)
        await bus.publish(subjects.view("zz"), encode(summary))
        # a region may publish only its own subjects: one speaking for another is not believed
        await bus.publish(subjects.view("xx"), encode(Summary(region="yy", at=time.time(), nodes=9)))

        async def captured() -> object:
            latest = await bus.latest(views, subjects.view("*"))
            return decode_summaries((i.subject, i.data) for i in latest.values()).get("zz")

        assert await eventually(captured, timeout=10) == summary
        latest = await bus.latest(views, subjects.view("*"))
        assert subjects.view("xx") in latest  # stored, as the broadcast it claims to be...
        assert "yy" not in decode_summaries((i.subject, i.data) for i in latest.values())
    finally:
        await bus.close()
