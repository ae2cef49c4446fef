"""Ingestion of a team's folder of documents: Markdown, plain text, HTML, PDF and DOCX, recursively.

Files are read through LlamaIndex's ``SimpleDirectoryReader`` (one file at a time, so a broken file
is reported and skipped instead of stopping the load or being dropped silently) with one
``BaseReader`` per format:

- ``.md``/``.markdown``/``.txt``: the text as is (UTF-8), so gold spans index the file's own text;
- ``.html``/``.htm``: visible text by BeautifulSoup (scripts, styles and the head dropped);
- ``.pdf``: pypdf's text of every page, pages separated by a blank line;
- ``.docx``: python-docx's paragraphs and table cells, separated by blank lines.

Why these readers and not ``llama-index-readers-file``: its 0.7.0 release requires ``pandas<3``
and the workbench runs on pandas 3; its PDF/DOCX/HTML readers are thin wrappers over the same
libraries (pypdf, docx2txt, BeautifulSoup), which are used here directly.

Every document gets a stable id, ``<relative path>@<first 12 hex digits of the text's sha256>``:
the same file content gives the same id on every machine and run, and an edited file gets a new
id, so a gold span (doc_id, start, end) can never silently point into changed text. Metadata kept
for citations: relative path, title, modified time (UTC, ISO 8601), format and size.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from llama_index.core import SimpleDirectoryReader
from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import Document as LIDocument

from ..errors import DatasetError
from ..hashing import hash_obj, sha256_text
from .headings import MARKDOWN_SUFFIXES, markdown_headings
from .types import Document, Heading

TEXT_SUFFIXES = (".md", ".markdown", ".txt")
HTML_SUFFIXES = (".html", ".htm")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + (".pdf", ".docx")


class IngestError(Exception):
    """A file that cannot be read (its message becomes the file's entry in ``errors``)."""


class PlainTextReader(BaseReader):
    """UTF-8 text as is. A NUL byte or invalid UTF-8 is an error, never a guessed decoding."""

    def load_data(self, file: Path, extra_info: dict | None = None, **_) -> list[LIDocument]:
        raw = Path(file).read_bytes()
        if b"\x00" in raw[:8192]:
            raise IngestError("binary content in a text file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IngestError(f"not UTF-8 text (byte {exc.start})") from None
        title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), "")
        return [LIDocument(text=text, metadata={**(extra_info or {}), "title": title})]


class HTMLTextReader(BaseReader):
    """The visible text of an HTML page, one block per line; the title from <title> or <h1>."""

    BLOCKS = ("p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre", "blockquote", "tr", "div", "section", "article")

    def load_data(self, file: Path, extra_info: dict | None = None, **_) -> list[LIDocument]:
        from bs4 import BeautifulSoup

        raw = Path(file).read_bytes()
        soup = BeautifulSoup(raw, "html.parser")
        title_tag = soup.find("title") or soup.find("h1")
        title = title_tag.get_text(" ", strip=True) if title_tag else ""
        for tag in soup(["script", "style", "head", "noscript", "template"]):
            tag.decompose()
        body = soup.body or soup
        lines, headings, offset = [], [], 0
        for block in body.find_all(self.BLOCKS):
            if block.find(self.BLOCKS):
                continue  # a container: its inner blocks are taken one by one
            text = " ".join(block.get_text(" ", strip=True).split())
            if text:
                if block.name in self.BLOCKS[1:7]:  # h1..h6: where the heading's line starts in the text
                    headings.append([offset, int(block.name[1]), text])
                lines.append(text)
                offset += len(text) + 2  # the "\n\n" joining the lines
        if not lines:  # no block markup at all: the whole text
            lines = [" ".join(body.get_text(" ", strip=True).split())]
        return [LIDocument(text="\n\n".join(x for x in lines if x) + "\n",
                           metadata={**(extra_info or {}), "title": title, "headings": headings})]


class PDFTextReader(BaseReader):
    """pypdf's text of every page (a scanned PDF without a text layer yields no text)."""

    def load_data(self, file: Path, extra_info: dict | None = None, **_) -> list[LIDocument]:
        import pypdf

        try:
            reader = pypdf.PdfReader(str(file))
            pages = [(page.extract_text() or "").strip() for page in reader.pages]
            meta_title = (reader.metadata.title if reader.metadata else None) or ""
        except pypdf.errors.PyPdfError as exc:
            raise IngestError(f"unreadable PDF ({type(exc).__name__}: {exc})") from None
        text = "\n\n".join(p for p in pages if p)
        title = str(meta_title).strip() or next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return [LIDocument(text=text + "\n" if text else "", metadata={**(extra_info or {}), "title": title, "pages": len(pages)})]


class DocxTextReader(BaseReader):
    """python-docx's paragraphs, then table cells, separated by blank lines."""

    def load_data(self, file: Path, extra_info: dict | None = None, **_) -> list[LIDocument]:
        import zipfile

        import docx

        try:
            d = docx.Document(str(file))
        except (zipfile.BadZipFile, KeyError, ValueError) as exc:
            raise IngestError(f"unreadable DOCX ({type(exc).__name__}: {exc})") from None
        parts = [p.text.strip() for p in d.paragraphs]
        for table in d.tables:
            for row in table.rows:
                parts.append(" | ".join(c.text.strip() for c in row.cells))
        text = "\n\n".join(p for p in parts if p)
        title = (d.core_properties.title or "").strip() or next((p for p in parts if p), "")
        return [LIDocument(text=text + "\n" if text else "", metadata={**(extra_info or {}), "title": title})]


def _readers() -> dict[str, BaseReader]:
    text, html = PlainTextReader(), HTMLTextReader()
    return {**{s: text for s in TEXT_SUFFIXES}, **{s: html for s in HTML_SUFFIXES},
            ".pdf": PDFTextReader(), ".docx": DocxTextReader()}


@dataclass(frozen=True, slots=True)
class DocMeta:
    """What a report needs to cite a document."""

    doc_id: str
    path: str  # relative to the ingested folder, POSIX separators
    title: str
    modified: str  # the file's modification time, UTC ISO 8601
    format: str  # the suffix without the dot
    chars: int
    sha256: str  # of the extracted text

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass
class Ingestion:
    """The documents read from a folder, and every file that was not (with the reason)."""

    root: Path
    docs: dict[str, Document] = field(default_factory=dict)
    meta: dict[str, DocMeta] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "path: reason" for unsupported or empty files
    errors: list[str] = field(default_factory=list)  # "path: reason" for files that failed to read
    n_files: int = 0

    @property
    def content_hash(self) -> str:
        return hash_obj(sorted((m.path, m.sha256) for m in self.meta.values()))

    def summary(self) -> str:
        by_format: dict[str, int] = {}
        for m in self.meta.values():
            by_format[m.format] = by_format.get(m.format, 0) + 1
        formats = ", ".join(f"{n} {f}" for f, n in sorted(by_format.items()))
        return (f"{self.root}: {len(self.docs)} documents ({formats or 'none'}) from {self.n_files} files; "
                f"{len(self.skipped)} skipped, {len(self.errors)} failed")

    def report(self) -> dict:
        """For lineage and manifests: counts plus every skipped or failed file with its reason."""
        return {"root": str(self.root), "n_files": self.n_files, "n_documents": len(self.docs),
                "n_skipped": len(self.skipped), "n_errors": len(self.errors),
                "skipped": list(self.skipped), "errors": list(self.errors),
                "documents": {d: {"path": m.path, "title": m.title, "modified": m.modified} for d, m in sorted(self.meta.items())}}

    def by_path(self) -> dict[str, str]:
        return {m.path: doc_id for doc_id, m in self.meta.items()}


def make_doc_id(rel_path: str, text: str) -> str:
    return f"{rel_path}@{sha256_text(text)[:12]}"


def _headings(suffix: str, text: str, loaded: list[LIDocument]) -> tuple[Heading, ...]:
    """Section headings for ``context: heading_path``: parsed from Markdown, recorded by the HTML
    reader (its text no longer shows which lines were headings); none for other formats."""
    if suffix in MARKDOWN_SUFFIXES:
        return markdown_headings(text)
    if suffix in HTML_SUFFIXES and len(loaded) == 1:
        return tuple(Heading(start, level, title) for start, level, title in loaded[0].metadata.get("headings") or [])
    return ()


def ingest_folder(root: str | Path) -> Ingestion:
    """Read every supported file under ``root`` (any depth; hidden files and folders are ignored).

    Never raises for a single bad file: unsupported and empty files go to ``skipped``, unreadable
    ones to ``errors``, each as ``"relative/path: reason"``. Raises ``DatasetError`` only when the
    folder itself is missing.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: documents folder not found")
    out = Ingestion(root=root)
    readers = _readers()
    # SimpleDirectoryReader warns on every call that llama-index-readers-file is absent; every
    # format it would bring is given explicitly in file_extractor, so the warning is noise.
    logging.getLogger("llama_index.core.readers.file.base").setLevel(logging.ERROR)
    for p in sorted(root.rglob("*")):
        rel_parts = p.relative_to(root).parts
        if not p.is_file() or any(part.startswith(".") for part in rel_parts):
            continue  # hidden files and folders (.git/, .obsidian/) are not documents
        out.n_files += 1
        rel = p.relative_to(root).as_posix()
        suffix = p.suffix.lower()
        if suffix not in readers:
            out.skipped.append(f"{rel}: unsupported file type {p.suffix or '(none)'}")
            continue
        try:
            loaded = SimpleDirectoryReader(input_files=[p], file_extractor={suffix: readers[suffix]},
                                           raise_on_error=True).load_data(show_progress=False)
        except Exception as exc:  # noqa: BLE001 - any reader failure is this file's error, reported
            cause = exc.__cause__ or exc.__context__ or exc
            reason = str(cause) if isinstance(cause, IngestError) else f"{type(cause).__name__}: {cause}"
            out.errors.append(f"{rel}: {reason.splitlines()[0] if reason else type(cause).__name__}")
            continue
        text = "\n\n".join(d.text for d in loaded if d.text)
        if not text.strip():
            out.skipped.append(f"{rel}: no text (empty file, or a PDF without a text layer)")
            continue
        title = next((d.metadata.get("title") for d in loaded if d.metadata.get("title")), "") or rel
        doc_id = make_doc_id(rel, text)
        modified = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
        out.docs[doc_id] = Document(doc_id, title, text, _headings(suffix, text, loaded))
        out.meta[doc_id] = DocMeta(doc_id, rel, title, modified, suffix.lstrip("."), len(text), sha256_text(text))
    return out
