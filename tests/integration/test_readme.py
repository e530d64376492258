"""The README's tour runs as written on a fresh ``fed up`` (issue 16, defect 9).

Each command of the tour's shell block is run through ``sh`` against a real ``fed up`` process, in
order, with ``JOB`` standing for the id the last ``fed submit`` printed. A command must exit 0 (or
with the status its comment names, "exits N"), and a quoted phrase in its comment ("...") must
appear in what it printed: the comments are the README's promises.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fed_up

pytestmark = pytest.mark.timeout(420)

README = Path(__file__).resolve().parents[2] / "README.md"


def tour() -> list[tuple[str, str]]:
    """The tour's commands and their comments, in order."""
    text = README.read_text()
    block = text[text.index("## A five-minute tour") :]
    block = block[block.index("```sh\n") + 6 :]
    block = block[: block.index("```")]
    out = []
    for line in block.splitlines():
        command, _, comment = line.partition("  #")
        if command.strip() and not command.startswith("source "):
            out.append((command.strip(), comment.strip()))
    return out


def test_the_tour_is_found() -> None:
    commands = [c for c, _ in tour()]
    assert len(commands) >= 15
    assert all(c.startswith("fed ") for c in commands)


async def test_every_tour_command_runs_as_written_on_a_fresh_fed_up(tmp_path: Path) -> None:
    state = tmp_path / "fed"
    env = {
        **os.environ,
        "FED_STATE_DIR": str(state),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    async with fed_up(state):
        job = ""
        for command, comment in tour():
            line = command.replace("JOB", job) if job else command
            assert "JOB" not in line, f"{command!r} names a job before any was submitted"
            phrases = re.findall(r'"([^"]+)"', comment)
            for _ in range(60):  # a read may run before the scheduler wrote what it shows: ask again
                ran = await asyncio.to_thread(
                    subprocess.run, ["sh", "-c", line], env=env, capture_output=True, text=True, timeout=120
                )
                said = ran.stdout + ran.stderr
                if line.startswith("fed submit") or all(phrase in said for phrase in phrases):
                    break
                await asyncio.sleep(0.5)  # sleep-ok: the poll interval of a condition wait
            expected = int(m.group(1)) if (m := re.search(r"exits (\d+)", comment)) else 0
            assert ran.returncode == expected, f"{line}\n-> exit {ran.returncode}\n{said}"
            for phrase in phrases:
                assert phrase in said, f"{line}\n-> {phrase!r} not in:\n{said}"
            if line.startswith("fed submit") and "--wait" not in line:
                job = ran.stdout.strip()
