"""Compression breakdown (Deep Compression, Han et al. 2016, Table 1): dense -> pruned -> +quantization -> +Huffman.

Bytes per layer and in total, mean over seeds, with the compression rate (dense / stage)
of each stage. Per-layer numbers come from the rows' ``tables.storage``; where a row has
only totals (``quantized/storage_*_bytes``) the whole-model line is shown alone.

    python -m analysis.compression --store results --out reports
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import RUN_KEYS, Store, StoreLike, load_runs, load_storage
from analysis.output import (
    ARM,
    MISSING,
    NoData,
    cli,
    footer,
    grid,
    label,
    over_seeds,
    save,
    split,
    varying,
    write_tables,
)
from analysis.parts import PARTS

STAGES = (
    ("dense_bytes", "dense"),
    ("pruned_bytes", "pruned"),
    ("quantized_bytes", "+ quantization"),
    ("huffman_bytes", "+ Huffman"),
)
TOTAL, MODEL = "all layers", "whole model (file)"
HINT = (
    "no storage breakdown in the store (rows' tables.storage or quantized/storage_*_bytes): run a Deep "
    "Compression preset, e.g. `python run.py -m experiment=deep_compression_lenet300 seed=0,1,2`"
)
ARM_KEYS = list(ARM)


def storage_long(store: StoreLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per run and layer, plus an ``all layers`` sum per run and a whole-model line from the metrics; the runs)."""
    layers = load_storage(store)
    runs = load_runs(store)
    frames = []
    if not layers.empty and "layer" in layers:
        layers = layers.copy()
        frames.append(layers)
        sums = layers.groupby("run_id")[[c for c, _ in STAGES if c in layers]].sum(min_count=1).reset_index()
        keys = layers.drop_duplicates("run_id")[[k for k in RUN_KEYS if k in layers]]
        frames.append(keys.merge(sums, on="run_id").assign(layer=TOTAL))
    if not runs.empty:
        metric = {
            "dense_bytes": "baseline/dense_bytes",
            "pruned_bytes": "quantized/storage_pruned_bytes",
            "quantized_bytes": "quantized/storage_quantized_bytes",
            "huffman_bytes": "quantized/storage_huffman_bytes",
        }
        have = runs[[m for m in metric.values() if m in runs]]
        whole = (
            runs[have.drop(columns=["baseline/dense_bytes"], errors="ignore").notna().any(axis=1)]
            if not have.empty
            else runs.iloc[:0]
        )
        if not whole.empty:
            model = whole[[k for k in RUN_KEYS if k in whole]].copy()
            for col, m in metric.items():
                model[col] = whole.get(m, np.nan)
            frames.append(model.assign(layer=MODEL))
    if not frames:
        raise NoData(HINT)
    return pd.concat(frames, ignore_index=True), runs


def compression_table(long: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, layer): bytes of each stage over seeds and the rates dense / stage."""
    order = list(dict.fromkeys(long["layer"]))
    table = over_seeds(long, [*ARM_KEYS, "layer"], [c for c, _ in STAGES])
    for col, name in STAGES[1:]:
        table[f"rate {name}"] = table["dense_bytes_mean"] / table[f"{col}_mean"]
    table["_order"] = table["layer"].map(order.index)
    return (
        table.sort_values([*ARM_KEYS, "_order"], key=lambda c: c.astype(str) if c.name != "_order" else c)
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def shown_table(table: pd.DataFrame) -> pd.DataFrame:
    """Text version: arm columns that vary, layer, KB per stage, and the rates as ``12.3x``."""
    arm = varying(table, ["dataset", "model", "experiment", "strategy", *PARTS, "variant"]) or ["strategy"]
    out = table[[*arm, "layer"]].copy()
    for col, name in STAGES:
        out[f"{name} (KB)"] = [MISSING if pd.isna(v) else f"{v / 1000:.1f}" for v in table[f"{col}_mean"]]
    for _, name in STAGES[1:]:
        out[f"rate {name}"] = [MISSING if not np.isfinite(v) else f"{v:.1f}x" for v in table[f"rate {name}"]]
    out["seeds"] = table["seeds"]
    return out


def compression_figure(store: StoreLike, out: str | Path | None = None) -> Figure:
    """Grouped bars per layer (dense, pruned, + quantization, + Huffman), log scale, one panel per arm."""
    long, runs = storage_long(store)
    table = compression_table(long)
    arms = split(table, ARM_KEYS)
    shown = varying(table, ["dataset", "model", "experiment", "strategy", *PARTS]) or ["strategy"]
    fig, axes = grid(len(arms), ncols=1, size=(9.0, 4.2))
    width = 0.2
    for ax, (ctx, sub) in zip(axes, arms):
        x = np.arange(len(sub))
        for k, (col, name) in enumerate(STAGES):
            mean, std = sub[f"{col}_mean"] / 1000, sub[f"{col}_std"] / 1000
            ax.bar(
                x + (k - 1.5) * width,
                mean.fillna(0),
                width,
                yerr=std if (sub[f"{col}_n"] > 1).any() else None,
                capsize=2,
                label=name,
                color=f"C{k}",
            )
        ax.set_xticks(x, sub["layer"], rotation=20, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("size (KB, log scale)")
        ax.set_xlabel("layer")
        total = sub[sub["layer"].isin([MODEL, TOTAL])]
        rate = total.iloc[0]["rate + Huffman"] if not total.empty else np.nan
        rate_text = f", total {rate:.1f}x smaller" if np.isfinite(rate) else ""
        ax.set_title(
            f"{ctx['dataset']} / {ctx['model']}: {label(ctx, shown)} ({int(sub['seeds'].max())} seeds){rate_text}",
            fontsize=9,
        )
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, title="stage", title_fontsize=7)
    fig.suptitle("Compression breakdown (Deep Compression, Table 1): bytes per layer after each stage; mean over seeds")
    footer(fig, runs)
    save(fig, table, out, "compression")
    return fig


def build(store: Store, out: Path) -> list[Path]:
    compression_figure(store, out)
    table = compression_table(storage_long(store)[0])
    write_tables(
        table,
        shown_table(table),
        out,
        "compression_table",
        "Storage per layer: dense -> pruned -> + quantization -> + Huffman (KB, mean over seeds), rate = dense / stage.",
    )
    return [out / f"compression.{ext}" for ext in ("png", "svg", "csv")] + [
        out / f"compression_table.{ext}" for ext in ("md", "tex")
    ]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
