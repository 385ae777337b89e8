"""baseline -> prune -> retrain -> measure: one run, every phase a Lightning fit/test.

This is the only place (with run.py) that knows Hydra configs. It validates everything
before the first epoch, caches baselines by config hash, measures after each phase and
writes one complete results row, a W&B run (offline by default) and CSV curves.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import pruning
from experiments.baseline import obtain_baseline
from experiments.context import Phase, RunContext, measure_model
from experiments.module import Classifier
from experiments.results import append_row, git_commit
from experiments.storage import claim_directory
from experiments.summary import format_summary
from experiments.validation import validate_config

log = logging.getLogger(__name__)
# Lightning repeats "GPU available / TPU / tips" for every Trainer; one run makes several.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def retrain_module(model: nn.Module, retrain, teacher: nn.Module | None, **hooks) -> Classifier:
    """The LightningModule of one retraining (distilling from ``teacher`` if asked)."""
    return Classifier(model, retrain.optimizer, retrain.lr_schedule, teacher=teacher,
                      distill=retrain.distill, temperature=retrain.temperature, **hooks)


def retrain_phase(ctx: RunContext, model: nn.Module, strategy, retrain, teacher: nn.Module | None,
                  phase: str, average: bool = False) -> float:
    """One retraining with the strategy's penalty, mask hooks and frozen layers; wall seconds."""
    penalty, after_step = strategy.retrain_hooks()
    module = retrain_module(model, retrain, teacher, penalty=penalty, after_step=after_step, average=average)
    strategy.freeze_layers(model)
    try:
        return ctx.fit(module, phase, retrain.epochs)
    finally:
        strategy.unfreeze(model)


def refresh_batchnorm(model: nn.Module, datamodule: L.LightningDataModule) -> None:
    """Recompute BatchNorm running statistics after weight averaging (none to do without BN)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        torch.optim.swa_utils.update_bn(datamodule.train_dataloader(), model)
        model.eval()


def quantize_phase(ctx: RunContext, model: nn.Module, example: torch.Tensor, cfg: DictConfig,
                   strategy, output_dir: Path, teacher: nn.Module | None = None) -> Phase:
    """Deep Compression: share weights by k-means, fine-tune the centroids, store compactly.

    The stored file is loaded back into the model, which is then tested, so the reported
    size and accuracy are of the model the file holds; ``storage_max_abs_diff`` is how far
    its outputs moved (0 unless lossy storage options such as fp16 codebooks are used).
    """
    start = time.perf_counter()
    options = strategy.storage_options(model)
    names = list(strategy.masks) if strategy.masks is not None else None
    shared = pruning.share_weights(model, bits=options.get("bits"), include=names)
    tuner = pruning.CentroidTuner(model, shared)
    retrain = strategy.quantize_retrain
    masks = strategy.masks
    module = retrain_module(model, retrain, teacher, trainable=tuner.parameters,
                            after_step=[tuner.sync_] + ([masks.apply_] if masks is not None else []))
    ctx.fit(module, "quantize", retrain.epochs)
    for name, codebook in zip(tuner.names, tuner.codebooks):
        shared[name].codebook = codebook.detach().clone()
    path = output_dir / "model.pkdc"
    report = pruning.save_compressed(model, path, shared=shared, **{k: v for k, v in options.items() if k != "bits"})
    (output_dir / "storage_report.txt").write_text(str(report) + "\n")
    with torch.inference_mode():
        before = model.eval()(example)
    pruning.load_compressed(path, model)  # from here on the model is exactly what the file holds
    with torch.inference_mode():
        diff = float((model.eval()(example) - before).abs().max())
    total = report.total()
    metrics = {
        **ctx.test(Classifier(model, None), "quantized"), **measure_model(model, example, cfg),
        "compressed_bytes": report.file_bytes, "storage_pruned_bytes": total.pruned,
        "storage_quantized_bytes": total.quantized, "storage_huffman_bytes": total.huffman,
        "storage_max_abs_diff": diff, "wall_s": time.perf_counter() - start,
    }
    return Phase("quantized", metrics)


def save_model(model: nn.Module, strategy, path: Path) -> None:
    """The final model as weights + the record that rebuilds its shapes, written atomically.
    Load with ``pruning.load_pruned(lambda: build_model(...), path)`` (weights_only)."""
    tmp = path.with_name(f".{path.name}.tmp")
    pruning.save_pruned(model, strategy.structure_record(), tmp)
    os.replace(tmp, path)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured study once and return its results row."""
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    with claim_directory(output_dir):  # a concurrent run into the same folder fails at once
        return _run(cfg, output_dir)


def _run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    model = instantiate(
        cfg.model,
        num_classes=datamodule.num_classes,
        in_channels=datamodule.in_channels,
        input_size=datamodule.input_size,
    )
    example = datamodule.example_inputs(2).cpu()
    strategy = instantiate(cfg.strategy, _convert_="all")
    strategy.validate(model)  # everything that can be checked is checked before training

    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ctx = RunContext(cfg, datamodule, output_dir)
    phases: dict[str, Phase] = {}
    row: dict[str, Any] = {"run_id": run_id, "status": "failed"}
    try:
        phases["baseline"] = obtain_baseline(cfg, model, ctx, example)

        # -- prune / retrain rounds ----------------------------------------------------
        quantize = getattr(strategy, "quantize_retrain", None)
        average = getattr(strategy, "average", None)
        distills = any(r is not None and r.epochs > 0 and r.distill > 0 for r in (strategy.retrain, quantize, average))
        teacher = copy.deepcopy(model).eval() if distills else None  # the dense baseline
        records = []
        prune_wall = retrain_wall = 0.0
        for round_index in range(strategy.rounds):
            start = time.perf_counter()
            records.append(strategy.prune(model, example, round_index))
            prune_wall += time.perf_counter() - start
            if round_index == 0:
                phases["pruned"] = Phase("pruned", {**ctx.test(Classifier(model, None), "pruned"),
                                                    **measure_model(model, example, cfg, strategy)})
            retrain_wall += retrain_phase(ctx, model, strategy, strategy.retrain, teacher, f"retrain{round_index}")
        if average is not None and average.epochs > 0:  # SWA over the epochs of one more retraining
            retrain_wall += retrain_phase(ctx, model, strategy, average, teacher, "average", average=True)
            refresh_batchnorm(model, ctx.datamodule)
        phases["pruned"].metrics["wall_s"] = prune_wall
        phases["retrained"] = Phase("retrained", {
            **ctx.test(Classifier(model, None), "retrained"), **measure_model(model, example, cfg, strategy),
            "wall_s": retrain_wall,
        })
        if quantize is not None:
            phases["quantized"] = quantize_phase(ctx, model, example, cfg, strategy, output_dir, teacher)

        (output_dir / "pruning_records.json").write_text(json.dumps(records, indent=1))
        save_model(model, strategy, output_dir / "model.pt")
        row.update(_row(cfg, run_id, phases, output_dir))
        row["status"] = "ok"
        _log_summary(ctx, phases)
        print(format_summary(phases))
        return row
    finally:
        if row["status"] != "ok":
            row.update({"config": OmegaConf.to_container(cfg, resolve=True), "commit": git_commit()})
        if cfg.results.write:
            append_row(cfg.paths.results_dir, row)
        ctx.finish()


def _row(cfg: DictConfig, run_id: str, phases: dict[str, Phase], output_dir: Path) -> dict[str, Any]:
    flat = {f"{p}/{k}": v for p, phase in phases.items() for k, v in phase.metrics.items()}
    base, final = phases["baseline"].metrics, phases[list(phases)[-1]].metrics
    ratios = {
        "ratio/params": final["params"] / base["params"],
        "ratio/nonzero_params": final["nonzero_params"] / base["nonzero_params"],
        "ratio/compressed_bytes": final["compressed_bytes"] / base["dense_bytes"],
        "ratio/macs": final["macs"] / base["macs"],
        "ratio/latency_b1": final["latency_b1_ms"] / base["latency_b1_ms"] if "latency_b1_ms" in base else None,
        "delta/acc": final["acc"] - base["acc"],
        "final/acc": final["acc"],
    }
    return {
        "run_id": run_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": git_commit(),
        "seed": cfg.seed,
        "dataset": cfg.dataset.get("name"),
        "model": cfg.model.get("name"),
        "strategy": cfg.strategy.get("name"),
        "output_dir": str(output_dir),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "metrics": {**flat, **ratios},
    }


def _log_summary(ctx: RunContext, phases: dict[str, Phase]) -> None:
    if ctx.wandb_logger is None:
        return
    summary = {f"{p}/{k}": v for p, phase in phases.items() for k, v in phase.metrics.items()}
    ctx.wandb_logger.experiment.summary.update(summary)
