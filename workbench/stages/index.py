"""Vector indexes: Chroma collections named by the content address of (chunk set, embedder).

A collection is built once and reused by every run and experiment that needs the same chunks
embedded by the same model. Builds are crash- and race-safe: a builder holds a file lock, writes
into a temporary collection, and renames it to its final name only when complete, so a killed build
never leaves a half-filled collection under a name that looks finished.

The index lives in an embedded Chroma folder (one machine) or on a Chroma server
(``chroma run``, shared by a team or a Ray cluster). Against a server the file lock cannot reach the
other builders, so the lock is a collection on the server itself: creating a collection is atomic
there, so whoever creates ``lock-<name>`` builds; the others wait for it. The builder refreshes a
heartbeat in the lock's metadata, and a lock whose heartbeat is older than ``LOCK_STALE_S`` (its
builder was killed) is broken.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import chromadb  # (import chromadb before llama_index: halves import time)
import numpy as np
from chromadb.config import Settings as ChromaSettings
from filelock import FileLock
from llama_index.core.schema import TextNode
from llama_index.vector_stores.chroma import ChromaVectorStore

from ..errors import ConfigError
from ..hashing import sha256_text
from ..settings import apply_offline_defaults
from .chunking import Chunk
from .keys import HNSW

ADD_BATCH = 512  # chunks embedded and sent to Chroma per round trip (the HNSW settings: keys.py)


def open_chroma(path: Path) -> chromadb.ClientAPI:
    """The embedded Chroma in ``path`` (telemetry off: in its settings, and in the environment
    for what Chroma starts itself)."""
    apply_offline_defaults()
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))


LOCK_STALE_S = 300.0  # a server-side build lock without a heartbeat for this long is abandoned
LOCK_POLL_S = 0.5
WAIT_BEAT_S = 10.0  # while ranges are embedded elsewhere, the builder refreshes its lock this often


def parse_chroma_url(url: str) -> tuple[str, int, bool]:
    """``http://host:port`` (or ``https://``, or bare ``host:port``) -> (host, port, ssl)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError(f"Chroma server URL {url!r}: expected http://HOST:PORT")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 8000)
    except ValueError:
        raise ConfigError(f"Chroma server URL {url!r}: bad port") from None
    return parts.hostname, port, parts.scheme == "https"


def open_chroma_server(url: str) -> chromadb.ClientAPI:
    """A client of the Chroma server at ``url`` (``chroma run --host H --port P``); checks it answers."""
    host, port, ssl = parse_chroma_url(url)
    apply_offline_defaults()
    try:
        client = chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=ChromaSettings(anonymized_telemetry=False))
        client.heartbeat()
    except Exception as exc:  # chromadb wraps connection failures in several exception types
        from ..errors import WorkbenchError

        raise WorkbenchError(f"Chroma server {url}: not reachable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return client


def is_server(client: chromadb.ClientAPI) -> bool:
    return "fastapi" in client.get_settings().chroma_api_impl.lower()


@contextlib.contextmanager
def _server_lock(client: chromadb.ClientAPI, name: str):
    """Hold ``lock-<name>`` on the server; yields a function that refreshes the heartbeat."""
    lock_name = f"lock-{name}"
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    while True:
        try:
            lock = client.create_collection(lock_name, metadata={"workbench": "lock", "owner": owner, "heartbeat": time.time()})
            break
        except Exception:  # it exists: someone else is building (or died while building)
            try:
                held = client.get_collection(lock_name)
            except Exception:
                continue  # released meanwhile: try again
            beat = (held.metadata or {}).get("heartbeat", 0.0)
            if time.time() - float(beat) > LOCK_STALE_S:
                with contextlib.suppress(Exception):
                    client.delete_collection(lock_name)
                continue
            time.sleep(LOCK_POLL_S)

    def heartbeat() -> None:
        lock.modify(metadata={"workbench": "lock", "owner": owner, "heartbeat": time.time()})

    try:
        yield heartbeat
    finally:
        with contextlib.suppress(Exception):
            client.delete_collection(lock_name)


@contextlib.contextmanager
def _file_lock(lock_dir: Path):
    lock_dir.mkdir(parents=True, exist_ok=True)
    # One lock for every build in this Chroma folder: Chroma's persistent client is not safe for
    # concurrent writers across processes. Readers do not lock; finished collections never change.
    with FileLock(str(lock_dir / "chroma-build.lock")):
        yield lambda: None


def existing_collection(client: chromadb.ClientAPI, name: str, expected: int) -> bool:
    """Whether the complete collection ``name`` (``expected`` chunks) is already built."""
    return _existing(client, name, expected) is not None


def _existing(client: chromadb.ClientAPI, name: str, expected: int):
    try:
        col = client.get_collection(name)
    except Exception:  # chromadb raises NotFoundError/ValueError depending on the version
        return None
    return col if col.count() == expected else None


class SplitEmbedding(Protocol):
    """Embeds ranges of a chunk set elsewhere (Ray tasks, ``pipeline/splitbuild.py``) into the
    shared embedding cache, while the builder adds them to the collection in order."""

    workers: int  # how many ranges the chunk set is cut into
    where: str  # who embeds them, for messages ("4 Ray tasks")

    def submit(self, chunks: Sequence[Chunk], ranges: list[tuple[int, int]]) -> list[Callable[[float], bool]]:
        """Start embedding every ``[start, stop)`` range; returns one function per range that waits up
        to the given seconds and says whether it is done (it raises when the range failed for good)."""

    def vectors(self, texts: list[str]) -> np.ndarray | None:
        """The cached passage vectors of ``texts``, or None when one is missing."""


def block_ranges(n_chunks: int, parts: int, block: int = ADD_BATCH) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``n_chunks`` into at most ``parts`` runs of whole blocks.

    Ranges start on block boundaries, so a range embeds exactly the blocks a single builder would
    embed, with the same texts in each call: a vector depends (in its last bits) on the batch it was
    computed in, so this is what makes a split build equal a single-worker one.
    """
    blocks = -(-n_chunks // block)
    parts = max(1, min(parts, blocks))
    bounds = [(i * blocks // parts) * block for i in range(parts + 1)]
    return [(a, min(b, n_chunks)) for a, b in zip(bounds, bounds[1:]) if a < min(b, n_chunks)]


def embed_block_range(chunks: Sequence[Chunk], embedder, start: int, stop: int) -> int:
    """Embed the blocks of ``[start, stop)`` into ``embedder``'s cache as a single builder would.

    A single builder calls ``embed_passages`` once per block; texts already embedded by an earlier
    block (a repeated chunk text) are cache hits there, so only the other texts are computed, in
    one batch. Here earlier blocks may not have run yet (they belong to other ranges), so a text
    whose first occurrence is in an earlier block is left out explicitly: every block is embedded
    with exactly the batch a single builder would use, whatever order the ranges run in. Returns
    how many texts were computed (a retried range finds its finished blocks cached).
    """
    earlier = {sha256_text(c.indexed_text) for b in range(0, start, ADD_BATCH) for c in chunks[b:min(b + ADD_BATCH, start)]}
    before = getattr(embedder, "misses", 0)
    for b in range(start, stop, ADD_BATCH):
        texts = [c.indexed_text for c in chunks[b:min(b + ADD_BATCH, stop)]]
        embedder.embed_passages([t for t in texts if sha256_text(t) not in earlier])
        earlier.update(sha256_text(t) for t in texts)
    return getattr(embedder, "misses", 0) - before


def _add(store: ChromaVectorStore, batch: list[Chunk], vectors: np.ndarray) -> None:
    store.add([
        TextNode(id_=c.chunk_id, text=c.text, embedding=vec.tolist(), metadata={"doc_id": c.doc_id},
                 excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"])
        for c, vec in zip(batch, vectors)
    ])


def _fill(tmp, chunks: Sequence[Chunk], embedder_factory, heartbeat, split: SplitEmbedding | None, timings: dict,
          on_batch: Callable[[int, int], None] | None = None) -> None:
    """Embed every chunk and add it to ``tmp`` in chunk-set order, ``ADD_BATCH`` at a time (streamed:
    one batch of texts and vectors at a time). With ``split``, ranges are embedded elsewhere
    meanwhile and each block's vectors come from the shared cache once its range is done; the adds
    keep the same order and batches, so the HNSW graph is the one a single builder makes."""
    store = ChromaVectorStore(chroma_collection=tmp)
    embedder = None
    ranges = block_ranges(len(chunks), split.workers) if split is not None else [(0, len(chunks))]
    waiters = split.submit(chunks, ranges) if split is not None else [lambda timeout: True]
    for (first, stop), done in zip(ranges, waiters):
        t0 = time.perf_counter()
        while not done(WAIT_BEAT_S):  # the ranges run elsewhere: keep the build lock alive meanwhile
            heartbeat()
        if split is not None:
            timings["embed_wait_s"] = timings.get("embed_wait_s", 0.0) + time.perf_counter() - t0
        for start in range(first, stop, ADD_BATCH):
            batch = chunks[start:min(start + ADD_BATCH, stop)]
            texts = [c.indexed_text for c in batch]  # embedded with the chunk's context (title, headings)
            t0 = time.perf_counter()
            vectors = split.vectors(texts) if split is not None else None
            if vectors is None:  # single builder (or a vector missing from the cache): embed here
                embedder = embedder or embedder_factory()
                vectors = embedder.embed_passages(texts)
            t1 = time.perf_counter()
            _add(store, batch, vectors)
            timings["embed_s"] = timings.get("embed_s", 0.0) + t1 - t0
            timings["index_add_s"] = timings.get("index_add_s", 0.0) + time.perf_counter() - t1
            heartbeat()
            if on_batch is not None:
                on_batch(start + len(batch), len(chunks))


def ensure_collection(client: chromadb.ClientAPI, name: str, chunks: Sequence[Chunk], embedder_factory,
                      lock_dir: Path, *, split: SplitEmbedding | None = None,
                      timings: dict | None = None, on_batch: Callable[[int, int], None] | None = None,
                      ) -> tuple[chromadb.Collection, bool]:
    """Return the complete collection ``name``, building it from ``chunks`` if needed.

    ``embedder_factory()`` is called only when something must be embedded here, so reusing an index
    (or a split build whose vectors are all cached) loads no model. ``split`` embeds ranges of the
    chunk set elsewhere (see :class:`SplitEmbedding`); ``timings`` receives the seconds spent
    embedding (``embed_s``, ``embed_wait_s``) and adding to Chroma (``index_add_s``);
    ``on_batch(done, total)`` is called after each block of chunks is added (progress). Returns
    (collection, built) where ``built`` says whether this call wrote it.
    """
    col = _existing(client, name, len(chunks))
    if col is not None:
        return col, False
    with (_server_lock(client, name) if is_server(client) else _file_lock(lock_dir)) as heartbeat:
        col = _existing(client, name, len(chunks))  # another process may have built it meanwhile
        if col is not None:
            return col, False
        for stale in client.list_collections():  # left by a killed builder (we hold the lock)
            stale_name = getattr(stale, "name", stale)
            if stale_name.startswith(f"tmp-{name}-") or stale_name == name:
                client.delete_collection(stale_name)
        tmp_name = f"tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp = client.create_collection(tmp_name, configuration={"hnsw": HNSW},
                                       metadata={"workbench": "index", "chunks": len(chunks)})
        _fill(tmp, chunks, embedder_factory, heartbeat, split, {} if timings is None else timings, on_batch)
        tmp.modify(name=name)
        return client.get_collection(name), True
