"""The race's statistics: the confidence sequence, the constraint test, and the race's decisions,
on data with known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.evaluation.race_simulation import Scenario, fixed_sample_race, scenarios, simulate
from workbench.evaluation.sequential import (
    Constraint,
    RaceSettings,
    capital,
    decide_round,
    exceeds,
    min_questions_to_eliminate,
    paired_difference_cs,
    replay_race,
    run_race,
)


def test_the_betting_capital_by_hand():
    """y = (1, 0) against m = 0.5: aGRAPA bets from the regularised mean and variance, by hand."""
    y, m = np.array([1.0, 0.0]), 0.5
    lam1 = 0.0  # mu_0 = 1/2 = m: no bet
    mu1, s2_1 = (0.5 + 1) / 2, (0.25 + (1 - 0.75) ** 2) / 2
    lam2 = (mu1 - m) / (s2_1 + (mu1 - m) ** 2)  # bet up (against mean <= m), truncated at 0.75 / m
    lam2 = min(lam2, 0.75 / m)
    k_up = max(0.0, math.log1p(lam1 * (1 - m)), math.log1p(lam1 * (1 - m)) + math.log1p(lam2 * (0 - m)))
    log_up, log_down = capital(y, np.array([m]))
    assert log_up[0] == pytest.approx(k_up) and log_down[0] == pytest.approx(0.0)


def test_the_confidence_sequence_covers_the_mean_at_every_time():
    """Over 300 sequences of 300 paired questions (mean difference known), the bounds after the last
    question -- which remember every rejection on the way -- miss the truth in at most alpha of
    them; and they narrow as questions come in."""
    rng = np.random.default_rng(0)
    alpha, misses = 0.1, 0
    for _ in range(300):
        a, b = rng.beta(0.5, 0.5, 300), rng.beta(0.5, 0.5, 300)  # both mean 1/2, U-shaped
        low, up = paired_difference_cs(a, b, alpha)
        misses += not low <= 0.0 <= up
    assert misses / 300 <= alpha
    a, b = rng.uniform(size=2000), rng.uniform(size=2000)
    wide, narrow = paired_difference_cs(a[:50], b[:50], 0.05), paired_difference_cs(a, b, 0.05)
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0]) and narrow[1] - narrow[0] < 0.15


def test_the_confidence_sequence_rejects_values_outside_its_range():
    with pytest.raises(ValueError, match="lie in"):
        paired_difference_cs([0.5, 1.2], [0.0, -1.0], 0.05)


def test_the_exceedance_test_holds_its_level_on_heavy_tails_and_detects_a_violation():
    rng = np.random.default_rng(1)
    alpha = 0.05
    # Lognormal costs (heavy right tail) with mean exactly at the limit: rejection is an error.
    sigma = 1.5
    limit = math.exp(sigma ** 2 / 2)  # mean of lognormal(0, sigma)
    false = sum(exceeds(rng.lognormal(0, sigma, 400), limit, alpha).max() >= 1 / alpha for _ in range(400))
    assert false / 400 <= alpha
    # Mean twice the limit: detected.
    assert exceeds(rng.lognormal(0, sigma, 400) * 2, limit, alpha).max() >= 1 / alpha


def test_a_p95_latency_constraint_is_an_exceedance_of_indicators():
    con = Constraint("generation_latency_p95_s", "generation_latency_s", "quantile", 5.0, 0.95)
    x, threshold = con.transform(np.array([1.0, 6.0, 4.0, 5.5]))
    assert list(x) == [0.0, 1.0, 0.0, 1.0] and threshold == pytest.approx(0.05)


def _settings(k: int, **kw) -> RaceSettings:
    return RaceSettings(**{"alpha": 0.05, "margin": 0.02, "round_size": 10, "min_questions": 20, "n_configs": k, **kw})


def test_a_clear_loser_is_eliminated_early_with_its_evidence():
    rng = np.random.default_rng(2)
    n = 200
    good = rng.uniform(0.4, 1.0, n)
    bad = np.where(rng.uniform(size=n) < 0.2, good, 0.0)  # keeps 20% of the good scores
    result = replay_race(np.vstack([good, good * 0.99, bad]), ["a", "b", "loser"], _settings(3))
    assert set(result.eliminated) == {"loser"}
    e = result.eliminated["loser"]
    assert e.reason == "worse" and e.diff < -0.3 and e.n_questions < 60
    assert result.evaluated["loser"] == e.n_questions and result.evaluated["a"] == n
    assert result.calls < 3 * n


def test_identical_configurations_are_never_eliminated_and_can_stop_as_a_tie():
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=600)
    result = replay_race(np.vstack([scores, scores, scores]), ["a", "b", "c"], _settings(3, margin=0.1))
    assert not result.eliminated
    assert result.stop == "equivalence" and result.calls < 3 * 600  # every bound inside [-0.1, 0.1]: stop early
    last = replay_race(np.vstack([scores, scores, scores]), ["a", "b", "c"], _settings(3, margin=0.1), bounds=True).rounds[-1]
    assert all(-0.1 <= b.lower and b.upper <= 0.1 for b in last.bounds)


def test_a_race_with_too_few_questions_cannot_eliminate_anything():
    settings = _settings(12)
    need = min_questions_to_eliminate(settings)
    assert need is not None and 10 < need < 40
    perfect = np.vstack([np.ones(need - 1)] + [np.zeros(need - 1)] * 11)
    assert not replay_race(perfect, [f"c{i}" for i in range(12)], settings).eliminated
    perfect = np.vstack([np.ones(need + 10)] + [np.zeros(need + 10)] * 11)
    assert len(replay_race(perfect, [f"c{i}" for i in range(12)], settings).eliminated) == 11


def test_type_one_error_on_simulated_near_ties_and_heavy_tails_stays_below_alpha():
    """Configurations exactly `margin` below the best (and identical ones), on uniform, 0/1 and
    heavy-tailed scores: eliminating any of them is an error; its rate stays <= alpha. The same
    simulation catches a broken procedure: fixed-sample intervals recomputed after every round
    (no confidence sequence, no union bound) exceed alpha."""
    settings = _settings(5, margin=0.05)
    near = [s for s in scenarios(0.05) if "near ties" in s.name]
    for scenario in near:
        assert simulate(scenario, settings, 200, 100, seed=4)["error_rate"] <= settings.alpha
    naive = simulate(near[0], settings, 200, 100, seed=4, race=fixed_sample_race)
    assert naive["error_rate"] > settings.alpha


def test_the_mixed_scenario_eliminates_the_losers_and_only_them():
    settings = _settings(5, margin=0.05)
    mixed = Scenario("uniform mixed", "uniform", (0.0, 0.05, 0.025, 0.3, 0.4))
    out = simulate(mixed, settings, 300, 40, seed=5)
    assert out["error_rate"] == 0.0 and out["losers_eliminated"] == 1.0 and out["mean_share_of_calls"] < 0.8


def test_decisions_depend_only_on_the_values_so_a_replay_decides_the_same():
    rng = np.random.default_rng(6)
    m = rng.uniform(size=(4, 120)) * np.array([[1.0], [0.95], [0.3], [0.2]])
    names = ["a", "b", "c", "d"]
    first, second = replay_race(m, names, _settings(4)), replay_race(m.copy(), names, _settings(4))
    assert first.eliminated == second.eliminated and first.evaluated == second.evaluated
    assert [r.leader for r in first.rounds] == [r.leader for r in second.rounds]


def test_a_race_stops_where_its_evaluation_stops():
    calls = []

    def fetch(survivors, start, end):
        calls.append((tuple(survivors), start, end))
        return None if start >= 20 else ({c: np.ones(end) for c in survivors}, {})

    result = run_race(["a", "b"], 100, _settings(2), fetch)
    assert result.stop == "stopped" and calls[-1][1:] == (20, 30) and result.evaluated == {"a": 20, "b": 20}


def test_a_constraint_violation_eliminates_with_its_e_value():
    con = Constraint("cost_per_question_usd", "cost_usd", "mean", 0.001)
    settings = _settings(2, constraints=(con,))
    scores = {"a": np.full(60, 0.5), "b": np.full(60, 0.5)}
    extra = {"a": {"cost_usd": np.full(60, 0.0005)}, "b": {"cost_usd": np.full(60, 0.003)}}
    decided = decide_round(1, scores, settings, extra)
    assert [(e.config, e.reason, e.constraint) for e in decided.eliminated] == [("b", "constraint", "cost_per_question_usd")]
    assert decided.eliminated[0].e_value >= 1 / settings.constraint_alpha
