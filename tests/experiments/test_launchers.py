"""Launchers and multi-process training: joblib/submitit configs, submitit_local end to end,
Lightning DDP on CPU where only global rank 0 writes."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import instantiate

from experiments.checks import ConfigError
from experiments.run import sweep
from experiments.storage.results import read_rows
from experiments.training import distributed
from tests.experiments.conftest import CONF
from tests.experiments.test_sweep import TINY, compose_job, run_py, task


@pytest.fixture
def hydra_job(tmp_path):
    yield lambda *overrides, **kwargs: compose_job(tmp_path, *overrides, **kwargs)
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local", "submitit_slurm"])
def test_launcher_configs_instantiate(launcher):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose(
                "config",
                overrides=[
                    f"hydra/launcher={launcher}",
                    "trainer=ddp",
                    "trainer.devices=3",
                    "hydra.sweep.dir=/tmp/sweep",
                    "hydra.job.name=run",
                ],
                return_hydra_config=True,
            )
        built = instantiate(cfg.hydra.launcher)
    finally:
        GlobalHydra.instance().clear()
    if launcher == "joblib":
        assert built.joblib["n_jobs"] == sweep.cpu_cores() and built.joblib["backend"] == "loky"
    else:
        assert built.params["submitit_folder"] == "/tmp/sweep/.submitit/%j"
        assert built.params["cpus_per_task"] >= 1
    if launcher == "submitit_slurm":
        assert built.params["tasks_per_node"] == 3  # one SLURM task per DDP rank
        assert {"partition", "gpus_per_node", "timeout_min", "mem_gb", "setup"} <= set(built.params)


def test_ddp_trainer_config_uses_lightning_ddp(hydra_job):
    cfg = task(hydra_job("trainer=ddp", mode=RunMode.RUN))
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
    assert distributed.relaunches_script(cfg)
    assert not distributed.relaunches_script(task(hydra_job("trainer=ddp", "trainer.devices=1", mode=RunMode.RUN)))
    assert not distributed.relaunches_script(
        task(hydra_job("trainer=ddp", "trainer.strategy=ddp_spawn", mode=RunMode.RUN))
    )
    assert not distributed.relaunches_script(task(hydra_job(mode=RunMode.RUN)))


def test_rank_zero_leaves_its_job_and_rank_one_runs_exactly_it(hydra_job, monkeypatch, tmp_path):
    for var in (*distributed.LAUNCH_ENV, "RANK", "SLURM_PROCID", distributed.JOB_ENV):
        monkeypatch.delenv(var, raising=False)
    cfg = task(hydra_job("trainer=ddp", mode=RunMode.RUN, task=["trainer=ddp", "seed=3"]))
    distributed.prepare_job(cfg)
    job = json.loads(distributed.os.environ[distributed.JOB_ENV])
    assert job == {"overrides": ["trainer=ddp", "seed=3"], "output_dir": str(tmp_path / "out"), "config_name": "config"}

    argv = ["run.py", "-m", "seed=0,3", 'hydra.run.dir="x"']  # what Lightning would start rank 1 with
    assert distributed.relaunched_argv(argv) == argv  # rank 0 itself
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.relaunched_argv(argv) == [
        "run.py",
        "--config-name=config",
        "trainer=ddp",
        "seed=3",
        f'hydra.run.dir="{tmp_path}/out/ddp/rank1"',
        "hydra.output_subdir=null",
        "hydra.job.name=ddp_rank1",
    ]

    rank1 = task(hydra_job("trainer=ddp", mode=RunMode.RUN, out="out/ddp/rank1"))
    distributed.prepare_job(rank1)
    assert rank1.results.write is False and "wandb" not in rank1.logger
    assert rank1.paths.output_dir == str(tmp_path / "out" / "ddp" / "rank1")
    distributed.end_job()  # a rank > 0 leaves the environment to its process's end
    assert distributed.JOB_ENV in distributed.os.environ
    monkeypatch.setenv("LOCAL_RANK", "0")
    distributed.end_job()
    assert distributed.JOB_ENV not in distributed.os.environ and "LOCAL_RANK" not in distributed.os.environ


def test_ddp_inside_a_joblib_worker_is_refused(hydra_job, monkeypatch):
    for var in (*distributed.LAUNCH_ENV, "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    cfg = task(hydra_job("trainer=ddp", "hydra/launcher=joblib"))
    with pytest.raises(ConfigError, match=r"trainer.strategy='ddp' with hydra/launcher=joblib: .*basic launcher"):
        distributed.prepare_job(cfg)


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_in_its_own_process_and_folder(tmp_path):
    proc = run_py(
        "-m",
        *[o for o in TINY if not o.startswith("logger=")],
        "seed=0,1",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={tmp_path}/multirun",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(tmp_path / "results")
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["status"] == "ok" for r in rows)
    assert {r["output_dir"] for r in rows} == {str(tmp_path / "multirun" / "0"), str(tmp_path / "multirun" / "1")}
    assert all(r["config"]["threads"] == 1 for r in rows)  # cpus_per_task
    for row in rows:  # W&B stays offline in the submitted processes too
        assert len(list((Path(row["output_dir"]) / "wandb").glob("offline-run-*"))) == 1
    logs = list((tmp_path / "multirun" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("sweep: job" in p.read_text() for p in logs)


def _one_run_folder(outputs: Path) -> Path:
    folders = [p for p in outputs.glob("*/*") if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_one_row_into_one_folder(tmp_path):
    proc = run_py(*TINY, "trainer=ddp", "trainer.devices=2", "logger=[csv,wandb]", cwd=tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "DirectoryInUse" not in text and "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    rows = read_rows(tmp_path / "results")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    folder = _one_run_folder(tmp_path / "outputs")
    assert rows[0]["output_dir"] == str(folder)
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 1  # rank 0's W&B run only
    scratch = folder / "ddp" / "rank1"
    assert (scratch / "ddp_rank1.log").exists()  # rank 1 ran the same job, writing only its log there
    assert not list(scratch.rglob("*.pt")) and not (scratch / "wandb").exists()


@pytest.mark.slow
def test_ddp_jobs_of_a_sweep_each_start_their_own_ranks(tmp_path):
    proc = run_py(
        "-m",
        *TINY,
        "trainer=ddp",
        "trainer.devices=2",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path}/multirun",
        cwd=tmp_path,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    rows = read_rows(tmp_path / "results")
    assert sorted(r["seed"] for r in rows) == [0, 1] and all(r["status"] == "ok" for r in rows)
    assert {r["output_dir"] for r in rows} == {str(tmp_path / "multirun" / "0"), str(tmp_path / "multirun" / "1")}
    for row in rows:  # a fresh rank 1 per job, running that job only
        assert (Path(row["output_dir"]) / "ddp" / "rank1" / "ddp_rank1.log").exists()
    assert not (tmp_path / "outputs").exists()  # no rank ran the sweep a second time elsewhere
