"""Paired comparisons between runs: differences with intervals and p-values, flipped questions,
the runs that tie with the best one, and the gain a reranker brings.

Two runs are only compared on the questions both answered (paired by ``query_id``); a metric that
is ``None`` for a question in either run drops that question from that metric's comparison. Which
way a difference is good comes from the metric registry (:mod:`workbench.evaluation.registry`),
the same rule the leaderboard and the report use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import pandas as pd

from .errors import StoreError
from .evaluation.registry import Direction, metric_columns, metric_info
from .evaluation.stats import holm, paired_difference
from .store import AXES, Store

ALPHA = 0.05
GAIN_METRICS = ["ndcg_at_10", "mrr", "hit_at_1", "hit_at_3", "f1", "exact_match", "contains_gold"]


def paired_values(rows_a: pd.DataFrame, rows_b: pd.DataFrame, metric: str) -> tuple[list[float], list[float], list[str]]:
    """``metric`` in both runs on the questions where both have a value: (a, b, query ids)."""
    a = rows_a.set_index("query_id")[metric] if metric in rows_a else pd.Series(dtype=float)
    b = rows_b.set_index("query_id")[metric] if metric in rows_b else pd.Series(dtype=float)
    common = [q for q in a.index if q in b.index and pd.notna(a[q]) and pd.notna(b[q])]
    return [float(a[q]) for q in common], [float(b[q]) for q in common], common


def metric_values(values: pd.DataFrame, metric: str) -> pd.Series:
    """A run's measured ``metric`` per question, indexed by query id (not-applicable rows dropped)."""
    if values.empty or metric not in values:
        return pd.Series(dtype=float)
    s = pd.to_numeric(values.set_index("query_id")[metric], errors="coerce")
    return s[s.notna()]


def board_value(board: pd.DataFrame, run_id: str, metric: str) -> float | None:
    """A run's value of ``metric`` on a leaderboard, None when absent or not measured."""
    row = board[board["run_id"] == run_id]
    if row.empty or metric not in row:
        return None
    v = row.iloc[0][metric]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def same_configuration(a: Mapping | None, b: Mapping | None, axes: Sequence[str] = AXES) -> bool:
    """Whether two stored run configs (``runs.config``) are equal on ``axes``, as data.

    A field present in only one of them (a setting added to the schema after the other run was
    stored) is not compared; a stage absent from one run (no reranker) must be absent from both.
    """
    for axis in axes:
        x, y = (a or {}).get(axis), (b or {}).get(axis)
        if (x is None) != (y is None):
            return False
        if x is not None and any(x[k] != y[k] for k in x.keys() & y.keys()):
            return False
    return True


def compare_runs(store: Store, run_a: str, run_b: str, metrics: list[str] | None = None) -> pd.DataFrame:
    """Per-metric paired comparison of run B against run A (diff = B - A), with each metric's
    ``direction`` and ``lower_is_better`` from the registry.

    Raises:
        StoreError: a run is unknown or has no stored questions.
        MetricError: a metric asked for is not a known metric.
    """
    ra, rb = store.run(run_a)["run_id"], store.run(run_b)["run_id"]
    qa, qb = store.questions(ra), store.questions(rb)
    if qa.empty or qb.empty:
        raise StoreError(f"run {ra if qa.empty else rb} has no stored questions")
    for m in metrics or []:
        metric_info(m)
    out = []
    for m in metrics or [m for m in metric_columns(qa.columns) if m in qb]:
        a, b, _ = paired_values(qa, qb, m)
        if a:
            out.append({"metric": m, **asdict(paired_difference(a, b))})
    df = pd.DataFrame(out)
    if not df.empty:
        df["direction"] = [metric_info(m).direction.value for m in df["metric"]]
        df["lower_is_better"] = df["direction"] == Direction.LOWER.value
    return df


def flipped_questions(store: Store, run_a: str, run_b: str, metric: str) -> pd.DataFrame:
    """Questions whose ``metric`` changed between the runs, worst regressions first.

    ``better`` says whether B's value is the better one in the metric's direction (None for a
    metric without one); the order follows it, so a rise in hallucination is a regression.
    """
    info = metric_info(metric)
    ra, rb = store.run(run_a)["run_id"], store.run(run_b)["run_id"]
    qa, qb = store.questions(ra), store.questions(rb)
    a, b, ids = paired_values(qa, qb, metric)
    text = qa.set_index("query_id")["question"] if not qa.empty else pd.Series(dtype=str)
    sign = -1.0 if info.lower_is_better else 1.0
    none = info.direction is Direction.NONE
    rows = [{"query_id": q, "question": text[q], "a": x, "b": y, "change": y - x, "better": None if none else sign * (y - x) > 0,
             "_order": sign * (y - x)} for q, x, y in zip(ids, a, b) if x != y]
    df = pd.DataFrame(rows, columns=["query_id", "question", "a", "b", "change", "better", "_order"])
    return df.sort_values("_order", kind="stable").drop(columns="_order").reset_index(drop=True)


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


def _plain_twin(runs: pd.DataFrame, run: pd.Series) -> str | None:
    """The run of ``runs`` configured like ``run`` on every axis but the reranker, without one."""
    plain = runs[runs["config"].map(lambda c: (c or {}).get("rerank") is None)]
    axes = [a for a in AXES if a != "rerank"]
    same = plain[plain["config"].map(lambda c: same_configuration(c, run["config"], axes))]
    return None if same.empty else same.iloc[0]["run_id"]


def _gain_costs(board: pd.DataFrame, qa: pd.DataFrame, qb: pd.DataFrame, run_id: str, base_id: str) -> dict:
    lat_a, lat_b, _ = paired_values(qa, qb, "retrieval_latency_s")
    return {"added_latency_mean_s": (sum(lat_b) - sum(lat_a)) / len(lat_a) if lat_a else None,
            "rerank_latency_p50_s": board_value(board, run_id, "rerank_latency_p50_s"),
            "added_cost_per_question_usd": (board_value(board, run_id, "cost_per_question_usd") or 0.0)
            - (board_value(board, base_id, "cost_per_question_usd") or 0.0)}


def reranker_gain(store: Store, experiment: str, metrics: list[str] | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Reranker gain: for every reranked run, the paired difference of each metric against the same
    configuration without the reranker (same chunking, embedder, retriever and LLM, compared as
    stored config data), on the same questions, Holm-corrected over the table, with the latency
    and cost the reranker adds."""
    board = store.leaderboard(experiment)
    runs = store.runs(experiment)
    if board.empty or "config" not in runs:
        return pd.DataFrame()
    configs = runs.set_index("run_id")["config"]
    board = board.assign(config=board["run_id"].map(configs))
    rows = []
    for _, r in board[board["config"].map(lambda c: (c or {}).get("rerank") is not None)].iterrows():
        base_id = _plain_twin(board, r)
        if base_id is None:
            continue
        qa, qb = store.questions(base_id), store.questions(r["run_id"])
        extra = _gain_costs(board, qa, qb, r["run_id"], base_id)
        for m in metrics or GAIN_METRICS:
            a, b, _ = paired_values(qa, qb, m)
            if not a:
                continue
            res = paired_difference(a, b)
            rows.append({"run_id": r["run_id"], "baseline_run_id": base_id, "rerank": r["rerank"], "retrieval": r["retrieval"],
                         "chunking": r["chunking"], "embedding": r["embedding"], "metric": m, "n": res.n, "without": res.mean_a,
                         "with": res.mean_b, "gain": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high,
                         "p_value": res.p_value, "test": res.test, **extra})
    df = pd.DataFrame(rows)
    if not df.empty:
        df["p_holm"] = holm(df["p_value"].tolist())
        df["significant"] = df["p_holm"] < alpha
    return df
