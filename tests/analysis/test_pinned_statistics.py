"""The verdicts and seed plans of a stored fixture store, pinned to four significant figures.

``fixtures/verdict_store`` holds 34 runs: L1 (an iterative arm wide around zero, a layerwise
arm with one seed), L3 and L3-ft (families of two: better, worse, equivalent, inconclusive)
and L4 on a second model (identical differences: the exact sign test, better with 7 seeds,
inconclusive with 3). ``fixtures/*_pinned.csv`` and the tables below are what the statistics
computed when the pin was taken; any change to how p-values, Holm levels, intervals, TOST or
power are computed must reproduce them, so no verdict and no seed count moves.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis.planning import (
    normal_approximation,
    plan,
    power_difference,
    power_equivalence,
    sd_upper,
    seeds_for_difference,
    seeds_for_equivalence,
)
from analysis.power import power_table
from analysis.verdicts import comparisons

FIXTURES = Path(__file__).parent / "fixtures"
STORE = FIXTURES / "verdict_store"
VERDICT_COLUMNS = [
    "lesson",
    "claim",
    "A",
    "B",
    "endpoint",
    "n",
    "seeds",
    "method",
    "mean",
    "std",
    "p",
    "p_tost",
    "margin",
    "p_holm",
    "p_tost_holm",
    "family",
    "alpha_ci",
    "ci_low",
    "ci_high",
    "alpha_eq",
    "eq_low",
    "eq_high",
    "outcome",
    "seeds_needed",
]
SECONDARY_COLUMNS = [
    "lesson",
    "claim",
    "A",
    "B",
    "endpoint",
    "n",
    "mean A",
    "mean B",
    "mean Δ",
    "95% CI low",
    "95% CI high",
]
POWER_COLUMNS = [
    "lesson",
    "sd source",
    "sd (pp)",
    "sd dof",
    "sd planned (pp)",
    "effect (pp)",
    "margin (pp)",
    "comparisons",
    "alpha per comparison",
    "seeds: difference",
    "seeds: equivalence",
    "seeds: normal approx.",
    "seeds needed",
]


def sig4(value: Any) -> str:
    """``value`` as pinned: text as is, whole numbers in full, other numbers to 4 significant figures."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    x = float(value)
    if math.isnan(x):
        return "nan"
    if math.isinf(x) or (x.is_integer() and abs(x) < 1e15):
        return str(x) if math.isinf(x) else str(int(x))
    return f"{x:.4g}"


def pinned_rows(table: pd.DataFrame, columns: list[str]) -> list[dict[str, str]]:
    return [{c: sig4(row[c]) for c in columns} for row in table.to_dict("records")]


def read_pins(name: str) -> list[dict[str, str]]:
    with open(FIXTURES / name, newline="") as f:
        return list(csv.DictReader(f))


def assert_same(actual: list[dict[str, str]], pinned: list[dict[str, str]]) -> None:
    assert len(actual) == len(pinned), f"{len(actual)} rows, pinned {len(pinned)}"
    wrong = [
        f"row {i} ({p.get('lesson')} {p.get('A', '')} vs {p.get('B', '')}) {col}: {a[col]} != pinned {p[col]}"
        for i, (a, p) in enumerate(zip(actual, pinned))
        for col in p
        if a[col] != p[col]
    ]
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    return comparisons(STORE)


def test_the_verdict_table_is_pinned(tables):
    table, _ = tables
    assert set(table["outcome"]) == {"better", "worse", "equivalent", "inconclusive"}
    assert "sign (zero variance)" in set(table["method"])
    assert_same(pinned_rows(table, VERDICT_COLUMNS), read_pins("verdicts_pinned.csv"))


def test_the_secondary_endpoints_are_pinned(tables):
    _, secondary = tables
    assert_same(pinned_rows(secondary, SECONDARY_COLUMNS), read_pins("secondary_pinned.csv"))


def test_the_power_table_of_the_fixture_store_is_pinned():
    assert_same(pinned_rows(power_table(store=STORE), POWER_COLUMNS), read_pins("power_pinned.csv"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((2, 0.25, 0.2), "0.1123"),
        ((3, 0.25, 0.2), "0.2441"),
        ((8, 0.25, 0.2), "0.8564"),
        ((10, 1.0, 1.0), "0.8031"),
        ((25, 0.25, 0.5, 0.0125), "0.4366"),
        ((400, 0.25, 2.1, 0.05), "0.661"),
        ((6, 0.0, 0.3), "0.05"),
    ],
)
def test_power_of_the_difference_test_is_pinned(args, expected):
    assert sig4(power_difference(*args)) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((8, 0.25, 0.2), "0.8723"),
        ((20, 0.25, 0.3, 0.025), "0.8842"),
        ((12, 0.25, 0.2, 0.05, 0.1), "0.7848"),
        ((3, 0.25, 0.2), "0"),
    ],
)
def test_power_of_tost_is_pinned(args, expected):
    assert sig4(power_equivalence(*args)) == expected


@pytest.mark.parametrize(
    ("args", "difference", "equivalence"),
    [
        ((0.25, 0.2), "8", "8"),
        ((1.0, 1.0), "10", "11"),
        ((0.25, 0.5, 0.0125), "48", "53"),
        ((0.1, 0.3, 0.05, 0.9), "97", "99"),
        ((0.25, 0.0, 0.025), "7", "6"),
        ((0.25, 30.0), "none", "none"),
    ],
)
def test_seeds_are_pinned(args, difference, equivalence):
    assert sig4(seeds_for_difference(*args)) == difference
    assert sig4(seeds_for_equivalence(*args)) == equivalence


def test_sd_upper_limits_and_the_normal_approximation_are_pinned():
    limits = [sd_upper(*a) for a in ((1.0, 2), (0.3, 11), (0.5, 40, 0.95), (0.2, 1))]
    assert [sig4(x) for x in limits] == ["2.117", "0.3764", "0.6142", "0.7894"]
    normal = [normal_approximation(*a) for a in ((1.0, 1.0), (0.25, 0.2), (0.25, 0.5, 0.0125), (0.1, 0.3, 0.05, 0.9))]
    assert normal == [10, 7, 48, 97]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"sd": 0.2, "effect": 0.25}, "0.2 none 0.2 0.05 8 8 7 8"),
        ({"sd": 0.2, "effect": 0.25, "dof": 2}, "0.2 2 0.4234 0.05 25 26 25 26"),
        (
            {"sd": 0.5, "effect": 0.25, "margin": 0.3, "alpha": 0.05, "power": 0.9, "comparisons": 3, "dof": 9},
            "0.5 9 0.6467 0.01667 94 69 94 94",
        ),
        ({"sd": 2.0966, "effect": 0.25, "dof": 3}, "2.097 3 3.622 0.05 1650 1799 1650 1799"),
        ({"sd": 0.0, "effect": 0.25, "comparisons": 4}, "0 none 0 0.0125 8 7 2 8"),
        ({"sd": 10.0, "effect": 0.25, "dof": 2}, "10 2 21.17 0.05 none none 56281 none"),
    ],
)
def test_plans_are_pinned(kwargs, expected):
    p = plan(**kwargs)
    fields = (p.sd, p.dof, p.sd_planned, p.alpha, p.difference, p.equivalence, p.normal, p.seeds)
    assert " ".join(sig4(x) for x in fields) == expected
