"""The published per-seed values, the compact verdict table and its reading against the margin.

Pinned on the fixture store (``fixtures/verdict_store``: 34 runs) next to the verdicts of
``test_pinned_statistics.py``; the per-arm means here are over the paired seeds the verdict used.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from analysis.report import build_report
from analysis.seeds import ENDPOINTS, machine_fields, machines, seed_table
from analysis.verdict_table import reading, results_table
from analysis.verdicts import comparisons
from tests.analysis.helpers import resolved_config, run_row, write_store

STORE = Path(__file__).parent / "fixtures" / "verdict_store"


@pytest.fixture(scope="module")
def verdicts() -> pd.DataFrame:
    return comparisons(STORE)[0]


def test_seed_table_lists_every_arm_and_seed_of_the_fixture_store():
    table = seed_table(STORE)
    assert len(table) == 34  # every ok run is the latest of its arm and seed
    assert list(table.columns[:10]) == [
        "arm",
        "dataset",
        "model",
        "ratio",
        "seed",
        "status",
        "run_id",
        "cpu",
        "threads",
        "torch",
    ]
    assert set(ENDPOINTS) <= set(table.columns) and "wall_s" in table.columns
    iterative = table[table["arm"] == "l1_iterative"]
    assert iterative["seed"].tolist() == [0, 1, 2, 3]
    assert iterative["final/acc"].tolist() == [0.93, 0.88, 0.91, 0.905]
    assert iterative["run_id"].tolist() == ["run13", "run14", "run15", "run16"]
    lenet = table[(table["model"] == "lenet5") & (table["arm"] == "l1_oneshot")]
    assert lenet["final/acc"].round(4).tolist() == [0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96]


def test_the_seed_table_recomputes_a_verdict(verdicts):
    table = seed_table(STORE).set_index(["arm", "model", "seed"])
    row = verdicts[(verdicts["lesson"] == "L3") & (verdicts["B"] == "random_oneshot")].iloc[0]
    diffs = [
        table.loc[("l1_oneshot", "vgg_small", s), "pruned/acc"]
        - table.loc[("random_oneshot", "vgg_small", s), "pruned/acc"]
        for s in range(4)
    ]
    assert sum(diffs) / 4 == pytest.approx(row["mean"])


def test_machine_fields_from_the_row_or_its_machine_text():
    assert machine_fields({"machine": "vm (x86_64, AMD EPYC 7B13, 2 threads, cpu)"}) == ("AMD EPYC 7B13", 2)
    assert machine_fields({"cpu": "Intel(R) Xeon(R)", "threads": 4.0, "machine": "vm"}) == ("Intel(R) Xeon(R)", 4)
    assert machine_fields({"machine": "testbox"}) == (None, None)
    table = pd.DataFrame({"cpu": ["A", "A", None], "threads": [1, 2, None], "torch": ["2.4", "2.4", None]})
    assert machines(table) == [
        "A, 1 thread(s), torch 2.4: 1 run",
        "A, 2 thread(s), torch 2.4: 1 run",
        "CPU not recorded, threads not recorded: 1 run",
    ]


def test_verdict_rows_carry_each_arm_over_the_paired_seeds(verdicts):
    got = verdicts[["lesson", "A", "B", "n", "mean_a", "std_a", "mean_b", "std_b"]].round(6)
    l3 = got[(got["lesson"] == "L3") & (got["B"] == "random_oneshot")].iloc[0]
    assert (l3["n"], l3["mean_a"], l3["std_a"], l3["mean_b"], l3["std_b"]) == (4, 0.7025, 0.002082, 0.60375, 0.005679)
    l4 = got[(got["lesson"] == "L4") & (got["B"] == "l1_scratch_b")].iloc[0]
    assert (l4["n"], l4["mean_a"], l4["mean_b"], l4["std_b"]) == (3, 0.91, 0.93, 0.01)  # seeds 0-2 of 7


def test_the_compact_verdict_table_is_pinned(verdicts):
    shown = results_table(verdicts).set_index(["lesson", "A vs B"])
    assert list(shown.reset_index().columns) == [
        "lesson",
        "A vs B",
        "operating point",
        "n",
        "A (%)",
        "B (%)",
        "mean Δ (pp)",
        "CI (pp), level",
        "TOST interval (pp), level",
        "margin (pp)",
        "outcome",
        "reading",
    ]
    r = shown.loc[("L3", "l1_oneshot vs random_oneshot")]
    assert (r["n"], r["A (%)"], r["B (%)"], r["mean Δ (pp)"]) == (4, "70.25 ± 0.21", "60.38 ± 0.57", "+9.87")
    assert r["CI (pp), level"] == "[+8.54, +11.21] at 97.50%"
    assert r["TOST interval (pp), level"] == "[+8.86, +10.89] at 95.00%"
    assert r["reading"] == "better by 9.87 pp, beyond the ±0.25 pp margin"
    eq = shown.loc[("L3-ft", "l1_oneshot vs random_oneshot")]
    assert eq["TOST interval (pp), level"] == "[-0.06, +0.08] at 95.00%" and eq["outcome"] == "equivalent"
    worse = shown.loc[("L3-ft", "l1_oneshot vs largest_oneshot")]
    assert worse["CI (pp), level"] == "[-2.19, -1.93] at 97.50%"
    assert worse["TOST interval (pp), level"] == "[-2.14, -1.99] at 90.00%"
    single = shown.loc[("L1", "l1_layerwise vs l1_oneshot")]
    assert (single["A (%)"], single["CI (pp), level"]) == ("95.00", "—")
    assert single["reading"] == "not tested: fewer than two paired seeds"
    sign = shown.loc[("L4", "l1_oneshot vs l1_scratch_e")]
    assert sign["CI (pp), level"] == "—" and sign["outcome"] == "better"  # zero variance: exact sign test


def _small_effect_store(path: Path) -> Path:
    """L1 iterative vs oneshot over 6 seeds: -0.24 pp ± 0.1 pp, significant yet inside the ±0.25 pp margin."""
    offsets = [-0.0010, -0.0035, -0.0024, -0.0012, -0.0030, -0.0033]
    rows = []
    for s, d in enumerate(offsets):
        rows.append(run_row(s, final_acc=0.91, config=resolved_config(s)))
        iterative = resolved_config(s, strategy__schedule="iterative", strategy__rounds=3)
        rows.append(
            run_row(s, final_acc=0.91 + d, strategy="l1_iterative", schedule="iterative", rounds=3, config=iterative)
        )
    return write_store(path, rows)


def test_a_significant_effect_smaller_than_the_margin_says_so(tmp_path):
    table = comparisons(_small_effect_store(tmp_path / "results"))[0]
    row = table[table["lesson"] == "L1"].iloc[0]
    assert row["outcome"] == "worse" and abs(row["mean"]) < row["margin"]
    assert row["reading"] == (
        "worse by 0.24 pp: significant, but smaller than the lesson's ±0.25 pp margin: not an effect that matters"
    )
    wide = {**row.to_dict(), "mean": -0.004, "ci_low": -0.006, "ci_high": -0.002}
    assert reading(wide).endswith(
        "the interval reaches inside the ±0.25 pp margin, so the effect may be too small to matter"
    )


def test_the_report_publishes_seeds_machines_and_the_compact_table(tmp_path):
    store = _small_effect_store(tmp_path / "results")
    sections, _ = build_report(store, tmp_path / "reports")
    out = tmp_path / "reports"
    seeds = pd.read_csv(out / "seeds.csv")
    assert len(seeds) == 12 and set(seeds["arm"]) == {"l1_oneshot", "l1_iterative"}
    index = (out / "index.md").read_text()
    assert "## Per-seed values" in index and "numbers repeat exactly only on the same CPU model" in index
    assert "TOST interval (pp), level" in index and "smaller than the lesson's ±0.25 pp margin" in index
    summary = (out / "verdicts_summary.md").read_text()
    assert "TOST interval (pp), level" in summary and "smaller than the lesson's ±0.25 pp margin" in summary
    verdict = next(s for s in sections if s.title == "Lesson verdicts")
    assert any(
        "significant but smaller than the ±0.25 pp margin: l1_iterative vs l1_oneshot -0.24 pp" in i
        for i in verdict.items
    )
