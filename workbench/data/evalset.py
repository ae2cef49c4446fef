"""Evaluation sets: questions with gold answers and gold character spans over a folder of documents.

An evaluation set is a folder (``evalsets/NAME/``) with two files:

- ``evalset.json``, the manifest: ``format`` (``workbench-evalset/1``), ``name``, ``revision`` (1 when
  generated, +1 at every review import; ``history`` lists each change), ``documents`` (the documents
  folder, relative to the evaluation set's folder), ``docs`` (per document id: path, title,
  modified time, format, characters, sha256: for citations), ``ingest`` (files skipped or failed),
  ``generator`` (model, prompt hashes, sampling), ``filters`` (how many candidates each quality
  filter removed) and ``difficulty_mix``;
- ``questions.jsonl``, one question a line: ``_id``, ``text``, ``answers``, ``spans`` (a list of
  ``{doc_id, start, end}`` into the document's extracted text), ``difficulty``, ``unanswerable``
  (no answer in the corpus: refusing is correct), ``status`` (``accepted`` or ``rejected``) and
  ``origin`` (``generated``, ``edited``...).

Loading re-reads the documents folder (workbench.ingest) and re-validates every accepted
question: each span lies in a document that still has the same content (the id carries a content
hash) and each answer is found in its span, verbatim or normalised. An edited document therefore
makes the set fail loudly instead of scoring against shifted offsets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DatasetError
from ..hashing import file_sha256, hash_obj
from .corpus import read_jsonl
from .ingest import ingest_folder
from .types import Dataset, Query, Span

FORMAT = "workbench-evalset/1"
STATUSES = ("accepted", "rejected")
DIFFICULTIES = ("easy", "medium", "hard")


# -- answer-in-span --------------------------------------------------------------------------------

def _normalise_with_map(text: str) -> tuple[str, list[int]]:
    """Casefolded text with punctuation dropped and whitespace runs collapsed to one space, and
    for each output character the index of the input character it came from.

    Hand-written because the match must map back to offsets in the original text (a library
    normaliser returns only the normalised string).
    """
    out: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch).startswith("P"):
            continue
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
                where.append(i)
            continue
        for c in unicodedata.normalize("NFKC", ch).casefold():
            out.append(c)
            where.append(i)
    return "".join(out), where


def find_answer(text: str, answer: str, start: int = 0, end: int | None = None) -> tuple[int, int] | None:
    """Where ``answer`` occurs in ``text[start:end]``: verbatim first, else normalised (case,
    punctuation and whitespace ignored). Offsets are into ``text``; None when it is not there."""
    end = len(text) if end is None else end
    answer = answer.strip()
    if not answer:
        return None
    hit = text.find(answer, start, end)
    while hit >= 0:
        # whole words only: "10" must not match inside "100"
        if not ((hit > 0 and text[hit - 1].isalnum() and answer[0].isalnum())
                or (hit + len(answer) < len(text) and text[hit + len(answer)].isalnum() and answer[-1].isalnum())):
            return hit, hit + len(answer)
        hit = text.find(answer, hit + 1, end)
    norm_text, where = _normalise_with_map(text[start:end])
    norm_answer = _normalise_with_map(answer)[0].strip()
    if not norm_answer:
        return None
    for m in re.finditer(re.escape(norm_answer), norm_text):
        a, b = m.start(), m.end() - 1
        # whole words only: "10" must not match inside "100"
        if (a > 0 and norm_text[a - 1].isalnum()) or (m.end() < len(norm_text) and norm_text[m.end()].isalnum()):
            continue
        return start + where[a], start + where[b] + 1
    return None


# -- the question record ---------------------------------------------------------------------------

@dataclass
class EvalQuestion:
    qid: str
    text: str
    answers: list[str]
    spans: list[Span]
    difficulty: str | None = None
    unanswerable: bool = False
    status: str = "accepted"
    origin: str = "generated"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"_id": self.qid, "text": self.text, "answers": self.answers, "spans": [s.as_dict() for s in self.spans],
                "difficulty": self.difficulty, "unanswerable": self.unanswerable, "status": self.status,
                "origin": self.origin, **self.extra}

    @classmethod
    def from_json(cls, obj: dict, where: str) -> EvalQuestion:
        def need(key, typ, what):
            if key not in obj:
                raise DatasetError(f"{where}: missing field {key!r}")
            if not isinstance(obj[key], typ):
                raise DatasetError(f"{where}: field {key!r} must be {what}")
            return obj[key]

        qid = need("_id", str, "a string")
        text = need("text", str, "a string")
        answers = need("answers", list, "a list of strings")
        if not all(isinstance(a, str) for a in answers):
            raise DatasetError(f"{where}: field 'answers' must be a list of strings")
        spans = []
        for i, sp in enumerate(need("spans", list, "a list of {doc_id, start, end}")):
            if not (isinstance(sp, dict) and isinstance(sp.get("doc_id"), str) and isinstance(sp.get("start"), int)
                    and isinstance(sp.get("end"), int)):
                raise DatasetError(f"{where}: spans[{i}] must be {{doc_id: str, start: int, end: int}}")
            spans.append(Span(sp["doc_id"], sp["start"], sp["end"]))
        status = obj.get("status", "accepted")
        if status not in STATUSES:
            raise DatasetError(f"{where}: status {status!r} must be one of {', '.join(STATUSES)}")
        known = {"_id", "text", "answers", "spans", "difficulty", "unanswerable", "status", "origin"}
        return cls(qid, text, list(answers), spans, obj.get("difficulty"), bool(obj.get("unanswerable", False)), status,
                   obj.get("origin", "generated"), {k: v for k, v in obj.items() if k not in known})


def validate_question(q: EvalQuestion, docs: dict, where: str) -> None:
    """Raise ``DatasetError`` (prefixed ``where``) unless ``q`` is consistent with the documents."""
    if not q.text.strip():
        raise DatasetError(f"{where}: empty question text")
    if q.unanswerable:
        if q.answers or q.spans:
            raise DatasetError(f"{where}: an unanswerable question has no answers and no spans")
        return
    if not q.answers or not any(a.strip() for a in q.answers):
        raise DatasetError(f"{where}: no gold answer (mark it unanswerable or reject it)")
    if not q.spans:
        raise DatasetError(f"{where}: no supporting span")
    for sp in q.spans:
        doc = docs.get(sp.doc_id)
        if doc is None:
            path = sp.doc_id.rsplit("@", 1)[0]
            changed = any(d.rsplit("@", 1)[0] == path for d in docs)
            raise DatasetError(f"{where}: span document {sp.doc_id!r} " + (
                "has changed since the question was written (its content hash differs): regenerate or review" if changed
                else "is not in the documents folder"))
        if not (0 <= sp.start < sp.end <= len(doc.text)):
            raise DatasetError(f"{where}: span [{sp.start}, {sp.end}) is outside {sp.doc_id!r} ({len(doc.text)} characters)")
    for a in q.answers:
        if not any(find_answer(docs[sp.doc_id].text, a, sp.start, sp.end) for sp in q.spans):
            raise DatasetError(f"{where}: answer {a!r} is not in its span(s)")


# -- reading and writing ---------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    path = folder / "evalset.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not an evaluation set (expected format {FORMAT!r})")
    if not isinstance(manifest.get("documents"), str):
        raise DatasetError(f"{path}: field 'documents' (the documents folder) is missing")
    return manifest


def read_questions(folder: Path) -> list[EvalQuestion]:
    path = folder / "questions.jsonl"
    out, seen = [], set()
    for lineno, obj in read_jsonl(path):
        q = EvalQuestion.from_json(obj, f"{path}:{lineno}")
        if q.qid in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate question id {q.qid!r}")
        seen.add(q.qid)
        out.append(q)
    return out


def documents_folder(folder: Path, manifest: dict) -> Path:
    p = Path(manifest["documents"])
    return p if p.is_absolute() else (folder / p).resolve()


def write_evalset(folder: Path, manifest: dict, questions: list[EvalQuestion]) -> None:
    """Write both files into a temporary folder beside ``folder``, then swap it in: a failure
    leaves the previous version (or nothing) in place, never half a set."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "questions.jsonl").write_text("".join(json.dumps(q.to_json(), ensure_ascii=False) + "\n" for q in questions),
                                             encoding="utf-8")
        manifest = {**manifest, "questions_sha256": file_sha256(tmp / "questions.jsonl"),
                    "counts": counts(questions)}
        (tmp / "evalset.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def counts(questions: list[EvalQuestion]) -> dict:
    accepted = [q for q in questions if q.status == "accepted"]
    mix = {d: sum(q.difficulty == d for q in accepted if not q.unanswerable) for d in DIFFICULTIES}
    return {"accepted": len(accepted), "rejected": len(questions) - len(accepted),
            "answerable": sum(not q.unanswerable for q in accepted), "unanswerable": sum(q.unanswerable for q in accepted),
            "difficulty_mix": mix}


def load_evalset(folder: str | Path) -> Dataset:
    """An evaluation set as a ``Dataset``: documents from its folder, accepted questions, qrels
    (a span's document is relevant, grade 1) and the gold spans for chunk-level relevance."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    docs_root = documents_folder(folder, manifest)
    ingestion = ingest_folder(docs_root)
    if not ingestion.docs:
        raise DatasetError(f"{docs_root}: no readable documents ({ingestion.summary()})")
    questions_path = folder / "questions.jsonl"
    queries: dict[str, Query] = {}
    qrels: dict[str, dict[str, int]] = {}
    spans: dict[str, tuple[Span, ...]] = {}
    for lineno, obj in read_jsonl(questions_path):
        where = f"{questions_path}:{lineno}"
        q = EvalQuestion.from_json(obj, where)
        if q.qid in queries:
            raise DatasetError(f"{where}: duplicate question id {q.qid!r}")
        if q.status != "accepted":
            continue
        validate_question(q, ingestion.docs, where)
        if q.unanswerable:
            queries[q.qid] = Query(q.qid, q.text, no_answer=True)
            continue
        queries[q.qid] = Query(q.qid, q.text, tuple(q.answers))
        qrels[q.qid] = {sp.doc_id: 1 for sp in q.spans}
        spans[q.qid] = tuple(q.spans)
    if not queries:
        raise DatasetError(f"{questions_path}: no accepted questions")
    digest = hash_obj([ingestion.content_hash, file_sha256(questions_path)])
    ds = Dataset(folder, ingestion.docs, queries, qrels, digest, list(ingestion.skipped) + list(ingestion.errors),
                 spans=spans, ingest=ingestion.report())
    return ds


# -- human review ----------------------------------------------------------------------------------
