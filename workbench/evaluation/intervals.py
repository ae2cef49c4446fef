"""Confidence intervals that decide: a gate passes, fails or is inconclusive by where an interval lies.

A gate with ``significant: true`` must not read "not significantly worse" as "not worse": with six
questions nothing is significant, so a test against zero lets any regression through. It asks the
question the other way round (non-inferiority): is the whole interval of the change inside the
allowed margin (pass), wholly beyond it (fail), or across it (inconclusive: more questions needed)?

The interval depends on the metric:

- **0/1 metrics** (hit@k, exact match): **Tango's asymptotic score interval** for the difference of
  paired proportions (Tango 1998, Stat Med 17:891; recommended by Fagerland, Lydersen & Laake 2014,
  Stat Methods Med Res 23:63). It depends only on the discordant questions and n, stays inside
  [-1, 1], and does not collapse to a point when few questions changed. The percentile bootstrap
  and the t interval do both of those wrong on small samples: six questions with three lost give
  the bootstrap [-0.83, -0.17], which excludes 0 although the exact McNemar test has p = 0.25, and
  the t interval [-1.07, 0.07], which leaves [-1, 1].
- **Graded metrics** (nDCG, F1, latency): the **paired Student t interval** of the mean per-question
  difference (``statsmodels`` ``DescrStatsW.tconfint_mean``). It is the interval the power
  calculations (:mod:`.power`) assume, so "N questions would settle it" and the verdict agree.
- A bound on a run's own mean (``min``/``max``): the **Wilson score** interval for 0/1 metrics
  (``statsmodels`` ``proportion_confint``), else the one-sample t interval.

No library offers Tango's interval for paired data (statsmodels has score intervals for independent
samples only), so it is written here, following the formulas of the paper; it is checked against
the published example (Fagerland et al. 2014, Table V) in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import optimize, stats

Outcome = Literal["pass", "fail", "inconclusive"]
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
POWER = 0.8  # "would likely settle it": the power the questions-needed estimate is computed for
MAX_QUESTIONS = 10_000_000


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with a two-sided confidence interval.

    Attributes:
        estimate: The mean (one sample) or the mean change B - A (paired).
        low: Lower bound.
        high: Upper bound.
        confidence: Two-sided confidence level, e.g. 0.95.
        n: Questions (pairs).
        method: ``"tango score"``, ``"paired t"``, ``"wilson score"`` or ``"t"``.
        sd: Sample standard deviation of the per-question values (differences when paired);
            None with fewer than two questions.
        binary: Whether the values are 0/1 (the interval used the counts).
        counts: (only A, only B) discordant questions for a paired 0/1 interval; (successes, n) for Wilson.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n: int
    method: str
    sd: float | None
    binary: bool
    counts: tuple[float, float] | None = None


def _check(values: Sequence[float], name: str) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0 or np.isnan(data).any():
        raise ValueError(f"{name} must be a non-empty flat sequence of numbers without None/NaN")
    return data


def _is_binary(*arrays: np.ndarray) -> bool:
    return all(bool(np.all((x == 0) | (x == 1))) for x in arrays)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return float(stats.norm.ppf(0.5 + confidence / 2))


def tango_statistic(delta0: float, only_a: float, only_b: float, n: float) -> float:
    """Tango's score statistic for H0: P(B right) - P(A right) = ``delta0`` on paired 0/1 outcomes.

    ``only_b`` questions are right for B only, ``only_a`` for A only. The variance uses the
    maximum-likelihood estimate of P(A only) under H0, the root of a quadratic (Tango 1998, eq. 3).
    """
    a_, b_ = 2.0 * n, -only_b - only_a + (2.0 * n - only_b + only_a) * delta0
    c_ = -only_a * delta0 * (1.0 - delta0)
    p_only_a = (math.sqrt(max(b_ * b_ - 4.0 * a_ * c_, 0.0)) - b_) / (2.0 * a_)
    var = n * (2.0 * p_only_a + delta0 * (1.0 - delta0))
    num = only_b - only_a - n * delta0
    if var <= 0.0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def tango_interval(only_a: float, only_b: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's asymptotic score interval for P(B right) - P(A right) from paired 0/1 outcomes.

    The bounds are where the score statistic equals ±z (found with ``scipy.optimize.brentq``);
    counts may be fractional (the questions-needed search scales them).
    """
    z = _z(confidence)
    if n <= 0 or only_a < 0 or only_b < 0 or only_a + only_b > n:
        raise ValueError(f"need 0 <= only_a + only_b <= n, got only_a={only_a}, only_b={only_b}, n={n}")
    est = (only_b - only_a) / n
    eps = 1e-12

    def root(sign: float, lo: float, hi: float) -> float:
        return optimize.brentq(lambda d: tango_statistic(d, only_a, only_b, n) - sign * z, lo, hi, xtol=1e-10)

    low = -1.0 if est <= -1.0 + eps or tango_statistic(-1.0 + eps, only_a, only_b, n) < z else root(1.0, -1.0 + eps, est)
    high = 1.0 if est >= 1.0 - eps or tango_statistic(1.0 - eps, only_a, only_b, n) > -z else root(-1.0, est, 1.0 - eps)
    return low, high


def _sd(data: np.ndarray) -> float | None:
    return float(np.std(data, ddof=1)) if data.size > 1 else None


def _t_interval(data: np.ndarray, confidence: float) -> tuple[float, float]:
    from statsmodels.stats.weightstats import DescrStatsW

    if data.size < 2:
        return -math.inf, math.inf  # one question says nothing about the spread
    low, high = DescrStatsW(data).tconfint_mean(alpha=1.0 - confidence)
    return float(low), float(high)


def paired_interval(a: Sequence[float], b: Sequence[float], *, binary: bool | None = None, confidence: float = 0.95) -> Interval:
    """The change B - A over the same questions with its interval (Tango for 0/1 values, else paired t).

    Raises:
        ValueError: lengths differ, an input is empty or holds None/NaN, or ``binary=True`` with
            values other than 0/1.
    """
    xa, xb = _check(a, "a"), _check(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must be paired: got {xa.size} and {xb.size} values")
    is_binary = _is_binary(xa, xb)
    if binary and not is_binary:
        raise ValueError("binary=True needs values that are all 0 or 1")
    use = is_binary if binary is None else binary
    d = xb - xa
    if use:
        only_a, only_b = float(np.sum(d < 0)), float(np.sum(d > 0))
        low, high = tango_interval(only_a, only_b, d.size, confidence)
        return Interval(float(d.mean()), low, high, confidence, int(d.size), "tango score", _sd(d), True, (only_a, only_b))
    low, high = _t_interval(d, confidence)
    return Interval(float(d.mean()), low, high, confidence, int(d.size), "paired t", _sd(d), False)


def mean_interval(values: Sequence[float], *, binary: bool | None = None, confidence: float = 0.95) -> Interval:
    """A run's mean with its interval (Wilson score for 0/1 values, else the t interval)."""
    from statsmodels.stats.proportion import proportion_confint

    x = _check(values, "values")
    use = _is_binary(x) if binary is None else binary
    if use:
        k = float(x.sum())
        low, high = proportion_confint(k, x.size, alpha=1.0 - confidence, method="wilson")
        return Interval(float(x.mean()), float(low), float(high), confidence, int(x.size), "wilson score", _sd(x), True, (k, float(x.size)))
    low, high = _t_interval(x, confidence)
    return Interval(float(x.mean()), low, high, confidence, int(x.size), "t", _sd(x), False)


def decide(low: float, high: float, bound: float) -> Outcome:
    """Where an interval of *worsening* (positive = worse) lies against the allowed ``bound``:
    entirely at or below it -> pass, entirely above it -> fail, across it -> inconclusive."""
    if high <= bound:
        return PASS
    if low > bound:
        return FAIL
    return INCONCLUSIVE


def questions_to_settle(interval: Interval, worse_sign: float, bound: float, *, paired: bool = True) -> int | None:
    """About how many questions would likely settle an inconclusive verdict; None when no number would.

    With spread in the per-question values: the sample size at which a one-sided t-test at the
    interval's level (each side of a two-sided interval holds (1 - confidence) / 2) has 80% power to
    tell the observed worsening from ``bound``, given the observed standard deviation
    (``statsmodels`` ``TTestPower.solve_power``). Without spread (every question changed by the same
    amount, typically none changed), the smallest n at which the same interval method, on data in
    the same proportions, would lie on one side of the bound; for a 0/1 metric with no question
    changed and a margin of 0.02 that is about 190 questions.

    Args:
        interval: The current interval (of the change when ``paired``, else of the mean).
        worse_sign: +1 when larger values are worse for this bound, -1 when smaller ones are.
        bound: The allowed worsening, on the same scale as ``worse_sign * value``.
        paired: Whether ``interval`` is a paired change (Tango) or a single mean (Wilson).
    """
    from .power import questions_needed

    worse = worse_sign * interval.estimate
    if worse == bound or interval.sd is None:
        return None  # on the bound no sample size moves the interval off it; one question has no spread
    alpha_one_sided = (1.0 - interval.confidence) / 2
    if interval.sd > 0:
        n = questions_needed(interval.sd, abs(worse - bound), alpha=alpha_one_sided, power=POWER, alternative="larger")
        return max(n, interval.n + 1) if n is not None else None
    if not interval.binary:
        return None  # graded values all equal: the t interval is a point, already decisive

    def settled(lo: float, hi: float) -> bool:
        return decide(*worsening(lo, hi, worse_sign), bound) != INCONCLUSIVE

    return _scaled_search(interval, settled, paired)


def worsening(low: float, high: float, worse_sign: float) -> tuple[float, float]:
    """An interval of a value turned into one of worsening (positive = worse): flipped when lower is worse."""
    return (low, high) if worse_sign > 0 else (-high, -low)


def _scaled_search(interval: Interval, settled: Callable[[float, float], bool], paired: bool) -> int | None:
    """The smallest n (> current) at which the 0/1 interval on counts scaled to n settles the bound."""
    k1, k2 = interval.counts or (0.0, 0.0)
    n0 = interval.n

    def at(n: int) -> bool:
        scale = n / n0
        if paired:
            lo, hi = tango_interval(k1 * scale, k2 * scale, n, interval.confidence)
        else:
            from statsmodels.stats.proportion import proportion_confint

            lo, hi = proportion_confint(k1 * scale, n, alpha=1.0 - interval.confidence, method="wilson")
        return settled(float(lo), float(hi))

    hi = max(n0 + 1, 2)
    while not at(hi):
        if hi >= MAX_QUESTIONS:
            return None
        hi = min(hi * 2, MAX_QUESTIONS)
    lo = max(n0, 1)  # at(lo) is False: the current interval is inconclusive
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if at(mid) else (mid, hi)
    return hi
