"""Second-stage rerankers: a second embedder, a local cross-encoder, an LLM, or a hosted rerank API.

Every reranker takes the first stage's ``candidates`` hits for a query and returns the best
``top_n`` with new scores. They share one cache (key: first-stage result, rerank config, query) and
record their own latency, so a bake-off can weigh reranker gain against its cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config.experiment import RerankSpec
from ..errors import ProviderError
from ..hashing import hash_obj, sha256_text
from ..data.types import Hit


@dataclass(frozen=True, slots=True)
class RerankResult:
    hits: tuple[Hit, ...]
    latency_s: float
    fallback: bool = False  # the reranker's output could not be used; first-stage order kept


class EmbeddingReranker:
    """Re-score candidates by cosine similarity under a second embedder (e.g. e5 over MiniLM)."""

    def __init__(self, embedder):
        self.embedder = embedder

    def __call__(self, query: str, hits: list[Hit], texts: list[str], top_n: int) -> tuple[list[Hit], bool]:
        q = self.embedder.embed_queries([query])[0]
        p = self.embedder.embed_passages(texts)
        scores = p @ q
        order = np.argsort(-scores, kind="stable")[:top_n]
        return [Hit(hits[i].chunk_id, hits[i].doc_id, float(scores[i])) for i in order], False


class CrossEncoderReranker:
    """A sentence-transformers cross-encoder from a local folder, through LlamaIndex's
    ``SentenceTransformerRerank``."""

    def __init__(self, path: str, threads: int | None = None):
        from llama_index.core.postprocessor import SentenceTransformerRerank

        if threads:
            import torch

            torch.set_num_threads(threads)
        self._rerank = SentenceTransformerRerank(model=path, top_n=1, device="cpu")

    def __call__(self, query: str, hits: list[Hit], texts: list[str], top_n: int) -> tuple[list[Hit], bool]:
        from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

        self._rerank.top_n = top_n
        nodes = [NodeWithScore(node=TextNode(id_=h.chunk_id, text=t, metadata={"doc_id": h.doc_id}), score=h.score)
                 for h, t in zip(hits, texts)]
        out = self._rerank.postprocess_nodes(nodes, query_bundle=QueryBundle(query))
        return [Hit(n.node.node_id, n.node.metadata["doc_id"], float(n.score)) for n in out], False


class LLMReranker:
    """Listwise LLM reranking with LlamaIndex's ``LLMRerank`` over an OpenAI-compatible endpoint.

    Small local models often answer off-format; then LlamaIndex's parser finds no choices and the
    first-stage order is kept, flagged as a fallback so the report can count it.
    """

    def __init__(self, base_url: str, api_key: str, model: str, batch_size: int = 5):
        from llama_index.core.postprocessor import LLMRerank
        from llama_index.llms.openai_like import OpenAILike

        llm = OpenAILike(model=model, api_base=base_url, api_key=api_key, is_chat_model=True, temperature=0.0,
                         max_tokens=64, timeout=120, context_window=2048)
        self._rerank = LLMRerank(llm=llm, choice_batch_size=batch_size, top_n=1)

    def __call__(self, query: str, hits: list[Hit], texts: list[str], top_n: int) -> tuple[list[Hit], bool]:
        from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

        self._rerank.top_n = top_n
        nodes = [NodeWithScore(node=TextNode(id_=h.chunk_id, text=t, metadata={"doc_id": h.doc_id}), score=h.score)
                 for h, t in zip(hits, texts)]
        try:
            out = self._rerank.postprocess_nodes(nodes, query_bundle=QueryBundle(query))
        except (ValueError, IndexError, KeyError):  # unparseable LLM output
            out = []
        if not out:
            return list(hits[:top_n]), True
        return [Hit(n.node.node_id, n.node.metadata["doc_id"], float(n.score or 0.0)) for n in out], False


class HostedReranker:
    """A Cohere/Jina-style ``POST {base_url}/rerank`` API: {model, query, documents, top_n} ->
    {results: [{index, relevance_score}]}. Retries transient failures with tenacity."""

    def __init__(self, base_url: str, api_key: str, model: str, timeout_s: float = 60.0):
        import httpx

        self._client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s,
                                    headers={"Authorization": f"Bearer {api_key}"})
        self.model = model

    def __call__(self, query: str, hits: list[Hit], texts: list[str], top_n: int) -> tuple[list[Hit], bool]:
        import httpx
        from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential_jitter

        def transient(exc: BaseException) -> bool:
            return isinstance(exc, httpx.TransportError) or (
                isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (429, 500, 502, 503, 504))

        @retry(retry=retry_if_exception(transient), stop=stop_after_attempt(4), wait=wait_exponential_jitter(0.2, 5), reraise=True)
        def call() -> dict:
            resp = self._client.post("/rerank", json={"model": self.model, "query": query, "documents": texts, "top_n": top_n})
            resp.raise_for_status()
            return resp.json()

        try:
            data = call()
        except httpx.HTTPError as exc:
            raise ProviderError(f"rerank API {self._client.base_url}: {type(exc).__name__}: {exc}") from None
        results = sorted(data["results"], key=lambda r: -r["relevance_score"])[:top_n]
        return [Hit(hits[r["index"]].chunk_id, hits[r["index"]].doc_id, float(r["relevance_score"])) for r in results], False


class CachedReranker:
    """Cache and time a reranker: key = (first-stage hits, rerank config, query text)."""

    def __init__(self, spec: RerankSpec, impl: Callable, cache, texts: Callable[[str], str]):
        self.spec, self.impl, self.cache, self.texts = spec, impl, cache, texts

    def rerank(self, query: str, first_stage: tuple[Hit, ...]) -> RerankResult:
        key = "rerank:" + hash_obj([self.spec.model_dump(), sha256_text(query), [(h.chunk_id, h.score) for h in first_stage]])
        found = self.cache.get(key)
        if found is not None:
            return found
        hits = list(first_stage)
        t0 = time.perf_counter()
        out, fallback = self.impl(query, hits, [self.texts(h.chunk_id) for h in hits], self.spec.top_n) if hits else ([], False)
        result = RerankResult(tuple(out), time.perf_counter() - t0, fallback)
        self.cache.set(key, result)
        return result
