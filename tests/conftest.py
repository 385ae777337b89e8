import os
from pathlib import Path

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


# `make test` runs the tests marked `parallel` on two workers (pytest-xdist), then the rest alone:
# library and analysis tests that time nothing run side by side; the pipeline tests (their own
# processes, sweeps, DDP) and every test that times code run with the machine to themselves.
PARALLEL_DIRS = ("pruning", "analysis")
TIMING_FILES = {
    "test_compress.py",
    "test_latency.py",
    "test_latency_prune.py",
    "test_latency_table.py",
    "test_measure.py",
    "test_sparse.py",
}


def pytest_collection_modifyitems(config, items):
    import pytest

    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        try:
            top = path.relative_to(tests).parts[0]
        except ValueError:
            continue
        if top in PARALLEL_DIRS and path.name not in TIMING_FILES:
            item.add_marker(pytest.mark.parallel)
