"""What every figure and table module shares: aggregation over seeds, the footer, file writing, the CLI.

Figures are built on ``matplotlib.figure.Figure`` directly (no pyplot, no GUI backend), so
they can be made in tests and on headless machines alike.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.load import Store, read_store
from analysis.parts import PARTS

CONTEXT = ("dataset", "model", "baseline_epochs")
"""What a comparison is about: runs are only ever compared within one context."""
ARM = ("dataset", "model", "experiment", "arm", "strategy", *PARTS, "variant")
"""Everything that tells runs apart except the seed: one arm = one line in a table."""
MISSING = "—"


class NoData(LookupError):
    """The store has no runs this figure or table can be built from; the message says what to run."""


def keyed(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """A copy whose ``keys`` columns exist and hold no missing values (so groupby keeps them)."""
    out = frame.copy()
    for k in keys:
        if k not in out:
            out[k] = MISSING
        out[k] = out[k].astype(object).where(out[k].notna(), MISSING)
    return out


def over_seeds(frame: pd.DataFrame, keys: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """Per group of ``keys``: ``<value>_mean``, ``<value>_std`` (0 for one seed), ``<value>_n`` and ``seeds``."""
    keys = list(keys)
    frame = keyed(frame, keys)
    frame = frame.assign(**{v: math.nan for v in values if v not in frame})  # a metric no row has: NaN
    rows = []
    for key, group in frame.groupby(keys, sort=True, dropna=False):
        rec = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rec["seeds"] = int(group["seed"].nunique())
        rec["seed_list"] = " ".join(str(s) for s in sorted(group["seed"].unique()))
        for v in values:
            x = pd.to_numeric(group[v], errors="coerce").dropna()
            rec[f"{v}_mean"] = float(x.mean()) if len(x) else math.nan
            rec[f"{v}_std"] = float(x.std(ddof=1)) if len(x) > 1 else (0.0 if len(x) else math.nan)
            rec[f"{v}_n"] = len(x)
        rows.append(rec)
    return pd.DataFrame(rows)


def percent_scale(values: pd.Series) -> float:
    """100 if the values are fractions in [0, 1] (accuracy, drawn in percent), else 1 (already in their own units)."""
    return 100.0 if values.dropna().between(0, 1).all() else 1.0


def varying(frame: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The columns among ``columns`` that take more than one value in ``frame``."""
    frame = keyed(frame, columns)
    return [c for c in columns if frame[c].astype(str).nunique() > 1]


_UNITS = {
    "epochs_budget": "{} retrain epochs",
    "rounds": "{} rounds",
    "baseline_epochs": "baseline {} epochs",
    "max_drop": "max drop {}",
    "target_reduction": "target {}",
    "freeze": "freeze {}",
    "ratio": "ratio {}",
}


def label(row: pd.Series | dict, columns: Sequence[str]) -> str:
    """``"l1, oneshot, 2 retrain epochs"``: the values of ``columns`` that are set, joined."""
    values = []
    for c in columns:
        if c not in row or str(row[c]) in (MISSING, "", "nan", "None"):
            continue
        value = row[c]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        values.append(_UNITS.get(c, "{}").format(value))
    return ", ".join(values) or "all runs"


def context_title(row: pd.Series | dict) -> str:
    """``"fashion_mnist / vgg_small (baseline 20 ep)"``."""
    title = f"{row.get('dataset', '?')} / {row.get('model', '?')}"
    epochs = row.get("baseline_epochs")
    if epochs == "auto":
        title += " (baseline to its plateau)"
    elif epochs not in (None, MISSING) and not (isinstance(epochs, float) and math.isnan(epochs)):
        title += f" (baseline {int(float(epochs))} ep)"
    return title


def grid(n: int, ncols: int = 2, size: tuple[float, float] = (6.4, 4.4)) -> tuple[Figure, list]:
    """A figure with ``n`` axes in rows of at most ``ncols`` (spare axes hidden)."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.6), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def footer(fig: Figure, frame: pd.DataFrame | None) -> None:
    """The machine and date range of the runs behind ``fig``, just below it, wrapped to its width at ``; ``.

    The text hangs below the figure's bottom edge and :func:`save` writes the tight bounding box, so no
    layout can overlap it or cut it off (a long machine name wraps instead of running off the right edge).
    """
    width = max(40, int(fig.get_figwidth() * 19))  # 7-pt characters across the figure
    lines: list[str] = []
    for part in provenance(frame).split("; "):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "; " + part
        else:
            lines.append(part)
    fig.text(0.005, -0.005, "\n".join(lines), fontsize=7, color="0.35", ha="left", va="top")


def provenance(frame: pd.DataFrame | None) -> str:
    """``"12 runs, 2026-12-01 22:00 to 2026-12-02 01:10; machine: ...; built ..."``."""
    parts = []
    if frame is not None and not frame.empty:
        parts.append(f"{frame['run_id'].nunique() if 'run_id' in frame else len(frame)} runs")
        times = (
            pd.to_datetime(frame["time"], errors="coerce").dropna() if "time" in frame else pd.Series([], dtype=object)
        )
        if len(times):
            parts[-1] += f", {times.min():%Y-%m-%d %H:%M} to {times.max():%Y-%m-%d %H:%M}"
        machines = sorted({str(m) for m in frame.get("machine", pd.Series([], dtype=object)).dropna()})
        if machines:
            parts.append("machine: " + "; ".join(machines[:3]) + (" ..." if len(machines) > 3 else ""))
    parts.append(
        f"built {datetime.now():%Y-%m-%d %H:%M} on {platform.node()} ({platform.processor() or platform.machine()})"
    )
    return "; ".join(parts)


def save(fig: Figure, table: pd.DataFrame, out: str | Path | None, name: str) -> list[Path]:
    """Write ``name``.png, .svg and the .csv behind the figure into ``out`` (nothing if ``out`` is None)."""
    if out is None:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg", out / f"{name}.csv"]
    fig.savefig(paths[0], dpi=130, bbox_inches="tight", pad_inches=0.08)  # tight: the footer below the axes too
    engine = fig.get_layout_engine()
    fig.set_layout_engine("none")  # the SVG keeps the layout just computed for the PNG (and skips redoing it)
    fig.savefig(paths[1], bbox_inches="tight", pad_inches=0.08)
    fig.set_layout_engine(engine)
    table.to_csv(paths[2], index=False)
    return paths


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' ``to_markdown`` if tabulate is installed, else hand-written)."""
    try:
        return table.to_markdown(index=False)
    except ImportError:
        cells = [[str(c) for c in table.columns]] + [[_cell(v) for v in row] for row in table.itertuples(index=False)]
        lines = ["| " + " | ".join(r) + " |" for r in cells]
        lines.insert(1, "|" + "|".join("---" for _ in table.columns) + "|")
        return "\n".join(lines)


def latex(table: pd.DataFrame, caption: str = "") -> str:
    """A booktabs LaTeX table (escaped), one row per table row."""

    def esc(v: object) -> str:
        text = _cell(v)
        for a, b in (
            ("\\", r"\textbackslash{}"),
            ("&", r"\&"),
            ("%", r"\%"),
            ("_", r"\_"),
            ("#", r"\#"),
            ("±", r"$\pm$"),
            ("→", r"$\to$"),
            ("×", r"$\times$"),
        ):
            text = text.replace(a, b)
        return text

    head = " & ".join(esc(c) for c in table.columns) + r" \\"
    body = [" & ".join(esc(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{'l' * len(table.columns)}}}",
        r"\toprule",
        head,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
    ]
    if caption:
        lines.append(rf"\caption{{{esc(caption)}}}")
    return "\n".join(lines + [r"\end{table}"]) + "\n"


def write_tables(
    table: pd.DataFrame, shown: pd.DataFrame, out: str | Path | None, name: str, caption: str = ""
) -> list[Path]:
    """Write ``name``.csv (the numbers), .md and .tex (the formatted ``shown`` table)."""
    if out is None:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.csv", out / f"{name}.md", out / f"{name}.tex"]
    table.to_csv(paths[0], index=False)
    paths[1].write_text((f"{caption}\n\n" if caption else "") + markdown(shown) + "\n")
    paths[2].write_text(latex(shown, caption))
    return paths


def pm(mean: float, std: float, digits: int = 2, scale: float = 1.0) -> str:
    """``"91.20 ± 0.35"`` (missing -> ``"—"``)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return MISSING
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _cell(v: object) -> str:
    if isinstance(v, float):
        return MISSING if math.isnan(v) else f"{v:g}"
    return str(v)


def cli(description: str, build: Callable[[Store, Path], list[Path]], argv: Sequence[str] | None = None) -> int:
    """The command line every figure/table module offers: ``--store results --out reports``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="results", help="folder holding runs.jsonl, or the file (default: results)")
    parser.add_argument("--out", default="reports", help="folder for the PNG/SVG/CSV/Markdown files (default: reports)")
    parser.add_argument("--wandb-dir", default=None, help="also read W&B offline run folders under this folder")
    parser.add_argument("--wandb-project", default=None, help="also read this W&B project (entity/project) online")
    args = parser.parse_args(argv)
    try:
        store = read_store(args.store, args.wandb_dir, args.wandb_project)
        for problem in store.problems:
            print(f"skipped/warning: {problem}", file=sys.stderr)
        paths = build(store, Path(args.out))
    except (FileNotFoundError, NoData) as err:
        print(err, file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def split(frame: pd.DataFrame, keys: Sequence[str]) -> list[tuple[dict, pd.DataFrame]]:
    """(the keys' values, the rows) for every group of ``keys``, missing values as ``—``."""
    keys = list(keys)
    frame = keyed(frame, keys)
    return [(dict(zip(keys, k if isinstance(k, tuple) else (k,))), g) for k, g in frame.groupby(keys, sort=True)]


def facet_title(ctx: dict, shown: Sequence[str]) -> str:
    """The context title plus the values of the ``shown`` parts (``"..., oneshot, finetune"``)."""
    extra = label(ctx, shown)
    return context_title(ctx) + ("" if extra == "all runs" else f"\n{extra}")


def errorbar(ax, x, mean, std, n, **kwargs):
    """``ax.errorbar`` with y error bars only where some point has more than one seed."""
    yerr = std if (pd.Series(n) > 1).any() else None
    return ax.errorbar(x, mean, yerr=yerr, capsize=3, **kwargs)
