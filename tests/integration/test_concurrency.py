"""Four `workbench run` processes on one SQLite store and one cache at once: three different
experiments and one of them twice. Every row lands exactly once; nothing fails on a lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration


def test_four_concurrent_runs_share_one_store(tmp_path):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=25)
    experiments = []
    for name, size in (("conc_a", 64), ("conc_b", 96), ("conc_c", 128)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"""name: {name}
dataset: {dataset}
grid:
  chunking: [{{splitter: sentence, chunk_size: {size}, chunk_overlap: 8}}, {{splitter: none}}]
  embedding: [{{provider: local, model: multilingual-e5-small}}]
  retrieval: [{{method: bm25, top_k: 5}}, {{method: dense, top_k: 5}}]
""", encoding="utf-8")
        experiments.append(path)
    env = dict(os.environ, WORKBENCH_STORE=f"sqlite:///{tmp_path / 'wb.sqlite'}", WORKBENCH_CACHE=str(tmp_path / "cache"),
               WORKBENCH_REPORTS=str(tmp_path / "reports"))
    procs = [subprocess.Popen([sys.executable, "-m", "workbench", "run", str(p), "--no-report"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in experiments + [experiments[0]]]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "locked" not in err.lower()

    n_queries = sum(1 for _ in open(dataset / "queries.jsonl"))
    with create_engine(env["WORKBENCH_STORE"]).connect() as conn:
        per_run = dict(conn.execute(text("select run_id, count(*) from questions group by run_id")).all())
        dupes = conn.execute(text("select count(*) from (select run_id, query_id from questions group by 1, 2 having count(*) > 1)")).scalar()
        statuses = {r[0] for r in conn.execute(text("select status from runs"))}
        linked = dict(conn.execute(text("select experiment, count(*) from experiment_runs group by experiment")).all())
    # whole-document runs are shared by the three experiments: 3 x 2 chunked runs + 2 shared ones
    assert len(per_run) == 8 and set(per_run.values()) == {n_queries}
    assert dupes == 0 and statuses == {"complete"}
    assert linked == {"conc_a": 4, "conc_b": 4, "conc_c": 4}
