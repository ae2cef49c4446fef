"""The plain data every stage passes along: documents, questions, gold spans, datasets, hits.

No behaviour beyond what the data itself defines (a content hash, a deterministic sample), and no
imports beyond the standard library and hashing, so the report, the store readers and the metrics
can use these types without loading the retrieval or model stack.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..hashing import sha256_text


@dataclass(frozen=True, slots=True)
class Heading:
    """A section heading of a document: where its line starts in the text, its level (1 for
    ``#``/``<h1>``), and its text. What ``context: heading_path`` prefixes a chunk with."""

    start: int
    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Document:
    doc_id: str
    title: str
    text: str
    # Markdown or HTML section headings, in text order (empty for plain text and BEIR corpora).
    headings: tuple[Heading, ...] = ()

    @property
    def content_hash(self) -> str:
        return sha256_text(self.title + "\x00" + self.text)


@dataclass(frozen=True, slots=True)
class Query:
    query_id: str
    text: str
    answers: tuple[str, ...] = ()
    answer_starts: tuple[int, ...] = ()
    # Documents hidden from retrieval for this question: the unanswerable slice withholds the
    # gold documents, so the right behaviour is to refuse.
    withheld: tuple[str, ...] = ()
    # A question whose answer is in no document of the corpus (an evaluation set's
    # ``unanswerable: true`` question): refusing is the right answer, as for a withheld one.
    no_answer: bool = False

    @property
    def unanswerable(self) -> bool:
        return bool(self.withheld) or self.no_answer


@dataclass(frozen=True, slots=True)
class Span:
    """Gold evidence as characters ``[start, end)`` of a document's text."""

    doc_id: str
    start: int
    end: int

    def as_dict(self) -> dict:
        return {"doc_id": self.doc_id, "start": self.start, "end": self.end}


@dataclass(slots=True)
class Dataset:
    path: Path
    docs: dict[str, Document]
    queries: dict[str, Query]
    qrels: dict[str, dict[str, int]]
    content_hash: str
    skipped: list[str] = field(default_factory=list)
    # Gold character spans per query (SQuAD answer_starts, or an evaluation set's spans): what
    # makes chunk-level relevance possible for any chunker. Empty for document-level-only data.
    spans: dict[str, tuple[Span, ...]] = field(default_factory=dict)
    # Ingestion report of a documents folder read by workbench.ingest (files skipped or failed).
    ingest: dict | None = None
    # Documents carry titles apart from their text (BEIR's ``title`` field), as the field's
    # references index them: the default chunk context is then ``title`` (see ChunkingSpec).
    # A documents folder's "title" is its first line, already in the text: False there.
    titled: bool = False

    def sample_queries(self, limit: int | None, seed: int) -> list[Query]:
        """A deterministic sample: sorted ids shuffled by ``seed``, first ``limit``, in id order.

        Only queries with at least one relevant document (grade >= 1; 0 is judged non-relevant)
        are eligible, since retrieval metrics are undefined without one, plus the questions an
        evaluation set marks as not answerable from the corpus (scored on refusal only).
        """
        ids = sorted(q for q, query in self.queries.items()
                     if query.no_answer or any(g > 0 for g in self.qrels.get(q, {}).values()))
        if limit is not None and limit < len(ids):
            rng = random.Random(seed)
            ids = sorted(rng.sample(ids, limit))
        return [self.queries[q] for q in ids]


@dataclass(frozen=True, slots=True)
class Hit:
    """One retrieved chunk: its id, its document, and the retriever's score."""

    chunk_id: str
    doc_id: str
    score: float
