"""The ranked leaderboard as people read it: every run best first, with its rank, a short
configuration label, the ranking metric with its 95% interval, whether it ties with the best run,
and a few more columns chosen by the experiment.

``workbench results`` prints it one line per run (``workbench.cli.board``), ``--all`` with every
metric, ``--json`` as records in this order. The ranking rule is the registry's
(:func:`~workbench.evaluation.registry.best_first`), the same as the report's; "ties with the best"
is the report's paired test (:func:`~workbench.compare.ties_with_best`: McNemar for 0/1 metrics, a
permutation test otherwise, Holm-corrected over the runs, at ``ALPHA``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from ..compare import ALPHA, ties_with_best
from ..errors import MetricError, StoreError
from ..evaluation.registry import HEADLINE, is_metric, label, lower_is_better, metric_columns, metric_info
from ..settings import redact_url
from ..store import AXES, Store
from .data import enrich_board, primary_metric_or_none, question_values, run_labels
from .leaderboard import fmt_value, fmt_with_ci, ranked_by

# Shown next to the ranking metric unless the experiment names its own (``leaderboard.columns``):
# hit rate, answer F1, hallucination, end-to-end latency P95, cost per question.
DEFAULT_COLUMNS = ("hit_at_5", "f1", "hallucination", "latency_p95_s", "cost_per_question_usd")
MAX_COLUMNS = 5
FIELDS = ("rank", "run_id", "label", *AXES, "status", "n_questions", "n_planned", "n_failed", "ties_best", "evidence")


@dataclass
class RankedBoard:
    """An experiment's runs ranked by ``metric``.

    ``board`` has one row per run, best first: ``rank``, ``label``, ``ties_best`` (True, False, or
    None where no paired test applies: the best run itself, an aggregate-only metric) and every
    metric with its ``_ci_low``/``_ci_high``; ``columns`` are the extra metrics shown by default.
    """

    experiment: str
    metric: str
    columns: list[str]
    board: pd.DataFrame
    alpha: float = ALPHA

    @property
    def metrics(self) -> list[str]:
        """Every metric some run measured, the ranking metric first, then in registry reading order."""
        return measured_metrics(self.board, self.metric)

    @property
    def tested(self) -> bool:
        """Whether ties with the best run were tested (a per-question metric)."""
        return bool(self.board["ties_best"].notna().any())

    def legend(self) -> str:
        """What the ranking and the tie marker mean, in one sentence."""
        info = metric_info(self.metric)
        text = f"ranked by {info.label} ({'lower' if info.lower_is_better else 'higher'} is better), 95% CI in brackets"
        if "status" in self.board and (self.board["status"] == "eliminated").any():
            text += ("; out: eliminated by the race, at retrieval (no answer generated) or in round r after n questions, "
                     "not ranked (results --json has the evidence)")
        if len(self.board) < 2:
            return text
        if self.tested:
            return text + (f"; = ties with #1: paired test on the same questions (McNemar or permutation), Holm-corrected "
                           f"over {len(self.board) - 1} runs, p >= {self.alpha}")
        return text + "; ties with #1 not tested (no per-question values for this metric)"

    def records(self, metrics: Sequence[str] | None = None) -> list[dict]:
        """JSON-ready rows in rank order: the fields above, then each metric with its interval."""
        out = []
        for _, r in self.board.iterrows():
            rec = {k: _plain(r.get(k)) for k in FIELDS if k in r}
            for m in metrics or self.metrics:
                rec[m] = _plain(r.get(m))
                for side in ("ci_low", "ci_high"):
                    if f"{m}_{side}" in r:
                        rec[f"{m}_{side}"] = _plain(r.get(f"{m}_{side}"))
            out.append(rec)
        return out


def measured_metrics(board: pd.DataFrame, first: str) -> list[str]:
    """Every metric some run of ``board`` measured: ``first``, then the leaderboard's reading
    order (:data:`~workbench.evaluation.registry.HEADLINE`), then quality before costs."""
    found = [c for c in board.columns if is_metric(c) and board[c].notna().any()]
    ordered = [m for m in HEADLINE if m in found] + [m for m in metric_columns(found) if m not in HEADLINE]
    return [first, *[m for m in ordered if m != first]]


def _plain(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def short_labels(board: pd.DataFrame) -> list[str]:
    """Run names made of the axes whose values differ between runs, not counting a stage a run
    does not use ("bm25@5" and "dense@5", not "all-MiniLM-L6-v2 | dense@5"); the report's longer
    labels (:func:`~workbench.report.data.run_labels`) when those would not tell runs apart."""
    axes = [a for a in AXES if a in board and board.loc[board[a].astype(str) != "-", a].astype(str).nunique() > 1]
    values = {a: _without_shared_tail(board[a].astype(str).tolist()) for a in axes}
    labels = [" | ".join(v[i] for v in values.values() if v[i] != "-") for i in range(len(board))]
    return labels if axes and all(labels) and len(set(labels)) == len(labels) else run_labels(board)


def _without_shared_tail(values: list[str]) -> list[str]:
    """``values`` less the last words every used value shares ("sentence 128/16 +title" and
    "token 16/0 +title" are "sentence 128/16" and "token 16/0": the context says nothing apart)."""
    used = [v.split(" ") for v in values if v != "-"]
    distinct = len({tuple(w) for w in used})
    while all(len(w) > 1 for w in used) and len({w[-1] for w in used}) == 1 and len({tuple(w[:-1]) for w in used}) == distinct:
        used = [w[:-1] for w in used]
    short = iter(" ".join(w) for w in used)
    return [v if v == "-" else next(short) for v in values]


def choose_columns(board: pd.DataFrame, metric: str, wanted: Sequence[str] | None) -> list[str]:
    """At most :data:`MAX_COLUMNS` metrics besides ``metric``: ``wanted`` (the experiment's
    ``leaderboard.columns``) or :data:`DEFAULT_COLUMNS`, those the runs measured."""
    names = list(wanted) if wanted else [_hit_rate(board) if n == "hit_at_5" else n for n in DEFAULT_COLUMNS]
    for name in names:
        metric_info(name)  # a typo is an error with a suggestion, not a silently missing column
    return [m for m in names if m != metric and m in board and board[m].notna().any()][:MAX_COLUMNS]


def _hit_rate(board: pd.DataFrame) -> str:
    """The default "hit rate" column: Hit@5, else the Hit@k with the largest k the runs measured
    (runs retrieving 3 chunks have no Hit@5)."""
    ks = sorted(int(c[len("hit_at_"):]) for c in board.columns
                if c.startswith("hit_at_") and c[len("hit_at_"):].isdigit() and board[c].notna().any())
    if not ks or 5 in ks:
        return "hit_at_5"
    up_to_5 = [k for k in ks if k <= 5]
    return f"hit_at_{up_to_5[-1] if up_to_5 else ks[0]}"


def _spec_columns(store: Store, experiment: str) -> list[str] | None:
    spec = store.experiment(experiment).get("spec") or {}
    return ((spec.get("leaderboard") or {}).get("columns") or None) if isinstance(spec, dict) else None


def rank_runs(store: Store, experiment: str, *, metric: str | None = None, columns: Sequence[str] | None = None,
              alpha: float = ALPHA) -> RankedBoard:
    """Rank ``experiment``'s runs by ``metric`` (default: the primary metric) from the store.

    Raises:
        StoreError: the experiment is not stored or has no runs.
        MetricError: ``metric`` is unknown, has no better direction, or no run measured it.
    """
    board = store.leaderboard(experiment)
    if board.empty:
        raise StoreError(f"experiment {experiment!r} has no runs in {redact_url(store.url)}")
    values = {r: question_values(store, r) for r in board["run_id"]}
    board = enrich_board(board, values) if primary_metric_or_none(board) else board.assign(label=run_labels(board))
    board["label"] = short_labels(board)
    metric = metric or primary_metric_or_none(board)
    if metric is None:
        raise StoreError(f"experiment {experiment!r}: no run has a quality metric yet (are the runs finished?)")
    metric_info(metric)
    if metric not in board or board[metric].isna().all():
        measured = [c for c in board.columns if is_metric(c) and board[c].notna().any()]
        raise MetricError(f"metric {metric!r} was not measured in experiment {experiment!r}; measured: {', '.join(sorted(measured))}")
    board = ranked_by(board, metric).reset_index(drop=True)
    board["rank"] = range(1, len(board) + 1)
    board["ties_best"] = _ties(board, values, metric, alpha)
    return RankedBoard(experiment, metric, choose_columns(board, metric, columns or _spec_columns(store, experiment)), board, alpha)


def _ties(board: pd.DataFrame, values: dict[str, pd.DataFrame], metric: str, alpha: float) -> list:
    """Per run (in ``board`` order): ties with the best run (True/False); None for the best run,
    for runs without the metric, and for every run when no per-question values exist."""
    best = board.iloc[0]["run_id"]
    if not any(metric in v and v[metric].notna().any() for v in values.values()) or len(board) < 2:
        return [None] * len(board)
    measured = {r: values[r] for r in board["run_id"] if pd.notna(board.loc[board["run_id"] == r, metric].iloc[0])}
    ties = ties_with_best(measured, best, metric, alpha).set_index("run_id")["tie"]
    return [None if r == best or r not in ties.index else bool(ties[r]) for r in board["run_id"]]


def value_text(metric: str, value, low=None, high=None, *, ci: bool = True) -> str:
    """A metric as the terminal shows it: ``0.412 [0.351, 0.470]``, ``1.234s``, ``$0.00012``."""
    return fmt_with_ci(metric, _plain(value), _plain(low), _plain(high)) if ci else fmt_value(metric, _plain(value))


def header(metric: str) -> str:
    """A column's header: the registry's label, with ↓ where lower is better."""
    return label(metric) + (" ↓" if lower_is_better(metric) else "")
