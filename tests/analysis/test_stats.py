import math

import pytest

from analysis.stats import (
    betainc,
    holm,
    mean_std,
    paired_t,
    seeds_needed,
    t_cdf,
    t_quantile,
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


def test_t_quantile_is_symmetric_and_inverts_the_cdf():
    assert t_quantile(0.025, 3) == pytest.approx(-t_quantile(0.975, 3))
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    for dof in (1, 2, 5, 40):
        assert t_cdf(t_quantile(0.9, dof), dof) == pytest.approx(0.9, abs=1e-9)
    assert t_cdf(2.0, 5) == pytest.approx(0.949030, abs=1e-6)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # 1 - sum of binomial terms
    with pytest.raises(ValueError, match="p must be in"):
        t_quantile(1.0, 3)


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


def test_seeds_needed_and_mean_std():
    # mean 0.01, std 0.02: n=18 is the first with t_{0.975,n-1} * 0.02 / sqrt(n) < 0.01
    n = seeds_needed(0.01, 0.02)
    assert t_quantile(0.975, n - 1) * 0.02 / math.sqrt(n) < 0.01 <= t_quantile(0.975, n - 2) * 0.02 / math.sqrt(n - 1)
    assert seeds_needed(0.0, 0.01) is None
    assert mean_std([1.0, 2.0, 3.0, float("nan")]) == (2.0, 1.0, 3)
