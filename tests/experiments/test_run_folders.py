"""Two identical runs started in the same second each get their own output folder."""

from __future__ import annotations

import datetime as real_datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from experiments.storage.files import claim_directory
from experiments.storage.results import read_rows
from tests.experiments.conftest import CONF, FAST

ROOT = Path(__file__).resolve().parents[2]


class FrozenSecond(real_datetime.datetime):
    """``now()`` within one second, a microsecond later at every call (two processes)."""

    calls = 0

    @classmethod
    def now(cls, tz=None):
        cls.calls += 1
        return cls(2026, 12, 4, 16, 30, 12, 1000 * cls.calls)


def resolved_dirs(*overrides: str) -> tuple[str, str]:
    """(hydra.run.dir, hydra.sweep.dir) of one freshly composed config, as a new process sees it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
            run_dir, sweep_dir = str(cfg.hydra.run.dir), str(cfg.hydra.sweep.dir)
            assert str(cfg.hydra.run.dir) == run_dir  # resolved once: the folder never changes within a run
            return run_dir, sweep_dir
    finally:
        GlobalHydra.instance().clear()


def test_identical_runs_in_the_same_second_get_their_own_folders(monkeypatch, tmp_path):
    monkeypatch.setattr("hydra.core.utils.datetime", FrozenSecond)
    (a, sweep_a), (b, sweep_b) = resolved_dirs("seed=3"), resolved_dirs("seed=3")
    assert a.startswith("outputs/2026-12-04/16-30-12.") and b.startswith("outputs/2026-12-04/16-30-12.")
    assert a.endswith("_vgg_small_l1_oneshot_seed3") and b.endswith("_vgg_small_l1_oneshot_seed3")
    assert a != b and sweep_a != sweep_b
    # so both claims succeed at once (the claim lock refuses only a truly shared folder)
    with claim_directory(tmp_path / a), claim_directory(tmp_path / b):
        assert (tmp_path / a / ".claim").exists() and (tmp_path / b / ".claim").exists()


@pytest.mark.slow
@pytest.mark.alone
def test_two_identical_runs_started_together_both_finish(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "run.py"), *FAST, "logger=[csv]", "threads=1"]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    rows = read_rows(tmp_path / "results")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    folders = {r["output_dir"] for r in rows}
    assert len(folders) == 2 and all((Path(f) / "model.pt").is_file() for f in folders)
    # the same baseline: trained once, then reused by the run that waited for it
    assert sorted(r["metrics"]["baseline/reused"] for r in rows) == [False, True]
