"""What a plan will cost before anything runs: ``workbench plan`` and the start of ``workbench run``.

A dry run: nothing is computed or written. Chunk sets and indexes are looked up in the cache
(which are already built), texts to embed are counted from cached chunk sets (estimated from the
documents' length otherwise), LLM calls are counted for the grid and, for a race, its worst case
(nothing eliminated) and its expected count (from this experiment's stored rows when there are
any), tokens come from stored rows of the same model and prompt (else from the chunk sizes and
``max_tokens``), cost from the price table, and time from the throughput that earlier runs on this
machine measured (``runs.timings``), or "unknown" the first time.
"""

from __future__ import annotations

import math
import platform
from collections import defaultdict

from ..evaluation.sequential import min_questions_to_eliminate
from ..providers.prices import cost_usd, load_prices, price_name
from ..settings import Workspace
from ..stages.chunking import ChunkSet, chunk_set_key
from ..stages.keys import collection_name
from ..store import Store
from .plan import Plan, PlannedRun
from .search import resolve_search

CHARS_PER_TOKEN = 4.0  # English text, for chunk counts and prompt sizes that nothing measured yet


def chunk_sets(plan: Plan, workspace: Workspace) -> dict[str, dict]:
    """Each distinct chunk set: cached or not, and its chunk count (exact when cached)."""
    doc_chars = sum(len(d.text) for d in plan.dataset.docs.values())
    out: dict[str, dict] = {}
    for run in plan.runs:
        key = chunk_set_key(plan.dataset.docs.values(), run.config.chunking, run.tokenizer)
        if key in out:
            continue
        path = workspace.chunksets_dir / f"{key}.sqlite"
        c = run.config.chunking
        if path.exists():
            n, exact = len(ChunkSet(path)), True
        else:
            step = (c.chunk_size - c.chunk_overlap) if c.chunk_size else None
            n, exact = (math.ceil(doc_chars / CHARS_PER_TOKEN / step) if step else len(plan.dataset.docs)), False
        out[key] = {"chunking": c.label(), "cached": path.exists(), "chunks": n, "exact": exact}
    return out


def indexes(plan: Plan, workspace: Workspace, sets: dict[str, dict]) -> dict[str, dict]:
    """Each distinct vector index (chunk set x embedder) and whether Chroma already holds it."""
    out: dict[str, dict] = {}
    client = None
    for run in plan.runs:
        if run.config.embedding is None:
            continue
        key = chunk_set_key(plan.dataset.docs.values(), run.config.chunking, run.tokenizer)
        name = collection_name(key, run.lineage["embedding_fingerprint"])
        if name in out:
            continue
        cached = False
        if sets[key]["cached"] and workspace.chroma_dir.exists() and workspace.chroma_server(plan.experiment.spec.index) is None:
            from ..stages import index as index_mod  # Chroma loads only when there is a cached index to look up

            client = client or index_mod.open_chroma(workspace.chroma_dir)
            cached = index_mod.existing_collection(client, name, sets[key]["chunks"])
        out[name] = {"chunking": sets[key]["chunking"], "embedding": run.config.embedding.label(), "chunks": sets[key]["chunks"],
                     "cached": cached}
    return out


def measured(store: Store) -> dict[str, dict[str, float]]:
    """Seconds per LLM call by model and per question of retrieval, from runs stored by this machine."""
    runs = store.runs()
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for _, r in runs.iterrows() if not runs.empty else []:
        t = r.get("timings") or {}
        if t.get("host") != platform.node() or not t.get("questions_computed"):
            continue
        llm = (r.get("lineage") or {}).get("llm")
        if llm and t.get("generation_s"):
            sums[f"llm:{llm}"][0] += t["generation_s"]
            sums[f"llm:{llm}"][1] += t["questions_computed"]
        sums["retrieval"][0] += t.get("retrieval_s", 0.0) + t.get("rerank_s", 0.0)
        sums["retrieval"][1] += t["questions_computed"]
    return {k: {"s_per_call": v[0] / v[1], "calls": v[1]} for k, v in sums.items() if v[1]}


def tokens_per_call(store: Store, run: PlannedRun) -> tuple[float, float, bool]:
    """(prompt, completion) tokens per call: measured by stored runs with this LLM and prompt, else
    estimated from the chunk size (the prompt) and max_tokens (the completion, a worst case)."""
    runs = store.runs()
    same = [] if runs.empty else [r for r, lin in zip(runs["run_id"], runs["lineage"])
                                   if (lin or {}).get("llm") == run.lineage["llm"] and (lin or {}).get("prompt_hash") == run.lineage["prompt_hash"]]
    agg = store.aggregates(same) if same else None
    if agg is not None and not agg.empty:
        means = agg[agg["metric"].isin(["prompt_tokens", "completion_tokens"])].groupby("metric")["value"].mean()
        if {"prompt_tokens", "completion_tokens"} <= set(means.index):
            return float(means["prompt_tokens"]), float(means["completion_tokens"]), True
    cfg = run.config
    chunk = cfg.chunking.chunk_size or 512
    return 200.0 + cfg.final_k * chunk, float(cfg.generation.max_tokens), False


def race_calls(plan: Plan, store: Store, gen_runs: list[PlannedRun]) -> dict:
    """A race's LLM calls: worst case (no elimination), best case (every other configuration loses
    every question: eliminated as early as the confidence sequences allow) and expected: the calls
    this experiment's stored race used (when it ran before), else unknown."""
    n, k = len(plan.queries), len(gen_runs)
    search = resolve_search(plan.experiment, n, [r.config for r in plan.runs])
    first = min_questions_to_eliminate(search.settings) or n
    step = search.settings.round_size
    earliest = min(n, max(search.settings.min_questions, math.ceil(first / step) * step))
    best = (k - 1) * earliest + n if k > 1 else k * n
    if search.prune_metric:  # retrieval pruning can drop every configuration but those of one retrieval setting, for free
        best = min(best, n * len(plan.experiment.spec.grid.generation or [None]))
    out = {"worst": k * n, "best": best, "expected": None, "expected_from": None}
    counts = store.question_counts([r.run_id for r in gen_runs])
    runs = store.runs()
    statuses = dict(zip(runs["run_id"], runs["status"])) if not runs.empty else {}
    if gen_runs and all(statuses.get(r.run_id) in ("complete", "partial", "eliminated", "stopped: tie") for r in gen_runs):
        out["expected"] = sum(counts.get(r.run_id, 0) for r in gen_runs)
        out["expected_from"] = "this experiment's stored race"
    return out


def estimate(plan: Plan, workspace: Workspace) -> dict:
    """Everything ``workbench plan`` prints (see the module docstring). Writes nothing."""
    store = Store(workspace.store_url)
    sets = chunk_sets(plan, workspace)
    idx = indexes(plan, workspace, sets)
    gen_runs = [r for r in plan.runs if r.config.generation is not None]
    n = len(plan.queries)
    speed = measured(store)
    out = {"experiment": plan.experiment.name, "configurations": len(plan.runs), "questions": n, "chunk_sets": list(sets.values()),
           "indexes": list(idx.values()), "texts_to_embed": sum(i["chunks"] for i in idx.values() if not i["cached"])
           + n * len({r.config.embedding for r in plan.runs if r.config.embedding is not None}),
           "llm_calls_grid": len(gen_runs) * n, "race": race_calls(plan, store, gen_runs) if plan.experiment.spec.search.is_race else None}
    prices, tokens, cost, seconds, measured_runs = load_prices(), 0.0, 0.0, 0.0, 0
    for run in gen_runs:
        p, c, was_measured = tokens_per_call(store, run)
        measured_runs += was_measured
        tokens += n * (p + c)
        g = run.config.generation
        per_call = cost_usd(price_name(g.provider, g.model), round(p), round(c), prices)
        cost = None if per_call is None or cost is None else cost + n * per_call
        s = speed.get(f"llm:{run.lineage['llm']}")
        seconds = None if s is None or seconds is None else seconds + n * s["s_per_call"]
    retrieval = speed.get("retrieval")
    out.update(tokens_grid=tokens, tokens_measured=f"{measured_runs} of {len(gen_runs)}", cost_usd_grid=cost,
               generation_s_grid=seconds, retrieval_s=retrieval["s_per_call"] * n * len(plan.runs) if retrieval else None,
               throughput={k: v for k, v in speed.items()})
    return out


def describe(est: dict) -> list[str]:
    """The estimate as lines of text (the CLI prints them)."""
    def secs(v):
        return "unknown (no run measured on this machine yet)" if v is None else f"~{v / 60:.1f} min" if v >= 120 else f"~{v:.0f} s"

    lines = [f"{est['experiment']}: {est['configurations']} configurations x {est['questions']} questions"]
    for c in est["chunk_sets"]:
        lines.append(f"  chunk set {c['chunking']}: {'cached' if c['cached'] else 'to build'}, {'' if c['exact'] else '~'}{c['chunks']} chunks")
    for i in est["indexes"]:
        lines.append(f"  index {i['chunking']} x {i['embedding']}: {'cached' if i['cached'] else 'to build'} ({i['chunks']} chunks)")
    lines.append(f"  texts to embed: ~{est['texts_to_embed']} (chunks of indexes to build, and the questions)")
    lines.append(f"  LLM calls: grid {est['llm_calls_grid']}")
    race = est.get("race")
    if race:
        expected = f"{race['expected']} ({race['expected_from']})" if race["expected"] is not None else "unknown until a race has stored results"
        lines.append(f"  LLM calls as a race: worst case {race['worst']}, best case {race['best']}, expected {expected}")
    cost = "unknown (a model is missing from the price table)" if est["cost_usd_grid"] is None else f"${est['cost_usd_grid']:.4f}"
    lines.append(f"  tokens (grid): ~{est['tokens_grid']:,.0f} (measured for {est['tokens_measured']} configurations, else from chunk sizes "
                 f"and max_tokens); cost: {cost}")
    lines.append(f"  time (grid): generation {secs(est['generation_s_grid'])}, retrieval {secs(est['retrieval_s'])}")
    if race and race["expected"] is not None and est["generation_s_grid"] is not None and est["llm_calls_grid"]:
        per_call = est["generation_s_grid"] / est["llm_calls_grid"]
        lines.append(f"  time as a race: generation {secs(race['expected'] * per_call)} expected, {secs(race['worst'] * per_call)} at worst")
    for k, v in est["throughput"].items():
        lines.append(f"    measured here: {k} {v['s_per_call']:.3f} s per question over {int(v['calls'])} questions")
    return lines
