"""Reports: static HTML read from the store (never recomputed), for people who do not open notebooks."""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path

from .config import safe_name
from .leaderboard import AXES, fmt_with_ci, headline_columns, sort_board
from .store import Store

REPORTS_DIR = Path(os.environ.get("WORKBENCH_REPORTS", "reports"))


def report_dir(experiment: str, reports_dir: Path | None = None) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = (reports_dir or REPORTS_DIR) / safe_name(experiment) / stamp
    path.mkdir(parents=True, exist_ok=True)
    return path


def render_report(experiment: str, store_url: str, reports_dir: Path | None = None) -> Path:
    """Write a plain HTML leaderboard for ``experiment``; returns the file's path."""
    store = Store(store_url)
    board = sort_board(store.leaderboard(experiment))
    metrics = headline_columns(board)
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in ["run", *AXES, *metrics])
    body = "".join(
        "<tr>" + f"<td><code>{e(r['run_id'][:10])}</code></td>" + "".join(f"<td>{e(str(r[a]))}</td>" for a in AXES)
        + "".join(f"<td>{e(fmt_with_ci(m, r.get(m), r.get(m + '_ci_low'), r.get(m + '_ci_high')))}</td>" for m in metrics) + "</tr>"
        for _, r in board.iterrows()
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(experiment)} bake-off</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style>
</head><body><h1>{e(experiment)}</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"""
    path = report_dir(experiment, reports_dir) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
