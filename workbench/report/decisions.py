"""The report's decision sections: gates with three outcomes, what the sample can detect (power),
main effects of each axis, and every pair of runs.

:func:`load_decisions` computes everything from the store and :class:`~.data.ReportData` once
(gates through :func:`workbench.gates.evaluate_gates`, the rule ``workbench gate`` applies; main
effects through :mod:`workbench.effects`; pairs and power through :mod:`workbench.compare`). The
``*_html`` functions only format a :class:`Decisions`; every untrusted string goes through
:func:`~.html.esc`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..compare import ALPHA, pairs_table, power_summary, power_vs_best
from ..config.experiment import ExperimentSpec
from ..effects import main_effects
from ..errors import WorkbenchError
from ..evaluation.intervals import POWER
from ..evaluation.registry import label, lower_is_better
from ..gates import GateResult, evaluate_gates, overall, settle_text
from ..store import Store
from .charts import BLUE, GREY, RC, figure_html
from .data import ReportData
from .html import esc

MAX_PAIR_RUNS = 15  # the all-pairs matrix up to this many runs (105 paired tests); `workbench compare --all` for more


@dataclass
class Decisions:
    """What the decision sections show. ``gates`` is empty without gates (``gate_note`` says why)."""

    metric: str
    gates: list[GateResult] = field(default_factory=list)
    gate_note: str = ""
    power: pd.DataFrame = field(default_factory=pd.DataFrame)
    power_summary: dict = field(default_factory=dict)
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    pair_order: list[str] = field(default_factory=list)
    pairs_note: str = ""


def _gates(data: ReportData) -> tuple[list[GateResult], str]:
    spec = data.spec if isinstance(data.spec, dict) else {}
    if not spec.get("gates"):
        return [], "This experiment declares no gates."
    try:
        results = evaluate_gates(Store(data.store_url), ExperimentSpec.model_validate(spec))
    except (WorkbenchError, ValueError) as exc:
        return [], f"The gates could not be checked: {' '.join(str(exc).split())}"
    levels = sorted({r.interval.confidence for r in results if r.interval is not None})
    judged = sum(r.interval is not None for r in results)
    if not judged:
        return results, ""
    note = f"{judged} check(s) with significant: true, read from {' / '.join(f'{c * 100:.4g}%' for c in levels)} confidence intervals"
    return results, note + (" (Bonferroni: 1 - alpha / number of such checks, so all verdicts hold together with probability "
                            "at least 1 - alpha)." if judged > 1 else ".")


def load_decisions(data: ReportData, *, max_pair_runs: int = MAX_PAIR_RUNS) -> Decisions:
    """Compute the decision sections for a loaded report (reads the store only for the gates)."""
    m = data.metric
    best = data.recommendation.run_id or data.board.iloc[0]["run_id"]
    runs = list(data.board["run_id"])
    values = {r: data.values[r] for r in runs}
    d = Decisions(m)
    d.gates, d.gate_note = _gates(data)
    if len(runs) > 1:
        d.power = power_vs_best(values, best, m)
        d.power_summary = power_summary(d.power, m)
    d.effects = main_effects(data.runs[data.runs["run_id"].isin(runs)], values, m)
    if 1 < len(runs) <= max_pair_runs:
        d.pair_order = runs
        d.pairs = pairs_table(values, runs, [m])
    elif len(runs) > max_pair_runs:
        d.pairs_note = f"{len(runs)} runs: the matrix of every pair is left out; `workbench compare --all {data.experiment}` prints it."
    return d


# -- formatting ---------------------------------------------------------------------------------

BADGES = {"pass": ("PASS", "badge best"), "fail": ("FAIL", "badge out"), "inconclusive": ("INCONCLUSIVE", "badge warn")}


def _num_td(text: str, sort: float | None = None, cls: str = "num") -> str:
    key = "" if sort is None or (isinstance(sort, float) and math.isnan(sort)) else repr(float(sort))
    return f'<td class="{cls}" data-sort="{key}">{text}</td>'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """Cells are ready ``<td>`` strings or plain text (escaped here)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div style="overflow-x:auto"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _run_name(data: ReportData, run_id: str) -> str:
    try:
        return data.name(run_id)
    except (IndexError, KeyError, TypeError):
        return str(run_id)[:10]


def _signed(metric: str, x) -> str:
    """A difference in the metric's units, with its sign."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.3g}"


def _interval_text(r: GateResult) -> str:
    iv = r.interval
    if iv is None:
        return "point value (significant: false)"
    lo, hi = (f"{v:+.3g}" if math.isfinite(v) else ("-∞" if v < 0 else "+∞") for v in (iv.low, iv.high))
    of = "change" if r.baseline_run_id else "mean"
    return f"{of} {iv.estimate:+.3g}, {iv.confidence * 100:.4g}% CI [{lo}, {hi}] ({iv.method}, n = {iv.n})"


def gates_html(data: ReportData, d: Decisions) -> str:
    """Every gate check with its outcome (pass / fail / inconclusive), interval and what would settle it."""
    if not d.gates:  # no section without gates; a note when they could not be checked
        return f"<h2>Gates</h2><p class=\"error\">{esc(d.gate_note)}</p>" if d.gate_note.startswith("The gates could not") else ""
    verdict = overall(d.gates)
    counts = {k: sum(r.outcome == k for r in d.gates) for k in BADGES}
    rows = []
    for r in d.gates:
        text, cls = BADGES[r.outcome]
        rows.append([f'<td><span class="{cls}">{text}</span></td>', _run_name(data, r.run_id), r.metric, r.rule,
                     _num_td(esc("-" if r.value is None else f"{r.value:.4g}"), r.value),
                     _num_td(esc("-" if r.baseline is None else f"{r.baseline:.4g}"), r.baseline), _interval_text(r),
                     settle_text(r) or ("-" if r.outcome != "inconclusive" else "")])
    head = ["outcome", "run", "metric", "rule", "value", "baseline", "interval", "to settle it"]
    word = {"pass": "Every gate passes", "fail": "A gate fails", "inconclusive": "No gate fails, but some are inconclusive"}[verdict]
    note = ("With significant: true a gate reads a confidence interval: PASS when it lies entirely within the bound (for a change "
            "from the baseline: non-inferiority), FAIL when it lies entirely beyond it, INCONCLUSIVE when it crosses the bound "
            "(the data cannot tell; more questions would). Intervals: Tango's score interval for 0/1 metrics, the paired t "
            "interval otherwise; Wilson or t for a bound on the run's own mean. `workbench gate` exits 0, 1 or 4 for these. "
            "See docs/metrics.md, \"Gates\".")
    return (f"<h2>Gates</h2><p><b>{esc(word)}</b>: {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['inconclusive']} inconclusive.</p>" + _table(head, rows)
            + f'<p class="muted">{esc(d.gate_note)} {esc(note)}</p>')


def power_html(data: ReportData, d: Decisions) -> str:
    """The smallest difference in the primary metric the current questions can detect."""
    if d.power.empty or "text" not in d.power_summary:
        return ""
    m = d.metric
    rows = [[_run_name(data, r["run_id"]), _num_td(str(int(r["n"])), r["n"]), _num_td(esc(_signed(m, r["diff"])), r["diff"]),
             _num_td(esc("-" if pd.isna(r["sd"]) else f"{r['sd']:.3g}"), r["sd"]),
             _num_td(esc("-" if pd.isna(r["detectable"]) else f"{r['detectable']:.3g}"), r["detectable"])] for _, r in d.power.iterrows()]
    best = data.recommendation.run_id or data.board.iloc[0]["run_id"]
    note = (f"A difference smaller than the detectable one may well exist and go unnoticed: 'ties with the best' then means "
            f"'not told apart by {d.power_summary.get('questions_now', 0)} questions', not 'equal'. "
            f"`workbench power {data.experiment} --delta D` says how many questions a difference D needs.")
    return ("<h3>What this sample can detect</h3>" + f"<p>{esc(d.power_summary['text'])}</p>"
            + _table([f"run (vs {_run_name(data, best)})", "questions", f"mean diff {label(m)}", "sd of differences",
                      f"detectable ({POWER:.0%} power)"], rows) + f'<p class="muted">{esc(note)}</p>')


def pairs_html(data: ReportData, d: Decisions) -> str:
    """Every pair of runs on the primary metric: row minus column, Holm across all pairs."""
    if d.pairs.empty:
        return f'<p class="muted">{esc(d.pairs_note)}</p>' if d.pairs_note else ""
    m = d.metric
    cell = {}
    for _, p in d.pairs.iterrows():
        for a, b, diff in ((p["run_a"], p["run_b"], -p["diff"]), (p["run_b"], p["run_a"], p["diff"])):
            better = (diff < 0) == lower_is_better(m)
            cls = "delta-pos" if p["significant"] and better else "delta-neg" if p["significant"] else ""
            title = f"{_signed(m, diff)}, 95% CI of the column's change [{p['ci_low']:+.3g}, {p['ci_high']:+.3g}], Holm p = {p['p_holm']:.3g}"
            cell[(a, b)] = (f'<td class="num" title="{esc(title)}"><span class="{cls}">{esc(_signed(m, diff))}'
                            f'{"*" if p["significant"] else ""}</span></td>')
    rank = {r: i + 1 for i, r in enumerate(d.pair_order)}
    rows = [[f"#{rank[a]} {data.row(a)['label']}", *[("<td></td>" if a == b else cell.get((a, b), "<td>n/a</td>")) for b in d.pair_order]]
            for a in d.pair_order]
    note = (f"Each cell: {label(m)} of the row's run minus the column's, paired over the questions both scored. * marks a difference "
            f"that survives Holm's correction across all {len(d.pairs)} pairs (family-wise error {ALPHA:.0%}): green when the row is "
            "better. McNemar for 0/1 metrics, a permutation test otherwise.")
    return (f"<h3>Every pair of runs ({esc(label(m))})</h3>" + _table(["run", *[f"#{rank[r]}" for r in d.pair_order]], rows)
            + f'<p class="muted">{esc(note)}</p>')


def effects_html(data: ReportData, d: Decisions) -> str:
    """Main effects: per axis, each value against the axis's first value, like with like."""
    fx = d.effects
    head = f"<h2>Main effects</h2><p>What changing one choice does to {esc(label(d.metric))}, all else equal.</p>"
    if fx.empty:
        return head + '<p class="muted">No axis has two values with runs equal on every other axis: nothing to compare.</p>'
    m = d.metric
    rows = []
    for _, e in fx.iterrows():
        if not e["cells"]:
            rows.append([e["axis"], e["value"], e["reference"], "0", "no run pairs with the first value on every other axis", "-", "-"])
            continue
        effect = f'{esc(_signed(m, e["diff"]))}<span class="ci">[{e["ci_low"]:+.3g}, {e["ci_high"]:+.3g}]</span>'
        flag = ("crossover: significantly opposite in different cells" if e["crossover"] else
                "sign changes across cells" if e["interaction"] else "")
        cells = "; ".join(f"{c['cell']}: {c['diff']:+.3g}" for c in e["per_cell"])
        rows.append([e["axis"], e["value"], e["reference"], _num_td(str(int(e["cells"])), e["cells"]), _num_td(effect, e["diff"]),
                     _num_td(esc(f"{e['p_holm']:.3g}"), e["p_holm"]), f"{flag} ({cells})" if flag else cells])
    note = ("Each value is compared with the axis's first value in the experiment file, only between runs equal on every other axis "
            "(a BM25 run, which uses no embedder, is paired with each embedder), averaged per question over those cells; the interval "
            "is a 95% bootstrap over questions, p is Holm-corrected across the table. An interaction is flagged when the effect has "
            "different signs in different cells: then the average hides that the choice depends on the others.")
    return (head + _table(["axis", "value", "vs", "cells", f"effect on {label(m)} [95% CI]", "p (Holm)", "per cell"], rows)
            + effects_chart_html(d) + f'<p class="muted">{esc(note)}</p>')


def effects_chart_html(d: Decisions) -> str:
    """A forest plot: each effect with its interval (bars), each cell's effect as a grey dot."""
    fx = d.effects[d.effects["cells"] > 0]
    if fx.empty:
        return ""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(7.5, 0.45 * len(fx) + 1.0), layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        ys = np.arange(len(fx))[::-1]
        for y, (_, e) in zip(ys, fx.iterrows()):
            ax.errorbar(e["diff"], y, xerr=[[e["diff"] - e["ci_low"]], [e["ci_high"] - e["diff"]]], fmt="o", color=BLUE, capsize=3)
            ax.scatter([c["diff"] for c in e["per_cell"]], [y] * len(e["per_cell"]), color=GREY, s=10, zorder=1)
        ax.axvline(0, color="#444", lw=0.8)
        ax.set_yticks(ys, [f"#{i + 1}" for i in range(len(fx))])
        ax.set_xlabel(f"change in {label(d.metric)} vs the axis's first value")
    names = "; ".join(f"#{i + 1} {e['axis']}: {e['value']} vs {e['reference']}" for i, (_, e) in enumerate(fx.iterrows()))
    return figure_html(fig, f"Main effects with 95% intervals (blue) and the effect in each cell (grey). {names}",
                       f"main effects on {label(d.metric)}")
