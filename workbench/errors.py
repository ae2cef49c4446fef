"""The workbench's exception hierarchy.

Every error a user can cause (a bad experiment file, a malformed dataset line, a missing API key)
is a ``WorkbenchError`` whose message is one line naming the file, field and line where it applies.
The CLI prints that line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class WorkbenchError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback when a notebook cell raises this (in JupyterLab,
        and in the error papermill reports): the one line, as the CLI prints it."""
        return [f"{type(self).__name__}: {self}"]


class ConfigError(WorkbenchError):
    """The experiment file (or a prompt file it names) is invalid."""


class DatasetError(WorkbenchError):
    """A dataset file is missing or malformed."""


class ProviderError(WorkbenchError):
    """A model provider cannot be reached or is misconfigured (e.g. a missing API key)."""


class StoreError(WorkbenchError):
    """The results store cannot be opened or does not hold what was asked for."""


class MetricError(WorkbenchError):
    """A metric name that the metric registry (``workbench/evaluation/registry.py``) does not know."""


class NotebookError(WorkbenchError):
    """A notebook failed while papermill executed it."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, value: str, choices: Iterable[str]) -> str:
    """Message for an unknown registry name, listing the known ones and the closest match."""
    choices = sorted(choices)
    return f"unknown {kind} {value!r}{did_you_mean(value, choices)}; known: {', '.join(choices)}"
