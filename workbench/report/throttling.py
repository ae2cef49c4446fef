"""The report's "Provider rate limits" section: what each run's adaptive limiter did.

A hosted provider that answers HTTP 429 slows a bake-off down and, with fixed concurrency, can
fail questions outright. The run core's AIMD limiter (``providers/throttle.py``) halves the
concurrency on a 429 (or a ``Retry-After``) and grows it back by one per success window; what it
did during the session that computed a run is stored with the run's timings (``throttle_*``).
This section puts it in front of the reader: how many requests were refused, how far the
concurrency was cut and where it ended, and the time spent waiting, so a slow or partial run is
explained by the provider's limit rather than blamed on the configuration.
"""

from __future__ import annotations

import pandas as pd

from .artifacts import esc
from .data import ReportData

COLUMNS = ("throttle_requests", "throttle_rate_limited", "throttle_decreases", "throttle_increases", "throttle_limit_min",
           "throttle_limit_final", "throttle_wait_s")


def throttling_table(data: ReportData) -> pd.DataFrame:
    """One row per run whose generation went through an adaptive limiter: its counts and its cap."""
    rows = []
    runs = data.runs.set_index("run_id")
    for _, r in data.board.iterrows():
        run = runs.loc[r["run_id"]]
        timings = run["timings"] or {}
        if not timings.get("throttle_requests"):
            continue
        gen = (run["config"] or {}).get("generation") or {}
        rows.append({"rank": r["rank"], "run_id": r["run_id"], "label": r["label"], "cap": gen.get("concurrency"),
                     "adaptive": gen.get("adaptive_rate", True), "requests_per_minute": gen.get("requests_per_minute"),
                     **{c: timings.get(c) for c in COLUMNS}})
    return pd.DataFrame(rows, columns=["rank", "run_id", "label", "cap", "adaptive", "requests_per_minute", *COLUMNS])


def throttling_html(data: ReportData) -> str:
    """The section; empty when no run called a hosted generation endpoint."""
    table = throttling_table(data)
    if table.empty:
        return ""
    limited = table[table["throttle_rate_limited"] > 0]
    if limited.empty:
        return ("<h2>Provider rate limits</h2><p>No request was refused with HTTP 429 "
                f"({int(table['throttle_requests'].sum())} generation requests in {len(table)} runs).</p>")
    rows = []
    for _, t in table.iterrows():
        conc = (f"{t['cap']} → {t['throttle_limit_min']} (ended at {t['throttle_limit_final']})" if t["adaptive"]
                else f"{t['cap']} (fixed)")
        rows.append("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in (
            f"#{t['rank']}", t["label"], int(t["throttle_requests"]), int(t["throttle_rate_limited"]),
            f"{t['throttle_rate_limited'] / t['throttle_requests']:.0%}", conc,
            f"{int(t['throttle_decreases'])} / {int(t['throttle_increases'])}", f"{t['throttle_wait_s']:.1f}s")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("#", "run", "requests", "refused (429)", "share", "concurrency: cap → lowest",
                                             "halved / grown", "waiting"))
    note = ("<p class='note'>Requests count every attempt, retries included. Adaptive concurrency (AIMD): a 429 or "
            "<code>Retry-After</code> halves the requests in flight and pauses new ones for the time the provider asked; each "
            "success window (as many successes in a row as the current limit) adds one back, up to <code>concurrency</code>; "
            "<code>requests_per_minute</code> caps the rate throughout. Latencies of these runs include time spent waiting "
            "for the provider's limit.</p>")
    return (f"<h2>Provider rate limits</h2><p>{len(limited)} of {len(table)} runs met HTTP 429 "
            f"({int(table['throttle_rate_limited'].sum())} refused of {int(table['throttle_requests'].sum())} requests).</p>"
            f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}")
