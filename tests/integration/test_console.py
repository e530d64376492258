"""The web console in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real federation (servers, schedulers, agents, the console process ``fed up`` starts).

The browser is part of the suite's setup (``tests/install-browser.sh``, run by the README's test
command): a missing browser fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from federation.client import Client
from federation.console.server import Console
from federation.ops.keyring import Keyring
from tests.conftest import eventually, fed

pytestmark = pytest.mark.timeout(240)

FLAGS = [  # no sandbox as root; nothing that reaches for the network this machine does not have
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SEEN = 30_000  # ms a page may take to show a change (it should within 2 s; the machine may be busy)


def chromium() -> str:
    """The browser's executable: ``$FED_CHROMIUM``, else Debian's ``chromium``."""
    found = os.environ.get("FED_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).exists():
        pytest.fail("no Chromium: run tests/install-browser.sh (the README's test command does)")
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


async def fed_ok(state: Path, *args: str) -> str:
    """``fed ARGS`` as the operator, its output (failing the test when it fails)."""
    done = await fed(state, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_console_shows_jobs_live_streams_output_and_draws_a_partition(
    make_cluster: Any, browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    cluster = await make_cluster(regions=("eu", "us"), agents=1, chaos=True, console=True)
    url = cluster.connection.console
    assert url.startswith("http://127.0.0.1:")
    status = json.loads(await fed_ok(cluster.tmp, "status", "--json"))
    assert [region["console"] for region in status] == [f"{url}/regions/eu", f"{url}/regions/us"]
    page = await browser.new_page(viewport={"width": 1300, "height": 900})

    # a job submitted with the CLI appears in the table, without a reload
    await page.goto(url + "/jobs")
    await expect(page.locator("#conn")).to_have_class("dot on", timeout=SEEN)
    gate = tmp_path / "go"
    job = (
        await fed_ok(
            cluster.tmp,
            "submit",
            "--region",
            "eu",
            "--",
            "sh",
            "-c",
            f"echo tick-1; while [ ! -e {gate} ]; do sleep 0.05; done; echo tick-2",
        )
    ).split()[0]
    row = page.locator(f'tr[data-job="{job}"]')
    await expect(row).to_have_attribute("data-state", "running", timeout=SEEN)

    # its page streams the output while it runs
    await row.locator("a").first.click()
    await expect(page.locator("h1")).to_have_text(f"Job {job}")
    await expect(page.locator("#log")).to_contain_text("tick-1", timeout=SEEN)
    await expect(page.locator("#live .state").first).to_have_text("running")
    assert "tick-2" not in await page.locator("#log").inner_text()
    await expect(page.locator("pre.explain")).to_contain_text("chosen")  # fed explain's decision
    gate.touch()
    await expect(page.locator("#log")).to_contain_text("tick-2", timeout=SEEN)
    await expect(page.locator("#log-state")).to_contain_text("succeeded", timeout=SEEN)
    await expect(page.locator("#live .state").first).to_have_text("succeeded", timeout=SEEN)
    assert await page.locator("#cancel").count() == 0  # read-only: the auditor's console

    # and the table shows it finished
    await page.goto(url + "/jobs?state=succeeded")
    await expect(page.locator(f'tr[data-job="{job}"]')).to_be_visible(timeout=SEEN)
    await page.screenshot(path=str(tmp_path / "jobs.png"), full_page=True)

    # a region cut off from the hub shows on the map, and so does the heal
    await page.goto(url + "/")
    edge = page.locator('line.edge[data-region="us"]')
    await expect(edge).to_have_class("edge e-linked", timeout=SEEN)
    await fed_ok(cluster.tmp, "chaos", "partition", "us")
    await expect(edge).to_have_class("edge e-cut-off", timeout=SEEN)
    await expect(page.locator('tr[data-region="us"] .state')).to_have_text("cut off")
    await expect(page.locator('line.edge[data-region="eu"]')).to_have_class("edge e-cut-off")  # no peer left
    await page.screenshot(path=str(tmp_path / "partitioned.png"), full_page=True)
    await fed_ok(cluster.tmp, "chaos", "heal")
    await expect(edge).to_have_class("edge e-linked", timeout=SEEN)


async def test_only_an_operators_console_cancels(make_cluster: Any, browser: Any) -> None:
    """A console with the operator's credentials offers cancel and it works; the auditor's
    (``fed up``'s) shows no button and refuses the form even with its token."""
    from playwright.async_api import expect

    cluster = await make_cluster(regions=("eu",), agents=1, console=True)
    job = (await fed_ok(cluster.tmp, "submit", "--", "sleep", "300")).split()[0]
    page = await browser.new_page()
    await page.goto(f"{cluster.connection.console}/jobs/{job}")
    await expect(page.locator("#live .state").first).to_have_text("running", timeout=SEEN)
    assert await page.locator("#cancel").count() == 0
    await page.goto(f"{cluster.connection.console}/audit")  # its one form (check the audit) holds its token
    token = await page.locator('input[name="token"]').get_attribute("value")
    answer = await page.request.post(f"{cluster.connection.console}/jobs/{job}/cancel", form={"token": token})
    assert answer.status == 403
    assert "read-only" in await answer.text()

    admin = Keyring.of(cluster.tmp).credentials("admin", "admin")
    client = Client(cluster.connection, admin)
    console = Console(client, can_cancel=True)
    operator = await console.start()
    try:
        await page.goto(f"{operator}/jobs/{job}")
        await expect(page.locator("#live .state").first).to_have_text("running", timeout=SEEN)
        forged = await page.request.post(f"{operator}/jobs/{job}/cancel", form={"token": "forged"})
        assert forged.status == 403  # a form from elsewhere lacks the page's token
        await page.locator("#cancel").click()
        await expect(page.locator("#live .state").first).to_have_text("cancelled", timeout=SEEN)

        async def cancelled() -> bool:
            return (await client.job(job)).state == "cancelled"

        await eventually(cancelled)
    finally:
        await console.stop()
        await client.close()
