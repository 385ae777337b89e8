"""Rows of the operating-point study (``study=operating_points``) with real resolved configs, for the verdict tests.

Each arm at uniform ratios 0.3, 0.5 and 0.7 as conf/arm/ names it: L1's one-shot, layer-wise and
iterative arms in both budget regimes, L2's sensitivity arms matched on MACs and on params and
the global arm, each with its measured MACs, params and batch-64 latency ratio, L5's skip arm,
and ``criteria_scan`` with a per-criterion scan of two groups. Numbers are made up: every
effect is a constant plus a small seed-dependent spread, so the verdicts are known.
"""

from __future__ import annotations

from typing import Any

from tests.analysis.helpers import resolved_config, run_row

RATIOS = ("0.3", "0.5", "0.7")
SUFFIX = {"0.3": "-r03", "0.5": "", "0.7": "-r07"}
UNIFORM = {  # measured (MACs, params, batch-64 latency) ratios of the uniform arm
    "0.3": (0.49, 0.49, 0.78),
    "0.5": (0.255, 0.254, 0.44),
    "0.7": (0.093, 0.09, 0.30),
}
SCAN = {"_target_": "experiments.strategies.parts.Scan", "ratios": [0.25, 0.5, 0.75], "images": 1000}


def config(seed: int, **dotted: Any) -> dict[str, Any]:
    """The resolved config as every arm's row carries it (the retraining budget set, as conf/ sets it)."""
    cfg = resolved_config(seed, **dotted)
    cfg["strategy"]["retrain"].setdefault("budget", "total")
    return cfg


def arm_row(seed: int, name: str, acc: float, config: dict[str, Any], resources: tuple, **parts: Any) -> dict:
    """A row of arm ``name``: accuracy ``acc`` plus a spread of at most 2 points in the fourth digit per seed."""
    macs, params, latency = resources
    parts.setdefault("epochs_budget", 2)
    spread = 0.001 * ((seed * 7 + sum(map(ord, name))) % 3)
    row = run_row(
        seed,
        final_acc=acc + spread,
        pruned_acc=acc - 0.3,
        strategy=name.split("-")[0],
        macs=macs,
        params=params,
        config=config,
        metrics={"ratio/latency_b64": latency + 0.002 * (seed % 2), "retrain/epochs": float(parts["epochs_budget"])},
        **parts,
    )
    return row | {"arm": name}


def schedule_rows(seed: int, ratio: str) -> list[dict[str, Any]]:
    """L1 at ``ratio``: one-shot (2, 6 and 12 epochs), layer-wise and iterative in total and per-step budgets."""
    r, sfx, res = float(ratio), SUFFIX[ratio], UNIFORM[ratio]

    def arm(name: str, acc: float, epochs: int, schedule="oneshot", rounds=1, budget="total", total=None):
        cfg = config(seed, strategy__schedule=schedule, strategy__rounds=rounds, strategy__ratio=r)
        cfg["strategy"]["retrain"].update(epochs=epochs, budget=budget)
        parts = {"schedule": schedule, "rounds": rounds, "ratio": ratio, "epochs_budget": total or epochs}
        return arm_row(seed, name + sfx, acc, cfg, res, **parts)

    return [
        arm("l1_oneshot", 0.90, 2),
        arm("l1_oneshot-e3x", 0.905, 6),
        arm("l1_oneshot-e6x", 0.906, 12),
        arm("l1_layerwise", 0.895, 2, "layerwise"),
        arm("l1_layerwise-per_step", 0.915, 2, "layerwise", budget="per_step", total=12),
        arm("l1_iterative-per_step", 0.91, 2, "iterative", 3, "per_step", total=6),
    ]


def sensitivity_rows(seed: int, ratio: str) -> list[dict[str, Any]]:
    """L2 at ``ratio``: scan ratios matching uniform's MACs (and keeping more params and latency), matching its
    params, and the global ranking matching its MACs."""
    r, sfx = float(ratio), SUFFIX[ratio]
    macs, params, latency = UNIFORM[ratio]
    rows = []
    for resource, res in (("macs", (macs - 0.01, params * 1.9, latency * 1.17)), ("params", (macs * 1.5, params, 0.6))):
        policy = {
            "_target_": "experiments.strategies.ratio_policy.SensitivityTarget",
            "match_uniform": r,
            "reduction": None,
            "resource": resource,
        }
        cfg = config(seed, strategy__ratio=policy, strategy__scan=SCAN)
        parts = {"ratio": "sensitivity", "ratio_policy": f"target_{resource}", "target_resource": resource}
        name = f"l1_sensitivity_{resource}{sfx}"
        rows.append(arm_row(seed, name, 0.91, cfg, res, match_uniform=r, epochs_budget=2, **parts))
    cfg = config(seed, strategy__ratio=r, strategy__scope="global", strategy__match="macs")
    res = (macs - 0.005, params * 1.1, latency * 0.99)
    rows.append(arm_row(seed, f"l1_global_macs{sfx}", 0.895, cfg, res, ratio=ratio, scope="global", epochs_budget=2))
    return rows


def scan_entries(seed: int) -> list[dict[str, Any]]:
    """Two groups scanned per criterion: l1 loses least, random more, largest_l1 collapses at high ratios."""
    drop = {"l1": 0.1, "random": 0.3, "largest_l1": 1.2}
    rows = []
    for group, channels in (("features.0", 16), ("features.3", 32)):
        for crit, d in drop.items():
            for ratio in (0.1, 0.3, 0.5, 0.7, 0.9):
                acc = max(0.1, 0.92 - d * ratio**2 - 0.004 * ((seed * 7 + len(crit)) % 3))
                rows.append(
                    {
                        "group": group,
                        "ratio": ratio,
                        "kept": int(channels * (1 - ratio)),
                        "channels": channels,
                        "metric": acc,
                        "criterion": crit,
                        "base_metric": 0.92,
                    }
                )
    return rows


def criteria_scan_row(seed: int) -> dict[str, Any]:
    scan = SCAN | {"ratios": [0.1, 0.3, 0.5, 0.7, 0.9], "criteria": ["random", "largest_l1"]}
    cfg = config(seed, strategy__recalibrate_bn=8, strategy__scan=scan)
    cfg["strategy"]["retrain"]["mode"] = "none"
    row = run_row(
        seed,
        final_acc=0.32,
        pruned_acc=0.32,
        retrain="none",
        recalibrate_bn=8,
        epochs_budget=0,
        config=cfg,
        tables={"sensitivity_criteria": scan_entries(seed)},
    )
    return row | {"arm": "criteria_scan"}


def operating_rows(seeds: int = 4) -> list[dict[str, Any]]:
    rows = []
    for s in range(seeds):
        for ratio in RATIOS:
            rows += schedule_rows(s, ratio) + sensitivity_rows(s, ratio)
        rows.append(criteria_scan_row(s))
    return rows
