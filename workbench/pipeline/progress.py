"""Progress of a bake-off: what the runner reports while it works, and the reporters that show it.

The runner (and the index build) only call the :class:`Progress` protocol; what the user sees is
the caller's choice (:func:`make_progress`):

* ``auto``: ``tqdm.auto`` bars, one per task (widgets in JupyterLab, text elsewhere);
* ``events``: one structured line per update (:data:`EVENT_PREFIX` + JSON) on stdout. ``workbench
  run`` executes the bake-off notebook with this: papermill streams the kernel's stdout to the
  CLI, which turns the events back into rich progress bars, or plain periodic lines when its
  output is not a terminal (``workbench.cli.progress``);
* ``lines``: plain lines, every message and each task about every quarter (logs, Ray workers);
* ``none``.

Task keys name what progresses: ``grid`` (runs done of the plan), ``questions:<run_id>``
(questions computed in a run), ``index:<collection>`` (chunks embedded into a vector index).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Protocol

from ..errors import ConfigError, did_you_mean

EVENT_PREFIX = "workbench-progress: "
PROGRESS_KINDS = ("auto", "events", "lines", "none")


class Progress(Protocol):
    def message(self, text: str) -> None:
        """A one-line note (a run starts, an index was reused)."""

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        """``done`` of ``total`` ``unit`` of the task ``key`` are finished (total None: unknown)."""


def _print(text: str) -> None:
    print(text, flush=True)


class LineProgress:
    """Plain lines: every message, and a task's progress about every quarter and at its end."""

    def __init__(self, out: Callable[[str], None] | None = None, steps: int = 4):
        self.out = out or _print
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


class EventProgress:
    """Structured lines for a parent process: messages as plain lines, updates as
    ``workbench-progress: {"key": ..., "description": ..., "done": ..., "total": ..., "unit": ...}``."""

    def __init__(self, out: Callable[[str], None] | None = None):
        self.out = out or _print

    def message(self, text: str) -> None:
        self.out(text)

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        event = {"key": key, "description": description, "done": int(done), "total": None if total is None else int(total), "unit": unit}
        self.out(EVENT_PREFIX + json.dumps(event))


def parse_event(line: str) -> dict | None:
    """The update an :class:`EventProgress` line carries, or None for any other line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    if not isinstance(event, dict) or not {"key", "description", "done", "total"} <= set(event):
        return None
    return {"key": str(event["key"]), "description": str(event["description"]), "done": int(event["done"]),
            "total": None if event["total"] is None else int(event["total"]), "unit": str(event.get("unit") or "")}


class TqdmProgress:
    """``tqdm.auto`` bars (JupyterLab widgets in a notebook, text in a terminal); messages are
    written above them with ``tqdm.write``. A task's bar closes when it is done."""

    def __init__(self):
        self._bars: dict[str, object] = {}

    def message(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text)

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        from tqdm.auto import tqdm

        bar = self._bars.get(key)
        if bar is None:
            bar = self._bars[key] = tqdm(total=total, desc=description, unit=f" {unit.split()[0]}" if unit else "it", leave=True, dynamic_ncols=True)
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()
            del self._bars[key]


def make_progress(kind: str = "auto") -> Progress:
    """The reporter named ``kind`` (one of :data:`PROGRESS_KINDS`)."""
    makers: dict[str, Callable[[], Progress]] = {"auto": TqdmProgress, "events": EventProgress, "lines": LineProgress, "none": NullProgress}
    if kind not in makers:
        raise ConfigError(f"progress {kind!r}: expected one of {', '.join(PROGRESS_KINDS)}{did_you_mean(kind, PROGRESS_KINDS)}")
    return makers[kind]()
