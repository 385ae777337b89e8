"""Small statistics without SciPy: Student t, paired t-test, TOST equivalence, exact sign test, Holm.

The t CDF is computed through the regularized incomplete beta function (continued
fraction, as in Numerical Recipes); the quantile inverts it by bisection. Accurate to
~1e-10, far beyond what a handful of seeds needs.

Zero variance (every seed gave the same paired difference) has no t statistic: instead of
reporting p = 0 the tests fall back to the exact sign test, whose smallest two-sided p with
n seeds is 2 / 2^n (0.25 for n = 3), so identical differences never look more certain
than n seeds can make them.
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
    method: str = "t"

    @property
    def ci(self) -> tuple[float, float]:
        return self.low, self.high

    @property
    def zero_variance(self) -> bool:
        return self.n >= 2 and self.std == 0.0


def paired_t(diffs: Sequence[float], level: float = 0.95) -> Paired:
    """Mean of the per-seed differences with a Student-t CI (n-1 dof) and the two-sided p of mean = 0.

    n = 1 gives a NaN CI and p (a verdict needs at least two seeds). Zero variance gives a
    degenerate CI [mean, mean] and the exact two-sided sign-test p (``method="sign"``), never 0.
    """
    d = [float(x) for x in diffs]
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences: the two arms share no seed")
    mean = sum(d) / n
    if n < 2:
        return Paired(mean, float("nan"), n, float("nan"), float("nan"), float("nan"))
    std = _std(d, mean)
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    if std == 0.0:
        return Paired(mean, std, n, mean, mean, sign_test(d), "sign")
    t = mean / (std / math.sqrt(n))
    p = min(1.0, 2.0 * (1.0 - t_cdf(abs(t), n - 1)))
    return Paired(mean, std, n, mean - half, mean + half, p)


ZERO_SPREAD = 1e-9
"""A sample SD below this times max(1, max |d|) is rounding noise of identical differences: zero variance."""


def _std(d: list[float], mean: float) -> float:
    std = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return 0.0 if std < ZERO_SPREAD * max(1.0, max(abs(x) for x in d)) else std


def t_interval(mean: float, std: float, n: int, alpha: float) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` Student-t interval of a mean (NaN for n < 2; [mean, mean] for std 0)."""
    if n < 2 or not math.isfinite(std) or not 0.0 < alpha < 1.0:
        return float("nan"), float("nan")
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def _binom_tail(n: int, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(max(k, 0), n + 1)) / 2.0**n


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test of median 0 (zero differences dropped); 1 when none is left."""
    pos, neg = sum(1 for x in diffs if x > 0), sum(1 for x in diffs if x < 0)
    n = pos + neg
    return 1.0 if n == 0 else min(1.0, 2.0 * _binom_tail(n, max(pos, neg)))


@dataclass(frozen=True)
class Equivalence:
    """TOST: two one-sided tests of H0 mean <= -margin and H0 mean >= +margin; ``p`` is the larger p."""

    p: float
    p_lower: float
    p_upper: float
    margin: float
    method: str = "t"


def tost(diffs: Sequence[float], margin: float) -> Equivalence:
    """Two one-sided paired t-tests (Schuirmann 1987): equivalence within +-``margin`` when both reject.

    ``p = max(p_lower, p_upper)``; equivalence at level alpha iff p < alpha, i.e. the
    ``1 - 2 alpha`` t-interval lies inside (-margin, +margin). n < 2: NaN. Zero variance:
    exact one-sided sign tests (every seed above -margin / below +margin: p = 1 / 2^n).
    """
    if margin <= 0:
        raise ValueError(f"margin={margin}: the equivalence margin must be > 0")
    d = [float(x) for x in diffs]
    n = len(d)
    if n < 2:
        return Equivalence(float("nan"), float("nan"), float("nan"), margin)
    mean = sum(d) / n
    std = _std(d, mean)
    if std == 0.0:
        low = _binom_tail(n, sum(1 for x in d if x > -margin))
        high = _binom_tail(n, sum(1 for x in d if x < margin))
        return Equivalence(max(low, high), low, high, margin, "sign")
    se = std / math.sqrt(n)
    low = 1.0 - t_cdf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    high = t_cdf((mean - margin) / se, n - 1)  # H0: mean >= +margin
    return Equivalence(max(low, high), low, high, margin)


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


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Per hypothesis, the level Holm's step-down tested it at: ``alpha / (m - rank)`` (rank from 0).

    Hypotheses after the first non-rejection get the level of the step where the procedure
    stopped, so a ``1 - level`` interval excludes 0 exactly when Holm rejects (p < level).
    NaN p-values get NaN and are not counted in m.
    """
    indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None and not math.isnan(p))
    m = len(indexed)
    out = [float("nan")] * len(p_values)
    stopped: float | None = None
    for rank, (p, i) in enumerate(indexed):
        level = alpha / (m - rank)
        if stopped is None and p >= level:
            stopped = level
        out[i] = level if stopped is None else stopped
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return float("nan"), float("nan"), 0
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return mean, std, len(v)
