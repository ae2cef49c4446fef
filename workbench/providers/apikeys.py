"""API keys come only from environment variables named in the experiment (``api_key_env``).

Keys are read at the moment a client is made and never stored, logged or echoed: error messages
name the variable, never its value.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

from ..errors import ProviderError

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "azure_openai": "AZURE_OPENAI_API_KEY"}
# What a client sends instead of a key while a strict replay answers every call from a cassette
# (CI has no key): never sent to a provider, and not a secret.
REPLAY_PLACEHOLDER = "replay-without-key"
_optional = {"depth": 0}
_optional_lock = threading.Lock()


@contextlib.contextmanager
def keys_optional() -> Iterator[None]:
    """While a strict replay runs (in this process, every thread: clients are made lazily in worker
    threads), a key variable that is not set gives :data:`REPLAY_PLACEHOLDER` instead of an error."""
    with _optional_lock:
        _optional["depth"] += 1
    try:
        yield
    finally:
        with _optional_lock:
            _optional["depth"] -= 1


def api_key_for(provider: str, api_key_env: str | None, what: str) -> str:
    """The key for ``provider`` (by default ``OPENAI_API_KEY`` for OpenAI, ``AZURE_OPENAI_API_KEY``
    for Azure OpenAI; none needed otherwise)."""
    env = api_key_env or DEFAULT_KEY_ENV.get(provider)
    if env is None:
        return "none"
    key = os.environ.get(env)
    if not key and _optional["depth"]:
        return REPLAY_PLACEHOLDER
    if not key:
        raise ProviderError(f"{what}: environment variable {env} is not set (it must hold the API key)")
    return key
