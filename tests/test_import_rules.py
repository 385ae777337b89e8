"""The import rules `make lint` enforces: no import circles, no private names across modules,
and the library's layout (its top level stays small; every namespace imports)."""

import importlib
import pathlib
import sys

import grimp

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_imports  # noqa: E402


def graph(edges):
    g = grimp.ImportGraph()
    for a, b in edges:
        g.add_import(importer=a, imported=b)
    return g


def test_import_cycles_finds_circles_through_other_modules_and_ignores_package_inits():
    g = graph([("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a"), ("p.x.y", "p.x"), ("p.x", "p.x.y")])
    assert check_imports.import_cycles(g) == [["p.a", "p.b", "p.c"]]
    assert check_imports.import_cycles(graph([("p.a", "p.b"), ("p.b", "p.c")])) == []


def test_private_uses_names_imports_and_attribute_reads(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "from pruning.measure import _hidden, count\n"
        "import pruning\n"
        "from experiments.strategies.filters import FilterPruning\n"
        "def g(self):\n"
        "    FilterPruning._needs_scan(self)\n"
        "    pruning.measure._x\n"
        "    self._own\n"
        "    count.__name__\n"
    )
    uses = check_imports.private_uses(f)
    assert sorted(u.split(" ", 1)[1] for u in uses) == [
        "imports pruning.measure._hidden",
        "reads FilterPruning._needs_scan",
        "reads pruning.measure._x",
    ]


def test_the_project_has_no_import_circles_or_private_access():
    g = grimp.build_graph(*check_imports.PACKAGES, cache_dir=None)
    assert check_imports.import_cycles(g) == []
    uses = [
        u
        for p in check_imports.PACKAGES
        for f in sorted((ROOT / p).rglob("*.py"))
        for u in check_imports.private_uses(f)
    ]
    assert uses == []


def test_pruning_top_level_is_small_and_every_namespace_imports():
    modules = sorted(p.stem for p in (ROOT / "pruning").glob("*.py"))
    assert len(modules) <= 10, modules
    import pruning

    for name in ("criteria", "graph", "structured", "latency", "unstructured", "compress", "measure", "schedules"):
        assert importlib.import_module(f"pruning.{name}") is getattr(pruning, name)
    for name in pruning.__all__:
        assert hasattr(pruning, name), name
