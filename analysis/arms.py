"""Arms: the runs that share one full resolved config (all but the seed), one run per seed.

Two runs are the same arm when their flattened configs agree on every key that can change
what is measured. Keys that never do are ignored: output paths, threads, logging, the sweep
and results settings, ``hydra``, the seed, progress bars, the strategy's display name (and
whatever the row's own ``sweep.ignore`` lists). Of several ok runs of one arm and seed the
latest is used and the others are named (never averaged); failed and interrupted runs are
named per seed (never dropped silently).

:func:`config_diff` lists the keys two arms differ in, which :mod:`analysis.verdicts` sorts
into the lesson's part, what that part implies, neutral keys and anything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from analysis.load import StoreLike, read_store
from analysis.parts import effective_lr

IGNORED_TOP = ("paths", "threads", "logger", "sweep", "results", "hydra", "seed", "machine", "host")
"""Top-level config keys that never change what a run measures."""
IGNORED = ("trainer.enable_progress_bar", "strategy.name", "*_dir", "*.root", "*.run_id", "*.output_dir")
"""Flattened keys (fnmatch patterns) ignored everywhere: paths and the strategy's display name."""
NEUTRAL = (
    "measure",
    "deploy",
    "trainer.log_every_n_steps",
    "trainer.enable_model_summary",
    "trainer.enable_checkpointing",
    "dataset.eval_batch_size",
    "dataset.download",
)
"""Keys that change how a run is measured or exported but not its accuracy: a difference is annotated, not refused."""


def matches(key: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """``key`` is one of ``patterns`` or below one (``strategy.ratio`` covers ``strategy.ratio.resource``); globs allowed."""
    return any(
        key == p or key.startswith(p + ".") or fnmatchcase(key, p) or fnmatchcase(key, p + ".*") for p in patterns
    )


def flat_config(config: dict[str, Any]) -> dict[str, str]:
    """The config as ``{"a.b.c": json value}`` without the ignored keys (and the row's own ``sweep.ignore``)."""
    own = config.get("sweep", {}).get("ignore", []) if isinstance(config.get("sweep"), dict) else []
    skip = tuple(str(k) for k in own if isinstance(k, str)) + IGNORED
    out: dict[str, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif prefix and not matches(prefix, skip):
            out[prefix] = json.dumps(value, sort_keys=True, default=str)

    for key, value in config.items():
        if key not in IGNORED_TOP:
            walk(value, str(key))
    return out


def shown(value: str | None) -> str:
    """A flattened JSON value as short text (``unset`` when the key is missing)."""
    if value is None:
        return "unset"
    try:
        v = json.loads(value)
    except (TypeError, ValueError):
        return str(value)
    return v if isinstance(v, str) else json.dumps(v, default=str)


@dataclass
class Arm:
    """One arm: its identity, parts, flattened config and the run used per seed, with what was set aside."""

    dataset: str
    model: str
    strategy: str | None
    experiment: str | None
    arm: str | None
    parts: dict[str, Any]
    config: dict[str, str]
    raw_config: dict[str, Any]
    by_seed: dict[int, dict[str, Any]] = field(default_factory=dict)
    duplicates: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    def part(self, name: str) -> Any:
        return self.parts.get(name)

    def value(self, key: str) -> Any:
        """The config value at dotted ``key`` (None when unset)."""
        raw = self.config.get(key)
        return None if raw is None else json.loads(raw)

    def metric(self, name: str) -> dict[int, float]:
        """Per seed: the metric of the run used (seeds without it are left out)."""
        out = {}
        for seed, row in self.by_seed.items():
            v = row["metrics"].get(name)
            if v is not None and math.isfinite(v):
                out[seed] = v
        return out

    def mean(self, name: str) -> float:
        values = list(self.metric(name).values())
        return sum(values) / len(values) if values else math.nan

    @property
    def label(self) -> str:
        """The study arm's name (``arm=...``) if the runs had one, else the strategy's (and the paper preset)."""
        name = self.arm or str(self.strategy)
        return name + (f" [{self.experiment}]" if self.experiment else "")

    def training(self) -> str:
        """``"lr 0.01 (strategy.retrain.optimizer.lr), 2 epochs, 938 steps"``: what retraining this arm did."""
        lr, source = effective_lr(self.raw_config, self.parts)
        if self.part("retrain_lr") is not None:  # recorded by the run itself
            lr, source = float(self.part("retrain_lr")), source + ", as recorded"
        text = [f"lr {lr:g} ({source})" if lr is not None else "lr unknown"]
        epochs, steps = self.mean("retrain/epochs"), self.mean("retrain/steps")
        if math.isfinite(epochs):
            text.append(f"{epochs:g} epochs")
        if math.isfinite(steps):
            text.append(f"{steps:.0f} steps")
        return ", ".join(text)

    def problems(self, side: str) -> list[str]:
        """Duplicate and failed runs of this arm, one line per seed."""
        lines = []
        for seed, rows in sorted(self.duplicates.items()):
            used = self.by_seed[seed]
            lines.append(
                f"{side} seed {seed}: {len(rows) + 1} ok runs ({', '.join(r['run_id'] for r in rows)} and "
                f"{used['run_id']}); the latest ({used['run_id']}) is used, none averaged"
            )
        for seed, rows in sorted(self.failed.items()):
            what = "; ".join(
                f"{r['status']} run {r['run_id']}"
                + (
                    f" ({r['error'].get('type')} in {r['error'].get('phase')}: {r['error'].get('message')})"
                    if r.get("error")
                    else ""
                )
                for r in rows
            )
            after = "an ok run of that seed is used" if seed in self.by_seed else "no ok run: the seed is missing"
            lines.append(f"{side} seed {seed}: {what}; {after}")
        return lines


def _identity(row: dict[str, Any], flat: dict[str, str]) -> str:
    base = [row["dataset"], row["model"], row.get("strategy"), row.get("experiment"), row.get("arm")]
    return json.dumps(base + [flat if flat else row["parts"]], sort_keys=True, default=str)


def build_arms(store: StoreLike) -> list[Arm]:
    """Every arm of the store with its latest ok run per seed, duplicates and failed runs."""
    store = read_store(store)
    arms: dict[str, Arm] = {}
    order = sorted(store.rows, key=lambda r: (str(r.get("time") or ""), r.get("_order", 0)))
    for row in order:
        flat = flat_config(row["config"])
        key = _identity(row, flat)
        arm = arms.get(key)
        if arm is None and row["status"] != "ok":
            continue  # failures are attached below, once every arm exists
        if arm is None:
            arm = arms[key] = Arm(
                row["dataset"],
                row["model"],
                row.get("strategy"),
                row.get("experiment"),
                row.get("arm"),
                row["parts"],
                flat,
                row["config"],
            )
        if row["status"] == "ok":
            if row["seed"] in arm.by_seed:
                arm.duplicates.setdefault(row["seed"], []).append(arm.by_seed[row["seed"]])
            arm.by_seed[row["seed"]] = row  # later rows win
    for row in order:
        if row["status"] == "ok":
            continue
        flat = flat_config(row["config"])
        arm = arms.get(_identity(row, flat)) or _same_config(arms.values(), row, flat)
        if arm is not None:
            arm.failed.setdefault(row["seed"], []).append(row)
    return list(arms.values())


def _same_config(arms: Any, row: dict[str, Any], flat: dict[str, str]) -> Arm | None:
    """A failed row whose parts were never recorded still belongs to the arm with its config."""
    for arm in arms:
        if flat and arm.config == flat and (arm.dataset, arm.model) == (row["dataset"], row["model"]):
            return arm
    return None


def config_diff(a: Arm, b: Arm) -> dict[str, tuple[str, str]]:
    """Keys whose values differ: ``{key: (value in a, value in b)}``; named parts when either arm has no config."""
    if a.config and b.config:
        left, right = a.config, b.config
    else:
        left = {f"parts.{k}": json.dumps(v, default=str) for k, v in a.parts.items()}
        right = {f"parts.{k}": json.dumps(v, default=str) for k, v in b.parts.items()}
    keys = sorted(set(left) | set(right))
    diff = {k: (shown(left.get(k)), shown(right.get(k))) for k in keys if left.get(k) != right.get(k)}
    return _collapse(diff, left, right)


def _collapse(
    diff: dict[str, tuple[str, str]], left: dict[str, str], right: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """A section set on one side and null on the other is one difference (``strategy.freeze: {...} vs null``)."""
    for key in [k for k in diff if diff[k][0] == "unset" or diff[k][1] == "unset"]:
        if key not in diff:
            continue
        side = left if diff[key][0] == "unset" else right
        below = {k: v for k, v in side.items() if k.startswith(key + ".")}
        if not below or (key in left) == (key in right):
            continue
        tree = json.dumps({k[len(key) + 1 :]: json.loads(v) for k, v in sorted(below.items())}, default=str)
        for k in below:
            diff.pop(k, None)
        diff[key] = (tree, diff[key][1]) if side is left else (diff[key][0], tree)
    return dict(sorted(diff.items()))


def describe(diff: dict[str, tuple[str, str]], keys: list[str]) -> str:
    """``"strategy.retrain.optimizer.lr: 0.01 vs 0.05; ..."`` for ``keys`` of ``diff``."""
    return "; ".join(f"{k}: {diff[k][0]} vs {diff[k][1]}" for k in keys)
