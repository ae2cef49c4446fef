"""Chunk context: titles indexed with the text as BEIR/MTEB do (the default for titled datasets),
``context: title | heading_path`` as a grid choice, and offsets and gold spans that never move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.retrievers.bm25 import BM25Retriever

from tests.conftest import ROOT
from workbench.config import load_experiment
from workbench.config.experiment import ChunkingSpec
from workbench.data.corpus import load_documents_folder
from workbench.data.ingest import ingest_folder
from workbench.data.types import Span
from workbench.evaluation.spans import relevant_chunks
from workbench.hashing import hash_obj
from workbench.pipeline.plan import plan_experiment
from workbench.pipeline.question import QuestionPath
from workbench.pipeline.runner import Runner
from workbench.settings import Workspace
from workbench.stages.chunking import Tokenizer, chunk_set_key, iter_chunks
from workbench.store import Store
from workbench.testing import FAKE_BASE_URL, FakeEmbedder, fake_components

WORDS = Tokenizer("words", str.split, lambda t: len(t.split()), 512)
EMBEDDING = f"{{provider: openai_compatible, model: fake-embedder, base_url: '{FAKE_BASE_URL}'}}"
PEOPLE = [("d1", "Marie Curie", "She discovered polonium and radium with her husband in Paris."),
          ("d2", "Isaac Newton", "He formulated the laws of motion and universal gravitation."),
          ("d3", "Ada Lovelace", "She wrote the first algorithm meant to be carried out by a machine."),
          ("d4", "Alan Turing", "He proposed a test of machine intelligence and broke naval codes.")]
# Answerable only through a title word: no document's text names the person asked about.
QUESTIONS = [("q1", "Who was Marie Curie?", "d1"), ("q2", "Who was Isaac Newton?", "d2"),
             ("q3", "Who was Ada Lovelace?", "d3"), ("q4", "Who was Alan Turing?", "d4")]


def _beir(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": t, "text": x}) + "\n" for d, t, x in PEOPLE), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": x}) + "\n" for q, x, _ in QUESTIONS), encoding="utf-8")
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, _, d in QUESTIONS), encoding="utf-8")
    return folder


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.resolve(store=f"sqlite:///{tmp_path / 'wb.sqlite'}", cache_dir=tmp_path / "cache", reports_dir=tmp_path / "r",
                             threads=1, root=tmp_path)


def _run_people(tmp_path: Path, ws: Workspace, contexts: list[str]):
    chunking = ", ".join("{splitter: none" + (f", context: {c}" if c != "default" else "") + "}" for c in contexts)
    path = tmp_path / "people.yaml"
    path.write_text(f"""name: people
dataset: {_beir(tmp_path / 'people')}
grid:
  chunking: [{chunking}]
  embedding: [{EMBEDDING}]
  retrieval: [{{method: bm25, top_k: 4}}, {{method: dense, top_k: 4}}]
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(path), ws)
    with Runner(plan, ws, components=fake_components(plan, ws)) as runner:
        runner.run()
    return plan, Store(ws.store_url)


def test_title_context_finds_what_only_the_title_says_as_the_references_do(tmp_path, ws):
    plan, store = _run_people(tmp_path, ws, ["none", "default", "title"])
    assert plan.dataset.titled
    assert len(plan.runs) == 4  # the default is title on a titled dataset: "default" and "title" are one run each
    assert {r.config.chunking.context for r in plan.runs} == {None, "title"}
    by = {(r.config.chunking.context, r.config.retrieval.method): r.run_id for r in plan.runs}
    hit1 = {k: store.aggregates([v]).set_index("metric").loc["hit_at_1", "value"] for k, v in by.items()}
    assert hit1[(None, "bm25")] == 0.0  # no text names the person: BM25 finds nothing
    assert hit1[("title", "bm25")] == 1.0 and hit1[("title", "dense")] == 1.0
    assert hit1[(None, "dense")] < 1.0

    # The reference: a plain LlamaIndex BM25 over BEIR's title + " " + text (the text only, no
    # metadata) scores exactly as the workbench.
    nodes = [TextNode(id_=d, text=f"{t} {x}") for d, t, x in PEOPLE]
    bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=4, language="en")
    fake = FakeEmbedder(plan.runs[0].config.embedding if plan.runs[0].config.embedding else plan.runs[1].config.embedding)
    doc_vectors = fake.embed_passages([f"{t} {x}" for _, t, x in PEOPLE])
    for qid, text, _ in QUESTIONS:
        stored = store.question_rows(by[("title", "bm25")], [qid])[qid]["hits"]
        reference = [n for n in bm25.retrieve(text) if n.score > 0]
        assert [h["doc_id"] for h in stored] == [n.node.node_id for n in reference]
        assert [h["score"] for h in stored] == pytest.approx([n.score for n in reference])
        dense = store.question_rows(by[("title", "dense")], [qid])[qid]["hits"]
        order = np.argsort(-(doc_vectors @ fake.embed_queries([text])[0]), kind="stable")
        assert [h["doc_id"] for h in dense] == [PEOPLE[i][0] for i in order]
        assert all(h["context"] == dict((d, t) for d, t, _ in PEOPLE)[h["doc_id"]] for h in stored)


def test_run_ids_change_with_title_context_only_on_titled_data(tmp_path, ws):
    plan, _ = _run_people(tmp_path, ws, ["none", "default"])
    none, default = plan.runs[0], plan.runs[2]
    assert none.config.chunking.context is None and default.config.chunking.context == "title"
    assert none.run_id != default.run_id
    assert "context" not in none.config.model_dump()["chunking"]  # no context: the config (and id) it always had
    assert none.config.chunking.label() == "whole documents" and default.config.chunking.label() == "whole documents +title"


def _handbook(folder: Path) -> Path:
    docs = folder / "documents"
    docs.mkdir(parents=True)
    (docs / "handbook.md").write_text(
        "# Handbook\n\nWelcome to the team. Read this first.\n\n## Setup\n\nInstall Python. Clone the repository.\n\n"
        "### Secrets\n\nAsk for the vault token. Never commit it.\n\n```\n# not a heading: a comment in code\n```\n\n"
        "## Release\n\nTag the commit. Publish the wheel.\n", encoding="utf-8")
    (docs / "notes.txt").write_text("Plain notes without headings. Second sentence here.\n", encoding="utf-8")
    (folder / "questions.jsonl").write_text(json.dumps({"_id": "q1", "text": "Where is the vault token?",
                                                        "doc_ids": ["handbook.md"]}) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("splitter", [{"splitter": "sentence", "chunk_size": 12, "chunk_overlap": 3},
                                      {"splitter": "token", "chunk_size": 10, "chunk_overlap": 2}, {"splitter": "none"}])
def test_offsets_and_spans_are_exact_with_every_context(tmp_path, splitter):
    ds = load_documents_folder(_handbook(tmp_path / "kb"))
    doc = ds.docs["handbook.md"]
    assert [h.text for h in doc.headings] == ["Handbook", "Setup", "Secrets", "Release"]  # the ``#`` in code is not one
    sets = {c: list(iter_chunks(ds.docs.values(), ChunkingSpec(**splitter, context=c), WORDS)) for c in (None, "title", "heading_path")}
    plain = sets[None]
    span = Span("handbook.md", doc.text.index("vault token"), doc.text.index("vault token") + len("vault token"))
    for context, chunks in sets.items():
        assert [(c.chunk_id, c.start_char, c.end_char, c.text) for c in chunks] == [(c.chunk_id, c.start_char, c.end_char, c.text) for c in plain]
        for c in chunks:
            assert ds.docs[c.doc_id].text[c.start_char:c.end_char] == c.text  # offsets index the text, never the prefix
            assert c.indexed_text == (f"{c.context}\n\n{c.text}" if c.context else c.text)
            assert c.n_tokens == len(c.indexed_text.split())  # the embedder's input, prefix included
        by_doc = {}
        for c in chunks:
            by_doc.setdefault(c.doc_id, []).append(c)
        assert relevant_chunks(by_doc, [span]) == relevant_chunks({d: [c for c in plain if c.doc_id == d] for d in by_doc}, [span])
    holder = next(c for c in sets["heading_path"] if c.start_char <= span.start < c.end_char)
    # the path where the chunk starts (a whole document starts under its title only)
    assert holder.context in (("Handbook",) if splitter["splitter"] == "none" else ("Handbook > Setup > Secrets", "Handbook > Setup"))
    assert all(c.context == "Handbook" for c in sets["title"] if c.doc_id == "handbook.md")
    assert all(c.context in ("Plain notes without headings. Second sentence here.", "") for c in sets["heading_path"]
               if c.doc_id == "notes.txt")  # a text file: its title (first line), no headings
    release = [c for c in sets["heading_path"] if c.text.startswith("Tag the commit")]
    assert not release or release[0].context == "Handbook > Release"  # a later section closes "Setup > Secrets"


def test_html_headings_are_kept_at_ingestion(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "guide.html").write_text(
        "<html><head><title>Guide</title></head><body><h1>Guide</h1><p>Intro text.</p><h2>Install</h2><p>Run pip install.</p>"
        "<h3>Offline</h3><p>Use a wheelhouse.</p></body></html>", encoding="utf-8")
    doc = next(iter(ingest_folder(tmp_path / "site").docs.values()))
    assert [(h.level, h.text) for h in doc.headings] == [(1, "Guide"), (2, "Install"), (3, "Offline")]
    assert all(doc.text[h.start:].startswith(h.text) for h in doc.headings)
    [chunk] = [c for c in iter_chunks([doc], ChunkingSpec(splitter="sentence", chunk_size=6, chunk_overlap=0, context="heading_path"), WORDS)
               if "wheelhouse" in c.text]
    assert chunk.context == "Guide > Install > Offline"


def test_chunk_set_keys(tmp_path):
    ds = load_documents_folder(_handbook(tmp_path / "kb"))
    docs = list(ds.docs.values())
    spec = ChunkingSpec(splitter="sentence", chunk_size=12, chunk_overlap=3)
    # no context: the key it always had (caches and Chroma collections stay valid)
    old = hash_obj({"docs": sorted((d.doc_id, d.content_hash) for d in docs),
                    "chunking": {"splitter": "sentence", "chunk_size": 12, "chunk_overlap": 3}, "tokenizer": "words"})
    keys = {c: chunk_set_key(docs, spec.model_copy(update={"context": c}), WORDS) for c in (None, "title", "heading_path")}
    assert keys[None] == old and len(set(keys.values())) == 3


def test_the_llm_sees_the_heading_path_as_the_passage_header(tmp_path, ws):
    kb = _handbook(tmp_path / "kb")
    path = tmp_path / "kb.yaml"
    prompt = ROOT / "experiments" / "prompts" / "grounded_qa.yaml"
    path.write_text(f"""name: kb
dataset: {kb}
grid:
  chunking: [{{splitter: sentence, chunk_size: 12, chunk_overlap: 0, context: heading_path}}]
  retrieval: [{{method: bm25, top_k: 2}}]
  generation: [{{provider: openai_compatible, model: fake-llm, base_url: '{FAKE_BASE_URL}', prompt: {prompt}}}]
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(path), ws)
    assert not plan.dataset.titled and plan.runs[0].config.chunking.context == "heading_path"
    with fake_components(plan, ws) as components:
        item = QuestionPath(plan.runs[0], plan, components).retrieve(0, plan.queries[0])
    top = item.hits[0]
    assert "vault token" in top["text"] and top["context"].startswith("Handbook > Setup")
    assert item.context[0].title == top["context"] and f"({top['context']})" in str(item.rendered)
