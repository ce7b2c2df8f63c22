"""No import cycle inside moda_lab and moda_kernels.

The graph: one node per module, an edge for every import that runs when the module is first imported (its
module-level statements, class bodies and if/try/with blocks included; imports under ``if TYPE_CHECKING:`` never
run and are left out). A second check adds the imports inside functions: one moved there to dodge a cycle still
ties the two modules together. ``from x import y`` is an edge to x and, where y is a submodule, to x.y;
importing a.b.c also runs the packages a.b and a, except those the importer is already inside. In a cycle, which
module is imported first decides which one sees the other half-initialised (an ImportError on a name, or a
function-level import added to hide it); the lower module should own what both need.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("moda_lab", "moda_kernels")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package is its __init__.py)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nested(node: ast.stmt) -> list[ast.stmt]:
    """The statements of the blocks inside a statement (if/else, try/except/finally, with, for, class, def, match)."""
    out = []
    for name in ("body", "orelse", "finalbody", "handlers", "cases"):
        for item in getattr(node, name, []):
            out += item.body if isinstance(item, ast.excepthandler | ast.match_case) else [item]
    return out


def imports_of(body: list[ast.stmt], lazy: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements run when a module with this body is imported; with ``lazy``, those inside its
    functions too (never those under ``if TYPE_CHECKING:``, which never run)."""
    found = []
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            found += imports_of(node.orelse, lazy)
        elif lazy or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += imports_of(_nested(node), lazy)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(modules: dict[str, Path], lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` that importing it runs first (see the module docstring); with ``lazy``,
    also those its functions import."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in imports_of(ast.parse(path.read_text(), filename=str(path)).body, lazy):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
        inside = {*_ancestors(name), name}
        edges = {m for t in targets for m in (*_ancestors(t), t) if m in modules and m not in inside}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first == last) per strongly connected group of modules, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_cycle_through(graph, set(group), group[0]) for group in groups)


def _cycle_through(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest path start -> ... -> start inside the group (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        reached = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parent:
                    parent[nxt] = node
                    reached.append(nxt)
        frontier = reached
    raise AssertionError(f"{start} is in a strongly connected group without a cycle through it")


def _cycles_text(cycles: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in cycles)


def test_moda_lab_and_moda_kernels_have_no_import_cycle():
    modules = module_files(ROOT, PACKAGES)
    assert "moda_lab.model.config" in modules and "moda_kernels.moda.naive" in modules
    cycles = find_cycles(import_graph(modules))
    assert not cycles, f"import cycles: {_cycles_text(cycles)}"


def test_no_cycle_hides_behind_an_import_inside_a_function():
    """An import moved into a function to dodge a cycle still ties the two modules together (issue 31:
    model.config imported model.mixers inside a function, eval.evaluate imported eval.lm)."""
    cycles = find_cycles(import_graph(module_files(ROOT, PACKAGES), lazy=True))
    assert not cycles, f"import cycles through imports inside functions: {_cycles_text(cycles)}"


def test_the_check_finds_a_cycle_and_leaves_out_function_and_type_checking_imports(tmp_path):
    files = {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "from typing import TYPE_CHECKING\nfrom . import b\nA = 1\nif TYPE_CHECKING:\n    from .d import D\n",
        "pkg/b.py": "try:\n    from pkg.sub import c\nexcept ImportError:\n    pass\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "class C:\n    from ..a import A\n",
        "pkg/d.py": "def f():\n    from . import a\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    modules = module_files(tmp_path, ("pkg",))
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}
    assert graph["pkg.d"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert import_graph(modules, lazy=True)["pkg.d"] == {"pkg.a"}
    (tmp_path / "pkg/sub/c.py").write_text("def g():\n    from ..a import A\n")
    assert find_cycles(import_graph(modules)) == []
    assert find_cycles(import_graph(modules, lazy=True)) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_attention_stats_reads_the_run_data_and_writes_figures_through_lower_modules():
    """eval/attention_stats.py reads a run's data through moda_lab.rundata and writes its figure through
    moda_lab.figures, not through the training entry (train.task) or the sweep figures (analysis.plots)."""
    graph = import_graph(module_files(ROOT, PACKAGES), lazy=True)
    imported = graph["moda_lab.eval.attention_stats"]
    assert {"moda_lab.rundata", "moda_lab.figures"} <= imported
    assert not imported & {"moda_lab.train.task", "moda_lab.analysis.plots"}
