"""Split index builds without a cluster: the range logic of stages/index.py and pipeline/splitbuild.py
with an embedder whose vectors depend on the batch they are computed in (as real models' do, in
their last bits), so any difference from a single builder's batches shows up."""

from __future__ import annotations

import hashlib

import diskcache
import numpy as np
import pytest

from workbench.pipeline.splitbuild import AUTO_RANGE_CHUNKS, auto_workers
from workbench.stages import index as index_mod
from workbench.stages.chunking import Chunk, ChunkSet
from workbench.stages.embedding import CachedEmbedder, cached_passages


class BatchSensitiveEmbedder:
    """A text's vector is a function of the text *and of the batch it came in*: the batch's hash
    perturbs every vector slightly. ``fail_at``: the n-th call raises (an endpoint that fails once)."""

    model_id, fingerprint, tokenizer, dim = "test:batchy", "batchy-fp", None, 8

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def embed_passages(self, texts):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("endpoint down")
        batch = hashlib.sha256("\x00".join(texts).encode()).digest()
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim) + batch[0] * 1e-4
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def _chunk_set(tmp_path, n: int) -> ChunkSet:
    """``n`` chunks; some texts repeat across blocks (a repeated chunk is embedded once, in the
    block of its first occurrence), the rest are unique."""
    chunks = []
    for i in range(n):
        text = f"boilerplate footer {i % 7}" if i % 97 == 5 else f"passage {i} about topic {i % 13}"
        chunks.append(Chunk(f"d{i}#0", f"d{i}", text, 0, len(text), 5))
    return ChunkSet.write(tmp_path / "chunks.sqlite", chunks)


class InProcessSplit:
    """A SplitEmbedding that runs the ranges here, last range first (the order a cluster may
    finish them in), each with its own embedder instance, as Ray tasks would."""

    where = "in-process ranges"

    def __init__(self, cache, workers: int, fail_first: bool = False):
        self.cache, self.workers, self.fail_first = cache, workers, fail_first
        self.attempts: list[tuple[int, int]] = []

    def submit(self, chunks, ranges):
        for start, stop in reversed(ranges):
            for attempt in (1, 2):  # one retry, like RANGE_RETRIES
                self.attempts.append((start, attempt))
                embedder = CachedEmbedder(BatchSensitiveEmbedder(fail_at=2 if self.fail_first and attempt == 1 else None), self.cache)
                try:
                    index_mod.embed_block_range(chunks, embedder, start, stop)
                    break
                except RuntimeError:
                    continue
        return [lambda timeout: True for _ in ranges]

    def vectors(self, texts):
        return cached_passages(self.cache, BatchSensitiveEmbedder.fingerprint, texts)


def _collection_vectors(col) -> dict[str, np.ndarray]:
    got = col.get(include=["embeddings"])
    return dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))


def _build(tmp_path, name: str, chunks, split_workers: int | None, fail_first: bool = False, warm: list[str] = ()):
    cache = diskcache.Cache(str(tmp_path / name / "stages"))
    for text in warm:  # an embedding cached before the build (another chunk set shared the text)
        CachedEmbedder(BatchSensitiveEmbedder(), cache).embed_passages([text])
    client = index_mod.open_chroma(tmp_path / name / "chroma")
    split = InProcessSplit(cache, split_workers, fail_first) if split_workers else None
    timings: dict = {}
    col, built = index_mod.ensure_collection(client, "wb-test", chunks, lambda: CachedEmbedder(BatchSensitiveEmbedder(), cache),
                                             tmp_path / name / "locks", split=split, timings=timings)
    assert built and col.count() == len(chunks)
    return _collection_vectors(col), split, timings


def test_block_ranges_cover_the_set_in_whole_blocks():
    assert index_mod.block_ranges(1300, 2) == [(0, 512), (512, 1300)]
    assert index_mod.block_ranges(1300, 8) == [(0, 512), (512, 1024), (1024, 1300)]  # at most one range per block
    assert index_mod.block_ranges(100, 4) == [(0, 100)]
    for n, parts in ((10_000, 3), (51_200, 7), (513, 2)):
        ranges = index_mod.block_ranges(n, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == n and len(ranges) <= parts
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % index_mod.ADD_BATCH == 0 for start, _ in ranges)


def test_a_split_build_equals_a_single_builder_whatever_order_the_ranges_run_in(tmp_path):
    chunks = _chunk_set(tmp_path, 1300)
    warm = ["passage 700 about topic 11"]  # cached before either build: both must reuse it
    single, _, single_t = _build(tmp_path, "single", chunks, None, warm=warm)
    split, how, split_t = _build(tmp_path, "split", chunks, 3, warm=warm)
    assert [start for start, _ in how.attempts] == [1024, 512, 0]  # the last range ran first
    assert single.keys() == split.keys()
    assert all(np.array_equal(single[k], split[k]) for k in single)  # bit for bit, batch effects included
    assert split_t["index_add_s"] > 0 and "embed_wait_s" in split_t and "embed_wait_s" not in single_t
    # the fake really is batch-sensitive: embedding a block with other company changes its vectors
    alone = BatchSensitiveEmbedder().embed_passages([chunks[3].text])[0]
    assert not np.array_equal(alone, single[chunks[3].chunk_id])


def test_a_range_that_fails_half_way_and_is_retried_gives_the_same_vectors(tmp_path):
    chunks = _chunk_set(tmp_path, 1300)
    single, _, _ = _build(tmp_path, "single", chunks, None)
    retried, how, _ = _build(tmp_path, "retried", chunks, 2, fail_first=True)
    assert how.attempts == [(512, 1), (512, 2), (0, 1)]  # the range failed at its second block, then ran again
    assert all(np.array_equal(single[k], retried[k]) for k in single)


def test_a_range_that_fails_for_good_leaves_no_index(tmp_path):
    chunks = _chunk_set(tmp_path, 600)
    client = index_mod.open_chroma(tmp_path / "chroma")

    class Broken:
        workers, where = 2, "broken"

        def submit(self, chunks, ranges):
            def wait(timeout):
                raise RuntimeError("range failed for good")

            return [wait for _ in ranges]

        def vectors(self, texts):
            return None

    with pytest.raises(RuntimeError, match="for good"):
        index_mod.ensure_collection(client, "wb-broken", chunks, BatchSensitiveEmbedder, tmp_path / "locks", split=Broken())
    names = {getattr(c, "name", c) for c in client.list_collections()}
    assert "wb-broken" not in names  # only a tmp- collection, removed by the next builder
    col, built = index_mod.ensure_collection(client, "wb-broken", chunks, lambda: CachedEmbedder(BatchSensitiveEmbedder(), diskcache.Cache(
        str(tmp_path / "c"))), tmp_path / "locks")
    assert built and col.count() == 600
    assert {getattr(c, "name", c) for c in client.list_collections()} == {"wb-broken"}


def test_automatic_split_by_corpus_size():
    assert auto_workers(5_000, 8) == 1  # small: the building task embeds it alone
    assert auto_workers(2 * AUTO_RANGE_CHUNKS, 8) == 2
    assert auto_workers(100_000, 8) == 8  # capped by the cluster's slots
    assert auto_workers(100_000, 0) == 1


def test_embed_workers_need_the_ray_executor(tmp_path):
    from workbench.errors import ConfigError
    from workbench.pipeline.executors import check_executor
    from workbench.settings import Workspace

    ws = Workspace.resolve(root=tmp_path, embed_workers=4, environ={})
    assert ws.embed_workers == 4
    with pytest.raises(ConfigError, match="embed workers \\(4\\) split index builds across a Ray cluster: they need --executor ray"):
        check_executor(ws)
    with pytest.raises(ConfigError, match="WORKBENCH_EMBED_WORKERS: expected a whole number, got 'many'"):
        Workspace.resolve(root=tmp_path, environ={"WORKBENCH_EMBED_WORKERS": "many"})
    with pytest.raises(ConfigError, match="embed workers must be at least 1"):
        Workspace.resolve(root=tmp_path, environ={"WORKBENCH_EMBED_WORKERS": "0"})
