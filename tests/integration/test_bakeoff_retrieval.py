"""A real retrieval-only bake-off (real MiniLM and e5, real Chroma, real BM25) through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import pytrec_eval
from typer.testing import CliRunner

from workbench.cli import app
from workbench.data.loader import load_dataset
from workbench.store import Store

pytestmark = pytest.mark.integration


def _experiment(tmp_path: Path, dataset: Path, name: str = "tiny_retrieval", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""
name: {name}
dataset: {dataset}
grid:
  chunking:
    - {{splitter: none}}
    - {{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}
  embedding:
    - {{provider: local, model: all-MiniLM-L6-v2}}
    - {{provider: local, model: multilingual-e5-small}}
  retrieval:
    - {{method: bm25, top_k: 10}}
    - {{method: dense, top_k: 10}}
    - {{method: hybrid, top_k: 10}}
{extra}""", encoding="utf-8")
    return path


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env, timeout=600)


def test_retrieval_grid_end_to_end(tmp_path, xquad_slice, workspace_env, monkeypatch):
    import os

    exp = _experiment(tmp_path, xquad_slice)
    env = dict(os.environ)
    first = _cli("run", str(exp), "--no-report", env=env)
    assert first.returncode == 0, first.stderr
    # 2 chunkings x (1 bm25 + 2 embedders x 2 dense/hybrid) = 10 runs
    assert "10 runs x" in first.stderr

    store = Store(workspace_env.store_url)
    board = store.leaderboard("tiny_retrieval")
    assert len(board) == 10 and set(board["status"]) == {"complete"}
    dataset = load_dataset(xquad_slice)
    n_queries = len(dataset.queries)
    assert set(board["n_questions"]) == {n_queries}

    # Every stored aggregate equals trec_eval's mean over the exported TREC run file.
    for run_id in board["run_id"]:
        exported = CliRunner().invoke(app, ["export", run_id, "--format", "trec"])  # in-process: ten interpreters cost 30 s
        assert exported.exit_code == 0, exported.output
        trec = exported.stdout
        run: dict[str, dict[str, float]] = {}
        for line in trec.splitlines():
            qid, _, doc_id, _rank, score, tag = line.split()
            assert tag == run_id
            run.setdefault(qid, {})[doc_id] = float(score)
        per_q = pytrec_eval.RelevanceEvaluator(dataset.qrels, {"ndcg_cut_10", "recip_rank", "success_5"}).evaluate(run)
        missing = set(dataset.qrels) - set(per_q)  # queries with nothing retrieved score 0
        row = board[board["run_id"] == run_id].iloc[0]
        for ours, theirs in (("ndcg_at_10", "ndcg_cut_10"), ("mrr", "recip_rank"), ("hit_at_5", "success_5")):
            expected = sum(v[theirs] for v in per_q.values()) / (len(per_q) + len(missing))
            assert row[ours] == pytest.approx(expected, abs=1e-9), (run_id, ours)
            assert row[f"{ours}_ci_low"] <= row[ours] <= row[f"{ours}_ci_high"]

    # BM25 runs carry no embedder; dense retrieval recorded the truncation rate of its embedder.
    assert set(board[board["retrieval"] == "bm25@10"]["embedding"]) == {"-"}
    assert board[board["retrieval"] == "dense@10"]["truncation_rate"].notna().all()

    # JSON leaderboard is valid JSON with one object per run.
    results = json.loads(_cli("results", "tiny_retrieval", "--json", env=env).stdout)
    assert len(results) == 10 and all("ndcg_at_10" in r for r in results)

    # A re-run recomputes nothing and stores identical rows.
    before = {r: store.questions(r).drop(columns=["retrieval_latency_s"]).to_json() for r in board["run_id"]}
    again = _cli("run", str(exp), "--no-report", env=env)
    assert again.returncode == 0, again.stderr
    runs = store.runs("tiny_retrieval")
    assert all(t["questions_computed"] == 0 for t in runs["timings"])
    after = {r: store.questions(r).drop(columns=["retrieval_latency_s"]).to_json() for r in board["run_id"]}
    assert before == after


def test_bad_experiment_writes_nothing(tmp_path, xquad_slice, workspace_env):
    import os

    exp = _experiment(tmp_path, xquad_slice, extra="  reranking: []\n")
    result = _cli("run", str(exp), env=dict(os.environ))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "unknown key 'reranking'" in message and str(exp) in message
    assert not Path(workspace_env.store_url.removeprefix("sqlite:///")).exists()
