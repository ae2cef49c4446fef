"""Exports that let anyone re-score a run with their own tools: a TREC run file (document level,
ranked exactly as trec_eval ranks it), or the per-question rows as JSON lines or CSV."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd

from .data.types import Hit
from .errors import WorkbenchError
from .evaluation.registry import metric_columns
from .evaluation.retrieval import doc_scores, ranked_docs
from .store import Store

FORMATS = ("csv", "jsonl", "trec")


def _trec_lines(rows: pd.DataFrame, run_id: str) -> list[str]:
    lines = []
    for _, r in rows.iterrows():
        scores = doc_scores(tuple(Hit(h["chunk_id"], h["doc_id"], h["score"]) for h in r["hits"]))
        for rank, doc_id in enumerate(ranked_docs(scores), start=1):
            lines.append(f"{r['query_id']} Q0 {doc_id} {rank} {scores[doc_id]:.6f} {run_id}")
    return lines


def _records(rows: pd.DataFrame) -> list[dict]:
    """One flat record per question: ids (the run's too, so exports of several runs can be
    concatenated), texts, what was retrieved, and every metric."""
    records = []
    for _, r in rows.iterrows():
        rec = {"run_id": r["run_id"], "query_id": r["query_id"], "question": r["question"], "answer": r["answer"], "error": r["error"],
               "gold_answers": r["gold_answers"], "retrieved_doc_ids": list(dict.fromkeys(h["doc_id"] for h in r["hits"])),
               "retrieved_chunk_ids": [h["chunk_id"] for h in r["hits"]]}
        for c in metric_columns(rows.columns):
            v = r[c]
            rec[c] = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
        records.append(rec)
    return records


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else ["run_id", "query_id"], extrasaction="ignore")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: json.dumps(v, default=_json_default) if isinstance(v, list) else v for k, v in rec.items()})
    return buf.getvalue()


def export_run(store: Store, run_id: str, fmt: str, path: Path | None) -> str:
    """Write a run as a TREC run file (document level), JSON lines or CSV; returns the text.

    Raises:
        WorkbenchError: an unknown format (checked before anything is read).
        StoreError: the run is not stored.
    """
    if fmt not in FORMATS:
        raise WorkbenchError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    run = store.run(run_id)
    rows = store.questions(run["run_id"])
    if fmt == "trec":
        lines = _trec_lines(rows, run["run_id"])
        text = "\n".join(lines) + ("\n" if lines else "")
    elif fmt == "jsonl":
        text = "".join(json.dumps(rec, ensure_ascii=False, default=_json_default) + "\n" for rec in _records(rows))
    else:
        text = _csv_text(_records(rows))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return text


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj))
