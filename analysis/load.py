"""Read the results store (``results/runs.jsonl``) into a tidy pandas DataFrame.

Reads files only; never imports ``experiments``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd


def load_runs(store: str | Path = "results", status: str | None = "ok") -> pd.DataFrame:
    """One row per run: id, seed, dataset, model, strategy, and every metric as a column."""
    path = Path(store) / "runs.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no results store at {path}: run `python run.py` first or pass --store")
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno} is not valid JSON ({err})") from err
        flat = {k: row.get(k) for k in ("run_id", "time", "commit", "seed", "dataset", "model", "strategy", "status")}
        strategy_cfg = (row.get("config") or {}).get("strategy") or {}
        # runs of the same strategy with different settings must not be pooled as seeds
        settings = {k: v for k, v in strategy_cfg.items() if k != "seed"}
        flat["variant"] = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:6]
        flat["ratio"] = strategy_cfg.get("ratio") if not isinstance(strategy_cfg.get("ratio"), dict) else json.dumps(strategy_cfg["ratio"])
        metrics = row.get("metrics") or {}
        flat.update(metrics)
        flat.setdefault("final/acc", metrics.get("quantized/acc", metrics.get("retrained/acc")))
        records.append(flat)
    frame = pd.DataFrame.from_records(records)
    if status is not None and not frame.empty:
        frame = frame[frame["status"] == status]
    return frame.reset_index(drop=True)
