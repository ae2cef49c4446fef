"""providers/clients.py makes every model-API client: the client's own retries are off (the
resilience policy alone retries), keys come from the environment, and an injected httpx.Client
carries the traffic of every kind of client (generation, Azure, embeddings, LLM and hosted rerankers)."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from workbench.config.experiment import EmbeddingSpec, GenerationSpec
from workbench.data.types import Hit
from workbench.errors import ProviderError
from workbench.providers.clients import Endpoint, endpoint_client, openai_client, openai_like_settings
from workbench.stages.embedding import make_embedder
from workbench.stages.generation import make_client
from workbench.stages.rerank import HostedReranker, LLMReranker

HITS = [Hit("c1", "d1", 0.5), Hit("c2", "d2", 0.4)]
TEXTS = ["Paris is in France.", "Berlin is in Germany."]


class Recorder:
    """An httpx.Client over a MockTransport: records each request, answers from a script (the
    last answer repeats); ``Retry-After: 0`` keeps the retry policy's waits at zero."""

    def __init__(self, *answers: tuple[int, dict]):
        self.requests: list[httpx.Request] = []
        self.answers = list(answers)
        self.client = httpx.Client(transport=httpx.MockTransport(self._handle))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return httpx.Response(status, json=body, headers={"Retry-After": "0"})


def _url() -> str:
    # a fresh endpoint per test: circuit breakers are per endpoint and per process
    return f"http://unit-{uuid.uuid4().hex[:8]}.invalid/v1"


def _chat(content: str) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def test_generation_clients_have_no_retries_of_their_own_and_use_the_injected_client(monkeypatch):
    monkeypatch.setenv("WB_UNIT_KEY", "sk-unit")
    rec = Recorder((200, {"object": "list", "data": []}))
    spec = GenerationSpec(provider="openai_compatible", model="m", prompt="p.yaml", base_url=_url(), api_key_env="WB_UNIT_KEY")
    client = make_client(spec, None, http_client=rec.client)
    assert client.max_retries == 0 and client.timeout == spec.timeout_s
    client.models.list()
    [request] = rec.requests
    assert str(request.url) == f"{spec.base_url}/models" and request.headers["Authorization"] == "Bearer sk-unit"
    local = make_client(GenerationSpec(provider="local", model="smollm2-135m", prompt="p.yaml"), "http://127.0.0.1:1/v1")
    assert local.max_retries == 0 and local.api_key == "local"


def test_azure_requests_go_to_the_deployment_through_the_injected_client(monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "k-azure")
    rec = Recorder((200, _chat("hi")))
    spec = GenerationSpec(provider="azure_openai", model="gpt-4o-mini", prompt="p.yaml", azure_endpoint="https://res.openai.azure.com",
                          api_version="2024-10-21", deployment="chat")
    client = openai_client(spec, "generation azure", http_client=rec.client)
    assert isinstance(client, openai.AzureOpenAI) and client.max_retries == 0
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    [request] = rec.requests
    assert str(request.url) == "https://res.openai.azure.com/openai/deployments/chat/chat/completions?api-version=2024-10-21"
    assert request.headers["api-key"] == "k-azure"


def test_hosted_embeddings_are_retried_by_the_policy_alone():
    url = _url()
    vector = {"object": "list", "model": "e", "data": [{"object": "embedding", "index": 0, "embedding": [3.0, 4.0]}],
              "usage": {"prompt_tokens": 1, "total_tokens": 1}}
    rec = Recorder((503, {"error": {"message": "busy"}}), (200, vector))
    embedder = make_embedder(EmbeddingSpec(provider="openai_compatible", model="e", base_url=url, max_retries=1), http_client=rec.client)
    assert embedder.embed_queries(["q"]).tolist() == [[pytest.approx(0.6), pytest.approx(0.8)]]
    assert len(rec.requests) == 2  # one retry, by providers/resilience.py
    always_busy = Recorder((503, {"error": {"message": "busy"}}))
    embedder = make_embedder(EmbeddingSpec(provider="openai_compatible", model="e", base_url=_url(), max_retries=2), http_client=always_busy.client)
    with pytest.raises(ProviderError, match="InternalServerError"):
        embedder.embed_queries(["q"])
    assert len(always_busy.requests) == 3  # 1 + max_retries: the client itself retried nothing


def test_llm_reranker_talks_through_a_client_without_retries(monkeypatch):
    rec = Recorder((503, {"error": {"message": "busy"}}), (200, _chat("Doc: 2, Relevance: 9\nDoc: 1, Relevance: 3")))
    url = _url()
    reranker = LLMReranker(url, "k", "m", http_client=rec.client)
    out, fallback = reranker("Where is Berlin?", HITS, TEXTS, top_n=2)
    assert not fallback and [h.chunk_id for h in out] == ["c2", "c1"] and [h.score for h in out] == [9.0, 3.0]
    assert len(rec.requests) == 2 and str(rec.requests[-1].url) == f"{url}/chat/completions"
    assert json.loads(rec.requests[-1].content)["model"] == "m"


def test_openai_like_settings_turn_retries_off():
    settings = openai_like_settings(Endpoint(None, "k", timeout_s=7.0))
    assert settings["max_retries"] == 0 and settings["api_base"] == "https://api.openai.com/v1" and settings["timeout"] == 7.0
    assert settings["openai_client"].max_retries == 0
    assert endpoint_client(Endpoint("http://x/v1", "k")).max_retries == 0


def test_hosted_reranker_uses_the_injected_client_and_the_retry_policy():
    results = {"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.2}]}
    rec = Recorder((429, {"error": "slow down"}), (200, results))
    url = _url()
    out, fallback = HostedReranker(url, "rk", "rr-model", http_client=rec.client)("Where is Berlin?", HITS, TEXTS, top_n=2)
    assert [(h.chunk_id, h.score) for h in out] == [("c2", 0.9), ("c1", 0.2)] and not fallback
    assert len(rec.requests) == 2
    request = rec.requests[-1]
    assert str(request.url) == f"{url}/rerank" and request.headers["Authorization"] == "Bearer rk"
    assert json.loads(request.content) == {"model": "rr-model", "query": "Where is Berlin?", "documents": TEXTS, "top_n": 2}
    refused = Recorder((401, {"error": "bad key"}))
    with pytest.raises(ProviderError, match=r"rerank API .*/rerank: HTTPStatusError"):
        HostedReranker(_url(), "rk", "rr-model", http_client=refused.client)("q", HITS, TEXTS, top_n=2)
    assert len(refused.requests) == 1  # a client error is not retried
