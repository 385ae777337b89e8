import pytest
import torch

from experiments.cache import BaselineCache, config_key
from experiments.results import CorruptResultsError, append_row, read_rows
from experiments.storage import atomic_write_bytes


def test_append_rows_are_complete_json_lines(tmp_path):
    for i in range(3):
        append_row(tmp_path, {"run_id": str(i), "metrics": {"acc": 0.5 + i / 10}})
    rows = read_rows(tmp_path)
    assert [r["run_id"] for r in rows] == ["0", "1", "2"]
    assert rows[2]["metrics"]["acc"] == pytest.approx(0.7)
    assert all(r["schema_version"] == 1 for r in rows)


def test_corrupt_results_line_is_named(tmp_path):
    append_row(tmp_path, {"run_id": "a"})
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"run_id": "b", "metr\n')
    with pytest.raises(CorruptResultsError, match="runs.jsonl:2"):
        read_rows(tmp_path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_baseline_cache_round_trip_and_corruption(tmp_path):
    cache = BaselineCache(tmp_path)
    key = config_key({"model": "x", "seed": 0})
    assert key == config_key({"seed": 0, "model": "x"}) and key != config_key({"model": "x", "seed": 1})
    assert cache.load(key) is None
    sd = {"w": torch.randn(3, 3)}
    cache.store(key, sd, {"train_wall_s": 1.5})
    entry = cache.load(key)
    assert torch.equal(entry["state_dict"]["w"], sd["w"]) and entry["metrics"]["train_wall_s"] == 1.5
    cache.path(key).write_bytes(b"garbage")
    assert cache.load(key) is None  # corrupt entries are retrained, never trusted
