"""The baseline phase: train the dense model, reuse a cached one with the same key, or load
trained weights from ``baseline.checkpoint``.

The key covers what determines the baseline weights: the config (dataset, model, seed,
baseline recipe, trainer limits), the architecture of the built model (so a code change
that alters it never reuses a stale entry), the identity of the data it trains on and the
sha256 of an initialising ``model.weights`` file (not its path). A checkpoint baseline is
neither trained nor cached: the file is evaluated as it is, and the row records its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from experiments.checks import check_choice
from experiments.models.checkpoint import file_sha256, load_weights
from experiments.storage.cache import BaselineCache, config_key
from experiments.training.context import (
    BaselineRecipe,
    MeasureSettings,
    Phase,
    RunContext,
    measure_model,
    read_plateau_rule,
)
from experiments.training.distributed import is_global_zero
from experiments.training.module import Classifier
from experiments.training.plateau import PlateauRule, ValidationCurve

log = logging.getLogger(__name__)

# dataset keys that do not change the data a baseline sees (the data identity covers the files)
VOLATILE_DATASET_KEYS = (
    "root", "eval_batch_size", "device", "download", "fallback",
    "num_workers", "persistent_workers", "pin_memory", "cache_dir",
)  # fmt: skip


PLATEAU_KEYS = ("plateau_pp", "plateau_window", "max_epochs")
"""``baseline.*`` keys of the plateau rule: in the cache key of an ``auto`` baseline only."""


def baseline_key_config(cfg: DictConfig) -> dict[str, Any]:
    """The config's part of the cache key: dataset (less :data:`VOLATILE_DATASET_KEYS`), model
    (an initialising ``model.weights`` file by its sha256), seed, baseline recipe and the
    trainer's limits and precision, as JSON-able values."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    for volatile in VOLATILE_DATASET_KEYS:
        dataset.pop(volatile, None)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg.get("weights"):  # the file's content decides the weights, not where it lies
        model_cfg["weights"] = {"sha256": file_sha256(model_cfg["weights"])}
    elif "weights" in model_cfg:  # unset: the same key as before the option existed
        del model_cfg["weights"]
    recipe = OmegaConf.to_container(cfg.baseline, resolve=True)
    recipe.pop("checkpoint", None)  # a checkpoint baseline is never cached
    if recipe.get("epochs") != "auto":  # the rule decides nothing: the same key as before the rule existed
        for key in PLATEAU_KEYS:
            recipe.pop(key, None)
    return {
        "dataset": dataset,
        "model": model_cfg,
        "seed": cfg.seed,
        "baseline": recipe,
        "trainer": {
            k: v
            for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
            if k.startswith("limit_") or k in ("precision", "max_steps")
        },
    }


@dataclass(frozen=True)
class BaselineSettings:
    """Where the baseline comes from and how it trains: the ``recipe``, ``reuse`` of a cached
    entry in ``cache_dir``, or a ``checkpoint`` file evaluated as it is; ``key_config`` is the
    config's part of the cache key (:func:`baseline_key_config`). ``judge`` is the plateau rule
    the row's verdict applies to the validation curve (the stopping rule of ``epochs=auto``;
    for a fixed number of epochs it only reports)."""

    recipe: BaselineRecipe
    cache_dir: Path
    key_config: Mapping[str, Any]
    reuse: bool = True
    checkpoint: str | None = None
    judge: PlateauRule = PlateauRule()

    @classmethod
    def from_config(cls, cfg: DictConfig) -> BaselineSettings:
        """Read and check ``baseline.*``; the weight files (``baseline.checkpoint``, ``model.weights``,
        which the key hashes) are checked to exist first, by ``validate_config``."""
        checkpoint = cfg.baseline.get("checkpoint")
        recipe = BaselineRecipe.from_config(cfg)
        return cls(
            recipe=recipe,
            cache_dir=Path(cfg.paths.cache_dir),
            key_config=baseline_key_config(cfg),
            reuse=bool(check_choice("baseline.reuse", cfg.baseline.reuse, (True, False))),
            checkpoint=str(checkpoint) if checkpoint else None,
            judge=recipe.plateau or read_plateau_rule(cfg.baseline),
        )


@dataclass
class BaselinePhase(Phase):
    """The baseline phase plus where it came from (kept out of the numeric ``metrics``)."""

    key: str = ""
    cache_path: str | None = None
    data_source: str | None = None
    data_identity: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None  # path, sha256, bytes, format of baseline.checkpoint
    training: dict[str, Any] | None = None  # epochs, rule, validation curve and the rule's verdict

    def epochs_trained(self) -> int | None:
        """Epochs the baseline trained (None: a checkpoint, or a cache entry that did not record them)."""
        return None if self.training is None else self.training.get("epochs_trained")

    def source(self) -> dict[str, Any]:
        """Where the baseline weights came from, for the results row."""
        if self.checkpoint is not None:
            return {"from": "checkpoint", **self.checkpoint}
        return {"from": "cache" if self.metrics.get("reused") else "trained", "key": self.key, "cache": self.cache_path}


def architecture_fingerprint(model: nn.Module) -> str:
    """sha256 of the built model's structure: module names and classes in order, state-dict
    names, shapes and dtypes, and the source code of every non-torch module class (so an
    edited ``forward`` changes it too)."""
    digest = hashlib.sha256()
    sources: dict[str, str] = {}
    for name, module in model.named_modules():
        cls = type(module)
        qualname = f"{cls.__module__}.{cls.__qualname__}"
        digest.update(f"m:{name}:{qualname};".encode())
        if not cls.__module__.startswith("torch.") and qualname not in sources:
            try:
                sources[qualname] = inspect.getsource(cls)
            except (OSError, TypeError):  # defined interactively: the name is all there is
                sources[qualname] = ""
    for name, value in model.state_dict().items():
        digest.update(f"p:{name}:{list(value.shape)}:{value.dtype};".encode())
    for qualname in sorted(sources):
        digest.update(f"s:{qualname}:".encode() + sources[qualname].encode())
    return digest.hexdigest()


def baseline_key_parts(
    settings: BaselineSettings, model: nn.Module | None = None, data_identity: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON-able description that :func:`baseline_key` hashes (kept beside the entry)."""
    parts: dict[str, Any] = dict(settings.key_config)
    if model is not None:
        parts["architecture"] = architecture_fingerprint(model)
    if data_identity is not None:
        parts["data"] = data_identity
    return parts


def baseline_key(
    settings: BaselineSettings, model: nn.Module | None = None, data_identity: dict[str, Any] | None = None
) -> str:
    """Everything that determines the baseline weights, hashed (see :func:`baseline_key_parts`)."""
    return config_key(baseline_key_parts(settings, model, data_identity))


def obtain_baseline(
    settings: BaselineSettings,
    measure: MeasureSettings,
    model: nn.Module,
    ctx: RunContext,
    example: torch.Tensor,
    *,
    cache: BaselineCache | None = None,
) -> BaselinePhase:
    """Train ``model`` in place (or load the verified cached weights) and measure it.

    With ``baseline.reuse`` a process that finds another one training the same key waits
    for it and reuses its entry instead of training a second copy.
    """
    datamodule = ctx.datamodule
    identity = datamodule.data_identity() if callable(getattr(datamodule, "data_identity", None)) else None
    source = getattr(datamodule, "data_source", None)
    if settings.checkpoint:
        return baseline_from_checkpoint(settings, measure, model, ctx, example, identity, source)
    cache = cache if cache is not None else BaselineCache(settings.cache_dir)
    parts = baseline_key_parts(settings, model, identity)
    key = config_key(parts)
    log.info("baseline: key %s, data from %s", key, source or "the datamodule")
    like = {k: v.detach().clone() for k, v in model.state_dict().items()}  # the untrained weights, to restore
    recipe = settings.recipe
    module = Classifier(model, recipe.optimizer, recipe.lr_schedule)
    start = time.perf_counter()
    reuse = settings.reuse
    seen = cache.signature(key)
    cached = _load_into(model, cache, key, like) if reuse else None
    if cached is None:
        # in DDP the other ranks are started by rank 0's fit: only rank 0 may claim
        claim = cache.claim(key) if reuse and is_global_zero() else contextlib.nullcontext(False)
        with claim as waited:
            if reuse and (waited or cache.signature(key) != seen):  # stored by the process we waited for
                cached = _load_into(model, cache, key, like)
            if cached is None:
                recorder = ValidationCurve(recipe.plateau)  # with a rule, it stops training at the plateau
                wall = ctx.fit(module, "baseline", recipe.epochs, callbacks=[recorder])
                curve = recorder.curve
                trained = recorder.epochs if recipe.auto else recipe.epochs
                if is_global_zero():
                    stored = {"train_wall_s": wall, "val_acc": curve, "epochs_trained": trained}
                    cache.store(key, model.state_dict(), stored, parts=parts)
                log.info("baseline: trained %d epoch(s) in %.1fs, cached at %s", trained, wall, cache.path(key))
    if cached is not None:
        log.info("baseline: reusing cached checkpoint %s", cache.path(key))
        wall = float(cached["metrics"].get("train_wall_s", 0.0))
        curve = cached["metrics"].get("val_acc")
        trained = cached["metrics"].get("epochs_trained", None if recipe.auto else recipe.epochs)
    training = training_record(settings, curve, trained)
    if training.get("verdict"):
        log.info("baseline: %s", training["verdict"]["text"])
    return BaselinePhase(
        "baseline",
        {
            **ctx.test(module, "baseline"),
            **measure_model(model, example, measure),
            "wall_s": wall,
            "reused": cached is not None,
            "load_s": time.perf_counter() - start,
        },
        key=key,
        cache_path=str(cache.path(key)),
        data_source=source,
        data_identity=identity,
        training=training,
    )


def training_record(settings: BaselineSettings, curve: list[float] | None, trained: int | None) -> dict[str, Any]:
    """What the row says of the baseline's training: the configured epochs (a number or ``auto``),
    the rule, the per-epoch validation accuracy and the rule's verdict on it."""
    recipe = settings.recipe
    return {
        "epochs": "auto" if recipe.auto else recipe.epochs,
        "epochs_trained": None if trained is None else int(trained),
        "rule": settings.judge.as_dict() if recipe.auto else {**settings.judge.as_dict(), "max_epochs": None},
        "lr_schedule_epochs": recipe.schedule_length,
        "val_acc": None if curve is None else [float(a) for a in curve],
        "verdict": settings.judge.verdict(curve) if curve else None,
    }


def baseline_from_checkpoint(
    settings: BaselineSettings,
    measure: MeasureSettings,
    model: nn.Module,
    ctx: RunContext,
    example: torch.Tensor,
    identity: dict[str, Any] | None,
    source: str | None,
) -> BaselinePhase:
    """Load ``baseline.checkpoint`` into ``model`` (strict, weights_only) and measure it;
    nothing trains, so the phase's ``wall_s`` is 0 and ``load_s`` the time to load it."""
    start = time.perf_counter()
    info = load_weights(model, settings.checkpoint, "baseline.checkpoint")
    loaded = time.perf_counter() - start
    log.info(
        "baseline: weights from %s (sha256 %s, %s), not trained", info["path"], info["sha256"][:16], info["format"]
    )
    module = Classifier(model, settings.recipe.optimizer, settings.recipe.lr_schedule)
    return BaselinePhase(
        "baseline",
        {
            **ctx.test(module, "baseline"),
            **measure_model(model, example, measure),
            "wall_s": 0.0,
            "reused": False,
            "load_s": loaded,
        },
        key=f"checkpoint-{info['sha256'][:16]}",
        cache_path=None,
        data_source=source,
        data_identity=identity,
        checkpoint=info,
    )


def _load_into(
    model: nn.Module, cache: BaselineCache, key: str, like: dict[str, torch.Tensor]
) -> dict[str, Any] | None:
    """Load the verified entry of ``key`` into ``model``; None (reported) if it does not load."""
    entry = cache.load(key, like)
    if entry is None:
        return None
    try:
        model.load_state_dict(entry["state_dict"], strict=True)
    except (RuntimeError, ValueError) as err:
        log.warning("baseline cache entry %s does not load into the model (%s); retraining", cache.path(key), err)
        model.load_state_dict(like, strict=True)
        return None
    return entry
