"""The latency predictor benchmark's bookkeeping: assignments, quantiles, summaries, joined runs."""

import random

import pytest

from experiments.bench import latency_predictor as bench


class Groups:
    """A stand-in table: three groups of 64 channels on a grid of 8."""

    groups = {g: (64, 0) for g in "abc"}
    grid = {g: list(range(8, 65, 8)) for g in "abc"}


def test_random_assignments_spread_from_nearly_dense_to_a_third():
    rng = random.Random(0)
    out = bench.random_assignments(Groups(), 4, rng)
    kept = [sum(a.get(g, 64) for g in "abc") / 192 for a in out]
    assert kept[0] > 0.75 and kept[-1] < 0.55 and kept == sorted(kept, reverse=True)
    assert all(c % 8 == 0 and 8 <= c < 64 for a in out for c in a.values())


def test_quantile_interpolates_between_order_statistics():
    xs = [0.01, 0.02, 0.03, 0.04, 0.10]
    assert bench.quantile(xs, 0.5) == 0.03
    assert bench.quantile(xs, 0.9) == pytest.approx(0.04 + 0.6 * 0.06)


def test_summary_and_combine_read_back_what_a_run_wrote(tmp_path, capsys):
    preds = [
        {"model": "m", "batch": b, "assignment": i, "predicted": 0.5, "measured": 0.5 / (1 + e), "error": e}
        for b in (1, 16)
        for i, e in enumerate((0.01, -0.03, 0.08, 0.02))
    ]
    targets = [
        {"model": "m", "batch": 1, "target": 0.5, "calibration_s": 1.0, "measured": 0.51, "error": 0.02, "hit": True,
         "models_timed": 2, "search_s": 3.0, "note": ""},
        {"model": "m", "batch": 16, "target": 0.5, "calibration_s": 1.0, "measured": 0.6, "error": 0.2, "hit": False,
         "models_timed": 6, "search_s": 9.0, "note": "unreachable"},
    ]  # fmt: skip
    lines = bench.summary(preds, targets)
    assert "batch 1: 4 assignments, median |error| 2.5%, 90th percentile 6.5%, max 8.0%" in lines
    assert any("targets landed within +-5%: 1 of 2 (50%); of the 1 reachable ones" in line for line in lines)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, rows, ts in ((a, preds[:4], targets[:1]), (b, preds[4:], targets[1:])):
        folder.mkdir()
        bench.write_csv(folder / "predictions.csv", rows)
        bench.write_csv(folder / "targets.csv", ts)
    (a / "machine.txt").write_text("test cpu, 1 thread(s)\n")
    bench.main(["--combine", str(a), str(b), "--out", str(tmp_path / "all")])
    assert capsys.readouterr().out.strip().splitlines() == lines
    assert bench.read_csv(tmp_path / "all" / "targets.csv") == targets
    assert (tmp_path / "all" / "predictions.png").stat().st_size > 0
    assert (tmp_path / "all" / "machine.txt").read_text() == "test cpu, 1 thread(s)\n"
