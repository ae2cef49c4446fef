"""The metric registry: lookups, families, explicit errors for unknown names, and that every metric
key the evaluation code can produce is declared (built from real rows, not from a list)."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest

from workbench.data.types import Hit, Query
from workbench.errors import MetricError
from workbench.evaluation import registry as reg
from workbench.evaluation.aggregate import aggregate_rows, clean_values
from workbench.evaluation.perquestion import cutoffs_for, question_metrics
from workbench.evaluation.spans import chunk_level_metrics
from workbench.store import questions as questions_table

ROOT = Path(__file__).resolve().parents[2]


# -- lookups -------------------------------------------------------------------------------------

def test_fixed_names_and_families_resolve():
    assert reg.metric_info("ndcg_at_10").label == "nDCG@10" and not reg.lower_is_better("ndcg_at_10")
    hit = reg.metric_info("hit_at_7")
    assert (hit.label, hit.kind, hit.binary, hit.direction) == ("Hit@7", reg.Kind.RETRIEVAL, True, reg.Direction.HIGHER)
    assert reg.label("precision_at_3") == "Precision@3" and reg.label("recall_at_10") == "Recall@10"
    chunk = reg.metric_info("chunk_precision_at_3")
    assert chunk.kind is reg.Kind.CHUNK_RETRIEVAL and chunk.label == "Chunk Precision@3" and "gold evidence span" in chunk.description
    assert "{" not in reg.description("mrr") and "document" in reg.description("mrr")
    p95 = reg.metric_info("generation_latency_p95_s")
    assert p95.kind is reg.Kind.LATENCY and p95.lower_is_better and p95.label == "Generation latency P95"
    assert reg.label("latency_p50_s") == "Latency P50"  # the report's end-to-end latency
    assert reg.metric_info("attack_success_indirect").lower_is_better and reg.is_binary("attack_success_direct")
    assert reg.direction("citation_count") is reg.Direction.NONE  # a count is neither better nor worse


def test_unknown_names_are_errors_with_a_suggestion():
    with pytest.raises(MetricError) as err:
        reg.metric_info("ndgc_at_10")
    assert "unknown metric 'ndgc_at_10' (did you mean 'ndcg_at_10'?)" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MetricError, match="did you mean 'chunk_ndcg_at_10'"):
        reg.lower_is_better("chunk_ndcg_at_1O")
    for name in ("chunk_f1", "hit_at_0", "foo_p50_s", "cost_p50_s", "attack_success_sideways", "error", "", None):
        assert not reg.is_metric(name), name
    with pytest.raises(MetricError):
        reg.label("brand_new_metric")


def test_metric_columns_name_every_unknown_column():
    assert reg.metric_columns(["query_id", "cost_usd", "f1", "hits", "ttft_s", "mrr"]) == ["f1", "mrr", "cost_usd", "ttft_s"]
    with pytest.raises(MetricError, match="'answer_quality'"):
        reg.metric_columns(["query_id", "f1", "answer_quality"])


def test_every_stored_question_column_is_a_row_field_or_a_metric():
    """A column added to the questions table must be declared one or the other, or every
    aggregation would refuse it as an unknown metric."""
    columns = [c.name for c in questions_table.columns if c.name != "metrics"]
    assert [c for c in columns if c not in reg.ROW_FIELDS and not reg.is_metric(c)] == []


def test_aggregation_refuses_an_undeclared_metric():
    rows = pd.DataFrame({"query_id": ["a"], "error": [None], "f1": [1.0], "answer_quality": [0.5]})
    with pytest.raises(MetricError, match="unknown metric 'answer_quality'"):
        aggregate_rows(rows)


def test_best_first_follows_the_direction_and_refuses_counts():
    board = pd.DataFrame({"run_id": ["a", "b", "c"], "f1": [0.5, 0.9, None], "hallucination": [0.3, 0.1, 0.2], "citation_count": [1, 2, 3]})
    assert reg.best_first(board, "f1")["run_id"].tolist() == ["b", "a", "c"]
    assert reg.best_first(board, "hallucination")["run_id"].tolist() == ["b", "c", "a"]
    with pytest.raises(MetricError, match="no better direction"):
        reg.best_first(board, "citation_count")


def test_primary_metric_and_headline():
    assert reg.primary_metric(pd.DataFrame({"mrr": [0.1], "ndcg_at_10": [0.2], "f1": [None]})) == "ndcg_at_10"
    with pytest.raises(ValueError):
        reg.primary_metric(pd.DataFrame({"hit_at_1": [1.0]}))
    assert all(reg.is_metric(m) for m in reg.HEADLINE)
    assert reg.headline_columns(pd.DataFrame({"f1": [0.5], "mrr": [0.2], "error_rate": [None]})) == ["mrr", "f1"]


def test_clean_values_drops_not_applicable():
    assert clean_values([1, None, float("nan"), 0.5]) == [1.0, 0.5]


# -- every producible key is declared --------------------------------------------------------------

def _question_rows() -> pd.DataFrame:
    """Stored-like question rows with every metric the evaluation code produces: answerable and
    unanswerable questions, answers with and without citations, chunk-level metrics at odd cutoffs."""
    hits = [Hit("d1#0", "d1", 3.0), Hit("d2#0", "d2", 2.0), Hit("d1#1", "d1", 1.0)]
    contexts = ["Paris is the capital of France.", "Berlin is in Germany.", "France is in Europe."]
    answerable = Query("q1", "What is the capital of France?", answers=("Paris",))
    unanswerable = Query("q2", "Who won in 2090?", no_answer=True)
    rows = []
    for i, (query, relevant, answer, top_k) in enumerate([(answerable, {"d1": 1}, "Paris [1]", 7), (answerable, {"d1": 1}, "I don't know", 3),
                                                          (unanswerable, {}, "Someone won [2]", 5), (answerable, {"d2": 1}, None, 10)]):
        metrics = question_metrics(query, relevant, hits, top_k, answer, contexts)
        metrics.update(chunk_level_metrics(query.query_id, hits, {"d1#0": 1}, cutoffs_for(top_k)))
        rows.append({c.name: None for c in questions_table.columns} | {"query_id": f"{query.query_id}-{i}", "error": None,
                                                                       "retrieval_latency_s": 0.1, "rerank_latency_s": 0.01,
                                                                       "generation_latency_s": 1.0, "ttft_s": 0.2, "prompt_tokens": 100,
                                                                       "completion_tokens": 10, "cost_usd": 0.0} | metrics)
    return pd.DataFrame(rows).drop(columns=["metrics"])


def _runner_metric_keys() -> set[str]:
    """Metric keys the run core writes itself: ``metrics["key"] = ...`` and the keys of the dicts
    returned by its judge step (a class named ``*Judge*``), read from the source of
    workbench/pipeline (fallback, attacks, judge)."""
    keys = set()
    for path in (ROOT / "workbench" / "pipeline").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "metrics"
                    and isinstance(node.ctx, ast.Store) and isinstance(node.slice, ast.Constant)):
                keys.add(node.slice.value)
            if isinstance(node, ast.ClassDef) and "Judge" in node.name:
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict):
                        keys |= {k.value for k in ret.value.keys if isinstance(k, ast.Constant)}
    return keys


def test_every_metric_the_evaluation_produces_is_declared():
    from workbench.config.files import ATTACK_KINDS
    from workbench.evaluation.judge import verdict_metrics
    from workbench.evaluation.kpis import kpi_metrics
    from workbench.pipeline.runner import run_aggregates
    from workbench.stages.safety import pii_metrics

    rows = _question_rows()
    rows["attack_success"] = [1.0, 0.0, None, 0.0]
    for kind in ATTACK_KINDS:
        rows[f"attack_success_{kind}"] = [1.0, None, None, 0.0]
    for key, value in pii_metrics("mail me at a@b.org", ["a@b.org is the contact"]).items():
        rows[key] = value
    runner_keys = _runner_metric_keys()
    assert {"fallback_used", "attack_success"} <= runner_keys, runner_keys  # the scan found the run core's keys
    # the judge's per-question keys (evaluation/judge.py), the KPIs (evaluation/kpis.py), the stage costs
    judged = verdict_metrics([1.0, 0.0, None], 1, 0.0)
    assert {"judge_faithful", "judge_flip", "judge_repeat_agreement", "judge_unparseable", "judge_error"} <= set(judged)
    kpis = kpi_metrics({"error": None, "prompt_tokens": 100, "completion_tokens": 10}, {"f1": 0.6}, {"f1": (0.5, None)}, 800)
    assert set(kpis) == {"passed", "within_token_budget"}
    for key in sorted((runner_keys | set(judged) | set(kpis) | {"human_faithful", "embedding_cost_usd", "rerank_cost_usd", "judge_cost_usd",
                                                                     "judge_latency_s"})
                      - set(rows.columns)):
        rows[key] = [1.0, 0.0, 1.0, 1.0]
    produced = [c for c in rows.columns if c not in reg.ROW_FIELDS]
    assert {"hit_at_7", "chunk_precision_at_7", "refusal_correct", "citation_count", "pii_leakage"} <= set(produced)
    assert [m for m in produced if not reg.is_metric(m)] == []
    aggregates = [a["metric"] for a in run_aggregates(rows)]
    assert {"generation_latency_p95_s", "cost_per_question_usd", "error_rate", "attack_success_rate", "judge_flip_rate",
            "judge_human_accuracy", "pass_rate", "token_budget_adherence", "cost_per_success_usd"} <= set(aggregates)
    assert [m for m in aggregates if not reg.is_metric(m)] == []
