"""The ``workbench`` command: a thin typer layer over the runner, the store and the report."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .errors import WorkbenchError
from .settings import Workspace, apply_offline_defaults, find_input

app = typer.Typer(add_completion=False, no_args_is_help=True, help="RAG bake-off workbench.")
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 240)

StoreOpt = Annotated[str | None, typer.Option("--store", help="results store URL (default: $WORKBENCH_STORE or sqlite:///results/workbench.sqlite)")]
CacheOpt = Annotated[str | None, typer.Option("--cache-dir", help="stage cache folder (default: $WORKBENCH_CACHE or results/cache)")]


@app.callback()
def _before_any_command() -> None:
    """RAG bake-off workbench."""
    # The model libraries read these on import, and every command may reach one (a notebook
    # kernel or the LLM server inherits them): offline, no telemetry, passive OpenMP waiting.
    apply_offline_defaults()


def _fail(exc: WorkbenchError) -> None:
    console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _print_board(board, title: str) -> None:
    from .evaluation.registry import headline_columns
    from .report.leaderboard import AXES, fmt_with_ci, sort_board

    board = sort_board(board)
    table = Table(title=title)
    metrics = headline_columns(board)
    for col in ["run_id", *AXES, *metrics]:
        table.add_column(col, overflow="fold")
    for _, row in board.iterrows():
        table.add_row(row["run_id"][:10], *[str(row[a]) for a in AXES],
                      *[fmt_with_ci(m, row.get(m), row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")) for m in metrics])
    out.print(table)


def _parse_axes(values: list[str] | None) -> dict[str, list[str | int]]:
    """``--axis retrieval=bm25,dense@5 --axis chunking=0`` -> {"retrieval": ["bm25", "dense@5"], "chunking": [0]}."""
    from .errors import ConfigError

    axes: dict[str, list[str | int]] = {}
    for item in values or []:
        axis, sep, selectors = item.partition("=")
        if not sep or not axis.strip() or not selectors.strip():
            raise ConfigError(f"--axis {item!r}: expected AXIS=VALUE[,VALUE...], e.g. retrieval=bm25")
        for sel in selectors.split(","):
            sel = sel.strip()
            axes.setdefault(axis.strip(), []).append(int(sel) if sel.isdigit() else sel)
    return axes


# Exit codes of `workbench run` (documented in the README, "Scheduled runs"): cron and CI act on them.
EXIT_OK, EXIT_GATE_FAILED, EXIT_ERROR, EXIT_LOCKED = 0, 1, 2, 3


@app.command()
def run(
    experiment: Annotated[Path, typer.Argument(help="experiments/NAME.yaml")],
    store: StoreOpt = None,
    cache_dir: CacheOpt = None,
    rerun: Annotated[str, typer.Option(help="missing: keep stored questions (resume); all: recompute every row")] = "missing",
    report: Annotated[bool, typer.Option(help="render the HTML report at the end")] = True,
    limit: Annotated[int, typer.Option("--limit", help="run at most this many questions (0: as in the experiment file)")] = 0,
    axis: Annotated[list[str] | None, typer.Option("--axis", help="run part of the grid: AXIS=VALUE[,VALUE] (index, label or name; repeatable)")] = None,
    gate: Annotated[bool, typer.Option("--gate", help="check the experiment's gates at the end; exit 1 if one fails")] = False,
    executor: Annotated[str | None, typer.Option("--executor", help="local (default) or ray (default: $WORKBENCH_EXECUTOR)")] = None,
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address HOST:PORT or 'auto' (default: $WORKBENCH_RAY_ADDRESS)")] = None,
    chroma_url: Annotated[str | None, typer.Option("--chroma-url", help="Chroma server http://HOST:PORT for the indexes (default: $WORKBENCH_CHROMA_URL, else the file's index.chroma, else embedded)")] = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="append all output to this file instead of the terminal (for cron)")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="threads per run (local: default all cores) or per Ray task (default 1); default: $WORKBENCH_THREADS")] = None,
    lock: Annotated[bool | None, typer.Option("--lock/--no-lock", help="refuse to start (exit 3) while another run of this experiment holds its lock; default: on with --gate or --log-file (scheduled runs)", show_default=False)] = None,
) -> None:
    """Run an experiment's grid (by executing the bake-off notebook), print the leaderboard, render the report.

    The executed notebook, the plan and the report land in reports/<experiment>/<timestamp>/. Exit
    codes: 0 done (and gates passed), 1 a gate failed, 2 error, 3 this experiment is already running
    (another locked `workbench run` holds its lock; scheduled runs -- --gate or --log-file -- lock
    by default, interactive ones do not, so slices of one grid can run side by side).
    """
    with _output_to(log_file, ["workbench", "run", str(experiment)]) as record:
        try:
            ws = Workspace.resolve(store=store, cache_dir=cache_dir, threads=threads, chroma_url=chroma_url, executor=executor,
                                   ray_address=address)
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

    from .config import load_experiment

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
        failed = _run_planned(experiment, ws, rerun, report, limit, axis, gate)
    finally:
        if exclusive:
            lock.release()
    if failed:
        raise typer.Exit(EXIT_GATE_FAILED)


def _run_planned(experiment, ws: Workspace, rerun: str, report: bool, limit: int, axis, gate: bool) -> int:
    from .bakeoff import run_bakeoff, select
    from .pipeline.executors import check_executor
    from .pipeline.plan import plan_experiment
    from .report.artifacts import new_report_dir, render_report, write_index
    from .store import Store

    check_executor(ws)
    plan = plan_experiment(select(experiment, limit, _parse_axes(axis)), ws)  # validate everything before any work
    st = Store(ws.store_url)  # fail on an unreachable store before any work
    name = plan.experiment.name
    infra = f", executor {ws.executor}" + (f" at {ws.ray_address}" if ws.executor == "ray" else "")
    server = ws.chroma_server(plan.experiment.spec.index)
    infra += f", Chroma server {server}" if server else ""
    console.print(f"{name}: {len(plan.runs)} runs x {len(plan.queries)} questions{infra}", highlight=False, soft_wrap=True)
    _print_ingest(plan.dataset)
    out_dir = new_report_dir(name, ws.reports_dir)
    t0 = time.perf_counter()
    summary = run_bakeoff(plan.save(out_dir / "plan.json"), ws, out_dir, rerun=rerun, stream=sys.stderr)
    _print_timings(summary.get("runs", []), time.perf_counter() - t0)
    board = st.leaderboard(name)
    _print_board(board, f"{name} leaderboard")
    _print_failures(st, board)
    if report:
        path = render_report(name, ws.store_url, ws.reports_dir, out_dir=out_dir)
        out.print(f"report: {path}", highlight=False, soft_wrap=True)
    else:
        write_index(ws.reports_dir)
        out.print(f"notebook: {out_dir / 'bakeoff.ipynb'}", highlight=False, soft_wrap=True)
    return _check_gates(st, plan.experiment.spec) if gate else 0


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


def _print_failures(st, board) -> None:
    """One line per run that failed questions or stopped early: '3 of 200 questions failed: timeout'."""
    from .report.data import failure_reasons, failure_text

    for _, r in board.iterrows():
        if not r["n_failed"] and r["status"] == "complete":
            continue
        rows = st.questions(r["run_id"])
        reasons = failure_reasons(rows["error"]) if "error" in rows else {}
        text = failure_text(int(r["n_failed"]), int(r["n_questions"]), reasons)
        if str(r["status"]).startswith("stopped"):
            text = f"{r['status']} after {len(rows)} of {int(r['n_questions'])} questions (run again to resume)" + (f"; {text}" if text else "")
        console.print(f"run {r['run_id']} ({r['status']}): {text}", highlight=False, soft_wrap=True)


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
    from .store import Store, to_json_records

    try:
        board = Store(Workspace.resolve(store=store).store_url).leaderboard(experiment)
    except WorkbenchError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(to_json_records(board), indent=2) + "\n")
    else:
        _print_board(board, f"{experiment} leaderboard")


@app.command(name="ls")
def list_(store: StoreOpt = None) -> None:
    """List stored experiments and their runs."""
    from .store import Store

    try:
        st = Store(Workspace.resolve(store=store).store_url)
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
    baseline: Annotated[str, typer.Option("--baseline", help="run id (or prefix) to compare the recommended run with")] = "",
    baseline_experiment: Annotated[str, typer.Option("--baseline-experiment", help="compare with this experiment's matching run")] = "",
) -> None:
    """(Re)render an experiment's HTML report from the store (no recomputation) into reports/<experiment>/<timestamp>/."""
    from .report.artifacts import render_report

    try:
        ws = Workspace.resolve(store=store)
        path = render_report(experiment, ws.store_url, ws.reports_dir, baseline_run=baseline, baseline_experiment=baseline_experiment)
    except WorkbenchError as exc:
        _fail(exc)
    out.print(f"report: {path}", highlight=False, soft_wrap=True)


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


questions_app = typer.Typer(no_args_is_help=True, help="Evaluation sets: generate questions from your documents, review them.")
app.add_typer(questions_app, name="questions")


def _parse_llm(value: str):
    """``local:smollm2-135m``, ``openai:gpt-4o-mini``, ``openai_compatible:NAME`` -> (provider, model)."""
    from .config.experiment import GENERATION_PROVIDERS
    from .errors import ConfigError, unknown_name

    provider, sep, model = value.partition(":")
    if not sep or not model:
        raise ConfigError(f"--llm {value!r}: expected PROVIDER:MODEL, e.g. local:smollm2-135m")
    if provider not in GENERATION_PROVIDERS:
        raise ConfigError(f"--llm {value!r}: " + unknown_name("provider", provider, GENERATION_PROVIDERS))
    return provider, model


@questions_app.command("generate")
def questions_generate(
    docs_folder: Annotated[Path, typer.Argument(help="folder of .md/.txt/.html/.pdf/.docx documents (read recursively)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the evaluation set folder to write, e.g. evalsets/NAME")],
    llm: Annotated[str, typer.Option("--llm", help="PROVIDER:MODEL (local:smollm2-135m, openai:MODEL, openai_compatible:MODEL)")] = "local:smollm2-135m",
    n: Annotated[int, typer.Option("-n", help="answerable questions wanted (fewer when the filters reject too many)")] = 50,
    unanswerable: Annotated[float, typer.Option(help="add this fraction of n as questions not answerable from the documents")] = 0.1,
    seed: Annotated[int, typer.Option(help="passage order and sampling seed")] = 0,
    max_tokens: Annotated[int, typer.Option(help="max tokens per generated question")] = 96,
    temperature: Annotated[float, typer.Option(help="sampling temperature of the generator")] = 0.7,
    max_attempts: Annotated[int, typer.Option(help="candidates to try at most (0: 3n)")] = 0,
    base_url: Annotated[str | None, typer.Option(help="endpoint of an openai_compatible provider")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="environment variable holding the API key")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads of the local LLM server (0: all cores; 1 when the machine is busy)")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing evaluation set at --output")] = False,
    verbose: Annotated[bool, typer.Option("-v", help="print every rejected candidate")] = False,
) -> None:
    """Write a versioned evaluation set (questions, answers, gold spans) from a folder of documents."""
    import contextlib

    from .config.experiment import GenerationSpec
    from .data.evalset import counts, write_evalset
    from .errors import ConfigError, DatasetError
    from .stages.generation import make_client
    from .data.ingest import ingest_folder
    from .questions import QuestionLLM, build_manifest, generate_questions, prompt_hash

    try:
        if n < 1 or not 0 <= unanswerable <= 1:
            raise ConfigError("-n must be at least 1 and --unanswerable between 0 and 1")
        if (output / "evalset.json").exists() and not overwrite:
            raise ConfigError(f"{output}: an evaluation set exists there (choose another name, or --overwrite)")
        provider, model = _parse_llm(llm)
        spec = GenerationSpec(provider=provider, model=model, prompt="-", base_url=base_url, api_key_env=api_key_env,
                              max_tokens=max_tokens, temperature=temperature, seed=seed)
        ingestion = ingest_folder(docs_folder)
        console.print(ingestion.summary(), highlight=False, soft_wrap=True)
        for line in ingestion.skipped:
            console.print(f"  skipped {line}", highlight=False, soft_wrap=True)
        for line in ingestion.errors:
            console.print(f"  [red]failed[/red] {line}", highlight=False, soft_wrap=True)
        if not ingestion.docs:
            raise DatasetError(f"{docs_folder}: no readable documents")
        with contextlib.ExitStack() as stack:
            base = None
            if provider == "local":
                from .providers.llm_server import LocalLLMServer

                base = stack.enter_context(LocalLLMServer(model, n_threads=threads or None)).base_url
            qllm = QuestionLLM(make_client(spec, base), model, provider=provider, max_tokens=max_tokens,
                               temperature=temperature, seed=seed)
            log = (lambda m: console.print(m, highlight=False, soft_wrap=True)) if verbose else \
                (lambda m: console.print(m, highlight=False) if "candidates," in m else None)
            result = generate_questions(ingestion.docs, qllm, n, seed=seed, unanswerable=unanswerable,
                                        max_attempts=max_attempts or None, log=log)
        generator = {"provider": provider, "model": model, "base_url": base_url, "prompt_hash": prompt_hash(),
                     "temperature": temperature, "max_tokens": max_tokens, "seed": seed, "n_requested": n,
                     "unanswerable_fraction": unanswerable, "llm_calls": qllm.calls}
        if provider == "local":
            from .hashing import file_sha256
            from .providers.llm_server import local_model_path

            generator["model_file_sha256"] = file_sha256(local_model_path(model))
        manifest = build_manifest(output.name, docs_folder, output, ingestion, generator, result)
        write_evalset(output, manifest, result.questions())
    except WorkbenchError as exc:
        _fail(exc)
    stats, c = result.stats(), counts(result.questions())
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(stats["rejected"].items())) or "none"
    out.print(f"{output}: {c['answerable']} answerable + {c['unanswerable']} unanswerable questions kept of "
              f"{stats['candidates']} candidates (rejected: {rejected}); difficulty {c['difficulty_mix']}",
              highlight=False, soft_wrap=True)


@questions_app.command("review")
def questions_review(
    evalset: Annotated[Path, typer.Argument(help="the evaluation set folder (evalsets/NAME)")],
    export: Annotated[Path | None, typer.Option("--export", help="write the questions to this CSV for review")] = None,
    import_: Annotated[Path | None, typer.Option("--import", help="apply the decisions of a reviewed CSV")] = None,
) -> None:
    """Export questions to a CSV (decision column: accept, edit, reject), or import the decisions back."""
    from .errors import ConfigError
    from .review import export_review, import_review

    try:
        if (export is None) == (import_ is None):
            raise ConfigError("give exactly one of --export FILE.csv or --import FILE.csv")
        if export is not None:
            rows = export_review(evalset, export)
            out.print(f"{export}: {rows} questions; fill the 'decision' column (accept, edit, reject) and import it back",
                      highlight=False, soft_wrap=True)
        else:
            res = import_review(evalset, import_)
            out.print(f"{evalset}: revision {res['revision']} ({res['accept']} accepted, {res['edit']} edited, "
                      f"{res['reject']} rejected, {res['unchanged']} unchanged)", highlight=False, soft_wrap=True)
    except WorkbenchError as exc:
        _fail(exc)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="baseline run id (a unique prefix is enough)")],
    run_b: Annotated[str, typer.Argument(help="candidate run id")],
    store: StoreOpt = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="metrics to compare (default: all)")] = None,
    flips: Annotated[str | None, typer.Option(help="list the questions whose METRIC changed (default: the primary metric)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Paired comparison of two runs: per-metric difference (B - A), 95% CI, p-value, flipped questions."""
    from .compare import compare_runs, flipped_questions
    from .evaluation.registry import Direction, direction, primary_metric
    from .store import Store, to_json_records

    try:
        st = Store(Workspace.resolve(store=store).store_url)
        df = compare_runs(st, run_a, run_b, metric or None)
        qa = st.questions(st.run(run_a)["run_id"])
        flip_metric = flips or primary_metric(qa)
        flipped = flipped_questions(st, run_a, run_b, flip_metric)
    except WorkbenchError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps({"metrics": to_json_records(df), "flipped_metric": flip_metric,
                                     "flipped": to_json_records(flipped)}, indent=2) + "\n")
        return
    table = Table(title=f"{run_b[:10]} vs {run_a[:10]} (diff = B - A, paired over questions)")
    for col in ("metric", "n", "A", "B", "diff", "95% CI", "p", "test"):
        table.add_column(col)
    for _, r in df.iterrows():
        sig = "[bold]" if r["p_value"] < 0.05 else ""
        table.add_row(r["metric"], str(r["n"]), f"{r['mean_a']:.4g}", f"{r['mean_b']:.4g}", f"{sig}{r['diff']:+.4g}",
                      f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]", f"{r['p_value']:.3g}", r["test"])
    out.print(table)
    if direction(flip_metric) is Direction.NONE:
        counts = f"{int((flipped['change'] > 0).sum())} up, {int((flipped['change'] < 0).sum())} down"
    else:  # better and worse in the metric's direction: fewer hallucinations are better
        counts = f"{int(flipped['better'].astype(bool).sum())} better, {int((~flipped['better'].astype(bool)).sum())} worse"
    out.print(f"{len(flipped)} questions changed {flip_metric} ({counts})")
    for _, r in flipped.head(20).iterrows():
        out.print(f"  {r['change']:+.3g}  {r['query_id']}  {r['question']}", highlight=False, markup=False)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="run id (a unique prefix is enough)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="trec | jsonl | csv")] = "trec",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
    store: StoreOpt = None,
) -> None:
    """Export a run: TREC run file (qid Q0 docid rank score tag) or per-question rows (jsonl/csv)."""
    from .export import export_run
    from .store import Store

    try:
        text = export_run(Store(Workspace.resolve(store=store).store_url), run_id, fmt, output)
    except WorkbenchError as exc:
        _fail(exc)
    if output is None:
        sys.stdout.write(text)
    else:
        out.print(f"wrote {output}")


@app.command()
def gate(
    experiment: Annotated[Path, typer.Argument(help="experiments/NAME.yaml with baseline and gates")],
    store: StoreOpt = None,
) -> None:
    """Check an experiment's stored runs against its gates; exit 1 if any gate fails."""
    from .config.experiment import load_experiment
    from .store import Store

    try:
        exp = load_experiment(experiment)
        failed = _check_gates(Store(Workspace.resolve(store=store).store_url), exp.spec)
    except WorkbenchError as exc:
        _fail(exc)
    raise typer.Exit(1 if failed else 0)


def _check_gates(st, spec) -> int:
    from .gates import evaluate_gates

    results = evaluate_gates(st, spec)
    for r in results:
        mark = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        out.print(f"{mark} {r.run_id[:10]} {r.message}", highlight=False)
    failed = sum(not r.passed for r in results)
    out.print(f"gates: {len(results) - failed} passed, {failed} failed")
    return failed
