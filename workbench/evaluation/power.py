"""Power of a paired comparison: the smallest difference a sample can detect, and the questions a
difference needs.

Two configurations answer the same questions, so what limits a comparison is the spread of the
per-question *differences* (sd), not of the scores: the standardised effect is ``delta / sd``. Both
numbers come from the paired (one-sample) t-test's power, solved by ``statsmodels``
(``TTestPower.solve_power``, the noncentral t distribution). The workbench's own tests are McNemar
(0/1 metrics) and a sign-flip permutation test (graded ones); at bake-off sizes their power is close
to the t-test's, which is why the figures are estimates ("about N questions"), not guarantees.
"""

from __future__ import annotations

import math
from typing import Literal

Alternative = Literal["two-sided", "larger"]


def _power():
    from statsmodels.stats.power import TTestPower

    return TTestPower()


def questions_needed(sd: float, delta: float, *, alpha: float = 0.05, power: float = 0.8,
                     alternative: Alternative = "two-sided") -> int | None:
    """The number of questions (pairs) at which a paired t-test at ``alpha`` detects a true mean
    difference of ``delta`` with probability ``power``, when per-question differences have standard
    deviation ``sd``. None when ``delta`` is 0 (no sample size detects no difference).

    Raises:
        ValueError: ``sd`` or ``delta`` negative, or ``alpha``/``power`` outside (0, 1).
    """
    _check(alpha, power)
    if sd < 0 or delta < 0:
        raise ValueError(f"sd and delta must be non-negative, got sd={sd!r}, delta={delta!r}")
    if delta == 0:
        return None
    if sd == 0:
        return 2  # no spread: any difference shows on the smallest sample that has a variance
    n = _power().solve_power(effect_size=delta / sd, nobs=None, alpha=alpha, power=power, alternative=alternative)
    return max(2, math.ceil(float(n) - 1e-9))


def detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8,
                          alternative: Alternative = "two-sided") -> float | None:
    """The smallest true mean difference a paired t-test at ``alpha`` on ``n`` questions detects
    with probability ``power``, given the sd of the per-question differences (the minimum
    detectable effect, in the metric's own units). None with fewer than 2 questions.
    """
    _check(alpha, power)
    if sd < 0:
        raise ValueError(f"sd must be non-negative, got {sd!r}")
    if n < 2:
        return None
    if sd == 0:
        return 0.0
    effect = _power().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power, alternative=alternative)
    return float(effect) * sd


def _check(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not 0.0 < power < 1.0:
        raise ValueError(f"power must lie in (0, 1), got {power!r}")
