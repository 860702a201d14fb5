"""The import direction of DEVELOPERS.md: outer packages import the `drivetune` core, never the reverse; the command
modules (`drivetune/commands/`, dispatched by `drivetune/cli.py`) are the one face that may import everything, and no
library imports them; `rollout_workers` and `services` never import `trainer`; no two modules import each other, even
through a chain or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUTER = ("rollout_workers", "trainer", "cluster", "services")
PACKAGES = ("drivetune", *OUTER)
FORBIDDEN = {
    "drivetune": set(OUTER),
    "rollout_workers": {"trainer", "cluster", "services"},
    "services": {"trainer", "cluster"},
    "trainer": {"cluster", "services", "rollout_workers"},
}
COMMANDS = REPO / "drivetune" / "commands"
CLI = REPO / "drivetune" / "cli.py"


def _is_command(path: Path) -> bool:
    return path == CLI or COMMANDS in path.parents


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module of ours that `path` imports, at the top or inside a function (`from pkg import sub` counts as
    importing `pkg.sub` when that is a module)."""
    name, found = _module_name(path), set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found |= {f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names}
    return {m for m in found if m in MODULES and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        if _is_command(path):
            continue
        wrong = {m.split(".")[0] for m in _imports(path)} & FORBIDDEN[package]
        if wrong:
            bad.append(f"{path.relative_to(REPO)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


def test_no_library_imports_the_command_line():
    bad = [f"{name} imports {sorted(cmd)}" for name, path in MODULES.items() if not _is_command(path)
           and (cmd := {m for m in _imports(path) if m == "drivetune.cli" or m.startswith("drivetune.commands")})]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_every_command_module_is_in_the_command_table():
    from drivetune.cli import COMMANDS as TABLE

    listed = {module for module, _ in TABLE.values()}
    helpers = {"drivetune.commands", "drivetune.commands.common"}
    assert {_module_name(p) for p in COMMANDS.glob("*.py")} - helpers == listed


def test_modules_stay_small():
    big = [f"{p.relative_to(REPO)}: {n} lines" for p in sorted(REPO.glob("*/**/*.py"))
           if ".venv" not in p.parts and (n := len(p.read_text().splitlines())) > 450]
    assert not big, "split these modules:\n" + "\n".join(big)
