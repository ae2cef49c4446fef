"""Uncertainty for bake-off numbers: bootstrap CIs, paired tests, Holm correction, percentiles.

A bake-off usually has tens to a few hundred questions, so a 2-point gap between two configs can
be noise. Every mean in a report therefore carries a bootstrap interval over questions, and every
comparison between two configs is *paired* (same questions, per-question scores) because pairing
removes the between-question variance that dominates unpaired tests.

Inputs are per-question values with no ``None``: a metric that does not apply to a question
(e.g. citation accuracy of an uncited answer) must be filtered out by the caller, and the number
of such questions reported next to the mean. Everything is seeded, so a report is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats


@dataclass(frozen=True, slots=True)
class PairedResult:
    """The comparison of config A with config B on the same questions.

    Attributes:
        n: Number of paired questions.
        mean_a: Mean of A's per-question values.
        mean_b: Mean of B's per-question values.
        diff: ``mean_b - mean_a``; positive means B scored higher.
        ci_low: Lower bound of the bootstrap interval for ``diff``.
        ci_high: Upper bound of the bootstrap interval for ``diff``.
        p_value: Two-sided p-value for "A and B perform the same".
        test: ``"mcnemar"`` (exact, for 0/1 values) or ``"permutation"`` (paired sign-flip).
    """

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    test: Literal["mcnemar", "permutation"]


def bootstrap_ci(
    values: Sequence[float], *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of per-question values with a percentile bootstrap interval over questions.

    The percentile method is used rather than scipy's default BCa: it is always defined and easy
    to explain, while BCa needs a jackknife, can be undefined (scipy warns and returns NaN) when
    the resampled means are degenerate, and its small gain in coverage does not matter at the
    precision reports are read at. Constant data (including a single value) has no spread to
    resample, so it returns ``(v, v, v)`` directly instead of letting scipy warn about a
    degenerate distribution.

    Args:
        values: One value per question; ``None`` must be filtered out by the caller.
        n_resamples: Bootstrap resamples.
        confidence: Two-sided confidence level, in (0, 1).
        seed: Seed for the resampling, so the same inputs always give the same interval.

    Returns:
        ``(mean, low, high)``.

    Raises:
        ValueError: ``values`` is empty or holds None/NaN, or ``confidence`` is not in (0, 1).
    """
    data = _as_array(values, "values")
    _check_confidence(confidence)
    mean = float(np.mean(data))
    if np.all(data == data[0]):
        v = float(data[0])
        return v, v, v
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return mean, float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    binary: bool | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedResult:
    """Compare two configs on the same questions: mean difference, its CI and a paired test.

    For 0/1 outcomes (hit@k, exact match) the exact McNemar test is used: only the questions the
    two configs disagree on carry information, and under the null each disagreement is a fair
    coin, so the p-value is a two-sided binomial test on the discordant pairs. For graded values
    (nDCG, F1) a paired permutation test flips the sign of each per-question difference at
    random, which assumes nothing about the distribution of the differences. The interval for
    ``diff`` is a percentile bootstrap of the per-question differences ``b - a``, which resamples
    questions as pairs.

    Args:
        a: Per-question values of the baseline, in question order.
        b: Per-question values of the candidate, in the same question order.
        binary: Force (True) or forbid (False) McNemar; None detects all-0/1 data.
        n_resamples: Resamples for the bootstrap and, when not exact, the permutation test.
        confidence: Two-sided confidence level of the interval, in (0, 1).
        seed: Seed for both resampling procedures.

    Returns:
        A :class:`PairedResult`.

    Raises:
        ValueError: The lengths differ, an input is empty or holds None/NaN, or ``binary=True``
            with values other than 0 and 1.
    """
    xa, xb = _as_array(a, "a"), _as_array(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must be paired: got {xa.size} and {xb.size} values")
    is_binary = _is_binary(xa) and _is_binary(xb)
    if binary and not is_binary:
        raise ValueError("binary=True needs values that are all 0 or 1")
    use_mcnemar = is_binary if binary is None else binary
    _, ci_low, ci_high = bootstrap_ci(
        xb - xa, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    if use_mcnemar:
        only_a = int(np.sum((xa == 1) & (xb == 0)))
        only_b = int(np.sum((xa == 0) & (xb == 1)))
        p_value = mcnemar_exact(only_a, only_b)
    else:
        p_value = _permutation_p_value(xa, xb, n_resamples=n_resamples, seed=seed)
    mean_a, mean_b = float(np.mean(xa)), float(np.mean(xb))
    return PairedResult(
        n=int(xa.size),
        mean_a=mean_a,
        mean_b=mean_b,
        diff=mean_b - mean_a,
        ci_low=ci_low,
        ci_high=ci_high,
        p_value=p_value,
        test="mcnemar" if use_mcnemar else "permutation",
    )


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value from the two discordant counts.

    ``only_a`` questions were right for A only and ``only_b`` for B only. With no discordant
    pairs there is no evidence of any difference, so the p-value is 1.0.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts must be non-negative")
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, float(stats.binomtest(only_a, n, 0.5, alternative="two-sided").pvalue))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order.

    A bake-off compares many configs against a baseline; without a correction one of twenty
    comparisons is "significant" at 0.05 by chance. Holm controls the family-wise error rate
    like Bonferroni but is uniformly more powerful. With the p-values sorted ascending,
    ``p_(i)`` (i = 1..m) is adjusted to ``max over j <= i of min(1, (m - j + 1) * p_(j))``.

    Raises:
        ValueError: A p-value is not in [0, 1].
    """
    ps = [float(p) for p in p_values]
    for p in ps:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    m = len(ps)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=ps.__getitem__)):
        running = max(running, min(1.0, (m - rank) * ps[index]))
        adjusted[index] = running
    return adjusted


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with numpy's default linear interpolation, e.g. latency P95.

    Linear interpolation is numpy's and pandas' default, so the number matches what anyone
    re-computing it from the stored per-question latencies will get.

    Raises:
        ValueError: ``values`` is empty or holds None/NaN, or ``q`` is not in [0, 100].
    """
    data = _as_array(values, "values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must lie in [0, 100], got {q!r}")
    return float(np.percentile(data, q))


def _as_array(values: Sequence[float], name: str) -> np.ndarray:
    if any(v is None for v in values):
        raise ValueError(
            f"{name} holds None; filter not-applicable questions out and report their count"
        )
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"{name} must be a non-empty flat sequence of numbers")
    if np.isnan(data).any():
        raise ValueError(f"{name} holds NaN")
    return data


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


def _is_binary(data: np.ndarray) -> bool:
    return bool(np.all((data == 0) | (data == 1)))


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(y - x, axis=axis)


def _permutation_p_value(a: np.ndarray, b: np.ndarray, *, n_resamples: int, seed: int) -> float:
    if a.size < 2 or np.all(a == b):
        # One pair: both sign flips give the same |mean difference|. All pairs equal: every
        # flip gives 0. Either way the observed statistic is as extreme as all of them.
        return 1.0
    result = stats.permutation_test(
        (a, b),
        _mean_difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return min(1.0, float(result.pvalue))
