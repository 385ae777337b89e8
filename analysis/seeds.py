"""Per-seed values of every arm, published beside the verdicts so anyone can recompute them.

One row per (arm, seed): the run the verdicts use (the latest ok run of that arm and seed;
a seed with only failed runs is listed with its status and no values), every endpoint a
lesson or a secondary table reads, and where the run was measured: CPU model, threads and
torch build. Numbers repeat exactly only on the same CPU model, torch build and thread count,
so the report says which machines the values come from.

    python -m analysis.seeds --store results --out reports     # writes seeds.csv
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.arms import Arm, build_arms
from analysis.load import Store, StoreLike
from analysis.output import cli

ENDPOINTS = (
    "baseline/acc",
    "pruned/acc",
    "final/acc",
    "delta/acc",
    "ratio/params",
    "ratio/macs",
    "retrain/epochs",
    "retrain/steps",
    "retrain/wall_s",
    "prune/wall_s",
)
"""The endpoints every arm reports (a lesson's primary endpoint is one of the accuracies); measured
latency ratios (``ratio/latency_b<N>``) and the run's wall time follow them."""
_LATENCY = re.compile(r"ratio/latency_b(\d+)")
_MACHINE = re.compile(r"\((?P<arch>[^,()]+), (?P<cpu>.+), (?P<threads>\d+) threads, (?P<device>[^,()]+)\)\s*$")


def machine_fields(row: dict[str, Any]) -> tuple[str | None, int | None]:
    """(CPU model, threads) of a run: the row's own ``cpu`` / ``threads``, else read off its ``machine`` text
    (``"host (x86_64, AMD EPYC 7B13, 1 threads, cpu)"``, what older rows recorded)."""
    cpu, threads = row.get("cpu"), row.get("threads")
    match = _MACHINE.search(str(row.get("machine") or ""))
    if match:
        cpu = cpu or match["cpu"]
        threads = threads if threads is not None else int(match["threads"])
    if threads is not None and isinstance(threads, float) and math.isnan(threads):
        threads = None
    return cpu, None if threads is None else int(threads)


def _latency_endpoints(arms: list[Arm]) -> list[str]:
    found = {
        int(m[1])
        for arm in arms
        for row in arm.by_seed.values()
        for k in row["metrics"]
        if (m := _LATENCY.fullmatch(k))
    }
    return [f"ratio/latency_b{b}" for b in sorted(found)]


def _record(arm: Arm, seed: int, row: dict[str, Any], status: str) -> dict[str, Any]:
    cpu, threads = machine_fields(row)
    return {
        "arm": arm.label,
        "dataset": arm.dataset,
        "model": arm.model,
        "ratio": arm.part("ratio"),
        "seed": seed,
        "status": status,
        "run_id": row["run_id"],
        "cpu": cpu,
        "threads": threads,
        "torch": row.get("torch"),
    }


def seed_table(store: StoreLike) -> pd.DataFrame:
    """One row per (arm, seed): arm, dataset, model, ratio, seed, status, run id, CPU, threads, torch and
    every endpoint (fractions, as stored), the seeds of each arm in order; failed-only seeds without values."""
    arms = build_arms(store)
    endpoints = [*ENDPOINTS, *_latency_endpoints(arms)]
    rows = []
    for arm in arms:
        for seed in sorted(set(arm.by_seed) | set(arm.failed)):
            if seed in arm.by_seed:
                row = arm.by_seed[seed]
                rec = _record(arm, seed, row, "ok")
                rec.update({e: row["metrics"].get(e, math.nan) for e in endpoints})
                rec["wall_s"] = row.get("wall_s")
            else:
                last = arm.failed[seed][-1]
                rec = _record(arm, seed, last, str(last["status"]))
                rec.update({e: math.nan for e in [*endpoints, "wall_s"]})
            rows.append(rec)
    columns = ["arm", "dataset", "model", "ratio", "seed", "status", "run_id", "cpu", "threads", "torch"]
    table = pd.DataFrame(rows, columns=[*columns, *endpoints, "wall_s"])
    return table.sort_values(["dataset", "model", "arm", "seed"], kind="stable").reset_index(drop=True)


def machines(table: pd.DataFrame) -> list[str]:
    """``"AMD EPYC 7B13, 1 thread(s), torch 2.4.1: 120 runs"`` per distinct machine setting of ``table``'s runs."""
    if table.empty:
        return []
    counts: dict[tuple[Any, Any, Any], int] = {}
    for rec in table[["cpu", "threads", "torch"]].to_dict("records"):
        key = tuple(None if pd.isna(v) else v for v in rec.values())
        counts[key] = counts.get(key, 0) + 1
    out = []
    for (cpu, threads, torch), n in sorted(counts.items(), key=lambda kv: str(kv[0])):
        text = [
            cpu or "CPU not recorded",
            f"{int(threads)} thread(s)" if threads is not None else "threads not recorded",
        ]
        if torch:
            text.append(f"torch {torch}")
        out.append(f"{', '.join(text)}: {n} run{'s' * (n != 1)}")
    return out


MACHINE_TEXT = (
    "Runs are seeded and deterministic on one machine: numbers repeat exactly only on the same CPU model, "
    "torch build and thread count. These values were measured on: "
)


def write_seeds(store: StoreLike, out: str | Path) -> pd.DataFrame:
    """Write ``seeds.csv`` (:func:`seed_table`) into ``out`` and return the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = seed_table(store)
    table.to_csv(out / "seeds.csv", index=False)
    return table


def build(store: Store, out: Path) -> list[Path]:
    table = write_seeds(store, out)
    print(MACHINE_TEXT + "; ".join(machines(table)))
    return [out / "seeds.csv"]


if __name__ == "__main__":
    raise SystemExit(cli(__doc__, build))
