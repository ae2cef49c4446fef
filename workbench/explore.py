"""The ipywidgets explorer behind ``notebooks/explore.ipynb``.

Pick an experiment (any of the store's: the dropdown lists them all) and one run, or two to
compare side by side; filter the questions by outcome or text; read a question's gold answer, both
runs' answers, their per-question metrics and their retrieved chunks (collapsible, with scores and
the gold answer highlighted). "Try a query" sends a new question through a stored run's
configuration live, reusing the run's chunks, index and models from the stage cache.

Switching the experiment loads it first and only then re-fills both run pickers and the question
list, with the pickers' own handlers held off until all three agree, so run A and run B always
belong to the shown experiment. An error (a run without rows, a live query that fails) is shown in
the widget, in one line, and leaves the previous state in place.

The local LLM server a live query needs is started once per kernel and reused by every explorer
and experiment in it (:func:`kernel_servers`); it stops when the kernel shuts down. Everything shown
is HTML from :mod:`workbench.report.html` (escaped), styled by :mod:`workbench.report.style`.
"""

from __future__ import annotations

import atexit
import json
import logging
from pathlib import Path

import pandas as pd
import yaml

from .config import RunConfig, parse_experiment
from .data.types import Query
from .errors import StoreError, WorkbenchError
from .evaluation.registry import label, lower_is_better
from .hashing import sha256_text
from .notebooks import resolve_cache_dir
from .pipeline.components import Components
from .pipeline.plan import Plan, plan_experiment
from .pipeline.question import QuestionPath
from .providers.llm_server import ServerPool
from .report.board import header, short_labels, value_text
from .report.data import enrich_board, primary_metric_or_none, question_rows, question_values, wins_losses
from .report.html import esc, question_detail_html
from .report.leaderboard import sort_board
from .report.style import style_tag, wrap
from .settings import Workspace, env, redact_url
from .store import Store

OUTCOME_MARKS = {"win": "▲", "loss": "▼", "tie": "=", "failed": "✗", "n/a": "·", "": "·"}
NEEDS_KERNEL = ("This is an interactive explorer: its widgets need a running Python kernel (open notebooks/explore.ipynb in "
                "JupyterLab, `make lab`). An HTML export cannot run them; it shows this note and a static leaderboard instead.")
log = logging.getLogger(__name__)

# -- one LLM server per kernel -----------------------------------------------------------------

_KERNEL: dict[str, object] = {}  # this process's server pool and live-query engines, made on first use


def kernel_servers() -> ServerPool:
    """The kernel's local LLM servers: started on a first live query, reused by every explorer
    and experiment after it (a "Run All" included), stopped when the kernel shuts down."""
    if "servers" not in _KERNEL:
        _KERNEL["servers"] = ServerPool()
        _KERNEL["live"] = {}
        atexit.register(shutdown)
    return _KERNEL["servers"]


def shutdown() -> None:
    """Close every live-query engine and stop the kernel's LLM servers (run at kernel shutdown)."""
    for live in _KERNEL.pop("live", {}).values():
        live.close()
    servers = _KERNEL.pop("servers", None)
    if servers is not None:
        servers.close()


def live_query(store: Store, cache_dir: Path) -> LiveQuery:
    """The kernel's live-query engine for this store and cache (one, however often it is asked for)."""
    servers = kernel_servers()
    key = f"{store.url}|{cache_dir}"
    if key not in _KERNEL["live"]:
        _KERNEL["live"][key] = LiveQuery(store, cache_dir, servers=servers)
    return _KERNEL["live"][key]


class LiveQuery:
    """Runs one new question through a stored run's configuration, on the runner's question path
    (retrieval, rerank, answer, scores), reusing the run's chunks, index and models from the stage
    cache. One set of components per experiment; LLM servers come from ``servers`` (shared)."""

    def __init__(self, store: Store, cache_dir: Path, servers: ServerPool | None = None):
        self.store, self.cache_dir, self.servers = store, cache_dir, servers
        self._components: dict[str, Components] = {}
        self._paths: dict[str, tuple[QuestionPath, bool]] = {}

    def close(self) -> None:
        for c in self._components.values():
            c.close()
        self._components.clear()
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
                ws = Workspace.resolve(store=self.store.url, cache_dir=self.cache_dir)
                self._components[experiment] = Components(plan, ws, servers=self.servers)
            self._paths[run_id] = (QuestionPath(planned, plan, self._components[experiment]), planned.run_id == run_id)
        return self._paths[run_id]

    def ask(self, run_id: str, experiment: str, text: str) -> dict:
        """A stored-row-shaped dict (question, hits, answer, error, latencies, metrics) for ``text``."""
        path, same_inputs = self._prepare(run_id, experiment)
        row = path.ask(-1, Query("live:" + sha256_text(text)[:12], text))
        return {**row, "same_inputs": same_inputs}


def default_experiment(store: Store) -> str | None:
    """``$WORKBENCH_EXPERIMENT``, else the experiment with runs stored most recently (by its stored
    time; ties by name), else None when no experiment has runs."""
    named = env("WORKBENCH_EXPERIMENT")
    if named:
        return named
    found = store.experiments()
    names = [] if found.empty else found.sort_values(["updated_at", "name"], ascending=[False, True])["name"].tolist()
    return next((str(n) for n in names if store.run_ids(n)), None)


class Explorer:
    """Browse an experiment's stored questions; compare two runs; try new questions live.

    ``experiment`` empty: ``$WORKBENCH_EXPERIMENT``, else the most recently stored one; the widget
    switches between all of the store's experiments. Displayed in a notebook, an explorer is its
    widget (with a static leaderboard as the stand-in an HTML export shows).
    """

    def __init__(self, store_url: str, experiment: str = "", *, run_a: str = "", run_b: str = "", cache_dir: str = ""):
        self.store = Store(store_url)
        self.cache_dir = resolve_cache_dir(cache_dir)
        self.experiment: str | None = None
        self.board = pd.DataFrame()
        self.values: dict[str, pd.DataFrame] = {}
        self.metric, self.run_a, self.run_b = "", "", None
        self.listeners: list = []  # called after an experiment is loaded (the live-query box refreshes its runs)
        self._ui = None
        name = experiment or default_experiment(self.store)
        if name is not None:
            self.load(name, run_a, run_b)

    # -- data ------------------------------------------------------------------------------------
    def load(self, experiment: str, run_a: str = "", run_b: str = "") -> None:
        """Show ``experiment``: everything is read first and assigned only when all of it worked,
        so a failure leaves the explorer as it was."""
        board = self.store.leaderboard(experiment)
        if board.empty:
            raise StoreError(f"experiment {experiment!r} has no runs yet")
        metric = primary_metric_or_none(board)
        if metric is None:
            raise StoreError(f"experiment {experiment!r}: no run has a quality metric yet (are its runs finished?)")
        board = sort_board(board)
        values = {r: question_values(self.store, r) for r in board["run_id"]}
        board = enrich_board(board, values)
        board["label"] = short_labels(board)
        ids = board["run_id"].tolist()
        a = self.store.run(run_a)["run_id"] if run_a else ids[0]
        b = self.store.run(run_b)["run_id"] if run_b else next((r for r in ids if r != a), None)
        for r in (a, b):
            if r is not None and r not in values:
                raise StoreError(f"run {r} is not part of experiment {experiment!r}")
        self.experiment, self.metric, self.values, self.board, self.run_a, self.run_b = experiment, metric, values, board, a, b
        for listener in self.listeners:
            listener()

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
        """The question for run A and run B side by side (collapsible passages), with every per-question metric."""
        runs = [r for r in (self.run_a, self.run_b) if r]
        rows = {r: question_rows(self.store, r, [query_id]).get(query_id) for r in runs}
        metrics = [c for c in self.values[self.run_a].columns if c not in ("run_id", "query_id", "position", "question", "error", "trace")]
        table = "".join(f"<tr><th>{esc(label(m))}</th>" + "".join(f"<td>{esc(_fmt(rows[r].get(m)) if rows[r] else '-')}</td>" for r in runs) + "</tr>"
                        for m in metrics if any(rows[r] and rows[r].get(m) is not None for r in runs))
        head = "".join(f"<th>{esc(self.run_name(r))}</th>" for r in runs)
        detail = question_detail_html([(("A: " if len(runs) > 1 else "") + self.run_name(runs[0]), rows[runs[0]])]
                                      + ([("B: " + self.run_name(runs[1]), rows[runs[1]])] if len(runs) > 1 else []),
                                      self.metric, is_open=True, max_passages=10)
        return wrap(detail + f'<div class="scroll"><table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{table}</tbody></table></div>')

    def try_query(self, text: str, run_id: str | None = None) -> dict:
        if not text.strip():
            raise WorkbenchError("type a question first")
        if self.experiment is None:
            raise StoreError("no experiment to run the question through")
        return live_query(self.store, self.cache_dir).ask(run_id or self.run_a, self.experiment, text)

    def try_query_html(self, text: str, run_id: str | None = None) -> str:
        run_id = run_id or self.run_a
        row = self.try_query(text, run_id)
        generation = f", generation {row['generation_latency_s']:.3f}s" if row["generation_latency_s"] else ""
        lat = f"retrieval {row['retrieval_latency_s']:.3f}s{generation}"
        note = "" if row["same_inputs"] else " (inputs changed since the run was stored: dataset, model or code differ)"
        return wrap(f'<p class="muted">{esc(self.run_name(run_id))}: {esc(lat)}{esc(note)}</p>'
                    + question_detail_html([(self.run_name(run_id), row)], self.metric, is_open=True, max_passages=10, live=True))

    def show_query(self, text: str, run_id: str | None = None) -> None:
        from IPython.display import HTML, display

        display(HTML(style_tag() + self.try_query_html(text, run_id)))

    def close(self) -> None:
        """Nothing of the kernel's is stopped here: the live-query engine and the LLM server stay
        for the next explorer (:func:`shutdown` stops them, at kernel shutdown)."""
        self._ui = None

    # -- display ---------------------------------------------------------------------------------
    def static_html(self) -> str:
        """What an HTML export shows instead of the widgets: the note, and the leaderboard."""
        note = f'<p class="muted"><b>{esc(NEEDS_KERNEL)}</b></p>'
        if self.experiment is None:
            return wrap(note + f"<p>The store {esc(redact_url(self.store.url))} holds no experiments with runs yet.</p>", styled=True)
        cols = [c for c in ("hit_at_5", "hallucination", "latency_p95_s", "cost_per_question_usd") if c != self.metric and c in self.board
                and self.board[c].notna().any()]
        m = self.metric
        head = "".join(f"<th>{esc(h)}</th>" for h in ["#", "run", "configuration", header(m) + " [95% CI]", *map(header, cols)])
        rows = []
        for _, r in self.board.iterrows():
            cells = [str(int(r["rank"])), str(r["run_id"])[:8], str(r["label"]), value_text(m, r.get(m), r.get(m + "_ci_low"), r.get(m + "_ci_high")),
                     *[value_text(c, r.get(c), ci=False) for c in cols]]
            rows.append("<tr>" + "".join(f'<td{" class=num" if i >= 3 else ""}>{esc(c)}</td>' for i, c in enumerate(cells)) + "</tr>")
        return wrap(note + f"<h3>{esc(self.experiment)}: leaderboard</h3>"
                    f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>', styled=True)

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return StandIn(self.widget(), self.static_html())._repr_mimebundle_(**kwargs)

    def query_panel(self) -> StandIn:
        """The live-query box, displayed with a note where no kernel runs it (an HTML export)."""
        note = "Live queries need a running Python kernel: open notebooks/explore.ipynb in JupyterLab (make lab)."
        return StandIn(self.try_query_widget(), wrap(f'<p class="muted"><b>{esc(note)}</b></p>'))

    def widget(self):
        """Experiment and run pickers, an outcome filter and search, the question list and the
        selected question for both runs side by side (built once per explorer)."""
        if self._ui is None:
            self._ui = ExplorerWidgets(self)
        return self._ui.box

    def try_query_widget(self):
        """A question box, a configuration picker and a button that runs the question live."""
        return try_query_box(self)


class StandIn:
    """A widget displayed together with static HTML: JupyterLab shows the widget; ``jupyter
    nbconvert`` (which cannot run widgets without the notebook's saved widget state and a network)
    shows the HTML in its place."""

    def __init__(self, widget, html: str):
        self.widget, self.html = widget, html

    def _repr_mimebundle_(self, **kwargs) -> dict:
        return {**self.widget._repr_mimebundle_(**kwargs), "text/html": self.html}


class ExplorerWidgets:
    """The explorer's widgets and their handlers. Every handler shows its error in the status line
    (one line) instead of raising into JupyterLab's log; re-filling after an experiment switch is
    done with the pickers' handlers held off (``_filling``), so they never see a half-switched state."""

    def __init__(self, explorer: Explorer):
        import ipywidgets as w

        self.x = explorer
        self._filling = False
        self.exp = w.Dropdown(options=explorer.store.experiment_names(), value=explorer.experiment, description="experiment",
                              layout=w.Layout(width="60%"))
        self.run_a = w.Dropdown(description="run A", layout=w.Layout(width="50%"))
        self.run_b = w.Dropdown(description="run B", layout=w.Layout(width="50%"))
        self.outcome = w.ToggleButtons(options=[("all", "all"), ("B better", "win"), ("A better", "loss"), ("same", "tie"),
                                                ("failed", "failed")], value="all", description="show")
        self.search = w.Text(placeholder="filter questions by text", description="search")
        self.listing = w.Select(rows=12, layout=w.Layout(width="95%"), description="question")
        self.detail, self.status = w.HTML(), w.HTML()
        self.box = w.VBox([w.HTML(style_tag()), self.exp, w.HBox([self.run_a, self.run_b]), self.outcome, self.search, self.status,
                           self.listing, self.detail])
        self.refill()
        self.exp.observe(self.guarded(self.on_experiment), names="value")
        for picker in (self.run_a, self.run_b):
            picker.observe(self.guarded(self.on_runs), names="value")
        self.outcome.observe(self.guarded(self.fill_questions), names="value")
        self.search.observe(self.guarded(self.fill_questions), names="value")
        self.listing.observe(self.guarded(self.on_question), names="value")

    def guarded(self, handler):
        def run(change=None):
            try:
                handler(change)
            except Exception as exc:  # shown where the user looks, not only in JupyterLab's log
                if not isinstance(exc, WorkbenchError):
                    log.exception("explorer: %s failed", handler.__name__)
                self.error(exc)
        return run

    def error(self, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
        self.status.value = wrap(f'<p class="error"><b>Error:</b> {esc(" ".join(text.split()))}</p>')

    def refill(self) -> None:
        """Both run pickers, then the question list and the first question, as one step."""
        x = self.x
        if x.experiment is None:
            self.fill_questions()
            return
        self._filling = True
        try:
            opts = [(x.run_name(r), r) for r in x.board["run_id"]]
            self.run_a.options, self.run_b.options = opts, [("(none)", "")] + opts
            self.run_a.value, self.run_b.value = x.run_a or None, x.run_b or ""
        finally:
            self._filling = False
        self.fill_questions()

    def fill_questions(self, _=None) -> None:
        x = self.x
        if x.experiment is None:
            self.status.value = wrap(f"<p>The store {esc(redact_url(x.store.url))} holds no experiments with runs yet: "
                                     "run <code>workbench run experiments/quickstart.yaml</code>.</p>")
            return
        table = x.questions()
        if self.outcome.value != "all":
            table = table[table["outcome"] == self.outcome.value]
        if self.search.value.strip():
            table = table[table["question"].str.contains(self.search.value.strip(), case=False, regex=False)]
        self._filling = True
        try:
            self.listing.options = [(f"{OUTCOME_MARKS.get(o, '·')} {str(q)[:110]}", qid)
                                    for qid, q, o in zip(table["query_id"], table["question"], table["outcome"])]
            self.listing.value = self.listing.options[0][1] if self.listing.options else None
        finally:
            self._filling = False
        self.status.value = wrap(f"<span>{len(table)} questions · {esc(outcome_note(x.metric))}</span>")
        self.detail.value = x.question_html(self.listing.value) if self.listing.value else ""  # the list's first question

    def on_experiment(self, change) -> None:
        previous = self.x.experiment
        try:
            self.x.load(change["new"])
        except Exception:
            self._filling = True
            try:
                self.exp.value = previous  # the dropdown says what is shown
            finally:
                self._filling = False
            raise
        self.refill()

    def on_runs(self, _) -> None:
        if self._filling or not self.run_a.value:
            return
        x = self.x
        x.run_a, x.run_b = self.run_a.value, (self.run_b.value or None)
        if x.run_b == x.run_a:
            x.run_b = None
        self.fill_questions()

    def on_question(self, change) -> None:
        if not self._filling:
            self.detail.value = self.x.question_html(change["new"]) if change["new"] else ""


def try_query_box(explorer: Explorer):
    """A question box, a configuration picker and a button; the answer (or the error) below."""
    import ipywidgets as w

    box = w.Textarea(placeholder="Ask a question…", layout=w.Layout(width="95%", height="4em"))
    config = w.Dropdown(options=[(explorer.run_name(r), r) for r in explorer.board.get("run_id", [])], value=explorer.run_a or None,
                        description="config", layout=w.Layout(width="95%"))
    button = w.Button(description="Run", button_style="primary")
    result = w.HTML()

    def run(_):
        result.value = "<i>running…</i>"
        try:
            result.value = explorer.try_query_html(box.value, config.value)
        except Exception as exc:  # in the widget, one line
            if not isinstance(exc, WorkbenchError):
                log.exception("explorer: live query failed")
            text = str(exc) if isinstance(exc, WorkbenchError) else f"{type(exc).__name__}: {exc}"
            result.value = wrap(f'<p class="error"><b>Error:</b> {esc(" ".join(text.split()))}</p>')

    def refresh() -> None:  # the explorer switched experiments: offer that experiment's runs
        config.options = [(explorer.run_name(r), r) for r in explorer.board["run_id"]]
        config.value = explorer.run_a
        result.value = ""

    button.on_click(run)
    explorer.listeners.append(refresh)
    return w.VBox([box, config, button, result])


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def outcome_note(metric: str) -> str:
    return f"▲ run B better, ▼ run A better on {label(metric)}{' (lower is better)' if lower_is_better(metric) else ''}"


__all__ = ["Explorer", "LiveQuery", "StandIn", "default_experiment", "kernel_servers", "live_query", "shutdown"]
