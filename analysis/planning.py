"""Seed planning: the power of a lesson's paired t-test and TOST, and the fewest seeds that reach a target.

A lesson's verdict is a paired t-test (is the difference nonzero?) and a TOST (is it within
the margin?) on per-seed differences, at a Holm-corrected level inside the lesson's family
of m comparisons. Planning uses Bonferroni's alpha / m, the level Holm's first step tests
at (so the plan is never optimistic). For n seeds, with d = the smallest effect worth
detecting and s the SD of the paired differences:

- difference: power = P(|T'| > t_{1 - a/2, n-1}), T' noncentral t with n - 1 dof and
  noncentrality d / (s / sqrt n), computed exactly (numerical integration over the
  chi distribution); the normal approximation with Guenther's t correction,
  n = (z_{1-a/2} + z_{power})^2 s^2 / d^2 + z_{1-a/2}^2 / 2, is reported next to it;
- equivalence (true difference 0, margin D): power >= P1 + P2 - 1, the two one-sided tests'
  powers P(T' > t_{1-a, n-1}) with noncentrality D / (s / sqrt n) each (a lower bound on
  both rejecting, as PowerTOST's "nct" method).

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

from analysis.stats import t_quantile

LIMIT = 10_000
"""The largest seed count searched; a plan beyond it is reported as ``> LIMIT``."""
SD_CONFIDENCE = 0.8
"""The one-sided confidence of the SD's upper limit a pilot plan uses."""


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_quantile(p: float) -> float:
    """Inverse of :func:`normal_cdf` by bisection (to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if normal_cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def nct_sf(c: float, dof: float, ncp: float, points: int = 4000) -> float:
    """P(T' > c) for the noncentral t with ``dof`` and noncentrality ``ncp``.

    T' = (Z + ncp) / U with U = sqrt(V / dof), V ~ chi2(dof): P(T' > c) = E[Phi(ncp - c U)],
    integrated over U's density with Simpson's rule on a range holding all but ~1e-12 of it.
    """
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    spread = 1.0 / math.sqrt(2.0 * dof)
    lo, hi = max(0.0, 1.0 - 14.0 * spread), 1.0 + 14.0 * spread + (8.0 if dof < 3 else 0.0)
    half_dof = dof / 2.0
    log_norm = math.log(2.0) + half_dof * math.log(half_dof) - math.lgamma(half_dof)

    def f(u: float) -> float:
        if u <= 0.0:
            return 0.0 if dof > 1 else math.exp(log_norm) * normal_cdf(ncp)
        density = math.exp(log_norm + (dof - 1.0) * math.log(u) - half_dof * u * u)
        return density * normal_cdf(ncp - c * u)

    points += points % 2
    h = (hi - lo) / points
    total = f(lo) + f(hi) + sum((4.0 if i % 2 else 2.0) * f(lo + i * h) for i in range(1, points))
    return min(1.0, max(0.0, total * h / 3.0))


def power_difference(n: int, effect: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with n seeds when the true difference is ``effect``."""
    if n < 2:
        return 0.0
    c = t_quantile(1.0 - alpha / 2.0, n - 1)
    ncp = effect / (sd / math.sqrt(n))
    return nct_sf(c, n - 1, ncp) + nct_sf(c, n - 1, -ncp)


def power_equivalence(n: int, margin: float, sd: float, alpha: float = 0.05, true: float = 0.0) -> float:
    """Lower bound on TOST's power (both one-sided tests at ``alpha`` reject) when the true difference is ``true``."""
    if n < 2:
        return 0.0
    c = t_quantile(1.0 - alpha, n - 1)
    se = sd / math.sqrt(n)
    return max(0.0, nct_sf(c, n - 1, (true + margin) / se) + nct_sf(c, n - 1, (margin - true) / se) - 1.0)


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
    za, zb = normal_quantile(1.0 - alpha / 2.0), normal_quantile(power)
    return max(2, math.ceil((za + zb) ** 2 * (sd / effect) ** 2 + za * za / 2.0))


def _gamma_p(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) (series below a + 1, continued fraction above)."""
    if x <= 0.0:
        return 0.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        for k in range(1, 1000):
            term *= x / (a + k)
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return total * math.exp(log_front)
    b, c, d = x + 1.0 - a, 1e300, 1.0 / (x + 1.0 - a)
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = b + an / c
        c = c if abs(c) > 1e-300 else 1e-300
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return 1.0 - math.exp(log_front) * h


def chi2_quantile(p: float, dof: float) -> float:
    """The x with P(chi2(dof) <= x) = p (bisection on the regularized gamma function)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = 0.0, max(1.0, dof)
    while _gamma_p(dof / 2.0, hi / 2.0) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _gamma_p(dof / 2.0, mid / 2.0) < p else (lo, mid)
    return 0.5 * (lo + hi)


def sd_upper(sd: float, dof: float, confidence: float = SD_CONFIDENCE) -> float:
    """One-sided ``confidence`` upper limit of a SD estimated with ``dof`` degrees of freedom."""
    return sd * math.sqrt(dof / chi2_quantile(1.0 - confidence, dof))


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
