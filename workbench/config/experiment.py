"""Experiment files: the pydantic schema, loading with file/field/line errors, and grid expansion.

An experiment file declares a dataset, a query sample and a grid of alternatives per stage. The
grid's cartesian product is the list of runs; stages a run does not use are dropped from its config
(BM25 needs no embedder) so that equivalent grid points collapse into one run.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from ..errors import ConfigError, unknown_name
from .yamlfile import StrictModel, field_error, parse_yaml, validation_error

SPLITTERS = ("sentence", "token", "none")
# What a chunk is prefixed with when it is embedded and indexed (never part of its offsets):
# nothing, its document's title, or the title and the Markdown/HTML headings it sits under.
CHUNK_CONTEXTS = ("none", "title", "heading_path")
RETRIEVAL_METHODS = ("dense", "bm25", "hybrid")
EMBEDDING_PROVIDERS = ("local", "openai", "openai_compatible", "azure_openai")
GENERATION_PROVIDERS = ("local", "openai", "openai_compatible", "azure_openai")
# Local models that ship inside PyPI packages; see workbench/stages/embedding.py and workbench/providers/llm_server.py.
LOCAL_EMBEDDING_MODELS = ("all-MiniLM-L6-v2", "multilingual-e5-small")
LOCAL_LLMS = ("smollm2-135m",)


class _Spec(StrictModel):
    """Base of every spec of an experiment file (unknown keys are errors with a suggestion)."""


def _check_azure(spec) -> None:
    """``provider: azure_openai`` needs its resource, API version and deployment; no other provider takes them."""
    fields = ("azure_endpoint", "api_version", "deployment")
    if spec.provider == "azure_openai":
        for name in fields:
            if not getattr(spec, name):
                raise field_error(name, f"provider 'azure_openai' needs {name}")
        if spec.base_url:
            raise field_error("base_url", "provider 'azure_openai' takes azure_endpoint, not base_url")
        if not spec.azure_endpoint.startswith(("https://", "http://")):
            raise field_error("azure_endpoint", f"expected https://RESOURCE.openai.azure.com, got {spec.azure_endpoint!r}")
        return
    for name in fields:
        if getattr(spec, name) is not None:
            raise field_error(name, f"{name} applies to provider 'azure_openai' only")


def _check_name(kind: str, value: str, choices: tuple[str, ...], field: str | None = None) -> str:
    if value not in choices:
        message = unknown_name(kind, value, choices)
        raise field_error(field, message) if field else ValueError(message)
    return value


class ChunkingSpec(_Spec):
    """How documents become chunks. ``splitter: none`` keeps whole documents.

    ``context`` is what each chunk is prefixed with when it is embedded, indexed by BM25 and shown
    to a reranker (the LLM sees it as the passage header): ``none``, ``title`` (the document's
    title, as BEIR and MTEB index title + text) or ``heading_path`` (title and the Markdown/HTML
    headings above the chunk). Left unset, it is ``title`` for a dataset whose documents have
    titles apart from their text (BEIR) and ``none`` otherwise (:func:`expand_grid`). Chunk
    boundaries and offsets do not depend on it: ``chunk_size`` counts the chunk's own text.
    """

    splitter: str
    chunk_size: int | None = Field(default=None, gt=0)
    chunk_overlap: int = Field(default=0, ge=0)
    context: str | None = None

    @field_validator("splitter")
    @classmethod
    def _splitter(cls, v: str) -> str:
        return _check_name("splitter", v, SPLITTERS)

    @field_validator("context")
    @classmethod
    def _context(cls, v: str | None) -> str | None:
        return None if v is None else _check_name("chunk context", v, CHUNK_CONTEXTS)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # No context (unset, or resolved to none) is left out of every dump -- run ids, chunk-set
        # keys, stored configs -- so they stay what they were before chunk context existed.
        out = handler(self)
        if isinstance(out, dict) and out.get("context") is None:
            out.pop("context", None)
        return out

    @model_validator(mode="after")
    def _sizes(self) -> ChunkingSpec:
        if self.splitter == "none":
            if self.chunk_size is not None or self.chunk_overlap:
                raise ValueError("splitter 'none' keeps whole documents: remove chunk_size/chunk_overlap")
        elif self.chunk_size is None:
            raise ValueError(f"splitter {self.splitter!r} needs chunk_size")
        elif self.chunk_overlap >= self.chunk_size:
            raise field_error("chunk_overlap", f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size ({self.chunk_size})")
        return self

    def label(self) -> str:
        base = "whole documents" if self.splitter == "none" else f"{self.splitter} {self.chunk_size}/{self.chunk_overlap}"
        return base + {"title": " +title", "heading_path": " +headings"}.get(self.context or "", "")

    def resolved(self, titled: bool) -> ChunkingSpec:
        """The spec a run uses: an unset context becomes ``title`` for a titled dataset, and
        ``none`` becomes None (no context), so equal grid points compare and hash equal."""
        context = ("title" if titled else None) if self.context is None else (None if self.context == "none" else self.context)
        return self if context == self.context else self.model_copy(update={"context": context})


class EmbeddingSpec(_Spec):
    """An embedding model: a bundled local one, OpenAI, or any OpenAI-compatible endpoint."""

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    batch_size: int = Field(default=32, gt=0)
    dimensions: int | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0, description="input limit of a hosted model")
    send_input_type: bool = Field(default=False, description="send input_type query/passage (e5-style endpoints)")
    timeout_s: float = Field(default=60.0, gt=0, description="per-request timeout of a remote endpoint")
    max_retries: int = Field(default=3, ge=0, le=20, description="retries on 429/5xx/timeouts/connection errors")
    azure_endpoint: str | None = Field(default=None, description="azure_openai: https://RESOURCE.openai.azure.com")
    api_version: str | None = Field(default=None, description="azure_openai: the API version, e.g. 2024-10-21")
    deployment: str | None = Field(default=None, description="azure_openai: the deployment name")

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        return _check_name("embedding provider", v, EMBEDDING_PROVIDERS)

    @model_validator(mode="after")
    def _model(self) -> EmbeddingSpec:
        if self.provider == "local":
            _check_name("local embedding model", self.model, LOCAL_EMBEDDING_MODELS, "model")
            if self.base_url or self.api_key_env:
                raise ValueError("a local embedding model takes no base_url/api_key_env")
        if self.provider == "openai_compatible" and not self.base_url:
            raise field_error("base_url", "provider 'openai_compatible' needs base_url")
        _check_azure(self)
        return self

    def label(self) -> str:
        return self.model if self.provider == "local" else f"{self.provider}:{self.model}"


class RetrievalSpec(_Spec):
    """First-stage retrieval. Hybrid fuses dense and BM25 rankings by reciprocal rank fusion."""

    method: str
    top_k: int = Field(default=5, gt=0)
    candidates: int | None = Field(default=None, gt=0, description="hybrid: depth taken from each retriever")
    rrf_k: int = Field(default=60, gt=0, description="hybrid: the k in 1/(k + rank)")

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_name("retrieval method", v, RETRIEVAL_METHODS)

    @model_validator(mode="after")
    def _hybrid_only(self) -> RetrievalSpec:
        if self.method != "hybrid" and (self.candidates is not None or self.rrf_k != 60):
            raise ValueError("candidates/rrf_k apply to method 'hybrid' only")
        if self.candidates is not None and self.candidates < self.top_k:
            raise ValueError(f"candidates ({self.candidates}) must be at least top_k ({self.top_k})")
        return self

    @property
    def needs_embedding(self) -> bool:
        return self.method in ("dense", "hybrid")

    def label(self) -> str:
        return f"{self.method}@{self.top_k}"


RERANK_METHODS = ("none", "embedding", "cross_encoder", "llm", "hosted")


class RerankSpec(_Spec):
    """A second stage: re-score the first stage's ``candidates`` hits and keep the best ``top_n``.

    - ``embedding``: a second local embedder (``model``), e.g. e5-small over MiniLM/BM25 candidates;
    - ``cross_encoder``: a sentence-transformers cross-encoder in a local folder (``path``);
    - ``llm``: listwise LLM reranking (``provider``/``model``, as for generation);
    - ``hosted``: a Cohere/Jina-style ``/rerank`` API (``base_url``, ``model``, ``api_key_env``).
    """

    method: str
    candidates: int = Field(default=20, gt=0)
    top_n: int = Field(default=5, gt=0)
    model: str | None = None
    provider: str | None = None
    path: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        return _check_name("rerank method", v, RERANK_METHODS)

    @model_validator(mode="after")
    def _fields(self) -> RerankSpec:
        allowed = {"none": set(), "embedding": {"model"}, "cross_encoder": {"path"},
                   "llm": {"provider", "model", "base_url", "api_key_env"}, "hosted": {"model", "base_url", "api_key_env"}}[self.method]
        for name in ("model", "provider", "path", "base_url", "api_key_env"):
            if getattr(self, name) is not None and name not in allowed:
                raise ValueError(f"rerank method {self.method!r} takes no {name!r}")
        if self.method == "none":
            return self
        if self.top_n > self.candidates:
            raise ValueError(f"top_n ({self.top_n}) must not exceed candidates ({self.candidates})")
        if self.method == "embedding":
            _check_name("local embedding model", self.model or "", LOCAL_EMBEDDING_MODELS)
        elif self.method == "cross_encoder" and not self.path:
            raise ValueError("rerank method 'cross_encoder' needs path (a local folder with the model)")
        elif self.method == "llm":
            _check_name("generation provider", self.provider or "", GENERATION_PROVIDERS)
            if self.provider == "local":
                _check_name("local LLM", self.model or "", LOCAL_LLMS)
            elif not self.model or (self.provider == "openai_compatible" and not self.base_url):
                raise ValueError("rerank method 'llm' needs model (and base_url for openai_compatible)")
        elif self.method == "hosted" and not (self.base_url and self.model):
            raise ValueError("rerank method 'hosted' needs base_url and model")
        return self

    def label(self) -> str:
        if self.method == "none":
            return "-"
        what = {"embedding": self.model, "cross_encoder": Path(self.path or "").name, "llm": self.model, "hosted": self.model}[self.method]
        return f"{self.method}:{what} {self.candidates}->{self.top_n}"


class FallbackSpec(_Spec):
    """A second model asked when the primary one still fails after its retries (or its circuit
    breaker is open). It uses the primary's prompt, temperature, seed and max_tokens; a row answered
    by it records ``fallback_used`` and the model in its trace."""

    provider: str
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        return _check_name("generation provider", v, GENERATION_PROVIDERS)

    @model_validator(mode="after")
    def _model(self) -> FallbackSpec:
        if self.provider == "local":
            _check_name("local LLM", self.model, LOCAL_LLMS, "model")
            if self.base_url or self.api_key_env:
                raise ValueError("a local LLM takes no base_url/api_key_env (the workbench starts its own server)")
        if self.provider == "openai_compatible" and not self.base_url:
            raise field_error("base_url", "provider 'openai_compatible' needs base_url")
        return self


# Fault-handling settings of a generation entry: they change how a run copes with a bad endpoint,
# not what a working endpoint answers, so they stay out of the run id (see runner.plan_experiment).
RESILIENCE_FIELDS = ("max_retries", "retry_backoff_s", "breaker_failures", "breaker_reset_s", "adaptive_rate")


class GenerationSpec(_Spec):
    """An LLM and a prompt file. Every provider is reached through the OpenAI API.

    ``prompt`` pins this entry to one prompt file; without it the entry is crossed with every
    prompt of ``grid.prompt`` (the prompt axis)."""

    provider: str
    model: str
    prompt: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0
    max_tokens: int = Field(default=128, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    concurrency: int = Field(default=1, ge=1, le=64, description="parallel requests to a remote endpoint")
    requests_per_minute: float | None = Field(default=None, gt=0, description="rate limit for a remote endpoint")
    adaptive_rate: bool = Field(default=True, description="AIMD: halve concurrency on 429/Retry-After, grow back by one per success window")
    max_retries: int = Field(default=3, ge=0, le=20, description="retries on 429/5xx/timeouts/connection errors")
    retry_backoff_s: float = Field(default=0.5, gt=0, le=60, description="first backoff; doubles per retry, with jitter")
    breaker_failures: int = Field(default=5, ge=1, description="failed attempts in a row that open the endpoint's circuit breaker")
    breaker_reset_s: float = Field(default=30.0, gt=0, description="seconds an open breaker waits before a trial call")
    fallback: FallbackSpec | None = None
    azure_endpoint: str | None = Field(default=None, description="azure_openai: https://RESOURCE.openai.azure.com")
    api_version: str | None = Field(default=None, description="azure_openai: the API version, e.g. 2024-10-21")
    deployment: str | None = Field(default=None, description="azure_openai: the deployment name")

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str) -> str:
        return _check_name("generation provider", v, GENERATION_PROVIDERS)

    def fallback_spec(self) -> GenerationSpec | None:
        """The fallback as a generation spec (the primary's prompt and sampling), or None."""
        fb = self.fallback
        if fb is None:
            return None
        return self.model_copy(update={"provider": fb.provider, "model": fb.model, "base_url": fb.base_url,
                                       "api_key_env": fb.api_key_env, "timeout_s": fb.timeout_s, "fallback": None,
                                       "concurrency": 1, "requests_per_minute": None})

    @model_validator(mode="after")
    def _model(self) -> GenerationSpec:
        if self.provider == "local":
            _check_name("local LLM", self.model, LOCAL_LLMS, "model")
            if self.base_url or self.api_key_env:
                raise ValueError("a local LLM takes no base_url/api_key_env (the workbench starts its own server)")
            if self.concurrency > 1:
                # llama.cpp answers one request at a time with every core; parallel requests only queue
                raise field_error("concurrency", "the local LLM serves one request at a time: concurrency must be 1")
        if self.provider == "openai_compatible" and not self.base_url:
            raise field_error("base_url", "provider 'openai_compatible' needs base_url")
        _check_azure(self)
        return self

    def label(self) -> str:
        """The model (the prompt is an axis of its own: :meth:`RunConfig.axes`)."""
        return self.model if self.provider == "local" else f"{self.provider}:{self.model}"


class JudgeSpec(_Spec):
    """An optional LLM-as-judge of faithfulness, reached like any generation model.

    ``repeats: k`` asks the judge k times per answer (seeds ``seed``, ``seed + 1``, ...; at the
    configured ``temperature``) to measure its noise: agreement between repeats and the flip rate
    (see workbench/evaluation/judge.py). At temperature 0 most servers answer every seed alike, so
    repeats then measure only the server's own nondeterminism; set a temperature to measure sampling.
    """

    provider: str
    model: str
    prompt: str
    base_url: str | None = None
    api_key_env: str | None = None
    seed: int = 0
    temperature: float = Field(default=0.0, ge=0, le=2)
    repeats: int = Field(default=1, ge=1, le=20, description="verdicts asked per answer (distinct seeds)")
    max_tokens: int = Field(default=8, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _valid(self) -> JudgeSpec:
        self.as_generation()  # same rules as a generation model
        return self

    def as_generation(self, repeat: int = 0) -> GenerationSpec:
        """The judge as a generation spec for its ``repeat``-th verdict (seed ``seed + repeat``)."""
        return GenerationSpec(provider=self.provider, model=self.model, prompt=self.prompt, base_url=self.base_url,
                              api_key_env=self.api_key_env, temperature=self.temperature, seed=self.seed + repeat,
                              max_tokens=self.max_tokens, timeout_s=self.timeout_s)

    def identity(self) -> dict:
        """What identifies the judge's verdicts (prompt aside: its hash is kept apart); ``repeats``
        and ``temperature`` only when set, so judges configured before they existed keep their ids."""
        out = self.model_dump(exclude={"prompt"})
        if out["repeats"] == 1:
            del out["repeats"]
        if out["temperature"] == 0:
            del out["temperature"]
        return out


class QuerySpec(_Spec):
    """A deterministic sample of the dataset's queries (all of them when ``limit`` is omitted).

    ``unanswerable`` adds that fraction of the sample again with its gold documents withheld from
    retrieval, to measure refusal when the answer is not in the corpus.
    """

    limit: int | None = Field(default=None, gt=0)
    seed: int = 0
    unanswerable: float = Field(default=0.0, ge=0, le=1)


class RelevanceSpec(_Spec):
    """When a chunk counts as relevant to a question with gold character spans (chunk-level metrics).

    ``min_overlap``: the shared characters must be at least this share of the shorter of the gold
    span and the chunk; ``min_chars``: instead, at least this many shared characters.
    """

    min_overlap: float = Field(default=0.5, gt=0, le=1)
    min_chars: int | None = Field(default=None, gt=0)


class GridSpec(_Spec):
    chunking: list[ChunkingSpec] = Field(min_length=1)
    embedding: list[EmbeddingSpec] = Field(default_factory=list)
    retrieval: list[RetrievalSpec] = Field(min_length=1)
    rerank: list[RerankSpec] | None = None
    generation: list[GenerationSpec] | None = None
    prompt: list[str] | None = Field(default=None, description="prompt files crossed with every generation entry that pins none")

    @model_validator(mode="after")
    def _prompts(self) -> GridSpec:
        if self.prompt is not None:
            if not self.prompt:
                raise field_error("prompt", "give at least one prompt file, or omit the axis")
            if len(set(self.prompt)) != len(self.prompt):
                raise field_error("prompt", "repeats an earlier prompt file")
            if not self.generation:
                raise field_error("prompt", "the prompt axis needs models under grid.generation")
            if all(g.prompt for g in self.generation):
                raise field_error("prompt", "unused: every grid.generation entry pins its own prompt (remove one, or the axis)")
        for i, g in enumerate(self.generation or []):
            if g.prompt is None and not self.prompt:
                raise field_error(("generation", i, "prompt"), "give the entry a prompt file, or list prompt files under grid.prompt")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> GridSpec:
        if any(r.needs_embedding for r in self.retrieval) and not self.embedding:
            raise ValueError("retrieval methods 'dense'/'hybrid' need at least one entry under 'embedding'")
        if self.generation is not None and not self.generation:
            raise ValueError("generation: give at least one model, or omit the axis for a retrieval-only experiment")
        if self.rerank is not None and not self.rerank:
            raise ValueError("rerank: give at least one entry (use {method: none} for no reranking), or omit the axis")
        for axis in ("chunking", "embedding", "retrieval", "rerank", "generation"):
            values = getattr(self, axis) or []
            seen = set()
            for i, v in enumerate(values):
                if v in seen:
                    raise ValueError(f"{axis}[{i}] repeats an earlier entry")
                seen.add(v)
        return self


class BaselineSpec(_Spec):
    """What a gate compares against: a stored run, or a stored experiment (its run with the same
    axes, else its best run)."""

    run_id: str | None = None
    experiment: str | None = None

    @model_validator(mode="after")
    def _one(self) -> BaselineSpec:
        if (self.run_id is None) == (self.experiment is None):
            raise ValueError("give exactly one of run_id or experiment")
        return self


class GateSpec(_Spec):
    """A regression gate on one aggregate metric.

    ``min``/``max`` bound the run's value; ``max_drop`` (higher-is-better metrics) and
    ``max_increase`` (latency, cost) bound the change from the baseline. With ``significant: false``
    the point value is compared with each bound. With ``significant: true`` a confidence interval at
    level ``1 - alpha`` (Bonferroni over the call's significance checks) is: pass when it lies within
    the bound, fail when wholly beyond it, inconclusive otherwise (workbench/gates.py, docs/metrics.md).
    """

    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(default=None, ge=0)
    max_increase: float | None = Field(default=None, ge=0)
    significant: bool = False
    alpha: float = Field(default=0.05, gt=0, lt=1)

    @model_validator(mode="after")
    def _some_bound(self) -> GateSpec:
        if all(v is None for v in (self.min, self.max, self.max_drop, self.max_increase)):
            raise ValueError("a gate needs at least one of min, max, max_drop, max_increase")
        return self


class BudgetSpec(_Spec):
    """Spending limits of one ``workbench run`` invocation. When one is reached the run stops
    cleanly: the questions answered so far are stored, the run's status is ``stopped: budget``, and
    a later ``workbench run`` resumes where it stopped (with a fresh budget)."""

    max_cost_usd: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, gt=0, description="prompt + completion tokens of the LLM calls made")

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetSpec:
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ValueError("a budget needs max_cost_usd or max_tokens")
        return self


class InjectionSpec(_Spec):
    """The prompt-injection suite: ``n`` attack trials per run (the suite's attacks in turn, each
    planted into a different question's retrieved passages or into the question itself)."""

    suite: str
    n: int | None = Field(default=None, gt=0, description="trials per run (default: every attack once)")


class PIISpec(_Spec):
    """PII detection in retrieved context and answers; ``store_redaction`` replaces detected PII in
    the stored question rows (hits text, answer, question) and hence in every report."""

    store_redaction: bool = False


class SafetySpec(_Spec):
    injection: InjectionSpec | None = None
    pii: PIISpec | None = None
class PassBound(_Spec):
    """One criterion of ``pass``: the question's value of a metric must be at least ``min`` and/or at
    most ``max``."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> PassBound:
        if self.min is None and self.max is None:
            raise ValueError("a pass criterion needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class ChromaServerSpec(_Spec):
    """A Chroma server (``chroma run --host H --port P``) holding the vector indexes."""

    host: str = Field(min_length=1)
    port: int = Field(default=8000, gt=0, lt=65536)
    ssl: bool = False

    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}"


class IndexSpec(_Spec):
    """Where vector indexes live: a Chroma server (``chroma``), else the embedded Chroma folder in
    the cache. Infrastructure only: it never changes run ids or results, and ``--chroma-url`` /
    ``$WORKBENCH_CHROMA_URL`` override it."""

    chroma: ChromaServerSpec | None = None


class MlflowSpec(_Spec):
    """Where ``workbench run`` logs the experiment's runs (``workbench export NAME --to mlflow`` too)."""

    tracking_uri: str | None = Field(default=None, description="e.g. http://mlflow.internal:5000 or sqlite:///results/mlflow.db")
    experiment: str | None = Field(default=None, description="the MLflow experiment (default: the workbench experiment's name)")

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, v: str | None) -> str | None:
        if v and re.match(r"^[a-z+]+://[^/@]*:[^/@]*@", v):
            raise ValueError("put no password in tracking_uri (it would be stored with the experiment): "
                             "set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead")
        return v


class TrackingSpec(_Spec):
    """Experiment trackers the results are also logged to. Infrastructure only: never in a run id."""

    mlflow: MlflowSpec | None = None


class LeaderboardSpec(_Spec):
    """What ``workbench results`` shows next to the ranking metric: at most five metric columns
    (registry names, e.g. ``[hit_at_5, f1, hallucination, latency_p95_s, cost_per_question_usd]``,
    the default; checked when the experiment is planned)."""

    columns: list[str] = Field(max_length=5)


SEARCH_STRATEGIES = ("grid", "race")
RACE_FIELDS = ("metric", "margin", "alpha", "round", "min_questions", "seed", "constraints", "prune_retrieval")


class ConstraintSpec(_Spec):
    """A limit a raced configuration must respect: ``{max: X}`` on a latency percentile
    (``generation_latency_p95_s``) or a mean per question (``cost_per_question_usd``)."""

    max: float = Field(gt=0)


class PruneRetrievalSpec(_Spec):
    """Staged pruning: retrieval for every configuration on every question first (no LLM call),
    then retrieval settings significantly worse than the best by more than ``margin`` on
    ``metric`` are eliminated before any generation is spent on them."""

    metric: str
    margin: float = 0.05

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"margin must be >= 0, got {v}")
        return v


class SearchSpec(_Spec):
    """How the grid is searched. ``grid`` (the default) runs every configuration on every
    question; ``race`` evaluates the questions round by round in a seeded order and stops the
    configurations that are worse than the leader by more than ``margin`` on ``metric`` with a
    confidence sequence at error rate ``alpha`` (docs/metrics.md, "Racing"). The metric name is
    checked against the metric registry when the experiment is planned."""

    strategy: str = "grid"
    metric: str | None = Field(default=None, description="default: f1 with answers, else ndcg_at_10")
    margin: float = 0.02
    alpha: float = 0.05
    round: int = 10
    min_questions: int = 20
    seed: int = 0
    constraints: dict[str, ConstraintSpec] = Field(default_factory=dict)
    prune_retrieval: PruneRetrievalSpec | None = None

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        return _check_name("search strategy", v, SEARCH_STRATEGIES)

    @field_validator("margin")
    @classmethod
    def _margin(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"margin must be >= 0, got {v}")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"alpha must be in (0, 1), got {v}")
        return v

    @field_validator("round", "min_questions")
    @classmethod
    def _positive(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _race_fields(self) -> SearchSpec:
        if self.strategy == "grid":
            for name in RACE_FIELDS:  # a saved plan dumps the defaults: only a changed value is an error
                if name in self.model_fields_set and getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True):
                    raise field_error(name, f"{name} applies to strategy 'race' only")
        return self

    @property
    def is_race(self) -> bool:
        return self.strategy == "race"


class ExperimentSpec(_Spec):
    """One bake-off: a dataset, a query sample, and the grid of alternatives to compare."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=80)
    description: str = ""
    dataset: str
    queries: QuerySpec = QuerySpec()
    grid: GridSpec
    baseline: BaselineSpec | None = None
    gates: dict[str, GateSpec] = Field(default_factory=dict)
    limits: dict[str, float] = Field(default_factory=dict, description="the recommendation must stay within these (e.g. latency_p95 or cost)")
    judge: JudgeSpec | None = None
    budget: BudgetSpec | None = None
    safety: SafetySpec | None = None
    relevance: RelevanceSpec = RelevanceSpec()
    index: IndexSpec | None = None
    search: SearchSpec = SearchSpec()
    tracking: TrackingSpec | None = None
    leaderboard: LeaderboardSpec | None = None
    # KPIs: a question passes when it meets every criterion (per-question metrics, checked by the
    # pipeline); token_budget bounds prompt + completion tokens per question. Both decide stored
    # per-question values, so both are part of the run ids (only when set).
    pass_criteria: dict[str, PassBound] = Field(default_factory=dict, alias="pass")
    token_budget: int | None = Field(default=None, gt=0, description="prompt + completion tokens a question may use")

    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _gates_need_baseline(self) -> ExperimentSpec:
        for metric, gate in self.gates.items():
            if (gate.max_drop is not None or gate.max_increase is not None) and self.baseline is None:
                raise ValueError(f"gate {metric!r} compares with a baseline: add 'baseline'")
        return self


class RunConfig(_Spec):
    """One point of the grid. ``embedding`` is None when the retriever needs none (BM25)."""

    chunking: ChunkingSpec
    embedding: EmbeddingSpec | None
    retrieval: RetrievalSpec
    generation: GenerationSpec | None
    rerank: RerankSpec | None = None

    @property
    def final_k(self) -> int:
        """How many chunks reach the answer and the metrics."""
        return self.rerank.top_n if self.rerank else self.retrieval.top_k

    def first_stage(self) -> RetrievalSpec:
        """The first-stage retrieval: ``candidates`` deep when a reranker follows."""
        if self.rerank is None:
            return self.retrieval
        update = {"top_k": self.rerank.candidates}
        if self.retrieval.candidates is not None and self.retrieval.candidates < self.rerank.candidates:
            update["candidates"] = self.rerank.candidates
        return self.retrieval.model_copy(update=update)

    def axes(self) -> dict[str, str]:
        """Human-readable axis values, used as leaderboard columns."""
        return {
            "chunking": self.chunking.label(),
            "embedding": self.embedding.label() if self.embedding else "-",
            "retrieval": self.retrieval.label(),
            "rerank": self.rerank.label() if self.rerank else "-",
            "generation": self.generation.label() if self.generation else "-",
            "prompt": Path(self.generation.prompt).stem if self.generation else "-",
        }


class Experiment(BaseModel):
    """A validated experiment file with its paths resolved."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: ExperimentSpec
    path: Path
    dataset_path: Path
    prompt_paths: dict[str, Path]  # GenerationSpec.prompt as written -> resolved file
    model_paths: dict[str, Path] = {}  # RerankSpec.path as written -> resolved folder
    attack_suite_path: Path | None = None  # safety.injection.suite, resolved

    @property
    def name(self) -> str:
        return self.spec.name

    def runs(self, titled: bool = False) -> list[RunConfig]:
        """The grid points; ``titled``: the dataset's documents have titles (the chunk context default)."""
        return expand_grid(self.spec.grid, titled)


def generation_entries(grid: GridSpec) -> list[GenerationSpec]:
    """The generation axis crossed with the prompt axis: an entry that pins its prompt stays as it
    is (the same spec as before the prompt axis existed, so its run ids do not change); one without
    is repeated for every prompt of ``grid.prompt``, model-major."""
    out: list[GenerationSpec] = []
    for g in grid.generation or []:
        for p in [g.prompt] if g.prompt else grid.prompt or []:
            entry = g if p == g.prompt else g.model_copy(update={"prompt": p})
            if entry not in out:
                out.append(entry)
    return out


def expand_grid(grid: GridSpec, titled: bool = False) -> list[RunConfig]:
    """Cartesian product of the axes, with unused stages dropped and duplicates removed, in order.

    ``titled``: the dataset's documents have titles, so an unset chunk context is ``title``."""
    runs: list[RunConfig] = []
    seen: set[RunConfig] = set()
    embeddings = grid.embedding or [None]
    for chunking, embedding, retrieval, rerank, generation in itertools.product(
        [c.resolved(titled) for c in grid.chunking], embeddings, grid.retrieval, grid.rerank or [None], generation_entries(grid) or [None]
    ):
        run = RunConfig(
            chunking=chunking,
            embedding=embedding if retrieval.needs_embedding else None,
            retrieval=retrieval,
            rerank=None if rerank is None or rerank.method == "none" else rerank,
            generation=generation,
        )
        if run not in seen:
            seen.add(run)
            runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# Loading


def resolve_path(value: str, experiment_path: Path, field: str) -> Path:
    """Resolve a path from an experiment file: relative to the file's folder, then to the cwd."""
    p = Path(value).expanduser()
    candidates = [p] if p.is_absolute() else [experiment_path.parent / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    tried = " or ".join(str(c) for c in candidates)
    raise ConfigError(f"{experiment_path}: {field}: {value!r} not found (looked for {tried})")


def parse_experiment(text: str, path: Path) -> Experiment:
    """Validate experiment YAML ``text`` (read from ``path``) and resolve the files it names."""
    data, root = parse_yaml(text, path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of experiment fields, got {type(data).__name__}")
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(path, exc, root) from None
    dataset_path = resolve_path(spec.dataset, path, "dataset")
    prompt_paths: dict[str, Path] = {}
    for i, g in enumerate(spec.grid.generation or []):
        if g.prompt is not None:
            prompt_paths[g.prompt] = resolve_path(g.prompt, path, f"grid.generation[{i}].prompt")
    for i, p in enumerate(spec.grid.prompt or []):
        prompt_paths[p] = resolve_path(p, path, f"grid.prompt[{i}]")
    if spec.judge is not None:
        prompt_paths[spec.judge.prompt] = resolve_path(spec.judge.prompt, path, "judge.prompt")
    model_paths: dict[str, Path] = {}
    for i, r in enumerate(spec.grid.rerank or []):
        if r.path is not None:
            model_paths[r.path] = resolve_path(r.path, path, f"grid.rerank[{i}].path")
    attack_suite_path = None
    if spec.safety is not None and spec.safety.injection is not None:
        attack_suite_path = resolve_path(spec.safety.injection.suite, path, "safety.injection.suite")
    return Experiment(spec=spec, path=path.resolve(), dataset_path=dataset_path, prompt_paths=prompt_paths, model_paths=model_paths,
                      attack_suite_path=attack_suite_path)


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read and validate an experiment file; every problem is a one-line ``ConfigError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start})") from None
    return parse_experiment(text, path)
