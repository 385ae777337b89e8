"""pruning/ is pure PyTorch: it never imports Hydra, OmegaConf, Lightning or W&B."""

import ast
import pathlib

FORBIDDEN = {"hydra", "omegaconf", "lightning", "pytorch_lightning", "wandb"}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def imported_top_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_pruning_imports_no_framework_glue():
    files = sorted((ROOT / "pruning").rglob("*.py"))
    assert files, "pruning/ has no modules"
    leaks = {str(f.relative_to(ROOT)): sorted(imported_top_modules(f) & FORBIDDEN) for f in files}
    assert {f: m for f, m in leaks.items() if m} == {}


def test_analysis_does_not_import_experiments():
    for f in (ROOT / "analysis").rglob("*.py"):
        assert "experiments" not in imported_top_modules(f), f
