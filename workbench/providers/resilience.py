"""Provider faults: retries with exponential backoff and jitter, a circuit breaker per endpoint.

Every call to a model API (generation, embedding, LLM and hosted rerankers) goes through ``call``:

* the client's own timeout applies to each request (``timeout_s`` in the spec), and its built-in
  retries are switched off (``providers/clients.py`` makes every client) so that one policy,
  tenacity's, decides;
* tenacity retries 429, 5xx, timeouts and connection errors with exponential backoff and full
  jitter, honouring a ``Retry-After`` header when the server sends one (capped at the maximum wait);
* a ``pybreaker`` circuit breaker per endpoint (base URL + model) counts failed attempts; once open
  it fails calls at once (``CircuitBreakerError``) until ``breaker_reset_s`` has passed, so a dead
  provider costs one timeout per question at most instead of every retry, and the caller can go to
  its fallback model immediately.

Client errors (400, 401, 404, ...) are neither retried nor counted by the breaker: they are the
request's fault, not the endpoint's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import openai
import pybreaker
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .throttle import AdaptiveLimiter

_log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3  # attempts after the first
    backoff_s: float = 0.5  # first backoff; doubles per attempt, with jitter
    max_backoff_s: float = 20.0
    breaker_failures: int = 5  # consecutive failed attempts that open the breaker
    breaker_reset_s: float = 30.0  # how long it stays open before one trial call


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts, connection errors (and a stream cut mid-way): worth another try."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIStatusError):
        return True  # e.g. an error event or a malformed chunk in a stream
    if isinstance(exc, httpx.HTTPStatusError):  # plain httpx clients (a hosted rerank API)
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, (httpx.TransportError, json.JSONDecodeError))


def _not_endpoint_fault(exc: BaseException) -> bool:
    """What the breaker does not count: the request's own faults (4xx), and rate limits (429): a
    provider that says "slow down" is up, and the adaptive limiter (``throttle.py``) slows down."""
    return not is_transient(exc) or is_rate_limited(exc)[0]


def retry_after_s(exc: BaseException) -> float | None:
    """The server's ``Retry-After`` (seconds form) on a 429/503, if any."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # the HTTP-date form: fall back to the exponential backoff


class WaitRetryAfterOrBackoff:
    """The tenacity wait of a :class:`RetryPolicy` (what :func:`call` waits between attempts): the
    server's Retry-After when given, capped at ``max_backoff_s``, else exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy):
        self.backoff = wait_exponential_jitter(initial=policy.backoff_s, max=policy.max_backoff_s, jitter=policy.backoff_s)
        self.cap = policy.max_backoff_s

    def __call__(self, retry_state) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        hinted = retry_after_s(exc) if exc is not None else None
        return min(hinted, self.cap) if hinted is not None else self.backoff(retry_state)


_BREAKERS: dict[str, pybreaker.CircuitBreaker] = {}
_BREAKERS_LOCK = threading.Lock()
_LAST_FAILURE: dict[str, str] = {}


class _RememberLastFailure(pybreaker.CircuitBreakerListener):
    """Keeps each endpoint's last counted failure, so "circuit open" errors say what opened it."""

    def failure(self, cb, exc) -> None:
        msg = str(exc).splitlines()[0] if str(exc) else ""
        _LAST_FAILURE[cb.name] = f"{type(exc).__name__}: {msg}"[:200]


def breaker_for(endpoint: str, policy: RetryPolicy) -> pybreaker.CircuitBreaker:
    """The process-wide breaker of one endpoint (shared by every run and thread using it)."""
    with _BREAKERS_LOCK:
        if endpoint not in _BREAKERS:
            _BREAKERS[endpoint] = pybreaker.CircuitBreaker(
                fail_max=policy.breaker_failures, reset_timeout=policy.breaker_reset_s, exclude=[_not_endpoint_fault],
                listeners=[_RememberLastFailure()], name=endpoint)
        return _BREAKERS[endpoint]


def through_breaker(breaker: pybreaker.CircuitBreaker, fn: Callable[[], T]) -> T:
    """``fn`` under ``breaker``, concurrently with other threads.

    pybreaker's ``CircuitBreaker.call`` holds the breaker's lock for the whole call (pybreaker issue
    #55, open): every thread's request to one endpoint waited for the one in flight, so
    ``concurrency: 8`` sent one request at a time. While the breaker is closed the request runs
    outside it and only its outcome passes through ``breaker.call`` (counting, tripping and
    listeners stay pybreaker's); open or half-open, the call goes through the breaker itself (fail
    fast while open; one trial call at a time while half-open).
    """
    if breaker.current_state != pybreaker.STATE_CLOSED:
        return breaker.call(fn)
    try:
        out = fn()
    except BaseException as exc:
        if breaker.current_state != pybreaker.STATE_CLOSED:
            raise  # another thread tripped it meanwhile: this failure is already history
        error = exc

        def failed():
            raise error

        return breaker.call(failed)
    if breaker.current_state != pybreaker.STATE_CLOSED:
        return out
    return breaker.call(lambda: out)


def is_rate_limited(exc: BaseException) -> tuple[bool, float | None]:
    """(the answer was a 429, its Retry-After in seconds or None): what an adaptive gate backs off on."""
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    return status == 429, retry_after_s(exc)


def call(fn: Callable[[], T], endpoint: str, policy: RetryPolicy, on_retry: Callable[[BaseException], None] | None = None,
         gate: AdaptiveLimiter | None = None) -> T:
    """Run ``fn`` (one complete request, a consumed stream included) under the retry policy and the
    endpoint's circuit breaker. Raises the last error, or ``pybreaker.CircuitBreakerError`` while
    the breaker is open (not retried: the breaker exists to stop hammering a dead endpoint).

    ``gate`` (an :class:`~.throttle.AdaptiveLimiter`): every attempt, retries included, waits for a
    slot there and reports back whether it was rate limited, so concurrency adapts (AIMD)."""
    breaker = breaker_for(endpoint, policy)

    def guarded():
        return through_breaker(breaker, fn)

    attempt = (lambda: gate.run(guarded, is_rate_limited)) if gate is not None else guarded

    def _before_sleep(state) -> None:
        exc = state.outcome.exception()
        _log.info("%s: attempt %d failed (%s: %s); retrying", endpoint, state.attempt_number, type(exc).__name__,
                  str(exc).splitlines()[0] if str(exc) else "")
        if on_retry is not None:
            on_retry(exc)

    retrying = Retrying(stop=stop_after_attempt(policy.max_retries + 1), wait=WaitRetryAfterOrBackoff(policy),
                        retry=retry_if_exception(is_transient), reraise=True, before_sleep=_before_sleep)
    try:
        return retrying(attempt)
    except pybreaker.CircuitBreakerError:
        last = _LAST_FAILURE.get(endpoint)
        raise pybreaker.CircuitBreakerError(
            f"circuit open after {breaker.fail_counter or policy.breaker_failures} failed attempts in a row"
            + (f" (last: {last})" if last else "")) from None


def error_kind(error: str | None) -> str | None:
    """A short reason for a stored error text, for counts in the report ("timeout", "rate limit", ...)."""
    if not error:
        return None
    # "<Class>: message", or "<what failed>: <Class>: message" (embedding errors name the endpoint first)
    names = re.findall(r"\b([A-Z][A-Za-z]*(?:Error|Exception|Timeout))\b:", error)
    name = names[0] if names else error.split(":", 1)[0].strip()
    kinds = {
        "APITimeoutError": "timeout", "ReadTimeout": "timeout", "ConnectTimeout": "timeout", "TimeoutException": "timeout",
        "RateLimitError": "rate limit (429)", "InternalServerError": "server error (5xx)",
        "APIConnectionError": "connection error", "ConnectError": "connection error", "RemoteProtocolError": "connection error",
        "CircuitBreakerError": "circuit open", "AuthenticationError": "authentication", "BadRequestError": "bad request",
        "NotFoundError": "not found", "ProviderError": "provider error",
    }
    if name in kinds:
        return kinds[name]
    if name == "APIStatusError":
        return "server error (5xx)" if "5" == error.split("Error code: ")[-1][:1] else "http error"
    return name or "error"
