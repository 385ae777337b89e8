"""Small statistics without SciPy: Student-t CDF and quantile, paired t-test, Holm correction.

The t CDF is computed through the regularized incomplete beta function (continued
fraction, as in Numerical Recipes); the quantile inverts it by bisection. Accurate to
~1e-10, far beyond what a handful of seeds needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` degrees of freedom."""
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(dof / 2.0, 0.5, dof / (dof + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The t with ``P(T <= t) = p`` (e.g. ``t_quantile(0.975, 2) = 4.303``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    if p < 0.5:
        return -t_quantile(1.0 - p, dof)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, dof) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Paired:
    """A paired t-test of differences d (mean, std, n, 95% CI, two-sided p)."""

    mean: float
    std: float
    n: int
    low: float
    high: float
    p: float

    @property
    def ci(self) -> tuple[float, float]:
        return self.low, self.high


def paired_t(diffs: Sequence[float], level: float = 0.95) -> Paired:
    """Mean of the per-seed differences with a Student-t CI (n-1 dof) and the two-sided p of mean = 0.

    n = 1 gives a NaN CI and p (a verdict needs at least two seeds).
    """
    d = [float(x) for x in diffs]
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences: the two arms share no seed")
    mean = sum(d) / n
    if n < 2:
        return Paired(mean, float("nan"), n, float("nan"), float("nan"), float("nan"))
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    if std == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / (std / math.sqrt(n))
        p = min(1.0, 2.0 * (1.0 - t_cdf(abs(t), n - 1)))
    return Paired(mean, std, n, mean - half, mean + half, p)


def seeds_needed(mean: float, std: float, level: float = 0.95, limit: int = 1000) -> int | None:
    """The fewest seeds whose t CI of a mean difference ``mean`` with spread ``std`` excludes 0."""
    if not (math.isfinite(mean) and math.isfinite(std)) or mean == 0.0:
        return None
    if std == 0.0:
        return 2
    for n in range(2, limit + 1):
        if t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n) < abs(mean):
            return n
    return None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order (NaNs pass through and are not counted).

    Sorted ascending, p_(i) becomes max_{j<=i} min(1, (m - j + 1) p_(j)).
    """
    indexed = [(p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]
    m = len(indexed)
    out = [float("nan")] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(indexed)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan"), 0
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return mean, std, len(v)
