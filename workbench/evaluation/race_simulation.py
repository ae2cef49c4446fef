"""Simulated races with known truth: does the race keep its promise?

Each scenario draws per-question scores in [0, 1] for K configurations whose *population* means
are known exactly, paired by question (a shared question effect, as real questions are easy or
hard for every configuration). The race (:func:`workbench.evaluation.sequential.replay_race`)
runs on them, and we count the races that eliminated a configuration within ``margin`` of the
best: that rate must stay at or below ``alpha``.

How exact means are obtained: a question's base score ``u`` has a distribution with a known mean
``E[u]``; configuration c keeps it with probability ``1 - eps_c`` and scores 0 otherwise, so its
mean is exactly ``(1 - eps_c) E[u]``. Choosing ``eps_c`` places a configuration *exactly* at the
margin below the best (the hardest case for the guarantee), or far below it (a clear loser).
Base-score distributions: ``uniform`` (Beta(1, 1)), ``bernoulli`` (0/1, like exact match) and
``heavy`` (mostly 0, a few 1s, a long Beta(0.3, 3) tail: paired differences are 0 for most
questions and large for a few, the shape that breaks normal approximations).

numpy only; seeded, so a simulation is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from . import sequential
from .sequential import RaceResult, RaceSettings, replay_race

BASES = ("uniform", "bernoulli", "heavy")


def base_mean(base: str) -> float:
    """E[u] of a base-score distribution."""
    return {"uniform": 0.5, "bernoulli": 0.5, "heavy": 0.1 * 1.0 + 0.3 * (0.3 / 3.3)}[base]


def draw_base(base: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if base == "uniform":
        return rng.uniform(0.0, 1.0, n)
    if base == "bernoulli":
        return rng.binomial(1, 0.5, n).astype(float)
    if base == "heavy":  # 0 w.p. 0.6, 1 w.p. 0.1, Beta(0.3, 3) w.p. 0.3
        kind = rng.choice(3, size=n, p=[0.6, 0.1, 0.3])
        return np.where(kind == 1, 1.0, np.where(kind == 2, rng.beta(0.3, 3.0, n), 0.0))
    raise ValueError(f"unknown base {base!r}; known: {', '.join(BASES)}")


@dataclass(frozen=True)
class Scenario:
    """K configurations as gaps below the best mean (0 = as good as the best)."""

    name: str
    base: str
    gaps: tuple[float, ...]

    def means(self) -> np.ndarray:
        return base_mean(self.base) - np.asarray(self.gaps, float)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """A K x n score matrix with the scenario's exact means, paired by question."""
        u = draw_base(self.base, n, rng)
        keep = 1.0 - np.asarray(self.gaps, float) / base_mean(self.base)
        if (keep < 0).any() or (keep > 1).any():
            raise ValueError(f"scenario {self.name}: a gap is larger than the base mean {base_mean(self.base):.3f}")
        return u[None, :] * (rng.uniform(size=(len(self.gaps), n)) < keep[:, None])


def scenarios(margin: float) -> list[Scenario]:
    """The scenarios the benchmark and the tests run: near-ties exactly at ``margin`` below the
    best, identical configurations, and clear losers mixed with near-ties, on each base."""
    out = []
    for base in BASES:
        m = base_mean(base)
        out.append(Scenario(f"{base}: near ties at -margin", base, (0.0, 0.0, margin, margin, margin)))
        out.append(Scenario(f"{base}: mixed", base, (0.0, margin, margin / 2, round(0.6 * m, 6), round(0.8 * m, 6))))
    return out


def within_margin_eliminated(result: RaceResult, scenario: Scenario, margin: float, names: Sequence[str]) -> bool:
    """Whether the race eliminated a configuration whose true mean is within ``margin`` of the best."""
    means = scenario.means()
    best = means.max()
    return any(means[names.index(c)] >= best - margin - 1e-12 for c in result.eliminated)


def simulate(scenario: Scenario, settings: RaceSettings, n_questions: int, n_races: int, seed: int = 0,
             race: Callable[[np.ndarray, Sequence[str], RaceSettings], RaceResult] = replay_race) -> dict:
    """Run ``n_races`` races on fresh draws of ``scenario``; the error rate and the calls used."""
    rng = np.random.default_rng(seed)
    names = [f"c{i}" for i in range(len(scenario.gaps))]
    errors, calls, losers_out = 0, 0.0, 0.0
    losers = [c for c, g in zip(names, scenario.gaps) if g > settings.margin + 1e-12]
    for _ in range(n_races):
        result = race(scenario.draw(n_questions, rng), names, settings)
        errors += within_margin_eliminated(result, scenario, settings.margin, names)
        calls += result.calls / (len(names) * n_questions)
        losers_out += sum(c in result.eliminated for c in losers) / len(losers) if losers else 0.0
    return {"scenario": scenario.name, "races": n_races, "n_questions": n_questions, "k": len(names),
            "error_rate": errors / n_races, "errors": errors, "mean_share_of_calls": calls / n_races,
            "losers_eliminated": losers_out / n_races if losers else None}


def fixed_sample_race(matrix: np.ndarray, configs: Sequence[str], settings: RaceSettings) -> RaceResult:
    """The control: the same race deciding with a fixed-sample 95% normal interval recomputed after
    every round, without a confidence sequence or a union bound -- the procedure the race must not
    be. Simulations show its error rate above alpha, which shows they can detect a broken race."""
    def fixed(a, b, alpha, margin):
        d = np.asarray(a, float) - np.asarray(b, float)
        half = 1.96 * max(float(d.std()), 1e-6) / math.sqrt(d.size)
        return float(d.mean()) + half < -margin, abs(float(d.mean())) + half < margin

    original = sequential.margin_tests
    sequential.margin_tests = fixed
    try:
        return replay_race(matrix, configs, settings)
    finally:
        sequential.margin_tests = original
