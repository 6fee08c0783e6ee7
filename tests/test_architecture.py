"""The package's layers point one way, with no cycles, and no command imports another command.

Layers, lowest first: errors/files (usable by all), config, data, training, models, evaluation,
reporting, commands; the top-level helpers (progress, eta, tracking) sit where their imports put
them. Every ``import`` in ``src/leanmae`` is read with ``ast`` (also those inside functions, which
run just as surely), so a wrong arrow fails here before it becomes a tangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "leanmae"

# Lower number = lower layer; a module may import only modules of its own layer or below.
LAYERS: dict[str, int] = {
    "errors": 0,
    "files": 0,
    "safe_csv": 0,
    "progress": 0,
    "config": 1,
    "data": 2,
    "tracking": 3,
    "training": 3,
    "models": 4,
    "evaluation": 5,
    "eta": 5,
    "reporting": 6,
    "commands": 7,
    "cli": 8,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of ``leanmae.X...``: its first part below the package."""
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 else LAYERS["cli"]


def imports_of(source: str, modules: set[str]) -> set[str]:
    """The leanmae modules a module's source imports.

    ``from leanmae.a import b`` counts ``leanmae.a.b`` when b is a module, else ``leanmae.a``.
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("leanmae")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("leanmae"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def graph_of(sources: dict[str, str]) -> dict[str, set[str]]:
    modules = set(sources)
    return {name: imports_of(text, modules) - {name} for name, text in sources.items()}


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a higher layer. ``import leanmae`` is the public API: its
    commands load on first call, so a command may call another through it (``leanmae.split``)."""
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if b != "leanmae" and a != "leanmae" and layer(b) > layer(a)
    )


def command_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        for b in targets
        if a.startswith("leanmae.commands.") and b.startswith("leanmae.commands.")
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (depth-first search; each cycle reported once as a path)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == "leanmae":
                continue
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return graph_of(package_sources())


def test_every_module_belongs_to_a_layer(graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if m != "leanmae" and m.split(".")[1] not in LAYERS)
    assert not unplaced, f"give these modules a layer in LAYERS (and docs/architecture.md): {unplaced}"


def test_no_module_imports_a_module_of_a_higher_layer(graph: dict[str, set[str]]) -> None:
    assert upward_imports(graph) == []


def test_there_are_no_import_cycles_between_modules(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_no_command_module_imports_another_command_module(graph: dict[str, set[str]]) -> None:
    assert command_imports(graph) == []


def test_the_checks_catch_an_upward_import_a_cycle_and_a_command_importing_a_command() -> None:
    """The rules themselves must be able to fail: fed a bad import of each kind, each one reports it."""
    sources = package_sources()
    sources["leanmae.data.split"] += "\nfrom leanmae.reporting.plots import save_figure\n"
    sources["leanmae.data.decode"] += "\nfrom leanmae.data.split import SPLITS\n"
    sources["leanmae.commands.demo"] += "\nfrom leanmae.commands.study import study\n"
    bad = graph_of(sources)
    assert "leanmae.data.split -> leanmae.reporting.plots" in upward_imports(bad)
    assert any({"leanmae.data.decode", "leanmae.data.split"} <= set(cycle) for cycle in cycles(bad))
    assert command_imports(bad) == ["leanmae.commands.demo -> leanmae.commands.study"]
