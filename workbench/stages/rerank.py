"""Second-stage rerankers: a second embedder, a local cross-encoder, an LLM, or a hosted rerank API.

Every reranker takes the first stage's ``candidates`` hits for a query and returns the best
``top_n`` with new scores. They share one cache (key: first-stage result, rerank config, the
reranker model's fingerprint, query) and record their own latency, so a bake-off can weigh reranker
gain against its cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
from pybreaker import CircuitBreakerError

from ..config.experiment import EmbeddingSpec, RerankSpec
from ..data.types import Hit
from ..errors import ProviderError
from ..hashing import file_sha256, hash_obj, sha256_text, tree_sha256
from ..providers import resilience
from ..providers.apikeys import api_key_for
from ..providers.clients import Endpoint, openai_like_settings, rerank_client
from ..providers.llm_server import local_model_path
from ..providers.resilience import RetryPolicy
from ..settings import apply_offline_defaults
from .embedding import embedder_fingerprint

LLM_TIMEOUT_S = 120.0  # per request of the LLM reranker
HOSTED_POLICY = RetryPolicy(backoff_s=0.2, max_backoff_s=5.0)  # a rerank API answers in well under a second


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
        apply_offline_defaults()  # before torch and the HF libraries read the environment on import
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
    first-stage order is kept, flagged as a fallback so the report can count it. Provider faults
    are retried by ``providers/resilience.py`` (the client made for ``OpenAILike`` retries nothing).
    """

    def __init__(self, base_url: str, api_key: str, model: str, batch_size: int = 5, *, http_client: httpx.Client | None = None):
        from llama_index.core.postprocessor import LLMRerank
        from llama_index.llms.openai_like import OpenAILike

        endpoint = Endpoint(base_url, api_key, timeout_s=LLM_TIMEOUT_S)
        llm = OpenAILike(model=model, is_chat_model=True, temperature=0.0, max_tokens=64, context_window=2048,
                         **openai_like_settings(endpoint, http_client=http_client))
        self._rerank = LLMRerank(llm=llm, choice_batch_size=batch_size, top_n=1)
        self._endpoint = f"{base_url.rstrip('/')}#{model}"  # the breaker generation uses for this model too

    def __call__(self, query: str, hits: list[Hit], texts: list[str], top_n: int) -> tuple[list[Hit], bool]:
        from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

        self._rerank.top_n = top_n
        nodes = [NodeWithScore(node=TextNode(id_=h.chunk_id, text=t, metadata={"doc_id": h.doc_id}), score=h.score)
                 for h, t in zip(hits, texts)]
        try:
            out = resilience.call(lambda: self._rerank.postprocess_nodes(nodes, query_bundle=QueryBundle(query)),
                                  self._endpoint, RetryPolicy())
        except (ValueError, IndexError, KeyError):  # unparseable LLM output
            out = []
        except (openai.OpenAIError, CircuitBreakerError) as exc:
            raise ProviderError(f"rerank LLM {self._endpoint}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]) from None
        if not out:
            return list(hits[:top_n]), True
        return [Hit(n.node.node_id, n.node.metadata["doc_id"], float(n.score or 0.0)) for n in out], False


class HostedReranker:
    """A Cohere/Jina-style ``POST {base_url}/rerank`` API: {model, query, documents, top_n} ->
    {results: [{index, relevance_score}]}. Transient failures (429, 5xx, no answer) are retried by
    ``providers/resilience.py``, with a circuit breaker per endpoint as for every other provider."""

    def __init__(self, base_url: str, api_key: str, model: str, timeout_s: float = 60.0, *, http_client: httpx.Client | None = None):
        self._api = rerank_client(Endpoint(base_url, api_key, timeout_s), http_client=http_client)
        self.model = model

    def __call__(self, query: str, hits: list[Hit], texts: list[str], top_n: int) -> tuple[list[Hit], bool]:
        payload = {"model": self.model, "query": query, "documents": texts, "top_n": top_n}
        try:
            data = resilience.call(lambda: self._api.rerank(payload), f"{self._api.url}#{self.model}", HOSTED_POLICY)
        except (httpx.HTTPError, CircuitBreakerError) as exc:
            raise ProviderError(f"rerank API {self._api.url}: {type(exc).__name__}: {exc}") from None
        results = sorted(data["results"], key=lambda r: -r["relevance_score"])[:top_n]
        return [Hit(hits[r["index"]].chunk_id, hits[r["index"]].doc_id, float(r["relevance_score"])) for r in results], False


class CachedReranker:
    """Cache and time a reranker: key = (rerank config, the reranker model's fingerprint, query
    text, first-stage hits, the passages' texts as given: with their chunk context).

    The fingerprint (:func:`reranker_fingerprint`: a local model's weights hash) is in the key
    because the config alone names a cross-encoder by its folder: a model retrained at the same
    path must have its scores recomputed, not served from the cache.
    """

    def __init__(self, spec: RerankSpec, fingerprint: str, impl: Callable, cache, texts: Callable[[str], str]):
        self.spec, self.fingerprint, self.impl, self.cache, self.texts = spec, fingerprint, impl, cache, texts

    def rerank(self, query: str, first_stage: tuple[Hit, ...]) -> RerankResult:
        hits = list(first_stage)
        texts = [self.texts(h.chunk_id) for h in hits]
        key = "rerank:" + hash_obj([self.spec.model_dump(), self.fingerprint, sha256_text(query),
                                    [(h.chunk_id, h.score) for h in first_stage], sha256_text("\x00".join(texts))])
        found = self.cache.get(key)
        if found is not None:
            return found
        t0 = time.perf_counter()
        out, fallback = self.impl(query, hits, texts, self.spec.top_n) if hits else ([], False)
        result = RerankResult(tuple(out), time.perf_counter() - t0, fallback)
        self.cache.set(key, result)
        return result


def reranker_fingerprint(spec: RerankSpec, model_paths: Mapping[str, Path], memo=None) -> str | None:
    """Identity of a reranker's model, without loading it: the weights' hash for local ones (a
    second embedder, a cross-encoder folder, the local LLM's GGUF file), endpoint and name for
    remote ones. It goes into run ids and into :class:`CachedReranker`'s key.

    Args:
        spec: a rerank spec (``method: none`` has no model: None).
        model_paths: the experiment's resolved model folders by the path written in the file
            (``Experiment.model_paths``).
        memo: a diskcache of file hashes (model files are hashed once per size and mtime).

    Raises:
        ProviderError: a remote reranker's API key variable is not set (so planning fails before any work).
    """
    if spec.method == "embedding":
        return embedder_fingerprint(EmbeddingSpec(provider="local", model=spec.model), memo)
    if spec.method == "cross_encoder":
        return tree_sha256(model_paths[spec.path], memo)
    if spec.method == "llm" and spec.provider == "local":
        return file_sha256(local_model_path(spec.model), memo)
    if spec.method == "none":
        return None
    api_key_for(spec.provider or "openai_compatible", spec.api_key_env, f"rerank {spec.method}:{spec.model}")
    return hash_obj([spec.method, spec.provider, spec.model, spec.base_url])
