"""The KPIs teams report weekly: evaluation pass rate, cost per successful task, token-budget adherence.

- **Pass** (experiment field ``pass``): a question passes when its value of every criterion's
  metric is within the criterion's ``min``/``max``. A criterion whose metric does not apply to the
  question (no gold answer, nothing cited: ``None``) is not checked for it; a question whose call
  failed does not pass (a failed task is not a success); a question no criterion applies to is
  unmeasured. Per question ``passed`` (0/1); per run ``pass_rate`` with a 95% Wilson interval.
- **Cost per successful task** (``cost_per_success_usd``): the run's cost -- query embedding,
  reranking and generation of every question, failed ones included -- divided by the number of
  questions that passed, with a 95% percentile-bootstrap interval that resamples questions (cost
  and pass flag together). None when no question passed (no success to divide by), or when a cost
  is unknown (a model missing from the price table); a failed question adds what was recorded of
  its cost (its unanswered call counts 0). The judge (evaluation) and the one-off index
  build (``index_cost_usd``) are not in it.
- **Token budget** (``token_budget``): per question ``within_token_budget`` (prompt + completion
  tokens at most the budget; None when no tokens were counted); per run ``token_budget_adherence``
  with a 95% Wilson interval.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.stats import binomtest

from .aggregate import N_RESAMPLES, SEED, clean_values
from .registry import metric_info

# Per-question values a criterion can name beyond the row's metrics (row columns, and two sums).
ROW_VALUES = ("retrieval_latency_s", "rerank_latency_s", "generation_latency_s", "ttft_s", "prompt_tokens", "completion_tokens",
              "cost_usd", "latency_s", "tokens_per_question")
# Registry metrics that exist only per run (percentiles, rates over questions, one-off costs).
RUN_LEVEL = frozenset({"error_rate", "truncation_rate", "cost_per_question_usd", "index_cost_usd", "cost_per_success_usd", "pass_rate",
                       "passed", "token_budget_adherence", "attack_success_rate", "pii_leakage_rate", "pii_in_answer_rate",
                       "pii_in_context_rate", "judge_flip_rate", "judge_human_accuracy", "judge_human_kappa"})
COST_PARTS = ("cost_usd", "embedding_cost_usd", "rerank_cost_usd")


def pass_metric_problem(name: str) -> str | None:
    """Why ``name`` cannot be a pass criterion (unknown, or a per-run number); None when it can.

    Raises nothing: the caller names the experiment file and field in its error."""
    try:
        metric_info(name)
    except Exception as exc:  # MetricError, with a suggestion
        return str(exc).split("; metrics are declared")[0]
    if name in RUN_LEVEL or name.endswith(("_p50_s", "_p95_s")):
        return f"{name!r} is a per-run number; a pass criterion needs a per-question metric (e.g. generation_latency_s, not its P95)"
    return None


def question_values(row: Mapping, metrics: Mapping) -> dict:
    """Everything a criterion can name for one question: its metrics, latencies, tokens and cost."""
    values = {**{k: row.get(k) for k in ROW_VALUES if k in row}, **metrics}
    lat = [row.get(k) for k in ("retrieval_latency_s", "generation_latency_s") if row.get(k) is not None]
    values["latency_s"] = sum(lat) if lat else None
    tokens = [row.get(k) for k in ("prompt_tokens", "completion_tokens")]
    values["tokens_per_question"] = None if tokens[0] is None else sum(t or 0 for t in tokens)
    return values


def passed(values: Mapping, criteria: Mapping[str, tuple[float | None, float | None]], failed: bool) -> float | None:
    """1.0 when every applicable criterion holds, 0.0 when one does not or the question failed,
    None when no criterion applies."""
    if failed:
        return 0.0
    checked = False
    for metric, (lo, hi) in criteria.items():
        v = values.get(metric)
        if v is None or v != v:  # not applicable (None or NaN)
            continue
        checked = True
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return 0.0
    return 1.0 if checked else None


def kpi_metrics(row: Mapping, metrics: Mapping, criteria: Mapping[str, tuple[float | None, float | None]],
                token_budget: int | None) -> dict:
    """The KPI metrics of one stored question row: ``passed`` and ``within_token_budget`` (when configured)."""
    out = {}
    if criteria:
        out["passed"] = passed(question_values(row, metrics), criteria, bool(row.get("error")))
    if token_budget is not None:
        used = question_values(row, metrics)["tokens_per_question"]
        out["within_token_budget"] = None if used is None else float(used <= token_budget)
    return out


def _wilson(metric: str, values: list[float]) -> dict:
    k, n = int(round(sum(values))), len(values)
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return {"metric": metric, "value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n}


def cost_parts(rows) -> list[str]:
    """The cost columns of the stages a run used: generation when it answered anything, query
    embedding and reranking when their costs were recorded (they are, whenever the stage ran)."""
    answered = "answer" in rows and rows["answer"].notna().any()
    return [k for k in COST_PARTS if k in rows and (k != "cost_usd" or answered)]


def question_cost(row: Mapping, parts: list[str]) -> float | None:
    """A question's cost over the stages the run used; None when one has no known price. A
    question whose call failed counts what was recorded, a missing part as 0 (no answer was bought)."""
    total = 0.0
    for k in parts:
        v = row.get(k)
        if v is None or v != v:
            if not row.get("error"):
                return None
            continue
        total += float(v)
    return total


def cost_per_success(costs: list[float], passes: list[float]) -> dict | None:
    """Total cost / passing questions, with a paired percentile-bootstrap interval (questions
    resampled with their cost and pass flag). An upper bound that is unbounded -- over 2.5% of the
    resamples hold no passing question -- is stored as None.

    Resampled here rather than by ``scipy.stats.bootstrap``: the ratio is infinite in resamples
    without a pass, where scipy's standard-error step warns and its interval turns NaN."""
    if not passes or sum(passes) == 0:
        return None
    c, p = np.asarray(costs, float), np.asarray(passes, float)
    value = float(c.sum() / p.sum())
    idx = np.random.default_rng(SEED).integers(0, len(c), size=(N_RESAMPLES, len(c)))
    cs, ps = c[idx].sum(axis=1), p[idx].sum(axis=1)
    ratios = np.where(ps > 0, cs / np.where(ps > 0, ps, 1), np.inf)
    # order statistics (no interpolation, so an infinite neighbour never turns a bound into NaN)
    lo, hi = float(np.quantile(ratios, 0.025, method="lower")), float(np.quantile(ratios, 0.975, method="higher"))
    return {"metric": "cost_per_success_usd", "value": value, "ci_low": lo, "ci_high": hi if np.isfinite(hi) else None, "n": len(c)}


def kpi_aggregates(rows) -> list[dict]:
    """Per run: ``pass_rate`` and ``token_budget_adherence`` (Wilson) and ``cost_per_success_usd``."""
    out = []
    for column, name in (("passed", "pass_rate"), ("within_token_budget", "token_budget_adherence")):
        if column in rows:
            values = clean_values(rows[column])
            if values:
                out.append(_wilson(name, values))
    if "passed" in rows:
        parts = cost_parts(rows)
        records = [{**r, "error": r.get("error") if isinstance(r.get("error"), str) else None} for r in rows.to_dict("records")]
        pairs = [(question_cost(r, parts), r["passed"]) for r in records if clean_values([r["passed"]])]
        if pairs and all(c is not None for c, _ in pairs):
            found = cost_per_success([c for c, _ in pairs], [float(p) for _, p in pairs])
            if found is not None:
                out.append(found)
    return out
