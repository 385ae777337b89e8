"""Config checks that run before the first epoch, with messages naming the key.

Here: the seed, threads, the dataset and the weight files (``model.weights``,
``baseline.checkpoint``) exist. Each part checks its other keys where its settings are built
(``from_config``), which the pipeline does right after these checks."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig

from experiments.checks import ConfigError, check_nonnegative_int
from experiments.models.checkpoint import check_weights_path


def check_dataset_config(dataset: DictConfig) -> None:
    """The dataset's own checks: its ``_target_`` class's ``check_config(dataset)``, if it has one."""
    target = dataset.get("_target_")
    if not target:
        return
    try:
        check = getattr(get_class(str(target)), "check_config", None)
    except Exception as err:  # an unimportable target fails with Hydra's own message when instantiated
        raise ConfigError(f"dataset._target_={target!r} cannot be imported: {err}") from err
    if callable(check):
        check(dataset)


def validate_config(cfg: DictConfig) -> None:
    """Checks that need no model: numbers in range, paths that exist, known choices."""
    check_nonnegative_int("seed", cfg.seed)
    if cfg.get("threads") is not None and check_nonnegative_int("threads", cfg.threads) < 1:
        raise ConfigError(f"threads={cfg.threads}: must be null or an integer >= 1")
    root = cfg.dataset.get("root")
    if root is not None and not Path(str(root)).is_dir() and not cfg.dataset.get("fallback", False):
        raise ConfigError(
            f"dataset.root={root!r}: no such directory. Point it at a folder holding the dataset files, "
            "or pass dataset.fallback=true to use the system copy or download into it"
        )
    for key in ("batch_size", "eval_batch_size"):
        if key in cfg.dataset and (not isinstance(cfg.dataset[key], int) or cfg.dataset[key] < 1):
            raise ConfigError(f"dataset.{key}={cfg.dataset[key]!r}: must be an integer >= 1")
    check_dataset_config(cfg.dataset)
    check_weights_path("baseline.checkpoint", cfg.baseline.get("checkpoint"))
    check_weights_path("model.weights", cfg.model.get("weights"))
