"""Every client of a model API is made here: OpenAI, Azure OpenAI, any OpenAI-compatible endpoint
(the local llama.cpp server included) and Cohere/Jina-style rerank APIs.

Making them in one place keeps three rules in one place:

* **one retry policy**: each client's own retries are off, so that ``providers/resilience.py``
  (tenacity with backoff, jitter and Retry-After, a circuit breaker per endpoint) alone decides
  what is retried and how often; two stacked policies would multiply the attempts;
* **keys from the environment only**: an API key comes from ``providers/apikeys.py`` (the variable
  the experiment names), never from a file or an argument typed by hand;
* **one HTTP seam**: every factory takes an optional ``http_client`` (an ``httpx.Client``) that
  carries the traffic instead of a client of its own, so tests and a later record/replay feature
  can put their own transport (``httpx.MockTransport``, a recorder) under every call.

All OpenAI-compatible endpoints are reached with the official ``openai`` package; they differ only
in how the client is made. Azure OpenAI addresses a *deployment* of a model on a resource
(``https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT/...?api-version=...``) and
authenticates with an ``api-key`` header: ``openai.AzureOpenAI`` builds exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import openai

from ..errors import ProviderError
from .apikeys import api_key_for

OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Endpoint:
    """Where a model API answers and the key it takes: what every client here is made from."""

    base_url: str | None  # None: OpenAI itself (OPENAI_BASE_URL)
    api_key: str = field(repr=False)
    timeout_s: float = 120.0  # per request (per read while streaming)
    azure_endpoint: str | None = None  # Azure OpenAI: the resource, its API version and the deployment
    api_version: str | None = None
    deployment: str | None = None


def endpoint_for(spec, what: str, *, base_url: str | None = None, timeout_s: float | None = None) -> Endpoint:
    """The endpoint of a generation, judge, fallback, embedding or LLM-rerank spec.

    Args:
        spec: has ``provider``, ``model``, ``base_url``, ``api_key_env`` (and Azure's fields for
            ``azure_openai``; ``timeout_s`` unless given here).
        what: names the caller in errors, e.g. ``generation openai:gpt-4o-mini``.
        base_url: where a ``provider: local`` model is served (a running ``LocalLLMServer``);
            required for it, since without it the client would silently go to api.openai.com.
        timeout_s: the per-request timeout when the spec has none (rerank specs).

    Raises:
        ProviderError: a local model without ``base_url``, or an API key variable that is not set.
    """
    timeout = timeout_s if timeout_s is not None else spec.timeout_s
    if spec.provider == "local":
        if not base_url:
            raise ProviderError(f"{what}: needs the base_url of a running LocalLLMServer")
        return Endpoint(base_url, "local", timeout)
    key = api_key_for(spec.provider, spec.api_key_env, what)
    if spec.provider == "azure_openai":
        return Endpoint(None, key, timeout, spec.azure_endpoint, spec.api_version, spec.deployment)
    return Endpoint(base_url or spec.base_url or None, key, timeout)


def endpoint_client(ep: Endpoint, *, http_client: httpx.Client | None = None) -> openai.OpenAI:
    """An ``openai`` client of ``ep`` with its own retries off (``max_retries=0``)."""
    common = {"api_key": ep.api_key, "timeout": ep.timeout_s, "max_retries": 0, "http_client": http_client}
    if ep.azure_endpoint:
        return openai.AzureOpenAI(azure_endpoint=ep.azure_endpoint, api_version=ep.api_version, azure_deployment=ep.deployment,
                                  **common)
    return openai.OpenAI(base_url=ep.base_url, **common)


def openai_client(spec, what: str, *, base_url: str | None = None, http_client: httpx.Client | None = None) -> openai.OpenAI:
    """The ``openai`` client of a generation, judge, fallback or embedding spec (see :func:`endpoint_for`)."""
    return endpoint_client(endpoint_for(spec, what, base_url=base_url), http_client=http_client)


def openai_like_settings(ep: Endpoint, *, http_client: httpx.Client | None = None) -> dict:
    """Keyword arguments for LlamaIndex's ``OpenAILike`` LLM: it talks through a client made by
    :func:`endpoint_client` (retries off) instead of building its own (3 retries by default)."""
    return {"api_base": ep.base_url or OPENAI_BASE_URL, "api_key": ep.api_key, "timeout": ep.timeout_s, "max_retries": 0,
            "openai_client": endpoint_client(ep, http_client=http_client)}


@dataclass(frozen=True)
class RerankClient:
    """A Cohere/Jina-style ``POST {base_url}/rerank`` API.

    The URL, key and timeout travel with each request, as the ``openai`` clients do, so one
    injected ``httpx.Client`` can carry the traffic of every endpoint.
    """

    url: str
    http: httpx.Client = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    timeout_s: float

    def rerank(self, payload: dict) -> dict:
        """One request, ``{model, query, documents, top_n}`` -> ``{results: [{index, relevance_score}]}``.

        Raises:
            httpx.HTTPStatusError: on a 4xx/5xx answer; httpx.TransportError when no answer came.
        """
        resp = self.http.post(self.url, json=payload, headers=self.headers, timeout=self.timeout_s)
        resp.raise_for_status()
        return resp.json()


def rerank_client(ep: Endpoint, *, http_client: httpx.Client | None = None) -> RerankClient:
    """The client of a hosted rerank API at ``ep`` (httpx makes no retries of its own)."""
    return RerankClient(url=f"{(ep.base_url or '').rstrip('/')}/rerank", http=http_client or httpx.Client(),
                        headers={"Authorization": f"Bearer {ep.api_key}"}, timeout_s=ep.timeout_s)


def identity_fields(spec) -> dict:
    """What an Azure deployment adds to a model's identity (empty for the other providers, so
    their run ids and cache keys are unchanged): the resource and the deployment, not the API version."""
    if getattr(spec, "provider", None) != "azure_openai":
        return {}
    return {"azure_endpoint": spec.azure_endpoint.rstrip("/"), "deployment": spec.deployment}
