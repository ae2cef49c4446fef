"""Reciprocal rank fusion, document scores and the embedding cache (no models)."""

from __future__ import annotations

import diskcache
import numpy as np
import pytest

from workbench.data.types import Hit
from workbench.evaluation.retrieval import doc_scores
from workbench.stages.chunking import Tokenizer
from workbench.stages.embedding import CachedEmbedder
from workbench.stages.retrieval import reciprocal_rank_fusion


def test_rrf_scores_are_sums_of_reciprocal_ranks():
    dense = (Hit("a#0", "a", 0.9), Hit("b#0", "b", 0.8), Hit("c#0", "c", 0.7))
    sparse = (Hit("c#0", "c", 12.0), Hit("a#0", "a", 3.0))
    fused = reciprocal_rank_fusion([dense, sparse], k=60, top_k=3)
    # a: 1/61 + 1/62; c: 1/63 + 1/61; b: 1/62
    assert [h.chunk_id for h in fused] == ["a#0", "c#0", "b#0"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    assert fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2].score == pytest.approx(1 / 62)
    assert len(reciprocal_rank_fusion([dense, sparse], k=60, top_k=1)) == 1


def test_document_scores_take_the_best_chunk():
    hits = (Hit("a#0", "a", 0.4), Hit("a#1", "a", 0.9), Hit("b#0", "b", 0.5))
    assert doc_scores(hits) == {"a": 0.9, "b": 0.5}


class _Counting:
    model_id, fingerprint, dim = "fake", "fp1", 3
    tokenizer = Tokenizer("fake", str.split, lambda t: len(t.split()), None)

    def __init__(self):
        self.seen: list[str] = []

    def embed_passages(self, texts):
        self.seen += texts
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    embed_queries = embed_passages


def test_cached_embedder_embeds_each_text_once(tmp_path):
    inner = _Counting()
    with diskcache.Cache(str(tmp_path)) as cache:
        emb = CachedEmbedder(inner, cache)
        first = emb.embed_passages(["aa", "b", "aa"])
        again = emb.embed_passages(["b", "ccc"])
        assert inner.seen == ["aa", "b", "ccc"]  # every distinct text once, within and across calls
        assert first.shape == (3, 3) and np.array_equal(first[1], again[0])
        assert emb.hits == 1 and emb.misses == 4
        emb.embed_queries(["b"])  # queries are cached apart from passages (e5 embeds them differently)
        assert inner.seen[-1] == "b"


def test_dense_scores_are_float32_distances():
    """A Chroma server's JSON distance (shortest text of the float32) and the embedded client's exact
    float32 give the same stored score."""
    import math

    import numpy as np

    from workbench.stages.retrieval import float32_score

    d32 = np.float32(0.26965666)
    exact = math.exp(-float(d32))  # embedded: the float32 widened
    via_json = math.exp(-float(str(d32)))  # server: the float32's shortest text ("0.26965666"), parsed as a double
    assert exact != via_json
    assert float32_score(exact) == float32_score(via_json) == exact


def test_bm25_scores_the_chunk_text_only_not_its_metadata(tmp_path):
    """LlamaIndex's BM25 indexes node metadata unless it is excluded; the workbench's must score the
    chunk text exactly as a plain BM25 over the texts does (no "doc_id: ..." line in every chunk)."""
    import diskcache
    from llama_index.core.schema import TextNode
    from llama_index.retrievers.bm25 import BM25Retriever

    from workbench.config import RetrievalSpec
    from workbench.data.types import Query
    from workbench.stages.chunking import Chunk, ChunkSet
    from workbench.stages.retrieval import Retriever

    texts = {"a-1": "the tower was built in 1889", "b-22": "a bridge was built in 1937 over the bay",
             "c-333": "the tower is 330 metres tall", "d-4444": "docs and ids are not words of these texts"}
    chunks = ChunkSet.write(tmp_path / "c.sqlite", [Chunk(f"{d}#0", d, t, 0, len(t), len(t.split())) for d, t in texts.items()])
    with diskcache.Cache(str(tmp_path / "cache")) as cache:
        retriever = Retriever(chunks, "key", cache)
        for question in ("when was the tower built", "doc_id a", "how tall is the tower"):
            got = retriever.retrieve(RetrievalSpec(method="bm25", top_k=4), Query("q", question)).hits
            plain = BM25Retriever.from_defaults(nodes=[TextNode(id_=f"{d}#0", text=t) for d, t in texts.items()],
                                                similarity_top_k=4, language="en").retrieve(question)
            expected = [(n.node.node_id, n.score) for n in plain if n.score > 0]
            assert [(h.chunk_id, h.score) for h in got] == [(c, pytest.approx(s)) for c, s in expected]
