"""KPIs: the evaluation pass rate, cost per passing question, token-budget adherence, and the cost
of embedding and reranking from the price table, per stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import binomtest

from tests.conftest import ROOT, write_xquad_slice
from workbench.config import load_experiment
from workbench.data.types import Hit
from workbench.errors import ConfigError
from workbench.evaluation.kpis import cost_per_success, kpi_metrics, passed
from workbench.pipeline.components import Components
from workbench.pipeline.plan import plan_experiment
from workbench.pipeline.runner import Runner
from workbench.report.data import load_report
from workbench.report.kpis import kpi_html
from workbench.settings import Workspace
from workbench.stages.chunking import ChunkSet
from workbench.stages.embedding import default_tokenizer
from workbench.store import Store
from workbench.testing import FAKE_BASE_URL, FakeEmbedder, FakeLLM

PROMPT = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
FAKE = f"provider: openai_compatible, base_url: '{FAKE_BASE_URL}'"
PRICES = """updated: 2026-11-30
source: test
models:
  fake-llm: {input_per_1m_usd: 2.0, output_per_1m_usd: 8.0}
  fake-embedder: {input_per_1m_usd: 0.5, output_per_1m_usd: 0}
  fake-rerank: {input_per_1m_usd: 1.0, output_per_1m_usd: 0, per_call_usd: 0.002}
"""
CRITERIA = {"f1": (0.05, None), "citation_valid": (1.0, None), "generation_latency_s": (None, 5.0)}


def test_pass_rules_by_hand():
    assert passed({"f1": 0.6, "citation_valid": 1.0, "generation_latency_s": 1.2}, CRITERIA, failed=False) == 1.0
    assert passed({"f1": 0.01, "citation_valid": 1.0, "generation_latency_s": 1.2}, CRITERIA, failed=False) == 0.0
    assert passed({"f1": 0.6, "citation_valid": None, "generation_latency_s": 6.0}, CRITERIA, failed=False) == 0.0  # too slow
    assert passed({"f1": None, "citation_valid": None, "generation_latency_s": 1.0}, CRITERIA, failed=False) == 1.0  # n/a not checked
    assert passed({}, CRITERIA, failed=False) is None  # nothing to check: unmeasured
    assert passed({"f1": 1.0}, CRITERIA, failed=True) == 0.0  # a failed question is not a success
    row = {"error": None, "prompt_tokens": 700, "completion_tokens": 101}
    assert kpi_metrics(row, {}, {}, 800) == {"within_token_budget": 0.0}
    assert kpi_metrics({**row, "completion_tokens": 100}, {}, {}, 800) == {"within_token_budget": 1.0}
    found = cost_per_success([0.01, 0.01, 0.01, 0.01], [1.0, 0.0, 1.0, 1.0])
    assert found["value"] == pytest.approx(0.04 / 3) and found["ci_low"] <= found["value"] <= found["ci_high"]
    assert cost_per_success([0.01, 0.02], [0.0, 0.0]) is None  # no success: no finite cost per success


class _Rerank:
    """A hosted-style reranker stand-in: the first stage's order reversed."""

    def __call__(self, query, hits, texts, top_n):
        return [Hit(h.chunk_id, h.doc_id, float(i)) for i, h in enumerate(reversed(hits))][:top_n], False


@pytest.fixture
def ws(tmp_path: Path, monkeypatch) -> Workspace:
    (tmp_path / "prices.yaml").write_text(PRICES, encoding="utf-8")
    monkeypatch.setenv("WORKBENCH_PRICES", str(tmp_path / "prices.yaml"))
    monkeypatch.setenv("RERANK_KEY", "k")
    return Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "r",
                             threads=1, root=tmp_path)


def _experiment(tmp_path: Path, kpis: str) -> Path:
    data = write_xquad_slice(tmp_path / "data", n_docs=6, n_queries=12)
    path = tmp_path / "kpi.yaml"
    path.write_text(f"""name: kpi
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}]
  embedding: [{{{FAKE}, model: fake-embedder}}]
  retrieval: [{{method: dense, top_k: 3}}]
  rerank: [{{method: hosted, base_url: 'http://rerank.invalid/v1', model: fake-rerank, api_key_env: RERANK_KEY, candidates: 6, top_n: 3}}]
  generation: [{{{FAKE}, model: fake-llm, prompt: {PROMPT}, max_tokens: 32}}]
{kpis}""", encoding="utf-8")
    return path


def test_pass_rate_cost_per_success_token_budget_and_stage_costs(tmp_path, ws):
    kpis = "pass: {f1: {min: 0.05}, citation_valid: {min: 1}, generation_latency_s: {max: 5}}\ntoken_budget: 180\n"
    plan = plan_experiment(load_experiment(_experiment(tmp_path, kpis)), ws)
    assert plan.runs[0].run_id != plan_experiment(load_experiment(_experiment(tmp_path / "plain", "")), ws).runs[0].run_id
    components = Components(plan, ws, embedders=lambda s: FakeEmbedder(s), generators=lambda s: FakeLLM(s), rerankers=lambda s: _Rerank())
    with Runner(plan, ws, components=components) as runner:
        runner.run()
    store = Store(ws.store_url)
    run_id = plan.runs[0].run_id
    rows = store.questions(run_id)
    agg = store.aggregates([run_id]).set_index("metric")
    count = default_tokenizer().count_fn
    for _, r in rows.iterrows():
        expect = passed({"f1": r["f1"], "citation_valid": r["citation_valid"], "generation_latency_s": r["generation_latency_s"]},
                        CRITERIA, failed=False)
        assert r["passed"] == expect
        assert r["within_token_budget"] == float(r["prompt_tokens"] + r["completion_tokens"] <= 180)
        assert r["embedding_cost_usd"] == pytest.approx(count(r["question"]) * 0.5 / 1e6)
        assert r["cost_usd"] == pytest.approx((r["prompt_tokens"] * 2.0 + r["completion_tokens"] * 8.0) / 1e6)
        # per search, plus the query paired with each of the 6 candidates (and their passages' tokens)
        assert r["rerank_cost_usd"] > 0.002 + 6 * count(r["question"]) * 1.0 / 1e6
    assert 0 < rows["passed"].sum() < len(rows) and 0 < rows["within_token_budget"].sum() < len(rows)
    k, n = int(rows["passed"].sum()), len(rows)
    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert (agg.loc["pass_rate", "value"], agg.loc["pass_rate", "ci_low"], agg.loc["pass_rate", "ci_high"]) == pytest.approx((k / n, ci.low, ci.high))
    assert agg.loc["token_budget_adherence", "value"] == pytest.approx(rows["within_token_budget"].mean())
    total = (rows["cost_usd"] + rows["embedding_cost_usd"] + rows["rerank_cost_usd"]).sum()
    assert agg.loc["cost_per_success_usd", "value"] == pytest.approx(total / k)
    assert agg.loc["cost_per_success_usd", "ci_low"] < agg.loc["cost_per_success_usd", "value"]
    chunks = ChunkSet(next((ws.cache_dir / "chunksets").glob("*.sqlite")))
    assert agg.loc["index_cost_usd", "value"] == pytest.approx(sum(c.n_tokens for c in chunks) * 0.5 / 1e6)
    assert agg.loc["embedding_cost_usd", "value"] == pytest.approx(rows["embedding_cost_usd"].mean())
    page = kpi_html(load_report(ws.store_url, "kpi"))
    for text in ("Pass rate", "Cost / passing question", "Token budget adherence", "Index build (once)", "Reranking / question",
                 "Valid citations ≥ 1.000", "180 prompt + completion tokens"):
        assert text in page, text


@pytest.mark.parametrize("kpis, message", [
    ("pass: {citation_vald: {min: 1}}\n", r"kpi.yaml: pass.citation_vald: unknown metric 'citation_vald' \(did you mean 'citation_valid'\?\)"),
    ("pass: {generation_latency_p95_s: {max: 5}}\n", r"pass.generation_latency_p95_s: .* is a per-run number"),
    ("pass: {f1: {}}\n", r"kpi.yaml:\d+: pass.f1: .*a pass criterion needs min or max"),
    ("token_budget: 0\n", r"kpi.yaml:\d+: token_budget"),
])
def test_kpi_settings_are_checked(tmp_path, ws, kpis, message):
    with pytest.raises(ConfigError, match=message):
        plan_experiment(load_experiment(_experiment(tmp_path, kpis)), ws)
