"""The strategy table: every arm (strategy and parts) with accuracy change, reductions, cost; mean ± std over seeds.

Arms are told apart by their named parts (one-shot / iterative / layerwise, finetune /
Scratch-E / Scratch-B, freezing, independent / greedy scoring, uniform / sensitivity
ratios, ...); only the parts that vary in the store are shown as columns.

    python -m analysis.strategy_table --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.load import Store, StoreLike, load_runs
from analysis.output import (
    ARM,
    MISSING,
    NoData,
    cli,
    over_seeds,
    pm,
    varying,
    write_tables,
)
from analysis.parts import PARTS

VALUES = [
    "delta/acc",
    "final/acc",
    "baseline/acc",
    "ratio/macs",
    "ratio/params",
    "retrain/epochs",
    "retrain/steps",
    "retrain_lr",
    "retrain/wall_s",
    "prune/wall_s",
    "wall_s",
    "diverged",
]
HINT = "no finished runs: run e.g. `python run.py -m strategy=l1_oneshot,l1_iterative seed=0,1,2`"


def strategy_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: ``<metric>_mean/_std/_n`` of :data:`VALUES`, ``seeds`` (distinct) and the seed list."""
    if runs.empty:
        raise NoData(HINT)
    runs = runs.assign(diverged=runs["diverged"].astype(float)) if "diverged" in runs else runs
    table = over_seeds(runs, ARM, VALUES)
    return table.sort_values(
        ["dataset", "model", *[p for p in PARTS if p in table], "strategy"], key=lambda c: c.astype(str)
    ).reset_index(drop=True)


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as text: named columns that vary, then "mean ± std" cells in percent points, seconds, epochs."""
    parts = varying(table, ["experiment", "arm", *PARTS, "variant"])
    out = table[["dataset", "model", "strategy", *parts]].copy().astype(object)
    for col in parts:
        out[col] = out[col].map(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)

    def cell(metric: str, scale: float = 1.0, offset: float | None = None, digits: int = 2) -> list[str]:
        means, stds = table[f"{metric}_mean"], table[f"{metric}_std"]
        if offset is not None:  # a reduction: (1 - ratio) in percent
            means = offset - means
        return [pm(m, s, digits, scale) for m, s in zip(means, stds)]

    out["Δ acc (pp)"] = cell("delta/acc", 100)
    out["final acc (%)"] = cell("final/acc", 100)
    out["MAC reduction (%)"] = cell("ratio/macs", 100, offset=1.0, digits=1)
    out["param reduction (%)"] = cell("ratio/params", 100, offset=1.0, digits=1)
    out["retrain epochs"] = cell("retrain/epochs", digits=0)
    out["optimizer steps"] = cell("retrain/steps", digits=0)
    out["retrain lr"] = [MISSING if pd.isna(v) else f"{v:g}" for v in table["retrain_lr_mean"]]
    out["retrain wall (s)"] = cell("retrain/wall_s", digits=1)
    out["run wall (s)"] = cell("wall_s", digits=1)
    out["seeds"] = table["seeds"]
    diverged = (table["diverged_mean"].fillna(0) * table["diverged_n"]).round().astype(int)
    if diverged.any():
        out["diverged seeds"] = diverged
    return out.replace({None: MISSING})


def write_strategy_table(store: StoreLike, out: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, text) of the strategy table; writes strategy_table.csv/.md/.tex into ``out``."""
    table = strategy_table(load_runs(store))
    shown = shown_table(table)
    write_tables(
        table,
        shown,
        out,
        "strategy_table",
        "Strategies: accuracy change (final - baseline, percent points, test split), MAC and parameter reduction "
        "of the final model, retraining epochs, optimizer steps and learning rate (the fine-tuning optimizer's, "
        "or the baseline's for Scratch-E/B), wall time; mean ± std over seeds.",
    )
    return table, shown


def build(store: Store, out: Path) -> list[Path]:
    write_strategy_table(store, out)
    return [out / f"strategy_table.{ext}" for ext in ("csv", "md", "tex")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
