"""Each notebook run the way a scheduler runs it: the plain ``papermill`` command, in a subprocess,
with a typo in a parameter name and with a value of the wrong type. The notebook's own check (the
cell after its parameters) must stop it in one line naming the notebook and the parameter, before
any work, with a non-zero exit. Also: where a relative experiment path is looked up, and an error
that says so.

papermill's own command prints its Python traceback after the kernel's error; the part that comes
from the notebook (after ``Exception encountered at "In [n]":``) is the one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import ROOT

NOTEBOOKS = ROOT / "workbench" / "notebooks"
PAPERMILL = [sys.executable, "-m", "papermill"]

CASES = [
    ("bakeoff", ["-p", "querylimit", "20"],
     "NotebookError: bakeoff.ipynb: unknown parameter 'querylimit' (did you mean 'query_limit'?); known: axes, cache_dir, "
     "experiment_path, plan_path, progress, query_limit, rerun, store_url, workspace"),
    ("bakeoff", ["-p", "query_limit", "twenty"],
     "NotebookError: bakeoff.ipynb: parameter 'query_limit' expects int (default 0), got str 'twenty'"),
    ("bakeoff", ["-p", "axes", "retrieval=bm25"],
     "NotebookError: bakeoff.ipynb: parameter 'axes' expects dict (default {}), got str 'retrieval=bm25' "
     "(papermill: pass lists and dicts with -y, e.g. -y 'axes: {retrieval: [bm25]}')"),
    ("report", ["-p", "experimnt", "quickstart"],
     "NotebookError: report.ipynb: unknown parameter 'experimnt' (did you mean 'experiment'?); known: baseline_experiment, "
     "baseline_run, drilldown_limit, experiment, store_url"),
    ("report", ["-p", "drilldown_limit", "many"],
     "NotebookError: report.ipynb: parameter 'drilldown_limit' expects int (default 15), got str 'many'"),
    ("explore", ["-p", "qurey", "who won?"],
     "NotebookError: explore.ipynb: unknown parameter 'qurey' (did you mean 'query'?); known: cache_dir, experiment, query, run_a, "
     "run_b, store_url"),
    ("explore", ["-p", "query", "3"],
     "NotebookError: explore.ipynb: parameter 'query' expects str (default \"\"), got int 3"),
]


def _papermill(notebook: str, args: list[str], tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / f"{notebook}-out.ipynb"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_")}
    environ.update(PYTHONPATH=str(ROOT), WORKBENCH_STORE=f"sqlite:///{tmp_path / 'store.sqlite'}", WORKBENCH_CACHE=str(tmp_path / "cache"),
                   **env)
    result = subprocess.run([*PAPERMILL, str(NOTEBOOKS / f"{notebook}.ipynb"), str(out), *args], capture_output=True, text=True,
                            env=environ, cwd=tmp_path, timeout=300)
    return result, out


def _kernel_error(stderr: str) -> list[str]:
    """The lines papermill reports from the notebook: after 'Exception encountered at "In [n]":'."""
    lines = stderr.rstrip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Exception encountered at"))
    return lines[start + 1:]


@pytest.mark.parametrize(("notebook", "args", "expected"), CASES, ids=[f"{c[0]}-{c[1][1]}-{c[1][2]}" for c in CASES])
def test_plain_papermill_stops_on_a_bad_parameter_in_one_line(notebook, args, expected, tmp_path):
    result, out = _papermill(notebook, args, tmp_path)
    assert result.returncode != 0
    assert _kernel_error(result.stderr) == [expected], result.stderr[-3000:]
    # the executed notebook holds the same one line, in the check cell right after the parameters
    code = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    assert "parameters" in tags[0] and "injected-parameters" in tags[1]
    errors = [(i, o) for i, c in enumerate(code) for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert [(i, o["traceback"]) for i, o in errors] == [(2, [expected])]
    assert "notebooks.check_parameters(" in code[2].source
    assert all(c.execution_count is None for c in code[3:])  # nothing ran after the check
    assert not (tmp_path / "store.sqlite").exists() and not (tmp_path / "cache").exists()  # and nothing was written


def test_a_relative_experiment_path_names_the_folders_it_searched(tmp_path):
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    here = tmp_path / "jobs"
    here.mkdir()
    result, _ = _papermill("bakeoff", ["-p", "experiment_path", "experiments/nightly.yaml"], here, WORKBENCH_HOME=str(project))
    assert result.returncode != 0
    assert _kernel_error(result.stderr) == [
        f"ConfigError: experiment file: 'experiments/nightly.yaml' not found (looked in {here / 'experiments'} and "
        f"{project / 'experiments'}: the current folder, then the project folder; set $WORKBENCH_HOME to the folder holding "
        "experiments/, or give an absolute path)"]


def test_the_check_is_the_clis_check():
    """validate_parameters (the CLI, before a kernel starts) and check_parameters (the notebook)
    both end in notebooks.check_values with the notebook's declarations as papermill reads them."""
    import papermill

    from workbench.notebooks import declared_parameters, parameter_cells

    for name in ("bakeoff", "report", "explore"):
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        source = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        injected = "# Parameters\nquery_limit = 3\n"
        check = f'notebooks.check_parameters("{name}", globals())'
        assert parameter_cells(["", source, injected, check]) == (source, ["query_limit"])
        assert parameter_cells(["", source, check]) == (source, [])
        assert parameter_cells(["", "x = f(1)", check]) is None
        assert declared_parameters(source) == papermill.inspect_notebook(str(NOTEBOOKS / f"{name}.ipynb"))
