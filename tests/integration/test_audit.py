"""The audit trail against real servers: a mixed workload checks clean on every region and on the
hub, a forged overcommit fails the check by name, a copy with a message missing shows the gap of
the right kind, and a region cut off from the hub replays its own trail (issue #6); the JSON
lines stay JSON whatever bytes were stored, and the replay shows every region by default without
the core-input journal (issue #16)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from federation import subjects
from federation.audit.check import Checker
from federation.audit.trail import parse
from federation.audit.verify import Divergence
from federation.bus import Bus
from federation.bus.delivery import Delivery
from federation.client import Client
from federation.core.events import Submitted, Tick
from federation.errors import NotFound
from federation.inputs import Inputs
from federation.schemas import Allocation, Capacity, Ledger, Submit, encode
from tests.conftest import GiB, eventually, run_fed

pytestmark = pytest.mark.timeout(240)


async def finished(fed: Client, job: str, region: str) -> bool:
    try:
        return (await fed.where(job, region=region)).terminal
    except NotFound:
        return False


async def test_a_mixed_workload_checks_clean_on_every_region_and_on_the_hub(make_cluster) -> None:
    cluster = await make_cluster(
        regions=("aa", "bb"), agents=1, capacity={"cpu": 2, "memory": 8 * GiB, "gpu": 0}
    )
    gpu = await cluster.start_agent("bb", "bb-gpu", "--gpu-id", "GPU-1")
    doomed = await cluster.start_agent("aa", "aa-doomed")
    async with Client.connect(connection=cluster.connection) as fed:
        jobs = {}
        for i in range(6):
            jobs[f"ok-{i}"] = (
                await fed.submit(["true"], region="aa" if i % 2 else "bb", job_id=f"ok-{i}")
            ).region
        jobs["fails"] = (await fed.submit(["sh", "-c", "exit 2"], region="aa", job_id="fails")).region
        slow = await fed.submit(["sleep", "60"], region="aa", job_id="cancelled")
        jobs["cancelled"] = slow.region

        async def running(job: str, region: str) -> bool:
            try:
                return (await fed.job(job, region=region)).state == "running"
            except NotFound:
                return False

        await eventually(lambda: running("cancelled", "aa"), timeout=30)
        await slow.cancel()
        # preemption: an urgent job pushes a low one off a full node
        for i in range(2):
            await fed.submit(
                ["sleep", "60"],
                region="bb",
                cpu=2,
                priority="low",
                job_id=f"low-{i}",
                require={"node": "bb-n1"},
            )
            jobs[f"low-{i}"] = "bb"
        await eventually(lambda: running("low-0", "bb"), timeout=30)
        await fed.submit(
            ["true"], region="bb", cpu=2, priority="urgent", job_id="urgent", require={"node": "bb-n1"}
        )
        jobs["urgent"] = "bb"
        # a hand-off: no GPU in aa
        await eventually(lambda: _gpu_visible(fed), timeout=30)
        jobs["gpu"] = (await fed.submit(["true"], region="aa", gpu=1, job_id="gpu")).region
        # a node loss
        await fed.submit(
            ["sleep", "60"], region="aa", job_id="lost", nodes=["aa-doomed"], require={"node": "aa-doomed"}
        )
        jobs["lost"] = "aa"
        await eventually(lambda: running("lost", "aa"), timeout=30)
        assert doomed.process is not None
        os.kill(doomed.process.pid, signal.SIGKILL)
        doomed.process.wait()
        for job in ("low-0", "low-1"):
            await fed.cancel(job, region="bb")
        for job, region in jobs.items():
            await eventually(lambda job=job, region=region: finished(fed, job, region), timeout=60)
        assert (await fed.where("gpu", region="aa")).region == "bb"
        assert (await fed.job("lost", region="aa")).state == "lost"
        preempted = await fed.job("low-0", region="bb")
        assert any(step.state == "preempted" for step in preempted.history), preempted.history
        assert gpu.alive()

        # bad input: quarantined by the scheduler, evidence in the audit, not a violation
        bus = await fed.bus("aa")
        await bus.publish(subjects.submit("aa", "garbled"), b"{not json")
        await bus.publish(subjects.submit("aa", "mismatch"), encode(Submit(id="other", command=["true"])))

        async def both_refused() -> bool:
            return len(await fed.quarantined(region="aa")) >= 2

        await eventually(both_refused, timeout=30)
        for region in ("aa", "bb"):
            report = await fed.audit_check(region=region)
            assert report.ok, (region, report)
            assert report.events > 20
        assert (await fed.audit_check(region="aa")).refused == 2

        # the hub's copy catches up with every region's trail
        async def hub_clean() -> bool:
            report = await fed.audit_check(everywhere=True)
            return report.ok and report.events > 40

        await eventually(hub_clean, timeout=30, interval=0.5)
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "check", "--all")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "ok: every invariant holds" in shown.stdout
        # the core, re-run on what it was fed, decides the same, in every region and from the hub
        for region in ("aa", "bb"):
            verified = await fed.audit_verify(region=region)
            assert verified.ok, (region, verified)
            assert verified.steps > 20
            assert verified.lives == 1

        async def hub_verified() -> bool:
            return (await fed.audit_verify(everywhere=True)).ok

        await eventually(hub_verified, timeout=30, interval=0.5)
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "verify", "--all")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "ok: the core makes the same decisions" in shown.stdout
        timeline = await asyncio.to_thread(
            run_fed, cluster.tmp, "audit", "replay", "--region", "aa", "--job", "lost"
        )
        assert " lost " in timeline.stdout, timeline.stdout


async def _gpu_visible(fed: Client) -> bool:
    view = (await fed.views("aa")).get("bb")
    return view is not None and view.gpu_free >= 1


async def test_a_forged_overcommit_fails_the_check_and_is_named(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa",), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        await (await fed.submit(["true"], region="aa", job_id="honest")).wait(timeout=30)
        assert (await fed.audit_check(region="aa")).ok
        # --since: the server starts the replay at the first event stored then
        since = time.time()
        await (await fed.submit(["true"], region="aa", job_id="later")).wait(timeout=30)
        recent = [e async for e in fed.audit(region="aa", since=since)]
        submitted = {e.job for e in recent if e.kind == "submit"}
        assert submitted == {"later"}
        assert all(e.at >= since for e in recent)
        bus = await fed.bus("aa")
        stored = [
            d
            async for d in bus.follow(
                subjects.audit_stream("aa"), ">", start_time=since, until_caught_up=True
            )
        ]
        assert stored
        assert min(d.timestamp for d in stored) >= since  # the server skipped the earlier ones
        forged = Ledger(
            node="forged-n9",
            allocations=tuple(Allocation(job=f"f{i}", attempt=1, cpu=3, cores=(i,)) for i in range(2)),
            capacity=Capacity(cpu=4, memory=GiB, gpu=0),
        )
        await bus.cas(subjects.ledger_bucket("aa"), "forged-n9", encode(forged), 0)

        async def failing() -> list[str]:
            report = await fed.audit_check(region="aa")
            return [v.message for v in report.violations if v.invariant == "I1"]

        messages = await eventually(failing, timeout=20)
        assert "forged-n9" in messages[0]
        assert "cpu=6" in messages[0]
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "check", "--region", "aa")
        assert shown.returncode == 1
        assert "FAIL I1: forged-n9" in shown.stdout

        # a forged journal: the recorded decision is not what the core decides
        assert (await fed.audit_verify(region="aa")).ok
        spec = Submit(id="ghost", command=["true"])
        forged_inputs = Inputs(
            region="aa",
            life="forger#1",
            step=0,
            epoch=1,
            fresh=True,
            events=[Submitted(spec=spec, at=1.0), Tick(now=2.0)],
            digests=["", "0123456789abcdef"],
        )
        await bus.publish(subjects.inputs("aa"), encode(forged_inputs))

        async def diverged() -> list[Divergence]:
            return (await fed.audit_verify(region="aa")).divergences

        (divergence,) = await eventually(diverged, timeout=20)
        assert divergence.life == "aa/forger#1"
        assert divergence.step == 1
        assert divergence.recorded == "0123456789abcdef"
        assert '"type":"Tick"' in divergence.event
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "verify", "--region", "aa")
        assert shown.returncode == 1
        assert "FAIL aa/forger#1 step 1" in shown.stdout


async def test_a_copy_missing_a_message_shows_the_gap_of_the_right_kind(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa",), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        for i in range(3):
            await (await fed.submit(["true"], region="aa", job_id=f"j{i}")).wait(timeout=30)
        bus = await fed.bus("aa")
        original = [d async for d in bus.follow(subjects.audit_stream("aa"), ">", until_caught_up=True)]
        # the copy: every message but one in the middle of the workloads origin, and none after
        # the last status report (a lost postfix of the status origin)
        workloads = [d for d in original if _origin(d) == subjects.workloads_stream("aa")]
        dropped = workloads[1]
        status = [d for d in original if _origin(d) == subjects.status_stream("aa")]
        cut_after = status[-2].sequence
        kept = [
            d
            for d in original
            if d is not dropped and (_origin(d) != subjects.status_stream("aa") or d.sequence <= cut_after)
        ]
        await bus.js.add_stream(name="COPY", subjects=["copy.>"])
        for delivery in kept:
            await bus.js.publish("copy." + delivery.subject, delivery.data, headers=_kept_headers(delivery))
        checker = Checker()
        async for delivery in _copy(bus):
            checker.feed(*parse(delivery))
        last = {subjects.status_stream("aa"): _seq(status[-1])}
        report = checker.finish(origins_last=last)
        gaps = {(g.origin, g.kind, g.first, g.last) for g in report.gaps}
        middle = _seq(dropped)
        assert (subjects.workloads_stream("aa"), "middle", middle, middle) in gaps
        assert (subjects.status_stream("aa"), "postfix", _seq(status[-1]), _seq(status[-1])) in gaps
        assert len(gaps) == 2
        assert not report.ok


def _origin(delivery: Delivery) -> str:
    return delivery.headers.get("Nats-Stream-Source", "").split(" ")[0]


def _seq(delivery: Delivery) -> int:
    return int(delivery.headers["Nats-Stream-Source"].split(" ")[1])


def _kept_headers(delivery: Delivery) -> dict[str, str]:
    # the origin as a header of our own: the server treats Nats-* headers as its own
    return {"X-Source": delivery.headers.get("Nats-Stream-Source", "-")}


async def _copy(bus: Bus) -> AsyncIterator[Delivery]:
    async for delivery in bus.follow("COPY", "copy.>", until_caught_up=True):
        source = delivery.headers["X-Source"]
        headers = {"Nats-Stream-Source": source} if source != "-" else {}
        yield dataclasses.replace(delivery, subject=delivery.subject[5:], headers=headers)


async def test_a_region_cut_off_from_the_hub_replays_and_checks_its_own_trail(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1, chaos=True)
    async with Client.connect(connection=cluster.connection) as fed:
        cluster.federation.links["bb"].cut()
        await (await fed.submit(["true"], region="bb", job_id="alone")).wait(timeout=30)
        events = [e async for e in fed.audit(region="bb", job="alone")]
        # a job over within the agent's start-report wait is stored placed -> succeeded, its one
        # report carrying the start; its history still has it running
        states = [e.state for e in events if e.kind == "record"]
        assert states in (["placed", "running", "succeeded"], ["placed", "succeeded"]), states
        assert [step.state for step in (await fed.job("alone")).history][-3:] == [
            "placed",
            "running",
            "succeeded",
        ]
        report = await fed.audit_check(region="bb")
        assert report.ok, report
        shown = await asyncio.to_thread(
            run_fed, cluster.tmp, "audit", "replay", "--region", "bb", "--format", "jsonl"
        )
        assert shown.returncode == 0
        lines = [msgspec.json.decode(line) for line in shown.stdout.splitlines()]
        assert any(line["job"] == "alone" and line["state"] == "succeeded" for line in lines)


def _json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON: no line may be anything else, and no line break of any kind
    (``str.splitlines`` breaks at more than newlines) may fall inside one."""
    assert text.endswith("\n"), text[-200:]
    lines = text[:-1].split("\n")
    assert text.splitlines() == lines
    return [json.loads(line) for line in lines]


async def test_replay_as_json_lines_stays_json_whatever_bytes_a_tenant_published(make_cluster) -> None:
    cluster = await make_cluster(regions=("aa",), agents=1)
    async with Client.connect(connection=cluster.connection) as fed:
        await (await fed.submit(["true"], region="aa", job_id="before")).wait(timeout=30)
        bus = await fed.bus("aa")
        garbage = b"\x80\x81\xfe\xff"
        await bus.publish(subjects.submit("aa", "garbage"), garbage)
        await bus.publish(subjects.submit("aa", "garbled"), b"{not json")
        # a valid submission (msgspec skips the unknown field unchecked) whose command would
        # forge a line and clear the auditor's screen if printed as it is
        sneaky = encode(Submit(id="sneaky", command=["echo", "a\nFORGED\x1b[2J"]))[:-1] + b',"x":"\xff"}'
        await bus.publish(subjects.submit("aa", "sneaky"), sneaky)
        await (await fed.submit(["true"], region="aa", job_id="after")).wait(timeout=30)

        async def audited(everywhere: bool = False) -> bool:
            found = fed.audit(region="aa", everywhere=everywhere, job="after")
            return any([e.state == "succeeded" async for e in found])

        await eventually(audited, timeout=30)
        await eventually(lambda: audited(everywhere=True), timeout=60, interval=0.5)

    for scope in (["--region", "aa"], [], ["--all"]):
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "replay", *scope, "--format", "jsonl")
        assert shown.returncode == 0, (scope, shown.stderr)
        events = {e["subject"]: e for e in _json_lines(shown.stdout)}
        bad = events[subjects.submit("aa", "garbage")]
        assert bad["kind"] == "unreadable"
        assert bad["value"] is None
        assert base64.b64decode(bad["value_base64"]) == garbage
        assert bad["value_invalid"].startswith("not UTF-8"), bad
        garbled = events[subjects.submit("aa", "garbled")]
        assert base64.b64decode(garbled["value_base64"]) == b"{not json"
        assert garbled["value_invalid"].startswith("not JSON"), garbled
        hidden = events[subjects.submit("aa", "sneaky")]
        assert (hidden["kind"], hidden["job"], hidden["value"]) == ("submit", "sneaky", None)
        assert base64.b64decode(hidden["value_base64"]) == sneaky
        readable = events[subjects.submit("aa", "after")]
        assert isinstance(readable["value"], dict)
        assert (readable["value"]["type"], readable["value"]["id"]) == ("submit", "after")
        assert readable["value_invalid"] == readable["value_base64"] == ""
        later = [e for e in events.values() if e["job"] == "after" and e["kind"] == "record"]
        assert later, scope
        assert all(e["seq"] > bad["seq"] for e in later)

    table = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "replay", "--region", "aa")
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout
    forged = [row for row in table.stdout.splitlines() if "FORGED" in row]
    assert forged
    assert all("sneaky" in row and "echo a\\nFORGED\\x1b[2J" in row for row in forged), forged
    assert any(" after " in row and " succeeded " in row for row in table.stdout.splitlines())


async def test_replay_shows_every_region_merged_by_time_and_hides_the_core_input_journal(
    make_cluster,
) -> None:
    cluster = await make_cluster(
        regions=("aa", "bb"), agents=1, capacity={"cpu": 2, "memory": 8 * GiB, "gpu": 0}
    )
    await cluster.start_agent("bb", "bb-gpu", "--gpu-id", "GPU-1")
    async with Client.connect(connection=cluster.connection) as fed:
        await eventually(lambda: _gpu_visible(fed), timeout=30)
        await fed.submit(["true"], region="aa", gpu=1, job_id="handed")  # no GPU in aa
        await eventually(lambda: finished(fed, "handed", "aa"), timeout=60)
        assert (await fed.where("handed", region="aa")).region == "bb"

        async def audited() -> bool:
            found = fed.audit(region="bb", job="handed")
            return any([e.state == "succeeded" async for e in found])

        await eventually(audited, timeout=30)

    # both halves of the hand-off, in one timeline ordered by when each region stored them
    shown = await asyncio.to_thread(
        run_fed, cluster.tmp, "audit", "replay", "--job", "handed", "--format", "jsonl"
    )
    assert shown.returncode == 0, shown.stderr
    events = _json_lines(shown.stdout)
    states = {(e["region"], e["state"]) for e in events if e["kind"] == "record"}
    assert ("aa", "forwarded") in states, states
    assert ("bb", "succeeded") in states, states
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps)
    one = await asyncio.to_thread(
        run_fed, cluster.tmp, "audit", "replay", "--region", "aa", "--job", "handed", "--format", "jsonl"
    )
    assert {e["region"] for e in _json_lines(one.stdout)} == {"aa"}

    # the table: no "N bytes of core inputs" lines unless asked for, a count of them instead
    table = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "replay")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()
    assert not [row for row in rows if "bytes of core inputs" in row]
    counted = re.fullmatch(r"\((\d+) core-input journal messages hidden; --inputs shows them\)", rows[-1])
    assert counted, rows[-1]
    assert int(counted.group(1)) > 0
    assert {row.split()[2] for row in rows[:-1]} == {"aa", "bb"}
    full = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "replay", "--inputs")
    shown_inputs = [row for row in full.stdout.splitlines() if "bytes of core inputs" in row]
    assert len(shown_inputs) >= int(counted.group(1))
    refused = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "replay", "--from-seq", "5")
    assert refused.returncode == 2
    assert "--from-seq needs --region or --all" in refused.stderr

    # check and verify cover every region by default too
    checked = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "events of region aa" in checked.stdout
    assert "events of region bb" in checked.stdout
    verified = await asyncio.to_thread(run_fed, cluster.tmp, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "core lives of region aa" in verified.stdout
    assert "core lives of region bb" in verified.stdout
    for action in ("check", "verify"):  # the same as one JSON document
        shown = await asyncio.to_thread(run_fed, cluster.tmp, "audit", action, "--json")
        assert shown.returncode == 0, shown.stdout + shown.stderr
        document = json.loads(shown.stdout)
        assert document["ok"] is True
        assert [s["scope"] for s in document["scopes"]] == ["region aa", "region bb"]
        assert all(s["ok"] and s["report"] for s in document["scopes"])


async def test_a_new_leader_journals_a_long_queue_s_recovery_in_parts_and_it_verifies(make_cluster) -> None:
    """A recovery snapshot larger than one journal message (8,000 pending jobs: several MB) goes in
    parts, and ``fed audit verify`` joins them and re-runs that life whole."""
    cluster = await make_cluster(agents=0, schedulers=2)
    old, epoch = await cluster.leader("eu")
    jobs = 8000
    async with Client.connect(connection=cluster.connection) as fed:
        for start in range(0, jobs, 500):
            await asyncio.gather(*(fed.submit(["true"], job_id=f"q-{i}") for i in range(start, start + 500)))

        async def all_pending() -> bool:
            return len(await fed.jobs(region="eu", state="pending")) == jobs

        await eventually(all_pending, timeout=120, interval=1.0)
        os.kill(old.pid, signal.SIGKILL)
        _, new_epoch = await cluster.leader("eu", after=epoch)
        bus = await Bus.connect(cluster.url("eu"), "test-parts", retry_forever=False)
        try:

            async def the_recovery_in_parts() -> list[Inputs]:
                stream, inputs = subjects.audit_stream("eu"), subjects.inputs("eu")
                messages = [
                    msgspec.json.decode(item.data, type=Inputs)
                    async for item in bus.follow(stream, inputs, until_caught_up=True)
                ]
                parts = [m for m in messages if m.parts and m.epoch == new_epoch]
                return parts if parts and parts[-1].part == parts[-1].parts else []

            parts = await eventually(the_recovery_in_parts, timeout=60, interval=1.0)
        finally:
            await bus.close()
        assert len(parts) >= 2
        assert parts[0].fresh
        assert [m.part for m in parts] == list(range(1, len(parts) + 1))
        verified = await fed.audit_verify(region="eu")
        assert verified.ok, (verified.unverifiable, verified.divergences[:1])
        assert verified.lives >= 2  # the first leader's life and the new one's, each re-run whole
