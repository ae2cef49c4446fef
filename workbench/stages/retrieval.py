"""Retrieval: dense (Chroma through LlamaIndex), BM25 (LlamaIndex's bm25s retriever), hybrid (RRF).

Results are ranked chunk hits per query, cached by (index, retriever config, query text) with the
latency measured when they were computed, so a re-run reports the same latency it measured first.
A query's vector is computed once per embedding model (with the time it took) and reused by every
chunk set and depth that model serves: dense latency = that embedding time + this index's search time.
Chunk hits map to documents for document-level metrics (a document scores its best chunk).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import diskcache
import numpy as np
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import QueryBundle, TextNode
from llama_index.vector_stores.chroma import ChromaVectorStore
from pydantic import PrivateAttr

from ..config.experiment import RetrievalSpec
from ..data.types import Hit, Query
from ..hashing import hash_obj, sha256_text
from .chunking import ChunkSet
from .keys import BM25_VERSION
from .meter import StageMeter


@dataclass(frozen=True, slots=True)
class RetrievalResult:
    hits: tuple[Hit, ...]
    latency_s: float


def reciprocal_rank_fusion(rankings: list[tuple[Hit, ...]], k: int, top_k: int) -> tuple[Hit, ...]:
    """Fuse rankings by RRF, score = sum 1/(k + rank) with 1-based ranks (Cormack et al., 2009).

    Hand-written rather than LlamaIndex's QueryFusionRetriever: that one hard-codes k=60, uses
    0-based ranks, resolves a default LLM at construction (fails offline without a key), and would
    re-run both retrievers where we already hold their cached rankings.
    """
    scores: dict[str, float] = {}
    docs: dict[str, str] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (k + rank)
            docs[hit.chunk_id] = hit.doc_id
    ordered = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    return tuple(Hit(cid, docs[cid], score) for cid, score in ordered)


def float32_score(score: float) -> float:
    """LlamaIndex's dense score, ``exp(-distance)``, of the distance as Chroma computed it: float32.

    The embedded client hands over the float32 distance exactly; a Chroma server sends it as JSON
    text, which parses to a slightly different double (the 9th digit). Rounding the distance back to
    float32 makes an embedded and a server index store the same scores for the same search.
    """
    return math.exp(-float(np.float32(-math.log(score))))


class Retriever:
    """All retrieval methods over one chunk set (and, for dense/hybrid, one Chroma collection)."""

    def __init__(self, chunks: ChunkSet, chunk_set_key: str, cache: diskcache.Cache,
                 collection=None, collection_name: str | None = None, embedder: Callable | None = None,
                 meter: StageMeter | None = None):
        self.chunks = chunks
        self.chunk_set_key = chunk_set_key
        self.cache = cache
        self.collection_name = collection_name
        self.collection = collection
        self._embedder_factory = embedder  # called on the first cache miss only: a re-run loads no model
        self._dense_index = None
        self._bm25 = None
        self.meter = meter or StageMeter()  # the BM25 index build is a stage of its own
        self.computed = self.cached = 0

    # -- the three methods, one query at a time (latency is per query) -------------------------
    def _dense(self, query: Query, depth: int) -> RetrievalResult:
        if self._dense_index is None:
            self.embedder = self._embedder_factory()
            self._dense_index = VectorStoreIndex.from_vector_store(
                ChromaVectorStore(chroma_collection=self.collection), embed_model=LlamaIndexEmbedding(self.embedder))
        vector, embed_s = self._query_vector(query.text)
        t0 = time.perf_counter()
        nodes = self._dense_index.as_retriever(similarity_top_k=depth).retrieve(
            QueryBundle(query_str=query.text, embedding=vector.tolist()))
        hits = tuple(Hit(n.node.node_id, n.node.metadata["doc_id"], float32_score(n.score)) for n in nodes)
        return RetrievalResult(hits, embed_s + time.perf_counter() - t0)

    def _query_vector(self, text: str) -> tuple[np.ndarray, float]:
        """The query's vector and the seconds its embedding took, measured once per (model, text).

        The same question is asked of every chunk set and depth a model serves (6 times in a
        3-chunking grid with dense and hybrid); embedding it once and reusing the vector and its
        measured time gives the same latency figure at a sixth of the cost.
        """
        key = f"qvec:{self.embedder.fingerprint}:{sha256_text(text)}"
        found = self.cache.get(key)
        if found is not None:
            return np.frombuffer(found[0], dtype=np.float32), found[1]
        embed = getattr(self.embedder, "inner", self.embedder).embed_queries  # uncached: timed as served
        t0 = time.perf_counter()
        vector = np.asarray(embed([text])[0], dtype=np.float32)
        seconds = time.perf_counter() - t0
        self.cache.set(key, (vector.tobytes(), seconds))
        return vector, seconds

    def _bm25_retriever(self):
        if self._bm25 is None:
            from llama_index.retrievers.bm25 import BM25Retriever

            # BM25's index needs the whole tokenized corpus; LlamaIndex's retriever also keeps the
            # nodes it returns. This is the one stage that holds every chunk text at once.
            # LlamaIndex's BM25 indexes get_content(MetadataMode.EMBED): without the exclusion every
            # chunk would also be indexed as "doc_id: <id>", which BM25 as the references define it
            # (BEIR, bm25s over the text) never sees and which skews its length normalisation.
            with self.meter.measure("bm25_index", self.chunk_set_key):
                nodes = [TextNode(id_=c.chunk_id, text=c.indexed_text, metadata={"doc_id": c.doc_id},
                                  excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"]) for c in self.chunks]
                self._bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=10, language="en")
        return self._bm25

    def _bm25_query(self, query: Query, depth: int) -> RetrievalResult:
        retriever = self._bm25_retriever()
        t0 = time.perf_counter()
        retriever.similarity_top_k = min(depth, len(self.chunks))
        nodes = retriever.retrieve(query.text)
        hits = tuple(Hit(n.node.node_id, n.node.metadata["doc_id"], float(n.score)) for n in nodes if n.score and n.score > 0)
        return RetrievalResult(hits, time.perf_counter() - t0)

    def _compute(self, spec: RetrievalSpec, query: Query) -> RetrievalResult:
        if spec.method == "dense":
            return self._dense(query, spec.top_k)
        if spec.method == "bm25":
            return self._bm25_query(query, spec.top_k)
        depth = spec.candidates or max(4 * spec.top_k, 20)
        dense = self.retrieve(RetrievalSpec(method="dense", top_k=depth), query)
        sparse = self.retrieve(RetrievalSpec(method="bm25", top_k=depth), query)
        t0 = time.perf_counter()
        fused = reciprocal_rank_fusion([dense.hits, sparse.hits], spec.rrf_k, spec.top_k)
        return RetrievalResult(fused, dense.latency_s + sparse.latency_s + time.perf_counter() - t0)

    # -- cached entry point ----------------------------------------------------------------------
    def cache_key(self, spec: RetrievalSpec, query: Query) -> str:
        index = self.collection_name if spec.needs_embedding else self.chunk_set_key
        parts = [index, spec.model_dump(), sha256_text(query.text), query.withheld]
        if spec.method in ("bm25", "hybrid"):  # results of older BM25 code are never served (see BM25_VERSION)
            parts.append({"bm25": BM25_VERSION})
        return "ret:" + hash_obj(parts)

    def _withholding(self, spec: RetrievalSpec, query: Query) -> RetrievalResult:
        """Retrieve as if the withheld documents were not in the corpus: search deep enough that
        ``top_k`` hits remain after dropping every chunk of theirs."""
        hidden = set(query.withheld)
        extra = self.chunks.count_in_docs(hidden)
        depth = spec.top_k + extra
        hybrid = {"candidates": max(spec.candidates or 0, depth, 4 * spec.top_k, 20)} if spec.method == "hybrid" else {}
        deeper = spec.model_copy(update={"top_k": depth, **hybrid})
        full = self.retrieve(deeper, Query(query.query_id, query.text))
        kept = tuple(h for h in full.hits if h.doc_id not in hidden)[:spec.top_k]
        return RetrievalResult(kept, full.latency_s)

    def retrieve(self, spec: RetrievalSpec, query: Query) -> RetrievalResult:
        key = self.cache_key(spec, query)
        found = self.cache.get(key)
        if found is not None:
            self.cached += 1
            return found
        result = self._withholding(spec, query) if query.withheld else self._compute(spec, query)
        self.cache.set(key, result)
        self.computed += 1
        return result


class LlamaIndexEmbedding(BaseEmbedding):
    """Our embedder as a LlamaIndex embed model, so VectorStoreIndex never resolves its default
    (OpenAI) model, which fails offline. Queries normally arrive with their vector already."""

    _embedder: object = PrivateAttr()

    def __init__(self, embedder, **kwargs):
        super().__init__(model_name=embedder.model_id, **kwargs)
        self._embedder = embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_queries([query])[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed_passages([text])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)
