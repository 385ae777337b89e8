"""Sweeps: threads per job, skipping finished jobs, progress lines; joblib end to end."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiments.checks import ConfigError
from experiments.run import sweep
from experiments.storage.results import append_row, read_rows
from tests.experiments.conftest import CONF, FAST

ROOT = Path(__file__).resolve().parents[2]
# sweeps of tiny runs: what a sweep does, not what a run measures (deploy and latency comparisons are tested apart)
TINY = [*FAST, "logger=[csv]", "measure.latency_batch_sizes=[1]", "measure.compare_latency=false", "deploy.onnx=false"]


def run_py(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd`` (its results/ and .cache/ land there), W&B offline."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def compose_job(
    tmp_path: Path,
    *overrides: str,
    mode: RunMode = RunMode.MULTIRUN,
    out: str = "out",
    task: list[str] | None = None,
    num: int = 0,
) -> DictConfig:
    """Compose the real config as one job of a run (or multirun) sees it, with Hydra's runtime set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.runtime.output_dir = str(tmp_path / out)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.sweep.dir = str(tmp_path / "multirun")
        cfg.hydra.job.name = "run"
        cfg.hydra.job.num = num
        if task is not None:
            cfg.hydra.overrides.task = task
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.fixture
def hydra_job(tmp_path):
    yield lambda *overrides, **kwargs: compose_job(tmp_path, *overrides, **kwargs)
    GlobalHydra.instance().clear()


def task(cfg: DictConfig) -> DictConfig:
    """The job's config without the hydra node (what run.py's main receives)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# -- threads ----------------------------------------------------------------------------------
def test_two_joblib_workers_on_two_cores_get_one_thread_each(hydra_job, monkeypatch):
    monkeypatch.setattr(sweep, "cpu_cores", lambda: 2)
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))) == 1
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=1"))) == 2
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=-1"))) == 1
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib"))) == 1  # n_jobs: ${cores:}
    monkeypatch.setattr(sweep, "cpu_cores", lambda: 8)
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=3"))) == 2


def test_explicit_threads_are_honoured_in_a_sweep(hydra_job, monkeypatch):
    monkeypatch.setattr(sweep, "cpu_cores", lambda: 2)
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=2"))) == 2


def test_no_thread_limit_outside_a_parallel_sweep(hydra_job):
    assert sweep.job_threads(task(hydra_job("hydra/launcher=joblib", mode=RunMode.RUN))) is None  # a single run
    assert sweep.job_threads(task(hydra_job())) is None  # the basic launcher runs one job at a time
    assert sweep.job_threads(task(hydra_job("threads=3", mode=RunMode.RUN))) == 3
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None
    assert sweep.job_threads(OmegaConf.create({"threads": None})) is None  # no Hydra at all


def test_submitit_jobs_get_cpus_per_task_threads(hydra_job, monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert sweep.job_threads(task(hydra_job("hydra/launcher=submitit_local"))) == 1
    assert sweep.job_threads(task(hydra_job("hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=6"))) == 6


def test_bad_n_jobs_names_the_key(hydra_job):
    with pytest.raises(ConfigError, match=r"hydra.launcher.n_jobs=0: allowed values"):
        sweep.job_threads(task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=0")))


def test_use_job_threads_sets_cfg_and_openmp_env(hydra_job, monkeypatch):
    monkeypatch.setattr(sweep, "cpu_cores", lambda: 2)
    for var in sweep.THREAD_ENV:
        monkeypatch.delenv(var, raising=False)
    cfg = task(hydra_job("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"))
    assert sweep.use_job_threads(cfg) == 1
    assert cfg.threads == 1 and os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"


# -- skipping finished jobs -----------------------------------------------------------------
def _store(cfg: DictConfig, status: str = "ok", run_id: str = "r1", output_dir: str = "/old/run") -> None:
    append_row(
        cfg.paths.results_dir,
        {
            "run_id": run_id,
            "status": status,
            "output_dir": output_dir,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "metrics": {"retrained/acc": 0.5},
        },
    )


def test_completed_run_matches_the_same_config_in_another_folder(hydra_job):
    _store(task(hydra_job("strategy.ratio=0.5", "seed=0", "threads=2", out="first")))
    row = sweep.completed_run(task(hydra_job("strategy.ratio=0.5", "seed=0", out="second", num=3)))
    assert row is not None and row["run_id"] == "r1"


@pytest.mark.parametrize("change", ["strategy.ratio=0.3", "seed=1", "strategy=random_oneshot", "baseline.epochs=3"])
def test_completed_run_does_not_match_another_config(hydra_job, change):
    _store(task(hydra_job("strategy.ratio=0.5", "seed=0")))
    assert sweep.completed_run(task(hydra_job("strategy.ratio=0.5", "seed=0", change))) is None


def test_failed_rows_are_not_done(hydra_job):
    cfg = task(hydra_job("seed=0"))
    _store(cfg, status="failed", run_id="bad")
    assert sweep.completed_run(cfg) is None
    _store(cfg, status="interrupted", run_id="stopped")
    assert sweep.completed_run(cfg) is None
    _store(cfg, run_id="good")
    assert sweep.completed_run(cfg)["run_id"] == "good"


def test_single_runs_never_skip_and_skip_done_opts_out(hydra_job):
    cfg = task(hydra_job("seed=0"))
    _store(cfg)
    assert sweep.completed_run(task(hydra_job("seed=0", mode=RunMode.RUN))) is None
    assert sweep.completed_run(task(hydra_job("seed=0", "sweep.skip_done=false"))) is None
    assert sweep.completed_run(task(hydra_job("seed=0", mode=RunMode.RUN)), force=True)["run_id"] == "r1"
    with pytest.raises(ConfigError, match=r"sweep.skip_done='yes': allowed values are true, false"):
        sweep.completed_run(task(hydra_job("seed=0", "sweep.skip_done=yes")))


# -- progress ----------------------------------------------------------------------------------
def test_sweep_plan_counts_jobs_and_names_swept_keys(hydra_job):
    cfg = hydra_job(task=["seed=0,1,2", "model=lenet5"])
    with read_write(cfg.hydra.sweeper):
        cfg.hydra.sweeper.params = {"strategy": "l1_oneshot,random_oneshot"}  # as the study presets sweep
    assert sweep.sweep_plan(cfg) == (6, ["seed", "strategy"])
    assert sweep.sweep_plan(hydra_job(task=[])) == (1, [])


def test_progress_counts_jobs_ending_in_other_processes(hydra_job, caplog):
    caplog.set_level(logging.INFO, logger="experiments.run.sweep")
    sweep.SweepProgress().on_multirun_start(hydra_job(task=["seed=0,1,2", "model=lenet5"]))
    assert "sweep: 3 job(s) into" in caplog.text
    for num in (1, 0):  # parallel jobs may end in any order, each with its own copy of the callback
        job = hydra_job(task=[f"seed={num}", "model=lenet5"], num=num)
        worker = sweep.SweepProgress()
        worker.on_job_start(job, task_function=None)
        ret = JobReturn()
        ret.status = JobStatus.COMPLETED if num else JobStatus.FAILED
        worker.on_job_end(job, ret)
    assert "sweep: job 2 of 3 started: seed=1\n" in caplog.text
    assert re.search(r"sweep: job 2 of 3 done \(1 of 3 finished\), elapsed \d+s, about \d+s left", caplog.text)
    assert re.search(r"sweep: job 1 of 3 failed \(2 of 3 finished\), elapsed \d+s, about \d+s left", caplog.text)
    sweep.SweepProgress().on_multirun_end(hydra_job())
    assert re.search(r"sweep: 2 of 3 job\(s\) finished in \d+s \(1 failed\)", caplog.text)


def test_progress_is_silent_in_single_runs(hydra_job, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="experiments.run.sweep")
    job = hydra_job(mode=RunMode.RUN)
    progress = sweep.SweepProgress()
    progress.on_job_start(job, task_function=None)
    progress.on_job_end(job, JobReturn())
    assert "sweep:" not in caplog.text and not (tmp_path / "multirun").exists()


def test_clock():
    assert [sweep.clock(s) for s in (4.4, 75, 3725)] == ["4s", "1m15s", "1h02m"]


# -- real sweeps ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_rerun_sweep_skips_finished_jobs(tmp_path):
    args = ["-m", *TINY, "threads=1", "seed=0,1"]
    first = run_py(*args, f"hydra.sweep.dir={tmp_path}/first", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = read_rows(tmp_path / "results")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    assert "sweep: job 2 of 2 started: seed=1" in first.stdout and "sweep: 2 of 2 job(s) finished" in first.stdout

    again = run_py(*args, f"hydra.sweep.dir={tmp_path}/again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(read_rows(tmp_path / "results")) == 2  # nothing ran again
    for row in rows:
        assert f"skipping: done in run {row['run_id']} ({row['output_dir']})" in again.stdout
    assert "training" not in again.stdout

    forced = run_py(*args[:-1], "seed=1", "sweep.skip_done=false", f"hydra.sweep.dir={tmp_path}/forced", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert len(read_rows(tmp_path / "results")) == 3 and "skipping" not in forced.stdout


@pytest.mark.slow
@pytest.mark.alone
def test_joblib_sweep_runs_jobs_side_by_side(tmp_path):
    proc = run_py(
        "-m",
        *TINY,
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={tmp_path}/multirun",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(tmp_path / "results")
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["status"] == "ok" for r in rows)
    assert {r["output_dir"] for r in rows} == {str(tmp_path / "multirun" / "0"), str(tmp_path / "multirun" / "1")}
    want = max(1, sweep.cpu_cores() // 2)
    assert all(r["config"]["threads"] == want and f"{want} threads" in r["machine"] for r in rows)
    assert all(r["threads"] == want and r["cpu"] and r["torch"] for r in rows)  # where the numbers were measured
