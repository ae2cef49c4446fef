"""Paired comparisons (compare.py), gates and baselines (gates.py) and exports (export.py) on small
stores written through the Store API: metric direction from the registry, configurations matched
as stored config data, and the gate decisions and export formats as before the split."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench import compare, export, gates
from workbench.config.experiment import ExperimentSpec
from workbench.errors import MetricError, WorkbenchError
from workbench.evaluation import registry
from workbench.evaluation.aggregate import aggregate_rows
from workbench.store import Store

CHUNKING = {"splitter": "sentence", "chunk_size": 128, "chunk_overlap": 16}
GEN = {"provider": "local", "model": "smollm2-135m", "prompt": "prompts/qa.yaml", "temperature": 0.0}


def _config(retrieval=None, rerank=None, generation=None) -> dict:
    return {"chunking": CHUNKING, "embedding": None, "retrieval": retrieval or {"method": "bm25", "top_k": 5, "rrf_k": 60},
            "rerank": rerank, "generation": generation}


def _axes(config: dict) -> dict:
    r, g = config["retrieval"], config["generation"]
    return {"chunking": "sentence 128/16", "embedding": "-", "retrieval": f"{r['method']}@{r['top_k']}",
            "rerank": "-" if config["rerank"] is None else f"cross_encoder:{config['rerank']['path']}",
            "generation": "-" if g is None else f"{g['model']} / qa"}


def _store(tmp_path, experiment: str, runs: dict[str, tuple[dict, dict[str, list]]], store: Store | None = None) -> Store:
    """``runs``: run id -> (config, {metric: per-question values}); questions q0, q1, ... in order."""
    store = store or Store(f"sqlite:///{tmp_path / 'wb.sqlite'}")
    store.save_experiment(experiment, {"name": experiment}, "h" * 64, f"/x/{experiment}.yaml", list(runs))
    for run_id, (config, metrics) in runs.items():
        n = len(next(iter(metrics.values())))
        store.start_run(run_id, config, _axes(config), {}, n)
        store.write_questions([{"run_id": run_id, "query_id": f"q{i}", "position": i, "question": f"question {i}", "gold_answers": ["a"],
                                "relevant": {f"d{i}": 1}, "hits": [{"rank": 1, "chunk_id": f"d{i}#0", "doc_id": f"d{i}", "score": 1.0}],
                                "answer": "a", "error": None, "retrieval_latency_s": 0.01,
                                "metrics": {k: v[i] for k, v in metrics.items()}} for i in range(n)])
        store.write_aggregates(run_id, aggregate_rows(store.questions(run_id)))
        store.finish_run(run_id, "complete", 0, 10, 0.0, {})
    return store


# -- direction: one rule for compare, the report and the leaderboard -------------------------------

def test_compare_takes_every_direction_from_the_registry(tmp_path):
    # compare used to call refusal, attack success and the judge's latency "higher is better"
    # while the report called them "lower is better"
    metrics = {"f1": [1.0, 0.0, 1.0, 1.0], "refusal": [0.0, 1.0, 0.0, 0.0], "attack_success": [0.0, 1.0, 1.0, 0.0],
               "judge_latency_s": [0.5, 0.7, 0.6, 0.5], "hallucination": [0.0, 0.0, 1.0, 0.0], "citation_count": [1, 2, 0, 1]}
    other = {k: v[::-1] for k, v in metrics.items()}
    store = _store(tmp_path, "exp", {"a": (_config(), metrics), "b": (_config(generation=GEN), other)})
    df = compare.compare_runs(store, "a", "b").set_index("metric")
    for m in df.index:
        assert df.loc[m, "lower_is_better"] == registry.lower_is_better(m), m
        assert df.loc[m, "direction"] == registry.direction(m).value
    assert df.loc["refusal", "lower_is_better"] and df.loc["attack_success", "lower_is_better"] and df.loc["judge_latency_s", "lower_is_better"]
    assert df.loc["citation_count", "direction"] == "none"
    # quality first, per-question costs after
    assert list(df.index) == ["f1", "refusal", "attack_success", "hallucination", "citation_count", "retrieval_latency_s", "judge_latency_s"]
    with pytest.raises(MetricError, match="did you mean 'refusal'"):
        compare.compare_runs(store, "a", "b", ["refusals"])


def test_flipped_questions_put_regressions_first_in_the_metric_direction(tmp_path):
    store = _store(tmp_path, "exp", {"a": (_config(), {"hallucination": [0.0, 1.0, 0.0], "f1": [0.2, 0.5, 0.9]}),
                                     "b": (_config(generation=GEN), {"hallucination": [1.0, 0.0, 0.0], "f1": [0.9, 0.1, 0.9]})})
    hal = compare.flipped_questions(store, "a", "b", "hallucination")
    # q0 started hallucinating (worse), q1 stopped (better): the regression is listed first
    assert hal["query_id"].tolist() == ["q0", "q1"] and hal["better"].tolist() == [False, True]
    f1 = compare.flipped_questions(store, "a", "b", "f1")
    assert f1["query_id"].tolist() == ["q1", "q0"] and f1["better"].tolist() == [False, True]


def test_best_run_agrees_between_compare_report_and_leaderboard():
    from workbench.report import data as rd
    from workbench.report.leaderboard import sort_board

    board = pd.DataFrame({"run_id": ["r0", "r1", "r2"], "status": ["complete"] * 3, "ndcg_at_10": [0.5, 0.7, 0.7],
                          "hallucination": [0.1, 0.3, 0.2]})
    assert sort_board(board)["run_id"].iloc[0] == "r1" == rd.recommend(board, "ndcg_at_10").run_id
    assert registry.best_first(board, "hallucination")["run_id"].iloc[0] == "r0" == rd.recommend(board, "hallucination").run_id


# -- configurations matched as data ----------------------------------------------------------------

def test_same_configuration_compares_stored_config_not_labels():
    hybrid = {"method": "hybrid", "top_k": 5, "rrf_k": 60}
    assert compare.same_configuration(_config(hybrid), _config(dict(hybrid)))
    assert not compare.same_configuration(_config(hybrid), _config({**hybrid, "rrf_k": 10}))  # same label "hybrid@5"
    assert not compare.same_configuration(_config(), _config(generation=GEN))
    # a field an older run was stored without is not compared
    assert compare.same_configuration(_config({"method": "bm25", "top_k": 5}), _config())


def test_reranker_gain_pairs_each_reranked_run_with_its_plain_twin_by_config(tmp_path):
    warm = {**GEN, "temperature": 0.7}  # labelled like GEN: "smollm2-135m / qa"
    rerank = {"method": "cross_encoder", "path": "ce", "candidates": 20, "top_n": 5}
    store = _store(tmp_path, "rr", {"plain": (_config(generation=GEN), {"ndcg_at_10": [0.0, 0.0, 1.0, 0.0]}),
                                    "warm": (_config(generation=warm), {"ndcg_at_10": [1.0, 1.0, 1.0, 1.0]}),
                                    "reranked": (_config(rerank=rerank, generation=GEN), {"ndcg_at_10": [1.0, 0.0, 1.0, 1.0]})})
    gain = compare.reranker_gain(store, "rr", ["ndcg_at_10"])
    assert gain["baseline_run_id"].tolist() == ["plain"] and gain["gain"].tolist() == [pytest.approx(0.5)]


def test_baseline_is_the_run_with_the_same_stored_config(tmp_path):
    hybrid = {"method": "hybrid", "top_k": 5, "rrf_k": 60}
    store = _store(tmp_path, "base", {"b_rrf10": (_config({**hybrid, "rrf_k": 10}), {"ndcg_at_10": [1.0, 1.0]}),
                                      "b_rrf60": (_config(hybrid), {"ndcg_at_10": [0.5, 0.5]})})
    _store(tmp_path, "new", {"n1": (_config(hybrid), {"ndcg_at_10": [0.5, 1.0]}),
                             "n2": (_config({"method": "dense", "top_k": 5}), {"ndcg_at_10": [0.0, 0.5]})}, store)
    found = gates.resolve_baseline(store, "n1", baseline_experiment="base")
    assert found == gates.Baseline("b_rrf60", "the run with the same configuration in experiment 'base'", "base")
    # no run with n2's configuration: the best run of the baseline experiment
    assert gates.resolve_baseline(store, "n2", baseline_experiment="base").run_id == "b_rrf10"
    assert gates.resolve_baseline(store, "n2", baseline_run="b_rrf6").run_id == "b_rrf60"
    assert gates.resolve_baseline(store, "n2") is None
    spec = ExperimentSpec.model_validate({"name": "new", "dataset": "d", "grid": {"chunking": [CHUNKING], "retrieval": [hybrid],
                                          "embedding": [{"provider": "local", "model": "all-MiniLM-L6-v2"}]}, "baseline": {"experiment": "base"}})
    assert gates.baseline_run_for(store, spec, "n1") == "b_rrf60" and gates.baseline_run_for(store, spec, "n2") == "b_rrf10"
    assert gates.baseline_run_for(store, spec.model_copy(update={"baseline": None}), "n1") is None


# -- gates (decisions as before the split) ------------------------------------------------------------

def test_gates_bound_values_and_drops_against_the_baseline(tmp_path):
    store = _store(tmp_path, "base", {"b": (_config(), {"ndcg_at_10": [1.0] * 10, "mrr": [1.0] * 10})})
    _store(tmp_path, "new", {"n": (_config(), {"ndcg_at_10": [1.0] * 7 + [0.0] * 3, "mrr": [0.5] * 10})}, store)
    spec = ExperimentSpec.model_validate({
        "name": "new", "dataset": "d", "grid": {"chunking": [CHUNKING], "retrieval": [{"method": "bm25"}]},
        "baseline": {"experiment": "base"},
        "gates": {"ndcg_at_10": {"max_drop": 0.02, "significant": True}, "mrr": {"min": 0.3, "max_drop": 0.6},
                  "retrieval_latency_p95_s": {"max": 0.001}, "f1": {"min": 0.1}}})
    results = {(r.metric, r.rule): r for r in gates.evaluate_gates(store, spec)}
    ndcg = results[("ndcg_at_10", "drop <= 0.02")]
    assert ndcg.baseline == 1.0 and ndcg.value == pytest.approx(0.7) and ndcg.interval is not None
    # 3 of 10 questions lost: the paired t interval of the change [-0.65, +0.05] crosses -0.02
    assert ndcg.outcome == "inconclusive" and ndcg.interval.low < -0.02 < ndcg.interval.high and ndcg.questions_needed > 10
    assert results[("mrr", ">= 0.3")].passed and results[("mrr", "drop <= 0.6")].passed
    assert not results[("retrieval_latency_p95_s", "<= 0.001")].passed
    assert not results[("f1", "present")].passed and results[("f1", "present")].message == "f1: no value for this run"
    with pytest.raises(WorkbenchError, match="declares no gates"):
        gates.evaluate_gates(store, spec.model_copy(update={"gates": {}}))


# -- exports ----------------------------------------------------------------------------------------

def test_export_formats(tmp_path):
    store = _store(tmp_path, "exp", {"run1": (_config(), {"ndcg_at_10": [1.0, 0.5], "hit_at_1": [1.0, None]})})
    trec = export.export_run(store, "run1", "trec", None).splitlines()
    assert trec == ["q0 Q0 d0 1 1.000000 run1", "q1 Q0 d1 1 1.000000 run1"]
    out = tmp_path / "out" / "rows.jsonl"
    rows = [json.loads(line) for line in export.export_run(store, "run1", "jsonl", out).splitlines()]
    assert out.read_text(encoding="utf-8").splitlines()[0] == json.dumps(rows[0], ensure_ascii=False)
    # metrics, then the per-question costs
    assert list(rows[0])[:2] == ["run_id", "query_id"] and {r["run_id"] for r in rows} == {"run1"}
    assert list(rows[0])[8:] == ["ndcg_at_10", "hit_at_1", "retrieval_latency_s", "rerank_latency_s", "generation_latency_s", "ttft_s",
                                 "prompt_tokens", "completion_tokens", "cost_usd"]
    assert rows[1]["hit_at_1"] is None and rows[0]["retrieved_doc_ids"] == ["d0"]
    csv_text = export.export_run(store, "run1", "csv", None)
    assert csv_text.splitlines()[0].startswith("run_id,query_id,question,answer,error,gold_answers,retrieved_doc_ids")
    assert all(line.startswith("run1,") for line in csv_text.splitlines()[1:])
    with pytest.raises(WorkbenchError, match="unknown export format 'xml'; known: csv, jsonl, trec"):
        export.export_run(store, "run1", "xml", None)


def test_compare_command_counts_better_and_worse_in_the_metric_direction(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app

    store = _store(tmp_path, "exp", {"a": (_config(), {"hallucination": [0.0, 0.0, 1.0], "f1": [0.5, 0.5, 0.5]}),
                                     "b": (_config(generation=GEN), {"hallucination": [1.0, 1.0, 0.0], "f1": [0.5, 0.5, 0.5]})})
    monkeypatch.setenv("WORKBENCH_STORE", store.url)
    result = CliRunner().invoke(app, ["compare", "a", "b", "--flips", "hallucination"])
    assert result.exit_code == 0, result.output
    assert "3 questions changed hallucination (1 better, 2 worse)" in result.output
    bad = CliRunner().invoke(app, ["compare", "a", "b", "--metric", "halucination"])
    assert bad.exit_code == 2 and "unknown metric 'halucination' (did you mean 'hallucination'?)" in bad.output
