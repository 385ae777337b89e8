"""prunekit entry point: compose dataset x model x strategy with Hydra and run the study.

    python run.py                                   # the default study (offline)
    python run.py strategy.ratio=0.3 seed=1         # one run with overrides
    python run.py -m strategy.ratio=0.3,0.5 seed=0,1    # a sweep (one results row per job)
    python run.py -m hydra/launcher=joblib seed=0,1,2,3 # jobs side by side, cores // n_jobs threads each
    python run.py -m hydra/launcher=submitit_slurm hydra.launcher.partition=gpu seed=0,1   # SLURM
    python run.py trainer=ddp trainer.devices=2     # one run trained by 2 DDP processes
    python run.py --help                            # config groups and options

A rerun sweep skips the jobs that already have an ``ok`` row (``sweep.skip_done=false`` reruns them).
"""

from __future__ import annotations

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from experiments.run import sweep
from experiments.training import distributed

os.environ.setdefault("WANDB_MODE", "offline")  # never hang on a network that is not there
log = logging.getLogger("run")


def headline(row: dict) -> float:
    """The retrained test accuracy of a results row (what a sweeper would optimise)."""
    return float(row["metrics"]["retrained/acc"])


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job (or skip it when a sweep already ran it); return its headline metric."""
    done = sweep.completed_run(cfg)
    if done is not None:
        log.info("skipping: done in run %s (%s)", done.get("run_id"), done.get("output_dir"))
        return headline(done)
    sweep.use_job_threads(cfg)
    distributed.prepare_job(cfg)
    from experiments.run.pipeline import run

    try:
        return headline(run(cfg))
    finally:
        distributed.end_job()


if __name__ == "__main__":
    sys.argv = distributed.relaunched_argv(sys.argv)  # a DDP rank > 0 runs only its rank 0's job
    main()
