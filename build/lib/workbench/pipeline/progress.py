"""Progress of a bake-off: what the runner reports while it works, and a plain-text reporter.

The runner (and the index build) only call this protocol; what the user sees is the caller's
choice: plain lines for logs and notebooks here, richer displays in the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def message(self, text: str) -> None:
        """A one-line note (a run starts, an index was reused)."""

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        """``done`` of ``total`` ``unit`` of the task ``key`` are finished (total None: unknown)."""


class LineProgress:
    """Plain lines: every message, and a task's progress about every quarter and at its end."""

    def __init__(self, out: Callable[[str], None] | None = None, steps: int = 4):
        self.out = out or (lambda text: print(text, flush=True))
        self.steps = steps
        self._shown: dict[str, int] = {}

    def message(self, text: str) -> None:
        self.out(text)

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        last = self._shown.get(key, 0)
        step = max(1, math.ceil((total or 0) / self.steps))
        if (total is not None and done >= total) or done >= last + step:
            self._shown[key] = done
            self.out(f"    {description}: {done}/{total if total is not None else '?'}" + (f" {unit}" if unit else ""))


class NullProgress:
    def message(self, text: str) -> None:
        pass

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        pass
