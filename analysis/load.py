"""Read the results store (``results/runs.jsonl``, optionally W&B runs) into tidy pandas tables.

Reads files only; never imports ``experiments``. Rows of schema 2 are read as written;
rows of schema 1 get their ``parts`` derived from ``config.strategy``. Malformed rows are
skipped and reported by file and line (``Store.problems``); of several rows with the same
settings and seed only the latest is kept (``Store.superseded``), so seeds are distinct.

    store = read_store("results")
    runs = load_runs(store)            # one row per run: parts and metrics as columns
    layers = load_layers(store)        # long tables: run keys + one row per table entry
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.papers import PAPERS
from analysis.parts import PARTS, chance_accuracy, derive_parts, effective_lr, ratio_text, ratio_value

RUNS_FILE = "runs.jsonl"
KNOWN_SCHEMAS = (1, 2)
STATUSES = ("ok", "failed", "interrupted")
REQUIRED = ("seed", "dataset", "model")
META = (
    "run_id",
    "time",
    "commit",
    "status",
    "seed",
    "dataset",
    "model",
    "strategy",
    "experiment",
    "arm",
    "output_dir",
    "wall_s",
    "schema_version",
    "machine",
    "cpu",
    "threads",
    "torch",
    "source",
)
RUN_KEYS = (
    "run_id",
    "time",
    "machine",
    "seed",
    "dataset",
    "model",
    "strategy",
    "experiment",
    "arm",
    *PARTS,
    "variant",
    "baseline_config",
)
"""The columns every long table carries, so it can be grouped like the runs table."""
TABLES = ("layers", "sensitivity", "sensitivity_criteria", "storage", "filter_norms")
_VOLATILE_TOP = {"paths", "results", "hydra", "logger"}
_VOLATILE_KEYS = {"seed", "output_dir", "dir", "save_dir", "root", "run_id", "machine", "host", "hostname"}


@dataclass(frozen=True)
class Problem:
    """Something wrong with one row, named by ``file:line``."""

    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass
class Store:
    """The valid rows of a store (normalised), and what was skipped and why."""

    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    superseded: list[Problem] = field(default_factory=list)

    def with_status(self, status: str | None = "ok") -> list[dict[str, Any]]:
        return [r for r in self.rows if status is None or r["status"] == status]


StoreLike = str | Path | Store


def read_store(
    store: StoreLike = "results", wandb_dir: str | Path | None = None, wandb_project: str | None = None
) -> Store:
    """Parse, validate and de-duplicate every row of ``store`` (a folder holding runs.jsonl, or the file).

    ``wandb_dir``: also read W&B offline run folders found under it; ``wandb_project``
    (``entity/project``): also read that online project through W&B's public API.
    """
    if isinstance(store, Store):
        return store
    path = Path(store)
    file = path if path.is_file() else path / RUNS_FILE
    if not file.exists() and wandb_dir is None and wandb_project is None:
        raise FileNotFoundError(f"no results store at {file}: run `python run.py` first or pass --store")
    out = Store(path=file)
    raw_rows: list[tuple[str, Any]] = []
    if file.exists():
        for lineno, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw_rows.append((f"{file}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                out.problems.append(Problem(f"{file}:{lineno}", f"not valid JSON ({err.msg}); fix or remove that line"))
    if wandb_dir is not None or wandb_project is not None:
        from analysis import wandb_source

        known = {str(r.get("output_dir")) for _, r in raw_rows if isinstance(r, dict) and r.get("output_dir")}
        known_ids = {str(r.get("run_id")) for _, r in raw_rows if isinstance(r, dict)}
        if wandb_dir is not None:
            raw_rows += [
                (s, r) for s, r in wandb_source.offline_rows(wandb_dir) if str(r.get("output_dir")) not in known
            ]
        if wandb_project is not None:
            raw_rows += [
                (s, r) for s, r in wandb_source.online_rows(wandb_project) if str(r.get("run_id")) not in known_ids
            ]
    for order, (source, raw) in enumerate(raw_rows):
        row = _normalise(raw, source, out.problems)
        if row is not None:
            row["_order"] = order
            out.rows.append(row)
    _dedupe(out)
    _name_variants(out.rows)
    return out


def load_runs(store: StoreLike = "results", status: str | None = "ok") -> pd.DataFrame:
    """One row per run: meta columns, every ``parts`` key, ``variant``, and every metric as a column.

    ``status=None`` keeps failed and interrupted runs too (with ``error_type/message/phase``).
    Extra columns: ``ratio_value`` (the ratio as a number), ``retrain_lr`` (the learning rate
    retraining used: the fine-tuning optimizer's, or the baseline's for Scratch-E/B), ``chance``
    and ``diverged`` (final accuracy within 2 points of chance).
    """
    rows = read_store(store).with_status(status)
    records = []
    for r in rows:
        rec = {k: r.get(k) for k in META}
        rec.update(r["parts"])
        rec.update(
            variant=r["variant"], baseline_config=r["baseline_config"], ratio_value=ratio_value(r["parts"]["ratio"])
        )
        error = r.get("error") or {}
        rec.update(error_type=error.get("type"), error_message=error.get("message"), error_phase=error.get("phase"))
        rec.update(r["metrics"])
        recorded = r["parts"].get("retrain_lr")  # the lr the run says it used, else read off its config
        rec["retrain_lr"] = recorded if recorded is not None else effective_lr(r["config"], r["parts"])[0]
        chance = chance_accuracy(r["dataset"], r["config"])
        rec["chance"] = chance
        acc = r["metrics"].get("final/acc")
        rec["diverged"] = bool(chance is not None and acc is not None and not math.isnan(acc) and acc < chance + 0.02)
        records.append(rec)
    frame = pd.DataFrame.from_records(records, columns=None if records else [*META, *PARTS, "variant"])
    if not frame.empty:
        frame["time"] = pd.to_datetime(frame["time"], errors="coerce")
    return frame.reset_index(drop=True)


def load_table(store: StoreLike, table: str, status: str | None = "ok") -> pd.DataFrame:
    """The long table ``tables[table]`` of every run, each entry with the run's keys (:data:`RUN_KEYS`).

    Where an entry's key is also a run key (a sensitivity scan's ``ratio``), the entry's
    value keeps the name and the run's moves to ``run_<key>``.
    """
    records = []
    for r in read_store(store).with_status(status):
        keys = {k: r["parts"][k] if k in r["parts"] else r.get(k) for k in RUN_KEYS}
        for entry in r["tables"].get(table) or []:
            clash = {f"run_{k}": keys[k] for k in entry if k in keys}  # e.g. a scan's "ratio" vs the run's
            records.append({**keys, **clash, **entry})
    return pd.DataFrame.from_records(records, columns=None if records else list(RUN_KEYS))


def load_layers(store: StoreLike = "results") -> pd.DataFrame:
    """Per layer of every run: channels before/after and kept fraction (filters) or kept weights and density."""
    return load_table(store, "layers")


def load_sensitivity(store: StoreLike = "results") -> pd.DataFrame:
    """Per (run, group, ratio) of a sensitivity scan: the metric after pruning that group alone, and the base metric."""
    return load_table(store, "sensitivity")


def load_sensitivity_criteria(store: StoreLike = "results") -> pd.DataFrame:
    """Per (run, criterion, group, ratio): the scan repeated with each of ``strategy.scan.criteria`` (Li Fig. 2c)."""
    return load_table(store, "sensitivity_criteria")


def load_storage(store: StoreLike = "results") -> pd.DataFrame:
    """Per (run, layer): dense, pruned, quantized and Huffman-coded bytes (Deep Compression runs)."""
    return load_table(store, "storage")


def load_filter_norms(store: StoreLike = "results") -> pd.DataFrame:
    """Per (run, layer, rank): the baseline's filter L1 norms sorted descending, normalised by the layer's max."""
    return load_table(store, "filter_norms")


def load_ratios(store: StoreLike = "results") -> pd.DataFrame:
    """Per (run, group): the pruning ratio the run used (``tables.ratios``)."""
    records = []
    for r in read_store(store).with_status("ok"):
        keys = {k: r["parts"][k] if k in r["parts"] else r.get(k) for k in RUN_KEYS}
        records += [{**keys, "group": g, "group_ratio": v} for g, v in (r["tables"].get("ratios") or {}).items()]
    return pd.DataFrame.from_records(records, columns=None if records else list(RUN_KEYS))


# -- normalising one row -------------------------------------------------------------------


def _normalise(raw: Any, source: str, problems: list[Problem]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append(Problem(source, f"a row must be a JSON object, got {type(raw).__name__}; skipped"))
        return None
    missing = [k for k in REQUIRED if raw.get(k) is None]
    if missing:
        problems.append(Problem(source, f"missing {', '.join(missing)}; skipped"))
        return None
    version = raw.get("schema_version", 1)
    if version not in KNOWN_SCHEMAS:
        problems.append(
            Problem(
                source,
                f"schema_version {version!r} is newer than this analysis knows "
                f"({max(KNOWN_SCHEMAS)}); read as {max(KNOWN_SCHEMAS)}, update analysis/",
            )
        )
    try:
        seed = int(raw["seed"])
    except (TypeError, ValueError):
        problems.append(Problem(source, f"seed {raw['seed']!r} is not an integer; skipped"))
        return None
    status = raw.get("status") or "ok"
    if status not in STATUSES:
        problems.append(Problem(source, f"unknown status {status!r} (expected one of {', '.join(STATUSES)}); skipped"))
        return None
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    metrics = _numeric_metrics(raw.get("metrics"))
    given = raw.get("parts") if isinstance(raw.get("parts"), dict) else None
    parts = dict.fromkeys(PARTS) | (derive_parts(config) if given is None else {})
    if given is not None:
        parts.update({k: v for k, v in given.items() if k in PARTS})
        # parts this analysis does not know yet (a new strategy key) are kept when they are plain values
        parts.update(
            {k: v for k, v in given.items() if k not in PARTS and (v is None or isinstance(v, (str, int, float, bool)))}
        )
    parts["ratio"] = ratio_text(parts["ratio"])
    if "final/acc" not in metrics:
        for phase in ("quantized", "retrained") + (("pruned",) if parts.get("retrain") == "none" else ()):
            if f"{phase}/acc" in metrics:
                metrics["final/acc"] = metrics[f"{phase}/acc"]
                break
    if status == "ok" and "final/acc" not in metrics:
        what = "no metrics" if not metrics else "no final/acc (nor retrained/acc)"
        problems.append(Problem(source, f"status ok but {what}; skipped (rerun it, or remove the line)"))
        return None
    if version == 1:  # schema 1 named the phase costs after the phases
        for new, old in (("retrain/wall_s", "retrained/wall_s"), ("prune/wall_s", "pruned/wall_s")):
            if new not in metrics and old in metrics:
                metrics[new] = metrics[old]
        if "retrain/epochs" not in metrics and parts.get("epochs_budget") is not None:
            metrics["retrain/epochs"] = float(parts["epochs_budget"])
    if "delta/acc" not in metrics and "baseline/acc" in metrics and "final/acc" in metrics:
        metrics["delta/acc"] = metrics["final/acc"] - metrics["baseline/acc"]
    tables = raw.get("tables") if isinstance(raw.get("tables"), dict) else {}
    clean_tables: dict[str, Any] = {}
    for name in TABLES:
        value = tables.get(name)
        if value is None:
            continue
        if isinstance(value, list) and all(isinstance(e, dict) for e in value):
            clean_tables[name] = value
        else:
            problems.append(Problem(source, f"tables.{name} is not a list of objects; that table is ignored"))
    if isinstance(tables.get("ratios"), dict):
        clean_tables["ratios"] = tables["ratios"]
    stripped = _strip(config)
    identity = [raw["dataset"], raw["model"], raw.get("strategy"), raw.get("experiment"), parts, stripped]
    baseline = [raw["dataset"], raw["model"], parts.get("baseline_epochs")]
    baseline += [stripped.get(k) for k in ("dataset", "model", "baseline")]
    return {
        "run_id": str(raw.get("run_id") or source),
        "time": raw.get("time"),
        "commit": raw.get("commit"),
        "status": status,
        "seed": seed,
        "dataset": str(raw["dataset"]),
        "model": str(raw["model"]),
        "strategy": raw.get("strategy") or (config.get("strategy") or {}).get("name"),
        "experiment": raw.get("experiment") or _experiment_of_v1(raw, config),
        "arm": raw.get("arm") if isinstance(raw.get("arm"), str) else None,
        "output_dir": raw.get("output_dir"),
        "wall_s": _number(raw.get("wall_s")),
        "schema_version": version,
        "machine": _machine(raw, config),
        "cpu": raw.get("cpu") if isinstance(raw.get("cpu"), str) else None,  # older rows: in ``machine`` only
        "threads": _number(raw.get("threads")),
        "torch": raw.get("torch") if isinstance(raw.get("torch"), str) else None,
        "source": source,
        "error": raw.get("error") if isinstance(raw.get("error"), dict) else None,
        "config": config,
        "parts": parts,
        "metrics": metrics,
        "tables": clean_tables,
        "baseline_training": raw.get("baseline_training") if isinstance(raw.get("baseline_training"), dict) else None,
        "identity": json.dumps(identity, sort_keys=True, default=str),
        "baseline_config": json.dumps(baseline, sort_keys=True, default=str),
        "flat_config": _flatten(stripped),
    }


def _experiment_of_v1(raw: dict[str, Any], config: dict[str, Any]) -> str | None:
    """Schema 1 did not record the paper preset: the run's ``.hydra/overrides.yaml``, else a strategy named after it."""
    if raw.get("schema_version", 1) != 1:
        return None
    overrides = Path(str(raw.get("output_dir") or "")) / ".hydra" / "overrides.yaml"
    if raw.get("output_dir") and overrides.is_file():
        for line in overrides.read_text().splitlines():
            match = re.search(r"\bexperiment=([\w.-]+)", line)
            if match:
                return match[1]
    name = (config.get("strategy") or {}).get("name") if isinstance(config.get("strategy"), dict) else None
    return name if name in PAPERS else None


def _numeric_metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    out = {}
    for key, value in metrics.items():
        number = _number(value)
        if number is not None:
            out[str(key)] = number
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _machine(raw: dict[str, Any], config: dict[str, Any]) -> str | None:
    for value in (raw.get("machine"), raw.get("host"), config.get("machine"), config.get("host")):
        if isinstance(value, dict):
            value = " / ".join(str(v) for v in value.values() if v)
        if value:
            return str(value)
    return None


def _strip(config: Any, top: bool = True) -> Any:
    """The config without seeds, output paths and logging: what makes two runs the same setting."""
    if isinstance(config, dict):
        return {
            k: _strip(v, False)
            for k, v in config.items()
            if k not in _VOLATILE_KEYS and not (top and k in _VOLATILE_TOP) and not str(k).endswith("_dir")
        }
    if isinstance(config, list):
        return [_strip(v, False) for v in config]
    return config


def _flatten(config: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(config, dict):
        out: dict[str, str] = {}
        for k, v in config.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): json.dumps(config, sort_keys=True, default=str)} if prefix else {}


def _dedupe(store: Store) -> None:
    """Of several ok rows with the same settings and seed keep the latest (by time, then by position)."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in store.with_status("ok"):
        key = (row["identity"], row["seed"])
        old = latest.get(key)
        if old is None or (str(row["time"] or ""), row["_order"]) >= (str(old["time"] or ""), old["_order"]):
            latest[key] = row
    kept = {id(r) for r in latest.values()}
    for row in store.with_status("ok"):
        if id(row) not in kept:
            winner = latest[(row["identity"], row["seed"])]
            store.superseded.append(
                Problem(
                    row["source"],
                    f"same settings and seed {row['seed']} as the later "
                    f"{winner['source']}; only the later run is counted",
                )
            )
    store.rows = [r for r in store.rows if r["status"] != "ok" or id(r) in kept]


def _name_variants(rows: list[dict[str, Any]]) -> None:
    """``variant``: the config keys (``key=value``) that set apart runs sharing every named column."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        named = [row[k] for k in ("dataset", "model", "strategy", "experiment")] + [row["parts"], row["status"]]
        groups.setdefault(json.dumps(named, sort_keys=True, default=str), []).append(row)
    for group in groups.values():
        configs = [r["flat_config"] for r in group if r["flat_config"]]
        keys = sorted({k for c in configs for k in c})
        varying = [k for k in keys if len({c.get(k) for c in configs}) > 1]
        for row in group:
            flat = row["flat_config"]
            row["variant"] = ", ".join(f"{k}={flat.get(k, 'unset')}" for k in varying) if flat else ""
