"""Statistics: bootstrap intervals, McNemar, permutation test, Holm, percentiles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from workbench.evaluation.stats import (
    PairedResult,
    bootstrap_ci,
    holm,
    mcnemar_exact,
    paired_difference,
    percentile,
)

# --- bootstrap_ci --------------------------------------------------------------------------------


def test_bootstrap_ci_contains_the_mean_and_is_reproducible() -> None:
    values = np.random.default_rng(3).random(60).tolist()
    mean, low, high = bootstrap_ci(values, seed=11)
    assert mean == pytest.approx(sum(values) / len(values))
    assert low < mean < high
    assert bootstrap_ci(values, seed=11) == (mean, low, high)
    assert bootstrap_ci(values, seed=12) != (mean, low, high)


def test_bootstrap_ci_width_is_plausible_for_a_coin() -> None:
    # 100 questions, half right: the standard error is sqrt(1/2 * 1/2 / 100) = 1/20, so a 95%
    # interval is about 1/2 +- 1.96/20, i.e. roughly [0.40, 0.60]
    mean, low, high = bootstrap_ci([0.0, 1.0] * 50, n_resamples=2000)
    assert mean == 1 / 2
    assert low == pytest.approx(1 / 2 - 1.96 / 20, abs=0.03)
    assert high == pytest.approx(1 / 2 + 1.96 / 20, abs=0.03)


def test_bootstrap_ci_is_wider_at_higher_confidence() -> None:
    values = np.random.default_rng(5).random(40).tolist()
    _, low90, high90 = bootstrap_ci(values, confidence=0.90)
    _, low99, high99 = bootstrap_ci(values, confidence=0.99)
    assert low99 < low90 and high90 < high99


@pytest.mark.parametrize("values", [[0.7] * 25, [0.7], [1], [0.1, 0.1, 0.1]])
def test_bootstrap_ci_of_constant_data_is_degenerate_without_warnings(values) -> None:
    v = float(values[0])
    assert bootstrap_ci(values) == (v, v, v)


@pytest.mark.parametrize("values", [[], [0.5, None], [0.5, float("nan")]])
def test_bootstrap_ci_rejects_empty_or_missing_values(values) -> None:
    with pytest.raises(ValueError):
        bootstrap_ci(values)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95])
def test_bootstrap_ci_rejects_a_bad_confidence(confidence) -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.0, 1.0], confidence=confidence)


# --- McNemar -------------------------------------------------------------------------------------


def test_mcnemar_exact_by_hand() -> None:
    # 7 discordant pairs one way, 1 the other: p = 2 * P(X <= 1), X ~ Binomial(8, 1/2)
    # = 2 * (C(8,0) + C(8,1)) / 2**8 = 2 * (1 + 8) / 256 = 18/256
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256)
    # 5 to 0: p = 2 * (1/2)**5 = 1/16
    assert mcnemar_exact(5, 0) == pytest.approx(1 / 16)


def test_mcnemar_without_discordant_pairs_is_one() -> None:
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_difference_uses_mcnemar_for_binary_data() -> None:
    # 7 questions only A got right, 1 only B got right, 4 both, 3 neither
    a = [1] * 7 + [0] * 1 + [1] * 4 + [0] * 3
    b = [0] * 7 + [1] * 1 + [1] * 4 + [0] * 3
    result = paired_difference(a, b)
    assert result.test == "mcnemar"
    assert result.n == 15
    assert result.mean_a == pytest.approx(11 / 15)
    assert result.mean_b == pytest.approx(5 / 15)
    assert result.diff == pytest.approx(5 / 15 - 11 / 15)
    assert result.p_value == pytest.approx(18 / 256)
    assert result.ci_low <= result.diff <= result.ci_high


def test_paired_difference_identical_binary_results() -> None:
    result = paired_difference([1, 0, 1], [1, 0, 1])
    assert (result.diff, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_binary_can_be_forced_off_and_cannot_be_forced_on_for_graded_data() -> None:
    assert paired_difference([0, 1, 1, 0], [1, 1, 1, 1], binary=False).test == "permutation"
    with pytest.raises(ValueError, match="binary"):
        paired_difference([0.5, 1.0], [1.0, 1.0], binary=True)


# --- permutation test ----------------------------------------------------------------------------


def test_permutation_test_exact_by_hand() -> None:
    # differences 1, 2, 3: the 2**3 = 8 sign flips give means whose |value| reaches the
    # observed 2 only for (+,+,+) and (-,-,-), so p = 2/8
    result = paired_difference([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    assert result.test == "permutation"
    assert result.diff == pytest.approx(2.0)
    assert result.p_value == pytest.approx(2 / 8)


def test_permutation_test_detects_a_clear_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(50)
    b = np.clip(a + 0.2 + rng.normal(0, 0.05, size=50), 0, 1)
    result = paired_difference(a.tolist(), b.tolist())
    assert result.test == "permutation"
    assert result.p_value < 0.01
    assert 0 < result.ci_low < result.diff < result.ci_high


def test_permutation_test_does_not_flag_a_null() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(50)
    b = a + rng.normal(0, 0.05, size=50)  # noise only
    result = paired_difference(a.tolist(), b.tolist(), seed=4)
    assert result.p_value > 0.05
    assert result.ci_low < 0 < result.ci_high


def test_permutation_test_of_perfectly_balanced_differences_is_one() -> None:
    a = [0.5] * 20
    b = [0.75, 0.25] * 10  # differences +1/4, -1/4: observed mean difference is 0
    assert paired_difference(a, b).p_value == 1.0


def test_paired_difference_is_reproducible() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.random(30).tolist(), rng.random(30).tolist()
    assert paired_difference(a, b, seed=9) == paired_difference(a, b, seed=9)


def test_paired_difference_of_a_single_pair() -> None:
    result = paired_difference([0.25], [0.75])
    assert (result.n, result.diff, result.ci_low, result.ci_high) == (1, 0.5, 0.5, 0.5)
    assert result.p_value == 1.0


def test_paired_difference_rejects_unpaired_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="paired"):
        paired_difference([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired_difference([], [])
    with pytest.raises(ValueError, match="None"):
        paired_difference([1.0, None], [1.0, 0.0])


def test_paired_result_is_frozen() -> None:
    result = paired_difference([0, 1], [1, 1])
    assert isinstance(result, PairedResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.p_value = 0.0  # type: ignore[misc]


# --- Holm ----------------------------------------------------------------------------------------


def test_holm_by_hand() -> None:
    # sorted: 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 = 0.02, 0.03, 0.06, 0.04
    # made monotone (running max): 0.02, 0.03, 0.06, 0.06; returned in the input order
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_handles_ties() -> None:
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2*0.5 = 1, then max(1, 0.6)
    assert holm([0.02, 0.02]) == pytest.approx([0.04, 0.04])  # 2*0.02, then max(0.04, 1*0.02)
    assert holm([0.3]) == [0.3]
    assert holm([]) == []


def test_holm_rejects_values_that_are_not_probabilities() -> None:
    with pytest.raises(ValueError, match="p-values"):
        holm([0.1, 1.5])


def test_holm_agrees_with_statsmodels() -> None:
    from statsmodels.stats import multitest  # a dependency: this reference check always runs

    ps = np.random.default_rng(6).random(12) ** 3
    expected = multitest.multipletests(ps, method="holm")[1]
    assert holm(ps.tolist()) == pytest.approx(expected.tolist())


# --- percentile ----------------------------------------------------------------------------------


def test_percentile_uses_linear_interpolation() -> None:
    latencies = [4.0, 1.0, 3.0, 2.0]  # sorted 1, 2, 3, 4; position = q/100 * (4 - 1)
    assert percentile(latencies, 50) == pytest.approx(2 + 0.5 * (3 - 2))  # position 1.5: 5/2
    assert percentile(latencies, 95) == pytest.approx(3 + 0.85 * (4 - 3))  # position 2.85
    assert percentile(latencies, 0) == 1.0
    assert percentile(latencies, 100) == 4.0
    assert percentile([7.0], 95) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], -1), ([1.0], 101)])
def test_percentile_rejects_bad_input(values, q) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)
