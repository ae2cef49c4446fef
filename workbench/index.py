"""Vector indexes: Chroma collections named by the content address of (chunk set, embedder).

A collection is built once and reused by every run and experiment that needs the same chunks
embedded by the same model. Builds are crash- and race-safe: a builder holds a file lock, writes
into a temporary collection, and renames it to its final name only when complete, so a killed build
never leaves a half-filled collection under a name that looks finished.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import chromadb  # noqa: E402  (import chromadb before llama_index: halves import time)
from chromadb.config import Settings as ChromaSettings  # noqa: E402
from filelock import FileLock  # noqa: E402
from llama_index.core.schema import TextNode  # noqa: E402
from llama_index.vector_stores.chroma import ChromaVectorStore  # noqa: E402

from .chunking import Chunk  # noqa: E402
from .hashing import hash_obj  # noqa: E402

ADD_BATCH = 512  # chunks embedded and sent to Chroma per round trip
# HNSW is approximate and, built with several threads, not reproducible: two builds of the same
# vectors returned different 9th/10th neighbours. A single-threaded build is deterministic (hnswlib's
# level generator is seeded), and a wide search beam keeps recall near exact for top_k <= 200.
HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 256, "max_neighbors": 32, "num_threads": 1}


def open_chroma(path: Path) -> chromadb.ClientAPI:
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False, allow_reset=False))


def collection_name(chunk_set_key: str, embedder_fingerprint: str) -> str:
    return "wb-" + hash_obj([chunk_set_key, embedder_fingerprint, HNSW], 40)


def _existing(client: chromadb.ClientAPI, name: str, expected: int):
    try:
        col = client.get_collection(name)
    except Exception:  # chromadb raises NotFoundError/ValueError depending on the version
        return None
    return col if col.count() == expected else None


def ensure_collection(client: chromadb.ClientAPI, name: str, chunks: list[Chunk], embedder_factory, lock_dir: Path) -> tuple[chromadb.Collection, bool]:
    """Return the complete collection ``name``, building it from ``chunks`` if needed.

    ``embedder_factory()`` is called only when the collection must be built, so reusing an index
    loads no model. Returns (collection, built) where ``built`` says whether this call wrote it.
    """
    col = _existing(client, name, len(chunks))
    if col is not None:
        return col, False
    lock_dir.mkdir(parents=True, exist_ok=True)
    # One lock for every build in this Chroma folder: Chroma's persistent client is not safe for
    # concurrent writers across processes. Readers do not lock; finished collections never change.
    with FileLock(str(lock_dir / "chroma-build.lock")):
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
            vectors = embedder.embed_passages([c.text for c in batch])
            store.add([
                TextNode(id_=c.chunk_id, text=c.text, embedding=vec.tolist(), metadata={"doc_id": c.doc_id},
                         excluded_embed_metadata_keys=["doc_id"], excluded_llm_metadata_keys=["doc_id"])
                for c, vec in zip(batch, vectors)
            ])
        tmp.modify(name=name)
        return client.get_collection(name), True

