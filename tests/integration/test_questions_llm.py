"""Question generation with the real local LLM (SmolLM2 via llama_cpp.server), then a bake-off on it."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from workbench.data.evalset import find_answer, read_manifest
from workbench.data.ingest import ingest_folder
from workbench.data.types import Span
from workbench.providers.llm_server import LocalLLMServer
from workbench.questions import Candidate, QuestionFilter, QuestionLLM

pytestmark = pytest.mark.integration
SAMPLE = Path(__file__).resolve().parents[2] / "data" / "docs-sample" / "documents"
NOTES = "Paris is the capital of France. The workbench mascot is a grey heron named Quillibert.\n"


def _docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    shutil.copytree(SAMPLE, root)
    (root / "notes.txt").write_text(NOTES, encoding="utf-8")
    return root


def test_filters_with_the_local_llm_remove_planted_questions(tmp_path: Path):
    ing = ingest_folder(_docs(tmp_path))
    doc = ing.docs[ing.by_path()["notes.txt"]]
    passage = Span(doc.doc_id, 0, len(doc.text))
    with LocalLLMServer("smollm2-135m", n_threads=1) as server:
        llm = QuestionLLM(openai.OpenAI(base_url=server.base_url, api_key="local"), "smollm2-135m", provider="local")
        f = QuestionFilter(ing.docs, llm.closed_book)
        assert f.offer(Candidate("q1", "What is the name of the workbench mascot?", "Quillibert", passage, "direct")) is None
        assert f.offer(Candidate("q2", "What is the name of the workbench's mascot?", "Quillibert", passage, "direct")) == "duplicate"
        assert f.offer(Candidate("q3", "What is the capital of France?", "Paris", passage, "direct")) == "closed_book"
        assert f.offer(Candidate("q4", "What colour is the mascot?", "blue", passage, "direct")) == "answer_not_in_span"
    res = f.result()
    assert [q.qid for q in res.accepted] == ["q1"]
    assert "paris" in res.rejected[1][0].extra["closed_book_reply"].lower()  # what the model said without the document
    assert res.stats()["rejected"] == {"duplicate": 1, "closed_book": 1, "answer_not_in_span": 1}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, timeout=900)


def test_generate_review_and_run_a_chunker_bakeoff(tmp_path: Path, workspace_env):
    root = _docs(tmp_path)
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    evalset = tmp_path / "evalsets" / "team"
    gen = _cli("questions", "generate", str(root), "-o", str(evalset), "-n", "1", "--max-attempts", "2", "--unanswerable", "0",
               "--threads", "1")
    assert gen.returncode == 0, gen.stderr
    assert "6 documents" in gen.stderr and "0 skipped, 1 failed" in gen.stderr and "failed broken.pdf: unreadable PDF" in gen.stderr
    manifest = read_manifest(evalset)
    lines = [json.loads(x) for x in (evalset / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert manifest["filters"]["candidates"] == len(lines) == 2  # every candidate kept, accepted or rejected with a reason
    assert manifest["generator"]["model"] == "smollm2-135m" and len(manifest["generator"]["prompt_hash"]) == 16
    assert manifest["ingest"]["errors"][0].startswith("broken.pdf:") and manifest["revision"] == 1
    assert all(q["status"] == "accepted" or q["reject_reason"] for q in lines)
    again = _cli("questions", "generate", str(root), "-o", str(evalset), "-n", "1")
    assert again.returncode == 2 and "an evaluation set exists there" in again.stderr

    # a reviewer rewrites the first question (whatever the model wrote) and adds evidence
    ing = ingest_folder(root)
    doc = ing.docs[ing.by_path()["founding/preamble.txt"]]
    a, b = find_answer(doc.text, "September 17, 1787")
    review = tmp_path / "review.csv"
    assert _cli("questions", "review", str(evalset), "--export", str(review)).returncode == 0
    with open(review, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0].update(decision="edit", question="On what date was the Constitution signed?", answers="September 17, 1787",
                   doc_id=doc.doc_id, span_start=str(a - 30), span_end=str(b + 5), unanswerable="no")
    with open(review, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    imported = _cli("questions", "review", str(evalset), "--import", str(review))
    assert imported.returncode == 0, imported.stderr
    assert read_manifest(evalset)["revision"] == 2

    from workbench.config.experiment import parse_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.store import Store

    exp = parse_experiment(f"""
name: own_docs_test
dataset: {evalset}
relevance: {{min_overlap: 0.5}}
grid:
  chunking:
    - {{splitter: sentence, chunk_size: 32, chunk_overlap: 0}}
    - {{splitter: none}}
  retrieval:
    - {{method: bm25, top_k: 3}}
""", tmp_path / "exp.yaml")
    plan = plan_experiment(exp, workspace_env)
    assert plan.runs[0].lineage["ingest"]["n_errors"] == 1 and plan.runs[0].lineage["relevance"] == {"min_overlap": 0.5, "min_chars": None}
    run_experiment(plan, workspace_env)
    store = Store(workspace_env.store_url)
    for run in plan.runs:
        rows = store.questions(run.run_id)
        m = rows[rows["question"] == "On what date was the Constitution signed?"].iloc[0]
        assert {"hit_at_3", "mrr", "ndcg_at_10", "chunk_hit_at_3", "chunk_mrr", "chunk_ndcg_at_10"} <= set(rows.columns)
        assert m["hit_at_3"] == 1.0  # BM25 finds the preamble for its own words
        if run.config.chunking.splitter == "none":
            assert m["chunk_mrr"] == m["mrr"]  # whole documents: a chunk is its document
        board = store.leaderboard("own_docs_test")
        assert "chunk_ndcg_at_10" in board.columns and "ndcg_at_10" in board.columns

    # the report says which metrics are chunk level and which document level, and names the failed file
    from workbench.report import html as reporthtml
    from workbench.report.data import load_report

    data = load_report(workspace_env.store_url, "own_docs_test")
    board_html = reporthtml.leaderboard_html(data)
    assert "Chunk MRR" in board_html and "Document level (" in board_html and "covers at least 50%" in board_html
    lineage = reporthtml.lineage_html(data)
    assert "6 read from 7 files" in lineage and "broken.pdf: unreadable PDF" in lineage
