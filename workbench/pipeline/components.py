"""Components: the stage objects one execution needs, built once and shared by its runs.

Models are loaded once, the local LLM server is started once per model, a chunk set is written
once, an index built once, whatever number of grid points use them. Nothing below the runner builds
a model or a client itself: they all come from here, and every kind of model comes from a factory
that a caller can replace. ``workbench.testing.fake_components`` swaps in a seeded fake embedder and
a fake LLM that way, so the whole run core is exercised in a unit test without a model.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import diskcache
import httpx

from ..config import EmbeddingSpec, GenerationSpec, RerankSpec
from ..config.files import Prompt
from ..errors import WorkbenchError
from ..providers.apikeys import api_key_for, keys_optional
from ..providers.clients import OPENAI_BASE_URL, endpoint_for
from ..providers.llm_server import LocalLLMServer, ServerPool
from ..providers.recording import HostedHttp
from ..providers.throttle import AdaptiveLimiter
from ..settings import Workspace, apply_offline_defaults
from ..stages import index as index_mod
from ..stages import rerank as rr
from ..stages.chunking import ChunkSet, Tokenizer, chunk_set_key, iter_chunks
from ..stages.embedding import CachedEmbedder, Embedder, load_tokenizer, make_embedder
from ..stages.generation import GenerationResult, generate, make_client
from ..stages.keys import collection_name
from ..stages.meter import StageMeter
from ..stages.retrieval import Retriever
from .plan import Plan, PlannedRun
from .progress import Progress


class Generator(Protocol):
    """Anything that answers a rendered prompt: an OpenAI-compatible endpoint, or a fake."""

    spec: GenerationSpec

    def generate(self, prompt: Prompt, question: str, context: list, answer: str | None = None) -> GenerationResult: ...


@dataclass
class ClientGenerator:
    """A generation spec served through the ``openai`` client (local llama.cpp server or hosted),
    behind its endpoint's adaptive limiter (``gate``), over ``http`` (recorded or replayed) when hosted."""

    spec: GenerationSpec
    client: object
    gate: AdaptiveLimiter | None = None
    http: httpx.Client | None = None

    def generate(self, prompt: Prompt, question: str, context: list, answer: str | None = None) -> GenerationResult:
        return generate(self.client, self.spec, prompt, question, context, answer=answer, gate=self.gate, http=self.http)


@dataclass(frozen=True)
class ChunkSource:
    """A run's chunk set: its content address, the chunks on disk, and the embedder's input limit."""

    key: str
    chunks: ChunkSet
    max_tokens: int | None


EmbedderFactory = Callable[[EmbeddingSpec], Embedder]
TokenizerFactory = Callable[[EmbeddingSpec | None], Tokenizer]
GeneratorFactory = Callable[[GenerationSpec], Generator]
RerankerFactory = Callable[[RerankSpec], Callable]
# (embedder, its fingerprint, chunks in the set, the stage cache) -> how to split that index build, or None (one builder)
SplitterFactory = Callable[[EmbeddingSpec, str, int, diskcache.Cache], "index_mod.SplitEmbedding | None"]
STAGE_CACHE_BYTES = 2**34  # the stage cache's size limit (diskcache evicts least recently used entries beyond it)


class Components:
    """Builds and memoises every stage object of one execution; close it (or use ``with``) to stop
    servers and close caches.

    Args:
        plan: What is executed (chunking tokenizers and model files are the plan's).
        workspace: Cache folders, threads, the Chroma server.
        embedders, tokenizers, generators, rerankers: factories replacing the live ones (tests).
        progress: Where notes (an index built or reused) and the index build's progress (chunks
            embedded) go; a runner given these components fills it in when it is None.
        servers: Local LLM servers shared beyond these components (one per kernel in the
            explorer); default: started here and stopped by :meth:`close`.
        http: The HTTP layer of every hosted call; default: recording into the cache folder, or
            replaying ``workspace.replay`` (``providers/recording.py``).
        splitter: Splits a large index build into ranges embedded elsewhere (the Ray executor's
            ``pipeline.splitbuild.RaySplitter``); default: every index is embedded here.
    """

    def __init__(self, plan: Plan, workspace: Workspace, *, embedders: EmbedderFactory | None = None,
                 tokenizers: TokenizerFactory | None = None, generators: GeneratorFactory | None = None,
                 rerankers: RerankerFactory | None = None, progress: Progress | None = None, servers: ServerPool | None = None,
                 http: HostedHttp | None = None, splitter: SplitterFactory | None = None):
        apply_offline_defaults()
        self.plan, self.workspace = plan, workspace
        self.progress = progress
        self.servers = servers
        self._stack = contextlib.ExitStack()
        self.http = self._stack.enter_context(
            http or HostedHttp.for_workspace(workspace.recordings_dir, workspace.replay, workspace.replay_strict))
        if self.http.replaying and self.http.strict:
            self._stack.enter_context(keys_optional())  # every answer comes from the cassette: no key needed
        self._roles: dict[GenerationSpec, str] = {}
        self.cache = self._stack.enter_context(diskcache.Cache(str(workspace.stages_dir), size_limit=STAGE_CACHE_BYTES))
        self.memo = self._stack.enter_context(diskcache.Cache(str(workspace.memo_dir)))
        self._factories = {"embedder": embedders or self._live_embedder, "tokenizer": tokenizers or self._live_tokenizer,
                           "generator": generators or self._live_generator, "reranker": rerankers or self._live_reranker}
        self._built: dict[tuple, object] = {}
        self._splitter = splitter
        self._chroma = None
        self.timings: dict[str, float] = defaultdict(float)
        self.meter = StageMeter()  # wall, CPU and memory high-water mark per stage (bench/scale.py reads them)

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._stack.close()
        self._built.clear()

    def __enter__(self) -> Components:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _once(self, key: tuple, build: Callable[[], object], timing: str | None = "model_load_s"):
        """``build()`` the first time ``key`` is asked for (timed under ``timing``), then reuse it."""
        if key not in self._built:
            if not timing:
                self._built[key] = build()
                return self._built[key]
            what = key[1].label() if hasattr(key[1], "label") else str(key[1])
            with self.meter.measure(timing.removesuffix("_s"), what if key[0] == "chunks" else f"{key[0]} {what}"):
                self._built[key] = build()
            self._account(timing)
        return self._built[key]

    def _account(self, timing: str) -> None:
        """Add the stage just measured to ``timings`` (wall under ``timing``, CPU under ``*_cpu_s``)."""
        last = self.meter.records[-1]
        self.timings[timing] += last.wall_s
        self.timings[timing.removesuffix("_s") + "_cpu_s"] += last.cpu_s

    # -- models ------------------------------------------------------------------------------------
    def embedder(self, spec: EmbeddingSpec) -> CachedEmbedder:
        return self._once(("embedder", spec), lambda: CachedEmbedder(self._factories["embedder"](spec), self.cache))

    def tokenizer(self, spec: EmbeddingSpec | None) -> Tokenizer:
        return self._once(("tokenizer", spec), lambda: self._factories["tokenizer"](spec))

    def generator(self, spec: GenerationSpec, role: str = "generation") -> Generator:
        """The generator of ``spec``; ``role`` (generation, judge, fallback) labels its recorded calls."""
        self._roles.setdefault(spec, role)
        return self._once(("generator", spec), lambda: self._factories["generator"](spec))

    def throttle(self, spec: GenerationSpec) -> AdaptiveLimiter:
        """The adaptive limiter of a generation endpoint (shared by the runs that use it, so what it
        learnt about the provider's limit carries over from one run to the next)."""
        key = ("throttle", spec.provider, spec.model, spec.base_url, spec.azure_endpoint, spec.deployment, spec.concurrency,
               spec.requests_per_minute, spec.adaptive_rate)
        return self._once(key, lambda: AdaptiveLimiter(spec.concurrency, spec.requests_per_minute, adaptive=spec.adaptive_rate),
                          timing=None)

    def hosted_client(self, role: str, provider: str, model: str) -> httpx.Client | None:
        """The HTTP client a hosted model's calls go through (None for local models: nothing to record)."""
        return None if provider == "local" else self.http.client(role, provider, model)

    def local_server(self, model: str) -> LocalLLMServer:
        def start() -> LocalLLMServer:
            self.workspace.logs_dir.mkdir(parents=True, exist_ok=True)
            if self.servers is not None:
                return self.servers.get(model, n_threads=self.workspace.local_threads, log_dir=self.workspace.logs_dir)
            server = LocalLLMServer(model, n_threads=self.workspace.local_threads, log_dir=self.workspace.logs_dir)
            return self._stack.enter_context(server)

        return self._once(("server", model), start)

    def log(self, text: str) -> None:
        if self.progress is not None:
            self.progress.message(text)

    def _live_embedder(self, spec: EmbeddingSpec) -> Embedder:
        return make_embedder(spec, threads=self.workspace.local_threads, memo=self.memo,
                             http_client=self.hosted_client("embedding", spec.provider, spec.model))

    def _live_tokenizer(self, spec: EmbeddingSpec | None) -> Tokenizer:
        built = self._built.get(("embedder", spec))  # a loaded model's own tokenizer costs nothing more
        return built.tokenizer if built is not None else load_tokenizer(spec, self.memo)

    def _live_generator(self, spec: GenerationSpec) -> Generator:
        base_url = self.local_server(spec.model).base_url if spec.provider == "local" else None
        http = self.hosted_client(self._roles.get(spec, "generation"), spec.provider, spec.model)
        return ClientGenerator(spec, make_client(spec, base_url, http_client=http), self.throttle(spec), http)

    def _live_reranker(self, spec: RerankSpec) -> Callable:
        if spec.method == "embedding":
            return rr.EmbeddingReranker(self.embedder(EmbeddingSpec(provider="local", model=spec.model)))
        if spec.method == "cross_encoder":
            return rr.CrossEncoderReranker(str(self.plan.experiment.model_paths[spec.path]), threads=self.workspace.local_threads)
        if spec.method == "llm":
            base_url = self.local_server(spec.model).base_url if spec.provider == "local" else None
            ep = endpoint_for(spec, f"rerank llm {spec.provider}:{spec.model}", base_url=base_url, timeout_s=rr.LLM_TIMEOUT_S)
            return rr.LLMReranker(ep.base_url or OPENAI_BASE_URL, ep.api_key, spec.model,
                                  http_client=self.hosted_client("rerank", spec.provider, spec.model))
        key = api_key_for("openai_compatible", spec.api_key_env, f"rerank {spec.model}")
        return rr.HostedReranker(spec.base_url, key, spec.model, http_client=self.hosted_client("rerank", "hosted", spec.model))

    # -- data stages -------------------------------------------------------------------------------
    def tokenizer_spec(self, run: PlannedRun) -> EmbeddingSpec | None:
        """The embedder whose tokenizer sizes the run's chunks (BM25 runs: the grid's first)."""
        grid = self.plan.experiment.spec.grid
        return run.config.embedding or (grid.embedding[0] if grid.embedding else None)

    def chunk_source(self, run: PlannedRun) -> ChunkSource:
        """The run's chunk set. Chunks stream from the splitter into a SQLite file in the cache,
        keyed by the chunk set's content address; a cache hit loads no model."""
        key = chunk_set_key(self.plan.dataset.docs.values(), run.config.chunking, run.tokenizer)
        return self._once(("chunks", key), lambda: self._build_chunks(run, key), timing="chunking_s")

    def _build_chunks(self, run: PlannedRun, key: str) -> ChunkSource:
        path = self.workspace.chunksets_dir / f"{key}.sqlite"
        found = self.cache.get(f"chunks:v4:{key}")  # v4: chunk sets carry their context column
        if found is None or not path.exists():
            tok = self.tokenizer(self.tokenizer_spec(run))
            if tok.name != run.tokenizer:
                raise WorkbenchError(f"run {run.run_id}: planned with tokenizer {run.tokenizer}, but {tok.name} was loaded; plan again")
            ChunkSet.write(path, iter_chunks(self.plan.dataset.docs.values(), run.config.chunking, tok))
            found = {"max_tokens": tok.max_tokens}
            self.cache.set(f"chunks:v4:{key}", found)
        return ChunkSource(key, ChunkSet(path), found["max_tokens"])

    def retriever(self, run: PlannedRun) -> Retriever:
        source = self.chunk_source(run)
        spec = run.config.embedding
        return self._once(("retriever", source.key, spec), lambda: self._build_retriever(run, source), timing=None)

    def _build_retriever(self, run: PlannedRun, source: ChunkSource) -> Retriever:
        spec = run.config.embedding
        if spec is None:
            return Retriever(source.chunks, source.key, self.cache, meter=self.meter)
        fingerprint = run.lineage["embedding_fingerprint"]
        name = collection_name(source.key, fingerprint)
        split = self._splitter(spec, fingerprint, len(source.chunks), self.cache) if self._splitter else None

        def embedded(done: int, total: int) -> None:  # progress of a build (a reused index reports nothing)
            if self.progress is not None:
                self.progress.update(f"index:{name}", f"index {spec.model}", done, total, "chunks embedded")

        parts: dict[str, float] = {}
        with self.meter.measure("embed_index", name):
            collection, built = index_mod.ensure_collection(self._chroma_client(), name, source.chunks, lambda: self.embedder(spec),
                                                            self.workspace.locks_dir, split=split, timings=parts, on_batch=embedded)
        self._account("embed_index_s")
        for key, seconds in parts.items():
            self.timings[key] += seconds
        how = f", embedded in {split.workers} ranges by {split.where}" if built and split is not None else ""
        self.log(f"index {name} ({len(source.chunks)} chunks, {spec.model}{how}): {'built' if built else 'reused'}")
        return Retriever(source.chunks, source.key, self.cache, collection, name, lambda: self.embedder(spec), meter=self.meter)

    def _chroma_client(self):
        if self._chroma is None:
            server = self.workspace.chroma_server(self.plan.experiment.spec.index)
            self._chroma = index_mod.open_chroma_server(server) if server else index_mod.open_chroma(self.workspace.chroma_dir)
        return self._chroma

    def reranker(self, run: PlannedRun) -> rr.CachedReranker | None:
        spec = run.config.rerank
        if spec is None:
            return None
        impl = self._once(("reranker", spec), lambda: self._factories["reranker"](spec))
        return rr.CachedReranker(spec, run.lineage["reranker_fingerprint"], impl, self.cache,
                                 self.chunk_source(run).chunks.indexed_text)
