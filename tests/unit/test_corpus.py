"""Datasets: the shipped XQuAD folder, content hashes, query sampling, and file:line errors for
every malformed BEIR line and documents-folder problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import XQUAD, write_xquad_slice
from workbench.data.corpus import unanswerable_slice
from workbench.data.loader import load_dataset
from workbench.data.types import Dataset, Document, Query
from workbench.errors import DatasetError


@pytest.fixture(scope="module")
def xquad() -> Dataset:
    return load_dataset(XQUAD)


def test_xquad_loads(xquad: Dataset):
    assert len(xquad.docs) == 240 and len(xquad.queries) == 1190
    assert set(xquad.qrels) == set(xquad.queries)
    assert all(doc_id in xquad.docs for rel in xquad.qrels.values() for doc_id in rel)
    q = xquad.queries["56beb4343aeaaa14008c925b"]
    assert q.text == "How many points did the Panthers defense surrender?" and q.answers == ("308",)
    doc = xquad.docs["xq-00-00"]
    assert doc.title == "Super Bowl 50" and doc.text[q.answer_starts[0]:].startswith("308")
    assert len(xquad.content_hash) == 64 and xquad.skipped == []


def test_content_hash_is_stable_and_tracks_file_changes(tmp_path: Path, xquad: Dataset):
    assert load_dataset(XQUAD).content_hash == xquad.content_hash
    folder = tmp_path / "copy"
    shutil.copytree(XQUAD, folder)
    assert load_dataset(folder).content_hash == xquad.content_hash  # content, not location
    qrels = folder / "qrels.tsv"
    qrels.write_text(qrels.read_text(encoding="utf-8").replace("\t1\n", "\t2\n", 1), encoding="utf-8")
    changed = load_dataset(folder)
    assert changed.content_hash != xquad.content_hash
    assert changed.qrels["56beb4343aeaaa14008c925b"] == {"xq-00-00": 2}


def test_sample_queries_is_deterministic_seeded_and_limited(xquad: Dataset):
    a = xquad.sample_queries(40, seed=0)
    assert len(a) == 40 and a == xquad.sample_queries(40, seed=0)
    assert [q.query_id for q in a] == sorted(q.query_id for q in a)
    assert {q.query_id for q in xquad.sample_queries(40, seed=1)} != {q.query_id for q in a}
    assert len(xquad.sample_queries(None, seed=0)) == 1190
    assert len(xquad.sample_queries(5000, seed=0)) == 1190


def test_sample_queries_only_yields_queries_with_qrels():
    docs = {"d1": Document("d1", "", "text")}
    queries = {f"q{i}": Query(f"q{i}", f"question {i}") for i in range(10)}
    # q5 is judged, but only as non-relevant (grade 0); q7 has an empty judgement list.
    qrels = {"q1": {"d1": 1}, "q3": {"d1": 2}, "q4": {"d1": 1}, "q5": {"d1": 0}, "q7": {}}
    ds = Dataset(Path("."), docs, queries, qrels, "h")
    assert [q.query_id for q in ds.sample_queries(None, 0)] == ["q1", "q3", "q4"]
    samples = set()
    for seed in range(10):
        sample = ds.sample_queries(2, seed)
        assert len(sample) == 2 and {q.query_id for q in sample} <= {"q1", "q3", "q4"}
        samples.add(tuple(q.query_id for q in sample))
    assert len(samples) > 1


def test_unanswerable_slice_withholds_gold_documents(xquad: Dataset):
    sample = xquad.sample_queries(20, seed=0)
    extra = unanswerable_slice(sample, xquad.qrels, 0.25, seed=0)
    assert len(extra) == 5 and extra == unanswerable_slice(sample, xquad.qrels, 0.25, seed=0)
    for q in extra:
        original = q.query_id.removesuffix("~unanswerable")
        assert q.unanswerable and q.answers == () and q.withheld == tuple(sorted(xquad.qrels[original]))
    assert unanswerable_slice(sample, xquad.qrels, 0.0, seed=0) == []


# -- BEIR errors ---------------------------------------------------------------------------------

CORPUS = [{"_id": "d1", "title": "One", "text": "first document"}, {"_id": "d2", "title": "Two", "text": "second document"},
          {"_id": "d3", "text": "third document"}]
QUERIES = [{"_id": "q1", "text": "which is first?"}, {"_id": "q2", "text": "which is second?", "answers": ["second"]}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def write_beir(folder: Path, corpus: bytes | None = None, queries: bytes | None = None, qrels: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_bytes(corpus if corpus is not None else "".join(json.dumps(d) + "\n" for d in CORPUS).encode())
    (folder / "queries.jsonl").write_bytes(queries if queries is not None else "".join(json.dumps(q) + "\n" for q in QUERIES).encode())
    (folder / "qrels.tsv").write_bytes(qrels if qrels is not None else QRELS.encode())
    return folder


def lines(*items: str) -> bytes:
    return "".join(i + "\n" for i in items).encode()


GOOD_CORPUS = [json.dumps(d) for d in CORPUS]
GOOD_QUERIES = [json.dumps(q) for q in QUERIES]

# id: (file keyword arguments, file that must be named, line or None, substring)
BEIR_BAD = {
    "corpus_not_json": ({"corpus": lines(GOOD_CORPUS[0], "{not json", GOOD_CORPUS[2])}, "corpus.jsonl", 2, "not valid JSON"),
    "corpus_array": ({"corpus": lines(GOOD_CORPUS[0], GOOD_CORPUS[1], '["d3", "text"]')}, "corpus.jsonl", 3,
                     "expected a JSON object, got list"),
    "corpus_missing_id": ({"corpus": lines(GOOD_CORPUS[0], '{"title": "x", "text": "y"}')}, "corpus.jsonl", 2,
                          "missing field '_id'"),
    "corpus_empty_text": ({"corpus": lines(GOOD_CORPUS[0], '{"_id": "d2", "text": "  "}')}, "corpus.jsonl", 2,
                          "field 'text' must be a non-empty string"),
    "duplicate_doc_id": ({"corpus": lines(GOOD_CORPUS[0], GOOD_CORPUS[1], GOOD_CORPUS[0])}, "corpus.jsonl", 3,
                         "duplicate doc id 'd1'"),
    "empty_corpus": ({"corpus": b"\n\n"}, "corpus.jsonl", None, "empty corpus"),
    "corpus_not_utf8": ({"corpus": lines(*GOOD_CORPUS[:2]) + b'{"_id": "d3", "text": "caf\xe9"}\n'}, "corpus.jsonl", 3,
                        "not UTF-8 text"),
    "corpus_not_utf8_far_down": ({"corpus": lines(*[json.dumps({"_id": f"d{i}", "text": "x" * 200}) for i in range(100)])
                                  + b'{"_id": "bad", "text": "\xff"}\n'}, "corpus.jsonl", 101, "not UTF-8 text"),
    "query_without_id": ({"queries": lines(GOOD_QUERIES[0], '{"text": "no id"}')}, "queries.jsonl", 2, "missing field '_id'"),
    "duplicate_query_id": ({"queries": lines(GOOD_QUERIES[0], GOOD_QUERIES[1], GOOD_QUERIES[0])}, "queries.jsonl", 3,
                           "duplicate query id 'q1'"),
    "answers_not_strings": ({"queries": lines(GOOD_QUERIES[0], '{"_id": "q2", "text": "t", "answers": [1]}')},
                            "queries.jsonl", 2, "'answers' must be a list of strings"),
    "answer_starts_mismatch": ({"queries": lines('{"_id": "q1", "text": "t", "answers": ["a"], "answer_starts": [1, 2]}')},
                               "queries.jsonl", 1, "'answer_starts' has 2 entries for 1 answers"),
    "no_queries": ({"queries": b""}, "queries.jsonl", None, "no queries"),
    "qrels_wrong_columns": ({"qrels": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n"}, "qrels.tsv", 3,
                            "expected 3 tab-separated columns"),
    "qrels_space_separated": ({"qrels": b"q1 d1 1\n"}, "qrels.tsv", 1, "got 1"),
    "qrels_non_integer_score": ({"qrels": b"query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}, "qrels.tsv", 2,
                                "score 'high' is not an integer"),
    "qrels_unknown_doc": ({"qrels": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n"}, "qrels.tsv", 3,
                          "unknown doc id 'd9'"),
    "qrels_unknown_query": ({"qrels": b"query-id\tcorpus-id\tscore\nq7\td1\t1\n"}, "qrels.tsv", 2, "unknown query id 'q7'"),
    "qrels_empty": ({"qrels": b"query-id\tcorpus-id\tscore\n"}, "qrels.tsv", None, "no relevance judgements"),
}


@pytest.mark.parametrize("case", BEIR_BAD.values(), ids=BEIR_BAD.keys())
def test_beir_errors_name_file_and_line(tmp_path: Path, case):
    files, name, line, part = case
    folder = write_beir(tmp_path / "beir", **files)
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    message = str(info.value)
    where = f"{folder / name}:{line}: " if line is not None else f"{folder / name}: "
    assert message.startswith(where) and part in message and "\n" not in message, message


def test_valid_small_beir_folder(tmp_path: Path):
    ds = load_dataset(write_beir(tmp_path / "beir"))
    assert list(ds.docs) == ["d1", "d2", "d3"] and ds.docs["d3"].title == ""
    assert ds.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1}} and ds.queries["q2"].answers == ("second",)


def test_beir_missing_file_and_unknown_layout(tmp_path: Path):
    folder = write_beir(tmp_path / "beir")
    (folder / "qrels.tsv").unlink()
    with pytest.raises(DatasetError, match=r"qrels\.tsv: file not found"):
        load_dataset(folder)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither a BEIR folder"):
        load_dataset(tmp_path / "empty")


def test_xquad_slice_fixture_is_consistent(tmp_path: Path):
    ds = load_dataset(write_xquad_slice(tmp_path / "slice", n_docs=5, n_queries=7))
    assert len(ds.docs) == 5 and len(ds.queries) == 7 and set(ds.qrels) == set(ds.queries)


# -- documents folder ------------------------------------------------------------------------------


def write_docs_folder(folder: Path, questions: list[dict] | None = None) -> Path:
    docs = folder / "documents"
    (docs / "guides" / "deep").mkdir(parents=True)
    (docs / "intro.md").write_text("# Introduction\n\nThe workbench compares RAG pipelines.\n", encoding="utf-8")
    (docs / "guides" / "setup.txt").write_text("Setup\nInstall with pip.\n", encoding="utf-8")
    (docs / "guides" / "deep" / "notes.md").write_text("\n\n## Deep notes\nChunk sizes matter.\n", encoding="utf-8")
    (docs / "guides" / "diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (docs / ".hidden.md").write_text("ignored", encoding="utf-8")
    if questions is None:
        questions = [{"_id": "q1", "text": "How do I install it?", "answers": ["pip"], "doc_ids": ["guides/setup.txt"]},
                     {"_id": "q2", "text": "What does it compare?", "doc_ids": ["intro.md", "guides/deep/notes.md"]},
                     {"_id": "q3", "text": "An open question"}]
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    return folder


def test_documents_folder_loads_recursively_with_relative_ids(tmp_path: Path):
    ds = load_dataset(write_docs_folder(tmp_path / "team"))
    assert sorted(ds.docs) == ["guides/deep/notes.md", "guides/setup.txt", "intro.md"]
    assert ds.docs["intro.md"].title == "Introduction" and ds.docs["guides/deep/notes.md"].title == "Deep notes"
    assert ds.docs["guides/setup.txt"].text == "Setup\nInstall with pip.\n"
    assert ds.skipped == ["guides/diagram.png: unsupported file type .png"]
    assert ds.qrels == {"q1": {"guides/setup.txt": 1}, "q2": {"intro.md": 1, "guides/deep/notes.md": 1}}
    assert [q.query_id for q in ds.sample_queries(None, 0)] == ["q1", "q2"]  # q3 has no relevant document
    again = load_dataset(write_docs_folder(tmp_path / "team2"))
    assert again.content_hash == ds.content_hash  # same content elsewhere: same hash


def test_documents_folder_hash_changes_with_a_document(tmp_path: Path):
    folder = write_docs_folder(tmp_path / "team")
    before = load_dataset(folder).content_hash
    (folder / "documents" / "intro.md").write_text("# Introduction\n\nChanged.\n", encoding="utf-8")
    assert load_dataset(folder).content_hash != before


def test_documents_folder_binary_file_is_an_error(tmp_path: Path):
    folder = write_docs_folder(tmp_path / "team")
    bad = folder / "documents" / "guides" / "dump.txt"
    bad.write_bytes(b"text\x00\x01\x02 more")
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert str(info.value).startswith(f"{bad}: binary file")


def test_documents_folder_non_utf8_file_is_an_error(tmp_path: Path):
    folder = write_docs_folder(tmp_path / "team")
    bad = folder / "documents" / "latin.md"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.md: not UTF-8 text"):
        load_dataset(folder)


def test_documents_folder_unknown_doc_ids_is_an_error(tmp_path: Path):
    folder = write_docs_folder(tmp_path / "team", [{"_id": "q1", "text": "?", "doc_ids": ["intro.md"]},
                                                    {"_id": "q2", "text": "?", "doc_ids": ["guides/setup.md"]}])
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert str(info.value) == f"{folder / 'questions.jsonl'}:2: unknown document 'guides/setup.md' in 'doc_ids'"


def test_documents_folder_without_documents_or_questions(tmp_path: Path):
    folder = tmp_path / "team"
    (folder / "documents").mkdir(parents=True)
    (folder / "documents" / "a.pdf").write_bytes(b"%PDF")
    with pytest.raises(DatasetError, match="no .md/.txt documents"):
        load_dataset(folder)
    (folder / "documents" / "a.md").write_text("hello", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"questions\.jsonl: file not found"):
        load_dataset(folder)


# -- oversized documents (bad-input catalogue: a 50 MB single document fails clearly, fast) -------

def _big_text(mb: int) -> bytes:
    line = b"All work and no play makes a very long document. " * 20 + b"\n"
    return line * (mb * 1024 * 1024 // len(line) + 1)


def test_50_mb_document_in_a_documents_folder_is_a_clear_error(tmp_path: Path):
    import time

    from workbench.data.loader import load_dataset

    folder = tmp_path / "docs"
    (folder / "documents").mkdir(parents=True)
    (folder / "documents" / "small.md").write_text("# Small\nfine", encoding="utf-8")
    (folder / "documents" / "dump.txt").write_bytes(_big_text(50))
    (folder / "questions.jsonl").write_text('{"_id": "q1", "text": "what?", "doc_ids": ["small.md"]}\n', encoding="utf-8")
    t0 = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    message = str(err.value)
    assert time.perf_counter() - t0 < 5
    assert "dump.txt: document is 50.0 MB, over the per-document limit of 16 MB" in message and "\n" not in message
    assert "WORKBENCH_MAX_DOCUMENT_MB" in message


def test_50_mb_corpus_line_is_a_clear_error_naming_the_line(tmp_path: Path):
    big = json.dumps({"_id": "d3", "text": _big_text(50).decode()}).encode() + b"\n"
    folder = write_beir(tmp_path / "beir", corpus=lines(*GOOD_CORPUS[:2]) + big)
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    assert "corpus.jsonl:3: line is 50.1 MB, over the per-document limit of 16 MB" in str(err.value)  # JSON newlines escaped


def test_document_limit_is_configurable(tmp_path: Path, monkeypatch):
    from workbench.data.loader import load_dataset

    folder = tmp_path / "docs"
    (folder / "documents").mkdir(parents=True)
    (folder / "documents" / "mid.txt").write_bytes(_big_text(2))
    (folder / "questions.jsonl").write_text('{"_id": "q1", "text": "what?", "doc_ids": ["mid.txt"]}\n', encoding="utf-8")
    assert len(load_dataset(folder).docs["mid.txt"].text) > 2 * 1024 * 1024  # under the default limit: loads
    monkeypatch.setenv("WORKBENCH_MAX_DOCUMENT_MB", "1")
    with pytest.raises(DatasetError, match="over the per-document limit of 1 MB"):
        load_dataset(folder)
    monkeypatch.setenv("WORKBENCH_MAX_DOCUMENT_MB", "lots")
    with pytest.raises(DatasetError, match="expected a number of megabytes"):
        load_dataset(folder)
