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
from .evaluation.power import detectable_difference, questions_needed
from .evaluation.registry import Direction, best_first, label, metric_columns, metric_info, primary_metric
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


def compare_runs(store: Store, run_a: str, run_b: str, metrics: list[str] | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Per-metric paired comparison of run B against run A (diff = B - A), with each metric's
    ``direction`` and ``lower_is_better`` from the registry.

    Comparing many metrics at once finds "significant" differences by chance, so ``p_holm`` holds
    the p-values Holm-corrected across the metrics compared (the family-wise error rate over them
    is at most ``alpha``) and ``significant`` is ``p_holm < alpha``.

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
        df["p_holm"] = holm(df["p_value"].tolist())
        df["significant"] = df["p_holm"] < alpha
        df["direction"] = [metric_info(m).direction.value for m in df["metric"]]
        df["lower_is_better"] = df["direction"] == Direction.LOWER.value
    return df


def all_pairs(store: Store, experiment: str, metrics: list[str] | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Every pair of the experiment's runs compared on each metric (default: the primary metric),
    paired over the questions both scored; p-values Holm-corrected across the whole family (all
    pairs x metrics), so the chance of any false "significant" in the table is at most ``alpha``.

    Runs are in leaderboard order (best first by the primary metric); in each row ``run_a`` ranks
    above ``run_b`` and ``diff = b - a``.

    Raises:
        StoreError: the experiment is unknown or has fewer than two runs.
        MetricError: a metric asked for is unknown.
    """
    board = store.leaderboard(experiment)
    if len(board) < 2:
        raise StoreError(f"experiment {experiment!r} has {len(board)} run(s): nothing to compare")
    metrics = metrics or [primary_metric(board)]
    for m in metrics:
        metric_info(m)
    order = list(best_first(board, primary_metric(board))["run_id"])
    values = {r: store.question_values(r) for r in order}
    return pairs_table(values, order, metrics, alpha)


def pairs_table(values: Mapping[str, pd.DataFrame], order: Sequence[str], metrics: Sequence[str], alpha: float = ALPHA) -> pd.DataFrame:
    """:func:`all_pairs` on per-question values already read (``order``: the runs, best first)."""
    columns = ["run_a", "run_b", "metric", "n", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value", "test", "p_holm", "significant"]
    rows = []
    for m in metrics:
        series = {r: metric_values(values[r], m) for r in order}
        for i, ra in enumerate(order):
            for rb in order[i + 1:]:
                common = [q for q in series[ra].index if q in series[rb].index]
                if common:
                    res = paired_difference([float(series[ra][q]) for q in common], [float(series[rb][q]) for q in common])
                    rows.append({"run_a": ra, "run_b": rb, "metric": m, **asdict(res)})
    df = pd.DataFrame(rows, columns=[c for c in columns if c not in ("p_holm", "significant")])
    df["p_holm"] = holm(df["p_value"].tolist()) if not df.empty else []
    df["significant"] = df["p_holm"] < alpha
    return df[columns]


def power_vs_best(values: Mapping[str, pd.DataFrame], best: str, metric: str, *, delta: float | None = None, alpha: float = ALPHA,
                  power: float = 0.8) -> pd.DataFrame:
    """For each other run against ``best``: the questions both scored, the standard deviation of the
    per-question differences, the smallest difference this sample can detect (paired t, two-sided
    ``alpha``, ``power``; :mod:`workbench.evaluation.power`) and, with ``delta``, the questions a
    true difference of ``delta`` needs."""
    columns = ["run_id", "n", "diff", "sd", "detectable", "needed"]
    ref = metric_values(values[best], metric)
    rows = []
    for run_id, v in values.items():
        if run_id == best:
            continue
        other = metric_values(v, metric)
        d = [float(other[q]) - float(ref[q]) for q in ref.index if q in other.index]
        sd = float(pd.Series(d).std(ddof=1)) if len(d) > 1 else None
        rows.append({"run_id": run_id, "n": len(d), "diff": sum(d) / len(d) if d else None, "sd": sd,
                     "detectable": detectable_difference(sd, len(d), alpha=alpha, power=power) if sd is not None else None,
                     "needed": questions_needed(sd, delta, alpha=alpha, power=power) if sd is not None and delta else None})
    return pd.DataFrame(rows, columns=columns)


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


def power_summary(table: pd.DataFrame, metric: str, delta: float | None = None, alpha: float = ALPHA, power_: float = 0.8) -> dict:
    """:func:`power_vs_best` in one sentence (``text``), with its numbers: the median pair and the
    noisiest pair (the one with the largest spread of differences)."""
    measured = table.dropna(subset=["sd"])
    if measured.empty:
        return {"questions_now": int(table["n"].max()) if len(table) else 0, "text": "too few common questions to measure a spread"}
    n_now = int(measured["n"].max())
    how = f"paired t-test, two-sided alpha {alpha:g}, power {power_:.0%}, from the spread of per-question differences"
    out = {"questions_now": n_now, "detectable_median": float(measured["detectable"].median()),
           "detectable_max": float(measured["detectable"].max())}
    text = (f"With {n_now} questions, a difference in {label(metric)} of about {out['detectable_median']:.3g} is detectable "
            f"(median over {len(measured)} comparisons with the best run; up to {out['detectable_max']:.3g} for the noisiest; {how}).")
    needed = measured["needed"].dropna()
    if delta:
        if needed.empty:
            text += f" No pair has a spread to size a difference of {delta:g} from."
        else:
            out |= {"needed_median": int(needed.median()), "needed_max": int(needed.max())}
            text += (f" To detect a difference of {delta:g}: about {out['needed_max']} questions for every pair "
                     f"({out['needed_median']} for the median pair); you have {n_now}.")
    return out | {"text": text}


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
