"""A small real results store for the notebook and report tests, built once per test session.

A 20-document / 10-question slice of data/xquad_en, with untrusted markup planted in the first
question and in its gold document, run through the real runner: two chunkings x (BM25, MiniLM
dense) = 4 retrieval-only runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import write_xquad_slice

EXPERIMENT = "nb_fixture"
XSS_DOC = ' <script>alert("xss-doc")</script> <img src=x onerror="alert(\'xss-img\')">'
XSS_QUESTION = " <img src=x onerror=alert('xss-q')>"


@dataclass(frozen=True)
class FixtureStore:
    root: Path
    dataset: Path
    experiment_path: Path
    store_url: str
    cache_dir: Path
    experiment: str = EXPERIMENT

    def env(self, **extra: str) -> dict[str, str]:
        import os

        env = dict(os.environ, WORKBENCH_STORE=self.store_url, WORKBENCH_CACHE=str(self.cache_dir),
                   WORKBENCH_EXPERIMENT=self.experiment, WORKBENCH_EXPERIMENT_PATH=str(self.experiment_path))
        env.update(extra)
        return env


def _plant_markup(dataset: Path) -> None:
    queries = [json.loads(line) for line in (dataset / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    first = queries[0]
    first["text"] += XSS_QUESTION
    qrels = [line.split("\t") for line in (dataset / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    gold = next(doc for qid, doc, _ in qrels if qid == first["_id"])
    docs = [json.loads(line) for line in (dataset / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    for d in docs:
        if d["_id"] == gold:
            d["text"] += XSS_DOC  # appended: the gold answer offsets stay valid
    (dataset / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (dataset / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")


def write_experiment(path: Path, dataset: Path, name: str = EXPERIMENT) -> Path:
    path.write_text(f"""name: {name}
description: Notebook test fixture - two chunkings x BM25 / MiniLM dense over 10 XQuAD questions.
dataset: {dataset}
grid:
  chunking:
    - {{splitter: none}}
    - {{splitter: sentence, chunk_size: 64, chunk_overlap: 8}}
  embedding:
    - {{provider: local, model: all-MiniLM-L6-v2}}
  retrieval:
    - {{method: bm25, top_k: 5}}
    - {{method: dense, top_k: 5}}
""", encoding="utf-8")
    return path


def build_fixture_store(root: Path) -> FixtureStore:
    """Build (or reuse, within one session) the fixture store under ``root``."""
    dataset = root / "data"
    fx = FixtureStore(root, dataset, root / f"{EXPERIMENT}.yaml", f"sqlite:///{root / 'wb.sqlite'}", root / "cache")
    if (root / "done").exists():
        return fx
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace

    write_xquad_slice(dataset, n_docs=20, n_queries=10)
    _plant_markup(dataset)
    write_experiment(fx.experiment_path, dataset)
    ws = Workspace.resolve(store=fx.store_url, cache_dir=fx.cache_dir)
    run_experiment(plan_experiment(load_experiment(fx.experiment_path), ws), ws)
    (root / "done").write_text("ok", encoding="utf-8")
    return fx
