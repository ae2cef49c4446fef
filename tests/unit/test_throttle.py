"""The AIMD limiter (providers/throttle.py) step by step, on a hand-driven clock."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from workbench.providers.resilience import is_rate_limited
from workbench.providers.throttle import AdaptiveLimiter


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_halves_once_per_congestion_event_and_grows_back_one_per_success_window():
    clock = Clock()
    gate = AdaptiveLimiter(8, clock=clock)
    starts = [gate.acquire() for _ in range(8)]  # 8 in flight, all started before any 429
    clock.t += 1
    for s in starts[:6]:  # six of them are refused: one event, one halving (not 8 -> 4 -> 2 -> 1 -> ...)
        gate.release(s, rate_limited=True)
    assert gate.limit == 4
    for s in starts[6:]:
        gate.release(s, ok=True)
    # a request started after the cut and refused again: a new event
    s = gate.acquire()
    clock.t += 1
    gate.release(s, rate_limited=True)
    assert gate.limit == 2
    # additive increase: after `limit` successes in a row, one more slot, up to the cap
    history = []
    for _ in range(40):
        s = gate.acquire()
        gate.release(s, ok=True)
        history.append(gate.limit)
    assert history[:6] == [2, 3, 3, 3, 4, 4] and history[-1] == 8 and max(history) == 8
    st = gate.stats()
    assert (st.rate_limited, st.decreases, st.increases, st.limit_min, st.limit_final) == (7, 2, 6, 2, 8)


def test_never_below_one_and_fixed_mode_keeps_the_cap():
    clock = Clock()
    gate = AdaptiveLimiter(2, clock=clock)
    for _ in range(5):
        s = gate.acquire()
        clock.t += 1
        gate.release(s, rate_limited=True)
    assert gate.limit == 1
    fixed = AdaptiveLimiter(4, adaptive=False, clock=clock)
    s = fixed.acquire()
    clock.t += 1
    fixed.release(s, rate_limited=True)
    assert fixed.limit == 4 and fixed.stats().rate_limited == 1 and fixed.stats().decreases == 0


def test_retry_after_pauses_every_thread_and_the_limit_blocks_extra_starts():
    gate = AdaptiveLimiter(2)
    s = gate.acquire()
    gate.release(s, rate_limited=True, retry_after=0.3)  # limit 2 -> 1, no start for 0.3 s
    t0 = time.monotonic()
    first = gate.acquire()
    assert time.monotonic() - t0 >= 0.28
    started = threading.Event()

    def second():
        gate.acquire()
        started.set()

    threading.Thread(target=second, daemon=True).start()
    assert not started.wait(0.2)  # limit 1: the second waits for the first slot
    gate.release(first, ok=True)
    assert started.wait(2)


def test_rate_limit_classification():
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    limited = httpx.Response(429, headers={"retry-after": "2"}, request=request)
    assert is_rate_limited(openai.RateLimitError("slow down", response=limited, body=None)) == (True, 2.0)
    assert is_rate_limited(httpx.HTTPStatusError("x", request=request, response=limited)) == (True, 2.0)
    busy = httpx.Response(503, headers={"retry-after": "1"}, request=request)
    assert is_rate_limited(openai.InternalServerError("busy", response=busy, body=None)) == (False, 1.0)
    assert is_rate_limited(httpx.ReadTimeout("t")) == (False, None)


def test_run_reports_the_outcome_and_reraises():
    gate = AdaptiveLimiter(4)
    with pytest.raises(ValueError):
        gate.run(lambda: (_ for _ in ()).throw(ValueError("boom")), lambda exc: (False, None))
    assert gate.in_flight == 0 and gate.limit == 4
    assert gate.run(lambda: 7, lambda exc: (False, None)) == 7


def test_calls_to_one_endpoint_run_concurrently_and_the_breaker_still_trips():
    """pybreaker's call() holds a lock for the whole call (its issue #55): requests to one endpoint
    went out one at a time. resilience.call runs them concurrently; the breaker still counts."""
    from concurrent.futures import ThreadPoolExecutor

    import pybreaker

    from workbench.providers.resilience import RetryPolicy, call

    policy = RetryPolicy(max_retries=0, breaker_failures=2, breaker_reset_s=600)
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow():
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return 1

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: call(slow, "unit://concurrent#m", policy), range(4))) == [1, 1, 1, 1]
    assert peak[0] >= 3

    request = httpx.Request("POST", "http://x/v1/chat/completions")
    limited = openai.RateLimitError("slow down", response=httpx.Response(429, request=request), body=None)
    down = httpx.ConnectError("refused", request=request)

    def raise_(exc):
        def fn():
            raise exc
        return fn

    for _ in range(3):  # rate limits are not endpoint failures: the breaker stays closed
        with pytest.raises(openai.RateLimitError):
            call(raise_(limited), "unit://breaker#m", policy)
    with pytest.raises(httpx.ConnectError):
        call(raise_(down), "unit://breaker#m", policy)
    with pytest.raises(pybreaker.CircuitBreakerError):  # the second failure in a row trips it
        call(raise_(down), "unit://breaker#m", policy)
    called = []
    with pytest.raises(pybreaker.CircuitBreakerError, match="circuit open"):  # open: fails fast, fn never runs
        call(lambda: called.append(1), "unit://breaker#m", policy)
    assert called == []
