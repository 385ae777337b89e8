"""Which process of a multi-process (DDP) run this is: only global rank 0 writes.

``trainer=ddp`` uses Lightning's subprocess launcher: at the first ``fit`` of a run, rank 0
starts the other ranks by running ``run.py`` again with ``LOCAL_RANK`` set; each rank then
runs the whole pipeline in step with rank 0 (every later ``fit`` reuses the process group).
Lightning would give those processes rank 0's command line, which in a multirun is the whole
sweep, so rank 0 leaves its one job in ``PRUNEKIT_DDP_JOB`` and :func:`relaunched_argv`
turns the child's command line into exactly that job, in a scratch folder inside rank 0's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, open_dict

from experiments.checks import ConfigError

JOB_ENV = "PRUNEKIT_DDP_JOB"
# what Lightning's launcher sets in rank 0's environment at the first fit of a run
LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_before_job: dict[str, str | None] = {}


def global_rank() -> int:
    """This process's rank among all training processes (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def is_global_zero() -> bool:
    """True in the one process that claims the output folder and writes rows, cache and W&B."""
    return global_rank() == 0


def scratch_dir(output_dir: str | Path, rank: int) -> Path:
    """Where rank ``rank`` > 0 of the run in ``output_dir`` writes whatever it writes."""
    return Path(output_dir) / "ddp" / f"rank{rank}"


def relaunches_script(cfg: DictConfig) -> bool:
    """True when the trainer starts its other ranks by re-running this script (strategy
    ``ddp`` with more than one device or node; not ``ddp_spawn``/``ddp_fork``)."""
    strategy = cfg.trainer.get("strategy")
    if not isinstance(strategy, str) or not strategy.startswith("ddp"):
        return False
    if any(word in strategy for word in ("spawn", "fork", "notebook")):
        return False
    return cfg.trainer.get("devices", 1) != 1 or cfg.trainer.get("num_nodes", 1) != 1


def relaunched_argv(argv: list[str]) -> list[str]:
    """The command line for this process: a rank > 0 started by Lightning runs its rank 0's
    job as a single run into its scratch folder; every other process keeps ``argv``."""
    job = os.environ.get(JOB_ENV)
    if not job or os.environ.get("LOCAL_RANK", "0") == "0":
        return argv
    spec = json.loads(job)
    rank = global_rank()
    return [
        argv[0],
        f"--config-name={spec['config_name']}",
        *spec["overrides"],
        f'hydra.run.dir="{scratch_dir(spec["output_dir"], rank)}"',
        "hydra.output_subdir=null",
        f"hydra.job.name=ddp_rank{rank}",
    ]


def prepare_job(cfg: DictConfig) -> None:
    """Before the pipeline. Rank 0 of a ``trainer=ddp`` run leaves its job for the ranks
    Lightning starts; a rank > 0 writes no results row, no W&B run, and its files only under
    its scratch folder (the pipeline also guards its writes with :func:`is_global_zero`)."""
    if not is_global_zero():
        job = json.loads(os.environ.get(JOB_ENV, "{}"))
        with open_dict(cfg):
            cfg.results.write = False
            cfg.paths.output_dir = str(scratch_dir(job.get("output_dir", cfg.paths.output_dir), global_rank()))
            if cfg.get("logger") and "wandb" in cfg.logger:
                del cfg.logger["wandb"]
        return
    if not relaunches_script(cfg):
        return
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.get("launcher", {}).get("_target_", ""))
    if launcher.endswith(("JoblibLauncher", "submitit_launcher.LocalLauncher")):
        name = "joblib" if launcher.endswith("JoblibLauncher") else "submitit_local"
        raise ConfigError(
            f"trainer.strategy={cfg.trainer.strategy!r} with hydra/launcher={name}: Lightning starts the other DDP "
            "ranks by running run.py again, which a launcher worker cannot do; run DDP jobs with the basic launcher "
            "(the default, also in -m sweeps) or hydra/launcher=submitit_slurm (tasks_per_node = trainer.devices), "
            "or use trainer.strategy=ddp_spawn"
        )
    _before_job.update({var: os.environ.get(var) for var in LAUNCH_ENV})
    os.environ[JOB_ENV] = json.dumps(
        {
            "overrides": list(hydra_cfg.overrides.task),
            "output_dir": str(cfg.paths.output_dir),
            "config_name": hydra_cfg.job.config_name,
        }
    )


def end_job() -> None:
    """After a job: close the process group and restore the launch variables, so the next job
    of a sweep starts (and later ends) its own ranks."""
    if JOB_ENV not in os.environ or not is_global_zero():
        return
    del os.environ[JOB_ENV]
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for var, value in _before_job.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    _before_job.clear()
