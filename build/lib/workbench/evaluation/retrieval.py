"""Document-level retrieval metrics, computed by trec_eval (through pytrec_eval).

The metric arithmetic is not ours: every number comes from trec_eval's C code, so a score in a
report means exactly what it means in a TREC or BEIR paper. This module only adapts the data
contract (``run = {query_id: {doc_id: score}}``, ``qrels = {query_id: {doc_id: grade}}``), names
the metrics as identifiers (``ndcg_at_10``) and fills in the queries trec_eval skips.

Conventions inherited from trec_eval, which any ranking shown to a user must follow too:

- A document counts as relevant for the binary metrics (hit, recall, precision, MRR, MAP) when
  its grade is at least 1. nDCG uses the grade itself as the gain (not ``2**grade - 1``) with a
  ``log2(rank + 1)`` discount.
- Ranks are derived from scores, not from dict order: score descending, ties broken by doc_id
  descending (byte order). :func:`ranked_docs` reproduces that order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import pytrec_eval

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

DEFAULT_CUTOFFS: tuple[int, ...] = (1, 3, 5, 10)

# Our metric key prefix -> trec_eval measure family, for the metrics evaluated at each cutoff.
_CUTOFF_MEASURES: dict[str, str] = {"hit": "success", "recall": "recall", "precision": "P"}
# Our metric key -> trec_eval measure, for the metrics without a user-chosen cutoff.
_FIXED_MEASURES: dict[str, str] = {"mrr": "recip_rank", "ndcg_at_10": "ndcg_cut_10", "map": "map"}


def retrieval_metric_keys(cutoffs: Iterable[int] = DEFAULT_CUTOFFS) -> tuple[str, ...]:
    """List the metric keys :func:`retrieval_metrics` returns, in a stable report order.

    Stores and reports need the column names before any query is scored (for an empty run too),
    so the names are derived here rather than read off a result.
    """
    ks = _validate_cutoffs(cutoffs)
    per_cutoff = tuple(f"{name}_at_{k}" for k in ks for name in _CUTOFF_MEASURES)
    return per_cutoff + tuple(_FIXED_MEASURES)


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    cutoffs: Iterable[int] = DEFAULT_CUTOFFS,
) -> dict[str, dict[str, float]]:
    """Score every judged query with trec_eval's hit@k, recall@k, precision@k, MRR, nDCG@10, MAP.

    trec_eval only reports queries present in both the run and the qrels. A judged query the
    system returned nothing for is a failure, not a missing row, so it is reported here with all
    metrics 0.0; otherwise averages would silently favour systems that skip hard questions.
    Queries in the run but not in the qrels are ignored (there is nothing to judge them against).

    Args:
        run: ``{query_id: {doc_id: score}}``; higher scores rank first.
        qrels: ``{query_id: {doc_id: grade}}``; grades >= 1 are relevant, 0 judged non-relevant.
        cutoffs: The ``k`` values for hit, recall and precision (deduplicated and sorted).

    Returns:
        ``{query_id: {metric_key: value}}`` for every query in ``qrels``, with the keys of
        :func:`retrieval_metric_keys`. The inputs are not modified.

    Raises:
        ValueError: A cutoff is not a positive integer, or a score is NaN (trec_eval's ordering
            of NaN is undefined).
    """
    ks = _validate_cutoffs(cutoffs)
    keys = retrieval_metric_keys(ks)
    trec_qrels = {
        str(qid): {str(doc_id): int(grade) for doc_id, grade in docs.items()}
        for qid, docs in qrels.items()
    }
    trec_run = {
        str(qid): _float_scores(qid, docs) for qid, docs in run.items() if str(qid) in trec_qrels
    }
    measures = {f"{family}.{','.join(map(str, ks))}" for family in _CUTOFF_MEASURES.values()}
    measures |= {"recip_rank", "ndcg_cut.10", "map"}
    evaluated = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(trec_run)

    results: dict[str, dict[str, float]] = {}
    for qid in trec_qrels:
        trec = evaluated.get(qid)
        results[qid] = _rename(trec, ks) if trec is not None else dict.fromkeys(keys, 0.0)
    return results


def ranked_docs(run_for_query: Mapping[str, float]) -> list[str]:
    """Order one query's documents exactly as trec_eval ranks them: score desc, then doc_id desc.

    Anything shown to a user as "the ranking" (a report table, the chunks given to the LLM) must
    use this order, or the metrics would describe a different list than the one displayed.
    """
    return sorted(run_for_query, key=lambda doc_id: (run_for_query[doc_id], doc_id), reverse=True)


def run_from_ranked(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Turn a ranked list of ``(doc_id, score)`` into one query's run, keeping each doc's max score.

    A run is a dict, so a document cannot appear twice; a retriever's list can (several chunks of
    one document, or a fused list). Keeping the maximum is the standard "MaxP" aggregation and
    never lowers a document below the position it first reached.
    """
    best: dict[str, float] = {}
    for doc_id, score in pairs:
        score = float(score)
        if doc_id not in best or score > best[doc_id]:
            best[doc_id] = score
    return best


def doc_run_from_chunks(chunk_hits: Iterable[tuple[str, float]]) -> dict[str, float]:
    """Collapse chunk hits, given as ``(doc_id, chunk_score)``, into document scores.

    Qrels judge documents, but retrieval returns chunks; a document scores as its best chunk, so
    a document is retrieved at rank r when any of its chunks is. This is :func:`run_from_ranked`
    under the name that says why it is called.
    """
    return run_from_ranked(chunk_hits)


def _validate_cutoffs(cutoffs: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(cutoffs)
    if not ks:
        raise ValueError("cutoffs must not be empty")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"cutoffs must be positive integers, got {k!r}")
    return tuple(sorted(set(ks)))


def _float_scores(query_id: str, docs: Mapping[str, float]) -> dict[str, float]:
    scores = {str(doc_id): float(score) for doc_id, score in docs.items()}
    for doc_id, score in scores.items():
        if math.isnan(score):
            raise ValueError(f"score of doc {doc_id!r} for query {query_id!r} is NaN")
    return scores


def _rename(trec: Mapping[str, float], ks: tuple[int, ...]) -> dict[str, float]:
    out = {
        f"{name}_at_{k}": float(trec[f"{family}_{k}"])
        for k in ks
        for name, family in _CUTOFF_MEASURES.items()
    }
    out.update({name: float(trec[measure]) for name, measure in _FIXED_MEASURES.items()})
    return out


def doc_scores(hits) -> dict[str, float]:
    """Document-level run of one query's chunk hits (objects with ``doc_id`` and ``score``): each
    document scores its best chunk (:func:`doc_run_from_chunks`)."""
    return doc_run_from_chunks((h.doc_id, h.score) for h in hits)
