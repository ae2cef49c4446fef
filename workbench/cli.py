"""The ``workbench`` command: a thin typer layer over the runner, the store and the report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import WorkbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RAG bake-off workbench.")
console = Console(stderr=True)
out = Console()

StoreOpt = Annotated[str | None, typer.Option("--store", help="results store URL (default: $WORKBENCH_STORE or sqlite:///results/workbench.sqlite)")]
CacheOpt = Annotated[str | None, typer.Option("--cache-dir", help="stage cache folder (default: $WORKBENCH_CACHE or results/cache)")]


def _fail(exc: WorkbenchError) -> None:
    console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _print_board(board, title: str) -> None:
    from .leaderboard import AXES, fmt_with_ci, headline_columns, sort_board

    board = sort_board(board)
    table = Table(title=title)
    metrics = headline_columns(board)
    for col in ["run_id", *AXES, *metrics]:
        table.add_column(col, overflow="fold")
    for _, row in board.iterrows():
        table.add_row(row["run_id"][:10], *[str(row[a]) for a in AXES],
                      *[fmt_with_ci(m, row.get(m), row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")) for m in metrics])
    out.print(table)


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiments/NAME.yaml")],
    store: StoreOpt = None,
    cache_dir: CacheOpt = None,
    rerun: Annotated[str, typer.Option(help="missing: keep stored questions (resume); all: recompute every row")] = "missing",
    report: Annotated[bool, typer.Option(help="render the HTML report at the end")] = True,
) -> None:
    """Run an experiment's grid, store every result, print the leaderboard and render the report."""
    from .config import load_experiment
    from .runner import Workspace, plan_experiment, run_experiment
    from .store import Store

    try:
        ws = Workspace.from_env(store, cache_dir)
        exp = load_experiment(experiment)
        plan = plan_experiment(exp, ws)
        Store(ws.store_url)  # fail on an unreachable store before any work
        console.print(f"{exp.name}: {len(plan.runs)} runs x {len(plan.queries)} questions", highlight=False)
        t0 = time.perf_counter()
        summaries = run_experiment(plan, ws, rerun=rerun, log=lambda m: console.print(m, highlight=False))
        elapsed = time.perf_counter() - t0
        _print_timings(summaries, elapsed)
        board = Store(ws.store_url).leaderboard(exp.name)
        _print_board(board, f"{exp.name} leaderboard")
        if report:
            from .report import render_report

            path = render_report(exp.name, ws.store_url)
            out.print(f"report: {path}")
    except WorkbenchError as exc:
        _fail(exc)


def _print_timings(summaries: list[dict], elapsed: float) -> None:
    keys = ["model_load_s", "chunking_s", "embed_index_s", "retrieval_s", "generation_s", "evaluation_s"]
    totals = {k: sum(s.get(k, 0.0) for s in summaries) for k in keys}
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in totals.items() if v)
    console.print(f"done in {elapsed:.1f}s ({parts})", highlight=False)


@app.command()
def results(
    experiment: Annotated[str, typer.Argument(help="experiment name")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (one object per run)")] = False,
) -> None:
    """Print an experiment's leaderboard: one row per run with its axes and every aggregate metric."""
    from .runner import Workspace
    from .store import Store, to_json_records

    try:
        board = Store(Workspace.from_env(store).store_url).leaderboard(experiment)
    except WorkbenchError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(to_json_records(board), indent=2) + "\n")
    else:
        _print_board(board, f"{experiment} leaderboard")


@app.command(name="ls")
def list_(store: StoreOpt = None) -> None:
    """List stored experiments and their runs."""
    from .runner import Workspace
    from .store import Store

    try:
        st = Store(Workspace.from_env(store).store_url)
        names = st.experiment_names()
    except WorkbenchError as exc:
        _fail(exc)
    if not names:
        out.print("no experiments stored")
    for name in names:
        runs = st.runs(name)
        out.print(f"[bold]{name}[/bold] ({len(runs)} runs)")
        for _, r in runs.iterrows():
            out.print(f"  {r['run_id']}  {r['status']:<8}  {r['n_questions']:>4} q  " + " | ".join(str(r[a]) for a in ("chunking", "embedding", "retrieval", "generation")), highlight=False)


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="experiment name")],
    store: StoreOpt = None,
) -> None:
    """(Re)render an experiment's HTML report from the store (no recomputation)."""
    from .report import render_report
    from .runner import Workspace

    try:
        path = render_report(experiment, Workspace.from_env(store).store_url)
    except WorkbenchError as exc:
        _fail(exc)
    out.print(f"report: {path}")


def main() -> None:  # pragma: no cover
    app()
