"""Does pruning make models faster? Measured latency ratio vs MAC ratio, at batch 1 and the largest batch measured.

Every finished run is a point (final model / its baseline, measured on the same machine
in the same run); the dashed y = x line is the ideal where latency falls with MACs.

    python -m analysis.speed --store results --out reports
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Store, StoreLike, load_runs
from analysis.output import (
    CONTEXT,
    NoData,
    cli,
    context_title,
    footer,
    grid,
    save,
    split,
)
from analysis.tradeoff import LINE, line_names

HINT = (
    "no runs with both ratio/macs and a measured latency ratio (ratio/latency_b<N>): run any strategy with "
    "measure.latency_batch_sizes=[1,64], e.g. `python run.py -m strategy=l1_oneshot strategy.ratio=0.3,0.6 seed=0,1`"
)
FINAL_PHASES = ("quantized", "retrained", "pruned")


def latency_batches(runs: pd.DataFrame) -> list[int]:
    """Batch sizes with a latency ratio (or the final/baseline latencies to make one), smallest first."""
    found = set()
    for col in runs.columns:
        m = re.fullmatch(r"ratio/latency_b(\d+)|baseline/latency_b(\d+)_ms", str(col))
        if m:
            found.add(int(m[1] or m[2]))
    return sorted(found)


def speed_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Per run: MAC ratio and latency ratio at batch 1 and at the largest batch (final / baseline)."""
    batches = latency_batches(runs) if not runs.empty else []
    if not batches or "ratio/macs" not in runs:
        raise NoData(HINT)
    chosen = sorted({batches[0], batches[-1]})
    out = runs[["run_id", "time", "machine", "seed", *CONTEXT, *LINE, "ratio", "ratio/macs"]].copy()
    for b in chosen:
        ratio = (
            runs[f"ratio/latency_b{b}"] if f"ratio/latency_b{b}" in runs else pd.Series(float("nan"), index=runs.index)
        )
        base = f"baseline/latency_b{b}_ms"
        for phase in FINAL_PHASES:
            if base in runs and f"{phase}/latency_b{b}_ms" in runs:
                ratio = ratio.fillna(runs[f"{phase}/latency_b{b}_ms"] / runs[base])
        out[f"latency_ratio_b{b}"] = ratio
    out = out[out["ratio/macs"].notna() & out[[f"latency_ratio_b{b}" for b in chosen]].notna().any(axis=1)]
    if out.empty:
        raise NoData(HINT)
    out = out.reset_index(drop=True)
    out["line"] = line_names(out)
    return out, chosen


def speed_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Per dataset/model and batch size: latency ratio vs MAC ratio, a colour per strategy, ideal y = x."""
    runs = load_runs(store)
    table, batches = speed_table(runs)
    contexts = split(table, CONTEXT)
    fig, axes = grid(len(contexts) * len(batches), ncols=len(batches), size=(5.6, 4.6))
    lines = list(dict.fromkeys(table["line"]))
    for i, (ctx, sub) in enumerate(contexts):
        for j, b in enumerate(batches):
            ax = axes[i * len(batches) + j]
            for name, g in sub.groupby("line", sort=False):
                ax.plot(
                    g["ratio/macs"],
                    g[f"latency_ratio_b{b}"],
                    ls="",
                    marker="o",
                    alpha=0.8,
                    color=f"C{lines.index(name) % 10}",
                    label=f"{name} ({g['seed'].nunique()} seeds)",
                )
            top = max(1.05, float(sub[[f"latency_ratio_b{b}", "ratio/macs"]].max().max()) * 1.05)
            ax.plot([0, top], [0, top], "k--", lw=1, label="ideal: latency ratio = MAC ratio")
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":", label="baseline (unpruned) = 1")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_title(f"{context_title(ctx)}: batch {b}", fontsize=9)
            ax.set_xlabel("MACs, final / baseline")
            ax.set_ylabel(f"latency at batch {b}, final / baseline")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Measured speed-up vs MAC reduction (below the dashed line: faster than MACs predict)")
    footer(fig, runs)
    save(fig, table, out, "speed")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    speed_figure(store, out)
    return [out / f"speed.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
