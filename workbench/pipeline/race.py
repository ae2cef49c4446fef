"""The adaptive bake-off: race the configurations round by round and stop the clear losers early.

The statistics are :mod:`workbench.evaluation.sequential` (pure); this module only drives the run
core with them: one :class:`~workbench.pipeline.runner.RunSession` per configuration, fed the next
``round`` questions of a seeded order, and the race's decisions read back from the *stored* rows.
So the race's eliminations are a deterministic function of the stored rows and the seeded order:
a race killed at any point and started again (``workbench run``) replays the same decisions over
the rows it already has, computes only what is missing, and ends with the same rows and the same
eliminations as an uninterrupted race. ``rerun="all"`` deletes the runs' rows first.

Run statuses: ``eliminated`` (with the round, the difference from the leader, its confidence bound
and the questions used in ``runs.evidence``), ``stopped: tie`` (every survivor shown within the
margin of the leader: the race stopped early), ``complete`` (ran to the last question), and
``stopped: budget`` when the experiment's budget ran out (the next ``workbench run`` resumes).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..evaluation.sequential import Elimination, RaceResult, decide_round, question_order, race_arrays, run_race
from ..settings import Workspace
from .components import Components
from .plan import Plan, PlannedRun, retrieval_twin
from .progress import NullProgress, Progress
from .runner import Item, Runner, RunSession, save_experiment
from .search import Search, resolve_search


def stage_order(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """Runs grouped by what they share (chunk set, then embedder, retriever, reranker), so a round
    builds each chunk set and index once and keeps one retriever in use at a time."""
    def key(run: PlannedRun):
        c = run.config
        return (c.chunking.model_dump_json(), run.tokenizer, c.embedding.model_dump_json() if c.embedding else "",
                c.retrieval.model_dump_json(), c.rerank.model_dump_json() if c.rerank else "")
    return sorted(runs, key=key)


def score_arrays(values: pd.DataFrame, order: Sequence[int], search: Search, metric: str | None = None,
                 lower_is_better: bool | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A run's oriented scores and constraint columns in the race's order (:func:`race_arrays`)."""
    flip = search.lower_is_better if lower_is_better is None else lower_is_better
    return race_arrays(values, order, metric or search.metric, flip, [c.column for c in search.settings.constraints])


class Race:
    """One race through a runner: sessions per configuration, rounds, and the final statuses."""

    def __init__(self, runner: Runner, search: Search, rerun: str = "missing"):
        self.runner, self.search, self.rerun = runner, search, rerun
        self.plan, self.store, self.progress = runner.plan, runner.store, runner.progress
        self.order = question_order(len(self.plan.queries), search.seed)
        self.runs = {r.run_id: r for r in stage_order(self.plan.runs)}
        self.sessions: dict[str, RunSession] = {}
        self.summaries: dict[str, dict] = {}

    def session(self, run_id: str) -> RunSession:
        if run_id not in self.sessions:
            self.sessions[run_id] = self.runner.session(self.runs[run_id], self.rerun)
        return self.sessions[run_id]

    def items(self, start: int, end: int) -> list[Item]:
        return [(p, self.plan.queries[p]) for p in self.order[start:end]]

    # -- the race ----------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        pruned = self.prune() if self.search.prune_metric else {}
        for run_id in self.runs:  # every run exists in the store from the start (status running)
            self.session(run_id)
        for run_id, elim in pruned.items():
            self.summaries[run_id] = self.session(run_id).finish("eliminated", self.evidence(elim, stage="retrieval"))
        contenders = [r for r in self.runs if r not in pruned]
        self.progress.message(f"race: {len(contenders)} configurations on {self.search.metric}, rounds of {self.search.settings.round_size} "
                              f"questions, margin {self.search.settings.margin}, alpha {self.search.settings.alpha}"
                              + (f" ({len(pruned)} eliminated on retrieval first)" if pruned else ""))
        result = run_race(contenders, len(self.order), self.search.settings, self.fetch)
        self.close(result)
        return [self.summaries[r] for r in self.runs] + [{"run_id": "(shared)", **self.runner.components.timings}]

    def fetch(self, survivors: list[str], start: int, end: int):
        items = self.items(start, end)
        for run_id in survivors:
            session = self.session(run_id)
            session.compute(items)
            if session.stopped:
                return None
        scores, extra = {}, {}
        for run_id in survivors:
            scores[run_id], extra[run_id] = score_arrays(self.store.question_values(run_id), self.order[:end], self.search)
        self.note_round(survivors, end, scores)
        return scores, extra

    def note_round(self, survivors: list[str], end: int, scores: dict[str, np.ndarray]) -> None:
        means = {r: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for r, v in scores.items()}
        best = max(means, key=lambda r: (np.nan_to_num(means[r], nan=-1.0), r))
        self.progress.message(f"race: {end}/{len(self.order)} questions, {len(survivors)} configurations left; leader "
                              f"{best[:10]} ({self.search.metric} {means[best]:.3f})")

    def close(self, result: RaceResult) -> None:
        for run_id, elim in result.eliminated.items():
            self.summaries[run_id] = self.session(run_id).finish("eliminated", self.evidence(elim))
            self.progress.message(f"race: eliminated {run_id[:10]} {self.runs[run_id].label} ({describe(elim, self.search.metric)})")
        for run_id in result.survivors:
            status = {"equivalence": "stopped: tie", "stopped": "stopped: budget"}.get(result.stop)
            outcome = {"survived": True, "stop": result.stop, "winner": run_id == result.winner, "rounds": len(result.rounds),
                       "n_questions": result.evaluated.get(run_id, 0)}
            self.summaries[run_id] = self.session(run_id).finish(status, {"race": {**self.common(), **outcome}})
        self.progress.message(f"race: {result.stop}; {len(result.survivors)} left of {len(result.configs)}, "
                              f"{result.calls} of {len(result.configs) * len(self.order)} configuration-questions evaluated")

    def common(self) -> dict:
        s = self.search
        return {"metric": s.metric, "margin": s.settings.margin, "alpha": s.settings.alpha, "pair_alpha": s.settings.pair_alpha,
                "n_configs": s.settings.n_configs, "seed": s.seed, "round_size": s.settings.round_size}

    def evidence(self, elim: Elimination, stage: str = "race") -> dict:
        common = self.common()
        if stage == "retrieval":  # the retrieval stage's own margin, level and number of settings
            p = self.search.prune_settings
            common.update(margin=p.margin, pair_alpha=p.pair_alpha, n_configs=p.n_configs, metric=self.search.prune_metric)
        return {"race": {**common, "stage": stage, **elim.to_dict()}}

    # -- staged pruning on retrieval ---------------------------------------------------------------
    def prune(self) -> dict[str, Elimination]:
        """Retrieval (no LLM) for every distinct retrieval setting on every question, then one
        decision with the confidence sequences: settings worse than the best retrieval by more than
        the margin are eliminated, with every configuration that uses them."""
        twins: dict[str, PlannedRun] = {}
        uses: dict[str, list[str]] = {}
        for run_id, run in self.runs.items():
            twin = retrieval_twin(run)
            twins.setdefault(twin.run_id, twin)
            uses.setdefault(twin.run_id, []).append(run_id)
        items = self.items(0, len(self.order))
        scores = {}
        for twin_id, twin in twins.items():
            session = self.runner.session(twin, self.rerun)
            session.compute(items)
            session.finish()
            scores[twin_id], _ = score_arrays(self.store.question_values(twin_id), self.order, self.search, self.search.prune_metric,
                                              self.search.prune_lower_is_better)
        decided = decide_round(0, scores, self.search.prune_settings)
        out = {}
        for e in decided.eliminated:
            for run_id in uses[e.config]:
                out[run_id] = Elimination(run_id, 0, e.n_questions, "retrieval", e.leader, e.diff, e.upper,
                                          constraint=self.search.prune_metric)
        self.progress.message(f"race: retrieval stage on {self.search.prune_metric}: {len(decided.eliminated)} of {len(twins)} "
                              f"retrieval settings eliminated ({len(out)} configurations)")
        return out


def describe(elim: Elimination, metric: str) -> str:
    """One line: why a configuration left the race."""
    if elim.reason == "constraint":
        return f"violates {elim.constraint} with confidence after {elim.n_questions} questions (e-value {elim.e_value:.3g})"
    what = elim.constraint if elim.reason == "retrieval" else metric
    return (f"{what} worse than the leader by {-elim.diff:.3f}, upper confidence bound {elim.upper:+.3f}, "
            f"after {elim.n_questions} questions")


def race_experiment(plan: Plan, workspace: Workspace, *, rerun: str = "missing", progress: Progress | None = None,
                    components: Components | None = None) -> list[dict]:
    """Execute a plan whose experiment says ``search: {strategy: race}`` in this process."""
    search = resolve_search(plan.experiment, len(plan.queries), [r.config for r in plan.runs])
    with Runner(plan, workspace, components=components, progress=progress or NullProgress()) as runner:
        save_experiment(runner.store, plan)
        return Race(runner, search, rerun).run()
