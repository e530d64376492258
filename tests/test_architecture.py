"""The dependency direction of the tree: agents -> federation; the core imports no I/O."""

from __future__ import annotations

import ast
import re
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


# --- parts and the arrows between them ------------------------------------------------------------

PARTS: dict[str, str] = {  # module (or package) -> the part it belongs to; the longest prefix wins
    "federation.errors": "vocabulary",
    "federation.resources": "vocabulary",
    "federation.subjects": "vocabulary",
    "federation.schemas": "vocabulary",
    "federation.identity": "vocabulary",
    "federation.tasks": "support",
    "federation.cpupolicy": "support",
    "federation.tracing": "support",
    "federation.logs": "support",
    "federation.failpoints": "support",
    "federation.metrics": "support",
    "federation.core": "core",
    "federation.inputs": "inputs",
    "federation.bus": "bus",
    "federation.config": "config",
    "federation.audit": "audit",
    "federation.scheduler": "scheduler",
    "federation.ops": "ops",
    "federation.client": "client",
    "federation.cli": "cli",
    "federation.console": "console",
    "federation.campaign": "campaign",
    "agents": "agents",
}
# what each part may import (besides itself): the arrows of docs/architecture.md
MAY_IMPORT: dict[str, set[str]] = {
    "vocabulary": {"vocabulary"},
    "support": {"vocabulary"},
    "core": {"vocabulary"},
    "inputs": {"vocabulary", "core"},
    "bus": {"vocabulary", "support"},
    "config": {"vocabulary", "core"},
    "audit": {"vocabulary", "support", "core", "inputs", "bus"},
    "scheduler": {"vocabulary", "support", "core", "inputs", "bus", "config", "ops"},
    "ops": {"vocabulary", "support", "bus", "config"},
    "client": {"vocabulary", "support", "core", "bus", "config", "audit"},
    # `fed` starts every daemon: `fed scheduler` and `fed agent` import them (nothing else imports agents)
    "cli": {"vocabulary", "support", "core", "bus", "config", "audit", "scheduler", "ops", "client"}
    | {"agents", "console"},
    "console": {"vocabulary", "support", "core", "bus", "config", "audit", "client"},
    "campaign": {"vocabulary", "support", "bus", "config", "ops", "client"},
    "agents": {"vocabulary", "support", "bus", "config"},
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in ("federation", "agents"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def edges() -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in it, type-checking imports included)."""
    known = modules()
    out: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for bound_name in bound(path, package):
            while bound_name and bound_name not in known:
                bound_name = bound_name.rpartition(".")[0]
            if bound_name and bound_name != name:
                targets.add(bound_name)
        out[name] = targets
    return out


def part(module: str) -> str:
    best = max((p for p in PARTS if module == p or module.startswith(p + ".")), key=len, default="")
    assert best, f"{module} belongs to no part: add it to PARTS (and to docs/architecture.md)"
    return PARTS[best]


def test_dependencies_point_one_way() -> None:
    wrong = []
    for module, targets in sorted(edges().items()):
        if module in ("federation", "agents"):
            continue  # the packages' own __init__ files import nothing
        mine = part(module)
        for target in sorted(targets):
            theirs = part(target)
            if theirs != mine and theirs not in MAY_IMPORT[mine]:
                wrong.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert wrong == []


def test_the_architecture_doc_draws_these_arrows() -> None:
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \|$", (ROOT / "docs" / "architecture.md").read_text(), re.M)
    drawn = {name: set(re.findall(r"\w+", imports)) - {"nothing", "imports"} for name, imports in rows}
    drawn.pop("part", None)  # the table's header
    assert drawn == {name: allowed - {name} for name, allowed in MAY_IMPORT.items()}


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = edges()
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_architecture_doc_names_real_code() -> None:
    # every `Name.attribute` in docs/architecture.md is a method or attribute of a class of that
    # name, or a function or class of a module of that name: the map follows the code as it moves
    classes: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    module_names: dict[str, set[str]] = {}
    for path in [*(ROOT / "federation").rglob("*.py"), *(ROOT / "agents").rglob("*.py")]:
        tree = ast.parse(path.read_text())
        top = module_names.setdefault(path.stem, set())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                top.add(node.name)
            if isinstance(node, ast.ClassDef):
                members = classes.setdefault(node.name, set())
                bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        members.add(item.name)

    def members_of(name: str) -> set[str]:  # with what the class inherits from the project's classes
        return classes.get(name, set()).union(*(members_of(base) for base in bases.get(name, [])))

    text = (ROOT / "docs" / "architecture.md").read_text()
    references = re.findall(r"`(?:[\w/]+\.py:)?([A-Za-z_]\w*)\.([A-Za-z_]\w*)`", text)
    assert len(references) > 20
    unknown = [
        f"{owner}.{name}"
        for owner, name in references
        if name != "py" and name not in members_of(owner) | module_names.get(owner, set())
    ]
    assert unknown == [], "docs/architecture.md names what the code does not have"
