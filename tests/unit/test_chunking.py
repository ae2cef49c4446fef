"""Chunking with real LlamaIndex splitters and a whitespace tokenizer, so sizes are countable by hand."""

from __future__ import annotations

import pytest

from tests.conftest import XQUAD
from workbench.config.experiment import ChunkingSpec
from workbench.data.loader import load_dataset
from workbench.data.types import Document
from workbench.stages.chunking import Chunk, Tokenizer, chunk_documents, chunk_set_key, truncation_rate

WHITESPACE = Tokenizer("whitespace", str.split, lambda text: len(text.split()), 60)
SENTENCE = ChunkingSpec(splitter="sentence", chunk_size=60, chunk_overlap=10)
TOKEN = ChunkingSpec(splitter="token", chunk_size=60, chunk_overlap=10)
WHOLE = ChunkingSpec(splitter="none")


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    ds = load_dataset(XQUAD)
    return [ds.docs[d] for d in sorted(ds.docs)[:12]]


@pytest.mark.parametrize("spec", [SENTENCE, TOKEN], ids=["sentence", "token"])
def test_chunks_respect_size_in_the_tokenizers_tokens(docs, spec):
    chunks = chunk_documents(docs, spec, WHITESPACE)
    assert len(chunks) > len(docs)  # XQuAD paragraphs are longer than 60 words
    assert all(0 < c.n_tokens <= spec.chunk_size for c in chunks)
    assert all(c.n_tokens == len(c.text.split()) for c in chunks)
    assert {c.doc_id for c in chunks} == {d.doc_id for d in docs}


@pytest.mark.parametrize("spec", [SENTENCE, TOKEN], ids=["sentence", "token"])
def test_chunk_ids_are_positional_and_stable(docs, spec):
    chunks = chunk_documents(docs, spec, WHITESPACE)
    assert chunks == chunk_documents(docs, spec, WHITESPACE)
    assert len({c.chunk_id for c in chunks}) == len(chunks)
    for doc in docs:
        ids = [c.chunk_id for c in chunks if c.doc_id == doc.doc_id]
        assert ids == [f"{doc.doc_id}#{n}" for n in range(len(ids))]
    # A document's chunks do not depend on which other documents are chunked with it.
    alone = chunk_documents(docs[3:4], spec, WHITESPACE)
    assert alone == [c for c in chunks if c.doc_id == docs[3].doc_id]


@pytest.mark.parametrize("spec", [SENTENCE, TOKEN], ids=["sentence", "token"])
def test_offsets_map_back_into_the_document(docs, spec):
    by_id = {d.doc_id: d for d in docs}
    chunks = chunk_documents(docs, spec, WHITESPACE)
    placed = [c for c in chunks if c.start_char >= 0]
    assert len(placed) >= len(chunks) * 0.9, "most chunks should be located in their document"
    for c in placed:
        assert by_id[c.doc_id].text[c.start_char:c.end_char] == c.text
    for doc in docs:
        starts = [c.start_char for c in placed if c.doc_id == doc.doc_id]
        assert starts == sorted(starts) and starts[0] == 0


def test_overlap_repeats_words_between_neighbours(docs):
    chunks = [c for c in chunk_documents(docs, TOKEN, WHITESPACE) if c.doc_id == docs[0].doc_id]
    assert len(chunks) >= 2
    for a, b in zip(chunks, chunks[1:]):
        assert b.start_char < a.end_char  # overlapping spans
        assert a.text.split()[-1] in b.text.split()[:TOKEN.chunk_overlap + 1]


def test_splitter_none_gives_one_chunk_per_document(docs):
    chunks = chunk_documents(docs, WHOLE, WHITESPACE)
    assert [c.chunk_id for c in chunks] == [f"{d.doc_id}#0" for d in docs]
    for c, d in zip(chunks, docs):
        assert (c.text, c.start_char, c.end_char, c.n_tokens) == (d.text, 0, len(d.text), len(d.text.split()))


def test_blank_documents_give_no_chunks():
    docs = [Document("blank", "", "   \n  "), Document("short", "", "One short sentence.")]
    assert [c.chunk_id for c in chunk_documents(docs, WHOLE, WHITESPACE)] == ["short#0"]
    assert [c.chunk_id for c in chunk_documents(docs, SENTENCE, WHITESPACE)] == ["short#0"]


def chunk(n_tokens: int) -> Chunk:
    return Chunk("d#0", "d", "x", 0, 1, n_tokens)


def test_llama_index_small_chunk_note_is_printed_once_per_chunk_set(docs, capsys):
    # LlamaIndex prints "Metadata length (2) is close to chunk size" once per document under ~52
    # tokens; a 240-paragraph corpus printed it 240 times into the user's terminal.
    tiny = ChunkingSpec(splitter="token", chunk_size=16, chunk_overlap=0)
    chunks = chunk_documents(docs, tiny, WHITESPACE)
    assert len(chunks) > 3 * len(docs) and all(c.n_tokens <= 16 for c in chunks)  # the chunks themselves are unchanged
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("Metadata length (2) is close to chunk size (16)")
    chunk_documents(docs, tiny, WHITESPACE)
    assert len(capsys.readouterr().out.splitlines()) == 1  # once per chunk set, not once per process


def test_truncation_rate():
    chunks = [chunk(10), chunk(60), chunk(61), chunk(200)]
    assert truncation_rate(chunks, 60) == pytest.approx(2 / 4)
    assert truncation_rate(chunks, 10) == pytest.approx(3 / 4)
    assert truncation_rate(chunks, 1000) == 0.0
    assert truncation_rate(chunks, None) is None
    assert truncation_rate([], 60) is None


def test_truncation_rate_of_whole_documents(docs):
    chunks = chunk_documents(docs, WHOLE, WHITESPACE)
    expected = sum(len(d.text.split()) > 60 for d in docs) / len(docs)
    assert 0 < expected < 1
    assert truncation_rate(chunks, WHITESPACE.max_tokens) == pytest.approx(expected)


def test_chunk_set_key_tracks_config_tokenizer_and_content(docs):
    key = chunk_set_key(docs, SENTENCE, WHITESPACE)
    assert len(key) == 64
    assert key == chunk_set_key(list(reversed(docs)), SENTENCE, "whitespace")  # order-free; name is the identity
    assert key != chunk_set_key(docs, TOKEN, WHITESPACE)
    assert key != chunk_set_key(docs, ChunkingSpec(splitter="sentence", chunk_size=60, chunk_overlap=11), WHITESPACE)
    assert key != chunk_set_key(docs, SENTENCE, Tokenizer("other", str.split, len, 60))
    edited = [Document(docs[0].doc_id, docs[0].title, docs[0].text + " More.")] + docs[1:]
    assert key != chunk_set_key(edited, SENTENCE, WHITESPACE)
    retitled = [Document(docs[0].doc_id, "New title", docs[0].text)] + docs[1:]
    assert key != chunk_set_key(retitled, SENTENCE, WHITESPACE)
    assert key != chunk_set_key(docs[1:], SENTENCE, WHITESPACE)


def test_chunk_set_on_disk_matches_the_list(docs, tmp_path):
    from workbench.stages.chunking import ChunkSet, iter_chunks

    spec = ChunkingSpec(splitter="sentence", chunk_size=24, chunk_overlap=4)
    expected = chunk_documents(docs, spec, WHITESPACE)
    ChunkSet.BATCH, old = 7, ChunkSet.BATCH  # several write and read batches
    try:
        cs = ChunkSet.write(tmp_path / "set.sqlite", iter_chunks(docs, spec, WHITESPACE))
        assert len(cs) == len(expected) > 7
        assert list(cs) == expected
        assert [c for b in cs.batches(5) for c in b] == expected
        assert cs[3] == expected[3] and cs[-1] == expected[-1] and cs[2:9] == expected[2:9]
        assert cs.get(expected[5].chunk_id) == expected[5] and cs.text(expected[0].chunk_id) == expected[0].text
        with pytest.raises(KeyError):
            cs.get("nope#0")
        with pytest.raises(IndexError):
            cs[len(expected)]
        assert cs.count_in_docs([docs[0].doc_id, docs[1].doc_id, "unknown"]) == sum(c.doc_id in {docs[0].doc_id, docs[1].doc_id} for c in expected)
        assert truncation_rate(cs, 10) == pytest.approx(truncation_rate(expected, 10))
        import pickle
        assert list(pickle.loads(pickle.dumps(cs))) == expected
        assert not list(tmp_path.glob(".*.tmp"))  # written under a temporary name, then renamed
    finally:
        ChunkSet.BATCH = old


def test_chunk_set_write_is_atomic(docs, tmp_path):
    from workbench.stages.chunking import ChunkSet

    def failing():
        yield from chunk_documents(docs[:2], WHOLE, WHITESPACE)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        ChunkSet.write(tmp_path / "set.sqlite", failing())
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_chunk_set_streams_memory_does_not_grow_with_the_corpus(docs, tmp_path):
    """Writing and reading a chunk set holds one batch at a time: 8x the corpus, about the same
    peak of Python memory (a list of chunks would grow 8x)."""
    import tracemalloc

    from workbench.stages.chunking import ChunkSet, iter_chunks

    base = [d.text for d in docs]

    def corpus(n):  # generated lazily, like a streamed corpus file
        return (Document(f"d{i}", "t", base[i % len(base)] + f" ({i})") for i in range(n))

    def peak(n):
        tracemalloc.start()
        cs = ChunkSet.write(tmp_path / f"set-{n}.sqlite", iter_chunks(corpus(n), WHOLE, WHITESPACE))
        total = sum(len(c.text) for c in cs)  # a full pass over the texts
        assert cs.count_in_docs(["d0", f"d{n - 1}"]) == 2
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, total

    small, small_text = peak(3000)
    big, big_text = peak(24000)
    assert big_text > 7.5 * small_text
    assert big < 1.6 * small, (small, big)
