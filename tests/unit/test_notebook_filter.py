"""Notebook outputs never reach git: `make install` sets up nbstripout as the git filter named in
.gitattributes. In a fresh repository holding this checkout's Makefile, .gitattributes and notebooks,
the Makefile's own target is run, then a notebook saved with outputs (as JupyterLab autosaves it:
outputs, execution counts, widget state) is committed: the commit holds none of them, the file on
disk keeps them, and git sees nothing to commit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_output

from tests.conftest import ROOT

VENV = Path(sys.executable).parent.parent
NOTEBOOKS = sorted((ROOT / "workbench" / "notebooks").glob("*.ipynb"))


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    if not (VENV / "bin" / "nbstripout").exists():
        pytest.fail(f"nbstripout is not installed in {VENV} (it is in the dev extra: pip install -e '.[dev]')")
    repo = tmp_path / "clone"
    (repo / "workbench" / "notebooks").mkdir(parents=True)
    for name in ("Makefile", ".gitattributes"):
        shutil.copy(ROOT / name, repo / name)
    for nb in NOTEBOOKS:
        shutil.copy(nb, repo / "workbench" / "notebooks" / nb.name)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "test@example.invalid")
    _git(repo, "config", "user.name", "test")
    # the Makefile's target, with the venv taken as installed (-o: do not rebuild the stamp)
    result = subprocess.run(["make", "-o", str(VENV / ".installed"), "notebook-filter", f"VENV={VENV}"], cwd=repo, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nbstripout -m" not in result.stdout and "notebook outputs are stripped when staged" in result.stdout
    assert "nbstripout" in _git(repo, "config", "--get", "filter.nbstripout.clean")
    assert (repo / ".gitattributes").read_text() == (ROOT / ".gitattributes").read_text()  # idempotent: nothing appended
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "notebooks")
    return repo


def test_a_notebook_saved_with_outputs_is_committed_without_them(repo):
    path = repo / "workbench" / "notebooks" / "report.ipynb"
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = i + 1
        cell.outputs = [new_output("display_data", data={"text/html": "<h2>Leaderboard</h2><table>secret-ish</table>", "text/plain": "x"}),
                        new_output("stream", name="stderr", text="a warning\n")]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}}
    nbformat.write(nb, path)
    on_disk = path.read_text(encoding="utf-8")

    assert _git(repo, "diff") == ""  # outputs alone are not a change (git status may list the file until it is staged)
    _git(repo, "add", "-A")
    assert _git(repo, "status", "--porcelain") == ""
    nb.cells[0].source += "\n# an edit"  # a real edit, with the outputs still there
    nbformat.write(nb, path)
    assert _git(repo, "diff", "--name-only").split() == ["workbench/notebooks/report.ipynb"]
    _git(repo, "commit", "-q", "-am", "edit")

    committed = json.loads(_git(repo, "show", "HEAD:workbench/notebooks/report.ipynb"))
    assert "# an edit" in "".join(committed["cells"][0]["source"])
    code = [c for c in committed["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "widgets" not in committed["metadata"] and "secret-ish" not in json.dumps(committed)
    assert "secret-ish" in path.read_text(encoding="utf-8") and "secret-ish" in on_disk  # the working copy keeps its outputs
    assert _git(repo, "status", "--porcelain") == ""


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_the_shipped_notebooks_are_what_the_filter_commits(notebook):
    """So a clone with the filter installed shows no notebook as modified."""
    stripped = subprocess.run([str(VENV / "bin" / "nbstripout")], input=notebook.read_text(encoding="utf-8"), capture_output=True,
                              text=True, check=True, timeout=60).stdout
    assert stripped == notebook.read_text(encoding="utf-8")
