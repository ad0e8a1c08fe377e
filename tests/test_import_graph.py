"""The package's modules import each other in one direction: an import cycle, even one deferred into a
function, fails here (train/ reads options -> assembly -> loop -> outputs, docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import uld

SOURCE = Path(uld.__file__).parent


def _module_name(path: Path, source: Path) -> str:
    parts = path.relative_to(source.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its body (top level, functions, TYPE_CHECKING
    blocks aside: those never run). `from a import b` counts a.b when that is a module, else a."""
    modules = {_module_name(path, source): path for path in source.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                    and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING") for node in ast.walk(block)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(tree):
            if id(node) in checking:
                continue
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                edges |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of more than one module.

    A package importing its own submodules and those importing the package's other submodules is not a
    cycle of this kind: an edge into a package's __init__ from its own submodule is left out, since Python
    runs the __init__ first and the submodule finds it loaded.
    """
    def within(module: str, package: str) -> bool:
        return module.startswith(package + ".")

    edges = {a: {b for b in bs if not within(a, b)} for a, bs in graph.items()}
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_cycles_are_found_also_through_imports_inside_functions(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def later():\n    from pkg.c import x\n")
    (package / "c.py").write_text("from . import a\nx = 1\n")
    found = cycles(import_graph(package))
    assert found == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\nx = 1\n")
    assert cycles(import_graph(package)) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "uld.train.trainer" in graph["uld.train.run"]  # deferred and top-level imports are both read
    assert cycles(graph) == []
