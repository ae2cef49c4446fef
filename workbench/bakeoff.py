"""What ``notebooks/bakeoff.ipynb`` does, as functions: narrow an experiment, plan it, run it;
and :func:`run_bakeoff`, which executes that notebook for ``workbench run``.

The notebook (and ``workbench run``, which executes it with papermill) can run a subset of an
experiment file: fewer questions (``query_limit``) and some values of some axes (``axes``, e.g.
``{"retrieval": ["bm25"], "chunking": [0]}``). The narrowed experiment keeps its name, so the
report shows what was run last; a configuration keeps its run id whenever it sees the same
questions, so widening the grid again recomputes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import diskcache
import pandas as pd
from pydantic import ValidationError

from .config import Experiment, ExperimentSpec, load_experiment
from .errors import ConfigError, did_you_mean
from .notebooks import SUMMARY_MIME, execute_notebook, recorded
from .pipeline.executors import execute
from .pipeline.plan import Plan, plan_experiment
from .pipeline.progress import Progress, make_progress
from .report.leaderboard import AXES, headline_columns, sort_board
from .settings import Workspace, env, find_input, kernel_store_url
from .store import Store


def _keys(axis: str, entry) -> set[str]:
    """The names an axis entry can be selected by: its label and its main fields."""
    if axis == "prompt":  # a prompt file: its path as written, or its name
        return {entry.lower(), Path(entry).stem.lower()}
    keys = {entry.label()}
    for attr in {"chunking": ("splitter", "chunk_size"), "embedding": ("model", "provider"), "retrieval": ("method",),
                 "rerank": ("method", "model"), "generation": ("model",)}[axis]:
        value = getattr(entry, attr, None)
        if value is not None:
            keys.add(str(value))
    if axis == "generation" and entry.prompt:
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
                labels = [f"{i}: {e if isinstance(e, str) else e.label()}" for i, e in enumerate(entries)]
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
    path = find_input(experiment_path, "experiment file", workspace.root)
    return plan_experiment(select(load_experiment(path), query_limit, axes), workspace)


def prepare(*, experiment_path: str = "", store_url: str = "", cache_dir: str = "", query_limit: int = 0,
            axes: Mapping[str, Sequence[str | int]] | None = None, plan_path: str = "",
            workspace: Mapping | None = None) -> tuple[Plan, Workspace]:
    """The bake-off notebook's first step: the plan and workspace to run.

    ``workbench run`` plans once and passes ``plan_path`` (the saved plan) and ``workspace`` (its
    settings): the notebook reloads them, checking the dataset's hash, and plans nothing again.
    Run on its own (papermill, JupyterLab), the notebook plans ``experiment_path`` (default:
    ``$WORKBENCH_EXPERIMENT_PATH``, else ``experiments/quickstart.yaml`` in the project folder).
    """
    if plan_path:
        ws = Workspace.from_dict(workspace) if workspace else Workspace.resolve(store=store_url or None, cache_dir=cache_dir or None)
        with diskcache.Cache(str(ws.memo_dir)) as memo:
            return Plan.load(Path(plan_path), memo), ws
    ws = Workspace.resolve(store=store_url or None, cache_dir=cache_dir or None)
    path = experiment_path or env("WORKBENCH_EXPERIMENT_PATH") or "experiments/quickstart.yaml"
    return plan(path, ws, query_limit=query_limit, axes=axes), ws


def describe(p: Plan) -> pd.DataFrame:
    """The planned runs: one row per grid point with its axes and question count."""
    return pd.DataFrame([{"run_id": r.run_id, **r.config.axes(), "questions": len(p.queries)} for r in p.runs])


def run(p: Plan, workspace: Workspace, *, rerun: str = "missing", progress: str | Progress = "auto") -> dict:
    """Run a plan where the workspace says (here or on Ray), showing progress (``progress``: a
    :class:`~workbench.pipeline.progress.Progress`, or ``auto`` for tqdm bars, ``events`` for
    ``workbench run``'s bars, ``lines``, ``none``); returns a compact, JSON-ready summary."""
    t0 = time.perf_counter()
    reporter = make_progress(progress) if isinstance(progress, str) else progress
    summaries = execute(p, workspace, rerun=rerun, progress=reporter)
    elapsed = time.perf_counter() - t0
    return {"experiment": p.experiment.name, "n_runs": len(p.runs), "n_questions": len(p.queries), "elapsed_s": round(elapsed, 3),
            "runs": summaries}


def run_bakeoff(plan_path: Path, workspace: Workspace, out_dir: Path, *, rerun: str = "missing",
                stream: TextIO | None = None, progress: str = "lines") -> dict:
    """Execute ``bakeoff.ipynb`` on a saved plan into ``out_dir/bakeoff.ipynb``; return the summary
    it recorded. The kernel's output goes to ``stream``, its progress as ``progress`` says
    (``events``: structured lines a caller renders, see :mod:`workbench.pipeline.progress`). A
    PostgreSQL password reaches the kernel in ``$PGPASSWORD`` only (libpq reads it), never in the
    executed notebook."""
    kernel_store_url(workspace.store_url)  # the password, if any, goes to $PGPASSWORD; to_dict() drops it
    nb = execute_notebook("bakeoff", out_dir / "bakeoff.ipynb", {"plan_path": str(Path(plan_path).resolve()),
                                                                 "workspace": workspace.to_dict(), "rerun": rerun, "progress": progress},
                          cwd=Path.cwd(), stream=stream)
    found = recorded(nb, SUMMARY_MIME)
    return found[-1] if found else {}


def leaderboard(store_url: str, experiment: str) -> pd.DataFrame:
    """The experiment's leaderboard with its headline columns, best run first (for display)."""
    board = sort_board(Store(store_url).leaderboard(experiment))
    cols = ["run_id", *[a for a in AXES if board[a].astype(str).nunique() > 1 or (board[a] != "-").any()], "status",
            *headline_columns(board)]
    out = board[cols].copy()
    out["run_id"] = out["run_id"].str[:10]
    return out.round(4)
