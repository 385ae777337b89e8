import pytest
import torch

from experiments.storage.cache import BaselineCache, config_key
from experiments.storage.files import atomic_write_bytes
from experiments.storage.results import CorruptResultsError, append_row, read_rows


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

    from experiments.storage.files import DirectoryInUse, claim_directory

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
        a, b = (
            compose("config", overrides=[f"model={m}", "strategy=han_iterative", "seed=1"], return_hydra_config=True)
            for m in ("lenet300", "lenet5")
        )
        dirs = [str(c.hydra.run.dir) for c in (a, b)]
    GlobalHydra.instance().clear()
    assert dirs[0] != dirs[1]
    assert dirs[0].endswith("_lenet300_han_iterative_seed1")


@pytest.fixture
def umask():
    """Set the process umask for one test (and restore it)."""
    import os

    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def mode(path) -> int:
    import stat

    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_keep_the_mode_of_the_file_they_replace(tmp_path, umask):
    from experiments.storage.files import atomic_write_text

    umask(0o022)
    shared = tmp_path / "notes.txt"
    shared.write_text("old\n")
    shared.chmod(0o664)  # a group-writable results store
    atomic_write_bytes(shared, b"new\n")
    assert shared.read_bytes() == b"new\n" and mode(shared) == 0o664
    shared.chmod(0o640)
    atomic_write_text(shared, "text \u00e9\n")
    assert shared.read_text(encoding="utf-8") == "text \u00e9\n" and mode(shared) == 0o640
    append_row(tmp_path, {"run_id": "x"})
    (tmp_path / "runs.jsonl").chmod(0o660)
    append_row(tmp_path, {"run_id": "y"})
    assert mode(tmp_path / "runs.jsonl") == 0o660 and [r["run_id"] for r in read_rows(tmp_path)] == ["x", "y"]


@pytest.mark.parametrize("mask, expected", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_new_files_get_the_mode_the_umask_gives(tmp_path, umask, mask, expected):
    from experiments.storage.files import atomic_write_text

    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "x")
    append_row(tmp_path / "store", {"run_id": "r"})
    assert mode(tmp_path / "a.bin") == mode(tmp_path / "b.txt") == mode(tmp_path / "store" / "runs.jsonl") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "store"]  # no temp files left


def test_failure_fields_name_the_error_phase_and_folder(tmp_path):
    from experiments.storage.results import failure_fields

    try:
        raise ValueError("strategy.ratio=0.99 would leave layer 'conv1' with 0 of its 6 channels")
    except ValueError as err:
        fields = failure_fields(err, "plan", tmp_path / "out")
    assert fields == {
        "status": "failed",
        "error": {
            "type": "ValueError",
            "phase": "plan",
            "message": "strategy.ratio=0.99 would leave layer 'conv1' with 0 of its 6 channels",
        },
        "output_dir": str(tmp_path / "out"),
    }
    interrupted = failure_fields(KeyboardInterrupt(), "retrain", "outputs/run")
    assert interrupted["status"] == "interrupted" and interrupted["error"]["type"] == "KeyboardInterrupt"
    assert interrupted["error"]["phase"] == "retrain" and interrupted["output_dir"] == "outputs/run"
    long = failure_fields(RuntimeError("x" * 5000), None, None)
    assert len(long["error"]["message"]) == 2000 and long["error"]["message"].endswith("...")
    assert long["output_dir"] is None and long["error"]["phase"] is None
    append_row(tmp_path, {"run_id": "f", **fields})  # the fields are a valid row
    assert read_rows(tmp_path)[0]["error"]["phase"] == "plan"
