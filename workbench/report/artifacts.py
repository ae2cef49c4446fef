"""Run artifacts and reports: ``reports/<experiment>/<UTC timestamp>/`` and ``reports/index.html``.

A bake-off (``workbench run``, :func:`workbench.bakeoff.run_bakeoff`) executes
``notebooks/bakeoff.ipynb`` into its report folder, then renders the report there; ``workbench
report`` renders into a new folder. Rendering executes
``notebooks/report.ipynb`` (which reads the store only) and converts it to one self-contained
HTML page. The index lists every folder, newest first by its timestamp name (not by mtime).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from pathlib import Path

from ..notebooks import SUMMARY_MIME, content_security_policy, execute_notebook, recorded, render_html
from ..settings import Workspace, kernel_store_url, safe_name
from ..store import Store

STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
SUMMARY_FILE = "summary.json"


def reports_root(reports_dir: str | os.PathLike | None = None) -> Path:
    """``reports_dir``, else ``$WORKBENCH_REPORTS``, else ``reports`` (read at call time)."""
    return Path(reports_dir) if reports_dir else Workspace.resolve().reports_dir


def new_report_dir(experiment: str, reports_dir: str | os.PathLike | None = None) -> Path:
    """A new folder ``<root>/<experiment>/<UTC timestamp>``; never reuses an existing one."""
    base = reports_root(reports_dir) / safe_name(experiment)
    while True:
        path = base / dt.datetime.now(dt.timezone.utc).strftime(STAMP_FORMAT)
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue


def render_report(experiment: str, store_url: str, reports_dir: str | os.PathLike | None = None, *, out_dir: Path | None = None,
                  baseline_run: str = "", baseline_experiment: str = "", drilldown_limit: int = 15) -> Path:
    """Execute ``report.ipynb`` for ``experiment`` and render it to ``report.html``; return its path.

    Raises:
        StoreError: the experiment is not in the store (checked before a kernel starts).
        NotebookError: a cell failed (the message names the partial notebook).
    """
    store_url = kernel_store_url(store_url)
    Store(store_url).experiment(experiment)  # a missing experiment fails here, in one line
    out_dir = out_dir or new_report_dir(experiment, reports_dir)
    executed = out_dir / "report.ipynb"
    nb = execute_notebook("report", executed, {"experiment": experiment, "store_url": store_url, "baseline_run": baseline_run,
                                               "baseline_experiment": baseline_experiment, "drilldown_limit": drilldown_limit},
                          cwd=Path.cwd())
    found = recorded(nb, SUMMARY_MIME)
    if found:
        (out_dir / SUMMARY_FILE).write_text(json.dumps(found[-1], indent=2), encoding="utf-8")
    html = render_html(executed, out_dir / "report.html", f"{experiment} · bake-off report")
    write_index(out_dir.parent.parent)
    return html


# -- index -------------------------------------------------------------------------------------

def report_entries(reports_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every report folder under the root, newest first (by the timestamp in its name)."""
    root = reports_root(reports_dir)
    entries = []
    for folder in root.glob("*/*/"):
        if not folder.is_dir() or not ((folder / "report.html").exists() or (folder / "bakeoff.ipynb").exists()):
            continue
        try:
            stamp = dt.datetime.strptime(folder.name, STAMP_FORMAT).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
        summary = {}
        if (folder / SUMMARY_FILE).exists():
            try:
                summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                summary = {}
        entries.append({"folder": folder, "stamp": stamp, "experiment": summary.get("experiment") or folder.parent.name, **{
            k: summary.get(k) for k in ("recommended", "metric_label", "value", "n_runs", "n_questions")}})
    return sorted(entries, key=lambda e: (e["stamp"], str(e["folder"])), reverse=True)


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def write_index(reports_dir: str | os.PathLike | None = None) -> Path:
    """(Re)write ``<root>/index.html``: every experiment's reports, newest first."""
    root = reports_root(reports_dir)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for e in report_entries(root):
        rel = e["folder"].relative_to(root).as_posix()
        links = [f'<a href="{esc(rel)}/{name}">{label}</a>' for name, label in
                 (("report.html", "report"), ("report.ipynb", "report notebook"), ("bakeoff.ipynb", "bake-off notebook"))
                 if (e["folder"] / name).exists()]
        value = f"{e['metric_label']} {e['value']:.3f}" if isinstance(e.get("value"), (int, float)) else ""
        size = f"{e['n_runs']} × {e['n_questions']}" if e.get("n_runs") else ""
        rows.append(f"<tr><td>{esc(e['stamp'].strftime('%Y-%m-%d %H:%M:%S UTC'))}</td><td>{esc(e['experiment'])}</td>"
                    f"<td>{esc(e.get('recommended') or ('(no report rendered)' if not (e['folder'] / 'report.html').exists() else ''))}</td>"
                    f"<td>{esc(value)}</td><td>{esc(size)}</td><td>{' · '.join(links)}</td></tr>")
    body = "".join(rows) or '<tr><td colspan="6">no reports yet</td></tr>'
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{content_security_policy(None)}">
<title>Bake-off reports</title>
<style>body{{font:14px/1.45 -apple-system,"Segoe UI",Roboto,Arial,sans-serif;margin:24px 32px;color:#1d2329}}
table{{border-collapse:collapse}}th,td{{border-bottom:1px solid #d9dee3;padding:5px 10px;text-align:left}}th{{background:#f5f7f9}}</style>
</head><body><h1>Bake-off reports</h1><p>Newest first. Each report reads the results store as it was when rendered.</p>
<table><thead><tr><th>created (UTC)</th><th>experiment</th><th>recommended configuration</th><th>quality</th>
<th>runs × questions</th><th>files</th></tr></thead>
<tbody>{body}</tbody></table></body></html>
"""
    path = root / "index.html"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path

