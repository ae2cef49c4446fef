"""Chunking: LlamaIndex node parsers behind one function, counting tokens with the embedder's tokenizer.

LlamaIndex's splitters count tiktoken tokens by default, while MiniLM truncates at 256 of *its own*
word pieces: at ``chunk_size: 256`` most chunks would be silently cut. So the splitter is given the
embedding model's tokenizer, and every chunk records its length in that tokenizer so the run can
report its truncation rate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llama_index.core import Document as LIDocument
from llama_index.core.node_parser import SentenceSplitter, TokenTextSplitter

from .config import ChunkingSpec
from .corpus import Document
from .hashing import hash_obj


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str  # "<doc_id>#<n>", unique within a chunk set
    doc_id: str
    text: str
    start_char: int  # offsets into the document's text; -1 when the parser could not place it
    end_char: int
    n_tokens: int  # length in the chunking tokenizer, specials included


@dataclass(frozen=True)
class Tokenizer:
    """A named token counter. ``split_fn`` is what the LlamaIndex splitter counts with."""

    name: str
    split_fn: Callable[[str], list]
    count_fn: Callable[[str], int]  # the model's own count, special tokens included
    max_tokens: int | None  # the model's input limit; None when unknown


def chunk_set_key(docs: Iterable[Document], spec: ChunkingSpec, tokenizer: Tokenizer | str) -> str:
    """Content address of a chunk set: documents' content hashes, chunker config, tokenizer (name)."""
    name = tokenizer if isinstance(tokenizer, str) else tokenizer.name
    return hash_obj({"docs": sorted((d.doc_id, d.content_hash) for d in docs), "chunking": spec.model_dump(), "tokenizer": name})


def _parser(spec: ChunkingSpec, tokenizer: Tokenizer):
    if spec.splitter == "sentence":
        return SentenceSplitter(chunk_size=spec.chunk_size, chunk_overlap=spec.chunk_overlap, tokenizer=tokenizer.split_fn)
    if spec.splitter == "token":
        return TokenTextSplitter(chunk_size=spec.chunk_size, chunk_overlap=spec.chunk_overlap, tokenizer=tokenizer.split_fn)
    raise ValueError(spec.splitter)


def chunk_documents(docs: Iterable[Document], spec: ChunkingSpec, tokenizer: Tokenizer) -> list[Chunk]:
    """Split every document; chunk ids are stable (document id + position)."""
    chunks: list[Chunk] = []
    parser = None if spec.splitter == "none" else _parser(spec, tokenizer)
    for doc in docs:
        if parser is None:
            pieces = [(doc.text, 0, len(doc.text))]
        else:
            nodes = parser.get_nodes_from_documents([LIDocument(text=doc.text, id_=doc.doc_id)])
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
                chunks.append(Chunk(f"{doc.doc_id}#{i}", doc.doc_id, text, start, end, tokenizer.count_fn(text)))
    return chunks


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
    if max_tokens is None or not chunks:
        return None
    return sum(c.n_tokens > max_tokens for c in chunks) / len(chunks)
