"""The run core with seeded fakes (no model): a golden end-to-end run, resume, partial batches,
budgets, failed retrievals, concurrency, and the question path the explorer shares."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, write_xquad_slice
from workbench.config import load_experiment
from workbench.data.types import Query
from workbench.evaluation.answers import token_f1
from workbench.evaluation.retrieval import doc_scores, ranked_docs
from workbench.pipeline.plan import Plan, plan_experiment
from workbench.pipeline.question import QuestionPath
from workbench.pipeline.runner import Runner
from workbench.settings import Workspace
from workbench.store import Store
from workbench.testing import FAKE_BASE_URL, FakeLLM, fake_components

PROMPT = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
EMBEDDING = f"{{provider: openai_compatible, model: fake-embedder, base_url: '{FAKE_BASE_URL}'}}"
GENERATION = f"{{provider: openai_compatible, model: fake-llm, base_url: '{FAKE_BASE_URL}', prompt: {PROMPT}, max_tokens: 32"


def _experiment(tmp_path: Path, *, n_queries: int = 10, extra: str = "", generation: str = GENERATION + "}", context: str = "") -> Path:
    data = write_xquad_slice(tmp_path / "data", n_docs=6, n_queries=n_queries)
    path = tmp_path / "golden.yaml"
    path.write_text(f"""name: golden
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8{context}}}]
  embedding: [{EMBEDDING}]
  retrieval: [{{method: dense, top_k: 3}}, {{method: bm25, top_k: 3}}]
  generation: [{generation}]
{extra}""", encoding="utf-8")
    return path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "reports",
                             threads=1, root=tmp_path)


def _run(plan: Plan, ws: Workspace, **kwargs) -> list[dict]:
    with Runner(plan, ws, components=fake_components(plan, ws, **kwargs)) as runner:
        return runner.run()


def _rows(ws: Workspace, run_id: str) -> pd.DataFrame:
    return Store(ws.store_url).questions(run_id).drop(columns=["retrieval_latency_s", "generation_latency_s", "ttft_s"])


@pytest.mark.parametrize("context", ["none", "default"])
def test_golden_run_with_fakes(tmp_path, ws, context):
    """The whole core -- chunking, a Chroma index, BM25, the answer, every metric, the store -- on
    a fixed slice of XQuAD with the seeded fakes: exact stored numbers, in a few seconds (reported
    by `pytest --durations`, not asserted: speed is measured by benchmarks, not timed tests). With
    ``context: none`` the numbers are those from before chunk context existed; XQuAD has titles,
    so by default its chunks are indexed with their title (the dense numbers move)."""
    plan = plan_experiment(load_experiment(_experiment(tmp_path, context=", context: none" if context == "none" else "")), ws)
    summaries = _run(plan, ws)
    assert [s["status"] for s in summaries[:-1]] == ["complete", "complete"]
    board = Store(ws.store_url).leaderboard("golden").set_index("retrieval")
    got = {r: {m: round(float(board.loc[r, m]), 6) for m in ("hit_at_1", "hit_at_3", "mrr", "ndcg_at_10", "f1", "exact_match",
                                                             "contains_gold", "citation_valid", "chunk_hit_at_3")}
           for r in ("dense@3", "bm25@3")}
    assert got == (GOLDEN if context == "none" else GOLDEN_TITLE)
    # Independent checks of what the numbers are made of, from the stored rows themselves.
    for run in plan.runs:
        rows = Store(ws.store_url).questions(run.run_id)
        assert len(rows) == 10 and rows["error"].isna().all()
        for _, r in rows.iterrows():
            ranking = ranked_docs(doc_scores(_hits(r["hits"])))
            assert r["hit_at_3"] == float(any(d in r["relevant"] for d in ranking[:3]))
            assert r["f1"] == pytest.approx(token_f1(r["answer"], r["gold_answers"]))
            assert r["prompt_tokens"] > 0 and r["completion_tokens"] == len(re.findall(r"\w+", r["answer"]))


# Recorded from the run above and frozen: any change to chunking, retrieval, fusion of chunk hits
# into documents, trec_eval cutoffs, SQuAD scoring or the store shows up here.
GOLDEN = {
    "dense@3": {"hit_at_1": 0.6, "hit_at_3": 0.8, "mrr": 0.7, "ndcg_at_10": 0.726186, "f1": 0.042857, "exact_match": 0.0,
                "contains_gold": 0.2, "citation_valid": 1.0, "chunk_hit_at_3": 0.4},
    "bm25@3": {"hit_at_1": 0.9, "hit_at_3": 1.0, "mrr": 0.95, "ndcg_at_10": 0.963093, "f1": 0.059524, "exact_match": 0.0,
               "contains_gold": 0.3, "citation_valid": 1.0, "chunk_hit_at_3": 0.8},
}


# The same run with the default context (title + text, as BEIR/MTEB index it). On this slice every
# paragraph of an article shares its title, so the title does not help the fake embedder here.
GOLDEN_TITLE = {
    "dense@3": {"hit_at_1": 0.5, "hit_at_3": 0.8, "mrr": 0.65, "ndcg_at_10": 0.689279, "f1": 0.042857, "exact_match": 0.0,
                "contains_gold": 0.2, "citation_valid": 1.0, "chunk_hit_at_3": 0.5},
    "bm25@3": GOLDEN["bm25@3"],
}


def test_resumed_in_pieces_equals_one_run(tmp_path, ws):
    """Questions computed a few at a time, by separate runners (as after a crash), store exactly
    the rows and aggregates of one uninterrupted run."""
    exp = load_experiment(_experiment(tmp_path))
    other = ws.replace(store_url=f"sqlite:///{tmp_path / 'other.sqlite'}", cache_dir=tmp_path / "other-cache")
    plan_a, plan_b = plan_experiment(exp, ws), plan_experiment(exp, other)
    _run(plan_a, ws)
    items = list(enumerate(plan_b.queries))
    for chunk in (items[:3], items[3:4], items):
        with Runner(plan_b, other, components=fake_components(plan_b, other)) as runner:
            for run in plan_b.runs:
                runner.run_one(run, items=chunk)
    for run in plan_a.runs:
        pd.testing.assert_frame_equal(_rows(ws, run.run_id), _rows(other, run.run_id))
        agg = lambda w: Store(w.store_url).aggregates([run.run_id]).set_index("metric").drop(index=[  # noqa: E731
            m for m in Store(w.store_url).aggregates([run.run_id])["metric"] if "latency" in m or "ttft" in m])
        pd.testing.assert_frame_equal(agg(ws), agg(other))


def test_a_session_computes_only_the_questions_it_is_given(tmp_path, ws):
    plan = plan_experiment(load_experiment(_experiment(tmp_path)), ws)
    run = plan.runs[0]
    items = list(enumerate(plan.queries))
    with Runner(plan, ws, components=fake_components(plan, ws)) as runner:
        session = runner.session(run)
        assert session.compute(items[2:5]) == 3
        assert session.compute(items[2:6]) == 1  # only the one not stored yet
        summary = session.finish()
    rows = Store(ws.store_url).questions(run.run_id)
    assert sorted(rows["position"]) == [2, 3, 4, 5]
    assert summary["status"] == "complete" and summary["computed"] == 4
    agg = Store(ws.store_url).aggregates([run.run_id]).set_index("metric")
    assert agg.loc["f1", "n"] == 4 and agg.loc["f1", "value"] == pytest.approx(rows["f1"].mean())


def test_a_budget_stops_the_run_between_batches_and_the_next_run_resumes(tmp_path, ws):
    path = _experiment(tmp_path, extra="budget: {max_tokens: 600}\n")
    plan = plan_experiment(load_experiment(path), ws)
    first = _run(plan, ws)
    statuses = [s["status"] for s in first[:-1]]
    assert statuses[0] == "stopped: budget" and statuses[1] == "not started: budget"
    stored = Store(ws.store_url).questions(plan.runs[0].run_id)
    assert 0 < len(stored) < 10 and stored["prompt_tokens"].sum() + stored["completion_tokens"].sum() >= 600
    for _ in range(10):  # each invocation has a fresh budget; answers already stored cost nothing again
        summaries = _run(plan, ws)
        if all(s["status"] == "complete" for s in summaries[:-1]):
            break
    assert [len(Store(ws.store_url).questions(r.run_id)) for r in plan.runs] == [10, 10]


def test_a_failed_retrieval_is_a_failed_row_and_resume_fills_exactly_it(tmp_path, ws):
    plan = plan_experiment(load_experiment(_experiment(tmp_path)), ws)
    dense = next(r for r in plan.runs if r.config.retrieval.method == "dense")
    victim = plan.queries[4]
    word = victim.text.split()[-1]
    _run(plan, ws, fail_on=word)
    rows = Store(ws.store_url).questions(dense.run_id).set_index("query_id")
    failed = set(rows.index[rows["error"].notna()])
    assert victim.query_id in failed and "fake endpoint refused" in rows.loc[victim.query_id, "error"]
    assert Store(ws.store_url).run(dense.run_id)["status"] == "partial"
    summary = _run(plan, ws)
    assert next(s for s in summary if s["run_id"] == dense.run_id)["computed"] == len(failed)
    assert Store(ws.store_url).run(dense.run_id)["status"] == "complete"


def test_concurrent_generation_stores_the_same_rows(tmp_path, ws):
    serial = plan_experiment(load_experiment(_experiment(tmp_path)), ws)
    _run(serial, ws)
    other = ws.replace(store_url=f"sqlite:///{tmp_path / 'c.sqlite'}", cache_dir=tmp_path / "c-cache")
    (tmp_path / "c").mkdir()
    parallel = plan_experiment(load_experiment(_experiment(tmp_path / "c", generation=GENERATION + ", concurrency: 4}")), other)
    _run(parallel, other)
    for a, b in zip(serial.runs, parallel.runs):
        assert a.run_id != b.run_id or a.config == b.config
        cols = ["query_id", "answer", "hits", "f1", "prompt_tokens", "completion_tokens"]
        pd.testing.assert_frame_equal(_rows(ws, a.run_id)[cols], _rows(other, b.run_id)[cols])


def test_the_question_path_answers_like_the_runner(tmp_path, ws):
    """The explorer's live query and the runner share one path: asking a planned question again
    gives the stored row."""
    plan = plan_experiment(load_experiment(_experiment(tmp_path)), ws)
    _run(plan, ws)
    with fake_components(plan, ws) as components:
        for run in plan.runs:
            path = QuestionPath(run, plan, components)
            stored = Store(ws.store_url).questions(run.run_id).iloc[3]
            row = path.ask(3, plan.queries[3])
            assert row["answer"] == stored["answer"] and row["hits"] == stored["hits"]
            assert row["metrics"]["f1"] == stored["f1"] and row["metrics"]["mrr"] == stored["mrr"]
            live = path.ask(-1, Query("live:x", plan.queries[3].text))  # no gold: answer metrics do not apply
            assert live["answer"] == stored["answer"] and live["metrics"]["f1"] is None and "mrr" not in live["metrics"]


def test_fakes_refuse_real_model_specs(tmp_path, ws):
    from workbench.config import GenerationSpec

    with pytest.raises(Exception, match="serves only specs with base_url"):
        FakeLLM(GenerationSpec(provider="local", model="smollm2-135m", prompt=str(PROMPT)))


def test_a_saved_plan_reloads_and_refuses_a_changed_dataset(tmp_path, ws):
    plan = plan_experiment(load_experiment(_experiment(tmp_path)), ws)
    saved = plan.save(tmp_path / "plan.json")
    again = Plan.load(saved)
    assert [r.run_id for r in again.runs] == [r.run_id for r in plan.runs]
    assert again.queries == plan.queries and again.runs[0].config == plan.runs[0].config
    corpus = tmp_path / "data" / "corpus.jsonl"
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("the", "a", 1), encoding="utf-8")
    with pytest.raises(Exception, match="the dataset changed since the experiment was planned"):
        Plan.load(saved)


def _hits(stored: list[dict]):
    from workbench.data.types import Hit

    return [Hit(h["chunk_id"], h["doc_id"], h["score"]) for h in stored]


def test_the_notebook_reloads_a_saved_plan_and_plans_nothing_again(tmp_path, ws, monkeypatch):
    """`workbench run` plans once; the bake-off notebook reloads that plan (no YAML parsed, no plan made)."""
    import workbench.bakeoff as bakeoff

    plan = plan_experiment(load_experiment(_experiment(tmp_path)), ws)
    saved = plan.save(tmp_path / "plan.json")
    monkeypatch.setattr(bakeoff, "plan_experiment", lambda *a, **k: pytest.fail("planned again"))
    monkeypatch.setattr(bakeoff, "load_experiment", lambda *a, **k: pytest.fail("parsed the experiment file again"))
    again, workspace = bakeoff.prepare(plan_path=str(saved), workspace=ws.to_dict())
    assert [r.run_id for r in again.runs] == [r.run_id for r in plan.runs]
    assert workspace == ws


def test_chunking_for_bm25_loads_the_tokenizer_but_no_embedding_model(tmp_path, ws, monkeypatch):
    """BM25 runs are chunked in the first embedder's tokens: its tokenizer file is enough."""
    from workbench.stages import embedding

    data = write_xquad_slice(tmp_path / "data", n_docs=3, n_queries=2)
    path = tmp_path / "bm25.yaml"
    path.write_text(f"name: b\ndataset: {data}\ngrid:\n  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}]\n"
                    "  embedding: [{provider: local, model: all-MiniLM-L6-v2}]\n  retrieval: [{method: bm25, top_k: 3}]\n",
                    encoding="utf-8")
    plan = plan_experiment(load_experiment(path), ws)
    monkeypatch.setattr(embedding.MiniLMEmbedder, "__init__", lambda *a, **k: pytest.fail("loaded the MiniLM model"))
    with Runner(plan, ws) as runner:
        summary = runner.run()
    assert summary[0]["status"] == "complete"
    assert plan.runs[0].tokenizer.startswith("local:all-MiniLM-L6-v2@")
