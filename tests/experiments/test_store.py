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
    assert all(r["schema_version"] == 2 for r in rows)


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


def test_a_second_live_run_cannot_claim_the_same_output_folder(tmp_path):
    import multiprocessing

    from experiments.storage import DirectoryInUse, claim_directory

    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()

    def hold() -> None:
        with claim_directory(tmp_path / "run"):
            ready.set()
            release.wait(30)

    holder = ctx.Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(DirectoryInUse, match="in use by another run"):
            with claim_directory(tmp_path / "run"):
                pass
    finally:
        release.set()
        holder.join(30)
    with claim_directory(tmp_path / "run"):  # free again once the other run ended
        pass


def test_run_folders_of_different_configs_differ():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.experiments.conftest import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        a, b = (compose("config", overrides=[f"model={m}", "strategy=han_iterative", "seed=1"], return_hydra_config=True)
                for m in ("lenet300", "lenet5"))
        dirs = [str(c.hydra.run.dir) for c in (a, b)]
    GlobalHydra.instance().clear()
    assert dirs[0] != dirs[1]
    assert dirs[0].endswith("_lenet300_han_iterative_seed1")
