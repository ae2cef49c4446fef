"""Evaluation: retrieval metrics (trec_eval), answer metrics (SQuAD and RAG heuristics), statistics.

Everything here is pure: per-question inputs in, per-question numbers or summaries out. See
``docs/metrics.md`` for the definition of every metric and test.
"""

from .answers import (
    REFUSAL_PATTERNS,
    SUPPORT_STOPWORDS,
    CitationMetrics,
    answer_support,
    citation_metrics,
    contains_gold,
    exact_match,
    is_refusal,
    normalize_answer,
    parse_citations,
    token_f1,
)
from .retrieval import (
    DEFAULT_CUTOFFS,
    doc_run_from_chunks,
    ranked_docs,
    retrieval_metric_keys,
    retrieval_metrics,
    run_from_ranked,
)
from .stats import (
    PairedResult,
    bootstrap_ci,
    holm,
    mcnemar_exact,
    paired_difference,
    percentile,
)

__all__ = [
    "CitationMetrics",
    "DEFAULT_CUTOFFS",
    "PairedResult",
    "REFUSAL_PATTERNS",
    "SUPPORT_STOPWORDS",
    "answer_support",
    "bootstrap_ci",
    "citation_metrics",
    "contains_gold",
    "doc_run_from_chunks",
    "exact_match",
    "holm",
    "is_refusal",
    "mcnemar_exact",
    "normalize_answer",
    "paired_difference",
    "parse_citations",
    "percentile",
    "ranked_docs",
    "retrieval_metric_keys",
    "retrieval_metrics",
    "run_from_ranked",
    "token_f1",
]
