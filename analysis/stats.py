"""The tests a verdict runs, on SciPy and statsmodels: paired t-test, TOST, exact sign test, Holm.

This module only fixes the conventions the verdicts rely on: the paired differences are
tested, p-values are two-sided (TOST: the larger one-sided p), intervals are Student-t with
n - 1 dof, NaN p-values stay out of a Holm family, and a verdict needs two seeds.

Zero variance (every seed gave the same paired difference) has no t statistic: instead of
reporting p = 0 the tests fall back to the exact sign test, whose smallest two-sided p with
n seeds is 2 / 2^n (0.25 for n = 3), so identical differences never look more certain
than n seeds can make them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW


def t_quantile(p: float, dof: float) -> float:
    """The t with ``P(T <= t) = p`` for Student's t with ``dof`` degrees of freedom (``t_quantile(0.975, 2) = 4.303``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if dof <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {dof}")
    return float(stats.t.ppf(p, dof))


@dataclass(frozen=True)
class Paired:
    """A paired t-test of differences d (mean, std, n, CI, two-sided p)."""

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
    if std == 0.0:
        return Paired(mean, std, n, mean, mean, sign_test(d), "sign")
    test = stats.ttest_1samp(d, 0.0)
    low, high = test.confidence_interval(level)
    return Paired(mean, std, n, float(low), float(high), float(test.pvalue))


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


def sign_test(diffs: Sequence[float]) -> float:
    """Exact two-sided sign test of median 0 (zero differences dropped); 1 when none is left."""
    pos, neg = sum(1 for x in diffs if x > 0), sum(1 for x in diffs if x < 0)
    n = pos + neg
    return 1.0 if n == 0 else float(stats.binomtest(max(pos, neg), n).pvalue)


def _sign_tail(k: int, n: int) -> float:
    """One-sided exact sign test: P(X >= k) for X ~ Binomial(n, 1/2)."""
    return float(stats.binomtest(k, n, alternative="greater").pvalue)


@dataclass(frozen=True)
class Equivalence:
    """TOST: two one-sided tests of H0 mean <= -margin and H0 mean >= +margin; ``p`` is the larger p."""

    p: float
    p_lower: float
    p_upper: float
    margin: float
    method: str = "t"


def paired_fields(diffs: Sequence[float], margin: float) -> tuple[dict[str, float | str], Paired]:
    """A paired comparison's verdict-table columns (mean and SD of the differences, the test
    used, its p, the TOST p at ``margin``; NaN below two seeds) and the :func:`paired_t` result."""
    result = paired_t(diffs)
    eq = tost(diffs, margin) if result.n >= 2 else None
    return {
        "mean": result.mean,
        "std": result.std,
        "method": "t" if result.method == "t" else "sign (zero variance)",
        "p": result.p,
        "p_tost": eq.p if eq is not None else math.nan,
    }, result


def tost(diffs: Sequence[float], margin: float) -> Equivalence:
    """Two one-sided paired t-tests (Schuirmann 1987): equivalence within +-``margin`` when both reject.

    statsmodels' TOST of the mean of the paired differences (what ``ttost_paired`` runs on
    x1 - x2). ``p = max(p_lower, p_upper)``; equivalence at level alpha iff p < alpha, i.e.
    the ``1 - 2 alpha`` t-interval lies inside (-margin, +margin). n < 2: NaN. Zero variance:
    exact one-sided sign tests (every seed above -margin / below +margin: p = 1 / 2^n).
    """
    if margin <= 0:
        raise ValueError(f"margin={margin}: the equivalence margin must be > 0")
    d = [float(x) for x in diffs]
    n = len(d)
    if n < 2:
        return Equivalence(float("nan"), float("nan"), float("nan"), margin)
    if _std(d, sum(d) / n) == 0.0:
        low = _sign_tail(sum(1 for x in d if x > -margin), n)
        high = _sign_tail(sum(1 for x in d if x < margin), n)
        return Equivalence(max(low, high), low, high, margin, "sign")
    p, (_, low, _), (_, high, _) = DescrStatsW(d).ttost_mean(-margin, margin)
    return Equivalence(float(p), float(low), float(high), margin)


def _tested(p_values: Sequence[float]) -> list[int]:
    """Positions of the p-values a Holm family counts (not None, not NaN)."""
    return [i for i, p in enumerate(p_values) if p is not None and not math.isnan(p)]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (statsmodels), in the input order; NaNs pass through, not counted in m."""
    out = [float("nan")] * len(p_values)
    tested = _tested(p_values)
    if tested:
        adjusted = multipletests([p_values[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, adjusted):
            out[i] = float(p)
    return out


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """Per hypothesis, the level Holm's step-down tested it at: ``alpha / (m - rank)`` (rank from 0).

    Hypotheses after the first non-rejection get the level of the step where the procedure
    stopped, so a ``1 - level`` interval excludes 0 exactly when Holm rejects (p < level).
    NaN p-values get NaN and are not counted in m.
    """
    ranked = sorted((p_values[i], i) for i in _tested(p_values))
    m = len(ranked)
    out = [float("nan")] * len(p_values)
    stopped: float | None = None
    for rank, (p, i) in enumerate(ranked):
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
