"""Evaluation sets: answer-in-span, loading as a dataset, the quality filters, human review."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from workbench.data.evalset import FORMAT, EvalQuestion, find_answer, read_manifest, write_evalset
from workbench.data.ingest import ingest_folder
from workbench.data.loader import load_dataset
from workbench.data.types import Span
from workbench.errors import DatasetError
from workbench.questions import Candidate, QuestionFilter, difficulty, sentence_around
from workbench.review import export_review, import_review

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "docs-sample" / "documents"


def test_find_answer_verbatim_then_normalised():
    text = "It was signed on September 17, 1787, in Philadelphia. Total: 100 delegates."
    assert find_answer(text, "September 17, 1787") == (17, 35)
    a, b = find_answer(text, "september 17 1787")  # case and punctuation ignored
    assert text[a:b] == "September 17, 1787"
    assert find_answer(text, "10") is None  # whole words only
    assert find_answer(text, "Philadelphia", 0, 20) is None  # outside the span
    assert find_answer(text, "  ") is None and find_answer(text, "London") is None


def _docs_copy(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    shutil.copytree(SAMPLE, root)
    return root


def _doc(root: Path, path: str):
    ing = ingest_folder(root)
    doc_id = ing.by_path()[path]
    return ing, ing.docs[doc_id]


def _write_set(tmp_path: Path, root: Path, questions: list[EvalQuestion]) -> Path:
    folder = tmp_path / "evalsets" / "team"
    write_evalset(folder, {"format": FORMAT, "name": "team", "revision": 1, "documents": str(root)}, questions)
    return folder


def _question(doc, qid: str, question: str, answer: str) -> EvalQuestion:
    a, b = find_answer(doc.text, answer)
    s, e = sentence_around(doc.text, a, b)
    return EvalQuestion(qid, question, [doc.text[a:b]], [Span(doc.doc_id, s, e)], difficulty(question, doc.text[s:e]))


def test_evalset_loads_as_a_dataset_with_spans_and_unanswerable(tmp_path: Path):
    root = _docs_copy(tmp_path)
    ing, doc = _doc(root, "founding/preamble.txt")
    qs = [_question(doc, "q1", "When was the Constitution signed?", "September 17, 1787"),
          _question(doc, "q2", "When was the Bill of Rights ratified?", "December 15, 1791"),
          EvalQuestion("q3", "Who painted the signing of the Constitution?", [], [], None, True),
          EvalQuestion("q4", "Rejected one?", ["x"], [], None, False, "rejected")]
    folder = _write_set(tmp_path, root, qs)
    manifest = read_manifest(folder)
    assert manifest["counts"] == {"accepted": 3, "rejected": 1, "answerable": 2, "unanswerable": 1,
                                  "difficulty_mix": {"easy": 2, "medium": 0, "hard": 0}}
    ds = load_dataset(folder)
    assert sorted(ds.queries) == ["q1", "q2", "q3"] and len(ds.docs) == 5
    assert ds.qrels == {"q1": {doc.doc_id: 1}, "q2": {doc.doc_id: 1}}
    sp = ds.spans["q1"][0]
    assert "September 17, 1787" in doc.text[sp.start:sp.end] and doc.text[sp.start:sp.end].startswith("The Constitution was signed")
    assert ds.queries["q3"].unanswerable and not ds.queries["q1"].unanswerable
    assert [q.query_id for q in ds.sample_queries(None, 0)] == ["q1", "q2", "q3"]  # the unanswerable one is sampled too
    assert ds.ingest["n_documents"] == 5 and ds.ingest["errors"] == []


def test_evalset_rejects_an_answer_outside_its_span_and_a_changed_document(tmp_path: Path):
    root = _docs_copy(tmp_path)
    _, doc = _doc(root, "founding/preamble.txt")
    good = _question(doc, "q1", "When was the Constitution signed?", "September 17, 1787")
    bad = EvalQuestion("q2", "When was it ratified?", ["December 15, 1791"], [good.spans[0]])  # wrong span
    folder = _write_set(tmp_path, root, [good, bad])
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert str(info.value) == f"{folder / 'questions.jsonl'}:2: answer 'December 15, 1791' is not in its span(s)"
    folder = _write_set(tmp_path, root, [good])
    (root / "founding" / "preamble.txt").write_text("Edited.\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"questions\.jsonl:1: span document 'founding/preamble\.txt@[0-9a-f]{12}' has changed"):
        load_dataset(folder)


def test_filters_remove_planted_bad_candidates(tmp_path: Path):
    ing = ingest_folder(SAMPLE)
    doc = ing.docs[ing.by_path()["founding/declaration.html"]]
    p0 = doc.text.index("The Declaration was drafted")
    passage = Span(doc.doc_id, p0, len(doc.text))
    asked: list[str] = []

    def closed_book(question: str) -> str:  # stands in for the LLM here; the integration test uses SmolLM2
        asked.append(question)
        return "Thomas Jefferson wrote it." if "drafted" in question else "I don't know."

    f = QuestionFilter(ing.docs, closed_book)
    assert f.offer(Candidate("a", "How many delegates signed the Declaration in all?", "fifty-six", passage, "direct")) is None
    assert f.offer(Candidate("b", "How many delegates signed the declaration, in all?", "fifty-six", passage, "direct")) == "duplicate"
    assert f.offer(Candidate("c", "In all, how many delegates signed the Declaration?", "fifty-six", passage, "direct")) == "duplicate"
    assert f.offer(Candidate("d", "Who was the first to sign?", "George Washington", passage, "direct")) == "answer_not_in_span"
    assert f.offer(Candidate("e", "Who drafted the Declaration mainly?", "Thomas Jefferson", passage, "direct")) == "closed_book"
    assert f.offer(Candidate("f", "Did John Hancock sign first?", "John Hancock", passage, "direct")) == "answer_in_question"
    assert f.offer(Candidate("g", "Name the first signer", "John Hancock", passage, "direct")) == "not_a_question"
    assert f.offer(Candidate("h", "", "", passage, "direct")) == "unparseable"
    assert f.offer(Candidate("o", "What is the meaning of life?", "Thomas Jefferson", passage, "answer_first")) == "off_topic"
    assert f.offer(Candidate("i", "Who signed the Declaration first?", "john hancock", passage, "paraphrase")) is None
    assert f.offer(Candidate("u", "What is the airspeed of an unladen swallow?", "", passage, "unanswerable", True)) is None
    assert f.offer(Candidate("v", "Who was the President of the Continental Congress?", "", passage, "unanswerable", True)) \
        == "answerable_in_corpus"
    res = f.result()
    assert [q.qid for q in res.accepted] == ["a", "i", "u"]
    assert res.stats() == {"candidates": 12, "accepted": 3, "rejected": {"duplicate": 2, "answer_not_in_span": 1, "closed_book": 1,
                                                                        "answer_in_question": 1, "not_a_question": 1, "off_topic": 1,
                                                                        "unparseable": 1, "answerable_in_corpus": 1}}
    hancock = res.accepted[1]
    assert hancock.answers == ["John Hancock"]  # as written in the document
    sp = hancock.spans[0]
    assert doc.text[sp.start:sp.end].startswith("John Hancock, the President") and hancock.difficulty in ("easy", "medium", "hard")
    assert "Who drafted the Declaration mainly?" in asked and "Did John Hancock sign first?" not in asked  # cheap filters first


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_review_export_edit_reject_import(tmp_path: Path):
    root = _docs_copy(tmp_path)
    _, doc = _doc(root, "founding/preamble.txt")
    folder = _write_set(tmp_path, root, [_question(doc, "q1", "When was the Constitution signed?", "September 17, 1787"),
                                         _question(doc, "q2", "When was the Bill of Rights ratified?", "December 15, 1791"),
                                         _question(doc, "q3", "Which amendment is about speech?", "Amendment I")])
    csv_path = tmp_path / "review.csv"
    assert export_review(folder, csv_path) == 3
    rows = _rows(csv_path)
    assert rows[0]["span_text"].startswith("The Constitution was signed") and rows[0]["decision"] == ""
    rows[0]["decision"] = "accept"
    rows[1].update(decision="edit", question="In which year was the Bill of Rights ratified?", answers="1791")
    rows[2]["decision"] = "reject"
    _write_rows(csv_path, rows)
    assert import_review(folder, csv_path) == {"revision": 2, "accept": 1, "edit": 1, "reject": 1, "unchanged": 0}
    manifest = read_manifest(folder)
    assert manifest["revision"] == 2 and manifest["history"][-1]["change"] == "review import"
    ds = load_dataset(folder)
    assert sorted(ds.queries) == ["q1", "q2"] and ds.queries["q2"].text == "In which year was the Bill of Rights ratified?"
    assert ds.queries["q2"].answers == ("1791",)
    rows[1].update(decision="edit", difficulty="")  # an edit without a difficulty gets it measured
    _write_rows(csv_path, rows[1:2])
    import_review(folder, csv_path)
    q2 = next(json.loads(x) for x in (folder / "questions.jsonl").read_text(encoding="utf-8").splitlines() if '"q2"' in x)
    assert q2["difficulty"] in ("easy", "medium", "hard") and q2["origin"] == "edited"


def test_review_import_errors_name_the_csv_line_and_write_nothing(tmp_path: Path):
    root = _docs_copy(tmp_path)
    _, doc = _doc(root, "founding/preamble.txt")
    folder = _write_set(tmp_path, root, [_question(doc, "q1", "When was the Constitution signed?", "September 17, 1787"),
                                         _question(doc, "q2", "When was the Bill of Rights ratified?", "December 15, 1791")])
    before = (folder / "questions.jsonl").read_bytes()
    csv_path = tmp_path / "review.csv"
    export_review(folder, csv_path)
    rows = _rows(csv_path)
    rows[0]["decision"] = "reject"
    rows[1].update(decision="edit", answers="1492")  # not in the span
    _write_rows(csv_path, rows)
    with pytest.raises(DatasetError) as info:
        import_review(folder, csv_path)
    assert str(info.value) == f"{csv_path}:3: answer '1492' is not in its span(s)"
    rows[1].update(decision="maybe", answers="1791")
    _write_rows(csv_path, rows)
    with pytest.raises(DatasetError, match=r"review\.csv:3: decision 'maybe' must be accept, edit, reject or empty"):
        import_review(folder, csv_path)
    rows[1].update(decision="edit", span_start="10", span_end="99999")
    _write_rows(csv_path, rows)
    with pytest.raises(DatasetError, match=r"review\.csv:3: span \[10, 99999\) is outside"):
        import_review(folder, csv_path)
    rows[1].update(id="q9", span_start="0", span_end="5")
    _write_rows(csv_path, rows)
    with pytest.raises(DatasetError, match=r"review\.csv:3: unknown question id 'q9'"):
        import_review(folder, csv_path)
    assert (folder / "questions.jsonl").read_bytes() == before and read_manifest(folder)["revision"] == 1


def test_questions_file_errors_name_the_line(tmp_path: Path):
    root = _docs_copy(tmp_path)
    folder = _write_set(tmp_path, root, [EvalQuestion("q1", "Who?", [], [], None, True)])
    (folder / "questions.jsonl").write_text(json.dumps({"_id": "q1", "text": "?", "answers": [], "spans": [], "unanswerable": True}) + "\n"
                                            + json.dumps({"_id": "q2", "text": "?", "answers": "x", "spans": []}) + "\n",
                                            encoding="utf-8")
    with pytest.raises(DatasetError, match=r"questions\.jsonl:2: field 'answers' must be a list of strings"):
        load_dataset(folder)


def test_unanswerable_slice_skips_questions_without_documents(tmp_path: Path):
    from workbench.data.corpus import unanswerable_slice

    root = _docs_copy(tmp_path)
    _, doc = _doc(root, "founding/preamble.txt")
    folder = _write_set(tmp_path, root, [_question(doc, "q1", "When was the Constitution signed?", "September 17, 1787"),
                                         EvalQuestion("q2", "Who painted the signing?", [], [], None, True)])
    ds = load_dataset(folder)
    sliced = unanswerable_slice(ds.sample_queries(None, 0), ds.qrels, 1.0, 0)
    assert [(q.query_id, q.withheld) for q in sliced] == [("q1~unanswerable", (doc.doc_id,))]
