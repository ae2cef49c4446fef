"""The metric registry: every metric's direction, kind, label and meaning, defined once.

The leaderboard sorts by it, the report picks the best run and draws ↓ arrows with it, ``compare``
says which way a paired difference is good with it, and aggregation and exports use it to tell
metric columns from the other columns of a stored question row. These used to be lists in four
modules that disagreed; now a metric that is not here is an error
(:class:`~workbench.errors.MetricError`, with a suggestion), never a silent "higher is better".

Adding a metric is one line in :data:`METRICS` (a fixed name) or :data:`FAMILIES` (a name pattern
such as ``hit_at_{k}``). Two rules derive names from others, so they need no line of their own:
``chunk_<m>`` for every retrieval metric ``<m>`` (evaluation/spans.py), and ``<x>_p50_s`` /
``<x>_p95_s`` for every per-question latency ``<x>_s`` (evaluation/aggregate.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import NamedTuple

import pandas as pd
from pydantic import BaseModel, ConfigDict

from ..errors import MetricError, did_you_mean


class Direction(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"
    NONE = "none"  # counts and descriptive rates: neither value is better


class Kind(StrEnum):
    RETRIEVAL = "retrieval"
    CHUNK_RETRIEVAL = "chunk retrieval"
    ANSWER = "answer"
    GROUNDEDNESS = "groundedness"
    JUDGE = "judge"
    LATENCY = "latency"
    COST = "cost"
    TOKENS = "tokens"
    SAFETY = "safety"
    RELIABILITY = "reliability"
    KPI = "kpi"  # the experiment's own pass criteria and token budget


class Metric(BaseModel):
    """One metric: what the report calls it and which way is better.

    ``binary`` marks a metric that is 0 or 1 per question (a rate once averaged), which is what
    McNemar's test and the Wilson interval need.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    direction: Direction
    kind: Kind
    label: str
    description: str
    binary: bool = False

    @property
    def lower_is_better(self) -> bool:
        return self.direction is Direction.LOWER


H, L, N = Direction.HIGHER, Direction.LOWER, Direction.NONE
K = Kind


def _m(name: str, direction: Direction, kind: Kind, label: str, description: str, binary: bool = False) -> Metric:
    return Metric(name=name, direction=direction, kind=kind, label=label, description=description, binary=binary)


# Descriptions complete the report's sentence "<label> measures <description>."
METRICS: dict[str, Metric] = {m.name: m for m in [
    # retrieval (document level; chunk_<name> is derived); {unit} is filled per level
    _m("mrr", H, K.RETRIEVAL, "MRR", "1 / rank of the first {unit} (MRR)"),
    _m("ndcg_at_10", H, K.RETRIEVAL, "nDCG@10", "how high the {units} rank among the first 10 retrieved (nDCG@10)"),
    _m("map", H, K.RETRIEVAL, "MAP", "the mean precision at the rank of each {unit} (MAP)"),
    # answers
    _m("exact_match", H, K.ANSWER, "Exact match", "whether the normalised answer equals a gold answer (SQuAD)", True),
    _m("f1", H, K.ANSWER, "Answer F1", "token overlap F1 of the generated answer with the gold answers (SQuAD)"),
    _m("contains_gold", H, K.ANSWER, "Contains gold", "whether a gold answer appears, on whole tokens, inside the answer", True),
    _m("citation_count", N, K.ANSWER, "Citations", "how many distinct context chunks the answer cites"),
    _m("citation_valid", H, K.ANSWER, "Valid citations", "whether every citation names a chunk that was in the context", True),
    _m("citation_accuracy", H, K.ANSWER, "Citation accuracy", "the share of valid citations that point to a relevant document"),
    _m("answer_support", H, K.ANSWER, "Answer support", "the share of the answer's content words found in the retrieved context"),
    _m("refusal", L, K.ANSWER, "Refusals", "whether the model declined to answer", True),
    # groundedness without a judge
    _m("cited_support", H, K.GROUNDEDNESS, "Cited support", "the share of the answer's content words found in the chunks it cites"),
    _m("hallucination", L, K.GROUNDEDNESS, "Hallucination",
       "whether an answer is mostly absent from the retrieved context, or answers a question whose evidence was withheld", True),
    _m("refusal_correct", H, K.GROUNDEDNESS, "Correct refusals", "whether the model refused a question that has no answer in the corpus", True),
    _m("false_refusal", L, K.GROUNDEDNESS, "False refusals", "whether the model refused a question it could have answered", True),
    # LLM-as-judge
    _m("judge_faithful", H, K.JUDGE, "Judge: faithful", "whether the judge model found the answer supported by its context "
       "(the majority of its readable verdicts; unmeasured when none was readable)", True),
    _m("judge_agrees", N, K.JUDGE, "Judge agreement", "whether the judge's verdict matches the judge-free hallucination flag", True),
    _m("judge_error", L, K.JUDGE, "Judge errors", "the share of the answer's judge calls that failed"),
    _m("judge_unparseable", L, K.JUDGE, "Judge unreadable", "the share of the answer's judge verdicts that held no yes or no (unmeasured, not 0)"),
    _m("judge_flip", L, K.JUDGE, "Judge flips", "whether the judge's verdicts on the same answer disagree between repeats", True),
    _m("judge_repeat_agreement", H, K.JUDGE, "Judge repeat agreement", "the share of pairs of the judge's repeated verdicts that agree"),
    _m("judge_flip_rate", L, K.JUDGE, "Judge flip rate", "the share of answers whose judge verdict changes when asked again"),
    _m("human_faithful", H, K.JUDGE, "Human: faithful", "whether a person found the answer supported by its context"),
    _m("judge_human_accuracy", H, K.JUDGE, "Judge vs human", "the share of labelled answers where the judge's verdict equals the person's"),
    _m("judge_human_kappa", H, K.JUDGE, "Judge vs human (kappa)", "Cohen's kappa of the judge's and a person's verdicts: agreement beyond chance"),
    _m("judge_latency_s", L, K.LATENCY, "Judge latency", "the time the judge model took for one verdict"),
    _m("judge_cost_usd", L, K.COST, "Judge cost", "what judging one answer cost (every repeat), from the price table"),
    # latency per question (<name>_p50_s / <name>_p95_s are derived)
    _m("retrieval_latency_s", L, K.LATENCY, "Retrieval latency", "the time from question to ranked chunks, reranking included"),
    _m("rerank_latency_s", L, K.LATENCY, "Rerank latency", "the time the reranker took for one question"),
    _m("generation_latency_s", L, K.LATENCY, "Generation latency", "the time the LLM took to answer"),
    _m("ttft_s", L, K.LATENCY, "Time to first token", "the time until the LLM's first streamed token"),
    _m("latency_s", L, K.LATENCY, "Latency", "the end-to-end time per question: retrieval, reranking and generation"),
    # tokens and cost
    _m("prompt_tokens", L, K.TOKENS, "Prompt tokens", "tokens sent to the LLM per question"),
    _m("completion_tokens", L, K.TOKENS, "Completion tokens", "tokens the LLM generated per question"),
    _m("tokens_per_question", L, K.TOKENS, "Tokens / question", "prompt plus completion tokens per question"),
    _m("cost_usd", L, K.COST, "Cost", "what one question cost, from the price table"),
    _m("cost_per_question_usd", L, K.COST, "Cost / question", "the mean cost of a question, from the price table"),
    _m("embedding_cost_usd", L, K.COST, "Embedding cost", "what embedding one question cost, from the price table"),
    _m("rerank_cost_usd", L, K.COST, "Rerank cost", "what reranking one question's candidates cost, from the price table"),
    _m("index_cost_usd", L, K.COST, "Index cost", "what embedding the whole corpus for the index cost, once, from the price table"),
    _m("cost_per_success_usd", L, K.COST, "Cost / passing question",
       "the run's cost (query embedding, reranking, generation) divided by the questions that passed every criterion"),
    # the experiment's pass criteria and token budget (KPIs)
    _m("passed", H, K.KPI, "Passed", "whether the question met every pass criterion of the experiment", True),
    _m("pass_rate", H, K.KPI, "Pass rate", "the share of questions that met every pass criterion of the experiment"),
    _m("within_token_budget", H, K.KPI, "Within token budget", "whether the question's prompt plus completion tokens stayed within the budget", True),
    _m("token_budget_adherence", H, K.KPI, "Token budget adherence",
       "the share of questions whose prompt plus completion tokens stayed within the budget"),
    # reliability
    _m("error_rate", L, K.RELIABILITY, "Error rate", "the share of questions whose call failed after retries and fallback"),
    _m("fallback_used", L, K.RELIABILITY, "Fallback answers", "whether the fallback model gave the answer", True),
    _m("truncation_rate", L, K.RELIABILITY, "Truncated chunks", "the share of chunks longer than the embedder's input limit"),
    # safety (attack_success_<kind> is a family below)
    _m("attack_success", L, K.SAFETY, "Attack success", "whether a prompt-injection trial succeeded", True),
    _m("attack_success_rate", L, K.SAFETY, "Attack success", "the share of prompt-injection trials that succeeded"),
    _m("pii_leakage", L, K.SAFETY, "PII leakage", "whether the answer repeats PII found in the retrieved passages", True),
    _m("pii_leakage_rate", L, K.SAFETY, "PII leakage", "the share of answers repeating PII found in the retrieved passages"),
    _m("pii_in_answer", L, K.SAFETY, "PII in answer", "whether the answer contains PII", True),
    _m("pii_in_answer_rate", L, K.SAFETY, "PII in answer", "the share of answers that contain PII"),
    _m("pii_in_context", N, K.SAFETY, "PII in context", "whether a retrieved passage contains PII (exposure, not a fault)", True),
    _m("pii_in_context_rate", N, K.SAFETY, "PII in context", "the share of questions whose retrieved passages contain PII"),
]}

DOC_UNITS = {"unit": "relevant document", "units": "documents holding the answer"}
CHUNK_UNITS = {"unit": "chunk overlapping the gold evidence span", "units": "chunks overlapping the gold evidence span"}


class Family(NamedTuple):
    """Metrics named by a pattern: ``build`` makes the entry from the regex match of a name."""

    pattern: str
    example: str  # a name it matches, for suggestions
    build: Callable[[re.Match], Metric]


# Add a family with one line.
FAMILIES: list[Family] = [
    Family(r"hit_at_(?P<k>[1-9]\d*)", "hit_at_5",
           lambda g: _m(g[0], H, K.RETRIEVAL, f"Hit@{g['k']}", f"whether a {{unit}} is among the first {g['k']} retrieved", True)),
    Family(r"recall_at_(?P<k>[1-9]\d*)", "recall_at_5",
           lambda g: _m(g[0], H, K.RETRIEVAL, f"Recall@{g['k']}", f"the share of the {{units}} found among the first {g['k']} retrieved")),
    Family(r"precision_at_(?P<k>[1-9]\d*)", "precision_at_5",
           lambda g: _m(g[0], H, K.RETRIEVAL, f"Precision@{g['k']}", f"the share of the first {g['k']} retrieved that are a {{unit}}")),
    Family(r"attack_success_(?P<kind>direct|indirect)", "attack_success_indirect",
           lambda g: _m(g[0], L, K.SAFETY, f"Attack success ({g['kind']})", f"whether a {g['kind']} prompt-injection trial succeeded", True)),
]

# Names shown in the leaderboard, in reading order (those a run lacks are skipped).
HEADLINE: tuple[str, ...] = (
    "hit_at_5", "recall_at_5", "mrr", "ndcg_at_10", "map", "chunk_hit_at_5", "chunk_mrr", "chunk_ndcg_at_10", "exact_match", "f1",
    "contains_gold", "citation_accuracy", "answer_support", "hallucination", "refusal_correct", "false_refusal",
    "pass_rate", "token_budget_adherence", "judge_faithful",
    "retrieval_latency_p50_s", "rerank_latency_p50_s", "generation_latency_p50_s", "generation_latency_p95_s", "ttft_p50_s",
    "prompt_tokens", "completion_tokens", "cost_per_question_usd", "cost_per_success_usd", "error_rate", "attack_success_rate",
    "pii_leakage_rate")

# Columns of a stored question row (``Store.questions``) that are not metrics. Everything else in
# a row is a metric and must be in this registry.
ROW_FIELDS: frozenset[str] = frozenset({"run_id", "query_id", "position", "question", "gold_answers", "relevant", "hits", "answer",
                                        "error", "tokens_estimated", "trace", "code_version"})

PRIMARY_METRICS = ("f1", "ndcg_at_10", "mrr")
COST_KINDS = frozenset({Kind.LATENCY, Kind.TOKENS, Kind.COST})  # what a question costs, not what it is worth
CHUNK_PREFIX = "chunk_"  # chunk-level retrieval metrics (evaluation/spans.py)
_PERCENTILE = re.compile(r"(?P<base>\w+)_p(?P<q>50|95)_s")


def _declared(name: str) -> Metric | None:
    """The metric as declared (retrieval descriptions still hold their ``{unit}`` placeholders)."""
    if name in METRICS:
        return METRICS[name]
    return next((f.build(m) for f in FAMILIES if (m := re.fullmatch(f.pattern, name))), None)


def _at_level(metric: Metric, units: dict[str, str], **update) -> Metric:
    return metric.model_copy(update={"description": metric.description.format(**units), **update})


def _chunk_level(name: str) -> Metric | None:
    """``chunk_<m>``: retrieval metric ``<m>`` computed over chunks instead of documents."""
    base = _declared(name.removeprefix(CHUNK_PREFIX)) if name.startswith(CHUNK_PREFIX) else None
    if base is None or base.kind is not Kind.RETRIEVAL:
        return None
    return _at_level(base, CHUNK_UNITS, name=name, kind=Kind.CHUNK_RETRIEVAL, label=f"Chunk {base.label}")


def _percentile(name: str) -> Metric | None:
    """``<x>_p50_s`` / ``<x>_p95_s``: a percentile over questions of the latency ``<x>_s``."""
    match = _PERCENTILE.fullmatch(name)
    base = _lookup(f"{match['base']}_s") if match else None
    if base is None or base.kind is not Kind.LATENCY:
        return None
    median = match["q"] == "50"
    return base.model_copy(update={"name": name, "label": f"{base.label} P{match['q']}",
                                   "description": f"the {'median' if median else '95th percentile'} over questions of {base.description}"})


@functools.lru_cache(maxsize=4096)
def _lookup(name: str) -> Metric | None:
    declared = _declared(name)
    if declared is not None:
        return _at_level(declared, DOC_UNITS) if declared.kind is Kind.RETRIEVAL else declared
    return _chunk_level(name) or _percentile(name)


# -- lookups -----------------------------------------------------------------------------------

def is_metric(name: object) -> bool:
    """Whether ``name`` is a known metric (for picking metric columns out of a frame)."""
    return isinstance(name, str) and _lookup(name) is not None


def metric_info(name: str) -> Metric:
    """The registry entry of ``name``.

    Raises:
        MetricError: ``name`` is not a known metric (with the closest known name).
    """
    found = _lookup(name) if isinstance(name, str) else None
    if found is None:
        raise MetricError(f"unknown metric {name!r}{did_you_mean(str(name), example_names())}; "
                          "metrics are declared in workbench/evaluation/registry.py")
    return found


def example_names() -> list[str]:
    """Every fixed name, an example of each pattern and the names derived from them (for suggestions)."""
    names = [*METRICS, *(f.example for f in FAMILIES)]
    found = [_lookup(n) for n in names]
    chunk = [CHUNK_PREFIX + m.name for m in found if m.kind is Kind.RETRIEVAL]
    percentiles = [f"{m.name.removesuffix('_s')}_p{q}_s" for m in found if m.kind is Kind.LATENCY for q in (50, 95)]
    return names + chunk + percentiles


def direction(name: str) -> Direction:
    return metric_info(name).direction


def lower_is_better(name: str) -> bool:
    """True when a smaller value of ``name`` is better (latency, cost, hallucination, ...)."""
    return metric_info(name).lower_is_better


def label(name: str) -> str:
    """What the report calls ``name`` ("nDCG@10", "Latency P95")."""
    return metric_info(name).label


def description(name: str) -> str:
    return metric_info(name).description


def is_binary(name: str) -> bool:
    return metric_info(name).binary


# -- frames ------------------------------------------------------------------------------------

def metric_columns(columns: Iterable[str]) -> list[str]:
    """The metric columns of a stored question row: every column but :data:`ROW_FIELDS`, quality
    metrics first and the per-question costs (latency, tokens, cost) after them, each in order.

    Raises:
        MetricError: a column is neither a row field nor a known metric, so nobody can say which
            way it is better (declare it in this module).
    """
    found = [metric_info(c) for c in columns if c not in ROW_FIELDS]
    return [m.name for m in found if m.kind not in COST_KINDS] + [m.name for m in found if m.kind in COST_KINDS]


def primary_metric(board: pd.DataFrame) -> str:
    """The quality metric runs are ranked by: answer F1 when answers exist, else nDCG@10, else MRR."""
    for m in PRIMARY_METRICS:
        if m in board and board[m].notna().any():
            return m
    raise ValueError("no quality metric in the leaderboard")


def best_first(frame: pd.DataFrame, metric: str, key: str = "run_id") -> pd.DataFrame:
    """``frame`` ordered best ``metric`` first, in the metric's own direction; ties by ``key``,
    missing values last. The one ranking rule behind every "best run" (leaderboard, report,
    ``compare``, gate baselines), so they cannot disagree.

    Raises:
        MetricError: ``metric`` is unknown, or has no direction (a count ranks nothing).
    """
    info = metric_info(metric)
    if info.direction is Direction.NONE:
        raise MetricError(f"metric {metric!r} has no better direction, so runs cannot be ranked by it")
    return frame.sort_values([metric, key], ascending=[info.lower_is_better, True], na_position="last", kind="stable")


def headline_columns(board: pd.DataFrame) -> list[str]:
    """The :data:`HEADLINE` metrics a board has values for, in reading order."""
    return [m for m in HEADLINE if m in board and board[m].notna().any()]
