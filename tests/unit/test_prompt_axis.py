"""The prompt as its own grid axis: ``grid.prompt`` crossed with the models of ``grid.generation``,
an entry that pins its prompt kept as it is, and run ids of experiment files written before the
axis existed left unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_xquad_slice
from workbench.bakeoff import select
from workbench.config import load_experiment
from workbench.errors import ConfigError
from workbench.pipeline.plan import plan_experiment
from workbench.settings import Workspace

PROMPTS = ROOT / "experiments" / "prompts"
QA, HARD = PROMPTS / "grounded_qa.yaml", PROMPTS / "grounded_qa_hardened.yaml"
LLM = "provider: openai_compatible, model: fake-llm, base_url: 'http://fake.invalid/v1', max_tokens: 32"
GRID = """name: ids
dataset: {data}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}, {{splitter: none}}]
  embedding: [{{provider: openai_compatible, model: fake-embedder, base_url: 'http://fake.invalid/v1'}}]
  retrieval: [{{method: dense, top_k: 3}}, {{method: bm25, top_k: 3}}]
"""
# The run ids the workbench computed for the file with two pinned generation entries (PINNED below)
# before the prompt axis existed (commit a2a58c9), on an XQuAD slice without titles. The BM25 runs'
# ids (3rd, 4th, 7th, 8th) changed once since, on purpose, when BM25 stopped indexing each chunk's
# doc_id metadata (stages/retrieval.py BM25_VERSION 2; a2a58c9 had fe74920ea448e920,
# 5a1ba5f867b9800f, efd5e65a4876e9bb, aa95affd4c1229ac); the prompt axis changed none.
GOLDEN_IDS = ["a474002b90166149", "b4224de251585066", "558e98e4aa520d4c", "3748b3a47e0e1359",
              "6f1926daaf56a806", "0997210854509962", "d38965c8b63c2674", "0f8c2f4570aec3a4"]
PINNED = f"""  generation:
    - {{{LLM}, prompt: {QA}}}
    - {{{LLM}, prompt: {HARD}}}
"""
CROSSED = f"""  generation: [{{{LLM}}}]
  prompt: [{QA}, {HARD}]
"""


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = write_xquad_slice(tmp_path / "data", n_docs=4, n_queries=4)
    rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({**r, "title": ""}) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "r",
                             threads=1, root=tmp_path)


def _plan(tmp_path: Path, data: Path, ws: Workspace, generation: str, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(GRID.format(data=data) + generation, encoding="utf-8")
    return plan_experiment(load_experiment(path), ws)


def test_run_ids_of_files_without_the_prompt_axis_do_not_change(tmp_path, data, ws):
    assert [r.run_id for r in _plan(tmp_path, data, ws, PINNED).runs] == GOLDEN_IDS


def test_the_prompt_axis_crosses_every_model_and_equals_pinned_entries(tmp_path, data, ws):
    plan = _plan(tmp_path, data, ws, CROSSED)
    assert [r.run_id for r in plan.runs] == GOLDEN_IDS  # the same grid points, the same runs
    assert [r.config.axes()["prompt"] for r in plan.runs][:2] == ["grounded_qa", "grounded_qa_hardened"]
    assert {r.config.axes()["generation"] for r in plan.runs} == {"openai_compatible:fake-llm"}
    assert {r.lineage["prompt_path"] for r in plan.runs} == {str(QA), str(HARD)}


def test_two_models_by_two_prompts_and_a_pinned_entry(tmp_path, data, ws):
    gen = f"""  generation:
    - {{{LLM}}}
    - {{{LLM.replace('fake-llm', 'fake-llm-2')}}}
    - {{{LLM.replace('fake-llm', 'fake-llm-3')}, prompt: {QA}}}
  prompt: [{QA}, {HARD}]
"""
    plan = _plan(tmp_path, data, ws, gen)
    pairs = {(r.config.axes()["generation"], r.config.axes()["prompt"]) for r in plan.runs}
    assert pairs == {("openai_compatible:fake-llm", "grounded_qa"), ("openai_compatible:fake-llm", "grounded_qa_hardened"),
                     ("openai_compatible:fake-llm-2", "grounded_qa"), ("openai_compatible:fake-llm-2", "grounded_qa_hardened"),
                     ("openai_compatible:fake-llm-3", "grounded_qa")}
    assert len(plan.runs) == 4 * 5  # 2 chunkings x 2 retrievers x 5 (model, prompt) pairs
    narrowed = select(load_experiment(tmp_path / "exp.yaml"), axes={"prompt": ["grounded_qa_hardened"]})
    assert narrowed.spec.grid.prompt == [str(HARD)]


@pytest.mark.parametrize("generation, message", [
    (f"  generation: [{{{LLM}}}]\n", r"exp.yaml:\d+: grid.generation\[0\].prompt: give the entry a prompt file, or list prompt files"),
    (f"  generation: [{{{LLM}, prompt: {QA}}}]\n  prompt: [{HARD}]\n", r"grid.prompt: unused: every grid.generation entry pins its own prompt"),
    (f"  prompt: [{QA}]\n", r"grid.prompt: the prompt axis needs models under grid.generation"),
    (f"  generation: [{{{LLM}}}]\n  prompt: [{QA}, {QA}]\n", r"grid.prompt: repeats an earlier prompt file"),
    (f"  generation: [{{{LLM}}}]\n  prompt: [nope.yaml]\n", r"grid.prompt\[0\]: 'nope.yaml' not found"),
])
def test_prompt_axis_errors_name_the_field(tmp_path, data, generation, message):
    path = tmp_path / "exp.yaml"
    path.write_text(GRID.format(data=data) + generation, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)
