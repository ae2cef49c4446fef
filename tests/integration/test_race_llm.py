"""A small race with the local LLM (SmolLM2 through llama.cpp), end to end through `workbench run`:
the bake-off notebook runs the race, eliminations are stored with their evidence, the report has its
Race section; and a race killed with SIGKILL mid-round and resumed stores exactly what an
uninterrupted race stores (rows, statuses, evidence)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, write_xquad_slice

pytestmark = pytest.mark.integration

EXPERIMENT = """
name: race_llm
dataset: {dataset}
queries: {{limit: 16, seed: 0}}
grid:
  chunking:
    - {{splitter: sentence, chunk_size: 128, chunk_overlap: 16}}
    - {{splitter: token, chunk_size: 16, chunk_overlap: 0}}
  embedding:
    - {{provider: local, model: all-MiniLM-L6-v2}}
  retrieval:
    - {{method: bm25, top_k: 5}}
  generation:
    - {{provider: local, model: smollm2-135m, prompt: {prompt}, max_tokens: 16}}
search: {{strategy: race, metric: f1, margin: 0.05, alpha: 0.2, round: 4, min_questions: 4, seed: 1,
          prune_retrieval: {{metric: chunk_mrr, margin: 0.1}}}}
"""
# alpha 0.2 keeps the test small (16 questions are enough to drop the 16-token fragments before any
# answer); the error rate at the usual alpha is checked by simulation (test_sequential.py, bench/race.py).
VOLATILE = ["retrieval_latency_s", "generation_latency_s", "ttft_s"]


def _env(root: Path) -> dict:
    return {**os.environ, "WORKBENCH_STORE": f"sqlite:///{root / 'wb.sqlite'}", "WORKBENCH_CACHE": str(root / "cache"),
            "WORKBENCH_REPORTS": str(root / "reports")}


def _answered(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with create_engine(f"sqlite:///{db}").connect() as conn:
            return conn.execute(text("select count(*) from questions where answer is not null")).scalar() or 0
    except Exception:  # tables not created yet
        return 0


def _stored(db: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with create_engine(f"sqlite:///{db}").connect() as conn:
        q = pd.read_sql("select * from questions order by run_id, query_id", conn).drop(columns=VOLATILE)
        r = pd.read_sql("select r.run_id, status, evidence from runs r join experiment_runs e on e.run_id = r.run_id order by r.run_id", conn)
    return q, r


def _servers_of(root: Path) -> list[int]:
    """Local LLM servers started by the run whose store is under ``root`` (found by that store in
    their environment)."""
    store = f"sqlite:///{root / 'wb.sqlite'}"
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
            zombie = b") Z " in (proc / "stat").read_bytes()
        except OSError:
            continue
        if b"llama_cpp.server" in cmdline and f"WORKBENCH_STORE={store}".encode() in environ and not zombie:
            found.append(int(proc.name))
    return found


def _no_server_outlives(root: Path, within_s: float = 10) -> None:
    """The server runs in its own session, so the SIGKILL of the run's process group does not reach
    it: its watchdog (providers/llm_serve.py) must end it once its parent is gone."""
    deadline = time.time() + within_s
    while time.time() < deadline and _servers_of(root):
        time.sleep(0.1)
    left = _servers_of(root)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "the local LLM server outlived the killed run"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("race_llm")
    dataset = write_xquad_slice(tmp / "data", n_docs=12)
    exp = tmp / "race_llm.yaml"
    exp.write_text(EXPERIMENT.format(dataset=dataset, prompt=ROOT / "experiments" / "prompts" / "grounded_qa.yaml"), encoding="utf-8")
    clean = tmp / "clean"
    done = subprocess.run([sys.executable, "-m", "workbench", "run", str(exp)], env=_env(clean), capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, exp, clean, done


def test_a_small_race_with_the_local_llm_stores_its_eliminations_and_reports_them(setup):
    tmp, exp, clean, done = setup
    assert "LLM calls as a race: worst case 32" in " ".join(done.stderr.split())
    res = subprocess.run([sys.executable, "-m", "workbench", "results", "race_llm", "--json"], env=_env(clean), capture_output=True,
                         text=True, timeout=300)
    rows = {r["chunking"]: r for r in json.loads(res.stdout)}
    out = rows["token 16/0 +title"]
    assert out["status"] == "eliminated" and out["n_questions"] == 0 and out["n_planned"] == 16
    e = out["evidence"]["race"]
    assert e["stage"] == "retrieval" and e["reason"] == "retrieval" and e["metric"] == "chunk_mrr" and e["margin"] == 0.1 and e["upper"] < -0.1
    kept = rows["sentence 128/16 +title"]
    assert kept["status"] == "complete" and kept["n_questions"] == 16 and kept["evidence"]["race"]["winner"]
    assert kept["answer_support"] is not None and kept["completion_tokens"] > 0  # real answers were generated and scored
    report = next((clean / "reports" / "race_llm").glob("*/report.html")).read_text(encoding="utf-8")
    assert "<h2>Race</h2>" in report and "Who left, when and why" in report and "retrieval stage: Chunk MRR" in report
    assert "What the race saved" in report and "16 of 32 configuration-questions evaluated (50% of the full grid)" in report


def test_sigkill_mid_race_then_resume_matches_uninterrupted(setup):
    tmp, exp, clean, _ = setup
    killed = tmp / "killed"
    db = killed / "wb.sqlite"
    cmd = [sys.executable, "-m", "workbench", "run", str(exp), "--no-report"]
    proc = subprocess.Popen(cmd, env=_env(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 1200
    while time.time() < deadline and _answered(db) < 4:  # the first LLM round of the first survivor is stored
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _no_server_outlives(killed)
    partial = _answered(db)
    total = _answered(clean / "wb.sqlite")
    assert 4 <= partial < total, "the kill must land mid-race"
    resumed = subprocess.run(cmd, env=_env(killed), capture_output=True, text=True, timeout=1800)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    q_killed, r_killed = _stored(db)
    q_clean, r_clean = _stored(clean / "wb.sqlite")
    pd.testing.assert_frame_equal(q_killed, q_clean)
    pd.testing.assert_frame_equal(r_killed, r_clean)
    assert not q_killed.duplicated(["run_id", "query_id"]).any()
