"""Leaderboard formatting shared by the CLI, the notebooks and the report: the order runs are
listed in and how a metric with its interval is written. Which metrics are shown, and which way
each is better, come from the metric registry (:mod:`workbench.evaluation.registry`).
"""

from __future__ import annotations

import math

import pandas as pd

from ..evaluation.registry import best_first, headline_columns, primary_metric
from ..store import AXES

__all__ = ["AXES", "as_float", "fmt", "fmt_value", "fmt_with_ci", "headline_columns", "sort_board"]


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


def fmt(metric: str, value) -> str:
    """:func:`fmt_value` as the report writes it: latencies in ms below a second (retrieval is
    often sub-millisecond), tokens per question whole."""
    v = as_float(value)
    if v is not None and metric.endswith("_s") and not metric.endswith("tokens_s"):
        if abs(v) < 1:
            return f"{v * 1000:.1f} ms" if abs(v) < 0.01 else f"{v * 1000:.0f} ms"
        return f"{v:.2f} s"
    if v is not None and metric == "tokens_per_question":
        return f"{v:.0f}"
    return fmt_value(metric, v)


def as_float(value) -> float | None:
    """``value`` as a float; None for None, NaN and anything that is not a number."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


RACE_GROUPS = {"eliminated": 2}  # status -> group; runs stopped early (a race's tie, a budget) are group 1


def evaluation_group(board: pd.DataFrame) -> pd.Series:
    """0: every planned question evaluated; 1: stopped early (a race's tie set, a budget); 2: eliminated
    by a race. A run is only ranked against runs of its own group."""
    group = board["status"].map(lambda s: RACE_GROUPS.get(str(s), 0)) if "status" in board else pd.Series(0, index=board.index)
    if "n_planned" in board and "n_questions" in board:
        group = group.where(~((group == 0) & (board["n_questions"] < board["n_planned"])), 1)
    return group


def sort_board(board: pd.DataFrame) -> pd.DataFrame:
    """Best run first by the primary metric (in its direction), ties by run id, unmeasured last;
    runs that saw fewer questions (stopped early, eliminated by a race) after those that saw them
    all, so a partly evaluated run is never ranked as if it had seen every question."""
    return ranked_by(board, primary_metric(board))


def ranked_by(board: pd.DataFrame, metric: str) -> pd.DataFrame:
    """:func:`sort_board` by ``metric``: best first within each :func:`evaluation_group`."""
    ranked = best_first(board, metric)
    group = evaluation_group(ranked)
    return pd.concat([ranked[group == g] for g in sorted(group.unique())]).reset_index(drop=True)
