"""Accuracy vs measured latency (the Pareto frontier), and predicted vs measured latency.

Latency here is the final model's as a fraction of its dense baseline's, measured in the
run with both models timed interleaved (``ratio/latency_b<N>``, its 95% interval
``latency/b<N>/ci_low``/``ci_high``), at batch 1 and the largest batch measured; a ratio is
comparable across runs where absolute milliseconds drift with the machine's load.

- ``latency_pareto``: test top-1 accuracy vs latency ratio; each run a small point with its
  interval, each arm (strategy at an operating point) its mean over seeds; the black step line
  joins the arms no other arm beats on both (faster and at least as accurate). A run with
  ``deploy.quantize=int8`` adds an int8 point (hollow diamond, its own arm): the int8 model's
  test top-1 in ONNX Runtime (``deploy/int8_top1``) at its latency relative to the dense fp32
  model, both timed interleaved in ONNX Runtime (``deploy/int8/b<N>/int8_vs_dense``).
- ``latency_prediction``: the latency ratio a latency table predicted when the run pruned
  (``latency/b<N>/predicted_ratio``) vs the one measured; y = x is a perfect prediction.

    python -m analysis.latency --store results --out reports
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Store, StoreLike, load_runs
from analysis.output import CONTEXT, NoData, cli, context_title, footer, grid, keyed, save, split
from analysis.parts import OPERATING_POINT
from analysis.tradeoff import LINE, line_color, line_names

HINT = (
    "no runs with final/acc and a measured latency ratio (ratio/latency_b<N>): run "
    "`python run.py -m study=latency` (or any strategy; runs measure latency by default)"
)
PREDICTION_HINT = (
    "no runs with a predicted latency ratio (latency/b<N>/predicted_ratio, written by latency-aware pruning): "
    "run `python run.py -m study=latency`"
)
ARM = [*CONTEXT, *LINE, *OPERATING_POINT, "target"]
"""An arm: context, line, operating point and, for latency-aware pruning, its latency ``target``."""


def measured_batches(runs: pd.DataFrame, pattern: str = r"ratio/latency_b(\d+)") -> list[int]:
    """Batch sizes that some run has a column for (``pattern``'s group 1), smallest first."""
    return sorted({int(m[1]) for c in runs.columns if (m := re.fullmatch(pattern, str(c)))})


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    return pd.to_numeric(runs[name], errors="coerce") if name in runs else pd.Series(np.nan, index=runs.index)


def with_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``target`` column (latency-aware runs' ``latency/target``: each target its own
    arm), the arm keys filled, and the ``line`` (one colour per method) each run belongs to."""
    runs = keyed(runs.assign(target=_column(runs, "latency/target")), ARM)
    return runs.assign(line=line_names(runs))


def per_batch(runs: pd.DataFrame, batches: list[int], columns: dict[str, str | None]) -> pd.DataFrame:
    """One row per (run, batch size): the run's identity and ``columns`` (name -> metric key, ``{b}``
    standing for the batch size; None: no such value, NaN)."""
    frames = []
    for b in batches:
        part = runs[["run_id", "time", "machine", "seed", *ARM, "line"]].copy()
        part["batch"] = b
        for name, key in columns.items():
            part[name] = _column(runs, key.format(b=b)) if key else np.nan
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


INT8_COLUMNS: dict[str, str | None] = {
    "acc": "deploy/int8_top1",
    "latency_ratio": "deploy/int8/b{b}/int8_vs_dense",
    "ci_low": None,
    "ci_high": None,
    "final_ms": "deploy/int8/b{b}/int8_ms",
    "ort_ms": "deploy/int8/b{b}/int8_ms",
}
"""An int8 point: its ONNX Runtime accuracy and latency relative to the dense fp32 model (no interval)."""


def latency_points(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """One row per (run, batch size, ``precision``) with a measured latency ratio: accuracy, ratio,
    its interval, ms. ``precision`` is ``fp32`` (the run's model) or ``int8`` (its int8 deployment)."""
    batches = measured_batches(runs) if not runs.empty and "final/acc" in runs else []
    if not batches:
        raise NoData(HINT)
    batches = sorted({batches[0], batches[-1]})
    points = per_batch(
        with_arms(runs),
        batches,
        {
            "acc": "final/acc",
            "latency_ratio": "ratio/latency_b{b}",
            "ci_low": "latency/b{b}/ci_low",
            "ci_high": "latency/b{b}/ci_high",
            "final_ms": "latency/b{b}/final_ms",
            "ort_ms": "deploy/ort_latency_ms_b{b}",
        },
    ).assign(precision="fp32")
    int8 = per_batch(with_arms(runs), batches, INT8_COLUMNS).assign(precision="int8")
    points = pd.concat([points, int8], ignore_index=True)
    points = points[points["latency_ratio"].notna() & points["acc"].notna()].reset_index(drop=True)
    if points.empty:
        raise NoData(HINT)
    return points, batches


def pareto_mask(latency: pd.Series, accuracy: pd.Series) -> pd.Series:
    """True where no other point is at least as fast and as accurate and strictly better in one."""
    x, y = latency.to_numpy(float), accuracy.to_numpy(float)
    keep = []
    for i in range(len(x)):
        dominated = (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        keep.append(not dominated.any())
    return pd.Series(keep, index=latency.index)


def pareto_table(points: pd.DataFrame) -> pd.DataFrame:
    """Per (context, batch, arm, precision): mean ± std over seeds of accuracy and latency ratio, and
    ``pareto`` (the arm's means are not dominated within its context and batch size)."""
    rows = []
    keys = [*ARM, "line", "precision", "batch"]
    for key, g in points.groupby(keys, sort=True, dropna=False):
        rec = dict(zip(keys, key))
        rec["seeds"] = int(g["seed"].nunique())
        for v in ("acc", "latency_ratio"):
            rec[f"{v}_mean"] = float(g[v].mean())
            rec[f"{v}_std"] = float(g[v].std(ddof=1)) if len(g) > 1 else 0.0
        rows.append(rec)
    table = pd.DataFrame(rows)
    table["pareto"] = False
    for _, g in table.groupby([*CONTEXT, "batch"], sort=False):
        table.loc[g.index, "pareto"] = pareto_mask(g["latency_ratio_mean"], g["acc_mean"])
    return table.sort_values([*CONTEXT, "batch", "latency_ratio_mean"]).reset_index(drop=True)


def operating_label(arm: pd.Series) -> str:
    """``target 0.6`` for a latency-aware arm, else its ratio (``ratio 0.5``, ``ratio sensitivity``);
    `` int8`` after it for an int8 deployment."""
    target = pd.to_numeric(pd.Series([arm.get("target")]), errors="coerce").iloc[0]
    name = f"target {target:g}" if pd.notna(target) else f"ratio {arm.get('ratio')}"
    return f"{name} int8" if arm.get("precision") == "int8" else name


def latency_pareto_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Per dataset/model and batch size: test accuracy vs measured latency ratio, the Pareto front in black."""
    runs = load_runs(store)
    points, batches = latency_points(runs)
    table = pareto_table(points)
    contexts = split(points, CONTEXT)
    fig, axes = grid(len(contexts) * len(batches), ncols=len(batches), size=(5.8, 4.6))
    lines = list(dict.fromkeys(points["line"]))
    for i, (ctx, sub) in enumerate(contexts):
        for j, b in enumerate(batches):
            ax = axes[i * len(batches) + j]
            here = sub[sub["batch"] == b]
            if here.empty:
                ax.set_visible(False)
                continue
            means = pareto_table(here)
            for (name, precision), g in here.groupby(["line", "precision"], sort=False):
                color = line_color(lines.index(name))
                int8 = precision == "int8"  # hollow diamonds: the same arm deployed in int8
                style = {"marker": "D", "mfc": "none"} if int8 else {"marker": "o"}
                has_ci = g["ci_low"].notna() & g["ci_high"].notna()
                xerr = np.vstack([g["latency_ratio"] - g["ci_low"], g["ci_high"] - g["latency_ratio"]])
                ax.errorbar(
                    g["latency_ratio"],
                    g["acc"] * 100,
                    xerr=np.where(has_ci.to_numpy(), xerr, 0.0) if has_ci.any() else None,
                    ls="",
                    marker="d" if int8 else ".",
                    mfc="none" if int8 else None,
                    alpha=0.45,
                    color=color,
                    capsize=2,
                )
                m = means[(means["line"] == name) & (means["precision"] == precision)]
                ax.plot(
                    m["latency_ratio_mean"],
                    m["acc_mean"] * 100,
                    ls="",
                    ms=8,
                    color=color,
                    label=f"{name}{' int8' if int8 else ''} ({int(m['seeds'].max())} seeds)",
                    **style,
                )
                for _, arm in m.iterrows():  # a line holds several arms (uniform 0.3 and 0.5): name each
                    ax.annotate(  # int8 above its diamond, fp32 below: an arm's two points may sit close
                        operating_label(arm),
                        (arm["latency_ratio_mean"], arm["acc_mean"] * 100),
                        xytext=(6, 5 if int8 else -10),
                        textcoords="offset points",
                        fontsize=7,
                        color=color,
                    )
            front = means[means["pareto"]].sort_values("latency_ratio_mean")
            ax.step(
                front["latency_ratio_mean"],
                front["acc_mean"] * 100,
                where="post",
                color="k",
                lw=1.2,
                label="Pareto front (arm means)",
            )
            _focus(ax, here, means)
            ax.set_title(f"{context_title(ctx)}: batch {b}", fontsize=9)
            ax.set_xlabel(
                f"latency at batch {b}, final / dense fp32 baseline\n(timed interleaved; int8: ONNX Runtime)"
                if (here["precision"] == "int8").any()
                else f"latency at batch {b}, final / baseline (timed interleaved)"
            )
            ax.set_ylabel("top-1 accuracy on the test split (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6.5, loc="best", framealpha=0.85)
    fig.suptitle("Accuracy vs measured latency: points are runs (95% interval), circles arm means over seeds")
    footer(fig, runs)
    save(fig, table, out, "latency_pareto")
    return fig


FAR_PP = 10.0
"""Arms whose mean accuracy is more than this many points below the best arm's are listed, not drawn to scale,
so one no-retraining arm at 30% does not squash the front of the arms near 92%."""


def _focus(ax, points: pd.DataFrame, means: pd.DataFrame) -> None:
    """Limit the y axis to the arms within :data:`FAR_PP` of the best and name the arms below it."""
    best = float(means["acc_mean"].max()) * 100
    near = means[means["acc_mean"] * 100 >= best - FAR_PP]
    far = means[means["acc_mean"] * 100 < best - FAR_PP]
    if far.empty:
        return
    shown = points[points["line"].isin(near["line"]) & (points["acc"] * 100 >= best - FAR_PP)]["acc"] * 100
    values = [*shown, *(near["acc_mean"] * 100)]
    low, high = min(values), max(values)
    pad = max(0.1, 0.08 * (high - low))
    ax.set_ylim(low - 3 * pad, high + pad)
    text = "; ".join(
        f"{r['line']} ({operating_label(r)}): {r['acc_mean'] * 100:.1f}% at {r['latency_ratio_mean']:.2f}"
        for _, r in far.iterrows()
    )
    ax.text(0.01, 0.01, f"below the axis: {text}", transform=ax.transAxes, fontsize=6.5, color="0.3", wrap=True)


def prediction_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, batch) with a predicted and a measured latency ratio, and the error
    ``predicted / measured - 1``."""
    batches = [
        b
        for b in measured_batches(runs, r"latency/b(\d+)/predicted_ratio")
        if f"ratio/latency_b{b}" in runs and not runs.empty
    ]
    if not batches:
        raise NoData(PREDICTION_HINT)
    table = per_batch(
        with_arms(runs),
        batches,
        {
            "predicted_ratio": "latency/b{b}/predicted_ratio",
            "measured_ratio": "ratio/latency_b{b}",
            "ci_low": "latency/b{b}/ci_low",
            "ci_high": "latency/b{b}/ci_high",
        },
    )
    table = table[table["predicted_ratio"].notna() & table["measured_ratio"].notna()].reset_index(drop=True)
    if table.empty:
        raise NoData(PREDICTION_HINT)
    table["error"] = table["predicted_ratio"] / table["measured_ratio"] - 1.0
    return table


def latency_prediction_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Per dataset/model and batch size: predicted vs measured latency ratio, with y = x and the mean error."""
    runs = load_runs(store)
    table = prediction_table(runs)
    panels = split(table, [*CONTEXT, "batch"])
    fig, axes = grid(len(panels), ncols=2, size=(6.6, 5.0))
    lines = list(dict.fromkeys(table["line"]))
    for ax, (ctx, sub) in zip(axes, panels):
        for name, g in sub.groupby("line", sort=False):
            has_ci = g["ci_low"].notna() & g["ci_high"].notna()
            yerr = np.vstack([g["measured_ratio"] - g["ci_low"], g["ci_high"] - g["measured_ratio"]])
            ax.errorbar(
                g["predicted_ratio"],
                g["measured_ratio"],
                yerr=np.where(has_ci.to_numpy(), yerr, 0.0) if has_ci.any() else None,
                ls="",
                marker="o",
                capsize=2,
                color=f"C{lines.index(name) % 10}",
                label=f"{name} ({g['seed'].nunique()} seeds)",
            )
        values = sub[["predicted_ratio", "measured_ratio"]].to_numpy(float)
        top = max(1.05, float(np.nanmax(values)) * 1.05)
        ax.plot([0, top], [0, top], "k--", lw=1, label="ideal: predicted = measured")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        mae = float(sub["error"].abs().mean()) * 100
        worst = float(sub["error"].abs().max()) * 100
        ax.set_title(
            f"{context_title(ctx)}: batch {int(ctx['batch'])}\n|error| mean {mae:.1f}%, max {worst:.1f}%"
            if not math.isnan(mae)
            else context_title(ctx),
            fontsize=9,
        )
        ax.set_xlabel(f"predicted latency at batch {int(ctx['batch'])}, final / baseline (latency table)")
        ax.set_ylabel(f"measured latency at batch {int(ctx['batch'])}, final / baseline (timed interleaved)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Predicted vs measured latency (error = predicted / measured - 1)")
    footer(fig, runs)
    save(fig, table, out, "latency_prediction")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    """Both figures the store supports (the prediction one needs latency-aware runs)."""
    paths = []
    latency_pareto_figure(store, out)
    paths += [out / f"latency_pareto.{ext}" for ext in ("png", "svg", "csv")]
    try:
        latency_prediction_figure(store, out)
        paths += [out / f"latency_prediction.{ext}" for ext in ("png", "svg", "csv")]
    except NoData:
        pass
    return paths


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
