"""docs/architecture.md stays true to the code: every repository path it names in backticks exists, every
`file.py:name` (or `file.py::name`) names a function, class, method or module-level name defined in that file, its
relative links resolve, its import table says what tests/unit/test_layout.py enforces, and the metric names it gives
the RL phases are the ones the driver and learner write. Plain file reading and `ast`: no Ray, no imports of ours."""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
# Top-level entries of the repository: a backticked span starting with one of these is read as a path.
TOP = {"drivetune", "rollout_workers", "trainer", "cluster", "services", "deploy", "tests", "bench", "configs", "docs",
       "scripts", "base"}
FILE_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".sh")  # not .json / .jsonl: run-directory files
SPAN = re.compile(r"`([^`\n]+)`")
REFERENCE = re.compile(r"^(?P<path>[A-Za-z0-9_./-]+?)(?:::?(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?$")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _is_path(path: str) -> bool:
    return path.endswith(FILE_SUFFIXES) or path.split("/")[0] in TOP and "/" in path


@lru_cache(maxsize=None)
def _definitions(path: Path) -> frozenset[str]:
    """Names defined in a Python file: top-level functions, classes and assigned names, and `Class.member` for the
    methods, nested classes and class attributes of its classes (nested to any depth)."""
    found: set[str] = set()

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found.add(prefix + node.name)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found.update(prefix + t.id for t in targets if isinstance(t, ast.Name))

    visit(ast.parse(path.read_text(), filename=str(path)).body, "")
    return frozenset(found)


def references(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(paths, (file, name) pairs) named in the backticked spans of a markdown text."""
    paths, symbols = [], []
    for span in SPAN.findall(text):
        m = REFERENCE.match(span.strip())
        if m is None or not _is_path(m["path"]):
            continue
        paths.append(m["path"])
        if m["name"]:
            symbols.append((m["path"], m["name"]))
    return paths, symbols


def problems(text: str, root: Path = REPO, doc_dir: Path = DOC.parent) -> list[str]:
    """Everything in `text` that does not match the repository at `root`."""
    out = []
    paths, symbols = references(text)
    out += [f"`{p}` does not exist" for p in dict.fromkeys(paths) if not (root / p).exists()]
    for path, name in dict.fromkeys(symbols):
        file = root / path
        if not path.endswith(".py"):
            out.append(f"`{path}:{name}`: only Python files have names")
        elif file.is_file() and name not in _definitions(file):
            out.append(f"`{path}:{name}`: {name} is not defined in {path}")
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and "://" not in target and not (doc_dir / target).exists():
            out.append(f"link ({target}) does not resolve from {doc_dir.relative_to(root)}")
    return out


def import_table(text: str) -> dict[str, set[str]]:
    """Package -> the packages its row of the import table says it never imports (rows of the table whose header
    has a "Never imports" column)."""
    rows: dict[str, set[str]] = {}
    column = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            column = None
        elif column is None:
            column = cells.index("Never imports") if "Never imports" in cells else -1
        elif column >= 0 and not set(cells[0]) <= set("-: "):
            names = SPAN.findall(cells[0])
            if names and "/" not in names[0]:
                rows[names[0]] = set(SPAN.findall(cells[column]))
    return rows


def _layout_rules() -> dict[str, set[str]]:
    spec = importlib.util.spec_from_file_location("_layout_rules", REPO / "tests" / "unit" / "test_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: set(v) for k, v in module.FORBIDDEN.items()}


def test_every_path_and_name_exists():
    text = DOC.read_text()
    paths, symbols = references(text)
    assert len(set(paths)) >= 40 and len(set(symbols)) >= 40, "the map names too few files and functions to check"
    assert not problems(text), "\n".join(problems(text))


def test_the_checker_catches_wrong_references():
    text = ("`trainer/learnr.py`, `trainer/learner.py:Learner.fly`, `trainer/learner.py:no_such_function`, "
            "`drivetune/commands/nothing/`, `docs/missing.md`, [x](nowhere.md), `configs/serve.yaml:key`")
    found = problems(text)
    assert len(found) == 7, found
    good = ("`trainer/learner.py:Learner.update`, `trainer/rewards.py::RewardConfig`, `drivetune/rollout_config.py:"
            "SAMPLERS`, `drivetune/commands/`, `metrics.jsonl`, `x-session-id`, `/v1/sessions`, [a](algorithms.md)")
    assert problems(good) == []
    assert references(good)[1] == [("trainer/learner.py", "Learner.update"), ("trainer/rewards.py", "RewardConfig"),
                                   ("drivetune/rollout_config.py", "SAMPLERS")]


def test_import_table_matches_the_layout_test():
    rules, table = _layout_rules(), import_table(DOC.read_text())
    assert {k: v for k, v in table.items() if v} == rules
    assert set(table) >= {"drivetune", "rollout_workers", "trainer", "services", "cluster"}
    assert import_table("| Package | Never imports |\n|---|---|\n| `trainer` | `cluster` |") == {"trainer": {"cluster"}}


def test_phase_metrics_are_written_by_the_loop():
    source = "".join((REPO / p).read_text() for p in ("cluster/rft.py", "trainer/learner.py"))
    named = set(re.findall(r"`(seconds_\w+)`", DOC.read_text()))
    assert {"seconds_broadcast", "seconds_rollout", "seconds_reward_worker", "seconds_advantage", "seconds_reference",
            "seconds_update", "seconds_eval", "seconds_checkpoint"} <= named
    missing = sorted(n for n in named if not re.search(rf"\b{n}\b", source))
    assert not missing, f"docs/architecture.md names metrics the RL loop does not write: {missing}"
