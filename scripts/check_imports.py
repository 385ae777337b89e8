"""Fail when modules of the project import each other in a circle, directly or through others
(at module level or inside a function), or when a module uses another module's private names
(``from x import _name``, ``Imported._name``). Run by `make lint`; import-linter checks the layers."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pruning", "experiments", "analysis")


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm). A package's
    own ``__init__`` importing its modules is not counted: a module that imports a sibling through
    the package (``from pkg import sibling``) would otherwise always close a circle."""
    modules = sorted(graph.modules)
    edges = {
        m: sorted(
            d
            for d in graph.find_modules_directly_imported_by(m)
            if d in graph.modules and not (d != m and m.startswith(d + "."))
        )
        for m in modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(root: str) -> None:  # iterative, so deep graphs do not hit the recursion limit
        work = [(root, iter(edges[root]))]
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
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return cycles


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """``file:line name`` for each private name this file takes from another project module:
    imported by name, or read as an attribute of a name it imported from the project."""
    tree = ast.parse(path.read_text(), str(path))
    imported: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"{path}:{node.lineno} imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in PACKAGES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in imported:
                found.append(f"{path}:{node.lineno} reads {ast.unparse(node)}")
    return found


def main() -> int:
    sys.path.insert(0, str(ROOT))  # this checkout's packages, whatever is installed
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    cycles = import_cycles(graph)
    for component in cycles:
        print("import circle: " + " <-> ".join(component), file=sys.stderr)
    private = [
        use for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py")) for use in private_uses(path)
    ]
    for use in private:
        print("private name used across modules: " + use, file=sys.stderr)
    if cycles:
        print(f"{len(cycles)} import circle(s): move the shared code into a module both can import", file=sys.stderr)
    if private:
        print(f"{len(private)} private name(s) used across modules: make them public or move them", file=sys.stderr)
    if cycles or private:
        return 1
    print(f"no import circles among {len(graph.modules)} modules, no private names used across them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
