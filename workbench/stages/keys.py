"""What goes into run ids, cache keys and collection names from the stages, computable without
loading Chroma or LlamaIndex: `workbench plan` and the dispatching `workbench run` process name runs
and look up caches before anything heavy is imported (about 2.5 s less per command)."""

from __future__ import annotations

from ..hashing import hash_obj

# HNSW settings of every collection; part of its name, so a change builds new collections. HNSW is
# approximate and, built with several threads, not reproducible: two builds of the same vectors
# returned different 9th/10th neighbours. A single-threaded build is deterministic (hnswlib's level
# generator is seeded), and a wide search beam keeps recall near exact for top_k <= 200.
HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 256, "max_neighbors": 32, "num_threads": 1}

# What BM25 indexes. 2: the chunk's text only (1 also indexed its "doc_id: <id>" metadata line).
# Part of BM25 and hybrid runs' ids and of their retrieval cache keys, so a change of what BM25
# scores is never stored under the run id or served from the cache of the old one.
BM25_VERSION = 2


def collection_name(chunk_set_key: str, embedder_fingerprint: str) -> str:
    return "wb-" + hash_obj([chunk_set_key, embedder_fingerprint, HNSW], 40)
