"""Log an experiment's stored results to MLflow (``pip install 'workbench[mlflow]'``).

``workbench export NAME --to mlflow`` (or ``tracking: {mlflow: ...}`` in the experiment file, after
``workbench run``) writes, from the store only:

* one **parent run** per workbench experiment (tag ``workbench.kind = experiment``), holding the
  report (``report/report.html``), the executed notebooks and the experiment's spec;
* one **child run** per grid point (``mlflow.parentRunId``, tag ``workbench.run_id``), with
  params = axis values, the run id and the lineage's content hashes (what the run id is made of);
  metrics = every stored aggregate and its 95% CI bounds (``ndcg_at_10``, ``ndcg_at_10_ci_low``,
  ``ndcg_at_10_ci_high``); tags = status, git commit, code hash, partial, eliminated (and the
  evidence of why a run stopped early); artifact = the per-question CSV.

Re-exporting finds the same MLflow runs by those tags and updates them: params are only added
(they are facts of the run id, never changing), a metric is logged again only when its value
changed (so its history shows each re-computation, not each export), tags and artifacts are
overwritten. ``mlflow`` is imported inside the functions only: it takes seconds to import.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import WorkbenchError
from .export import export_run
from .hashing import hash_obj
from .settings import Workspace
from .store import AXES, Store

LINEAGE_PARAMS = ("dataset_hash", "query_ids_hash", "n_queries", "tokenizer", "embedding_fingerprint", "prompt_hash", "llm",
                  "llm_file_hash", "reranker_fingerprint")
KIND_TAG, EXPERIMENT_TAG, RUN_TAG = "workbench.kind", "workbench.experiment", "workbench.run_id"
MLFLOW_STATUS = {"complete": "FINISHED", "partial": "FINISHED", "failed": "FAILED", "running": "RUNNING"}


@dataclass(frozen=True)
class TrackingSummary:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    child_run_ids: dict[str, str]  # workbench run id -> MLflow run id
    created: int  # MLflow runs created by this export (0 on a re-export)
    metrics_logged: int


def tracking_target(spec, tracking_uri: str | None, workspace: Workspace) -> tuple[str, str | None]:
    """(tracking URI, MLflow experiment name or None): the option, else the experiment file's
    ``tracking.mlflow``, else ``$WORKBENCH_MLFLOW_URI`` / ``$MLFLOW_TRACKING_URI``, else a SQLite
    file in the project's results folder (offline)."""
    mlflow_spec = ((spec or {}).get("tracking") or {}).get("mlflow") or {}
    uri = tracking_uri or mlflow_spec.get("tracking_uri") or workspace.mlflow_default_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(workspace.root / uri.removeprefix('sqlite:///')).resolve()}"
    return uri, mlflow_spec.get("experiment")


def _artifact_location(uri: str) -> str | None:
    """Local stores keep artifacts next to them (MLflow's default is ./mlruns in the current folder)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlflow-artifacts").as_uri()
    return None


def _client(uri: str):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise WorkbenchError("exporting to MLflow needs the mlflow package: pip install 'workbench[mlflow]'") from None
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    return client.create_experiment(name, artifact_location=_artifact_location(uri))


def _find_run(client, experiment_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], filter_string=query, max_results=2)
    if len(found) > 1:
        raise WorkbenchError(f"MLflow experiment {experiment_id}: {len(found)} runs tagged {tags}; expected one")
    return found[0] if found else None


def _ms(stamp: str | None) -> int | None:
    import datetime as dt

    if not stamp:
        return None
    try:
        return int(dt.datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def run_params(run: dict) -> dict[str, str]:
    """A run's params: axis values, the run id, the config hash and the lineage's content hashes."""
    lineage = run["lineage"] or {}
    params = {f"axis.{a}": str(run["axes"].get(a, "-")) for a in AXES}
    params.update({"run_id": run["run_id"], "config_hash": hash_obj(run["config"], 16)})
    params.update({f"lineage.{k}": str(lineage[k]) for k in LINEAGE_PARAMS if lineage.get(k) is not None})
    return params


def run_tags(run: dict) -> dict[str, str]:
    lineage, evidence = run["lineage"] or {}, run.get("evidence") or {}
    status = str(run["status"])
    eliminated = "elimin" in status or "elimin" in json.dumps(evidence)
    tags = {"workbench.status": status, "workbench.partial": str(status == "partial").lower(),
            "workbench.eliminated": str(eliminated).lower(), "workbench.n_failed": str(run["n_failed"]),
            "workbench.n_questions": str(run["n_questions"]), "workbench.git_commit": str(lineage.get("git_commit") or "-"),
            "workbench.code_hash": str(lineage.get("code_hash") or "-"), "mlflow.source.git.commit": str(lineage.get("git_commit") or "")}
    if evidence:
        tags["workbench.evidence"] = json.dumps(evidence, sort_keys=True, default=str)[:4000]
    return {k: v for k, v in tags.items() if v != ""}


def run_metrics(aggregates) -> dict[str, float]:
    """Every stored aggregate with its CI bounds; NaN and missing values are left out."""
    out = {}
    for _, a in aggregates.iterrows():
        for suffix, col in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            v = a[col]
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[f"{a['metric']}{suffix}"] = float(v)
    return out


def _sync_run(client, mlflow_run, params: dict, metrics: dict, tags: dict) -> int:
    """Add missing params, log changed metrics, set tags; returns how many metrics were logged."""
    from mlflow.entities import Metric, Param, RunTag

    data = client.get_run(mlflow_run.info.run_id).data
    clash = {k: (data.params[k], v) for k, v in params.items() if k in data.params and data.params[k] != v}
    if clash:
        name, (old, new) = next(iter(clash.items()))
        raise WorkbenchError(f"MLflow run {mlflow_run.info.run_id}: param {name} is {old!r} there but {new!r} in the store; "
                             "it belongs to another run id (was the MLflow experiment reused for other results?)")
    now = int(time.time() * 1000)
    changed = [Metric(k, v, now, 0) for k, v in sorted(metrics.items()) if data.metrics.get(k) != v]
    new_params = [Param(k, v) for k, v in sorted(params.items()) if k not in data.params]
    tag_list = [RunTag(k, v) for k, v in sorted(tags.items())]
    for i in range(0, max(len(changed), len(new_params), len(tag_list)), 100):  # MLflow's batch limits
        client.log_batch(mlflow_run.info.run_id, metrics=changed[i:i + 100], params=new_params[i:i + 100], tags=tag_list[i:i + 100])
    return len(changed)


def _child(client, experiment_id: str, parent_id: str, run: dict, created: list):
    found = _find_run(client, experiment_id, {RUN_TAG: run["run_id"], "mlflow.parentRunId": parent_id})
    if found is not None:
        return found
    created.append(run["run_id"])
    label = " | ".join(str(run["axes"].get(a)) for a in AXES if run["axes"].get(a) not in (None, "-"))
    return client.create_run(experiment_id, start_time=_ms(run.get("started_at")), run_name=label[:250],
                             tags={"mlflow.parentRunId": parent_id, RUN_TAG: run["run_id"], KIND_TAG: "run"})


def _finish(client, mlflow_run, run: dict) -> None:
    status = MLFLOW_STATUS.get(str(run["status"]), "KILLED")  # stopped (budget), eliminated: killed before the end
    if status != "RUNNING":
        client.set_terminated(mlflow_run.info.run_id, status=status, end_time=_ms(run.get("finished_at")))


def _log_files(client, run_id: str, files: dict[str, Path | str]) -> None:
    """Artifacts: ``{artifact path: file or text}``; a file that does not exist is skipped."""
    with tempfile.TemporaryDirectory(prefix="wb-mlflow-") as tmp:
        for name, content in files.items():
            folder, _, base = name.rpartition("/")
            if isinstance(content, str):
                path = Path(tmp) / base
                path.write_text(content, encoding="utf-8")
            else:
                path = content
                if not path.exists():
                    continue
            client.log_artifact(run_id, str(path), artifact_path=folder or None)


def report_files(report_dir: Path | None) -> dict[str, Path]:
    if report_dir is None:
        return {}
    return {f"report/{n}": report_dir / n for n in ("report.html", "report.ipynb", "bakeoff.ipynb", "summary.json")}


def latest_report_dir(experiment: str, reports_dir: Path) -> Path | None:
    """The experiment's newest report folder by the timestamp in its name (never by mtime)."""
    from .report.artifacts import report_entries

    found = [e["folder"] for e in report_entries(reports_dir) if e["experiment"] == experiment]
    return found[0] if found else None


def export_to_mlflow(store: Store, experiment: str, tracking_uri: str, *, mlflow_experiment: str | None = None,
                     report_dir: Path | None = None) -> TrackingSummary:
    """Log ``experiment``'s stored runs to MLflow at ``tracking_uri`` (see the module docstring).

    Raises:
        StoreError: the experiment is not stored.
        WorkbenchError: mlflow is not installed; the tracking server cannot be reached.
    """
    exp_row = store.experiment(experiment)
    run_ids = store.run_ids(experiment)
    client = _client(tracking_uri)
    try:
        experiment_id = _experiment_id(client, mlflow_experiment or experiment, tracking_uri)
    except Exception as exc:  # MlflowException, requests' ConnectionError...: one line, not a traceback
        raise WorkbenchError(f"MLflow at {tracking_uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:400]) from None
    created: list[str] = []
    parent = _find_run(client, experiment_id, {KIND_TAG: "experiment", EXPERIMENT_TAG: experiment})
    if parent is None:
        created.append(experiment)
        parent = client.create_run(experiment_id, run_name=experiment, tags={KIND_TAG: "experiment", EXPERIMENT_TAG: experiment})
    spec = exp_row["spec"] or {}
    _sync_run(client, parent, {"experiment": experiment, "n_runs": str(len(run_ids)), "dataset": str(spec.get("dataset"))},
              {}, {"workbench.spec_hash": exp_row["spec_hash"], "mlflow.note.content": spec.get("description") or experiment})
    aggregates = store.aggregates(run_ids)
    children, logged = {}, 0
    for run_id in run_ids:
        run = store.run(run_id)
        child = _child(client, experiment_id, parent.info.run_id, run, created)
        logged += _sync_run(client, child, run_params(run), run_metrics(aggregates[aggregates["run_id"] == run_id]), run_tags(run))
        _log_files(client, child.info.run_id, {"questions.csv": export_run(store, run_id, "csv", None)})
        _finish(client, child, run)
        children[run_id] = child.info.run_id
    _log_files(client, parent.info.run_id, {**report_files(report_dir), "experiment.json": json.dumps(spec, indent=2, default=str)})
    if not any(str(store.run(r)["status"]) == "running" for r in run_ids):
        client.set_terminated(parent.info.run_id, status="FINISHED")
    return TrackingSummary(tracking_uri, experiment_id, parent.info.run_id, children, len(created), logged)
