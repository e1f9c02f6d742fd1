"""The house rules of the package, read from its source: floors that only import downwards, no import
circle (imports inside functions count), small modules and functions, no private name imported from
another module, and a README structure section that lists every floor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tumorlib"
README = PACKAGE.parent / "README.md"

# Bottom floor first; a module may import from its own floor and the floors before it.
FLOORS = ("core", "io", "data", "nn", "inference", "training", "evaluation", "viz", "benchmarks", "app")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_LOOSE_MODULES = 4  # top-level modules besides the package's __init__


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every tumorlib import in a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "tumorlib"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "tumorlib":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (base, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for mod, _, _ in _imports(name, path):
            while mod not in MODULES and "." in mod:
                mod = mod.rpartition(".")[0]
            targets.add(mod)
        graph[name] = targets - {name}
    return graph


def _floor(name: str) -> int | None:
    parts = name.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else None


def test_every_module_lives_on_a_floor():
    loose = [n for n in MODULES if n != "tumorlib" and _floor(n) is None]
    assert len(loose) <= MAX_LOOSE_MODULES, f"loose top-level modules: {loose}"
    assert all(n.count(".") == 1 for n in loose), f"folders outside the floors: {loose}"


def test_imports_point_down_only():
    upward = []
    for name, targets in _graph().items():
        here = _floor(name)
        if here is None:
            continue
        upward += [f"{name} -> {t}" for t in targets if (_floor(t) is not None and _floor(t) > here)]
    assert not upward, "imports that point up a floor:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
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
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_modules_are_small():
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items()}
    assert not {n: k for n, k in big.items() if k > MAX_MODULE_LINES}, "modules over the limit"


def test_functions_are_short():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert not long, "functions over the limit:\n" + "\n".join(long)


def test_no_private_name_crosses_modules():
    private = [f"{name}:{line} imports {mod}.{what}" for name, path in MODULES.items()
               for mod, what, line in _imports(name, path)
               if what and what.startswith("_") and not what.startswith("__")]
    assert not private, "private names imported from another module:\n" + "\n".join(private)


def test_readme_structure_lists_every_floor():
    section = README.read_text().split("## Project structure", 1)[1].split("\n## ", 1)[0]
    present = [f for f in FLOORS if (PACKAGE / f).is_dir()]
    missing = [f for f in present if f"{f}/" not in section]
    assert not missing, f"README structure section does not list: {missing}"


@pytest.mark.parametrize("floor", [f for f in FLOORS if (PACKAGE / f).is_dir()])
def test_floor_has_a_docstring(floor):
    assert ast.get_docstring(ast.parse((PACKAGE / floor / "__init__.py").read_text())), floor
