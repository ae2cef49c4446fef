"""Sequential statistics for racing configurations: anytime-valid confidence sequences, a test for
cost constraints, and the race itself as a pure function of per-question scores.

**Why confidence sequences.** A race looks at the data after every round and stops a configuration
as soon as it is clearly worse. A fixed-sample interval recomputed after each look does not hold its
error rate (every look is another chance to be fooled). A *confidence sequence* (CS) is a sequence
of intervals that contains the true mean at every sample size simultaneously with probability
``1 - alpha``, so looking after every round, and stopping whenever, is free.

**Which one.** Scores such as F1, exact match, hit@k and nDCG lie in [0, 1], so a paired difference
``score_i - score_j`` lies in [-1, 1]. For bounded observations the betting confidence sequences of
Waudby-Smith & Ramdas ("Estimating means of bounded random variables by betting", JRSS-B 2024,
section 4: hedged capital with predictable aGRAPA bets) are the tightest known, adapt to the
variance and cost O(n) numpy per candidate mean. We first wrote their closed-form predictable
plug-in empirical-Bernstein CS (PrPl-EB, Theorem 2; it matched ``confseq``'s
``predmix_empbern_twosided_cs`` to 0.005) and replaced it: betting decides with fewer questions
(docs/metrics.md, "Racing", has the figures). Neither package is used, and this is written here:
``confseq`` 0.0.11 (2023) ships only as a source distribution needing CMake, pybind11 2.6 and Boost,
pulls pytest and matplotlib at run time and fails to import under NumPy 2; ``expectation`` 0.6.1
needs Python >= 3.12 (the workbench supports 3.11) and is GPL-3.0 with an AI-training restriction.

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
import pandas as pd

from .registry import COST_KINDS, metric_info

TRUNCATION = 0.75  # the largest bet, as a share of what keeps the capital positive (W-S & R use 1/2 to 3/4)
GRID = np.linspace(-1.0, 1.0, 161)[1:-1]  # candidate mean differences the bounds are read from (steps of 0.0125)


def capital(y: np.ndarray, m: np.ndarray, truncation: float = TRUNCATION) -> tuple[np.ndarray, np.ndarray]:
    """Running maxima of the two betting capitals against "mean <= m" and "mean >= m", for
    observations ``y`` in [0, 1] and candidate means ``m`` in (0, 1) (one row per m).

    K+_t(m) = prod (1 + l_i (y_i - m)) and K-_t(m) = prod (1 - l_i (y_i - m)) with predictable bets
    l_i >= 0 (aGRAPA: the regularised running mean's distance to m over the running second moment,
    truncated so every factor stays >= 1 - truncation > 0). Each is a nonnegative supermartingale
    under its null, so by Ville's inequality it ever reaches 1/a with probability at most a.
    """
    t = np.arange(1, y.size + 1, dtype=float)
    mu = (0.5 + np.cumsum(y)) / (t + 1)
    mu_prev = np.concatenate(([0.5], mu[:-1]))
    s2 = (0.25 + np.cumsum((y - mu) ** 2)) / (t + 1)
    s2_prev = np.concatenate(([0.25], s2[:-1]))
    gap = mu_prev[None, :] - m[:, None]
    lam = gap / (s2_prev[None, :] + gap ** 2)
    dev = y[None, :] - m[:, None]
    up = np.clip(lam, 0.0, (truncation / m)[:, None])
    down = np.clip(-lam, 0.0, (truncation / (1 - m))[:, None])
    log_up = np.maximum.accumulate(np.cumsum(np.log1p(up * dev), axis=1), axis=1)
    log_down = np.maximum.accumulate(np.cumsum(np.log1p(-down * dev), axis=1), axis=1)
    return log_up[:, -1], log_down[:, -1]


def paired_difference_cs(a: np.ndarray, b: np.ndarray, alpha: float, margin: float | None = None) -> tuple[float, float]:
    """``(lower, upper)``: a two-sided betting confidence sequence (Waudby-Smith & Ramdas 2024,
    section 4, hedged capital with aGRAPA bets) for mean(a - b) after the last question, scores in
    [0, 1] paired by question, so differences lie in [-1, 1]. It holds at every question count at
    once with probability >= 1 - alpha (alpha/2 per side), so it can be looked at after every round.

    The interval is the set of candidate differences (a grid of step 0.0125, plus -margin and
    +margin exactly, so decisions at the margin are exact) that neither capital has rejected at any
    time so far; its bounds are the smallest and largest of them (conservative where the set has
    holes). No candidate left (possible only on a 1 - alpha miss) gives the mean, twice.
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size == 0:
        return -1.0, 1.0
    if np.isnan(d).any() or np.abs(d).max() > 1 + 1e-12:
        raise ValueError("paired scores must lie in [0, 1] without NaN")
    points = GRID if margin is None else np.union1d(GRID, [-margin, margin])
    points = points[(points > -1) & (points < 1)]
    y = np.clip((d + 1) / 2, 0.0, 1.0)
    log_up, log_down = capital(y, (points + 1) / 2)
    inside = (log_up < math.log(2 / alpha)) & (log_down < math.log(2 / alpha))
    if not inside.any():
        return float(d.mean()), float(d.mean())
    return float(points[inside].min()), float(points[inside].max())


def margin_tests(a: np.ndarray, b: np.ndarray, alpha: float, margin: float) -> tuple[bool, bool]:
    """The two decisions a race takes on mean(a - b), from the same capitals as
    :func:`paired_difference_cs` (alpha/2 per side) evaluated at the margin only (fast):
    ``(worse, equivalent)`` -- "mean < -margin" (the upper side rejected -margin) and
    "-margin < mean < margin" (-margin rejected from below and +margin from above)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size == 0:
        return False, False
    y = np.clip((d + 1) / 2, 0.0, 1.0)
    m = np.array([(1 - margin) / 2, (1 + margin) / 2])
    m = np.clip(m, 1e-9, 1 - 1e-9)
    log_up, log_down = capital(y, m)
    threshold = math.log(2 / alpha)
    return bool(log_down[0] >= threshold), bool(log_up[0] >= threshold and log_down[1] >= threshold)


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
                 extra: Mapping[str, Mapping[str, np.ndarray]] | None = None, bounds: bool = True) -> Round:
    """One round's decisions from the survivors' scores so far (pure; higher is better).

    ``scores[c]`` holds configuration c's score per question, in the race's order, NaN where the
    question failed; a pair is compared on the questions both scored. The leader is the survivor
    with the highest mean (ties: the smallest name, so the order runs are visited in never matters). ``extra[c][column]`` holds the
    per-question values the constraints read. ``bounds=False`` skips the confidence bounds shown
    in reports (NaN) and takes the same decisions faster (replays, simulations).
    """
    names = list(scores)
    means = {c: float(np.nanmean(v)) if np.isfinite(v).any() else -math.inf for c, v in scores.items()}
    leader = max(sorted(names), key=lambda c: means[c])  # ties: the smallest name, whatever the order given
    shown, out, tied = [], [], []
    for c in names:
        if c == leader:
            continue
        both = np.isfinite(scores[c]) & np.isfinite(scores[leader])
        a, b = scores[c][both], scores[leader][both]
        if a.size == 0:
            continue
        worse, equivalent = margin_tests(a, b, settings.pair_alpha, settings.margin)
        low, up = paired_difference_cs(a, b, settings.pair_alpha, settings.margin) if bounds else (math.nan, math.nan)
        bound = Bound(c, int(a.size), means[c], float(np.mean(a - b)), low, up)
        shown.append(bound)
        tied.append(equivalent)
        if worse:
            out.append(Elimination(c, index, int(scores[c].size), "worse", leader, bound.diff, None if math.isnan(up) else up))
    gone = {e.config for e in out}
    for c in names:
        if c in gone:
            continue
        hit = _constraint_violation(c, index, (extra or {}).get(c, {}), settings)
        if hit is not None:
            out.append(hit)
    equivalent = len(shown) == len(names) - 1 and all(tied)
    return Round(index, max((v.size for v in scores.values()), default=0), leader, shown, out, equivalent and not out)


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
    stop: str = ""  # "equivalence" | "questions exhausted" | "stopped" | "all eliminated"

    @property
    def calls(self) -> int:
        return sum(self.evaluated.values())

    @property
    def winner(self) -> str | None:
        return self.rounds[-1].leader if self.rounds else (self.survivors[0] if self.survivors else None)


Fetch = Callable[[list[str], int, int], tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]] | None]


def run_race(configs: Sequence[str], n_questions: int, settings: RaceSettings, fetch: Fetch, bounds: bool = True) -> RaceResult:
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
        decided = decide_round(index, {c: scores[c] for c in result.survivors}, settings, extra, bounds)
        result.rounds.append(decided)
        for e in decided.eliminated:
            result.eliminated[e.config] = e
        result.survivors = [c for c in result.survivors if c not in result.eliminated]
        if not result.survivors:  # every configuration broke a constraint
            result.stop = "all eliminated"
            return result
        if decided.equivalent and len(result.survivors) > 1:
            result.stop = "equivalence"
            return result
    result.stop = "questions exhausted"
    return result


def replay_race(matrix: np.ndarray, configs: Sequence[str], settings: RaceSettings, bounds: bool = False) -> RaceResult:
    """The race over a complete score matrix (configs x questions, in the race's order, higher is
    better, NaN for failed questions): what it would have decided and computed. No model is called."""
    matrix = np.asarray(matrix, dtype=float)
    index = {c: i for i, c in enumerate(configs)}

    def fetch(survivors: list[str], start: int, end: int):
        return {c: matrix[index[c], :end] for c in survivors}, {}

    return run_race(configs, matrix.shape[1], settings, fetch, bounds)


# Per-question columns computed from stored ones (constraints on end-to-end latency or tokens).
DERIVED_COLUMNS = {"latency_s": ("retrieval_latency_s", "generation_latency_s"), "tokens_per_question": ("prompt_tokens", "completion_tokens")}


def column_values(values: pd.DataFrame, column: str) -> pd.Series:
    """A per-question column of stored rows; derived ones (end-to-end latency, tokens) summed."""
    if column in DERIVED_COLUMNS:
        parts = [pd.to_numeric(values[c], errors="coerce") for c in DERIVED_COLUMNS[column] if c in values]
        if not parts:
            return pd.Series(np.nan, index=values.index)
        total = sum(p.fillna(0.0) for p in parts)
        return total.where(pd.concat(parts, axis=1).notna().any(axis=1))
    return pd.to_numeric(values[column], errors="coerce") if column in values else pd.Series(np.nan, index=values.index)


def race_arrays(values: pd.DataFrame, order: Sequence[int], metric: str, lower_is_better: bool,
                columns: Sequence[str] = ()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A run's stored rows as the race reads them: its scores on ``metric`` in the race's question
    ``order`` (positions), oriented so that higher is better (a lower-is-better score in [0, 1]
    becomes 1 - score), NaN where the question is not stored, failed or not applicable; and the
    constraint ``columns`` in the same order. The one reading used by the live race, the report
    and replays, so they decide alike."""
    pos = list(order)
    if values.empty or "position" not in values:
        return np.full(len(pos), np.nan), {c: np.full(len(pos), np.nan) for c in columns}
    ok = values[values["error"].isna()] if "error" in values else values
    by_pos = ok.set_index("position")
    score = column_values(by_pos, metric).reindex(pos).to_numpy(dtype=float)
    extra = {c: column_values(by_pos, c).reindex(pos).to_numpy(dtype=float) for c in columns}
    return (1.0 - score if lower_is_better else score), extra


def question_order(n: int, seed: int) -> list[int]:
    """The race's question order: positions 0..n-1 in a seeded random order (the same on every
    machine, every resume and every replay)."""
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


MEAN_CONSTRAINTS = {"cost_per_question_usd": "cost_usd"}  # aggregate name -> the per-question column it averages


def make_constraint(name: str, limit: float) -> Constraint:
    """A ``constraints:`` entry as a sequential test: ``<x>_p50_s``/``<x>_p95_s`` bound a latency
    percentile, any other latency/token/cost metric a mean per question.

    Raises:
        MetricError: unknown metric (with a suggestion).
        ValueError: a metric that is not a latency, token or cost one.
    """
    info = metric_info(name)
    if info.kind not in COST_KINDS or not info.lower_is_better:
        raise ValueError(f"{name!r} is not a latency, token or cost metric; constraints bound what a question costs")
    for q in ("50", "95"):
        if name.endswith(f"_p{q}_s"):
            return Constraint(name, name.removesuffix(f"_p{q}_s") + "_s", "quantile", limit, int(q) / 100)
    return Constraint(name, MEAN_CONSTRAINTS.get(name, name), "mean", limit)


def default_metric(search: Mapping, has_generation: bool) -> str:
    return search.get("metric") or ("f1" if has_generation else "ndcg_at_10")


def search_settings(search: Mapping, n_configs: int, n_retrieval: int, n_questions: int) -> tuple[RaceSettings, RaceSettings | None]:
    """The race's settings from an experiment's ``search:`` block (as data): the main race and,
    with ``prune_retrieval``, the retrieval stage. With both, each gets half of alpha (union bound)."""
    constraints = tuple(make_constraint(k, v["max"]) for k, v in (search.get("constraints") or {}).items())
    prune = search.get("prune_retrieval")
    alpha = search["alpha"] / 2 if prune else search["alpha"]
    main = RaceSettings(alpha, search["margin"], search["round"], search["min_questions"], n_configs, constraints)
    return main, (RaceSettings(alpha, prune["margin"], n_questions, n_questions, n_retrieval) if prune else None)


def min_questions_to_eliminate(settings: RaceSettings, limit: int = 2_000) -> int | None:
    """The fewest questions after which the race could eliminate anything at all: a configuration
    that loses every question by the full score range (differences of -1). Fewer questions than
    this and the race can only run everything to the end."""
    for n in range(1, limit + 1):
        if margin_tests(np.zeros(n), np.ones(n), settings.pair_alpha, settings.margin)[0]:
            return n
    return None
