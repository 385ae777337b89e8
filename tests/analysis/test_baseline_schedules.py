"""Baselines on two schedules, paired by seed: the table, the gain and its interval, the figure."""

from __future__ import annotations

import pytest
from PIL import Image

from analysis.baseline_schedules import baseline_runs, build, schedule_gains
from analysis.load import read_store
from analysis.output import NoData
from tests.analysis.helpers import run_row, write_store

TEST_ACC = {("cosine", 8): [0.9302, 0.9319, 0.9290], ("cosine", 15): [0.9294, 0.9310, 0.9301]}


def _row(seed: int, epochs: int | str, acc: float, curve: list[float], cap: int = 30, reached: bool = True) -> dict:
    row = run_row(seed, base_acc=acc, config={"seed": seed, "baseline": {
        "epochs": epochs, "max_epochs": cap, "lr_schedule": "cosine", "checkpoint": None}})  # fmt: skip
    row["baseline_training"] = {
        "epochs_trained": len(curve),
        "val_acc": curve,
        "verdict": {"reached": reached, "gain_pp": 0.04 if reached else 0.42},
    }
    return row


def _store(tmp_path):
    rows = []
    for (_, epochs), accs in TEST_ACC.items():
        for seed, acc in enumerate(accs):
            curve = [0.90 + 0.003 * e for e in range(epochs)]
            rows.append(_row(seed, epochs, acc, curve, reached=epochs == 15))
            rows.append(_row(seed, epochs, acc, curve, reached=epochs == 15))  # a second arm: same baseline
    rows.append(_row(0, "auto", 0.9273, [0.90, 0.91, 0.92, 0.925], cap=15))
    return read_store(write_store(tmp_path / "store", rows))


def test_one_row_per_schedule_and_seed_and_the_paired_gain(tmp_path):
    runs, curves = baseline_runs(_store(tmp_path))
    assert list(runs["schedule"].unique()) == ["cosine 8 ep", "cosine 15 ep", "auto (cosine, cap 15)"]
    assert len(runs) == 7 and len(curves) == 7  # the arms of a seed share its baseline: counted once
    assert list(runs[runs["schedule"] == "cosine 8 ep"]["rule"]) == ["rising"] * 3
    gains = schedule_gains(runs)
    assert len(gains) == 1  # auto has one seed: no pair
    g = gains.iloc[0]
    diffs = [(b - a) * 100 for a, b in zip(TEST_ACC[("cosine", 8)], TEST_ACC[("cosine", 15)])]
    assert (g["A"], g["B"], g["n"]) == ("cosine 8 ep", "cosine 15 ep", 3)
    assert g["gain_pp"] == pytest.approx(sum(diffs) / 3)
    assert g["ci_low"] < g["gain_pp"] < g["ci_high"]


def test_build_writes_the_figure_and_tables(tmp_path):
    paths = build(_store(tmp_path), tmp_path / "out")
    assert {p.name for p in paths} == {
        "baseline_schedules.png", "baseline_schedules.svg", "baseline_schedules.csv", "baseline_gains.csv"}  # fmt: skip
    width, height = Image.open(tmp_path / "out" / "baseline_schedules.png").size
    assert width > 1000 and height > 400


def test_a_store_without_trained_baselines_says_what_to_run(tmp_path):
    store = read_store(write_store(tmp_path / "s", [run_row(0)]))
    with pytest.raises(NoData, match="baseline.epochs=8,15"):
        baseline_runs(store)
