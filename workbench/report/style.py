"""The report's and the explorer's look, in one stylesheet scoped to ``.wb``.

Every HTML fragment the report notebook and the explorer display is wrapped in ``<div class="wb">``
(:func:`wrap`), and the first one carries this stylesheet (:func:`style_tag`). So the same page
looks the same wherever it is shown: the ``workbench report`` page (whose template puts the
stylesheet in its head and its body in ``<main class="wb">``), JupyterLab, and plain ``jupyter
nbconvert --to html`` of the executed notebook. Scoping keeps these rules off JupyterLab's own UI;
the few ``!important`` override JupyterLab's output styles (right-aligned cells, fixed table
layout), which are more specific than a scoped rule.
"""

from __future__ import annotations

CSS = """
.wb { --fg: #1d2329; --muted: #5b6670; --line: #d9dee3; --accent: #0b6bcb; --good: #127a3a; --bad: #b3261e; --bg2: #f5f7f9;
  color: var(--fg); font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; text-align: left; }
.wb h1 { font-size: 26px; margin: 8px 0 4px; }
.wb h2 { font-size: 20px; margin: 36px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.wb h3 { font-size: 16px; margin: 20px 0 6px; } .wb h4 { font-size: 14px; margin: 8px 0 4px; }
.wb p { margin: 6px 0; text-align: left; } .wb .muted { color: var(--muted); }
.wb code { font-size: 12px; background: var(--bg2); padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
.wb .scroll { overflow-x: auto; max-width: 100%; }
.wb table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; table-layout: auto !important; }
.wb th, .wb td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left !important; vertical-align: top;
  overflow-wrap: break-word; }
.wb table.wrap td { overflow-wrap: anywhere; }
.wb th { background: var(--bg2); position: sticky; top: 0; overflow-wrap: normal; }
.wb td.num { text-align: right !important; font-variant-numeric: tabular-nums; white-space: nowrap; }
.wb th[data-order="asc"]::after { content: " \\25B2"; } .wb th[data-order="desc"]::after { content: " \\25BC"; }
.wb tr.recommended td { background: #eaf6ee; } .wb .ci { display: block; color: var(--muted); font-size: 11px; }
.wb .headline { border: 1px solid #b7dfc4; background: #f1faf4; border-radius: 8px; padding: 14px 18px; margin: 12px 0 8px; }
.wb .headline .config { font-size: 18px; font-weight: 600; } .wb .warn { border-color: #e8c48a; background: #fff8ec; }
.wb .badge { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 9px; background: var(--bg2);
  border: 1px solid var(--line); margin-left: 4px; white-space: nowrap; }
.wb .badge.best { background: #d7f0df; border-color: #9fd3b0; } .wb .badge.tie { background: #e8f0fb; border-color: #b3c9ea; }
.wb .badge.out { background: #fbe9e7; border-color: #eab4ad; }
.wb figure { margin: 12px 0 20px; } .wb figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.wb figcaption { color: var(--muted); font-size: 12px; }
.wb details.question { border: 1px solid var(--line); border-radius: 6px; margin: 6px 0; padding: 4px 10px; }
.wb details.question > summary { cursor: pointer; padding: 4px 0; }
.wb details.all-metrics > summary { cursor: pointer; color: var(--accent); margin: 4px 0; }
.wb .delta-pos { color: var(--good); font-weight: 600; } .wb .delta-neg { color: var(--bad); font-weight: 600; }
.wb .side { display: grid; grid-template-columns: repeat(auto-fit, minmax(280px, 1fr)); gap: 12px; } .wb .side > div { min-width: 0; }
.wb .answer { background: var(--bg2); border-radius: 4px; padding: 6px 8px; white-space: pre-wrap; }
.wb .passage { border-left: 3px solid var(--line); padding: 2px 8px; margin: 6px 0; font-size: 12.5px; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.wb details.passage > summary { cursor: pointer; white-space: normal; list-style-position: outside; }
.wb .passage.relevant { border-left-color: var(--good); } .wb .passage .meta { color: var(--muted); font-size: 11.5px; }
.wb mark { background: #fff0a8; padding: 0 1px; } .wb .error { color: var(--bad); }
.wb pre { white-space: pre-wrap; font-size: 12px; background: var(--bg2); padding: 8px; }
"""


def style_tag() -> str:
    """The stylesheet as a ``<style>`` element (displayed once, with a notebook's first output)."""
    return f"<style>{CSS}</style>"


def wrap(fragment: str, *, styled: bool = False) -> str:
    """``fragment`` inside ``<div class="wb">``, with the stylesheet in front when ``styled``."""
    return (style_tag() if styled else "") + f'<div class="wb">{fragment}</div>'
