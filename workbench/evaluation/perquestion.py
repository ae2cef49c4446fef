"""Every metric of one question, from its retrieval hits and (optionally) its answer.

The one place that decides which metrics a row carries: document-level retrieval metrics by
trec_eval at cutoffs up to the retriever's ``top_k``, and, when an answer exists, SQuAD EM/F1,
citation checks, answer support and refusal. ``None`` means "not applicable" (no gold answer,
nothing cited), never a failure: failures are the row's ``error``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..data.types import Hit, Query
from .answers import answer_support, citation_metrics, contains_gold, exact_match, is_refusal, parse_citations, token_f1
from .retrieval import doc_scores, retrieval_metrics

BASE_CUTOFFS = (1, 3, 5, 10)


def cutoffs_for(top_k: int) -> tuple[int, ...]:
    """Cutoffs worth reporting for a retriever returning ``top_k`` chunks (none beyond it)."""
    return tuple(sorted({k for k in BASE_CUTOFFS if k <= top_k} | {top_k}))


SUPPORTED = 0.5  # an answer with less than half its content words in the context is unsupported


def question_metrics(query: Query, relevant: Mapping[str, int], hits: Sequence[Hit], top_k: int,
                     answer: str | None, contexts: Sequence[str]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {}
    if relevant:  # an unanswerable question has no relevant document: retrieval is not scored
        run = {query.query_id: doc_scores(tuple(hits))}
        metrics.update(retrieval_metrics(run, {query.query_id: dict(relevant)}, cutoffs_for(top_k))[query.query_id])
    if answer is None:
        return metrics
    golds = list(query.answers)
    metrics["exact_match"] = exact_match(answer, golds) if golds else None
    metrics["f1"] = token_f1(answer, golds) if golds else None
    metrics["contains_gold"] = contains_gold(answer, golds) if golds else None
    cites = citation_metrics(parse_citations(answer), [h.doc_id for h in hits], {d for d, g in relevant.items() if g > 0})
    metrics.update({k: (float(v) if v is not None else None) for k, v in cites.items()})
    if query.unanswerable:
        metrics["citation_accuracy"] = None  # no relevant document exists to cite
    support = answer_support(answer, contexts)
    refused = is_refusal(answer)
    metrics["answer_support"] = support
    cited_texts = [contexts[n - 1] for n in parse_citations(answer) if 1 <= n <= len(contexts)]
    metrics["cited_support"] = answer_support(answer, cited_texts) if cited_texts else None
    metrics["refusal"] = float(refused)
    # Refusal is right exactly when the answer is not in what could be retrieved.
    metrics["refusal_correct"] = float(refused) if query.unanswerable else None
    metrics["false_refusal"] = None if query.unanswerable else float(refused)
    # Hallucination: a non-refusal answer mostly absent from every retrieved chunk, or any
    # non-refusal answer to a question whose answer was withheld.
    if query.unanswerable:
        metrics["hallucination"] = float(not refused)
    else:
        metrics["hallucination"] = None if refused or support is None else float(support < SUPPORTED)
    return metrics
