"""The ipywidgets explorer behind ``notebooks/explore.ipynb``.

Pick an experiment and one run (or two to compare), filter the questions by outcome or text, and
read a question's gold answer, the answers side by side, the per-question metrics and the
retrieved chunks with their scores and the gold answer highlighted. "Try a query" sends a new
question through a stored run's configuration live, reusing the run's chunks, index and models
from the stage cache. Everything shown is HTML from :mod:`workbench.report.html` (escaped).
"""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import pandas as pd
import yaml

from .config import RunConfig, parse_experiment
from .data.types import Query
from .errors import StoreError, WorkbenchError
from .evaluation.registry import label, lower_is_better, primary_metric
from .hashing import sha256_text
from .notebooks import resolve_cache_dir, resolve_experiment
from .pipeline.components import Components
from .pipeline.plan import Plan, plan_experiment
from .pipeline.question import QuestionPath
from .report.data import enrich_board, question_rows, question_values, wins_losses
from .report.html import esc, question_detail_html
from .report.leaderboard import sort_board
from .settings import Workspace
from .store import Store

OUTCOME_MARKS = {"win": "▲", "loss": "▼", "tie": "=", "failed": "✗", "n/a": "·", "": "·"}


class LiveQuery:
    """Runs one new question through a stored run's configuration, on the runner's question path
    (retrieval, rerank, answer, scores), reusing the run's chunks, index and models from the stage
    cache. One set of components per experiment: models and the local LLM server start once."""

    def __init__(self, store: Store, cache_dir: Path):
        self.store, self.cache_dir = store, cache_dir
        self._components: dict[str, Components] = {}
        self._paths: dict[str, tuple[QuestionPath, bool]] = {}
        weakref.finalize(self, _close_all, self._components)

    def close(self) -> None:
        _close_all(self._components)
        self._paths.clear()

    def _plan(self, run: dict, experiment: str) -> Plan:
        """Re-plan the stored experiment (dataset, chunking tokenizer, prompts as they were)."""
        exp_row = self.store.experiment(experiment)
        exp_path = Path(exp_row.get("path") or ".")
        spec = json.loads(json.dumps(exp_row["spec"]))
        spec["dataset"] = (run["lineage"] or {}).get("dataset_path") or spec["dataset"]
        for entry in (spec["grid"].get("generation") or []) + (spec["grid"].get("rerank") or []):
            for key in ("prompt", "path"):  # relative to the experiment file, wherever the kernel runs
                if entry.get(key) and not Path(entry[key]).is_absolute():
                    entry[key] = str(exp_path.parent / entry[key])
        exp = parse_experiment(yaml.safe_dump(spec), exp_path)
        return plan_experiment(exp, Workspace.resolve(store=self.store.url, cache_dir=self.cache_dir))

    def _prepare(self, run_id: str, experiment: str) -> tuple[QuestionPath, bool]:
        """The run's question path, and whether its inputs are still those the run was stored with."""
        if run_id not in self._paths:
            run = self.store.run(run_id)
            plan = self._plan(run, experiment)
            config = RunConfig.model_validate(run["config"])
            planned = next((r for r in plan.runs if r.run_id == run_id), None) or next((r for r in plan.runs if r.config == config), None)
            if planned is None:
                raise StoreError(f"run {run_id} is no longer part of experiment {experiment!r} as its file now reads")
            if experiment not in self._components:
                self._components[experiment] = Components(plan, Workspace.resolve(store=self.store.url, cache_dir=self.cache_dir))
            self._paths[run_id] = (QuestionPath(planned, plan, self._components[experiment]), planned.run_id == run_id)
        return self._paths[run_id]

    def ask(self, run_id: str, experiment: str, text: str) -> dict:
        """A stored-row-shaped dict (question, hits, answer, error, latencies, metrics) for ``text``."""
        path, same_inputs = self._prepare(run_id, experiment)
        row = path.ask(-1, Query("live:" + sha256_text(text)[:12], text))
        return {**row, "same_inputs": same_inputs}


def _close_all(components: dict) -> None:
    for c in components.values():
        c.close()
    components.clear()


class Explorer:
    """Browse an experiment's stored questions; compare two runs; try new questions live."""

    def __init__(self, store_url: str, experiment: str = "", *, run_a: str = "", run_b: str = "", cache_dir: str = ""):
        self.store = Store(store_url)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self._live: LiveQuery | None = None
        self._ui = None
        self.load(resolve_experiment(self.store, experiment), run_a, run_b)

    # -- data ------------------------------------------------------------------------------------
    def load(self, experiment: str, run_a: str = "", run_b: str = "") -> None:
        self.experiment = experiment
        board = sort_board(self.store.leaderboard(experiment))
        if board.empty:
            raise StoreError(f"experiment {experiment!r} has no runs")
        self.metric = primary_metric(board)
        self.values = {r: question_values(self.store, r) for r in board["run_id"]}
        self.board = enrich_board(board, self.values)
        ids = self.board["run_id"].tolist()
        self.run_a = self.store.run(run_a)["run_id"] if run_a else ids[0]
        self.run_b = self.store.run(run_b)["run_id"] if run_b else next((r for r in ids if r != self.run_a), None)
        for r in (self.run_a, self.run_b):
            if r is not None and r not in self.values:
                raise StoreError(f"run {r} is not part of experiment {experiment!r}")

    def run_name(self, run_id: str) -> str:
        r = self.board[self.board["run_id"] == run_id].iloc[0]
        value = r[self.metric]
        score = f", {label(self.metric)} {value:.3f}" if pd.notna(value) else ""
        return f"#{r['rank']} {r['label']} ({run_id[:8]}{score})"

    def questions(self) -> pd.DataFrame:
        """One row per question of run A: its metric, run B's, and B's outcome against A."""
        if self.run_b is None:
            v = self.values[self.run_a]
            return pd.DataFrame({"query_id": v["query_id"], "question": v["question"], "baseline": v.get(self.metric),
                                 "candidate": None, "change": None, "outcome": ["failed" if isinstance(e, str) else "" for e in v["error"]]})
        return wins_losses(self.values[self.run_a], self.values[self.run_b], self.metric)

    def question_html(self, query_id: str) -> str:
        """The question for run A (and B) side by side, with every per-question metric."""
        runs = [r for r in (self.run_a, self.run_b) if r]
        rows = {r: question_rows(self.store, r, [query_id]).get(query_id) for r in runs}
        metrics = [c for c in self.values[self.run_a].columns if c not in ("run_id", "query_id", "position", "question", "error", "trace")]
        table = "".join(f"<tr><th>{esc(label(m))}</th>" + "".join(f"<td>{esc(_fmt(rows[r].get(m)) if rows[r] else '-')}</td>" for r in runs) + "</tr>"
                        for m in metrics if any(rows[r] and rows[r].get(m) is not None for r in runs))
        head = "".join(f"<th>{esc(self.run_name(r))}</th>" for r in runs)
        detail = question_detail_html([(self.run_name(r), rows[r]) for r in runs], self.metric, is_open=True, max_passages=10)
        return detail + f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{table}</tbody></table>"

    def try_query(self, text: str, run_id: str | None = None) -> dict:
        if not text.strip():
            raise WorkbenchError("type a question first")
        if self._live is None:
            self._live = LiveQuery(self.store, self.cache_dir)
        return self._live.ask(run_id or self.run_a, self.experiment, text)

    def try_query_html(self, text: str, run_id: str | None = None) -> str:
        run_id = run_id or self.run_a
        row = self.try_query(text, run_id)
        generation = f", generation {row['generation_latency_s']:.3f}s" if row["generation_latency_s"] else ""
        lat = f"retrieval {row['retrieval_latency_s']:.3f}s{generation}"
        note = "" if row["same_inputs"] else " (inputs changed since the run was stored: dataset, model or code differ)"
        return (f'<p class="muted">{esc(self.run_name(run_id))}: {esc(lat)}{esc(note)}</p>'
                + question_detail_html([(self.run_name(run_id), row)], self.metric, is_open=True, max_passages=10))

    def show_query(self, text: str, run_id: str | None = None) -> None:
        from IPython.display import HTML, display

        display(HTML(self.try_query_html(text, run_id)))

    def close(self) -> None:
        if self._live is not None:
            self._live.close()

    # -- widgets ---------------------------------------------------------------------------------
    def widget(self):
        """Experiment / run pickers, an outcome filter and search, the question list and its details."""
        import ipywidgets as w

        exp = w.Dropdown(options=self.store.experiment_names(), value=self.experiment, description="experiment")
        run_a = w.Dropdown(description="run A", layout=w.Layout(width="95%"))
        run_b = w.Dropdown(description="run B", layout=w.Layout(width="95%"))
        outcome = w.ToggleButtons(options=[("all", "all"), ("B better", "win"), ("A better", "loss"), ("same", "tie"), ("failed", "failed")],
                                  value="all", description="show")
        search = w.Text(placeholder="filter questions by text", description="search")
        listing = w.Select(rows=12, layout=w.Layout(width="95%"), description="question")
        detail = w.HTML()
        status = w.HTML()

        def fill_runs():
            opts = [(self.run_name(r), r) for r in self.board["run_id"]]
            run_a.options, run_b.options = opts, [("(none)", "")] + opts
            run_a.value, run_b.value = self.run_a, self.run_b or ""

        def fill_questions(*_):
            table = self.questions()
            if outcome.value != "all":
                table = table[table["outcome"] == outcome.value]
            if search.value.strip():
                table = table[table["question"].str.contains(search.value.strip(), case=False, regex=False)]
            listing.options = [(f"{OUTCOME_MARKS.get(o, '·')} {str(q)[:110]}", qid)
                               for qid, q, o in zip(table["query_id"], table["question"], table["outcome"])]
            status.value = f"<span>{len(table)} questions · ▲ run B better, ▼ run A better on {esc(label(self.metric))}" \
                           f"{' (lower is better)' if lower_is_better(self.metric) else ''}</span>"

        def on_experiment(change):
            try:
                self.load(change["new"])
            except WorkbenchError as exc:
                status.value = f'<span class="error">{esc(exc)}</span>'
                return
            fill_runs()
            fill_questions()

        def on_runs(_):
            if run_a.value:
                self.run_a, self.run_b = run_a.value, (run_b.value or None)
                if self.run_b == self.run_a:
                    self.run_b = None
                fill_questions()

        def on_question(change):
            detail.value = self.question_html(change["new"]) if change["new"] else ""

        fill_runs()
        fill_questions()
        exp.observe(on_experiment, names="value")
        run_a.observe(on_runs, names="value")
        run_b.observe(on_runs, names="value")
        outcome.observe(fill_questions, names="value")
        search.observe(fill_questions, names="value")
        listing.observe(on_question, names="value")
        if listing.options:
            listing.value = listing.options[0][1]
            detail.value = self.question_html(listing.value)
        self._ui = w.VBox([exp, run_a, run_b, outcome, search, status, listing, detail])
        return self._ui

    def try_query_widget(self):
        """A question box, a configuration picker and a button that runs the question live."""
        import ipywidgets as w

        box = w.Textarea(placeholder="Ask a question…", layout=w.Layout(width="95%", height="4em"))
        config = w.Dropdown(options=[(self.run_name(r), r) for r in self.board["run_id"]], value=self.run_a,
                            description="config", layout=w.Layout(width="95%"))
        button = w.Button(description="Run", button_style="primary")
        result = w.HTML()

        def run(_):
            result.value = "<i>running…</i>"
            try:
                result.value = self.try_query_html(box.value, config.value)
            except WorkbenchError as exc:
                result.value = f'<p class="error">{esc(exc)}</p>'

        button.on_click(run)
        return w.VBox([box, config, button, result])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


__all__ = ["Explorer", "LiveQuery"]
