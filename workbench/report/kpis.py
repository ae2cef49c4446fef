"""The report's "LLM judge" and "KPIs" sections, from a :class:`~workbench.report.data.ReportData`.

The judge section puts the judge's own noise next to its metric: how many verdicts could not be
read (unmeasured, never 0), how often repeats agree and flip, and its agreement with people's
labels (accuracy, Cohen's kappa). The KPI section shows the experiment's pass rate, cost per
passing question and token-budget adherence, and what each stage costs. Numbers come from the
stored aggregates (with their 95% intervals) and the per-question values; nothing is recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..evaluation.registry import description, label
from .data import ReportData
from .html import esc, metric_cell, table
from .leaderboard import as_float, fmt

JUDGE_COLUMNS = ("judge_faithful", "judge_repeat_agreement", "judge_flip_rate", "judge_agrees", "judge_human_accuracy", "judge_human_kappa")
# Each stage's cost column, with its heading in the table
STAGE_COSTS = {"index_cost_usd": "Index build (once)", "embedding_cost_usd": "Query embedding / question",
               "rerank_cost_usd": "Reranking / question", "cost_per_question_usd": "Generation / question",
               "judge_cost_usd": "Judge / question"}


def _spec(data: ReportData) -> Mapping:
    return data.spec if isinstance(data.spec, Mapping) else {}


def _values(data: ReportData, run_id: str, metric: str) -> pd.Series:
    v = data.values.get(run_id, pd.DataFrame())
    return pd.to_numeric(v[metric], errors="coerce") if metric in v else pd.Series(dtype=float)


def _with_ci(r: pd.Series, metric: str) -> str:
    return metric_cell(metric, r.get(metric), r.get(f"{metric}_ci_low"), r.get(f"{metric}_ci_high"))


def judge_counts(data: ReportData, run_id: str, repeats: int) -> dict:
    """Answers judged, answers with a readable verdict, and unreadable verdicts of ``repeats`` each."""
    unreadable = _values(data, run_id, "judge_unparseable").dropna()
    measured = int(_values(data, run_id, "judge_faithful").notna().sum())
    return {"judged": len(unreadable), "measured": measured, "verdicts": len(unreadable) * repeats,
            "unreadable": int(round(float(unreadable.sum()) * repeats)),
            "labelled": int(_values(data, run_id, "human_faithful").notna().sum())}


def judge_html(data: ReportData) -> str:
    """Per run: the judge's verdict with its interval, how many answers it is measured on, the
    unreadable verdicts, agreement and flips between repeats, and agreement with human labels."""
    judge = _spec(data).get("judge")
    if not judge or "judge_unparseable" not in data.board:
        return ""
    repeats = int(judge.get("repeats") or 1)
    header = ["#", "run", label("judge_faithful"), "measured on", "unreadable verdicts",
              *[label(m) if m != "judge_agrees" else "Judge vs hallucination flag" for m in JUDGE_COLUMNS[1:]], "human labels"]
    rows = []
    for _, r in data.board.iterrows():
        c = judge_counts(data, r["run_id"], repeats)
        if not c["judged"]:
            continue
        faithful = _with_ci(r, "judge_faithful") if c["measured"] else '<td class="error">not measured: no readable verdict</td>'
        rows.append([str(r["rank"]), str(r["label"]), faithful, f"{c['measured']} of {c['judged']} answers",
                     f'<td class="{"error" if c["unreadable"] else ""}">{c["unreadable"]} of {c["verdicts"]} verdicts unreadable</td>',
                     *[_with_ci(r, m) for m in JUDGE_COLUMNS[1:]], str(c["labelled"])])
    setup = (f"{repeats} repeats per answer (seeds {judge.get('seed', 0)} to {int(judge.get('seed', 0)) + repeats - 1}, "
             f"temperature {judge.get('temperature', 0)})" if repeats > 1 else "one verdict per answer (set judge.repeats to measure its noise)")
    notes = (f"<p class='note'>Judge {esc(judge.get('provider'))}:{esc(judge.get('model'))}, {esc(setup)}. "
             "An unreadable verdict (no yes or no) is counted here and left unmeasured, never scored 0. "
             f"{esc(label('judge_flip_rate'))} measures {esc(description('judge_flip_rate'))} (95% Wilson interval); "
             f"{esc(label('judge_human_kappa'))}: {esc(description('judge_human_kappa'))}, from labels given with "
             "<code>workbench questions review --run RUN_ID</code> (statsmodels' asymptotic 95% interval).</p>")
    return "<h2>LLM judge</h2>" + table(header, rows, "sortable") + notes


def _criteria_text(spec: Mapping) -> str:
    parts = []
    for metric, bound in (spec.get("pass_criteria") or {}).items():
        parts += [f"{label(metric)} ≥ {fmt(metric, bound['min'])}" for _ in [0] if bound.get("min") is not None]
        parts += [f"{label(metric)} ≤ {fmt(metric, bound['max'])}" for _ in [0] if bound.get("max") is not None]
    return ", ".join(parts)


def kpi_html(data: ReportData) -> str:
    """Pass rate, cost per passing question and token-budget adherence (where the experiment sets
    ``pass`` and ``token_budget``), and the cost of each stage."""
    spec = _spec(data)
    kpis = [m for m in ("pass_rate", "cost_per_success_usd", "token_budget_adherence") if m in data.board and data.board[m].notna().any()]
    costs = [m for m in STAGE_COSTS if m in data.board and data.board[m].notna().any()]
    if not kpis and not any((pd.to_numeric(data.board[m], errors="coerce").fillna(0) != 0).any() for m in costs):
        return ""  # nothing configured and every stage free (local models): no section
    header = ["#", "run", *[label(m) for m in kpis], *[STAGE_COSTS[m] for m in costs]]
    rows = []
    for _, r in data.board.iterrows():
        rows.append([str(r["rank"]), str(r["label"]), *[_with_ci(r, m) for m in kpis], *[_with_ci(r, m) for m in costs]])
    notes = []
    if spec.get("pass_criteria"):
        notes.append(f"A question passes when {esc(_criteria_text(spec))} (a criterion that does not apply to a question is not "
                     "checked; a question whose call failed does not pass). Pass rate: 95% Wilson interval. Cost per passing "
                     "question: the run's query-embedding, rerank and generation cost divided by the questions that passed "
                     "(95% bootstrap interval; '-' as upper bound: unbounded).")
    if spec.get("token_budget"):
        notes.append(f"Token budget: {int(spec['token_budget'])} prompt + completion tokens per question.")
    notes.append("Costs from the price table (workbench/providers/prices.yaml); local models cost 0, an unpriced model shows '-'. "
                 "The index is paid once per index build, the others per question.")
    missing = [str(r["label"]) for _, r in data.board.iterrows() if "pass_rate" in kpis and as_float(r.get("pass_rate")) is None]
    if missing:
        notes.append(f"No pass rate for: {esc('; '.join(missing))} (no criterion applied to any of their questions).")
    return "<h2>KPIs and cost per stage</h2>" + table(header, rows, "sortable") + "".join(f"<p class='note'>{n}</p>" for n in notes)
