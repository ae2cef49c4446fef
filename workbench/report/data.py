"""What a bake-off report says, computed from the store only (nothing is re-run or re-scored).

:func:`load_report` reads an experiment's leaderboard and per-question values once and computes
everything the page shows: the recommendation within the experiment's limits, the runs that tie
with it (paired tests, Holm; :mod:`workbench.compare`), the baseline (the gates' rule,
:mod:`workbench.gates`), the reranker gain, the drill-down's questions and the failure reasons.
The logic is pure on top of that read, so it is unit-tested on hand-made frames.
:mod:`.html` and :mod:`.charts` only turn the result into the page's sections: they never open
the store or run a test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..compare import metric_values, reranker_gain, ties_with_best
from ..errors import MetricError, StoreError
from ..evaluation.registry import COST_KINDS, HEADLINE, Direction, Kind, best_first, label, lower_is_better, metric_info, primary_metric
from ..evaluation.stats import PairedResult, paired_difference
from ..gates import resolve_baseline
from ..providers.resilience import error_kind
from ..settings import redact_url
from ..store import AXES, Store
from .leaderboard import as_float, fmt, sort_board

# Quality metrics shown in the leaderboard, in reading order (those a run lacks are skipped).
QUALITY = [m for m in HEADLINE if metric_info(m).kind not in COST_KINDS and metric_info(m).kind is not Kind.RELIABILITY]


# -- loading -----------------------------------------------------------------------------------

def question_values(store: Store, run_id: str) -> pd.DataFrame:
    """A run's per-question metrics, latencies, tokens and cost, without the (large) hits.

    Adds ``latency_s``: retrieval (incl. rerank) plus generation, the end-to-end time a user waits.
    """
    df = store.question_values(run_id)
    parts = [pd.to_numeric(df[c], errors="coerce") for c in ("retrieval_latency_s", "generation_latency_s") if c in df]
    if parts:
        total = parts[0].fillna(0.0)
        for p in parts[1:]:
            total = total + p.fillna(0.0)
        measured = parts[0].notna() if len(parts) == 1 else parts[0].notna() | parts[1].notna()
        df["latency_s"] = total.where(measured)
    return df


def question_rows(store: Store, run_id: str, query_ids: Sequence[str]) -> dict[str, dict]:
    """Full stored rows (hits, answer, gold answers, relevance) of some questions of a run."""
    return store.question_rows(run_id, query_ids)


@dataclass
class Recommendation:
    run_id: str | None
    metric: str
    eligible: list[str]
    violations: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Drilldown:
    """The recommended run against the baseline, question by question (what the page's drill-down shows).

    ``outcomes`` is :func:`wins_losses` (empty without a baseline); ``sections`` lists, per
    outcome with questions, (outcome, how many, the query ids shown); without a baseline there
    is one section, ``"weakest"``. ``rows`` holds the stored rows shown, by run id then query id.
    """

    best: str
    baseline: str | None
    limit: int
    outcomes: pd.DataFrame
    counts: dict[str, int]
    paired: PairedResult | None
    sections: list[tuple[str, int, list[str]]]
    rows: dict[str, dict[str, dict]]


@dataclass
class ReportData:
    experiment: str
    spec: dict
    experiment_row: dict
    store_url: str
    board: pd.DataFrame  # sorted by the primary metric, with label/rank/latency/tokens/limits/ties columns
    runs: pd.DataFrame
    metric: str
    values: dict[str, pd.DataFrame]
    recommendation: Recommendation
    ties: pd.DataFrame
    baseline_id: str | None
    baseline_reason: str
    baseline_board: pd.DataFrame | None = None
    generated_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    reranker_gain: pd.DataFrame = field(default_factory=pd.DataFrame)  # compare.reranker_gain; empty without reranked runs
    drilldown: Drilldown | None = None

    def row(self, run_id: str) -> pd.Series:
        board = self.board if run_id in set(self.board["run_id"]) else self.baseline_board
        return board[board["run_id"] == run_id].iloc[0]

    def name(self, run_id: str) -> str:
        """'#2 dense@5 | all-MiniLM-L6-v2' for runs of this experiment; a baseline from elsewhere says so."""
        r = self.row(run_id)
        if run_id in set(self.board["run_id"]):
            return f"#{r['rank']} {r['label']}"
        return f"{r['label']} (baseline, {str(run_id)[:10]})"

    @property
    def varying_axes(self) -> list[str]:
        return varying_axes(self.board)

    @property
    def tie_ids(self) -> list[str]:
        """Runs statistically indistinguishable from the recommended one on the primary metric."""
        return [] if self.ties.empty else list(self.ties.loc[self.ties["tie"].astype(bool), "run_id"])

    @property
    def fastest_tie(self) -> str | None:
        """The run with the lowest end-to-end latency P95 among the recommended run and its ties,
        when that is not the recommended run itself (the answer to "what if speed matters more")."""
        rec = self.recommendation.run_id
        if rec is None or not self.tie_ids or "latency_p95_s" not in self.board:
            return None
        cands = self.board[self.board["run_id"].isin([rec, *self.tie_ids])].dropna(subset=["latency_p95_s"])
        if len(cands) < 2:
            return None
        fast = cands.sort_values(["latency_p95_s", "run_id"]).iloc[0]["run_id"]
        return None if fast == rec else fast


def varying_axes(board: pd.DataFrame) -> list[str]:
    return [a for a in AXES if a in board and board[a].astype(str).nunique() > 1]


def run_labels(board: pd.DataFrame) -> list[str]:
    """Short run names made of the axes that differ between runs (all axes when only one run)."""
    axes = varying_axes(board) or [a for a in AXES if a in board and (board[a].astype(str) != "-").any()]
    return [" | ".join(str(r[a]) for a in axes if str(r[a]) != "-") or str(r["run_id"])[:10] for _, r in board.iterrows()]


def quality_columns(board: pd.DataFrame, metric: str) -> list[str]:
    """The quality metrics the runs report, the primary one first."""
    present = [m for m in QUALITY if m in board and board[m].notna().any()]
    return [metric] + [m for m in present if m != metric] if metric in board else present


def enrich_board(board: pd.DataFrame, values: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Add end-to-end latency P50/P95, tokens per question, label and rank to a leaderboard."""
    board = sort_board(board).copy()
    p50, p95, tokens = [], [], []
    for run_id in board["run_id"]:
        v = values.get(run_id, pd.DataFrame())
        lat = pd.to_numeric(v["latency_s"], errors="coerce").dropna() if "latency_s" in v else pd.Series(dtype=float)
        p50.append(float(np.percentile(lat, 50)) if len(lat) else None)
        p95.append(float(np.percentile(lat, 95)) if len(lat) else None)
        tok = [pd.to_numeric(v[c], errors="coerce") for c in ("prompt_tokens", "completion_tokens") if c in v]
        tok_total = (tok[0].fillna(0) + (tok[1].fillna(0) if len(tok) > 1 else 0)).where(tok[0].notna()) if tok else pd.Series(dtype=float)
        tokens.append(float(tok_total.mean()) if tok_total.notna().any() else None)
    board["latency_p50_s"], board["latency_p95_s"], board["tokens_per_question"] = p50, p95, tokens
    board["label"] = run_labels(board)
    board["rank"] = range(1, len(board) + 1)
    return board


# -- recommendation ----------------------------------------------------------------------------

def _limit_bounds(metric: str, bound) -> tuple[float | None, float | None] | str:
    """(min, max) of one limit, or why it cannot be applied."""
    try:
        info = metric_info(metric)
    except MetricError as exc:
        return str(exc)
    if isinstance(bound, Mapping):
        return as_float(bound.get("min")), as_float(bound.get("max"))
    if as_float(bound) is None:
        return f"{bound!r} is not a number"
    if info.direction is Direction.NONE:
        return f"{info.label} is neither better high nor low; write {{min: ...}} or {{max: ...}}"
    return (None, as_float(bound)) if info.lower_is_better else (as_float(bound), None)


def applied_limits(limits: Mapping[str, Any] | None) -> tuple[dict[str, tuple[float | None, float | None]], list[str]]:
    """The experiment's limits as ``{metric: (min, max)}``, and notes on those that cannot apply.

    A number is a maximum for lower-is-better metrics (latency, cost, tokens) and a minimum for
    higher-is-better ones (the registry's direction); ``{"max": x}``/``{"min": x}`` is explicit,
    and required for a metric without a direction. An unknown metric is never guessed.
    """
    bounds, notes = {}, []
    for metric, bound in (limits or {}).items():
        parsed = _limit_bounds(metric, bound)
        if isinstance(parsed, str):
            notes.append(f"limit {metric!r} ignored: {parsed}")
        else:
            bounds[metric] = parsed
    return bounds, notes


def limit_violations(board: pd.DataFrame, limits: Mapping[str, Any] | None) -> tuple[dict[str, list[str]], list[str]]:
    """Which runs break the experiment's limits (:func:`applied_limits`), and notes on limits that
    could not be applied. An unmeasured value (no cost in a retrieval-only run) breaks no limit."""
    violations: dict[str, list[str]] = {r: [] for r in board["run_id"]}
    bounds, notes = applied_limits(limits)
    for metric, (lo, hi) in bounds.items():
        if metric not in board:
            notes.append(f"limit {metric!r} ignored: no run reports it")
            continue
        for _, r in board.iterrows():
            v = as_float(r[metric])
            if v is None:
                continue
            if hi is not None and v > hi:
                violations[r["run_id"]].append(f"{label(metric)} {fmt(metric, v)} > {fmt(metric, hi)}")
            if lo is not None and v < lo:
                violations[r["run_id"]].append(f"{label(metric)} {fmt(metric, v)} < {fmt(metric, lo)}")
    return {k: v for k, v in violations.items() if v}, notes


def recommend(board: pd.DataFrame, metric: str, limits: Mapping[str, Any] | None = None) -> Recommendation:
    """The run with the best ``metric`` among complete or partial runs (or a race's tie set) within
    the limits; runs a race eliminated are never recommended."""
    violations, notes = limit_violations(board, limits)
    usable = board[board["status"].isin(["complete", "partial", "stopped: tie"]) & board[metric].notna()]
    out = set(board.loc[board["status"] == "eliminated", "run_id"])
    skipped = [r for r in board["run_id"] if r not in set(usable["run_id"]) and r not in out]
    if out:
        notes.append(f"{len(out)} run(s) eliminated by the race are not ranked (see the Race section)")
    if skipped:
        notes.append(f"{len(skipped)} run(s) without a usable {label(metric)} (failed or still running) are not ranked")
    eligible = usable[~usable["run_id"].isin(violations)]
    if eligible.empty:
        return Recommendation(None, metric, [], violations, notes)
    best = best_first(eligible, metric).iloc[0]["run_id"]
    return Recommendation(best, metric, eligible["run_id"].tolist(), violations, notes)


def pareto_frontier(points: pd.DataFrame, x: str, y: str, *, lower_x: bool = True, higher_y: bool = True, key: str = "run_id") -> list[str]:
    """Keys of the points no other point beats on both ``x`` and ``y`` (at least as good on both,
    strictly better on one). Points with a missing coordinate are left out. Ordered by ``x``."""
    df = points[[key, x, y]].copy()
    df[x], df[y] = pd.to_numeric(df[x], errors="coerce"), pd.to_numeric(df[y], errors="coerce")
    df = df.dropna()
    sx, sy = (1 if lower_x else -1), (1 if higher_y else -1)
    pts = [(sx * float(a), sy * float(b), k) for k, a, b in zip(df[key], df[x], df[y])]
    front = [k for ax, by, k in pts
             if not any(ox <= ax and oy >= by and (ox < ax or oy > by) for ox, oy, _ in pts)]
    return sorted(front, key=lambda k: (sx * float(df.loc[df[key] == k, x].iloc[0]), k))


def wins_losses(baseline: pd.DataFrame, candidate: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per question (paired by query_id): the metric in both runs and who won.

    ``outcome`` is ``win`` when the candidate did better than the baseline, ``loss`` when worse,
    ``tie`` when equal, ``failed`` when either run stored an error, ``n/a`` when the metric does
    not apply. Rows are ordered wins (largest first), losses (largest first), failures, ties.
    """
    a = baseline.set_index("query_id")
    b = candidate.set_index("query_id")
    rows = []
    sign = -1 if lower_is_better(metric) else 1
    for qid in [q for q in b.index if q in a.index]:
        va = as_float(a.at[qid, metric]) if metric in a else None
        vb = as_float(b.at[qid, metric]) if metric in b else None
        err = any(isinstance(x.at[qid, "error"], str) for x in (a, b) if "error" in x)
        if err:
            outcome = "failed"
        elif va is None or vb is None:
            outcome = "n/a"
        else:
            d = sign * (vb - va)
            outcome = "win" if d > 1e-12 else "loss" if d < -1e-12 else "tie"
        rows.append({"query_id": qid, "question": b.at[qid, "question"], "baseline": va, "candidate": vb,
                     "change": None if va is None or vb is None else vb - va, "outcome": outcome})
    df = pd.DataFrame(rows, columns=["query_id", "question", "baseline", "candidate", "change", "outcome"])
    order = {"win": 0, "loss": 1, "failed": 2, "tie": 3, "n/a": 4}
    df["_o"] = df["outcome"].map(order)
    df["_m"] = -(df["change"].abs().fillna(0))
    return df.sort_values(["_o", "_m", "query_id"], kind="stable").drop(columns=["_o", "_m"]).reset_index(drop=True)


# -- reliability and safety ------------------------------------------------------------------------

SAFETY_METRICS = ("attack_success_rate", "pii_leakage_rate", "pii_in_context_rate")


def planned_questions(board: pd.DataFrame) -> int:
    """The questions the experiment's runs were planned with (a raced run may have evaluated fewer)."""
    col = "n_planned" if "n_planned" in board else "n_questions"
    return int(board[col].max())


def failure_reasons(errors) -> dict[str, int]:
    """Failed questions by reason ("timeout", "rate limit (429)", ...), most frequent first."""
    counts: dict[str, int] = {}
    for e in errors:
        if isinstance(e, str) and e:
            kind = error_kind(e)
            counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def failure_text(n_failed: int, n_questions: int, reasons: Mapping[str, int]) -> str:
    """'3 of 200 questions failed: timeout (2), server error (5xx) (1)'; '' when none failed."""
    if not n_failed:
        return ""
    why = ", ".join(f"{k} ({v})" if len(reasons) > 1 else k for k, v in reasons.items())
    return f"{n_failed} of {n_questions} questions failed" + (f": {why}" if why else "")


def reliability_table(data: ReportData) -> pd.DataFrame:
    """Per run: status, questions stored/failed with reasons, fallback answers, and the safety
    rates (attack success, PII leakage, PII in context) with their intervals where measured."""
    rows = []
    for _, r in data.board.iterrows():
        v = data.values.get(r["run_id"])
        errors = v["error"] if v is not None and "error" in v else []
        reasons = failure_reasons(errors)
        n_failed = sum(reasons.values())
        n_stored = 0 if v is None else len(v)
        planned = as_float(r.get("n_planned", r.get("n_questions")))
        n_questions = int(planned) if planned is not None else n_stored  # planned; n_stored: evaluated
        fallback = int((pd.to_numeric(v["fallback_used"], errors="coerce") == 1).sum()) if v is not None and "fallback_used" in v else 0
        row = {"run_id": r["run_id"], "label": r.get("label", r["run_id"]), "status": r.get("status"), "n_questions": n_questions,
               "n_stored": n_stored, "n_failed": n_failed, "failures": failure_text(n_failed, n_questions, reasons),
               "reasons": reasons, "fallback_answers": fallback}
        for m in SAFETY_METRICS:
            row[m] = as_float(r.get(m))
            row[f"{m}_ci_low"] = as_float(r.get(f"{m}_ci_low"))
            row[f"{m}_ci_high"] = as_float(r.get(f"{m}_ci_high"))
        rows.append(row)
    return pd.DataFrame(rows)


# -- baseline and drill-down -----------------------------------------------------------------------

def _resolve_baseline(store: Store, board: pd.DataFrame, spec: dict, best: str | None, baseline_run: str,
                      baseline_experiment: str) -> tuple[str | None, str, pd.DataFrame | None]:
    """(baseline run id, why it is the baseline, the board it comes from when not this experiment).

    The caller's ``baseline_run``/``baseline_experiment`` win over the experiment file's
    ``baseline``; both go through :func:`workbench.gates.resolve_baseline`, the rule the gates use.
    Without either, the first configuration of the grid other than ``best``.
    """
    spec_base = spec.get("baseline") or {}
    run_ref = baseline_run or spec_base.get("run_id") or ""
    exp_ref = baseline_experiment or ("" if baseline_run else spec_base.get("experiment") or "")
    found = resolve_baseline(store, best, baseline_run=run_ref, baseline_experiment=exp_ref)
    if found is not None and found.experiment is not None:
        other = store.leaderboard(found.experiment)
        return found.run_id, found.reason, enrich_board(other, {r: question_values(store, r) for r in other["run_id"]})
    if found is not None:
        why = "given as baseline_run" if baseline_run else "the experiment file's baseline run"
        return found.run_id, why, None if found.run_id in set(board["run_id"]) else _foreign_board(store, [found.run_id])
    others = board[board["run_id"] != best].sort_values("position") if "position" in board else board[board["run_id"] != best]
    if others.empty:
        return None, "only one run: nothing to compare with", None
    return others.iloc[0]["run_id"], "the first configuration in the experiment's grid (pass baseline_run to choose another)", None


def _foreign_board(store: Store, run_ids: list[str]) -> pd.DataFrame:
    runs = store.runs()
    runs = runs[runs["run_id"].isin(run_ids)].copy()
    for a in AXES:
        if a not in runs:
            runs[a] = "-"
        runs[a] = runs[a].fillna("-")
    agg = store.aggregates(run_ids)
    if not agg.empty:
        runs = runs.merge(agg.pivot(index="run_id", columns="metric", values="value"), left_on="run_id", right_index=True, how="left")
    values = {r: question_values(store, r) for r in run_ids}
    runs = enrich_board(runs, values) if primary_metric_or_none(runs) else runs.assign(label=run_labels(runs), rank=None)
    return runs


def primary_metric_or_none(board: pd.DataFrame) -> str | None:
    try:
        return primary_metric(board)
    except ValueError:
        return None


def _weakest(values: pd.DataFrame, metric: str, limit: int) -> list[str]:
    """The ``limit`` questions with the worst ``metric`` (unscored ones first: they failed)."""
    if metric not in values:
        return values["query_id"].head(limit).tolist()
    return values.sort_values(metric, ascending=not lower_is_better(metric), na_position="first").head(limit)["query_id"].tolist()


def drilldown(store: Store, values: Mapping[str, pd.DataFrame], best: str, baseline: str | None, metric: str,
              limit: int = 15) -> Drilldown:
    """What the drill-down shows: with a baseline, wins, losses, failures and ties of ``best``
    against it (at most ``limit`` questions each) with the paired test over all questions;
    without one, ``best``'s ``limit`` weakest questions. Reads only the rows it shows."""
    if baseline is None:
        ids = _weakest(values[best], metric, limit)
        return Drilldown(best, None, limit, pd.DataFrame(), {}, None, [("weakest", len(ids), ids)],
                         {best: store.question_rows(best, ids)})
    wl = wins_losses(values[baseline], values[best], metric)
    a, b = metric_values(values[baseline], metric), metric_values(values[best], metric)
    common = [q for q in b.index if q in a.index]
    paired = paired_difference([float(a[q]) for q in common], [float(b[q]) for q in common]) if common else None
    sections = []
    for outcome in ("win", "loss", "failed", "tie"):
        sel = wl[wl["outcome"] == outcome]
        if not sel.empty:
            sections.append((outcome, len(sel), sel["query_id"].head(limit).tolist()))
    shown = [q for _, _, ids in sections for q in ids]
    rows = {run: store.question_rows(run, shown) for run in (baseline, best)}
    return Drilldown(best, baseline, limit, wl, wl["outcome"].value_counts().to_dict(), paired, sections, rows)


# -- assembling the report ---------------------------------------------------------------------

def _rank(store: Store, experiment: str, store_url: str) -> tuple[pd.DataFrame, pd.DataFrame, str, dict[str, pd.DataFrame]]:
    """The experiment's enriched leaderboard, its runs, its primary metric and its per-question values."""
    board = store.leaderboard(experiment)
    if board.empty:
        raise StoreError(f"experiment {experiment!r} has no runs in {redact_url(store_url)}")
    runs = store.runs(experiment)
    board = board.merge(runs[["run_id", "position"]], on="run_id", how="left")
    metric = primary_metric_or_none(board)
    if metric is None:
        raise StoreError(f"experiment {experiment!r}: no run has a quality metric yet (are the runs finished?)")
    values = {r: question_values(store, r) for r in board["run_id"]}
    return enrich_board(board, values), runs, metric, values


def has_reranker(board: pd.DataFrame) -> bool:
    return "rerank" in board and bool((board["rerank"].astype(str) != "-").any())


def load_report(store_url: str, experiment: str, *, baseline_run: str = "", baseline_experiment: str = "",
                drilldown_limit: int = 15) -> ReportData:
    """Read and compute everything the report shows for ``experiment`` from the store at ``store_url``.

    Raises:
        StoreError: the experiment is not stored, has no runs, or none has a quality metric yet.
    """
    store = Store(store_url)
    exp_row = store.experiment(experiment)
    board, runs, metric, values = _rank(store, experiment, store_url)
    spec = exp_row.get("spec") or {}
    rec = recommend(board, metric, spec.get("limits") if isinstance(spec, dict) else None)
    # ties among the runs that could have been recommended (those over a limit are reported apart)
    ties = ties_with_best({r: values[r] for r in rec.eligible}, rec.run_id, metric) if rec.run_id else pd.DataFrame(columns=["run_id", "tie"])
    tie_ids = set(ties.loc[ties["tie"].astype(bool), "run_id"]) if not ties.empty else set()
    board["recommended"] = board["run_id"] == rec.run_id
    board["ties_best"] = board["run_id"].isin(tie_ids)
    board["within_limits"] = ~board["run_id"].isin(rec.violations)
    best = rec.run_id or board.iloc[0]["run_id"]
    base_id, why, base_board = _resolve_baseline(store, board, spec, best, baseline_run, baseline_experiment)
    if base_id is not None and base_id not in values:
        values[base_id] = question_values(store, base_id)
    gain = reranker_gain(store, experiment) if has_reranker(board) else pd.DataFrame()
    return ReportData(experiment, spec, exp_row, store_url, board, runs, metric, values, rec, ties, base_id, why, base_board,
                      reranker_gain=gain, drilldown=drilldown(store, values, best, base_id, metric, drilldown_limit))


def summary(data: ReportData) -> dict:
    """A small JSON summary of the report, for the reports index."""
    rec = data.recommendation.run_id
    r = data.row(rec) if rec else None
    return {"experiment": data.experiment, "generated_at": data.generated_at, "metric": data.metric,
            "metric_label": label(data.metric), "recommended_run": rec, "recommended": r["label"] if r is not None else None,
            "value": as_float(r[data.metric]) if r is not None else None, "n_runs": len(data.board),
            "n_questions": planned_questions(data.board)}
