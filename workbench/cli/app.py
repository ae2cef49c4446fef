"""The ``workbench`` command's shared parts: the typer app, consoles, common options, error exit."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError, WorkbenchError
from ..settings import apply_offline_defaults

# Exit codes of `workbench run --gate` and `workbench gate` (README, "Scheduled runs"): cron and CI act on them.
EXIT_OK, EXIT_GATE_FAILED, EXIT_ERROR, EXIT_LOCKED, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RAG bake-off workbench.")
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 240)

StoreOpt = Annotated[str | None, typer.Option("--store", help="results store URL (default: $WORKBENCH_STORE, else "
                                                                "results/workbench.sqlite in the project folder)")]
CacheOpt = Annotated[str | None, typer.Option("--cache-dir", help="stage cache folder (default: $WORKBENCH_CACHE, else "
                                                                   "results/cache in the project folder)")]


@app.callback()
def _before_any_command() -> None:
    """RAG bake-off workbench."""
    # The model libraries read these on import, and every command may reach one (a notebook
    # kernel or the LLM server inherits them): offline, no telemetry, passive OpenMP waiting.
    apply_offline_defaults()


def fail(exc: WorkbenchError) -> None:
    """Print a user-facing error in one line and exit 2."""
    console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def print_board(board, title: str) -> None:
    from ..evaluation.registry import headline_columns
    from ..report.leaderboard import AXES, fmt_with_ci, sort_board

    board = sort_board(board)
    table = Table(title=title)
    metrics = headline_columns(board)
    for col in ["run_id", *AXES, *metrics]:
        table.add_column(col, overflow="fold")
    for _, row in board.iterrows():
        table.add_row(row["run_id"][:10], *[str(row[a]) for a in AXES],
                      *[fmt_with_ci(m, row.get(m), row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")) for m in metrics])
    out.print(table)


def parse_axes(values: list[str] | None) -> dict[str, list[str | int]]:
    """``--axis retrieval=bm25,dense@5 --axis chunking=0`` -> {"retrieval": ["bm25", "dense@5"], "chunking": [0]}."""
    axes: dict[str, list[str | int]] = {}
    for item in values or []:
        axis, sep, selectors = item.partition("=")
        if not sep or not axis.strip() or not selectors.strip():
            raise ConfigError(f"--axis {item!r}: expected AXIS=VALUE[,VALUE...], e.g. retrieval=bm25")
        for sel in selectors.split(","):
            sel = sel.strip()
            axes.setdefault(axis.strip(), []).append(int(sel) if sel.isdigit() else sel)
    return axes
