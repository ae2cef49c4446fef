"""``workbench questions review``: a person accepts, edits or rejects generated questions in a CSV.

Export writes one row per question; import checks every row first (errors name the CSV line and
nothing is written), then rewrites the evaluation set with its ``revision`` + 1 and a ``history``
entry. An edited question's difficulty is measured as for generated ones (``questions.difficulty``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

from .data.evalset import DIFFICULTIES, EvalQuestion, documents_folder, read_manifest, read_questions, validate_question, write_evalset
from .data.ingest import ingest_folder
from .data.types import Span
from .errors import DatasetError
from .hashing import file_sha256, sha256_text
from .questions import difficulty

REVIEW_COLUMNS = ["id", "decision", "question", "answers", "doc_id", "span_start", "span_end", "span_text",
                  "difficulty", "unanswerable", "status", "note"]
DECISIONS = ("", "accept", "edit", "reject")
ANSWER_SEP = " | "


def export_review(folder: str | Path, csv_path: str | Path) -> int:
    """Write every question (accepted and rejected) to a CSV a reviewer edits in a spreadsheet.

    ``decision``: ``accept``, ``reject`` or ``edit`` (take this row's question, answers, span,
    difficulty and unanswerable as the new values), or empty to keep the question as it is.
    ``span_text`` and ``status`` (with a rejected candidate's reason) are for reading only.
    Returns the number of rows."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    docs = ingest_folder(documents_folder(folder, manifest)).docs
    questions = read_questions(folder)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(REVIEW_COLUMNS)
    for q in questions:
        sp = q.spans[0] if q.spans else None
        text = docs[sp.doc_id].text[sp.start:sp.end] if sp and sp.doc_id in docs else ""
        w.writerow([q.qid, "", q.text, ANSWER_SEP.join(q.answers), sp.doc_id if sp else "", sp.start if sp else "",
                    sp.end if sp else "", text, q.difficulty or "", "yes" if q.unanswerable else "no",
                    q.status + (f" ({q.extra['reject_reason']})" if q.status == "rejected" and q.extra.get("reject_reason") else ""),
                    q.extra.get("review_note", "")])
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    Path(csv_path).write_text(buf.getvalue(), encoding="utf-8")
    return len(questions)


def _read_review_csv(csv_path: Path, columns: list[str] = REVIEW_COLUMNS, hint: str = "export a fresh review file") -> csv.reader:
    """A review CSV's reader past its header; one-line errors for a missing file, bad encoding or a wrong header."""
    try:
        raw = csv_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"{csv_path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{csv_path}: not UTF-8 text (byte {exc.start})") from None
    reader = csv.reader(io.StringIO(raw))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:len(columns)]] != columns:
        raise DatasetError(f"{csv_path}:1: expected the header {','.join(columns)} ({hint})")
    return reader


def _edit(q: EvalQuestion, rec: dict, docs: dict, where: str) -> None:
    """Apply an ``edit`` row: the row's question, answers, span, difficulty and answerability."""
    unanswerable = rec["unanswerable"].lower()
    if unanswerable not in ("yes", "no", "true", "false", "1", "0"):
        raise DatasetError(f"{where}: unanswerable {rec['unanswerable']!r} must be yes or no")
    q.unanswerable = unanswerable in ("yes", "true", "1")
    q.text = rec["question"]
    q.answers = [a.strip() for a in rec["answers"].split(ANSWER_SEP.strip()) if a.strip()]
    if q.unanswerable:
        q.answers, q.spans = [], []
    else:
        try:
            start, end = int(rec["span_start"]), int(rec["span_end"])
        except ValueError:
            raise DatasetError(f"{where}: span_start/span_end must be integers") from None
        q.spans = [Span(rec["doc_id"], start, end)]
    if rec["difficulty"] and rec["difficulty"] not in DIFFICULTIES:
        raise DatasetError(f"{where}: difficulty {rec['difficulty']!r} must be one of {', '.join(DIFFICULTIES)}")
    q.difficulty = rec["difficulty"] or None
    if q.difficulty is None and not q.unanswerable and q.spans and q.spans[0].doc_id in docs:
        sp = q.spans[0]  # the same measure as for generated questions
        q.difficulty = difficulty(q.text, docs[sp.doc_id].text[sp.start:sp.end])
    q.origin = "edited"


def _apply_row(row: list[str], where: str, by_id: dict, seen: set, docs: dict, tally: dict) -> None:
    if len(row) < len(REVIEW_COLUMNS):
        raise DatasetError(f"{where}: expected {len(REVIEW_COLUMNS)} columns, got {len(row)}")
    rec = dict(zip(REVIEW_COLUMNS, (c.strip() for c in row)))
    q = by_id.get(rec["id"])
    if q is None:
        raise DatasetError(f"{where}: unknown question id {rec['id']!r}")
    if rec["id"] in seen:
        raise DatasetError(f"{where}: question {rec['id']!r} appears twice")
    seen.add(rec["id"])
    decision = rec["decision"].lower()
    if decision not in DECISIONS:
        raise DatasetError(f"{where}: decision {rec['decision']!r} must be accept, edit, reject or empty")
    if rec["note"]:
        q.extra["review_note"] = rec["note"]
    if decision == "":
        tally["unchanged"] += 1
        return
    tally[decision] += 1
    if decision == "reject":
        q.status = "rejected"
        return
    if decision == "edit":
        _edit(q, rec, docs, where)
    q.status = "accepted"
    validate_question(q, docs, where)


def import_review(folder: str | Path, csv_path: str | Path) -> dict:
    """Apply a reviewed CSV: every row is checked first (errors name the CSV line), then the set
    is rewritten with ``revision`` + 1 and a ``history`` entry. Nothing is written on an error."""
    folder, csv_path = Path(folder), Path(csv_path)
    manifest = read_manifest(folder)
    docs = ingest_folder(documents_folder(folder, manifest)).docs
    questions = read_questions(folder)
    by_id = {q.qid: q for q in questions}
    reader = _read_review_csv(csv_path)
    tally = {"accept": 0, "edit": 0, "reject": 0, "unchanged": 0}
    seen: set[str] = set()
    for row in reader:
        if any(c.strip() for c in row):
            _apply_row(row, f"{csv_path}:{reader.line_num}", by_id, seen, docs, tally)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    revision = int(manifest.get("revision", 1)) + 1
    history = list(manifest.get("history", [])) + [{"revision": revision, "at": stamp, "change": "review import",
                                                    "review_file_sha256": file_sha256(csv_path), **tally}]
    write_evalset(folder, {**manifest, "revision": revision, "history": history}, questions)
    return {"revision": revision, **tally}


# -- human labels of answers, for the LLM judge ----------------------------------------------------

JUDGE_REVIEW_COLUMNS = ["query_id", "faithful", "question", "answer", "passages", "answer_sha256", "note"]
LABELS = {"yes": 1.0, "no": 0.0, "": None}


def export_judge_review(store, run_id: str, csv_path: str | Path) -> int:
    """Write a run's answers to a CSV where a person says whether each is supported by its passages
    (``faithful``: yes, no, or empty to skip). Blind: the judge's verdict is not shown, so it cannot
    sway the person. Returns the number of answers written."""
    from .stages.generation import ContextChunk, format_context

    run_id = store.run(run_id)["run_id"]
    rows = store.questions(run_id)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(JUDGE_REVIEW_COLUMNS)
    n = 0
    for r in rows.to_dict("records"):
        if not isinstance(r.get("answer"), str) or isinstance(r.get("error"), str):
            continue
        passages = format_context([ContextChunk(h["rank"], h["doc_id"], h.get("context", ""), h["text"]) for h in r["hits"]])
        w.writerow([r["query_id"], "", r["question"], r["answer"], passages, sha256_text(r["answer"]), ""])
        n += 1
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    Path(csv_path).write_text(buf.getvalue(), encoding="utf-8")
    return n


def _judge_labels(csv_path: Path, answers: dict[str, str]) -> dict[str, float | None]:
    reader = _read_review_csv(csv_path, JUDGE_REVIEW_COLUMNS, "export a fresh file with --run RUN --export")
    labels: dict[str, float | None] = {}
    end = reader.line_num
    for row in reader:
        where, end = f"{csv_path}:{end + 1}", reader.line_num  # the line the record starts on (passages span lines)
        if not any(c.strip() for c in row):
            continue
        rec = dict(zip(JUDGE_REVIEW_COLUMNS, (c.strip() for c in row + [""] * len(JUDGE_REVIEW_COLUMNS))))
        if rec["query_id"] not in answers:
            raise DatasetError(f"{where}: query_id {rec['query_id']!r} has no stored answer in this run")
        if rec["query_id"] in labels:
            raise DatasetError(f"{where}: query_id {rec['query_id']!r} appears twice")
        if rec["faithful"].lower() not in LABELS:
            raise DatasetError(f"{where}: faithful {rec['faithful']!r} must be yes, no or empty")
        if rec["answer_sha256"] != sha256_text(answers[rec["query_id"]]):
            raise DatasetError(f"{where}: the stored answer changed since this file was exported (re-export and label again)")
        labels[rec["query_id"]] = LABELS[rec["faithful"].lower()]
    return labels


def import_judge_review(store, run_id: str, csv_path: str | Path) -> dict:
    """Store a person's labels as the rows' ``human_faithful`` and recompute the run's aggregates
    (the judge's accuracy and Cohen's kappa against them). Every line is checked first; nothing is
    written on an error. A ``--rerun all`` recomputes the rows: import the file again after it."""
    from .pipeline.runner import run_aggregates

    run_id = store.run(run_id)["run_id"]
    rows = store.questions(run_id)
    answers = {r["query_id"]: r["answer"] for r in rows.to_dict("records") if isinstance(r.get("answer"), str)}
    labels = _judge_labels(Path(csv_path), answers)
    store.merge_question_metrics(run_id, {q: {"human_faithful": v} for q, v in labels.items()})
    fresh = run_aggregates(store.questions(run_id))
    # index_cost_usd is the one aggregate not made from the rows (the index build's): kept as stored
    kept = [a for a in store.aggregates([run_id]).drop(columns="run_id").to_dict("records") if a["metric"] == "index_cost_usd"]
    store.write_aggregates(run_id, fresh + kept)
    return {"labelled": sum(v is not None for v in labels.values()), "skipped": sum(v is None for v in labels.values())}
