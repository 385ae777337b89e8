"""A store shaped like the lesson study (one dataset and model, many arms at one ratio, 12 seeds), for the figures.

Arms named as ``study=all`` names them; scans of groups of 16 to 256 channels whose nominal ratios
round to the same kept count (16 channels: 20% and 25% both keep 12); a no-retraining arm far
below the others; a sensitivity arm whose architecture (and MACs) changes with the seed; a global
ranking arm with its per-group allocation. Numbers are made up, in the study's ranges.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path
from typing import Any

from tests.analysis.helpers import run_row, write_store

GROUPS = (
    ("features.0", 16),
    ("features.3", 32),
    ("features.7", 64),
    ("features.10", 64),
    ("features.14", 128),
    ("classifier.0", 256),
)
SCAN_RATIOS = (0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
SENSITIVITY = {"features.0": 0.7, "features.3": 0.8, "features.7": 0.9, "features.10": 1.0, "features.14": 1.0}
BASE = 0.9254


def scan(seed: int) -> list[dict[str, Any]]:
    """One group pruned alone: accuracy falls with the fraction of channels actually removed."""
    rng = random.Random(seed)
    rows = []
    for group, channels in GROUPS:
        for ratio in SCAN_RATIOS:
            kept = int(channels * (1 - ratio))
            removed = 1 - kept / channels
            drop = SENSITIVITY.get(group, 0.5) * removed**2
            rows.append(
                {
                    "group": group,
                    "ratio": ratio,
                    "kept": kept,
                    "channels": channels,
                    "metric": BASE - drop + rng.gauss(0, 0.004),
                    "base_metric": BASE,
                }
            )
    return rows


def norms() -> list[dict[str, Any]]:
    """Sorted filter norms of every conv layer (ranks over its channels)."""
    return [
        {"layer": group, "rank": r, "l1": 1.0 - 0.7 * r / 16 * (16 / channels) ** 0.3}
        for group, channels in GROUPS[:-1]
        for r in range(16)
    ]


def allocation(seed: int, global_ranking: bool) -> dict[str, float]:
    """The fraction of each group's channels an allocating arm removed (``tables.ratios``)."""
    if global_ranking:
        chosen = {"features.0": 9 / 16, "features.3": 18 / 32, "features.7": 32 / 64, "features.10": 26 / 64}
        chosen |= {"features.14": 62 / 128, "classifier.0": 121 / 256}
        return chosen
    shift = (seed % 3) / 16
    return {
        "features.0": 2 / 16 + shift,
        "features.3": 20 / 32,
        "features.7": 32 / 64,
        "features.10": 58 / 64,
        "features.14": 0.0,
        "classifier.0": 0.0,
    }


ARMS: dict[str, dict[str, Any]] = {
    "l1_oneshot": {"final": 0.9127, "pruned": 0.130},
    "l1_oneshot-r03": {"final": 0.9199, "pruned": 0.60, "ratio": "0.3", "macs": 0.477, "params": 0.49, "lat": 0.78},
    "l1_oneshot-r07": {"final": 0.8930, "pruned": 0.10, "ratio": "0.7", "macs": 0.093, "params": 0.09, "lat": 0.30},
    "l1_skip_sensitive": {"final": 0.9113, "pruned": 0.120, "skip_sensitive": 1, "macs": 0.258, "params": 0.284},
    "random_oneshot": {"final": 0.9114, "pruned": 0.113, "criterion": "random"},
    "criteria_scan": {"final": 0.320, "pruned": 0.320, "retrain": "none", "recalibrate_bn": 8, "epochs_budget": 0},
    "l1_iterative-per_step": {
        "final": 0.9170,
        "pruned": 0.50,
        "schedule": "iterative",
        "rounds": 3,
        "epochs_budget": 6,
    },
    "l1_oneshot-e3x": {"final": 0.9189, "pruned": 0.130, "epochs_budget": 6},
    "l1_sensitivity_macs": {
        "final": 0.9138,
        "pruned": 0.20,
        "ratio": "sensitivity",
        "ratio_policy": "target_macs",
        "target_resource": "macs",
        "macs": 0.244,
        "params": 0.48,
        "lat": 0.517,
    },
    "l1_global_macs": {"final": 0.9110, "pruned": 0.15, "scope": "global", "params": 0.28},
    "l1_scratch_e": {"final": 0.9169, "pruned": 0.130, "retrain": "scratch_e", "epochs_budget": 4},
    "l1_scratch_b-uncapped": {"final": 0.9226, "pruned": 0.130, "retrain": "scratch_b", "epochs_budget": 15},
}


AUTO_BUDGETS = {"scratch_e": "baseline", "scratch_b": "baseline x MACs"}


def study_rows(seeds: int = 12, auto: bool = False) -> list[dict[str, Any]]:
    """Rows of every arm; ``auto``: baselines trained to their plateau (``baseline.epochs=auto``),
    each seed's at another epoch, and Scratch-E/B budgets named as the pipeline names them."""
    rows = []
    for name, spec in ARMS.items():
        spec = dict(spec)
        final, pruned = spec.pop("final"), spec.pop("pruned")
        macs, params, lat = spec.pop("macs", 0.255), spec.pop("params", 0.254), spec.pop("lat", 0.44)
        for s in range(seeds):
            rng = random.Random(zlib.crc32(f"{name}:{s}".encode()))
            run_spec, extra = dict(spec), {}
            if auto and run_spec.get("retrain") in AUTO_BUDGETS:
                epochs = 8 + s % 3  # the epochs this seed's baseline trained
                run_spec["epochs_budget"] = AUTO_BUDGETS[run_spec["retrain"]]
                extra["retrain/epochs"] = epochs * (4 if run_spec["retrain"] == "scratch_b" else 1)
            arm_macs = macs + (((s % 5) - 2) * 0.006 if name == "l1_sensitivity_macs" else 0.0)
            tables: dict[str, Any] = {}
            if name == "l1_sensitivity_macs":
                tables = {"sensitivity": scan(s), "filter_norms": norms(), "ratios": allocation(s, False)}
            elif name == "l1_global_macs":
                tables = {"ratios": allocation(s, True)}
            acc = final + rng.gauss(0, 0.0025 if final > 0.5 else 0.03)
            b1, b64 = 0.66 + rng.gauss(0, 0.02), lat + rng.gauss(0, 0.01)
            row = run_row(
                s,
                final_acc=acc,
                pruned_acc=acc if spec.get("retrain") == "none" else pruned + rng.gauss(0, 0.02),
                base_acc=BASE + rng.gauss(0, 0.0015),
                strategy=name.split("-")[0],
                model="vgg_small",
                macs=arm_macs,
                params=params,
                tables=tables,
                metrics={
                    "ratio/latency_b1": b1,
                    "ratio/latency_b64": b64,
                    "latency/b1/ci_low": b1 - 0.02,
                    "latency/b1/ci_high": b1 + 0.02,
                    "latency/b64/ci_low": b64 - 0.01,
                    "latency/b64/ci_high": b64 + 0.01,
                    **extra,
                },
                baseline_epochs="auto" if auto else 4,
                **run_spec,
            )
            row["arm"] = name
            row["config"]["machine"] = "vm (x86_64, AMD EPYC 7B13, 1 threads, cpu)"
            rows.append(row)
    return rows


def study_store(path: Path, seeds: int = 12, auto: bool = False) -> Path:
    return write_store(path, study_rows(seeds, auto))
