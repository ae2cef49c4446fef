"""Chunking: LlamaIndex node parsers behind one function, counting tokens with the embedder's tokenizer.

LlamaIndex's splitters count tiktoken tokens by default, while MiniLM truncates at 256 of *its own*
word pieces: at ``chunk_size: 256`` most chunks would be silently cut. So the splitter is given the
embedding model's tokenizer, and every chunk records its length in that tokenizer so the run can
report its truncation rate.

Chunk context (``ChunkingSpec.context``): a chunk carries the text it is prefixed with when it is
embedded, indexed and reranked (:attr:`Chunk.indexed_text`): its document's title, or the title
and the headings it sits under. The prefix is kept apart from ``text``: the splitter never sees it
(chunk boundaries are those of ``context: none``), offsets and gold spans refer to ``text`` only,
and ``n_tokens`` counts what the embedder receives (prefix included), for the truncation rate.
"""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llama_index.core import Document as LIDocument
from llama_index.core.node_parser import SentenceSplitter, TokenTextSplitter

from ..config.experiment import ChunkingSpec
from ..data.headings import heading_path
from ..data.types import Document
from ..hashing import hash_obj


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str  # "<doc_id>#<n>", unique within a chunk set
    doc_id: str
    text: str
    start_char: int  # offsets into the document's text; -1 when the parser could not place it
    end_char: int
    n_tokens: int  # length of indexed_text in the chunking tokenizer, specials included
    context: str = ""  # the prefix it is embedded and indexed with (title, heading path); not part of the offsets

    @property
    def indexed_text(self) -> str:
        return with_context(self.context, self.text)


def with_context(context: str, text: str) -> str:
    """What the embedder, BM25 and rerankers see of a chunk: its context, a blank line, its text
    (LlamaIndex's metadata template; BEIR joins title and text with a space: the same tokens)."""
    return f"{context}\n\n{text}" if context else text


@dataclass(frozen=True)
class Tokenizer:
    """A named token counter. ``split_fn`` is what the LlamaIndex splitter counts with."""

    name: str
    split_fn: Callable[[str], list]
    count_fn: Callable[[str], int]  # the model's own count, special tokens included
    max_tokens: int | None  # the model's input limit; None when unknown


def chunk_set_key(docs: Iterable[Document], spec: ChunkingSpec, tokenizer: Tokenizer | str) -> str:
    """Content address of a chunk set: documents' content hashes (title included), chunker config
    (its context included when it has one), tokenizer (name), and the headings when chunks are
    prefixed with them."""
    name = tokenizer if isinstance(tokenizer, str) else tokenizer.name
    docs = list(docs)
    key = {"docs": sorted((d.doc_id, d.content_hash) for d in docs), "chunking": spec.model_dump(), "tokenizer": name}
    if spec.context == "heading_path":
        key["headings"] = hash_obj(sorted((d.doc_id, [(h.start, h.level, h.text) for h in d.headings]) for d in docs))
    return hash_obj(key)


def chunk_context(doc: Document, mode: str | None, offset: int) -> str:
    """The prefix of a chunk of ``doc`` starting at ``offset`` (-1: not placed) under context ``mode``:
    nothing, the title, or ``Title > Heading > Subheading`` (a first heading repeating the title,
    as a Markdown file's ``# Title`` does, is not said twice)."""
    if mode not in ("title", "heading_path"):
        return ""
    title = " ".join(doc.title.split())
    if mode == "title" or offset < 0:
        return title
    path = heading_path(doc.headings, offset)
    if path and title and path[0] == title:
        path = path[1:]
    return " > ".join(p for p in [title, *path] if p)


def _parser(spec: ChunkingSpec, tokenizer: Tokenizer):
    if spec.splitter == "sentence":
        return SentenceSplitter(chunk_size=spec.chunk_size, chunk_overlap=spec.chunk_overlap, tokenizer=tokenizer.split_fn)
    if spec.splitter == "token":
        return TokenTextSplitter(chunk_size=spec.chunk_size, chunk_overlap=spec.chunk_overlap, tokenizer=tokenizer.split_fn)
    raise ValueError(spec.splitter)


def chunk_documents(docs: Iterable[Document], spec: ChunkingSpec, tokenizer: Tokenizer) -> list[Chunk]:
    """Split every document; chunk ids are stable (document id + position)."""
    return list(iter_chunks(docs, spec, tokenizer))


def iter_chunks(docs: Iterable[Document], spec: ChunkingSpec, tokenizer: Tokenizer) -> Iterator[Chunk]:
    """Split documents one at a time, yielding chunks as they come (nothing accumulates)."""
    parser = None if spec.splitter == "none" else _parser(spec, tokenizer)
    noted: set[str] = set()
    for doc in docs:
        if parser is None:
            pieces = [(doc.text, 0, len(doc.text))]
        else:
            nodes = _split(parser, doc, noted)
            pieces = [
                (n.get_content(), -1 if n.start_char_idx is None else n.start_char_idx,
                 -1 if n.end_char_idx is None else n.end_char_idx)
                for n in nodes
            ]
        cursor = 0
        for i, (text, start, end) in enumerate(pieces):
            start, end = _place(doc.text, text, start, end, cursor)
            if start >= 0:
                cursor = start
            if text.strip():
                context = chunk_context(doc, spec.context, start)
                yield Chunk(f"{doc.doc_id}#{i}", doc.doc_id, text, start, end, tokenizer.count_fn(with_context(context, text)), context)


def _split(parser, doc: Document, noted: set[str]) -> list:
    """``parser``'s nodes for ``doc``. LlamaIndex's splitters print() a note for every document when
    the chunk size is under ~52 tokens ("Metadata length (2) is close to chunk size"): 240 identical
    lines for a small corpus. Each distinct line is passed on once per chunk set."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        nodes = parser.get_nodes_from_documents([LIDocument(text=doc.text, id_=doc.doc_id)])
    for line in captured.getvalue().splitlines():
        if line not in noted:
            noted.add(line)
            print(line, file=sys.stdout)
    return nodes


def _place(doc_text: str, text: str, start: int, end: int, cursor: int) -> tuple[int, int]:
    """The chunk's exact (start, end) in its document, or (-1, -1) when it is not a verbatim slice.

    Gold spans are matched against these offsets, so they must be exact. LlamaIndex's splitters
    set ``start_char_idx``/``end_char_idx`` by searching the chunk text in the document (verified
    exact for the sentence and token splitters in tests/unit/test_spans.py); a parser that leaves
    them unset or wrong is located here by searching from the previous chunk's start.
    """
    if 0 <= start <= end and doc_text[start:end] == text:
        return start, end
    found = doc_text.find(text, cursor)
    if found < 0:
        found = doc_text.find(text)
    return (found, found + len(text)) if found >= 0 else (-1, -1)


def truncation_rate(chunks: list[Chunk], max_tokens: int | None) -> float | None:
    """Share of chunks longer than the embedder's input limit (they are embedded cut short)."""
    if isinstance(chunks, ChunkSet):
        return chunks.truncation_rate(max_tokens)
    if max_tokens is None or not chunks:
        return None
    return sum(c.n_tokens > max_tokens for c in chunks) / len(chunks)


class ChunkSet(Sequence[Chunk]):
    """A chunk set kept on disk (one SQLite file) and read in batches, so a 100k-chunk corpus never
    sits in Python lists: the index build streams it, a question looks up only its hits by id.

    Files are written once under a temporary name and renamed into place (atomic), so a killed or
    concurrent writer never leaves a half-written set; finished sets never change. A ``ChunkSet``
    pickles as its path (a worker process reopens the file).
    """

    BATCH = 2000

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._len = self._query("SELECT COUNT(*) FROM chunks")[0][0]

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def write(cls, path: Path, chunks: Iterable[Chunk]) -> ChunkSet:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            con = sqlite3.connect(tmp)
            con.execute("CREATE TABLE chunks (pos INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, "
                        "text TEXT NOT NULL, start_char INTEGER, end_char INTEGER, n_tokens INTEGER, context TEXT NOT NULL DEFAULT '')")
            insert = f"INSERT INTO chunks ({cls._COLS}) VALUES (?,?,?,?,?,?,?)"
            batch: list[tuple] = []
            for c in chunks:
                batch.append((c.chunk_id, c.doc_id, c.text, c.start_char, c.end_char, c.n_tokens, c.context))
                if len(batch) >= cls.BATCH:
                    con.executemany(insert, batch)
                    batch.clear()
            con.executemany(insert, batch)
            con.execute("CREATE INDEX chunks_doc ON chunks (doc_id)")
            con.commit()
            con.close()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path)

    # -- reading -------------------------------------------------------------------------------
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:  # one read-only connection per thread (sqlite3 connections are per thread)
            con = self._local.con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        return con

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._con().execute(sql, args).fetchall()

    _COLS = "chunk_id, doc_id, text, start_char, end_char, n_tokens, context"

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(self._len)
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return [Chunk(*r) for r in self._query(f"SELECT {self._COLS} FROM chunks WHERE pos > ? AND pos <= ? ORDER BY pos", (start, stop))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        return Chunk(*self._query(f"SELECT {self._COLS} FROM chunks WHERE pos = ?", (i + 1,))[0])

    def batches(self, size: int = BATCH) -> Iterator[list[Chunk]]:
        for start in range(0, self._len, size):
            yield self[start:start + size]

    def __iter__(self) -> Iterator[Chunk]:
        for batch in self.batches():
            yield from batch

    def get(self, chunk_id: str) -> Chunk:
        rows = self._query(f"SELECT {self._COLS} FROM chunks WHERE chunk_id = ?", (chunk_id,))
        if not rows:
            raise KeyError(chunk_id)
        return Chunk(*rows[0])

    def text(self, chunk_id: str) -> str:
        return self.get(chunk_id).text

    def indexed_text(self, chunk_id: str) -> str:
        """The chunk as it was embedded and indexed (its context prefix included)."""
        return self.get(chunk_id).indexed_text

    def in_doc(self, doc_id: str) -> list[Chunk]:
        return [Chunk(*r) for r in self._query(f"SELECT {self._COLS} FROM chunks WHERE doc_id = ? ORDER BY pos", (doc_id,))]

    def by_doc(self) -> Mapping[str, list[Chunk]]:
        """A read-only ``{doc_id: [chunks]}`` view answered from the file (one query per lookup)."""
        return _ChunksByDoc(self)

    def count_in_docs(self, doc_ids: Iterable[str]) -> int:
        ids = list(set(doc_ids))
        total = 0
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[start:start + 500]
            total += self._query(f"SELECT COUNT(*) FROM chunks WHERE doc_id IN ({','.join('?' * len(part))})", tuple(part))[0][0]
        return total

    def total_tokens(self) -> int:
        """Tokens of every chunk as embedded (context included): what building an index sends."""
        return int(self._query("SELECT COALESCE(SUM(n_tokens), 0) FROM chunks")[0][0])

    def truncation_rate(self, max_tokens: int | None) -> float | None:
        if max_tokens is None or not self._len:
            return None
        return self._query("SELECT AVG(n_tokens > ?) FROM chunks", (max_tokens,))[0][0]

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __repr__(self) -> str:
        return f"ChunkSet({self.path.name}, {self._len} chunks)"


class _ChunksByDoc(Mapping):
    def __init__(self, chunk_set: ChunkSet):
        self._set = chunk_set

    def __getitem__(self, doc_id: str) -> list[Chunk]:
        found = self._set.in_doc(doc_id)
        if not found:
            raise KeyError(doc_id)
        return found

    def __iter__(self) -> Iterator[str]:
        return (r[0] for r in self._set._query("SELECT DISTINCT doc_id FROM chunks ORDER BY doc_id"))

    def __len__(self) -> int:
        return self._set._query("SELECT COUNT(DISTINCT doc_id) FROM chunks")[0][0]
