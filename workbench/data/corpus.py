"""Datasets: one contract for BEIR folders and for a team's folder of documents plus questions.

The contract follows BEIR: ``docs`` by ``doc_id``, ``queries`` by ``query_id`` and
``qrels = {query_id: {doc_id: grade}}``. Every malformed line is a ``DatasetError`` naming the file
and line, raised before anything is written anywhere.

Layouts:

- BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``,
  optional ``answers`` and ``answer_starts``), ``qrels.tsv`` (header, then query-id, corpus-id, score).
- Documents folder: ``documents/`` with ``.md``/``.txt`` files (any depth; the doc_id is the path
  relative to ``documents/``) and ``questions.jsonl`` (``_id``, ``text``, optional ``answers`` and
  ``doc_ids``: the documents that answer it).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from ..errors import DatasetError
from ..hashing import file_sha256, hash_obj, sha256_text
from ..settings import max_document_bytes
from .headings import MARKDOWN_SUFFIXES, markdown_headings
from .types import Dataset, Document, Query, Span

DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt")


def _too_big(size: int, limit: int) -> str:
    return (f"{size / 1024 / 1024:.1f} MB, over the per-document limit of {limit / 1024 / 1024:.0f} MB "
            "(split it into several documents, or raise $WORKBENCH_MAX_DOCUMENT_MB)")


UNANSWERABLE_SUFFIX = "~unanswerable"


def unanswerable_slice(queries: list[Query], qrels: dict[str, dict[str, int]], fraction: float, seed: int) -> list[Query]:
    """Copies of a seeded ``fraction`` of ``queries`` with their relevant documents withheld.

    The copy keeps the question text but has no gold answer and cannot retrieve any document
    that answers it, so a grounded system should say it does not know.
    """
    queries = [q for q in queries if q.query_id in qrels]  # a question with no answer anywhere has nothing to withhold
    if fraction <= 0 or not queries:
        return []
    n = max(1, round(fraction * len(queries)))
    picked = sorted(random.Random(seed + 1).sample(sorted(q.query_id for q in queries), min(n, len(queries))))
    by_id = {q.query_id: q for q in queries}
    return [Query(qid + UNANSWERABLE_SUFFIX, by_id[qid].text, (), (), tuple(sorted(qrels[qid]))) for qid in picked]


def read_jsonl(path: Path):
    """Yield (line number, object) for each non-blank line, with file:line errors."""
    try:
        fh = open(path, "rb")  # decoded line by line: a text-mode file decodes ahead and loses the line number
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    limit = max_document_bytes()
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if len(raw) > limit:
                raise DatasetError(f"{path}:{lineno}: line is {_too_big(len(raw), limit)}")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start} of the line)") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _req_str(obj: dict, key: str, path: Path, lineno: int, allow_empty: bool = False) -> str:
    if key not in obj:
        raise DatasetError(f"{path}:{lineno}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DatasetError(f"{path}:{lineno}: field {key!r} must be a non-empty string")
    return value


def _query_from(obj: dict, path: Path, lineno: int) -> Query:
    qid = _req_str(obj, "_id", path, lineno)
    text = _req_str(obj, "text", path, lineno)
    answers = obj.get("answers", [])
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DatasetError(f"{path}:{lineno}: field 'answers' must be a list of strings")
    starts = obj.get("answer_starts", [])
    if not isinstance(starts, list) or not all(isinstance(s, int) for s in starts):
        raise DatasetError(f"{path}:{lineno}: field 'answer_starts' must be a list of integers")
    if starts and len(starts) != len(answers):
        raise DatasetError(f"{path}:{lineno}: 'answer_starts' has {len(starts)} entries for {len(answers)} answers")
    return Query(qid, text, tuple(answers), tuple(starts))


def _load_queries(path: Path) -> dict[str, Query]:
    queries: dict[str, Query] = {}
    for lineno, obj in read_jsonl(path):
        q = _query_from(obj, path, lineno)
        if q.query_id in queries:
            raise DatasetError(f"{path}:{lineno}: duplicate query id {q.query_id!r}")
        queries[q.query_id] = q
    if not queries:
        raise DatasetError(f"{path}: no queries")
    return queries


def load_beir(folder: Path, memo=None) -> Dataset:
    corpus_path, queries_path, qrels_path = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels.tsv"
    docs: dict[str, Document] = {}
    for lineno, obj in read_jsonl(corpus_path):
        doc_id = _req_str(obj, "_id", corpus_path, lineno)
        text = _req_str(obj, "text", corpus_path, lineno)
        title = obj.get("title", "") or ""
        if not isinstance(title, str):
            raise DatasetError(f"{corpus_path}:{lineno}: field 'title' must be a string")
        if doc_id in docs:
            raise DatasetError(f"{corpus_path}:{lineno}: duplicate doc id {doc_id!r}")
        docs[doc_id] = Document(doc_id, title, text)
    if not docs:
        raise DatasetError(f"{corpus_path}: empty corpus (no documents)")
    queries = _load_queries(queries_path)
    qrels = _load_qrels(qrels_path, docs, queries)
    digest = hash_obj([file_sha256(p, memo) for p in (corpus_path, queries_path, qrels_path)])
    return Dataset(folder, docs, queries, qrels, digest, spans=answer_start_spans(queries, qrels, docs),
                   titled=any(d.title.strip() for d in docs.values()))


def answer_start_spans(queries: dict[str, Query], qrels: dict[str, dict[str, int]],
                       docs: dict[str, Document]) -> dict[str, tuple[Span, ...]]:
    """SQuAD-style ``answer_starts`` as gold spans: ``(doc, start, start + len(answer))``.

    An offset only means something in a known document, so a query gets spans when it has exactly
    one relevant document and the answer text is found at the offset there (as in SQuAD and
    XQuAD); an offset that does not match is not trusted (that query stays document-level only).
    """
    spans: dict[str, tuple[Span, ...]] = {}
    for qid, q in queries.items():
        relevant = [d for d, g in qrels.get(qid, {}).items() if g > 0]
        if not q.answer_starts or len(relevant) != 1:
            continue
        text = docs[relevant[0]].text
        found = tuple(dict.fromkeys(Span(relevant[0], s, s + len(a)) for a, s in zip(q.answers, q.answer_starts)
                                    if a and text[s:s + len(a)] == a))
        if found:
            spans[qid] = found
    return spans


def _load_qrels(path: Path, docs: dict, queries: dict) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    qrels: dict[str, dict[str, int]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), start=1):
                if not row or not "".join(row).strip():
                    continue
                if lineno == 1 and row[0].strip().lower() in ("query-id", "query_id", "qid"):
                    continue
                if len(row) != 3:
                    raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score), got {len(row)}")
                qid, doc_id, grade = (c.strip() for c in row)
                try:
                    grade_int = int(grade)
                except ValueError:
                    raise DatasetError(f"{path}:{lineno}: score {grade!r} is not an integer") from None
                if qid not in queries:
                    raise DatasetError(f"{path}:{lineno}: unknown query id {qid!r}")
                if doc_id not in docs:
                    raise DatasetError(f"{path}:{lineno}: unknown doc id {doc_id!r}")
                qrels.setdefault(qid, {})[doc_id] = grade_int
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not qrels:
        raise DatasetError(f"{path}: no relevance judgements")
    return qrels


def load_documents_folder(folder: Path) -> Dataset:
    doc_root, questions_path = folder / "documents", folder / "questions.jsonl"
    docs: dict[str, Document] = {}
    skipped: list[str] = []
    hashes = []
    limit = max_document_bytes()
    for p in sorted(doc_root.rglob("*")):
        rel = p.relative_to(doc_root).as_posix()
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(doc_root).parts):
            continue  # hidden files and folders (.git/, .obsidian/) are not documents
        if p.suffix.lower() not in DOCUMENT_SUFFIXES:
            skipped.append(f"{rel}: unsupported file type {p.suffix or '(none)'}")
            continue
        size = p.stat().st_size
        if size > limit:  # checked before reading it
            raise DatasetError(f"{p}: document is {_too_big(size, limit)}")
        raw = p.read_bytes()
        if b"\x00" in raw[:8192]:
            raise DatasetError(f"{p}: binary file in the documents folder (remove it or rename it)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{p}: not UTF-8 text (byte {exc.start})") from None
        if not text.strip():
            skipped.append(f"{rel}: empty")
            continue
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), rel)
        headings = markdown_headings(text) if p.suffix.lower() in MARKDOWN_SUFFIXES else ()
        docs[rel] = Document(rel, title, text, headings)
        hashes.append((rel, sha256_text(text)))
    if not docs:
        raise DatasetError(f"{doc_root}: no .md/.txt documents")
    queries: dict[str, Query] = {}
    qrels: dict[str, dict[str, int]] = {}
    for lineno, obj in read_jsonl(questions_path):
        q = _query_from(obj, questions_path, lineno)
        if q.query_id in queries:
            raise DatasetError(f"{questions_path}:{lineno}: duplicate query id {q.query_id!r}")
        doc_ids = obj.get("doc_ids", [])
        if not isinstance(doc_ids, list) or not all(isinstance(d, str) for d in doc_ids):
            raise DatasetError(f"{questions_path}:{lineno}: field 'doc_ids' must be a list of document paths")
        for d in doc_ids:
            if d not in docs:
                raise DatasetError(f"{questions_path}:{lineno}: unknown document {d!r} in 'doc_ids'")
        queries[q.query_id] = q
        if doc_ids:
            qrels[q.query_id] = {d: 1 for d in doc_ids}
    if not queries:
        raise DatasetError(f"{questions_path}: no questions")
    digest = hash_obj([hashes, file_sha256(questions_path)])
    return Dataset(folder, docs, queries, qrels, digest, skipped)
