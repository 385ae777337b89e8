import json

import pytest

from analysis.load import load_runs
from analysis.summary import summarise


def write_store(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    (path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def row(seed, acc, status="ok"):
    return {
        "run_id": f"r{seed}",
        "seed": seed,
        "dataset": "d",
        "model": "m",
        "strategy": "s",
        "status": status,
        "config": {"strategy": {"ratio": 0.5}},
        "metrics": {"final/acc": acc, "ratio/params": 0.25},
    }


def test_summary_mean_std_over_seeds(tmp_path):
    write_store(tmp_path, [row(0, 0.90), row(1, 0.92), row(2, 0.5, status="failed")])
    frame = load_runs(tmp_path)
    assert len(frame) == 2  # failed runs are excluded by default
    table = summarise(frame)
    assert table.loc[0, "final acc"] == "0.9100 ± 0.0141"
    assert table.loc[0, "params ratio"] == "0.2500 ± 0.0000"
    assert table.loc[0, "seeds"] == 2


def test_missing_store_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `python run.py` first"):
        load_runs(tmp_path)


def test_different_settings_are_not_pooled(tmp_path):
    other = row(3, 0.5)
    other["config"]["strategy"]["ratio"] = 0.7
    write_store(tmp_path, [row(0, 0.90), row(1, 0.92), other])
    table = summarise(load_runs(tmp_path))
    assert sorted(table["seeds"]) == [1, 2]
