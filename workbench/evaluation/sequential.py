"""Sequential statistics for racing configurations: anytime-valid confidence sequences, a test for
cost constraints, and the race itself as a pure function of per-question scores.

**Why confidence sequences.** A race looks at the data after every round and stops a configuration
as soon as it is clearly worse. A fixed-sample interval recomputed after each look does not hold its
error rate (every look is another chance to be fooled). A *confidence sequence* (CS) is a sequence
of intervals that contains the true mean at every sample size simultaneously with probability
``1 - alpha``, so looking after every round, and stopping whenever, is free.

**Which one.** Scores such as F1, exact match, hit@k and nDCG lie in [0, 1], so a paired difference
``score_i - score_j`` lies in [-1, 1]. For bounded observations the predictable plug-in
empirical-Bernstein CS of Waudby-Smith & Ramdas ("Estimating means of bounded random variables by
betting", JRSS-B 2024, Theorem 2, "PrPl-EB") is closed-form, adapts to the variance, and costs
O(n) numpy. We write it ourselves, checked against the paper's formulas and against ``confseq``'s
``predmix_empbern_twosided_cs`` (docs/metrics.md, "Racing"): ``confseq`` 0.0.11 (2023) ships only
as a source distribution that needs CMake, pybind11 2.6 and Boost to build, and pulls pytest and
matplotlib as run-time dependencies, for ~30 lines of numpy; ``expectation`` 0.6.1 needs
Python >= 3.12 (the workbench supports 3.11) and is GPL-3.0 with an added AI-training restriction.

**The guarantee** (:func:`run_race`). With K configurations there are m = K(K-1)/2 pairs; each
pair's difference gets a two-sided CS at level ``alpha_pair = alpha / m`` (a union bound), so with
probability at least ``1 - alpha`` every pair's CS holds at every round at once. A configuration i
is eliminated when the upper bound of ``mean_i - mean_leader`` is below ``-margin``. If i is within
``margin`` of the best configuration b, then ``mean_i - mean_j >= mean_i - mean_b >= -margin`` for
every j, so eliminating i needs a CS to fail: P(any configuration within margin of the best is
eliminated) <= alpha, over all rounds and all configurations. Constraints (latency, cost) get a
share of alpha of their own (see :func:`exceeds`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

TRUNCATION = 0.75  # the largest bet lambda_t (W-S & R suggest 1/2 or 3/4; 3/4 decides faster at low variance)


def eb_confidence_sequence(x: Sequence[float] | np.ndarray, alpha: float, *, lo: float = 0.0, hi: float = 1.0,
                           truncation: float = TRUNCATION) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided PrPl-EB confidence sequence for the mean of ``x`` (values in [lo, hi]).

    Returns ``(lower, upper)``: after each observation t = 1..n, an interval that holds for every t
    simultaneously with probability >= 1 - alpha. The running intersection is taken (the
    tightest bound seen so far), which keeps that guarantee.

    Formulas (Waudby-Smith & Ramdas 2024, eq. 13-15; y = (x - lo) / (hi - lo) in [0, 1]):
    mu_t = (1/2 + sum y) / (t + 1), s2_t = (1/4 + sum (y_i - mu_i)^2) / (t + 1),
    lambda_t = min(sqrt(2 log(2/alpha) / (s2_{t-1} t log(1 + t))), truncation),
    center_t = sum lambda_i y_i / sum lambda_i,
    width_t = (log(2/alpha) + sum 4 (y_i - mu_{i-1})^2 psi(lambda_i)) / sum lambda_i,
    psi(l) = (-log(1 - l) - l) / 4.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not hi > lo:
        raise ValueError(f"need hi > lo, got [{lo}, {hi}]")
    raw = np.asarray(x, dtype=float)
    if raw.size == 0:
        return np.empty(0), np.empty(0)
    if np.isnan(raw).any() or raw.min() < lo - 1e-12 or raw.max() > hi + 1e-12:
        raise ValueError(f"values must lie in [{lo}, {hi}] without NaN")
    y = np.clip((raw - lo) / (hi - lo), 0.0, 1.0)
    t = np.arange(1, y.size + 1, dtype=float)
    mu = (0.5 + np.cumsum(y)) / (t + 1)
    mu_prev = np.concatenate(([0.5], mu[:-1]))
    s2 = (0.25 + np.cumsum((y - mu) ** 2)) / (t + 1)
    s2_prev = np.concatenate(([0.25], s2[:-1]))
    log_term = math.log(2 / alpha)
    lam = np.minimum(np.sqrt(2 * log_term / (s2_prev * t * np.log1p(t))), truncation)
    psi = (-np.log1p(-lam) - lam) / 4
    lam_sum = np.cumsum(lam)
    center = np.cumsum(lam * y) / lam_sum
    width = (log_term + np.cumsum(4 * (y - mu_prev) ** 2 * psi)) / lam_sum
    lower = np.maximum.accumulate(np.clip(center - width, 0.0, 1.0))
    upper = np.minimum.accumulate(np.clip(center + width, 0.0, 1.0))
    return lo + (hi - lo) * lower, lo + (hi - lo) * upper


def paired_difference_cs(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Confidence sequence for mean(a - b), scores in [0, 1] paired by question (differences in [-1, 1])."""
    return eb_confidence_sequence(np.asarray(a, float) - np.asarray(b, float), alpha, lo=-1.0, hi=1.0)


def exceeds(x: Sequence[float] | np.ndarray, threshold: float, alpha: float, truncation: float = 0.5) -> np.ndarray:
    """E-process against "the mean of ``x`` is at most ``threshold``", for ``x >= 0`` (no upper bound).

    Returns the capital K_t after each observation; ``K_t >= 1/alpha`` at any t rejects with
    error at most alpha (Ville's inequality): the mean exceeds ``threshold`` with confidence.
    K_t = prod (1 + lambda_i (x_i - threshold)) with a predictable bet
    lambda_i in [0, truncation / threshold] is a nonnegative supermartingale under the null
    whenever x >= 0, whatever its tail: this is what makes unbounded costs (dollars, tokens) and,
    through indicators, latency percentiles testable (see :class:`Constraint`).
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    v = np.asarray(x, dtype=float)
    if v.size == 0:
        return np.empty(0)
    if np.isnan(v).any() or v.min() < 0:
        raise ValueError("values must be >= 0 without NaN")
    t = np.arange(1, v.size + 1, dtype=float)
    mean_prev = np.concatenate(([threshold], (threshold + np.cumsum(v)) / (t + 1)))[:-1]
    var_prev = np.concatenate(([threshold ** 2], (threshold ** 2 + np.cumsum((v - mean_prev) ** 2)) / (t + 1)))[:-1]
    # bet more when the running mean is above the threshold (aGRAPA-style: excess / variance), never < 0
    lam = np.clip((mean_prev - threshold) / (var_prev + (mean_prev - threshold) ** 2), 0.0, truncation / threshold)
    return np.exp(np.cumsum(np.log1p(lam * (v - threshold))))


@dataclass(frozen=True)
class Constraint:
    """A limit a configuration must respect, tested sequentially on per-question values.

    ``kind="mean"``: the mean of a nonnegative per-question value (cost, tokens, latency) must stay
    at or below ``limit``. ``kind="quantile"``: the ``q`` quantile of a per-question latency must
    stay at or below ``limit``; it is violated exactly when P(value > limit) > 1 - q, which is a
    mean of 0/1 indicators, so both are tested by :func:`exceeds` without assuming a bound.
    """

    name: str
    column: str
    kind: str  # "mean" | "quantile"
    limit: float
    q: float | None = None

    def transform(self, values: np.ndarray) -> tuple[np.ndarray, float]:
        """``(x >= 0, threshold)``: the values :func:`exceeds` tests, and its null's bound."""
        if self.kind == "quantile":
            return (values > self.limit).astype(float), 1.0 - self.q
        return values, self.limit


@dataclass(frozen=True)
class RaceSettings:
    """What the race needs to decide: the error rate, the margin and the round structure.

    ``n_configs`` fixes the union bound at the start (pairs among all K configurations), so it does
    not change as configurations leave. With constraints, alpha is split in two halves: one for
    the quality comparisons, one for the constraint tests (each configuration and constraint gets
    ``alpha / 2 / (K * C)``).
    """

    alpha: float
    margin: float
    round_size: int
    min_questions: int
    n_configs: int
    constraints: tuple[Constraint, ...] = ()

    @property
    def quality_alpha(self) -> float:
        return self.alpha / 2 if self.constraints else self.alpha

    @property
    def pair_alpha(self) -> float:
        pairs = max(1, self.n_configs * (self.n_configs - 1) // 2)
        return self.quality_alpha / pairs

    @property
    def constraint_alpha(self) -> float:
        return self.alpha / 2 / max(1, self.n_configs * len(self.constraints))


@dataclass(frozen=True)
class Bound:
    """One survivor against the leader after a round: the paired difference and its CS."""

    config: str
    n: int
    mean: float
    diff: float
    lower: float
    upper: float


@dataclass(frozen=True)
class Elimination:
    """Why a configuration left the race (stored as the run's evidence)."""

    config: str
    round: int
    n_questions: int
    reason: str  # "worse" | "constraint"
    leader: str | None = None
    diff: float | None = None
    upper: float | None = None
    constraint: str | None = None
    mean: float | None = None
    e_value: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Round:
    index: int
    n_questions: int
    leader: str
    bounds: list[Bound]
    eliminated: list[Elimination]
    equivalent: bool


def decide_round(index: int, scores: Mapping[str, np.ndarray], settings: RaceSettings,
                 extra: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> Round:
    """One round's decisions from the survivors' scores so far (pure; higher is better).

    ``scores[c]`` holds configuration c's score per question, in the race's order, NaN where the
    question failed; a pair is compared on the questions both scored. The leader is the survivor
    with the highest mean (ties: the first in ``scores``' order). ``extra[c][column]`` holds the
    per-question values the constraints read.
    """
    names = list(scores)
    means = {c: float(np.nanmean(v)) if np.isfinite(v).any() else -math.inf for c, v in scores.items()}
    leader = max(names, key=lambda c: (means[c], -names.index(c)))
    bounds, out = [], []
    for c in names:
        if c == leader:
            continue
        both = np.isfinite(scores[c]) & np.isfinite(scores[leader])
        a, b = scores[c][both], scores[leader][both]
        if a.size == 0:
            continue
        low, up = paired_difference_cs(a, b, settings.pair_alpha)
        bound = Bound(c, int(a.size), means[c], float(np.mean(a - b)), float(low[-1]), float(up[-1]))
        bounds.append(bound)
        if bound.upper < -settings.margin:
            out.append(Elimination(c, index, int(scores[c].size), "worse", leader, bound.diff, bound.upper))
    gone = {e.config for e in out}
    for c in names:
        if c in gone:
            continue
        hit = _constraint_violation(c, index, (extra or {}).get(c, {}), settings)
        if hit is not None:
            out.append(hit)
    equivalent = len(bounds) == len(names) - 1 and all(b.lower >= -settings.margin and b.upper <= settings.margin for b in bounds)
    return Round(index, max((v.size for v in scores.values()), default=0), leader, bounds, out, equivalent and not out)


def _constraint_violation(config: str, index: int, columns: Mapping[str, np.ndarray], settings: RaceSettings) -> Elimination | None:
    for con in settings.constraints:
        values = columns.get(con.column)
        if values is None:
            continue
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        x, threshold = con.transform(values)
        capital = exceeds(x, threshold, settings.constraint_alpha)
        if capital.max() >= 1 / settings.constraint_alpha:
            return Elimination(config, index, int(values.size), "constraint", constraint=con.name, mean=float(np.mean(x)),
                               e_value=float(capital.max()))
    return None


@dataclass
class RaceResult:
    """What a race did: its rounds, who left when and why, who survived, how it stopped."""

    configs: list[str]
    rounds: list[Round] = field(default_factory=list)
    eliminated: dict[str, Elimination] = field(default_factory=dict)
    survivors: list[str] = field(default_factory=list)
    evaluated: dict[str, int] = field(default_factory=dict)  # questions computed per configuration
    stop: str = ""  # "equivalence" | "questions exhausted" | "stopped"

    @property
    def calls(self) -> int:
        return sum(self.evaluated.values())

    @property
    def winner(self) -> str | None:
        return self.rounds[-1].leader if self.rounds else (self.survivors[0] if self.survivors else None)


Fetch = Callable[[list[str], int, int], tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]] | None]


def run_race(configs: Sequence[str], n_questions: int, settings: RaceSettings, fetch: Fetch) -> RaceResult:
    """Race ``configs`` over ``n_questions`` questions taken in a fixed order.

    Each round asks ``fetch(survivors, start, end)`` to evaluate questions ``start:end`` on every
    survivor and return, per survivor, its oriented scores (higher is better) on questions
    ``0:end`` and the constraint columns; ``None`` means evaluation stopped (a budget) and the race
    stops where it is, resumable. Decisions are taken once ``min_questions`` questions are in, and
    are a function of the returned values only, so a replay over the same values decides the same.
    """
    result = RaceResult(list(configs), survivors=list(configs), evaluated={c: 0 for c in configs})
    start, index = 0, 0
    while start < n_questions:
        end = min(n_questions, start + settings.round_size)
        got = fetch(list(result.survivors), start, end)
        if got is None:
            result.stop = "stopped"
            return result
        scores, extra = got
        for c in result.survivors:
            result.evaluated[c] = end
        index += 1
        start = end
        if end < settings.min_questions and end < n_questions or len(result.survivors) < 2:
            continue
        decided = decide_round(index, {c: scores[c] for c in result.survivors}, settings, extra)
        result.rounds.append(decided)
        for e in decided.eliminated:
            result.eliminated[e.config] = e
        result.survivors = [c for c in result.survivors if c not in result.eliminated]
        if decided.equivalent and len(result.survivors) > 1:
            result.stop = "equivalence"
            return result
    result.stop = "questions exhausted"
    return result


def replay_race(matrix: np.ndarray, configs: Sequence[str], settings: RaceSettings) -> RaceResult:
    """The race over a complete score matrix (configs x questions, in the race's order, higher is
    better, NaN for failed questions): what it would have decided and computed. No model is called."""
    matrix = np.asarray(matrix, dtype=float)
    index = {c: i for i, c in enumerate(configs)}

    def fetch(survivors: list[str], start: int, end: int):
        return {c: matrix[index[c], :end] for c in survivors}, {}

    return run_race(configs, matrix.shape[1], settings, fetch)


def min_questions_to_eliminate(settings: RaceSettings, limit: int = 100_000) -> int | None:
    """The fewest questions after which the race could eliminate anything at all: a configuration
    that loses every question by the full score range (differences of -1). Fewer questions than
    this and the race can only run everything to the end."""
    n = 16
    while n <= limit:
        _, upper = eb_confidence_sequence(np.full(n, -1.0), settings.pair_alpha, lo=-1.0, hi=1.0)
        hit = np.nonzero(upper < -settings.margin)[0]
        if hit.size:
            return int(hit[0]) + 1
        n *= 2
    return None
