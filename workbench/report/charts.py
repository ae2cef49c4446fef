"""The report's charts (matplotlib, Agg), embedded as PNG data: URIs so the page needs no files.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no GUI backend,
nothing left open. Runs are labelled ``#rank`` as in the leaderboard, which keeps untrusted names
out of the images and the charts readable with many runs. Math text is off, so a ``$`` in an
axis value is drawn as a dollar sign instead of failing.
"""

from __future__ import annotations

import base64
import io
import warnings

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ..evaluation.registry import label, lower_is_better
from .data import ReportData, pareto_frontier
from .html import esc

RC = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
BLUE, GREEN, GREY = "#0b6bcb", "#127a3a", "#9aa5b1"
MAX_RUNS = 15


def figure_html(fig: Figure, caption: str, alt: str) -> str:
    """PNG bytes of ``fig`` as an ``<img>`` with a data: URI, in a captioned ``<figure>``."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")  # exotic characters in axis values
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"><figcaption>{esc(caption)}</figcaption></figure>'


def _plain_log(axis) -> None:
    """Log scale with plain tick labels (math text is off, so the default 10^x labels would show raw)."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _value_name(value) -> str:
    return "(none)" if str(value) == "-" else str(value)


def _note(text: str) -> str:
    return f'<p class="muted">{esc(text)}</p>'


def _short(text: str, n: int = 28) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "…"


def tradeoffs_html(data: ReportData) -> str:
    """Quality vs latency and vs cost, with the Pareto frontier (nothing both better and cheaper)."""
    b, m = data.board, data.metric
    panels = [("latency_p95_s", "Latency P95 per question (s)")]
    notes = []
    cost = pd.to_numeric(b.get("cost_per_question_usd", pd.Series(dtype=float)), errors="coerce")
    if cost.notna().any() and (cost.fillna(0) > 0).any():
        panels.append(("cost_per_question_usd", "Cost per question (USD)"))
    elif cost.notna().any():
        notes.append("Every run cost $0 per question (local models), so there is no cost trade-off to chart.")
    else:
        notes.append("No run recorded a cost (no LLM stage), so only latency is charted.")
    panels = [(c, t) for c, t in panels if c in b and pd.to_numeric(b[c], errors="coerce").notna().any()]
    if not panels:
        return "<h2>Quality vs latency and cost</h2>" + _note("No latency or cost was recorded.")
    captions = []
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(5.6 * len(panels), 3.8), layout="constrained")
        for i, (col, title) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            x = pd.to_numeric(b[col], errors="coerce")
            y = pd.to_numeric(b[m], errors="coerce")
            lo = pd.to_numeric(b.get(f"{m}_ci_low", y), errors="coerce")
            hi = pd.to_numeric(b.get(f"{m}_ci_high", y), errors="coerce")
            ok = x.notna() & y.notna()
            front = pareto_frontier(b, col, m, lower_x=True, higher_y=not lower_is_better(m))
            on = b["run_id"].isin(front)
            yerr = np.vstack([(y - lo).clip(lower=0).fillna(0), (hi - y).clip(lower=0).fillna(0)])
            ax.errorbar(x[ok], y[ok], yerr=yerr[:, ok.to_numpy()], fmt="none", ecolor=GREY, elinewidth=0.8, capsize=2, zorder=1)
            ax.scatter(x[ok & ~on], y[ok & ~on], color=GREY, s=28, zorder=2, label="dominated")
            ax.scatter(x[ok & on], y[ok & on], color=GREEN, s=40, zorder=3, label="Pareto frontier")
            fr = b[on & ok].assign(_x=x, _y=y).sort_values("_x")
            ax.step(fr["_x"], fr["_y"], where="post", color=GREEN, linewidth=1.2, zorder=2)
            for _, r in b[ok].iterrows():
                ax.annotate(f"#{r['rank']}", (float(x[_]), float(y[_])), textcoords="offset points", xytext=(4, 4), fontsize=8)
            pos = x[ok & (x > 0)]
            if len(pos) > 1 and pos.max() / pos.min() > 20:
                ax.set_xscale("log")
                _plain_log(ax.xaxis)
            ax.set_xlabel(title + (" (log scale)" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel(label(m) + (" (lower is better)" if lower_is_better(m) else ""))
            ax.legend(loc="best", fontsize=8, frameon=False)
            captions.append(f"{title.split(' (')[0]}: frontier " + ", ".join(f"#{int(b.loc[b['run_id'] == r, 'rank'].iloc[0])}" for r in front))
        html = figure_html(fig, f"{label(m)} (with 95% CI) against latency and cost; green runs are on the Pareto frontier: no other run is "
                                f"both at least as good and at least as cheap. " + "; ".join(captions) + ".", "quality vs latency and cost")
    return "<h2>Quality vs latency and cost</h2>" + html + "".join(_note(n) for n in notes)


BUCKETS = [("0", lambda v: v <= 0), ("(0, 0.25)", lambda v: (v > 0) & (v < 0.25)), ("[0.25, 0.5)", lambda v: (v >= 0.25) & (v < 0.5)),
           ("[0.5, 0.75)", lambda v: (v >= 0.5) & (v < 0.75)), ("[0.75, 1)", lambda v: (v >= 0.75) & (v < 1)), ("1", lambda v: v >= 1)]
BUCKET_COLORS = ["#b3261e", "#e07b39", "#e8c04a", "#a6c96a", "#5fa860", "#127a3a"]


def distributions_html(data: ReportData) -> str:
    """Per-question distributions for the top runs: share of questions per score band, and latency."""
    b, m = data.board.head(MAX_RUNS), data.metric
    series = [(f"#{r['rank']}", pd.to_numeric(data.values[r["run_id"]].get(m, pd.Series(dtype=float)), errors="coerce").dropna(),
               pd.to_numeric(data.values[r["run_id"]].get("latency_s", pd.Series(dtype=float)), errors="coerce").dropna())
              for _, r in b.iterrows()]
    series = [s for s in series if len(s[1]) or len(s[2])]
    if not series:
        return "<h2>Distributions</h2>" + _note("No per-question values stored.")
    unit = pd.concat([s[1] for s in series]) if any(len(s[1]) for s in series) else pd.Series(dtype=float)
    banded = len(unit) and unit.min() >= 0 and unit.max() <= 1
    with matplotlib.rc_context(RC):
        has_lat = any(len(s[2]) for s in series)
        fig = Figure(figsize=(11 if has_lat else 6, 0.45 * len(series) + 1.9), layout="constrained")
        ax = fig.add_subplot(1, 2 if has_lat else 1, 1)
        names = [s[0] for s in series][::-1]
        ys = np.arange(len(names))
        if banded:
            left = np.zeros(len(series))
            for (name, test), color in zip(BUCKETS, BUCKET_COLORS):
                share = np.array([100 * float(test(s[1].to_numpy()).mean()) if len(s[1]) else 0.0 for s in series][::-1])
                ax.barh(ys, share, left=left, color=color, label=name, height=0.6)
                left += share
            ax.set_yticks(ys, names)
            ax.set_xlim(0, 100)
            ax.set_xlabel(f"% of questions by {label(m)}")
            ax.legend(ncols=len(BUCKETS), loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=7, frameon=False)
            what = f"share of questions per {label(m)} band (red: 0, dark green: 1)"
        else:
            ax.boxplot([s[1].to_numpy() if len(s[1]) else np.array([np.nan]) for s in series][::-1], orientation="horizontal",
                       tick_labels=names, showmeans=True)
            ax.set_xlabel(f"{label(m)} per question")
            what = f"per-question {label(m)} (box: quartiles, marker: mean)"
        if has_lat:
            ax2 = fig.add_subplot(1, 2, 2)
            lat = [s[2].to_numpy() if len(s[2]) else np.array([np.nan]) for s in series][::-1]
            ax2.boxplot(lat, orientation="horizontal", tick_labels=names)
            flat = np.concatenate([v[~np.isnan(v)] for v in lat]) if lat else np.array([])
            if len(flat) and flat.min() > 0 and flat.max() / flat.min() > 20:
                ax2.set_xscale("log")
                _plain_log(ax2.xaxis)
            ax2.set_xlabel("end-to-end latency per question (s)")
            what += "; end-to-end latency per question (box: quartiles)"
        html = figure_html(fig, f"For the top {len(series)} runs by leaderboard rank: {what}.", "metric and latency distributions")
    return "<h2>Distributions</h2>" + html


GAIN_CHART_METRICS = ["ndcg_at_10", "mrr", "f1", "hit_at_1"]


def reranker_gain_chart_html(data: ReportData) -> str:
    """Gain of each reranker on each metric with its 95% CI (paired over questions; ``data.reranker_gain``)."""
    gain = data.reranker_gain
    if gain.empty:
        return ""
    gain = gain[gain["metric"].isin(GAIN_CHART_METRICS)]
    labels = [f"{_short(r['rerank'], 22)}\n{_short(r['retrieval'] + ' ' + r['metric'], 26)}" for _, r in gain.iterrows()]
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(7, 0.45 * len(gain) + 1.2))
        ax = fig.subplots()
        y = np.arange(len(gain))
        err = np.vstack([gain["gain"] - gain["ci_low"], gain["ci_high"] - gain["gain"]])
        colors = ["#2e7d32" if s else "#9e9e9e" for s in gain["significant"]]
        ax.barh(y, gain["gain"], xerr=err, color=colors, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("gain from reranking (with - without), 95% CI")
        return figure_html(fig, "Reranker gain per metric; green = significant after Holm correction.", "reranker gain chart")
