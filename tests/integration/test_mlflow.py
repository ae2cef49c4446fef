"""MLflow tracking against a real `mlflow server` on loopback (tests/servers.py), read back with MlflowClient.

`workbench run` with `tracking: {mlflow: ...}` in the experiment file logs the experiment as a parent
run with one child per grid point: every stored aggregate and its CI bounds as metrics (compared
value by value with the store), params, tags and artifacts (per-question CSV, report, executed
notebooks). `workbench export NAME --to mlflow` again updates the same runs: no duplicate run, no
duplicate metric value; a changed value is logged once more. The offline default keeps everything
in the project's results folder.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_xquad_slice

pytestmark = pytest.mark.integration


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([sys.executable, "-m", "workbench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _children(client, experiment_id: str, parent_id: str):
    return client.search_runs([experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


def _assert_matches_store(client, store, experiment: str, experiment_id: str):
    from workbench.export import export_run

    query = f"tags.`workbench.kind` = 'experiment' and tags.`workbench.experiment` = '{experiment}'"
    parents = client.search_runs([experiment_id], filter_string=query)
    assert len(parents) == 1
    parent = parents[0]
    children = {r.data.tags["workbench.run_id"]: r for r in _children(client, experiment_id, parent.info.run_id)}
    run_ids = store.run_ids(experiment)
    assert sorted(children) == sorted(run_ids)
    n_metrics = 0
    for run_id in run_ids:
        child, run = children[run_id], store.run(run_id)
        expected = {}
        for _, a in store.aggregates([run_id]).iterrows():
            for suffix, col in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                if a[col] is not None and not math.isnan(a[col]):
                    expected[f"{a['metric']}{suffix}"] = a[col]
        assert child.data.metrics == expected  # every metric and CI bound, exactly, and nothing else
        n_metrics += len(expected)
        assert child.data.params["run_id"] == run_id and child.data.params["axis.retrieval"] == run["axes"]["retrieval"]
        assert child.data.params["lineage.dataset_hash"] == run["lineage"]["dataset_hash"]
        assert child.data.tags["workbench.status"] == run["status"] and child.data.tags["workbench.partial"] == "false"
        assert child.data.tags["workbench.git_commit"] == str(run["lineage"].get("git_commit") or "-")
        assert child.info.status == "FINISHED"
        csv = Path(client.download_artifacts(child.info.run_id, "questions.csv"))
        assert csv.read_bytes().decode("utf-8") == export_run(store, run_id, "csv", None)
    return parent, children, n_metrics


def test_run_with_tracking_logs_to_mlflow_and_reexport_updates_the_same_runs(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    from workbench.store import Store

    dataset = write_xquad_slice(tmp_path / "data", n_docs=12)
    (tmp_path / "experiments").mkdir()
    exp = tmp_path / "experiments" / "tracked.yaml"
    exp.write_text(f"""name: tracked
description: BM25 depths, logged to MLflow
dataset: {dataset}
queries: {{limit: 10, seed: 0}}
grid:
  chunking: [{{splitter: none}}, {{splitter: token, chunk_size: 64, chunk_overlap: 8}}]
  retrieval: [{{method: bm25, top_k: 3}}, {{method: bm25, top_k: 5}}]
tracking: {{mlflow: {{tracking_uri: "{mlflow_server}", experiment: team-bakeoffs}}}}
""", encoding="utf-8")
    done = _cli(["run", str(exp)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mlflow: 4 runs of tracked under parent run" in done.stdout and "(5 created" in done.stdout

    client = MlflowClient(mlflow_server)
    experiment_id = client.get_experiment_by_name("team-bakeoffs").experiment_id
    store = Store(f"sqlite:///{tmp_path / 'results' / 'workbench.sqlite'}")
    parent, children, n_metrics = _assert_matches_store(client, store, "tracked", experiment_id)
    assert n_metrics > 4 * 20
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/bakeoff.ipynb", "report/report.ipynb"} <= artifacts
    html = Path(client.download_artifacts(parent.info.run_id, "report/report.html")).read_text(encoding="utf-8")
    assert "tracked" in html and "<html" in html.lower()
    assert parent.data.tags["mlflow.note.content"] == "BM25 depths, logged to MLflow"

    # re-export: the same five MLflow runs, no metric logged twice
    done = _cli(["export", "tracked", "--to", "mlflow"], tmp_path)  # the URI comes from the experiment file
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(0 created, 0 metric values logged)" in done.stdout
    again = client.search_runs([experiment_id])
    assert len(again) == 5 and {r.info.run_id for r in again} == {parent.info.run_id, *(c.info.run_id for c in children.values())}
    some = next(iter(children.values()))
    assert all(len(client.get_metric_history(some.info.run_id, m)) == 1 for m in some.data.metrics)

    # a value that changed in the store (a resumed run, recomputed aggregates) is logged once more
    run_id = next(iter(children))
    rows = store.aggregates([run_id]).drop(columns=["run_id"]).to_dict("records")
    for row in rows:
        if row["metric"] == "ndcg_at_10":
            row.update(value=row["value"] / 2, ci_low=row["ci_low"] / 2)
    store.write_aggregates(run_id, rows)
    done = _cli(["export", "tracked", "--to", "mlflow", "--tracking-uri", mlflow_server], tmp_path)
    assert "(0 created, 2 metric values logged)" in done.stdout, done.stdout + done.stderr[-2000:]
    _assert_matches_store(client, store, "tracked", experiment_id)
    assert len(client.get_metric_history(children[run_id].info.run_id, "ndcg_at_10")) == 2


def test_offline_default_is_a_sqlite_store_in_the_results_folder(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from workbench.config.experiment import load_experiment
    from workbench.pipeline.plan import plan_experiment
    from workbench.pipeline.runner import run_experiment
    from workbench.settings import Workspace
    from workbench.store import Store
    from workbench.tracking import export_to_mlflow, tracking_target

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORKBENCH_MLFLOW_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    dataset = write_xquad_slice(tmp_path / "data", n_docs=6)
    (tmp_path / "experiments").mkdir()
    exp = tmp_path / "experiments" / "offline.yaml"
    exp.write_text(f"name: offline\ndataset: {dataset}\nqueries: {{limit: 5, seed: 0}}\ngrid:\n  chunking: [{{splitter: none}}]\n"
                   "  retrieval: [{method: bm25, top_k: 3}]\n", encoding="utf-8")
    ws = Workspace.resolve(root=tmp_path)
    run_experiment(plan_experiment(load_experiment(exp), ws), ws)
    store = Store(ws.store_url)
    uri, name = tracking_target(store.experiment("offline")["spec"], None, ws)
    assert uri == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}" and name is None
    summary = export_to_mlflow(store, "offline", uri)
    client = MlflowClient(uri)
    _assert_matches_store(client, store, "offline", summary.experiment_id)
    # artifacts beside the store, not in ./mlruns of whatever folder the command ran in
    assert (tmp_path / "results" / "mlflow-artifacts").is_dir() and not (tmp_path / "mlruns").exists()
    assert list((tmp_path / "results" / "mlflow-artifacts").rglob("questions.csv"))
