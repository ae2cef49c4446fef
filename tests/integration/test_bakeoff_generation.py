"""The whole pipeline with a real local LLM: MiniLM + Chroma + BM25 -> SmolLM2 through
llama_cpp.server and the openai client -> metrics -> store."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration


def test_small_real_grid_with_local_llm(tmp_path, workspace_env):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.stages.generation import parse_verdict
    from workbench.store import Store

    dataset = write_xquad_slice(tmp_path / "data", n_docs=15)
    exp = tmp_path / "gen.yaml"
    exp.write_text(f"""name: gen
dataset: {dataset}
queries: {{limit: 4, seed: 1, unanswerable: 0.5}}
grid:
  chunking: [{{splitter: sentence, chunk_size: 128, chunk_overlap: 16}}]
  embedding: [{{provider: local, model: all-MiniLM-L6-v2}}]
  retrieval: [{{method: dense, top_k: 3}}, {{method: bm25, top_k: 3}}]
  generation: [{{provider: local, model: smollm2-135m, prompt: {_prompt()}, max_tokens: 32}}]
judge: {{provider: local, model: smollm2-135m, prompt: {_prompt("judge_faithfulness.yaml")}}}
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(exp), workspace_env)
    assert len(plan.runs) == 2 and len(plan.queries) == 6  # 4 answerable + 2 with gold withheld
    run_experiment(plan, workspace_env)

    store = Store(workspace_env.store_url)
    board = store.leaderboard("gen")
    assert list(board["status"]) == ["complete", "complete"]
    for run_id in board["run_id"]:
        rows = store.questions(run_id)
        assert len(rows) == 6 and rows["error"].isna().all()
        assert (rows["answer"].str.len() > 0).all()
        assert (rows["ttft_s"] <= rows["generation_latency_s"]).all()
        assert (rows["prompt_tokens"] > 50).all() and (rows["completion_tokens"] > 0).all()
        assert (rows["cost_usd"] == 0).all()
        answerable = rows[~rows["query_id"].str.endswith("~unanswerable")]
        withheld = rows[rows["query_id"].str.endswith("~unanswerable")]
        assert answerable["f1"].notna().all() and answerable["hit_at_3"].notna().all()
        assert withheld["refusal_correct"].notna().all() and withheld["f1"].isna().all()
        # The gold documents really were withheld from retrieval.
        for _, r in withheld.iterrows():
            gold = set(plan.dataset.qrels[r["query_id"].removesuffix("~unanswerable")])
            assert not gold & {h["doc_id"] for h in r["hits"]}
        # The optional judge ran on every answer, at no cost. Every verdict is accounted for: the
        # stored verdict is the one read from the judge's own words in the trace, and an unreadable
        # one is counted as such and left unmeasured (None), never 0 and never dropped.
        assert (rows["judge_cost_usd"] == 0).all() and rows["judge_latency_s"].notna().all()
        for _, r in rows.iterrows():
            [verdict] = r["trace"]["judge"]
            assert verdict["verdict"] == parse_verdict(verdict["answer"]) and verdict["error"] is None
            measured = verdict["verdict"] is not None
            assert (r["judge_faithful"] == verdict["verdict"]) if measured else pd.isna(r["judge_faithful"])
            assert r["judge_unparseable"] == float(not measured)
        agg = store.aggregates([run_id]).set_index("metric")
        assert agg.loc["judge_unparseable", "value"] == pytest.approx(rows["judge_unparseable"].mean())
        assert ("judge_faithful" in agg.index) == rows["judge_faithful"].notna().any()
    assert plan.runs[0].lineage["judge"]["judge_prompt_hash"]
    metrics = set(store.aggregates(board["run_id"].tolist())["metric"])
    assert {"f1", "exact_match", "citation_valid", "answer_support", "hallucination", "refusal_correct",
            "generation_latency_p95_s", "ttft_p50_s", "cost_per_question_usd"} <= metrics


def test_generation_is_deterministic_at_temperature_zero():
    from workbench.config.experiment import GenerationSpec
    from workbench.config.files import load_prompt
    from workbench.providers.llm_server import LocalLLMServer
    from workbench.stages.generation import ContextChunk, generate, make_client

    spec = GenerationSpec(provider="local", model="smollm2-135m", prompt=_prompt(), max_tokens=24)
    prompt = load_prompt(_prompt())
    chunks = [ContextChunk(1, "d1", "Paris", "Paris is the capital and largest city of France."),
              ContextChunk(2, "d2", "Berlin", "Berlin is the capital of Germany.")]
    with LocalLLMServer("smollm2-135m", n_threads=2) as server:
        client = make_client(spec, server.base_url)
        first = generate(client, spec, prompt, "What is the capital of France?", chunks)
        second = generate(client, spec, prompt, "What is the capital of France?", chunks)
        proc = server._proc
    assert first.error is None and first.answer == second.answer and first.answer
    assert first.tokens_estimated and first.completion_tokens <= 24
    assert proc.poll() is not None, "the server is stopped when the context exits"


def _prompt(name: str = "grounded_qa.yaml") -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2] / "experiments" / "prompts" / name)
