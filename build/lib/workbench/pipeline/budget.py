"""Spending limits of one ``workbench run``: LLM tokens and dollars, shared by its runs and threads."""

from __future__ import annotations

import threading

from ..config import BudgetSpec


class Budget:
    """Spending of one execution against the experiment's ``budget`` (thread-safe). Only LLM calls
    made now count: answers from the cache or the store cost nothing again."""

    def __init__(self, spec: BudgetSpec | None = None):
        self.max_cost_usd = spec.max_cost_usd if spec else None
        self.max_tokens = spec.max_tokens if spec else None
        self.cost_usd = 0.0
        self.tokens = 0
        self._lock = threading.Lock()

    def charge(self, tokens: int | None, cost: float | None) -> None:
        with self._lock:
            self.tokens += tokens or 0
            self.cost_usd += cost or 0.0

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost_usd is not None

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return ((self.max_tokens is not None and self.tokens >= self.max_tokens)
                    or (self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd))

    def describe(self) -> str:
        return f"{self.tokens} tokens, ${self.cost_usd:.4f}"
