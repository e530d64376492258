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


def bound(path: Path, package: str) -> set[str]:
    """What each import of a file binds, in full: ``import a.b`` gives ``a.b``, ``from a import b``
    gives ``a.b`` (a module or a name in it); relative imports resolved against ``package``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[: len(package.split(".")) + 1 - node.level] if node.level else []
            module = ".".join([*parts, node.module] if node.module else parts)
            names.update(f"{module}.{alias.name}" for alias in node.names)
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
        if path.parent == ROOT / "federation" / "bus":
            continue
        assert not {n for n in imports(path) if n.split(".")[0] == "nats"}, f"{path} imports nats"


def test_federation_never_imports_agents() -> None:
    for path in (ROOT / "federation").rglob("*.py"):
        if path == ROOT / "federation" / "cli" / "daemons.py":
            continue  # `fed agent` is the one entry point that starts an agent
        assert not {n for n in imports(path) if n.split(".")[0] == "agents"}, f"{path} imports agents"


def test_cli_commands_never_import_the_entry_point() -> None:
    # entry -> command modules -> common: a command module reaching back into the package
    # (`federation.cli`, whose __init__ loads the entry) or into `federation.cli.entry` is a cycle
    cli = ROOT / "federation" / "cli"
    siblings = {f"federation.cli.{p.stem}" for p in cli.glob("*.py")} - {
        "federation.cli.__init__",
        "federation.cli.__main__",
        "federation.cli.entry",
    }
    for path in cli.glob("*.py"):
        if path.name in {"__init__.py", "__main__.py"}:
            continue
        for name in bound(path, "federation.cli"):
            if name == "federation.cli" or name.startswith("federation.cli."):
                module = name if name in siblings else name.rpartition(".")[0]
                assert module in siblings, f"{path.name} imports {name}: only __init__ and __main__ may"
