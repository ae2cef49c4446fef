"""The ``workbench`` command's shared parts: the typer app, consoles, common options, error exit."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from ..errors import ConfigError, WorkbenchError
from ..settings import apply_offline_defaults

# Exit codes of `workbench run --gate` and `workbench gate` (README, "Scheduled runs"): cron and CI act on them.
EXIT_OK, EXIT_GATE_FAILED, EXIT_ERROR, EXIT_LOCKED, EXIT_INCONCLUSIVE = 0, 1, 2, 3, 4

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RAG bake-off workbench.")
# Both honour $COLUMNS and the terminal's width (80 columns when piped without $COLUMNS).
console = Console(stderr=True)
out = Console()

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


def print_board(store, experiment: str, *, metric: str | None = None, show_all: bool = False) -> None:
    """The experiment's ranked leaderboard on stdout (see :mod:`workbench.cli.board`)."""
    from ..report.board import rank_runs
    from .board import print_ranked

    print_ranked(out, rank_runs(store, experiment, metric=metric), show_all=show_all)


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
