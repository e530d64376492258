"""Data that follows the job (issue 20, part 4), against real servers, schedulers and agents: a
tenant's input uploaded at home is staged into a job that was handed to another region (read
across the hub, digest checked) and its outputs are fetched from home, by the API (the tenant's
and an operator's) and by ``fed get``; a
tenant reads only its own jobs' files, and a revoked tenant none; a missing or oversized input is
refused before anything is submitted; an input that cannot be staged fails its attempts with the
cause, by the retry policy, without a hang."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Awaitable
from pathlib import Path

import pytest

from federation import subjects
from federation.bus import objects
from federation.client import Client
from federation.errors import FederationError, InvalidRequest, NotFound
from federation.ops.keyring import Keyring
from federation.schemas import ObjectRef, Submit, encode
from tests.conftest import eventually, fed

pytestmark = pytest.mark.timeout(240)

KiB = 1024


async def gpu_seen(client: Client, region: str, peer: str) -> bool:
    """Whether ``region`` has a recent view of ``peer`` with a free GPU (so a GPU job spills there)."""
    view = (await client.views(region)).get(peer)
    return view is not None and time.time() - view.at < 4.0 and view.gpu_free >= 1


async def test_an_input_follows_a_job_handed_to_another_region_and_its_output_is_read_at_home(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    await cluster.start_agent("bb", "bb-gpu", "--gpu-id", "GPU-7")
    acme = await cluster.tenant("acme")
    data = os.urandom(300 * KiB + 17)  # three chunks and a bit
    source = tmp_path / "train.bin"
    source.write_bytes(data)
    async with (
        Client.connect(connection=cluster.connection) as operator,
        Client.connect(connection=cluster.connection, credentials=acme) as client,
    ):
        await eventually(lambda: gpu_seen(operator, "aa", "bb"), timeout=30)
        job = await client.submit(
            [
                "sh",
                "-c",
                "sha256sum data.bin > sum.txt && cp data.bin copy.bin && ln -s /etc/passwd leak.bin",
            ],
            region="aa",
            gpu=1,
            inputs=[f"{source}:data.bin"],
            outputs=["sum.txt", "*.bin", "missing.csv"],
            job_id="follows",
        )
        record = await job.wait(timeout=90)
        assert (record.state, record.region, record.spec.origin) == ("succeeded", "bb", "aa"), record
        # the input lives at home only: the agent in bb read it through the hub
        ref = record.spec.inputs[0]
        assert ref.object.startswith("in.acme.")
        assert ref.size == len(data)
        bb = await operator.bus("bb")
        assert [c async for c in objects.chunks(bb, "bb", ref.object)] == []
        # the outputs: the link was not stored, the copy and the sum were
        assert sorted(r.name for r in record.stored) == ["copy.bin", "data.bin", "sum.txt"]
        assert all(r.object.startswith("out.bb-gpu.") for r in record.stored)
        assert await client.get("follows", "copy.bin") == data  # the tenant, through bb's scheduler
        assert await operator.get("follows", "copy.bin") == data  # an operator, by direct gets
        assert (await client.get("follows", "sum.txt")).split()[0].decode() == hashlib.sha256(
            data
        ).hexdigest()
        log = b"".join([c async for c in client.logs("follows")])
        assert b"no file matches output 'missing.csv'" in log
        with pytest.raises(NotFound, match=r"it stored copy\.bin, data\.bin, sum\.txt"):
            await client.get("follows", "leak.bin")

    # the same from the command line, at home: a listing, a file, stdout
    state = cluster.tmp
    listed = await fed(state, "get", "follows", "--region", "aa")
    assert listed.returncode == 0, listed.stderr
    assert "copy.bin" in listed.stdout
    assert "sum.txt" in listed.stdout
    got = await fed(state, "get", "follows", "copy.bin", "-o", str(tmp_path / "out.bin"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.bin").read_bytes() == data
    shown = await fed(state, "job", "follows")
    assert "input     data.bin" in shown.stdout, shown.stdout
    assert "stored copy.bin" in shown.stdout, shown.stdout


async def test_a_tenant_reads_only_its_own_jobs_files_and_a_revoked_one_none(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    keyring = Keyring.of(cluster.tmp)
    creds = {name: await cluster.tenant(name) for name in ("acme", "blue")}
    (tmp_path / "in.txt").write_text("acme's secret input\n")
    acme = Client.connect(connection=cluster.connection, credentials=creds["acme"])
    blue = Client.connect(connection=cluster.connection, credentials=creds["blue"])
    try:
        job = await acme.submit(
            ["sh", "-c", "tr a-z A-Z < in.txt > out.txt"],
            inputs=[str(tmp_path / "in.txt")],
            outputs=["out.txt"],
            job_id="acme-data",
        )
        record = await job.wait(timeout=60)
        assert record.state == "succeeded", record
        assert record.spec.inputs[0].object.startswith("in.acme.")
        assert await acme.get("acme-data", "out.txt") == b"ACME'S SECRET INPUT\n"  # through the scheduler
        with pytest.raises(NotFound):
            await blue.get("acme-data", "out.txt")
        # blue's credentials read no object store, and write none under acme's name
        bus = await blue.bus("eu")
        with pytest.raises(FederationError):
            await bus.store(subjects.object_chunks("eu", "in.acme.forged"), b"x", timeout=2)
        with pytest.raises(FederationError):
            [c async for c in objects.chunks(bus, "eu", record.stored[0].object)]
        # a submission naming another tenant's object is refused (quarantined), never run
        forged = Submit(
            id="blue-forged", command=["cat", "in.txt"], tenant="blue", inputs=list(record.spec.inputs)
        )
        await bus.store(subjects.tenant_submit("eu", "blue-forged", "blue"), encode(forged), timeout=10)
        async with Client.connect(connection=cluster.connection) as operator:

            async def quarantined() -> str | None:
                found = [q for q in await operator.quarantined(region="eu") if "blue-forged" in q.subject]
                return found[0].reason if found else None

            assert "is not tenant blue's" in await eventually(quarantined, timeout=20)
            with pytest.raises(NotFound):
                await operator.job("blue-forged")
        # revoked: acme's key no longer reads its own files (its connection is closed first: a
        # connection the server cuts leaves nats-py reconnecting with sockets it never closes)
        await acme.close()
        keyring.revoke("tenant", "acme")
        await cluster.federation.reload()
        with pytest.raises(FederationError, match="unknown or revoked key"):
            await acme.get("acme-data", "out.txt")
    finally:
        for client in (acme, blue):
            await client.close()


async def test_bad_inputs_are_refused_before_submission_and_an_unstageable_one_fails_its_attempts(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    config = cluster.tmp / "config" / "scheduler-eu.toml"
    policy = "\n[policy]\nmax_input_bytes = 100000\nmax_output_bytes = 1000\nobject_retention = 3600.0\n"
    config.write_text(config.read_text().replace("\n[policy]\n", policy, 1))
    await eventually(lambda: "policy reloaded" in (cluster.tmp / "logs" / "scheduler-eu.log").read_text())
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 150_000)
    async with Client.connect(connection=cluster.connection) as client:
        bus = await client.bus("eu")

        async def retention() -> float:  # the store keeps files as long as the policy now says
            return float((await bus.js.stream_info(subjects.objects_stream("eu"))).config.max_age or 0)

        assert await eventually(lambda: _is(retention(), 3600.0))
        assert await client.input_limit("eu") == 100_000
        with pytest.raises(InvalidRequest, match="no such file"):
            await client.submit(["true"], inputs=[str(tmp_path / "absent.csv")], job_id="absent")
        with pytest.raises(InvalidRequest, match="150000 bytes; region eu allows 100000"):
            await client.submit(["true"], inputs=[str(big)], job_id="too-big")
        with pytest.raises(InvalidRequest, match="not a regular file"):
            await client.submit(["true"], inputs=[str(tmp_path)], job_id="a-dir")
        for job in ("absent", "too-big", "a-dir"):
            with pytest.raises(NotFound):
                await client.job(job, region="eu")
        # an object that is not there (removed after its retention, say), and one whose content is
        # not what the submission says: each attempt is refused with the cause, and the job fails
        small = tmp_path / "small.txt"
        small.write_text("hello\n")
        real = (await client.upload([str(small)], region="eu"))[0]
        gone = ObjectRef(name="gone.txt", object="in.default.nothing", size=6, digest=real.digest)
        wrong = ObjectRef(name="small.txt", object=real.object, size=6, digest="SHA-256=" + "A" * 43 + "=")
        for job_id, ref in (("gone", gone), ("wrong", wrong)):
            spec = Submit(id=job_id, command=["cat", ref.name], inputs=[ref], max_attempts=2)
            await client._store(spec, "eu")
        for job_id, cause in (("gone", "not in eu's object store"), ("wrong", "does not match its digest")):
            record = await client.wait(job_id, timeout=60)
            assert record.state == "failed", record
            assert cause in record.reason, record.reason
            assert "could not be staged" in record.reason, record.reason
            assert "no attempts left (2 of 2)" in record.reason, record.reason

        # outputs past the region's max_output_bytes are not stored, and the job's output says so
        job = await client.submit(
            ["sh", "-c", "head -c 2000 /dev/zero > big.out; echo small > small.out"],
            outputs=["*.out"],
            job_id="outputs",
        )
        record = await job.wait(timeout=60)
        assert [r.name for r in record.stored] == ["small.out"], record
        log = b"".join([c async for c in client.logs("outputs")])
        assert b"output 'big.out' not stored: 2000 bytes; 1000 of the region's limit left" in log


async def _is(value: Awaitable[float], expected: float) -> bool:
    return await value == expected


async def test_an_agent_removes_what_a_previous_life_left_in_its_work_root(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=0)
    work = cluster.tmp / "agents" / "n9" / "work"
    left = work / "j1.1.abc123"  # an attempt directory a killed agent left, staged input and all
    left.mkdir(parents=True)
    (left / "staged.bin").write_bytes(b"x" * 4096)
    (work / "j2.1.def456").mkdir()
    agent = await cluster.start_agent("eu", "n9")
    await eventually(lambda: work.is_dir() and not any(work.iterdir()), timeout=30)
    assert agent.alive()
