"""``workbench plan`` (a dry run: what an experiment will build, call and cost) and ``workbench race
replay`` (the race replayed on a finished exhaustive experiment under random question orders)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import WorkbenchError
from ..settings import Workspace, find_input
from .app import CacheOpt, StoreOpt, app, fail, out

race_app = typer.Typer(no_args_is_help=True, help="Adaptive bake-offs: replay a race on stored results.")
app.add_typer(race_app, name="race")


@app.command()
def plan(
    experiment: Annotated[Path, typer.Argument(help="experiments/NAME.yaml")],
    store: StoreOpt = None,
    cache_dir: CacheOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Dry run: configurations, chunk sets and indexes to build (and which are cached), texts to embed,
    LLM calls (grid; a race's worst, best and expected case), tokens, cost and time. Nothing is computed."""
    from ..config import load_experiment
    from ..pipeline.estimate import describe, estimate
    from ..pipeline.plan import plan_experiment

    try:
        ws = Workspace.resolve(store=store, cache_dir=cache_dir)
        est = estimate(plan_experiment(load_experiment(find_input(experiment, "experiment file", ws.root)), ws), ws)
    except WorkbenchError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(est, indent=2, default=str) + "\n")
        return
    for line in describe(est):
        out.print(line, highlight=False, soft_wrap=True)


@race_app.command("replay")
def replay(
    experiment: Annotated[str, typer.Argument(help="a finished exhaustive experiment in the store (name)")],
    orders: Annotated[int, typer.Option("--orders", min=1, help="random question orders to replay")] = 200,
    metric: Annotated[str | None, typer.Option(help="race metric (default: the experiment's search.metric, else f1 / ndcg_at_10)")] = None,
    margin: Annotated[float | None, typer.Option(help="default: the experiment's, else 0.02")] = None,
    alpha: Annotated[float | None, typer.Option(help="default: the experiment's, else 0.05")] = None,
    round_size: Annotated[int | None, typer.Option("--round", help="default: the experiment's, else 10")] = None,
    min_questions: Annotated[int | None, typer.Option(help="default: the experiment's, else 20")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random orders")] = 0,
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Replay the race on an exhaustive experiment's stored rows (no model is called): the share of
    calls it would have used, how often its winner ties with the full grid's best, and how often a
    configuration within the margin of the best was eliminated."""
    from ..config import SearchSpec
    from ..report.race import replay_orders
    from ..store import Store

    try:
        st = Store(Workspace.resolve(store=store).store_url)
        stored = (st.experiment(experiment).get("spec") or {}).get("search") or {}
        given = {"metric": metric, "margin": margin, "alpha": alpha, "round": round_size, "min_questions": min_questions}
        spec = SearchSpec.model_validate({**{k: v for k, v in stored.items() if k != "strategy"}, "strategy": "race",
                                          **{k: v for k, v in given.items() if v is not None}})
        result = replay_orders(st, experiment, spec.model_dump(), orders=orders, seed=seed)
    except WorkbenchError as exc:
        fail(exc)
    except ValueError as exc:  # pydantic: a bad --margin/--alpha/--round
        fail(WorkbenchError(f"race replay: {' '.join(str(exc).split())}"))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    out.print(f"{experiment}: race on {result['metric']} replayed over {orders} question orders ({result['n_configs']} configurations x "
              f"{result['n_questions']} questions; margin {result['margin']}, alpha {result['alpha']})", highlight=False, soft_wrap=True)
    out.print(f"  share of calls: mean {result['mean_share_of_calls']:.1%} (min {result['min_share_of_calls']:.1%}, "
              f"max {result['max_share_of_calls']:.1%})", highlight=False)
    out.print(f"  winner in the full grid's ties-with-best set: {result['winner_in_ties_with_best']:.1%} of orders", highlight=False)
    out.print(f"  a configuration within the margin of the best eliminated: {result['near_best_eliminated']:.1%} of orders", highlight=False)
