"""Does pruning make models faster? Measured latency ratio vs MAC ratio, at batch 1 and the largest batch measured.

Latency depends on the architecture, not on how it was reached, so runs are pooled by final
architecture (equal MAC ratio, to 3 decimals): each point is the mean latency ratio (final /
baseline, measured in the same run) of those runs with its 95% Student-t interval over runs
when there are at least 3 (with 2 runs the t quantile is 12.7: an interval that says nothing and
stretches the axis); a single run shows its own interleaved-measurement interval
(``latency/b<N>/ci_low``/``ci_high``) where the row has one. A point takes its arm's colour (one
legend entry per arm: runs and architectures); an architecture several arms reached is drawn
black. Runs are drawn faintly behind; the axes hold the points. The dashed y = x line is the
ideal where latency falls with MACs.

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
from analysis.stats import mean_std, t_interval
from analysis.tradeoff import LINE, line_color, line_names

HINT = (
    "no runs with both ratio/macs and a measured latency ratio (ratio/latency_b<N>): run any strategy with "
    "measure.latency_batch_sizes=[1,64], e.g. `python run.py -m strategy=l1_oneshot strategy.ratio=0.3,0.6 seed=0,1`"
)
FINAL_PHASES = ("quantized", "retrained", "pruned")
MIN_RUNS_FOR_CI = 3
"""Fewest runs of an architecture that get a Student-t interval over runs."""


def latency_batches(runs: pd.DataFrame) -> list[int]:
    """Batch sizes with a latency ratio (or the final/baseline latencies to make one), smallest first."""
    found = set()
    for col in runs.columns:
        m = re.fullmatch(r"ratio/latency_b(\d+)|baseline/latency_b(\d+)_ms", str(col))
        if m:
            found.add(int(m[1] or m[2]))
    return sorted(found)


def speed_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """Per run: MAC ratio and latency ratio (with its interval if measured) at batch 1 and at the largest batch."""
    batches = latency_batches(runs) if not runs.empty else []
    if not batches or "ratio/macs" not in runs:
        raise NoData(HINT)
    chosen = sorted({batches[0], batches[-1]})
    keys = ["run_id", "time", "machine", "seed", *CONTEXT, *LINE, "ratio", "ratio/macs"]
    out = runs[keys + (["arm"] if "arm" in runs else [])].copy()
    for b in chosen:
        ratio = (
            runs[f"ratio/latency_b{b}"] if f"ratio/latency_b{b}" in runs else pd.Series(float("nan"), index=runs.index)
        )
        base = f"baseline/latency_b{b}_ms"
        for phase in FINAL_PHASES:
            if base in runs and f"{phase}/latency_b{b}_ms" in runs:
                ratio = ratio.fillna(runs[f"{phase}/latency_b{b}_ms"] / runs[base])
        out[f"latency_ratio_b{b}"] = ratio
        for end in ("ci_low", "ci_high"):
            col = f"latency/b{b}/{end}"
            out[f"{end}_b{b}"] = pd.to_numeric(runs[col], errors="coerce") if col in runs else float("nan")
    out = out[out["ratio/macs"].notna() & out[[f"latency_ratio_b{b}" for b in chosen]].notna().any(axis=1)]
    if out.empty:
        raise NoData(HINT)
    out = out.reset_index(drop=True)
    out["line"] = line_names(out)
    out["architecture"] = out["ratio/macs"].round(3)
    return out, chosen


def architecture_means(table: pd.DataFrame, batch: int) -> pd.DataFrame:
    """Per (context, architecture): mean latency ratio, its 95% interval, runs and strategies behind it."""
    rows = []
    col = f"latency_ratio_b{batch}"
    for keys, g in table.dropna(subset=[col]).groupby([*CONTEXT, "architecture"], sort=True):
        values = [float(v) for v in g[col]]
        mean, std, n = mean_std(values)
        low, high = t_interval(mean, std, n, 0.05) if n >= MIN_RUNS_FOR_CI else (float("nan"), float("nan"))
        if n == 1:
            low, high = float(g[f"ci_low_b{batch}"].iloc[0]), float(g[f"ci_high_b{batch}"].iloc[0])
        rows.append(
            {
                **dict(zip([*CONTEXT, "architecture"], keys)),
                "macs": float(g["ratio/macs"].mean()),
                "latency_ratio": mean,
                "low": low,
                "high": high,
                "runs": n,
                "strategies": g["strategy"].nunique(),
                "lines": " | ".join(dict.fromkeys(g["line"])) if "line" in g else "",
            }
        )
    return pd.DataFrame(rows)


def speed_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Per dataset/model and batch size: latency ratio vs MAC ratio per architecture, with 95% intervals; ideal y = x."""
    runs = load_runs(store)
    table, batches = speed_table(runs)
    contexts = split(table, CONTEXT)
    lines = list(dict.fromkeys(table["line"]))
    fig, axes = grid(len(contexts) * len(batches), ncols=len(batches), size=(5.6, 4.6))
    for i, (ctx, sub) in enumerate(contexts):
        for j, b in enumerate(batches):
            ax = axes[i * len(batches) + j]
            for name, g in sub.groupby("line", sort=False):  # runs faint in their arm's colour
                ax.plot(
                    g["ratio/macs"],
                    g[f"latency_ratio_b{b}"],
                    ls="",
                    marker=".",
                    alpha=0.35,
                    color=line_color(lines.index(name)),
                )
            means = architecture_means(sub, b)
            for _, r in means.iterrows():
                has = pd.notna(r["low"]) and pd.notna(r["high"])
                yerr = [[r["latency_ratio"] - r["low"]], [r["high"] - r["latency_ratio"]]] if has else None
                names = r["lines"].split(" | ")
                color = line_color(lines.index(names[0])) if len(names) == 1 else "k"
                ax.errorbar([r["macs"]], [r["latency_ratio"]], yerr=yerr, marker="o", capsize=3, color=color)
            for name in dict.fromkeys(sub["line"]):
                mine = means[means["lines"].str.split(" | ", regex=False).map(lambda names, n=name: n in names)]
                runs_of = int((sub["line"] == name).sum())
                ax.plot(
                    [],
                    [],
                    "o",
                    color=line_color(lines.index(name)),
                    label=f"{name}: {runs_of} runs, {len(mine)} architecture{'s' * (len(mine) != 1)}",
                )
            shared = means[means["lines"].str.contains(" | ", regex=False)]
            if not shared.empty:
                ax.plot([], [], "o", color="k", label=f"reached by several arms ({len(shared)} architectures)")
            ax.plot([], [], ls="", label=f"95% CI over runs where >= {MIN_RUNS_FOR_CI} runs")
            values = [*sub["ratio/macs"], *sub[f"latency_ratio_b{b}"].dropna(), *means["high"].dropna(), 1.0]
            top = max(values) * 1.05
            ax.plot([0, top], [0, top], "k--", lw=1, label="ideal: latency ratio = MAC ratio")
            ax.axhline(1.0, color="0.6", lw=0.8, ls=":", label="baseline (unpruned) = 1")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_title(
                f"{context_title(ctx)}\nbatch {b}: mean per architecture (95% CI over runs where >= 3)", fontsize=9
            )
            ax.set_xlabel("MACs, final / baseline (ratio)")
            ax.set_ylabel(f"latency at batch {b}, final / baseline (ratio)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Measured speed-up vs MAC reduction (below the dashed line: faster than MACs predict)")
    footer(fig, table)
    save(fig, table, out, "speed")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    speed_figure(store, out)
    return [out / f"speed.{ext}" for ext in ("png", "svg", "csv")]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
