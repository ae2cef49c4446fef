"""Per-run aggregates with 95% bootstrap intervals, computed from the stored per-question rows.

Quality metrics are means over the questions where they apply; latency is summarised by its
P50/P95 (with a bootstrap interval of the percentile); tokens and cost are per-question means;
``error_rate`` counts failed questions. Aggregates are always recomputed from the stored rows, so a
resumed run gets exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from .registry import metric_columns as row_metric_columns
from .stats import bootstrap_ci, percentile

N_RESAMPLES = 1000
SEED = 0
LATENCY_COLUMNS = {"retrieval_latency_s": "retrieval_latency", "rerank_latency_s": "rerank_latency",
                   "generation_latency_s": "generation_latency", "ttft_s": "ttft"}
MEAN_COLUMNS = {"prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens", "cost_usd": "cost_per_question_usd"}


def clean_values(values) -> list[float]:
    """The measured values of a column as floats: ``None`` (not applicable) and NaN dropped."""
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def _percentile_ci(values: list[float], q: float) -> tuple[float, float, float]:
    point = percentile(values, q)
    if len(set(values)) <= 1:
        return point, point, point
    res = sps.bootstrap((np.asarray(values),), lambda x, axis: np.percentile(x, q, axis=axis), n_resamples=N_RESAMPLES,
                        method="percentile", rng=np.random.default_rng(SEED), vectorized=True)
    return point, float(res.confidence_interval.low), float(res.confidence_interval.high)


def _row(metric: str, values: list[float], fn) -> dict:
    value, lo, hi = fn(values)
    return {"metric": metric, "value": value, "ci_low": lo, "ci_high": hi, "n": len(values)}


def aggregate_rows(rows: pd.DataFrame, metric_columns: list[str] | None = None) -> list[dict]:
    """Aggregate a run's per-question DataFrame (``Store.questions``) into metric rows.

    Raises:
        MetricError: a column is not a known metric (see :mod:`.registry`).
    """
    if rows.empty:
        return []
    # latency, tokens and cost are summarised below, under their own names
    metric_columns = metric_columns or [c for c in row_metric_columns(rows.columns) if c not in LATENCY_COLUMNS and c not in MEAN_COLUMNS]
    mean = lambda v: bootstrap_ci(v, n_resamples=N_RESAMPLES, seed=SEED)  # noqa: E731
    out = []
    for col in metric_columns:
        values = clean_values(rows[col])
        if values:
            out.append(_row(col, values, mean))
    for col, name in LATENCY_COLUMNS.items():
        if col in rows:
            values = clean_values(rows[col])
            if values:
                out.append(_row(f"{name}_p50_s", values, lambda v: _percentile_ci(v, 50)))
                out.append(_row(f"{name}_p95_s", values, lambda v: _percentile_ci(v, 95)))
    for col, name in MEAN_COLUMNS.items():
        if col in rows:
            values = clean_values(rows[col])
            if values:
                out.append(_row(name, values, mean))
    out.append(_row("error_rate", [float(e is not None and e == e) for e in rows["error"]], mean))
    return out
