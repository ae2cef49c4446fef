"""Main effects (effects.py) on hand-made stores whose effects are known by construction: each run's
per-question nDCG is a question baseline plus the effect of each of its axis values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.effects import axis_levels, main_effects
from workbench.evaluation.aggregate import aggregate_rows
from workbench.store import Store

C1 = {"splitter": "sentence", "chunk_size": 128, "chunk_overlap": 16}
C2 = {"splitter": "sentence", "chunk_size": 256, "chunk_overlap": 32}
E1 = {"provider": "local", "model": "all-MiniLM-L6-v2"}
E2 = {"provider": "local", "model": "multilingual-e5-small"}
BM25 = {"method": "bm25", "top_k": 5}
DENSE = {"method": "dense", "top_k": 5}
N = 30
BASE = np.random.default_rng(7).uniform(0.2, 0.5, N)


def _label(cfg: dict, axis: str) -> str:
    value = cfg[axis]
    if value is None:
        return "-"
    return {"chunking": lambda v: f"sentence {v['chunk_size']}/{v['chunk_overlap']}", "embedding": lambda v: v["model"],
            "retrieval": lambda v: f"{v['method']}@{v['top_k']}"}[axis](value)


def grid() -> list[dict]:
    """The grid chunking x embedding x retrieval in expansion order, BM25 runs without an embedder (as the runner stores them)."""
    out, seen = [], set()
    for c in (C1, C2):
        for e in (E1, E2):
            for r in (BM25, DENSE):
                cfg = {"chunking": c, "embedding": e if r is DENSE else None, "retrieval": r, "rerank": None, "generation": None}
                key = repr(cfg)
                if key not in seen:
                    seen.add(key)
                    out.append(cfg)
    return out


def store_with(tmp_path, score) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Write the grid's runs with per-question ``score(cfg, q)`` and read back what the report reads."""
    store = Store(f"sqlite:///{tmp_path / 'wb.sqlite'}")
    configs = grid()
    ids = [f"run{i}" for i in range(len(configs))]
    store.save_experiment("fx", {"name": "fx"}, "h" * 64, "/x/fx.yaml", ids)
    for run_id, cfg in zip(ids, configs):
        store.start_run(run_id, cfg, {a: _label(cfg, a) if a in ("chunking", "embedding", "retrieval") else "-" for a in
                                      ("chunking", "embedding", "retrieval", "rerank", "generation")}, {}, N)
        store.write_questions([{"run_id": run_id, "query_id": f"q{q}", "position": q, "question": "?", "gold_answers": [], "relevant": {},
                                "hits": [], "answer": None, "error": None, "metrics": {"ndcg_at_10": score(cfg, q)}} for q in range(N)])
        store.write_aggregates(run_id, aggregate_rows(store.questions(run_id)))
        store.finish_run(run_id, "complete", 0, 10, 0.0, {})
    return store.runs("fx"), {r: store.question_values(r) for r in ids}


def additive(cfg: dict, q: int) -> float:
    """Chunk size 256: +0.1; dense: +0.2; e5 (with dense): -0.05; per question, no noise."""
    return float(BASE[q] + 0.1 * (cfg["chunking"] is C2) + 0.2 * (cfg["retrieval"] is DENSE) - 0.05 * (cfg["embedding"] is E2))


def test_main_effects_recover_the_effects_built_into_the_runs(tmp_path):
    runs, values = store_with(tmp_path, additive)
    fx = main_effects(runs, values, "ndcg_at_10").set_index("axis")
    chunk = fx.loc["chunking"]
    assert (chunk["value"], chunk["reference"]) == ("sentence 256/32", "sentence 128/16")
    # cells: bm25, dense+MiniLM, dense+e5 -- the chunking effect is +0.1 in each
    assert chunk["cells"] == 3 and chunk["n"] == N and chunk["diff"] == pytest.approx(0.1)
    assert chunk["ci_low"] == pytest.approx(0.1) and chunk["ci_high"] == pytest.approx(0.1) and not chunk["interaction"]
    # dense vs bm25: BM25 uses no embedder, so it pairs with dense+MiniLM (+0.2) and dense+e5 (+0.15), per chunking
    ret = fx.loc["retrieval"]
    assert (ret["value"], ret["reference"], ret["cells"]) == ("dense@5", "bm25@5", 4) and ret["diff"] == pytest.approx(0.175)
    assert sorted(round(c["diff"], 6) for c in ret["per_cell"]) == [0.15, 0.15, 0.2, 0.2]
    # e5 vs MiniLM only among dense runs; BM25's "(none)" is no value of the embedding axis
    emb = fx.loc["embedding"]
    assert (emb["value"], emb["reference"], emb["cells"]) == ("multilingual-e5-small", "all-MiniLM-L6-v2", 2)
    assert emb["diff"] == pytest.approx(-0.05) and emb["significant"]
    assert [lab for _, lab, _ in axis_levels(runs, "embedding")] == ["all-MiniLM-L6-v2", "multilingual-e5-small"]
    # the old per-value mean of the runs with chunk size 256 vs 128 is the same here, but for
    # embeddings it would put the BM25 runs in a "(none)" group: a main effect never does
    assert all(c["cell"].startswith("chunking") for c in emb["per_cell"])


def test_an_effect_that_changes_sign_is_flagged_as_an_interaction(tmp_path):
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.01, (32, N))

    def crossing(cfg: dict, q: int) -> float:
        # bigger chunks help BM25 (+0.1) and hurt dense retrieval (-0.1)
        sign = 1 if cfg["retrieval"] is BM25 else -1
        i = grid().index(cfg)
        return float(BASE[q] + 0.2 + sign * 0.1 * (cfg["chunking"] is C2) + noise[i, q])

    runs, values = store_with(tmp_path, crossing)
    chunk = main_effects(runs, values, "ndcg_at_10").set_index("axis").loc["chunking"]
    assert chunk["interaction"] and chunk["crossover"]
    by_cell = {c["cell"]: c["diff"] for c in chunk["per_cell"]}
    assert by_cell["embedding (none), retrieval bm25@5"] == pytest.approx(0.1, abs=0.02)
    assert by_cell["embedding all-MiniLM-L6-v2, retrieval dense@5"] == pytest.approx(-0.1, abs=0.02)
    # averaged over the three cells (one BM25, two dense): (0.1 - 0.1 - 0.1) / 3
    assert chunk["diff"] == pytest.approx(-0.1 / 3, abs=0.01)


def test_holm_across_the_table_and_axes_that_do_not_vary(tmp_path):
    runs, values = store_with(tmp_path, lambda cfg, q: float(BASE[q]))  # no axis matters
    fx = main_effects(runs, values, "ndcg_at_10")
    assert set(fx["axis"]) == {"chunking", "embedding", "retrieval"}  # rerank and generation never vary
    assert (fx["diff"] == 0).all() and not fx["significant"].any() and (fx["p_holm"] >= fx["p_value"]).all()
