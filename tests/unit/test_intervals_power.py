"""The intervals gates decide with (evaluation/intervals.py) and the power figures (evaluation/power.py),
against published values, hand calculations and independent computations with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from workbench.evaluation import intervals, power

# -- Tango's score interval for paired proportions --------------------------------------------------

def test_tango_interval_matches_the_published_example():
    # Fagerland, Lydersen & Laake (2014), Table V: Bentur et al. airway hyper-responsiveness,
    # a 2x2 paired table (1, 1 / 7, 12), n = 21: Tango's 95% interval (-0.517, -0.026) for
    # p(1+) - p(+1) = (1 - 7) / 21. Here B right only = 1, A right only = 7.
    low, high = intervals.tango_interval(only_a=7, only_b=1, n=21)
    assert (round(low, 3), round(high, 3)) == (-0.517, -0.026)
    assert intervals.tango_interval(only_a=1, only_b=7, n=21) == pytest.approx((-high, -low))  # symmetric


def test_tango_interval_without_discordant_questions_is_the_closed_form():
    # With no question changed the score statistic is -sqrt(n d / (1 - d)), so the bound is z^2 / (n + z^2)
    z = stats.norm.ppf(0.975)
    for n in (6, 40, 200):
        low, high = intervals.tango_interval(0, 0, n)
        assert high == pytest.approx(z**2 / (n + z**2), rel=1e-7) and low == pytest.approx(-high, rel=1e-7)


def test_tango_interval_edges_and_its_statistic_at_the_bounds():
    assert intervals.tango_interval(6, 0, 6)[0] == -1.0 and intervals.tango_interval(0, 6, 6)[1] == 1.0
    low, high = intervals.tango_interval(3, 1, 20, confidence=0.9)
    z = stats.norm.ppf(0.95)
    assert intervals.tango_statistic(low, 3, 1, 20) == pytest.approx(z, abs=1e-6)
    assert intervals.tango_statistic(high, 3, 1, 20) == pytest.approx(-z, abs=1e-6)
    with pytest.raises(ValueError):
        intervals.tango_interval(5, 5, 8)


def test_paired_and_mean_intervals_pick_their_method():
    graded = intervals.paired_interval([0.2, 0.4, 0.6, 0.9], [0.3, 0.4, 0.8, 0.8])
    d = np.array([0.1, 0.0, 0.2, -0.1])
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert graded.method == "paired t" and (graded.low, graded.high) == pytest.approx((d.mean() - half, d.mean() + half))
    binary = intervals.paired_interval([1, 0, 1, 1], [1, 1, 1, 0])
    assert binary.method == "tango score" and binary.counts == (1.0, 1.0)
    wilson = intervals.mean_interval([1, 1, 0, 1, 1])
    # Wilson score interval for 4/5 by hand
    z, p, n = stats.norm.ppf(0.975), 0.8, 5
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson.method == "wilson score" and (wilson.low, wilson.high) == pytest.approx((centre - half, centre + half))
    with pytest.raises(ValueError, match="binary=True"):
        intervals.paired_interval([0.5], [1.0], binary=True)


def test_decide_reads_an_interval_of_worsening_against_the_bound():
    assert intervals.decide(-0.01, 0.02, 0.02) == "pass"  # touching the bound from inside is within it
    assert intervals.decide(0.021, 0.3, 0.02) == "fail"
    assert intervals.decide(0.0, 0.03, 0.02) == "inconclusive"
    assert intervals.worsening(-0.8, 0.1, -1.0) == (-0.1, 0.8)  # a drop: worsening is minus the change


# -- power ---------------------------------------------------------------------------------------

def _t_power(n: int, effect: float, alpha: float) -> float:
    """Power of the two-sided one-sample t-test, from the noncentral t distribution (scipy)."""
    crit = stats.t.ppf(1 - alpha / 2, n - 1)
    nc = effect * math.sqrt(n)
    return float(1 - stats.nct.cdf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc))


def test_questions_needed_against_the_hand_formula_and_the_noncentral_t():
    sd, delta = 0.2, 0.03  # effect size 0.15
    n = power.questions_needed(sd, delta)
    # normal approximation by hand: ((z_0.975 + z_0.8) * sd / delta)^2 = (2.8016 * 6.667)^2 = 348.8
    by_hand = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / delta) ** 2
    assert by_hand == pytest.approx(348.8, abs=0.1)
    assert 349 <= n <= 352  # the t-test needs a few more than the normal approximation
    # n is the smallest sample with 80% power, computed independently from the noncentral t
    assert _t_power(n, delta / sd, 0.05) >= 0.8 > _t_power(n - 1, delta / sd, 0.05)


def test_questions_needed_agrees_with_statsmodels():
    from statsmodels.stats.power import TTestPower

    for sd, delta, alpha, pw in [(0.3, 0.05, 0.05, 0.8), (0.5, 0.1, 0.01, 0.9), (0.1, 0.08, 0.05, 0.8)]:
        expected = math.ceil(TTestPower().solve_power(effect_size=delta / sd, alpha=alpha, power=pw))
        assert power.questions_needed(sd, delta, alpha=alpha, power=pw) == max(2, expected)


def test_detectable_difference_is_the_inverse_of_questions_needed():
    sd, n = 0.25, 40
    mde = power.detectable_difference(sd, n)
    # by hand (normal approximation): (z_0.975 + z_0.8) * sd / sqrt(n) = 2.8016 * 0.25 / 6.325 = 0.1107
    assert mde == pytest.approx(0.1107, abs=0.004) and mde > 0.1107  # t is a little wider
    assert _t_power(n, mde / sd, 0.05) == pytest.approx(0.8, abs=1e-4)
    assert power.questions_needed(sd, mde) == n
    assert power.detectable_difference(0.25, 1) is None and power.detectable_difference(0.0, 10) == 0.0
    assert power.questions_needed(0.2, 0.0) is None
    with pytest.raises(ValueError, match="alpha"):
        power.questions_needed(0.2, 0.03, alpha=1.5)
