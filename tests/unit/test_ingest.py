"""Ingestion of a mixed-format folder (the committed public-domain sample) and per-file failures."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from workbench.data.ingest import ingest_folder, make_doc_id
from workbench.errors import DatasetError
from workbench.hashing import sha256_text

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "docs-sample" / "documents"


def test_sample_folder_reads_every_format_recursively():
    ing = ingest_folder(SAMPLE)
    by_path = {m.path: m for m in ing.meta.values()}
    assert sorted(by_path) == ["founding/article-ii.docx", "founding/declaration.html", "founding/preamble.txt",
                               "speeches/gettysburg.md", "speeches/second-inaugural.pdf"]
    assert (ing.n_files, ing.skipped, ing.errors) == (5, [], [])
    text = {m.path: ing.docs[d].text for d, m in ing.meta.items()}
    assert "Four score and seven years ago" in text["speeches/gettysburg.md"]
    assert "With malice toward none" in text["speeches/second-inaugural.pdf"]
    assert "thirty five Years" in text["founding/article-ii.docx"]
    assert "We hold these truths to be self-evident" in text["founding/declaration.html"]
    assert "console.log" not in text["founding/declaration.html"] and "font-family" not in text["founding/declaration.html"]
    assert text["founding/preamble.txt"] == (SAMPLE / "founding" / "preamble.txt").read_text(encoding="utf-8")  # as is
    assert by_path["speeches/gettysburg.md"].title == "The Gettysburg Address"
    assert by_path["founding/declaration.html"].title == "The Declaration of Independence"
    assert by_path["speeches/second-inaugural.pdf"].title == "Second Inaugural Address of Abraham Lincoln"
    assert by_path["founding/article-ii.docx"].title.startswith("Article II, Section 1")
    for doc_id, m in ing.meta.items():
        assert doc_id == f"{m.path}@{sha256_text(ing.docs[doc_id].text)[:12]}" == make_doc_id(m.path, ing.docs[doc_id].text)
        assert dt.datetime.fromisoformat(m.modified).tzinfo is not None and m.chars == len(ing.docs[doc_id].text)
        assert ing.docs[doc_id].title == m.title


def test_ids_are_stable_across_runs_and_places_and_change_with_content(tmp_path: Path):
    first = ingest_folder(SAMPLE)
    copy = tmp_path / "copy"
    shutil.copytree(SAMPLE, copy)
    again = ingest_folder(copy)
    assert sorted(first.docs) == sorted(again.docs) and first.content_hash == again.content_hash
    (copy / "founding" / "preamble.txt").write_text("Changed text.\n", encoding="utf-8")
    changed = ingest_folder(copy)
    assert "founding/preamble.txt" in {m.path for m in changed.meta.values()}
    assert set(changed.docs) != set(first.docs) and changed.content_hash != first.content_hash


def test_bad_files_are_reported_and_counted_never_dropped(tmp_path: Path):
    root = tmp_path / "docs"
    shutil.copytree(SAMPLE, root)
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (root / "broken.docx").write_bytes(b"not a zip file")
    (root / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "dump.md").write_bytes(b"text\x00\x01 binary")
    (root / "diagram.png").write_bytes(b"\x89PNG\r\n")
    (root / "empty.md").write_text("  \n", encoding="utf-8")
    (root / ".hidden.md").write_text("hidden", encoding="utf-8")
    ing = ingest_folder(root)
    assert len(ing.docs) == 5
    assert ing.n_files == len(ing.docs) + len(ing.skipped) + len(ing.errors) == 11  # the hidden file is no document
    assert sorted(e.split(":")[0] for e in ing.errors) == ["broken.docx", "broken.pdf", "dump.md", "latin.txt"]
    assert "latin.txt: not UTF-8 text (byte 3)" in ing.errors and "dump.md: binary content in a text file" in ing.errors
    assert sorted(ing.skipped) == ["diagram.png: unsupported file type .png",
                                   "empty.md: no text (empty file, or a PDF without a text layer)"]
    rep = ing.report()
    assert (rep["n_documents"], rep["n_skipped"], rep["n_errors"]) == (5, 2, 4)
    assert "5 documents" in ing.summary() and "2 skipped, 4 failed" in ing.summary()


def test_missing_folder_is_an_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="documents folder not found"):
        ingest_folder(tmp_path / "nowhere")
