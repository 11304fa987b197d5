"""The layout rules of the code base (ARCHITECTURE.md), checked on the source itself:
imports run one way with no circle, functions stay short, each folder's file names have one
owner, epsilon is computed in one function, and tests follow the source."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from covidct.runs import Run, SweepFolder
from data_prep.prepared import PrepFolder

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("data_prep", "covidct", "app")  # each may import only those before it
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = {("covidct.cli", "build_parser")}  # the argument-parser table


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _imports(name: str) -> Iterator[str]:
    """Every module ``name`` imports, at the top or inside a function."""
    is_package = MODULES[name].name == "__init__.py"
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES else base


def _own(target: str) -> str | None:
    """The module of ours that ``target`` names (a submodule, or the package above it)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name in MODULES:
        for target in _imports(name):
            own = _own(target)
            if own is not None and own != name:
                edges[name].add(own)
    return edges


def test_imports_run_one_way_and_data_prep_never_imports_tensorflow():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        (a, b)
        for a, targets in _graph().items()
        for b in targets
        if rank[b.split(".")[0]] > rank[a.split(".")[0]]
    ]
    assert upward == []
    heavy = {
        name
        for name in MODULES
        if name.startswith("data_prep")
        for target in _imports(name)
        if target.split(".")[0] in ("tensorflow", "keras", "tf_keras", "covidct")
    }
    assert heavy == set()


def test_the_import_graph_has_no_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_no_function_is_longer_than_80_lines():
    long = [
        (name, node.name, node.end_lineno - node.lineno + 1)  # type: ignore[operator]
        for name, tree in TREES.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES  # type: ignore[operator]
        and (name, node.name) not in LONG_FUNCTIONS_ALLOWED
    ]
    assert long == []
    assert len(MODULES["covidct.train"].read_text().splitlines()) <= 300


def _file_names(cls: type) -> set[str]:
    names: set[str] = set()
    for key, value in vars(cls).items():
        if key.isupper():
            names.update(value if isinstance(value, tuple) else [value])
    return {n for n in names if "." in n}  # file names (folder names double as JSON keys)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _literals(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node.lineno, node.value


def test_each_folders_file_names_are_written_in_its_one_owner():
    owners = {
        "covidct/runs.py": _file_names(Run) | _file_names(SweepFolder),
        "data_prep/prepared.py": _file_names(PrepFolder),
    }
    assert all(owners.values())
    found = []
    files = [p for d in (*LAYERS, "benchmarks", "tools") for p in (ROOT / d).rglob("*.py")]
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        for lineno, text in _literals(path):
            for owner, names in owners.items():
                hits = [n for n in names if re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w-])", text)]
                if hits and rel != owner:
                    found.append(f"{rel}:{lineno} {hits}")
    assert found == []


def test_epsilon_is_computed_in_one_function():
    calls = []
    for name, tree in TREES.items():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("get_epsilon", "compute_epsilon")
                    and not (
                        isinstance(node.func.value, ast.Name) and node.func.value.id == "accounting"
                    )
                ):
                    calls.append((name, fn.name, node.func.attr))
    assert {(m, f) for m, f, _ in calls} == {("covidct.privacy.accounting", "_epsilons_composed")}


def test_every_module_with_logic_has_its_test_file():
    """tests/<package>/test_<module>.py for each module with a function or method of its own
    (enums, settings tables and error classes need none)."""
    missing = []
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            continue
        has_logic = any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(TREES[name])
        )
        parts = path.relative_to(ROOT).parts
        test = ROOT / "tests" / Path(*parts[:-1]) / f"test_{parts[-1]}"
        if has_logic and not test.is_file():
            missing.append(test.relative_to(ROOT).as_posix())
    assert missing == []
