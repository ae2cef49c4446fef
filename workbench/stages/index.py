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
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import chromadb  # (import chromadb before llama_index: halves import time)
from chromadb.config import Settings as ChromaSettings
from filelock import FileLock
from llama_index.core.schema import TextNode
from llama_index.vector_stores.chroma import ChromaVectorStore

from ..errors import ConfigError
from ..hashing import hash_obj
from ..settings import apply_offline_defaults
from .chunking import Chunk

ADD_BATCH = 512  # chunks embedded and sent to Chroma per round trip
# HNSW is approximate and, built with several threads, not reproducible: two builds of the same
# vectors returned different 9th/10th neighbours. A single-threaded build is deterministic (hnswlib's
# level generator is seeded), and a wide search beam keeps recall near exact for top_k <= 200.
HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 256, "max_neighbors": 32, "num_threads": 1}


def open_chroma(path: Path) -> chromadb.ClientAPI:
    """The embedded Chroma in ``path`` (telemetry off: in its settings, and in the environment
    for what Chroma starts itself)."""
    apply_offline_defaults()
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))


LOCK_STALE_S = 300.0  # a server-side build lock without a heartbeat for this long is abandoned
LOCK_POLL_S = 0.5


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


def collection_name(chunk_set_key: str, embedder_fingerprint: str) -> str:
    return "wb-" + hash_obj([chunk_set_key, embedder_fingerprint, HNSW], 40)


def existing_collection(client: chromadb.ClientAPI, name: str, expected: int) -> bool:
    """Whether the complete collection ``name`` (``expected`` chunks) is already built."""
    return _existing(client, name, expected) is not None


def _existing(client: chromadb.ClientAPI, name: str, expected: int):
    try:
        col = client.get_collection(name)
    except Exception:  # chromadb raises NotFoundError/ValueError depending on the version
        return None
    return col if col.count() == expected else None


def ensure_collection(client: chromadb.ClientAPI, name: str, chunks: list[Chunk], embedder_factory,
                      lock_dir: Path, on_batch: Callable[[int, int], None] | None = None) -> tuple[chromadb.Collection, bool]:
    """Return the complete collection ``name``, building it from ``chunks`` if needed.

    ``embedder_factory()`` is called only when the collection must be built, so reusing an index
    loads no model. ``on_batch(done, total)`` is called after each batch of chunks embedded and
    added (progress). Returns (collection, built) where ``built`` says whether this call wrote it.
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
        store = ChromaVectorStore(chroma_collection=tmp)
        embedder = embedder_factory()
        for start in range(0, len(chunks), ADD_BATCH):  # streamed: one batch of texts and vectors at a time
            batch = chunks[start:start + ADD_BATCH]
            vectors = embedder.embed_passages([c.indexed_text for c in batch])  # with the chunk's context
            store.add([
                TextNode(id_=c.chunk_id, text=c.text, embedding=vec.tolist(), metadata={"doc_id": c.doc_id},
                         excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"])
                for c, vec in zip(batch, vectors)
            ])
            heartbeat()
            if on_batch is not None:
                on_batch(start + len(batch), len(chunks))
        tmp.modify(name=name)
        return client.get_collection(name), True

