"""Seed planning: the power of a lesson's paired t-test and TOST, and the fewest seeds that reach a target.

A lesson's verdict is a paired t-test (is the difference nonzero?) and a TOST (is it within
the margin?) on per-seed differences, at a Holm-corrected level inside the lesson's family
of m comparisons. Planning uses Bonferroni's alpha / m, the level Holm's first step tests
at (so the plan is never optimistic). For n seeds, with d = the smallest effect worth
detecting and s the SD of the paired differences:

- difference: power = P(|T'| > t_{1 - a/2, n-1}), T' noncentral t with n - 1 dof and
  noncentrality d / (s / sqrt n) (SciPy's ``nct``); the normal approximation with Guenther's
  t correction, n = (z_{1-a/2} + z_{power})^2 s^2 / d^2 + z_{1-a/2}^2 / 2, is reported next to it;
- equivalence (true difference 0, margin D): power >= P1 + P2 - 1, the two one-sided tests'
  powers P(T' > t_{1-a, n-1}) with noncentrality D / (s / sqrt n) each (a lower bound on
  both rejecting, as PowerTOST's "nct" method).

This is statsmodels' ``TTestPower`` calculation with each tail taken as an upper tail of
``scipy.stats.nct.sf``: ``TTestPower`` evaluates the tails with ``scipy.special.nctdtr``,
which returns NaN in parts of the range the seed search visits (two-sided power at 50 seeds
and noncentrality 8.8, for one; scipy/scipy#25470), and a NaN power sends the bisection to
the wrong count. ``nct.sf`` stays finite and within [0, 1] there.

``Plan.seeds`` is the larger of the two, so a sweep of that many seeds ends decisive either
way (better/worse if the true effect is >= d, equivalent if it is 0). A pilot SD is an
estimate with few degrees of freedom: with ``dof`` given, the plan uses the one-sided 80%
upper confidence limit of the SD, s * sqrt(df / chi2_{0.2, df}) (Browne 1995); a declared
SD (no dof) is taken as known. Zero SD is planned for the exact sign test the verdicts use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from scipy import optimize, stats

MIN_PILOT_SEEDS = 5
"""A pilot plans only with an SD of at least ``MIN_PILOT_SEEDS - 1`` degrees of freedom (5 seeds of one
comparison, or independent comparisons pooled): from 3 seeds (2 df) the SD's upper limit is 2.1x the
estimate and a plan from it can miss by several times."""
LIMIT = 10_000
"""The largest seed count searched; a plan beyond it is reported as ``> LIMIT``."""
SD_CONFIDENCE = 0.8
"""The one-sided confidence of the SD's upper limit a pilot plan uses."""


def _upper_tail(crit: float, dof: int, ncp: float) -> float:
    """P(T' > crit) for the noncentral t with ``dof`` and noncentrality ``ncp``."""
    return float(stats.nct.sf(crit, dof, ncp))


def power_difference(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with n seeds when the true difference is ``effect``."""
    if n < 2:
        return 0.0
    crit = float(stats.t.isf(alpha / 2.0, n - 1))
    ncp = effect / (sd / math.sqrt(n))
    return _upper_tail(crit, n - 1, ncp) + _upper_tail(crit, n - 1, -ncp)  # P(T' > c) + P(T' < -c)


def power_equivalence(n: int, margin: float, sd: float, alpha: float = 0.05, true: float = 0.0) -> float:
    """Lower bound on TOST's power (both one-sided tests at ``alpha`` reject) when the true difference is ``true``."""
    if n < 2:
        return 0.0
    crit = float(stats.t.isf(alpha, n - 1))
    se = sd / math.sqrt(n)
    lower = _upper_tail(crit, n - 1, (true + margin) / se)  # rejects mean <= -margin
    upper = _upper_tail(crit, n - 1, (margin - true) / se)  # rejects mean >= +margin
    return max(0.0, lower + upper - 1.0)


def _fewest(power_at: Callable[[int], float], target: float, limit: int) -> int | None:
    """The smallest n in [2, limit] with ``power_at(n) >= target``, by bisection (power grows with n)."""
    if power_at(limit) < target:
        return None
    lo, hi = 1, limit  # power_at(lo) < target <= power_at(hi); n = 1 has no test
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power_at(mid) >= target else (mid, hi)
    return hi


def _sign_seeds(alpha: float) -> int:
    """The fewest n >= 2 with 1 / 2^n < alpha."""
    return max(2, math.floor(math.log2(1.0 / alpha)) + 1)


def seeds_for_difference(
    effect: float, sd: float, alpha: float = 0.05, power: float = 0.8, limit: int = LIMIT
) -> int | None:
    """The fewest seeds whose paired t-test detects ``effect`` with ``power`` (None beyond ``limit``).

    SD 0 (identical differences) is decided by the exact sign test instead: the fewest n with
    2 / 2^n < alpha, the smallest two-sided p n seeds can give.
    """
    if sd == 0.0:
        return _sign_seeds(alpha / 2.0)
    return _fewest(lambda k: power_difference(k, effect, sd, alpha), power, limit)


def seeds_for_equivalence(
    margin: float, sd: float, alpha: float = 0.05, power: float = 0.8, limit: int = LIMIT
) -> int | None:
    """The fewest seeds whose TOST shows equivalence within ``margin`` with ``power`` when the truth is 0.

    SD 0: the exact one-sided sign tests, the fewest n with 1 / 2^n < alpha.
    """
    if sd == 0.0:
        return _sign_seeds(alpha)
    return _fewest(lambda k: power_equivalence(k, margin, sd, alpha), power, limit)


def normal_approximation(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """n = (z_{1-a/2} + z_power)^2 (sd / effect)^2 + z_{1-a/2}^2 / 2, rounded up (Guenther's t correction)."""
    za, zb = stats.norm.ppf(1.0 - alpha / 2.0), stats.norm.ppf(power)
    return max(2, math.ceil((za + zb) ** 2 * (sd / effect) ** 2 + za * za / 2.0))


def minimal_detectable_effect(n: int, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference the two-sided paired t-test with ``n`` seeds detects with ``power``
    at level ``alpha``: the d with ``power_difference(n, d, sd, alpha) = power`` (inf for n < 2, 0 for sd 0)."""
    if n < 2:
        return math.inf
    if sd == 0.0:
        return 0.0
    se = sd / math.sqrt(n)
    crit = float(stats.t.isf(alpha / 2.0, n - 1))
    high = se * (crit + float(stats.norm.ppf(power)) + 10.0)  # power there is ~1: a bracket for the root
    return float(optimize.brentq(lambda d: power_difference(n, d, sd, alpha) - power, 0.0, high, xtol=1e-12))


def sd_upper(sd: float, dof: float, confidence: float = SD_CONFIDENCE) -> float:
    """One-sided ``confidence`` upper limit of a SD estimated with ``dof`` degrees of freedom."""
    return sd * math.sqrt(dof / stats.chi2.ppf(1.0 - confidence, dof))


@dataclass(frozen=True)
class Plan:
    """Seeds one lesson needs: for a difference of ``effect`` and for equivalence within ``margin``."""

    sd: float
    dof: float | None
    sd_planned: float
    effect: float
    margin: float
    alpha: float
    comparisons: int
    power: float
    difference: int | None
    equivalence: int | None
    normal: int

    @property
    def seeds(self) -> int | None:
        """The larger of the two counts: decisive whichever way the truth lies."""
        if self.difference is None or self.equivalence is None:
            return None
        return max(self.difference, self.equivalence)


def plan(
    sd: float,
    effect: float,
    margin: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    comparisons: int = 1,
    dof: float | None = None,
) -> Plan:
    """Seeds for one lesson of ``comparisons`` comparisons; ``dof`` (a pilot's) plans at the SD's upper limit."""
    if sd < 0 or effect <= 0 or not 0 < alpha < 1 or not 0 < power < 1 or comparisons < 1:
        raise ValueError(
            f"sd={sd}, effect={effect}, alpha={alpha}, power={power}, comparisons={comparisons}: need sd >= 0, "
            "effect > 0, alpha and power in (0, 1), comparisons >= 1"
        )
    margin = effect if margin is None else margin
    level = alpha / comparisons
    planned = sd_upper(sd, dof) if dof else sd
    return Plan(
        sd,
        dof,
        planned,
        effect,
        margin,
        level,
        comparisons,
        power,
        seeds_for_difference(effect, planned, level, power),
        seeds_for_equivalence(margin, planned, level, power),
        normal_approximation(effect, planned, level, power) if planned > 0 else 2,
    )
