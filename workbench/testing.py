"""Seeded fakes for fast end-to-end tests of the run core: an embedder and an LLM with no model.

A fake must never pass for a real model: the fakes serve only specs that point at
:data:`FAKE_BASE_URL` (a reserved ``.invalid`` host that no network resolves), so a fake's run id,
cache keys and index names are those of that endpoint and can never collide with a real model's.
Declare them in an experiment like any OpenAI-compatible endpoint::

    embedding:  [{provider: openai_compatible, model: fake-embedder, base_url: http://fake.invalid/v1}]
    generation: [{provider: openai_compatible, model: fake-llm, base_url: http://fake.invalid/v1, prompt: ...}]

and run with ``Runner(plan, workspace, components=fake_components(plan, workspace))``.

Both are deterministic functions of their input (no global state, no Python ``hash``), so the
metrics of a run over a fixed dataset are golden numbers that a test can pin exactly.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable

import numpy as np

from .config import EmbeddingSpec, GenerationSpec
from .config.files import Prompt
from .errors import ProviderError, WorkbenchError
from .pipeline.components import Components
from .pipeline.plan import Plan
from .settings import Workspace
from .stages.embedding import embedder_fingerprint, load_tokenizer
from .stages.generation import GenerationResult, render

FAKE_BASE_URL = "http://fake.invalid/v1"
_WORD = re.compile(r"\w+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _check_fake(spec, what: str) -> None:
    if getattr(spec, "base_url", None) != FAKE_BASE_URL:
        raise WorkbenchError(f"the fake {what} serves only specs with base_url {FAKE_BASE_URL!r}, got {spec!r}")


class FakeEmbedder:
    """Random indexing: each word has a fixed dense random vector (seeded by the md5 of the word);
    a text's vector is the L2-normalised sum of its words'. Texts that share words are close, so
    dense retrieval behaves like retrieval; dense word vectors make exact distance ties (which an
    HNSW index breaks arbitrarily) practically impossible.

    ``fail_on``: texts containing this substring raise ``ProviderError`` (an endpoint that fails).
    """

    def __init__(self, spec: EmbeddingSpec, dim: int = 64, fail_on: str | None = None):
        _check_fake(spec, "embedder")
        self.model_id = f"{spec.provider}:{spec.model}"
        self.fingerprint = embedder_fingerprint(spec)
        self.tokenizer = load_tokenizer(spec)
        self.dim, self.fail_on = dim, fail_on
        self.calls = 0

    def _word(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.md5(word.encode("utf-8")).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim)
        for w in _words(text):
            v += self._word(w)
        norm = float(np.linalg.norm(v))
        if norm == 0:
            v[0], norm = 1.0, 1.0
        return (v / norm).astype(np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise ProviderError(f"embedding {self.model_id}: APIConnectionError: fake endpoint refused")
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    embed_passages = _embed
    embed_queries = _embed


class FakeLLM:
    """Answers extractively: the first ``words`` words of the context sentence sharing the most
    words with the question, citing its passage ``[n]``; "I don't know." without context. As a
    judge (``answer`` given) it says "yes" when most of the answer's words are in the context.

    Token counts are word counts of the rendered prompt and the answer (exact, not estimated).
    """

    def __init__(self, spec: GenerationSpec, words: int = 12):
        _check_fake(spec, "LLM")
        self.spec, self.words = spec, words
        self.calls = 0

    def generate(self, prompt: Prompt, question: str, context: list, answer: str | None = None) -> GenerationResult:
        t0 = time.perf_counter()
        self.calls += 1
        rendered = render(prompt, question, context, answer)
        text = self._judge(context, answer) if answer is not None else self._answer(question, context)
        prompt_tokens = len(_words(rendered if isinstance(rendered, str) else " ".join(m["content"] for m in rendered)))
        latency = time.perf_counter() - t0
        return GenerationResult(text, prompt_tokens, len(_words(text)), False, latency, latency)

    def _answer(self, question: str, context: Iterable) -> str:
        asked = set(_words(question))
        best, best_overlap, cited = None, 0, None
        for chunk in context:
            for sentence in _SENTENCE.split(chunk.text):
                overlap = len(asked & set(_words(sentence)))
                if overlap > best_overlap:
                    best, best_overlap, cited = sentence, overlap, chunk.number
        if best is None:
            return "I don't know."
        return " ".join(best.split()[: self.words]) + f" [{cited}]"

    def _judge(self, context: Iterable, answer: str) -> str:
        """At temperature > 0 the judge is noisy: its verdict flips for a seeded sixth of the
        (seed, answer) pairs, so repeats with distinct seeds disagree as a sampled judge would."""
        seen = {w for c in context for w in _words(c.text)}
        words = _words(answer)
        verdict = bool(words) and sum(w in seen for w in words) / len(words) >= 0.5
        if self.spec.temperature > 0 and hashlib.md5(f"{self.spec.seed}|{answer}".encode()).digest()[0] % 6 == 0:
            verdict = not verdict
        return "yes" if verdict else "no"


def fake_components(plan: Plan, workspace: Workspace, *, fail_on: str | None = None, words: int = 12) -> Components:
    """Components whose embedders and LLMs are the fakes (for specs at :data:`FAKE_BASE_URL`)."""
    return Components(plan, workspace, embedders=lambda spec: FakeEmbedder(spec, fail_on=fail_on),
                      generators=lambda spec: FakeLLM(spec, words=words))
