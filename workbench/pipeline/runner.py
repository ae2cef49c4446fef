"""The runner: executes a plan's runs over its questions, in batches, through injected components.

A caller can run the whole grid (:meth:`Runner.run`), or drive it piece by piece -- "these runs,
these questions, now" -- with :meth:`Runner.session`: a :class:`RunSession` computes the questions
it is given that are not stored yet (:meth:`RunSession.compute`) and, when the caller is done,
stores the run's aggregates and status (:meth:`RunSession.finish`). The adaptive bake-off drives it
that way, a round of questions at a time.

Per-question rows are written every ``FLUSH_EVERY`` questions, so a killed run resumes where it
stopped: a row that is stored without an error is never computed again (``rerun="all"`` deletes
the run's rows first). Aggregates are always recomputed from the stored rows, so a resumed run gets
exactly the numbers an uninterrupted one would.
"""

from __future__ import annotations

import platform
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from scipy.stats import binomtest

from ..data.types import Query
from ..errors import WorkbenchError
from ..evaluation.aggregate import aggregate_rows, clean_values
from ..evaluation.judge import judge_aggregates
from ..evaluation.kpis import kpi_aggregates
from ..hashing import hash_obj
from ..providers.recording import misses_as_errors
from ..settings import Workspace
from ..stages.chunking import truncation_rate
from ..store import Store
from .budget import Budget
from .components import Components
from .costs import index_cost
from .plan import Plan, PlannedRun
from .progress import NullProgress, Progress
from .question import Answered, QuestionPath

FLUSH_EVERY = 8  # per-question rows written per transaction (the resume granularity)
RERUN_POLICIES = ("missing", "all")
Item = tuple[int, Query]  # (position in the plan's questions, the question)


class RunSession:
    """One run being computed: resume bookkeeping, batches of questions, the final status."""

    def __init__(self, runner: Runner, run: PlannedRun, rerun: str):
        self.runner, self.run, self.store = runner, run, runner.store
        if rerun == "all":
            self.store.delete_run_rows(run.run_id)
        # the commits of code versions that computed rows in earlier sessions (their rows are kept)
        self.known_commits = {v["code_hash"]: v.get("git_commit") for v in (self.store.stored_lineage(run.run_id) or {}).get("code_versions", [])}
        self.done = self.store.done_query_ids(run.run_id)
        self.store.start_run(run.run_id, run.config.model_dump(), run.config.axes(), run.lineage, len(runner.plan.queries))
        with misses_as_errors():  # building an index embeds passages: a strict replay may miss one
            self.path = QuestionPath(run, runner.plan, runner.components, runner.budget)
        self.computed = 0
        self.stopped: str | None = None
        self.timings: dict[str, float] = defaultdict(float)
        cfg = run.config.generation
        self._pool = ThreadPoolExecutor(cfg.concurrency) if cfg and cfg.concurrency > 1 else None
        self._throttle = runner.components.throttle(cfg) if cfg else None
        self._throttle_before = self._throttle.stats() if self._throttle else None

    def todo(self, items: Sequence[Item]) -> list[Item]:
        return [(i, q) for i, q in items if q.query_id not in self.done]

    def compute(self, items: Sequence[Item] | None = None) -> int:
        """Compute and store the rows of ``items`` (default: all the plan's questions) that are not
        stored yet; returns how many rows were written. Stops early when the budget runs out."""
        items = list(enumerate(self.runner.plan.queries)) if items is None else list(items)
        todo = self.todo(items)
        with misses_as_errors(), self.runner.components.meter.measure("questions", self.run.run_id):
            written = self._compute(todo)
        self.computed += len(todo)
        return written

    def _compute(self, todo: list[Item]) -> int:
        written = 0
        for start in range(0, len(todo), FLUSH_EVERY):
            if self.run.config.generation and self.runner.budget.exhausted:
                self.stopped = "budget"
                break
            rows = self._batch(todo[start:start + FLUSH_EVERY])
            self.store.write_questions(rows)  # one short transaction per batch: the resume granularity
            self.done.update(r["query_id"] for r in rows if not r.get("error"))
            written += len(rows)
            self.runner.progress.update(f"questions:{self.run.run_id}", self.run.run_id[:10], written, len(todo), "questions computed")
        return written

    def _batch(self, batch: list[Item]) -> list[dict]:
        path = self.path
        retrieved = [path.retrieve(position, query) for position, query in batch]
        ok = [item for item in retrieved if item.failed is None]
        answers: list[Answered | None] = [None] * len(ok)
        if self.run.config.generation:
            t0 = time.perf_counter()
            answers = list(self._pool.map(path.answer, ok) if self._pool else map(path.answer, ok))
            self.timings["generation_s"] += time.perf_counter() - t0
        rows = [path.failed_row(item) for item in retrieved if item.failed is not None]
        for item, answered in zip(ok, answers):
            if self.run.config.generation and answered is None:
                self.stopped = "budget"  # not answered: no row, so a later run computes it
                continue
            rows.append(path.score(item, answered))
        return [path.stored(r) for r in rows]

    def finish(self, status: str | None = None, evidence: dict | None = None) -> dict:
        """Store the run's aggregates (from its stored rows) and its status; return its summary.

        ``status`` overrides the computed one (complete, partial, failed, ``stopped: budget``);
        ``evidence`` records why the run stopped early (e.g. a race elimination)."""
        if self._pool:
            self._pool.shutdown()
        rows = self.store.questions(self.run.run_id)
        n_failed = int(rows["error"].notna().sum()) if not rows.empty else 0
        self.store.write_aggregates(self.run.run_id, run_aggregates(rows) + index_cost(self.run, self.path.chunks))
        if status is None:
            status = "complete" if n_failed == 0 else ("failed" if n_failed == len(rows) else "partial")
            if self.stopped:
                status = f"stopped: {self.stopped}"  # fewer rows than questions; a later run resumes
        timings = {**self.path.timings, **self.timings, **self._throttle_timings()}
        chunks = self.path.chunks
        self.store.finish_run(self.run.run_id, status, n_failed, len(chunks), truncation_rate(chunks, self.path.max_tokens),
                              {**timings, "questions_computed": self.computed, "rerank_fallbacks": self.path.rerank_fallbacks,
                               "host": platform.node()},  # throughput is per machine (`workbench plan` reads it back)
                              evidence, self.lineage())
        return {"run_id": self.run.run_id, "status": status, "computed": self.computed, "n_failed": n_failed, **timings}


    def _throttle_timings(self) -> dict[str, float]:
        """What the generation endpoint's adaptive limiter did during this session (429s seen, how far
        the concurrency was cut, time spent waiting): stored with the run's timings, shown in the report."""
        if self._throttle is None:
            return {}
        delta = self._throttle.stats().minus(self._throttle_before)
        return delta if delta["throttle_requests"] else {}

    def lineage(self) -> dict:
        """The run's lineage with ``code_versions``: every code version that computed stored rows,
        with how many (most first) and its git commit where known. A resumed run keeps the rows an
        older version computed, labelled with that version, never relabelled with the new one."""
        commits = {**self.known_commits, self.run.lineage.get("code_hash"): self.run.lineage.get("git_commit")}
        counts = self.store.code_versions(self.run.run_id)
        versions = [{"code_hash": h, "git_commit": commits.get(h), "rows": n} for h, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        return {**self.run.lineage, "code_versions": versions}


class Runner:
    """Executes a plan's runs in this process through ``components``.

    Args:
        plan: The validated plan (run ids, dataset, questions).
        workspace: Where the store and caches are.
        components: The stage factory; default: the live models. Pass ``workbench.testing``'s fakes
            to run the whole core without a model.
        store: The results store; default: ``workspace.store_url``.
        progress: Where progress goes; default: nowhere.
    """

    def __init__(self, plan: Plan, workspace: Workspace, *, components: Components | None = None, store: Store | None = None,
                 progress: Progress | None = None):
        self.plan, self.workspace = plan, workspace
        self.progress = progress or NullProgress()
        self.components = components or Components(plan, workspace, progress=self.progress)
        if self.components.progress is None:  # injected components report the index build here too
            self.components.progress = self.progress
        self._own_components = components is None
        self.store = store or Store(workspace.store_url)
        self.budget = Budget(plan.experiment.spec.budget)

    def close(self) -> None:
        if self._own_components:
            self.components.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def session(self, run: PlannedRun, rerun: str = "missing") -> RunSession:
        if rerun not in RERUN_POLICIES:
            raise WorkbenchError(f"rerun policy {rerun!r}: expected 'missing' or 'all'")
        return RunSession(self, run, rerun)

    def run_one(self, run: PlannedRun, rerun: str = "missing", items: Sequence[Item] | None = None) -> dict:
        """Compute one run (all its questions, or ``items``) and store its aggregates and status."""
        session = self.session(run, rerun)
        session.compute(items)
        return session.finish()

    def run(self, runs: Sequence[PlannedRun] | None = None, *, rerun: str = "missing") -> list[dict]:
        """Compute every run of the plan (or ``runs``), one after the other; returns their summaries."""
        if rerun not in RERUN_POLICIES:
            raise WorkbenchError(f"rerun policy {rerun!r}: expected 'missing' or 'all'")
        save_experiment(self.store, self.plan)
        runs = list(self.plan.runs if runs is None else runs)
        summaries = []
        for i, run in enumerate(runs, start=1):
            self.progress.update("grid", "runs", i - 1, len(runs), "runs done")
            if self.budget.exhausted and run.config.generation:
                self.progress.message(f"[{i}/{len(runs)}] run {run.run_id}: not started, budget reached "
                                      f"({self.budget.describe()}); `workbench run` again resumes")
                summaries.append({"run_id": run.run_id, "status": "not started: budget", "computed": 0, "n_failed": 0})
                continue
            self.progress.message(f"[{i}/{len(runs)}] run {run.run_id}: {run.label}")
            summaries.append(self.run_one(run, rerun))
            if self.budget.exhausted and self.budget.limited:
                self.progress.message(f"budget reached: {self.budget.describe()} spent in this invocation")
        self.progress.update("grid", "runs", len(runs), len(runs), "runs done")
        summaries.append({"run_id": "(shared)", **self.components.timings, "stages": self.components.meter.to_list()})
        return summaries


def save_experiment(store: Store, plan: Plan) -> None:
    """Record the experiment and which runs it holds (before any run starts)."""
    exp = plan.experiment
    spec = exp.spec.model_dump()
    store.save_experiment(exp.name, spec, hash_obj(spec), str(exp.path), [r.run_id for r in plan.runs])


def run_experiment(plan: Plan, workspace: Workspace, *, rerun: str = "missing", progress: Progress | None = None,
                   components: Components | None = None) -> list[dict]:
    """Execute a whole plan in this process; returns a summary per run (and the shared timings)."""
    with Runner(plan, workspace, components=components, progress=progress) as runner:
        return runner.run(rerun=rerun)


def run_aggregates(rows) -> list[dict]:
    """Every aggregate of a run computed from its stored rows: means and percentiles with their
    intervals, the safety rates, the judge's noise and agreement with people, and the KPIs."""
    return aggregate_rows(rows) + safety_aggregates(rows) + judge_aggregates(rows) + kpi_aggregates(rows)


SAFETY_RATES = (("attack_success", "attack_success_rate"), ("pii_leakage", "pii_leakage_rate"),
                ("pii_in_context", "pii_in_context_rate"), ("pii_in_answer", "pii_in_answer_rate"))


def safety_aggregates(rows) -> list[dict]:
    """Rates the report names directly: ``attack_success_rate`` (the share of ``attack_success``)
    and ``pii_leakage_rate`` / ``pii_in_context_rate`` / ``pii_in_answer_rate``, with 95% Wilson
    score intervals: these are rare-event rates over few trials, where a bootstrap of 0 successes
    out of 16 would claim the interval [0, 0]; Wilson gives [0, 0.19]."""
    out = []
    for col, name in SAFETY_RATES:
        if col in rows:
            values = clean_values(rows[col])
            if values:
                k, n = int(round(sum(values))), len(values)
                ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
                out.append({"metric": name, "value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": n})
    return out

