"""The dependency direction of the tree: agents -> federation; the core imports no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE_ALLOWED = {
    "federation.core",
    "federation.schemas",
    "federation.subjects",
    "federation.errors",
    "federation.resources",
}
STDLIB_IO = {"asyncio", "socket", "time", "random", "os", "subprocess", "threading", "logging"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_is_pure() -> None:
    for path in (ROOT / "federation" / "core").glob("*.py"):
        for name in imports(path):
            top = name.split(".")[0]
            assert top not in {"nats", "opentelemetry", "structlog", "psutil"}, f"{path.name} imports {name}"
            assert top not in STDLIB_IO, f"{path.name} imports {name}: the core takes time and I/O as data"
            if top == "federation":
                assert any(name == a or name.startswith(a + ".") for a in CORE_ALLOWED), (
                    f"{path.name}: {name}"
                )


def test_only_the_bus_imports_nats() -> None:
    for path in [*(ROOT / "federation").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]:
        if path.name == "bus.py":
            continue
        assert not {n for n in imports(path) if n.split(".")[0] == "nats"}, f"{path} imports nats"


def test_federation_never_imports_agents() -> None:
    for path in (ROOT / "federation").rglob("*.py"):
        if path.name == "cli.py":
            continue  # the CLI is the one entry point that starts an agent
        assert not {n for n in imports(path) if n.split(".")[0] == "agents"}, f"{path} imports agents"
