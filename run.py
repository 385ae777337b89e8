"""prunekit entry point: compose dataset x model x strategy with Hydra and run the study.

    python run.py                                   # the default study (offline)
    python run.py strategy.ratio=0.3 seed=1         # one run with overrides
    python run.py -m strategy.ratio=0.3,0.5 seed=0,1    # a sweep (one results row per job)
    python run.py --help                            # config groups and options
"""

from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

os.environ.setdefault("WANDB_MODE", "offline")  # never hang on a network that is not there


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job; return the retrained test accuracy (what a sweeper would optimise)."""
    from experiments.pipeline import run

    row = run(cfg)
    return float(row["metrics"]["retrained/acc"])


if __name__ == "__main__":
    main()
