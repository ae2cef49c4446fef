"""The package as users install it: a wheel (not the editable checkout) in a fresh virtual
environment, running a small bake-off from a folder outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_xquad_slice

SHIPPED = ["workbench/notebooks/bakeoff.ipynb", "workbench/notebooks/report.ipynb", "workbench/notebooks/explore.ipynb",
           "workbench/report/templates/report.html.j2", "workbench/providers/prices.yaml", "workbench/migrations/alembic.ini"]


def _wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources: setuptools writes build/ and *.egg-info next to them."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "workbench", src / "workbench", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = dist.glob("workbench-*.whl")
    return wheel


def _venv_with(wheel: Path, tmp_path: Path) -> Path:
    """A new environment holding the wheel; its dependencies are this environment's packages,
    reached through a .pth file (without the checkout's editable-install hook)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    # ...and the data files their installs put under the environment's share/jupyter (nbconvert's
    # base templates), but not this environment's kernelspec, which would run the checkout's code
    templates = Path(sys.prefix) / "share" / "jupyter" / "nbconvert"
    shutil.copytree(templates, venv / "share" / "jupyter" / "nbconvert")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return venv / "bin" / "python"


@pytest.mark.integration
def test_a_wheel_runs_a_bakeoff_from_outside_the_checkout(tmp_path):
    wheel = _wheel(tmp_path)
    assert set(SHIPPED) <= set(zipfile.ZipFile(wheel).namelist())
    python = _venv_with(wheel, tmp_path)
    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    data = write_xquad_slice(project / "data", n_docs=6, n_queries=5)
    (project / "experiments" / "small.yaml").write_text(
        f"name: small\ndataset: {data.relative_to(project)}\ngrid:\n  chunking: [{{splitter: none}}]\n"
        "  retrieval: [{method: bm25, top_k: 3}]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_") and k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import workbench; print(workbench.__file__)"], cwd=project, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(tmp_path / "venv")), where.stdout + where.stderr
    result = subprocess.run([str(python), "-m", "workbench", "run", "experiments/small.yaml"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((project / "reports" / "small").glob("*/report.html")), "no report rendered"
    store = project / "results" / "workbench.sqlite"  # the defaults live in the project folder
    assert store.is_file()
    import sqlite3

    lineage = json.loads(sqlite3.connect(store).execute("SELECT lineage FROM runs").fetchone()[0])
    # the kernel ran the wheel's code: the installed package is in no git checkout
    assert "git_commit" not in lineage and lineage["code_hash"]
