"""The package's layout: no import cycle between clbench's modules (imports inside functions
included; ``if TYPE_CHECKING:`` imports, which never run, excluded), and no private name
(``_name``) used from another module. Read from the sources with ``ast``: nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: pyproject's package-dir: import name -> folder
PACKAGES = {"clbench": "bench", "clbench.plugins": "plugins", "clbench.strategies": "strategies",
            "clbench.tasks": "tasks", "clbench.results": "results"}


def modules() -> dict[str, Path]:
    """Every clbench module by its import name (a package by its ``__init__.py``)."""
    out = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it or None) for each name of an import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    base = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(max(node.level - 1, 0)):
        base = base.rpartition(".")[0]
    source = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
    return [(f"{source}.{a.name}", None) if f"{source}.{a.name}" in MODULES else (source, a.name) for a in node.names]


def _imports(module: str):
    """Every import statement of ``module`` that can run (``if TYPE_CHECKING:`` blocks skipped)."""
    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for c in child.orelse:
                    yield from walk(c)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            yield from walk(child)

    return list(walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))))


def import_graph() -> dict[str, set[str]]:
    return {m: {t for node in _imports(m) for t, _ in _targets(m, node) if t in MODULES and t != m} for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_modules_are_found():
    assert {"clbench.cell", "clbench.config", "clbench.host", "clbench.results.report", "clbench.tasks.base",
            "clbench.strategies.ewc", "clbench.plugins.executors", "clbench.models.kernels.flash"} <= set(MODULES)


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert sum(map(len, graph.values())) > 150  # the graph is read (imports inside functions too)
    assert "clbench.models.kernels" in graph["clbench.models.attention"]  # an import inside a function
    assert cycles(graph) == []


def test_no_private_name_crosses_a_module_boundary():
    found = []
    for module in MODULES:
        aliases = {}  # local name -> clbench module it stands for
        for node in _imports(module):
            for (target, name), alias in zip(_targets(module, node), node.names):
                if target in MODULES and target != module:
                    if name is not None and name.startswith("_") and not name.startswith("__"):
                        found.append(f"{module} imports {target}.{name}")
                    elif name is None and (isinstance(node, ast.ImportFrom) or alias.asname):
                        aliases[alias.asname or alias.name] = target  # `from clbench import host`, `import ... as x`
        tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{module} uses {aliases[node.value.id]}.{node.attr}")
    assert found == []
