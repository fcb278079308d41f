"""The import graph of our packages, read from the source (ast): no cycles, one-way layers, no
private names imported across modules.

Every `import` / `from ... import` statement counts, wherever it stands: at module level, under
`if TYPE_CHECKING:`, and inside functions (the deliberate lazy imports of HiGHS / OR-Tools
included), so a cycle cannot hide behind an import placed in a function. Not counted: imports
spelled as strings (importlib.import_module), and the implicit import of a package's __init__
when one of its submodules loads.

Run alone: `python -m pytest -q tests/test_imports.py`; `python tests/test_imports.py` prints the
graph's cycles and violations.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "solvers", "server", "testing", "offline", "workbench", "simulation")
OURS = PACKAGES + ("tests", "benchmarks")

# Layers: a module of the key package must not import from any of the listed packages.
FORBIDDEN = {
    "solvers": ("engine", "server", "tests", "offline"),
    "engine": ("server", "tests", "offline"),
    "offline": ("server", "tests"),
    "workbench": ("server", "tests"),
    "simulation": ("server", "tests"),
    "testing": ("tests",),
    "server": ("tests",),
}

# Known debts: none. (The server.app -> server.startup -> server.supervisor cycle, through the
# worker's deliberately late import of its main, went with server/worker.py.) Never add one.
ALLOWED_CYCLE_MODULES: frozenset[str] = frozenset()
# `from X import _name` across modules, as (importer, imported module, name): none left.
PRIVATE_NAME_ALLOWED: frozenset[tuple[str, str, str]] = frozenset()


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str  # a module of ours
    names: tuple[str, ...]  # names taken with `from imported import ...` (empty for `import`)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of PACKAGES on disk (generated stubs included)."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                out[module_name(path)] = path
    return out


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a `from` import (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(modules: dict[str, Path]) -> list[Edge]:
    """Every import of one of our modules by a module of PACKAGES."""
    edges: list[Edge] = []
    known = set(modules)

    def ours(name: str) -> bool:
        return name.split(".")[0] in OURS

    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if ours(alias.name):
                        edges.append(Edge(importer, alias.name, (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(importer, is_package, node)
                if not ours(target):
                    continue
                plain: list[str] = []
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in known:  # `from package import submodule`
                        edges.append(Edge(importer, sub, (), node.lineno))
                    else:
                        plain.append(alias.name)
                if plain:
                    edges.append(Edge(importer, target, tuple(plain), node.lineno))
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself
    (Tarjan), each sorted; sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth <= number of modules (~100)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def layer_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        top, target = e.importer.split(".")[0], e.imported.split(".")[0]
        if target in FORBIDDEN.get(top, ()):
            out.append(f"{e.importer}:{e.line} imports {e.imported}")
    return sorted(out)


def private_name_imports(edges: list[Edge]) -> set[tuple[str, str, str]]:
    """(importer, module, name) for every `from module import _name` (one leading underscore:
    dunders such as __version__ are public) where module is another module of ours. Private
    modules (`from server import _gen`, `import solvers._highs`) are fine: they are resolved to
    module edges with no names."""
    return {(e.importer, e.imported, n) for e in edges if e.imported != e.importer
            for n in e.names if n.startswith("_") and not n.startswith("__")}


_EDGES: list[Edge] | None = None


def _edges() -> list[Edge]:
    global _EDGES
    if _EDGES is None:
        _EDGES = import_edges(source_files())
    return _EDGES


def test_the_graph_is_read():
    edges = _edges()
    importers = {e.importer for e in edges}
    # a few edges every version of the tree has: the test must not pass on an empty graph
    assert {"engine.portfolio", "solvers.exact.highs_mip", "server.servicer"} <= importers
    assert any(e.importer == "engine.portfolio" and e.imported == "solvers.exact" for e in edges)
    # lazy imports inside functions count: the portfolio's exact solvers are imported there
    lazy = [e for e in edges if e.importer == "engine.portfolio" and "solve_mip" in e.names]
    assert lazy


def test_no_import_cycle_between_modules():
    assert [c for c in cycles(_edges()) if not set(c) <= ALLOWED_CYCLE_MODULES] == []


def test_layers_point_one_way():
    """solvers imports nothing from engine or server, engine nothing from server; no package
    imports the tests."""
    assert layer_violations(_edges()) == []


def test_no_private_name_is_imported_across_modules():
    assert private_name_imports(_edges()) - PRIVATE_NAME_ALLOWED == set()


def test_the_checks_catch_what_they_look_for():
    """The detectors on a made-up graph: a three-module cycle, a self-import, a layer breach
    and a private name, and what they must not flag."""
    e = [Edge("solvers.a", "solvers.b", (), 1), Edge("solvers.b", "solvers.c", ("f",), 1),
         Edge("solvers.c", "solvers.a", (), 1), Edge("engine.x", "engine.x", (), 1),
         Edge("engine.y", "solvers.a", (), 1), Edge("solvers.d", "engine.y", ("_g",), 3),
         Edge("server.z", "solvers._highs", (), 1), Edge("server.z", "solvers.a", ("__all__",), 1)]
    assert cycles(e) == [["engine.x"], ["solvers.a", "solvers.b", "solvers.c"]]
    assert layer_violations(e) == ["solvers.d:3 imports engine.y"]
    assert private_name_imports(e) == {("solvers.d", "engine.y", "_g")}


if __name__ == "__main__":
    graph = _edges()
    print(f"{len(graph)} import edges between {len({e.importer for e in graph})} modules")
    print("cycles:", cycles(graph) or "none")
    print("layer violations:", layer_violations(graph) or "none")
    print("private names:", sorted(private_name_imports(graph)) or "none")
