"""The fault campaign (issue 16): a short run in the default suite, the full one behind ``slow``.

The short run breaks a two-region federation under load (leader and agent SIGKILL, duplicate and
malformed floods, cross-tenant and cross-node probes, a cut link, poison workloads) and must come
out clean by the independent checker and by the federation's own ``fed audit check``. The full
campaign is ``bench/faults.py`` (every fault, three regions, up to 15 minutes); ``-m slow`` runs it
here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.campaign.runner import SHORT, CampaignOptions, run

MiB = 1024**2


@pytest.mark.timeout(600)
async def test_a_short_campaign_keeps_every_invariant(tmp_path: Path) -> None:
    options = CampaignOptions(
        state_dir=tmp_path,
        regions=("eu", "us"),
        schedule=SHORT,
        rounds=1,
        pace=0.5,
        gap=(1.0, 2.0),
        warmup=5.0,
        settle=180.0,
        poison_processes=300,
        poison_output=20 * MiB,
        partition=8.0,
    )
    report = await run(options, echo=print)
    print(report.table())
    assert [o.fault for o in report.outcomes][:2] == ["leader SIGKILL", "agent SIGKILL"]
    assert len(report.outcomes) == len(SHORT)
    assert report.verdict.acknowledged >= 20, report.table()
    assert report.verdict.quarantined >= 100, report.table()  # the malformed flood, each refused
    assert report.ok, report.table() + "\n" + "\n".join(report.verdict.violations[:20]) + report.own_check


@pytest.mark.slow
@pytest.mark.timeout(1500)
async def test_the_full_campaign_keeps_every_invariant(tmp_path: Path) -> None:
    report = await run(CampaignOptions(state_dir=tmp_path), echo=print)
    print(report.table())
    assert report.ok, report.table() + "\n" + "\n".join(report.verdict.violations[:20]) + report.own_check
