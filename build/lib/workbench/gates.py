"""Regression gates, and the one rule for which run is a run's baseline.

A gate bounds a run's aggregate metric (``min``/``max``) or its change from a baseline run
(``max_drop``/``max_increase``, optionally only when a paired test finds the change significant).
:func:`resolve_baseline` is also what the report uses to pick the run it compares with, so a gate
and the report never disagree on the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .compare import board_value, paired_values, same_configuration
from .config.experiment import ExperimentSpec, GateSpec
from .errors import StoreError, WorkbenchError
from .evaluation.registry import best_first, primary_metric
from .evaluation.stats import paired_difference
from .store import Store


@dataclass(frozen=True)
class GateResult:
    run_id: str
    metric: str
    value: float | None
    baseline: float | None
    rule: str
    passed: bool
    p_value: float | None
    message: str


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


def _bound_checks(run_id: str, metric: str, value: float, gate: GateSpec) -> list[GateResult]:
    out = []
    if gate.min is not None:
        ok = value >= gate.min
        out.append(GateResult(run_id, metric, value, None, f">= {gate.min}", ok, None,
                              f"{metric} = {value:.4g} {'>=' if ok else '<'} min {gate.min}"))
    if gate.max is not None:
        ok = value <= gate.max
        out.append(GateResult(run_id, metric, value, None, f"<= {gate.max}", ok, None,
                              f"{metric} = {value:.4g} {'<=' if ok else '>'} max {gate.max}"))
    return out


def _change_checks(store: Store, run_id: str, metric: str, value: float, gate: GateSpec, base_id: str | None,
                   base_board: pd.DataFrame | None) -> list[GateResult]:
    out = []
    for bound, sign in ((gate.max_drop, -1), (gate.max_increase, 1)):
        if bound is None:
            continue
        base = board_value(base_board, base_id, metric) if base_board is not None else None
        if base is None:
            out.append(GateResult(run_id, metric, value, None, "baseline", False, None, f"{metric}: baseline {base_id} has no value"))
            continue
        change = (value - base) * sign  # positive = worse
        p = None
        if gate.significant:
            a, b, _ = paired_values(store.questions(base_id), store.questions(run_id), metric)
            if not a:
                raise WorkbenchError(f"gate {metric!r} requires significance, but {metric} is not a per-question metric")
            p = paired_difference(a, b).p_value
        beyond = change > bound
        ok = not beyond or (gate.significant and p >= gate.alpha)
        word = "drop" if sign < 0 else "increase"
        sig = "" if p is None else f", p={p:.3g} ({'significant' if p < gate.alpha else 'not significant'} at {gate.alpha})"
        out.append(GateResult(run_id, metric, value, base, f"{word} <= {bound}", ok, p,
                              f"{metric} = {value:.4g} vs baseline {base:.4g} ({base_id[:10]}): {word} {max(change, 0):.4g} "
                              f"{'>' if beyond else '<='} max {bound}{sig}"))
    return out


def evaluate_gates(store: Store, spec: ExperimentSpec) -> list[GateResult]:
    """Check every gate for every run of the experiment."""
    if not spec.gates:
        raise WorkbenchError(f"experiment {spec.name!r} declares no gates")
    board = store.leaderboard(spec.name)
    results: list[GateResult] = []
    all_boards: dict[str, pd.DataFrame] = {}
    for run_id in board["run_id"]:
        base_id = baseline_run_for(store, spec, run_id)
        base_board = None
        if base_id is not None:
            exp = spec.baseline.experiment
            base_board = all_boards.setdefault(exp or base_id, store.leaderboard(exp) if exp else _single_board(store, base_id))
        for metric, gate in spec.gates.items():
            value = board_value(board, run_id, metric)
            if value is None:
                results.append(GateResult(run_id, metric, None, None, "present", False, None, f"{metric}: no value for this run"))
                continue
            results += _bound_checks(run_id, metric, value, gate)
            results += _change_checks(store, run_id, metric, value, gate, base_id, base_board)
    return results
