"""Leaderboard formatting shared by the CLI, the notebooks and the report.

Which columns a reader sees first, in which order, and how a metric with its interval is written.
"""

from __future__ import annotations

import math

import pandas as pd

AXES = ["chunking", "embedding", "retrieval", "rerank", "generation"]
# Headline metrics in reading order; those a run does not have are skipped.
HEADLINE = ["hit_at_5", "recall_at_5", "mrr", "ndcg_at_10", "map", "chunk_hit_at_5", "chunk_mrr", "chunk_ndcg_at_10", "exact_match", "f1", "contains_gold",
            "citation_accuracy", "answer_support", "hallucination", "refusal_correct", "false_refusal", "retrieval_latency_p50_s", "rerank_latency_p50_s", "generation_latency_p50_s",
            "generation_latency_p95_s", "ttft_p50_s", "prompt_tokens", "completion_tokens", "cost_per_question_usd",
            "error_rate", "attack_success_rate", "pii_leakage_rate"]
# Metrics where lower is better (used to pick the best run and the Pareto frontier).
LOWER_IS_BETTER = {m for m in HEADLINE if m.endswith("_s") or m in ("prompt_tokens", "completion_tokens", "cost_per_question_usd", "error_rate", "refusal", "hallucination", "false_refusal",
                                                                     "attack_success_rate", "pii_leakage_rate")}


def primary_metric(board: pd.DataFrame) -> str:
    """The quality metric runs are ranked by: answer F1 when answers exist, else nDCG@10."""
    for m in ("f1", "ndcg_at_10", "mrr"):
        if m in board and board[m].notna().any():
            return m
    raise ValueError("no quality metric in the leaderboard")


def headline_columns(board: pd.DataFrame) -> list[str]:
    return [m for m in HEADLINE if m in board and board[m].notna().any()]


def fmt_value(metric: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric.endswith("_usd"):
        return f"${value:.5f}"
    if metric.endswith("_s"):
        return f"{value:.3f}s"
    if metric.endswith("tokens"):
        return f"{value:.0f}"
    return f"{value:.3f}"


def fmt_with_ci(metric: str, value, low, high) -> str:
    text = fmt_value(metric, value)
    if text == "-" or low is None or (isinstance(low, float) and math.isnan(low)) or low == high:
        return text
    return f"{text} [{fmt_value(metric, low)}, {fmt_value(metric, high)}]"


def sort_board(board: pd.DataFrame) -> pd.DataFrame:
    m = primary_metric(board)
    return board.sort_values([m, "run_id"], ascending=[False, True], na_position="last").reset_index(drop=True)
