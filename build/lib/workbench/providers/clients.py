"""OpenAI API clients for the hosted providers: OpenAI, Azure OpenAI and any OpenAI-compatible endpoint.

All three speak the OpenAI API and are reached with the official ``openai`` package; they differ
only in how the client is made. Azure OpenAI addresses a *deployment* of a model on a resource
(``https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT/...?api-version=...``) and
authenticates with an ``api-key`` header: ``openai.AzureOpenAI`` builds exactly that.
"""

from __future__ import annotations

import openai

from .apikeys import api_key_for

AZURE_FIELDS = ("azure_endpoint", "api_version", "deployment")


def openai_client(spec, what: str, *, timeout: float, max_retries: int) -> openai.OpenAI:
    """A client for an embedding or generation spec of a hosted provider (not ``local``)."""
    key = api_key_for(spec.provider, spec.api_key_env, what)
    if spec.provider == "azure_openai":
        return openai.AzureOpenAI(azure_endpoint=spec.azure_endpoint, api_version=spec.api_version,
                                  azure_deployment=spec.deployment, api_key=key, timeout=timeout, max_retries=max_retries)
    url = spec.base_url if spec.provider == "openai_compatible" else (spec.base_url or None)
    return openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=max_retries)


def identity_fields(spec) -> dict:
    """What an Azure deployment adds to a model's identity (empty for the other providers, so
    their run ids and cache keys are unchanged): the resource and the deployment, not the API version."""
    if getattr(spec, "provider", None) != "azure_openai":
        return {}
    return {"azure_endpoint": spec.azure_endpoint.rstrip("/"), "deployment": spec.deployment}
