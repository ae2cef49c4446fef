"""Comparisons between runs: paired differences with intervals and p-values, flipped questions,
regression gates, and exports that let anyone re-score a run with their own tools.

Two runs are only compared on the questions both answered (paired by ``query_id``); a metric that
is ``None`` for a question in either run drops that question from that metric's comparison.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .config.experiment import ExperimentSpec
from .errors import StoreError, WorkbenchError
from .evaluation.retrieval import ranked_docs
from .evaluation.stats import holm, paired_difference
from .report.leaderboard import LOWER_IS_BETTER, primary_metric
from .data.types import Hit
from .evaluation.retrieval import doc_scores
from .store import Store

ROW_COLUMNS = {"run_id", "query_id", "position", "question", "gold_answers", "relevant", "hits", "answer", "error",
               "tokens_estimated", "trace", "code_version"}
# Per-question columns that are compared like metrics (lower is better).
PER_QUESTION_COSTS = ["retrieval_latency_s", "rerank_latency_s", "generation_latency_s", "ttft_s", "prompt_tokens", "completion_tokens", "cost_usd"]


def metric_columns(rows: pd.DataFrame) -> list[str]:
    return [c for c in rows.columns if c not in ROW_COLUMNS and c not in PER_QUESTION_COSTS]


def _paired(rows_a: pd.DataFrame, rows_b: pd.DataFrame, metric: str) -> tuple[list[float], list[float], list[str]]:
    a = rows_a.set_index("query_id")[metric] if metric in rows_a else pd.Series(dtype=float)
    b = rows_b.set_index("query_id")[metric] if metric in rows_b else pd.Series(dtype=float)
    common = [q for q in a.index if q in b.index and pd.notna(a[q]) and pd.notna(b[q])]
    return [float(a[q]) for q in common], [float(b[q]) for q in common], common


def compare_runs(store: Store, run_a: str, run_b: str, metrics: list[str] | None = None) -> pd.DataFrame:
    """Per-metric paired comparison of run B against run A (diff = B - A)."""
    ra, rb = store.run(run_a)["run_id"], store.run(run_b)["run_id"]
    qa, qb = store.questions(ra), store.questions(rb)
    if qa.empty or qb.empty:
        raise StoreError(f"run {ra if qa.empty else rb} has no stored questions")
    metrics = metrics or [m for m in metric_columns(qa) if m in qb] + [c for c in PER_QUESTION_COSTS if c in qa and c in qb]
    out = []
    for m in metrics:
        a, b, _ = _paired(qa, qb, m)
        if not a:
            continue
        res = paired_difference(a, b)
        out.append({"metric": m, **asdict(res)})
    df = pd.DataFrame(out)
    if not df.empty:
        df["lower_is_better"] = [m in LOWER_IS_BETTER or m in PER_QUESTION_COSTS for m in df["metric"]]
    return df


def flipped_questions(store: Store, run_a: str, run_b: str, metric: str) -> pd.DataFrame:
    """Questions whose ``metric`` changed between the runs, worst regressions first."""
    ra, rb = store.run(run_a)["run_id"], store.run(run_b)["run_id"]
    qa, qb = store.questions(ra), store.questions(rb)
    a, b, ids = _paired(qa, qb, metric)
    text = qa.set_index("query_id")["question"]
    rows = [{"query_id": q, "question": text[q], "a": x, "b": y, "change": y - x} for q, x, y in zip(ids, a, b) if x != y]
    return pd.DataFrame(rows, columns=["query_id", "question", "a", "b", "change"]).sort_values("change", kind="stable")


def indistinguishable_from_best(store: Store, experiment: str, metric: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """For each run: its paired comparison with the best run on ``metric``, Holm-corrected.

    A run ties with the best when the corrected p-value is at least ``alpha``.
    """
    board = store.leaderboard(experiment)
    metric = metric or primary_metric(board)
    board = board[board[metric].notna()]
    best = board.sort_values([metric, "run_id"], ascending=[metric in LOWER_IS_BETTER, True]).iloc[0]["run_id"]
    best_rows = store.questions(best)
    rows, pvals = [], []
    for run_id in board["run_id"]:
        if run_id == best:
            continue
        a, b, _ = _paired(best_rows, store.questions(run_id), metric)
        res = paired_difference(a, b)
        rows.append({"run_id": run_id, "diff_vs_best": res.diff, "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value, "test": res.test})
        pvals.append(res.p_value)
    adjusted = holm(pvals) if pvals else []
    for row, p in zip(rows, adjusted):
        row["p_holm"] = p
        row["ties_best"] = p >= alpha
    rows.insert(0, {"run_id": best, "diff_vs_best": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0, "test": "-", "p_holm": 1.0, "ties_best": True})
    out = pd.DataFrame(rows)
    out["metric"] = metric
    out["is_best"] = out["run_id"] == best
    return out


GAIN_METRICS = ["ndcg_at_10", "mrr", "hit_at_1", "hit_at_3", "f1", "exact_match", "contains_gold"]


def reranker_gain(store: Store, experiment: str, metrics: list[str] | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Reranker gain: for every reranked run, the paired difference of each metric against the same
    configuration without the reranker (same chunking, embedder, retriever, LLM), on the same
    questions, Holm-corrected over the table, with the latency and cost the reranker adds."""
    board = store.leaderboard(experiment)
    keys = ["chunking", "embedding", "retrieval", "generation"]
    plain = {tuple(r[k] for k in keys): r["run_id"] for _, r in board[board["rerank"] == "-"].iterrows()}
    rows = []
    for _, r in board[board["rerank"] != "-"].iterrows():
        base_id = plain.get(tuple(r[k] for k in keys))
        if base_id is None:
            continue
        qa, qb = store.questions(base_id), store.questions(r["run_id"])
        added_latency = _paired(qa, qb, "retrieval_latency_s")
        extra = {
            "added_latency_mean_s": (sum(added_latency[1]) - sum(added_latency[0])) / len(added_latency[0]) if added_latency[0] else None,
            "rerank_latency_p50_s": _value(board, r["run_id"], "rerank_latency_p50_s"),
            "added_cost_per_question_usd": (_value(board, r["run_id"], "cost_per_question_usd") or 0.0) - (_value(board, base_id, "cost_per_question_usd") or 0.0),
        }
        for m in metrics or GAIN_METRICS:
            a, b, _ = _paired(qa, qb, m)
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


# -- regression gates --------------------------------------------------------------------------

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


def baseline_run_for(store: Store, spec: ExperimentSpec, run_id: str) -> str | None:
    """The baseline run a run is gated against: the named run, or the stored experiment's run with
    the same axes, else that experiment's best run."""
    if spec.baseline is None:
        return None
    if spec.baseline.run_id:
        return store.run(spec.baseline.run_id)["run_id"]
    base = store.leaderboard(spec.baseline.experiment)
    if base.empty:
        raise StoreError(f"baseline experiment {spec.baseline.experiment!r} has no runs")
    mine = store.runs().set_index("run_id").loc[run_id]
    same = base[(base["chunking"] == mine["chunking"]) & (base["embedding"] == mine["embedding"])
                & (base["retrieval"] == mine["retrieval"]) & (base["generation"] == mine["generation"])
                & (base["rerank"] == (mine.get("rerank") if isinstance(mine.get("rerank"), str) else "-"))]
    if not same.empty:
        return same.iloc[0]["run_id"]
    m = primary_metric(base)
    return base.sort_values([m, "run_id"], ascending=[False, True]).iloc[0]["run_id"]


def _value(board: pd.DataFrame, run_id: str, metric: str) -> float | None:
    row = board[board["run_id"] == run_id]
    if row.empty or metric not in row:
        return None
    v = row.iloc[0][metric]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


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
            value = _value(board, run_id, metric)
            if value is None:
                results.append(GateResult(run_id, metric, None, None, "present", False, None, f"{metric}: no value for this run"))
                continue
            if gate.min is not None:
                ok = value >= gate.min
                results.append(GateResult(run_id, metric, value, None, f">= {gate.min}", ok, None,
                                          f"{metric} = {value:.4g} {'>=' if ok else '<'} min {gate.min}"))
            if gate.max is not None:
                ok = value <= gate.max
                results.append(GateResult(run_id, metric, value, None, f"<= {gate.max}", ok, None,
                                          f"{metric} = {value:.4g} {'<=' if ok else '>'} max {gate.max}"))
            for bound, sign in ((gate.max_drop, -1), (gate.max_increase, 1)):
                if bound is None:
                    continue
                base = _value(base_board, base_id, metric) if base_board is not None else None
                if base is None:
                    results.append(GateResult(run_id, metric, value, None, "baseline", False, None, f"{metric}: baseline {base_id} has no value"))
                    continue
                change = (value - base) * sign  # positive = worse
                p = None
                if gate.significant:
                    a, b, _ = _paired(store.questions(base_id), store.questions(run_id), metric)
                    if not a:
                        raise WorkbenchError(f"gate {metric!r} requires significance, but {metric} is not a per-question metric")
                    p = paired_difference(a, b).p_value
                beyond = change > bound
                ok = not beyond or (gate.significant and p >= gate.alpha)
                word = "drop" if sign < 0 else "increase"
                sig = "" if p is None else f", p={p:.3g} ({'significant' if p < gate.alpha else 'not significant'} at {gate.alpha})"
                results.append(GateResult(run_id, metric, value, base, f"{word} <= {bound}", ok, p,
                                          f"{metric} = {value:.4g} vs baseline {base:.4g} ({base_id[:10]}): {word} {max(change, 0):.4g} "
                                          f"{'>' if beyond else '<='} max {bound}{sig}"))
    return results


def _single_board(store: Store, run_id: str) -> pd.DataFrame:
    agg = store.aggregates([run_id])
    wide = agg.pivot(index="run_id", columns="metric", values="value").reset_index()
    return wide


# -- exports -----------------------------------------------------------------------------------

def export_run(store: Store, run_id: str, fmt: str, path: Path | None) -> str:
    """Write a run as a TREC run file (document level), JSON lines or CSV; returns the text."""
    run = store.run(run_id)
    rows = store.questions(run["run_id"])
    if fmt == "trec":
        lines = []
        for _, r in rows.iterrows():
            scores = doc_scores(tuple(Hit(h["chunk_id"], h["doc_id"], h["score"]) for h in r["hits"]))
            for rank, doc_id in enumerate(ranked_docs(scores), start=1):
                lines.append(f"{r['query_id']} Q0 {doc_id} {rank} {scores[doc_id]:.6f} {run['run_id']}")
        text = "\n".join(lines) + ("\n" if lines else "")
    elif fmt in ("jsonl", "csv"):
        records = []
        for _, r in rows.iterrows():
            rec = {"query_id": r["query_id"], "question": r["question"], "answer": r["answer"], "error": r["error"],
                   "gold_answers": r["gold_answers"], "retrieved_doc_ids": list(dict.fromkeys(h["doc_id"] for h in r["hits"])),
                   "retrieved_chunk_ids": [h["chunk_id"] for h in r["hits"]]}
            for c in metric_columns(rows) + PER_QUESTION_COSTS:
                if c in r:
                    v = r[c]
                    rec[c] = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
            records.append(rec)
        if fmt == "jsonl":
            text = "".join(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n" for rec in records)
        else:
            import io

            buf = io.StringIO()
            fields = list(records[0]) if records else ["query_id"]
            writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            for rec in records:
                writer.writerow({k: json.dumps(v, default=_json_default) if isinstance(v, list) else v for k, v in rec.items()})
            text = buf.getvalue()
    else:
        raise WorkbenchError(f"unknown export format {fmt!r}; known: csv, jsonl, trec")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return text


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj))
