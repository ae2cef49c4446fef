"""What ``notebooks/bakeoff.ipynb`` does, as functions: narrow an experiment, plan it, run it;
and :func:`run_bakeoff`, which executes that notebook for ``workbench run``.

The notebook (and ``workbench run``, which executes it with papermill) can run a subset of an
experiment file: fewer questions (``query_limit``) and some values of some axes (``axes``, e.g.
``{"retrieval": ["bm25"], "chunking": [0]}``). The narrowed experiment keeps its name, so the
report shows what was run last; a configuration keeps its run id whenever it sees the same
questions, so widening the grid again recomputes nothing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import pandas as pd
from pydantic import ValidationError

from .config.experiment import Experiment, ExperimentSpec, load_experiment
from .errors import ConfigError, did_you_mean
from .notebooks import SUMMARY_MIME, execute_notebook, recorded
from .report.artifacts import notebook_store_url
from .report.leaderboard import AXES, headline_columns, sort_board
from .pipeline.runner import Plan, Workspace, plan_experiment, run_experiment
from .store import Store


def _keys(axis: str, entry) -> set[str]:
    """The names an axis entry can be selected by: its label and its main fields."""
    keys = {entry.label()}
    for attr in {"chunking": ("splitter", "chunk_size"), "embedding": ("model", "provider"), "retrieval": ("method",),
                 "rerank": ("method", "model"), "generation": ("model",)}[axis]:
        value = getattr(entry, attr, None)
        if value is not None:
            keys.add(str(value))
    if axis == "generation":
        keys.add(Path(entry.prompt).stem)
    return {k.lower() for k in keys}


def select(experiment: Experiment, query_limit: int = 0, axes: Mapping[str, Sequence[str | int]] | None = None) -> Experiment:
    """The experiment with at most ``query_limit`` questions (0: as in the file) and, for each axis
    in ``axes``, only the entries selected by index, label or name (``"bm25"``, ``"dense@5"``, ``0``).

    Raises:
        ConfigError: an unknown axis, a selector that matches nothing, or a grid that becomes
            invalid (e.g. dense retrieval with every embedder removed).
    """
    if not query_limit and not axes:
        return experiment
    if query_limit < 0:
        raise ConfigError(f"query_limit must be >= 0, got {query_limit}")
    data = experiment.spec.model_dump(exclude_unset=True)
    grid = experiment.spec.grid
    for axis, selectors in (axes or {}).items():
        entries = getattr(grid, axis, None) if axis in AXES else None
        if axis not in AXES or entries is None:
            known = [a for a in AXES if getattr(grid, a, None)]
            raise ConfigError(f"{experiment.path}: axis {axis!r} is not in the grid{did_you_mean(axis, known)}; axes: {', '.join(known)}")
        if isinstance(selectors, (str, int)):
            selectors = [selectors]
        keep: list[int] = []
        for sel in selectors:
            hits = [i for i, e in enumerate(entries) if (isinstance(sel, int) and not isinstance(sel, bool) and sel == i)
                    or str(sel).lower() in _keys(axis, e)]
            if not hits:
                labels = [f"{i}: {e.label()}" for i, e in enumerate(entries)]
                raise ConfigError(f"{experiment.path}: axis {axis!r}: {sel!r} matches no entry; entries: {'; '.join(labels)}")
            keep += [i for i in hits if i not in keep]
        data["grid"][axis] = [data["grid"][axis][i] for i in sorted(keep)]
    if query_limit:
        data.setdefault("queries", {})["limit"] = query_limit
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{experiment.path}: the selected grid is invalid: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return experiment.model_copy(update={"spec": spec})


def plan(experiment_path: str | Path, workspace: Workspace, *, query_limit: int = 0,
         axes: Mapping[str, Sequence[str | int]] | None = None) -> Plan:
    """Load, narrow and plan an experiment file; validates everything before any work."""
    return plan_experiment(select(load_experiment(experiment_path), query_limit, axes), workspace)


def describe(p: Plan) -> pd.DataFrame:
    """The planned runs: one row per grid point with its axes and question count."""
    return pd.DataFrame([{"run_id": r.run_id, **r.config.axes(), "questions": len(p.queries)} for r in p.runs])


def run(p: Plan, workspace: Workspace, *, rerun: str = "missing", out: Callable[[str], None] | None = None) -> dict:
    """Run a plan, printing progress; returns a compact, JSON-ready summary."""
    out = out or (lambda message: print(message, flush=True))

    shown: dict[str, int] = {}

    def progress(run_id: str, n: int, total: int) -> None:
        # about every quarter of a run (the runner reports per question or per stored batch)
        if n == total or n >= shown.get(run_id, 0) + max(1, math.ceil(total / 4)):
            shown[run_id] = n
            out(f"    {run_id[:10]}: {n}/{total} questions computed")

    t0 = time.perf_counter()
    summaries = run_experiment(p, workspace, rerun=rerun, log=out, progress=progress)
    elapsed = time.perf_counter() - t0
    return {"experiment": p.experiment.name, "n_runs": len(p.runs), "n_questions": len(p.queries), "elapsed_s": round(elapsed, 3),
            "runs": summaries}


def leaderboard(store_url: str, experiment: str) -> pd.DataFrame:
    """The experiment's leaderboard with its headline columns, best run first (for display)."""
    board = sort_board(Store(store_url).leaderboard(experiment))
    cols = ["run_id", *[a for a in AXES if board[a].astype(str).nunique() > 1 or (board[a] != "-").any()], "status",
            *headline_columns(board)]
    out = board[cols].copy()
    out["run_id"] = out["run_id"].str[:10]
    return out.round(4)


def run_bakeoff(experiment_path: str | os.PathLike, store_url: str, cache_dir: str | os.PathLike, out_dir: Path, *,
                query_limit: int = 0, axes: Mapping[str, Sequence[str | int]] | None = None, rerun: str = "missing",
                stream: TextIO | None = None) -> dict:
    """Execute ``bakeoff.ipynb`` into ``out_dir/bakeoff.ipynb``; return the summary it recorded.

    Paths are made absolute so the notebook sees what the caller meant whatever its directory.
    """
    nb = execute_notebook("bakeoff", out_dir / "bakeoff.ipynb", {
        "experiment_path": str(Path(experiment_path).resolve()), "store_url": notebook_store_url(store_url),
        "cache_dir": str(Path(cache_dir).resolve()), "query_limit": int(query_limit), "axes": {k: list(v) for k, v in (axes or {}).items()},
        "rerun": rerun}, cwd=Path.cwd(), stream=stream)
    found = recorded(nb, SUMMARY_MIME)
    return found[-1] if found else {}
