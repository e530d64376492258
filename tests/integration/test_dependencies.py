"""Dependencies across regions with real servers, schedulers and agents: ``fed submit --after``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, fed

pytestmark = pytest.mark.timeout(300)


async def test_a_chain_across_two_regions_runs_in_order_and_a_wrong_ending_cancels(
    make_cluster: Any, tmp_path: Path
) -> None:
    cluster = await make_cluster(regions=("eu", "us"), agents=1)
    gate, marks = tmp_path / "gate", tmp_path / "marks"
    marks.mkdir()
    first = await fed(
        cluster.tmp,
        "submit",
        "--region",
        "eu",
        "--",
        "sh",
        "-c",
        f"while [ ! -e {gate} ]; do sleep 0.05; done; echo a > {marks}/a",
    )
    assert first.returncode == 0, first.stderr
    a = first.stdout.strip()
    second = await fed(
        cluster.tmp,
        "submit",
        "--region",
        "us",
        "--after",
        f"{a}:ok",
        "--",
        "sh",
        "-c",
        f"test -e {marks}/a && echo b > {marks}/b",
    )
    assert second.returncode == 0, second.stderr
    b = second.stdout.strip()
    doomed = await fed(cluster.tmp, "submit", "--region", "us", "--after", f"{a}:failed", "--", "true")
    d = doomed.stdout.strip()

    async def explained(job: str) -> str:
        return str((await fed(cluster.tmp, "explain", job)).stdout)

    waiting = await eventually(
        lambda: _contains(explained(b), f"waiting for {a} in eu (running)"), timeout=60
    )
    assert waiting
    told = await explained(b)
    assert "forwarded" not in told  # it lives where it was submitted: no home record to show
    assert "home " not in told
    gate.touch()  # a may end now: b runs (in us), and c, after b, back in eu
    third = await fed(cluster.tmp, "submit", "--region", "eu", "--after", b, "--wait", "--", "true")
    assert third.returncode == 0, third.stderr
    assert (marks / "b").read_text().strip() == "b"  # b started only once a had written its mark

    record = json.loads((await fed(cluster.tmp, "job", d, "--json")).stdout)
    assert record["state"] == "cancelled"
    assert record["reason"] == f"dependency {a} in eu ended succeeded, not unsuccessfully"

    unknown = await fed(cluster.tmp, "submit", "--after", "no-such-job", "--", "true")
    assert unknown.returncode == 2
    assert "no job or job array of that id" in unknown.stderr


async def _contains(text: Any, part: str) -> bool:
    return part in await text
