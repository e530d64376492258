"""The code stays lint-clean (ruff) and strictly typed (mypy --strict), as the project's style asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_ruff_finds_nothing() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.timeout(300)
def test_mypy_strict_passes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "federation", "agents"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_waits_are_bounded_with_asyncio_timeout_not_wait_for() -> None:
    # on Python 3.11 wait_for can turn a cancellation that meets its own timeout into a
    # TimeoutError, and a loop that retries timeouts would then never stop (see bus.following)
    import ast

    found = []
    for top in ("federation", "agents", "bench"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                called = isinstance(node, ast.Attribute) and node.attr == "wait_for"
                if called and isinstance(node.value, ast.Name) and node.value.id == "asyncio":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
