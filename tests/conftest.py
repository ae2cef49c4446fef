"""Shared fixtures: small real datasets cut from data/xquad_en, an isolated workspace per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
XQUAD = ROOT / "data" / "xquad_en"

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_xquad_slice(folder: Path, n_docs: int = 20, n_queries: int | None = None) -> Path:
    """A BEIR folder with the first ``n_docs`` XQuAD paragraphs and their questions."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [json.loads(line) for line in (XQUAD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:n_docs]]
    doc_ids = {d["_id"] for d in docs}
    qrels = [line.split("\t") for line in (XQUAD / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    qrels = [q for q in qrels if q[1] in doc_ids]
    qids = {q[0] for q in qrels}
    queries = [json.loads(line) for line in (XQUAD / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
    queries = [q for q in queries if q["_id"] in qids]
    if n_queries is not None:
        queries = queries[:n_queries]
        keep = {q["_id"] for q in queries}
        qrels = [q for q in qrels if q[0] in keep]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries), encoding="utf-8")
    (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join("\t".join(q) + "\n" for q in qrels), encoding="utf-8")
    return folder


@pytest.fixture
def xquad_slice(tmp_path: Path) -> Path:
    return write_xquad_slice(tmp_path / "xquad_slice")


@pytest.fixture
def workspace_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the store, caches and reports at tmp_path for the duration of a test."""
    from workbench.settings import Workspace

    monkeypatch.setenv("WORKBENCH_STORE", f"sqlite:///{tmp_path / 'results' / 'wb.sqlite'}")
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "results" / "cache"))
    monkeypatch.setenv("WORKBENCH_REPORTS", str(tmp_path / "reports"))
    return Workspace.resolve()


# Session-scoped loopback servers (PostgreSQL, Chroma, Ray) for the team-setup tests.
from tests.servers import chroma_server, e5_server, mlflow_server, postgres_server, postgres_url, ray_cluster  # noqa: E402,F401
