"""The report's HTML fragments, one per section, built from :class:`~workbench.report.data.ReportData`.

Formatting only: every number and every choice (best run, ties, baseline, reranker gain, which
questions the drill-down shows) is computed in :mod:`.data`; nothing here opens the store.

Every string from a dataset, a model or an experiment file (questions, passages, answers, names,
labels, error messages) is untrusted and goes through :func:`esc` (``html.escape`` with quotes)
before it reaches the page; :func:`highlight` escapes each piece it wraps in ``<mark>``. Cells
are built as strings here and only here, so a reviewer can check escaping in one file.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..compare import ALPHA
from ..evaluation.registry import description, label, lower_is_better
from ..hashing import hash_obj
from ..settings import redact_url
from .board import choose_columns, measured_metrics
from .data import SAFETY_METRICS, Drilldown, ReportData, applied_limits, planned_questions, quality_columns, reliability_table
from .leaderboard import AXES, as_float, fmt
from .style import wrap

# -- HTML --------------------------------------------------------------------------------------

def esc(value: Any) -> str:
    """HTML-escape anything (quotes too, so it is safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def show(fragment: str, *, styled: bool = False) -> None:
    """Display an HTML fragment in the running notebook, inside ``<div class="wb">`` (with the
    stylesheet in front when ``styled``: the notebook's first output), so it looks the same in
    JupyterLab, in ``jupyter nbconvert --to html`` and on the ``workbench report`` page."""
    from IPython.display import HTML, display

    display(HTML(wrap(fragment, styled=styled)))


def _cell(metric: str, value, low=None, high=None) -> str:
    v = as_float(value)
    text = esc(fmt(metric, v))
    ci = ""
    lo, hi = as_float(low), as_float(high)
    if v is not None and lo is not None and hi is not None and lo != hi:
        ci = f'<span class="ci">[{esc(fmt(metric, lo))}, {esc(fmt(metric, hi))}]</span>'
    return f'<td class="num" data-sort="{"" if v is None else repr(v)}">{text}{ci}</td>'


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "", row_classes: Sequence[str] | None = None) -> str:
    """A table; a cell is either a ready ``<td ...>`` string or plain text, escaped here."""
    header = list(header)
    head = f"<thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in header)}</tr></thead>" if any(header) else ""
    body = []
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(c if c.startswith("<td") else f"<td>{esc(c)}</td>" for c in row)
        body.append(f'<tr class="{rc}">{cells}</tr>' if rc else f"<tr>{cells}</tr>")
    return f'<div class="scroll"><table class="{cls}">{head}<tbody>{"".join(body)}</tbody></table></div>'


# Public names for the sections kept in their own modules (report/kpis.py).
metric_cell, table = _cell, _table


def title_html(data: ReportData) -> str:
    desc = data.spec.get("description") if isinstance(data.spec, dict) else None
    lineage = (data.runs.iloc[0]["lineage"] if not data.runs.empty else None) or {}
    facts = [f"{len(data.board)} runs", f"{planned_questions(data.board)} questions",
             f"dataset {lineage.get('dataset_path', data.spec.get('dataset', '?'))}", f"generated {data.generated_at}"]
    return (f"<h1>Bake-off report: {esc(data.experiment)}</h1>" + (f"<p>{esc(' '.join(str(desc).split()))}</p>" if desc else "")
            + f'<p class="muted">{" · ".join(esc(f) for f in facts)}</p>')


def _limit_text(metric: str, lo: float | None, hi: float | None) -> str:
    return ", ".join(f"{label(metric)} {op} {fmt(metric, v)}" for v, op in ((lo, "≥"), (hi, "≤")) if v is not None)


def why(data: ReportData) -> list[str]:
    """The recommendation's reasons, as plain sentences (escaped by the caller)."""
    rec, m = data.recommendation, data.metric
    if rec.run_id is None:
        best = data.board.iloc[0]
        return [f"No run meets the experiment's limits; the best {label(m)} overall is #{best['rank']} {best['label']} "
                f"({fmt(m, best[m])})."] + rec.notes
    r = data.row(rec.run_id)
    limits, _ = applied_limits(data.spec.get("limits") if isinstance(data.spec, dict) else None)
    within = f" within the experiment's limits ({', '.join(_limit_text(k, *v) for k, v in limits.items())})" if limits else ""
    out = [f"It has the highest {label(m)}{within} among {len(data.board)} runs: {fmt(m, r[m])}"
           + (f" (95% CI {fmt(m, r.get(m + '_ci_low'))} to {fmt(m, r.get(m + '_ci_high'))})." if as_float(r.get(m + "_ci_low")) is not None else ".")]
    out[-1] += f" {label(m)} measures {description(m)}."
    if data.tie_ids:
        names = [f"#{data.row(t)['rank']} {data.row(t)['label']}" for t in data.tie_ids]
        out.append(f"{len(names)} other run(s) are statistically indistinguishable from it on {label(m)} (paired test on the same "
                   f"questions, Holm-corrected p ≥ {ALPHA}): {'; '.join(names)}.")
        fast = data.fastest_tie
        if fast is not None:
            f = data.row(fast)
            out.append(f"If speed matters more, #{f['rank']} {f['label']} is the fastest of these "
                       f"(latency P95 {fmt('latency_p95_s', f['latency_p95_s'])} vs {fmt('latency_p95_s', r['latency_p95_s'])}).")
    elif len(data.board) > 1:
        out.append(f"It is significantly better than every other run on {label(m)} (paired tests, Holm-corrected p < {ALPHA}).")
    for run_id, reasons in rec.violations.items():
        out.append(f"Excluded by the limits: #{data.row(run_id)['rank']} {data.row(run_id)['label']} ({'; '.join(reasons)}).")
    n_failed = int(as_float(r.get("n_failed")) or 0)
    if n_failed:
        out.append(f"Warning: {n_failed} of {int(r['n_questions'])} questions failed in this run (errors are stored; see the drill-down).")
    if r.get("status") != "complete":
        out.append(f"Warning: this run's status is {r.get('status')!s}.")
    return out + rec.notes


def headline_html(data: ReportData) -> str:
    rec = data.recommendation
    reasons = "".join(f"<li>{esc(s)}</li>" for s in why(data))
    if rec.run_id is None:
        return ('<h2>Recommendation</h2><div class="headline warn"><div class="config">No configuration meets the limits</div>'
                f"<ul>{reasons}</ul></div>")
    r = data.row(rec.run_id)
    axes = "".join(f"<tr><th>{esc(a)}</th><td>{esc(r[a])}</td></tr>" for a in AXES if a in r and str(r[a]) != "-")
    return (f'<h2>Recommendation</h2><div class="headline"><div class="muted">Recommended configuration</div>'
            f'<div class="config">{esc(r["label"])}</div><table>{axes}<tr><th>run</th><td><code>{esc(rec.run_id)}</code></td></tr></table>'
            f"<p><b>Why</b></p><ul>{reasons}</ul></div>")


def leaderboard_html(data: ReportData) -> str:
    b = data.board
    axes = data.varying_axes
    fixed = [f"{a} = {b.iloc[0][a]}" for a in AXES if a in b and a not in axes and str(b.iloc[0][a]) != "-"]
    every = quality_columns(b, data.metric)
    chosen = choose_columns(b, data.metric, (data.spec.get("leaderboard") or {}).get("columns") if isinstance(data.spec, dict) else None)
    quality = [data.metric, *[m for m in chosen if m in every]]
    costs = [c for c in ("latency_p50_s", "latency_p95_s", "tokens_per_question", "cost_per_question_usd") if c in b and b[c].notna().any()]
    header = ["#", "run", *axes, *[label(m) + (" ↓" if lower_is_better(m) else "") for m in quality], *[label(c) for c in costs], "errors", "status"]
    rows = []
    for _, r in b.iterrows():
        badges = ""
        if r["recommended"]:
            badges += '<span class="badge best">recommended</span>'
        elif r["ties_best"]:
            badges += '<span class="badge tie" title="statistically indistinguishable from the recommended run">ties best</span>'
        if r.get("status") == "eliminated":
            badges += (f'<span class="badge out" title="eliminated by the race after {int(r["n_questions"])} of {int(r["n_planned"])} '
                       f'questions; see the Race section">eliminated</span>')
        if r["run_id"] in data.recommendation.violations:
            badges += f'<span class="badge out" title="{esc("; ".join(data.recommendation.violations[r["run_id"]]))}">over limit</span>'
        rank = "–" if r.get("status") == "eliminated" else str(int(r["rank"]))  # not ranked against runs that saw every question
        cells = [f'<td class="num" data-sort="{int(r["rank"])}">{rank}</td>', f"<td><code>{esc(str(r['run_id'])[:10])}</code>{badges}</td>"]
        cells += [f"<td>{esc(r[a])}</td>" for a in axes]
        cells += [_cell(m, r.get(m), r.get(m + "_ci_low"), r.get(m + "_ci_high")) for m in quality]
        cells += [_cell(c, r.get(c)) for c in costs]
        n_failed = int(as_float(r.get("n_failed")) or 0)
        cells.append(f'<td class="num{" error" if n_failed else ""}" data-sort="{n_failed}">{n_failed} / {int(r["n_questions"])}</td>')
        if "n_planned" in r and int(r["n_questions"]) < int(r["n_planned"]):
            cells[-1] = cells[-1].replace("</td>", f' <span class="muted">(of {int(r["n_planned"])} planned)</span></td>')
        cells.append(f"<td>{esc(r['status'])}</td>")
        rows.append(cells)
    table = _table(header, rows, "sortable leaderboard", ["recommended" if x else "" for x in b["recommended"]])
    note = ("Quality: mean over questions, with its 95% bootstrap interval below. ↓ marks metrics where lower is better. "
            "Latency: end-to-end per question (retrieval, reranking and generation). Click a column header to sort.")
    return ('<h2>Leaderboard</h2>' + (f'<p class="muted">Same in every run: {esc("; ".join(fixed))}</p>' if fixed else "")
            + table + f'<p class="muted">{esc(note)}</p>' + all_metrics_html(data, measured_metrics(b, data.metric)) + _levels_note(data, every))


def all_metrics_html(data: ReportData, metrics: Sequence[str]) -> str:
    """Every metric of every run, collapsed under the leaderboard: one row per metric, one column
    per run (by rank), so it stays as narrow as the number of runs allows."""
    b = data.board
    header = ["metric", *[f"#{int(r['rank'])}" for _, r in b.iterrows()]]
    rows = [[label(m) + (" ↓" if lower_is_better(m) else ""), *[_cell(m, r.get(m), r.get(m + "_ci_low"), r.get(m + "_ci_high"))
                                                                for _, r in b.iterrows()]] for m in metrics]
    runs = "; ".join(f"#{int(r['rank'])} {r['label']}" for _, r in b.iterrows())
    return (f'<details class="all-metrics"><summary>Every metric of every run ({len(metrics)})</summary>'
            f'<p class="muted">{esc(runs)}</p>{_table(header, rows, "all-metrics")}</details>')


def _levels_note(data: ReportData, quality: Sequence[str]) -> str:
    """Say which retrieval metrics are document level and which chunk level (and by what rule)."""
    if not any(m.startswith("chunk_") for m in quality):
        return ""
    lin = (data.runs.iloc[0]["lineage"] if not data.runs.empty else None) or {}
    rule = lin.get("relevance") or {}
    how = (f"shares at least {rule['min_chars']} characters with" if rule.get("min_chars")
           else f"covers at least {rule.get('min_overlap', 0.5):.0%} of the shorter of itself and")
    doc = [label(m) for m in quality if not m.startswith("chunk_") and m in ("hit_at_5", "recall_at_5", "mrr", "ndcg_at_10", "map")]
    text = (f"Retrieval is measured at two levels. Document level ({', '.join(doc) or 'Hit, MRR, nDCG'}): a document is relevant "
            "when it holds gold evidence, and it ranks where its best chunk ranks. Chunk level (the 'Chunk' columns): a chunk is "
            f"relevant when it {how} a gold evidence span (character offsets in the source document), so chunkers of "
            "different sizes are judged against the same evidence; see docs/metrics.md.")
    return f'<p class="muted levels">{esc(text)}</p>'



# -- drill-down --------------------------------------------------------------------------------

def highlight(text: str, needles: Iterable[str]) -> str:
    """Escape ``text`` and wrap case-insensitive occurrences of the needles in ``<mark>``."""
    text = "" if text is None else str(text)
    spans = []
    for n in {str(n).strip() for n in needles if n and str(n).strip()}:
        # whole words where the needle starts/ends with a word character ("four" not in "fourteen")
        pattern = (r"\b" if re.match(r"\w", n) else "") + re.escape(n) + (r"\b" if re.search(r"\w$", n) else "")
        spans += [(m.start(), m.end()) for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    merged: list[list[int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, pos = [], 0
    for s, e in merged:
        out.append(esc(text[pos:s]) + "<mark>" + esc(text[s:e]) + "</mark>")
        pos = e
    return "".join(out) + esc(text[pos:])


def passages_html(hits: Sequence[Mapping], relevant: Mapping[str, int] | None, golds: Sequence[str], *,
                  max_passages: int = 5, max_chars: int = 900, preview_chars: int = 110) -> str:
    """Retrieved passages, each collapsible: its rank, document, chunk and score with the first
    words; open when it is relevant or holds a gold answer (or is the first, without gold data)."""
    relevant = relevant or {}
    parts = []
    for i, h in enumerate(list(hits or [])[:max_passages]):
        text = str(h.get("text") or "")
        if len(text) > max_chars:
            text = text[:max_chars] + " …"
        rel = relevant.get(h.get("doc_id"), 0) > 0
        marked = highlight(text, golds)
        meta = (f"#{esc(h.get('rank'))} · document <code>{esc(h.get('doc_id'))}</code> · chunk <code>{esc(h.get('chunk_id'))}</code>"
                f" · score {as_float(h.get('score')) or 0.0:.4f}" + (" · <b>relevant</b>" if rel else ""))
        preview = " ".join(text.split())
        preview = preview if len(preview) <= preview_chars else preview[:preview_chars] + " …"
        is_open = rel or "<mark>" in marked or (i == 0 and not relevant and not golds)
        parts.append(f'<details class="passage{" relevant" if rel else ""}"{" open" if is_open else ""}><summary><span class="meta">{meta}'
                     f'</span> — <span class="muted">{esc(preview)}</span></summary>{marked}</details>')
    more = len(hits or []) - max_passages
    if more > 0:
        parts.append(f'<p class="muted">… and {more} more retrieved chunks</p>')
    return "".join(parts) or '<p class="muted">nothing retrieved</p>'


def question_detail_html(columns: Sequence[tuple[str, Mapping | None]], metric: str, *, summary: str | None = None,
                         metrics: Sequence[str] = (), is_open: bool = False, max_passages: int = 5, live: bool = False) -> str:
    """One question for one or more runs side by side: gold, answers, metrics, retrieved passages.

    ``columns`` holds (run name, stored row or None); rows come from :meth:`workbench.store.Store.question_rows`.
    ``live``: a question typed by a user (the explorer's live query), which has no gold answer
    rather than being unanswerable.
    """
    first = next((row for _, row in columns if row), None)
    if first is None:
        return ""
    golds = [str(g) for g in (first.get("gold_answers") or [])]
    head = summary if summary is not None else esc(first.get("question"))
    inner = [f"<p><b>Question:</b> {esc(first.get('question'))} <span class=\"muted\">(<code>{esc(first.get('query_id'))}</code>)</span></p>",
             f"<p><b>Gold answer:</b> {esc(' | '.join(golds)) if golds else _no_gold(live)}</p>"]
    shown = [metric, *[m for m in metrics if m != metric]]
    cols = []
    for name, row in columns:
        if row is None:
            cols.append(f"<div><h4>{esc(name)}</h4><p class=\"muted\">not in this run</p></div>")
            continue
        parts = [f"<h4>{esc(name)}</h4>"]
        if row.get("error"):
            parts.append(f'<p class="error"><b>Error:</b> {esc(row["error"])}</p>')
        if row.get("answer") is not None:
            parts.append(f'<p><b>Answer</b></p><div class="answer">{highlight(row["answer"], golds)}</div>')
        vals = [f"{label(m)} {fmt(m, row.get(m))}" for m in shown if m in row and as_float(row.get(m)) is not None]
        if vals:
            parts.append(f'<p class="muted">{esc(" · ".join(vals))}</p>')
        parts.append(passages_html(row.get("hits") or [], row.get("relevant"), golds, max_passages=max_passages))
        cols.append("<div>" + "".join(parts) + "</div>")
    body = "".join(inner) + (f'<div class="side">{"".join(cols)}</div>' if len(cols) > 1 else "".join(cols))
    return f'<details class="question"{" open" if is_open else ""}><summary>{head}</summary>{body}</details>'


def _no_gold(live: bool) -> str:
    if live:
        return ('<span class="muted">none: a new question, so no gold answer or relevance judgements (quality metrics do not apply; '
                "latency, tokens and groundedness do)</span>")
    return '<span class="muted">none (unanswerable)</span>'


def _delta(metric: str, a, b) -> str:
    va, vb = as_float(a), as_float(b)
    if va is None or vb is None:
        return esc(f"{fmt(metric, va)} → {fmt(metric, vb)}")
    better = (vb < va) if lower_is_better(metric) else (vb > va)
    cls = "delta-pos" if better else "delta-neg" if va != vb else "muted"
    return f'{esc(fmt(metric, va))} → {esc(fmt(metric, vb))} <span class="{cls}">({vb - va:+.3f})</span>'


SECTION_TITLES = {"win": "Wins: the recommended run did better", "loss": "Losses: the baseline did better",
                  "failed": "Failed questions", "tie": "Same score"}


def _paired_text(metric: str, drill: Drilldown) -> str:
    res = drill.paired
    if res is None:
        return ""
    text = (f"Mean {label(metric)} {fmt(metric, res.mean_a)} → {fmt(metric, res.mean_b)}, difference {res.diff:+.3f} "
            f"(95% CI {res.ci_low:+.3f} to {res.ci_high:+.3f}, p = {res.p_value:.3g}, {res.test}) over {res.n} paired questions.")
    return f'<p class="muted">{esc(text)}</p>'


def _weakest_html(data: ReportData, drill: Drilldown, extra: Sequence[str]) -> str:
    m, best = data.metric, drill.best
    rows = drill.rows[best]
    _, _, ids = drill.sections[0]
    parts = [f'<p>{esc(data.name(best))} — {esc(data.baseline_reason)}. Its {drill.limit} weakest questions:</p>']
    parts += [question_detail_html([(data.name(best), rows.get(q))], m, metrics=extra,
                                   summary=f"{esc(rows[q]['question'])} — {esc(label(m))} {esc(fmt(m, rows[q].get(m)))}")
              for q in ids if q in rows]
    return "".join(parts)


def drilldown_html(data: ReportData) -> str:
    """Best run vs the baseline, question by question: wins, losses, failures, then equal scores
    (``data.drilldown``, see :func:`workbench.report.data.drilldown`)."""
    drill, m = data.drilldown, data.metric
    if drill is None:
        return ""
    extra = quality_columns(data.board, m)[1:4]
    parts = ["<h2>Per-question drill-down</h2>"]
    if drill.baseline is None:
        return parts[0] + _weakest_html(data, drill, extra)
    base, best, counts = drill.baseline, drill.best, drill.counts
    parts.append(f"<p>Recommended <b>{esc(data.name(best))}</b> vs baseline <b>{esc(data.name(base))}</b> — the baseline is "
                 f"{esc(data.baseline_reason)}.</p>")
    parts.append(_table(["outcome on " + label(m), "questions"],
                        [["recommended better (wins)", f'<td class="num">{counts.get("win", 0)}</td>'],
                         ["baseline better (losses)", f'<td class="num">{counts.get("loss", 0)}</td>'],
                         ["same score", f'<td class="num">{counts.get("tie", 0)}</td>'],
                         ["failed in either run", f'<td class="num">{counts.get("failed", 0)}</td>'],
                         ["metric not applicable", f'<td class="num">{counts.get("n/a", 0)}</td>']]))
    parts.append(_paired_text(m, drill))
    outcomes = drill.outcomes.set_index("query_id")
    for outcome, total, ids in drill.sections:
        parts.append(f"<h3>{esc(SECTION_TITLES[outcome])} ({total}{f', showing {len(ids)}' if len(ids) < total else ''})</h3>")
        for q in ids:
            o = outcomes.loc[q]
            summ = f"{esc(o['question'])} — {esc(label(m))} {_delta(m, o['baseline'], o['candidate'])}"
            parts.append(question_detail_html([(f"baseline: {data.name(base)}", drill.rows[base].get(q)),
                                               (f"recommended: {data.name(best)}", drill.rows[best].get(q))], m, summary=summ, metrics=extra))
    return "".join(parts)


# -- lineage -----------------------------------------------------------------------------------

def _short(value, n: int = 12) -> str:
    return "-" if value in (None, "") else str(value)[:n]


def _code(lineage: Mapping) -> str:
    versions = lineage.get("code_versions") or []
    if len(versions) > 1:  # a run resumed under other code: each version with the rows it computed
        return "; ".join(f"{_commit(v.get('git_commit'))}, code hash {_short(v.get('code_hash'))} ({v.get('rows')} rows)" for v in versions)
    return f"{_commit(lineage.get('git_commit'))}; code hash {_short(lineage.get('code_hash'))}"


def _commit(commit) -> str:
    commit = str(commit or "")
    return (commit[:12] + (" (uncommitted changes)" if commit.endswith("-dirty") else "")) if commit else "no git commit"


def lineage_html(data: ReportData) -> str:
    exp = data.experiment_row
    facts = [["experiment", str(data.experiment)], ["experiment file", str(exp.get("path") or "-")],
             ["spec hash", _short(exp.get("spec_hash"))], ["stored", str(exp.get("updated_at") or "-")],
             ["results store", redact_url(data.store_url)]]
    runs = data.runs.set_index("run_id")
    header = ["#", "run", "dataset", "queries", "prompt", "models", "config hash", "code", "started", "finished", "status"]
    rows, packages = [], {}
    for _, r in data.board.iterrows():
        run = runs.loc[r["run_id"]]
        lin = run["lineage"] or {}
        models = [f"embedding {lin['embedding_model']} ({_short(lin.get('embedding_fingerprint'))})" if lin.get("embedding_model") else "",
                  f"LLM {lin['llm']} ({_short(lin.get('llm_file_hash'))})" if lin.get("llm") else "",
                  f"reranker {_short(lin.get('reranker_fingerprint'))}" if lin.get("reranker_fingerprint") else "",
                  f"tokenizer {lin.get('tokenizer')}" if lin.get("tokenizer") else ""]
        prompt = f"{lin.get('prompt_path')} ({_short(lin.get('prompt_hash'))})" if lin.get("prompt_path") else "-"
        rows.append([str(r["rank"]), str(r["run_id"]), f"{lin.get('dataset_path', '-')} ({_short(lin.get('dataset_hash'))})",
                     f"{lin.get('n_queries', '-')} ({_short(lin.get('query_ids_hash'))})", prompt, "; ".join(x for x in models if x) or "-",
                     hash_obj(run["config"], 12), _code(lin),
                     str(run.get("started_at") or "-"), str(run.get("finished_at") or "-"), str(run.get("status"))])
        for pkg, version in (lin.get("packages") or {}).items():
            packages.setdefault(pkg, set()).add(str(version))
    pkg_rows = [[pkg, ", ".join(sorted(v))] for pkg, v in sorted(packages.items())]
    ingest = next((runs.loc[r]["lineage"].get("ingest") for r in data.board["run_id"] if (runs.loc[r]["lineage"] or {}).get("ingest")), None)
    if ingest:
        facts.append(["documents", f"{ingest['n_documents']} read from {ingest['n_files']} files in {ingest['root']}; "
                                   f"{ingest['n_skipped']} skipped, {ingest['n_errors']} failed"])
        facts += [["skipped file", x] for x in ingest.get("skipped", [])] + [["failed file", x] for x in ingest.get("errors", [])]
    timing_rows = []
    for _, r in data.board.iterrows():
        t = runs.loc[r["run_id"]]["timings"] or {}
        timing_rows.append([str(r["rank"]), str(r["run_id"])[:10]] + [f"{t.get(k, 0):.1f}s" if isinstance(t.get(k), (int, float)) else "-"
                                                                     for k in ("retrieval_s", "rerank_s", "generation_s", "evaluation_s")]
                           + [str(t.get("questions_computed", "-"))])
    return ("<h2>Lineage</h2>" + _table([], facts) + "<h3>Runs</h3>" + _table(header, rows, "sortable wrap")
            + "<h3>Compute time in the session that stored each run</h3>"
            + _table(["#", "run", "retrieval", "rerank", "generation", "evaluation", "questions computed"], timing_rows, "sortable")
            + "<h3>Package versions</h3>" + _table(["package", "version(s)"], pkg_rows))


def reranker_gain_html(data: ReportData) -> str:
    """Reranker gain: each reranked run against the same configuration without the reranker,
    paired over questions (difference, 95% CI, Holm-corrected p), with the latency it adds."""
    gain = data.reranker_gain
    if gain is None or gain.empty:
        return ""
    rows = []
    for _, g in gain.iterrows():
        sig = "yes" if g["significant"] else "no"
        rows.append([str(g["rerank"]), f"{g['retrieval']} | {g['embedding']}", str(g["metric"]),
                     _cell(g["metric"], g["without"]), _cell(g["metric"], g["with"]),
                     f'<td class="num">{esc(f"{g.gain:+.3f}")}<span class="ci">[{esc(f"{g.ci_low:+.3f}")}, {esc(f"{g.ci_high:+.3f}")}]</span></td>',
                     f'<td class="num">{esc(f"{g.p_holm:.3g}")}</td>', sig,
                     _cell("added_latency_s", g["added_latency_mean_s"])])
    header = ["reranker", "first stage", "metric", "without", "with", "gain [95% CI]", "p (Holm)", "significant", "added latency"]
    note = ("<p class='note'>Gain = mean over the same questions of (with reranker - without). "
            "McNemar for 0/1 metrics, permutation test otherwise; Holm over this table.</p>")
    return "<h2>Reranker gain</h2>" + _table(header, rows, cls="sortable") + note


def reliability_html(data: ReportData) -> str:
    """Reliability and safety per run: failed questions with their reasons (never hidden in a
    mean), runs stopped by a budget, fallback answers, attack success rate and PII leakage."""
    table = reliability_table(data)
    measured = [m for m in SAFETY_METRICS if table[m].notna().any()]
    troubled = table[(table["n_failed"] > 0) | (table["status"] != "complete") | (table["fallback_answers"] > 0)]
    if troubled.empty and not measured:
        total = int(table["n_stored"].sum())
        return (f"<h2>Reliability and safety</h2><p>Every run is complete: all {total} question rows answered without error. "
                "No safety suite (prompt injection, PII) is configured in this experiment.</p>")
    header = ["#", "run", "status", "questions", "failed", "fallback answers"] + [label(m) for m in measured]
    rows, classes = [], []
    for i, (_, t) in enumerate(table.iterrows(), start=1):
        failed = t["failures"] or "none"
        stored = f"{t['n_stored']} of {t['n_questions']}" if t["n_stored"] != t["n_questions"] else str(t["n_questions"])
        cells = [str(i), str(t["label"]), str(t["status"]), stored,
                 f'<td class="{"error" if t["n_failed"] else ""}">{esc(failed)}</td>', str(t["fallback_answers"])]
        cells += [_cell(m, t[m], t[f"{m}_ci_low"], t[f"{m}_ci_high"]) for m in measured]
        rows.append(cells)
        classes.append("")
    notes = ["<p class='note'>A failed question keeps its row and its error; it counts in the error rate and is left out of "
             "quality means (never scored as 0 or NaN). <code>workbench run</code> again retries failed and missing questions.</p>"]
    if any(str(s).startswith("stopped") for s in table["status"]):
        notes.append("<p class='note'><b>stopped: budget</b>: the experiment's budget was reached; the questions answered are "
                     "stored and a later <code>workbench run</code> resumes.</p>")
    if measured:
        notes.append("<p class='note'>Attack success: share of prompt-injection trials whose success criterion (canary, link, "
                     "system-prompt fragment) appears in the answer; lower is better. PII leakage: share of answers repeating "
                     "an e-mail, phone, card, IBAN or SSN found in the retrieved passages. 95% Wilson score intervals. "
                     "See docs/metrics.md.</p>")
    return "<h2>Reliability and safety</h2>" + _table(header, rows, "sortable", classes) + "".join(notes)
