"""The import direction of DEVELOPERS.md: outer packages import the `drivetune` core, never the reverse (only
`drivetune/cli.py` may import everything); `rollout_workers` and `services` never import `trainer`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUTER = ("rollout_workers", "trainer", "cluster", "services")
FORBIDDEN = {
    "drivetune": set(OUTER),
    "rollout_workers": {"trainer", "cluster", "services"},
    "services": {"trainer", "cluster"},
    "trainer": {"cluster", "services", "rollout_workers"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package):
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        if path == REPO / "drivetune" / "cli.py":
            continue
        wrong = _imported_packages(path) & FORBIDDEN[package]
        if wrong:
            bad.append(f"{path.relative_to(REPO)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


def test_modules_stay_small():
    big = [f"{p.relative_to(REPO)}: {n} lines" for p in sorted(REPO.glob("*/**/*.py"))
           if ".venv" not in p.parts and (n := len(p.read_text().splitlines())) > 450]
    assert not big, "split these modules:\n" + "\n".join(big)
