"""``workbench cassette``: record/replay of hosted calls as a file (``export``); replay it with
``workbench run EXP --replay FILE``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import WorkbenchError
from ..settings import Workspace
from .app import CacheOpt, StoreOpt, app, console, fail, out

cassette_app = typer.Typer(no_args_is_help=True, help="Record/replay hosted calls: export an experiment's cassette.")
app.add_typer(cassette_app, name="cassette")


@cassette_app.command("export")
def export(
    experiment: Annotated[str, typer.Argument(help="experiment name (as stored) or experiments/NAME.yaml")],
    output: Annotated[Path, typer.Option("--output", "-o", help="cassette file to write (.json, or .json.gz compressed)")],
    store: StoreOpt = None,
    cache_dir: CacheOpt = None,
) -> None:
    """Write the answers of every hosted call the experiment makes (generation, embeddings, rerank, judge)
    to a cassette, from the recordings in the cache folder; `workbench run EXP --replay FILE` then runs offline.

    The export replays the experiment once, offline, in a throwaway folder (local stages are recomputed),
    so the cassette holds exactly what a replay asks for. No key, header or secret is written.
    """
    from ..pipeline.replay import export_cassette

    try:
        ws = Workspace.resolve(store=store, cache_dir=cache_dir)
        console.print(f"exporting the cassette of {experiment}: replaying it offline from {ws.recordings_dir}", highlight=False)
        summary = export_cassette(experiment, ws, output, log=lambda m: None)
    except WorkbenchError as exc:
        fail(exc)
    roles = ", ".join(f"{n} {role}" for role, n in sorted(summary.by_role.items()))
    out.print(f"wrote {summary.path}: {summary.n_entries} recorded answers ({roles}) for {summary.n_runs} runs of {summary.experiment}",
              highlight=False, soft_wrap=True)
