"""Identities and permissions against real servers (``fed up`` turns them on by default).

An agent speaks only for its own node, a tenant sees only its own jobs, an auditor only reads, a
leafnode link carries no node-local traffic, and a key the servers do not know (or no longer know)
is refused at connect. Refusals are the server's: the client here is a plain nats-py connection
or the project's own client, holding real credentials from the keyring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
from pathlib import Path

import nats
import pytest

from federation import subjects
from federation.bus import Bus
from federation.campaign.faults import admission
from federation.client import Client
from federation.config import load_connection
from federation.errors import (
    FederationError,
    FederationUnavailable,
    InvalidRequest,
    NotFound,
    NotPermitted,
)
from federation.identity import Credentials, load_credentials, new_seed, use_credentials
from federation.ops.keyring import Keyring
from federation.ops.launcher import Federation, Options, server_pids
from federation.schemas import Cancel, Heartbeat, Submit, encode
from tests.conftest import eventually, fed_up, raw_connect, run_fed
from tests.harness import pause, resume

pytestmark = pytest.mark.timeout(240)


async def _raw(url: str, creds: Credentials, errors: list[str]) -> nats.aio.client.Client:
    """A plain connection as ``creds``; the server's permission errors land in ``errors``."""

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    return await raw_connect(url, creds, error_cb=on_error, allow_reconnect=False)


def _violations(errors: list[str], what: str) -> list[str]:
    return [e for e in errors if "permissions violation" in e.lower() and what.lower() in e.lower()]


async def test_an_agent_speaks_only_for_its_own_node(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu", "us"), agents=2)
    keyring = Keyring.of(cluster.tmp)
    agent = keyring.credentials("agent", "eu-n1", "eu")
    errors: list[str] = []
    nc = await _raw(cluster.url("eu"), agent, errors)
    admin = await Bus.connect(cluster.url("eu"), "test-admin", retry_forever=False)
    try:
        ledger = subjects.ledger_bucket("eu")
        own = f"$JS.API.DIRECT.GET.KV_{ledger}.$KV.{ledger}."
        # another node's heartbeat and offer, another region's: refused, nothing stored
        beat = encode(Heartbeat(node="ghost", seq=1, sent_at=0.0, interval=1.0))
        for subject in (subjects.heartbeat("eu", "ghost"), subjects.offer("eu", "eu-n2"), "fed.us.hb.us-n1"):
            await nc.publish(subject, beat)
        # all assignments of the region, another agent's ledger, any consumer: refused
        seen: list[str] = []

        async def got(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg.subject)

        await nc.subscribe(subjects.ledger_changes("eu", "*"), cb=got)
        with pytest.raises(nats.errors.Error):
            await nc.request(own + "eu-n2", b"", timeout=1)
        with pytest.raises(nats.errors.Error):
            await nc.request(f"$JS.API.CONSUMER.CREATE.KV_{ledger}", b"{}", timeout=1)
        await nc.flush()
        await eventually(lambda: len(_violations(errors, "publish")) >= 5, timeout=10)
        assert _violations(errors, 'subscription to "fed.eu.ledger.*"'), errors
        assert _violations(errors, "kv_fed-ledger-eu.$kv.fed-ledger-eu.eu-n2"), errors
        # a job lands on each node: the agent's wildcard subscription saw none of the writes
        async with Client.connect(connection=cluster.connection) as fed:
            for node in ("eu-n1", "eu-n2"):
                job = await fed.submit(["true"], region="eu", require={"node": node})
                assert (await job.wait(timeout=60)).state == "succeeded"
        assert seen == []
        # its own ledger key (written by those placements), by direct get: allowed (the control)
        reply = await eventually(lambda: _direct_get(nc, own + "eu-n1"), timeout=20)
        assert reply.headers.get("Nats-Subject") == f"$KV.{ledger}.eu-n1"
        # a forged reply subject cannot steer the server's answer (its own ledger) or the
        # acknowledgement of its heartbeat into another node's ledger key
        before = await admin.kv_get(ledger, "eu-n2")
        victim = f"$KV.{ledger}.eu-n2"
        await nc.publish(own + "eu-n1", b"", reply=victim)
        await nc.publish(subjects.heartbeat("eu", "eu-n1"), b"{}", reply=victim)
        assert await _direct_get(nc, own + "eu-n1") is not None  # after both, in order
        assert await admin.kv_get(ledger, "eu-n2") == before
        assert await admin.last(subjects.heartbeats_stream("eu"), subjects.heartbeat("eu", "ghost")) is None
        offer = await admin.last(subjects.offers_stream("eu"), subjects.offer("eu", "eu-n2"))
        assert offer is not None
        assert b"ghost" not in offer.data
    finally:
        await nc.close()
        await admin.close()


async def _direct_get(nc: nats.aio.client.Client, subject: str) -> nats.aio.msg.Msg | None:
    msg = await nc.request(subject, b"", timeout=2)
    return msg if msg.headers and "Nats-Subject" in msg.headers else None  # 404 until the first write


async def test_a_leafnode_link_carries_no_node_local_traffic(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    hub = await Bus.connect(cluster.connection.hub_url, "test-hub", retry_forever=False)
    region = await Bus.connect(cluster.url("eu"), "test-eu", retry_forever=False)
    try:
        # from the hub's side, as the operator: a forged heartbeat is not imported into the
        # region; a cancel (which regions do pass on to each other) is, after it, on the same link
        await hub.publish(subjects.heartbeat("eu", "forged"), b"{}")
        cancel = encode(Cancel(id="nojob", reason="leaf test"))
        subject = subjects.cancel("eu", "nojob")
        await eventually(lambda: _crossed(hub, region, subject, cancel), timeout=20, interval=0.2)
        assert await region.last(subjects.heartbeats_stream("eu"), subjects.heartbeat("eu", "forged")) is None
    finally:
        await hub.close()
        await region.close()


async def _crossed(hub: Bus, region: Bus, subject: str, data: bytes) -> bool:
    await hub.publish(subject, data)
    return await region.last(subjects.workloads_stream("eu"), subject, direct=False) is not None


async def test_tenants_see_and_touch_only_their_own_jobs(make_cluster) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    creds = {name: await cluster.tenant(name) for name in ("acme", "blue")}
    a = Client.connect(connection=cluster.connection, credentials=creds["acme"])
    b = Client.connect(connection=cluster.connection, credentials=creds["blue"])
    operator = Client.connect(connection=cluster.connection)
    try:
        done = await a.submit(["sh", "-c", "echo secret-of-acme"], job_id="acme-1")
        await a.submit(["sleep", "60"], job_id="acme-2")
        assert (await done.wait(timeout=60)).state == "succeeded"
        assert b"".join([c async for c in a.logs("acme-1")]) == b"secret-of-acme\n"
        assert {r.id for r in await a.jobs()} == {"acme-1", "acme-2"}
        assert all(r.spec.tenant == "acme" for r in await a.jobs())

        # blue: acme's jobs do not exist
        mine = await b.submit(["true"], job_id="blue-1")
        assert (await mine.wait(timeout=60)).state == "succeeded"
        assert [r.id for r in await b.jobs()] == ["blue-1"]
        for call in (b.job("acme-1"), b.cancel("acme-2"), _drain(b.logs("acme-1"))):
            with pytest.raises(NotFound):
                await call
        with pytest.raises(InvalidRequest):
            await b.submit(["true"], tenant="acme")
        # blue's credentials open no stream, bucket or audit trail
        bus = await b.bus("eu")
        for read in (
            bus.kv_get(subjects.jobs_bucket("eu"), "acme-1"),
            bus.last(subjects.logs_stream("eu"), subjects.job_log("eu", "eu-n1", "acme-1")),
            bus.nc.request(f"$JS.API.CONSUMER.CREATE.{subjects.audit_stream('eu')}", b"{}", timeout=2),
        ):
            with pytest.raises((FederationError, TimeoutError)):  # refused: never answered
                await asyncio.wait_for(read, 2)
        for api in ("direct.get.kv_fed-jobs-eu", "direct.get.fed-eu-logs", "consumer.create.fed-eu-audit"):
            assert any(f"$js.api.{api}" in refusal for refusal in bus.refused), list(bus.refused)
        with pytest.raises(NotPermitted):  # and the client says so at once, without asking
            await _drain(b.audit(region="eu"))
        # by hand: a submission in acme's name on blue's subject is quarantined; acme's subject is
        # refused by the server; a cancel of acme's job on blue's subject changes nothing
        errors: list[str] = []
        nc = await _raw(cluster.url("eu"), creds["blue"], errors)
        forged = encode(Submit(id="forged-1", command=["true"], tenant="acme"))
        await nc.publish(subjects.tenant_submit("eu", "forged-1", "blue"), forged)
        await nc.publish(subjects.tenant_submit("eu", "forged-2", "acme"), forged)
        await nc.publish(subjects.tenant_cancel("eu", "acme-2", "blue"), encode(Cancel(id="acme-2")))
        # forged reply subjects: neither the acknowledgement of blue's own submission nor the
        # leader's answer may land in acme's job records
        jobs = subjects.jobs_bucket("eu")
        admin = await operator.bus("eu")
        before = {job: await admin.kv_get(jobs, job) for job in ("acme-1", "acme-2")}
        ok = encode(Submit(id="blue-2", command=["true"], tenant="blue"))
        await nc.publish(subjects.tenant_submit("eu", "blue-2", "blue"), ok, reply=f"$KV.{jobs}.acme-1")
        await nc.publish(subjects.tenant_api("eu", "blue", "jobs"), b"{}", reply=f"$KV.{jobs}.acme-2")
        assert (await nc.request(subjects.tenant_api("eu", "blue", "jobs"), b"{}", timeout=10)).data
        await nc.flush()
        await eventually(lambda: _violations(errors, "fed.eu.wl.submit.forged-2.acme"), timeout=10)
        await nc.close()
        quarantined = await eventually(lambda: _quarantined(operator, "forged-1"), timeout=20)
        assert "credentials" in quarantined.reason
        with pytest.raises(NotFound):
            await operator.job("forged-1")
        assert (await operator.job("acme-2")).state == "running"
        assert {job: await admin.kv_get(jobs, job) for job in before} == before
        assert (await operator.wait("blue-2", timeout=60)).state == "succeeded"
        await a.cancel("acme-2")
        assert (await a.wait("acme-2", timeout=30)).state == "cancelled"
    finally:
        for client in (a, b, operator):
            await client.close()


async def _drain(chunks) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [chunk async for chunk in chunks]


async def _quarantined(fed: Client, job: str):  # type: ignore[no-untyped-def]
    return next((q for q in await fed.quarantined(region="eu") if job in q.subject), None)


async def test_an_auditor_reads_the_trail_and_changes_nothing(make_cluster) -> None:
    """The auditor reads by batched direct gets through its own account: it creates no consumer
    (whose deliver subject the server would not check) and can steer no answer into a bucket."""
    cluster = await make_cluster(regions=("eu",), agents=1)
    auditor = Keyring.of(cluster.tmp).credentials("auditor", "auditor")
    async with Client.connect(connection=cluster.connection) as fed:
        assert (await (await fed.submit(["true"], job_id="audited")).wait(timeout=60)).state == "succeeded"
    async with Client.connect(connection=cluster.connection, credentials=auditor) as reader:
        events = [e async for e in reader.audit(region="eu")]
        assert any(e.kind == "submit" and e.job == "audited" for e in events)
        assert (await reader.audit_check(region="eu")).ok
        assert (await reader.audit_verify(region="eu")).ok
        everywhere = await eventually(lambda: _drain(reader.audit(everywhere=True)), timeout=30)
        assert {e.region for e in everywhere} == {"eu"}  # the hub's AUDIT_ALL, read the same way
        with pytest.raises(FederationError):
            await reader.submit(["true"])
    errors: list[str] = []
    nc = await _raw(cluster.url("eu"), auditor, errors)
    admin = await Bus.connect(cluster.url("eu"), "test-admin", retry_forever=False)
    ledger = subjects.ledger_bucket("eu")
    try:
        before = await admin.kv_get(ledger, "eu-n1")
        for api in ("STREAM.DELETE", "STREAM.PURGE", "CONSUMER.CREATE"):
            with pytest.raises(nats.errors.Error):
                await nc.request(f"$JS.API.{api}.{subjects.audit_stream('eu')}", b"{}", timeout=1)
        # an old ledger value, read with a forged reply subject: the answer cannot land in the bucket
        first = json.dumps({"seq": 1, "next_by_subj": f"$KV.{ledger}.eu-n1"}).encode()
        await nc.publish(f"$JS.API.DIRECT.GET.KV_{ledger}", first, reply=f"$KV.{ledger}.eu-n1")
        assert (await nc.request(f"$JS.API.DIRECT.GET.KV_{ledger}", first, timeout=5)).data  # after it
        assert await admin.kv_get(ledger, "eu-n1") == before
    finally:
        await nc.close()
        await admin.close()
    assert len(_violations(errors, "publish")) >= 3


async def test_unknown_missing_and_revoked_keys_are_refused(tmp_path: Path) -> None:
    """Against ``fed up`` itself: ``fed creds`` adds and revokes, the servers reload at once."""
    state = tmp_path / "fed"
    async with fed_up(state, "--regions", "eu", "--agents", "1") as (_, connection):
        url = connection.regions["eu"].url
        stranger = tmp_path / "stranger.creds"
        stranger.write_text(new_seed() + "\n")
        refused = run_fed(state, "--creds", str(stranger), "jobs")
        assert refused.returncode != 0
        assert "authorization violation" in refused.stderr.lower(), refused.stderr
        use_credentials(None)
        with pytest.raises(FederationUnavailable, match="refuses a client without credentials"):
            await Bus.connect(url, "test-anonymous", retry_forever=False, timeout=1.0)

        added = run_fed(state, "creds", "add-tenant", "acme")
        assert added.returncode == 0, added.stderr
        assert "servers have the change" in added.stdout
        path = Keyring.of(state).path("tenant", "acme")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        tenant = load_credentials(path)
        assert path.suffix == ".nk"
        assert path.read_text().strip() == tenant.seed  # the seed alone: what NATS tools read
        plain = await nats.connect(
            url, nkeys_seed=str(path), inbox_prefix=tenant.inbox, max_reconnect_attempts=0
        )
        assert plain.is_connected
        await plain.close()
        async with Client.connect(connection=connection, credentials=tenant) as acme:
            job = await acme.submit(["true"], job_id="before-revoke")
            assert (await job.wait(timeout=60)).state == "succeeded"
            bus = await acme.bus("eu")
            assert bus.nc.is_connected
            revoked = run_fed(state, "creds", "revoke", "tenant", "acme")
            assert revoked.returncode == 0, revoked.stderr
            await eventually(lambda: not bus.nc.is_connected, timeout=10)  # cut off at once
        with pytest.raises(FederationUnavailable, match="refuses tenant acme"):
            await Bus.connect(url, "test-revoked", retry_forever=False, timeout=1.0, credentials=tenant)
        assert not path.exists()
        listed = run_fed(state, "creds", "list")
        assert "acme" not in listed.stdout
        assert "agent" in listed.stdout
        rows = json.loads(run_fed(state, "creds", "list", "--json").stdout)
        assert {r["kind"] for r in rows} >= {"admin", "agent", "scheduler"}
        assert all(r["key_file"].endswith(".nk") for r in rows if r["key_file"])


def _regions(state: Path) -> dict[str, str]:
    return {r: e.url for r, e in load_connection(state).regions.items()}


async def test_a_revoke_reaches_a_server_that_restarted(tmp_path: Path) -> None:
    """Issue 16, defect 1: a region's server killed and restarted by fed up (it came back with a
    monitoring port the connection file did not know) must still take a revoke, and so must every
    other server; a revoke that cannot reach a running server is reported as not applied."""
    state = tmp_path / "fed"
    async with fed_up(state, "--regions", "eu,us", "--agents", "1") as (up, _):
        added = run_fed(state, "creds", "add-tenant", "c")
        assert added.returncode == 0, added.stderr
        kept = load_credentials(Keyring.of(state).path("tenant", "c"))
        (old,) = server_pids(state, "us")
        os.kill(old, signal.SIGKILL)
        await eventually(lambda: server_pids(state, "us") not in ([], [old]), timeout=60, interval=0.2)
        await eventually(lambda: "restarting on its ports" in (tmp_path / "up.log").read_text(), timeout=10)
        (new,) = server_pids(state, "us")
        connection = load_connection(state)
        async with Client.connect(connection=connection, credentials=kept) as tenant:
            job = await tenant.submit(["true"], region="us", job_id="after-restart")
            assert (await job.wait(timeout=60)).state == "succeeded"

        later = run_fed(state, "creds", "add-tenant", "d")  # an add after the restart reaches it too
        assert later.returncode == 0, later.stdout + later.stderr
        d = load_credentials(Keyring.of(state).path("tenant", "d"))
        assert await admission(_regions(state), d) == {"eu": "accepted", "us": "accepted"}

        assert await admission(_regions(state), kept) == {"eu": "accepted", "us": "accepted"}
        revoked = run_fed(state, "creds", "revoke", "tenant", "c")
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        assert "revoked tenant c" in revoked.stdout
        assert await admission(_regions(state), kept) == {"eu": "refused", "us": "refused"}

        pause(new)  # a server that cannot answer: the change is reported as not applied, never as done
        try:
            failed = run_fed(state, "creds", "revoke", "tenant", "d", timeout=120)
        finally:
            resume(new)
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert "NOT applied" in failed.stderr, failed.stderr
        assert "nats-server us: failed" in failed.stderr, failed.stderr
        assert "revoked tenant d" not in failed.stdout
        retried = run_fed(state, "creds", "reload")
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert await admission(_regions(state), d) == {"eu": "refused", "us": "refused"}
        assert up.alive()


async def test_state_from_a_run_without_authentication_carries_over(tmp_path: Path) -> None:
    """The streams of a state directory last run with --no-auth move into the FED account."""
    state = tmp_path / "fed"
    options = Options(state_dir=state, regions=("eu",), agents=1, auth=False)
    first = Federation(options)
    connection = await first.start()
    try:
        async with Client.connect(connection=connection) as fed:
            job = await fed.submit(["true"], job_id="before-auth")
            assert (await job.wait(timeout=60)).state == "succeeded"
    finally:
        await first.stop()
    assert (state / "servers" / "eu" / "store" / "jetstream" / "$G").is_dir()
    second = Federation(dataclasses.replace(options, auth=True))
    connection = await second.start()
    try:
        assert connection.creds
        async with Client.connect(connection=connection) as fed:
            assert (await fed.job("before-auth")).state == "succeeded"
            after = await fed.submit(["true"], job_id="after-auth")
            assert (await after.wait(timeout=60)).state == "succeeded"
    finally:
        await second.stop()
    assert not (state / "servers" / "eu" / "store" / "jetstream" / "$G").exists()
