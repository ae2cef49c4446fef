"""What a bake-off report says, computed from the store only (nothing is re-run or re-scored).

:func:`load_report` reads an experiment's leaderboard and per-question values once; the logic
on top is pure (recommendation within the experiment's limits, ties with the best run by paired
tests with Holm correction, the Pareto frontier, per-axis tables, wins/losses against a
baseline), so it is unit-tested on hand-made frames. :mod:`workbench.reporthtml` and
:mod:`workbench.charts` turn the result into the page's sections.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import select

from ..errors import StoreError
from ..evaluation.stats import holm, paired_difference
from .leaderboard import AXES, HEADLINE, LOWER_IS_BETTER, fmt_value, primary_metric, sort_board
from ..settings import redact_url
from ..store import Store
from ..store import questions as questions_table

ALPHA = 0.05
# Quality metrics shown in the leaderboard, in reading order (those a run lacks are skipped).
QUALITY = [m for m in HEADLINE if not (m.endswith("_s") or m.endswith("tokens") or m.endswith("_usd") or m == "error_rate")]
QUALITY_LOWER_IS_BETTER = {"hallucination", "false_refusal", "refusal", "attack_success_rate", "attack_success", "pii_leakage_rate",
                           "pii_leakage", "pii_in_answer", "pii_in_answer_rate", "fallback_used"}
LABELS = {"hit_at_5": "Hit@5", "recall_at_5": "Recall@5", "mrr": "MRR", "ndcg_at_10": "nDCG@10", "map": "MAP",
          "exact_match": "Exact match", "f1": "Answer F1", "contains_gold": "Contains gold",
          "citation_accuracy": "Citation accuracy", "answer_support": "Answer support", "hallucination": "Hallucination",
          "refusal_correct": "Correct refusals", "false_refusal": "False refusals", "latency_p50_s": "Latency P50",
          "latency_p95_s": "Latency P95", "tokens_per_question": "Tokens / question", "cost_per_question_usd": "Cost / question",
          "attack_success_rate": "Attack success", "pii_leakage_rate": "PII leakage", "pii_in_context_rate": "PII in context",
          "chunk_hit_at_5": "Chunk Hit@5", "chunk_mrr": "Chunk MRR", "chunk_ndcg_at_10": "Chunk nDCG@10"}
MEANINGS = {"f1": "token overlap F1 of the generated answer with the gold answers (SQuAD)",
            "ndcg_at_10": "how high the documents holding the answer rank among the first 10 retrieved (nDCG@10)",
            "mrr": "1 / rank of the first relevant document (MRR)",
            "chunk_ndcg_at_10": "how high the chunks overlapping the gold evidence span rank among the first 10 (chunk-level nDCG@10)",
            "chunk_mrr": "1 / rank of the first chunk overlapping the gold evidence span (chunk-level MRR)"}
LIGHT_COLUMNS = ["run_id", "query_id", "position", "question", "error", "retrieval_latency_s", "generation_latency_s",
                 "prompt_tokens", "completion_tokens", "cost_usd", "metrics"]


def esc(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_at_", "@").replace("_", " "))


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric in QUALITY_LOWER_IS_BETTER or metric.endswith(("_s", "_usd", "tokens", "tokens_per_question"))


def fmt(metric: str, value) -> str:
    """``leaderboard.fmt_value``, but latencies in ms below a second (retrieval is often sub-ms)."""
    v = as_float(value)
    if v is not None and metric.endswith("_s") and not metric.endswith("tokens_s"):
        if abs(v) < 1:
            return f"{v * 1000:.1f} ms" if abs(v) < 0.01 else f"{v * 1000:.0f} ms"
        return f"{v:.2f} s"
    if v is not None and metric == "tokens_per_question":
        return f"{v:.0f}"
    return fmt_value(metric, v)


def as_float(value) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


# -- loading -----------------------------------------------------------------------------------

def question_values(store: Store, run_id: str) -> pd.DataFrame:
    """A run's per-question metrics, latencies, tokens and cost, without the (large) hits.

    Adds ``latency_s``: retrieval (incl. rerank) plus generation, the end-to-end time a user waits.
    """
    cols = [questions_table.c[c] for c in LIGHT_COLUMNS]
    with store.engine.connect() as conn:
        rows = conn.execute(select(*cols).where(questions_table.c.run_id == run_id).order_by(questions_table.c.position)).mappings().all()
    records = []
    for r in rows:
        d = dict(r)
        d.update(d.pop("metrics") or {})
        records.append(d)
    df = pd.DataFrame(records, columns=[c for c in LIGHT_COLUMNS if c != "metrics"] if not records else None)
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
    if not query_ids:
        return {}
    with store.engine.connect() as conn:
        rows = conn.execute(select(questions_table).where(
            (questions_table.c.run_id == run_id) & questions_table.c.query_id.in_(list(query_ids)))).mappings().all()
    out = {}
    for r in rows:
        d = dict(r)
        d.update(d.pop("metrics") or {})
        out[d["query_id"]] = d
    return out


@dataclass
class Recommendation:
    run_id: str | None
    metric: str
    eligible: list[str]
    violations: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)


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
    import numpy as np

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

def limit_violations(board: pd.DataFrame, limits: Mapping[str, Any] | None) -> tuple[dict[str, list[str]], list[str]]:
    """Which runs break the experiment's limits, and notes on limits that could not be applied.

    ``limits`` maps a leaderboard column to a bound: a number is a maximum for lower-is-better
    columns (latency, cost, tokens) and a minimum otherwise; ``{"max": x}``/``{"min": x}`` is
    explicit. An unmeasured value (no cost in a retrieval-only run) does not break a limit.
    """
    violations: dict[str, list[str]] = {r: [] for r in board["run_id"]}
    notes: list[str] = []
    for metric, bound in (limits or {}).items():
        if isinstance(bound, Mapping):
            lo, hi = as_float(bound.get("min")), as_float(bound.get("max"))
        elif as_float(bound) is not None:
            lo, hi = (None, as_float(bound)) if lower_is_better(metric) else (as_float(bound), None)
        else:
            notes.append(f"limit {metric!r} ignored: {bound!r} is not a number")
            continue
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
    """The run with the best ``metric`` among complete or partial runs within the limits."""
    violations, notes = limit_violations(board, limits)
    usable = board[board["status"].isin(["complete", "partial"]) & board[metric].notna()]
    skipped = [r for r in board["run_id"] if r not in set(usable["run_id"])]
    if skipped:
        notes.append(f"{len(skipped)} run(s) without a usable {label(metric)} (failed or still running) are not ranked")
    eligible = usable[~usable["run_id"].isin(violations)]
    if eligible.empty:
        return Recommendation(None, metric, [], violations, notes)
    best = eligible.sort_values([metric, "run_id"], ascending=[lower_is_better(metric), True]).iloc[0]["run_id"]
    return Recommendation(best, metric, eligible["run_id"].tolist(), violations, notes)


def metric_values(values: pd.DataFrame, metric: str) -> pd.Series:
    if values.empty or metric not in values:
        return pd.Series(dtype=float)
    s = pd.to_numeric(values.set_index("query_id")[metric], errors="coerce")
    return s[s.notna()]


def ties_with_best(values: Mapping[str, pd.DataFrame], best: str, metric: str, alpha: float = ALPHA) -> pd.DataFrame:
    """Each other run compared with ``best`` on the questions both scored (paired by query_id).

    McNemar for 0/1 metrics, a paired permutation test otherwise; p-values Holm-corrected over
    the comparisons. ``tie`` is True when the corrected p-value is at least ``alpha``: the data
    cannot tell that run from the best. ``diff`` is other minus best.
    """
    columns = ["run_id", "n", "diff", "ci_low", "ci_high", "p_value", "p_holm", "tie"]
    ref = metric_values(values[best], metric)
    rows = []
    for run_id, v in values.items():
        if run_id == best:
            continue
        other = metric_values(v, metric)
        common = [q for q in ref.index if q in other.index]
        if not common:
            rows.append({"run_id": run_id, "n": 0, "diff": None, "ci_low": None, "ci_high": None, "p_value": None})
            continue
        res = paired_difference([float(ref[q]) for q in common], [float(other[q]) for q in common])
        rows.append({"run_id": run_id, "n": res.n, "diff": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value})
    tested = [r for r in rows if r["p_value"] is not None]
    for r, p in zip(tested, holm([r["p_value"] for r in tested])):
        r["p_holm"] = p
    for r in rows:
        r.setdefault("p_holm", None)
        r["tie"] = r["p_holm"] is not None and r["p_holm"] >= alpha
    return pd.DataFrame(rows, columns=columns)


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


def axis_tables(board: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """For each axis with more than one value: per value, the runs' mean and best ``metric``."""
    out = {}
    asc = lower_is_better(metric)
    for axis in varying_axes(board):
        rows = []
        for value, grp in board.groupby(board[axis].astype(str), sort=False):
            vals = pd.to_numeric(grp[metric], errors="coerce")
            best = grp.loc[vals.idxmin() if asc else vals.idxmax()] if vals.notna().any() else None
            rows.append({"value": "(none)" if value == "-" else value, "runs": len(grp), "mean": vals.mean(), "best": vals.min() if asc else vals.max(),
                         "best_run": f"#{best['rank']} {best['label']}" if best is not None else "-"})
        out[axis] = pd.DataFrame(rows).sort_values("mean", ascending=asc, na_position="last").reset_index(drop=True)
    return out


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


def failure_reasons(errors) -> dict[str, int]:
    """Failed questions by reason ("timeout", "rate limit (429)", ...), most frequent first."""
    from ..providers.resilience import error_kind

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
        n_questions = int(r["n_questions"]) if as_float(r.get("n_questions")) is not None else n_stored
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


# -- assembling the report ---------------------------------------------------------------------

def _resolve_baseline(store: Store, board: pd.DataFrame, spec: dict, best: str | None, baseline_run: str,
                      baseline_experiment: str) -> tuple[str | None, str, pd.DataFrame | None]:
    """(baseline run id, why it is the baseline, the board it comes from when another experiment)."""
    spec_base = spec.get("baseline") or {}
    run_ref = baseline_run or spec_base.get("run_id") or ""
    exp_ref = baseline_experiment or ("" if baseline_run else spec_base.get("experiment") or "")
    if run_ref:
        run_id = store.run(run_ref)["run_id"]
        why = "given as baseline_run" if baseline_run else "the experiment file's baseline run"
        other = None if run_id in set(board["run_id"]) else _foreign_board(store, [run_id])
        return run_id, why, other
    if exp_ref:
        other = store.leaderboard(exp_ref)
        if other.empty:
            raise StoreError(f"baseline experiment {exp_ref!r} has no runs")
        other = enrich_board(other, {r: question_values(store, r) for r in other["run_id"]})
        mine = board[board["run_id"] == best].iloc[0] if best else None
        same = other[(other[AXES].astype(str) == mine[AXES].astype(str)).all(axis=1)] if mine is not None else other.iloc[0:0]
        pick = same.iloc[0]["run_id"] if not same.empty else other.iloc[0]["run_id"]
        how = "the run with the same configuration" if not same.empty else "its best run"
        return pick, f"{how} in experiment {exp_ref!r}", other
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


def load_report(store_url: str, experiment: str, *, baseline_run: str = "", baseline_experiment: str = "") -> ReportData:
    """Read everything the report shows for ``experiment`` from the store at ``store_url``."""
    store = Store(store_url)
    exp_row = store.experiment(experiment)
    board = store.leaderboard(experiment)
    if board.empty:
        raise StoreError(f"experiment {experiment!r} has no runs in {redact_url(store_url)}")
    runs = store.runs(experiment)
    board = board.merge(runs[["run_id", "position"]], on="run_id", how="left")
    metric = primary_metric_or_none(board)
    if metric is None:
        raise StoreError(f"experiment {experiment!r}: no run has a quality metric yet (are the runs finished?)")
    values = {r: question_values(store, r) for r in board["run_id"]}
    board = enrich_board(board, values)
    spec = exp_row.get("spec") or {}
    rec = recommend(board, metric, spec.get("limits") if isinstance(spec, dict) else None)
    # ties among the runs that could have been recommended (those over a limit are reported apart)
    eligible = {r: values[r] for r in rec.eligible}
    ties = ties_with_best(eligible, rec.run_id, metric) if rec.run_id else pd.DataFrame(columns=["run_id", "tie"])
    tie_ids = set(ties.loc[ties["tie"].astype(bool), "run_id"]) if not ties.empty else set()
    board["recommended"] = board["run_id"] == rec.run_id
    board["ties_best"] = board["run_id"].isin(tie_ids)
    board["within_limits"] = ~board["run_id"].isin(rec.violations)
    base_id, why, base_board = _resolve_baseline(store, board, spec, rec.run_id or board.iloc[0]["run_id"], baseline_run, baseline_experiment)
    if base_id is not None and base_id not in values:
        values[base_id] = question_values(store, base_id)
    return ReportData(experiment, spec, exp_row, store_url, board, runs, metric, values, rec, ties, base_id, why, base_board)


def summary(data: ReportData) -> dict:
    """A small JSON summary of the report, for the reports index."""
    rec = data.recommendation.run_id
    r = data.row(rec) if rec else None
    return {"experiment": data.experiment, "generated_at": data.generated_at, "metric": data.metric,
            "metric_label": label(data.metric), "recommended_run": rec, "recommended": r["label"] if r is not None else None,
            "value": as_float(r[data.metric]) if r is not None else None, "n_runs": len(data.board),
            "n_questions": int(data.board["n_questions"].max())}
