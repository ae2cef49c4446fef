"""Importing the workbench changes nothing: no environment variable is written at import time.

The model libraries' offline and threading settings are applied where they matter, by
``settings.apply_offline_defaults()`` (the CLI's entry, embedder and reranker construction, opening
Chroma); a notebook or a library user that imports a module gets an untouched ``os.environ``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import workbench.settings

PACKAGE = Path(workbench.settings.__file__).resolve().parent
# Left out: __main__ runs the CLI, and migrations/env.py is an Alembic script that runs on import.
SKIP = ("workbench.__main__", "workbench.migrations")


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith(SKIP):
            names.append(name)
    return names


SCRIPT = """
import importlib, json, os, sys
before = dict(os.environ)
for name in sys.argv[1:]:
    importlib.import_module(name)
    if dict(os.environ) != before:
        after = dict(os.environ)
        print(json.dumps({name: sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))}))
        break
else:
    print(json.dumps({}))
"""


def test_importing_every_module_leaves_the_environment_unchanged(tmp_path):
    modules = _modules()
    assert {"workbench.stages.embedding", "workbench.stages.index", "workbench.cli"} <= set(modules)
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", str(tmp_path)), "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, *modules], env=clean, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {}  # {module: [variables it wrote]} otherwise


def test_apply_offline_defaults_keeps_what_the_environment_sets():
    from workbench.settings import OFFLINE_DEFAULTS, apply_offline_defaults

    env = {"HF_HUB_OFFLINE": "0"}
    apply_offline_defaults(env)
    assert env == {**OFFLINE_DEFAULTS, "HF_HUB_OFFLINE": "0"}


def test_the_cli_applies_the_offline_defaults_before_any_command(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workbench.cli import app
    from workbench.settings import OFFLINE_DEFAULTS

    for name in OFFLINE_DEFAULTS:
        monkeypatch.setenv(name, "x")  # recorded, so the test's end restores the real environment
        monkeypatch.delenv(name)
    CliRunner().invoke(app, ["results", "none", "--store", f"sqlite:///{tmp_path / 'wb.sqlite'}", "--json"])
    assert {name: os.environ.get(name) for name in OFFLINE_DEFAULTS} == OFFLINE_DEFAULTS
