"""The leaderboard in a terminal (``workbench results``, the end of ``workbench run``).

By default one line per run, fitted to the terminal's width (``COLUMNS`` or the real width; 80
when piped without ``COLUMNS``): rank with ``=`` when the run ties with the best, the run id's first
8 characters, a short configuration label (shortened with … when space runs out), the ranking
metric with its 95% interval, and the experiment's few other columns (see
:mod:`workbench.report.board`). ``--all`` prints every metric as tables of metrics x runs, as many
runs side by side as fit the width, so nothing is ever cut off.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..evaluation.registry import label
from ..report.board import RankedBoard, header, value_text

ID_CHARS = 8


def _rank_text(row) -> str:
    if row.get("status") == "eliminated":
        return "out"
    return f"{int(row['rank'])}{'=' if row.get('ties_best') is True else ''}"


def _out_text(row) -> str:
    """Why an eliminated run left the race, in the ranking metric's cell (at most 20 characters,
    the width of a value with its interval): its values cover only the questions it saw, or none."""
    race = (row.get("evidence") or {}).get("race") or {}
    n = race.get("n_questions", row.get("n_questions"))
    if race.get("stage") == "retrieval":
        return "out at retrieval"
    if race.get("reason") == "constraint":
        return f"out over limit, {n} q"
    return f"out round {race['round']}, {n} q" if race.get("round") else f"out after {n} q"


# Words of the registry's labels shortened in the one-line view's headers (values set the widths).
SHORT_WORDS = {"Hallucination": "Halluc.", "Generation": "Gen.", "Retrieval": "Retr.", "question": "q", "Citation": "Cit.",
               "Correct": "Corr.", "accuracy": "acc.", "refusals": "refus.", "Precision": "Prec.", "Completion": "Compl."}


def _header_lines(text: str, width: int) -> str:
    """``text`` in at most two lines of ``width``: long words shortened, then cut with …."""
    words = [SHORT_WORDS.get(w, w) for w in text.split()]
    lines = [""]
    for word in words:
        candidate = f"{lines[-1]} {word}".strip()
        if len(candidate) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    lines = lines[:2] if len(lines) <= 2 else [lines[0], " ".join(lines[1:])]
    return "\n".join(line if len(line) <= width else line[:width - 1] + "…" for line in lines)


def _compact_cells(ranked: RankedBoard) -> tuple[list[str], list[list[str]]]:
    m = ranked.metric
    headers = ["#", "run", "configuration", f"{header(m)} [95% CI]", *[header(c) for c in ranked.columns]]
    rows = [[_rank_text(r), str(r["run_id"])[:ID_CHARS], str(r["label"]),
             _out_text(r) if r.get("status") == "eliminated" else value_text(m, r.get(m), r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high")),
             *[value_text(c, r.get(c), ci=False) for c in ranked.columns]] for _, r in ranked.board.iterrows()]
    return headers, rows


def compact_table(ranked: RankedBoard, width: int) -> tuple[Table, int]:
    """One line per run within ``width`` columns: every column as wide as its values (headers
    wrap to two lines), the configuration label gets the rest (cut with …). Columns that do not
    fit even so are left out from the right; returns (table, how many were left out)."""
    headers, rows = _compact_cells(ranked)
    words = [max(len(SHORT_WORDS.get(w, w)) for w in h.split()) for h in headers]
    widths = [max([len(r[i]) for r in rows] + [min(words[i], 8) if i >= 3 else len(headers[i])]) for i in range(len(headers))]
    widths[3] = max(widths[3], min(len(headers[3]), 12))
    natural_label = max(len(r[2]) for r in rows)
    hidden = 0
    while True:
        fixed = sum(w for i, w in enumerate(widths) if i != 2) + len(widths) - 1
        label_width = min(natural_label, width - fixed)
        if label_width >= min(12, natural_label) or len(widths) <= 4:
            break
        widths.pop()
        hidden += 1
    table = Table(box=None, padding=(0, 1), pad_edge=False, collapse_padding=True, show_edge=False, header_style="bold")
    for i, w in enumerate(widths):
        w = max(1, label_width) if i == 2 else w
        table.add_column(_header_lines(headers[i], w), width=w, no_wrap=True, overflow="ellipsis",
                         justify="left" if i in (1, 2) else "right")
    for r in rows:
        table.add_row(*r[:len(widths)])
    return table, hidden


def _run_groups(n_runs: int, width: int, name_width: int, cell_width: int = 16) -> list[range]:
    per = max(1, (width - name_width) // cell_width)
    return [range(i, min(i + per, n_runs)) for i in range(0, n_runs, per)]


def all_metrics_tables(ranked: RankedBoard, width: int) -> list[Table]:
    """Every metric (rows) of every run (columns: ``#rank`` and run id), value over interval."""
    metrics = ranked.metrics
    name_width = min(28, max(len(label(m)) for m in metrics) + 3)
    rows = list(ranked.board.iterrows())
    tables = []
    for group in _run_groups(len(rows), width, name_width):
        table = Table(box=None, padding=(0, 1), pad_edge=False, collapse_padding=True, header_style="bold")
        table.add_column("metric", no_wrap=True, overflow="ellipsis", max_width=name_width)
        for i in group:
            r = rows[i][1]
            table.add_column(f"#{_rank_text(r)}\n{str(r['run_id'])[:ID_CHARS]}", justify="right", overflow="fold")
        for m in metrics:
            cells = []
            for i in group:
                r = rows[i][1]
                low, high = r.get(f"{m}_ci_low"), r.get(f"{m}_ci_high")
                ci = value_text(m, r.get(m), low, high)
                value = value_text(m, r.get(m), ci=False)
                cells.append(value + ("\n" + ci[len(value):].strip() if ci != value else ""))
            table.add_row(header(m), *cells)
        tables.append(table)
    return tables


def print_ranked(console: Console, ranked: RankedBoard, *, show_all: bool = False) -> None:
    """The leaderboard, then one legend line (wrapped to the width)."""
    console.print(f"[bold]{ranked.experiment}[/bold]: {len(ranked.board)} runs", highlight=False)
    if show_all:
        for _, r in ranked.board.iterrows():
            console.print(f"#{_rank_text(r)} {str(r['run_id'])[:ID_CHARS]} {r['label']} ({r['status']})", highlight=False, markup=False)
        for table in all_metrics_tables(ranked, console.width):
            console.print()
            console.print(table)
        console.print(ranked.legend(), highlight=False, markup=False, style="dim")
        return
    table, hidden = compact_table(ranked, console.width)
    console.print(table)
    more = f"; {hidden} more column(s) need a wider terminal" if hidden else ""
    console.print(ranked.legend() + more + "; --all for every metric", highlight=False, markup=False, style="dim")
