"""The ours-vs-Torch-Pruning benchmark's core on one tiny model (a smoke test of the
table, not a timing test: benchmarks are scripts)."""

import csv

import pytest
import torch

pytest.importorskip("torch_pruning")

from experiments.bench.structured_detail import COLUMNS, main, run_benchmark  # noqa: E402

FAST = dict(repeats=1, latency_repeats=1, latency_rounds=1, batches=(1, 2), round_to=8)


@pytest.fixture(scope="module")
def table():
    return run_benchmark(["resnet20"], **FAST)


def test_rows_have_the_table_columns(table):
    rows, _ = table
    assert [r["tool"] for r in rows] == ["dense", "ours", "ours round_to=8", "Torch-Pruning 1.6.1"]
    for r in rows:
        assert r["model"] == "resnet20"
        if r["status"] == "ok":
            assert {"params", "macs", "mac_ratio", "lat_b1_ratio", "lat_b2_ratio", "lat_b1_ms"} <= set(r)
    for r in rows[1:3]:
        assert {"build_s", "prune_s", "total_s"} <= set(r) and r["build_s"] > 0


def test_ours_prunes_below_dense(table):
    rows, _ = table
    dense, ours, rounded = rows[0], rows[1], rows[2]
    assert ours["status"] == rounded["status"] == "ok"
    assert ours["params"] < dense["params"] and ours["macs"] < dense["macs"]
    assert ours["mac_ratio"] == pytest.approx(ours["macs"] / dense["macs"])
    # ratio 0.3 keeps floor(0.7 C) per group: roughly half the MACs of a plain ResNet
    assert 0.4 < ours["mac_ratio"] < 0.7
    assert rounded["macs"] <= ours["macs"]  # multiples of 8 keep at most floor(0.7 C)


def test_torch_pruning_failure_is_reported_not_raised(table):
    rows, _ = table
    tp = rows[3]
    # Torch-Pruning 1.6.1 maps channels wrongly across option-A padded shortcuts
    assert tp["status"] == "ok" or tp["status"].startswith("FAILED (")


def test_cli_writes_csv(tmp_path, capsys):
    path = tmp_path / "table.csv"
    threads = torch.get_num_threads()
    try:
        main(["--models", "resnet20", "--quick", "--round-to", "1", "--batches", "1", "--csv", str(path)])
    finally:
        torch.set_num_threads(threads)  # main sets --threads for the whole process
    out = capsys.readouterr().out
    assert out.startswith("command: python -m experiments.bench.structured_detail")
    assert "torch_pruning 1.6.1" in out
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["tool"] for r in rows] == ["dense", "ours", "Torch-Pruning 1.6.1"]
    assert list(rows[0])[: len(COLUMNS)] == list(COLUMNS)
