"""Rows of the schema-2 results store with chosen numbers, for the analysis tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

_counter = [0]


def run_row(
    seed: int,
    *,
    final_acc: float = 0.90,
    pruned_acc: float = 0.80,
    base_acc: float = 0.92,
    strategy: str = "l1_oneshot",
    experiment: str | None = None,
    dataset: str = "fashion_mnist",
    model: str = "vgg_small",
    macs: float = 0.5,
    params: float = 0.3,
    nonzero: float | None = None,
    time: str | None = None,
    status: str = "ok",
    tables: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    **parts: Any,
) -> dict[str, Any]:
    """One schema-2 row; ``parts`` override the defaults (a one-shot uniform L1 run at ratio 0.5)."""
    _counter[0] += 1
    p = {
        "kind": "filter",
        "criterion": "l1",
        "schedule": "oneshot",
        "rounds": 1,
        "ratio": "0.5",
        "ratio_policy": "uniform",
        "max_drop": None,
        "target_reduction": None,
        "scoring": "independent",
        "retrain": "finetune",
        "freeze": "none",
        "epochs_budget": 2,
        "baseline_epochs": 2,
    }
    p.update(parts)
    m = {
        "baseline/acc": base_acc,
        "baseline/params": 1000.0,
        "baseline/macs": 1e6,
        "baseline/dense_bytes": 4000.0,
        "baseline/latency_b1_ms": 1.0,
        "baseline/latency_b64_ms": 10.0,
        "pruned/acc": pruned_acc,
        "retrained/acc": final_acc,
        "final/acc": final_acc,
        "delta/acc": final_acc - base_acc,
        "ratio/params": params,
        "ratio/macs": macs,
        "ratio/nonzero_params": params if nonzero is None else nonzero,
        "ratio/latency_b1": 0.8,
        "ratio/latency_b64": 0.6,
        "retrain/epochs": float(p["epochs_budget"]) if isinstance(p["epochs_budget"], (int, float)) else float("nan"),
        "retrain/wall_s": 10.0,
        "prune/wall_s": 1.0,
    }
    m.update(metrics or {})
    row = {
        "schema_version": 2,
        "run_id": f"run{_counter[0]}",
        "time": time or f"2026-12-01T22:{_counter[0] % 60:02d}:00",
        "commit": "abc",
        "status": status,
        "seed": seed,
        "dataset": dataset,
        "model": model,
        "strategy": strategy,
        "experiment": experiment,
        "output_dir": f"outputs/run{_counter[0]}",
        "config": config if config is not None else {"seed": seed, "machine": "testbox"},
        "wall_s": 20.0,
        "parts": p,
        "metrics": m,
        "tables": tables or {},
    }
    if status != "ok":
        row["error"] = {"type": "RuntimeError", "message": "loss is nan", "phase": "retrain"}
        row["metrics"] = {"baseline/acc": base_acc}
    return row


CONFIG: dict[str, Any] = {
    "dataset": {
        "_target_": "experiments.data.FashionMNISTDataModule",
        "name": "fashion_mnist",
        "root": None,
        "batch_size": 128,
        "eval_batch_size": 1000,
        "val_size": 5000,
        "download": True,
    },
    "model": {"_target_": "experiments.models.build_model", "name": "vgg_small", "width": 1.0},
    "strategy": {
        "_target_": "experiments.strategies.filters.FilterPruning",
        "name": "l1_oneshot",
        "criterion": "l1",
        "ratio": 0.5,
        "schedule": "oneshot",
        "rounds": 1,
        "order": "forward",
        "scoring": "independent",
        "freeze": None,
        "freeze_bn": "fixed",
        "skip_sensitive": 0,
        "recalibrate_bn": 0,
        "scan": None,
        "retrain": {
            "_target_": "experiments.strategies.parts.Retrain",
            "mode": "finetune",
            "scratch_cap": 2.0,
            "epochs": 2,
            "lr_schedule": "cosine",
            "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9},
        },
    },
    "trainer": {"accelerator": "cpu", "devices": 1, "enable_progress_bar": True, "log_every_n_steps": 50},
    "logger": {"wandb": {"group": "l1_oneshot", "offline": True}},
    "paths": {"root_dir": "/work", "output_dir": "/work/outputs/x", "results_dir": "/work/results"},
    "seed": 0,
    "threads": 1,
    "sweep": {
        "skip_done": True,
        "ignore": ["paths", "threads", "sweep", "results", "logger", "trainer.enable_progress_bar"],
    },
    "baseline": {
        "epochs": 4,
        "reuse": True,
        "lr_schedule": "cosine",
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9},
    },
    "measure": {"latency_batch_sizes": [1, 64], "latency_repeats": 20},
    "results": {"write": True},
}
"""A resolved config as rows carry it (trimmed): the study's one-shot L1 arm."""


def resolved_config(seed: int = 0, **dotted: Any) -> dict[str, Any]:
    """:data:`CONFIG` for ``seed`` with ``dotted`` overrides, keys spelled with ``__`` for dots.

    ``resolved_config(1, strategy__retrain__optimizer__lr=0.05)`` sets ``strategy.retrain.optimizer.lr``.
    """
    config = copy.deepcopy(CONFIG)
    config["seed"] = seed
    for key, value in dotted.items():
        *path, last = key.split("__")
        node = config
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    return config


def write_store(path: Path, rows: list[dict[str, Any]], raw_lines: list[str] = ()) -> Path:
    """``path/runs.jsonl`` holding ``rows`` (as JSON lines) followed by ``raw_lines`` verbatim."""
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows) + "".join(line + "\n" for line in raw_lines)
    (path / "runs.jsonl").write_text(text)
    return path


CRITERION_DROP = {"l1": 0.0, "random": 0.05, "largest_l1": 0.3}
"""Extra accuracy lost per unit ratio by each criterion's scan (smallest L1 loses least)."""


def sensitivity_tables(
    seed: int, groups: tuple[str, ...] = ("features.0", "features.3"), criteria: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A scan of ``groups`` (in depth order) at ratios 0.25/0.5/0.75 and filter norms.

    The metric falls with the ratio, the first group faster: ``0.92 - ratio * (0.2 or 0.05) -
    0.01 * seed``; with ``criteria`` the scan is stored per criterion (entries name it), each
    losing :data:`CRITERION_DROP` more per unit ratio.
    """
    sens, norms = [], []
    for g, group in enumerate(groups):
        for crit in criteria or (None,):
            for ratio in (0.25, 0.5, 0.75):
                entry = {
                    "group": group,
                    "ratio": ratio,
                    "kept": int(16 * (1 - ratio)),
                    "channels": 16,
                    "metric": 0.92 - ratio * ((0.2 if g == 0 else 0.05) + CRITERION_DROP.get(crit, 0.0)) - 0.01 * seed,
                    "base_metric": 0.92,
                }
                sens.append(entry if crit is None else {**entry, "criterion": crit})
        norms += [{"layer": group, "rank": r, "l1": 1.0 - r / 8} for r in range(8)]
    return {"sensitivity": sens, "filter_norms": norms, "ratios": {group: 0.5 for group in groups}}


def storage_tables(seed: int) -> dict[str, Any]:
    """Two layers: dense 100 KB / 20 KB -> pruned 10 / 4 -> quantized 3 / 1 -> Huffman 2 / 0.5 KB."""
    return {
        "storage": [
            {
                "layer": "fc1.weight",
                "dense_bytes": 100_000,
                "pruned_bytes": 10_000 + seed,
                "quantized_bytes": 3_000,
                "huffman_bytes": 2_000,
            },
            {
                "layer": "fc2.weight",
                "dense_bytes": 20_000,
                "pruned_bytes": 4_000,
                "quantized_bytes": 1_000,
                "huffman_bytes": 500,
            },
        ],
        "layers": [{"name": "fc1.weight", "kind": "weight", "total": 25_000, "kept": 2_000, "density": 0.08}],
    }


def full_store(path: Path, extra_lines: list[str] = ()) -> Path:
    """A store exercising every figure and table (3 seeds per arm)."""
    rows = []
    for crit, base in (("l1", 0.90), ("random", 0.86), ("largest_l1", 0.82)):
        for ratio in ("0.3", "0.5"):
            for s in range(3):
                acc = base - (0.02 if ratio == "0.5" else 0.0) + 0.005 * s
                rows.append(
                    run_row(
                        s,
                        final_acc=acc,
                        pruned_acc=acc - 0.2,
                        criterion=crit,
                        ratio=ratio,
                        strategy=f"{crit}_oneshot",
                        macs=1 - float(ratio),
                        params=(1 - float(ratio)) ** 2,
                        tables=sensitivity_tables(s, criteria=tuple(CRITERION_DROP)) if crit == "l1" else None,
                    )
                )
    for s in range(3):
        rows.append(run_row(s, final_acc=0.905 + 0.006 * s, strategy="l1_iterative", schedule="iterative", rounds=3))
        rows.append(
            run_row(
                s,
                final_acc=0.985 - 0.001 * s,
                base_acc=0.984,
                dataset="fashion_mnist",
                model="lenet300",
                strategy="deep_compression",
                experiment="deep_compression_lenet300",
                kind="weight",
                criterion="magnitude",
                schedule="iterative",
                rounds=3,
                ratio="per_layer",
                ratio_policy="per_layer",
                epochs_budget=34,
                baseline_epochs=20,
                macs=1.0,
                params=1.0,
                nonzero=0.08,
                tables=storage_tables(s),
                metrics={"ratio/compressed_bytes": 1 / 41.0, "quantized/acc": 0.985 - 0.001 * s},
            )
        )
    rows.append(run_row(1, status="failed", strategy="l1_iterative", schedule="iterative", rounds=3))
    for row in rows:  # every run records its baseline's validation curve (flat: at its plateau)
        epochs = row["parts"]["baseline_epochs"]
        row["baseline_training"] = {"epochs_trained": epochs, "val_acc": [0.9] * epochs, "verdict": {"reached": True}}
    return write_store(path, rows, list(extra_lines))
