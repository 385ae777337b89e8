"""Table of runs grouped by their named settings (dataset, model, strategy, parts): mean ± std over seeds.

Runs are pooled only when every named column agrees; ``variant`` names the config keys
(``key=value``) that set apart runs sharing all of them, so runs that differ in anything
but the seed are never pooled. Seeds are distinct (a repeated seed counts once).

    python -m analysis.summary --store results
"""

from __future__ import annotations

import argparse

import pandas as pd

from analysis.load import load_runs
from analysis.output import ARM, keyed, varying

COLUMNS = {
    "baseline/acc": "base acc",
    "pruned/acc": "pruned acc",
    "final/acc": "final acc",
    "ratio/params": "params ratio",
    "ratio/nonzero_params": "nonzero ratio",
    "ratio/macs": "MACs ratio",
    "ratio/compressed_bytes": "bytes ratio",
    "ratio/latency_b1": "latency b1 ratio",
}


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of the headline metrics, with the number of distinct seeds."""
    keys = list(ARM)
    frame = keyed(frame, keys)
    cols = [c for c in COLUMNS if c in frame]
    grouped = frame.groupby(keys, dropna=False)
    mean, std = grouped[cols].mean(), grouped[cols].std().fillna(0.0)
    out = pd.DataFrame(index=mean.index)
    for c in cols:
        out[COLUMNS[c]] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(mean[c], std[c])]
    out["seeds"] = grouped["seed"].nunique()
    out = out.reset_index()
    shown = [
        "dataset",
        "model",
        "strategy",
        *[k for k in varying(out, keys) if k not in ("dataset", "model", "strategy")],
    ]
    return out[shown + [COLUMNS[c] for c in cols] + ["seeds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="results", help="folder holding runs.jsonl")
    args = parser.parse_args()
    print(summarise(load_runs(args.store)).to_string(index=False))


if __name__ == "__main__":
    main()
