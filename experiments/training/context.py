"""What every phase of a run shares: data, trainers and loggers, seeds, measurement.

The pipeline reads the config once into the settings here (:class:`TrainerSettings`,
:class:`MeasureSettings`, :class:`BaselineRecipe`); the code below sees only those, so each
signature says what it depends on and a test builds them directly instead of a whole config.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

import pruning
from experiments.checks import ConfigError, check_choice, check_nonnegative_int, check_number
from experiments.storage.tracking import check_wandb_online
from experiments.training.module import LR_SCHEDULES, Classifier
from experiments.training.plateau import PlateauRule

log = logging.getLogger(__name__)


@dataclass
class Phase:
    """What one phase produced: metrics of the model after it, and its wall time."""

    name: str
    metrics: dict[str, float] = field(default_factory=dict)


def phase_seed(seed: int, phase: str) -> int:
    """A seed for one phase's RNG streams, derived from (run seed, phase name) only, so a
    phase draws the same numbers whether earlier phases ran, were cached or resumed."""
    digest = hashlib.sha256(f"{int(seed)}/{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def seed_phase(run_seed: int, datamodule: L.LightningDataModule, phase: str) -> int:
    """Seed torch/numpy/python and the datamodule's loaders for ``phase`` of the run seeded
    ``run_seed``; returns the phase's seed."""
    seed = phase_seed(run_seed, phase)
    L.seed_everything(seed, workers=True, verbose=False)
    reseed = getattr(datamodule, "reseed", None)
    if reseed is not None:
        reseed(seed)
    return seed


def _resolved(node: Any) -> dict[str, Any] | None:
    """A config node as a plain resolved dict (None for a missing or empty node)."""
    return OmegaConf.to_container(node, resolve=True) if node else None


@dataclass(frozen=True)
class TrainerSettings:
    """What the phases' trainers and loggers are built from.

    ``trainer`` is the ``lightning.Trainer`` node (``_target_`` and its arguments), ``csv`` and
    ``wandb`` the logger nodes (None: that logger is off), ``hyperparams`` the run's whole
    resolved config, which the W&B run records. All are plain resolved dicts, instantiated per phase.
    """

    seed: int
    trainer: Mapping[str, Any]
    csv: Mapping[str, Any] | None = None
    wandb: Mapping[str, Any] | None = None
    hyperparams: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> TrainerSettings:
        loggers = cfg.get("logger") or {}
        return cls(
            seed=check_nonnegative_int("seed", cfg.seed),
            trainer=_resolved(cfg.trainer) or {},
            csv=_resolved(loggers.get("csv")),
            wandb=_resolved(loggers.get("wandb")),
            hyperparams=OmegaConf.to_container(cfg, resolve=True),
        )


@dataclass(frozen=True)
class MeasureSettings:
    """How a model is timed: the batch sizes (each a ``latency_b<N>_ms`` metric) and the
    repeats per timing (``measure.latency_batch_sizes``, ``measure.latency_repeats``)."""

    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = 20

    @classmethod
    def from_config(cls, cfg: DictConfig) -> MeasureSettings:
        sizes = cfg.measure.latency_batch_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise ConfigError(f"measure.latency_batch_sizes={sizes!r}: must be a list of integers >= 1")
        sizes = tuple(sizes)
        for i, batch in enumerate(sizes):
            check_number(f"measure.latency_batch_sizes[{i}]", batch, 1, integer=True)
        repeats = check_number("measure.latency_repeats", cfg.measure.latency_repeats, 1, integer=True)
        return cls(latency_batch_sizes=sizes, latency_repeats=repeats)


@dataclass(frozen=True)
class BaselineRecipe:
    """How the dense baseline trains (``baseline.epochs``, ``lr_schedule``, ``optimizer``);
    training the pruned architecture from scratch (Scratch-E/B) reuses it.
    ``optimizer`` is the instantiated partial: parameters -> optimizer.

    ``baseline.epochs=auto`` trains until ``plateau`` says the validation accuracy stopped
    rising (:mod:`experiments.training.plateau`): ``epochs`` is then the cap until the baseline
    has trained, and the epochs it trained after (:meth:`trained`); the lr schedule always
    spans ``schedule_epochs`` (the cap), wherever the rule stops.
    """

    epochs: int
    lr_schedule: str
    optimizer: Callable[..., torch.optim.Optimizer]
    plateau: PlateauRule | None = None
    schedule_epochs: int | None = None

    @property
    def auto(self) -> bool:
        return self.plateau is not None

    @property
    def schedule_length(self) -> int:
        """Epochs the baseline's lr schedule is laid out over (the cap for ``auto``)."""
        return self.schedule_epochs if self.schedule_epochs is not None else self.epochs

    @property
    def pending(self) -> bool:
        """Whether ``epochs`` is still the cap of an ``auto`` baseline that has not trained (the dry run)."""
        return self.auto and self.schedule_epochs is None

    @property
    def fewest_epochs(self) -> int:
        """The fewest epochs the baseline may train: ``epochs``, or while an ``auto`` baseline is
        ``pending`` the first epoch its rule can stop at (``plateau_window + 1``)."""
        return self.plateau.window + 1 if self.pending else self.epochs

    def trained(self, epochs: int) -> BaselineRecipe:
        """The recipe with the epochs the baseline actually trained (its schedule's length kept)."""
        return replace(self, epochs=int(epochs), schedule_epochs=self.schedule_length)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> BaselineRecipe:
        plateau = plateau_rule(cfg)
        if plateau is None:
            epochs = check_number("baseline.epochs", cfg.baseline.epochs, 0, integer=True, suffix=" or auto")
        else:
            epochs = plateau.max_epochs
        lr_schedule = check_choice("baseline.lr_schedule", cfg.baseline.lr_schedule, LR_SCHEDULES)
        try:
            optimizer = instantiate(cfg.baseline.optimizer)
        except InstantiationException as err:  # an unknown _target_ or a bad argument
            raise ConfigError(f"baseline.optimizer cannot be instantiated: {err}") from err
        if not callable(optimizer):
            raise ConfigError(
                "baseline.optimizer must be an optimizer node with _target_ and _partial_: true "
                f"(parameters -> optimizer), not {type(optimizer).__name__}"
            )
        return cls(epochs=epochs, lr_schedule=lr_schedule, optimizer=optimizer, plateau=plateau)


def read_plateau_rule(baseline: DictConfig) -> PlateauRule:
    """``baseline.plateau_pp`` (> 0), ``plateau_window`` (>= 1) and ``max_epochs`` (> the window), checked."""
    pp = check_number(
        "baseline.plateau_pp", baseline.get("plateau_pp", 0.1), 0, low_open=True, suffix=" (percentage points)"
    )
    window = check_number("baseline.plateau_window", baseline.get("plateau_window", 3), 1, integer=True)
    cap = check_number(
        "baseline.max_epochs",
        baseline.get("max_epochs", 30),
        window + 1,
        integer=True,
        suffix=f" (the rule compares the last baseline.plateau_window={window} epochs with earlier ones)",
    )
    return PlateauRule(pp=float(pp), window=int(window), max_epochs=int(cap))


def plateau_rule(cfg: DictConfig) -> PlateauRule | None:
    """The stopping rule of ``baseline.epochs=auto`` (None for a fixed number of epochs), checked
    (:func:`read_plateau_rule`), with a trainer that validates every epoch (the rule reads the
    validation accuracy)."""
    if cfg.baseline.epochs != "auto":
        return None
    rule = read_plateau_rule(cfg.baseline)
    trainer = cfg.get("trainer") or {}
    if trainer.get("limit_val_batches", 1) in (0, 0.0):
        raise ConfigError(
            "baseline.epochs=auto reads the validation accuracy, but trainer.limit_val_batches=0 runs no validation"
        )
    if trainer.get("check_val_every_n_epoch", 1) not in (1, None):
        raise ConfigError(
            "baseline.epochs=auto needs a validation every epoch: trainer.check_val_every_n_epoch="
            f"{trainer.get('check_val_every_n_epoch')}, set it to 1"
        )
    return rule


class PhaseWandbLogger(WandbLogger):
    """One W&B run for all phases: each phase's curves under its own prefix
    (``baseline/train/loss``, ``retrain/val/acc``, ...) on one monotonic step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._offset = 0
        self._last = -1

    def start_phase(self, phase: str) -> None:
        self._prefix = phase
        self._offset = self._last + 1

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is not None:
            step = self._offset + int(step)
            self._last = max(self._last, step)
        super().log_metrics(metrics, step)


class RunContext:
    """Builds trainers and loggers for the phases of one run."""

    def __init__(self, settings: TrainerSettings, datamodule: L.LightningDataModule, output_dir: Path) -> None:
        self.settings = settings
        self.datamodule = datamodule
        self.output_dir = output_dir
        self.wandb_logger = self._make_wandb()

    def _make_wandb(self):
        if not self.settings.wandb:
            return None
        settings = dict(self.settings.wandb)  # a copy: the options below are popped and set
        fallback = bool(settings.pop("fallback_offline", False))
        mode = "offline" if settings.get("offline", True) else "online"
        if mode == "online":  # a clear error within seconds, not a wandb traceback after minutes
            mode = check_wandb_online(fallback_offline=fallback)
            settings["offline"] = mode == "offline"
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        (self.output_dir / "wandb").mkdir(parents=True, exist_ok=True)
        logger = instantiate(settings, save_dir=str(self.output_dir))
        logger.log_hyperparams(dict(self.settings.hyperparams))
        return logger

    def loggers(self, phase: str) -> list:
        out = []
        if self.settings.csv:
            out.append(instantiate(dict(self.settings.csv), save_dir=str(self.output_dir), version=phase))
        if self.wandb_logger is not None:
            if isinstance(self.wandb_logger, PhaseWandbLogger):
                self.wandb_logger.start_phase(phase)
            out.append(self.wandb_logger)
        return out or False

    def trainer(self, phase: str, epochs: int, max_steps: int = -1, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
        extra = {"callbacks": list(callbacks)} if callbacks else {}
        return instantiate(
            dict(self.settings.trainer), max_epochs=epochs, max_steps=max_steps, logger=self.loggers(phase), **extra
        )

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch (after the trainer's ``limit_train_batches``)."""
        n = len(self.datamodule.train_dataloader())
        limit = self.settings.trainer.get("limit_train_batches")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
            return min(n, limit)
        if isinstance(limit, float):
            return max(1, int(n * limit))
        return n

    def fit(
        self,
        module: Classifier,
        phase: str,
        epochs: int,
        steps: int | None = None,
        callbacks: Sequence[L.Callback] = (),
    ) -> float:
        """Train ``module`` for ``epochs`` (or exactly ``steps`` optimizer steps; a callback may stop
        it earlier); wall seconds."""
        start = time.perf_counter()
        if steps is not None:
            epochs, unit, amount = -(-steps // max(1, self.steps_per_epoch())), "step", steps
        else:
            steps, unit, amount = -1, "epoch", epochs
        if amount > 0:
            log.info("%s: training %d %s(s)", phase, amount, unit)
            seed_phase(self.settings.seed, self.datamodule, phase)
            self.trainer(phase, epochs, max_steps=steps, callbacks=callbacks).fit(module, datamodule=self.datamodule)
        return time.perf_counter() - start

    def test(self, module: Classifier, phase: str) -> dict[str, float]:
        """Top-1/top-5 accuracy and loss on the test split."""
        results = self.trainer(f"{phase}-test", 0).test(module, datamodule=self.datamodule, verbose=False)
        return {k.removeprefix("test/"): float(v) for k, v in results[0].items()}

    def finish(self) -> None:
        if self.wandb_logger is not None:
            import wandb

            wandb.finish()


def measure_model(
    model: nn.Module, example_inputs: torch.Tensor, measure: MeasureSettings, strategy: Any = None
) -> dict[str, float]:
    """Size, compute and latency of ``model`` (paper counts and totals kept apart).

    ``compressed_bytes`` is the real size of the model in our compact format with the
    strategy's storage options, losslessly (fp32 values, exact biases): the lossy options
    (codebooks, fp16) apply to the file the quantize phase writes and reloads.
    """
    counts = pruning.count(model, example_inputs)
    out: dict[str, Any] = dict(counts.as_dict())
    out["dense_bytes"] = pruning.measure.dense_bytes(model)
    options = strategy.storage_options(model) if strategy is not None else {"values": "fp32"}
    options = {k: v for k, v in options.items() if k not in ("bits", "codebook_dtype")} | {"rest": "exact"}
    if options.get("values") == "codebook":  # not quantized yet: measure the lossless size
        options["values"] = "fp32"
    out["compressed_bytes"] = pruning.compress.compression_report(model, **options).file_bytes
    for batch in measure.latency_batch_sizes:
        seconds = pruning.measure_latency(model, example_inputs, batch_size=batch, repeats=measure.latency_repeats)
        out[f"latency_b{batch}_ms"] = seconds * 1e3
    return out
