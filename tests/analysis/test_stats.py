import math

import pytest
from scipy import stats as scipy_stats

from analysis.stats import (
    holm,
    holm_levels,
    mean_std,
    paired_t,
    sign_test,
    t_interval,
    t_quantile,
    tost,
)


@pytest.mark.parametrize(
    ("p", "dof", "expected"),
    [
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 1, 12.706),
        (0.975, 9, 2.262),
        (0.975, 30, 2.042),
        (0.95, 5, 2.015),
    ],
)
def test_t_quantile_matches_tables(p, dof, expected):
    assert t_quantile(p, dof) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_is_symmetric_and_has_the_closed_forms():
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3))
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    for p in (0.6, 0.9, 0.975, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0.9, 0)


def test_paired_t_by_hand():
    stats = paired_t([0.020, 0.021, 0.022])
    assert stats.n == 3
    assert stats.mean == pytest.approx(0.021)
    assert stats.std == pytest.approx(0.001)
    half = 4.302653 * 0.001 / math.sqrt(3)
    assert stats.ci == pytest.approx((0.021 - half, 0.021 + half), abs=1e-7)
    # t = 0.021 / (0.001 / sqrt 3) = 36.37 with 2 dof: two-sided p = 1 / (1 + t^2 / 2)^(1/2) ... = 0.000755
    t = 0.021 / (0.001 / math.sqrt(3))
    assert stats.p == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)  # closed form for 2 dof


def test_paired_t_one_seed_has_no_interval():
    stats = paired_t([0.05])
    assert stats.n == 1 and math.isnan(stats.low) and math.isnan(stats.p)
    with pytest.raises(ValueError, match="share no seed"):
        paired_t([])


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    adjusted = holm([0.02, float("nan")])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0, float("nan")]) == (2.0, 1.0, 3)


def test_zero_variance_is_a_sign_test_not_p_zero():
    stats = paired_t([0.01, 0.01 + 1e-17, 0.01])  # float noise of identical differences
    assert stats.zero_variance and stats.method == "sign" and stats.p == pytest.approx(0.25)
    assert sign_test([0.01] * 6) == pytest.approx(2 / 64) and sign_test([0.0, 0.0]) == 1.0
    assert sign_test([1, 1, 1, -1]) == pytest.approx(2 * 5 / 16)  # P(X >= 3 | n=4) = 5/16, two-sided


def test_tost_by_hand():
    d = [0.001, -0.001, 0.002, 0.0]
    mean, sd = 0.0005, math.sqrt((0.0005**2 + 0.0015**2 + 0.0015**2 + 0.0005**2) / 3)
    se = sd / 2
    eq = tost(d, 0.0025)
    assert eq.p_lower == pytest.approx(scipy_stats.t.sf((mean + 0.0025) / se, 3))
    assert eq.p_upper == pytest.approx(scipy_stats.t.cdf((mean - 0.0025) / se, 3))
    assert eq.p == max(eq.p_lower, eq.p_upper) and eq.p < 0.05
    # TOST at alpha <=> the 1 - 2 alpha interval inside the margin
    lo, hi = t_interval(mean, sd, 4, 2 * eq.p)
    assert hi == pytest.approx(0.0025)
    assert tost([0.01, -0.01, 0.02], 0.0025).p > 0.5  # wide: no equivalence
    assert tost([0.001] * 3, 0.0025).p == pytest.approx(1 / 8) and tost([0.003] * 3, 0.0025).p == 1.0
    with pytest.raises(ValueError, match="margin"):
        tost(d, 0.0)


def test_holm_levels_make_intervals_match_the_decision():
    p = [0.01, 0.04, 0.03, 0.005]
    levels = holm_levels(p)
    # sorted 0.005 < 0.05/4 rejects, 0.01 < 0.05/3 rejects, 0.03 >= 0.05/2 stops: 0.03 and 0.04 get 0.025
    assert levels == pytest.approx([0.05 / 3, 0.025, 0.025, 0.0125])
    adjusted = holm(p)
    assert [pi < lv for pi, lv in zip(p, levels)] == [a < 0.05 for a in adjusted]
