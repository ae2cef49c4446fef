"""Lineage: every code version that computed a run's rows is listed (a resumed run does not relabel
old rows), and the run id follows what determines results: prompt file, data, model weights --
and not retry settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_xquad_slice
from workbench.config import load_experiment
from workbench.pipeline import plan as plan_mod
from workbench.pipeline.plan import plan_experiment
from workbench.pipeline.runner import Runner
from workbench.report.data import load_report
from workbench.report.html import lineage_html
from workbench.settings import Workspace
from workbench.store import Store
from workbench.testing import FAKE_BASE_URL, fake_components

FAKE_LLM = f"provider: openai_compatible, model: fake-llm, base_url: '{FAKE_BASE_URL}'"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "r",
                             threads=1, root=tmp_path)


def _write(tmp_path: Path, generation: str, *, extra_grid: str = "", data: Path | None = None, method: str = "bm25") -> Path:
    data = data or write_xquad_slice(tmp_path / "data", n_docs=4, n_queries=10)
    path = tmp_path / "lin.yaml"
    path.write_text(f"""name: lin
dataset: {data}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: {method}, top_k: 2}}]
  generation: [{{{generation}}}]
{extra_grid}""", encoding="utf-8")
    return path


def _id(path: Path, ws: Workspace) -> str:
    return plan_experiment(load_experiment(path), ws).runs[0].run_id


def test_a_resumed_run_lists_every_code_version_and_keeps_old_rows_labelled(tmp_path, ws):
    prompt = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
    plan = plan_experiment(load_experiment(_write(tmp_path, f"{FAKE_LLM}, prompt: {prompt}")), ws)
    run = plan.runs[0]
    old_code = run.lineage["code_hash"]
    items = list(enumerate(plan.queries))
    with Runner(plan, ws, components=fake_components(plan, ws)) as runner:
        runner.run_one(run, items=items[:4])
    run.lineage.update(code_hash="c0ffee0000000000", git_commit="feedbeef" * 5)  # the code changed between sessions
    with Runner(plan, ws, components=fake_components(plan, ws)) as runner:
        runner.run()
    store = Store(ws.store_url)
    rows = store.questions(run.run_id).set_index("position")
    assert list(rows["code_version"]) == [old_code] * 4 + ["c0ffee0000000000"] * 6  # old rows keep their version
    lineage = store.run(run.run_id)["lineage"]
    assert lineage["code_versions"] == [{"code_hash": "c0ffee0000000000", "git_commit": "feedbeef" * 5, "rows": 6},
                                        {"code_hash": old_code, "git_commit": plan_mod.code_version().get("git_commit"), "rows": 4}]
    page = lineage_html(load_report(ws.store_url, "lin"))
    assert f"code hash {old_code[:12]} (4 rows)" in page and "code hash c0ffee000000 (6 rows)" in page


def test_run_id_changes_with_the_prompt_file(tmp_path, ws):
    prompt = tmp_path / "p.yaml"
    prompt.write_text("mode: chat\nuser: 'Answer from {context}: {question}'\n", encoding="utf-8")
    path = _write(tmp_path, f"{FAKE_LLM}, prompt: {prompt}")
    before = _id(path, ws)
    prompt.write_text("mode: chat\nuser: 'Use only {context}. Question: {question}'\n", encoding="utf-8")
    assert _id(path, ws) != before


def test_run_id_changes_with_the_dataset(tmp_path, ws):
    prompt = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
    path = _write(tmp_path, f"{FAKE_LLM}, prompt: {prompt}")
    before = _id(path, ws)
    corpus = tmp_path / "data" / "corpus.jsonl"
    docs = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    docs[-1]["text"] += " One edited sentence."
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    assert _id(path, ws) != before


def test_run_id_changes_with_the_model_weights(tmp_path, ws, monkeypatch):
    prompt = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
    gguf = tmp_path / "model.gguf"
    monkeypatch.setattr(plan_mod, "local_model_path", lambda model: gguf)  # the local LLM's weights file
    ce = tmp_path / "cross-encoder"
    ce.mkdir()
    path = _write(tmp_path, f"provider: local, model: smollm2-135m, prompt: {prompt}",
                  extra_grid=f"  rerank: [{{method: cross_encoder, path: {ce}, candidates: 4, top_n: 2}}]\n")
    gguf.write_bytes(b"GGUF weights v1")
    (ce / "model.safetensors").write_bytes(b"cross-encoder weights v1")
    first = _id(path, ws)
    gguf.write_bytes(b"GGUF weights v2, retrained")
    second = _id(path, ws)
    (ce / "model.safetensors").write_bytes(b"cross-encoder weights v2, retrained")
    third = _id(path, ws)
    assert len({first, second, third}) == 3


def test_run_id_stays_when_retry_settings_change(tmp_path, ws):
    prompt = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
    data = write_xquad_slice(tmp_path / "data", n_docs=4, n_queries=10)
    def embedding(extra: str) -> str:
        return f"  embedding: [{{provider: openai_compatible, model: fake-embedder, base_url: '{FAKE_BASE_URL}'{extra}}}]\n"

    path = _write(tmp_path, f"{FAKE_LLM}, prompt: {prompt}", data=data, extra_grid=embedding(""), method="dense")
    before = _id(path, ws)
    tuned = (f"{FAKE_LLM}, prompt: {prompt}, max_retries: 9, retry_backoff_s: 2.5, breaker_failures: 2, breaker_reset_s: 90")
    path = _write(tmp_path, tuned, data=data, extra_grid=embedding(", timeout_s: 5, max_retries: 0"), method="dense")
    assert _id(path, ws) == before
    path = _write(tmp_path, f"{FAKE_LLM}, prompt: {prompt}, max_tokens: 64", data=data, extra_grid=embedding(""), method="dense")
    assert _id(path, ws) != before  # a setting that changes answers does change it
