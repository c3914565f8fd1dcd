"""The structure the design promises, checked on the source: no import cycles, arrows only
down the layer table, one error root, short functions, one CLI error path."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import prunetune.errors as errors

ROOT = Path(__file__).resolve().parents[1]
# Import name -> folder (pyproject's package-dir).
PACKAGES = {"prunetune": "prunetune", "prunetune.orchestrator": "orchestrator",
            "prunetune.search_spaces": "search_spaces", "prunetune.trainers": "trainers",
            "prunetune.kernels": "kernels"}
# The layers of docs/ARCHITECTURE.md: a part may import the parts listed for it.
MAY_IMPORT = {
    "prunetune.search_spaces": {"prunetune"},
    "prunetune.kernels": {"prunetune"},
    "prunetune.trainers": {"prunetune", "prunetune.search_spaces", "prunetune.kernels"},
    "prunetune.orchestrator": {"prunetune", "prunetune.search_spaces", "prunetune.kernels",
                               "prunetune.trainers"},
    "prunetune": set(),
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts
                     if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "prunetune" and parts and ".".join(["prunetune", parts[0]]) in PACKAGES:
                continue
            out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules of the package `name` imports anywhere in its file (functions and
    TYPE_CHECKING blocks included: a lazy import is still a dependency)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


def _part(module: str) -> str:
    for package in sorted(PACKAGES, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    raise AssertionError(module)


def test_no_import_cycles() -> None:
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    # Tarjan's strongly connected components: any with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for m, p in MODULES.items():
        part = _part(m)
        for target in _imports(m, p):
            other = _part(target)
            if other != part and other not in MAY_IMPORT[part]:
                wrong.append(f"{m} imports {target}")
    assert not wrong, wrong


def _definitions(kinds: tuple[type, ...]):
    """(module, node) for every node of the given kinds in the package's source."""
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, kinds):
                yield m, node


def test_no_function_over_80_lines() -> None:
    long = [f"{m}.{n.name}: {n.end_lineno - n.lineno + 1} lines"
            for m, n in _definitions((ast.FunctionDef, ast.AsyncFunctionDef))
            if n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_every_error_class_has_the_one_root() -> None:
    roots = [f"{m}.{n.name}" for m, n in _definitions((ast.ClassDef,))
             if n.name.endswith("Error")]
    # Every error class is defined in prunetune.errors (and re-exported where it is raised).
    assert all(r.startswith("prunetune.errors.") for r in roots), roots
    for name, obj in inspect.getmembers(errors, inspect.isclass):
        if name.endswith("Error"):
            assert issubclass(obj, errors.PrunetuneError), name


@pytest.mark.parametrize("module", ["cli", "cli_cluster", "cli_engine", "cli_common"])
def test_cli_keeps_no_list_of_error_types(module: str) -> None:
    text = (ROOT / "orchestrator" / f"{module}.py").read_text()
    assert "except (" not in text
