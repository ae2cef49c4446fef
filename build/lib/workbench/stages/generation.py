"""Answer generation through the OpenAI API: prompts as versioned files, streamed answers with time
to first token, token counts and cost.

Every provider (OpenAI, any OpenAI-compatible server, the local llama.cpp server) is reached with
the official ``openai`` client, so only ``base_url`` and the API key differ between them. Errors
never raise out of ``generate``: a failed question is returned with its error for the store to
count, never silently turned into an empty or NaN answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import yaml

from ..config.experiment import LOCAL_LLMS, GenerationSpec
from ..errors import ConfigError, ProviderError, did_you_mean
from ..hashing import canonical_json, sha256_text
from ..config.yamlfile import read_yaml

PROMPT_KEYS = {"mode", "description", "system", "user", "template", "stop"}
PLACEHOLDERS = frozenset({"context", "question"})
JUDGE_PLACEHOLDERS = frozenset({"context", "question", "answer"})  # judge prompts also see the answer
PRICE_KEYS = {"input_per_1m_usd", "output_per_1m_usd"}
PRICE_META_KEYS = {"updated", "source"}
PRICES_PATH = Path(__file__).parents[1] / "providers" / "prices.yaml"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prompt:
    path: Path
    mode: str  # "chat" | "completion"
    content_hash: str
    system: str | None = None
    user: str | None = None
    template: str | None = None
    stop: tuple[str, ...] = ()


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


def _placeholders(template: str, path: Path, key: str, allowed: frozenset[str] = PLACEHOLDERS) -> set[str]:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"{path}: {key}: malformed template ({exc}); write literal braces as {{{{ and }}}}") from None
    unknown = names - allowed
    if unknown:
        name = sorted(unknown)[0]
        listed = ", ".join("{" + a + "}" for a in sorted(allowed))
        raise ConfigError(f"{path}: {key}: unknown placeholder {{{name}}}{did_you_mean(name, allowed)}; allowed: {listed}")
    return names


def load_prompt(path: str | os.PathLike, placeholders: frozenset[str] = PLACEHOLDERS) -> Prompt:
    """Read and validate a prompt file (see the README); every problem is a one-line ConfigError.

    ``placeholders`` are the names the prompt must use (``JUDGE_PLACEHOLDERS`` for judge prompts).
    """
    path = Path(path)
    raw, data = read_yaml(path, "prompt file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with mode and templates")
    for key in data:
        if key not in PROMPT_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}{did_you_mean(key, PROMPT_KEYS)}; allowed: {', '.join(sorted(PROMPT_KEYS))}")
    for key in ("description", "system", "user", "template"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key}: expected text, got {type(data[key]).__name__}")
    mode = data.get("mode")
    if mode not in ("chat", "completion"):
        raise ConfigError(f"{path}: mode: expected 'chat' or 'completion', got {mode!r}")
    stop = data.get("stop") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"{path}: stop: expected a list of strings")
    needed = ("user",) if mode == "chat" else ("template",)
    for key in needed:
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ConfigError(f"{path}: {key}: required for mode {mode!r}")
    wrong = "template" if mode == "chat" else "user"
    if data.get(wrong) is not None or (mode == "completion" and data.get("system") is not None):
        raise ConfigError(f"{path}: {wrong if data.get(wrong) is not None else 'system'}: not used in mode {mode!r}")
    found: set[str] = set()
    for key in ("system", "user", "template"):
        if isinstance(data.get(key), str):
            found |= _placeholders(data[key], path, key, placeholders)
    missing = placeholders - found
    if missing:
        raise ConfigError(f"{path}: the prompt never uses {', '.join('{' + m + '}' for m in sorted(missing))}")
    return Prompt(path=path, mode=mode, content_hash=hashlib.sha256(raw).hexdigest(), system=data.get("system"), user=data.get("user"),
                  template=data.get("template"), stop=tuple(stop))


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
    return sha256_text(canonical_json(rendered))


def make_client(spec: GenerationSpec, base_url: str | None) -> openai.OpenAI:
    """An OpenAI client for the spec; ``base_url`` is the running local server for provider local."""
    if spec.provider == "local":
        if not base_url:
            # Without it the client would fall back to api.openai.com.
            raise ProviderError(f"generation local:{spec.model}: needs the base_url of a running LocalLLMServer")
        return openai.OpenAI(base_url=base_url, api_key="local", max_retries=0, timeout=spec.timeout_s)
    from ..providers.clients import openai_client

    # The client's own retries are off: generate() retries under one policy (workbench/resilience.py).
    return openai_client(spec, f"generation {spec.provider}:{spec.model}", timeout=spec.timeout_s, max_retries=0)


def retry_policy(spec: GenerationSpec):
    from ..providers.resilience import RetryPolicy

    return RetryPolicy(max_retries=spec.max_retries, backoff_s=spec.retry_backoff_s, max_backoff_s=max(20.0, spec.retry_backoff_s),
                       breaker_failures=spec.breaker_failures, breaker_reset_s=spec.breaker_reset_s)


def _chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


def _count_prompt_tokens(client: openai.OpenAI, rendered) -> int | None:
    """Prompt tokens from the llama.cpp server's tokenizer when the stream carries no usage."""
    if isinstance(client, openai.AzureOpenAI):  # Azure sends usage; it has no llama.cpp tokenizer route
        return None
    text = rendered if isinstance(rendered, str) else _chatml(rendered)
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    try:
        resp = httpx.post(f"{root}/extras/tokenize", json={"input": text}, timeout=10.0,
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
             answer: str | None = None) -> GenerationResult:
    """Stream one answer (or, with ``answer``, one judge verdict); measure time to first token and
    total latency; count tokens."""
    rendered = render(prompt, question, chunks, answer)
    common = {"model": spec.model, "temperature": spec.temperature, "seed": spec.seed, "max_tokens": spec.max_tokens,
              "stream": True, "stream_options": {"include_usage": True}}
    if prompt.stop:
        common["stop"] = list(prompt.stop)
    from pybreaker import CircuitBreakerError

    from ..providers import resilience

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
        parts, usage, ttft, n_deltas, latency = resilience.call(once, endpoint, retry_policy(spec), on_retry=retries.append)
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
    return GenerationResult(answer, _count_prompt_tokens(client, rendered), n_deltas, True, ttft, latency, extra=extra)


def load_prices(path: str | os.PathLike | None = None) -> dict[str, dict[str, float]]:
    """The price table: model -> {input_per_1m_usd, output_per_1m_usd}.

    Prices change more often than code, so they live in ``workbench/prices.yaml``; edit it, or point
    ``$WORKBENCH_PRICES`` at your own file.
    """
    path = Path(path or os.environ.get("WORKBENCH_PRICES") or PRICES_PATH)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the price table: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError(f"{path}: expected a mapping 'models: {{name: {{input_per_1m_usd, output_per_1m_usd}}}}'")
    for name, entry in data["models"].items():
        if not isinstance(entry, dict) or not PRICE_KEYS <= set(entry):
            raise ConfigError(f"{path}: models.{name}: needs input_per_1m_usd and output_per_1m_usd")
        for key, value in entry.items():
            if key in PRICE_META_KEYS:  # when and where the price was read: kept for people, not used
                if not isinstance(value, (str, dt.date)):
                    raise ConfigError(f"{path}: models.{name}.{key}: expected a date (YYYY-MM-DD) or text, got {value!r}")
                continue
            if key not in PRICE_KEYS:
                raise ConfigError(f"{path}: models.{name}: unknown key {key!r}{did_you_mean(key, PRICE_KEYS | PRICE_META_KEYS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{path}: models.{name}.{key}: expected a non-negative number, got {value!r}")
    return data["models"]


_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-4o-mini-2024-07-18 is priced as gpt-4o-mini
_UNPRICED_WARNED: set[str] = set()


def price_for(model: str, prices: dict) -> dict[str, float] | None:
    """The table's entry for ``model`` (or for its undated name); None when it has none."""
    found = prices.get(model) or prices.get(_SNAPSHOT.sub("", model))
    if found is None and model.startswith("azure_openai:"):  # no Azure-specific price: the OpenAI list price
        return price_for(model.removeprefix("azure_openai:"), prices)
    return found


def cost_usd(model: str, prompt_tokens: int | None, completion_tokens: int | None, prices: dict) -> float | None:
    """Cost of one call in USD: 0 for a local model, None when unknown (never shown as free).

    ``model`` is the hosted model name, or ``local:<name>`` (a bare local name also counts) for the
    bundled models. An unpriced hosted model gives None and one logged warning naming the price file.
    """
    if model.startswith("local:") or model in LOCAL_LLMS:
        return 0.0
    entry = price_for(model, prices)
    if entry is None:
        if model not in _UNPRICED_WARNED:
            _UNPRICED_WARNED.add(model)
            _log.warning("no price for model %r in the price table (workbench/prices.yaml or $WORKBENCH_PRICES): "
                         "its cost is reported as unknown", model)
        return None
    if prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * entry["input_per_1m_usd"] + completion_tokens * entry["output_per_1m_usd"]) / 1e6


def parse_verdict(text: str) -> float | None:
    """A judge's yes/no as 1.0/0.0 (the first yes or no word); None when it gave neither."""
    for word in text.lower().replace(".", " ").replace(",", " ").split():
        if word in ("yes", "supported", "faithful"):
            return 1.0
        if word in ("no", "unsupported", "unfaithful"):
            return 0.0
    return None


class RateLimiter:
    """Space request starts at least ``60 / requests_per_minute`` seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None):
        import threading

        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)
