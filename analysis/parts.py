"""The named parts of a run's strategy (what was pruned, how, how it was retrained).

Schema-2 rows carry them as ``row["parts"]``; for schema-1 rows they are derived, best
effort, from the resolved ``config.strategy``. Analyses group and compare runs by these
named columns, never by a hash of the config.
"""

from __future__ import annotations

import re
from typing import Any

PARTS: tuple[str, ...] = (
    "kind",
    "criterion",
    "schedule",
    "rounds",
    "ratio",
    "ratio_policy",
    "max_drop",
    "target_reduction",
    "scoring",
    "retrain",
    "freeze",
    "epochs_budget",
    "baseline_epochs",
    "recipe",
    "order",
    "budget",
    "retrain_epochs",
    "recalibrate_bn",
    "skip_sensitive",
    "freeze_bn",
    "scratch_cap",
    "target_resource",
    "match_uniform",
    "optimizer",
    "sparsity",
    "sparsity_strength",
    "sparsity_epochs",
    "sparsity_ramp",
    "scope",
)
"""The known keys of ``row["parts"]``, each its own column of :func:`analysis.load.load_runs` (and part of
an arm's identity in tables); other scalar parts a newer row carries become columns too."""

OPERATING_POINT: tuple[str, ...] = ("ratio", "ratio_policy", "max_drop", "target_reduction")
"""The parts that say how much is pruned (the x axis of a trade-off)."""

CHANCE_BY_DATASET = {
    "mnist": 0.1,
    "fashion_mnist": 0.1,
    "cifar10": 0.1,
    "cifar100": 0.01,
    "synthetic": 0.1,
    "imagenet": 0.001,
}

_CRITERION_NAMES = {
    "random": "random",
    "l1": "l1",
    "l1norm": "l1",
    "l2": "l2",
    "l2norm": "l2",
    "largestl1": "largest_l1",
    "largest_l1": "largest_l1",
    "bngamma": "bn_gamma",
    "bnscale": "bn_gamma",
    "fpgm": "fpgm",
    "taylor": "taylor",
    "apoz": "apoz",
    "activationmean": "activation_mean",
    "magnitude": "magnitude",
}


def ratio_text(value: Any) -> str | None:
    """A pruning ratio as the text the rows use: ``0.5 -> "0.5"``; names pass through."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return f"{float(value):g}"
    text = str(value)
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def ratio_value(text: Any) -> float:
    """The numeric ratio of a ``ratio`` part, or NaN for names such as ``"per_layer"``."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def criterion_name(criterion: Any) -> str | None:
    """``"l1"``, ``{"_target_": "pruning.criteria.Random", ...}`` or ``"pruning.criteria.LargestL1"`` -> a short name."""
    if criterion is None:
        return None
    if isinstance(criterion, dict):
        criterion = criterion.get("_target_") or criterion.get("name")
        if criterion is None:
            return None
    name = str(criterion).rsplit(".", 1)[-1]
    key = name.lower()
    if key in _CRITERION_NAMES:
        return _CRITERION_NAMES[key]
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return _CRITERION_NAMES.get(snake.replace("_", ""), snake)


def derive_parts(config: dict[str, Any]) -> dict[str, Any]:
    """Best-effort parts of a schema-1 row from its resolved config (missing keys stay None)."""
    strategy = config.get("strategy") if isinstance(config.get("strategy"), dict) else {}
    baseline = config.get("baseline") if isinstance(config.get("baseline"), dict) else {}
    target = str(strategy.get("_target_", ""))
    weight = "WeightPruning" in target or "sparsity" in strategy or "quality" in strategy
    rounds = _as_int(strategy.get("rounds")) or 1
    name = str(strategy.get("name", ""))
    schedule = (
        "layerwise"
        if (strategy.get("layerwise") or "layerwise" in name)
        else ("oneshot" if rounds == 1 else "iterative")
    )
    parts: dict[str, Any] = dict.fromkeys(PARTS)
    parts.update(
        kind="weight" if weight else "filter",
        rounds=rounds,
        schedule=schedule,
        scoring="independent",
        baseline_epochs=_as_int(baseline.get("epochs")),
    )
    if weight:
        parts["criterion"] = "magnitude"
        sparsity = strategy.get("sparsity")
        if strategy.get("quality") is not None and sparsity is None:
            parts.update(ratio="quality", ratio_policy="quality")
        elif isinstance(sparsity, dict):
            parts.update(ratio="per_layer", ratio_policy="per_layer")
        else:
            parts.update(ratio=ratio_text(sparsity), ratio_policy="sparsity")
        parts["freeze"] = f"kind:{strategy['freeze']}" if strategy.get("freeze") else "none"
    else:
        parts["criterion"] = criterion_name(strategy.get("criterion"))
        ratio = strategy.get("ratio")
        if isinstance(ratio, dict):
            parts.update(ratio="per_layer", ratio_policy="per_layer")
        else:
            parts.update(ratio=ratio_text(ratio), ratio_policy="uniform")
        parts["freeze"] = "none"
    epochs = [
        (_as_int(_get(strategy, "retrain", "epochs")) or 0) * rounds,
        _as_int(_get(strategy, "average", "epochs")) or 0,
        _as_int(_get(strategy, "quantize_retrain", "epochs")) or 0,
    ]
    parts["epochs_budget"] = sum(epochs)
    parts["retrain"] = "finetune" if parts["epochs_budget"] > 0 else "none"
    return parts


def chance_accuracy(dataset: Any, config: dict[str, Any] | None = None) -> float | None:
    """1 / number of classes, from the config's ``dataset.num_classes`` or the dataset's name."""
    ds = (config or {}).get("dataset")
    if isinstance(ds, dict) and _as_int(ds.get("num_classes")):
        return 1.0 / _as_int(ds["num_classes"])
    return CHANCE_BY_DATASET.get(str(dataset).lower())


def _get(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def effective_lr(config: dict[str, Any], parts: dict[str, Any] | None = None) -> tuple[float | None, str]:
    """(the retraining learning rate a run used, the config key it came from).

    Fine-tuning uses ``strategy.retrain.optimizer.lr``; Scratch-E/B train the re-initialised
    network with the baseline's optimizer (``baseline.optimizer.lr``) unless the strategy
    declares its own scratch optimizer (a ``strategy.retrain.scratch*`` key holding ``lr``).
    """
    retrain = _get(config, "strategy", "retrain")
    retrain = retrain if isinstance(retrain, dict) else {}
    mode = str((parts or {}).get("retrain") or retrain.get("mode") or "finetune")
    if mode.startswith("scratch"):
        for key, value in retrain.items():
            if str(key).startswith("scratch") and isinstance(value, dict):
                lr = value.get("lr", _get(value, "optimizer", "lr"))
                if isinstance(lr, (int, float)) and not isinstance(lr, bool):
                    return float(lr), f"strategy.retrain.{key}" + (".lr" if "lr" in value else ".optimizer.lr")
        lr = _get(config, "baseline", "optimizer", "lr")
        return (float(lr), "baseline.optimizer.lr") if isinstance(lr, (int, float)) else (None, "baseline.optimizer.lr")
    lr = _get(retrain, "optimizer", "lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return float(lr), "strategy.retrain.optimizer.lr"
    return None, "strategy.retrain.optimizer.lr"
