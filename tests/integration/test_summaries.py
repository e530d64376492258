"""Region summaries published by the leader from real agents' offers (issue #4, part 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.client import Client
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(120)


async def test_the_leader_publishes_a_summary_aggregating_custom_attributes(
    make_cluster, tmp_path: Path
) -> None:
    cluster = await make_cluster(agents=0)
    for node, attributes in (
        ("a", 'scratch_gb = 100, os = "debian12", isa = ["avx2"]'),
        ("b", 'scratch_gb = 50, os = "rhel9", isa = ["avx2", "avx512"]'),
    ):
        config = tmp_path / f"{node}.toml"
        config.write_text(
            f'cpu = 4\nmemory = 8589934592\nattributes = {{ {attributes} }}\n[labels]\ncity = "AMS"\n'
        )
        await cluster.start_agent("eu", node, "--config", str(config))
    async with Client.connect(connection=cluster.connection) as fed:

        async def both_nodes() -> object:
            summary = await fed.summary("eu")
            return summary if summary is not None and summary.live == 2 else None

        summary = await eventually(both_nodes, timeout=30)
        assert (summary.cpu, summary.memory) == (8, 16 * 1024**3)
        assert summary.custom == {"isa": ["avx2", "avx512"], "os": ["debian12", "rhel9"], "scratch_gb": 150.0}
        assert summary.labels["city"] == ["AMS"]
        assert summary.runtimes == ["process"]
        (region,) = await fed.status()
        assert region.summary is not None
