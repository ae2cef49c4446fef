"""Reading stored results: leaderboards, listings, reports, paired comparisons, exports, gates."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..errors import WorkbenchError
from ..settings import Workspace
from .app import EXIT_GATE_FAILED, EXIT_INCONCLUSIVE, EXIT_OK, StoreOpt, app, fail, out


@app.command()
def results(
    experiment: Annotated[str, typer.Argument(help="experiment name")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON: one object per run, best first, every metric")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="show every metric (tables of metrics x runs)")] = False,
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="rank by this metric (default: answer F1, else nDCG@10, "
                                                                      "else MRR)")] = None,
) -> None:
    """Print an experiment's leaderboard: one line per run, best first, with the ranking metric's 95% CI."""
    from ..report.board import rank_runs
    from ..store import Store
    from .board import print_ranked

    try:
        ranked = rank_runs(Store(Workspace.resolve(store=store).store_url), experiment, metric=metric)
    except WorkbenchError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(ranked.records(), indent=2) + "\n")
    else:
        print_ranked(out, ranked, show_all=show_all)


@app.command(name="ls")
def list_(store: StoreOpt = None) -> None:
    """List stored experiments and their runs."""
    from ..store import Store

    try:
        st = Store(Workspace.resolve(store=store).store_url)
        names = st.experiment_names()
    except WorkbenchError as exc:
        fail(exc)
    if not names:
        out.print("no experiments stored")
    for name in names:
        runs = st.runs(name)
        out.print(f"[bold]{name}[/bold] ({len(runs)} runs)")
        for _, r in runs.iterrows():
            axes = " | ".join(str(r[a]) for a in ("chunking", "embedding", "retrieval", "generation"))
            out.print(f"  {r['run_id']}  {r['status']:<8}  {r['n_questions']:>4} q  {axes}", highlight=False, soft_wrap=True)


@app.command()
def report(
    experiment: Annotated[str, typer.Argument(help="experiment name")],
    store: StoreOpt = None,
    baseline: Annotated[str, typer.Option("--baseline", help="run id (or prefix) to compare the recommended run with")] = "",
    baseline_experiment: Annotated[str, typer.Option("--baseline-experiment", help="compare with this experiment's matching run")] = "",
) -> None:
    """(Re)render an experiment's HTML report from the store (no recomputation) into reports/<experiment>/<timestamp>/."""
    from ..report.artifacts import render_report

    try:
        ws = Workspace.resolve(store=store)
        path = render_report(experiment, ws.store_url, ws.reports_dir, baseline_run=baseline, baseline_experiment=baseline_experiment)
    except WorkbenchError as exc:
        fail(exc)
    out.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="baseline run id (a unique prefix is enough); with --all: the experiment")],
    run_b: Annotated[str | None, typer.Argument(help="candidate run id")] = None,
    store: StoreOpt = None,
    metric: Annotated[list[str] | None, typer.Option("--metric", "-m", help="metrics to compare (default: all; with --all: the "
                                                                            "primary metric)")] = None,
    flips: Annotated[str | None, typer.Option(help="list the questions whose METRIC changed (default: the primary metric)")] = None,
    all_pairs: Annotated[bool, typer.Option("--all", help="compare every pair of runs of the experiment RUN_A (Holm over all pairs)")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Paired comparison of two runs: per-metric difference (B - A), 95% CI, p-value Holm-corrected
    across the metrics compared, flipped questions. With --all EXPERIMENT: every pair of its runs."""
    if all_pairs:
        from .decisions import compare_all

        return compare_all(run_a, store, metric, as_json)
    if run_b is None:
        fail(WorkbenchError("compare needs two runs (RUN_A RUN_B), or --all EXPERIMENT"))
    from ..compare import compare_runs, flipped_questions
    from ..evaluation.registry import primary_metric
    from ..store import Store, to_json_records

    try:
        st = Store(Workspace.resolve(store=store).store_url)
        df = compare_runs(st, run_a, run_b, metric or None)
        a, b = st.run(run_a), st.run(run_b)
        qa = st.questions(a["run_id"])
        flip_metric = flips or primary_metric(qa)
        flipped = flipped_questions(st, run_a, run_b, flip_metric)
    except WorkbenchError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps({"a": _run_json(a), "b": _run_json(b), "difference": "b - a", "metrics": to_json_records(df),
                                     "correction": {"method": "holm", "family": len(df), "alpha": 0.05},
                                     "flipped_metric": flip_metric, "flipped": to_json_records(flipped)}, indent=2) + "\n")
        return
    out.print(f"A: {_run_text(a)} vs B: {_run_text(b)}, difference = B − A (paired over the questions both answered)",
              highlight=False, markup=False)
    _print_comparison(df)
    _print_flips(flipped, flip_metric)


def _print_comparison(df) -> None:
    table = Table()
    for col in ("metric", "n", "A", "B", "diff", "95% CI", "p", "p (Holm)", "test"):
        table.add_column(col)
    for _, r in df.iterrows():
        sig = "[bold]" if r["significant"] else ""
        table.add_row(r["metric"], str(r["n"]), f"{r['mean_a']:.4g}", f"{r['mean_b']:.4g}", f"{sig}{r['diff']:+.4g}",
                      f"[{r['ci_low']:+.4g}, {r['ci_high']:+.4g}]", f"{r['p_value']:.3g}", f"{r['p_holm']:.3g}", r["test"])
    out.print(table)
    out.print(f"p (Holm): corrected across the {len(df)} metrics compared, so the chance of any false 'significant' (bold) "
              "among them is at most 5%.", highlight=False, soft_wrap=True)


def _print_flips(flipped, flip_metric: str) -> None:
    from ..evaluation.registry import Direction, direction

    if direction(flip_metric) is Direction.NONE:
        counts = f"{int((flipped['change'] > 0).sum())} up, {int((flipped['change'] < 0).sum())} down"
    else:  # better and worse in the metric's direction: fewer hallucinations are better
        counts = f"{int(flipped['better'].astype(bool).sum())} better, {int((~flipped['better'].astype(bool)).sum())} worse"
    out.print(f"{len(flipped)} questions changed {flip_metric} ({counts})")
    for _, r in flipped.head(20).iterrows():
        out.print(f"  {r['change']:+.3g}  {r['query_id']}  {r['question']}", highlight=False, markup=False, soft_wrap=True)


def _run_json(run: dict) -> dict:
    return {"run_id": run["run_id"], "config": config_label(run), "axes": run["axes"]}


def _run_text(run: dict) -> str:
    return f"{run['run_id'][:10]} ({config_label(run)})"


def config_label(run: dict) -> str:
    """A stored run's configuration in one line: every axis it uses (``sentence 128/16 | bm25@5 | ...``)."""
    return " | ".join(str(v) for v in (run.get("axes") or {}).values() if v not in (None, "", "-")) or "?"


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="run id (a unique prefix is enough); with --to mlflow: an experiment name")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="trec | jsonl | csv")] = "trec",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")] = None,
    store: StoreOpt = None,
    to: Annotated[str | None, typer.Option("--to", help="mlflow: log the experiment's runs to an MLflow tracking server or store")] = None,
    tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", help="with --to mlflow (default: the experiment file's "
                                                                            "tracking.mlflow, else $WORKBENCH_MLFLOW_URI, else "
                                                                            "$MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db)")] = None,
) -> None:
    """Export a run: TREC run file (qid Q0 docid rank score tag) or per-question rows (jsonl/csv);
    or, with --to mlflow, a whole experiment as MLflow runs (one per grid point, under a parent run)."""
    if to is not None:
        return _export_mlflow(run_id, to, tracking_uri, store)
    from ..export import export_run
    from ..store import Store

    try:
        text = export_run(Store(Workspace.resolve(store=store).store_url), run_id, fmt, output)
    except WorkbenchError as exc:
        fail(exc)
    if output is None:
        sys.stdout.write(text)
    else:
        out.print(f"wrote {output}", highlight=False, soft_wrap=True)


def _export_mlflow(experiment: str, to: str, tracking_uri: str | None, store: str | None) -> None:
    from ..store import Store

    try:
        if to != "mlflow":
            raise WorkbenchError(f"--to {to!r}: the only tracker is 'mlflow'")
        ws = Workspace.resolve(store=store)
        mlflow_export(Store(ws.store_url), experiment, ws, tracking_uri)
    except WorkbenchError as exc:
        fail(exc)


def mlflow_export(st, experiment: str, ws: Workspace, tracking_uri: str | None = None, report_dir: Path | None = None) -> None:
    """Log ``experiment`` to MLflow (the option's URI, else the file's, else the offline default) and say where."""
    from ..tracking import export_to_mlflow, latest_report_dir, tracking_target

    uri, name = tracking_target(st.experiment(experiment)["spec"], tracking_uri, ws)
    summary = export_to_mlflow(st, experiment, uri, mlflow_experiment=name, report_dir=report_dir or latest_report_dir(experiment, ws.reports_dir))
    out.print(f"mlflow: {len(summary.child_run_ids)} runs of {experiment} under parent run {summary.parent_run_id} in experiment "
              f"{summary.experiment_id} at {uri} ({summary.created} created, {summary.metrics_logged} metric values logged)",
              highlight=False, soft_wrap=True)


@app.command()
def gate(
    experiment: Annotated[Path, typer.Argument(help="experiments/NAME.yaml with baseline and gates")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the verdicts as JSON (one object per check)")] = False,
) -> None:
    """Check an experiment's stored runs against its gates. Exit 0 all passed, 1 a gate failed,
    4 none failed but one is inconclusive (its confidence interval crosses the bound), 2 error."""
    from ..config.experiment import load_experiment
    from ..store import Store

    try:
        exp = load_experiment(experiment)
        code = check_gates(Store(Workspace.resolve(store=store).store_url), exp.spec, as_json=as_json)
    except WorkbenchError as exc:
        fail(exc)
    raise typer.Exit(code)


MARKS = {"pass": "[green]PASS[/green]", "fail": "[red]FAIL[/red]", "inconclusive": "[yellow]INCONCLUSIVE[/yellow]"}


def check_gates(st, spec, *, as_json: bool = False) -> int:
    """Print every gate's verdict (text, or JSON with ``as_json``); return the exit code:
    1 when a gate failed, 4 when none failed but one is inconclusive, else 0."""
    from ..gates import evaluate_gates, gates_json, overall, settle_text

    results = evaluate_gates(st, spec)
    verdict = overall(results)
    code = {"pass": EXIT_OK, "fail": EXIT_GATE_FAILED, "inconclusive": EXIT_INCONCLUSIVE}[verdict]
    if as_json:
        sys.stdout.write(json.dumps({"experiment": spec.name, "outcome": verdict, "exit_code": code, **gates_json(results)}, indent=2) + "\n")
        return code
    for r in results:
        out.print(f"{MARKS[r.outcome]} {r.run_id[:10]} {r.message}", highlight=False, soft_wrap=True)
        if settle_text(r):
            out.print(f"     {settle_text(r)}", highlight=False, soft_wrap=True)
    counts = {k: sum(r.outcome == k for r in results) for k in MARKS}
    out.print(f"gates: {counts['pass']} passed, {counts['fail']} failed, {counts['inconclusive']} inconclusive")
    return code
