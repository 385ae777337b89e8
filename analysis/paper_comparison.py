"""Our numbers next to the papers' for every paper preset (``experiment`` column) that has runs, and the gap.

Our runs may use another dataset than the paper (Fashion-MNIST for MNIST when offline):
both datasets are shown. Gap = ours - paper, in the quantity's unit.

    python -m analysis.paper_comparison --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import Store, StoreLike, load_runs
from analysis.output import ARM, MISSING, NoData, cli, keyed, pm, write_tables
from analysis.papers import PAPERS, PaperResult

HINT = (
    "no runs of a paper preset: run e.g. `python run.py -m experiment=han2015_lenet300 seed=0,1,2` "
    f"(presets: {', '.join(PAPERS)})"
)


def _quantities(runs: pd.DataFrame) -> dict[str, tuple[pd.Series, str]]:
    """Per-run values of each compared quantity (NaN where the run lacks the metric), and the paper field."""

    def col(name: str) -> pd.Series:
        return runs[name] if name in runs else pd.Series(np.nan, index=runs.index)

    return {
        "baseline error (%)": ((1 - col("baseline/acc")) * 100, "baseline_error"),
        "final error (%)": ((1 - col("final/acc")) * 100, "pruned_error"),
        "error change (pp)": (-col("delta/acc") * 100, "error_change"),
        "fewer weights (x)": (1 / col("ratio/nonzero_params"), "weights_x"),
        "smaller storage (x)": (1 / col("ratio/compressed_bytes"), "storage_x"),
        "FLOPs (MACs) reduction (%)": ((1 - col("ratio/macs")) * 100, "flops_reduction"),
        "params reduction (%)": ((1 - col("ratio/params")) * 100, "params_reduction"),
    }


def _paper_value(paper: PaperResult, field: str) -> float | None:
    if field == "error_change":
        if paper.pruned_error is None or paper.baseline_error is None:
            return None
        return round(paper.pruned_error - paper.baseline_error, 4)
    return getattr(paper, field)


def paper_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (preset setting, quantity the paper reports): paper, ours mean/std/seeds, gap."""
    if runs.empty or "experiment" not in runs or runs["experiment"].isna().all():
        raise NoData(HINT)
    runs = keyed(runs[runs["experiment"].notna()], ARM)
    rows = []
    for key, group in runs.groupby(list(ARM), sort=True):
        arm = dict(zip(ARM, key))
        paper = PAPERS.get(str(arm["experiment"]))
        for quantity, (values, field) in _quantities(group).items():
            ref = _paper_value(paper, field) if paper else None
            if paper is not None and ref is None and "error" not in quantity:
                continue  # the paper does not report it
            v = values.replace([np.inf, -np.inf], np.nan).dropna()
            if paper is None and v.empty:
                continue
            mean = float(v.mean()) if len(v) else np.nan
            rows.append(
                {
                    "experiment": arm["experiment"],
                    "paper model": paper.model if paper else MISSING,
                    "paper dataset": paper.dataset if paper else MISSING,
                    "dataset": arm["dataset"],
                    "model": arm["model"],
                    "variant": arm["variant"],
                    "quantity": quantity,
                    "paper": ref if ref is not None else np.nan,
                    "ours_mean": mean,
                    "ours_std": float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else np.nan),
                    "seeds": int(group.loc[v.index, "seed"].nunique()),
                    "gap": mean - ref if ref is not None else np.nan,
                    "source": paper.citation
                    if paper
                    else "no paper numbers for this preset (add them to analysis/papers.py)",
                    "note": paper.note if paper else "",
                }
            )
    if not rows:
        raise NoData(HINT)
    return pd.DataFrame(rows)


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """Text version with ``mean ± std`` and signed gaps."""
    out = table[["experiment", "paper dataset", "dataset", "model", "quantity"]].copy()
    if (~table["variant"].astype(str).isin(["", MISSING])).any():
        out["variant"] = table["variant"]
    out["paper"] = [MISSING if pd.isna(v) else f"{v:g}" for v in table["paper"]]
    out["ours (mean ± std)"] = [pm(m, s, 2) for m, s in zip(table["ours_mean"], table["ours_std"])]
    out["gap (ours - paper)"] = [MISSING if pd.isna(g) else f"{g:+.2f}" for g in table["gap"]]
    out["seeds"] = table["seeds"]
    return out


def write_paper_table(store: StoreLike, out: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, text) of the paper comparison; writes paper_comparison.csv/.md/.tex into ``out``."""
    table = paper_table(load_runs(store))
    shown = shown_table(table)
    sources = "; ".join(dict.fromkeys(s for s in table["source"] if s))
    write_tables(
        table,
        shown,
        out,
        "paper_comparison",
        f"Paper presets: our result (mean ± std over seeds) next to the paper's. Sources: {sources}.",
    )
    return table, shown


def build(store: Store, out: Path) -> list[Path]:
    write_paper_table(store, out)
    return [out / f"paper_comparison.{ext}" for ext in ("csv", "md", "tex")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
