"""What every phase of a run shares: data, trainers and loggers, seeds, measurement."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from torch import nn

import pruning
from experiments.storage.tracking import check_wandb_online
from experiments.training.module import Classifier

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


def seed_phase(cfg: DictConfig, datamodule: L.LightningDataModule, phase: str) -> int:
    """Seed torch/numpy/python and the datamodule's loaders for ``phase``; returns the seed."""
    seed = phase_seed(cfg.seed, phase)
    L.seed_everything(seed, workers=True, verbose=False)
    reseed = getattr(datamodule, "reseed", None)
    if reseed is not None:
        reseed(seed)
    return seed


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

    def __init__(self, cfg: DictConfig, datamodule: L.LightningDataModule, output_dir: Path) -> None:
        self.cfg = cfg
        self.datamodule = datamodule
        self.output_dir = output_dir
        self.wandb_logger = self._make_wandb()

    def _make_wandb(self):
        wandb_cfg = self.cfg.logger.get("wandb") if self.cfg.get("logger") else None
        if not wandb_cfg:
            return None
        settings = OmegaConf.to_container(wandb_cfg, resolve=True)
        fallback = bool(settings.pop("fallback_offline", False))
        mode = "offline" if settings.get("offline", True) else "online"
        if mode == "online":  # a clear error within seconds, not a wandb traceback after minutes
            mode = check_wandb_online(fallback_offline=fallback)
            settings["offline"] = mode == "offline"
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        (self.output_dir / "wandb").mkdir(parents=True, exist_ok=True)
        logger = instantiate(settings, save_dir=str(self.output_dir))
        logger.log_hyperparams(OmegaConf.to_container(self.cfg, resolve=True))
        return logger

    def loggers(self, phase: str) -> list:
        out = []
        csv_cfg = self.cfg.logger.get("csv") if self.cfg.get("logger") else None
        if csv_cfg:
            out.append(instantiate(csv_cfg, save_dir=str(self.output_dir), version=phase))
        if self.wandb_logger is not None:
            if isinstance(self.wandb_logger, PhaseWandbLogger):
                self.wandb_logger.start_phase(phase)
            out.append(self.wandb_logger)
        return out or False

    def trainer(self, phase: str, epochs: int, max_steps: int = -1) -> L.Trainer:
        return instantiate(self.cfg.trainer, max_epochs=epochs, max_steps=max_steps, logger=self.loggers(phase))

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch (after the trainer's ``limit_train_batches``)."""
        n = len(self.datamodule.train_dataloader())
        limit = self.cfg.trainer.get("limit_train_batches")
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
            return min(n, limit)
        if isinstance(limit, float):
            return max(1, int(n * limit))
        return n

    def fit(self, module: Classifier, phase: str, epochs: int, steps: int | None = None) -> float:
        """Train ``module`` for ``epochs`` (or exactly ``steps`` optimizer steps); wall seconds."""
        start = time.perf_counter()
        if steps is not None:
            epochs, unit, amount = -(-steps // max(1, self.steps_per_epoch())), "step", steps
        else:
            steps, unit, amount = -1, "epoch", epochs
        if amount > 0:
            log.info("%s: training %d %s(s)", phase, amount, unit)
            seed_phase(self.cfg, self.datamodule, phase)
            self.trainer(phase, epochs, max_steps=steps).fit(module, datamodule=self.datamodule)
        return time.perf_counter() - start

    def test(self, module: Classifier, phase: str) -> dict[str, float]:
        """Top-1/top-5 accuracy and loss on the test split."""
        results = self.trainer(f"{phase}-test", 0).test(module, datamodule=self.datamodule, verbose=False)
        return {k.removeprefix("test/"): float(v) for k, v in results[0].items()}

    def finish(self) -> None:
        if self.wandb_logger is not None:
            import wandb

            wandb.finish()


def measure_model(model: nn.Module, example_inputs: torch.Tensor, cfg: DictConfig, strategy=None) -> dict[str, float]:
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
    for batch in cfg.measure.latency_batch_sizes:
        seconds = pruning.measure_latency(model, example_inputs, batch_size=batch, repeats=cfg.measure.latency_repeats)
        out[f"latency_b{batch}_ms"] = seconds * 1e3
    return out
