"""Chunk-level relevance from gold character spans, so chunkers are compared on equal terms.

A qrel keyed by chunk id only exists for the chunker that made it. Gold evidence stored as
``(doc_id, start, end)`` in the source text works for any chunker: a chunk is relevant when it
overlaps a gold span enough, and its document is relevant when any span lies in it.

Overlap rule (``RelevanceSpec``): with ``min_chars`` set, a chunk is relevant when it shares at
least that many characters with a span; otherwise when the shared characters are at least
``min_overlap`` of the *shorter* of the two (the span, or the chunk). Measuring against the
shorter one keeps the rule fair both ways: a short answer span counts when a big chunk contains
half of it, and a small chunk lying inside a long supporting passage counts too (measured against
the span alone, a chunk smaller than half the span could never be relevant).

The chunk-level metrics are trec_eval's, as for documents (see :mod:`.retrieval`), with keys
prefixed ``chunk_`` (``chunk_ndcg_at_10``, ``chunk_hit_at_5``...): the run is the retrieved chunks
with their scores, the qrels are the relevant chunks of the whole chunk set (so recall counts the
relevant chunks that were *not* retrieved too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .registry import CHUNK_PREFIX
from .retrieval import retrieval_metric_keys, retrieval_metrics


def overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    """Characters shared by ``[a_start, a_end)`` and ``[b_start, b_end)``."""
    return max(0, min(a_end, b_end) - max(a_start, b_start))


def chunk_overlaps_span(chunk_start: int, chunk_end: int, span_start: int, span_end: int,
                        min_overlap: float = 0.5, min_chars: int | None = None) -> bool:
    """The relevance rule of the module docstring, for one chunk and one span of the same document."""
    if chunk_start < 0 or chunk_end <= chunk_start or span_end <= span_start:
        return False  # an unplaced chunk or an empty span relates to nothing
    shared = overlap(chunk_start, chunk_end, span_start, span_end)
    if shared == 0:
        return False
    if min_chars is not None:
        return shared >= min_chars
    return shared >= min_overlap * min(span_end - span_start, chunk_end - chunk_start)


def relevant_chunks(chunks_by_doc: Mapping[str, Sequence], spans: Iterable, min_overlap: float = 0.5,
                    min_chars: int | None = None) -> dict[str, int]:
    """``{chunk_id: 1}`` for every chunk (objects with chunk_id, start_char, end_char) that
    overlaps one of ``spans`` (objects with doc_id, start, end) by the rule above."""
    out: dict[str, int] = {}
    for span in spans:
        for c in chunks_by_doc.get(span.doc_id, ()):
            if chunk_overlaps_span(c.start_char, c.end_char, span.start, span.end, min_overlap, min_chars):
                out[c.chunk_id] = 1
    return out


def chunk_metric_keys(cutoffs: Iterable[int]) -> tuple[str, ...]:
    return tuple(CHUNK_PREFIX + k for k in retrieval_metric_keys(cutoffs))


def chunk_level_metrics(query_id: str, hits: Sequence, relevant: Mapping[str, int], cutoffs: Iterable[int]) -> dict[str, float]:
    """trec_eval metrics of the retrieved chunks (objects with chunk_id, in ranked order) against the
    relevant chunks, keys prefixed ``chunk_``. No relevant chunk (the spans fall between chunks
    under the rule, or in text no chunk kept) scores 0 on everything, like a judged query with no
    relevant document."""
    ks = tuple(cutoffs)
    if not relevant:
        return dict.fromkeys(chunk_metric_keys(ks), 0.0)
    # Scored by position, so trec_eval ranks exactly the list that was retrieved (ties in the
    # retriever's scores would otherwise be reordered by chunk id).
    run = {query_id: {h.chunk_id: float(len(hits) - i) for i, h in enumerate(hits)}}
    scored = retrieval_metrics(run, {query_id: dict(relevant)}, ks)[query_id]
    return {CHUNK_PREFIX + k: v for k, v in scored.items()}
