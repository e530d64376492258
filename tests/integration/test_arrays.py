"""Job arrays with real servers, schedulers and agents: ``fed submit --array`` as a Slurm user runs it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GiB, eventually, fed

pytestmark = pytest.mark.timeout(300)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of ``(start, end)`` spans open at one moment."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    open_now = peak = 0
    for _, change in edges:  # an end sorts before a start at the same instant
        open_now += change
        peak = max(peak, open_now)
    return peak


async def test_an_array_of_200_with_a_limit_of_10_runs_each_index_once_never_more_than_10_at_once(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("eu",), agents=2, capacity={"cpu": 8, "memory": 8 * GiB, "gpu": 0})
    out = tmp_path / "runs"
    out.mkdir()
    script = (
        f"date +%s.%N > {out}/start.$FED_ARRAY_INDEX; sleep 0.2; "
        f"echo $FED_ARRAY_ID > {out}/end.$FED_ARRAY_INDEX; date +%s.%N >> {out}/end.$FED_ARRAY_INDEX"
    )
    done = await fed(cluster.tmp, "submit", "--array", "0-199%10", "--wait", "--", "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    assert "all 200 jobs succeeded" in done.stderr
    array = done.stderr.split("submitted array ", 1)[1].split()[0]

    spans = []
    for index in range(200):
        ended = (out / f"end.{index}").read_text().split()
        assert ended[0] == array  # FED_ARRAY_ID
        spans.append((float((out / f"start.{index}").read_text()), float(ended[1])))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"start.{i}" for i in range(200)] + [f"end.{i}" for i in range(200)]
    )
    peak = most_at_once(spans)
    assert peak <= 10, f"{peak} elements ran at once"
    assert peak >= 3, f"only {peak} at once: the 16 slots were not used in parallel"

    summary = json.loads((await fed(cluster.tmp, "jobs", "--array", array, "--json")).stdout)
    assert summary["states"] == {"succeeded": 200}
    assert summary["limit"] == 10
    listed = json.loads(
        (await fed(cluster.tmp, "jobs", "--array", array, "--state", "succeeded", "--json")).stdout
    )
    assert sorted(r["spec"].get("array_index", 0) for r in listed["records"]) == list(range(200))
    assert {r["attempt"] for r in listed["records"]} == {1}  # each index ran once


async def test_a_failed_element_sets_the_status_and_cancel_stops_a_whole_array(make_cluster: Any) -> None:
    cluster = await make_cluster(regions=("eu",), agents=1)
    failed = await fed(
        cluster.tmp,
        "submit",
        "--array",
        "0-5",
        "--wait",
        "--",
        "sh",
        "-c",
        '[ "$FED_ARRAY_INDEX" != 3 ] || exit 7',
    )
    assert failed.returncode == 7, failed.stderr
    assert "1 of 6 jobs did not succeed" in failed.stderr
    assert "-3: failed (exited with code 7)" in failed.stderr

    sleeping = await fed(cluster.tmp, "submit", "--array", "0-19%2", "--", "sleep", "120")
    assert sleeping.returncode == 0, sleeping.stderr
    array = sleeping.stdout.strip()

    async def states() -> dict[str, int]:
        return dict(json.loads((await fed(cluster.tmp, "jobs", "--array", array, "--json")).stdout)["states"])

    await eventually(lambda: _running(states, 2), timeout=60, interval=0.5)
    cancel = await fed(cluster.tmp, "cancel", array)
    assert cancel.returncode == 0, cancel.stderr
    await eventually(lambda: _equal(states, {"cancelled": 20}), timeout=60, interval=0.5)
    unknown = await fed(cluster.tmp, "cancel", "no-such-array")
    assert unknown.returncode == 2
    assert "not found" in unknown.stderr


async def test_an_arrays_wait_follows_the_elements_handed_to_another_region(make_cluster: Any) -> None:
    """A job array's wait reads its elements by key, in its home region and then in the region
    each element was handed to (here every one: they may run only there); a tenant's, through its
    questions to every region."""
    from federation.client import Client
    from federation.ops.keyring import Keyring

    cluster = await make_cluster(regions=("aa", "bb"), agents=1)
    await cluster.federation.add_identity("tenant", "acme")
    tenant = Client(cluster.connection, Keyring.of(cluster.tmp).credentials("tenant", "acme"))
    try:
        async with Client.connect(connection=cluster.connection) as client:
            away = await client.submit_array(["true"], [0, 2, 5], region="aa", regions=["bb"])
            theirs = await tenant.submit_array(["true"], [1, 3], region="aa", regions=["bb"])
            finals = await away.wait(timeout=120)
            assert [(r.id, r.region, r.state) for r in finals] == [
                (f"{away.id}-{i}", "bb", "succeeded") for i in (0, 2, 5)
            ]
            assert [r.spec.array_index for r in await away.records()] == [0, 2, 5]
            home = await client.records([f"{away.id}-2", "no-such-job", f"{away.id}-2"], region="aa")
            assert [(r.id, r.region) for r in home] == [(f"{away.id}-2", "bb")]  # where it lives, once
            tenants = await theirs.wait(timeout=120)
            assert [(r.id, r.region, r.state) for r in tenants] == [
                (f"{theirs.id}-{i}", "bb", "succeeded") for i in (1, 3)
            ]
    finally:
        await tenant.close()


async def _running(states: Any, count: int) -> bool:
    return bool((await states()).get("running") == count)


async def _equal(states: Any, expected: dict[str, int]) -> bool:
    return bool(await states() == expected)


@pytest.mark.parametrize(
    ("spec", "error"),
    [("5-1", "empty range"), ("0-9%0", "%0"), ("a-b", "is not an index"), ("0-200000", "more than")],
)
async def test_a_bad_array_spec_is_refused_before_anything_is_sent(
    tmp_path: Path, spec: str, error: str
) -> None:
    refused = await fed(tmp_path, "submit", "--array", spec, "--", "true")
    assert refused.returncode == 2
    assert error in refused.stderr


async def test_a_tenant_runs_waits_for_and_cancels_only_its_own_arrays(make_cluster: Any) -> None:
    """Through a tenant's credentials (the scheduler's tenant API, no stream access): an array and a
    dependency on it; another tenant can neither see nor cancel it."""
    from federation.client import Client
    from federation.errors import InvalidRequest, NotFound
    from federation.ops.keyring import Keyring

    cluster = await make_cluster(regions=("eu",), agents=1)
    for name in ("acme", "blue"):
        await cluster.federation.add_identity("tenant", name)
    keyring = Keyring.of(cluster.tmp)
    acme = Client(cluster.connection, keyring.credentials("tenant", "acme"))
    blue = Client(cluster.connection, keyring.credentials("tenant", "blue"))
    try:
        quick = await acme.submit_array(["true"], range(4), limit=2)
        after = await acme.submit(["true"], after=[quick.id])
        finals = await quick.wait(timeout=120)
        assert [r.state for r in finals] == ["succeeded"] * 4
        assert {r.spec.tenant for r in finals} == {"acme"}
        assert (await after.wait(timeout=120)).state == "succeeded"

        slow = await acme.submit_array(["sleep", "120"], range(6), limit=1)
        assert await blue.array(slow.id) == []  # not blue's to see
        with pytest.raises(NotFound):
            await blue.cancel(slow.id)
        with pytest.raises(InvalidRequest):
            await blue.submit(["true"], after=[slow.id])  # nor to wait for
        await slow.cancel()
        finals = await slow.wait(timeout=120)
        assert {r.state for r in finals} == {"cancelled"}
    finally:
        await acme.close()
        await blue.close()
