"""The baseline phase: train the dense model, or reuse a cached one with the same key."""

from __future__ import annotations

import logging
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.cache import BaselineCache, config_key
from experiments.context import Phase, RunContext, measure_model
from experiments.module import Classifier

log = logging.getLogger(__name__)


def baseline_key(cfg: DictConfig) -> str:
    """Everything that determines the baseline weights, hashed."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    for volatile in ("root", "eval_batch_size", "device", "download"):
        dataset.pop(volatile, None)
    return config_key(
        {
            "dataset": dataset,
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            "seed": cfg.seed,
            "baseline": OmegaConf.to_container(cfg.baseline, resolve=True),
            "trainer": {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                        if k.startswith("limit_") or k in ("precision", "max_steps")},
        }
    )


def obtain_baseline(cfg: DictConfig, model: nn.Module, ctx: RunContext, example: torch.Tensor) -> Phase:
    """Train ``model`` in place (or load the cached weights) and measure it."""
    cache = BaselineCache(cfg.paths.cache_dir)
    key = baseline_key(cfg)
    cached = cache.load(key) if cfg.baseline.reuse else None
    module = Classifier(model, instantiate(cfg.baseline.optimizer), cfg.baseline.lr_schedule)
    start = time.perf_counter()
    if cached is not None:
        model.load_state_dict(cached["state_dict"], strict=True)
        log.info("baseline: reusing cached checkpoint %s", cache.path(key))
        wall = float(cached["metrics"].get("train_wall_s", 0.0))
    else:
        wall = ctx.fit(module, "baseline", cfg.baseline.epochs)
        cache.store(key, model.state_dict(), {"train_wall_s": wall})
        log.info("baseline: trained in %.1fs, cached at %s", wall, cache.path(key))
    return Phase("baseline", {
        **ctx.test(module, "baseline"), **measure_model(model, example, cfg),
        "wall_s": wall, "reused": cached is not None, "load_s": time.perf_counter() - start,
    })
