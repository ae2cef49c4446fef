"""Regression gates, and the one rule for which run is a run's baseline.

A gate bounds a run's aggregate metric (``min``/``max``) or its change from a baseline run
(``max_drop``/``max_increase``). With ``significant: false`` the point value is compared with the
bound (pass or fail). With ``significant: true`` a confidence interval is: **pass** when it lies
entirely within the bound (for a change: non-inferiority), **fail** when it lies entirely beyond it,
**inconclusive** when it crosses it, with an estimate of the questions that would likely settle it
(docs/metrics.md, "Gates").
:func:`resolve_baseline` is also what the report uses to pick the run it compares with, so a gate
and the report never disagree on the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .compare import board_value, metric_values, paired_values, same_configuration
from .config.experiment import ExperimentSpec, GateSpec
from .errors import StoreError, WorkbenchError
from .evaluation.intervals import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    POWER,
    Interval,
    Outcome,
    decide,
    mean_interval,
    paired_interval,
    questions_to_settle,
    worsening,
)
from .evaluation.registry import best_first, is_binary, primary_metric
from .store import Store


@dataclass(frozen=True)
class GateResult:
    """One check of one gate on one run.

    ``outcome`` is ``pass``, ``fail`` or ``inconclusive`` (only with ``significant: true``: the
    interval straddles the bound). With ``significant: true``, ``interval`` is the confidence interval
    the verdict was read from (of the paired change B - baseline for ``max_drop``/``max_increase``,
    of the run's mean for ``min``/``max``) and ``questions_needed`` estimates how many questions
    would likely settle an inconclusive verdict (None when settled, or when no number would).
    """

    run_id: str
    metric: str
    value: float | None
    baseline: float | None
    rule: str
    outcome: Outcome
    message: str
    interval: Interval | None = None
    questions_needed: int | None = None
    baseline_run_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == PASS


@dataclass(frozen=True)
class Baseline:
    """The run a run is compared with, why, and the experiment it was picked from (if any)."""

    run_id: str
    reason: str
    experiment: str | None = None


def resolve_baseline(store: Store, run_id: str | None, *, baseline_run: str | None = None,
                     baseline_experiment: str | None = None) -> Baseline | None:
    """The baseline of ``run_id``: the named run (a unique prefix is enough), else the run of
    ``baseline_experiment`` with the same configuration (equal stored config on every axis, see
    :func:`~workbench.compare.same_configuration`), else that experiment's best run by its primary
    metric. None when neither is given. ``run_id`` None matches no configuration (best run).

    Raises:
        StoreError: the named run or experiment is not stored, or the experiment has no runs.
    """
    if baseline_run:
        return Baseline(store.run(baseline_run)["run_id"], "the named baseline run")
    if not baseline_experiment:
        return None
    store.experiment(baseline_experiment)  # an unknown name fails here, with a suggestion
    runs = store.runs(baseline_experiment)
    if runs.empty:
        raise StoreError(f"baseline experiment {baseline_experiment!r} has no runs")
    if run_id is not None:
        mine = store.run(run_id)["config"]
        same = runs[runs["config"].map(lambda c: same_configuration(c, mine))]
        if not same.empty:
            return Baseline(same.iloc[0]["run_id"], f"the run with the same configuration in experiment {baseline_experiment!r}",
                            baseline_experiment)
    board = store.leaderboard(baseline_experiment)
    best = best_first(board, primary_metric(board)).iloc[0]["run_id"]
    return Baseline(best, f"its best run in experiment {baseline_experiment!r}", baseline_experiment)


def baseline_run_for(store: Store, spec: ExperimentSpec, run_id: str) -> str | None:
    """The id of the run ``run_id`` is gated against (None when the experiment names no baseline)."""
    if spec.baseline is None:
        return None
    found = resolve_baseline(store, run_id, baseline_run=spec.baseline.run_id, baseline_experiment=spec.baseline.experiment)
    return found.run_id if found else None


def _single_board(store: Store, run_id: str) -> pd.DataFrame:
    agg = store.aggregates([run_id])
    return agg.pivot(index="run_id", columns="metric", values="value").reset_index()


@dataclass
class _Check:
    """One bound of one gate on one run, before it is judged. ``worse_sign`` * value is the
    worsening (positive = worse) compared with ``bound``; ``base`` is None for min/max bounds."""

    run_id: str
    metric: str
    value: float
    rule: str
    worse_sign: float
    bound: float
    gate: GateSpec
    base: float | None = None
    base_id: str | None = None
    a: list[float] | None = None  # per-question values of the baseline (change bounds, significant)
    b: list[float] | None = None  # per-question values of the run (significant)

    @property
    def is_change(self) -> bool:
        return self.base_id is not None


def _bounds(run_id: str, metric: str, value: float, gate: GateSpec) -> list[_Check]:
    out = []
    if gate.min is not None:  # worsening = min - value <= 0
        out.append(_Check(run_id, metric, value, f">= {gate.min}", -1.0, -gate.min, gate))
    if gate.max is not None:
        out.append(_Check(run_id, metric, value, f"<= {gate.max}", 1.0, gate.max, gate))
    return out


def _changes(run_id: str, metric: str, value: float, gate: GateSpec, base_id: str | None, base: float | None) -> list[_Check]:
    return [_Check(run_id, metric, value, f"{word} <= {bound}", sign, bound, gate, base, base_id)
            for bound, sign, word in ((gate.max_drop, -1.0, "drop"), (gate.max_increase, 1.0, "increase")) if bound is not None]


def _attach_values(store: Store, check: _Check) -> None:
    """The per-question values a significance-aware check is judged on (paired over common questions)."""
    rows = store.questions(check.run_id)
    if check.is_change:
        check.a, check.b, _ = paired_values(store.questions(check.base_id), rows, check.metric)
    else:
        check.b = metric_values(rows, check.metric).astype(float).tolist()
    if not check.b:
        why = "has no per-question values" if check.metric in rows.columns else "is not a per-question metric"
        raise WorkbenchError(f"gate {check.metric!r} has significant: true, but {check.metric} {why} in run {check.run_id[:10]}"
                             " (significance needs per-question values; use significant: false for aggregates such as percentiles)")


def _fmt_bound(check: _Check) -> str:
    if not check.is_change:
        return check.rule.replace(">=", "min").replace("<=", "max")
    return f"max_{'drop' if check.worse_sign < 0 else 'increase'} {check.bound:g}"


def _point_result(check: _Check) -> GateResult:
    """``significant: false``: the point value (or change) against the bound, as before."""
    worse = check.worse_sign * (check.value - (check.base or 0.0)) if check.is_change else check.worse_sign * check.value
    ok = worse <= check.bound
    if check.is_change:
        word = "drop" if check.worse_sign < 0 else "increase"
        msg = (f"{check.metric} = {check.value:.4g} vs baseline {check.base:.4g} ({check.base_id[:10]}): {word} {max(worse, 0):.4g} "
               f"{'<=' if ok else '>'} max {check.bound}")
    else:
        lim = -check.bound if check.worse_sign < 0 else check.bound
        op = (">=" if ok else "<") if check.worse_sign < 0 else ("<=" if ok else ">")
        msg = f"{check.metric} = {check.value:.4g} {op} {'min' if check.worse_sign < 0 else 'max'} {lim}"
    return GateResult(check.run_id, check.metric, check.value, check.base, check.rule, PASS if ok else FAIL, msg,
                      baseline_run_id=check.base_id)


VERDICT_WORDS = {PASS: "lies within", FAIL: "lies entirely beyond", INCONCLUSIVE: "crosses"}


def _interval_result(check: _Check, confidence: float) -> GateResult:
    """``significant: true``: where the interval of the change (or mean) lies against the bound."""
    binary = is_binary(check.metric)
    if check.is_change:
        iv = paired_interval(check.a, check.b, binary=binary, confidence=confidence)
    else:
        iv = mean_interval(check.b, binary=binary, confidence=confidence)
    outcome = decide(*worsening(iv.low, iv.high, check.worse_sign), check.bound)
    what = "the change" if check.is_change else "the mean"
    head = (f"{check.metric} = {check.value:.4g} vs baseline {check.base:.4g} ({check.base_id[:10]}), change {iv.estimate:+.4g}"
            if check.is_change else f"{check.metric} = {check.value:.4g}")
    msg = (f"{head}; {confidence * 100:.4g}% CI of {what} [{iv.low:+.4g}, {iv.high:+.4g}] ({iv.method}, {iv.n} questions) "
           f"{VERDICT_WORDS[outcome]} {_fmt_bound(check)}")
    needed = questions_to_settle(iv, check.worse_sign, check.bound, paired=check.is_change) if outcome == INCONCLUSIVE else None
    return GateResult(check.run_id, check.metric, check.value, check.base, check.rule, outcome, msg, iv, needed, check.base_id)


def settle_text(result: GateResult) -> str:
    """The line under an inconclusive verdict: how many questions would likely settle it."""
    iv = result.interval
    if result.outcome != INCONCLUSIVE or iv is None:
        return ""
    if result.questions_needed is not None:
        return (f"about {result.questions_needed} questions would likely settle it (now {iv.n}; {POWER:.0%} power at the gate's "
                f"level, from the spread of the per-question {'changes' if result.baseline_run_id else 'values'})")
    if iv.n < 2:
        return f"{iv.n} question: too few to estimate how many would settle it"
    return "no number of questions is likely to settle it: the estimate sits on the bound"


def evaluate_gates(store: Store, spec: ExperimentSpec) -> list[GateResult]:
    """Check every gate for every run of the experiment.

    ``significant: true`` bounds are judged by confidence intervals (:mod:`workbench.evaluation.intervals`)
    at the Bonferroni level ``1 - alpha / m``, where m counts the significance-aware checks of this
    call (runs x gates x bounds): every pass and every fail of the call is then right with
    probability at least ``1 - alpha`` together.
    """
    if not spec.gates:
        raise WorkbenchError(f"experiment {spec.name!r} declares no gates")
    board = store.leaderboard(spec.name)
    checks: list[_Check | GateResult] = []
    boards: dict[str, pd.DataFrame] = {}
    for run_id in board["run_id"]:
        base_id = baseline_run_for(store, spec, run_id)
        base_board = None
        if base_id is not None:
            exp = spec.baseline.experiment
            base_board = boards.setdefault(exp or base_id, store.leaderboard(exp) if exp else _single_board(store, base_id))
        for metric, gate in spec.gates.items():
            checks += _run_checks(run_id, metric, gate, board_value(board, run_id, metric), base_id,
                                  board_value(base_board, base_id, metric) if base_board is not None else None)
    judged = [c for c in checks if isinstance(c, _Check) and c.gate.significant]
    for c in judged:
        _attach_values(store, c)
    results = []
    for c in checks:
        if isinstance(c, GateResult):
            results.append(c)
        else:
            results.append(_interval_result(c, 1.0 - c.gate.alpha / len(judged)) if c.gate.significant else _point_result(c))
    return results


def _run_checks(run_id: str, metric: str, gate: GateSpec, value: float | None, base_id: str | None,
                base: float | None) -> list[_Check | GateResult]:
    if value is None:
        return [GateResult(run_id, metric, None, None, "present", FAIL, f"{metric}: no value for this run")]
    out: list[_Check | GateResult] = list(_bounds(run_id, metric, value, gate))
    if gate.max_drop is None and gate.max_increase is None:
        return out
    if base is None:
        return out + [GateResult(run_id, metric, value, None, "baseline", FAIL, f"{metric}: baseline {base_id} has no value",
                                 baseline_run_id=base_id)]
    return out + _changes(run_id, metric, value, gate, base_id, base)


def overall(results: list[GateResult]) -> Outcome:
    """The verdict of a whole gate check: fail if any check failed, else inconclusive if any is, else pass."""
    outcomes = {r.outcome for r in results}
    return FAIL if FAIL in outcomes else INCONCLUSIVE if INCONCLUSIVE in outcomes else PASS


def gates_json(results: list[GateResult]) -> dict:
    """The verdicts as JSON-ready data: one object per check, with its interval and the family it was judged in."""
    judged = [r for r in results if r.interval is not None]
    checks = []
    for r in results:
        iv = r.interval
        checks.append({"run_id": r.run_id, "metric": r.metric, "rule": r.rule, "outcome": r.outcome, "value": r.value,
                       "baseline": r.baseline, "baseline_run_id": r.baseline_run_id,
                       "interval": None if iv is None else {"of": "change" if r.baseline_run_id else "mean", "estimate": iv.estimate,
                                                            "low": _finite(iv.low), "high": _finite(iv.high), "confidence": iv.confidence,
                                                            "method": iv.method, "n": iv.n, "sd": iv.sd},
                       "questions_needed": r.questions_needed, "settle": settle_text(r) or None, "message": r.message})
    return {"family": {"significance_checks": len(judged), "correction": "bonferroni" if len(judged) > 1 else "none"}, "gates": checks}


def _finite(x: float) -> float | None:
    """JSON has no infinity: an unbounded side (one question) is null."""
    return x if math.isfinite(x) else None
