"""Regression gates, paired comparison and exports on real (BM25) runs, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=dict(os.environ), timeout=300)


def _write(tmp_path: Path, name: str, dataset: Path, retrieval: str, tail: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: {name}
dataset: {dataset}
grid:
  chunking: [{{splitter: sentence, chunk_size: 96, chunk_overlap: 16}}]
  retrieval: [{retrieval}]
{tail}""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("gates")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_STORE", f"sqlite:///{tmp_path / 'wb.sqlite'}")
        mp.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
        mp.setenv("WORKBENCH_REPORTS", str(tmp_path / "reports"))
        yield _make_runs(tmp_path)


def _make_runs(tmp_path: Path) -> dict:
    dataset = write_xquad_slice(tmp_path / "data", n_docs=60)
    base = _write(tmp_path, "gate_base", dataset, "{method: bm25, top_k: 10}")
    assert _cli("run", str(base), "--no-report").returncode == 0
    gates = """baseline: {experiment: gate_base}
gates:
  ndcg_at_10: {max_drop: 0.01, significant: true}
  hit_at_1: {max_drop: 0.02}
  mrr: {min: 0.3}
  retrieval_latency_p95_s: {max: 5}
"""
    equal = _write(tmp_path, "gate_equal", dataset, "{method: bm25, top_k: 10}", gates)
    # A worse config: only the single best chunk is kept.
    worse = _write(tmp_path, "gate_worse", dataset, "{method: bm25, top_k: 1}", gates)
    for exp in (equal, worse):
        result = _cli("run", str(exp), "--no-report")
        assert result.returncode == 0, result.stderr
    return {"base": base, "equal": equal, "worse": worse, "dataset": dataset}


def test_gate_passes_for_an_equal_config_and_fails_for_a_worse_one(runs):
    ok = _cli("gate", str(runs["equal"]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "4 passed, 0 failed" in ok.stdout.replace("gates: ", "")

    bad = _cli("gate", str(runs["worse"]))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    # the same check at the end of a (cached, resumed) run, as a scheduled job would do it
    rerun = _cli("run", str(runs["worse"]), "--no-report", "--gate")
    assert rerun.returncode == 1 and "FAIL" in rerun.stdout, rerun.stdout + rerun.stderr
    fail_lines = [line for line in bad.stdout.splitlines() if line.startswith("FAIL")]
    # top_k 1 loses about 0.03 nDCG: the paired t interval of the change lies wholly beyond the allowed drop of 0.01
    assert any("ndcg_at_10" in line and "lies entirely beyond max_drop 0.01" in line and "paired t" in line for line in fail_lines), bad.stdout


def test_run_gate_exits_4_when_a_gate_is_inconclusive(runs, tmp_path):
    from workbench.store import Store

    st = Store(os.environ["WORKBENCH_STORE"])
    board = st.leaderboard("gate_base")
    mrr = float(board["mrr"].iloc[0])
    # a bound just under the run's mean MRR: its 95% interval crosses it
    unsure = _write(tmp_path, "gate_unsure", runs["dataset"], "{method: bm25, top_k: 10}",
                    f"gates:\n  mrr: {{min: {mrr - 0.005:.6f}, significant: true}}\n")
    res = _cli("run", str(unsure), "--no-report", "--gate")
    assert res.returncode == 4, res.stdout + res.stderr
    assert "INCONCLUSIVE" in res.stdout and "would likely settle it" in res.stdout and "0 failed, 1 inconclusive" in res.stdout
    data = json.loads(_cli("gate", str(unsure), "--json").stdout)
    assert data["exit_code"] == 4 and data["gates"][0]["interval"]["method"] == "t"
    assert data["gates"][0]["interval"]["low"] < mrr - 0.005 < data["gates"][0]["interval"]["high"]


def test_compare_reports_paired_differences_and_flips(runs):
    from workbench.store import Store

    st = Store(os.environ["WORKBENCH_STORE"])
    base_id = st.run_ids("gate_base")[0]
    worse_id = st.run_ids("gate_worse")[0]
    res = _cli("compare", base_id, worse_id, "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    by_metric = {m["metric"]: m for m in data["metrics"]}
    ndcg = by_metric["ndcg_at_10"]
    assert ndcg["diff"] < 0 and ndcg["ci_high"] < 0 and ndcg["p_value"] < 0.05
    # Holm across the metrics compared
    assert data["correction"] == {"method": "holm", "family": len(data["metrics"]), "alpha": 0.05}
    assert all(m["p_holm"] >= m["p_value"] for m in data["metrics"]) and ndcg["significant"]
    assert by_metric["hit_at_1"]["test"] == "mcnemar"
    # hit@1 cannot change when only the depth changes (same first chunk): no flips for it.
    assert by_metric["hit_at_1"]["diff"] == 0
    assert data["flipped"], "questions whose nDCG changed are listed"


def test_export_formats(runs, tmp_path):
    from workbench.store import Store

    st = Store(os.environ["WORKBENCH_STORE"])
    run_id = st.run_ids("gate_base")[0]
    trec = _cli("export", run_id[:8], "--format", "trec").stdout.splitlines()
    first = trec[0].split()
    assert len(first) == 6 and first[1] == "Q0" and first[3] == "1" and first[5] == run_id
    out = tmp_path / "rows.jsonl"
    assert _cli("export", run_id, "--format", "jsonl", "-o", str(out)).returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(st.questions(run_id)) and "ndcg_at_10" in rows[0] and "retrieved_doc_ids" in rows[0]
    bad = _cli("export", run_id, "--format", "xml")
    assert bad.returncode == 2 and "unknown export format" in bad.stderr
