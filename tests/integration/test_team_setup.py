"""Team infrastructure: the same experiment, unchanged, on one laptop (SQLite + embedded Chroma +
the local executor) and on shared servers (PostgreSQL + a Chroma server + a Ray cluster), all real
and started on loopback by tests/servers.py. Stored results must be identical."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_xquad_slice
from workbench.store import Store

pytestmark = pytest.mark.integration

QUESTION_FIELDS = ["query_id", "position", "question", "gold_answers", "relevant", "hits", "answer", "error",
                   "prompt_tokens", "completion_tokens", "tokens_estimated", "cost_usd", "metrics"]


def _cli(*args: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=env, timeout=timeout)


def _experiment(tmp_path: Path, dataset: Path) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(f"""name: team
dataset: {dataset}
queries: {{limit: 24, seed: 1}}
grid:
  chunking:
    - {{splitter: sentence, chunk_size: 96, chunk_overlap: 16}}
  embedding:
    - {{provider: local, model: all-MiniLM-L6-v2}}
  retrieval:
    - {{method: bm25, top_k: 5}}
    - {{method: dense, top_k: 5}}
    - {{method: hybrid, top_k: 5}}
""", encoding="utf-8")
    return path


def _snapshot(url: str, experiment: str) -> dict:
    """Everything a run stores that does not depend on timing: runs, per-question rows, aggregates."""
    st = Store(url)
    out = {"run_ids": st.run_ids(experiment), "spec": st.experiment(experiment)["spec"]}
    for run_id in out["run_ids"]:
        run = st.run(run_id)
        qs = st.questions(run_id)
        with st.engine.connect() as conn:
            from sqlalchemy import select

            from workbench.store import questions

            rows = [dict(r) for r in conn.execute(select(questions).where(questions.c.run_id == run_id)
                                                  .order_by(questions.c.position)).mappings()]
        agg = st.aggregates([run_id])
        agg = agg[~agg["metric"].str.contains("latency|ttft")].sort_values("metric")  # timings differ by nature
        out[run_id] = {
            "run": {k: run[k] for k in ("config", "axes", "status", "n_questions", "n_failed", "n_chunks", "truncation_rate")},
            "lineage": {k: v for k, v in run["lineage"].items() if k not in ("packages", "code_hash", "git_commit")},
            "questions": [{k: r[k] for k in QUESTION_FIELDS} for r in rows],
            "aggregates": agg[["metric", "value", "ci_low", "ci_high", "n"]].to_dict("records"),
            "n_rows": len(qs),
        }
    return out


def test_same_experiment_on_laptop_and_team_infrastructure(tmp_path, postgres_url, chroma_server, ray_cluster):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=20)
    exp = _experiment(tmp_path, dataset)
    base = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    base["WORKBENCH_REPORTS"] = str(tmp_path / "reports")

    laptop = {**base, "WORKBENCH_STORE": f"sqlite:///{tmp_path / 'laptop' / 'wb.sqlite'}", "WORKBENCH_CACHE": str(tmp_path / "laptop" / "cache")}
    t0 = time.perf_counter()
    # One thread on both sides: torch rounds matrix products differently with another thread count
    # (query vectors differ in the last bit, dense scores in the 7th digit), and a Ray task uses one.
    first = _cli("run", str(exp), "--no-report", "--limit", "16", "--threads", "1", env=laptop)
    t_laptop = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr[-3000:]

    # The same file, unchanged; the infrastructure comes from options and the environment only.
    # A password in the URL (the test server trusts loopback, so any works) must not reach the
    # executed notebook or the report folder.
    with_password = postgres_url.replace("://workbench@", "://workbench:s3cret-pw@")
    team = {**base, "WORKBENCH_STORE": with_password, "WORKBENCH_CACHE": str(tmp_path / "team" / "cache")}
    t0 = time.perf_counter()
    second = _cli("run", str(exp), "--no-report", "--limit", "16", "--executor", "ray", "--address", ray_cluster,
                  "--chroma-url", chroma_server, env=team)
    t_team = time.perf_counter() - t0
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"executor ray at {ray_cluster}, Chroma server {chroma_server}" in second.stderr
    assert "ray: 3 grid points" in second.stderr
    print(f"\nretrieval grid (3 runs x 16 questions): laptop {t_laptop:.1f}s, team {t_team:.1f}s")
    notebooks = list((tmp_path / "reports").rglob("bakeoff.ipynb"))
    assert len(notebooks) == 2 and all("s3cret-pw" not in nb.read_text(encoding="utf-8") for nb in notebooks)

    # The dense index was built on the server (not in the team cache folder), by a Ray worker.
    assert not (tmp_path / "team" / "cache" / "chroma").exists()
    from workbench.stages import index as index_mod

    names = [getattr(c, "name", c) for c in index_mod.open_chroma_server(chroma_server).list_collections()]
    assert any(n.startswith("wb-") for n in names) and not any(n.startswith(("tmp-", "lock-")) for n in names)

    a = _snapshot(laptop["WORKBENCH_STORE"], "team")
    b = _snapshot(postgres_url, "team")
    assert len(a["run_ids"]) == 3 and all(a[r]["n_rows"] == 16 for r in a["run_ids"])
    assert a["run_ids"] == b["run_ids"] and a["spec"] == b["spec"]
    for run_id in a["run_ids"]:
        for part in ("run", "lineage", "aggregates"):
            assert a[run_id][part] == b[run_id][part], (run_id, part)
        for qa, qb in zip(a[run_id]["questions"], b[run_id]["questions"], strict=True):
            for key in QUESTION_FIELDS:
                assert qa[key] == qb[key], (run_id, qa["query_id"], key, qa[key], qb[key])
    assert a == b


def _chunks(n: int):
    from workbench.stages.chunking import Chunk

    return [Chunk(f"d{i}#0", f"d{i}", f"passage number {i}", 0, 17, 4) for i in range(n)]


class _HashEmbedder:
    """A deterministic stand-in for a model (this test is about locking, not embeddings); slow
    enough that concurrent builders really overlap."""

    def __init__(self, calls: list):
        calls.append(threading.get_ident())

    def embed_passages(self, texts):
        time.sleep(0.3)
        rng = np.random.default_rng([sum(map(ord, t)) for t in texts])
        v = rng.normal(size=(len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_concurrent_builders_on_a_chroma_server_build_once(tmp_path, chroma_server):
    from workbench.stages import index as index_mod

    chunks = _chunks(40)
    name = f"wb-test-{os.getpid()}-{time.time_ns() % 10**8}"
    calls: list = []
    results = []

    def build():
        client = index_mod.open_chroma_server(chroma_server)
        col, built = index_mod.ensure_collection(client, name, chunks, lambda: _HashEmbedder(calls), tmp_path / "locks")
        results.append((built, col.count()))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == [(False, 40), (False, 40), (True, 40)]
    assert len(calls) == 1  # one builder embedded; the others waited and reused its collection
    client = index_mod.open_chroma_server(chroma_server)
    names = {getattr(c, "name", c) for c in client.list_collections()}
    assert name in names and f"lock-{name}" not in names and not any(n.startswith(f"tmp-{name}") for n in names)


def test_a_dead_builders_lock_and_leftovers_are_cleaned_up(tmp_path, chroma_server, monkeypatch):
    from workbench.stages import index as index_mod

    client = index_mod.open_chroma_server(chroma_server)
    name = f"wb-stale-{os.getpid()}-{time.time_ns() % 10**8}"
    # what a builder killed mid-build leaves: its lock (heartbeat long ago) and a half-filled tmp collection
    client.create_collection(f"lock-{name}", metadata={"workbench": "lock", "owner": "dead:1", "heartbeat": time.time() - 3600})
    client.create_collection(f"tmp-{name}-deadbeef").add(ids=["x"], embeddings=[[1.0] * 8], documents=["x"])
    calls: list = []
    col, built = index_mod.ensure_collection(client, name, _chunks(10), lambda: _HashEmbedder(calls), tmp_path / "locks")
    assert built and col.count() == 10
    names = {getattr(c, "name", c) for c in client.list_collections()}
    assert f"tmp-{name}-deadbeef" not in names and f"lock-{name}" not in names

    # a live lock (fresh heartbeat) is waited for, not broken
    name2 = name + "-live"
    client.create_collection(f"lock-{name2}", metadata={"workbench": "lock", "owner": "alive:1", "heartbeat": time.time()})
    monkeypatch.setattr(index_mod, "LOCK_POLL_S", 0.05)
    released = threading.Timer(1.0, lambda: client.delete_collection(f"lock-{name2}"))
    released.start()
    t0 = time.perf_counter()
    index_mod.ensure_collection(client, name2, _chunks(5), lambda: _HashEmbedder(calls), tmp_path / "locks")
    assert time.perf_counter() - t0 >= 0.9


def test_bad_infrastructure_settings_are_one_line_errors(tmp_path, xquad_slice, workspace_env):
    exp = tmp_path / "e.yaml"
    exp.write_text(f"name: e\ndataset: {xquad_slice}\ngrid:\n  chunking: [{{splitter: none}}]\n  retrieval: [{{method: bm25}}]\n", encoding="utf-8")
    env = dict(os.environ)
    bad = _cli("run", str(exp), "--executor", "spark", env=env)
    assert bad.returncode == 2 and "executor 'spark': expected one of local, ray" in bad.stderr
    no_addr = _cli("run", str(exp), "--executor", "ray", env={k: v for k, v in env.items() if k != "WORKBENCH_RAY_ADDRESS"})
    assert no_addr.returncode == 2 and "needs the cluster address" in no_addr.stderr
    from workbench.errors import ConfigError
    from workbench.stages.index import parse_chroma_url

    assert parse_chroma_url("http://10.0.0.5:8001") == ("10.0.0.5", 8001, False)
    assert parse_chroma_url("chroma.internal") == ("chroma.internal", 8000, False)
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        parse_chroma_url("ftp://x:1")


def test_index_chroma_in_the_experiment_file_and_the_override(tmp_path, xquad_slice, workspace_env):
    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment

    text = f"name: e\ndataset: {xquad_slice}\ngrid:\n  chunking: [{{splitter: none}}]\n  retrieval: [{{method: bm25}}]\n"
    plain, infra = tmp_path / "plain.yaml", tmp_path / "infra.yaml"
    plain.write_text(text, encoding="utf-8")
    infra.write_text(text + "index: {chroma: {host: chroma.team, port: 8001}}\n", encoding="utf-8")
    ws = workspace_env.replace(chroma_url=None)
    e_plain, e_infra = load_experiment(plain), load_experiment(infra)
    assert ws.chroma_server(e_plain.spec.index) is None and ws.chroma_server(e_infra.spec.index) == "http://chroma.team:8001"
    override = workspace_env.replace(chroma_url="http://127.0.0.1:9")
    assert override.chroma_server(e_infra.spec.index) == "http://127.0.0.1:9"
    # infrastructure never changes what a run is
    assert [r.run_id for r in plan_experiment(e_plain, ws).runs] == [r.run_id for r in plan_experiment(e_infra, ws).runs]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "index: {chroma: {hots: x}}\n", encoding="utf-8")
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match=r"bad.yaml:6: index.chroma.hots: unknown key 'hots' \(did you mean 'host'\?\)"):
        load_experiment(bad)


def test_workbench_run_against_postgres(tmp_path, postgres_url):
    """A small retrieval-only `workbench run --limit` with the local executor, store on PostgreSQL;
    the stored experiment reads back through the other commands."""
    import json

    dataset = write_xquad_slice(tmp_path / "data", n_docs=10, n_queries=20)
    exp = tmp_path / "pg.yaml"
    exp.write_text(f"name: pg_small\ndataset: {dataset}\ngrid:\n  chunking: [{{splitter: none}}]\n"
                   "  retrieval: [{method: bm25, top_k: 5}]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    env.update(WORKBENCH_STORE=postgres_url, WORKBENCH_CACHE=str(tmp_path / "cache"), WORKBENCH_REPORTS=str(tmp_path / "reports"))
    done = _cli("run", str(exp), "--limit", "6", "--no-report", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    board = json.loads(_cli("results", "pg_small", "--json", env=env).stdout)
    assert len(board) == 1 and board[0]["status"] == "complete" and board[0]["n_questions"] == 6
    st = Store(postgres_url)
    assert st.engine.dialect.name == "postgresql" and len(st.questions(board[0]["run_id"])) == 6
