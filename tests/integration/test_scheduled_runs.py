"""Cron-friendly `workbench run`: documented exit codes, a lock against overlapping schedules, all
output appended to a log file; and the shipped nightly CI workflow calls options that exist."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from tests.conftest import write_xquad_slice

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench", *args], capture_output=True, text=True, env=dict(os.environ), timeout=timeout)


def _experiment(tmp_path: Path, dataset: Path, gate_min: float) -> Path:
    path = tmp_path / "nightly.yaml"
    path.write_text(f"""name: nightly
dataset: {dataset}
grid:
  chunking: [{{splitter: none}}]
  retrieval: [{{method: bm25, top_k: 5}}]
gates:
  mrr: {{min: {gate_min}}}
""", encoding="utf-8")
    return path


def _sections(log: Path) -> list[str]:
    """The log's runs, one string each (from its start line to its end line)."""
    return re.findall(r"=== \S+ start: .*?=== \S+ end: exit \d+\n", log.read_text(encoding="utf-8"), flags=re.S)


def test_exit_codes_and_log_file(tmp_path, workspace_env):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=10, n_queries=12)
    log = tmp_path / "logs" / "nightly.log"

    failing = _cli("run", str(_experiment(tmp_path, dataset, gate_min=1.01)), "--gate", "--no-report", "--log-file", str(log))
    assert failing.returncode == 1  # a gate failed
    assert failing.stdout == "" and failing.stderr == ""  # everything went to the file
    first = _sections(log)[-1]
    assert "nightly: 1 runs x 12 questions" in first and "FAIL" in first and "gates: 0 passed, 1 failed" in first
    assert "computed" in first  # the notebook's progress lines are in the log too
    assert first.rstrip().endswith("end: exit 1")

    passing = _cli("run", str(_experiment(tmp_path, dataset, gate_min=0.0)), "--gate", "--no-report", "--log-file", str(log))
    assert passing.returncode == 0, log.read_text()[-2000:]
    second = _sections(log)[-1]
    assert "gates: 1 passed, 0 failed" in second and second.rstrip().endswith("end: exit 0")
    assert len(_sections(log)) == 2  # appended, not overwritten

    broken = tmp_path / "broken.yaml"
    broken.write_text("name: nightly\ndataset: nowhere\ngrid: {}\n", encoding="utf-8")
    error = _cli("run", str(broken), "--gate", "--log-file", str(log))
    assert error.returncode == 2
    third = _sections(log)[-1]
    assert "error:" in third and third.rstrip().endswith("end: exit 2")


def test_a_second_run_of_the_same_experiment_exits_3(tmp_path, workspace_env):
    dataset = write_xquad_slice(tmp_path / "data", n_docs=10, n_queries=12)
    exp = _experiment(tmp_path, dataset, gate_min=0.0)
    log = tmp_path / "nightly.log"
    # The lock a running `workbench run` of this experiment holds (same file, same library).
    lock = FileLock(str(workspace_env.cache_dir / "locks" / "run-nightly.lock"))
    with lock:
        second = _cli("run", str(exp), "--gate", "--log-file", str(log))
        assert second.returncode == 3
        text = log.read_text(encoding="utf-8")
        assert "experiment 'nightly' is already running" in text and "end: exit 3" in text
        explicit = _cli("run", str(exp), "--lock")  # interactive runs lock only when asked
        assert explicit.returncode == 3 and "already running" in explicit.stderr
    # nothing was stored by the refused runs
    from workbench.store import Store

    assert Store(workspace_env.store_url).experiment_names() == []


def test_nightly_workflow_uses_real_options():
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "nightly-bakeoff.yml").read_text(encoding="utf-8"))
    assert "schedule" in workflow[True] or "schedule" in workflow.get("on", {})  # YAML reads `on:` as True
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    runs = [line for s in steps if "run" in s for line in s["run"].replace("\\\n", " ").splitlines() if "workbench run" in line]
    assert runs, "the workflow runs no bake-off"
    helptext = _cli("run", "--help").stdout
    for line in runs:
        args = shlex.split(line[line.index("workbench run"):])
        for arg in args:
            if arg.startswith("--"):
                assert arg.split("=")[0] in helptext, arg
        assert "--gate" in args and "--log-file" in args
    uploads = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and "reports" in uploads[0]["with"]["path"]
    assert uploads[0].get("if") == "always()"  # the report is published even when a gate fails
