"""Adaptive concurrency for a hosted endpoint: AIMD (additive increase, multiplicative decrease).

A hosted provider that answers HTTP 429 is saying "fewer requests, please". With a fixed
concurrency every worker thread keeps its slot, waits its own backoff and comes back at once, so a
burst of 429s costs a burst of retries that are refused again. :class:`AdaptiveLimiter` is the gate
every attempt (first tries and retries alike) passes through:

* **multiplicative decrease**: a 429 (or any answer carrying ``Retry-After``) halves the number of
  requests allowed in flight (never below 1), once per congestion event: requests that were already
  in flight when the limit was cut do not cut it again (TCP's "one decrease per round trip");
* **pause**: with ``Retry-After``, no new request starts before that many seconds have passed,
  whichever thread asks (the retrying one waits in tenacity as before);
* **additive increase**: after a *success window* -- as many successful requests in a row as the
  current limit, i.e. one round of the pool -- the limit grows by one, up to the cap
  (``concurrency``);
* **rate cap**: request starts are spaced at least ``60 / requests_per_minute`` seconds apart.

Hand-written on purpose: the AIMD packages on PyPI (``ace-concurrency``, ``adaptive-concurrency``,
``aimd-limiter``) are 0.1.x releases of one author each, two of them asyncio-only; this gate has
to sit between tenacity's retries and pybreaker's breaker (``resilience.call``) in worker threads,
which is about forty lines on a ``threading.Condition``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class ThrottleStats:
    """What the gate did, for the run's record and the report (counts since the limiter was made)."""

    requests: int = 0  # attempts that passed the gate
    rate_limited: int = 0  # of which answered 429 / Retry-After
    decreases: int = 0  # times the limit was halved
    increases: int = 0  # times it grew by one
    limit_min: int = 0  # the lowest limit reached
    limit_final: int = 0
    waited_s: float = 0.0  # time attempts spent waiting at the gate (limit, pause, rate cap)

    def minus(self, before: ThrottleStats) -> dict[str, float]:
        """Counts of a part (a run) of the limiter's life: this snapshot less an earlier one, as flat
        ``throttle_*`` numbers for a run's stored timings."""
        return {"throttle_requests": self.requests - before.requests, "throttle_rate_limited": self.rate_limited - before.rate_limited,
                "throttle_decreases": self.decreases - before.decreases, "throttle_increases": self.increases - before.increases,
                "throttle_limit_min": self.limit_min, "throttle_limit_final": self.limit_final,
                "throttle_wait_s": round(self.waited_s - before.waited_s, 3)}


class AdaptiveLimiter:
    """The AIMD gate of one endpoint (see the module docstring).

    Args:
        max_concurrency: The cap (the spec's ``concurrency``); the limit starts there.
        requests_per_minute: Optional rate cap on request starts.
        adaptive: False keeps the limit fixed at the cap (fixed-rate retries, the old behaviour);
            Retry-After pauses and the rate cap still apply.
        clock: Monotonic seconds (tests).
    """

    def __init__(self, max_concurrency: int, requests_per_minute: float | None = None, *, adaptive: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.cap = max(1, int(max_concurrency))
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.adaptive = adaptive
        self.clock = clock
        self.limit = self.cap
        self.in_flight = 0
        self._window = 0  # successes since the last change of the limit
        self._cut_at = float("-inf")  # when the limit was last halved
        self._resume_at = float("-inf")  # no start before this (Retry-After)
        self._next_start = float("-inf")  # the rate cap's next free slot
        self._cond = threading.Condition()
        self._stats = ThrottleStats(limit_min=self.cap, limit_final=self.cap)
        self.history: list[tuple[float, int]] = [(clock(), self.cap)]  # (time, limit) at every change

    def stats(self) -> ThrottleStats:
        with self._cond:
            return ThrottleStats(**self._stats.__dict__)

    def acquire(self) -> float:
        """Wait for a slot (the limit, a Retry-After pause, the rate cap); returns the start time."""
        t0 = self.clock()
        with self._cond:
            while True:
                now = self.clock()
                wait = max(self._resume_at - now, self._next_start - now)
                if self.in_flight < self.limit and wait <= 0:
                    break
                self._cond.wait(timeout=wait if wait > 0 else None)
            self.in_flight += 1
            self._next_start = now + self.interval
            self._stats.requests += 1
            self._stats.waited_s += now - t0
            return now

    def release(self, started: float, *, rate_limited: bool = False, retry_after: float | None = None, ok: bool = False) -> None:
        """Give the slot back with the attempt's outcome: a 429 / Retry-After answer, a success, or neither."""
        with self._cond:
            self.in_flight -= 1
            now = self.clock()
            if rate_limited or retry_after is not None:
                self._stats.rate_limited += 1
                if retry_after:
                    self._resume_at = max(self._resume_at, now + retry_after)
                if self.adaptive and started >= self._cut_at and self.limit > 1:
                    self._set_limit(max(1, self.limit // 2), now)
                    self._cut_at = now
                    self._stats.decreases += 1
                self._window = 0
            elif ok:
                self._window += 1
                if self.adaptive and self._window >= self.limit and self.limit < self.cap:
                    self._set_limit(self.limit + 1, now)
                    self._stats.increases += 1
            self._cond.notify_all()

    def _set_limit(self, limit: int, now: float) -> None:
        self.limit = limit
        self._window = 0
        self._stats.limit_min = min(self._stats.limit_min, limit)
        self._stats.limit_final = limit
        self.history.append((now, limit))

    def run(self, fn: Callable[[], T], classify: Callable[[BaseException], tuple[bool, float | None]]) -> T:
        """One attempt through the gate; ``classify(exc)`` says whether a failure was a rate limit
        and the Retry-After it carried."""
        started = self.acquire()
        try:
            out = fn()
        except BaseException as exc:
            limited, after = classify(exc)
            self.release(started, rate_limited=limited, retry_after=after)
            raise
        self.release(started, ok=True)
        return out
