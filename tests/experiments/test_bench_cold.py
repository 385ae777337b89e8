"""The cold plan-and-cut benchmark: its worker on one tiny model and the summaries it prints
(a smoke test, not a timing test: benchmarks are scripts)."""

import pytest
import torch

pytest.importorskip("torch_pruning")

from experiments.bench import cold_cut  # noqa: E402
from experiments.bench.structured_vs_torch_pruning import (  # noqa: E402
    coverage_markdown,
    medians,
    ratios,
    run_one,
)


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # the worker sets one thread for its whole process


@pytest.mark.parametrize("tool", ["ours", "tp"])
def test_worker_cuts_a_zoo_model(tool, threads):
    row = cold_cut.run(tool, "zoo", "vgg_small", 32, {}, 0.3, 60.0)
    assert row["status"] == "cut", row
    assert row["input"] == 32 and row["seconds"] > 0 and row["cpu_s"] > 0
    assert row["params_after"] < row["params"]


def test_worker_reports_a_timeout(threads):
    row = cold_cut.run("ours", "zoo", "vgg_small", 32, {}, 0.3, 1e-6)
    assert row["status"] == "timeout" and "passed" in row["detail"]


def test_run_one_in_a_fresh_process():
    entry = dict(model="vgg_small", source="zoo", set="torchvision", size=32, kwargs={})
    row = run_one(entry, "ours", 0.3, 60.0)
    assert row["status"] == "cut" and row["tool"] == "ours" and row["set"] == "torchvision"


def _row(model, tool, status, seconds=1.0, cpu=1.0, kind="timm families"):
    return dict(model=model, source="timm", set=kind, tool=tool, status=status, seconds=seconds, cpu_s=cpu, detail="x")


def test_median_counts_only_models_both_tools_cut():
    rows = [
        _row("a", "ours", "cut", 1.0, 0.5), _row("a", "tp", "cut", 4.0, 5.0),
        _row("b", "ours", "cut", 1.0, 1.0), _row("b", "tp", "cut", 2.0, 2.0),
        _row("c", "ours", "cut"), _row("c", "tp", "timeout", 60.0),
        _row("d", "ours", "refused"), _row("d", "tp", "cut"),
    ]  # fmt: skip
    assert ratios(rows) == {("timm", "a"): 0.25, ("timm", "b"): 0.5}
    assert medians(rows)["all"] == (2, 0.375)
    assert medians(rows, "cpu_s")["timm families"] == (2, 0.3)
    table = coverage_markdown(rows)
    assert "| timm families (4) | prunekit | 3 | 1 | 0 | 0 |" in table
    assert "| timm families (4) | Torch-Pruning 1.6.1 | 3 | 0 | 0 | 1 |" in table
    assert "| c | Torch-Pruning | timeout | x |" in table
