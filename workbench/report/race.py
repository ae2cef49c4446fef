"""The race, read back from the store: its rounds, who left when and why, what it saved, and
replays of a finished exhaustive experiment under other question orders.

Nothing is recomputed with a model. The live race's decisions are a function of the stored rows
and the seeded question order (:mod:`workbench.pipeline.race`), so replaying the same pure race
(:func:`workbench.evaluation.sequential.run_race`) on the stored rows gives back its rounds with
their confidence bounds for the report's chart. ``workbench race replay`` runs the race on an
exhaustive experiment's stored rows under many random orders: how many calls it would have used,
how often its winner is one the full grid cannot tell from the best, and how often it eliminated a
configuration within the margin of the best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..compare import ties_with_best
from ..errors import StoreError
from ..evaluation.registry import best_first, label, lower_is_better
from ..evaluation.sequential import (
    RaceResult,
    RaceSettings,
    decide_round,
    default_metric,
    question_order,
    race_arrays,
    replay_race,
    run_race,
    search_settings,
)
from ..store import Store
from .html import esc


@dataclass
class RaceReport:
    """What the report's Race section shows."""

    metric: str
    settings: RaceSettings
    n_questions: int
    result: RaceResult
    evidence: dict[str, dict]  # run id -> runs.evidence["race"]
    saved: dict[str, float | None] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def race_spec(spec: Mapping) -> Mapping | None:
    search = (spec or {}).get("search") or {}
    return search if search.get("strategy") == "race" else None


def load_race(store: Store, spec: Mapping, board: pd.DataFrame, values: Mapping[str, pd.DataFrame]) -> RaceReport | None:
    """The race of an experiment whose file says ``search: {strategy: race}``, replayed from its
    stored rows; None for a grid experiment."""
    search = race_spec(spec)
    if search is None or board.empty:
        return None
    metric = default_metric(search, bool((spec.get("grid") or {}).get("generation")))
    n = int(board["n_planned"].max()) if "n_planned" in board else int(board["n_questions"].max())
    evidence = {r: (e or {}).get("race", {}) for r, e in zip(board["run_id"], board.get("evidence", [None] * len(board)))}
    pruned = [r for r, e in evidence.items() if e.get("stage") == "retrieval"]
    contenders = [r for r in board.sort_values("position")["run_id"] if r not in pruned] if "position" in board else \
        [r for r in board["run_id"] if r not in pruned]
    settings, _ = search_settings(search, len(board), len(board), n)
    order = question_order(n, search.get("seed", 0))
    columns = [c.column for c in settings.constraints]
    arrays = {r: race_arrays(values.get(r, pd.DataFrame()), order, metric, lower_is_better(metric), columns) for r in contenders}

    def fetch(survivors, start, end):
        return {r: arrays[r][0][:end] for r in survivors}, {r: {c: v[:end] for c, v in arrays[r][1].items()} for r in survivors}

    result = run_race(contenders, n, settings, fetch, bounds=True)  # decisions do not depend on the runs' order
    race = RaceReport(metric, settings, n, result, evidence, labels=dict(zip(board["run_id"], board.get("label", board["run_id"]))))
    race.saved = savings(board, values, n)
    return race


def savings(board: pd.DataFrame, values: Mapping[str, pd.DataFrame], n_planned: int) -> dict[str, float | None]:
    """LLM calls, tokens, cost and generation seconds the race did not spend, against the full grid:
    each run's questions not evaluated times its own mean per evaluated question."""
    used = int(board["n_questions"].sum())
    full = n_planned * len(board)
    out: dict[str, float | None] = {"calls_used": used, "calls_full": full, "share": used / full if full else None}
    for key, cols in (("tokens", ("prompt_tokens", "completion_tokens")), ("cost_usd", ("cost_usd",)), ("seconds", ("generation_latency_s",))):
        per_run = {}
        for run_id in board["run_id"]:
            v = values.get(run_id, pd.DataFrame())
            parts = [pd.to_numeric(v[c], errors="coerce") for c in cols if c in v]
            per_q = sum(p.fillna(0.0) for p in parts).mean() if parts and len(v) else math.nan
            if math.isfinite(per_q):
                per_run[run_id] = float(per_q)
        # a run eliminated before any answer (the retrieval stage) is estimated at the others' mean
        fallback = float(np.mean(list(per_run.values()))) if per_run else None
        saved = [per_run.get(r, fallback) * (n_planned - int(n)) for r, n in zip(board["run_id"], board["n_questions"])
                 if per_run.get(r, fallback) is not None]
        out[f"{key}_saved"] = float(sum(saved)) if saved else None
    return out


# -- replay ------------------------------------------------------------------------------------

def stored_matrix(store: Store, experiment: str, metric: str) -> tuple[list[str], np.ndarray, dict[str, pd.DataFrame]]:
    """(run ids, runs x questions matrix of oriented scores by position, values) of a finished experiment."""
    board = store.leaderboard(experiment)
    if board.empty:
        raise StoreError(f"experiment {experiment!r} has no runs")
    n = int(board["n_planned"].max())
    short = board[board["n_questions"] < n]
    if not short.empty:
        raise StoreError(f"experiment {experiment!r} is not exhaustive: run {short.iloc[0]['run_id']} evaluated "
                         f"{int(short.iloc[0]['n_questions'])} of {n} questions (replay needs every question of every run)")
    values = {r: store.question_values(r) for r in board["run_id"]}
    rows = [race_arrays(values[r], range(n), metric, lower_is_better(metric))[0] for r in board["run_id"]]
    return list(board["run_id"]), np.vstack(rows), values


def retrieval_groups(store: Store, experiment: str, run_ids: list[str]) -> list[list[str]]:
    """Runs grouped by retrieval setting (their stored config without the generation stage)."""
    import json

    configs = store.runs(experiment).set_index("run_id")["config"]
    groups: dict[str, list[str]] = {}
    for r in run_ids:
        groups.setdefault(json.dumps({k: v for k, v in (configs[r] or {}).items() if k != "generation"}, sort_keys=True), []).append(r)
    return list(groups.values())


def _pruned(values: Mapping[str, pd.DataFrame], groups: list[list[str]], perm: np.ndarray, metric: str,
            settings: RaceSettings | None) -> set[str]:
    """The runs the retrieval stage drops under this question order (each group's retrieval rows are
    the same in every run of the group: its first run stands for it)."""
    if settings is None:
        return set()
    scores = {g[0]: race_arrays(values[g[0]], perm, metric, lower_is_better(metric))[0] for g in groups}
    out = {e.config for e in decide_round(0, scores, settings, bounds=False).eliminated}
    return {r for g in groups if g[0] in out for r in g}


def replay_orders(store: Store, experiment: str, search: Mapping, orders: int = 200, seed: int = 0) -> dict:
    """The race replayed on a finished exhaustive experiment under ``orders`` random question orders.

    Reports the mean (and range of the) share of calls the race would have used, how often its
    winner is in the full grid's ties-with-best set (the report's paired tests with Holm, on all
    questions), and how often a configuration whose full-grid mean is within the margin of the
    best one was eliminated."""
    spec = store.experiment(experiment).get("spec") or {}
    metric = default_metric(search, bool((spec.get("grid") or {}).get("generation")))
    run_ids, matrix, values = stored_matrix(store, experiment, metric)
    groups = retrieval_groups(store, experiment, run_ids)
    settings, prune = search_settings(search, len(run_ids), len(groups), matrix.shape[1])
    prune_metric = (search.get("prune_retrieval") or {}).get("metric")
    frame = pd.DataFrame({"run_id": run_ids, metric: [float(np.nanmean(1 - r if lower_is_better(metric) else r)) for r in matrix]})
    best = best_first(frame, metric).iloc[0]["run_id"]
    ties = ties_with_best(values, best, metric)
    good = {best, *ties.loc[ties["tie"].astype(bool), "run_id"]}
    means = dict(zip(run_ids, np.nanmean(matrix, axis=1)))
    near = {r for r, m in means.items() if m >= means[best] - settings.margin - 1e-12}
    rng = np.random.default_rng(seed)
    shares, hits, near_out = [], 0, 0
    for _ in range(orders):
        perm = rng.permutation(matrix.shape[1])
        pruned = _pruned(values, groups, perm, prune_metric, prune) if prune_metric else set()
        keep = [i for i, r in enumerate(run_ids) if r not in pruned]
        result = replay_race(matrix[keep][:, perm], [run_ids[i] for i in keep], settings)
        shares.append(result.calls / matrix.size)
        hits += result.winner in good
        near_out += bool(near & (set(result.eliminated) | pruned))
    return {"experiment": experiment, "metric": metric, "prune_retrieval": search.get("prune_retrieval"), "orders": orders,
            "n_configs": len(run_ids), "n_questions": matrix.shape[1],
            "alpha": settings.alpha, "margin": settings.margin, "round": settings.round_size, "min_questions": settings.min_questions,
            "best": best, "ties_with_best": sorted(good - {best}), "within_margin_of_best": sorted(near),
            "mean_share_of_calls": float(np.mean(shares)), "min_share_of_calls": float(np.min(shares)),
            "max_share_of_calls": float(np.max(shares)), "winner_in_ties_with_best": hits / orders,
            "near_best_eliminated": near_out / orders}


# -- HTML --------------------------------------------------------------------------------------

def race_html(race: RaceReport | None) -> str:
    """The report's Race section: the rule, when and why each configuration left, what was saved,
    and each survivor's paired difference from the leader per round with its confidence bound."""
    if race is None:
        return ""
    s, m = race.settings, race.metric
    res = race.result
    pruned = any(e.get("stage") == "retrieval" for e in race.evidence.values())
    intro = (f"Configurations were raced on {label(m)} in rounds of {s.round_size} questions taken in a fixed, seeded order; after "
             f"each round (from question {s.min_questions} on) every configuration was compared with the leader on the same questions. "
             f"A configuration leaves once its paired difference from the leader is shown to be below -{s.margin:g} by a confidence "
             f"sequence (betting, Waudby-Smith & Ramdas 2024) at level {s.pair_alpha:.2g} per pair: {s.alpha:g} split over the "
             f"{s.n_configs * (s.n_configs - 1) // 2} pairs. This holds the chance of eliminating any configuration within "
             f"{s.margin:g} of the best at or below {s.alpha:g}, over all rounds (docs/metrics.md, 'Racing').")
    if pruned:
        intro += (f" Before it, a retrieval stage (no LLM call) ran every retrieval setting on every question and dropped those "
                  f"shown worse than the best retrieval by more than its own margin, with the other {s.alpha:g} of the experiment's "
                  f"alpha {2 * s.alpha:g}: the chance of dropping a retrieval setting within that margin of the best retrieval, or a "
                  f"configuration within {s.margin:g} of the best one left, stays at or below {2 * s.alpha:g} in all. That stage "
                  f"judges retrieval only: it assumes a setting whose chunks miss the "
                  f"evidence far more often does not answer better. A small LLM can break that (long contexts confuse it), so "
                  f"check it once on a sample: run the grid exhaustively and `workbench race replay` it.")
    stop = {"equivalence": "every remaining configuration was shown to be within the margin of the leader (a tie set)",
            "questions exhausted": "the questions ran out", "all eliminated": "every configuration violated a constraint",
            "stopped": "the budget ran out (run again to resume)"}.get(res.stop, res.stop)
    parts = ["<h2>Race</h2>", f"<p>{esc(intro)}</p>", f"<p>The race stopped because {esc(stop)}.</p>",
             _left_table(race), _saved_html(race), _rounds_chart(race)]
    return "".join(p for p in parts if p)


def _left_table(race: RaceReport) -> str:
    rows = []
    for run_id, e in race.evidence.items():
        if not e:
            continue
        name = race.labels.get(run_id, run_id)
        if e.get("survived"):
            why = "won the race" if e.get("winner") else "survived (ties with the leader within the data)"
            rows.append(f"<tr><td>{esc(name)}</td><td>-</td><td class='num'>{e.get('n_questions')}</td><td>{esc(why)}</td></tr>")
            continue
        if e.get("reason") == "constraint":
            why = f"violates {e.get('constraint')} with confidence (e-value {e.get('e_value', 0):.3g})"
        else:
            metric = e.get("constraint") if e.get("stage") == "retrieval" else race.metric
            stage = "retrieval stage: " if e.get("stage") == "retrieval" else ""
            bound = f", upper bound {e['upper']:+.3f}" if e.get("upper") is not None else ""
            why = f"{stage}{label(metric)} {e.get('diff', 0):+.3f} vs the leader{bound} < -{e.get('margin', race.settings.margin):g}"
        when = "before the race" if e.get("stage") == "retrieval" else str(e.get("round"))
        rows.append(f"<tr><td>{esc(name)}</td><td>{esc(when)}</td><td class='num'>{e.get('n_questions')}</td><td>{esc(why)}</td></tr>")
    head = "<thead><tr><th>configuration</th><th>left in round</th><th>questions evaluated</th><th>why</th></tr></thead>"
    return f"<h3>Who left, when and why</h3><table class='sortable'>{head}<tbody>{''.join(rows)}</tbody></table>"


def _saved_html(race: RaceReport) -> str:
    sv = race.saved
    if not sv.get("calls_full"):
        return ""
    facts = [f"{sv['calls_used']} of {sv['calls_full']} configuration-questions evaluated ({sv['share']:.0%} of the full grid)"]
    if sv.get("tokens_saved") is not None:
        facts.append(f"about {sv['tokens_saved']:,.0f} LLM tokens not spent")
    if sv.get("cost_usd_saved") is not None:
        facts.append(f"${sv['cost_usd_saved']:.4f} not spent")
    if sv.get("seconds_saved") is not None:
        facts.append(f"about {sv['seconds_saved']:,.0f} s of generation not spent")
    note = ("Savings are estimated from each configuration's own mean per evaluated question (for one dropped before any answer, "
            "from the others' mean). Eliminated configurations are not "
            "ranked in the leaderboard as if they had seen every question: their numbers are over the questions they saw.")
    return f"<h3>What the race saved</h3><p>{esc('; '.join(facts))}.</p><p class='muted'>{esc(note)}</p>"


def _rounds_chart(race: RaceReport) -> str:
    from matplotlib.figure import Figure

    from .charts import figure_html

    res = race.result
    if not res.rounds:
        return ""
    fig = Figure(figsize=(8, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for rnd in res.rounds:
        for b in rnd.bounds:
            series.setdefault(b.config, []).append((rnd.n_questions, b.diff, b.lower, b.upper))
    for run_id, pts in series.items():
        x = [p[0] for p in pts]
        line = ax.plot(x, [p[1] for p in pts], marker="o", ms=3, label=race.labels.get(run_id, run_id)[:40])[0]
        ax.fill_between(x, [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(), alpha=0.12)
    ax.axhline(-race.settings.margin, color="black", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("questions evaluated")
    ax.set_ylabel(f"{label(race.metric)}: difference from the leader")
    ax.legend(fontsize=7, loc="lower left")
    caption = (f"Each configuration's mean paired difference from the round's leader (line) and its confidence sequence (band); "
               f"a configuration leaves when its band falls below the dashed line at -{race.settings.margin:g}.")
    return "<h3>Rounds</h3>" + figure_html(fig, caption, "race rounds chart")


def race_section_html(data) -> str:
    """The Race section of a report (:class:`~workbench.report.data.ReportData`); empty for a grid."""
    if race_spec(data.spec) is None:
        return ""
    return race_html(load_race(Store(data.store_url), data.spec, data.board, data.values))
