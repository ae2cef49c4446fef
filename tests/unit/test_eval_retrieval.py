"""Retrieval metrics: hand-computed fractions, trec_eval's conventions, and a ranx cross-check."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest

from workbench.evaluation.retrieval import (
    doc_run_from_chunks,
    ranked_docs,
    retrieval_metric_keys,
    retrieval_metrics,
    run_from_ranked,
)

ALL_KEYS = (
    "hit_at_1", "recall_at_1", "precision_at_1",
    "hit_at_3", "recall_at_3", "precision_at_3",
    "hit_at_5", "recall_at_5", "precision_at_5",
    "hit_at_10", "recall_at_10", "precision_at_10",
    "mrr", "ndcg_at_10", "map",
)  # fmt: skip


def test_package_exports_a_sorted_complete_all() -> None:
    import workbench.evaluation as evaluation

    assert evaluation.__all__ == sorted(evaluation.__all__)
    assert all(hasattr(evaluation, name) for name in evaluation.__all__)


def test_metric_keys_are_identifiers_in_report_order() -> None:
    assert retrieval_metric_keys() == ALL_KEYS
    assert all(key.isidentifier() for key in ALL_KEYS)
    assert retrieval_metric_keys([2]) == (
        "hit_at_2", "recall_at_2", "precision_at_2", "mrr", "ndcg_at_10", "map",
    )  # fmt: skip


@pytest.mark.parametrize("cutoffs", [(), (0,), (-1,), (2.5,), (True,)])
def test_invalid_cutoffs_are_rejected(cutoffs) -> None:
    with pytest.raises(ValueError, match="cutoffs"):
        retrieval_metrics({}, {"q1": {"d1": 1}}, cutoffs)


def test_binary_relevance_by_hand() -> None:
    # ranking: d3 (non-rel), d1 (rel), d4 (non-rel), d2 (rel), d5 (non-rel); 2 relevant in all
    qrels = {"q1": {"d1": 1, "d2": 1}}
    run = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6, "d5": 0.5}}
    m = retrieval_metrics(run, qrels)["q1"]
    assert set(m) == set(ALL_KEYS)
    expected = {
        "hit_at_1": 0.0, "hit_at_3": 1.0, "hit_at_5": 1.0, "hit_at_10": 1.0,
        "recall_at_1": 0 / 2, "recall_at_3": 1 / 2, "recall_at_5": 2 / 2, "recall_at_10": 2 / 2,
        "precision_at_1": 0 / 1, "precision_at_3": 1 / 3, "precision_at_5": 2 / 5,
        "precision_at_10": 2 / 10,  # trec_eval divides by k even when fewer docs are retrieved
        "mrr": 1 / 2,
        "map": (1 / 2 + 2 / 4) / 2,
        "ndcg_at_10": (1 / math.log2(3) + 1 / math.log2(5)) / (1 / math.log2(2) + 1 / math.log2(3)),
    }  # fmt: skip
    assert m == pytest.approx(expected)


def test_graded_relevance_by_hand() -> None:
    # ranking: b (grade 1), z (grade 0), a (grade 3), e (unjudged); c (grade 2) not retrieved.
    qrels = {"q1": {"a": 3, "b": 1, "c": 2, "z": 0}}
    run = {"q1": {"b": 0.9, "z": 0.8, "a": 0.7, "e": 0.6}}
    m = retrieval_metrics(run, qrels)["q1"]
    # nDCG gain is the grade itself (trec_eval), discount log2(rank + 1)
    dcg = 1 / math.log2(2) + 0 / math.log2(3) + 3 / math.log2(4)  # 5/2
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_10"] == pytest.approx(dcg / idcg)
    # binary measures: any grade >= 1 is relevant, so 3 relevant docs (a, b, c)
    assert m["map"] == pytest.approx((1 / 1 + 2 / 3) / 3)  # 5/9; c contributes 0
    assert m["mrr"] == 1 / 1
    assert m["recall_at_3"] == pytest.approx(2 / 3)
    assert m["precision_at_3"] == pytest.approx(2 / 3)
    assert m["hit_at_1"] == 1.0


def test_ties_are_broken_by_doc_id_descending() -> None:
    # all three docs score 0.5; trec_eval ranks d3, d2, d1, so the relevant d1 is at rank 3
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"d1": 0.5, "d2": 0.5, "d3": 0.5}}
    m = retrieval_metrics(run, qrels)["q1"]
    assert ranked_docs(run["q1"]) == ["d3", "d2", "d1"]
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["hit_at_1"] == 0.0
    assert m["hit_at_3"] == 1.0
    assert m["ndcg_at_10"] == pytest.approx((1 / math.log2(4)) / (1 / math.log2(2)))  # 1/2


def test_ties_use_string_order_not_numeric_order() -> None:
    # "d9" > "d10" as strings, so d9 ranks first even though 10 > 9
    qrels = {"q1": {"d10": 1}}
    run = {"q1": {"d10": 1.0, "d9": 1.0}}
    assert ranked_docs(run["q1"]) == ["d9", "d10"]
    assert retrieval_metrics(run, qrels)["q1"]["mrr"] == pytest.approx(1 / 2)


def test_ranked_docs_orders_by_score_first() -> None:
    assert ranked_docs({"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.5}) == ["b", "d", "c", "a"]
    assert ranked_docs({}) == []


def test_every_judged_query_is_reported_even_when_trec_eval_skips_it() -> None:
    qrels = {
        "missing": {"d1": 1},  # not in the run at all
        "empty": {"d1": 1},  # in the run with an empty ranking
        "miss": {"d1": 1},  # retrieved only non-relevant docs
        "nonrel": {"d1": 0},  # judged, but nothing relevant exists
        "unjudged": {},  # in qrels with no judgements
    }
    run = {"empty": {}, "miss": {"d2": 1.0}, "nonrel": {"d1": 1.0}, "unjudged": {"d1": 1.0}}
    results = retrieval_metrics(run, qrels)
    assert list(results) == list(qrels)
    for query_id, metrics in results.items():
        assert metrics == dict.fromkeys(ALL_KEYS, 0.0), query_id


def test_queries_only_in_the_run_are_ignored() -> None:
    results = retrieval_metrics({"q1": {"d1": 1.0}, "extra": {"d1": 1.0}}, {"q1": {"d1": 1}})
    assert list(results) == ["q1"]
    assert results["q1"]["mrr"] == 1.0


def test_empty_qrels_give_empty_results() -> None:
    assert retrieval_metrics({"q1": {"d1": 1.0}}, {}) == {}


def test_inputs_are_not_modified() -> None:
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    run = {"q1": {"d1": 0.2, "d2": 0.4}}
    before = copy.deepcopy((run, qrels))
    retrieval_metrics(run, qrels)
    assert (run, qrels) == before


def test_integer_scores_are_accepted() -> None:
    m = retrieval_metrics({"q1": {"d1": 2, "d2": 1}}, {"q1": {"d2": 1}})["q1"]
    assert m["mrr"] == pytest.approx(1 / 2)


def test_nan_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics({"q1": {"d1": float("nan")}}, {"q1": {"d1": 1}})


def test_custom_cutoffs() -> None:
    qrels = {"q1": {"d1": 1, "d2": 1}}
    run = {"q1": {"d3": 0.9, "d1": 0.8, "d2": 0.7}}
    m = retrieval_metrics(run, qrels, cutoffs=[2, 2])
    assert m["q1"] == pytest.approx(
        {
            "hit_at_2": 1.0, "recall_at_2": 1 / 2, "precision_at_2": 1 / 2,
            "mrr": 1 / 2, "map": (1 / 2 + 2 / 3) / 2,
            "ndcg_at_10": (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3)),
        }
    )  # fmt: skip


# --- runs from ranked lists and from chunks ----------------------------------------------------


def test_run_from_ranked_keeps_the_best_score_of_a_duplicate() -> None:
    pairs = [("a", 0.5), ("b", 0.9), ("a", 0.7), ("b", 0.1)]
    assert run_from_ranked(pairs) == {"a": 0.7, "b": 0.9}
    assert run_from_ranked([]) == {}


def test_doc_run_from_chunks_scores_a_document_by_its_best_chunk() -> None:
    chunk_hits = [("doc1", 0.8), ("doc2", 0.75), ("doc1", 0.6), ("doc3", 0.5), ("doc2", 0.9)]
    run = doc_run_from_chunks(chunk_hits)
    assert run == {"doc1": 0.8, "doc2": 0.9, "doc3": 0.5}
    assert ranked_docs(run) == ["doc2", "doc1", "doc3"]


# --- cross-check against ranx --------------------------------------------------------------------

_RANX_NAMES = {
    "ndcg_at_10": "ndcg@10",
    "mrr": "mrr",
    "recall_at_5": "recall@5",
    "precision_at_5": "precision@5",
    "hit_at_5": "hit_rate@5",
    "map": "map",
}


def _seeded_tie_free_benchmark(n_queries: int = 50, seed: int = 7):
    """Random graded qrels and a run whose scores are all distinct within a query.

    ranx and trec_eval may order tied documents differently, so ties are ruled out by drawing
    scores without replacement.
    """
    rng = np.random.default_rng(seed)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(n_queries):
        pool = [f"d{i}" for i in range(40)]
        judged = rng.choice(pool, size=12, replace=False)
        grades = rng.integers(0, 4, size=judged.size)
        grades[0] = max(int(grades[0]), 1)  # ranx needs at least one relevant doc per query
        qrels[f"q{q}"] = {str(d): int(g) for d, g in zip(judged, grades, strict=True)}
        retrieved = rng.choice(pool, size=int(rng.integers(1, 25)), replace=False)
        scores = rng.choice(10**6, size=retrieved.size, replace=False) / 10**6
        run[f"q{q}"] = {str(d): float(s) for d, s in zip(retrieved, scores, strict=True)}
    return qrels, run


def test_agrees_with_ranx_on_a_seeded_tie_free_run() -> None:
    ranx = pytest.importorskip("ranx")
    qrels, run = _seeded_tie_free_benchmark()
    ours = retrieval_metrics(run, qrels)

    ranx_run = ranx.Run(copy.deepcopy(run))
    with warnings.catch_warnings():
        # numba warns about an integer cast while JIT-compiling ranx's kernels; harmless here.
        from numba.core.errors import NumbaTypeSafetyWarning

        warnings.filterwarnings("ignore", category=NumbaTypeSafetyWarning)
        ranx.evaluate(ranx.Qrels(copy.deepcopy(qrels)), ranx_run, list(_RANX_NAMES.values()))

    for ours_key, ranx_key in _RANX_NAMES.items():
        theirs = ranx_run.scores[ranx_key]
        assert set(theirs) == set(ours), ours_key
        for query_id, value in theirs.items():
            assert ours[query_id][ours_key] == pytest.approx(float(value), abs=1e-9), (
                ours_key,
                query_id,
            )
    # the benchmark is not degenerate: some queries hit, some miss, grades vary
    hits = [m["hit_at_5"] for m in ours.values()]
    assert 0 < sum(hits) < len(hits)
