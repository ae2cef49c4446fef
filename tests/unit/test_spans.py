"""Gold character spans: chunk offsets, the overlap rule, chunk-level metrics, SQuAD answer_starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import XQUAD
from workbench.config.experiment import ChunkingSpec, parse_experiment
from workbench.data.ingest import ingest_folder
from workbench.data.loader import load_dataset
from workbench.data.types import Document, Hit, Span
from workbench.evaluation.spans import chunk_level_metrics, chunk_overlaps_span, relevant_chunks
from workbench.stages.chunking import Chunk, chunk_documents
from workbench.stages.embedding import default_tokenizer

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "docs-sample" / "documents"
SPECS = [ChunkingSpec(splitter="sentence", chunk_size=32, chunk_overlap=8), ChunkingSpec(splitter="token", chunk_size=48, chunk_overlap=12),
         ChunkingSpec(splitter="sentence", chunk_size=128, chunk_overlap=0), ChunkingSpec(splitter="none")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label())
def test_chunk_offsets_are_exact_slices_of_the_document(spec):
    docs = list(ingest_folder(SAMPLE).docs.values()) + list(load_dataset(XQUAD).docs.values())[:15]
    by_id = {d.doc_id: d for d in docs}
    chunks = chunk_documents(docs, spec, default_tokenizer())
    assert len(chunks) >= len(docs)
    for c in chunks:
        assert c.start_char >= 0 and by_id[c.doc_id].text[c.start_char:c.end_char] == c.text


def test_overlap_rule():
    # a short answer span: the chunk must hold at least half of it
    assert chunk_overlaps_span(0, 100, 90, 110) and not chunk_overlaps_span(0, 100, 95, 115)
    # a small chunk inside a long supporting span counts (measured against the shorter one)
    assert chunk_overlaps_span(200, 240, 100, 400)
    # absolute characters instead of a share
    assert chunk_overlaps_span(0, 100, 95, 115, min_chars=5) and not chunk_overlaps_span(0, 100, 95, 115, min_chars=6)
    assert not chunk_overlaps_span(0, 100, 100, 120)  # touching is not overlapping
    assert not chunk_overlaps_span(-1, -1, 0, 10)  # an unplaced chunk relates to nothing
    assert chunk_overlaps_span(0, 100, 60, 80, min_overlap=1.0) and not chunk_overlaps_span(0, 100, 90, 110, min_overlap=1.0)


def _chunks(doc_id: str, bounds: list[tuple[int, int]]) -> list[Chunk]:
    return [Chunk(f"{doc_id}#{i}", doc_id, "x" * (b - a), a, b, 1) for i, (a, b) in enumerate(bounds)]


def test_chunk_level_metrics_by_trec_eval():
    chunks = {"d": _chunks("d", [(0, 50), (50, 100), (100, 150)]), "e": _chunks("e", [(0, 80)])}
    rel = relevant_chunks(chunks, [Span("d", 40, 60)])  # straddles the first two chunks, half in each
    assert rel == {"d#0": 1, "d#1": 1}
    hits = [Hit("e#0", "e", 0.9), Hit("d#1", "d", 0.8), Hit("d#2", "d", 0.7)]
    m = chunk_level_metrics("q", hits, rel, (1, 3))
    assert m["chunk_mrr"] == 0.5 and m["chunk_hit_at_1"] == 0.0 and m["chunk_hit_at_3"] == 1.0
    assert m["chunk_recall_at_3"] == 0.5 and m["chunk_precision_at_3"] == pytest.approx(1 / 3)
    assert set(m) == {"chunk_hit_at_1", "chunk_recall_at_1", "chunk_precision_at_1", "chunk_hit_at_3", "chunk_recall_at_3",
                      "chunk_precision_at_3", "chunk_mrr", "chunk_ndcg_at_10", "chunk_map"}
    # ranked by list position, not by score: equal scores keep the retrieved order
    tied = chunk_level_metrics("q", [Hit("d#1", "d", 0.5), Hit("d#2", "d", 0.5)], {"d#1": 1}, (1,))
    assert tied["chunk_hit_at_1"] == 1.0
    assert chunk_level_metrics("q", hits, {}, (1,))["chunk_mrr"] == 0.0  # no relevant chunk: 0, not skipped


def test_one_span_judges_every_chunker_fairly():
    doc = Document("d", "", " ".join(f"Sentence number {i} talks about topic {i}." for i in range(60)))
    start = doc.text.index("Sentence number 37")
    span = Span("d", start, doc.text.index(".", start) + 1)
    for spec in SPECS:
        chunks = chunk_documents([doc], spec, default_tokenizer())
        rel = relevant_chunks({"d": chunks}, [span])
        assert rel, spec.label()  # every chunker has a chunk holding the evidence
        for cid in rel:
            c = next(c for c in chunks if c.chunk_id == cid)
            assert c.start_char < span.end and span.start < c.end_char


def test_squad_answer_starts_become_spans():
    ds = load_dataset(XQUAD)
    assert set(ds.spans) == set(ds.queries)  # every XQuAD question has one paragraph and true offsets
    for qid, spans in list(ds.spans.items())[:200]:
        q = ds.queries[qid]
        for sp in spans:
            assert ds.docs[sp.doc_id].text[sp.start:sp.end] in q.answers and ds.qrels[qid] == {sp.doc_id: 1}


def test_wrong_answer_start_is_not_trusted(tmp_path: Path):
    import json

    folder = tmp_path / "beir"
    folder.mkdir()
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "The answer is 42 here."}) + "\n", encoding="utf-8")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "?", "answers": ["42"], "answer_starts": [14]}) + "\n"
                                          + json.dumps({"_id": "q2", "text": "?", "answers": ["42"], "answer_starts": [3]}) + "\n",
                                          encoding="utf-8")
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td1\t1\n", encoding="utf-8")
    ds = load_dataset(folder)
    assert ds.spans == {"q1": (Span("d1", 14, 16),)}


def test_relevance_spec_in_experiment_files(tmp_path: Path):
    base = "name: x\ndataset: .\ngrid: {chunking: [{splitter: none}], retrieval: [{method: bm25}]}\n"
    assert parse_experiment(base, tmp_path / "x.yaml").spec.relevance.min_overlap == 0.5
    exp = parse_experiment(base + "relevance: {min_chars: 20}\n", tmp_path / "x.yaml")
    assert exp.spec.relevance.min_chars == 20
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"x\.yaml:4: relevance\.min_overlp: unknown key 'min_overlp' \(did you mean 'min_overlap'\?\)"):
        parse_experiment(base + "relevance: {min_overlp: 0.3}\n", tmp_path / "x.yaml")
