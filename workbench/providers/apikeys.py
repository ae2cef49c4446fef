"""API keys come only from environment variables named in the experiment (``api_key_env``).

Keys are read at the moment a client is made and never stored, logged or echoed: error messages
name the variable, never its value.
"""

from __future__ import annotations

import os

from ..errors import ProviderError

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "azure_openai": "AZURE_OPENAI_API_KEY"}


def api_key_for(provider: str, api_key_env: str | None, what: str) -> str:
    """The key for ``provider`` (by default ``OPENAI_API_KEY`` for OpenAI, ``AZURE_OPENAI_API_KEY``
    for Azure OpenAI; none needed otherwise)."""
    env = api_key_env or DEFAULT_KEY_ENV.get(provider)
    if env is None:
        return "none"
    key = os.environ.get(env)
    if not key:
        raise ProviderError(f"{what}: environment variable {env} is not set (it must hold the API key)")
    return key
