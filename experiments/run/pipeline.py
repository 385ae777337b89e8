"""One run: build -> dry-run the strategy's plan -> baseline -> (scan) -> plan -> execute -> row.

This is the only place (with run.py) that knows Hydra configs: it reads the config once into
each part's settings (:class:`RunSettings`, checked as they are built, before anything
trains) and instantiates the dataset, model and strategy nodes; the parts below see only
their settings. The strategy is reached only through its protocol
(``experiments.strategies.parts.Strategy``): the pipeline validates by a dry run of the plan
before the first epoch, executes the planned steps, then writes one complete results row,
a W&B run (offline by default), CSV curves and the model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

import pruning
from experiments.run.baseline import BaselineSettings, obtain_baseline
from experiments.run.deploy import DeploySettings, deploy, real_batch
from experiments.run.int8 import deploy_int8
from experiments.run.latency import LatencySettings, compare_to_baseline
from experiments.run.summary import format_deploy_table, format_summary
from experiments.run.validation import validate_config
from experiments.storage.files import atomic_write_bytes, claim_directory
from experiments.storage.results import append_row, failure_fields, git_commit
from experiments.strategies.plan import Runtime, dry_run, execute
from experiments.training.context import MeasureSettings, Phase, RunContext, TrainerSettings
from experiments.training.distributed import is_global_zero

log = logging.getLogger(__name__)
# Lightning repeats "GPU available / TPU / tips" for every Trainer; one run makes several.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


def save_model(model: nn.Module, strategy: Any, path: Path) -> None:
    """The final model as weights + the record that rebuilds its shapes, written atomically.
    Load with ``pruning.load_pruned(lambda: build_model(...), path)`` (weights_only)."""
    import io

    buffer = io.BytesIO()
    pruning.save_pruned(model, strategy.structure_record(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass(frozen=True)
class RunSettings:
    """Each part's settings, read from the config once and checked as they are built, so a bad
    value is refused before anything trains and no part below needs the config."""

    seed: int
    trainer: TrainerSettings
    measure: MeasureSettings
    baseline: BaselineSettings
    latency: LatencySettings
    deploy: DeploySettings

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunSettings:
        return cls(
            seed=int(cfg.seed),
            trainer=TrainerSettings.from_config(cfg),
            measure=MeasureSettings.from_config(cfg),
            baseline=BaselineSettings.from_config(cfg),
            latency=LatencySettings.from_config(cfg),
            deploy=DeploySettings.from_config(cfg),
        )


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured study once and return its results row."""
    validate_config(cfg)
    settings = RunSettings.from_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    # a concurrent run into the same folder fails at once; in DDP only rank 0 claims it
    claim = claim_directory(output_dir) if is_global_zero() else contextlib.nullcontext()
    with claim:
        return _run(cfg, settings, output_dir)


def machine() -> str:
    """Where the run's numbers were measured: host, CPU model, CPU threads and the accelerator if used."""
    import platform

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    cpu = pruning.latency.cpu_model()
    return f"{platform.node()} ({platform.machine()}, {cpu}, {torch.get_num_threads()} threads, {device})"


def experiment_name(group: str = "experiment") -> str | None:
    """The paper preset this run was composed with (``experiment=...``), if any; with
    ``group="arm"``, the study arm (``arm=...``, conf/arm/)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None
    except Exception:  # composed without Hydra's runtime (a notebook)
        return None


def _run(cfg: DictConfig, settings: RunSettings, output_dir: Path) -> dict[str, Any]:
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    L.seed_everything(settings.seed, workers=True, verbose=False)
    started = time.perf_counter()

    datamodule = instantiate(cfg.dataset)
    datamodule.setup()

    def build_model() -> nn.Module:
        return instantiate(
            cfg.model,
            num_classes=datamodule.num_classes,
            in_channels=datamodule.in_channels,
            input_size=datamodule.input_size,
        )

    model = build_model()
    example = datamodule.example_inputs(2).cpu()

    def make_strategy() -> Any:
        return instantiate(cfg.strategy, _convert_="all")

    rt = Runtime(
        example=example,
        build_model=build_model,
        strategy=make_strategy(),
        seed=settings.seed,
        baseline=settings.baseline.recipe,
        measure=settings.measure,
        dense_counts=pruning.count(model, example),
    )
    dry_run(make_strategy, model, rt)  # every bad value or combination fails here, before the baseline trains

    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ctx = RunContext(settings.trainer, datamodule, output_dir)
    rt.ctx = ctx
    row: dict[str, Any] = {"run_id": run_id, "status": "failed"}
    rt.current = "baseline"
    try:
        rt.phases["baseline"] = baseline = obtain_baseline(settings.baseline, settings.measure, model, ctx, example)
        if settings.baseline.recipe.auto and baseline.epochs_trained() is not None:
            rt.baseline = settings.baseline.recipe.trained(baseline.epochs_trained())  # what Scratch-E/B repeat
        rt.remember_baseline(model)
        if getattr(rt.strategy, "scan", None) is not None:
            rt.current = "scan"
            start = time.perf_counter()
            rt.scan = rt.strategy.sensitivity_scan(model, rt)
            rt.totals["scan_wall_s"] = time.perf_counter() - start
        rt.current = "plan"
        steps = rt.strategy.plan(model, rt)
        execute(steps, model, rt)

        if "pruned" in rt.phases:  # a gradual schedule prunes while it trains: no point before retraining
            rt.phases["pruned"].metrics["wall_s"] = rt.totals["prune_wall_s"]
        rt.phases["retrained"].metrics["wall_s"] = rt.totals["retrain_wall_s"]
        tables = rt.strategy.tables(model)
        if rt.scan is not None:
            tables["sensitivity"] = [{**r, "base_metric": rt.scan.base} for r in rt.scan.rows]
        finish: dict[str, Any] = {}
        if is_global_zero():
            atomic_write_bytes(output_dir / "pruning_records.json", json.dumps(rt.records, indent=1).encode())
            save_model(model, rt.strategy, output_dir / "model.pt")
            rt.current = "latency"  # baseline vs final, interleaved; its medians replace the phases'
            final_phase = headline_phase(rt.phases)
            finish.update(compare_to_baseline(rt.teacher(), model, example, settings.latency, rt.phases, final_phase))
            rt.current = "deploy"  # never raises for a model that cannot ship: the row says why
            batch = real_batch(datamodule)
            finish.update(deploy(model, batch, settings.deploy, output_dir))
            if settings.deploy.quantize == "int8":  # nor for one that cannot be quantized
                finish.update(_int8(rt, datamodule, batch, settings, output_dir))
        row.update(_row(cfg, settings, run_id, rt, tables, output_dir))
        row["metrics"].update(finish)
        row["wall_s"] = time.perf_counter() - started
        row["status"] = "ok"
        _log_summary(ctx, row, tables)
        if is_global_zero():
            measured = {
                f"latency_b{b}_ms": row["metrics"].get(f"ratio/latency_b{b}")
                for b in settings.measure.latency_batch_sizes
            }
            print(format_summary({k: v for k, v in rt.phases.items() if "/" not in k}, measured))
            if (table := format_deploy_table(row["metrics"], headline_phase(rt.phases))) is not None:
                print(table)
        return row
    except BaseException as err:
        row.update(failure_fields(err, rt.current, output_dir))
        log.error("run %s %s during %s: %s: %s", run_id, row["status"], rt.current, type(err).__name__, err)
        raise
    finally:
        if row["status"] != "ok":
            row.update(
                {
                    "config": OmegaConf.to_container(cfg, resolve=True),
                    "commit": git_commit(),
                    "seed": cfg.seed,
                    "dataset": cfg.dataset.get("name"),
                    "model": cfg.model.get("name"),
                    "strategy": cfg.strategy.get("name"),
                    "experiment": experiment_name(),
                    "arm": experiment_name("arm"),
                    "wall_s": time.perf_counter() - started,
                }
            )
            with contextlib.suppress(Exception):
                row["parts"] = rt.strategy.parts()
        if cfg.results.write and is_global_zero():
            append_row(cfg.paths.results_dir, row)
        ctx.finish()


def _int8(rt: Runtime, datamodule: Any, batch: torch.Tensor, settings: RunSettings, output_dir: Path) -> dict:
    """``deploy.quantize=int8``: the shipped model in int8, calibrated on training batches, measured on
    the whole test split and timed against the fp32 and dense models (``experiments.run.int8``)."""
    calibration, _ = rt.calibration(settings.deploy.calibration_batches)
    test = datamodule.test_dataloader()
    eval_batch = getattr(test, "batch_size", None)
    return deploy_int8(
        rt.teacher(),
        batch,
        calibration,
        test,
        settings.deploy,
        settings.latency,
        output_dir,
        batch_sizes=(eval_batch,) if eval_batch else (),
    )


def headline_phase(phases: dict[str, Phase]) -> str:
    """The phase whose model the run ships: ``quantized`` if there is one, else ``retrained``."""
    return [p for p in ("retrained", "quantized") if p in phases][-1]


def _row(
    cfg: DictConfig, settings: RunSettings, run_id: str, rt: Runtime, tables: dict[str, Any], output_dir: Path
) -> dict[str, Any]:
    phases = rt.phases
    flat = {f"{p}/{k}": v for p, phase in phases.items() for k, v in phase.metrics.items()}
    base, final = phases["baseline"].metrics, phases[headline_phase(phases)].metrics

    def ratio(key: str) -> float | None:
        return final[key] / base[key] if key in final and key in base and base[key] else None

    derived = {
        "ratio/params": ratio("params"),
        "ratio/nonzero_params": ratio("nonzero_params"),
        "ratio/compressed_bytes": final["compressed_bytes"] / base["dense_bytes"],
        "ratio/macs": ratio("macs"),
        **{f"ratio/latency_b{b}": ratio(f"latency_b{b}_ms") for b in settings.measure.latency_batch_sizes},
        "delta/acc": final["acc"] - base["acc"],
        "final/acc": final["acc"],
        "retrain/epochs": rt.totals["retrain_epochs"],
        "retrain/steps": rt.totals["retrain_steps"],
        "retrain/wall_s": rt.totals["retrain_wall_s"],
        "prune/wall_s": rt.totals["prune_wall_s"],
    }
    if "scan_wall_s" in rt.totals:
        derived["scan/wall_s"] = rt.totals["scan_wall_s"]
    trained = getattr(phases["baseline"], "epochs_trained", None)
    if callable(trained) and trained() is not None:  # the epochs the baseline trained (none from a checkpoint)
        derived["baseline/epochs"] = trained()
    if "rewind_epoch" in rt.totals:  # learning-rate rewinding: the baseline epoch its replay started at
        derived["retrain/rewind_epoch"] = rt.totals["rewind_epoch"]
    strategy_metrics = getattr(rt.strategy, "metrics", None)  # optional: numbers only the strategy knows
    if callable(strategy_metrics):  # e.g. latency/target, latency/b<N>/predicted_ratio of latency-aware pruning
        derived.update(strategy_metrics())
    recipe = settings.baseline.recipe
    parts = {**rt.strategy.parts(), "baseline_epochs": "auto" if recipe.auto else recipe.epochs}
    if parts.get("epochs_budget") is None:  # Scratch-E/B: the baseline's epochs (x its MACs over the pruned net's)
        scratch = {"scratch_e": "baseline", "scratch_b": "baseline x MACs"}.get(parts.get("retrain"))
        # on an auto baseline a number would differ from seed to seed and split the arm
        parts["epochs_budget"] = scratch if recipe.auto and scratch else rt.totals["retrain_epochs"]
    return {
        "run_id": run_id,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": git_commit(),
        "seed": cfg.seed,
        "dataset": cfg.dataset.get("name"),
        "model": cfg.model.get("name"),
        "strategy": cfg.strategy.get("name"),
        "experiment": experiment_name(),
        "arm": experiment_name("arm"),
        "output_dir": str(output_dir),
        "machine": machine(),
        "cpu": pruning.latency.cpu_model(),  # numbers repeat exactly only on the same CPU, torch build and threads
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "data_source": str(source) if (source := getattr(rt.ctx.datamodule, "data_source", None)) else None,
        "data": report() if callable(report := getattr(rt.ctx.datamodule, "data_report", None)) else None,
        "baseline_source": source_of() if callable(source_of := getattr(phases["baseline"], "source", None)) else None,
        "baseline_training": getattr(phases["baseline"], "training", None),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "parts": parts,
        "metrics": {**flat, **derived},
        "tables": tables,
    }


def _log_summary(ctx: RunContext, row: dict[str, Any], tables: dict[str, Any]) -> None:
    """The W&B run's summary holds every metric of the row; per-layer tables as wandb.Table."""
    if ctx.wandb_logger is None or not is_global_zero():
        return
    ctx.wandb_logger.experiment.summary.update({k: v for k, v in row["metrics"].items() if v is not None})
    ctx.wandb_logger.experiment.summary.update({f"parts/{k}": v for k, v in row["parts"].items() if v is not None})
    for key, rows in tables.items():
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            columns = list(rows[0])
            ctx.wandb_logger.log_table(
                key=f"tables/{key}", columns=columns, data=[[r.get(c) for c in columns] for r in rows]
            )


__all__ = ["run", "save_model", "Phase", "RunSettings"]
