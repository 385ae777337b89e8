import os
from pathlib import Path

os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")


# `make test` runs the tests marked `parallel` on two workers (pytest-xdist), then the rest alone:
# every test runs side by side (a sweep on the basic launcher is one process, one thread) except
# those that time code (the files in ALONE_FILES, tests marked `alone`) or keep both cores busy
# themselves (joblib workers, DDP ranks, runs started together: marked `alone`), which run with the
# machine to themselves. Each worker runs torch, and the processes it starts, on one thread.
ALONE_FILES = {
    "test_compress.py",
    "test_latency.py",
    "test_latency_prune.py",
    "test_latency_table.py",
    "test_measure.py",
    "test_sparse.py",
    "test_bench_structured.py",
    "test_deploy.py",
    "test_latency_policy.py",
    "test_launchers.py",
}

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import pytest

    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if tests in path.parents and path.name not in ALONE_FILES and not item.get_closest_marker("alone"):
            item.add_marker(pytest.mark.parallel)
