"""Resume after SIGKILL: a run killed mid-grid and resumed stores exactly what an uninterrupted
run stores (no duplicates, nothing missing, same values)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration

EXPERIMENT = """
name: resume_check
dataset: {dataset}
grid:
  chunking:
    - {{splitter: none}}
    - {{splitter: sentence, chunk_size: 48, chunk_overlap: 8}}
  embedding:
    - {{provider: local, model: all-MiniLM-L6-v2}}
  retrieval:
    - {{method: bm25, top_k: 10}}
    - {{method: dense, top_k: 10}}
"""
# Latencies are measurements, not results: they differ between two executions by design.
VOLATILE = ["retrieval_latency_s", "generation_latency_s", "ttft_s"]


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env.update(WORKBENCH_STORE=f"sqlite:///{root / 'wb.sqlite'}", WORKBENCH_CACHE=str(root / "cache"),
               WORKBENCH_REPORTS=str(root / "reports"))
    return env


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with create_engine(f"sqlite:///{db}").connect() as conn:
            return conn.execute(text("select count(*) from questions")).scalar() or 0
    except Exception:  # table not created yet
        return 0


def _rows(db: Path) -> pd.DataFrame:
    with create_engine(f"sqlite:///{db}").connect() as conn:
        q = pd.read_sql("select * from questions order by run_id, query_id", conn)
        a = pd.read_sql("select * from aggregates where metric not like '%latency%' order by run_id, metric", conn)
    return q.drop(columns=VOLATILE), a


def test_sigkill_mid_grid_then_resume_matches_uninterrupted(tmp_path):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=60)
    exp = tmp_path / "resume_check.yaml"
    exp.write_text(EXPERIMENT.format(dataset=dataset), encoding="utf-8")
    cmd = [sys.executable, "-m", "workbench", "run", str(exp), "--no-report"]

    killed = tmp_path / "killed"
    db = killed / "wb.sqlite"
    proc = subprocess.Popen(cmd, env=_env(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    n_questions = sum(1 for _ in open(dataset / "queries.jsonl"))
    deadline = time.time() + 300
    # Kill once the first run is stored and the grid is part-way through the later ones.
    while time.time() < deadline and _count(db) < n_questions + 10:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _count(db)
    assert n_questions < partial < 4 * n_questions, "the kill must land mid-grid"

    resumed = subprocess.run(cmd, env=_env(killed), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    clean = tmp_path / "clean"
    fresh = subprocess.run(cmd, env=_env(clean), capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr

    q_killed, a_killed = _rows(db)
    q_clean, a_clean = _rows(clean / "wb.sqlite")
    assert len(q_killed) == 4 * n_questions
    assert not q_killed.duplicated(["run_id", "query_id"]).any()
    pd.testing.assert_frame_equal(q_killed, q_clean)
    pd.testing.assert_frame_equal(a_killed, a_clean)
    with create_engine(f"sqlite:///{db}").connect() as conn:
        statuses = [r[0] for r in conn.execute(text("select status from runs"))]
    assert statuses == ["complete"] * 4
