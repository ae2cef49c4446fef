"""Answer generation through the OpenAI API: prompts rendered with the retrieved chunks, streamed
answers with time to first token, and token counts (for the cost; see ``providers/prices.py``).

Every provider (OpenAI, any OpenAI-compatible server, the local llama.cpp server) is reached with
the official ``openai`` client, so only ``base_url`` and the API key differ between them. Errors
never raise out of ``generate``: a failed question is returned with its error for the store to
count, never silently turned into an empty or NaN answer.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field

import httpx
import openai
from pybreaker import CircuitBreakerError

from ..config.experiment import GenerationSpec
from ..config.files import Prompt
from ..hashing import canonical_json, sha256_text
from ..providers import resilience
from ..providers.clients import openai_client
from ..providers.resilience import RetryPolicy
from ..providers.throttle import AdaptiveLimiter


@dataclass(frozen=True, slots=True)
class ContextChunk:
    number: int  # the [n] the model cites
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True)
class GenerationResult:
    answer: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_estimated: bool = False
    ttft_s: float | None = None
    latency_s: float | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def format_context(chunks: list[ContextChunk]) -> str:
    """Numbered passages the model can cite: ``[1] (Title) text``."""
    return "\n\n".join(f"[{c.number}] ({c.title}) {c.text}" if c.title else f"[{c.number}] {c.text}" for c in chunks)


def render(prompt: Prompt, question: str, chunks: list[ContextChunk], answer: str | None = None):
    """Chat messages (chat mode) or the prompt string (completion mode)."""
    values = {"context": format_context(chunks), "question": question}
    if answer is not None:
        values["answer"] = answer
    if prompt.mode == "completion":
        return prompt.template.format(**values)
    messages = []
    if prompt.system:
        messages.append({"role": "system", "content": prompt.system.format(**values)})
    messages.append({"role": "user", "content": prompt.user.format(**values)})
    return messages


def rendered_hash(rendered) -> str:
    """The identity of a rendered prompt (chat messages or text) in cache keys: the sha256 of its
    canonical JSON, so the same request always hits the same cached answer or verdict."""
    return sha256_text(canonical_json(rendered))


def make_client(spec: GenerationSpec, base_url: str | None, *, http_client: httpx.Client | None = None) -> openai.OpenAI:
    """The client of a generation (judge, fallback) spec, made by ``providers/clients.py``: its own
    retries are off because ``generate`` retries under one policy (``providers/resilience.py``).

    ``base_url`` is the running local server for provider local; ``http_client`` carries the traffic
    when given (tests, recording).
    """
    return openai_client(spec, f"generation {spec.provider}:{spec.model}", base_url=base_url, http_client=http_client)


def retry_policy(spec: GenerationSpec):
    return RetryPolicy(max_retries=spec.max_retries, backoff_s=spec.retry_backoff_s, max_backoff_s=max(20.0, spec.retry_backoff_s),
                       breaker_failures=spec.breaker_failures, breaker_reset_s=spec.breaker_reset_s)


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def _count_prompt_tokens(client: openai.OpenAI, rendered, http: httpx.Client | None = None) -> int | None:
    """Prompt tokens from the llama.cpp server's tokenizer when the stream carries no usage (through
    ``http``, the client's own transport, when given: so it is recorded and replayed like the answer)."""
    if isinstance(client, openai.AzureOpenAI):  # Azure sends usage; it has no llama.cpp tokenizer route
        return None
    text = rendered if isinstance(rendered, str) else _chatml(rendered)
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    try:
        resp = (http or httpx).post(f"{root}/extras/tokenize", json={"input": text}, timeout=10.0,
                          headers={"Authorization": f"Bearer {client.api_key}"})
        resp.raise_for_status()
        return len(resp.json()["tokens"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def _error_text(exc: Exception, api_key: str | None = None) -> str:
    """``"<ExceptionClass>: <first line>"`` with any API key masked (servers may echo a bad key back)."""
    msg = str(exc).splitlines()[0] if str(exc) else ""
    for key in (api_key, os.environ.get("OPENAI_API_KEY")):
        if key and len(key) >= 4 and key not in ("local", "none"):
            msg = msg.replace(key, "***")
    msg = re.sub(r"\bsk-[A-Za-z0-9_*-]{6,}", "sk-***", msg)
    return f"{type(exc).__name__}: {msg}"[:500]


def _stream(client: openai.OpenAI, mode: str, rendered, kwargs: dict):
    create = client.chat.completions.create if mode == "chat" else client.completions.create
    payload = {"messages": rendered} if mode == "chat" else {"prompt": rendered}
    try:
        return create(**payload, **kwargs)
    except openai.BadRequestError as exc:
        # Some OpenAI-compatible servers reject stream_options; ask again without it.
        if "stream_options" not in str(exc):
            raise
        return create(**payload, **{k: v for k, v in kwargs.items() if k != "stream_options"})


def generate(client: openai.OpenAI, spec: GenerationSpec, prompt: Prompt, question: str, chunks: list[ContextChunk],
             answer: str | None = None, *, gate: AdaptiveLimiter | None = None, http: httpx.Client | None = None) -> GenerationResult:
    """Stream one answer (or, with ``answer``, one judge verdict); measure time to first token and
    total latency; count tokens.

    ``gate``: the endpoint's adaptive limiter (every attempt waits for a slot, 429s shrink the
    concurrency); ``http``: the client's transport, for the llama.cpp token count."""
    rendered = render(prompt, question, chunks, answer)
    common = {"model": spec.model, "temperature": spec.temperature, "seed": spec.seed, "max_tokens": spec.max_tokens,
              "stream": True, "stream_options": {"include_usage": True}}
    if prompt.stop:
        common["stop"] = list(prompt.stop)
    retries = []

    def once():
        # One complete request: a stream cut half-way is retried from the start.
        parts: list[str] = []
        usage = None
        ttft = None
        n_deltas = 0
        t0 = time.perf_counter()
        stream = _stream(client, prompt.mode, rendered, common)
        for chunk in stream:
            if getattr(chunk, "usage", None):
                usage = chunk.usage
            for choice in chunk.choices or []:
                piece = choice.delta.content if prompt.mode == "chat" else choice.text
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    n_deltas += 1
                    parts.append(piece)
        return parts, usage, ttft, n_deltas, time.perf_counter() - t0

    endpoint = f"{str(client.base_url).rstrip('/')}#{spec.model}"
    try:
        parts, usage, ttft, n_deltas, latency = resilience.call(once, endpoint, retry_policy(spec), on_retry=retries.append, gate=gate)
    except (openai.OpenAIError, httpx.HTTPError, json.JSONDecodeError, CircuitBreakerError) as exc:
        # A failed call has no latency or token counts: None keeps it out of the P50/P95 and means,
        # and the error column counts it.
        return GenerationResult(answer="", error=_error_text(exc, client.api_key), extra={"retries": len(retries)})
    answer = "".join(parts).strip()
    extra = {"retries": len(retries)} if retries else {}
    if usage is not None:
        return GenerationResult(answer, usage.prompt_tokens, usage.completion_tokens, False, ttft, latency, extra=extra)
    # llama.cpp's server sends no usage while streaming: it streams one token per delta, and its
    # tokenizer endpoint counts the prompt (rendered with the ChatML template SmolLM2 uses).
    return GenerationResult(answer, _count_prompt_tokens(client, rendered, http), n_deltas, True, ttft, latency, extra=extra)


def parse_verdict(text: str) -> float | None:
    """A judge's yes/no as 1.0/0.0 (the first yes or no word); None when it gave neither."""
    for word in text.lower().replace(".", " ").replace(",", " ").split():
        if word in ("yes", "supported", "faithful"):
            return 1.0
        if word in ("no", "unsupported", "unfaithful"):
            return 0.0
    return None
