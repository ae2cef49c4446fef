"""Decisions from stored results: every pair of runs (``compare --all``) and sample size (``power``)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from ..errors import WorkbenchError
from ..settings import Workspace
from .app import StoreOpt, app, fail, out


def _ranked(st, experiment: str):
    """The experiment's leaderboard best first by its primary metric, with a short label per run."""
    from ..evaluation.registry import best_first, primary_metric
    from ..report.data import run_labels

    board = st.leaderboard(experiment)
    if board.empty:
        raise WorkbenchError(f"experiment {experiment!r} has no runs")
    board = best_first(board, primary_metric(board)).reset_index(drop=True)
    return board.assign(label=run_labels(board), rank=range(1, len(board) + 1))


def compare_all(experiment: str, store: str | None, metrics: list[str] | None, as_json: bool) -> None:
    """``workbench compare --all EXPERIMENT``: every pair of runs, Holm across the family."""
    from ..compare import ALPHA, pairs_table
    from ..evaluation.registry import metric_info, primary_metric
    from ..store import Store, to_json_records

    try:
        st = Store(Workspace.resolve(store=store).store_url)
        board = _ranked(st, experiment)
        if len(board) < 2:
            raise WorkbenchError(f"experiment {experiment!r} has 1 run: nothing to compare")
        metrics = metrics or [primary_metric(board)]
        for m in metrics:
            metric_info(m)
        order = list(board["run_id"])
        pairs = pairs_table({r: st.question_values(r) for r in order}, order, metrics)
    except WorkbenchError as exc:
        fail(exc)
    runs = [{"run_id": r["run_id"], "rank": int(r["rank"]), "label": r["label"]} for _, r in board.iterrows()]
    if as_json:
        sys.stdout.write(json.dumps({"experiment": experiment, "metrics": metrics, "runs": runs,
                                     "correction": {"method": "holm", "family": len(pairs), "alpha": ALPHA},
                                     "pairs": to_json_records(pairs)}, indent=2) + "\n")
        return
    for m in metrics:
        _print_matrix(pairs[pairs["metric"] == m], runs, m)
    out.print(f"Holm-corrected across all {len(pairs)} comparisons ({len(metrics)} metric(s) x pairs): * marks a difference "
              f"significant at family-wise error {ALPHA:.0%}; diff = row - column, paired over the questions both runs scored.",
              highlight=False, soft_wrap=True)


def _print_matrix(pairs, runs: list[dict], metric: str) -> None:
    from ..evaluation.registry import label

    cell = {}
    for _, p in pairs.iterrows():
        star = "*" if p["significant"] else ""
        cell[(p["run_a"], p["run_b"])] = f"{-p['diff']:+.3g}{star}"  # row a, column b: a - b
        cell[(p["run_b"], p["run_a"])] = f"{p['diff']:+.3g}{star}"
    table = Table(title=f"{label(metric)}: row - column (* Holm-significant)")
    table.add_column("run")
    for r in runs:
        table.add_column(f"#{r['rank']}")
    for r in runs:
        table.add_row(f"#{r['rank']} {r['label']}", *["" if c is r else cell.get((r["run_id"], c["run_id"]), "n/a") for c in runs])
    out.print(table)


@app.command()
def power(
    experiment: Annotated[str, typer.Argument(help="experiment name (its stored runs give the spread of per-question differences)")],
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="metric (default: the primary metric)")] = None,
    delta: Annotated[float | None, typer.Option("--delta", min=0, help="the smallest true difference you need to detect")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0001, max=0.5, help="two-sided significance level")] = 0.05,
    power_: Annotated[float, typer.Option("--power", min=0.5, max=0.9999, help="chance of detecting a true difference of --delta")] = 0.8,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """How many questions do I need? For each run against the best one: the spread of the per-question
    differences, the smallest difference the current questions can detect and, with --delta, the
    questions needed to detect that difference (paired t-test power, statsmodels)."""
    from ..compare import power_summary, power_vs_best
    from ..evaluation.registry import metric_info, primary_metric
    from ..store import Store, to_json_records

    try:
        st = Store(Workspace.resolve(store=store).store_url)
        board = _ranked(st, experiment)
        metric = metric or primary_metric(board)
        metric_info(metric)
        if len(board) < 2:
            raise WorkbenchError(f"experiment {experiment!r} has 1 run: power needs a pair of runs to measure differences")
        best = board.iloc[0]["run_id"]
        table = power_vs_best({r: st.question_values(r) for r in board["run_id"]}, best, metric, delta=delta, alpha=alpha, power=power_)
    except WorkbenchError as exc:
        fail(exc)
    summary = power_summary(table, metric, delta, alpha, power_)
    if as_json:
        sys.stdout.write(json.dumps({"experiment": experiment, "metric": metric, "best_run": best, "delta": delta, "alpha": alpha,
                                     "power": power_, **summary, "pairs": to_json_records(table)}, indent=2) + "\n")
        return
    _print_power(table.merge(board[["run_id", "rank", "label"]], on="run_id"), metric, delta)
    out.print(summary["text"], highlight=False, soft_wrap=True)


def _print_power(table, metric: str, delta: float | None) -> None:
    from ..evaluation.registry import label

    t = Table(title=f"{label(metric)}: each run against the best (#1)")
    for col in ["run", "n", "mean diff", "sd of differences", "detectable now", *([f"questions for {delta:g}"] if delta else [])]:
        t.add_column(col)
    for _, r in table.iterrows():
        cells = [f"#{r['rank']} {r['label']}", str(r["n"]), _num(r["diff"], "+.3g"), _num(r["sd"]), _num(r["detectable"])]
        t.add_row(*cells, *([_num(r["needed"], "d")] if delta else []))
    out.print(t)


def _num(x, spec: str = ".3g") -> str:
    import math

    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(int(x) if spec == "d" else x, spec)
