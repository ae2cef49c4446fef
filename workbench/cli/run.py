"""``workbench run``: plan once, execute the bake-off notebook, print the leaderboard, render the
report, check the gates; exit codes for cron and CI."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import WorkbenchError
from ..settings import Workspace, find_input
from .app import EXIT_ERROR, EXIT_LOCKED, EXIT_OK, CacheOpt, StoreOpt, app, console, out, parse_axes, print_board
from .results import check_gates, mlflow_export


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiments/NAME.yaml")],
    store: StoreOpt = None,
    cache_dir: CacheOpt = None,
    rerun: Annotated[str, typer.Option(help="missing: keep stored questions (resume); all: recompute every row")] = "missing",
    report: Annotated[bool, typer.Option(help="render the HTML report at the end")] = True,
    limit: Annotated[int, typer.Option("--limit", help="run at most this many questions (0: as in the experiment file)")] = 0,
    axis: Annotated[list[str] | None, typer.Option("--axis", help="run part of the grid: AXIS=VALUE[,VALUE] (index, label or name; "
                                                                  "repeatable)")] = None,
    gate: Annotated[bool, typer.Option("--gate", help="check the experiment's gates at the end; exit 1 if one fails, 4 if one is "
                                                      "inconclusive")] = False,
    executor: Annotated[str | None, typer.Option("--executor", help="local (default) or ray (default: $WORKBENCH_EXECUTOR)")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address HOST:PORT or 'auto' "
                                                                 "(default: $WORKBENCH_RAY_ADDRESS)")] = None,
    chroma_url: Annotated[str | None, typer.Option("--chroma-url", help="Chroma server http://HOST:PORT for the indexes (default: "
                                                                       "$WORKBENCH_CHROMA_URL, else the file's index.chroma, else "
                                                                       "embedded)")] = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="append all output to this file instead of the terminal (for cron)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="threads per run (local: default all cores) or per Ray "
                                                                        "task (default 1); default: $WORKBENCH_THREADS")] = None,
    embed_workers: Annotated[int | None, typer.Option("--embed-workers", min=1, help="with --executor ray: Ray tasks one index build is "
                                                                               "split into (1: no split; default: one per 10,240 chunks, "
                                                                               "at most the cluster's free slots; $WORKBENCH_EMBED_WORKERS)")] = None,
    lock: Annotated[bool | None, typer.Option("--lock/--no-lock", show_default=False,
                                              help="refuse to start (exit 3) while another run of this experiment holds its lock; "
                                                   "default: on with --gate or --log-file (scheduled runs)")] = None,
    replay: Annotated[Path | None, typer.Option("--replay", help="answer every hosted call from this cassette (`workbench cassette "
                                                                 "export`), offline and without keys (default: $WORKBENCH_REPLAY)")] = None,
    replay_strict: Annotated[bool, typer.Option("--replay-strict/--replay-live-misses",
                                                help="strict (default): a request missing from the cassette is an error; "
                                                     "live misses: it goes to the provider (key needed) and is recorded")] = True,
) -> None:
    """Run an experiment's grid (by executing the bake-off notebook), print the leaderboard, render the report.

    The executed notebook, the plan and the report land in reports/<experiment>/<timestamp>/. Exit
    codes: 0 done (and gates passed), 1 a gate failed, 2 error, 3 this experiment is already running
    (another locked `workbench run` holds its lock; scheduled runs -- --gate or --log-file -- lock
    by default, interactive ones do not, so slices of one grid can run side by side), 4 no gate failed
    but one is inconclusive (its confidence interval crosses its bound: more questions needed).
    """
    with _output_to(log_file, ["workbench", "run", str(experiment)]) as record:
        try:
            ws = Workspace.resolve(store=store, cache_dir=cache_dir, threads=threads, chroma_url=chroma_url, executor=executor,
                                   ray_address=address, replay=replay, replay_strict=replay_strict, embed_workers=embed_workers)
            exclusive = lock if lock is not None else bool(gate or log_file)
            _run(experiment, ws, rerun, report, limit, axis, gate, exclusive)
            code = EXIT_OK
        except typer.Exit as exc:
            code = exc.exit_code
        except WorkbenchError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            code = EXIT_ERROR
        except Exception:  # an unexpected crash must not look like a failed gate (exit 1)
            import traceback

            traceback.print_exc()
            code = EXIT_ERROR
        record(code)
    raise typer.Exit(code)


def _run(experiment_path: Path, ws: Workspace, rerun: str, report: bool, limit: int, axis, gate: bool, exclusive: bool) -> None:
    """Load the experiment once, take its lock (a refused run exits at once, before any model
    library is imported or anything planned), plan once, run, report, gate."""
    from filelock import FileLock, Timeout

    from ..config import load_experiment

    experiment = load_experiment(find_input(experiment_path, "experiment file", ws.root))
    lock_path = ws.run_lock(experiment.name)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        if exclusive:
            lock.acquire()
    except Timeout:
        console.print(f"[red]error:[/red] experiment {experiment.name!r} is already running (lock {lock_path} is held); "
                      "not starting a second run", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_LOCKED) from None
    try:
        code = _run_planned(experiment, ws, rerun, report, limit, axis, gate)
    finally:
        if exclusive:
            lock.release()
    if code:
        raise typer.Exit(code)


def _run_planned(experiment, ws: Workspace, rerun: str, report: bool, limit: int, axis, gate: bool) -> int:
    from ..bakeoff import run_bakeoff, select
    from ..pipeline.estimate import describe, estimate
    from ..pipeline.executors import check_executor
    from ..pipeline.plan import plan_experiment
    from ..report.artifacts import new_report_dir, render_report, write_index
    from ..store import Store
    from .progress import kernel_progress

    check_executor(ws)
    plan = plan_experiment(select(experiment, limit, parse_axes(axis)), ws)  # validate everything before any work
    st = Store(ws.store_url)  # fail on an unreachable store before any work
    name = plan.experiment.name
    infra = f", executor {ws.executor}" + (f" at {ws.ray_address}" if ws.executor == "ray" else "")
    server = ws.chroma_server(plan.experiment.spec.index)
    infra += f", Chroma server {server}" if server else ""
    infra += f", replaying {ws.replay}" + ("" if ws.replay_strict else " (live misses)") if ws.replay else ""
    console.print(f"{name}: {len(plan.runs)} runs x {len(plan.queries)} questions{infra}", highlight=False, soft_wrap=True)
    for line in describe(estimate(plan, ws))[1:]:  # what `workbench plan` prints: builds, calls, tokens, cost, time
        console.print(line, highlight=False, soft_wrap=True)
    _print_ingest(plan.dataset)
    out_dir = new_report_dir(name, ws.reports_dir)
    t0 = time.perf_counter()
    with kernel_progress(console) as stream:  # rich bars on a terminal, plain periodic lines otherwise
        summary = run_bakeoff(plan.save(out_dir / "plan.json"), ws, out_dir, rerun=rerun, stream=stream, progress="events")
    _print_timings(summary.get("runs", []), time.perf_counter() - t0)
    print_board(st, name)
    print_failures(st, st.leaderboard(name))
    if report:
        path = render_report(name, ws.store_url, ws.reports_dir, out_dir=out_dir)
        out.print(f"report: {path}", highlight=False, soft_wrap=True)
    else:
        write_index(ws.reports_dir)
        out.print(f"notebook: {out_dir / 'bakeoff.ipynb'}", highlight=False, soft_wrap=True)
    tracking = plan.experiment.spec.tracking
    if tracking is not None and tracking.mlflow is not None:
        try:  # the results are stored whatever the tracker says: its outage must not fail the run or skip the gates
            mlflow_export(st, name, ws, report_dir=out_dir)
        except WorkbenchError as exc:
            console.print(f"[red]mlflow: not logged:[/red] {exc} (`workbench export {name} --to mlflow` logs it later)",
                          highlight=False, soft_wrap=True)
    return check_gates(st, plan.experiment.spec) if gate else EXIT_OK


@contextlib.contextmanager
def _output_to(path: Path | None, argv: list[str]):
    """With ``path``: append everything this process and its children print (the notebook's
    progress included) to the file, between a start line and an end line with the exit code.
    File descriptors 1 and 2 are redirected, so output written below Python (native libraries,
    subprocesses) lands there too. Without ``path``: nothing changes."""
    if path is None:
        yield lambda code: None
        return
    import datetime as dt
    import os

    def stamp() -> str:
        return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab", buffering=0) as fh:
        fh.write(f"=== {stamp()} start: {' '.join(argv)} (pid {os.getpid()})\n".encode())
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        codes: list[int] = []
        try:
            yield codes.append
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            fh.write(f"=== {stamp()} end: exit {codes[-1] if codes else '?'}\n".encode())


def print_failures(st, board) -> None:
    """One line per run that failed questions or stopped early: '3 of 200 questions failed: timeout'."""
    from ..report.data import failure_reasons, failure_text

    for _, r in board.iterrows():
        if not r["n_failed"] and r["status"] in ("complete", "eliminated", "stopped: tie"):
            continue  # a race's outcomes are printed by the race itself
        rows = st.questions(r["run_id"])
        reasons = failure_reasons(rows["error"]) if "error" in rows else {}
        text = failure_text(int(r["n_failed"]), int(r["n_questions"]), reasons)
        if str(r["status"]).startswith("stopped"):
            text = f"{r['status']} after {len(rows)} of {int(r['n_planned'])} questions (run again to resume)" + (f"; {text}" if text else "")
        console.print(f"run {r['run_id']} ({r['status']}): {text}", highlight=False, soft_wrap=True)


def _print_timings(summaries: list[dict], elapsed: float) -> None:
    keys = ["model_load_s", "chunking_s", "embed_index_s", "retrieval_s", "generation_s", "evaluation_s"]
    totals = {k: sum(s.get(k, 0.0) for s in summaries) for k in keys}
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in totals.items() if v)
    console.print(f"done in {elapsed:.1f}s ({parts})", highlight=False)


def _print_ingest(dataset) -> None:
    """A documents folder's ingestion report: counts, and every skipped or failed file by name."""
    ing = getattr(dataset, "ingest", None)
    if not ing:
        return
    console.print(f"documents: {ing['n_documents']} read from {ing['n_files']} files in {ing['root']}; "
                  f"{ing['n_skipped']} skipped, {ing['n_errors']} failed", highlight=False, soft_wrap=True)
    for line in ing["skipped"]:
        console.print(f"  skipped {line}", highlight=False, soft_wrap=True)
    for line in ing["errors"]:
        console.print(f"  [red]failed[/red] {line}", highlight=False, soft_wrap=True)
